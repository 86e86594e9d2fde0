//! Keeping this process's kinds catalog fresh: reloaded from MongoDB at least every
//! [`REFRESH`], and at once when a worker announces its kinds on Redis, so a user's new kind is
//! accepted moments after its first worker starts, with no API restart.

use std::collections::BTreeMap;
use std::time::Duration;

use jobmill::config::RedisTarget;
use jobmill::pubsub::Subscription;
use jobmill::queue::RedisQueue;
use jobmill::JobClient;
use redis::AsyncCommands;
use tokio::sync::Notify;

/// Longest time between two reloads.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Start the reload loop and the announcement listener.
pub fn start(client: JobClient, redis: RedisTarget) {
    let announced = std::sync::Arc::new(Notify::new());
    let wake = announced.clone();
    let channel = client.queue().keys().kinds_channel();
    tokio::spawn(async move {
        let mut sub = loop {
            match Subscription::open(&redis, std::slice::from_ref(&channel)).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(error = %e, "kinds announcements: subscribe failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        loop {
            sub.next().await;
            wake.notify_one();
        }
    });
    tokio::spawn(async move {
        loop {
            if let Err(e) = client.catalog().refresh(client.store()).await {
                tracing::debug!(error = %e, "kinds catalog reload failed; keeping the last");
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = announced.notified() => {}
            }
        }
    });
}

/// How many live workers serve each kind, from the worker registry (heartbeats of the last
/// registry TTL).
pub async fn live_workers_by_kind(queue: &RedisQueue) -> jobmill::Result<BTreeMap<String, u64>> {
    let keys = queue.keys();
    let mut conn = queue.connection();
    let ids: Vec<String> = conn.zrange(keys.workers(), 0, -1).await?;
    let mut out = BTreeMap::new();
    for id in ids {
        // An entry whose hash expired belongs to a worker that stopped heartbeating.
        let kinds: Option<String> = conn.hget(keys.worker(&id), "kinds").await?;
        for k in kinds
            .iter()
            .flat_map(|k| k.split(','))
            .filter(|k| !k.is_empty())
        {
            *out.entry(k.to_string()).or_insert(0) += 1;
        }
    }
    Ok(out)
}
