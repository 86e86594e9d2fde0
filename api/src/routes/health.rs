//! Liveness, readiness and the OpenAPI document.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;

/// Readiness of the dependencies.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` or the error.
    pub redis: String,
    /// `ok` or the error.
    pub mongodb: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Redis and MongoDB answer.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "both stores answer", body = Readiness),
    (status = 503, description = "a store does not answer", body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let t = Duration::from_secs(2);
    let client = &state.client;
    let (redis, mongo) = tokio::join!(
        tokio::time::timeout(t, client.queue().ping()),
        tokio::time::timeout(t, client.store().ping()),
    );
    let show = |r: Result<jobmill::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!(
            "error: {}",
            if e.is_unavailable() {
                "unreachable"
            } else {
                "failing"
            }
        ),
        Err(_) => "error: timed out".to_string(),
    };
    let body = Readiness {
        redis: show(redis),
        mongodb: show(mongo),
    };
    let status = if body.redis == "ok" && body.mongodb == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The OpenAPI 3 document of this API, generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi() -> impl IntoResponse {
    Json(crate::ApiDoc::openapi())
}
