//! `/v1/workers`: every worker seen in the last 10 minutes, and the operator commands `quiet`
//! and `stop`, which reach the worker over Redis pub/sub whichever API replica received them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobmill_ops::audit::AuditAction;
use jobmill_ops::workers::{self, Command, WorkerList, WorkerState, WorkerView};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::routes::audit::audited;
use crate::AppState;

/// Every worker seen in the last 10 minutes, live ones first.
#[utoipa::path(get, path = "/v1/workers", tag = "operators", security(("bearer" = [])),
    responses(
        (status = 200, description = "the workers", body = WorkerList),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a submitter key", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ))]
pub async fn workers_index(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require_viewer()?;
    let workers = workers::list(state.ops.queue()).await?;
    Ok(axum::Json(WorkerList { workers }).into_response())
}

/// One worker.
#[utoipa::path(get, path = "/v1/workers/{id}", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path, description = "worker id (host:pid:random)")),
    responses(
        (status = 200, description = "the worker", body = WorkerView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a submitter key", body = ErrorBody),
        (status = 404, description = "no worker with this id seen in the last 10 minutes", body = ErrorBody),
    ))]
pub async fn workers_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_viewer()?;
    Ok(axum::Json(find(&state, &id).await?).into_response())
}

/// Make a worker stop claiming; its running jobs finish and the process stays up.
#[utoipa::path(post, path = "/v1/workers/{id}/quiet", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path, description = "worker id")),
    responses(
        (status = 202, description = "the worker heard the command; its state turns `quiet` at its next heartbeat", body = WorkerView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "not an operator key", body = ErrorBody),
        (status = 404, description = "no such worker", body = ErrorBody),
        (status = 409, description = "worker_gone or worker_unreachable: no live worker heard it", body = ErrorBody),
    ))]
pub async fn workers_quiet(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let worker = command(&state, &caller, &id, Command::Quiet).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(worker)).into_response())
}

/// Make a worker drain and exit, as SIGTERM does.
#[utoipa::path(post, path = "/v1/workers/{id}/stop", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path, description = "worker id")),
    responses(
        (status = 202, description = "the worker heard the command and is draining", body = WorkerView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "not an operator key", body = ErrorBody),
        (status = 404, description = "no such worker", body = ErrorBody),
        (status = 409, description = "worker_gone or worker_unreachable: no live worker heard it", body = ErrorBody),
    ))]
pub async fn workers_stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let worker = command(&state, &caller, &id, Command::Stop).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(worker)).into_response())
}

async fn find(state: &AppState, id: &str) -> Result<WorkerView, ApiError> {
    if id.len() > 256 {
        return Err(not_found());
    }
    workers::get(state.ops.queue(), id)
        .await?
        .ok_or_else(not_found)
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such worker")
}

/// Send `command` to a live worker, audited (the JSON endpoints and the dashboard's buttons).
pub(crate) async fn command(
    state: &AppState,
    caller: &Caller,
    id: &str,
    command: Command,
) -> Result<WorkerView, ApiError> {
    caller.require_operator()?;
    let what = match command {
        Command::Quiet => AuditAction::WorkerQuiet,
        Command::Stop => AuditAction::WorkerStop,
    };
    let worker = find(state, id).await?;
    if worker.state == WorkerState::Gone {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "worker_gone",
            "the worker has not sent a heartbeat for three leases",
        ));
    }
    let queue = state.ops.queue().clone();
    audited(
        state,
        caller,
        what,
        id,
        None,
        async {
            let heard = workers::send(&queue, id, command).await?;
            if heard == 0 {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "worker_unreachable",
                    "no process is listening on the worker's control channel",
                ));
            }
            Ok(heard)
        },
        |heard| serde_json::json!({ "heard_by": heard }),
    )
    .await?;
    Ok(worker)
}
