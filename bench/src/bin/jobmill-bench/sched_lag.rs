//! `sched`: schedule fire lag at 100 schedules firing every second, against W3's submit→start
//! p99 measured in the same run (target: the lag's p99 at most 2× W3's).
//!
//! The lag of a run is its job's creation time minus its planned fire time (from the job's
//! idempotency key `schedule:<id>:<fire time>`): what `jobmill_schedule_lag_seconds` observes.

use std::time::Duration;

use futures::TryStreamExt as _;
use jobmill::queue::RedisQueue;
use jobmill::Job;
use jobmill_bench::deployment::{QUEUE, TENANT};
use jobmill_bench::kinds;
use jobmill_schedules::{ScheduleSettings, Schedules};
use mongodb::bson::doc;
use serde_json::json;

use crate::measure::{env_f64, pct_ms};
use crate::servers::{fresh, Worker};
use crate::w3_floor::submit_to_start;
use crate::Rows;

/// Schedules firing every second (`BENCH_SCHED_N` overrides).
const SCHEDULES: usize = 100;

pub(crate) async fn sched_lag() -> anyhow::Result<Rows> {
    let secs = env_f64("BENCH_SCHED_SECS", 15.0);
    let n = crate::measure::knob("BENCH_SCHED_N", SCHEDULES)?;
    let (s, store, _) = fresh(64).await?;
    let registry = kinds::registry(&s.redis).await?;
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    let client = jobmill_bench::deployment::client(store.clone(), queue, &registry, &s);
    let sched = Schedules::new(
        &client,
        ScheduleSettings::default(),
        vec![],
        Default::default(),
    );
    sched.ensure_indexes().await?;
    let worker = Worker::start(&s, store.clone()).await?;
    for i in 0..n {
        let req = serde_json::from_value(json!({
            "name": format!("bench-{i}"),
            "cron": "* * * * * *",
            "job": {"kind": "bench_noop", "args": {"ts": 0}, "queue": QUEUE},
        }))?;
        sched.create(TENANT, req).await?;
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let ids: Vec<String> = sched
        .store()
        .list(Some(TENANT), n as i64)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    for id in &ids {
        sched.store().delete(id).await?;
    }
    worker.stop().await?;
    let jobs: Vec<Job> = store
        .database()
        .collection::<Job>("jobs")
        .find(doc! { "kind": "bench_noop" })
        .await?
        .try_collect()
        .await?;
    let pairs: Vec<(i64, u64)> = jobs
        .iter()
        .filter_map(|j| {
            let key = j.idempotency_key.as_deref()?;
            // `schedule:<id>:<RFC 3339>`: the time itself contains ':'.
            let rest = key.strip_prefix("schedule:")?;
            let (_, t) = rest.split_once(':')?;
            let fire = chrono::DateTime::parse_from_rfc3339(t)
                .ok()?
                .timestamp_millis();
            Some((fire, ((j.created_ms - fire).max(0) * 1000) as u64))
        })
        .collect();
    let mut lag: Vec<u64> = pairs.iter().map(|(_, l)| *l).collect();
    lag.sort_unstable();
    // The first run of each tick: the loop's own delay, without the batch behind it.
    let mut first: std::collections::BTreeMap<i64, u64> = Default::default();
    for (fire, l) in &pairs {
        let e = first.entry(*fire).or_insert(*l);
        *e = (*e).min(*l);
    }
    let mut first: Vec<u64> = first.into_values().collect();
    first.sort_unstable();
    anyhow::ensure!(!lag.is_empty(), "no schedule fired");
    let fires = lag.len();
    let expected = (n as f64 * secs) as usize;

    let (w3, _) = submit_to_start(&s, &store, env_f64("BENCH_W3_RATE", 200.0), 10.0).await?;
    let line = |v: &[u64]| {
        format!(
            "p50 {:.2} / p95 {:.2} / p99 {:.2} ms",
            pct_ms(v, 50.0),
            pct_ms(v, 95.0),
            pct_ms(v, 99.0)
        )
    };
    Ok(vec![
        (
            format!("fire lag, {n} schedules every second ({fires} runs of ~{expected})"),
            line(&lag),
            format!(
                "p99 = {:.2}× W3's p99 (target ≤ 2×)",
                pct_ms(&lag, 99.0) / pct_ms(&w3, 99.0)
            ),
        ),
        (
            "fire lag of the first run of each tick".into(),
            line(&first),
            "the loop's wake-up and claim, without the rest of the batch".into(),
        ),
        (
            "W3 submit→start at 200/s, same run".into(),
            line(&w3),
            "the baseline".into(),
        ),
    ])
}
