//! `w8`: 1,000 concurrent reads of a cold cached dataset page (single-flight rebuild), against
//! the same 1,000 reads once the page is cached.

use std::time::{Duration, Instant};

use futures::stream::TryStreamExt;
use jobmill_bench::deployment::{API_SECRET, TENANT};
use jobmill_data::datasets::Datasets;
use mongodb::bson::{doc, Document};
use serde_json::Value;

use crate::servers::{api_server, drop_scratch, scratch, Worker};
use crate::Rows;

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
pub(crate) async fn w8_stampede() -> anyhow::Result<Rows> {
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
