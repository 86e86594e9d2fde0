//! `jobmill-api`: settings, telemetry, then [`jobmill_api::serve`] until SIGTERM or Ctrl-C.

use jobmill::config::{Component, Settings};
use jobmill::telemetry::{init_tracing, shutdown_signal};
use jobmill::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let example = "Example: jobmill-api --api-addr 127.0.0.1:8080";
        print!("{}", Settings::help("jobmill-api", example));
        // Environment only for now (not flags): they join the settings table later.
        for (name, default, meaning) in jobmill_api::server::SETTINGS {
            println!("  {name:<26} {meaning} [default: {default}] (environment only)");
        }
        return Ok(());
    }
    let settings = Settings::load(Component::Api, &args).unwrap_or_else(|e| {
        eprintln!("jobmill-api: {e}");
        std::process::exit(2);
    });
    init_tracing(&settings);
    jobmill_api::serve(&settings, Registry::builtin(), shutdown_signal()).await
}
