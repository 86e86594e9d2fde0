//! The JSON shapes of the jobs API (requests and answers), with their OpenAPI schemas.

use chrono::{DateTime, Utc};
pub use jobmill::view::{AttemptErrorView, JobView, ProgressView};
use jobmill::NewJob;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Raw bytes (documentation only: part uploads and downloads are streamed).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(#[allow(dead_code)] Vec<u8>);

/// A job submission.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "noop", "args": {"n": 1}, "priority": 5}))]
pub struct SubmitJob {
    /// Job kind, e.g. `noop`, `sleep`, `fail` (a registered kind, at most 128 characters).
    #[schema(min_length = 1, max_length = 128)]
    pub kind: String,
    /// Arguments for the kind (default `{}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    /// Queue (default `default`): 1-64 letters, digits, `_` or `-`.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub queue: Option<String>,
    /// 0-9, higher runs first (default 0).
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i32>,
    /// RFC 3339 time before which the job does not run (at most a year ahead; not with
    /// `delay_ms`).
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Milliseconds from now before which the job does not run (at most a year).
    #[schema(minimum = 0, maximum = 31_622_400_000_u64)]
    pub delay_ms: Option<u64>,
    /// Attempts before the job fails for good (1-100).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in ms (at most 7 days).
    #[schema(minimum = 1, maximum = 604_800_000_u64)]
    pub timeout_ms: Option<u64>,
    /// Deduplication key, unique per tenant (also accepted as an `Idempotency-Key` header):
    /// 1-200 bytes without control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub idempotency_key: Option<String>,
    /// Pins the job to one shard of a sharded queue (`JOBMILL_QUEUE_SHARDS`): jobs with the
    /// same key share a shard, so their priorities are exact among themselves (default: placed
    /// by the job's id). 1-200 bytes without control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub shard_key: Option<String>,
    /// `https://` (or allow-listed `http://`) URL that receives a signed POST when the job
    /// ends (`job.succeeded`, `job.failed`, `job.cancelled`).
    #[schema(format = "uri")]
    pub callback_url: Option<String>,
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
            shard_key: self.shard_key,
            ext: self
                .callback_url
                .map(|url| {
                    (
                        jobmill_webhooks::CALLBACK_URL.to_string(),
                        Value::String(url),
                    )
                })
                .into_iter()
                .collect(),
        })
    }
}

/// Several jobs at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"jobs": [{"kind": "noop"}, {"kind": "sleep", "args": {"ms": 10}}]}))]
pub struct SubmitBatch {
    /// Up to 1000 jobs; all are valid or none is stored.
    #[schema(min_items = 1, max_items = 1000)]
    pub jobs: Vec<SubmitJob>,
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

/// Register a webhook endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://` (or allow-listed `http://`) URL receiving the events.
    #[schema(format = "uri")]
    pub url: String,
    /// Event types: `job.succeeded`, `job.failed`, `job.cancelled` (the default: these three)
    /// and `job.progress` (opt-in; at most one per job per `JOBMILL_WEBHOOK_PROGRESS_EVERY`).
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub events: Option<Vec<String>>,
}

/// An event type (documentation of `events`).
#[derive(ToSchema)]
pub enum EventType {
    /// The job succeeded.
    #[schema(rename = "job.succeeded")]
    Succeeded,
    /// The job failed.
    #[schema(rename = "job.failed")]
    Failed,
    /// The job was cancelled.
    #[schema(rename = "job.cancelled")]
    Cancelled,
    /// The job reported progress (opt-in).
    #[schema(rename = "job.progress")]
    Progress,
}

/// A job state, as the `state` filter of `GET /v1/jobs` takes it.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum StateFilter {
    /// Waiting to run.
    Queued,
    /// Waiting for its time.
    Scheduled,
    /// Running.
    Running,
    /// Waiting for its next attempt.
    Retrying,
    /// Ended well.
    Succeeded,
    /// Ended badly.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// A webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// `we_...`.
    pub id: String,
    /// Where events go.
    pub url: String,
    /// Subscribed event types.
    pub events: Vec<String>,
    /// False after a `410 Gone`, after failing for `JOBMILL_WEBHOOK_DISABLE_AFTER`, or by hand.
    pub enabled: bool,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
    /// Start of the current run of failed attempts, if any.
    pub failing_since: Option<String>,
    /// Created at.
    pub created_at: String,
    /// The signing secret: only in the answers of create and secret rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// During a rotation: until when the previous secret still signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<String>,
}

impl WebhookView {
    /// The public view (no secret).
    pub fn of(ep: &jobmill_webhooks::records::Endpoint) -> Self {
        WebhookView {
            id: ep.id.clone(),
            url: ep.url.clone(),
            events: ep.events.iter().map(|e| e.as_str().to_string()).collect(),
            enabled: ep.enabled == 1,
            disabled_reason: ep.disabled_reason.clone(),
            failing_since: (ep.failing_since_ms != 0)
                .then(|| jobmill::view::ts(ep.failing_since_ms)),
            created_at: jobmill::view::ts(ep.created_ms),
            secret: None,
            previous_secret_valid_until: None,
        }
    }

    /// The view with the secret, for the one answer that hands it out.
    pub fn with_secret(ep: &jobmill_webhooks::records::Endpoint) -> Self {
        WebhookView {
            secret: Some(ep.secret.clone()),
            previous_secret_valid_until: ep
                .previous_secret
                .as_ref()
                .filter(|p| p.expires_ms > jobmill::job::now_ms())
                .map(|p| jobmill::view::ts(p.expires_ms)),
            ..WebhookView::of(ep)
        }
    }
}

/// Endpoints, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// The endpoints (without secrets).
    pub webhooks: Vec<WebhookView>,
}

/// The tenant's signing secret for `callback_url` deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct SigningSecretView {
    /// `whsec_...`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
    /// Made at.
    pub created_at: String,
    /// During a rotation: until when the previous secret also signs (both signatures are sent).
    pub previous_secret_valid_until: Option<String>,
}

impl From<&jobmill_webhooks::records::TenantSecret> for SigningSecretView {
    fn from(s: &jobmill_webhooks::records::TenantSecret) -> Self {
        SigningSecretView {
            secret: s.secret.clone(),
            created_at: jobmill::view::ts(s.created_ms),
            previous_secret_valid_until: s
                .previous
                .as_ref()
                .filter(|p| p.expires_ms > jobmill::job::now_ms())
                .map(|p| jobmill::view::ts(p.expires_ms)),
        }
    }
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryAttemptView {
    /// Attempt number (replays continue the count).
    pub attempt: i32,
    /// Sent at.
    pub at: String,
    /// HTTP status, if the receiver answered.
    pub status: Option<i32>,
    /// Time to the answer or error, ms.
    pub latency_ms: i64,
    /// Connection error, timeout or refusal.
    pub error: Option<String>,
    /// First bytes (up to 1 KiB) of the response body.
    pub response: Option<String>,
}

/// A delivery: one event to one target, with every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `dlv_...`.
    pub id: String,
    /// The job.
    pub job_id: String,
    /// The endpoint, or null for the job's `callback_url`.
    pub endpoint_id: Option<String>,
    /// Target URL.
    pub url: String,
    /// Event type.
    pub event: String,
    /// The `webhook-id` header: the same on every attempt and replay.
    pub webhook_id: String,
    /// `pending`, `delivered`, `failed` or `gone`.
    pub status: String,
    /// Created at.
    pub created_at: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<DeliveryAttemptView>,
}

impl From<&jobmill_webhooks::records::Delivery> for DeliveryView {
    fn from(d: &jobmill_webhooks::records::Delivery) -> Self {
        DeliveryView {
            id: d.id.clone(),
            job_id: d.job_id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            url: d.url.clone(),
            event: d.event.as_str().to_string(),
            webhook_id: d.event_id.clone(),
            status: d.status.as_str().to_string(),
            created_at: jobmill::view::ts(d.created_ms),
            attempts: d
                .attempts_in_order()
                .into_iter()
                .map(|a| DeliveryAttemptView {
                    attempt: a.attempt,
                    at: jobmill::view::ts(a.at_ms),
                    status: a.status,
                    latency_ms: a.latency_ms,
                    error: a.error.clone(),
                    response: a.response.clone(),
                })
                .collect(),
        }
    }
}

/// Deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// The deliveries.
    pub deliveries: Vec<DeliveryView>,
}
