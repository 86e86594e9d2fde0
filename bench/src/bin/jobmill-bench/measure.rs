//! How figures are taken and sized: rates, nearest-rank percentiles, a paced schedule of calls,
//! and the knobs read from the environment. Measures nothing itself.

use std::time::{Duration, Instant};

use anyhow::Context;

pub(crate) fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Run `f` on an absolute schedule of `rate` calls per second for `secs`; the duration of each
/// call, in µs.
pub(crate) async fn paced<F, Fut>(rate: f64, secs: f64, mut f: F) -> anyhow::Result<Vec<u64>>
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
pub(crate) fn pct_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k] as f64 / 1000.0
}

pub(crate) fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A size knob from the environment (`_` allowed as a digit separator).
pub(crate) fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Megabytes (10^6 bytes) per second.
pub(crate) fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}
