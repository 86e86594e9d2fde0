//! What both binaries do before and after their real work: structured logs from the settings,
//! and the shutdown signal (SIGTERM or Ctrl-C) passed to `serve`/`run` as a future.

use crate::config::{CoreSettings, LogFormat};

/// Install the tracing subscriber: `JOBMILL_LOG` filter, `JOBMILL_LOG_FORMAT` text or json.
pub fn init_tracing(s: &CoreSettings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&s.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match s.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
