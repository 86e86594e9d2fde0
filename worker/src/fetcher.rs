//! The claim loop: whenever handler slots are free, claim jobs from the worker's queues in
//! weighted random order and start them. Sleeps on a wake-up from pub/sub (or a short poll)
//! when every queue is empty.

use std::sync::Arc;
use std::time::Duration;

use jobmill::config::QueueWeight;
use jobmill_ops::metrics::StoreName;
use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::executor::execute;
use crate::Shared;

/// Most jobs claimed by one script call.
const MAX_CLAIM: usize = 64;
/// Poll interval when no wake-up arrives (covers a missed pub/sub message).
const IDLE_POLL: Duration = Duration::from_millis(500);

pub(crate) async fn fetch_loop(
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    // Finished-but-unrecorded jobs allowed beyond the running ones before claiming pauses
    // (MongoDB slow or down): bounds memory and the work a crash would repeat.
    let cap = shared.settings.concurrency + shared.settings.max_unrecorded;
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        while shared.inflight.len() >= cap {
            tokio::select! {
                _ = shared.inflight.changed.notified() => {}
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
        let mut error = None;
        let order = weighted_order(&shared.settings.queues, &mut rand::rng());
        for queue in order {
            if permits.is_empty() {
                break;
            }
            match shared
                .queue
                .claim(&queue, &shared.worker, shared.core.lease_ttl, permits.len())
                .await
            {
                Ok(claimed) => {
                    for c in claimed {
                        let permit = permits.pop().expect("claimed at most the free slots");
                        // Into the table before the task starts, so the next heartbeat covers it.
                        // By lane: heartbeats and follow-ups go to the lane holding the job.
                        let token = shared.inflight.insert(
                            &c.payload.id,
                            c.payload.lane(),
                            &c.payload.kind,
                            c.attempt,
                        );
                        tokio::spawn(execute(shared.clone(), c, token, permit));
                        got += 1;
                    }
                }
                Err(e) => {
                    shared.metrics.store_error(StoreName::Redis);
                    error = Some(e)
                }
            }
        }
        drop(permits);
        if let Some(e) = error {
            failures += 1;
            if failures == 1 || failures.is_multiple_of(20) {
                tracing::warn!(error = %e, failures, "claim failed; backing off");
            }
            let pause = Duration::from_millis(50u64 << failures.min(7)).min(Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            continue;
        }
        failures = 0;
        if got == 0 {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Queue names in a random order where each queue comes first with probability proportional
/// to its weight (sampling without replacement).
pub(crate) fn weighted_order(queues: &[QueueWeight], rng: &mut impl Rng) -> Vec<String> {
    let mut pool: Vec<&QueueWeight> = queues.iter().collect();
    let mut out = Vec::with_capacity(pool.len());
    while !pool.is_empty() {
        let total: u32 = pool.iter().map(|q| q.weight).sum();
        let mut pick = rng.random_range(0..total);
        let idx = pool
            .iter()
            .position(|q| {
                if pick < q.weight {
                    true
                } else {
                    pick -= q.weight;
                    false
                }
            })
            .expect("pick < total");
        out.push(pool.remove(idx).name.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn weights_decide_who_goes_first() {
        let queues = vec![
            QueueWeight {
                name: "a".into(),
                weight: 1,
            },
            QueueWeight {
                name: "b".into(),
                weight: 3,
            },
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b_first = 0;
        for _ in 0..4000 {
            let order = weighted_order(&queues, &mut rng);
            assert_eq!(order.len(), 2);
            if order[0] == "b" {
                b_first += 1;
            }
        }
        // Expect 3/4 of 4000 = 3000; allow generous noise.
        assert!((2800..3200).contains(&b_first), "{b_first}");
    }
}
