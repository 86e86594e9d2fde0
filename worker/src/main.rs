//! `jobmill-worker`: settings, telemetry, then [`jobmill_worker::run`] until SIGTERM or Ctrl-C.

use jobmill::config::Config as _;
use jobmill::telemetry::{init_tracing, shutdown_signal};
use jobmill::Registry;
use jobmill_worker::WorkerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let example = "Example: jobmill-worker --queues default,imports:3,cache --concurrency 16";
        print!("{}", WorkerConfig::help("jobmill-worker", example));
        return Ok(());
    }
    let config = WorkerConfig::load(&args).unwrap_or_else(|e| {
        eprintln!("jobmill-worker: {e}");
        std::process::exit(2);
    });
    init_tracing(&config.core);
    // The stock worker serves the engine's and the features' kinds; a user's own worker binary
    // passes its kinds here (see examples/custom-kind).
    jobmill_worker::run(config, Registry::new(), shutdown_signal()).await?;
    Ok(())
}
