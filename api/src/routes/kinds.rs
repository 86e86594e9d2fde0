//! `/v1/kinds`: the kinds catalog, as submitters and dashboards see it.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// Defaults a kind applies when a submission does not say.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindDefaultsView {
    /// Queue its jobs go to.
    pub queue: String,
    /// Attempts before failing for good.
    pub max_attempts: u32,
    /// Per-attempt timeout in ms.
    pub timeout_ms: u64,
}

/// One public kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindView {
    /// The name to submit as `kind`.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its `args`; submissions are checked against it.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Its defaults.
    pub defaults: KindDefaultsView,
    /// Live workers serving it now.
    pub workers: u64,
}

/// The public kinds.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindList {
    /// Sorted by name.
    pub kinds: Vec<KindView>,
}

/// The public job kinds, their args' JSON Schema, defaults and live workers.
#[utoipa::path(get, path = "/v1/kinds", tag = "kinds", security(("bearer" = [])),
    responses(
        (status = 200, description = "the catalog", body = KindList),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
    ))]
pub async fn kinds_index(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    let kinds = kind_list(&state).await?;
    Ok(axum::Json(KindList { kinds }).into_response())
}

/// The public kinds with their live workers (the JSON endpoint and the dashboard's page).
pub(crate) async fn kind_list(state: &AppState) -> Result<Vec<KindView>, ApiError> {
    let serving = crate::catalog::live_workers_by_kind(state.client.queue()).await?;
    let kinds = state
        .client
        .catalog()
        .public()
        .iter()
        .map(|k| KindView {
            name: k.name.clone(),
            description: k.description.clone(),
            schema: k.schema.clone(),
            defaults: KindDefaultsView {
                queue: k.defaults.queue.clone(),
                max_attempts: k.defaults.max_attempts,
                timeout_ms: k.defaults.timeout_ms,
            },
            workers: serving.get(&k.name).copied().unwrap_or(0),
        })
        .collect();
    Ok(kinds)
}
