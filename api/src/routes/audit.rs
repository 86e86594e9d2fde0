//! `/v1/audit`: the audit trail of operator actions and webhook changes, and [`audited`], the
//! one way a handler runs an action that must be audited: the record is written before the
//! action, and completed with its result after.

use std::future::Future;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use jobmill_ops::audit::{AuditAction, AuditOutcome, AuditPage};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Query, DEFAULT_LIMIT, MAX_LIMIT};
use crate::AppState;

/// Run `action` under an audit record: written first (if that fails, nothing happens), then
/// completed with `summary` of the result, or with the error. Secrets must never be in
/// `target`, `filter` or `summary`.
pub async fn audited<T, F>(
    state: &AppState,
    caller: &Caller,
    what: AuditAction,
    target: &str,
    filter: Option<serde_json::Value>,
    action: F,
    summary: impl FnOnce(&T) -> serde_json::Value,
) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let audit = state.ops.audit();
    let pending = audit.begin(&caller.tenant, what, target, filter).await?;
    let result = action.await;
    let (outcome, detail) = match &result {
        Ok(v) => (AuditOutcome::Done, summary(v)),
        Err(e) => (
            AuditOutcome::Failed,
            serde_json::json!({ "code": e.code, "status": e.status.as_u16() }),
        ),
    };
    // The action already happened: a failure to complete the record must not turn its answer
    // into an error. The record stays `pending`, which an auditor reads as "unknown outcome".
    if let Err(e) = audit.finish(&pending, outcome, detail).await {
        tracing::warn!(error = %e, record = %pending.id, "could not complete an audit record");
    }
    result
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page size (1-500, default 50).
    #[param(nullable = false, minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>, nullable = false)]
    pub cursor: Option<String>,
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "operators", security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "a page of records", body = AuditPage),
        (status = 400, description = "invalid_limit or invalid_cursor", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a submitter key", body = ErrorBody),
    ))]
pub async fn audit_index(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    caller.require_viewer()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be from 1 to {MAX_LIMIT}"),
        ));
    }
    let cursor = match q.cursor {
        None => None,
        Some(c) if uuid::Uuid::parse_str(&c).is_ok() => Some(c),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_cursor",
                "cursor must be a next_cursor from an earlier page",
            ))
        }
    };
    let page = state.ops.audit().list(cursor.as_deref(), limit).await?;
    Ok(axum::Json(page).into_response())
}
