//! `/v1/jobs`: submit (one or a batch), show (with ETag and long-poll), list, cancel, retry.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ETAG, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jobmill::store::ListQuery;
use jobmill::{Job, JobState};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{page_params, IfNoneMatch, JobId, Json, Query};
use crate::finished::Cached;
use crate::view::{
    BatchView, DeliveryList, DeliveryView, JobPage, JobView, SubmitBatch, SubmitJob,
};
use crate::watch::mentions;
use crate::AppState;

/// Longest long-poll.
pub const MAX_WAIT_SECS: u64 = 60;
/// How often a long-poll re-reads the job even without an event.
const WAIT_RECHECK: Duration = Duration::from_secs(1);

/// Submit a job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = SubmitJob,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "deduplication key (1-200 printable ASCII characters)",
        min_length = 1, max_length = 200, pattern = r"^[\x20-\x7E]{1,200}$")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "accepted; Location names the job", body = JobView),
        (status = 200, description = "the idempotency key was used before; the original job", body = JobView),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 408, description = "the body did not arrive within JOBMILL_HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 415, description = "the body is not sent as JSON", body = ErrorBody),
        (status = 422, description = "invalid job (unknown kind, bad args, out-of-range numbers)", body = ErrorBody),
        (status = 503, description = "a store is unreachable; nothing was accepted", body = ErrorBody),
    ))]
pub async fn jobs_create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<SubmitJob>,
) -> Result<Response, ApiError> {
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_idempotency_key",
                        "the Idempotency-Key header must be printable ASCII",
                    )
                })?
                .to_string(),
        ),
    };
    let new = body.into_new_job(header_key)?;
    let submitted = state.client.submit(&caller.tenant, new).await?;
    let status = if submitted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(job_response(status, &submitted.job))
}

/// Submit up to 1000 jobs at once: all valid, or none stored.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = SubmitBatch,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "all accepted, in order", body = BatchView),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 408, description = "the body did not arrive within JOBMILL_HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 415, description = "the body is not sent as JSON", body = ErrorBody),
        (status = 422, description = "a job is invalid; none was stored", body = ErrorBody),
        (status = 503, description = "a store is unreachable; nothing was accepted", body = ErrorBody),
    ))]
pub async fn jobs_batch(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<SubmitBatch>,
) -> Result<Response, ApiError> {
    let news = body
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            j.into_new_job(None).map_err(|mut e| {
                e.message = format!("job {i}: {}", e.message);
                e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let submitted = state.client.submit_batch(&caller.tenant, news).await?;
    let view = BatchView {
        jobs: submitted.iter().map(|s| JobView::from(&s.job)).collect(),
    };
    Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
}

/// Query of `GET /v1/jobs/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// Hold the request up to this many seconds (at most 60; `30` or `30s`) until the job
    /// changes (or differs from `If-None-Match`).
    #[param(nullable = false, pattern = r"^0*([0-9]|[1-5][0-9]|60)s?$")]
    pub wait: Option<String>,
}

/// Show a job. Sends an `ETag`; `If-None-Match` with the current tag answers 304.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "job id"), ShowQuery,
           ("If-None-Match" = Option<String>, Header, nullable = false, description = "ETag from an earlier answer")),
    responses(
        (status = 200, description = "the job", body = JobView),
        (status = 304, description = "unchanged since the given ETag"),
        (status = 400, description = "bad id or wait", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such job for this key", body = ErrorBody),
    ))]
pub async fn jobs_show(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
    Query(q): Query<ShowQuery>,
    IfNoneMatch(if_none_match): IfNoneMatch,
) -> Result<Response, ApiError> {
    let wait = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => parse_wait(w)?,
    };
    // The common case: a poll without wait of a finished job, answered from memory.
    if wait.is_zero() {
        if let Some(c) = cached(&state, &caller, &id)? {
            return Ok(cached_response(&c, if_none_match.as_deref()));
        }
    }
    // Subscribe before the first read so a change in between is not missed.
    let mut events = state.watch.subscribe();
    let job = load(&state, &caller, &id).await?;
    let first_tag = etag(&job);
    let unchanged = |tag: &str| match &if_none_match {
        Some(inm) => etag_matches(inm, tag),
        // Without If-None-Match, waiting means "until it differs from what it is now".
        None => tag == first_tag,
    };
    if wait.is_zero()
        || (if_none_match.is_none() && job.state.is_terminal())
        || !unchanged(&first_tag)
    {
        return Ok(conditional(&job, if_none_match.as_deref()));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut current = job;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ids) if !mentions(&ids, &id) => continue,
                // A lagged receiver may have missed our id: re-read to be sure.
                _ => {}
            },
            _ = tokio::time::sleep(WAIT_RECHECK) => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(conditional(&current, if_none_match.as_deref()));
            }
        }
        current = load(&state, &caller, &id).await?;
        if !unchanged(&etag(&current)) {
            return Ok(job_response(StatusCode::OK, &current));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(conditional(&current, if_none_match.as_deref()));
        }
    }
}

/// A job the caller may see (finished ones from the in-memory cache), else `404`.
pub(crate) async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    if let Some(c) = cached(state, caller, id)? {
        return Ok(c.job.clone());
    }
    let job = state
        .client
        .store()
        .get(id, caller.scope())
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    if job.state.is_terminal() {
        let body = serde_json::to_vec(&JobView::from(&job)).map_err(|_| ApiError::internal())?;
        if let (Ok(etag), Ok(location)) = (
            HeaderValue::from_str(&etag(&job)),
            HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)),
        ) {
            state.finished.put(Cached {
                job: job.clone(),
                body: body.into(),
                etag,
                location,
            });
        }
    }
    Ok(job)
}

/// The cached answer for a finished job the caller may see.
fn cached(state: &AppState, caller: &Caller, id: &str) -> Result<Option<Arc<Cached>>, ApiError> {
    match state.finished.get(id) {
        Some(c) if caller.scope().is_some_and(|t| t != c.job.tenant) => {
            Err(ApiError::job_not_found())
        }
        other => Ok(other),
    }
}

/// Answer a poll from the cache: `304` if the tag matches, else the rendered job.
fn cached_response(c: &Cached, if_none_match: Option<&str>) -> Response {
    let tag = c.etag.to_str().unwrap_or("");
    let mut res = if if_none_match.is_some_and(|inm| etag_matches(inm, tag)) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut res = (StatusCode::OK, c.body.clone()).into_response();
        res.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res.headers_mut().insert(LOCATION, c.location.clone());
        res
    };
    res.headers_mut().insert(ETAG, c.etag.clone());
    res
}

fn parse_wait(w: &str) -> Result<Duration, ApiError> {
    let n = w.strip_suffix('s').unwrap_or(w);
    // Digits only: `u64::from_str` would also take a sign, which the documented pattern does not.
    let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    match n.parse::<u64>() {
        Ok(s) if digits && s <= MAX_WAIT_SECS => Ok(Duration::from_secs(s)),
        _ => Err(ApiError::bad_request(
            "invalid_wait",
            format!("wait must be a whole number of seconds from 0 to {MAX_WAIT_SECS}"),
        )),
    }
}

/// The job's ETag: changes whenever anything visible about the job changes.
fn etag(job: &Job) -> String {
    format!("\"{}-{}\"", &job.id[job.id.len() - 8..], job.rev)
}

fn etag_matches(if_none_match: &str, tag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == tag)
}

fn conditional(job: &Job, if_none_match: Option<&str>) -> Response {
    let tag = etag(job);
    if if_none_match.is_some_and(|inm| etag_matches(inm, &tag)) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&tag) {
            res.headers_mut().insert(ETAG, v);
        }
        return res;
    }
    job_response(StatusCode::OK, job)
}

/// A job answer with its `ETag` and `Location`.
pub(crate) fn job_response(status: StatusCode, job: &Job) -> Response {
    let mut res = (status, axum::Json(JobView::from(job))).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag(job)) {
        res.headers_mut().insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only jobs in this state.
    #[param(value_type = Option<crate::view::StateFilter>, nullable = false, inline)]
    pub state: Option<String>,
    /// Only jobs of this kind.
    #[param(nullable = false, max_length = 128)]
    pub kind: Option<String>,
    /// Only jobs of this queue.
    #[param(nullable = false, max_length = 128)]
    pub queue: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(nullable = false, minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>, nullable = false)]
    pub cursor: Option<String>,
    /// Only jobs of this owner (the submitting key's name; viewers and operators only).
    #[param(nullable = false, max_length = 128)]
    pub owner: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>, nullable = false)]
    pub created_after: Option<String>,
    /// Only jobs created before this time (RFC 3339).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>, nullable = false)]
    pub created_before: Option<String>,
}

/// List jobs, newest first (operators see every tenant's).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])), params(ListParams),
    responses(
        (status = 200, description = "a page of jobs", body = JobPage),
        (status = 400, description = "bad filter, limit or cursor", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "`owner` sent by a submitter key", body = ErrorBody),
    ))]
pub async fn jobs_index(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    let (jobs, next_cursor) = list_page(&state, &caller, p).await?;
    Ok(axum::Json(JobPage {
        jobs: jobs.iter().map(JobView::from).collect(),
        next_cursor,
    })
    .into_response())
}

/// A page of the listing the caller may see, and the cursor of the next one (the JSON
/// listing and the dashboard's).
pub(crate) async fn list_page(
    state: &AppState,
    caller: &Caller,
    p: ListParams,
) -> Result<(Vec<Job>, Option<String>), ApiError> {
    let job_state = match p.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_state",
                format!(
                    "state must be one of {}",
                    JobState::ALL.map(JobState::as_str).join(", ")
                ),
            )
        })?),
    };
    let (limit, before) = page_params(p.limit, p.cursor.as_deref())?;
    for (name, v) in [("kind", &p.kind), ("queue", &p.queue), ("owner", &p.owner)] {
        if v.as_ref().is_some_and(|v| v.chars().count() > 128) {
            return Err(ApiError::bad_request(
                "invalid_filter",
                format!("{name} is too long"),
            ));
        }
    }
    let tenant = match (caller.scope(), p.owner) {
        (Some(_), Some(_)) => {
            return Err(crate::auth::forbidden(
                "the owner filter needs a viewer or operator key",
            ))
        }
        (Some(own), None) => Some(own.to_string()),
        (None, owner) => owner,
    };
    let jobs = state
        .client
        .store()
        .list(&ListQuery {
            tenant,
            created_after: time_filter("created_after", p.created_after.as_deref())?,
            created_before: time_filter("created_before", p.created_before.as_deref())?,
            state: job_state,
            kind: p.kind,
            queue: p.queue,
            before,
            limit,
        })
        .await?;
    let next_cursor = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|j| j.id.clone()))
        .flatten();
    Ok((jobs, next_cursor))
}

/// An RFC 3339 time filter, as ms since the epoch.
fn time_filter(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|v| {
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.timestamp_millis())
            .map_err(|_| {
                ApiError::bad_request(
                    "invalid_filter",
                    format!("{name} must be an RFC 3339 time like 2026-01-31T12:00:00Z"),
                )
            })
    })
    .transpose()
}

/// Cancel a job. A waiting job is cancelled at once (200); a running job's handler is asked to
/// stop and the job ends `cancelled` shortly (202).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "cancelled", body = JobView),
        (status = 202, description = "running; its handler was asked to stop", body = JobView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such job for this key", body = ErrorBody),
        (status = 409, description = "the job already finished", body = ErrorBody),
    ))]
pub async fn jobs_cancel(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    let job = cancel_job(&state, &caller, &id).await?;
    let status = if job.state == JobState::Cancelled {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(job_response(status, &job))
}

/// Queue a `failed` or `cancelled` job again with a fresh attempt budget.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
        (status = 202, description = "queued again", body = JobView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such job for this key", body = ErrorBody),
        (status = 409, description = "the job is not failed or cancelled", body = ErrorBody),
    ))]
pub async fn jobs_retry(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    let job = retry_job(&state, &caller, &id).await?;
    Ok(job_response(StatusCode::ACCEPTED, &job))
}

/// Cancel a job the caller may change (the JSON endpoint and the dashboard's button).
pub(crate) async fn cancel_job(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Job, ApiError> {
    let job = state.client.cancel(id, caller.write_scope()).await?;
    state.finished.forget(id);
    Ok(job)
}

/// Retry a job the caller may change (the JSON endpoint and the dashboard's button).
pub(crate) async fn retry_job(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Job, ApiError> {
    let job = state.client.retry(id, caller.write_scope()).await?;
    // This process must not answer the next poll from its cache; other API processes drop their
    // entry when the change event arrives.
    state.finished.forget(id);
    Ok(job)
}

/// The webhook deliveries of a job's events, newest first, with every attempt.
#[utoipa::path(get, path = "/v1/jobs/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "deliveries", body = DeliveryList),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such job for this key", body = ErrorBody),
    ))]
pub async fn jobs_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    load(&state, &caller, &id).await?;
    let ds = state
        .webhooks
        .store()
        .deliveries_of_job(&id, caller.scope(), crate::routes::webhooks::MAX_DELIVERIES)
        .await?;
    Ok(axum::Json(DeliveryList {
        deliveries: ds.iter().map(DeliveryView::from).collect(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_lists_and_weak_tags() {
        assert!(etag_matches("\"a-1\"", "\"a-1\""));
        assert!(etag_matches("\"x\", W/\"a-1\"", "\"a-1\""));
        assert!(etag_matches("*", "\"a-1\""));
        assert!(!etag_matches("\"a-2\"", "\"a-1\""));
    }

    #[test]
    fn wait_is_bounded() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("0").unwrap(), Duration::ZERO);
        assert!(parse_wait("61").is_err());
        assert!(parse_wait("-1").is_err());
        assert!(parse_wait("soon").is_err());
        assert!(parse_wait("+5").is_err());
        assert!(parse_wait("s").is_err());
        assert_eq!(parse_wait("060s").unwrap(), Duration::from_secs(60));
    }
}
