//! `fail`: fails its first `times` attempts, then succeeds. For tests of retries and backoff.

use serde::Deserialize;
use serde_json::json;

use crate::kind::{JobContext, JobKind, Outcome};

/// Arguments of `fail`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    /// How many attempts fail before one succeeds.
    pub times: u32,
    /// Error message of the failing attempts.
    #[serde(default)]
    pub message: Option<String>,
    /// How to fail: `retry` (default), `permanent`, or `panic`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// Fails attempts `1..=times`, succeeds after. Stateless: the attempt number decides, so a
/// re-run behaves the same.
#[derive(Default)]
pub struct Fail;

impl JobKind for Fail {
    const NAME: &'static str = "fail";
    type Args = FailArgs;

    fn validate(&self, args: &FailArgs) -> Result<(), String> {
        match args.mode.as_deref() {
            None | Some("retry") | Some("permanent") | Some("panic") => {}
            Some(other) => return Err(format!("mode '{other}' is not retry, permanent or panic")),
        }
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
        match args.mode.as_deref() {
            Some("permanent") => Outcome::fail(message),
            Some("panic") => panic!("{message}"),
            _ => Outcome::retry(message),
        }
    }
}
