//! The operator plane's cost to the API (issue 12):
//! - `queues`: `GET /v1/queues` latency with 10 queues holding 1,000,000 queued jobs in all,
//!   against the same 10 queues holding 1,000 (measured before and after the large phase, so
//!   a drift of the machine shows). The endpoint reads only Redis structure sizes and the
//!   per-minute history, so the jobs are pushed straight into the queues' `ready` sets (what
//!   the endpoint reads), not inserted into MongoDB: a million inserts take minutes on the
//!   MongoDB-compatible server and the endpoint never reads the jobs collection.
//! - `sse`: `GET /healthz` latency at 200 requests/s while 1,000 per-job event streams
//!   (`GET /v1/jobs/{id}/events`, each on a queued job, so each stays open and re-reads its job
//!   every 10 s) are open, against the same schedule with no stream open, before and after.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;
use jobmill::queue::RedisQueue;
use jobmill_bench::deployment::{API_SECRET, OPS_SECRET, TENANT};
use jobmill_bench::kinds;
use redis::AsyncCommands;
use serde_json::Value;

use crate::measure::{knob, paced, pct_ms};
use crate::servers::{api_server, fresh, noop_batch};
use crate::Rows;

/// Queues of the `queues` workload.
const QUEUES: usize = 10;
/// Sequential `GET /v1/queues` per phase (after [`WARMUP`] unmeasured ones).
const REQUESTS: usize = 300;
const WARMUP: usize = 20;

fn queue_names() -> Vec<String> {
    (0..QUEUES).map(|i| format!("benchops{i}")).collect()
}

/// Grow every queue's `ready` set to `per_queue` members (ids and scores as `enqueue.lua`
/// writes them: default priority, ready times spread over the last hour), 10,000 per command.
async fn fill(queue: &RedisQueue, per_queue: usize) -> anyhow::Result<()> {
    let mut c = queue.connection();
    let now = jobmill::job::now_ms();
    for name in queue_names() {
        let k = queue.queue_keys(&name);
        let _: () = c.sadd(queue.keys().queues(), &name).await?;
        let have: usize = c.zcard(&k.ready).await?;
        let mut i = have;
        while i < per_queue {
            let end = (i + 10_000).min(per_queue);
            let members: Vec<(f64, String)> = (i..end)
                .map(|n| {
                    let at = now - (n as i64 % 3_600_000);
                    (
                        jobmill::job::ready_score(jobmill::client::DEFAULT_PRIORITY, at),
                        jobmill::job::new_job_id(),
                    )
                })
                .collect();
            let _: () = c.zadd_multiple(&k.ready, &members).await?;
            i = end;
        }
    }
    Ok(())
}

/// Empty the queues again.
async fn clear(queue: &RedisQueue) -> anyhow::Result<()> {
    let mut c = queue.connection();
    for name in queue_names() {
        let k = queue.queue_keys(&name);
        let _: () = c.del(&k.ready).await?;
    }
    Ok(())
}

/// `REQUESTS` sequential `GET /v1/queues` (sorted µs), checking the counts they report.
async fn time_queues(
    http: &reqwest::Client,
    base: &str,
    per_queue: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(REQUESTS);
    for i in 0..WARMUP + REQUESTS {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/v1/queues"))
            .bearer_auth(OPS_SECRET)
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 200, "status {}", r.status());
        let body: Value = r.json().await?;
        let d = t.elapsed();
        if i == 0 {
            for name in queue_names() {
                let q = body["queues"]
                    .as_array()
                    .and_then(|qs| qs.iter().find(|q| q["name"] == name.as_str()))
                    .with_context(|| format!("{name} missing from {body}"))?;
                anyhow::ensure!(
                    q["counts"]["queued"].as_u64() == Some(per_queue as u64),
                    "{name}: {q}"
                );
            }
        }
        if i >= WARMUP {
            out.push(d.as_micros() as u64);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// `GET /v1/queues` with 1,000,000 queued jobs against 1,000 (`BENCH_QUEUES_JOBS` sets the
/// large count).
pub(crate) async fn queues_flat() -> anyhow::Result<Rows> {
    let big = knob("BENCH_QUEUES_JOBS", 1_000_000)?;
    let small = 1_000;
    let (s, _, _) = fresh(1).await?;
    let base = api_server(&s).await?;
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    let http = reqwest::Client::new();
    clear(&queue).await?;
    fill(&queue, small / QUEUES).await?;
    let before = time_queues(&http, &base, small / QUEUES).await?;
    let t = Instant::now();
    fill(&queue, big / QUEUES).await?;
    eprintln!(
        "queues: {big} jobs in {QUEUES} queues loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let large = time_queues(&http, &base, big / QUEUES).await?;
    clear(&queue).await?;
    fill(&queue, small / QUEUES).await?;
    let after = time_queues(&http, &base, small / QUEUES).await?;
    clear(&queue).await?;
    let small_p = |p| (pct_ms(&before, p) + pct_ms(&after, p)) / 2.0;
    let row = |p: f64| {
        (
            format!("GET /v1/queues p{p} ms, {big} queued"),
            format!("{:.2}", pct_ms(&large, p)),
            format!(
                "{small} queued: {:.2} before / {:.2} after; ratio {:.2}× (target: flat)",
                pct_ms(&before, p),
                pct_ms(&after, p),
                pct_ms(&large, p) / small_p(p)
            ),
        )
    };
    Ok(vec![row(50.0), row(99.0)])
}

/// This process's resident memory, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|pages| pages * 4096.0 / 1048576.0)
        .unwrap_or(f64::NAN)
}

/// `GET /healthz` at 200/s for 15 s (sorted µs).
async fn time_healthz(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<u64>> {
    let url = format!("{base}/healthz");
    let mut v = paced(200.0, 15.0, |_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(url).send().await?;
            anyhow::ensure!(r.status().is_success(), "status {}", r.status());
            r.bytes().await?;
            Ok(())
        }
    })
    .await?;
    v.sort_unstable();
    Ok(v)
}

/// `/healthz` latency with 1,000 open event streams against none (`BENCH_SSE_STREAMS` sets the
/// count).
pub(crate) async fn sse_streams() -> anyhow::Result<Rows> {
    let n = knob("BENCH_SSE_STREAMS", 1_000)?;
    let (s, store, _) = fresh(1).await?;
    let base = api_server(&s).await?;
    // Jobs no worker runs: each stream stays open on its queued job.
    let registry = kinds::registry(&s.redis).await?;
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    let client = jobmill_bench::deployment::client(store, queue, &registry, &s);
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        for sub in client.submit_batch(TENANT, noop_batch(chunk.len())).await? {
            ids.push(sub.job.id);
        }
    }
    let http = reqwest::Client::new();
    let before = time_healthz(&http, &base).await?;
    let rss0 = rss_mib();

    // Open the streams; each task reads until it is aborted.
    let streams = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<()>(n);
    let mut tasks = Vec::with_capacity(n);
    for id in &ids {
        let (streams, url, opened) = (
            streams.clone(),
            format!("{base}/v1/jobs/{id}/events"),
            opened_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut r = streams.get(url).bearer_auth(API_SECRET).send().await?;
            anyhow::ensure!(r.status().is_success(), "status {}", r.status());
            let mut told = false;
            while let Some(chunk) = r.chunk().await? {
                // The first event is the job's current state.
                if !told && String::from_utf8_lossy(&chunk).contains("event:") {
                    told = true;
                    let _ = opened.send(()).await;
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    drop(opened_tx);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut open = 0;
    while open < n {
        match tokio::time::timeout_at(deadline.into(), opened_rx.recv()).await {
            Ok(Some(())) => open += 1,
            _ => anyhow::bail!("only {open} of {n} streams sent their first event"),
        }
    }
    let rss_open = rss_mib();
    let during = time_healthz(&http, &base).await?;
    let still_open = tasks.iter().filter(|t| !t.is_finished()).count();
    for t in &tasks {
        t.abort();
    }
    let _ = join_all(tasks).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = time_healthz(&http, &base).await?;
    let base_p = |p| (pct_ms(&before, p) + pct_ms(&after, p)) / 2.0;
    let row = |p: f64| {
        (
            format!("GET /healthz p{p} ms, {n} streams open"),
            format!("{:.2}", pct_ms(&during, p)),
            format!(
                "no stream: {:.2} before / {:.2} after; ratio {:.2}×",
                pct_ms(&before, p),
                pct_ms(&after, p),
                pct_ms(&during, p) / base_p(p)
            ),
        )
    };
    Ok(vec![
        row(50.0),
        row(99.0),
        (
            "streams still open after the measurement".into(),
            format!("{still_open} of {n}"),
            format!(
                "bench process RSS {:.0} MiB with them, {:.0} MiB before (API and clients in one process)",
                rss_open, rss0
            ),
        ),
    ])
}
