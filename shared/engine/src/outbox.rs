//! The job-event outbox: how "this job reached state X" reaches the features that care,
//! without ever being lost between the job's end and the telling.
//!
//! 1. The guarded write that ends a job (or records its progress) also sets the job's `outbox`
//!    sub-document, in the same statement, when some [`Subscriber`] wants the event. If the
//!    state is recorded, so is the event.
//! 2. The worker's outbox loop ([`run`]) reads pending entries through a partial index, hands
//!    them to every subscriber, submits the follow-up jobs they return (internal kinds), and
//!    only then clears each entry, guarded on its event id. A crash anywhere means the next
//!    round does it again, so subscribers must be idempotent (keyed on the event id).
//!
//! An entry is written only when someone wants it, so a deployment without subscribers pays
//! nothing for this.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::client::{JobClient, NewJob, MAX_BATCH};
use crate::error::Result;
use crate::job::Job;
use crate::state::JobState;

/// A boxed future, for the object-safe traits of this module.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What happened to a job. Stored in the outbox as `job.<what>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobEvent {
    /// It ended `succeeded`.
    #[serde(rename = "job.succeeded")]
    Succeeded,
    /// It ended `failed`.
    #[serde(rename = "job.failed")]
    Failed,
    /// It ended `cancelled`.
    #[serde(rename = "job.cancelled")]
    Cancelled,
    /// Its handler reported progress (best effort: a terminal event may replace it).
    #[serde(rename = "job.progress")]
    Progress,
}

impl JobEvent {
    /// Every event type.
    pub const ALL: [JobEvent; 4] = [
        JobEvent::Succeeded,
        JobEvent::Failed,
        JobEvent::Cancelled,
        JobEvent::Progress,
    ];
    /// The events of a job that ended.
    pub const TERMINAL: [JobEvent; 3] =
        [JobEvent::Succeeded, JobEvent::Failed, JobEvent::Cancelled];

    /// The stored and shown name, e.g. `job.succeeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobEvent::Succeeded => "job.succeeded",
            JobEvent::Failed => "job.failed",
            JobEvent::Cancelled => "job.cancelled",
            JobEvent::Progress => "job.progress",
        }
    }

    /// Parse a name.
    pub fn parse(s: &str) -> Option<JobEvent> {
        JobEvent::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The event of reaching `state`, if it is terminal.
    pub fn ended(state: JobState) -> Option<JobEvent> {
        match state {
            JobState::Succeeded => Some(JobEvent::Succeeded),
            JobState::Failed => Some(JobEvent::Failed),
            JobState::Cancelled => Some(JobEvent::Cancelled),
            JobState::Queued | JobState::Scheduled | JobState::Running | JobState::Retrying => None,
        }
    }
}

impl std::fmt::Display for JobEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A feature that wants job events.
pub trait Subscriber: Send + Sync {
    /// Short name, for logs.
    fn name(&self) -> &'static str;

    /// Whether `event` of a job of `tenant` is wanted now. Asked at the write that records the
    /// event, so it must be cheap (an in-memory table). When unsure, say yes: an unwanted entry
    /// costs a cleared flag, a missing one is a lost event.
    fn wants(&self, tenant: &str, event: JobEvent) -> bool;

    /// Least time between two progress events of one job, if progress is ever wanted.
    fn progress_every(&self) -> Option<Duration> {
        None
    }

    /// Handle pending events (each job carries its `outbox` entry). Must be idempotent: after a
    /// crash the same entries come again. Returns jobs to submit (they may be of internal
    /// kinds); the loop submits them before clearing the entries, so each should carry an
    /// idempotency key that makes a second submission return the first job.
    fn handle<'a>(&'a self, jobs: &'a [Job]) -> BoxFuture<'a, Result<Vec<FollowUp>>>;
}

/// A job a subscriber wants submitted for an event.
#[derive(Debug, Clone)]
pub struct FollowUp {
    /// The owner it is submitted as (an internal tenant, see [`crate::client::INTERNAL_TENANT_SEP`]).
    pub owner: String,
    /// The job.
    pub job: NewJob,
}

/// Every subscriber of a process. Cheap to clone.
#[derive(Clone, Default)]
pub struct Subscribers {
    all: Arc<Vec<Arc<dyn Subscriber>>>,
}

impl Subscribers {
    /// A set of subscribers.
    pub fn new(all: Vec<Arc<dyn Subscriber>>) -> Self {
        Subscribers { all: Arc::new(all) }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Whether any subscriber wants this event now.
    pub fn wants(&self, tenant: &str, event: JobEvent) -> bool {
        self.all.iter().any(|s| s.wants(tenant, event))
    }

    /// Whether the write that ends a job in `state` records an outbox entry: someone said so at
    /// submit (`wanted_at_submit`), or someone wants the event now.
    pub fn wants_end(&self, tenant: &str, wanted_at_submit: bool, state: JobState) -> bool {
        JobEvent::ended(state).is_some_and(|e| wanted_at_submit || self.wants(tenant, e))
    }

    /// The shortest progress-event interval any subscriber asks for.
    pub fn progress_every(&self) -> Option<Duration> {
        self.all.iter().filter_map(|s| s.progress_every()).min()
    }
}

/// How often the outbox is scanned while it has work (the lock lives as long, so one process
/// scans per round).
const EVERY: Duration = Duration::from_millis(200);
/// Longest pause while the outbox stays empty. The scan is an index lookup (a single-field
/// one, which the MongoDB-compatible server can use too), but an idle loop still backs off
/// rather than send a command every round; an event then waits at most this long to be handled.
const IDLE_MAX: Duration = Duration::from_millis(1600);
/// Jobs handled per round trip.
const BATCH: i64 = 500;

/// The outbox loop every worker runs. One process per round takes a short Redis lock; two that
/// race past it only repeat idempotent work.
pub async fn run(
    client: JobClient,
    subscribers: Subscribers,
    worker: String,
    stop: CancellationToken,
) {
    let mut pause = EVERY;
    loop {
        match client.queue().try_lock("outbox", &worker, EVERY).await {
            Ok(true) => loop {
                match drain_once(&client, &subscribers).await {
                    Ok(n) if n as i64 == BATCH && !stop.is_cancelled() => continue,
                    Ok(0) => {
                        pause = (pause * 2).min(IDLE_MAX);
                        break;
                    }
                    Ok(_) => {
                        pause = EVERY;
                        break;
                    }
                    Err(e) => {
                        // The entries stay pending and the next round tries again.
                        tracing::warn!(error = %e, "outbox round failed");
                        break;
                    }
                }
            },
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "outbox lock"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One round; returns how many entries it handled.
async fn drain_once(client: &JobClient, subscribers: &Subscribers) -> Result<usize> {
    let store = client.store();
    let jobs = store.pending_outbox(BATCH).await?;
    if jobs.is_empty() {
        return Ok(0);
    }
    for s in subscribers.all.iter() {
        let follow_ups = s.handle(&jobs).await?;
        // Grouped by owner: a follow-up job belongs to the subscriber's internal tenant.
        let owners: BTreeSet<&str> = follow_ups.iter().map(|f| f.owner.as_str()).collect();
        for owner in owners {
            let news: Vec<NewJob> = follow_ups
                .iter()
                .filter(|f| f.owner == owner)
                .map(|f| f.job.clone())
                .collect();
            for chunk in news.chunks(MAX_BATCH) {
                client.submit_internal(owner, chunk.to_vec()).await?;
            }
        }
        if !follow_ups.is_empty() {
            tracing::debug!(
                subscriber = s.name(),
                jobs = follow_ups.len(),
                "outbox follow-ups submitted"
            );
        }
    }
    let handled: Vec<(String, String)> = jobs
        .iter()
        .filter_map(|j| j.outbox.as_ref().map(|o| (j.id.clone(), o.id.clone())))
        .collect();
    store.clear_outbox(&handled).await?;
    Ok(jobs.len())
}
