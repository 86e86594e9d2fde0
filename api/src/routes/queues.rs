//! `/v1/queues`: queue depth by state, latency, consumers and recent outcomes (all from Redis
//! structure sizes and the per-minute history, never a scan of the jobs), pause and resume,
//! limits, and the per-minute history.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobmill::config::check_queue_name;
use jobmill::limits::LimitsSpec;
use jobmill_ops::audit::AuditAction;
use jobmill_ops::history::{HistoryView, MAX_MINUTES};
use jobmill_ops::queues::{QueueList, QueueView};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::routes::audit::audited;
use crate::AppState;

/// Every queue with jobs, workers, a pause or outcomes in the last hour.
#[utoipa::path(get, path = "/v1/queues", tag = "operators", security(("bearer" = [])),
    responses(
        (status = 200, description = "the queues, by name", body = QueueList),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a submitter key", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn queues_index(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require_viewer()?;
    let queues = state.ops.queue_list().await?;
    Ok(axum::Json(QueueList { queues }).into_response())
}

/// Pause a queue: it still accepts submissions, but no worker claims from it (from the next
/// claim on). Recorded in MongoDB, so it survives a Redis wipe.
#[utoipa::path(post, path = "/v1/queues/{name}/pause", tag = "operators", security(("bearer" = [])),
    params(("name" = String, Path, description = "queue name", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "paused; the queue now", body = QueueView),
        (status = 400, description = "invalid_queue", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "not an operator key", body = ErrorBody),
        (status = 503, description = "a store is unreachable; nothing changed", body = ErrorBody),
    ))]
pub async fn queues_pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let view = set_paused(&state, &caller, &name, true).await?;
    Ok((StatusCode::OK, axum::Json(view)).into_response())
}

/// Resume a paused queue.
#[utoipa::path(post, path = "/v1/queues/{name}/resume", tag = "operators", security(("bearer" = [])),
    params(("name" = String, Path, description = "queue name", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "resumed; the queue now", body = QueueView),
        (status = 400, description = "invalid_queue", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "not an operator key", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn queues_resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let view = set_paused(&state, &caller, &name, false).await?;
    Ok((StatusCode::OK, axum::Json(view)).into_response())
}

/// Set the limits of a queue, replacing any: `concurrency` (jobs of the queue running at once
/// across the fleet), `rate` (`{"max", "per"}`: starts per window), and per `limit_key` of the
/// jobs, `key_concurrency` and `key_rate`. Enforced atomically by every claim from the next
/// one on; jobs with a `limit_key` are claimed round-robin across keys. Recorded in MongoDB, so
/// they survive a Redis wipe; audited.
#[utoipa::path(put, path = "/v1/queues/{name}/limits", tag = "operators", security(("bearer" = [])),
    params(("name" = String, Path, description = "queue name", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    request_body = LimitsSpec,
    responses(
        (status = 200, description = "set; the queue now", body = QueueView),
        (status = 400, description = "invalid_queue", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "not an operator key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not application/json", body = ErrorBody),
        (status = 409, description = "sharded_queue: concurrency or rate on a sharded queue", body = ErrorBody),
        (status = 422, description = "invalid_body or invalid_limits", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn queues_limits_set(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(spec): Json<LimitsSpec>,
) -> Result<Response, ApiError> {
    let view = set_limits(&state, &caller, &name, &spec).await?;
    Ok((StatusCode::OK, axum::Json(view)).into_response())
}

/// Remove every limit of a queue (from the next claim on). Audited.
#[utoipa::path(delete, path = "/v1/queues/{name}/limits", tag = "operators", security(("bearer" = [])),
    params(("name" = String, Path, description = "queue name", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "removed; the queue now", body = QueueView),
        (status = 400, description = "invalid_queue", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "not an operator key", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn queues_limits_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let view = remove_limits(&state, &caller, &name).await?;
    Ok((StatusCode::OK, axum::Json(view)).into_response())
}

/// Query of the history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Minutes back from now, the current one included (1-1440, default 60).
    #[param(nullable = false, minimum = 1, maximum = 1440)]
    pub minutes: Option<u32>,
}

/// Per-minute succeeded, failed, retried and cancelled counts, with average and p95 run time.
#[utoipa::path(get, path = "/v1/queues/{name}/history", tag = "operators", security(("bearer" = [])),
    params(("name" = String, Path, description = "queue name", pattern = r"^[A-Za-z0-9_-]{1,64}$"), HistoryQuery),
    responses(
        (status = 200, description = "minutes with outcomes, oldest first", body = HistoryView),
        (status = 400, description = "invalid_queue or invalid_minutes", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a submitter key", body = ErrorBody),
    ))]
pub async fn queues_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    caller.require_viewer()?;
    check_name(&name)?;
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=MAX_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(
            "invalid_minutes",
            format!("minutes must be from 1 to {MAX_MINUTES}"),
        ));
    }
    let view = state.ops.history().minutes(&name, minutes).await?;
    Ok(axum::Json(view).into_response())
}

/// `400 invalid_queue` unless `name` is a queue name.
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    check_queue_name(name).map_err(|m| ApiError::bad_request("invalid_queue", m))
}

/// Pause or resume a queue, audited (the JSON endpoints and the dashboard's buttons).
pub(crate) async fn set_paused(
    state: &AppState,
    caller: &Caller,
    name: &str,
    paused: bool,
) -> Result<QueueView, ApiError> {
    caller.require_operator()?;
    check_name(name)?;
    let what = if paused {
        AuditAction::QueuePause
    } else {
        AuditAction::QueueResume
    };
    let ops = state.ops.clone();
    audited(
        state,
        caller,
        what,
        name,
        None,
        async {
            ops.pauses()
                .set(ops.queue(), name, paused, &caller.tenant)
                .await?;
            Ok(())
        },
        |_| serde_json::json!({ "paused": paused }),
    )
    .await?;
    Ok(state.ops.queue_one(name).await?)
}

/// Set a queue's limits, replacing any: checked, refused on a sharded queue when queue-wide,
/// audited (the JSON `PUT` and the dashboard's form).
pub(crate) async fn set_limits(
    state: &AppState,
    caller: &Caller,
    name: &str,
    spec: &LimitsSpec,
) -> Result<QueueView, ApiError> {
    caller.require_operator()?;
    check_name(name)?;
    let limits = spec
        .check()
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_limits", m))?;
    if limits.is_queue_wide() {
        // One claim script sees one lane: a queue-wide count cannot span a sharded queue's.
        state.ops.queue().shards().check_queue_wide_limit(name)?;
    }
    let ops = state.ops.clone();
    let request = serde_json::to_value(LimitsSpec::from(limits)).unwrap_or_default();
    audited(
        state,
        caller,
        AuditAction::QueueLimitsSet,
        name,
        Some(request.clone()),
        async {
            ops.limits()
                .set(ops.queue(), name, Some(&limits), &caller.tenant)
                .await?;
            Ok(())
        },
        |_| serde_json::json!({ "limits": request }),
    )
    .await?;
    Ok(state.ops.queue_one(name).await?)
}

/// Remove every limit of a queue, audited (the JSON `DELETE` and the dashboard's button).
pub(crate) async fn remove_limits(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<QueueView, ApiError> {
    caller.require_operator()?;
    check_name(name)?;
    let ops = state.ops.clone();
    audited(
        state,
        caller,
        AuditAction::QueueLimitsDelete,
        name,
        None,
        async {
            ops.limits()
                .set(ops.queue(), name, None, &caller.tenant)
                .await?;
            Ok(())
        },
        |_| serde_json::json!({ "limits": null }),
    )
    .await?;
    Ok(state.ops.queue_one(name).await?)
}
