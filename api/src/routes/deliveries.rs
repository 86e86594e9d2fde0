//! `/v1/deliveries`: one webhook delivery with its attempt log, and replay.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobmill_webhooks::records::sending_job_key;
use jobmill_webhooks::{delivery_job, TENANT};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ResourceId;
use crate::view::DeliveryView;
use crate::AppState;

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such delivery")
}

/// Show a delivery with every attempt.
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "delivery id", pattern = r"^[A-Za-z0-9_]{1,200}$")),
    responses(
        (status = 200, description = "the delivery", body = DeliveryView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such delivery for this key", body = ErrorBody),
    ))]
pub async fn deliveries_show(
    State(state): State<AppState>,
    caller: Caller,
    ResourceId(id): ResourceId,
) -> Result<Response, ApiError> {
    let d = state
        .webhooks
        .store()
        .get_delivery(&id, caller.scope())
        .await?
        .ok_or_else(not_found)?;
    Ok(axum::Json(DeliveryView::from(&d)).into_response())
}

/// Send a finished delivery again: same body, same `webhook-id` (receivers that already have it
/// dedupe), a fresh timestamp and signature, and a fresh retry schedule.
#[utoipa::path(post, path = "/v1/deliveries/{id}/replay", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "delivery id", pattern = r"^[A-Za-z0-9_]{1,200}$")),
    responses(
        (status = 202, description = "queued for sending", body = DeliveryView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such delivery for this key", body = ErrorBody),
        (status = 409, description = "the delivery is still pending", body = ErrorBody),
    ))]
pub async fn deliveries_replay(
    State(state): State<AppState>,
    caller: Caller,
    ResourceId(id): ResourceId,
) -> Result<Response, ApiError> {
    let d = replay(&state, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(DeliveryView::from(&d))).into_response())
}

/// Replay a delivery the caller may change (the JSON endpoint and the dashboard's button).
pub(crate) async fn replay(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<jobmill_webhooks::records::Delivery, ApiError> {
    let id = id.to_string();
    let hooks = state.webhooks.store();
    let d = match hooks.start_replay(&id, caller.write_scope()).await? {
        Some(d) => d,
        None => {
            let Some(d) = hooks.get_delivery(&id, caller.scope()).await? else {
                return Err(not_found());
            };
            // Still pending: normally its sending job is retrying it, and a replay on top would
            // send it twice at once. But if that job has ended (its store writes failed on
            // every attempt), nobody will ever finish the delivery: let it be replayed.
            let sender = state
                .client
                .store()
                .find_by_idempotency_key(TENANT, &sending_job_key(&d.id, d.replays))
                .await?;
            let orphaned = sender.is_some_and(|j| j.state.is_terminal());
            let restarted = if orphaned {
                hooks
                    .replay_orphaned(&d.id, caller.write_scope(), d.replays)
                    .await?
            } else {
                None
            };
            restarted.ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "delivery_pending",
                    "the delivery is still being sent or retried; replay it once it has ended",
                )
            })?
        }
    };
    // The replay number makes the idempotency key unique per replay, while a retried request
    // for the same replay cannot queue it twice.
    let key = sending_job_key(&d.id, d.replays);
    state
        .client
        .submit_internal(
            TENANT,
            vec![delivery_job(&d.id, key, state.webhooks.settings().timeout)],
        )
        .await?;
    Ok(d)
}
