//! `/v1/schedules`: periodic schedules (create, list, show, change, delete, pause, resume,
//! trigger, detach), thin over [`jobmill_schedules::Schedules`].
//!
//! Roles as for jobs: a submitter sees and changes its own schedules only (another tenant's
//! answer `404`); a viewer reads every tenant's; an operator reads and changes every tenant's.
//! A schedule is named by its tenant and name: operators and viewers pick another tenant's
//! with `?tenant=`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobmill_ops::audit::AuditAction;
use jobmill_schedules::model::{
    CreateSchedule, PatchSchedule, Schedule, ScheduleList, ScheduleView,
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::routes::audit::audited;
use crate::view::JobView;
use crate::AppState;
use crate::Role;

/// Most schedules listed.
pub const MAX_LISTED: i64 = 10_000;

/// Query naming the schedule's tenant.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    /// The schedule's tenant (operators and viewers; default: the caller's own).
    #[param(nullable = false, min_length = 1, max_length = 200)]
    pub tenant: Option<String>,
}

/// The schedule `name` of the tenant the caller may address (a submitter addressing another
/// tenant's gets `404`, as if it did not exist).
pub(crate) async fn resolve(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: &TenantQuery,
) -> Result<Schedule, ApiError> {
    if jobmill_schedules::check_name(name).is_err() {
        return Err(ApiError::bad_request(
            "invalid_name",
            "schedule names are 1-64 letters, digits, '_', '-' or '.'",
        ));
    }
    let tenant = match (caller.role, q.tenant.as_deref()) {
        (_, None) => caller.tenant.as_str(),
        (Role::Submitter, Some(t)) if t != caller.tenant => {
            return Err(ApiError::from(jobmill::Error::Missing("schedule")))
        }
        (_, Some(t)) => t,
    };
    Ok(state.schedules.get(tenant, name).await?)
}

/// Create a schedule owned by the caller's tenant.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = CreateSchedule,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created", body = ScheduleView),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a viewer key", body = ErrorBody),
        (status = 408, description = "the body did not arrive within JOBMILL_HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 409, description = "schedule_exists", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "the body is not sent as JSON", body = ErrorBody),
        (status = 422, description = "invalid_body, invalid_name, invalid_cron, cron_never_fires, unknown_timezone, invalid_catch_up_within, invalid_starts_at, invalid_ends_at, invalid_window, too_many_schedules, or the job template is refused (unknown_kind, invalid_args, ...)", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateSchedule>,
) -> Result<Response, ApiError> {
    let s = state.schedules.create(&caller.tenant, body).await?;
    let view = state.schedules.show(&s).await?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

/// List schedules (a submitter's own; every tenant's for viewers and operators).
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", security(("bearer" = [])),
    responses(
        (status = 200, description = "the schedules, by tenant and name", body = ScheduleList),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_index(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let list = list(&state, &caller).await?;
    Ok(axum::Json(ScheduleList {
        schedules: list.iter().map(ScheduleView::of).collect(),
    })
    .into_response())
}

/// Show a schedule with its next 5 fire times (`next_runs`) and last 20 runs (`runs`).
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", security(("bearer" = [])),
    params(("name" = String, Path, description = "schedule name", pattern = r"^[A-Za-z0-9_.-]{1,64}$"), TenantQuery),
    responses(
        (status = 200, description = "the schedule", body = ScheduleView),
        (status = 400, description = "bad name or query", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such schedule for this key", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(show(&state, &caller, &name, &q).await?).into_response())
}

/// Change a schedule. A code-managed schedule answers `409 managed_by_code` until detached.
#[utoipa::path(patch, path = "/v1/schedules/{name}", tag = "schedules", request_body = PatchSchedule,
    security(("bearer" = [])),
    params(("name" = String, Path, description = "schedule name", pattern = r"^[A-Za-z0-9_.-]{1,64}$"), TenantQuery),
    responses(
        (status = 200, description = "changed", body = ScheduleView),
        (status = 400, description = "malformed JSON, bad name or query", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a viewer key", body = ErrorBody),
        (status = 404, description = "no such schedule for this key", body = ErrorBody),
        (status = 408, description = "the body did not arrive within JOBMILL_HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 409, description = "managed_by_code, or schedule_changed (a concurrent change)", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "the body is not sent as JSON", body = ErrorBody),
        (status = 422, description = "invalid field (as for create)", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
    Json(body): Json<PatchSchedule>,
) -> Result<Response, ApiError> {
    let s = resolve(&state, &caller, &name, &q).await?;
    let s = state.schedules.update(s, body).await?;
    Ok(axum::Json(state.schedules.show(&s).await?).into_response())
}

/// Delete a schedule (its jobs stay). A code-managed schedule answers `409 managed_by_code`.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", security(("bearer" = [])),
    params(("name" = String, Path, description = "schedule name", pattern = r"^[A-Za-z0-9_.-]{1,64}$"), TenantQuery),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "bad name or query", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a viewer key", body = ErrorBody),
        (status = 404, description = "no such schedule for this key", body = ErrorBody),
        (status = 409, description = "managed_by_code", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let s = resolve(&state, &caller, &name, &q).await?;
    state.schedules.delete(&s).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Pause a schedule: its ticks are skipped (counted as `paused`) until resumed.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules", security(("bearer" = [])),
    params(("name" = String, Path, description = "schedule name", pattern = r"^[A-Za-z0-9_.-]{1,64}$"), TenantQuery),
    responses(
        (status = 200, description = "paused", body = ScheduleView),
        (status = 400, description = "bad name or query", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a viewer key", body = ErrorBody),
        (status = 404, description = "no such schedule for this key", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let s = set_paused(&state, &caller, &name, &q, true).await?;
    Ok(axum::Json(ScheduleView::of(&s)).into_response())
}

/// Resume a schedule from its next tick (the paused time is not caught up).
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules", security(("bearer" = [])),
    params(("name" = String, Path, description = "schedule name", pattern = r"^[A-Za-z0-9_.-]{1,64}$"), TenantQuery),
    responses(
        (status = 200, description = "resumed", body = ScheduleView),
        (status = 400, description = "bad name or query", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a viewer key", body = ErrorBody),
        (status = 404, description = "no such schedule for this key", body = ErrorBody),
        (status = 422, description = "the schedule's timetable no longer fires", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let s = set_paused(&state, &caller, &name, &q, false).await?;
    Ok(axum::Json(ScheduleView::of(&s)).into_response())
}

/// Run the schedule's job now, outside its timetable.
#[utoipa::path(post, path = "/v1/schedules/{name}/trigger", tag = "schedules", security(("bearer" = [])),
    params(("name" = String, Path, description = "schedule name", pattern = r"^[A-Za-z0-9_.-]{1,64}$"), TenantQuery),
    responses(
        (status = 202, description = "the job submitted", body = JobView),
        (status = 400, description = "bad name or query", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a viewer key", body = ErrorBody),
        (status = 404, description = "no such schedule for this key", body = ErrorBody),
        (status = 422, description = "the job template is refused now (its kind is gone, ...)", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let sub = trigger(&state, &caller, &name, &q).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(JobView::from(&sub.job))).into_response())
}

/// Hand a code-managed schedule over to the API (audited): the API may change it from now on,
/// and deploys leave it alone.
#[utoipa::path(post, path = "/v1/schedules/{name}/detach", tag = "schedules", security(("bearer" = [])),
    params(("name" = String, Path, description = "schedule name", pattern = r"^[A-Za-z0-9_.-]{1,64}$"), TenantQuery),
    responses(
        (status = 200, description = "detached: now managed by the API", body = ScheduleView),
        (status = 400, description = "bad name or query", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a viewer key", body = ErrorBody),
        (status = 404, description = "no such schedule for this key", body = ErrorBody),
        (status = 409, description = "not_managed_by_code", body = ErrorBody),
        (status = 503, description = "a store is unreachable", body = ErrorBody),
    ))]
pub async fn schedules_detach(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let s = detach(&state, &caller, &name, &q).await?;
    Ok(axum::Json(ScheduleView::of(&s)).into_response())
}

// The data functions below are the JSON routes' and the dashboard's (`ui::forms`): one
// implementation of the tenant, role and audit rules for both.

/// The schedules the caller may see: a submitter's own, every tenant's for viewers and
/// operators; by tenant, then name.
pub(crate) async fn list(state: &AppState, caller: &Caller) -> Result<Vec<Schedule>, ApiError> {
    Ok(state
        .schedules
        .store()
        .list(caller.scope(), MAX_LISTED)
        .await?)
}

/// A schedule with its next fire times and last runs.
pub(crate) async fn show(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: &TenantQuery,
) -> Result<ScheduleView, ApiError> {
    let s = resolve(state, caller, name, q).await?;
    Ok(state.schedules.show(&s).await?)
}

/// Pause or resume a schedule. Viewers are refused (the JSON routes refuse them earlier, in
/// [`Caller`]'s extractor; this keeps the rule for every other caller of the function).
pub(crate) async fn set_paused(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: &TenantQuery,
    paused: bool,
) -> Result<Schedule, ApiError> {
    caller.require_writer()?;
    let s = resolve(state, caller, name, q).await?;
    Ok(state.schedules.set_paused(&s, paused).await?)
}

/// Submit the schedule's job now; the run is recorded as fired by the caller's key.
pub(crate) async fn trigger(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: &TenantQuery,
) -> Result<jobmill::Submitted, ApiError> {
    caller.require_writer()?;
    let s = resolve(state, caller, name, q).await?;
    Ok(state.schedules.trigger(&s, &caller.tenant).await?)
}

/// Hand a code-managed schedule over to the API, audited.
pub(crate) async fn detach(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: &TenantQuery,
) -> Result<Schedule, ApiError> {
    caller.require_writer()?;
    let s = resolve(state, caller, name, q).await?;
    let target = format!("{}/{}", s.tenant, s.name);
    audited(
        state,
        caller,
        AuditAction::ScheduleDetach,
        &target,
        None,
        async { Ok(state.schedules.detach(&s).await?) },
        |d: &Schedule| serde_json::json!({ "id": &d.id, "version": d.version }),
    )
    .await
}
