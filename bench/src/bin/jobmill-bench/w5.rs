//! `w5`: `wrk` on `GET /v1/jobs/{id}` of a finished job, plain and with `If-None-Match`, against
//! a trivial axum endpoint returning a constant (the HTTP stack's ceiling), run before and after.

use std::time::Duration;

use anyhow::{bail, Context};
use jobmill_bench::deployment::{API_SECRET, QUEUE};
use serde_json::json;

use crate::servers::{api_server, fresh, Worker};
use crate::Rows;

/// W5: wrk on a finished job's status, plain and conditional, against a constant endpoint.
pub(crate) async fn w5() -> anyhow::Result<Rows> {
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
