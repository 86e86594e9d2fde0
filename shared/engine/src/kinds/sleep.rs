//! `sleep`: waits `ms` milliseconds, honouring cancellation. The smallest complete example of a
//! job kind: typed args, validation, progress, cancellation, a typed outcome.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::kind::{JobContext, JobKind, KindDefaults, Outcome};

/// Longest sleep accepted (one day).
const MAX_MS: u64 = 86_400_000;
/// Most progress steps.
const MAX_STEPS: u32 = 10_000;

/// Arguments of `sleep`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to sleep, in ms (at most a day).
    #[schemars(range(max = 86_400_000))]
    pub ms: u64,
    /// Report progress this many times along the way (default 1: only at the start and end),
    /// as a long job with visible progress would.
    #[serde(default)]
    #[schemars(range(min = 1, max = 10_000))]
    pub steps: Option<u32>,
    /// What to return when cancelled (default `stop`: `Outcome::Cancelled`). `retry` returns
    /// `Outcome::Retry` instead, as a handler that treats every interruption as transient
    /// would; the job must still end `cancelled`.
    #[serde(default)]
    pub on_cancel: Option<OnCancel>,
}

/// What `sleep` returns when it is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnCancel {
    /// `Outcome::Cancelled`.
    Stop,
    /// `Outcome::Retry`.
    Retry,
}

/// Sleeps, then succeeds with `{"slept_ms": ms}`; stops early when cancelled. No effects, so
/// running it twice is harmless.
pub struct Sleep;

impl JobKind for Sleep {
    const NAME: &'static str = "sleep";
    const DESCRIPTION: &'static str =
        "Waits `ms` milliseconds, reporting progress `steps` times; honours cancellation.";
    type Args = SleepArgs;

    fn validate(&self, args: &SleepArgs) -> Result<(), String> {
        if args.ms > MAX_MS {
            return Err(format!("ms must be at most {MAX_MS}"));
        }
        if args.steps.is_some_and(|s| !(1..=MAX_STEPS).contains(&s)) {
            return Err(format!("steps must be from 1 to {MAX_STEPS}"));
        }
        Ok(())
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            timeout: Duration::from_secs(86_400 + 60),
            ..KindDefaults::default()
        }
    }

    async fn run(&self, ctx: JobContext, args: SleepArgs) -> Outcome {
        let total = args.ms as i64;
        let steps = args.steps.unwrap_or(1).max(1) as u64;
        ctx.progress(0, Some(total), Some("sleeping"));
        for step in 1..=steps {
            // Step ends at an exact share of the total, so the slices add up to `ms`.
            let slice = args.ms * step / steps - args.ms * (step - 1) / steps;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(slice)) => {}
                _ = ctx.cancelled() => return match args.on_cancel.unwrap_or(OnCancel::Stop) {
                    OnCancel::Stop => Outcome::Cancelled("cancelled while sleeping".into()),
                    OnCancel::Retry => Outcome::retry("interrupted while sleeping; try again"),
                },
            }
            let done = (args.ms * step / steps) as i64;
            let message = if step == steps { "done" } else { "sleeping" };
            ctx.progress(done, Some(total), Some(message));
        }
        Outcome::success(json!({ "slept_ms": args.ms }))
    }
}
