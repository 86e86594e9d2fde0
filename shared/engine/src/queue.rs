//! The Redis side of jobmill: queues of ready, scheduled, leased and rescued jobs, driven by one
//! Lua script per atomic operation (in `scripts/`). Redis is fast and shared; MongoDB stays the
//! system of record, so everything here can be rebuilt from it (see the reconciler).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use crate::error::{Error, Result};
use crate::job::Payload;
use crate::keys::{Keys, QueueKeys};

macro_rules! script {
    ($name:ident, $file:literal) => {
        static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("scripts/", $file))));
    };
}
script!(ENQUEUE, "enqueue.lua");
script!(CLAIM, "claim.lua");
script!(HEARTBEAT, "heartbeat.lua");
script!(ACK, "ack.lua");
script!(RESCHEDULE, "reschedule.lua");
script!(RELEASE, "release.lua");
script!(PROMOTE, "promote.lua");
script!(RESCUE, "rescue.lua");
script!(CANCEL, "cancel.lua");
script!(DEFER, "defer.lua");

/// Largest number of jobs sent to one script call, so no call blocks Redis for long.
pub const SCRIPT_BATCH: usize = 500;

/// Where an enqueued job goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// The ready set, with this score (see [`crate::job::ready_score`]).
    Ready(f64),
    /// The schedule set, due at this time (ms since the epoch).
    Scheduled(i64),
}

/// One job to put into Redis.
#[derive(Debug, Clone)]
pub struct Enqueue {
    /// What the worker needs.
    pub payload: Payload,
    /// Attempts already started (0 for a new job; the store's count when rebuilding).
    pub attempts: i32,
    /// Ready or scheduled.
    pub placement: Placement,
}

/// A job a worker claimed (or the rescuer took from an expired lease).
#[derive(Debug, Clone)]
pub struct Claimed {
    /// What to run.
    pub payload: Payload,
    /// This attempt's number.
    pub attempt: u32,
}

/// What a cancel did in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelEffect {
    /// The job was waiting and is gone from the queue.
    Removed,
    /// The job is running; its worker was told to stop.
    Signalled,
    /// Redis does not hold the job (finished, or being rescued).
    Absent,
}

/// Handle to the queues of one deployment (one key prefix). Cheap to clone.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    keys: Keys,
}

/// Open a multiplexed, self-reconnecting connection.
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

impl RedisQueue {
    /// Connect to Redis at `url`, using keys under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Ok(RedisQueue {
            conn: connect(url).await?,
            keys: Keys::new(prefix),
        })
    }

    /// Wrap an existing connection.
    pub fn with_connection(conn: ConnectionManager, prefix: &str) -> Self {
        RedisQueue {
            conn,
            keys: Keys::new(prefix),
        }
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A clone of the underlying connection.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Round trip to Redis.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Put jobs into their queues; jobs Redis already holds are skipped. Returns how many were
    /// added.
    pub async fn enqueue(&self, jobs: &[Enqueue]) -> Result<usize> {
        let mut by_queue: BTreeMap<&str, Vec<&Enqueue>> = BTreeMap::new();
        for j in jobs {
            by_queue
                .entry(j.payload.queue.as_str())
                .or_default()
                .push(j);
        }
        let mut added = 0;
        let mut conn = self.conn.clone();
        for (queue, jobs) in by_queue {
            let k = self.keys.queue(queue);
            // The queue registry is outside the queue's hash slot, so it is a separate command.
            let _: () = conn.sadd(self.keys.queues(), queue).await?;
            for chunk in jobs.chunks(SCRIPT_BATCH) {
                let mut inv = ENQUEUE.prepare_invoke();
                inv.key(&k.payloads)
                    .key(&k.attempts)
                    .key(&k.ready)
                    .key(&k.scheduled)
                    .key(&k.retrying)
                    .arg(self.keys.wake_channel(queue));
                for j in chunk {
                    let payload = serde_json::to_string(&j.payload)
                        .map_err(|e| Error::Corrupt(e.to_string()))?;
                    let (place, score) = match j.placement {
                        Placement::Ready(s) => ("r", format!("{s:.0}")),
                        Placement::Scheduled(at) => ("s", at.to_string()),
                    };
                    inv.arg(&j.payload.id)
                        .arg(payload)
                        .arg(j.attempts)
                        .arg(place)
                        .arg(score);
                }
                let n: usize = inv.invoke_async(&mut conn).await?;
                added += n;
            }
        }
        Ok(added)
    }

    /// Claim up to `max` ready jobs of `queue` for `worker`, leased for `lease`.
    pub async fn claim(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Claimed>> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = CLAIM
            .key(&k.ready)
            .key(&k.payloads)
            .key(&k.attempts)
            .key(&k.leased)
            .key(&k.owners)
            .key(&k.paused)
            .arg(lease.as_millis() as u64)
            .arg(worker)
            .arg(max)
            .invoke_async(&mut conn)
            .await?;
        parse_claimed(raw)
    }

    /// Renew `worker`'s leases on `ids`. Returns (ids whose lease is no longer ours, ids whose
    /// cancellation was requested).
    pub async fn heartbeat(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        ids: &[String],
    ) -> Result<(Vec<String>, Vec<String>)> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let mut inv = HEARTBEAT.prepare_invoke();
        inv.key(&k.leased)
            .key(&k.owners)
            .key(&k.cancels)
            .arg(lease.as_millis() as u64)
            .arg(worker);
        for id in ids {
            inv.arg(id);
        }
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Forget jobs whose terminal state is recorded (see `ack.lua`). `worker` is `None` for
    /// the rescuer and the API.
    pub async fn ack(&self, queue: &str, worker: Option<&str>, ids: &[String]) -> Result<usize> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let mut n = 0;
        for chunk in ids.chunks(SCRIPT_BATCH) {
            let mut inv = ACK.prepare_invoke();
            inv.key(&k.leased)
                .key(&k.owners)
                .key(&k.payloads)
                .key(&k.attempts)
                .key(&k.cancels)
                .key(&k.rescued)
                .key(&k.ready)
                .key(&k.scheduled)
                .key(&k.retrying)
                .arg(worker.unwrap_or(""));
            for id in chunk {
                inv.arg(id);
            }
            let m: usize = inv.invoke_async(&mut conn).await?;
            n += m;
        }
        Ok(n)
    }

    /// Schedule the next attempt of jobs at the given times (ms since the epoch).
    pub async fn reschedule(
        &self,
        queue: &str,
        worker: Option<&str>,
        items: &[(String, i64)],
    ) -> Result<usize> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let mut n = 0;
        for chunk in items.chunks(SCRIPT_BATCH) {
            let mut inv = RESCHEDULE.prepare_invoke();
            inv.key(&k.leased)
                .key(&k.owners)
                .key(&k.rescued)
                .key(&k.scheduled)
                .key(&k.cancels)
                .key(&k.retrying)
                .arg(worker.unwrap_or(""))
                .arg(self.keys.wake_channel(queue));
            for (id, at) in chunk {
                inv.arg(id).arg(*at);
            }
            let m: usize = inv.invoke_async(&mut conn).await?;
            n += m;
        }
        Ok(n)
    }

    /// Put leased jobs back without charging the attempt (graceful shutdown).
    pub async fn release(
        &self,
        queue: &str,
        worker: &str,
        items: &[(String, f64)],
    ) -> Result<usize> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&k.leased)
            .key(&k.owners)
            .key(&k.attempts)
            .key(&k.ready)
            .arg(worker)
            .arg(self.keys.wake_channel(queue));
        for (id, score) in items {
            inv.arg(id).arg(format!("{score:.0}"));
        }
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Promote due scheduled jobs (at most `limit`). Returns the promoted ids and the time until
    /// the next scheduled job, if any.
    pub async fn promote(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<(Vec<String>, Option<Duration>)> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let (ids, next): (Vec<String>, i64) = PROMOTE
            .key(&k.scheduled)
            .key(&k.ready)
            .key(&k.payloads)
            .key(&k.retrying)
            .arg(limit)
            .arg(self.keys.wake_channel(queue))
            .invoke_async(&mut conn)
            .await?;
        let next = (next >= 0).then(|| Duration::from_millis(next as u64));
        Ok((ids, next))
    }

    /// Take up to `limit` jobs from expired leases (and from rescues abandoned for `stale`).
    pub async fn rescue(&self, queue: &str, limit: usize, stale: Duration) -> Result<Vec<Claimed>> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = RESCUE
            .key(&k.leased)
            .key(&k.owners)
            .key(&k.rescued)
            .key(&k.payloads)
            .key(&k.attempts)
            .arg(limit)
            .arg(stale.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        parse_claimed(raw)
    }

    /// Cancel job `id` of `queue` in Redis (after MongoDB recorded it).
    pub async fn cancel(&self, queue: &str, id: &str) -> Result<CancelEffect> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let r: String = CANCEL
            .key(&k.ready)
            .key(&k.scheduled)
            .key(&k.payloads)
            .key(&k.attempts)
            .key(&k.leased)
            .key(&k.cancels)
            .key(&k.retrying)
            .arg(id)
            .arg(self.keys.cancel_channel())
            .invoke_async(&mut conn)
            .await?;
        Ok(match r.as_str() {
            "removed" => CancelEffect::Removed,
            "signalled" => CancelEffect::Signalled,
            _ => CancelEffect::Absent,
        })
    }

    /// Pause or resume claims from `queue`: sets or clears the flag `claim.lua` checks. The
    /// queue still accepts submissions while paused.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        if paused {
            let _: () = conn.set(&k.paused, "1").await?;
        } else {
            let _: () = conn.del(&k.paused).await?;
        }
        Ok(())
    }

    /// Every queue name in use.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.keys.queues()).await?)
    }

    /// Whether Redis still holds its full copy of the live jobs (see [`Keys::epoch`]).
    pub async fn epoch_present(&self) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.keys.epoch()).await?)
    }

    /// Mark Redis as holding a full copy of the live jobs.
    pub async fn set_epoch(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(self.keys.epoch(), uuid::Uuid::new_v4().to_string())
            .await?;
        Ok(())
    }

    /// Take the named lock for `ttl` unless someone holds it.
    pub async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let r: Option<String> = redis::cmd("SET")
            .arg(self.keys.lock(name))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(r.is_some())
    }

    /// Tell long-polls that these jobs changed.
    pub async fn publish_changes(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        for chunk in ids.chunks(1000) {
            let _: () = conn
                .publish(self.keys.events_channel(), chunk.join(","))
                .await?;
        }
        Ok(())
    }

    /// Publish a hint on a channel (features announce their changes this way; listeners also
    /// poll, so a lost message only delays them).
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.publish(channel, payload).await?;
        Ok(())
    }

    /// Give leased jobs back uncharged, to run no earlier than the given times (ms since the
    /// epoch): a worker that claimed a job of a kind it does not serve leaves it for a worker
    /// that does. Only jobs `worker` still holds are moved.
    pub async fn defer(&self, queue: &str, worker: &str, items: &[(String, i64)]) -> Result<usize> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let mut inv = DEFER.prepare_invoke();
        inv.key(&k.leased)
            .key(&k.owners)
            .key(&k.attempts)
            .key(&k.scheduled)
            .arg(worker)
            .arg(self.keys.wake_channel(queue));
        for (id, at) in items {
            inv.arg(id).arg(*at);
        }
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// The keys of one queue.
    pub fn queue_keys(&self, queue: &str) -> QueueKeys {
        self.keys.queue(queue)
    }
}

fn parse_claimed(raw: Vec<redis::Value>) -> Result<Vec<Claimed>> {
    let mut out = Vec::with_capacity(raw.len() / 3);
    let mut it = raw.into_iter();
    while let (Some(_id), Some(attempt), Some(payload)) = (it.next(), it.next(), it.next()) {
        let attempt: u32 = redis::from_redis_value(attempt)
            .map_err(|e| Error::Corrupt(format!("attempt: {e}")))?;
        let payload: String = redis::from_redis_value(payload)
            .map_err(|e| Error::Corrupt(format!("payload: {e}")))?;
        let payload: Payload =
            serde_json::from_str(&payload).map_err(|e| Error::Corrupt(format!("payload: {e}")))?;
        out.push(Claimed { payload, attempt });
    }
    Ok(out)
}
