//! One claimed jobmill job on its way through apalis, and the backend layer that runs it.
//!
//! [`JobLease`] travels in the apalis task's data. [`LeaseLayer`] is the backend's middleware
//! (apalis puts it outside the user's layers, so it sees what they return): it records the
//! start, runs the rest of the stack (user layers, apalis' lifecycle, the handler) on a task
//! of its own, enforces the job's timeout, carries a cancel request to the handler, maps the
//! result onto a jobmill outcome and queues the guarded write. The lease itself is renewed by
//! the runtime's heartbeat thread for as long as the job is in the in-flight table, that is
//! until its outcome is recorded in MongoDB and Redis, however long the handler blocks.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::error::{AbortError, BoxDynError, RetryAfterError};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use jobmill::job::ready_score;
use jobmill::queue::Claimed;
use jobmill::state::{decide, AttemptOutcome};
use jobmill::store::Write;
use jobmill_worker::inflight::StopReason;
use jobmill_worker::persister::Item;
use jobmill_worker::Runtime;
use mongodb::bson::DateTime;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// Where a lease is in its life (so a lease dropped unrun gives its job back).
const CLAIMED: u8 = 0;
const STARTED: u8 = 1;
const RECORDED: u8 = 2;

/// A claimed job handed to apalis: cheap to clone (apalis task data must be `Clone`).
#[derive(Clone)]
pub struct JobLease(pub(crate) Arc<LeaseInner>);

pub(crate) struct LeaseInner {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) claimed: Claimed,
    /// Fires on a cancel request (heartbeat or pub/sub) for this job.
    pub(crate) token: CancellationToken,
    /// The process-wide handler slot, freed when the handler is done.
    pub(crate) permit: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    pub(crate) phase: AtomicU8,
}

impl JobLease {
    /// The jobmill job id (also the apalis task id).
    pub fn id(&self) -> &str {
        &self.0.claimed.payload.id
    }

    /// This attempt's number (1 for the first run).
    pub fn attempt(&self) -> u32 {
        self.0.claimed.attempt
    }

    /// The job's queue.
    pub fn queue(&self) -> &str {
        &self.0.claimed.payload.queue
    }

    /// The job's owner.
    pub fn tenant(&self) -> &str {
        &self.0.claimed.payload.tenant
    }

    /// Whether a cancel was requested for this job.
    pub fn is_cancelled(&self) -> bool {
        self.0.token.is_cancelled()
    }

    /// Resolves when a cancel is requested for this job: a handler that takes the lease as
    /// `Data`-like input may select on it to stop early.
    pub async fn cancelled(&self) {
        self.0.token.cancelled().await
    }
}

impl LeaseInner {
    fn send(&self, write: Write, release_score: f64) {
        self.runtime.persister().send(Item {
            queue: self.claimed.payload.lane().to_string(),
            write,
            release_score,
        });
    }

    fn free_slot(&self) {
        self.permit.lock().expect("permit lock").take();
    }

    /// Record the start of the attempt (guarded: refused if the job moved on meanwhile).
    pub(crate) fn start(&self) -> DateTime {
        let p = &self.claimed.payload;
        let at = DateTime::now();
        self.runtime
            .persister()
            .progress
            .track(&p.id, &p.queue, &p.tenant);
        self.phase.store(STARTED, Ordering::SeqCst);
        self.send(
            Write::Start {
                id: p.id.clone(),
                attempt: self.claimed.attempt as i32,
                at,
            },
            0.0,
        );
        at
    }

    /// Queue the outcome's write (batched, guarded; the job leaves the in-flight table once
    /// MongoDB and Redis have it).
    pub(crate) fn finish(&self, started: DateTime, outcome: AttemptOutcome) {
        let p = &self.claimed.payload;
        let attempt = self.claimed.attempt;
        self.free_slot();
        if let AttemptOutcome::Panicked(msg) = &outcome {
            tracing::warn!(job = %p.id, kind = %p.kind, attempt, "apalis handler panicked: {msg}");
        }
        // After a cancel request every end but success is `cancelled` (the engine's rule).
        let cancel_requested = self.runtime.inflight().reason(&p.id) == Some(StopReason::Cancelled);
        let decision = decide(
            outcome,
            attempt,
            p.max_attempts.max(1) as u32,
            self.runtime.policy(),
            rand::random::<f64>(),
            cancel_requested,
        );
        let record_event =
            self.runtime
                .subscribers()
                .wants_end(&p.tenant, p.wants_events, decision.state());
        self.phase.store(RECORDED, Ordering::SeqCst);
        self.send(
            Write::Finish {
                id: p.id.clone(),
                attempt: attempt as i32,
                started_at: Some(started),
                at: DateTime::now(),
                decision,
                progress: self.runtime.persister().progress.take(&p.id),
                record_event,
            },
            0.0,
        );
    }

    /// Give the job back uncharged (drain time over).
    fn release(&self) {
        let p = &self.claimed.payload;
        self.free_slot();
        self.phase.store(RECORDED, Ordering::SeqCst);
        self.send(
            Write::Release {
                id: p.id.clone(),
                attempt: self.claimed.attempt as i32,
            },
            ready_score(p.priority, jobmill::job::now_ms()),
        );
    }
}

impl Drop for LeaseInner {
    /// A lease apalis dropped without running it (its worker stopped first) must not strand
    /// the job until the rescuer charges it an attempt: give it back uncharged.
    fn drop(&mut self) {
        match self.phase.load(Ordering::SeqCst) {
            STARTED => self.release(),
            CLAIMED => {
                let (rt, p) = (self.runtime.clone(), self.claimed.payload.clone());
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let items = [(p.id.clone(), jobmill::job::now_ms())];
                        // Out of the in-flight table either way: with Redis unreachable the
                        // heartbeat must stop renewing the lease, so it expires and the
                        // rescuer reruns the job; kept, it would stay leased and never run.
                        let _ = rt.queue().defer(p.lane(), rt.worker(), &items).await;
                        rt.inflight().remove(&p.id);
                    });
                }
            }
            _ => {}
        }
    }
}

/// The backend's middleware: see the module docs.
#[derive(Clone, Debug, Default)]
pub struct LeaseLayer;

impl<S> tower::Layer<S> for LeaseLayer {
    type Service = LeaseService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LeaseService { inner }
    }
}

/// The service [`LeaseLayer`] builds.
#[derive(Clone, Debug)]
pub struct LeaseService<S> {
    inner: S,
}

impl<S, Args> tower::Service<Task<Args>> for LeaseService<S>
where
    S: tower::Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Response: Serialize + Send + 'static,
    S::Error: Into<BoxDynError> + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let lease = task.data().get::<JobLease>().cloned();
        let worker = task.data().get::<WorkerContext>().cloned();
        let fut = self.inner.call(task);
        match lease {
            Some(lease) => Box::pin(run(lease, worker, fut)),
            // Not a jobmill task (cannot happen with this backend): pass through.
            None => Box::pin(async move { fut.await.map_err(Into::into) }),
        }
    }
}

/// How the attempt ended before mapping.
enum Ended<R> {
    Done(Result<R, BoxDynError>),
    Panicked(String),
    Abandoned(&'static str),
    TimedOut(Duration),
    Released,
}

async fn run<F, R, E>(
    lease: JobLease,
    worker: Option<WorkerContext>,
    fut: F,
) -> Result<R, BoxDynError>
where
    F: Future<Output = Result<R, E>> + Send + 'static,
    R: Serialize + Send + 'static,
    E: Into<BoxDynError> + Send + 'static,
{
    let inner = &lease.0;
    let started = inner.start();
    let p = &inner.claimed.payload;
    // A task of its own: a panic becomes a JoinError instead of unwinding through the apalis
    // worker, and a handler that blocks its thread does not stall the claim loop or others.
    let mut handle = tokio::spawn(async move { fut.await.map_err(Into::into) });
    let timeout = Duration::from_millis(p.timeout_ms.max(1) as u64);
    let hard_stop = inner.runtime.hard_stop().clone();
    let grace = inner.runtime.settings().cancel_grace;
    let ended = tokio::select! {
        biased;
        r = &mut handle => joined(r),
        _ = hard_stop.cancelled() => { handle.abort(); Ended::Released }
        _ = inner.token.cancelled() => {
            // Reach the handler through apalis' own cancellation: its TaskContext turns
            // cancelled (a handler may await `TaskContext::executed()` or check
            // `is_cancelled()`), and apalis ends the task with an AbortError at its next poll.
            if let Some(w) = &worker {
                if let Ok(tc) = w.get_task(&p.id) {
                    let _ = tc.cancel();
                }
            }
            tokio::select! {
                biased;
                r = &mut handle => joined(r),
                _ = hard_stop.cancelled() => { handle.abort(); Ended::Released }
                _ = tokio::time::sleep(grace) => {
                    handle.abort();
                    Ended::Abandoned(match inner.runtime.inflight().reason(&p.id) {
                        Some(StopReason::Stale) => "the job moved on while this attempt started",
                        _ => "the handler did not stop within the cancel grace period; abandoned",
                    })
                }
            }
        }
        _ = tokio::time::sleep(timeout) => { handle.abort(); Ended::TimedOut(timeout) }
    };
    let (outcome, reply) = match ended {
        Ended::Released => {
            inner.release();
            return Err("worker shutting down: job released uncharged".into());
        }
        Ended::Done(Ok(value)) => {
            let json = serde_json::to_value(&value).unwrap_or(serde_json::Value::Null);
            (AttemptOutcome::Succeeded(json), Ok(value))
        }
        Ended::Done(Err(e)) => (outcome_of(&e), Err(e)),
        Ended::Panicked(msg) => (
            AttemptOutcome::Panicked(msg.clone()),
            Err(format!("handler panicked: {msg}").into()),
        ),
        Ended::Abandoned(why) => (AttemptOutcome::Cancelled(why.into()), Err(why.into())),
        Ended::TimedOut(t) => (
            AttemptOutcome::TimedOut(t),
            Err(format!("timed out after {t:?}").into()),
        ),
    };
    inner.finish(started, outcome);
    reply
}

fn joined<R>(r: Result<Result<R, BoxDynError>, tokio::task::JoinError>) -> Ended<R> {
    match r {
        Ok(done) => Ended::Done(done),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            Ended::Panicked(msg)
        }
        Err(_) => Ended::Abandoned("the handler task was aborted"),
    }
}

/// The outcome table for errors (see the crate docs): apalis' [`AbortError`] fails for good,
/// [`RetryAfterError`] retries after its delay, anything else retries with backoff. The error
/// and its sources are searched, so a layer wrapping the handler's error does not hide it.
pub fn outcome_of(e: &BoxDynError) -> AttemptOutcome {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cur {
        if let Some(a) = err.downcast_ref::<AbortError>() {
            return AttemptOutcome::FailedPermanently(a.to_string());
        }
        if let Some(r) = err.downcast_ref::<RetryAfterError>() {
            return AttemptOutcome::Retry {
                error: r.to_string(),
                after: Some(r.get_duration()),
            };
        }
        cur = err.source();
    }
    AttemptOutcome::Retry {
        error: e.to_string(),
        after: None,
    }
}
