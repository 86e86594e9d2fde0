//! The claim loop of an apalis process: whenever handler slots are free, claim jobs from the
//! configured queues and route each to the apalis backend of its kind. A job of a kind no
//! backend here serves is deferred, uncharged, for a worker that serves it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobmill::queue::Claimed;
use jobmill_worker::Runtime;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::lease::{JobLease, LeaseInner};

/// Kind name → the channel of its backend.
pub(crate) type Routes = Arc<Mutex<HashMap<&'static str, mpsc::UnboundedSender<JobLease>>>>;

/// Most jobs claimed by one script call.
const MAX_CLAIM: usize = 64;
/// Poll interval when no wake-up arrives (covers a missed pub/sub message).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How long a job of a kind not served here waits before any worker may claim it again.
const DEFER: Duration = Duration::from_secs(1);

pub(crate) async fn fetch_loop(
    runtime: Arc<Runtime>,
    routes: Routes,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let settings = runtime.settings().clone();
    // Finished-but-unrecorded jobs allowed beyond the running ones before claiming pauses.
    let cap = settings.concurrency + settings.max_unrecorded;
    let mut start = 0usize;
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        while runtime.inflight().len() >= cap {
            tokio::select! {
                _ = runtime.inflight().changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.cancelled() => return,
            }
        }
        let mut permits = vec![first];
        while permits.len() < MAX_CLAIM {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let mut got = 0;
        let mut failed = false;
        let n = settings.queues.len();
        // Rotate the first queue so every queue gets its turn.
        start = start.wrapping_add(1);
        for i in 0..n {
            if permits.is_empty() {
                break;
            }
            let queue = &settings.queues[(start + i) % n].name;
            let claimed = match runtime
                .queue()
                .claim(
                    queue,
                    runtime.worker(),
                    runtime.core().lease_ttl,
                    permits.len(),
                )
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, queue = %queue, "claim failed; backing off");
                    failed = true;
                    continue;
                }
            };
            for c in claimed {
                let permit = permits.pop().expect("claimed at most the free slots");
                let route = routes
                    .lock()
                    .expect("routes lock")
                    .get(c.payload.kind.as_str())
                    .cloned();
                let Some(tx) = route else {
                    defer(&runtime, &c).await;
                    continue;
                };
                // Into the in-flight table before apalis sees it, so the heartbeat covers it.
                // By lane: heartbeats and follow-ups go to the lane holding the job.
                let token = runtime.inflight().insert(
                    &c.payload.id,
                    c.payload.lane(),
                    &c.payload.kind,
                    c.attempt,
                );
                let lease = JobLease(Arc::new(LeaseInner {
                    runtime: runtime.clone(),
                    claimed: c,
                    token,
                    permit: Mutex::new(Some(permit)),
                    phase: AtomicU8::new(0),
                }));
                // A closed channel drops the lease, whose Drop gives the job back uncharged.
                let _ = tx.send(lease);
                got += 1;
            }
        }
        drop(permits);
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        } else if got == 0 {
            tokio::select! {
                _ = runtime.wake().notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Give back a job of a kind not served here: uncharged, nothing written to MongoDB.
async fn defer(runtime: &Runtime, c: &Claimed) {
    let p = &c.payload;
    let jitter = DEFER.mul_f64(rand::random::<f64>());
    let at = jobmill::job::now_ms() + (DEFER + jitter).as_millis() as i64;
    // If Redis is unreachable the lease expires and the rescuer reruns the job.
    if let Err(e) = runtime
        .queue()
        .defer(p.lane(), runtime.worker(), &[(p.id.clone(), at)])
        .await
    {
        tracing::warn!(job = %p.id, kind = %p.kind, error = %e, "could not defer a job of a kind not served here");
    }
}
