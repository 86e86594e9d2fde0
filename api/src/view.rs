//! The JSON shapes of the jobs API (requests and answers), with their OpenAPI schemas.

use chrono::{DateTime, SecondsFormat, Utc};
use jobmill::{Job, JobState, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;

/// A job submission.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// Job kind, e.g. `noop`, `sleep`, `fail`.
    pub kind: String,
    /// Arguments for the kind (default `{}`).
    #[serde(default)]
    pub args: Option<Value>,
    /// Queue (default `default`).
    pub queue: Option<String>,
    /// 0-9, higher runs first (default 0).
    pub priority: Option<i32>,
    /// RFC 3339 time before which the job does not run.
    pub run_at: Option<String>,
    /// Milliseconds from now before which the job does not run.
    pub delay_ms: Option<u64>,
    /// Attempts before the job fails for good (1-100).
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in ms.
    pub timeout_ms: Option<u64>,
    /// Deduplication key, unique per tenant (also accepted as an `Idempotency-Key` header).
    pub idempotency_key: Option<String>,
}

impl SubmitJob {
    /// Convert to the library's submission, checking what only the API sees.
    pub fn into_new_job(self, header_key: Option<String>) -> Result<NewJob, ApiError> {
        let idempotency_key = match (self.idempotency_key, header_key) {
            (Some(b), Some(h)) if b != h => {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "conflicting_idempotency_key",
                    "the Idempotency-Key header and the idempotency_key field differ",
                ))
            }
            (b, h) => b.or(h),
        };
        let run_at = match self.run_at {
            None => None,
            Some(s) => Some(
                DateTime::parse_from_rfc3339(&s)
                    .map_err(|e| {
                        ApiError::new(
                            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                            "invalid_run_at",
                            format!(
                                "run_at must be an RFC 3339 time like 2026-01-02T03:04:05Z: {e}"
                            ),
                        )
                    })?
                    .with_timezone(&Utc),
            ),
        };
        if self.kind.len() > 128 {
            return Err(ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_kind",
                "kind names are at most 128 characters",
            ));
        }
        Ok(NewJob {
            kind: self.kind,
            args: self
                .args
                .unwrap_or_else(|| Value::Object(Default::default())),
            queue: self.queue,
            priority: self.priority,
            run_at,
            delay_ms: self.delay_ms,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            idempotency_key,
        })
    }
}

/// Several jobs at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// Up to 1000 jobs; all are valid or none is stored.
    pub jobs: Vec<SubmitJob>,
}

/// Progress of a running job.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressView {
    /// Units done.
    pub done: i64,
    /// Units in all, if known.
    pub total: Option<i64>,
    /// Free text.
    pub message: Option<String>,
}

/// One failed attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptErrorView {
    /// Attempt number.
    pub attempt: i32,
    /// When it failed (RFC 3339).
    pub at: String,
    /// What went wrong.
    pub message: String,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Job id (UUIDv7).
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Priority 0-9.
    pub priority: i32,
    /// `queued`, `scheduled`, `running`, `retrying`, `succeeded`, `failed` or `cancelled`.
    #[schema(value_type = String)]
    pub state: JobState,
    /// Attempts started so far.
    pub attempt: i32,
    /// Attempt after which a failure is final.
    pub max_attempts: i32,
    /// Per-attempt timeout in ms.
    pub timeout_ms: i64,
    /// Arguments as submitted.
    pub args: Value,
    /// Latest progress, or null.
    pub progress: Option<ProgressView>,
    /// Result, null until succeeded.
    pub result: Option<Value>,
    /// One entry per failed attempt.
    pub errors: Vec<AttemptErrorView>,
    /// A cancel was requested while the job ran.
    pub cancel_requested: bool,
    /// Idempotency key, if given.
    pub idempotency_key: Option<String>,
    /// The API key name that submitted the job.
    pub owner: String,
    /// Accepted at (RFC 3339).
    pub created_at: String,
    /// Runs no earlier than (RFC 3339).
    pub run_at: String,
    /// Latest attempt started at.
    pub started_at: Option<String>,
    /// Reached its terminal state at.
    pub finished_at: Option<String>,
}

fn ts(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        JobView {
            id: j.id.clone(),
            kind: j.kind.clone(),
            queue: j.queue.clone(),
            priority: j.priority,
            state: j.state,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            timeout_ms: j.timeout_ms,
            args: serde_json::from_str(&j.args_json).unwrap_or(Value::Null),
            progress: j.progress.as_ref().map(|p| ProgressView {
                done: p.done,
                total: p.total,
                message: p.message.clone(),
            }),
            result: j
                .result_json
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok()),
            errors: j
                .errors_in_order()
                .into_iter()
                .map(|e| AttemptErrorView {
                    attempt: e.attempt,
                    at: ts(e.at_ms),
                    message: e.message.clone(),
                })
                .collect(),
            cancel_requested: j.cancel_requested,
            idempotency_key: j.idempotency_key.clone(),
            owner: j.tenant.clone(),
            created_at: ts(j.created_ms),
            run_at: ts(j.run_at_ms),
            started_at: j.started_ms.map(ts),
            finished_at: j.finished_ms.map(ts),
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Jobs of a batch, in submission order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    /// The jobs.
    pub jobs: Vec<JobView>,
}
