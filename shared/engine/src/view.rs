//! How a job looks from outside: the shape `GET /v1/jobs/{id}` answers and event subscribers
//! carry as their `data`. One conversion, shared by the API and every subscriber, so a
//! receiver sees exactly what a poller sees.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::job::Job;
use crate::state::JobState;

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
    /// The shard key it was submitted with (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<String>,
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
    /// Fields of features, shown at the top level next to the engine's.
    #[serde(flatten)]
    #[schema(ignore)]
    pub ext: serde_json::Map<String, Value>,
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

/// A time in ms since the epoch as RFC 3339 with milliseconds.
pub fn ts(ms: i64) -> String {
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
            shard_key: j.shard_key.clone(),
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
            ext: j.ext.clone(),
            owner: j.tenant.clone(),
            created_at: ts(j.created_ms),
            run_at: ts(j.run_at_ms),
            started_at: j.started_ms.map(ts),
            finished_at: j.finished_ms.map(ts),
        }
    }
}
