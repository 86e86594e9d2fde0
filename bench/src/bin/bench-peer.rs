//! The peers-bench adapter's engine (see `bench/peer.sh` and the contract at the top of
//! `../shared/peers-bench/lib/harness.py`). Two variants go through jobmill's real paths:
//! - `jobmill`: jobs enqueued with the library client (`JobClient`: MongoDB insert, then Redis);
//! - `jobmill-http`: jobs submitted to a running `jobmill-api` over HTTP (`bench-peer api`).
//!
//! Both are run by `jobmill_worker::run` with the three harness handlers registered as ordinary
//! job kinds, and every state and result is written to MongoDB as in production.
//!
//! ```text
//! bench-peer enqueue <variant> <noop|lat|sleep> <n> <single|bulk>
//! bench-peer steady <variant> <rate> <duration_s>
//! bench-peer qlen
//! bench-peer worker <cpu|io>
//! bench-peer api
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jobmill::client::{JobClient, NewJob};
use jobmill::queue::RedisQueue;
use jobmill_bench::deployment::{self, API_SECRET, QUEUE, TENANT};
use jobmill_bench::kinds::{self, now_us};
use redis::AsyncCommands;
use serde_json::json;

/// Worker concurrency of the "cpu" profile (W2, W3).
const CPU_CONCURRENCY: usize = 64;
/// Worker concurrency of the "io" profile (W4).
const IO_CONCURRENCY: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["enqueue", variant, task, n, mode] => {
            enqueue(variant, kinds::kind_of(task)?, n.parse()?, mode).await
        }
        ["steady", variant, rate, duration] => {
            steady(variant, rate.parse()?, duration.parse()?).await
        }
        ["qlen"] => qlen().await,
        ["worker", profile] => worker(profile).await,
        ["api"] => api().await,
        _ => bail!("usage: bench-peer enqueue|steady|qlen|worker|api ... (see the source)"),
    }
}

fn epoch_s() -> f64 {
    now_us() as f64 / 1e6
}

/// Where jobs go: the library client or the HTTP API.
enum Producer {
    Library(JobClient),
    Http { http: reqwest::Client, base: String },
}

impl Producer {
    async fn new(variant: &str) -> anyhow::Result<Self> {
        let s = deployment::settings(1)?;
        let (store, _) = deployment::counted_store(&s).await?;
        deployment::sync_with_harness_reset(&s, &store).await?;
        match variant {
            "jobmill" => {
                let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
                let registry = kinds::registry(&s.redis).await?;
                Ok(Producer::Library(deployment::client(
                    store, queue, &registry, &s,
                )))
            }
            "jobmill-http" => Ok(Producer::Http {
                http: reqwest::Client::builder()
                    .pool_max_idle_per_host(64)
                    .build()?,
                base: format!("http://{}", s.api.api.addr),
            }),
            other => bail!("unknown variant {other}"),
        }
    }

    fn job(kind: &str) -> NewJob {
        NewJob {
            kind: kind.to_string(),
            args: json!({ "ts": now_us() }),
            queue: Some(QUEUE.to_string()),
            ..Default::default()
        }
    }

    async fn one(&self, kind: &str) -> anyhow::Result<()> {
        match self {
            Producer::Library(c) => {
                c.submit(TENANT, Self::job(kind)).await?;
            }
            Producer::Http { http, base } => {
                let body = json!({"kind": kind, "queue": QUEUE, "args": {"ts": now_us()}});
                let res = http
                    .post(format!("{base}/v1/jobs"))
                    .bearer_auth(API_SECRET)
                    .json(&body)
                    .send()
                    .await?;
                if res.status().as_u16() != 202 {
                    bail!("submit answered {}: {}", res.status(), res.text().await?);
                }
            }
        }
        Ok(())
    }

    async fn many(&self, kind: &str, n: usize) -> anyhow::Result<()> {
        match self {
            Producer::Library(c) => {
                c.submit_batch(TENANT, (0..n).map(|_| Self::job(kind)).collect())
                    .await?;
            }
            Producer::Http { http, base } => {
                let jobs: Vec<_> = (0..n)
                    .map(|_| json!({"kind": kind, "queue": QUEUE, "args": {"ts": now_us()}}))
                    .collect();
                let res = http
                    .post(format!("{base}/v1/jobs/batch"))
                    .bearer_auth(API_SECRET)
                    .json(&json!({ "jobs": jobs }))
                    .send()
                    .await?;
                if res.status().as_u16() != 202 {
                    bail!("batch answered {}: {}", res.status(), res.text().await?);
                }
            }
        }
        Ok(())
    }
}

async fn enqueue(variant: &str, kind: &str, n: usize, mode: &str) -> anyhow::Result<()> {
    let p = Producer::new(variant).await?;
    let batch: usize = std::env::var("BENCH_BULK_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t_start = epoch_s();
    match mode {
        "single" => {
            for _ in 0..n {
                p.one(kind).await?;
            }
        }
        "bulk" => {
            let mut left = n;
            while left > 0 {
                let k = left.min(batch);
                p.many(kind, k).await?;
                left -= k;
            }
        }
        other => bail!("unknown mode {other}"),
    }
    let t_end = epoch_s();
    println!("{}", json!({"n": n, "t_start": t_start, "t_end": t_end}));
    Ok(())
}

async fn steady(variant: &str, rate: f64, duration: f64) -> anyhow::Result<()> {
    let p = Producer::new(variant).await?;
    let total = (rate * duration).round() as u64;
    let t0 = Instant::now();
    let t_start = epoch_s();
    // Where W3's time goes: the submit call (MongoDB insert, then Redis) is part of the
    // submit→start latency the harness measures; its own distribution goes to stderr.
    let mut submit_us = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let t = Instant::now();
        p.one(kinds::kind_of("lat")?).await?;
        submit_us.push(t.elapsed().as_micros() as u64);
    }
    let t_end = epoch_s();
    submit_us.sort_unstable();
    let pct = |q: f64| {
        submit_us
            .get(((submit_us.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    eprintln!(
        "submit call ms: p50 {:.2} p95 {:.2} p99 {:.2} max {:.2}",
        pct(0.5),
        pct(0.95),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "{}",
        json!({"sent": total, "t_start": t_start, "t_end": t_end})
    );
    Ok(())
}

async fn qlen() -> anyhow::Result<()> {
    let s = deployment::settings(1)?;
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    let k = queue.queue_keys(QUEUE);
    let mut c = queue.connection();
    let ready: u64 = c.zcard(&k.ready).await?;
    let scheduled: u64 = c.zcard(&k.scheduled).await?;
    println!("{}", ready + scheduled);
    Ok(())
}

async fn worker(profile: &str) -> anyhow::Result<()> {
    let concurrency = match profile {
        "cpu" => CPU_CONCURRENCY,
        "io" => IO_CONCURRENCY,
        other => bail!("unknown profile {other}"),
    };
    let s = deployment::settings(concurrency)?;
    jobmill::telemetry::init_tracing(&s);
    let (store, counter) = deployment::counted_store(&s).await?;
    deployment::sync_with_harness_reset(&s, &store).await?;
    let registry = kinds::registry(&s.redis).await?;
    let before = counter.total();
    let started = Instant::now();
    jobmill_worker::run_with_store(
        s.worker_config(),
        registry,
        store,
        jobmill::telemetry::shutdown_signal(),
    )
    .await
    .context("worker")?;
    eprintln!(
        "mongodb commands: {} in {:.1}s ({:?})",
        counter.total() - before,
        started.elapsed().as_secs_f64(),
        counter.by_name()
    );
    Ok(())
}

async fn api() -> anyhow::Result<()> {
    let s = deployment::settings(1)?;
    jobmill::telemetry::init_tracing(&s);
    let registry = kinds::registry(&s.redis).await?;
    jobmill_api::serve(&s.api, registry, jobmill::telemetry::shutdown_signal()).await
}
