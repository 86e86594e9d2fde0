//! jobmill worker: claims jobs from Redis, runs their handlers, records outcomes in MongoDB.
//! The library assembles a stock worker (the engine plus the webhooks and data features) around
//! the kinds a caller adds; `main.rs` is a thin binary over [`run`].
//!
//! # Layout
//! - [`run`]: the native worker: a [`Runtime`] with the claim loop and executor on top.
//! - [`Runtime`]: everything but claiming and running (features, persister, heartbeat,
//!   listener, maintenance), public so other front ends (the apalis backend) reuse it.
//! - [`settings`]: the worker's settings section and the whole config of a worker process.
//! - `fetcher`: claims jobs when handler slots are free.
//! - `executor`: runs one attempt (validation, timeout, panic, cancellation, grace period).
//! - `persister`: write-behind of outcomes: batched MongoDB writes, then Redis follow-ups.
//! - `heartbeat`: lease renewal and the worker registry, on its own thread.
//! - `listener`: pub/sub wake-ups and cancel signals.
//! - `maintenance`: scheduler, rescuer, reconciler.
//! - `inflight`: the jobs this process holds.
//! - `slots`: frees the limit slots of ended handlers early, in batches.
//! - `metrics`: the Prometheus endpoint on `JOBMILL_METRICS_ADDR` (off unless set).
//! - [`Control`]: operator commands (`quiet`, `stop`) and the state shown in the registry.
#![warn(missing_docs)]

mod backoff;
mod error;
mod executor;
mod fetcher;
mod heartbeat;
mod identity;
pub mod inflight;
mod listener;
mod maintenance;
mod metrics;
pub mod persister;
pub mod settings;
mod slots;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobmill::catalog::{self, Catalog};
use jobmill::client::{JobClient, Limits};
use jobmill::config::CoreSettings;
use jobmill::kind::Registry;
use jobmill::outbox::{self, Subscribers};
use jobmill::queue::RedisQueue;
pub use jobmill::state::RetryPolicy;
use jobmill::store::Store;
use jobmill_data::Data;
use jobmill_ops::metrics::WorkerMetrics;
use jobmill_ops::workers::WorkerState;
use jobmill_ops::Ops;
pub use jobmill_schedules::ScheduleSpec;
use jobmill_schedules::{ScheduleMetrics, Schedules};
use jobmill_webhooks::Webhooks;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

pub use error::WorkerError;
pub use identity::Identity;
pub use settings::{WorkerConfig, WorkerSettings};

use inflight::Inflight;
use persister::{Persister, Stats};

/// Everything the worker's tasks share.
pub(crate) struct Shared {
    identity: Identity,
    worker: String,
    core: CoreSettings,
    settings: WorkerSettings,
    policy: RetryPolicy,
    registry: Registry,
    store: Store,
    queue: RedisQueue,
    inflight: Arc<Inflight>,
    persister: Persister,
    stats: Arc<Stats>,
    /// Fires when the drain time is over: running handlers are stopped and released.
    hard_stop: CancellationToken,
    /// Who wants job events: asked by every write that ends a job.
    subscribers: Subscribers,
    /// Operator commands and the state the registry shows.
    control: Control,
    /// The operator plane (queue pauses restored by the reconciler).
    ops: Ops,
    /// This process's Prometheus metrics.
    metrics: WorkerMetrics,
    /// Frees the limit slots of ended handlers early (see [`slots`]).
    slots: slots::SlotReleaser,
}

/// What operators can tell a running worker, and what it is doing as a result.
pub(crate) struct Control {
    /// Cancelled to stop claiming (`quiet`, and the first step of every shutdown).
    stop_claiming: CancellationToken,
    /// Cancelled by an operator's `stop`: the worker drains and exits as on SIGTERM.
    stop: CancellationToken,
    /// Set once the drain began.
    stopping: AtomicBool,
}

impl Control {
    /// Stop claiming; running jobs finish and the process stays up.
    pub(crate) fn quiet(&self) {
        tracing::info!("quiet: no more claims");
        self.stop_claiming.cancel();
    }

    /// Drain and exit.
    pub(crate) fn stop(&self) {
        tracing::info!("stop requested by an operator");
        self.stop.cancel();
    }

    /// The state the registry shows.
    pub(crate) fn state(&self) -> WorkerState {
        if self.stopping.load(Ordering::Relaxed) {
            WorkerState::Stopping
        } else if self.stop_claiming.is_cancelled() {
            WorkerState::Quiet
        } else {
            WorkerState::Running
        }
    }
}

/// Run a stock worker until `shutdown` resolves: the engine's kinds, the webhooks and data
/// features, and the caller's own `kinds` on top. Then drain: stop claiming, let running jobs
/// finish for up to the shutdown timeout, release the rest back to their queues without
/// charging an attempt, and return once every outcome is recorded.
///
/// Store outages are not errors: the worker waits for Redis and MongoDB and carries on.
pub async fn run(
    config: WorkerConfig,
    kinds: Registry,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    run_declared(config, kinds, Vec::new(), shutdown).await
}

/// [`run`] with schedules declared in code next to the kinds (see
/// [`jobmill_schedules::declare`]): upserted at start with `managed_by: "code"`.
pub async fn run_declared(
    config: WorkerConfig,
    kinds: Registry,
    schedules: Vec<ScheduleSpec>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let store = Store::connect_settings(&config.core).await?;
    run_inner(config, kinds, schedules, store, shutdown).await
}

/// [`run`] with a store handle built by the caller (for example with MongoDB command
/// monitoring attached, as the benchmarks do).
pub async fn run_with_store(
    config: WorkerConfig,
    kinds: Registry,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    run_inner(config, kinds, Vec::new(), store, shutdown).await
}

async fn run_inner(
    config: WorkerConfig,
    kinds: Registry,
    schedules: Vec<ScheduleSpec>,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    tokio::pin!(shutdown);
    let runtime = tokio::select! {
        r = Runtime::start_declared(config, kinds, schedules, store) => r?,
        _ = &mut shutdown => return Ok(()),
    };
    let shared = runtime.shared.clone();
    let settings = shared.settings.clone();
    // `quiet` from an operator cancels the same token (see `Control`).
    let stop_claiming = shared.control.stop_claiming.clone();
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let wake = runtime.wake.clone();
    let fetcher = tokio::spawn(fetcher::fetch_loop(
        shared.clone(),
        slots.clone(),
        wake,
        stop_claiming.clone(),
    ));
    tracing::info!(
        worker = %shared.worker,
        queues = ?settings.queues.iter().map(|q| format!("{}:{}", q.name, q.weight)).collect::<Vec<_>>(),
        concurrency = settings.concurrency,
        kinds = ?shared.registry.names(),
        "worker started"
    );

    // SIGTERM (or the caller's trigger) and an operator's `stop` drain the same way.
    tokio::select! {
        _ = &mut shutdown => {}
        _ = shared.control.stop.cancelled() => {}
    }
    shared.control.stopping.store(true, Ordering::Relaxed);
    tracing::info!(running = shared.inflight.len(), timeout = ?settings.shutdown_timeout, "draining");
    stop_claiming.cancel();
    let _ = fetcher.await;
    runtime
        .drain(|| settings.concurrency - slots.available_permits())
        .await;
    Ok(())
}

/// Everything of a worker process except how it claims and runs handlers: the connections,
/// the kinds announced to the catalog, the in-flight table, the persister (batched guarded
/// writes), the lease heartbeat on its own thread (which also keeps this worker in the worker
/// registry), the maintenance loops (scheduler, rescuer, reconciler), the outbox loop and the
/// features' loops.
///
/// [`run`] puts the native claim loop and executor on top. Other front ends (the apalis
/// backend in `shared/apalis`) put their own: they claim with [`RedisQueue::claim`], insert
/// each claimed job into [`Runtime::inflight`] before running it (so the heartbeat renews its
/// lease), send its start and outcome through [`Runtime::persister`] (which removes it from
/// the table once recorded), and call [`Runtime::drain`] on shutdown.
pub struct Runtime {
    shared: Arc<Shared>,
    client: JobClient,
    wake: Arc<Notify>,
    stop_all: CancellationToken,
    beat: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Runtime {
    /// Connect (waiting for Redis), assemble the features, announce `kinds` (on top of the
    /// engine's and the features' own) and start the background tasks. Claims nothing.
    pub async fn start(
        config: WorkerConfig,
        kinds: Registry,
        store: Store,
    ) -> Result<Runtime, WorkerError> {
        Self::start_declared(config, kinds, Vec::new(), store).await
    }

    /// [`Runtime::start`], also upserting the `schedules` this binary declares next to its
    /// kinds (`managed_by: "code"`; a schedule an operator detached is left alone).
    pub async fn start_declared(
        config: WorkerConfig,
        kinds: Registry,
        schedules: Vec<ScheduleSpec>,
        store: Store,
    ) -> Result<Runtime, WorkerError> {
        let identity = Identity::new();
        let worker = identity.id.clone();
        let core = config.core.clone();
        let settings = config.worker.clone();
        let hard_stop = CancellationToken::new();
        let stop_all = CancellationToken::new();

        let queue = backoff::until_ok("redis connection", &stop_all, || {
            RedisQueue::connect(&core.redis, &core.key_prefix)
        })
        .await
        .expect("only cancelled by stop_all");
        // The shard map must agree before any job is placed or claimed. MongoDB may not be up
        // yet (retried); a disagreement with the stored map is final: the worker refuses to
        // start, naming the queue and both counts.
        backoff::until_ok("shard map", &stop_all, || async {
            match jobmill::shards::join_settings(&store, &core, &queue).await {
                Err(e) if e.is_unavailable() => Err(e),
                other => Ok(other),
            }
        })
        .await
        .expect("only cancelled by stop_all")?;

        // Assemble the features. The client needs the webhooks' submit hook, the data feature
        // needs the client, and the catalog learns the kinds last.
        let catalog = Catalog::new(&Registry::new());
        // One metrics registry: the schedules feature registers its series in it, and the
        // webhooks feature reports delivery statuses to it.
        let mut schedule_metrics = None;
        let worker_metrics = WorkerMetrics::new_with(|r| {
            schedule_metrics = Some(ScheduleMetrics::register(r));
        });
        let webhooks = Webhooks::new(&store, &queue, core.redis.clone(), config.webhooks)
            .observe_deliveries(Arc::new(metrics::DeliveryCounter(worker_metrics.clone())));
        let client = JobClient::new(
            store.clone(),
            queue.clone(),
            catalog.clone(),
            Limits::from_settings(&core),
            vec![webhooks.submit_hook()],
        );
        let data = Data::new(&client, config.data);
        let ops = Ops::new(&store, &queue);
        let sched = Schedules::new(
            &client,
            config.schedules,
            vec![webhooks.submit_hook()],
            schedule_metrics.unwrap_or_default(),
        );
        let mut registry = Registry::builtin();
        webhooks.register_kinds(&mut registry);
        data.register_kinds(&mut registry);
        ops.register_kinds(&mut registry, &client);
        registry.extend(&kinds);
        catalog.set_local(&registry);
        let subscribers = Subscribers::new(vec![webhooks.subscriber()]);

        {
            let (store, webhooks, data, ops, sched, stop) = (
                store.clone(),
                webhooks.clone(),
                data.clone(),
                ops.clone(),
                sched.clone(),
                stop_all.clone(),
            );
            tokio::spawn(async move {
                backoff::until_ok("create indexes", &stop, || async {
                    store.ensure_indexes().await?;
                    webhooks.ensure_indexes().await?;
                    data.ensure_indexes().await?;
                    ops.ensure_indexes().await?;
                    sched.ensure_indexes().await
                })
                .await;
                // After the indexes: the unique (tenant, name) index is what keeps workers
                // starting together from inserting a declared schedule twice.
                if !schedules.is_empty() {
                    backoff::until_ok("declare schedules", &stop, || async {
                        match sched.declare(&schedules).await {
                            Err(e @ (jobmill::Error::InvalidJob { .. } | jobmill::Error::InvalidArgs { .. })) => {
                                tracing::error!(error = %e, "a schedule declared in code is invalid; declarations not applied");
                                Ok(())
                            }
                            other => other.map(|_| ()),
                        }
                    })
                    .await;
                }
            });
        }
        {
            // Announce the kinds this worker serves, so any API accepts them from now on.
            let (store, queue, registry, worker, stop) = (
                store.clone(),
                queue.clone(),
                registry.clone(),
                worker.clone(),
                stop_all.clone(),
            );
            tokio::spawn(async move {
                backoff::until_ok("announce kinds", &stop, || {
                    catalog::announce(&store, &registry, &worker)
                })
                .await;
                let _ = queue.publish(&queue.keys().kinds_channel(), &worker).await;
            });
        }

        let inflight = Arc::new(Inflight::default());
        let stats = Arc::new(Stats::default());
        let persister = persister::spawn(Arc::new(persister::Context {
            store: store.clone(),
            queue: queue.clone(),
            worker: worker.clone(),
            inflight: inflight.clone(),
            stats: stats.clone(),
            stop: stop_all.clone(),
            subscribers: subscribers.clone(),
            hooks: vec![ops.outcome_hook()],
            metrics: worker_metrics.clone(),
            split: settings.outcome_split,
        }));
        let shared = Arc::new(Shared {
            identity,
            worker: worker.clone(),
            policy: RetryPolicy {
                base: core.retry_base,
                max: core.retry_max,
            },
            core,
            settings,
            registry,
            store,
            queue,
            inflight,
            persister,
            stats,
            hard_stop,
            subscribers: subscribers.clone(),
            control: Control {
                stop_claiming: CancellationToken::new(),
                stop: CancellationToken::new(),
                stopping: AtomicBool::new(false),
            },
            ops,
            metrics: worker_metrics,
            slots: slots::SlotReleaser::new(),
        });
        if let Some(addr) = shared.settings.metrics_addr {
            tokio::spawn(metrics::serve(addr, shared.clone(), stop_all.clone()));
        }

        let schedule = Arc::new(Notify::new());
        let wake = Arc::new(Notify::new());
        tokio::spawn(listener::listen(
            shared.clone(),
            wake.clone(),
            schedule.clone(),
            stop_all.clone(),
        ));
        let beat =
            heartbeat::spawn(shared.clone(), stop_all.clone()).map_err(WorkerError::Heartbeat)?;
        tokio::spawn(maintenance::scheduler(
            shared.clone(),
            schedule,
            stop_all.clone(),
        ));
        tokio::spawn(maintenance::rescuer(shared.clone(), stop_all.clone()));
        tokio::spawn(slots::run(shared.clone(), stop_all.clone()));
        tokio::spawn(maintenance::reconciler(shared.clone(), stop_all.clone()));
        tokio::spawn(maintenance::retention(shared.clone(), stop_all.clone()));
        tokio::spawn(outbox::run(
            client.clone(),
            subscribers,
            worker.clone(),
            stop_all.clone(),
        ));
        for feature_loop in webhooks.loops(stop_all.clone()) {
            tokio::spawn(feature_loop);
        }
        for feature_loop in data.loops(stop_all.clone()) {
            tokio::spawn(feature_loop);
        }
        for feature_loop in sched.loops(&worker, stop_all.clone()) {
            tokio::spawn(feature_loop);
        }
        Ok(Runtime {
            shared,
            client,
            wake,
            stop_all,
            beat: std::sync::Mutex::new(Some(beat)),
        })
    }

    /// This worker's id: the owner of its leases and its key in the worker registry.
    pub fn worker(&self) -> &str {
        &self.shared.worker
    }

    /// The engine's settings.
    pub fn core(&self) -> &CoreSettings {
        &self.shared.core
    }

    /// The worker's settings (queues, concurrency, drain and cancel times).
    pub fn settings(&self) -> &WorkerSettings {
        &self.shared.settings
    }

    /// Retry backoff.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    /// Every kind this process serves.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// The Redis queues.
    pub fn queue(&self) -> &RedisQueue {
        &self.shared.queue
    }

    /// The MongoDB store.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The submission path (MongoDB first, then Redis), with the features' submit hooks.
    pub fn client(&self) -> &JobClient {
        &self.client
    }

    /// The jobs this process holds; the heartbeat renews their leases.
    pub fn inflight(&self) -> &Arc<Inflight> {
        &self.shared.inflight
    }

    /// Batched guarded writes; a job leaves [`Runtime::inflight`] once its outcome is recorded.
    pub fn persister(&self) -> &Persister {
        &self.shared.persister
    }

    /// Who wants job events (ask before writing an outcome).
    pub fn subscribers(&self) -> &Subscribers {
        &self.shared.subscribers
    }

    /// Notified when jobs may have become ready on this worker's queues (pub/sub), so a claim
    /// loop can sleep between claims without polling fast.
    pub fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }

    /// Fires when the drain time is over: stop running handlers and release their jobs.
    pub fn hard_stop(&self) -> &CancellationToken {
        &self.shared.hard_stop
    }

    /// Drain after the caller stopped claiming: let running handlers (`running()` of them)
    /// finish within the shutdown timeout, then fire [`Runtime::hard_stop`], wait until every
    /// outcome and release is recorded (at most 15 s more) and stop the background tasks.
    pub async fn drain(&self, running: impl Fn() -> usize) {
        let settings = &self.shared.settings;
        let inflight = &self.shared.inflight;
        let deadline = Instant::now() + settings.shutdown_timeout;
        while running() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unfinished = running();
        if unfinished > 0 {
            tracing::info!(
                unfinished,
                "drain time over; releasing the rest without charging an attempt"
            );
        }
        self.shared.hard_stop.cancel();

        // Wait until every outcome and release is recorded. If a store stays down past this,
        // the leases simply expire and other workers rerun the jobs.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !inflight.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !inflight.is_empty() {
            tracing::warn!(
                left = inflight.len(),
                "stopping with unrecorded outcomes; their leases will expire and the jobs rerun"
            );
        }
        self.stop_all.cancel();
        // The persister's last act is its hooks' final writes (bounded there, and here).
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.shared.persister.stopped()).await;
        let beat = self.beat.lock().expect("beat lock").take();
        if let Some(beat) = beat {
            let _ = tokio::task::spawn_blocking(move || beat.join()).await;
        }
        tracing::info!(worker = %self.shared.worker, "worker stopped");
    }
}
