//! `w2`: 20,000 no-op jobs drained by one worker: handler rate, time until every outcome is
//! durable in MongoDB, MongoDB commands per job and worker CPU per job; the durable rate against
//! the store's batched update ceiling, measured by `store` earlier in the same run.
//! `w2apalis`: the same drain through the apalis backend (`jobmill-apalis`) next to the native
//! worker in the same run: handler rates (target: apalis at least 75% of native), every outcome
//! durable, worker CPU per job of both.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use jobmill::queue::RedisQueue;
use jobmill_bench::deployment::{self, TENANT};
use jobmill_bench::kinds;
use mongodb::bson::{doc, Document};
use redis::AsyncCommands;

use crate::measure::rate;
use crate::servers::{fresh, noop_batch, Worker};
use crate::store_ceiling::ceiling_file;
use crate::{Rows, N};

/// Which worker front end drains W2.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front {
    /// `jobmill_worker::run_with_store`, the loop `jobmill-worker` runs.
    Native,
    /// An apalis worker on `jobmill-apalis` (same runtime, apalis' worker and a `TimeoutLayer`).
    Apalis,
}

/// What one W2 drain measured.
pub(crate) struct Drain {
    pub(crate) handler_rate: f64,
    pub(crate) durable: Duration,
    pub(crate) cmds: u64,
    pub(crate) by_name: String,
    pub(crate) cpu_per_job_us: f64,
    pub(crate) redis_cpu_per_job_us: Vec<f64>,
}

/// CPU seconds (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`) of each Redis server on
/// 127.0.0.1 at `ports`, in order.
pub(crate) async fn redis_cpu(ports: &[u16]) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(ports.len());
    for port in ports {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut c).await?;
        let field = |name: &str| -> f64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        out.push(field("used_cpu_sys") + field("used_cpu_user"));
    }
    Ok(out)
}

/// This process's CPU time (user + system) from `/proc/self/stat`.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// Drain `N` no-op jobs with one worker of the given front end.
async fn w2_drain(front: Front) -> anyhow::Result<Drain> {
    let (s, store, _) = fresh(64).await?;
    drain_on(front, s, store, N, &[]).await
}

/// Submit `n` no-op jobs to deployment `s`, then drain them with one worker of the given front
/// end. `redis_nodes` are Redis servers (ports on 127.0.0.1) whose CPU time (`INFO cpu`) is
/// read before and after the drain, in µs per job, into [`Drain::redis_cpu_per_job_us`].
pub(crate) async fn drain_on(
    front: Front,
    mut s: deployment::Settings,
    store: jobmill::store::Store,
    n: usize,
    redis_nodes: &[u16],
) -> anyhow::Result<Drain> {
    // Heartbeats (and with them the worker's counters in Redis) every third of a second: the
    // shortest lease the settings allow.
    s.lease_ttl = Duration::from_secs(1);
    let registry = kinds::registry(&s.redis).await?;
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    jobmill::shards::join_settings(&store, &s, &queue).await?;
    // Every lane of a sharded queue is whole: no rebuild competes with the drain.
    for lane in queue.lanes(deployment::QUEUE) {
        queue.set_epoch(&lane).await?;
    }
    let client =
        jobmill_bench::deployment::client(store.clone(), queue.clone(), &registry.clone(), &s);
    for _ in 0..n.div_ceil(1000) {
        client.submit_batch(TENANT, noop_batch(1000)).await?;
    }
    // Let the submission side's confirmations (clearing `enqueue_pending`) land before the drain
    // is measured, so the drain competes with nothing but itself.
    let pending = store
        .database()
        .collection::<Document>(jobmill::store::JOBS);
    let until = Instant::now() + Duration::from_secs(120);
    while pending
        .count_documents(doc! { "enqueue_pending": true })
        .await?
        > 0
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (wstore, counter) = deployment::counted_store(&s).await?;
    let before = counter.total();
    let redis0 = redis_cpu(redis_nodes).await?;
    let cpu0 = cpu_time()?;
    let t0 = Instant::now();
    let worker = match front {
        Front::Native => Worker::start(&s, wstore).await?,
        Front::Apalis => Worker::start_apalis(&s, wstore).await?,
    };
    // Durable outcomes are read from the worker's own counter (its registry entry in Redis,
    // refreshed with every heartbeat), not by counting in MongoDB: a count is a scan on the
    // MongoDB-compatible server and would slow down the very writes it measures.
    let mut redis = queue.connection();
    let (mut t_first, mut t_handlers, mut t_durable) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while t_durable.is_none() && Instant::now() < deadline {
        let done: usize = redis
            .get::<_, Option<usize>>("bench:done")
            .await?
            .unwrap_or(0);
        if done > 0 && t_first.is_none() {
            t_first = Some(t0.elapsed());
        }
        if done >= n && t_handlers.is_none() {
            t_handlers = Some(t0.elapsed());
        }
        let workers: Vec<String> = redis.zrange(queue.keys().workers(), 0, -1).await?;
        let mut recorded = 0usize;
        for w in workers {
            let n: Option<usize> = redis.hget(queue.keys().worker(&w), "succeeded").await?;
            recorded += n.unwrap_or(0);
        }
        if recorded >= n {
            t_durable = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_time()? - cpu0;
    let redis1 = redis_cpu(redis_nodes).await?;
    let redis_cpu_per_job_us = redis0
        .iter()
        .zip(&redis1)
        .map(|(a, b)| (b - a) * 1e6 / n as f64)
        .collect();
    let jobs = store
        .database()
        .collection::<Document>(jobmill::store::JOBS);
    let succeeded = jobs.count_documents(doc! { "state": "succeeded" }).await? as usize;
    anyhow::ensure!(
        succeeded == n,
        "only {succeeded} of {n} outcomes are in MongoDB"
    );
    let cmds = counter.total() - before;
    let by_name = format!("{:?}", counter.by_name());
    worker.stop().await?;
    let (Some(first), Some(handlers), Some(durable)) = (t_first, t_handlers, t_durable) else {
        bail!("w2 did not finish");
    };
    Ok(Drain {
        handler_rate: rate(n, handlers - first),
        durable,
        cmds,
        by_name,
        cpu_per_job_us: cpu.as_secs_f64() * 1e6 / n as f64,
        redis_cpu_per_job_us,
    })
}

/// W2 with durability: handler rate, time until every outcome is in MongoDB, commands per job.
pub(crate) async fn w2_durable() -> anyhow::Result<Rows> {
    let d = w2_drain(Front::Native).await?;
    let durable_rate = rate(N, d.durable);
    let ceiling: f64 = std::fs::read_to_string(ceiling_file())
        .context("run the `store` workload first (it measures the ceiling)")?
        .trim()
        .parse()?;
    Ok(vec![
        (
            "handler executions/s".into(),
            format!("{:.0}", d.handler_rate),
            "peers' W2 drain/s (harness table)".into(),
        ),
        (
            "all 20,000 outcomes durable after s".into(),
            format!("{:.2}", d.durable.as_secs_f64()),
            "from worker start".into(),
        ),
        (
            "durable outcomes/s".into(),
            format!("{durable_rate:.0}"),
            format!(
                "{:.0}% of the store's update ceiling {ceiling:.0}/s",
                100.0 * durable_rate / ceiling
            ),
        ),
        (
            "mongodb commands per job".into(),
            format!("{:.4}", d.cmds as f64 / N as f64),
            format!("{} commands: {}", d.cmds, d.by_name),
        ),
        (
            "worker CPU per job (µs)".into(),
            format!("{:.1}", d.cpu_per_job_us),
            "process user+system time over the drain".into(),
        ),
    ])
}

/// W2 through the apalis backend next to the native worker, same run, same servers: handler
/// rate (target: at least 75% of native), every outcome durable, CPU per job of both.
pub(crate) async fn w2_apalis() -> anyhow::Result<Rows> {
    let native = w2_drain(Front::Native).await?;
    let apalis = w2_drain(Front::Apalis).await?;
    Ok(vec![
        (
            "native handler executions/s".into(),
            format!("{:.0}", native.handler_rate),
            format!(
                "all outcomes durable after {:.2} s",
                native.durable.as_secs_f64()
            ),
        ),
        (
            "apalis handler executions/s".into(),
            format!("{:.0}", apalis.handler_rate),
            format!(
                "{:.0}% of native (target ≥ 75%); all outcomes durable after {:.2} s",
                100.0 * apalis.handler_rate / native.handler_rate,
                apalis.durable.as_secs_f64()
            ),
        ),
        (
            "native worker CPU per job (µs)".into(),
            format!("{:.1}", native.cpu_per_job_us),
            format!("{:.4} mongodb commands/job", native.cmds as f64 / N as f64),
        ),
        (
            "apalis worker CPU per job (µs)".into(),
            format!("{:.1}", apalis.cpu_per_job_us),
            format!("{:.4} mongodb commands/job", apalis.cmds as f64 / N as f64),
        ),
    ])
}
