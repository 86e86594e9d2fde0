//! Runs one attempt of one job: looks up the handler (a job of a kind this worker does not
//! serve is deferred, uncharged, for a worker that does), enforces the timeout, turns panics
//! into failed attempts, gives a cancelled handler its grace period, and hands the outcome to
//! the persister. Never writes to MongoDB itself.

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

/// How long a job of a kind this worker does not serve waits before any worker may claim it
/// again (jittered up to twice this), so workers that lack the kind do not spin on it.
const DEFER: Duration = Duration::from_secs(1);

/// Run one claimed attempt to its end and queue its write.
pub(crate) async fn execute(
    shared: Arc<Shared>,
    claimed: Claimed,
    token: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let p = &claimed.payload;
    let attempt = claimed.attempt;
    if shared.registry.get(&p.kind).is_none() {
        defer(&shared, &claimed).await;
        return;
    }
    let started = DateTime::now();
    shared.persister.progress.track(&p.id, p.lane(), &p.tenant);
    shared.persister.send(Item {
        queue: p.lane().to_string(),
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
    shared.inflight.handler_done(&p.id);

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
            // A user's cancel (not a stale start) makes every outcome but success `cancelled`.
            let cancel_requested = shared.inflight.reason(&p.id) == Some(StopReason::Cancelled);
            let decision = decide(
                outcome,
                attempt,
                p.max_attempts.max(1) as u32,
                &shared.policy,
                rand::random::<f64>(),
                cancel_requested,
            );
            tracing::debug!(job = %p.id, kind = %p.kind, attempt, next = %decision.state(), "attempt ended");
            // The job no longer runs: its limit slot is free now, not when the outcome is
            // recorded. Only where a concurrency limit counts slots: elsewhere the outcome's
            // write frees it, and an early call would cost Redis one script per batch. A
            // rate-limited job keeps it until `throttle.lua` holds its key, so no sibling slips
            // in between.
            if claimed.capped && !decision.returns_attempt() {
                shared.slots.ended(p.lane(), &p.id);
            }
            let ran = (now.timestamp_millis() - started.timestamp_millis()).max(0) as f64 / 1000.0;
            // Only when served: with metrics off nobody reads the registry, so W2 pays nothing
            // for it (the label lookup allocates per job).
            if shared.settings.metrics_addr.is_some() {
                shared
                    .metrics
                    .job_ended(&p.queue, &p.kind, decision.state(), ran);
            }
            let record_event =
                shared
                    .subscribers
                    .wants_end(&p.tenant, p.wants_events, decision.state());
            (
                Write::Finish {
                    id: p.id.clone(),
                    attempt: attempt as i32,
                    started_at: Some(started),
                    at: now,
                    decision,
                    progress: shared.persister.progress.take(&p.id),
                    record_event,
                },
                0.0,
            )
        }
    };
    shared.persister.send(Item {
        queue: p.lane().to_string(),
        write,
        release_score,
    });
}

async fn run_handler(shared: &Shared, claimed: &Claimed, token: CancellationToken) -> End {
    let p = &claimed.payload;
    let Some(kind) = shared.registry.get(&p.kind) else {
        // Checked before the attempt started; kept so the lookup cannot panic.
        return End::Released;
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
    );
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
                _ = tokio::time::sleep(shared.settings.cancel_grace) => {
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

/// Give back a job of a kind this worker does not serve: uncharged, nothing written to MongoDB
/// (its start was never sent), to run after a short jittered pause so that a worker serving the
/// kind claims it. Failing it instead would lose jobs once workers with different kinds share
/// a queue.
async fn defer(shared: &Shared, claimed: &Claimed) {
    let p = &claimed.payload;
    tracing::debug!(job = %p.id, kind = %p.kind, "kind not served here; deferring the job");
    let jitter = DEFER.mul_f64(rand::random::<f64>());
    let at = jobmill::job::now_ms() + (DEFER + jitter).as_millis() as i64;
    let items = [(p.id.clone(), at)];
    // Either way the job leaves the in-flight table: if the deferral failed (Redis
    // unreachable) the heartbeat must stop renewing its lease, so the lease expires and the
    // rescuer reruns the job (charging the attempt). Kept in the table, it would stay leased to
    // this worker, which never runs it: lost while this process lives.
    if let Err(e) = shared.queue.defer(p.lane(), &shared.worker, &items).await {
        tracing::warn!(job = %p.id, error = %e, "could not defer a job of a kind not served here; its lease will expire");
    }
    shared.inflight.remove(&p.id);
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
