//! `jobmill-worker`: settings, telemetry, then [`jobmill_worker::run`] until SIGTERM or Ctrl-C.

use jobmill::config::{Component, LogFormat, Settings};
use jobmill::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!(
            "{}",
            Settings::help(
                "jobmill-worker",
                "Example: jobmill-worker --queues default,imports:3,cache --concurrency 16"
            )
        );
        return Ok(());
    }
    let settings = match Settings::load(Component::Worker, &args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jobmill-worker: {e}");
            std::process::exit(2);
        }
    };
    init_tracing(&settings);
    jobmill_worker::run(settings, Registry::builtin(), shutdown_signal()).await?;
    Ok(())
}

fn init_tracing(s: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&s.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match s.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
