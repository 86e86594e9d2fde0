//! Pub/sub listener: wakes the fetcher when a queue gets work, the scheduler when a job was
//! scheduled, stops handlers whose job was cancelled, and hears operator commands (`quiet`,
//! `stop`) on this worker's control channel. Wake-ups and cancels are latency hints (polling
//! covers a missed message); an operator command is acted on when heard, and the API tells the
//! operator when no worker heard it.

use std::sync::Arc;

use jobmill::pubsub::Subscription;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use jobmill_ops::workers::Command;

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
    let control_channel = jobmill_ops::keys::control_channel(&keys, &shared.worker);
    channels.push(control_channel.clone());
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
        if msg.channel == control_channel {
            match Command::parse(&msg.payload) {
                Some(Command::Quiet) => shared.control.quiet(),
                Some(Command::Stop) => shared.control.stop(),
                None => tracing::warn!(payload = %msg.payload, "unknown operator command"),
            }
        } else if msg.channel == cancel_channel {
            shared.inflight.stop(&msg.payload, StopReason::Cancelled);
        } else if msg.payload == "s" {
            schedule.notify_one();
        } else {
            wake.notify_one();
        }
    }
}
