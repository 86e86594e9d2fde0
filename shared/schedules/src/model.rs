//! What a schedule is: the stored record ([`Schedule`], collection `schedules`), its policies
//! ([`Overlap`], [`CatchUp`], [`ManagedBy`]), the job it submits ([`JobTemplate`]), and the
//! JSON shapes of the API (requests with their bounds, answers), with OpenAPI schemas.
//!
//! Stored times are integer ms and flags are integers 0/1 (the MongoDB-compatible server of
//! the tests stores top-level dates as strings and booleans as 0/1).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `next_run_at_ms` of a schedule that will not fire again (past `ends_at`).
pub const NEVER: i64 = i64::MAX;
/// Longest schedule name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest `callback_url`.
pub const MAX_URL_LEN: usize = 2048;
/// Most runs `all` fires to catch up.
pub const MAX_CATCH_UP_RUNS: usize = 100;
/// Longest `catch_up_within`.
pub const MAX_CATCH_UP_WITHIN_MS: i64 = 7 * 86_400_000;
/// The job field the webhooks feature reads a callback URL from (its `CALLBACK_URL`); the API
/// checks that the two agree.
pub const CALLBACK_URL_FIELD: &str = "callback_url";

/// What to do with a tick while the previous run of the schedule has not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Fire anyway.
    #[default]
    Allow,
    /// Do not fire (counted as skipped, reason `overlap`).
    Skip,
    /// Remember one tick and fire it as soon as the previous run ends.
    BufferOne,
}

/// What to do with ticks that passed while no process could fire them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Fire none of them.
    None,
    /// Fire the latest one within `catch_up_within`.
    #[default]
    Latest,
    /// Fire each one within `catch_up_within` (at most 100, the latest).
    All,
}

/// Who owns a schedule's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ManagedBy {
    /// Created (or detached) through the API; changed through the API only.
    Api,
    /// Declared by a worker binary; changed by deploying a newer version only.
    Code,
}

/// Why a tick did not fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The previous run had not ended (`overlap: skip`, or a second tick under `buffer_one`).
    Overlap,
    /// The schedule was paused.
    Paused,
    /// Missed while no process fired, and left out by `catch_up`.
    CatchUp,
}

impl SkipReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::Paused => "paused",
            SkipReason::CatchUp => "catch_up",
        }
    }
}

/// The job a schedule submits at each tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTemplate {
    /// Kind name.
    pub kind: String,
    /// Args as JSON text (stored as text, like a job's).
    pub args_json: String,
    /// Queue (the kind's default when absent).
    #[serde(default)]
    pub queue: Option<String>,
    /// Priority.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Attempts.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Where the job's end is posted.
    #[serde(default)]
    pub callback_url: Option<String>,
}

impl JobTemplate {
    /// The submission of one run, deduplicated by `key`.
    pub fn new_job(&self, key: String) -> jobmill::NewJob {
        jobmill::NewJob {
            kind: self.kind.clone(),
            args: serde_json::from_str(&self.args_json)
                .unwrap_or_else(|_| Value::Object(Default::default())),
            queue: self.queue.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            idempotency_key: Some(key),
            ext: self
                .callback_url
                .iter()
                .map(|u| (CALLBACK_URL_FIELD.to_string(), Value::String(u.clone())))
                .collect(),
            ..Default::default()
        }
    }

    /// The API's shape.
    pub fn view(&self) -> JobTemplateView {
        JobTemplateView {
            kind: self.kind.clone(),
            args: Some(
                serde_json::from_str(&self.args_json)
                    .unwrap_or_else(|_| Value::Object(Default::default())),
            ),
            queue: self.queue.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            callback_url: self.callback_url.clone(),
        }
    }
}

/// A stored schedule (collection `schedules`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    /// `sch_<uuid v7>`.
    #[serde(rename = "_id")]
    pub id: String,
    /// The owner (the API key's name), whose jobs the schedule submits.
    pub tenant: String,
    /// Unique per tenant.
    pub name: String,
    /// Cron expression.
    pub cron: String,
    /// IANA zone.
    pub timezone: String,
    /// The job of each run.
    pub job: JobTemplate,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Catch-up policy.
    pub catch_up: CatchUp,
    /// Ticks older than this are never caught up.
    pub catch_up_within_ms: i64,
    /// No tick before this (0: none).
    pub starts_at_ms: i64,
    /// No tick after this (0: none).
    pub ends_at_ms: i64,
    /// 1 while paused.
    pub paused: i32,
    /// Who owns the definition.
    pub managed_by: ManagedBy,
    /// The declaration's version (code-managed schedules; 0 for API ones).
    pub version: i64,
    /// Bumped by every change of the definition (guards read-modify-write edits).
    pub rev: i64,
    /// The next tick to fire ([`NEVER`] when none). Firing is a compare-and-set on it.
    pub next_run_at_ms: i64,
    /// When a process claimed the ticks in `pending_ms` (0: nothing pending). A claim still
    /// pending a second later is finished by any process: the jobs' idempotency keys make the
    /// second submission return the same jobs.
    pub pending_at_ms: i64,
    /// Fire times claimed and not yet confirmed submitted.
    #[serde(default, deserialize_with = "lenient_ms")]
    pub pending_ms: Vec<i64>,
    /// 1 when the pending fire times are catch-up runs of missed ticks.
    #[serde(default)]
    pub pending_catch_up: i32,
    /// A tick held under `buffer_one` until the previous run ends (0: none).
    pub buffered_ms: i64,
    /// The job of the latest run (empty before the first).
    #[serde(default)]
    pub last_job_id: String,
    /// Creation time.
    pub created_ms: i64,
    /// Last change of the definition.
    pub updated_ms: i64,
}

impl Schedule {
    /// The idempotency key of the run planned at `fire_ms`.
    pub fn job_key(&self, fire_ms: i64) -> String {
        format!("schedule:{}:{}", self.id, rfc3339(fire_ms))
    }

    /// Whether the schedule is paused.
    pub fn is_paused(&self) -> bool {
        self.paused != 0
    }
}

/// Integers of an array, whatever integer (or decimal string) type the store kept them as.
fn lenient_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    let raw: Vec<mongodb::bson::Bson> = Deserialize::deserialize(d)?;
    Ok(raw
        .iter()
        .filter_map(|b| match b {
            mongodb::bson::Bson::Int64(v) => Some(*v),
            mongodb::bson::Bson::Int32(v) => Some(i64::from(*v)),
            mongodb::bson::Bson::Double(v) => Some(*v as i64),
            mongodb::bson::Bson::String(v) => v.parse().ok(),
            _ => None,
        })
        .collect())
}

/// A duration in the largest whole unit: `1h`, `90s`, `1500ms`.
pub fn fmt_within(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms > 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// RFC 3339 UTC with seconds (and milliseconds only when there are any).
pub fn rfc3339(ms: i64) -> String {
    let t = at(ms);
    if ms % 1000 == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// An instant from integer ms.
pub fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A job template in the API's shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobTemplateView {
    /// Kind (a public kind of the catalog).
    #[schema(min_length = 1, max_length = 128)]
    pub kind: String,
    /// Args (default `{}`), checked against the kind's schema.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    /// Queue: 1-64 letters, digits, `_` or `-` (default: the kind's).
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub queue: Option<String>,
    /// 0-9.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i32>,
    /// 1-100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in ms (at most 7 days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604_800_000_u64)]
    pub timeout_ms: Option<u64>,
    /// URL that receives a signed POST when each run ends.
    #[serde(default)]
    #[schema(format = "uri", max_length = 2048)]
    pub callback_url: Option<String>,
}

impl JobTemplateView {
    /// The stored shape (bounds are checked by the catalog when the schedule is checked).
    pub fn template(self) -> jobmill::Result<JobTemplate> {
        if self.kind.is_empty() || self.kind.len() > 128 {
            return Err(jobmill::Error::invalid(
                "unknown_kind",
                "kind names are 1-128 characters",
            ));
        }
        if self
            .callback_url
            .as_ref()
            .is_some_and(|u| u.len() > MAX_URL_LEN)
        {
            return Err(jobmill::Error::invalid(
                "invalid_callback_url",
                format!("callback_url is at most {MAX_URL_LEN} characters"),
            ));
        }
        let args = self
            .args
            .unwrap_or_else(|| Value::Object(Default::default()));
        Ok(JobTemplate {
            kind: self.kind,
            args_json: args.to_string(),
            queue: self.queue,
            priority: self.priority,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            callback_url: self.callback_url,
        })
    }
}

/// `POST /v1/schedules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "nightly-report", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
    "job": {"kind": "noop", "args": {}}, "overlap": "skip", "catch_up": "latest"}))]
pub struct CreateSchedule {
    /// Unique per tenant: 1-64 letters, digits, `_`, `-` or `.`.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    /// 5 fields (`m h dom mon dow`), or 6 with seconds first.
    #[schema(min_length = 1, max_length = 128)]
    pub cron: String,
    /// IANA time zone (default `UTC`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub timezone: Option<String>,
    /// The job each tick submits.
    pub job: JobTemplateView,
    /// Default `allow`.
    #[serde(default)]
    pub overlap: Option<Overlap>,
    /// Default `latest`.
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// Missed ticks older than this are never caught up: `30s`, `10m`, `1h` (default), at most
    /// `7d`.
    #[serde(default)]
    #[schema(pattern = r"^[0-9]{1,9}(ms|s|m|h|d)?$")]
    pub catch_up_within: Option<String>,
    /// RFC 3339: no tick before.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// RFC 3339: no tick after.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub ends_at: Option<String>,
    /// Created paused.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// `PATCH /v1/schedules/{name}`: the fields to change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchSchedule {
    /// 5 or 6 fields.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub cron: Option<String>,
    /// IANA time zone.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub timezone: Option<String>,
    /// The whole job template.
    #[serde(default)]
    pub job: Option<JobTemplateView>,
    /// Overlap policy.
    #[serde(default)]
    pub overlap: Option<Overlap>,
    /// Catch-up policy.
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// Duration string.
    #[serde(default)]
    #[schema(pattern = r"^[0-9]{1,9}(ms|s|m|h|d)?$")]
    pub catch_up_within: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub ends_at: Option<String>,
    /// Pause or resume.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// A run of a schedule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    /// The tick it was planned for (for a manual trigger, when it was asked for).
    pub fire_time: DateTime<Utc>,
    /// The job it submitted (absent when the submission was refused).
    pub job_id: Option<String>,
    /// The job's state now (`not_submitted` when the submission was refused, `unknown` when
    /// the job is gone).
    pub state: String,
    /// A missed tick fired late by `catch_up`.
    pub catch_up: bool,
    /// A manual `trigger`.
    pub manual: bool,
    /// Why the submission was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The process that fired it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired_by: Option<String>,
}

/// A schedule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Id (in its jobs' idempotency keys).
    pub id: String,
    /// Name, unique per tenant.
    pub name: String,
    /// Owner.
    pub tenant: String,
    /// Cron expression.
    pub cron: String,
    /// IANA zone.
    pub timezone: String,
    /// The job each tick submits.
    pub job: JobTemplateView,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Catch-up policy.
    pub catch_up: CatchUp,
    /// Catch-up window.
    pub catch_up_within: String,
    /// No tick before.
    pub starts_at: Option<DateTime<Utc>>,
    /// No tick after.
    pub ends_at: Option<DateTime<Utc>>,
    /// Paused.
    pub paused: bool,
    /// `api` or `code`.
    pub managed_by: ManagedBy,
    /// Declaration version (code-managed).
    pub version: i64,
    /// The next tick (null when none is left).
    pub next_run_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// The next 5 fire times (`GET /v1/schedules/{name}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_runs: Option<Vec<DateTime<Utc>>>,
    /// The last 20 runs, newest first (`GET /v1/schedules/{name}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<RunView>>,
}

impl ScheduleView {
    /// The view of `s`, without runs.
    pub fn of(s: &Schedule) -> Self {
        let opt = |ms: i64| (ms != 0).then(|| at(ms));
        ScheduleView {
            id: s.id.clone(),
            name: s.name.clone(),
            tenant: s.tenant.clone(),
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
            job: s.job.view(),
            overlap: s.overlap,
            catch_up: s.catch_up,
            catch_up_within: fmt_within(s.catch_up_within_ms),
            starts_at: opt(s.starts_at_ms),
            ends_at: opt(s.ends_at_ms),
            paused: s.is_paused(),
            managed_by: s.managed_by,
            version: s.version,
            next_run_at: (s.next_run_at_ms != NEVER).then(|| at(s.next_run_at_ms)),
            created_at: at(s.created_ms),
            updated_at: at(s.updated_ms),
            next_runs: None,
            runs: None,
        }
    }
}

/// `GET /v1/schedules`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleList {
    /// By tenant, then name.
    pub schedules: Vec<ScheduleView>,
}
