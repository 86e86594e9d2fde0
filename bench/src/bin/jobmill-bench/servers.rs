//! The deployment each workload runs against, and where the bench builds it: fresh and scratch
//! deployments (settings, store, cleared Redis keys), the API served in this process, a worker
//! in this process, and the no-op job batches submitted to them. Measures nothing itself.
//!
//! Settings are built only here ([`fresh`], adjusted by [`scratch`]; `w2` and `w7` then change a
//! field or two of their copy). The workloads that submit through the library client build their
//! `JobClient` in place: `w2_durable`, `w3_floor`, `soak`.

use jobmill::client::{NewJob, DEFAULT_QUEUE};
use jobmill::config::QueueWeight;
use jobmill::queue::RedisQueue;
use jobmill::store::Store;
use jobmill_bench::deployment::{self, QUEUE};
use jobmill_bench::kinds::{self, now_us};
use redis::AsyncCommands;
use serde_json::json;

/// A fresh deployment: empty jobs collection, empty queue.
pub(crate) async fn fresh(
    concurrency: usize,
) -> anyhow::Result<(deployment::Settings, Store, deployment::CommandCounter)> {
    fresh_with(concurrency, &[]).await
}

/// [`fresh`] on settings with some variables replaced (see [`deployment::settings_with`]).
pub(crate) async fn fresh_with(
    concurrency: usize,
    overrides: &[(&'static str, String)],
) -> anyhow::Result<(deployment::Settings, Store, deployment::CommandCounter)> {
    let s = deployment::settings_with(concurrency, overrides)?;
    clear_redis(&s).await?;
    let (store, counter) = deployment::counted_store(&s).await?;
    deployment::sync_with_harness_reset(&s, &store).await?;
    Ok((s, store, counter))
}

/// Delete the bench's keys: the queues, the cache, and the harness markers.
async fn clear_redis(s: &deployment::Settings) -> anyhow::Result<()> {
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    let mut c = queue.connection();
    // Our own prefix only: the bench Redis may be shared.
    // On a cluster `KEYS` asks every master; keys are deleted one by one, since one `DEL` of
    // keys in different slots is refused there.
    let mut keys: Vec<String> = c.keys(format!("{}:*", s.key_prefix)).await?;
    keys.extend(["bench:done", "bench:lat", "bench:jobmill:generation"].map(String::from));
    for key in keys {
        let _: () = c.del(key).await?;
    }
    Ok(())
}

/// `n` no-op jobs on the bench queue, stamped now.
pub(crate) fn noop_batch(n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|_| NewJob {
            kind: "bench_noop".into(),
            args: json!({"ts": now_us()}),
            queue: Some(QUEUE.into()),
            ..Default::default()
        })
        .collect()
}

/// Start the API in this process on a free port, with the bench kinds.
pub(crate) async fn api_server(s: &deployment::Settings) -> anyhow::Result<String> {
    let registry = kinds::registry(&s.redis).await?;
    let state = jobmill_api::AppState::connect(&s.api, registry).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, jobmill_api::app(state)).await });
    Ok(format!("http://{addr}"))
}

/// A fresh deployment (see [`fresh`]) whose MongoDB data lives in a database of its own,
/// `jobmill_bench_<name>`, dropped first so the workload starts cold whatever an earlier,
/// interrupted run left. Its workers also consume the `default` queue: the API submits
/// `file_assembly` (upload completion) and `cache_rebuild` (cache miss) there, and the bench
/// settings name only the `bench` queue.
pub(crate) async fn scratch(
    name: &str,
    concurrency: usize,
) -> anyhow::Result<(deployment::Settings, Store, deployment::CommandCounter)> {
    let (mut s, _, _) = fresh(concurrency).await?;
    s.mongodb_db = format!("jobmill_bench_{name}");
    s.worker.worker.queues.push(QueueWeight {
        name: DEFAULT_QUEUE.into(),
        weight: 1,
    });
    let (store, counter) = deployment::counted_store(&s).await?;
    store.database().drop().await?;
    store.ensure_indexes().await?;
    Ok((s, store, counter))
}

/// Undo [`scratch`]: its database and the Redis keys (queues, cache versions) go.
pub(crate) async fn drop_scratch(s: &deployment::Settings, store: &Store) -> anyhow::Result<()> {
    store.database().drop().await?;
    clear_redis(s).await
}

/// A worker in this process: `jobmill_worker::run_with_store`, the loop `jobmill-worker` runs.
pub(crate) struct Worker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    pub(crate) async fn start(s: &deployment::Settings, store: Store) -> anyhow::Result<Self> {
        let registry = kinds::registry(&s.redis).await?;
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let settings = s.clone();
        let task = tokio::spawn(async move {
            jobmill_worker::run_with_store(settings.worker_config(), registry, store, async {
                let _ = rx.await;
            })
            .await?;
            Ok(())
        });
        Ok(Worker { stop, task })
    }

    /// The same drain through apalis: `bench_noop` as an apalis handler on `jobmill-apalis`.
    pub(crate) async fn start_apalis(
        s: &deployment::Settings,
        store: Store,
    ) -> anyhow::Result<Self> {
        use apalis::layers::TimeoutLayer;
        use apalis::prelude::{BoxDynError, Data, WorkerBuilder};
        use jobmill::redis_conn::RedisConn;

        // The data type must be exactly what `.data(...)` is given below: apalis looks it up
        // by type at run time, and a mismatch fails every job (it compiles either way).
        async fn noop(_args: kinds::Ts, redis: Data<RedisConn>) -> Result<(), BoxDynError> {
            let mut c = (*redis).clone();
            let () = c.incr("bench:done", 1).await?;
            Ok(())
        }

        let conn: RedisConn = jobmill::queue::connect(&s.redis).await?;
        let mut kinds = jobmill_apalis::Kinds::new();
        let kind = kinds.add::<kinds::Ts>("bench_noop", QUEUE);
        let jobmill =
            jobmill_apalis::Jobmill::start_with_store(s.worker_config(), kinds, store).await?;
        let worker = WorkerBuilder::new("bench-noop")
            .backend(jobmill.backend(kind))
            .data(conn)
            .layer(TimeoutLayer::new(std::time::Duration::from_secs(30)))
            .build(noop);
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let workers = async move {
                let _ = worker.run().await;
            };
            jobmill
                .run(workers, async {
                    let _ = rx.await;
                })
                .await?;
            Ok(())
        });
        Ok(Worker { stop, task })
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}
