//! A user's own jobmill worker: the stock kinds plus one kind of its own, `greet`, defined in
//! `greet.rs`. Run it next to the stock `jobmill-api` (same `JOBMILL_*` settings): at start it
//! announces `greet` with its args' JSON Schema, and the API accepts `greet` jobs moments later,
//! without being rebuilt. It also declares a schedule next to its kind (`greet-morning`, every
//! day at 09:00 Berlin time), upserted at start with `managed_by: "code"`: the API refuses to
//! edit it (`409 managed_by_code`) until an operator detaches it, and bumping `version` here
//! is how a deploy changes it.
//!
//! ```text
//! cargo run -p custom-kind -- --queues default
//! curl -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
//!      $URL/v1/jobs -d '{"kind":"greet","args":{"name":"Ada","times":2}}'
//! ```

mod greet;

use jobmill::config::Config as _;
use jobmill::telemetry::{init_tracing, shutdown_signal};
use jobmill::Registry;
use jobmill_worker::{ScheduleSpec, WorkerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!(
            "{}",
            WorkerConfig::help("custom-kind-worker", "A worker that also serves `greet`.")
        );
        return Ok(());
    }
    let config = WorkerConfig::load(&args)?;
    init_tracing(&config.core);
    let mut kinds = Registry::new();
    kinds.register(greet::Greet);
    let schedules = vec![ScheduleSpec::new("greet-morning", "0 9 * * *", "greet")
        .tenant("examples")
        .timezone("Europe/Berlin")
        .args(serde_json::json!({"name": "morning", "times": 1}))
        .version(1)];
    jobmill_worker::run_declared(config, kinds, schedules, shutdown_signal()).await?;
    Ok(())
}
