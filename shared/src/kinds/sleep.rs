//! `sleep`: waits `ms` milliseconds, honouring cancellation. The smallest complete example of a
//! job kind: typed args, validation, progress, cancellation, a typed outcome.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::kind::{JobContext, JobKind, KindDefaults, Outcome};

/// Longest sleep accepted (one day).
const MAX_MS: u64 = 86_400_000;

/// Arguments of `sleep`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to sleep.
    pub ms: u64,
}

/// Sleeps, then succeeds with `{"slept_ms": ms}`; stops early when cancelled. No effects, so
/// running it twice is harmless.
pub struct Sleep;

impl JobKind for Sleep {
    const NAME: &'static str = "sleep";
    type Args = SleepArgs;

    fn validate(&self, args: &SleepArgs) -> Result<(), String> {
        if args.ms > MAX_MS {
            return Err(format!("ms must be at most {MAX_MS}"));
        }
        Ok(())
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            max_attempts: 3,
            timeout: Duration::from_secs(86_400 + 60),
        }
    }

    async fn run(&self, ctx: JobContext, args: SleepArgs) -> Outcome {
        ctx.progress(0, Some(args.ms as i64), Some("sleeping"));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.ms)) => {
                ctx.progress(args.ms as i64, Some(args.ms as i64), Some("done"));
                Outcome::success(json!({ "slept_ms": args.ms }))
            }
            _ = ctx.cancelled() => Outcome::Cancelled("cancelled while sleeping".into()),
        }
    }
}
