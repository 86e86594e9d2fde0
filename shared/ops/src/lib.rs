//! jobmill-ops: the operator plane. A feature of jobmill like webhooks and data: it owns its
//! collections and Redis names, and plugs into the engine through generic hooks (an
//! [`jobmill::observe::OutcomeHook`] for exact counters, the pause flag `claim.lua` checks).
//!
//! # Layout
//! - [`Ops`]: the feature, as the binaries assemble it.
//! - [`workers`]: the status each worker publishes with its heartbeat, the worker views, and
//!   operator commands (`quiet`, `stop`) sent over pub/sub.
//! - [`queues`]: queue views from Redis structure sizes and the history.
//! - [`pauses`]: queue pauses, recorded in MongoDB and restored into Redis after a wipe.
//! - [`limits`]: queue limits, recorded in MongoDB and restored into Redis after a wipe.
//! - [`history`]: per-queue, per-minute outcome buckets, fed by the persister's hook.
//! - [`audit`]: the audit trail of operator actions.
//! - [`bulk`]: bulk retry, cancel and discard by filter, and their internal kind.
//! - [`metrics`]: Prometheus metrics of a worker and of the fleet.
//! - [`keys`]: the feature's Redis names.
#![warn(missing_docs)]

pub mod audit;
pub mod bulk;
pub mod history;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod pauses;
pub mod queues;
pub mod workers;

use std::sync::Arc;

use jobmill::observe::OutcomeHook;
use jobmill::queue::RedisQueue;
use jobmill::store::Store;
use jobmill::Result;

use audit::Audit;
use history::{History, HistoryHook};
use limits::Limits;
use pauses::Pauses;

/// The operator plane, as a binary assembles it. Cheap to clone.
#[derive(Clone)]
pub struct Ops {
    queue: RedisQueue,
    audit: Audit,
    history: History,
    pauses: Pauses,
    limits: Limits,
}

impl Ops {
    /// The feature over the engine's stores; audit records follow the jobs' retention.
    pub fn new(store: &Store, queue: &RedisQueue) -> Self {
        let db = store.database();
        Ops {
            queue: queue.clone(),
            audit: Audit::new(db, store.retention()),
            history: History::new(db),
            pauses: Pauses::new(db),
            limits: Limits::new(db),
        }
    }

    /// Create the feature's indexes (idempotent).
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.audit.ensure_indexes().await?;
        self.history.ensure_indexes().await
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The per-minute history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Queue pauses.
    pub fn pauses(&self) -> &Pauses {
        &self.pauses
    }

    /// Queue limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The queues.
    pub fn queue(&self) -> &RedisQueue {
        &self.queue
    }

    /// Register the feature's internal kind (`jobs_bulk_action`), working through `client`.
    pub fn register_kinds(&self, r: &mut jobmill::Registry, client: &jobmill::JobClient) {
        r.register_internal(bulk::BulkAction::new(client.clone()));
    }

    /// The hook the worker's persister calls with applied outcomes.
    pub fn outcome_hook(&self) -> Arc<dyn OutcomeHook> {
        Arc::new(HistoryHook::new(self.history.clone()))
    }

    /// Every worker seen lately and every queue worth showing.
    pub async fn queue_list(&self) -> Result<Vec<queues::QueueView>> {
        let workers = workers::list(&self.queue).await?;
        let recent = self.history.recent().await?;
        queues::list(&self.queue, &workers::consumers(&workers), &recent).await
    }

    /// One queue.
    pub async fn queue_one(&self, name: &str) -> Result<queues::QueueView> {
        let workers = workers::list(&self.queue).await?;
        let recent = self.history.recent().await?;
        queues::one(&self.queue, name, &workers::consumers(&workers), &recent).await
    }
}
