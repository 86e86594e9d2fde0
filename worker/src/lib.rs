//! jobmill worker: claims jobs from Redis, runs their handlers, records outcomes in MongoDB.
//!
//! # Layout
//! - [`run`]: wires everything together and drains on shutdown.
//! - `fetcher`: claims jobs when handler slots are free.
//! - `executor`: runs one attempt (timeout, panic, cancellation, grace period).
//! - `persister`: write-behind of outcomes: batched MongoDB writes, then Redis follow-ups.
//! - `heartbeat`: lease renewal on its own thread.
//! - `listener`: pub/sub wake-ups and cancel signals.
//! - `maintenance`: scheduler, rescuer, reconciler.
//! - `dispatcher`: turns webhook outbox entries into deliveries and delivery jobs.
//! - `inflight`: the jobs this process holds.
#![warn(missing_docs)]

mod backoff;
mod dispatcher;
mod error;
mod executor;
mod fetcher;
mod heartbeat;
mod identity;
pub mod inflight;
mod listener;
mod maintenance;
pub mod persister;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobmill::client::{JobClient, Limits};
use jobmill::config::{QueueWeight, Secret, Settings};
use jobmill::kind::Registry;
use jobmill::queue::RedisQueue;
use jobmill::state::{Decision, RetryPolicy};
use jobmill::store::Store;
use jobmill::webhooks::event_type;
use jobmill::webhooks::subscriptions::Subscriptions;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

pub use error::WorkerError;
pub use identity::Identity;

use inflight::Inflight;
use persister::{Persister, Stats};

/// Everything the worker's tasks share.
pub(crate) struct Shared {
    identity: Identity,
    worker: String,
    redis_url: Secret,
    key_prefix: String,
    queues: Vec<QueueWeight>,
    concurrency: usize,
    max_unrecorded: usize,
    lease: Duration,
    cancel_grace: Duration,
    policy: RetryPolicy,
    registry: Registry,
    /// Stores handed to the handlers of kinds that read or write data.
    resources: Arc<jobmill::kind::Resources>,
    store: Store,
    queue: RedisQueue,
    inflight: Arc<Inflight>,
    persister: Persister,
    stats: Arc<Stats>,
    /// Submits follow-up jobs (webhook deliveries from the dispatcher).
    client: JobClient,
    /// Fires when the drain time is over: running handlers are stopped and released.
    hard_stop: CancellationToken,
    /// Which tenants' webhook endpoints want which events (reloaded by the dispatcher module).
    subscriptions: Arc<Subscriptions>,
    /// Wakes the subscriptions reload early (an endpoint changed).
    subscriptions_changed: Arc<Notify>,
}

impl Shared {
    /// Whether the write that ends a job with `decision` records an outbox entry: it has a
    /// `callback_url` (or its tenant had endpoints at submit: `notify_at_submit`), or an
    /// endpoint of its tenant wants this event now.
    fn wants_end_event(&self, tenant: &str, notify_at_submit: bool, decision: &Decision) -> bool {
        let state = decision.state();
        state.is_terminal()
            && (notify_at_submit || self.subscriptions.wants(tenant, &event_type(state)))
    }
}

/// Run a worker until `shutdown` resolves, then drain: stop claiming, let running jobs finish
/// for up to `settings.shutdown_timeout`, release the rest back to their queues without
/// charging an attempt, and return once every outcome is recorded.
///
/// Store outages are not errors: the worker waits for Redis and MongoDB and carries on.
pub async fn run(
    settings: Settings,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let store = Store::connect(
        settings.mongodb_uri.expose(),
        &settings.mongodb_db,
        settings.retention,
    )
    .await?;
    run_with_store(settings, registry, store, shutdown).await
}

/// [`run`] with a store handle built by the caller (for example with MongoDB command
/// monitoring attached, as the benchmarks do).
pub async fn run_with_store(
    settings: Settings,
    registry: Registry,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let identity = Identity::new();
    let worker = identity.id.clone();
    tokio::pin!(shutdown);

    let stop_claiming = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let stop_all = CancellationToken::new();

    let queue = tokio::select! {
        q = backoff::until_ok("redis connection", &stop_all, || {
            RedisQueue::connect(settings.redis_url.expose(), &settings.key_prefix)
        }) => q.expect("only cancelled by stop_all"),
        _ = &mut shutdown => return Ok(()),
    };
    {
        let store = store.clone();
        let stop = stop_all.clone();
        tokio::spawn(async move {
            backoff::until_ok("create indexes", &stop, || store.ensure_indexes()).await;
        });
    }

    let inflight = Arc::new(Inflight::default());
    let stats = Arc::new(Stats::default());
    let subscriptions = Arc::new(Subscriptions::default());
    let persister = persister::spawn(Arc::new(persister::Context {
        store: store.clone(),
        queue: queue.clone(),
        worker: worker.clone(),
        inflight: inflight.clone(),
        stats: stats.clone(),
        stop: stop_all.clone(),
        subscriptions: subscriptions.clone(),
        progress_events_every: settings.webhooks.progress_every,
    }));
    // One client for everything this process submits: follow-up jobs of handlers (a finished
    // import queues a cache rebuild) and webhook deliveries of the dispatcher.
    let client = JobClient::new(
        store.clone(),
        queue.clone(),
        registry.clone(),
        Limits::from_settings(&settings),
    );
    let resources = Arc::new(jobmill::kind::Resources {
        client: client.clone(),
        settings: Arc::new(settings.clone()),
    });
    let shared = Arc::new(Shared {
        identity,
        worker: worker.clone(),
        redis_url: settings.redis_url.clone(),
        key_prefix: settings.key_prefix.clone(),
        queues: settings.queues.clone(),
        concurrency: settings.concurrency,
        max_unrecorded: settings.max_unrecorded,
        lease: settings.lease_ttl,
        cancel_grace: settings.cancel_grace,
        policy: RetryPolicy {
            base: settings.retry_base,
            max: settings.retry_max,
        },
        client,
        registry,
        resources,
        store,
        queue,
        inflight: inflight.clone(),
        persister,
        stats,
        hard_stop: hard_stop.clone(),
        subscriptions,
        subscriptions_changed: Arc::new(Notify::new()),
    });

    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let wake = Arc::new(Notify::new());
    let schedule = Arc::new(Notify::new());
    let beat =
        heartbeat::spawn(shared.clone(), stop_all.clone()).map_err(WorkerError::Heartbeat)?;
    tokio::spawn(listener::listen(
        shared.clone(),
        wake.clone(),
        schedule.clone(),
        stop_all.clone(),
    ));
    tokio::spawn(maintenance::scheduler(
        shared.clone(),
        schedule,
        stop_all.clone(),
    ));
    tokio::spawn(maintenance::rescuer(shared.clone(), stop_all.clone()));
    tokio::spawn(maintenance::reconciler(shared.clone(), stop_all.clone()));
    tokio::spawn(dispatcher::subscriptions(shared.clone(), stop_all.clone()));
    tokio::spawn(dispatcher::dispatcher(
        shared.clone(),
        settings.webhooks.timeout,
        stop_all.clone(),
    ));
    let fetcher = tokio::spawn(fetcher::fetch_loop(
        shared.clone(),
        slots.clone(),
        wake,
        stop_claiming.clone(),
    ));
    tracing::info!(
        worker = %worker,
        queues = ?settings.queues.iter().map(|q| format!("{}:{}", q.name, q.weight)).collect::<Vec<_>>(),
        concurrency = settings.concurrency,
        kinds = ?shared.registry.names(),
        "worker started"
    );

    shutdown.await;
    tracing::info!(running = inflight.len(), timeout = ?settings.shutdown_timeout, "draining");
    stop_claiming.cancel();
    let _ = fetcher.await;

    // Let running handlers finish within the drain time.
    let deadline = Instant::now() + settings.shutdown_timeout;
    while slots.available_permits() < settings.concurrency && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unfinished = settings.concurrency - slots.available_permits();
    if unfinished > 0 {
        tracing::info!(
            unfinished,
            "drain time over; releasing the rest without charging an attempt"
        );
    }
    hard_stop.cancel();

    // Wait until every outcome and release is recorded. If a store stays down past this, the
    // leases simply expire and other workers rerun the jobs.
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
    stop_all.cancel();
    let _ = tokio::task::spawn_blocking(move || beat.join()).await;
    tracing::info!(worker = %worker, "worker stopped");
    Ok(())
}
