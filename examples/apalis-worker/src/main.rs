//! `apalis-worker`: apalis handlers on jobmill queues. Same settings as `jobmill-worker`
//! (`JOBMILL_QUEUES`, `JOBMILL_CONCURRENCY`, ...); drains on SIGTERM like it.
//!
//! Kinds served:
//! - `apalis_echo` (`{"n": 1}`): returns its args; the noop-like kind the tests and bench run.
//! - `apalis_behave` (`{"mode": "...", "ms": 0}`): one handler per row of the outcome table
//!   (see the `jobmill-apalis` crate docs), for tests and demos.

use std::time::Duration;

use apalis::layers::TimeoutLayer;
use apalis::prelude::*;
use jobmill::config::Config;
use jobmill::telemetry::{init_tracing, shutdown_signal};
use jobmill_apalis::{Jobmill, Kinds};
use jobmill_worker::WorkerConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Args of `apalis_echo`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Echo {
    /// Any number; comes back as the result.
    n: u64,
}

async fn echo(args: Echo) -> Result<Echo, BoxDynError> {
    Ok(args)
}

/// What `apalis_behave` does.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// Succeed with `{"slept_ms": ms}` after sleeping `ms`.
    Ok,
    /// Return apalis' `AbortError`.
    Abort,
    /// Return apalis' `RetryAfterError` asking for `ms` milliseconds.
    RetryAfter,
    /// Return a plain error.
    Error,
    /// Panic.
    Panic,
    /// Sleep `ms` asynchronously (longer than the `TimeoutLayer` to test it).
    Sleep,
    /// Block the thread for `ms` (a misbehaving handler; the lease must survive it).
    Block,
    /// Wait until apalis' `TaskContext` says the task was cancelled.
    WaitCancel,
}

/// Args of `apalis_behave`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Behave {
    mode: Mode,
    #[serde(default)]
    ms: u64,
}

async fn behave(args: Behave, task: TaskContext) -> Result<serde_json::Value, BoxDynError> {
    let ms = Duration::from_millis(args.ms);
    match args.mode {
        Mode::Ok => {
            tokio::time::sleep(ms).await;
            Ok(serde_json::json!({ "slept_ms": args.ms }))
        }
        Mode::Abort => Err(AbortError::new("bad input; do not retry").into()),
        Mode::RetryAfter => Err(RetryAfterError::new("upstream busy", ms).into()),
        Mode::Error => Err("transient trouble".into()),
        Mode::Panic => panic!("handler panicked on purpose"),
        Mode::Sleep => {
            tokio::time::sleep(ms).await;
            Ok(serde_json::json!({ "slept_ms": args.ms }))
        }
        Mode::Block => {
            std::thread::sleep(ms);
            Ok(serde_json::json!({ "blocked_ms": args.ms }))
        }
        Mode::WaitCancel => {
            task.executed().await;
            Err("stopped".into())
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!(
            "{}",
            WorkerConfig::help("apalis-worker", "Example: apalis-worker --queues default")
        );
        return Ok(());
    }
    let config = WorkerConfig::load(&args).unwrap_or_else(|e| {
        eprintln!("apalis-worker: {e}");
        std::process::exit(2);
    });
    init_tracing(&config.core);

    let mut kinds = Kinds::new();
    let echo_kind = kinds.add::<Echo>("apalis_echo", "default");
    let behave_kind = kinds.add::<Behave>("apalis_behave", "default");
    let jobmill = Jobmill::start(config, kinds).await?;

    let echo_worker = WorkerBuilder::new("apalis-echo")
        .backend(jobmill.backend(echo_kind))
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .build(echo);
    let behave_worker = WorkerBuilder::new("apalis-behave")
        .backend(jobmill.backend(behave_kind))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .build(behave);
    let workers = async move {
        let _ = tokio::join!(echo_worker.run(), behave_worker.run());
    };
    jobmill.run(workers, shutdown_signal()).await?;
    Ok(())
}
