//! `throttled`: answers `RateLimited` until a given time, then succeeds. For tests of rate
//! limits: a job with `max_attempts: 1` that is throttled many times still succeeds, since a
//! rate limit charges no attempt.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::job::now_ms;
use crate::kind::{JobContext, JobKind, Outcome};

/// Arguments of `throttled`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottledArgs {
    /// Answer `RateLimited` while the clock is before this time (ms since the epoch).
    pub until_ms: i64,
    /// The `after` of each `RateLimited` answer, in ms (default 200, at most an hour).
    #[serde(default)]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub after_ms: Option<u64>,
}

/// Rate limited until `until_ms`, then succeeds with the attempt it ran as. Stateless: the
/// clock decides, so a re-run behaves the same.
#[derive(Default)]
pub struct Throttled;

impl JobKind for Throttled {
    const NAME: &'static str = "throttled";
    const DESCRIPTION: &'static str =
        "Answers RateLimited (an upstream's 429) until `until_ms`, then succeeds.";
    type Args = ThrottledArgs;

    fn validate(&self, args: &ThrottledArgs) -> Result<(), String> {
        match args.after_ms {
            Some(ms) if !(1..=3_600_000).contains(&ms) => {
                Err("after_ms must be from 1 to 3600000".into())
            }
            _ => Ok(()),
        }
    }

    async fn run(&self, ctx: JobContext, args: ThrottledArgs) -> Outcome {
        if now_ms() < args.until_ms {
            return Outcome::RateLimited {
                after: Duration::from_millis(args.after_ms.unwrap_or(200)),
            };
        }
        Outcome::success(json!({ "attempt": ctx.attempt }))
    }
}
