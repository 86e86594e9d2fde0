//! [`JobmillBackend`]: apalis-core 1.0's `Backend`, `BackendConfig` and (through `Sink`)
//! `TaskSink` over jobmill.
//!
//! Consuming: `poll_next` yields the jobs the process's claim loop routed to this kind, as
//! apalis tasks whose id is the jobmill job id and whose data carries the [`JobLease`].
//! Pushing: tasks go through jobmill's submission path (MongoDB first, then Redis), so a
//! pushed job is a jobmill job like any other (HTTP status, webhooks, operator views).

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::metadata::{Metadata, MetadataStore};
use apalis_core::task::task_id::TaskId;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use futures::FutureExt;
use jobmill::catalog::Access;
use jobmill::{JobClient, NewJob, Submitted};
use jobmill_worker::Runtime;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::kinds::Kind;
use crate::lease::{JobLease, LeaseLayer};

/// jobmill-only submission fields an apalis task can carry as metadata (apalis' own context
/// already has the idempotency key, queue, priority, run time and attempts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobmillMeta {
    /// Do not run before this many ms from now.
    pub delay_ms: Option<u64>,
    /// Per-attempt timeout (default: 300 s).
    pub timeout_ms: Option<u64>,
}

const DELAY_KEY: &str = "jobmill.delay_ms";
const TIMEOUT_KEY: &str = "jobmill.timeout_ms";

impl Metadata for JobmillMeta {
    type Error = std::num::ParseIntError;

    fn extract(store: &MetadataStore) -> Result<Self, Self::Error> {
        let read = |k: &str| store.get(k).map(str::parse::<u64>).transpose();
        Ok(JobmillMeta {
            delay_ms: read(DELAY_KEY)?,
            timeout_ms: read(TIMEOUT_KEY)?,
        })
    }

    fn inject(&self, store: &mut MetadataStore) -> Result<(), Self::Error> {
        if let Some(d) = self.delay_ms {
            store.replace(DELAY_KEY, d.to_string());
        }
        if let Some(t) = self.timeout_ms {
            store.replace(TIMEOUT_KEY, t.to_string());
        }
        Ok(())
    }
}

/// An apalis backend over jobmill for one kind, made by [`crate::Jobmill::backend`] (to
/// consume and push) or [`crate::Jobmill::sink`] (to push only).
pub struct JobmillBackend<Args> {
    runtime: Arc<Runtime>,
    kind: &'static str,
    tenant: String,
    rx: Option<mpsc::UnboundedReceiver<JobLease>>,
    buffer: Vec<NewJob>,
    /// The submission in progress. In a mutex only so the backend is `Sync` (apalis' board
    /// traits need that); it is always reached through `&mut self`, never locked.
    flushing: std::sync::Mutex<Option<BoxFuture<'static, Result<(), Error>>>>,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> std::fmt::Debug for JobmillBackend<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobmillBackend")
            .field("kind", &self.kind)
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl<Args> JobmillBackend<Args> {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        kind: Kind<Args>,
        tenant: String,
        rx: Option<mpsc::UnboundedReceiver<JobLease>>,
    ) -> Self {
        JobmillBackend {
            runtime,
            kind: kind.name,
            tenant,
            rx,
            buffer: Vec::new(),
            flushing: std::sync::Mutex::new(None),
            _args: PhantomData,
        }
    }

    /// The tenant pushed jobs belong to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The jobmill kind this backend consumes and pushes.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The worker runtime behind this backend.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let flushing = self.flushing.get_mut().expect("flushing lock");
            if let Some(f) = flushing.as_mut() {
                let r = futures::ready!(f.poll_unpin(cx));
                *flushing = None;
                r?;
            }
            if self.buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let jobs = std::mem::take(&mut self.buffer);
            let (client, tenant) = (self.runtime.client().clone(), self.tenant.clone());
            let kind = self.kind;
            *self.flushing.get_mut().expect("flushing lock") = Some(
                async move {
                    know_kind(&client, kind).await?;
                    client.submit_batch(&tenant, jobs).await?;
                    Ok(())
                }
                .boxed(),
            );
        }
    }
}

impl<Args: Serialize> JobmillBackend<Args> {
    /// The jobmill submission of an apalis task.
    pub fn new_job(&self, task: &Task<Args>) -> Result<NewJob, Error> {
        let meta = JobmillMeta::extract(task.metadata()).unwrap_or_default();
        let run_at = match task.run_at() {
            Some(secs) => {
                Some(chrono::DateTime::from_timestamp(secs as i64, 0).ok_or(Error::RunAt(secs))?)
            }
            None => None,
        };
        Ok(NewJob {
            kind: self.kind.to_string(),
            args: serde_json::to_value(&task.args)?,
            queue: task.queue().map(|q| q.to_string()),
            priority: task.priority().map(|p| p.min(i32::MAX as usize) as i32),
            run_at,
            delay_ms: meta.delay_ms,
            max_attempts: task.max_attempts().map(|m| m.min(u32::MAX as usize) as u32),
            timeout_ms: meta.timeout_ms,
            idempotency_key: task.idempotency_key().map(str::to_string),
            shard_key: None,
            ext: Default::default(),
        })
    }

    /// Submit one task now and say which job it became (an idempotency key used before
    /// returns the original job with `created == false`).
    pub async fn submit(&self, task: Task<Args>) -> Result<Submitted, Error> {
        let new = self.new_job(&task)?;
        let client = self.runtime.client();
        know_kind(client, self.kind).await?;
        Ok(client.submit(&self.tenant, new).await?)
    }
}

/// Make sure the client's catalog knows `kind` before submitting: a kind served by another
/// process is only known once the catalog was reloaded from MongoDB.
async fn know_kind(client: &JobClient, kind: &str) -> Result<(), Error> {
    if client.catalog().lookup(kind, Access::Public).is_none() {
        client.catalog().refresh(client.store()).await?;
    }
    Ok(())
}

impl<Args> Backend for JobmillBackend<Args>
where
    Args: DeserializeOwned + Send + 'static,
{
    type Task = Task<Args>;
    type Error = Error;

    fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<Args>, Error>>> {
        let Some(rx) = self.rx.as_mut() else {
            // A push-only handle: nothing to consume.
            return Poll::Ready(None);
        };
        loop {
            let Some(lease) = futures::ready!(rx.poll_recv(cx)) else {
                // The claim loop stopped (draining): the worker finishes what it runs.
                return Poll::Ready(None);
            };
            let c = &lease.0.claimed;
            let args = match serde_json::from_str::<Args>(&c.payload.args) {
                Ok(args) => args,
                Err(e) => {
                    // No attempt can fix args that do not fit the handler's type.
                    let started = lease.0.start();
                    lease.0.finish(
                        started,
                        jobmill::state::AttemptOutcome::FailedPermanently(format!(
                            "args do not fit kind {}: {e}",
                            self.kind
                        )),
                    );
                    continue;
                }
            };
            let task = TaskBuilder::new(args)
                .task_id(TaskId::String(c.payload.id.clone()))
                // apalis counts the attempt when it first polls the task.
                .attempt(c.attempt.saturating_sub(1) as usize)
                .max_attempts(c.payload.max_attempts.max(1) as usize)
                .priority(c.payload.priority.max(0) as usize)
                .queue(c.payload.queue.clone().into())
                .lock_by(Some(self.runtime.worker().to_string()))
                .data(lease.clone())
                .build();
            return Poll::Ready(Some(Ok(task)));
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), Error>> {
        self.poll_flush_inner(cx)
    }
}

impl<Args> BackendConfig for JobmillBackend<Args>
where
    Args: DeserializeOwned + Send + 'static,
{
    type Args = Args;
    type Id = TaskId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = LeaseLayer;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> LeaseLayer {
        LeaseLayer
    }
}

/// Pushing: `TaskSink::push`/`push_task` (apalis-core's blanket impl for `Ephemeral`
/// backends) lands here. Tasks are buffered and submitted in one batch on flush.
impl<Args> futures::Sink<Task<Args>> for JobmillBackend<Args>
where
    Args: Serialize,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.buffer.len() >= jobmill::store::WRITE_BATCH {
            return this.poll_flush_inner(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, task: Task<Args>) -> Result<(), Error> {
        let this = self.get_mut();
        let job = this.new_job(&task)?;
        this.buffer.push(job);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_inner(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_inner(cx)
    }
}

impl<Args> Unpin for JobmillBackend<Args> {}
