//! `w1http`: 20,000 submissions over HTTP from 64 concurrent clients, against the peers' W1
//! enqueue rate (harness table) and the store's `insert_one` ceiling from `store`.

use std::time::Instant;

use futures::stream::{self, StreamExt};
use jobmill_bench::deployment::{API_SECRET, QUEUE};
use jobmill_bench::kinds::now_us;
use serde_json::json;

use crate::measure::rate;
use crate::servers::{api_server, fresh};
use crate::{Rows, N};

/// W1 over HTTP: 64 concurrent clients submit 20,000 jobs.
pub(crate) async fn w1_http() -> anyhow::Result<Rows> {
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
