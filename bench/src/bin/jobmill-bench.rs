//! jobmill's own benchmark: what the peers harness cannot measure. Every figure is reported with
//! the baseline it must be read against, measured in the same run on the same machine:
//! - `store`: the store's own ceilings (insert_one, insert_many, batched guarded updates).
//! - `w2`: 20,000 no-op jobs drained by one worker: handler rate, time until every outcome is
//!   durable in MongoDB, that durable rate against the store's update ceiling, and MongoDB
//!   commands per job (driver command monitoring).
//! - `w3`: submit→start latency at 200 jobs/s (the harness's W3) between two passes of plain
//!   `insert_one` calls on the same schedule: the store's latency, W3's floor.
//! - `w1http`: 20,000 submissions over HTTP from 64 concurrent clients.
//! - `soak` (not in the default list: minutes): the worker process's RSS over 200,000 jobs.
//! - `w5`: `wrk` on `GET /v1/jobs/{id}` of a finished job, plain and with `If-None-Match`,
//!   against a trivial axum endpoint returning a constant (the HTTP stack's ceiling).
//!
//! Needs: `BENCH_REDIS_URL` and `JOBMILL_BENCH_MONGODB_URI` (see `bench/run.sh`, which starts
//! private servers), `wrk` on the PATH for `w5`.
//!
//! ```text
//! jobmill-bench [store] [w2] [w3] [w1http] [w5] [soak]   (default: all but soak, in order)
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use jobmill::client::{JobClient, Limits, NewJob};
use jobmill::queue::RedisQueue;
use jobmill::store::Store;
use jobmill_bench::deployment::{self, API_SECRET, QUEUE, TENANT};
use jobmill_bench::kinds::{self, now_us};
use mongodb::bson::{doc, Document};
use redis::AsyncCommands;
use serde_json::json;

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
            "w3" => w3_floor().await?,
            "soak" => soak().await?,
            "w1http" => w1_http().await?,
            "w5" => w5().await?,
            other => bail!("unknown workload {other} (store, w2, w3, w1http, w5, soak)"),
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
) -> anyhow::Result<(jobmill::Settings, Store, deployment::CommandCounter)> {
    let s = deployment::settings(concurrency)?;
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
    let (store, counter) = deployment::counted_store(&s).await?;
    deployment::sync_with_harness_reset(&s, &store).await?;
    Ok((s, store, counter))
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

/// W2 with durability: handler rate, time until every outcome is in MongoDB, commands per job.
async fn w2_durable() -> anyhow::Result<Rows> {
    let (mut s, store, _) = fresh(64).await?;
    // Heartbeats (and with them the worker's counters in Redis) every third of a second: the
    // shortest lease the settings allow.
    s.lease_ttl = Duration::from_secs(1);
    let registry = kinds::registry(s.redis_url.expose()).await?;
    let queue = RedisQueue::connect(s.redis_url.expose(), &s.key_prefix).await?;
    let client = JobClient::new(
        store.clone(),
        queue.clone(),
        registry.clone(),
        Limits::from_settings(&s),
    );
    for _ in 0..N / 1000 {
        let jobs = (0..1000)
            .map(|_| NewJob {
                kind: "bench_noop".into(),
                args: json!({"ts": now_us()}),
                queue: Some(QUEUE.into()),
                ..Default::default()
            })
            .collect();
        client.submit_batch(TENANT, jobs).await?;
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
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let before = counter.total();
    let t0 = Instant::now();
    let settings = s.clone();
    let worker = tokio::spawn(async move {
        jobmill_worker::run_with_store(settings, registry, wstore, async {
            let _ = rx.await;
        })
        .await
    });
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
    let jobs = store
        .database()
        .collection::<Document>(jobmill::store::JOBS);
    let succeeded = jobs.count_documents(doc! { "state": "succeeded" }).await? as usize;
    anyhow::ensure!(
        succeeded == N,
        "only {succeeded} of {N} outcomes are in MongoDB"
    );
    let cmds = counter.total() - before;
    let by_name = counter.by_name();
    let _ = tx.send(());
    worker.await??;
    let (Some(first), Some(handlers), Some(durable)) = (t_first, t_handlers, t_durable) else {
        bail!("w2 did not finish");
    };
    let handler_rate = rate(N, handlers - first);
    let durable_rate = rate(N, durable);
    let ceiling: f64 = std::fs::read_to_string(ceiling_file())
        .context("run the `store` workload first (it measures the ceiling)")?
        .trim()
        .parse()?;
    Ok(vec![
        (
            "handler executions/s".into(),
            format!("{handler_rate:.0}"),
            "peers' W2 drain/s (harness table)".into(),
        ),
        (
            "all 20,000 outcomes durable after s".into(),
            format!("{:.2}", durable.as_secs_f64()),
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
            format!("{:.4}", cmds as f64 / N as f64),
            format!("{cmds} commands: {by_name:?}"),
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
    let client = JobClient::new(
        store.clone(),
        queue.clone(),
        registry.clone(),
        Limits::from_settings(&s),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (settings, wstore) = (s.clone(), store.clone());
    let worker = tokio::spawn(async move {
        jobmill_worker::run_with_store(settings, registry, wstore, async {
            let _ = rx.await;
        })
        .await
    });
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
    let _ = tx.send(());
    worker.await??;
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
    let client = JobClient::new(store.clone(), queue, registry, Limits::from_settings(&s));
    let jobs = store
        .database()
        .collection::<Document>(jobmill::store::JOBS);
    let t0 = Instant::now();
    let mut after_round = Vec::with_capacity(rounds);
    for round in 0..rounds {
        for _ in 0..per_round / 1000 {
            let batch = (0..1000)
                .map(|_| NewJob {
                    kind: "bench_noop".into(),
                    args: json!({"ts": now_us()}),
                    queue: Some(QUEUE.into()),
                    ..Default::default()
                })
                .collect();
            client.submit_batch(TENANT, batch).await?;
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
async fn api_server(s: &jobmill::Settings) -> anyhow::Result<String> {
    let registry = kinds::registry(s.redis_url.expose()).await?;
    let state = jobmill_api::AppState::connect(s, registry).await?;
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
    let (s, _, _) = fresh(1).await?;
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
    let registry = kinds::registry(s.redis_url.expose()).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ws = s.clone();
    let w = tokio::spawn(async move {
        jobmill_worker::run(ws, registry, async {
            let _ = rx.await;
        })
        .await
    });
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
    let _ = tx.send(());
    w.await??;
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
