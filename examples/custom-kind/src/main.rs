//! A user's own jobmill worker: the stock kinds plus one kind of its own, `greet`, defined in
//! `greet.rs`. Run it next to the stock `jobmill-api` (same `JOBMILL_*` settings): at start it
//! announces `greet` with its args' JSON Schema, and the API accepts `greet` jobs moments later,
//! without being rebuilt.
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
use jobmill_worker::WorkerConfig;

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
    jobmill_worker::run(config, kinds, shutdown_signal()).await?;
    Ok(())
}
