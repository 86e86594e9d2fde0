//! Frees the limit slots of jobs whose handler ended, right away and in batches, instead of
//! when their outcome is recorded (the persister batches writes for tens of ms, which would
//! otherwise cap a queue with `concurrency: 40` at 40 jobs per flush). The lease is untouched:
//! the job stays leased until its outcome is in MongoDB and Redis. Should this process die
//! first, the rescuer frees the slot with the lease; `unslot.lua` and the lease-ending scripts
//! free a slot once, whichever comes first.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// The handle the executor sends ended jobs to.
pub(crate) struct SlotReleaser {
    tx: mpsc::UnboundedSender<(String, String)>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
    /// Fires after slots were freed: the fetcher, waiting on a limited queue, claims again.
    pub(crate) freed: Notify,
}

impl SlotReleaser {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        SlotReleaser {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            freed: Notify::new(),
        }
    }

    /// The handler of job `id` of `queue` ended (with an outcome that does not hold its key).
    pub(crate) fn ended(&self, queue: &str, id: &str) {
        let _ = self.tx.send((queue.to_string(), id.to_string()));
    }
}

/// Free slots as handlers end: everything waiting goes in one script call per queue.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(mut rx) = shared.slots.rx.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = stop.cancelled() => return,
        };
        let mut by_queue: HashMap<String, Vec<String>> = HashMap::new();
        by_queue.entry(first.0).or_default().push(first.1);
        while let Ok((q, id)) = rx.try_recv() {
            by_queue.entry(q).or_default().push(id);
        }
        for (q, ids) in by_queue {
            // Best effort: a slot not freed here is freed with the lease, a moment later.
            if let Err(e) = shared.queue.unslot(&q, &shared.worker, &ids).await {
                tracing::debug!(error = %e, queue = %q, "could not free limit slots early");
            }
        }
        shared.slots.freed.notify_waiters();
    }
}
