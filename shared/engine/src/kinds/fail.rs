//! `fail`: fails its first `times` attempts, then succeeds. For tests of retries and backoff.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::kind::{JobContext, JobKind, Outcome};

/// Arguments of `fail`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    /// How many attempts fail before one succeeds.
    pub times: u32,
    /// Error message of the failing attempts (at most 1000 bytes).
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub message: Option<String>,
    /// How to fail (default `retry`).
    #[serde(default)]
    pub mode: Option<FailMode>,
}

/// How a planned failure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Ask for another attempt (`Outcome::Retry`).
    Retry,
    /// Fail for good (`Outcome::Fail`).
    Permanent,
    /// Panic, which the worker records as a failed attempt.
    Panic,
}

/// Fails attempts `1..=times`, succeeds after. Stateless: the attempt number decides, so a
/// re-run behaves the same.
#[derive(Default)]
pub struct Fail;

impl JobKind for Fail {
    const NAME: &'static str = "fail";
    const DESCRIPTION: &'static str =
        "Fails its first `times` attempts (retry, permanent or panic), then succeeds.";
    type Args = FailArgs;

    fn validate(&self, args: &FailArgs) -> Result<(), String> {
        if args.message.as_ref().is_some_and(|m| m.len() > 1000) {
            return Err("message must be at most 1000 bytes".into());
        }
        Ok(())
    }

    async fn run(&self, ctx: JobContext, args: FailArgs) -> Outcome {
        if ctx.attempt > args.times {
            return Outcome::success(json!({ "succeeded_on_attempt": ctx.attempt }));
        }
        let message = args
            .message
            .unwrap_or_else(|| format!("planned failure {} of {}", ctx.attempt, args.times));
        match args.mode.unwrap_or(FailMode::Retry) {
            FailMode::Permanent => Outcome::fail(message),
            FailMode::Panic => panic!("{message}"),
            FailMode::Retry => Outcome::retry(message),
        }
    }
}
