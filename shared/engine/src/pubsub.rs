//! Redis pub/sub for live signals (a queue has work, a job should stop, a job changed). Signals
//! are hints that save latency: everything they carry is also found by polling, so a message
//! lost during a reconnect delays work but never loses it.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushKind};
use tokio::sync::mpsc;

use crate::error::Result;

/// A message on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Channel name.
    pub channel: String,
    /// Payload.
    pub payload: String,
}

/// A subscription that survives Redis restarts (it resubscribes after reconnecting).
pub struct Subscription {
    conn: ConnectionManager,
    rx: mpsc::UnboundedReceiver<redis::PushInfo>,
}

impl Subscription {
    /// Subscribe to `channels` on the Redis at `url`.
    pub async fn open(url: &str, channels: &[String]) -> Result<Self> {
        // Push messages need RESP3, whatever the URL asks for.
        let info = url.into_connection_info()?;
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(redis_settings))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_push_sender(tx)
            .set_automatic_resubscription();
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        for c in channels {
            conn.subscribe(c).await?;
        }
        Ok(Subscription { conn, rx })
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
                // The sender lives inside the connection manager; it does not close while we
                // hold the connection, but be safe.
                Ok(None) => tokio::time::sleep(Duration::from_millis(500)).await,
                // Quiet for a while: a PING notices a dead connection and reconnects.
                Err(_) => self.poke().await,
            }
        }
    }

    async fn poke(&mut self) {
        let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut self.conn).await;
        if r.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
