//! One Redis connection type for a single server or a Redis Cluster, so nothing above it
//! branches on the deployment: [`RedisConn`] implements [`redis::aio::ConnectionLike`], so
//! commands, pipelines and scripts run on it unchanged. Which one is used comes from
//! [`RedisTarget`], read from `JOBMILL_REDIS_URL` or `JOBMILL_REDIS_CLUSTER`.
//!
//! On a cluster the client follows `MOVED`/`ASK` and retries `TRYAGAIN`/`CLUSTERDOWN` itself;
//! [`with_retry`] adds a bounded caller-side retry around script calls, whose `NOSCRIPT`
//! recovery (load on every node) can fail while a dead master is still in the slot map.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, RedisFuture, ServerErrorKind};

use crate::config::Secret;
use crate::error::Result;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`JOBMILL_REDIS_URL`).
    Single(Secret),
    /// A Redis Cluster, reached through these seed URLs (`JOBMILL_REDIS_CLUSTER`); the client
    /// learns the rest of the topology from them.
    Cluster(Vec<Secret>),
}

impl RedisTarget {
    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }
}

/// A multiplexed, self-reconnecting connection to a single server or a cluster. Cheap to clone.
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Single(ConnectionManager),
    /// A cluster; commands are routed by the slot of their first key.
    Cluster(ClusterConnection),
}

/// Cluster client tuned for jobmill: retry waits short (the defaults wait over a second before
/// the first retry, which a drain feels), bounded retries and timeouts so a dead node is
/// noticed. `push` receives pub/sub messages (RESP3).
pub(crate) fn cluster_builder(
    seeds: &[Secret],
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> ClusterClientBuilder {
    let mut b = ClusterClientBuilder::new(seeds.iter().map(|s| s.expose().to_string()))
        .retries(12)
        .min_retry_wait(20)
        .max_retry_wait(500)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(10));
    if let Some(tx) = push {
        b = b
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx);
    }
    b
}

impl RedisConn {
    /// Connect to `target`.
    pub async fn connect(target: &RedisTarget) -> Result<Self> {
        Ok(match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.expose())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(10)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                RedisConn::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            RedisTarget::Cluster(seeds) => {
                let client = cluster_builder(seeds, None).build()?;
                RedisConn::Cluster(client.get_async_connection().await?)
            }
        })
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        p: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(p, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(p, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Most attempts of one call in [`with_retry`].
const RETRY_ATTEMPTS: u32 = 8;

/// Whether a failed call may be sent again as is: the cluster said "not now" (a slot being
/// migrated answers multi-key scripts `TRYAGAIN`; a failover answers `CLUSTERDOWN` or
/// `MASTERDOWN` for a moment), or a script was not loaded on a node that just took over.
/// None of these ran the script, so sending it again cannot apply it twice.
pub fn is_transient(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::NoScript
        ) | ErrorKind::ClusterConnectionNotFound
    )
}

/// Run `call` until it succeeds, fails with an error that is not [`is_transient`], or has been
/// tried [`RETRY_ATTEMPTS`] times (waits grow from 25 ms to 1.6 s, about 3 s in all). The promise
/// is that no job is lost or failed by a slot migration or failover, not that no command errs.
pub async fn with_retry<T, F, Fut>(mut call: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let mut wait = Duration::from_millis(25);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < RETRY_ATTEMPTS && is_transient(&e) => {
                tracing::debug!(error = %e, attempt, "transient redis error; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(1600));
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// The Redis Cluster slot of `key` (CRC16-XMODEM of its hash tag, or of the whole key when it
/// has none, modulo 16384), exactly as `CLUSTER KEYSLOT` computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Number of Redis Cluster slots.
pub const SLOTS: u16 = 16384;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` on a real server.
        for (key, slot) in [
            ("123456789", 12739),
            ("foo", 12182),
            ("{}foo", 9500),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("foo{bar}{zap}", 5061),
            ("jm", 6634),
            ("{jm}:events", 6634),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let e = RedisError::from((ErrorKind::Server(ServerErrorKind::TryAgain), "TRYAGAIN"));
        assert!(is_transient(&e));
        let e = RedisError::from((ErrorKind::Server(ServerErrorKind::CrossSlot), "CROSSSLOT"));
        assert!(!is_transient(&e));
    }
}
