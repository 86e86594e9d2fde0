//! `/v1/jobs/actions/{retry,cancel,discard}`: bulk actions on the jobs matching a filter. A dry
//! run answers the count (an estimate, `exact: false`, when counting ran out of time); otherwise
//! the action is audited and handed to the internal `jobs_bulk_action` job (`202` with it),
//! which works in batches and can be cancelled like any job.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobmill::{JobState, NewJob};
use jobmill_ops::audit::AuditAction;
use jobmill_ops::bulk::{self, BulkArgs, BulkCount, BulkFilter, BulkVerb, MAX_IDS};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{parse_job_id, Json};
use crate::routes::audit::audited;
use crate::routes::jobs::job_response;
use crate::AppState;

/// A field that may be left out but, when sent, must be a string: the document says these
/// fields are not nullable, so an explicit `null` is refused like any other wrong type.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Some)
}

/// Like [`present`], for the list of ids.
fn present_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    <Vec<String> as serde::Deserialize>::deserialize(d).map(Some)
}

/// The body of a bulk action.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// Only this state (one the action applies to).
    #[schema(value_type = Option<crate::view::StateFilter>, nullable = false)]
    #[serde(default, deserialize_with = "present")]
    pub state: Option<String>,
    /// Only this kind.
    #[schema(nullable = false, min_length = 1, max_length = 256)]
    #[serde(default, deserialize_with = "present")]
    pub kind: Option<String>,
    /// Only this queue.
    #[schema(nullable = false, min_length = 1, max_length = 256)]
    #[serde(default, deserialize_with = "present")]
    pub queue: Option<String>,
    /// Only this owner.
    #[schema(nullable = false, min_length = 1, max_length = 256)]
    #[serde(default, deserialize_with = "present")]
    pub owner: Option<String>,
    /// Created at or after (RFC 3339).
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>, nullable = false)]
    #[serde(default, deserialize_with = "present")]
    pub created_after: Option<String>,
    /// Created before (RFC 3339).
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>, nullable = false)]
    #[serde(default, deserialize_with = "present")]
    pub created_before: Option<String>,
    /// A substring of the last error.
    #[schema(nullable = false, min_length = 1, max_length = 256)]
    #[serde(default, deserialize_with = "present")]
    pub error_contains: Option<String>,
    /// Only these ids (at most 1,000).
    #[schema(value_type = Option<Vec<uuid::Uuid>>, nullable = false, max_items = 1000)]
    #[serde(default, deserialize_with = "present_list")]
    pub ids: Option<Vec<String>>,
    /// Only count the matching jobs.
    #[serde(default)]
    pub dry_run: bool,
}

fn time(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|v| {
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.timestamp_millis())
            .map_err(|_| {
                ApiError::bad_request("invalid_filter", format!("{name} must be RFC 3339"))
            })
    })
    .transpose()
}

fn filter(r: &BulkRequest) -> Result<BulkFilter, ApiError> {
    if let Some(s) = &r.state {
        // A state the action never applies to (e.g. retrying `running` jobs) simply matches
        // nothing.
        JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_filter", format!("'{s}' is not a job state"))
        })?;
    }
    if let Some(ids) = &r.ids {
        if ids.len() > MAX_IDS {
            return Err(ApiError::bad_request(
                "invalid_filter",
                format!("at most {MAX_IDS} ids"),
            ));
        }
        for id in ids {
            parse_job_id(id)?;
        }
    }
    for (name, v) in [
        ("kind", &r.kind),
        ("queue", &r.queue),
        ("owner", &r.owner),
        ("error_contains", &r.error_contains),
    ] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 256) {
            return Err(ApiError::bad_request(
                "invalid_filter",
                format!("{name} must be 1-256 characters"),
            ));
        }
    }
    Ok(BulkFilter {
        state: r.state.clone(),
        kind: r.kind.clone(),
        queue: r.queue.clone(),
        owner: r.owner.clone(),
        created_after_ms: time("created_after", r.created_after.as_deref())?,
        created_before_ms: time("created_before", r.created_before.as_deref())?,
        error_contains: r.error_contains.clone(),
        ids: r.ids.clone(),
    })
}

/// What a bulk request did.
pub(crate) enum Bulk {
    /// A dry run: the count.
    Counted(BulkCount),
    /// The bulk action's job, submitted.
    Started(Box<jobmill::Job>),
}

async fn act(
    state: AppState,
    caller: Caller,
    verb: BulkVerb,
    r: BulkRequest,
) -> Result<Response, ApiError> {
    match bulk_action(&state, &caller, verb, &r).await? {
        Bulk::Counted(c) => Ok(axum::Json(c).into_response()),
        Bulk::Started(job) => Ok(job_response(StatusCode::ACCEPTED, &job)),
    }
}

/// Count or start a bulk action (the JSON endpoints and the dashboard's confirmation step).
pub(crate) async fn bulk_action(
    state: &AppState,
    caller: &Caller,
    verb: BulkVerb,
    r: &BulkRequest,
) -> Result<Bulk, ApiError> {
    caller.require_operator()?;
    let f = filter(r)?;
    if r.dry_run {
        return Ok(Bulk::Counted(
            bulk::count(state.client.store(), verb, &f).await?,
        ));
    }
    let what = match verb {
        BulkVerb::Retry => AuditAction::BulkRetry,
        BulkVerb::Cancel => AuditAction::BulkCancel,
        BulkVerb::Discard => AuditAction::BulkDiscard,
    };
    let args = serde_json::to_value(BulkArgs {
        action: verb,
        filter: f.clone(),
        as_of_ms: Some(jobmill::job::now_ms()),
    })
    .map_err(|_| ApiError::internal())?;
    let filter_json = serde_json::to_value(&f).map_err(|_| ApiError::internal())?;
    let client = state.client.clone();
    let submitted = audited(
        state,
        caller,
        what,
        "jobs",
        Some(filter_json),
        async {
            let mut out = client
                .submit_internal(
                    &caller.tenant,
                    vec![NewJob {
                        kind: bulk::BulkAction::NAME_STR.to_string(),
                        args,
                        ..NewJob::default()
                    }],
                )
                .await?;
            out.pop().ok_or_else(ApiError::internal)
        },
        |s| serde_json::json!({ "job": &s.job.id }),
    )
    .await?;
    Ok(Bulk::Started(Box::new(submitted.job)))
}

macro_rules! bulk_handler {
    ($name:ident, $verb:expr, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "operators", security(("bearer" = [])),
            request_body = BulkRequest,
            responses(
                (status = 200, description = "dry run: the count", body = BulkCount),
                (status = 202, description = "the bulk action's job", body = jobmill::view::JobView),
                (status = 400, description = "invalid_filter, invalid_id", body = ErrorBody),
                (status = 401, description = "missing or unknown API key", body = ErrorBody),
                (status = 403, description = "not an operator key", body = ErrorBody),
                (status = 413, description = "body too large", body = ErrorBody),
                (status = 415, description = "not application/json", body = ErrorBody),
                (status = 422, description = "invalid_body", body = ErrorBody),
            ))]
        pub async fn $name(
            State(state): State<AppState>,
            caller: Caller,
            Json(r): Json<BulkRequest>,
        ) -> Result<Response, ApiError> {
            act(state, caller, $verb, r).await
        }
    };
}

bulk_handler!(
    jobs_actions_retry,
    BulkVerb::Retry,
    "/v1/jobs/actions/retry",
    "Retry every `failed` or `cancelled` job matching the filter."
);
bulk_handler!(
    jobs_actions_cancel,
    BulkVerb::Cancel,
    "/v1/jobs/actions/cancel",
    "Cancel every live job matching the filter (running ones cooperatively)."
);
bulk_handler!(
    jobs_actions_discard,
    BulkVerb::Discard,
    "/v1/jobs/actions/discard",
    "Delete every finished job matching the filter (never a live one)."
);
