//! Change notifications for long-polls: one Redis subscription per API process fans job-change
//! events out to waiting requests. A missed event only delays an answer until the waiter's
//! own periodic re-read.

use std::sync::Arc;

use jobmill::config::RedisTarget;
use jobmill::pubsub::Subscription;
use tokio::sync::broadcast;

/// Fan-out of changed job ids.
#[derive(Clone)]
pub struct Watch {
    tx: broadcast::Sender<Arc<str>>,
}

impl Watch {
    /// Start listening on the events channel of `prefix` at `redis`.
    pub fn start(
        redis: RedisTarget,
        channel: String,
        finished: Arc<crate::finished::FinishedJobs>,
    ) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let sender = tx.clone();
        tokio::spawn(async move {
            let mut sub = loop {
                match Subscription::open(&redis, std::slice::from_ref(&channel)).await {
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::warn!(error = %e, "job events subscription failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            };
            // Events published before the subscription existed are unknown: start clean.
            finished.clear();
            loop {
                let msg = sub.next().await;
                finished.forget(&msg.payload);
                // No receivers is fine: nobody is waiting.
                let _ = sender.send(Arc::from(msg.payload.as_str()));
            }
        });
        Watch { tx }
    }

    /// Subscribe before reading the job, so no change between the read and the wait is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }
}

/// Whether an event payload (comma-separated ids) names `id`.
pub fn mentions(payload: &str, id: &str) -> bool {
    payload.split(',').any(|p| p == id)
}
