//! `greet`: a user-defined kind in one file. Its args derive `JsonSchema`, and the schema says
//! every rule `validate` checks, so the stock API refuses bad args with the exact JSON Pointer.

use jobmill::{JobContext, JobKind, Outcome};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// Arguments of `greet`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GreetArgs {
    /// Who to greet (1-64 characters).
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// How many times (1-10, default 1).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10))]
    pub times: Option<u32>,
}

/// Greets someone; no effects, so running it twice is harmless.
pub struct Greet;

impl JobKind for Greet {
    const NAME: &'static str = "greet";
    const DESCRIPTION: &'static str = "Greets someone, up to ten times.";
    type Args = GreetArgs;

    fn validate(&self, a: &GreetArgs) -> Result<(), String> {
        if a.name.trim().is_empty() {
            return Err("name must not be blank".into());
        }
        Ok(())
    }

    async fn run(&self, ctx: JobContext, a: GreetArgs) -> Outcome {
        let times = a.times.unwrap_or(1);
        ctx.progress(i64::from(times), Some(i64::from(times)), Some("greeted"));
        Outcome::success(json!({
            "greeting": vec![format!("Hello, {}!", a.name); times as usize].join(" ")
        }))
    }
}
