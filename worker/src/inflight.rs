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
    attempt: u32,
    cancel: CancellationToken,
    reason: Option<StopReason>,
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
    pub fn insert(&self, id: &str, queue: &str, attempt: u32) -> CancellationToken {
        let token = CancellationToken::new();
        self.jobs.lock().expect("inflight lock").insert(
            id.to_string(),
            Entry {
                queue: queue.to_string(),
                attempt,
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
