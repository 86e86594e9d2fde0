//! `/v1/webhooks`: registered endpoints (create, list, show, delete, enable, rotate their
//! secret, their deliveries) and the tenant's signing secret for per-job `callback_url`s.
//!
//! Secrets appear in exactly three answers: creating an endpoint, rotating its secret, and the
//! tenant secret endpoints. Never in listings, job views or logs.

use crate::routes::audit::audited;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobmill::outbox::JobEvent;
use jobmill_ops::audit::AuditAction;
use jobmill_webhooks::records::{list_key, Endpoint};
use jobmill_webhooks::{guard, parse_events, signing};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, ResourceId};
use crate::view::{
    CreateWebhook, DeliveryList, DeliveryView, SigningSecretView, WebhookList, WebhookView,
};
use crate::AppState;

/// Most endpoints listed (and most a tenant may have).
pub const MAX_ENDPOINTS: i64 = 100;
/// Most deliveries listed.
pub const MAX_DELIVERIES: i64 = 200;

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such webhook")
}

fn check_events(events: Option<Vec<String>>) -> Result<Vec<JobEvent>, ApiError> {
    // Omitted: the terminal events. `job.progress` is opt-in (it can be many per job).
    let Some(names) = events else {
        return Ok(JobEvent::TERMINAL.to_vec());
    };
    if names.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_events",
            "events must name at least one event type",
        ));
    }
    let parsed = parse_events(&names)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_events", m))?;
    let mut out: Vec<JobEvent> = Vec::new();
    for e in parsed {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Register an endpoint. The answer carries its signing secret; it is not shown again.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "registered; `secret` signs its deliveries", body = WebhookView),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 408, description = "the body did not arrive within JOBMILL_HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 415, description = "the body is not sent as JSON", body = ErrorBody),
        (status = 422, description = "invalid_callback_url, callback_url_not_allowed, destination_not_allowed, invalid_events, too_many_webhooks", body = ErrorBody),
    ))]
pub async fn webhooks_create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateWebhook>,
) -> Result<Response, ApiError> {
    let events = check_events(body.events)?;
    let url = guard::parse_url(&body.url)?;
    let settings = state.webhooks.settings();
    guard::resolve(&url, &settings.allow, &settings.destinations).await?;
    let hooks = state.webhooks.store();
    if hooks
        .list_endpoints(Some(&caller.tenant), MAX_ENDPOINTS)
        .await?
        .len() as i64
        >= MAX_ENDPOINTS
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_webhooks",
            format!("a tenant may register at most {MAX_ENDPOINTS} endpoints"),
        ));
    }
    let now = jobmill::job::now_ms();
    let id = format!("we_{}", uuid::Uuid::now_v7().simple());
    let ep = Endpoint {
        list_key: list_key(now, &id),
        id,
        tenant: caller.tenant.clone(),
        url: url.to_string(),
        events,
        secret: signing::generate_secret(),
        previous_secret: None,
        enabled: 1,
        disabled_reason: None,
        failing_since_ms: 0,
        created_ms: now,
    };
    audited(
        &state,
        &caller,
        AuditAction::WebhookCreate,
        &ep.id,
        None,
        async { Ok(hooks.create_endpoint(&ep).await?) },
        |_| serde_json::json!({ "tenant": &ep.tenant, "events": &ep.events }),
    )
    .await?;
    state.webhooks.endpoints_changed(&caller.tenant).await;
    Ok((
        StatusCode::CREATED,
        axum::Json(WebhookView::with_secret(&ep)),
    )
        .into_response())
}

/// List endpoints (without secrets), newest first.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses(
        (status = 200, description = "the endpoints", body = WebhookList),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
    ))]
pub async fn webhooks_index(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let eps = state
        .webhooks
        .store()
        .list_endpoints(caller.scope(), MAX_ENDPOINTS)
        .await?;
    Ok(axum::Json(WebhookList {
        webhooks: eps.iter().map(WebhookView::of).collect(),
    })
    .into_response())
}

/// Show an endpoint (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "endpoint id", pattern = r"^[A-Za-z0-9_]{1,200}$")),
    responses(
        (status = 200, description = "the endpoint", body = WebhookView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such endpoint for this key", body = ErrorBody),
    ))]
pub async fn webhooks_show(
    State(state): State<AppState>,
    caller: Caller,
    ResourceId(id): ResourceId,
) -> Result<Response, ApiError> {
    let ep = state
        .webhooks
        .store()
        .get_endpoint(&id, caller.scope())
        .await?
        .ok_or_else(not_found)?;
    Ok(axum::Json(WebhookView::of(&ep)).into_response())
}

/// Delete an endpoint. Deliveries still being retried stop at their next attempt.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "endpoint id", pattern = r"^[A-Za-z0-9_]{1,200}$")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such endpoint for this key", body = ErrorBody),
    ))]
pub async fn webhooks_delete(
    State(state): State<AppState>,
    caller: Caller,
    ResourceId(id): ResourceId,
) -> Result<Response, ApiError> {
    let hooks = state.webhooks.store();
    audited(
        &state,
        &caller,
        AuditAction::WebhookDelete,
        &id,
        None,
        async {
            match hooks.delete_endpoint(&id, caller.write_scope()).await? {
                true => Ok(()),
                false => Err(not_found()),
            }
        },
        |_| serde_json::json!({ "deleted": true }),
    )
    .await?;
    state.webhooks.endpoints_changed(&caller.tenant).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Re-enable a disabled endpoint (after a `410`, or after it kept failing).
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "endpoint id", pattern = r"^[A-Za-z0-9_]{1,200}$")),
    responses(
        (status = 200, description = "enabled", body = WebhookView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such endpoint for this key", body = ErrorBody),
    ))]
pub async fn webhooks_enable(
    State(state): State<AppState>,
    caller: Caller,
    ResourceId(id): ResourceId,
) -> Result<Response, ApiError> {
    let ep = set_enabled(&state, &caller, &id, true).await?;
    Ok(axum::Json(WebhookView::of(&ep)).into_response())
}

/// Enable or disable an endpoint the caller may change, audited (the JSON endpoint enables;
/// the dashboard does both).
pub(crate) async fn set_enabled(
    state: &AppState,
    caller: &Caller,
    id: &str,
    enabled: bool,
) -> Result<jobmill_webhooks::records::Endpoint, ApiError> {
    let what = if enabled {
        AuditAction::WebhookEnable
    } else {
        AuditAction::WebhookDisable
    };
    let reason = format!("disabled by {} in the dashboard", caller.tenant);
    let ep = audited(
        state,
        caller,
        what,
        id,
        None,
        async {
            state
                .webhooks
                .store()
                .set_enabled(
                    id,
                    caller.write_scope(),
                    enabled,
                    (!enabled).then_some(reason.as_str()),
                )
                .await?
                .ok_or_else(not_found)
        },
        |_| serde_json::json!({ "enabled": enabled }),
    )
    .await?;
    state.webhooks.endpoints_changed(&ep.tenant).await;
    Ok(ep)
}

/// Rotate an endpoint's secret. The answer carries the new secret; the old one keeps signing
/// (both signatures are sent) for `JOBMILL_WEBHOOK_ROTATION_GRACE`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/secret/rotate", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "endpoint id", pattern = r"^[A-Za-z0-9_]{1,200}$")),
    responses(
        (status = 200, description = "rotated; the new secret", body = WebhookView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such endpoint for this key", body = ErrorBody),
    ))]
pub async fn webhooks_rotate(
    State(state): State<AppState>,
    caller: Caller,
    ResourceId(id): ResourceId,
) -> Result<Response, ApiError> {
    // The audit record names the endpoint only: secrets never enter it.
    let ep = audited(
        &state,
        &caller,
        AuditAction::WebhookSecretRotate,
        &id,
        None,
        async {
            state
                .webhooks
                .store()
                .rotate_endpoint_secret(
                    &id,
                    caller.write_scope(),
                    state.webhooks.settings().rotation_grace,
                )
                .await?
                .ok_or_else(not_found)
        },
        |_| serde_json::json!({ "rotated": true }),
    )
    .await?;
    Ok(axum::Json(WebhookView::with_secret(&ep)).into_response())
}

/// Deliveries to an endpoint, newest first, with every attempt.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "endpoint id", pattern = r"^[A-Za-z0-9_]{1,200}$")),
    responses(
        (status = 200, description = "deliveries", body = DeliveryList),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such endpoint for this key", body = ErrorBody),
    ))]
pub async fn webhooks_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ResourceId(id): ResourceId,
) -> Result<Response, ApiError> {
    let hooks = state.webhooks.store();
    hooks
        .get_endpoint(&id, caller.scope())
        .await?
        .ok_or_else(not_found)?;
    let ds = hooks
        .deliveries_of_endpoint(&id, caller.scope(), MAX_DELIVERIES)
        .await?;
    Ok(axum::Json(DeliveryList {
        deliveries: ds.iter().map(DeliveryView::from).collect(),
    })
    .into_response())
}

/// The signing secret of this key's `callback_url` deliveries (made on first use).
#[utoipa::path(get, path = "/v1/webhooks/secret", tag = "webhooks", security(("bearer" = [])),
    responses(
        (status = 200, description = "the secret", body = SigningSecretView),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
    ))]
pub async fn webhooks_secret_show(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let s = state.webhooks.store().tenant_secret(&caller.tenant).await?;
    Ok(axum::Json(SigningSecretView::from(&s)).into_response())
}

/// Rotate the `callback_url` signing secret. Deliveries carry signatures of both the new and
/// the previous secret for `JOBMILL_WEBHOOK_ROTATION_GRACE`.
#[utoipa::path(post, path = "/v1/webhooks/secret/rotate", tag = "webhooks", security(("bearer" = [])),
    responses(
        (status = 200, description = "the new secret", body = SigningSecretView),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
    ))]
pub async fn webhooks_secret_rotate(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let s = audited(
        &state,
        &caller,
        AuditAction::SigningSecretRotate,
        &caller.tenant,
        None,
        async {
            Ok(state
                .webhooks
                .store()
                .rotate_tenant_secret(&caller.tenant, state.webhooks.settings().rotation_grace)
                .await?)
        },
        |_| serde_json::json!({ "rotated": true }),
    )
    .await?;
    Ok(axum::Json(SigningSecretView::from(&s)).into_response())
}
