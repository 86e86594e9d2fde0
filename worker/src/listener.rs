//! Pub/sub listener: wakes the fetcher when a queue gets work, the scheduler when a job was
//! scheduled, and stops handlers whose job was cancelled. Everything here is a latency hint;
//! polling covers a missed message.

use std::sync::Arc;

use jobmill::pubsub::Subscription;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::inflight::StopReason;
use crate::Shared;

pub(crate) async fn listen(
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    schedule: Arc<Notify>,
    stop: CancellationToken,
) {
    let keys = shared.queue.keys().clone();
    let cancel_channel = keys.cancel_channel();
    let mut channels: Vec<String> = shared
        .settings
        .queues
        .iter()
        .map(|q| keys.wake_channel(&q.name))
        .collect();
    channels.push(cancel_channel.clone());
    let Some(mut sub) = crate::backoff::until_ok("pub/sub subscription", &stop, || {
        Subscription::open(&shared.core.redis, &channels)
    })
    .await
    else {
        return;
    };
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = stop.cancelled() => return,
        };
        if msg.channel == cancel_channel {
            shared.inflight.stop(&msg.payload, StopReason::Cancelled);
        } else if msg.payload == "s" {
            schedule.notify_one();
        } else {
            wake.notify_one();
        }
    }
}
