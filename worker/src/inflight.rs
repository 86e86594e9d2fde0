//! The jobs a worker holds right now: claimed, running, or finished but not yet recorded. The
//! heartbeat renews the lease of every job in this table, so a job stays leased until its
//! outcome is in MongoDB and Redis, never just until its handler returns.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why a running handler is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A user cancelled the job.
    Cancelled,
    /// MongoDB refused the start: the job was cancelled or moved on meanwhile.
    Stale,
}

struct Entry {
    queue: String,
    kind: String,
    attempt: u32,
    /// When it was claimed, ms since the epoch (shown to operators).
    started_ms: i64,
    /// The handler has not returned yet (a busy slot); false while the outcome waits to be
    /// recorded.
    running: bool,
    cancel: CancellationToken,
    reason: Option<StopReason>,
}

/// A held job, as the registry shows it.
#[derive(Debug, Clone)]
pub struct Held {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Claimed at, ms since the epoch.
    pub started_ms: i64,
}

/// The table. Shared by the fetcher, executors, persister, heartbeat and listener.
#[derive(Default)]
pub struct Inflight {
    // A std Mutex: every critical section is a few map operations, never an await.
    jobs: Mutex<HashMap<String, Entry>>,
    /// Signalled whenever a job leaves the table.
    pub changed: Notify,
}

impl Inflight {
    /// Add a claimed job; returns the token its handler watches.
    pub fn insert(&self, id: &str, queue: &str, kind: &str, attempt: u32) -> CancellationToken {
        let token = CancellationToken::new();
        self.jobs.lock().expect("inflight lock").insert(
            id.to_string(),
            Entry {
                queue: queue.to_string(),
                kind: kind.to_string(),
                attempt,
                started_ms: jobmill::job::now_ms(),
                running: true,
                cancel: token.clone(),
                reason: None,
            },
        );
        token
    }

    /// The job's outcome is recorded everywhere: forget it.
    pub fn remove(&self, id: &str) {
        self.jobs.lock().expect("inflight lock").remove(id);
        self.changed.notify_waiters();
    }

    /// The job's handler returned; its outcome is on its way to the store.
    pub fn handler_done(&self, id: &str) {
        if let Some(e) = self.jobs.lock().expect("inflight lock").get_mut(id) {
            e.running = false;
        }
    }

    /// Every held job (for the worker registry) and how many handlers run now.
    pub fn snapshot(&self) -> (Vec<Held>, usize) {
        let jobs = self.jobs.lock().expect("inflight lock");
        let busy = jobs.values().filter(|e| e.running).count();
        let held = jobs
            .iter()
            .map(|(id, e)| Held {
                id: id.clone(),
                kind: e.kind.clone(),
                // Operators see queues; the entry holds the job's lane.
                queue: jobmill::shards::logical(&e.queue).to_string(),
                started_ms: e.started_ms,
            })
            .collect();
        (held, busy)
    }

    /// Ask a job's handler to stop. Returns false if the job is not here.
    pub fn stop(&self, id: &str, reason: StopReason) -> bool {
        let mut jobs = self.jobs.lock().expect("inflight lock");
        match jobs.get_mut(id) {
            Some(e) => {
                e.reason.get_or_insert(reason);
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Why the job was asked to stop, if it was.
    pub fn reason(&self, id: &str) -> Option<StopReason> {
        self.jobs
            .lock()
            .expect("inflight lock")
            .get(id)
            .and_then(|e| e.reason)
    }

    /// The attempt a job runs, if it is here.
    pub fn attempt(&self, id: &str) -> Option<u32> {
        self.jobs
            .lock()
            .expect("inflight lock")
            .get(id)
            .map(|e| e.attempt)
    }

    /// Ids held, grouped by queue (for heartbeats).
    pub fn by_queue(&self) -> HashMap<String, Vec<String>> {
        let jobs = self.jobs.lock().expect("inflight lock");
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (id, e) in jobs.iter() {
            out.entry(e.queue.clone()).or_default().push(id.clone());
        }
        out
    }

    /// Number of jobs held.
    pub fn len(&self) -> usize {
        self.jobs.lock().expect("inflight lock").len()
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
