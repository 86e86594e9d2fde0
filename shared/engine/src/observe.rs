//! Hooks the worker's persister calls with the outcomes MongoDB actually applied, so features
//! can keep exact counters (per-minute history, metrics) without the engine knowing them.
//!
//! Only writes that took effect are reported: a stale outcome (the job had moved on) is not,
//! so a counter fed from here counts each recorded transition once.

use futures::future::BoxFuture;
use mongodb::bson::DateTime;

use crate::error::Result;
use crate::state::{Decision, JobState};

/// One applied end of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedOutcome {
    /// The job's queue.
    pub queue: String,
    /// The state the job moved to: `succeeded`, `retrying`, `failed` or `cancelled`.
    pub state: JobState,
    /// When the attempt ended.
    pub at: DateTime,
    /// How long the attempt ran, when its start is known.
    pub run_ms: Option<i64>,
}

impl AppliedOutcome {
    /// The outcome of an applied `Finish` write.
    pub fn new(
        queue: &str,
        decision: &Decision,
        started_at: Option<DateTime>,
        at: DateTime,
    ) -> Self {
        AppliedOutcome {
            queue: queue.to_string(),
            state: decision.state(),
            at,
            run_ms: started_at.map(|s| (at.timestamp_millis() - s.timestamp_millis()).max(0)),
        }
    }
}

/// Told about every batch of applied outcomes, after MongoDB recorded them and before their
/// Redis follow-ups. An error is retried by the caller with the same batch, so an
/// implementation must be idempotent per batch or accept a rare double count; see the
/// implementation's docs.
///
/// A hook may take a batch in and write it later (to send one command a second rather than
/// one per batch): the caller then calls [`OutcomeHook::tick`] about twice a second, and once
/// more when it stops. What a hook holds unwritten is lost if the process dies, so such a
/// hook keeps counts, never anything a job's fate depends on.
pub trait OutcomeHook: Send + Sync {
    /// Record `outcomes` (never empty). `batch` identifies the flush, for idempotency.
    fn record<'a>(
        &'a self,
        batch: &'a str,
        outcomes: &'a [AppliedOutcome],
    ) -> BoxFuture<'a, Result<()>>;

    /// Write what is due of what [`OutcomeHook::record`] took in; everything when `last` (the
    /// caller is stopping). An error is not retried: the next tick writes it.
    fn tick(&self, last: bool) -> BoxFuture<'_, Result<()>> {
        let _ = last;
        Box::pin(async { Ok(()) })
    }
}
