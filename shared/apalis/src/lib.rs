//! jobmill as a backend for [apalis](https://docs.rs/apalis) 1.0: apalis handlers and tower
//! layers run on jobmill queues, with jobmill's leases, guarded writes, recovery, HTTP API,
//! webhooks and kinds catalog.
//!
//! # Layout
//! - [`Jobmill`]: one per process: the worker [`Runtime`](jobmill_worker::Runtime) (persister,
//!   heartbeat thread, listener, maintenance, outbox) plus a claim loop that routes jobs to
//!   the backend of their kind; drains on shutdown like the native worker.
//! - [`kinds`]: the jobmill kind names apalis handlers serve, announced with their schemas.
//! - [`backend`]: [`JobmillBackend`], apalis-core's `Backend`/`BackendConfig`/`TaskSink`.
//! - [`board`]: apalis' board/inspection traits (queues, workers, jobs, metrics).
//! - [`lease`]: the claimed job ([`JobLease`]) and the backend layer that records outcomes.
//! - `fetcher`: the claim loop.
//! - [`error`]: the crate's error.
//!
//! # Pinned version
//! apalis-core `=1.0.0` (feature `task-context`). Traits used: `backend::Backend`,
//! `backend::BackendConfig` (`Kind = finalize::Ephemeral`, `Layer = LeaseLayer`),
//! `backend::TaskSink` (apalis' blanket impl over `futures::Sink<Task<Args>>`),
//! `task::metadata::Metadata` ([`JobmillMeta`]), `task::context::TaskContext` for cancellation.
//! The board traits of `backend::expose` (`ListQueues`, `ListWorkers`, `ListTasks`,
//! `ListAllTasks`, `Metrics`, with `WireFormatBackend` for the JSON wire format) are
//! implemented in [`board`], so `JobmillBackend` satisfies apalis' `Expose` bound.
//!
//! # Outcomes
//! What a handler's result (after the user's layers) becomes:
//!
//! | apalis result | jobmill outcome |
//! |---|---|
//! | `Ok(value)` | `succeeded`, `value` (serialized to JSON) is the result |
//! | `Err` holding [`apalis_core::error::AbortError`] | `failed` for good, no further attempt |
//! | `Err` holding [`apalis_core::error::RetryAfterError`] | `retrying` after its `get_duration()` (or `failed` if attempts are used up) |
//! | any other `Err` (including `tower::timeout::error::Elapsed` from `TimeoutLayer`) | `retrying` with jobmill's backoff (or `failed`) |
//! | panic (the handler runs on a task of its own) | failed attempt: retried with backoff (or `failed`), message kept |
//! | the job's own `timeout_ms` passed | timed-out attempt: retried (or `failed`) |
//! | anything but success after a cancel request | `cancelled` |
//!
//! "Holding" means the error or one of its `source()`s. A cancel request reaches the handler
//! through apalis' own `TaskContext` (it turns cancelled; apalis then ends the task with an
//! `AbortError` at its next poll, and a handler can await `TaskContext::executed()`); a handler
//! that does not stop within `JOBMILL_CANCEL_GRACE` is abandoned and the job ends `cancelled`,
//! as on the native worker.
//!
//! # Leases
//! A claimed job is in the runtime's in-flight table until its outcome is in MongoDB and
//! Redis; the heartbeat, on a thread of its own, renews its lease meanwhile, so a handler that
//! blocks its thread does not lose it. If the process dies, the leases expire and any worker's
//! rescuer reruns the jobs.
#![warn(missing_docs)]

pub mod backend;
pub mod board;
pub mod error;
mod fetcher;
pub mod kinds;
pub mod lease;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use jobmill_worker::{Runtime, WorkerConfig};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

pub use apalis_core;
pub use backend::{JobmillBackend, JobmillMeta};
pub use error::Error;
pub use kinds::{Kind, Kinds};
pub use lease::{outcome_of, JobLease, LeaseLayer};

use fetcher::Routes;

/// One apalis process on jobmill: make backends with [`Jobmill::backend`], build apalis
/// workers on them, and hand the workers to [`Jobmill::run`].
pub struct Jobmill {
    runtime: Arc<Runtime>,
    routes: Routes,
    slots: Arc<Semaphore>,
    stop_claiming: CancellationToken,
    fetcher: tokio::task::JoinHandle<()>,
    tenant: String,
}

impl Jobmill {
    /// Connect, announce `kinds` to the catalog and start claiming from the configured queues
    /// (`JOBMILL_QUEUES`), with `JOBMILL_CONCURRENCY` handler slots for the whole process.
    /// Jobs pushed from apalis belong to the tenant `default` unless [`Jobmill::tenant`] says.
    pub async fn start(config: WorkerConfig, kinds: Kinds) -> Result<Jobmill, Error> {
        let store = jobmill::store::Store::connect(
            config.core.mongodb_uri.expose(),
            &config.core.mongodb_db,
            config.core.retention,
        )
        .await?;
        Self::start_with_store(config, kinds, store).await
    }

    /// [`Jobmill::start`] with a store handle built by the caller (for example with MongoDB
    /// command monitoring attached, as the benchmarks do).
    pub async fn start_with_store(
        config: WorkerConfig,
        kinds: Kinds,
        store: jobmill::store::Store,
    ) -> Result<Jobmill, Error> {
        let runtime = Arc::new(Runtime::start(config, kinds.registry, store).await?);
        let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
        let slots = Arc::new(Semaphore::new(runtime.settings().concurrency));
        let stop_claiming = CancellationToken::new();
        let fetcher = tokio::spawn(fetcher::fetch_loop(
            runtime.clone(),
            routes.clone(),
            slots.clone(),
            stop_claiming.clone(),
        ));
        tracing::info!(worker = %runtime.worker(), kinds = ?runtime.registry().names(), "apalis worker started");
        Ok(Jobmill {
            runtime,
            routes,
            slots,
            stop_claiming,
            fetcher,
            tenant: "default".into(),
        })
    }

    /// The tenant jobs pushed from this process belong to.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// The worker runtime (store, queues, settings, worker id).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The backend that consumes (and can push) jobs of `kind`. One consuming backend per
    /// kind: a second call takes the kind's jobs over from the first.
    pub fn backend<Args>(&self, kind: Kind<Args>) -> JobmillBackend<Args>
    where
        Args: DeserializeOwned + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .expect("routes lock")
            .insert(kind.name, tx);
        JobmillBackend::new(self.runtime.clone(), kind, self.tenant.clone(), Some(rx))
    }

    /// A push-only handle for `kind` (it consumes nothing).
    pub fn sink<Args>(&self, kind: Kind<Args>) -> JobmillBackend<Args> {
        JobmillBackend::new(self.runtime.clone(), kind, self.tenant.clone(), None)
    }

    /// Run `workers` (apalis workers' `run()` futures, joined) until `shutdown` resolves, then
    /// drain like the native worker: stop claiming, let running handlers finish within
    /// `JOBMILL_SHUTDOWN_TIMEOUT`, give the rest back uncharged, and return once every outcome
    /// is recorded.
    pub async fn run<W>(self, workers: W, shutdown: impl Future<Output = ()>) -> Result<(), Error>
    where
        W: Future + Send + 'static,
        W::Output: Send + 'static,
    {
        let workers = tokio::spawn(workers);
        shutdown.await;
        tracing::info!(running = self.runtime.inflight().len(), "draining");
        self.stop_claiming.cancel();
        let _ = self.fetcher.await;
        // Closing the channels ends each backend's stream once its routed jobs are handed
        // over; apalis then finishes the running tasks and its worker returns.
        self.routes.lock().expect("routes lock").clear();
        // Running handlers get the drain time; then the rest are given back uncharged. The
        // workers keep being polled meanwhile, so their outcomes and releases are recorded.
        let concurrency = self.runtime.settings().concurrency;
        let deadline = std::time::Instant::now() + self.runtime.settings().shutdown_timeout;
        let slots = self.slots.clone();
        self.runtime
            .drain(move || {
                if std::time::Instant::now() >= deadline {
                    0
                } else {
                    concurrency - slots.available_permits()
                }
            })
            .await;
        workers.abort();
        Ok(())
    }
}
