//! The worker's Prometheus endpoint: `GET /metrics` on `JOBMILL_METRICS_ADDR`, off unless set.
//! It has no authentication, so it is meant for loopback or a private network.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use jobmill_ops::metrics::{self, WorkerMetrics};
use jobmill_webhooks::records::DeliveryStatus;
use jobmill_webhooks::DeliveryObserver;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Counts the webhook delivery statuses the `webhook_delivery` kind records
/// (`jobmill_webhook_deliveries_total{status}`). It lives here because the worker is where the
/// webhooks feature and the metrics registry meet; neither feature crate knows the other.
pub(crate) struct DeliveryCounter(pub(crate) WorkerMetrics);

impl DeliveryObserver for DeliveryCounter {
    fn recorded(&self, status: DeliveryStatus) {
        self.0.webhook_delivery(status.as_str());
    }
}

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
