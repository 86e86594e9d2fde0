//! Lease renewal on a thread of its own, with its own runtime and Redis connection, so a
//! handler that hogs the main runtime's threads cannot starve it: while this process lives,
//! its jobs stay leased and are never handed to another worker, however long they run. It also
//! keeps this worker's entry in the worker registry fresh.

use std::sync::Arc;
use std::thread::JoinHandle;

use jobmill::queue::RedisQueue;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use jobmill_ops::workers::{self, HeldJob, QueueWeightView, WorkerCounters, WorkerStatus};

use crate::inflight::StopReason;
use crate::Shared;

pub(crate) fn spawn(
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("jobmill-heartbeat".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("heartbeat runtime");
            rt.block_on(beat(shared, stop));
        })
}

async fn beat(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(queue) = crate::backoff::until_ok("heartbeat connection", &stop, || {
        RedisQueue::connect(&shared.core.redis, &shared.core.key_prefix)
    })
    .await
    else {
        return;
    };
    let interval = shared.core.heartbeat_interval();
    loop {
        for (q, ids) in shared.inflight.by_queue() {
            for chunk in ids.chunks(500) {
                match queue
                    .heartbeat(&q, &shared.worker, shared.core.lease_ttl, chunk)
                    .await
                {
                    Ok((lost, cancel)) => {
                        shared
                            .stats
                            .lease_expired
                            .fetch_add(lost.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        if !lost.is_empty() {
                            shared
                                .metrics
                                .lease_expired(jobmill::shards::logical(&q), lost.len() as u64);
                        }
                        for id in lost {
                            // Only after Redis lost its data or a far too short lease: the job
                            // may run elsewhere too; our outcome write is still guarded.
                            tracing::warn!(job = %id, queue = %q, "lease lost");
                        }
                        for id in cancel {
                            shared.inflight.stop(&id, StopReason::Cancelled);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
        }
        if let Err(e) = register(&queue, &shared).await {
            tracing::debug!(error = %e, "worker registry update failed");
        }
        if let Err(e) = workers::publish_status(&queue, &status(&shared)).await {
            tracing::debug!(error = %e, "worker status update failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => break,
        }
    }
    let mut conn = queue.connection();
    let keys = queue.keys();
    let _: redis::RedisResult<()> = conn.zrem(keys.workers(), &shared.worker).await;
    let _: redis::RedisResult<()> = conn.del(keys.worker(&shared.worker)).await;
}

/// Publish this worker's vital signs for operators.
async fn register(queue: &RedisQueue, shared: &Shared) -> jobmill::Result<()> {
    use std::sync::atomic::Ordering;
    let keys = queue.keys();
    let key = keys.worker(&shared.worker);
    let now = jobmill::job::now_ms();
    let queues: Vec<String> = shared
        .settings
        .queues
        .iter()
        .map(|q| format!("{}:{}", q.name, q.weight))
        .collect();
    let fields: Vec<(&str, String)> = vec![
        ("id", shared.worker.clone()),
        ("host", shared.identity.host.clone()),
        ("pid", shared.identity.pid.to_string()),
        ("started_ms", shared.identity.started_ms.to_string()),
        ("heartbeat_ms", now.to_string()),
        ("queues", queues.join(",")),
        ("concurrency", shared.settings.concurrency.to_string()),
        ("kinds", shared.registry.names().join(",")),
        ("inflight", shared.inflight.len().to_string()),
        (
            "succeeded",
            shared.stats.succeeded.load(Ordering::Relaxed).to_string(),
        ),
        (
            "failed",
            shared.stats.failed.load(Ordering::Relaxed).to_string(),
        ),
    ];
    let mut conn = queue.connection();
    let ttl = shared.core.registry_ttl();
    // The worker's hash and the registry ZSET are global keys on different cluster slots: one
    // pipeline per key, never one spanning both (a cluster would refuse it as CROSSSLOT).
    redis::pipe()
        .hset_multiple(&key, &fields)
        .ignore()
        .pexpire(&key, ttl.as_millis() as i64)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    let _: () = conn.zadd(keys.workers(), &shared.worker, now).await?;
    Ok(())
}

/// This worker's status for operators (`GET /v1/workers`), taken right after the leases were
/// renewed, so every held job's lease runs a full lease from now.
fn status(shared: &Shared) -> WorkerStatus {
    use std::sync::atomic::Ordering;
    let now = jobmill::job::now_ms();
    let lease_ms = shared.core.lease_ttl.as_millis() as i64;
    let (held, busy) = shared.inflight.snapshot();
    let stats = &shared.stats;
    WorkerStatus {
        id: shared.worker.clone(),
        host: shared.identity.host.clone(),
        pid: shared.identity.pid,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: shared.identity.started_ms,
        heartbeat_ms: now,
        lease_ms,
        state: shared.control.state(),
        queues: shared
            .settings
            .queues
            .iter()
            .map(|q| QueueWeightView {
                name: q.name.clone(),
                weight: q.weight,
            })
            .collect(),
        concurrency: shared.settings.concurrency,
        busy,
        rss_bytes: workers::current_rss_bytes(),
        counters: WorkerCounters {
            succeeded: stats.succeeded.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            retried: stats.retried.load(Ordering::Relaxed),
            cancelled: stats.cancelled.load(Ordering::Relaxed),
            lease_expired: stats.lease_expired.load(Ordering::Relaxed),
        },
        jobs: held
            .into_iter()
            .map(|h| HeldJob {
                id: h.id,
                kind: h.kind,
                queue: h.queue,
                started_ms: h.started_ms,
                lease_expires_ms: now + lease_ms,
            })
            .collect(),
    }
}
