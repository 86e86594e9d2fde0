//! `GET /metrics`: the fleet-wide Prometheus view, read from the same Redis structure sizes and
//! worker registry as `/v1/queues` and `/v1/workers`. It needs a viewer or operator key, or the
//! scrape token `JOBMILL_METRICS_TOKEN` (Prometheus scrape configs can send a bearer token).

use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use jobmill_ops::{metrics, workers};

use crate::auth::{bearer_token, constant_time_eq, forbidden};
use crate::error::{ApiError, ErrorBody};
use crate::settings::Role;
use crate::AppState;

/// Fleet metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operators", security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, description = "missing or unknown key or token", body = ErrorBody),
        (status = 403, description = "a submitter key", body = ErrorBody),
        (status = 503, description = "Redis or MongoDB is unreachable", body = ErrorBody),
    ))]
pub async fn metrics_show(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_token)
        .ok_or_else(|| {
            ApiError::unauthorized("send a key or the scrape token as a bearer token")
        })?;
    let scrape_token = state
        .metrics_token
        .as_ref()
        .is_some_and(|t| constant_time_eq(t.expose().as_bytes(), token.as_bytes()));
    if !scrape_token {
        let mut role = None;
        for key in state.keys.iter() {
            if constant_time_eq(key.secret.expose().as_bytes(), token.as_bytes()) {
                role = Some(key.role);
            }
        }
        match role {
            None => return Err(ApiError::unauthorized("unknown key or token")),
            Some(Role::Submitter) => {
                return Err(forbidden("metrics need a viewer or operator key"))
            }
            Some(Role::Viewer | Role::Operator) => {}
        }
    }
    let workers = workers::list(state.ops.queue()).await?;
    let queues = state.ops.queue_list().await?;
    let text = metrics::fleet(&queues, &workers);
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}
