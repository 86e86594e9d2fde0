//! Schedules declared in a worker binary's code, next to its kinds:
//!
//! ```
//! use jobmill_schedules::{Overlap, ScheduleSpec};
//! let nightly = ScheduleSpec::new("nightly-report", "0 3 * * *", "noop")
//!     .tenant("reports")
//!     .timezone("Europe/Berlin")
//!     .args(serde_json::json!({}))
//!     .overlap(Overlap::Skip)
//!     .version(2);
//! assert_eq!(nightly.version, 2);
//! ```
//!
//! The worker upserts them at start with `managed_by: "code"` ([`crate::Schedules::declare`]):
//! a declaration with a higher `version` than the stored one replaces it; the API answers
//! `409 managed_by_code` to edits until an operator detaches the schedule, after which
//! deploys leave it alone.

use chrono::DateTime;
use serde_json::Value;

use crate::model::{CatchUp, JobTemplate, ManagedBy, Overlap, Schedule, NEVER};
use crate::DEFAULT_CATCH_UP_WITHIN;

/// The tenant that owns declared schedules unless told otherwise.
pub const DEFAULT_TENANT: &str = "system";

/// A schedule declared in code. Build with [`ScheduleSpec::new`] and the setters.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// Unique per tenant.
    pub name: String,
    /// Cron expression, 5 or 6 fields.
    pub cron: String,
    /// IANA zone (default `UTC`).
    pub timezone: String,
    /// Owner of the schedule and of its jobs (default [`DEFAULT_TENANT`]).
    pub tenant: String,
    /// Kind of the jobs.
    pub kind: String,
    /// Args of the jobs.
    pub args: Value,
    /// Queue (default: the kind's).
    pub queue: Option<String>,
    /// Priority.
    pub priority: Option<i32>,
    /// Attempts.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Catch-up policy.
    pub catch_up: CatchUp,
    /// Catch-up window.
    pub catch_up_within: std::time::Duration,
    /// No tick before.
    pub starts_at: Option<DateTime<chrono::Utc>>,
    /// No tick after.
    pub ends_at: Option<DateTime<chrono::Utc>>,
    /// Bump it to make a deploy replace the stored declaration (default 1).
    pub version: i64,
}

impl ScheduleSpec {
    /// A schedule `name` firing `kind` jobs at `cron` (UTC).
    pub fn new(name: &str, cron: &str, kind: &str) -> Self {
        ScheduleSpec {
            name: name.to_string(),
            cron: cron.to_string(),
            timezone: "UTC".into(),
            tenant: DEFAULT_TENANT.into(),
            kind: kind.to_string(),
            args: Value::Object(Default::default()),
            queue: None,
            priority: None,
            max_attempts: None,
            timeout_ms: None,
            overlap: Overlap::default(),
            catch_up: CatchUp::default(),
            catch_up_within: DEFAULT_CATCH_UP_WITHIN,
            starts_at: None,
            ends_at: None,
            version: 1,
        }
    }

    /// Owner.
    pub fn tenant(mut self, t: &str) -> Self {
        self.tenant = t.to_string();
        self
    }

    /// IANA zone.
    pub fn timezone(mut self, z: &str) -> Self {
        self.timezone = z.to_string();
        self
    }

    /// Args.
    pub fn args(mut self, a: Value) -> Self {
        self.args = a;
        self
    }

    /// Queue.
    pub fn queue(mut self, q: &str) -> Self {
        self.queue = Some(q.to_string());
        self
    }

    /// Overlap policy.
    pub fn overlap(mut self, o: Overlap) -> Self {
        self.overlap = o;
        self
    }

    /// Catch-up policy and window.
    pub fn catch_up(mut self, c: CatchUp, within: std::time::Duration) -> Self {
        self.catch_up = c;
        self.catch_up_within = within;
        self
    }

    /// Declaration version.
    pub fn version(mut self, v: i64) -> Self {
        self.version = v;
        self
    }

    /// The stored record (its next tick not planned yet).
    pub fn to_schedule(&self, now_ms: i64) -> jobmill::Result<Schedule> {
        crate::check_name(&self.name)?;
        Ok(Schedule {
            id: format!("sch_{}", uuid::Uuid::now_v7().simple()),
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            job: JobTemplate {
                kind: self.kind.clone(),
                args_json: self.args.to_string(),
                queue: self.queue.clone(),
                priority: self.priority,
                max_attempts: self.max_attempts,
                timeout_ms: self.timeout_ms,
                callback_url: None,
            },
            overlap: self.overlap,
            catch_up: self.catch_up,
            catch_up_within_ms: self.catch_up_within.as_millis() as i64,
            starts_at_ms: self.starts_at.map(|t| t.timestamp_millis()).unwrap_or(0),
            ends_at_ms: self.ends_at.map(|t| t.timestamp_millis()).unwrap_or(0),
            paused: 0,
            managed_by: ManagedBy::Code,
            version: self.version,
            rev: 1,
            next_run_at_ms: NEVER,
            pending_at_ms: 0,
            pending_ms: Vec::new(),
            pending_catch_up: 0,
            buffered_ms: 0,
            last_job_id: String::new(),
            created_ms: now_ms,
            updated_ms: now_ms,
        })
    }
}
