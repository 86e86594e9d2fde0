//! The job record as MongoDB stores it, the payload Redis carries, and their small parts.

use std::collections::BTreeMap;

use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};

use crate::outbox::JobEvent;
use crate::state::JobState;

/// Lowest priority.
pub const MIN_PRIORITY: i32 = 0;
/// Highest priority (runs first).
pub const MAX_PRIORITY: i32 = 9;

/// One job as stored in the `jobs` collection, the system of record.
///
/// `args` and `result` are kept as JSON text, not BSON: they are opaque to the store, the text
/// round-trips every JSON value exactly (BSON has no u64, and `$`/`.` keys are awkward), and the
/// MongoDB-compatible server indexes nothing inside them anyway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// UUIDv7 as a string: unique and ordered by creation time.
    #[serde(rename = "_id")]
    pub id: String,
    /// Copy of the id used as the sort key of the listing indexes (`newest first`). The
    /// MongoDB-compatible server cannot put `_id` into a compound index, so the ordered
    /// id lives in a field of its own.
    pub list_key: String,
    /// Name of the API key that submitted the job.
    pub tenant: String,
    /// Job kind name.
    pub kind: String,
    /// Queue it runs on.
    pub queue: String,
    /// Places the job on a shard of a sharded queue instead of its id: jobs with the same key
    /// share one shard (see [`crate::shards`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<String>,
    /// 0..=9, higher first.
    pub priority: i32,
    /// Arguments as JSON text.
    pub args_json: String,
    /// Current state.
    pub state: JobState,
    /// Number of attempts started so far (monotonic over the job's whole life, which is what
    /// makes it usable as a guard against stale writers).
    pub attempt: i32,
    /// The attempt number after which a failure is final.
    pub max_attempts: i32,
    /// The attempt budget the job was submitted with; a manual retry grants it again.
    pub attempt_budget: i32,
    /// Per-attempt timeout.
    pub timeout_ms: i64,
    /// Caller-supplied deduplication key, unique per tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request that used the key ([`crate::client::request_hash`]): the same key
    /// with a different request is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_hash: Option<String>,
    /// Fields owned by features, stored and shown as they are (for example a URL a feature
    /// calls when the job ends). The engine never reads them; a feature's
    /// [`SubmitHook`](crate::client::SubmitHook) checks them at submission.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub ext: serde_json::Map<String, serde_json::Value>,
    /// Whether a subscriber of the job-event outbox was known, at submit, to want this job's
    /// events (a feature's submit hook decided so). The worker that ends the job also asks the
    /// subscribers ([`Subscribers::wants`](crate::outbox::Subscribers::wants)), so one that
    /// starts caring later still hears of it. Either decides that the terminal write records an
    /// outbox entry.
    #[serde(default, alias = "notify", deserialize_with = "lenient_bool")]
    pub wants_events: bool,
    /// What the queue's per-key limits count this job against (`customer:42`,
    /// `api.stripe.com`): jobs of one key share `key_concurrency` and `key_rate`, and keys
    /// take turns at claims. See [`crate::limits`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_key: Option<String>,
    /// The job-event outbox: written by the same update that moves the job to a terminal state,
    /// so the intent to tell subscribers can never be lost between "job finished" and "event
    /// handled". The worker's outbox loop hands it to the subscribers, then clears `pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<Outbox>,
    /// Latest progress report of the running attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Result as JSON text, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_json: Option<String>,
    /// Failed attempts, keyed by attempt number. A map and not an array because writing
    /// `errors.<n>` is idempotent (a retried batch cannot record an error twice) and the
    /// MongoDB-compatible server stores `$push`ed documents as strings.
    #[serde(default)]
    pub errors: BTreeMap<String, AttemptError>,
    /// A user asked to cancel while the job was running.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub cancel_requested: bool,
    // Times are integer milliseconds since the epoch. The MongoDB-compatible server turns a
    // date written by a top-level `$set` into a string; integers survive every server.
    // Empty optional fields are left out of the inserted document rather than stored as null:
    // no filter tells the two apart (none matches them with `$ne` or `null`), and every field
    // the store encodes and indexes per insert costs it time (issue 16's W1).
    /// When the job was accepted.
    pub created_ms: i64,
    /// When it may run (submission time unless scheduled; next attempt time while retrying).
    pub run_at_ms: i64,
    /// Start of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    /// When the job reached a terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// Retention deadline, set when the job finishes and cleared by a retry; the worker's
    /// retention sweep deletes the job after it (`Store::delete_expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Revision, incremented by every visible change; the API's ETag.
    pub rev: i64,
    /// Set by a retry (a job queued again, under its old id) until the job is known to be in
    /// Redis. The reconciler pushes jobs still flagged after a grace period, which covers an
    /// API that died (or lost Redis) between its MongoDB write and its Redis push. Fresh
    /// submissions are inserted unflagged and need no confirmation write: the reconciler's
    /// fresh pass checks every job once, in creation order, a grace period after it was created.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub enqueue_pending: bool,
}

/// An event waiting in the outbox. A sub-document, so its fields keep their types on the
/// MongoDB-compatible server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    /// 1 while the subscribers have not handled it, 0 after (an integer: the partial index
    /// filters on it, and the compatible server turns booleans into integers anyway).
    pub pending: i32,
    /// What happened.
    pub event: JobEvent,
    /// Stable event id: subscribers, and whoever they tell, dedupe on it.
    pub id: String,
    /// When it happened, ms since the epoch.
    pub at_ms: i64,
}

/// The stable id of the terminal event of job `id` reached at `at_ms`. A job has at most one
/// terminal event per instant (a manual retry must come between two), and a retried batch
/// write carries the same `at`, so the id never changes for one event.
pub fn event_id(job_id: &str, at_ms: i64) -> String {
    format!("evt_{}_{at_ms}", job_id.replace('-', ""))
}

/// When a record may be deleted: the sub-document the TTL indexes of the features' records and
/// the jobs' retention sweep read. A sub-document because a date inside one keeps its type on
/// every server, and MongoDB's TTL index needs a real date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// Deletion time (the TTL index, or the jobs' sweep, deletes the record after it).
    pub expire_at: DateTime,
}

impl Retention {
    /// Expire `keep` after `from`.
    pub fn after(from: DateTime, keep: std::time::Duration) -> Self {
        Retention {
            expire_at: DateTime::from_millis(
                from.timestamp_millis()
                    .saturating_add(keep.as_millis().min(i64::MAX as u128) as i64),
            ),
        }
    }

    /// Expire `keep` from now.
    pub fn from_now(keep: std::time::Duration) -> Self {
        Self::after(DateTime::now(), keep)
    }

    /// The TTL index every collection with a `retention` sub-document needs: MongoDB deletes a
    /// document once its `retention.expire_at` has passed. Not on the jobs collection (see
    /// [`Retention::sweep_index`]).
    pub fn ttl_index() -> mongodb::IndexModel {
        let mut index = Self::sweep_index();
        index.options = Some(
            mongodb::options::IndexOptions::builder()
                .expire_after(std::time::Duration::ZERO)
                .build(),
        );
        index
    }

    /// The same keys without the TTL option, for a collection whose expired documents a
    /// sweep deletes instead (the jobs: see [`crate::store::Store::delete_expired`]).
    pub fn sweep_index() -> mongodb::IndexModel {
        mongodb::IndexModel::builder()
            .keys(mongodb::bson::doc! { "retention.expire_at": 1 })
            .build()
    }

    /// As a BSON sub-document, for `$set`.
    pub fn to_doc(&self) -> mongodb::bson::Document {
        mongodb::bson::doc! { "expire_at": self.expire_at }
    }
}

/// Read a flag written as a boolean, or as 0/1 (the MongoDB-compatible server stores a
/// boolean set by `$set` as an integer).
pub(crate) fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
        Float(f64),
    }
    Ok(match Option::<Flag>::deserialize(d)? {
        None => false,
        Some(Flag::Bool(b)) => b,
        Some(Flag::Int(i)) => i != 0,
        Some(Flag::Float(f)) => f != 0.0,
    })
}

impl Job {
    /// Failed attempts in attempt order.
    pub fn errors_in_order(&self) -> Vec<&AttemptError> {
        let mut v: Vec<&AttemptError> = self.errors.values().collect();
        v.sort_by_key(|e| e.attempt);
        v
    }

    /// The payload a worker needs to run this job, as Redis carries it.
    pub fn payload(&self) -> Payload {
        Payload {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            kind: self.kind.clone(),
            queue: self.queue.clone(),
            shard_key: self.shard_key.clone(),
            lane: None,
            priority: self.priority,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            args: self.args_json.clone(),
            wants_events: self.wants_events,
            limit_key: self.limit_key.clone(),
        }
    }
}

/// Progress of a running attempt, reported by its handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done.
    pub done: i64,
    /// Units in all, when known.
    pub total: Option<i64>,
    /// Free text.
    pub message: Option<String>,
}

/// The error of one failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Attempt number (1-based).
    pub attempt: i32,
    /// When it failed, ms since the epoch.
    pub at_ms: i64,
    /// What went wrong.
    pub message: String,
}

/// What Redis holds for a job waiting or running: everything a worker needs to run it without
/// reading MongoDB. Stored as JSON in the queue's `jobs` hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Job id.
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// Kind name.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// What places the job on a shard of a sharded queue (else its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<String>,
    /// The lane (shard) of `queue` that holds the job, set when it is enqueued on a sharded
    /// queue; every Redis follow-up of the job goes there, whatever the shard map says by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// Priority (read by the promote script to compute the ready score).
    pub priority: i32,
    /// Attempt after which failure is final.
    pub max_attempts: i32,
    /// Per-attempt timeout.
    pub timeout_ms: i64,
    /// Arguments as JSON text.
    pub args: String,
    /// Record an outbox entry when the job ends (see [`Job::wants_events`]).
    #[serde(default, alias = "notify")]
    pub wants_events: bool,
    /// The job's limit key (see [`Job::limit_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_key: Option<String>,
}

impl Payload {
    /// The lane holding the job in Redis: its shard, or its queue when unsharded.
    pub fn lane(&self) -> &str {
        self.lane.as_deref().unwrap_or(&self.queue)
    }
}

/// Score of a job in a ready set: higher priority first, then earlier ready time first.
/// `promote.lua` computes the same formula; both must change together.
pub fn ready_score(priority: i32, ready_at_ms: i64) -> f64 {
    // 1e13 ms is ~300 years, so the priority band always dominates the time; the largest score
    // (9e13 + now) stays far below 2^53, so the f64 score is exact.
    f64::from(MAX_PRIORITY - priority.clamp(MIN_PRIORITY, MAX_PRIORITY)) * 1e13 + ready_at_ms as f64
}

/// A new time-ordered job id.
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The smallest job id (and `list_key`) of a job created at `ms` or later: a UUIDv7's text
/// starts with its 48-bit millisecond time in hex, so ids created before `ms` sort below this
/// prefix and ids created at or after it sort at or above it. Lets time filters use the
/// `list_key` indexes.
pub fn id_floor(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    DateTime::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_score_orders_priority_then_time() {
        let now = 1_800_000_000_000;
        assert!(ready_score(9, now + 1000) < ready_score(8, now));
        assert!(ready_score(5, now) < ready_score(5, now + 1));
        assert!(ready_score(0, now) < 2f64.powi(53));
        assert_eq!(ready_score(42, now), ready_score(9, now), "clamped");
    }

    #[test]
    fn id_floors_bound_ids_by_creation_time() {
        let before = now_ms();
        let id = new_job_id();
        let after = now_ms() + 1;
        assert!(id_floor(before).as_str() <= id.as_str());
        assert!(id.as_str() < id_floor(after).as_str());
    }

    #[test]
    fn job_ids_sort_by_creation() {
        let a = new_job_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_job_id();
        assert!(a < b);
    }
}
