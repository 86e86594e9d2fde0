//! `w3`: submit→start latency at 200 jobs/s (the harness's W3), against its floor: plain
//! `insert_one` calls of job-shaped documents on the same schedule, one pass before and one after.

use std::time::{Duration, Instant};

use jobmill::client::NewJob;
use jobmill::queue::RedisQueue;
use jobmill::store::Store;
use jobmill_bench::deployment::{self, QUEUE, TENANT};
use jobmill_bench::kinds::{self, now_us};
use mongodb::bson::Document;
use redis::AsyncCommands;
use serde_json::json;

use crate::measure::{env_f64, paced, pct_ms};
use crate::servers::{fresh, Worker};
use crate::store_ceiling::{indexed_scratch, job_doc};
use crate::Rows;

/// W3 next to its floor. The harness's W3 (submit→start at 200 jobs/s) through the library
/// client and one worker, run between two passes of the same schedule of plain `insert_one`
/// calls (job-shaped documents, the job indexes) on the same server. A submission is a durable
/// insert before anything else, so the insert's own latency is the floor of W3's.
pub(crate) async fn w3_floor() -> anyhow::Result<Rows> {
    let rate_per_s = env_f64("BENCH_W3_RATE", 200.0);
    let secs = env_f64("BENCH_W3_SECS", 10.0);
    let (s, store, counter) = fresh(64).await?;
    let scratch = indexed_scratch(&store, "w3_floor").await?;
    let insert_pass = |scratch: mongodb::Collection<Document>| async move {
        let mut v = paced(rate_per_s, secs, |i| {
            let c = scratch.clone();
            async move {
                c.insert_one(job_doc(i)).await?;
                Ok(())
            }
        })
        .await?;
        v.sort_unstable();
        anyhow::Ok(v)
    };
    let before = insert_pass(scratch.clone()).await?;

    let commands_before = counter.by_name();
    let trace = counter.trace_if("BENCH_W3_TRACE");
    let (lat, submit) = submit_to_start(&s, &store, rate_per_s, secs).await?;
    if let Some(path) = &trace {
        counter.write_trace(path)?;
    }
    let commands: Vec<String> = counter
        .by_name()
        .into_iter()
        .filter_map(|(name, n)| {
            let d = n - commands_before.get(&name).copied().unwrap_or(0);
            (d > 0).then(|| format!("{name} {d}"))
        })
        .collect();
    // After the drive (its worker has stopped), so W3 itself runs as it always did.
    let idle = submit_without_worker(&s, &store, rate_per_s, secs).await?;

    let after = insert_pass(scratch.clone()).await?;
    let _ = scratch.drop().await;
    let mut floor = before;
    floor.extend(after);
    floor.sort_unstable();
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
            format!("submit→start at {rate_per_s:.0}/s"),
            line(&lat),
            format!(
                "p99 = {:.2}× the floor's p99",
                pct_ms(&lat, 99.0) / pct_ms(&floor, 99.0)
            ),
        ),
        (
            "submit call (insert + Redis)".into(),
            line(&submit),
            "part of submit→start".into(),
        ),
        (
            "submit call, no worker running".into(),
            line(&idle),
            format!(
                "p99 = {:.2}× the floor's: what the submit path adds with the store to itself",
                pct_ms(&idle, 99.0) / pct_ms(&floor, 99.0)
            ),
        ),
        (
            "MongoDB commands during the drive (submitter and worker)".into(),
            commands.join(", "),
            format!("{:.0} jobs", rate_per_s * secs),
        ),
        (
            "floor: plain insert_one, same schedule".into(),
            line(&floor),
            "store latency (two passes, before and after)".into(),
        ),
    ])
}

/// The same schedule of submissions with no worker running (to a queue nobody serves): the
/// submit path's own cost over the floor, without the worker's writes and reads sharing the
/// store. Sorted call times (µs).
async fn submit_without_worker(
    s: &deployment::Settings,
    store: &Store,
    rate_per_s: f64,
    secs: f64,
) -> anyhow::Result<Vec<u64>> {
    let (client, _) = lat_client(s, store).await?;
    let mut v = paced(rate_per_s, secs, |_| {
        let c = client.clone();
        async move {
            c.submit(TENANT, lat_job("w3_idle")).await?;
            Ok(())
        }
    })
    .await?;
    v.sort_unstable();
    Ok(v)
}

/// A library client for `bench_lat` jobs on deployment `s`, and its Redis queue.
async fn lat_client(
    s: &deployment::Settings,
    store: &Store,
) -> anyhow::Result<(jobmill::client::JobClient, RedisQueue)> {
    let registry = kinds::registry(&s.redis).await?;
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    jobmill::shards::join_settings(store, s, &queue).await?;
    let client = jobmill_bench::deployment::client(store.clone(), queue.clone(), &registry, s);
    Ok((client, queue))
}

/// A `bench_lat` job on `queue`, stamped now (its handler records start minus stamp).
fn lat_job(queue: &str) -> NewJob {
    NewJob {
        kind: "bench_lat".into(),
        args: json!({"ts": now_us()}),
        queue: Some(queue.into()),
        ..Default::default()
    }
}

/// The W3 drive on deployment `s`: `bench_lat` jobs submitted through the library client at
/// `rate_per_s` for `secs`, one worker. Returns the sorted submit→start latencies and the
/// sorted submit call times (µs).
pub(crate) async fn submit_to_start(
    s: &deployment::Settings,
    store: &Store,
    rate_per_s: f64,
    secs: f64,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let (client, queue) = lat_client(s, store).await?;
    let worker = Worker::start(s, store.clone()).await?;
    let mut redis = queue.connection();
    // Warm up: the worker is listening once a job has run.
    client.submit(TENANT, lat_job(QUEUE)).await?;
    let until = Instant::now() + Duration::from_secs(30);
    while redis.llen::<_, usize>("bench:lat").await? < 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = redis.del("bench:lat").await?;
    // Steady state: the worker's start-up work (its features' indexes, the kinds it
    // announces, a first reconcile round) runs beside its first jobs and would otherwise
    // land in the first second of the drive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut submit = paced(rate_per_s, secs, |_| {
        let c = client.clone();
        async move {
            c.submit(TENANT, lat_job(QUEUE)).await?;
            Ok(())
        }
    })
    .await?;
    if let Ok(path) = std::env::var("BENCH_W3_TRACE") {
        let t: Vec<String> = submit.iter().map(|v| v.to_string()).collect();
        std::fs::write(path, t.join("\n"))?;
    }
    submit.sort_unstable();
    let until = Instant::now() + Duration::from_secs(60);
    while redis.llen::<_, usize>("bench:lat").await? < submit.len() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat: Vec<u64> = redis
        .lrange::<_, Vec<i64>>("bench:lat", 0, -1)
        .await?
        .into_iter()
        .map(|v| v.max(0) as u64)
        .collect();
    lat.sort_unstable();
    worker.stop().await?;
    anyhow::ensure!(
        lat.len() == submit.len(),
        "only {} of {} jobs started",
        lat.len(),
        submit.len()
    );

    Ok((lat, submit))
}
