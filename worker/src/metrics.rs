//! The worker's Prometheus endpoint: `GET /metrics` on `JOBMILL_METRICS_ADDR`, off unless set.
//! It has no authentication, so it is meant for loopback or a private network.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use jobmill_ops::metrics;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Serve until `stop` fires. A bind failure is logged, not fatal: metrics are not worth
/// refusing to run jobs over.
pub(crate) async fn serve(addr: SocketAddr, shared: Arc<Shared>, stop: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics");
            return;
        }
    };
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics at /metrics");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

async fn scrape(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let (held, busy) = shared.inflight.snapshot();
    // Held jobs whose handler returned are the outcomes waiting to be recorded.
    shared
        .metrics
        .set_slots(busy, shared.settings.concurrency, held.len() - busy);
    (
        [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
        shared.metrics.encode(),
    )
}
