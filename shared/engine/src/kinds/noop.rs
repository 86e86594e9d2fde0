//! `noop`: succeeds at once with its args as the result. For smoke tests and benchmarks.

use serde_json::Value;

use crate::kind::{JobContext, JobKind, Outcome};

/// Succeeds at once; result = args. Idempotent (no effects).
pub struct Noop;

impl JobKind for Noop {
    const NAME: &'static str = "noop";
    const DESCRIPTION: &'static str = "Succeeds at once with its args as the result.";
    type Args = Value;

    async fn run(&self, _ctx: JobContext, args: Value) -> Outcome {
        Outcome::Success(args)
    }
}
