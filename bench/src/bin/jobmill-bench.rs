//! jobmill's own benchmark: what the peers harness cannot measure. Every figure is reported with
//! the baseline it must be read against, measured in the same run on the same machine:
//! - `store`: the store's own ceilings (insert_one, insert_many, batched guarded updates).
//! - `w2`: 20,000 no-op jobs drained by one worker: handler rate, time until every outcome is
//!   durable in MongoDB, that durable rate against the store's update ceiling, and MongoDB
//!   commands per job (driver command monitoring).
//! - `w2apalis`: W2 through the apalis backend (`jobmill-apalis`) next to the native worker in
//!   the same run: handler rates (target: apalis at least 75% of native), every outcome
//!   durable, and worker CPU per job of both.
//! - `w3`: submit→start latency at 200 jobs/s (the harness's W3) between two passes of plain
//!   `insert_one` calls on the same schedule: the store's latency, W3's floor.
//! - `w1http`: 20,000 submissions over HTTP from 64 concurrent clients.
//! - `soak` (not in the default list: minutes): the worker process's RSS over 200,000 jobs.
//! - `w5`: `wrk` on `GET /v1/jobs/{id}` of a finished job, plain and with `If-None-Match`,
//!   against a trivial axum endpoint returning a constant (the HTTP stack's ceiling).
//! - `w6`: a file uploaded in 8 MiB parts through the API and assembled by a `file_assembly`
//!   job, against a streaming copy of the same bytes between two local files.
//! - `w7`: NDJSON rows imported by a `bulk_import` job, against a raw `insert_many` loop of the
//!   same documents in the same batches on the same server.
//! - `w8`: 1,000 concurrent reads of a cold cached dataset page (single-flight rebuild), against
//!   the same 1,000 reads once the page is cached.
//!
//! `w6`–`w8` and `soak` take minutes at full size, so they run only when named. Each works in a database
//! of its own (`jobmill_bench_w6`...), dropped before and after, so a rerun starts cold.
//!
//! Needs: `BENCH_REDIS_URL` and `JOBMILL_BENCH_MONGODB_URI` (see `bench/run.sh`, which starts
//! private servers), `wrk` on the PATH for `w5`. Sizes: `BENCH_W6_MIB` (default 1024),
//! `BENCH_W7_ROWS` (default 1,000,000).
//!
//! ```text
//! jobmill-bench [store] [w2] [w2apalis] [w3] [w1http] [w5] [w6] [w7] [w8] [soak]
//!     (default: store w2 w3 w1http w5, in that order)
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt, TryStreamExt};
use jobmill::client::{NewJob, DEFAULT_QUEUE};
use jobmill::config::QueueWeight;
use jobmill::queue::RedisQueue;
use jobmill::store::Store;
use jobmill_bench::deployment::{self, API_SECRET, QUEUE, TENANT};
use jobmill_bench::kinds::{self, now_us};
use jobmill_data::datasets::Datasets;
use mongodb::bson::{doc, Bson, Document};
use redis::AsyncCommands;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

const N: usize = 20_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut which: Vec<String> = std::env::args().skip(1).collect();
    if which.is_empty() {
        which = ["store", "w2", "w3", "w1http", "w5"]
            .map(String::from)
            .to_vec();
    }
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for w in &which {
        let r = match w.as_str() {
            "store" => store_ceiling().await?,
            "w2" => w2_durable().await?,
            "w2apalis" => w2_apalis().await?,
            "w3" => w3_floor().await?,
            "soak" => soak().await?,
            "w1http" => w1_http().await?,
            "w5" => w5().await?,
            "w6" => w6_file_assembly().await?,
            "w7" => w7_bulk_import().await?,
            "w8" => w8_stampede().await?,
            other => {
                bail!("unknown workload {other} (store, w2, w2apalis, w3, w1http, w5, w6, w7, w8, soak)")
            }
        };
        for (k, v, base) in r {
            eprintln!("{w}: {k} = {v}   [{base}]");
            rows.push((format!("{w} {k}"), v, base));
        }
    }
    println!("| measure | value | against (same run) |\n|---|---|---|");
    for (k, v, b) in rows {
        println!("| {k} | {v} | {b} |");
    }
    Ok(())
}

type Rows = Vec<(String, String, String)>;

/// A fresh deployment: empty jobs collection, empty queue.
async fn fresh(
    concurrency: usize,
) -> anyhow::Result<(deployment::Settings, Store, deployment::CommandCounter)> {
    let s = deployment::settings(concurrency)?;
    clear_redis(&s).await?;
    let (store, counter) = deployment::counted_store(&s).await?;
    deployment::sync_with_harness_reset(&s, &store).await?;
    Ok((s, store, counter))
}

/// Delete the bench's keys: the queues, the cache, and the harness markers.
async fn clear_redis(s: &deployment::Settings) -> anyhow::Result<()> {
    let queue = RedisQueue::connect(s.redis_url.expose(), &s.key_prefix).await?;
    let mut c = queue.connection();
    // Our own prefix only: the bench Redis may be shared.
    let keys: Vec<String> = c.keys(format!("{}:*", s.key_prefix)).await?;
    if !keys.is_empty() {
        let _: () = c.del(keys).await?;
    }
    let _: () = c
        .del(&["bench:done", "bench:lat", "bench:jobmill:generation"])
        .await?;
    Ok(())
}

/// `n` no-op jobs on the bench queue, stamped now.
fn noop_batch(n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|_| NewJob {
            kind: "bench_noop".into(),
            args: json!({"ts": now_us()}),
            queue: Some(QUEUE.into()),
            ..Default::default()
        })
        .collect()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The store's own write ceilings, with documents shaped like jobs and the same indexes.
async fn store_ceiling() -> anyhow::Result<Rows> {
    let (s, store, _) = fresh(1).await?;
    let db = store.database();
    let plain = db.collection::<Document>("ceiling_plain");
    let _ = plain.drop().await;
    let indexed = indexed_scratch(&store, "ceiling_indexed").await?;
    let mut out = Rows::new();
    // insert_one, sequential (what one synchronous submit costs).
    let t = Instant::now();
    for i in 0..2000 {
        plain.insert_one(job_doc(i)).await?;
    }
    let single = rate(2000, t.elapsed());
    // insert_many in batches of 1000, without and with the job indexes.
    let mut ids = Vec::new();
    for (coll, label) in [(&plain, "no indexes"), (&indexed, "job indexes")] {
        let docs: Vec<Document> = (0..N).map(job_doc).collect();
        if label == "job indexes" {
            ids = docs
                .iter()
                .map(|d| d.get_str("_id").unwrap().to_string())
                .collect();
        }
        let t = Instant::now();
        for chunk in docs.chunks(1000) {
            coll.insert_many(chunk.to_vec()).await?;
        }
        out.push((
            format!("insert_many ({label}) docs/s"),
            format!("{:.0}", rate(N, t.elapsed())),
            "store ceiling".into(),
        ));
    }
    // Batched guarded updates shaped like the worker's outcome writes, 1000 per command.
    let t = Instant::now();
    for chunk in ids.chunks(1000) {
        let updates: Vec<Document> = chunk
            .iter()
            .map(|id| doc! {
                "q": { "_id": id, "state": { "$in": ["queued", "scheduled", "running", "retrying"] }, "attempt": { "$lte": 1 } },
                "u": { "$set": { "state": "succeeded", "attempt": 1, "started_ms": 1_i64, "finished_ms": 2_i64,
                                 "result_json": "null", "enqueue_pending": false,
                                 "retention": { "expire_at": mongodb::bson::DateTime::now() } },
                       "$inc": { "rev": 1 } },
            })
            .collect();
        db.run_command(doc! { "update": "ceiling_indexed", "updates": updates, "ordered": true })
            .await?;
    }
    let ceiling = rate(N, t.elapsed());
    out.insert(
        0,
        (
            "insert_one docs/s".into(),
            format!("{single:.0}"),
            "store ceiling".into(),
        ),
    );
    out.push((
        "batched guarded updates/s".into(),
        format!("{ceiling:.0}"),
        "store ceiling (the W2 durable-rate baseline)".into(),
    ));
    let _ = plain.drop().await;
    let _ = indexed.drop().await;
    let _ = s;
    std::fs::write(ceiling_file(), format!("{ceiling}"))?;
    Ok(out)
}

/// A document shaped like a freshly submitted job.
fn job_doc(i: usize) -> Document {
    let id = uuid::Uuid::now_v7().to_string();
    doc! {
        "_id": &id, "list_key": &id, "tenant": "bench", "kind": "bench_noop", "queue": "bench",
        "priority": 0, "args_json": format!("{{\"ts\":{i}}}"), "state": "queued", "attempt": 0,
        "max_attempts": 3, "attempt_budget": 3, "timeout_ms": 300000_i64, "errors": {},
        "cancel_requested": false, "created_ms": 0_i64, "run_at_ms": 0_i64, "rev": 1_i64,
        "enqueue_pending": true,
    }
}

/// An empty scratch collection with the same indexes as the jobs collection.
async fn indexed_scratch(
    store: &Store,
    name: &str,
) -> anyhow::Result<mongodb::Collection<Document>> {
    let coll = store.database().collection::<Document>(name);
    let _ = coll.drop().await;
    let jobs_indexes: Vec<Document> = store
        .database()
        .collection::<Document>(jobmill::store::JOBS)
        .list_indexes()
        .await?
        .map(|m| m.map(|m| m.keys))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    for keys in jobs_indexes.into_iter().filter(|k| !k.contains_key("_id")) {
        coll.create_index(mongodb::IndexModel::builder().keys(keys).build())
            .await?;
    }
    Ok(coll)
}

fn ceiling_file() -> std::path::PathBuf {
    std::env::temp_dir().join("jobmill-bench-update-ceiling")
}

/// Which worker front end drains W2.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Front {
    /// `jobmill_worker::run_with_store`, the loop `jobmill-worker` runs.
    Native,
    /// An apalis worker on `jobmill-apalis` (same runtime, apalis' worker and a `TimeoutLayer`).
    Apalis,
}

/// What one W2 drain measured.
struct Drain {
    handler_rate: f64,
    durable: Duration,
    cmds: u64,
    by_name: String,
    cpu_per_job_us: f64,
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
    let (mut s, store, _) = fresh(64).await?;
    // Heartbeats (and with them the worker's counters in Redis) every third of a second: the
    // shortest lease the settings allow.
    s.lease_ttl = Duration::from_secs(1);
    let registry = kinds::registry(s.redis_url.expose()).await?;
    let queue = RedisQueue::connect(s.redis_url.expose(), &s.key_prefix).await?;
    let client = deployment::client(store.clone(), queue.clone(), &registry.clone(), &s);
    for _ in 0..N / 1000 {
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
        if done >= N && t_handlers.is_none() {
            t_handlers = Some(t0.elapsed());
        }
        let workers: Vec<String> = redis.zrange(queue.keys().workers(), 0, -1).await?;
        let mut recorded = 0usize;
        for w in workers {
            let n: Option<usize> = redis.hget(queue.keys().worker(&w), "succeeded").await?;
            recorded += n.unwrap_or(0);
        }
        if recorded >= N {
            t_durable = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_time()? - cpu0;
    let jobs = store
        .database()
        .collection::<Document>(jobmill::store::JOBS);
    let succeeded = jobs.count_documents(doc! { "state": "succeeded" }).await? as usize;
    anyhow::ensure!(
        succeeded == N,
        "only {succeeded} of {N} outcomes are in MongoDB"
    );
    let cmds = counter.total() - before;
    let by_name = format!("{:?}", counter.by_name());
    worker.stop().await?;
    let (Some(first), Some(handlers), Some(durable)) = (t_first, t_handlers, t_durable) else {
        bail!("w2 did not finish");
    };
    Ok(Drain {
        handler_rate: rate(N, handlers - first),
        durable,
        cmds,
        by_name,
        cpu_per_job_us: cpu.as_secs_f64() * 1e6 / N as f64,
    })
}

/// W2 with durability: handler rate, time until every outcome is in MongoDB, commands per job.
async fn w2_durable() -> anyhow::Result<Rows> {
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
async fn w2_apalis() -> anyhow::Result<Rows> {
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

/// Run `f` on an absolute schedule of `rate` calls per second for `secs`; the duration of each
/// call, in µs.
async fn paced<F, Fut>(rate: f64, secs: f64, mut f: F) -> anyhow::Result<Vec<u64>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let n = (rate * secs).round() as usize;
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let t = Instant::now();
        f(i).await?;
        out.push(t.elapsed().as_micros() as u64);
    }
    Ok(out)
}

/// Nearest-rank percentile of sorted µs values, in ms (the harness's definition).
fn pct_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k] as f64 / 1000.0
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// W3 next to its floor. The harness's W3 (submit→start at 200 jobs/s) through the library
/// client and one worker, run between two passes of the same schedule of plain `insert_one`
/// calls (job-shaped documents, the job indexes) on the same server. A submission is a durable
/// insert before anything else, so the insert's own latency is the floor of W3's.
async fn w3_floor() -> anyhow::Result<Rows> {
    let rate_per_s = env_f64("BENCH_W3_RATE", 200.0);
    let secs = env_f64("BENCH_W3_SECS", 10.0);
    let (s, store, _) = fresh(64).await?;
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

    let registry = kinds::registry(s.redis_url.expose()).await?;
    let queue = RedisQueue::connect(s.redis_url.expose(), &s.key_prefix).await?;
    let client = deployment::client(store.clone(), queue.clone(), &registry.clone(), &s);
    let worker = Worker::start(&s, store.clone()).await?;
    let lat_job = || NewJob {
        kind: "bench_lat".into(),
        args: json!({"ts": now_us()}),
        queue: Some(QUEUE.into()),
        ..Default::default()
    };
    let mut redis = queue.connection();
    // Warm up: the worker is listening once a job has run.
    client.submit(TENANT, lat_job()).await?;
    let until = Instant::now() + Duration::from_secs(30);
    while redis.llen::<_, usize>("bench:lat").await? < 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = redis.del("bench:lat").await?;
    let mut submit = paced(rate_per_s, secs, |_| {
        let c = client.clone();
        async move {
            c.submit(TENANT, lat_job()).await?;
            Ok(())
        }
    })
    .await?;
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
            "floor: plain insert_one, same schedule".into(),
            line(&floor),
            "store latency (two passes, before and after)".into(),
        ),
    ])
}

/// Resident set size of process `pid`, MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

/// Worker memory over a long drain. One worker process (`bench-peer worker cpu`, the harness's
/// W2 worker) drains `BENCH_SOAK_ROUNDS` (20) rounds of 10,000 no-op jobs; after each round the
/// finished jobs are deleted from MongoDB, as retention would, so the store does not slow down
/// round after round. RSS is sampled every 250 ms. Flat means the last round ends where the
/// second did (the first round includes warm-up allocations).
async fn soak() -> anyhow::Result<Rows> {
    let rounds = (env_f64("BENCH_SOAK_ROUNDS", 20.0) as usize).max(2);
    let per_round = 10_000usize;
    let (s, store, _) = fresh(64).await?;
    let exe = std::env::current_exe()?.with_file_name("bench-peer");
    let log = std::fs::File::create(std::env::temp_dir().join("jobmill-bench-soak-worker.log"))?;
    let mut child = tokio::process::Command::new(&exe)
        .args(["worker", "cpu"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    let pid = child.id().context("worker pid")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_mib(pid)?;
    let peak = std::sync::Arc::new(std::sync::Mutex::new(idle));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Ok(v) = rss_mib(pid) {
                {
                    let mut p = peak.lock().expect("peak");
                    *p = p.max(v);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let registry = kinds::registry(s.redis_url.expose()).await?;
    let queue = RedisQueue::connect(s.redis_url.expose(), &s.key_prefix).await?;
    let client = deployment::client(store.clone(), queue, &registry, &s);
    let jobs = store
        .database()
        .collection::<Document>(jobmill::store::JOBS);
    let t0 = Instant::now();
    let mut after_round = Vec::with_capacity(rounds);
    for round in 0..rounds {
        for _ in 0..per_round / 1000 {
            client.submit_batch(TENANT, noop_batch(1000)).await?;
        }
        // Deleting what succeeded is both the retention and the "all durable" check.
        let mut gone = 0u64;
        let until = Instant::now() + Duration::from_secs(300);
        while gone < per_round as u64 {
            anyhow::ensure!(Instant::now() < until, "round {round} did not drain");
            tokio::time::sleep(Duration::from_millis(300)).await;
            gone += jobs
                .delete_many(doc! { "state": "succeeded" })
                .await?
                .deleted_count;
        }
        after_round.push(rss_mib(pid)?);
        eprintln!(
            "soak: round {}/{rounds} done after {:.0} s, worker RSS {:.1} MiB",
            round + 1,
            t0.elapsed().as_secs_f64(),
            after_round[round]
        );
    }
    let elapsed = t0.elapsed();
    sampler.abort();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let peak = *peak.lock().expect("peak");
    let (second, last) = (after_round[1], after_round[rounds - 1]);
    Ok(vec![
        (
            "worker RSS idle".into(),
            format!("{idle:.1} MiB"),
            "before the first job".into(),
        ),
        (
            format!("worker RSS after rounds 2 / {rounds}"),
            format!("{second:.1} / {last:.1} MiB"),
            format!(
                "{:+.1} MiB over {} jobs in {:.0} s",
                last - second,
                per_round * (rounds - 1),
                elapsed.as_secs_f64()
            ),
        ),
        (
            "worker RSS peak".into(),
            format!("{peak:.1} MiB"),
            "sampled every 250 ms".into(),
        ),
    ])
}

/// Start the API in this process on a free port, with the bench kinds.
async fn api_server(s: &deployment::Settings) -> anyhow::Result<String> {
    let registry = kinds::registry(s.redis_url.expose()).await?;
    let state = jobmill_api::AppState::connect(&s.api, registry).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, jobmill_api::app(state)).await });
    Ok(format!("http://{addr}"))
}

/// W1 over HTTP: 64 concurrent clients submit 20,000 jobs.
async fn w1_http() -> anyhow::Result<Rows> {
    let (s, _, _) = fresh(1).await?;
    let base = api_server(&s).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(0..N)
        .map(|_| {
            let http = http.clone();
            let url = format!("{base}/v1/jobs");
            async move {
                let r = http
                    .post(url)
                    .bearer_auth(API_SECRET)
                    .json(&json!({"kind": "bench_noop", "queue": QUEUE, "args": {"ts": now_us()}}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().as_u16() == 202, "status {}", r.status());
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = t.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} submissions failed");
    Ok(vec![(
        "HTTP submissions/s, 64 clients".into(),
        format!("{:.0}", rate(N, elapsed)),
        "peers' W1 enqueue/s (harness table); store insert_one ceiling above".into(),
    )])
}

/// W5: wrk on a finished job's status, plain and conditional, against a constant endpoint.
async fn w5() -> anyhow::Result<Rows> {
    let (s, store, _) = fresh(1).await?;
    let base = api_server(&s).await?;
    let http = reqwest::Client::new();
    let r: serde_json::Value = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(API_SECRET)
        .json(&json!({"kind": "noop", "queue": QUEUE, "args": {"x": 1}}))
        .send()
        .await?
        .json()
        .await?;
    let id = r["id"].as_str().context("job id")?.to_string();
    // Finish it with a short-lived in-process worker.
    let w = Worker::start(&s, store).await?;
    let url = format!("{base}/v1/jobs/{id}");
    let etag = loop {
        let res = http.get(&url).bearer_auth(API_SECRET).send().await?;
        let etag = res
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body: serde_json::Value = res.json().await?;
        if body["state"] == "succeeded" {
            break etag;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    w.stop().await?;
    // The HTTP stack's own ceiling: same axum, same runtime, a constant answer.
    let trivial = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let trivial_url = format!("http://{}/", trivial.local_addr()?);
    tokio::spawn(async move {
        axum::serve(
            trivial,
            axum::Router::new().route("/", axum::routing::get(|| async { "ok" })),
        )
        .await
    });
    let auth = format!("Authorization: Bearer {API_SECRET}");
    let inm = format!("If-None-Match: {etag}");
    let base_run = wrk(&trivial_url, &[]).await?;
    let plain = wrk(&url, &[&auth]).await?;
    let cond = wrk(&url, &[&auth, &inm]).await?;
    let base_run2 = wrk(&trivial_url, &[]).await?;
    let ceiling = (base_run.0 + base_run2.0) / 2.0;
    let row = |label: &str, (rps, p99): (f64, f64)| {
        (
            label.to_string(),
            format!("{rps:.0} req/s, p99 {p99:.2} ms"),
            format!(
                "{:.0}% of the constant endpoint ({ceiling:.0} req/s)",
                100.0 * rps / ceiling
            ),
        )
    };
    Ok(vec![
        row("constant endpoint (baseline)", base_run),
        row("GET finished job", plain),
        row("GET finished job, If-None-Match -> 304", cond),
    ])
}

/// Run wrk for 10 s with 100 connections; returns (requests/s, p99 ms).
async fn wrk(url: &str, headers: &[&str]) -> anyhow::Result<(f64, f64)> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args(["-t2", "-c100", "-d10s", "--latency"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .await
        .context("wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(parse_wrk_time)
        .unwrap_or(f64::NAN);
    if text.contains("Non-2xx") && !headers.iter().any(|h| h.starts_with("If-None-Match")) {
        bail!("wrk saw errors: {text}");
    }
    Ok((rps, p99))
}

fn parse_wrk_time(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else {
        num(v)
    }
}

// ----- W6–W8: file assembly, bulk import, cache stampede -----------------------------------

/// A fresh deployment (see [`fresh`]) whose MongoDB data lives in a database of its own,
/// `jobmill_bench_<name>`, dropped first so the workload starts cold whatever an earlier,
/// interrupted run left. Its workers also consume the `default` queue: the API submits
/// `file_assembly` (upload completion) and `cache_rebuild` (cache miss) there, and the bench
/// settings name only the `bench` queue.
async fn scratch(
    name: &str,
    concurrency: usize,
) -> anyhow::Result<(deployment::Settings, Store, deployment::CommandCounter)> {
    let (mut s, _, _) = fresh(concurrency).await?;
    s.mongodb_db = format!("jobmill_bench_{name}");
    s.worker.worker.queues.push(QueueWeight {
        name: DEFAULT_QUEUE.into(),
        weight: 1,
    });
    let (store, counter) = deployment::counted_store(&s).await?;
    store.database().drop().await?;
    store.ensure_indexes().await?;
    Ok((s, store, counter))
}

/// Undo [`scratch`]: its database and the Redis keys (queues, cache versions) go.
async fn drop_scratch(s: &deployment::Settings, store: &Store) -> anyhow::Result<()> {
    store.database().drop().await?;
    clear_redis(s).await
}

/// A worker in this process: `jobmill_worker::run_with_store`, the loop `jobmill-worker` runs.
struct Worker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    async fn start(s: &deployment::Settings, store: Store) -> anyhow::Result<Self> {
        let registry = kinds::registry(s.redis_url.expose()).await?;
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let settings = s.clone();
        let task = tokio::spawn(async move {
            jobmill_worker::run_with_store(settings.worker_config(), registry, store, async {
                let _ = rx.await;
            })
            .await?;
            Ok(())
        });
        Ok(Worker { stop, task })
    }

    /// The same drain through apalis: `bench_noop` as an apalis handler on `jobmill-apalis`.
    async fn start_apalis(s: &deployment::Settings, store: Store) -> anyhow::Result<Self> {
        use apalis::layers::TimeoutLayer;
        use apalis::prelude::{BoxDynError, Data, WorkerBuilder};
        use redis::aio::ConnectionManager;

        async fn noop(_args: kinds::Ts, redis: Data<ConnectionManager>) -> Result<(), BoxDynError> {
            let mut c = (*redis).clone();
            let () = c.incr("bench:done", 1).await?;
            Ok(())
        }

        let conn = jobmill::queue::connect(s.redis_url.expose()).await?;
        let mut kinds = jobmill_apalis::Kinds::new();
        let kind = kinds.add::<kinds::Ts>("bench_noop", QUEUE);
        let jobmill =
            jobmill_apalis::Jobmill::start_with_store(s.worker_config(), kinds, store).await?;
        let worker = WorkerBuilder::new("bench-noop")
            .backend(jobmill.backend(kind))
            .data(conn)
            .layer(TimeoutLayer::new(Duration::from_secs(30)))
            .build(noop);
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let workers = async move {
                let _ = worker.run().await;
            };
            jobmill
                .run(workers, async {
                    let _ = rx.await;
                })
                .await?;
            Ok(())
        });
        Ok(Worker { stop, task })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// A scratch directory under the system temp dir, removed when dropped (also on error: a
/// failed 1 GiB run must not leave gigabytes behind).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!("jobmill-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A size knob from the environment (`_` allowed as a digit separator).
fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Megabytes (10^6 bytes) per second.
fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Copy block of the local baselines, also the size the API takes parts in.
const BLOCK: usize = 8 << 20;

/// Write `size` pseudo-random bytes (xorshift): incompressible, so no layer gets a free ride.
/// Synced before returning: otherwise the copies timed next compete with the writeback of a
/// gigabyte of dirty pages and run several times slower than a copy does on its own.
fn write_random(path: &Path, size: usize) -> std::io::Result<()> {
    let mut w = std::fs::File::create(path)?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK);
        for c in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        w.write_all(&buf[..n])?;
        left -= n;
    }
    w.sync_all()?;
    Ok(())
}

/// SHA-256 (hex) of a file, and how long reading and hashing it took.
fn sha256_file(path: &Path) -> std::io::Result<(String, Duration)> {
    let t = Instant::now();
    let mut r = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok((hex::encode(sha.finalize()), t.elapsed()))
}

/// Stream `from` into a new file in 8 MiB blocks, the way a program copies a file; with `sync`,
/// until the copy is on disk. The copy is removed afterwards (outside the time).
fn stream_copy(from: &Path, sync: bool) -> std::io::Result<Duration> {
    let to = from.with_extension("copy");
    let t = Instant::now();
    let mut r = std::fs::File::open(from)?;
    let mut w = std::fs::File::create(&to)?;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
    }
    if sync {
        w.sync_all()?;
    }
    let took = t.elapsed();
    drop(w);
    std::fs::remove_file(&to)?;
    Ok(took)
}

/// Send a request with the bench key; its JSON answer, once the status is the one wanted.
async fn api_json(req: reqwest::RequestBuilder, want: u16) -> anyhow::Result<Value> {
    let res = req.bearer_auth(API_SECRET).send().await?;
    let status = res.status().as_u16();
    let body = res.text().await?;
    anyhow::ensure!(status == want, "status {status}, wanted {want}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// Poll a job through the API until it ends and return its final view. Every 100 ms: a poll of
/// a running job is a MongoDB read, and the workloads measured here run for seconds to minutes.
/// Progress goes to stderr every 5 s.
async fn wait_job(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    label: &str,
) -> anyhow::Result<Value> {
    let t = Instant::now();
    let mut shown = Instant::now();
    loop {
        let j = match api_json(http.get(format!("{base}/v1/jobs/{id}")), 200).await {
            Ok(j) => j,
            // The API answers 503 when MongoDB does not answer in time, and asks to retry: the
            // compatible server can stall for seconds under a heavy command.
            Err(e) if e.to_string().starts_with("status 503") => {
                eprintln!("{label}: status poll got 503, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if matches!(
            j["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return Ok(j);
        }
        if shown.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "{label}: {:.0} s, {}, {}",
                t.elapsed().as_secs_f64(),
                j["state"],
                j["progress"]["message"]
            );
            shown = Instant::now();
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(3 * 3600),
            "{label} did not finish: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A file uploaded and assembled through the API.
struct Uploaded {
    /// The stored file.
    file_id: String,
    /// SHA-256 the `file_assembly` job reported.
    sha256: String,
    /// From the first part sent to the last part acknowledged.
    upload: Duration,
    /// From the completion request to the job's success.
    assembly: Duration,
}

/// Upload `path` through `POST /v1/uploads` and `PUT .../parts/{n}`, in parts of `part_size`
/// sent one after another (the whole-file SHA-256 declared, so the assembly checks it), then
/// complete it and wait for its `file_assembly` job. Needs a worker running.
async fn upload_file(
    http: &reqwest::Client,
    base: &str,
    path: &Path,
    sha256: &str,
    part_size: usize,
) -> anyhow::Result<Uploaded> {
    let size = tokio::fs::metadata(path).await?.len();
    let up = api_json(
        http.post(format!("{base}/v1/uploads")).json(&json!({
            "filename": path.file_name().and_then(|n| n.to_str()).unwrap_or("bench.bin"),
            "size": size,
            "sha256": sha256,
            "content_type": "application/octet-stream",
        })),
        201,
    )
    .await?;
    let id = up["id"].as_str().context("upload id")?.to_string();
    let mut f = tokio::fs::File::open(path).await?;
    let t = Instant::now();
    let mut sent = 0u64;
    let mut n = 0;
    while sent < size {
        let mut part = vec![0u8; part_size.min((size - sent) as usize)];
        f.read_exact(&mut part).await?;
        sent += part.len() as u64;
        api_json(
            http.put(format!("{base}/v1/uploads/{id}/parts/{n}"))
                .header("content-type", "application/octet-stream")
                .body(part),
            200,
        )
        .await?;
        n += 1;
    }
    let upload = t.elapsed();
    let t = Instant::now();
    let job = api_json(
        http.post(format!("{base}/v1/uploads/{id}/complete"))
            .json(&json!({})),
        202,
    )
    .await?;
    let job_id = job["id"].as_str().context("assembly job id")?;
    let j = wait_job(http, base, job_id, "file_assembly").await?;
    let assembly = t.elapsed();
    anyhow::ensure!(j["state"] == "succeeded", "assembly did not succeed: {j}");
    anyhow::ensure!(
        j["result"]["size"].as_u64() == Some(size),
        "assembled size differs: {j}"
    );
    Ok(Uploaded {
        file_id: j["result"]["file_id"]
            .as_str()
            .context("file id")?
            .to_string(),
        sha256: j["result"]["sha256"]
            .as_str()
            .context("file sha256")?
            .to_string(),
        upload,
        assembly,
    })
}

/// W6: a file (`BENCH_W6_MIB`, default 1 GiB) uploaded in 8 MiB parts through the API and
/// assembled by a real worker, against a streaming copy of the same bytes between local files.
async fn w6_file_assembly() -> anyhow::Result<Rows> {
    let mib = knob("BENCH_W6_MIB", 1024)?;
    let size = (mib as u64) << 20;
    let (s, store, counter) = scratch("w6", 1).await?;
    let dir = TempDir::new("w6")?;
    let src = dir.0.join("w6.bin");
    eprintln!("w6: writing {mib} MiB to {}", src.display());
    let (sha, hashing, mut copies, synced) = tokio::task::spawn_blocking({
        let src = src.clone();
        move || -> std::io::Result<_> {
            write_random(&src, size as usize)?;
            let (sha, hashing) = sha256_file(&src)?;
            // The source was just written, so it is in the page cache, for the copy as for the
            // upload; the copy's writes land in the page cache too unless it syncs. One copy
            // untimed first: this machine is a microVM, and the first touch of guest memory
            // the page cache has not used yet is several times slower than the copy itself.
            stream_copy(&src, false)?;
            let copies = vec![stream_copy(&src, false)?, stream_copy(&src, false)?];
            let synced = stream_copy(&src, true)?;
            Ok((sha, hashing, copies, synced))
        }
    })
    .await??;
    let ceiling = chunk_ceiling(&store).await?;

    let base = api_server(&s).await?;
    let worker = Worker::start(&s, store.clone()).await?;
    let http = reqwest::Client::new();
    let before = counter.total();
    let by_name_before = counter.by_name();
    eprintln!(
        "w6: uploading {mib} MiB in parts of {} MiB",
        s.api.data.upload_part_size >> 20
    );
    let up = upload_file(&http, &base, &src, &sha, s.api.data.upload_part_size).await?;
    let cmds = counter.total() - before;
    let by_name: std::collections::BTreeMap<String, u64> = counter
        .by_name()
        .into_iter()
        .map(|(k, v)| {
            let v = v - by_name_before.get(&k).copied().unwrap_or(0);
            (k, v)
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    anyhow::ensure!(
        up.sha256 == sha,
        "the assembled file's SHA-256 {} is not the source's {sha}",
        up.sha256
    );
    // The copy again after the upload (median of three): the machine is shared, and copies
    // before and after bracket the API figures in time.
    copies.push(
        tokio::task::spawn_blocking({
            let src = src.clone();
            move || stream_copy(&src, false)
        })
        .await??,
    );
    worker.stop().await?;
    drop_scratch(&s, &store).await?;
    drop(dir);

    copies.sort();
    let copy = mbps(size, copies[1]);
    let pct = |v: f64| format!("{:.1}% of the copy ({:.3}×)", 100.0 * v / copy, v / copy);
    let upload = mbps(size, up.upload);
    let assembly = mbps(size, up.assembly);
    let both = mbps(size, up.upload + up.assembly);
    Ok(vec![
        (
            "streaming copy MB/s (baseline)".into(),
            format!("{copy:.0}"),
            format!(
                "{mib} MiB file to file in 8 MiB blocks, page cache; {:.0} MB/s with fsync",
                mbps(size, synced)
            ),
        ),
        (
            "store: insert_one of 256 KiB MB/s".into(),
            format!("{:.0}", ceiling.0),
            "store ceiling of the upload (one piece per insert_one)".into(),
        ),
        (
            "store: find_one + replace_one of 256 KiB MB/s".into(),
            format!("{:.0}", ceiling.1),
            "store ceiling of the assembly (a read and a chunk write per 256 KiB), no TTL index"
                .into(),
        ),
        (
            "SHA-256 of the file MB/s".into(),
            format!("{:.0}", mbps(size, hashing)),
            "read and hashed in this process (the hashing ceiling)".into(),
        ),
        (
            "upload MB/s".into(),
            format!("{upload:.0}"),
            format!(
                "{}; {:.0}% of the store's insert_one; {:.1} s, parts of {} MiB one at a time",
                pct(upload),
                100.0 * upload / ceiling.0,
                up.upload.as_secs_f64(),
                s.api.data.upload_part_size >> 20
            ),
        ),
        (
            "assembly MB/s".into(),
            format!("{assembly:.0}"),
            format!(
                "{}; {:.0}% of the store's read + write; {:.1} s from completion request to success; SHA-256 {}… verified",
                pct(assembly),
                100.0 * assembly / ceiling.1,
                up.assembly.as_secs_f64(),
                &sha[..16]
            ),
        ),
        (
            "upload + assembly MB/s".into(),
            format!("{both:.0}"),
            pct(both),
        ),
        (
            "worker mongodb commands during upload + assembly".into(),
            format!("{cmds}"),
            format!("file {}: {by_name:?}", up.file_id),
        ),
    ])
}

/// The store's own rates for 256 KiB binary documents (MB/s): `insert_one` (what the upload
/// does per piece), and `find_one` plus an upserting `replace_one` into a collection with the
/// chunks' unique index (what the assembly does per chunk). 64 of each, in scratch collections.
async fn chunk_ceiling(store: &Store) -> anyhow::Result<(f64, f64)> {
    const DOCS: usize = 64;
    let db = store.database();
    let (a, b) = (
        db.collection::<Document>("w6_ceiling_a"),
        db.collection::<Document>("w6_ceiling_b"),
    );
    b.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! { "file_id": 1, "n": 1 })
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build(),
    )
    .await?;
    let mut data = vec![0u8; jobmill_data::files::CHUNK_SIZE];
    for (i, x) in data.iter_mut().enumerate() {
        *x = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let bin = || {
        Bson::Binary(mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: data.clone(),
        })
    };
    let t = Instant::now();
    for i in 0..DOCS {
        a.insert_one(doc! { "_id": format!("p:{i}"), "n": i as i64, "data": bin() })
            .await?;
    }
    let insert = t.elapsed();
    let t = Instant::now();
    for i in 0..DOCS {
        let d = a
            .find_one(doc! { "_id": format!("p:{i}") })
            .await?
            .context("ceiling doc")?;
        let id = format!("f:{i}");
        b.replace_one(
            doc! { "_id": &id },
            doc! { "_id": &id, "file_id": "f", "n": i as i64, "data": d.get("data").cloned().unwrap_or(Bson::Null) },
        )
        .upsert(true)
        .await?;
    }
    let copy = t.elapsed();
    a.drop().await?;
    b.drop().await?;
    let bytes = (DOCS * jobmill_data::files::CHUNK_SIZE) as u64;
    Ok((mbps(bytes, insert), mbps(bytes, copy)))
}

/// One NDJSON row of W7, shaped like an order line (about 100 bytes).
fn w7_row(i: usize) -> String {
    json!({
        "id": i,
        "sku": format!("sku-{:07}", i % 1_000_000),
        "name": format!("item {i}"),
        "price": (i % 10_000) as f64 * 0.25,
        "qty": i % 100,
        "tags": ["a", "b"],
    })
    .to_string()
}

/// The document `bulk_import` makes of an NDJSON line: the same JSON-to-BSON conversion, and an
/// `_id` of the same shape (`<uuid>:<row, 12 digits>`).
fn w7_doc(line: &str, prefix: &str, row: usize) -> anyhow::Result<Document> {
    let Bson::Document(mut d) = Bson::try_from(serde_json::from_str::<Value>(line)?)? else {
        bail!("row {row} is not an object");
    };
    d.insert("_id", format!("{prefix}:{row:012}"));
    Ok(d)
}

/// W7: `BENCH_W7_ROWS` NDJSON rows (default 1,000,000) imported by a `bulk_import` job, against
/// a raw `insert_many` loop of the same documents, unordered, in the kind's batch size, into a
/// scratch collection of the same server.
async fn w7_bulk_import() -> anyhow::Result<Rows> {
    let rows = knob("BENCH_W7_ROWS", 1_000_000)?;
    // The kind's default batch (`DEFAULT_BATCH`, private to its module), also passed to the job
    // explicitly so the two loops cannot drift apart.
    let batch = 1000;
    let (s, store, counter) = scratch("w7", 2).await?;
    let dir = TempDir::new("w7")?;
    let path = dir.0.join("w7.ndjson");
    let (bytes, sha) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> std::io::Result<_> {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
            for i in 1..=rows {
                writeln!(w, "{}", w7_row(i))?;
            }
            w.flush()?;
            drop(w);
            Ok((std::fs::metadata(&path)?.len(), sha256_file(&path)?.0))
        }
    })
    .await??;
    eprintln!("w7: {rows} rows, {:.1} MB of NDJSON", bytes as f64 / 1e6);

    // Baseline. Documents are built batch by batch inside the timed loop, as the kind does;
    // parsing is a few µs per row against the store's ~100 µs.
    let raw = store.database().collection::<Document>("w7_raw");
    let prefix = uuid::Uuid::now_v7().to_string();
    let text = tokio::fs::read_to_string(&path).await?;
    let t = Instant::now();
    let mut lines = text.lines().enumerate();
    let mut done = 0;
    loop {
        let docs = lines
            .by_ref()
            .take(batch)
            .map(|(i, l)| w7_doc(l, &prefix, i + 1))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if docs.is_empty() {
            break;
        }
        done += docs.len();
        raw.insert_many(docs).ordered(false).await?;
        if done % 100_000 < batch {
            eprintln!(
                "w7 insert_many baseline: {done} rows, {:.0} rows/s",
                rate(done, t.elapsed())
            );
        }
    }
    let raw_time = t.elapsed();
    anyhow::ensure!(done == rows, "the baseline inserted {done} of {rows} rows");
    drop(text);
    // Gone before the import, so both write into an equally empty database.
    raw.drop().await?;

    let base = api_server(&s).await?;
    let worker = Worker::start(&s, store.clone()).await?;
    let http = reqwest::Client::new();
    let up = upload_file(&http, &base, &path, &sha, s.api.data.upload_part_size).await?;
    worker.stop().await?;
    // The import runs on the `bench` queue with a worker that consumes only that one: the
    // `cache_rebuild` the import submits at its end (on `default`) stays queued. Run alongside,
    // it paged through the new million rows while the import's outcome was being written, and
    // stalled the compatible server long enough for a status poll to get a 503.
    let mut only_bench = s.clone();
    only_bench.worker.worker.queues.retain(|q| q.name == QUEUE);
    let worker = Worker::start(&only_bench, store.clone()).await?;
    let before = counter.total();
    let t = Instant::now();
    let job = api_json(
        http.post(format!("{base}/v1/jobs")).json(&json!({
            "kind": "bulk_import",
            "queue": QUEUE,
            "args": {"file_id": up.file_id, "format": "ndjson", "dataset": "w7", "batch_size": batch},
        })),
        202,
    )
    .await?;
    let id = job["id"].as_str().context("import job id")?;
    let j = wait_job(&http, &base, id, "w7 bulk_import").await?;
    let import_time = t.elapsed();
    let cmds = counter.total() - before;
    anyhow::ensure!(j["state"] == "succeeded", "the import did not succeed: {j}");
    anyhow::ensure!(
        j["result"]["inserted"].as_u64() == Some(rows as u64) && j["result"]["failed"] == 0,
        "the import did not insert every row: {}",
        j["result"]
    );
    let stored = store
        .database()
        .collection::<Document>(&jobmill_data::datasets::collection_name(TENANT, "w7"))
        .count_documents(doc! {})
        .await?;
    anyhow::ensure!(stored == rows as u64, "{stored} of {rows} rows are stored");
    worker.stop().await?;
    drop_scratch(&s, &store).await?;
    drop(dir);

    let baseline = rate(rows, raw_time);
    let import = rate(rows, import_time);
    Ok(vec![
        (
            "raw insert_many rows/s (baseline)".into(),
            format!("{baseline:.0}"),
            format!("{rows} rows, batches of {batch}, unordered, same documents"),
        ),
        (
            "bulk_import rows/s".into(),
            format!("{import:.0}"),
            format!(
                "{:.1}% of the raw loop ({:.3}×); {:.1} s from submission to success, {} rows verified",
                100.0 * import / baseline,
                import / baseline,
                import_time.as_secs_f64(),
                stored
            ),
        ),
        (
            "worker mongodb commands per 1,000 rows".into(),
            format!("{:.2}", cmds as f64 * 1000.0 / rows as f64),
            format!("{cmds} commands during the import; the raw loop sends 1"),
        ),
        (
            "NDJSON upload + assembly MB/s".into(),
            format!("{:.0}", mbps(bytes, up.upload + up.assembly)),
            format!("{:.1} MB, before the import (not in its time)", bytes as f64 / 1e6),
        ),
    ])
}

/// What one round of concurrent page reads saw.
struct Round {
    /// Until the last answer arrived.
    wall: Duration,
    /// Each read's own time, sorted.
    latencies: Vec<Duration>,
    /// Answers by `x-cache` value.
    cache: std::collections::BTreeMap<String, usize>,
    /// Rebuild jobs the misses named (`x-rebuild-job`).
    named: std::collections::BTreeSet<String>,
    /// Misses that named none: a rebuild had finished between the miss and the request.
    unnamed: usize,
}

impl Round {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() - 1) as f64 * p / 100.0).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// `n` concurrent reads of `url`, each checked to be a full page of `rows` rows.
async fn read_round(url: &str, n: usize, rows: usize) -> anyhow::Result<Round> {
    // A client of its own per round, so each round opens its connections alike.
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let req = http.get(url).bearer_auth(API_SECRET);
            tokio::spawn(async move {
                let t = Instant::now();
                let res = req.send().await?;
                anyhow::ensure!(res.status().as_u16() == 200, "status {}", res.status());
                let header = |name: &str| {
                    res.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let (cache, job) = (
                    header("x-cache").unwrap_or_default(),
                    header("x-rebuild-job"),
                );
                let body: Value = res.json().await?;
                let got = body["rows"].as_array().map_or(0, Vec::len);
                anyhow::ensure!(got == rows, "a page of {got} rows, not {rows}");
                Ok((t.elapsed(), cache, job))
            })
        })
        .collect();
    let mut round = Round {
        wall: Duration::ZERO,
        latencies: Vec::with_capacity(n),
        cache: Default::default(),
        named: Default::default(),
        unnamed: 0,
    };
    for task in tasks {
        let (took, cache, job) = task.await??;
        round.latencies.push(took);
        round.unnamed += usize::from(cache == "miss" && job.is_none());
        *round.cache.entry(cache).or_default() += 1;
        round.named.extend(job);
    }
    round.wall = t0.elapsed();
    round.latencies.sort();
    Ok(round)
}

/// W8: 1,000 concurrent reads of a cold cached dataset page through the API, with a worker
/// running (so the single-flight rebuild may finish while readers still arrive), against the
/// same 1,000 reads once the page is cached.
async fn w8_stampede() -> anyhow::Result<Rows> {
    const READS: usize = 1000;
    let (s, store, _) = scratch("w8", 4).await?;
    // Rows for every cached page, written directly: importing is W7's subject, and the rebuild
    // reads the same collection either way.
    let datasets = Datasets::new(store.database());
    let ds = datasets.ensure(TENANT, "w8").await?;
    let docs: Vec<Document> = (0..s.api.data.page_size * s.api.data.cache_pages)
        .map(|i| doc! { "_id": format!("row-{i:08}"), "id": i as i64, "name": format!("item {i}"), "price": i as f64 * 0.25 })
        .collect();
    datasets.rows_of(&ds).insert_many(docs).await?;
    let base = api_server(&s).await?;
    let worker = Worker::start(&s, store.clone()).await?;
    let url = format!("{base}/v1/datasets/w8/pages/0");

    let cold = read_round(&url, READS, s.api.data.page_size).await?;
    // Every rebuild ends before the warm round; they are counted in MongoDB, where each one is a
    // job (tests/datasets.rs counts the same jobs through the API).
    let jobs = store
        .database()
        .collection::<Document>(jobmill::store::JOBS);
    let deadline = Instant::now() + Duration::from_secs(120);
    let rebuilds = loop {
        let all: Vec<Document> = jobs
            .find(doc! { "kind": "cache_rebuild" })
            .await?
            .try_collect()
            .await?;
        let ended = all
            .iter()
            .filter(|j| matches!(j.get_str("state"), Ok("succeeded" | "failed" | "cancelled")))
            .count();
        if !all.is_empty() && ended == all.len() {
            break all;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the rebuilds did not finish: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let warm = read_round(&url, READS, s.api.data.page_size).await?;
    worker.stop().await?;
    drop_scratch(&s, &store).await?;
    anyhow::ensure!(
        warm.cache.get("hit") == Some(&READS),
        "the warm round was not all hits: {:?}",
        warm.cache
    );
    let succeeded = rebuilds
        .iter()
        .filter(|j| j.get_str("state") == Ok("succeeded"))
        .count();
    if rebuilds.len() != 1 {
        eprintln!(
            "w8: {} rebuilds ran for one cold key (must be 1)",
            rebuilds.len()
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(vec![
        (
            "rebuilds for 1,000 cold reads".into(),
            format!("{}", rebuilds.len()),
            format!(
                "must be 1; {succeeded} succeeded; answers {:?}; misses named {} job(s), {} found it done",
                cold.cache,
                cold.named.len(),
                cold.unnamed
            ),
        ),
        (
            "warm: all 1,000 answered after ms (baseline)".into(),
            format!("{:.0}", ms(warm.wall)),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, every answer a hit",
                warm.pct(50.0),
                warm.pct(99.0)
            ),
        ),
        (
            "cold: all 1,000 answered after ms".into(),
            format!("{:.0}", ms(cold.wall)),
            format!(
                "{:.2}× the warm round",
                cold.wall.as_secs_f64() / warm.wall.as_secs_f64()
            ),
        ),
        (
            "cold p50 / p99 ms".into(),
            format!("{:.1} / {:.1}", cold.pct(50.0), cold.pct(99.0)),
            format!(
                "{:.2}× / {:.2}× the warm round",
                cold.pct(50.0) / warm.pct(50.0),
                cold.pct(99.0) / warm.pct(99.0)
            ),
        ),
    ])
}
