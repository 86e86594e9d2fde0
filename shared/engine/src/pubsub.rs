//! Redis pub/sub for live signals (a queue has work, a job should stop, a job changed). Signals
//! are hints that save latency: everything they carry is also found by polling, so a message
//! lost during a reconnect delays work but never loses it.
//!
//! On a Redis Cluster jobmill uses plain `PUBLISH`/`SUBSCRIBE`, which the cluster broadcasts
//! over its bus to every node, so a subscriber connected to any node hears every message. The
//! alternative, sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), keeps a channel inside the shard
//! owning its slot; it saves bus traffic but would pin the busiest channels (the global cancel
//! and change-event channels) to one shard and make subscribers follow slot moves. jobmill's
//! messages are small and few per job, so broadcast is the simpler and sturdier choice (see
//! docs/architecture.md).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, ProtocolVersion, PushKind};
use tokio::sync::mpsc;

use crate::error::Result;
use crate::redis_conn::{cluster_builder, RedisTarget};

/// A message on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Channel name.
    pub channel: String,
    /// Payload.
    pub payload: String,
}

/// The subscribing connection: both kinds resubscribe by themselves after reconnecting.
enum SubConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A subscription that survives Redis restarts and cluster failovers (it resubscribes after
/// reconnecting).
pub struct Subscription {
    conn: SubConn,
    channels: Vec<String>,
    rx: mpsc::UnboundedReceiver<redis::PushInfo>,
}

impl Subscription {
    /// Subscribe to `channels` on the Redis at `target`.
    pub async fn open(target: &RedisTarget, channels: &[String]) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = match target {
            RedisTarget::Single(url) => {
                // Push messages need RESP3, whatever the URL asks for.
                let info = url.expose().into_connection_info()?;
                let redis_settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(redis_settings))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_push_sender(tx)
                    .set_automatic_resubscription();
                let mut conn = ConnectionManager::new_with_config(client, config).await?;
                for c in channels {
                    conn.subscribe(c).await?;
                }
                SubConn::Single(conn)
            }
            RedisTarget::Cluster(seeds) => {
                let client = cluster_builder(seeds, Some(tx)).build()?;
                let mut conn = client.get_async_connection().await?;
                for c in channels {
                    conn.subscribe(c).await?;
                }
                SubConn::Cluster(conn)
            }
        };
        Ok(Subscription {
            conn,
            channels: channels.to_vec(),
            rx,
        })
    }

    /// The next message. While the connection is down this keeps trying to reconnect (which
    /// also resubscribes), so it only returns messages.
    pub async fn next(&mut self) -> Message {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
                Ok(Some(push)) => match push.kind {
                    PushKind::Message => {
                        let mut data = push.data.into_iter();
                        let channel = data.next().and_then(|v| redis::from_redis_value(v).ok());
                        let payload = data.next().and_then(|v| redis::from_redis_value(v).ok());
                        if let (Some(channel), Some(payload)) = (channel, payload) {
                            return Message { channel, payload };
                        }
                    }
                    PushKind::Disconnection => self.poke().await,
                    _ => {}
                },
                // The sender lives inside the connection; it does not close while we hold the
                // connection, but be safe.
                Ok(None) => tokio::time::sleep(Duration::from_millis(500)).await,
                // Quiet for a while: a command notices a dead connection and reconnects.
                Err(_) => self.poke().await,
            }
        }
    }

    /// Send a command so a dead connection is noticed and rebuilt (which resubscribes). The
    /// cluster client refreshes its topology only when a command fails, so after a failover
    /// a subscribe-only connection would stay on the dead master without this: a keyed
    /// command (`EXISTS` on the first channel's name) is routed to a live master, fails over
    /// the dead link, and makes the client rebuild its slot map and resubscribe.
    async fn poke(&mut self) {
        let r: redis::RedisResult<redis::Value> = match &mut self.conn {
            SubConn::Single(c) => redis::cmd("PING").query_async(c).await,
            SubConn::Cluster(c) => {
                let key = self
                    .channels
                    .first()
                    .map(String::as_str)
                    .unwrap_or("jobmill");
                redis::cmd("EXISTS").arg(key).query_async(c).await
            }
        };
        if r.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
