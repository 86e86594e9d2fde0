//! `jobmill-worker`: settings, telemetry, then [`jobmill_worker::run`] until SIGTERM or Ctrl-C.

use jobmill::config::{Component, Settings};
use jobmill::telemetry::{init_tracing, shutdown_signal};
use jobmill::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let example = "Example: jobmill-worker --queues default,imports:3,cache --concurrency 16";
        print!("{}", Settings::help("jobmill-worker", example));
        return Ok(());
    }
    let settings = Settings::load(Component::Worker, &args).unwrap_or_else(|e| {
        eprintln!("jobmill-worker: {e}");
        std::process::exit(2);
    });
    init_tracing(&settings);
    jobmill_worker::run(settings, Registry::builtin(), shutdown_signal()).await?;
    Ok(())
}
