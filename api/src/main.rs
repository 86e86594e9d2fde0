//! `jobmill-api`: settings, telemetry, then [`jobmill_api::serve`] until SIGTERM or Ctrl-C.

use jobmill::config::{Component, LogFormat, Settings};
use jobmill::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!(
            "{}",
            Settings::help(
                "jobmill-api",
                "Example: jobmill-api --api-addr 127.0.0.1:8080"
            )
        );
        return Ok(());
    }
    let settings = match Settings::load(Component::Api, &args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jobmill-api: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    jobmill_api::serve(&settings, Registry::builtin(), shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
