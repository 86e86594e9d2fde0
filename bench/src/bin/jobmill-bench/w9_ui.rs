//! `ui`: the dashboard's pages against the JSON endpoints that serve the same data, at a small
//! and a large number of stored jobs (`BENCH_UI_SMALL`, default 1,000; `BENCH_UI_JOBS`, default
//! 1,000,000). Each page and endpoint is read `BENCH_UI_READS` times (default 200) one after the
//! other by a signed-in operator; the median is reported. The bars: each page within 2×
//! its JSON baseline (same run, same store), and each page at the large size within 1.5× of
//! itself at the small size.
//!
//! Pairs: the overview against `/v1/queues` + `/v1/workers` + one queue's 60-minute history
//! (what the overview reads); `/ui/queues` against `/v1/queues`; `/ui/workers` against
//! `/v1/workers`; the first page of `/ui/jobs` against `GET /v1/jobs?limit=50`.

use std::time::Instant;

use anyhow::Context;
use jobmill::config::Secret;
use jobmill_api::{ApiKey, Role};
use jobmill_bench::deployment::QUEUE;
use mongodb::bson::{doc, Document};

use crate::measure::knob;
use crate::servers::{api_server, drop_scratch, scratch};
use crate::Rows;

const OPS_SECRET: &str = "bench-ops-secret-0123456789";

/// Stored finished jobs, newest last, as the listing sees them.
fn finished_doc(i: usize, now_ms: i64) -> Document {
    let id = uuid::Uuid::now_v7().to_string();
    doc! {
        "_id": &id, "list_key": &id, "tenant": "bench", "kind": "bench_noop", "queue": QUEUE,
        "priority": 0, "args_json": format!("{{\"ts\":{i}}}"), "state": "succeeded", "attempt": 1,
        "max_attempts": 3, "attempt_budget": 2, "timeout_ms": 300000_i64, "errors": {},
        "cancel_requested": false, "created_ms": now_ms, "run_at_ms": now_ms, "rev": 3_i64,
        "finished_ms": now_ms, "result_json": "null",
    }
}

/// Median ms of `reads` sequential GETs of each path, summed (a page's baseline may take
/// several endpoints).
async fn median_ms(
    http: &reqwest::Client,
    base: &str,
    paths: &[&str],
    auth: &dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    reads: usize,
) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for p in paths {
        let mut ms = Vec::with_capacity(reads);
        for _ in 0..reads {
            let t = Instant::now();
            let res = auth(http.get(format!("{base}{p}"))).send().await?;
            anyhow::ensure!(res.status().is_success(), "{p}: {}", res.status());
            res.bytes().await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        total += ms[ms.len() / 2];
    }
    Ok(total)
}

/// The dashboard against the JSON API, small and large.
pub(crate) async fn w9_ui() -> anyhow::Result<Rows> {
    let small = knob("BENCH_UI_SMALL", 1_000)?;
    let large = knob("BENCH_UI_JOBS", 1_000_000)?;
    let reads = knob("BENCH_UI_READS", 200)?;
    let (mut s, store, _) = scratch("ui", 1).await?;
    s.api.api.keys.push(ApiKey {
        name: "benchops".into(),
        secret: Secret::new(OPS_SECRET),
        role: Role::Operator,
    });
    let base = api_server(&s).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let res = http
        .post(format!("{base}/ui/login"))
        .form(&[("key", OPS_SECRET)])
        .send()
        .await?;
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_string();
    let page = |r: reqwest::RequestBuilder| r.header("cookie", cookie.as_str());
    let json = |r: reqwest::RequestBuilder| r.bearer_auth(OPS_SECRET);
    let history = format!("/v1/queues/{QUEUE}/history?minutes=60");
    let pairs: [(&str, &str, Vec<&str>); 4] = [
        (
            "overview",
            "/ui/",
            vec!["/v1/queues", "/v1/workers", history.as_str()],
        ),
        ("queues", "/ui/queues", vec!["/v1/queues"]),
        ("workers", "/ui/workers", vec!["/v1/workers"]),
        ("jobs", "/ui/jobs", vec!["/v1/jobs?limit=50"]),
    ];
    let jobs = store.database().collection::<Document>("jobs");
    let now = jobmill::job::now_ms();
    let mut stored = 0usize;
    let mut rows = Rows::new();
    let mut at_small = Vec::new();
    for size in [small, large] {
        while stored < size {
            let n = (size - stored).min(1000);
            let docs: Vec<Document> = (stored..stored + n).map(|i| finished_doc(i, now)).collect();
            jobs.insert_many(docs).await?;
            stored += n;
        }
        for (i, (name, ui_path, json_paths)) in pairs.iter().enumerate() {
            let p = median_ms(&http, &base, &[ui_path], &page, reads).await?;
            let j = median_ms(&http, &base, json_paths, &json, reads).await?;
            rows.push((
                format!("{name} page at {size} jobs, median ms"),
                format!("{p:.2} ({:.2}× JSON)", p / j),
                format!("JSON {:.2} ms ({})", j, json_paths.join(" + ")),
            ));
            if size == small {
                at_small.push(p);
            } else {
                rows.push((
                    format!("{name} page {large} vs {small} jobs"),
                    format!("{:.2}×", p / at_small[i]),
                    "the same page at the small size (bar: 1.5×)".into(),
                ));
            }
        }
    }
    drop_scratch(&s, &store).await?;
    Ok(rows)
}
