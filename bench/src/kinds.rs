//! The peers-bench handlers, written exactly the way a user adds job kinds: a type per kind,
//! typed args, registered in a `Registry`. Each job carries `{"ts": <enqueue time in µs>}`.
//! - `bench_noop`: `INCR bench:done`.
//! - `bench_lat`: `RPUSH bench:lat (now_us - ts)` at handler entry.
//! - `bench_sleep`: sleep `BENCH_SLEEP_MS` (50 ms), then `INCR bench:done`.

use std::time::Duration;

use jobmill::config::RedisTarget;
use jobmill::redis_conn::RedisConn;
use jobmill::{JobContext, JobKind, Outcome, Registry};
use redis::AsyncCommands;
use serde::Deserialize;

/// Args of every bench kind.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Ts {
    /// Enqueue time, µs since the epoch.
    pub ts: i64,
}

/// Microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `bench_noop`.
pub struct Noop(pub RedisConn);
/// `bench_lat`.
pub struct Lat(pub RedisConn);
/// `bench_sleep`.
pub struct Sleep(pub RedisConn, pub Duration);

fn redis_outcome(r: redis::RedisResult<()>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success(serde_json::Value::Null),
        Err(e) => Outcome::retry(e),
    }
}

impl JobKind for Noop {
    const NAME: &'static str = "bench_noop";
    type Args = Ts;

    async fn run(&self, _ctx: JobContext, _args: Ts) -> Outcome {
        let mut c = self.0.clone();
        redis_outcome(c.incr("bench:done", 1).await)
    }
}

impl JobKind for Lat {
    const NAME: &'static str = "bench_lat";
    type Args = Ts;

    async fn run(&self, _ctx: JobContext, args: Ts) -> Outcome {
        let latency = now_us() - args.ts;
        let mut c = self.0.clone();
        redis_outcome(c.rpush("bench:lat", latency).await)
    }
}

impl JobKind for Sleep {
    const NAME: &'static str = "bench_sleep";
    type Args = Ts;

    async fn run(&self, ctx: JobContext, _args: Ts) -> Outcome {
        tokio::select! {
            _ = tokio::time::sleep(self.1) => {}
            _ = ctx.cancelled() => return Outcome::Cancelled("cancelled".into()),
        }
        let mut c = self.0.clone();
        redis_outcome(c.incr("bench:done", 1).await)
    }
}

/// The built-in kinds plus the three bench kinds, each holding a connection to `redis`.
pub async fn registry(redis: &RedisTarget) -> anyhow::Result<Registry> {
    let conn = jobmill::queue::connect(redis).await?;
    let sleep_ms: u64 = std::env::var("BENCH_SLEEP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut r = Registry::builtin();
    r.register(Noop(conn.clone()))
        .register(Lat(conn.clone()))
        .register(Sleep(conn, Duration::from_millis(sleep_ms)));
    Ok(r)
}

/// Kind name of a harness task (`noop`, `lat`, `sleep`).
pub fn kind_of(task: &str) -> anyhow::Result<&'static str> {
    Ok(match task {
        "noop" => Noop::NAME,
        "lat" => Lat::NAME,
        "sleep" => Sleep::NAME,
        other => anyhow::bail!("unknown task {other}"),
    })
}
