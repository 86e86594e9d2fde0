//! Runs one attempt of one job: looks up the handler, enforces the timeout, turns panics into
//! failed attempts, gives a cancelled handler its grace period, and hands the outcome to the
//! persister. Never writes to a store itself.

use std::sync::Arc;
use std::time::Duration;

use jobmill::job::ready_score;
use jobmill::kind::JobContext;
use jobmill::queue::Claimed;
use jobmill::state::{decide, AttemptOutcome};
use jobmill::store::Write;
use mongodb::bson::DateTime;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::inflight::StopReason;
use crate::persister::Item;
use crate::Shared;

/// How one attempt ended, from the worker's point of view.
enum End {
    /// The attempt has an outcome to record.
    Outcome(AttemptOutcome),
    /// The worker is shutting down: give the job back without charging the attempt.
    Released,
}

/// Run one claimed attempt to its end and queue its write.
pub(crate) async fn execute(
    shared: Arc<Shared>,
    claimed: Claimed,
    token: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let p = &claimed.payload;
    let attempt = claimed.attempt;
    let started = DateTime::now();
    shared.persister.progress.track(&p.id, &p.queue, &p.tenant);
    shared.persister.send(Item {
        queue: p.queue.clone(),
        write: Write::Start {
            id: p.id.clone(),
            attempt: attempt as i32,
            at: started,
        },
        release_score: 0.0,
    });

    let end = run_handler(&shared, &claimed, token).await;
    // The handler is done: free its slot now, not after the outcome is recorded, so recording
    // (batched) never throttles running.
    drop(permit);

    let now = DateTime::now();
    let (write, release_score) = match end {
        End::Released => (
            Write::Release {
                id: p.id.clone(),
                attempt: attempt as i32,
            },
            ready_score(p.priority, now.timestamp_millis()),
        ),
        End::Outcome(outcome) => {
            if let AttemptOutcome::Panicked(msg) = &outcome {
                tracing::warn!(job = %p.id, kind = %p.kind, attempt, "handler panicked: {msg}");
            }
            let decision = decide(
                outcome,
                attempt,
                p.max_attempts.max(1) as u32,
                &shared.policy,
                rand::random::<f64>(),
            );
            tracing::debug!(job = %p.id, kind = %p.kind, attempt, next = %decision.state(), "attempt ended");
            let notify = shared.wants_end_event(&p.tenant, p.notify, &decision);
            (
                Write::Finish {
                    id: p.id.clone(),
                    attempt: attempt as i32,
                    started_at: Some(started),
                    at: now,
                    decision,
                    progress: shared.persister.progress.take(&p.id),
                    notify,
                },
                0.0,
            )
        }
    };
    shared.persister.send(Item {
        queue: p.queue.clone(),
        write,
        release_score,
    });
}

async fn run_handler(shared: &Shared, claimed: &Claimed, token: CancellationToken) -> End {
    let p = &claimed.payload;
    let Some(kind) = shared.registry.get(&p.kind) else {
        return End::Outcome(AttemptOutcome::FailedPermanently(format!(
            "this worker has no handler for kind '{}' (known: {})",
            p.kind,
            shared.registry.names().join(", ")
        )));
    };
    let args = match serde_json::from_str(&p.args) {
        Ok(v) => v,
        Err(e) => {
            return End::Outcome(AttemptOutcome::FailedPermanently(format!(
                "stored args are not JSON: {e}"
            )))
        }
    };
    let ctx = JobContext::new(
        p.id.clone(),
        claimed.attempt,
        p.max_attempts.max(1) as u32,
        p.tenant.clone(),
        p.queue.clone(),
        token.clone(),
        shared.persister.progress.clone(),
    )
    .with_resources(shared.resources.clone());
    // A task of its own, so a panic is caught as a JoinError instead of killing the worker.
    let mut handle = tokio::spawn(kind.run(ctx, args));
    let timeout = Duration::from_millis(p.timeout_ms.max(1) as u64);
    let hard_stop = &shared.hard_stop;
    tokio::select! {
        biased;
        r = &mut handle => End::Outcome(joined(r)),
        _ = hard_stop.cancelled() => {
            token.cancel();
            handle.abort();
            End::Released
        }
        _ = token.cancelled() => {
            // Cooperative cancellation: the handler gets the grace period to stop by itself.
            tokio::select! {
                biased;
                r = &mut handle => End::Outcome(joined(r)),
                _ = hard_stop.cancelled() => { handle.abort(); End::Released }
                _ = tokio::time::sleep(shared.cancel_grace) => {
                    handle.abort();
                    let why = match shared.inflight.reason(&p.id) {
                        Some(StopReason::Stale) => "the job moved on while this attempt started",
                        _ => "the handler did not stop within the cancel grace period; abandoned",
                    };
                    End::Outcome(AttemptOutcome::Cancelled(why.into()))
                }
            }
        }
        _ = tokio::time::sleep(timeout) => {
            token.cancel();
            handle.abort();
            End::Outcome(AttemptOutcome::TimedOut(timeout))
        }
    }
}

fn joined(r: Result<jobmill::Outcome, tokio::task::JoinError>) -> AttemptOutcome {
    match r {
        Ok(o) => o.into(),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            AttemptOutcome::Panicked(msg)
        }
        Err(_) => AttemptOutcome::Cancelled("the handler task was aborted".into()),
    }
}
