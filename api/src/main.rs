//! `jobmill-api`: settings, telemetry, then [`jobmill_api::serve`] until SIGTERM or Ctrl-C.

use jobmill::config::Config as _;
use jobmill::telemetry::{init_tracing, shutdown_signal};
use jobmill::Registry;
use jobmill_api::ApiConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let example = "Example: jobmill-api --api-addr 127.0.0.1:8080";
        print!("{}", ApiConfig::help("jobmill-api", example));
        return Ok(());
    }
    let config = ApiConfig::load(&args).unwrap_or_else(|e| {
        eprintln!("jobmill-api: {e}");
        std::process::exit(2);
    });
    init_tracing(&config.core);
    // Kinds beyond the stock ones need no rebuild of this binary: workers announce them.
    jobmill_api::serve(&config, Registry::new(), shutdown_signal()).await
}
