//! The Redis side of jobmill: queues of ready, scheduled, leased and rescued jobs, driven by one
//! Lua script per atomic operation (in `scripts/`). Redis is fast and shared; MongoDB stays the
//! system of record, so everything here can be rebuilt from it (see the reconciler).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::{AsyncCommands, FromRedisValue, Script, ScriptInvocation};

use crate::error::{Error, Result};
use crate::job::Payload;
use crate::keys::{Keys, QueueKeys};
use crate::limits::QueueLimits;
use crate::redis_conn::{with_retry, RedisConn, RedisTarget};
use crate::shards::{logical, ShardMap};

/// The atomic operations, one Lua script each. Every script touches only keys of one queue,
/// which share the queue's hash tag, so on a Redis Cluster each call runs on one slot (see
/// [`Op::keys`] and the slot test below). Channels a script publishes on are arguments, not
/// keys: `PUBLISH` in a cluster reaches every node whatever the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `enqueue.lua`
    Enqueue,
    /// `claim.lua`
    Claim,
    /// `heartbeat.lua`
    Heartbeat,
    /// `ack.lua`
    Ack,
    /// `reschedule.lua`
    Reschedule,
    /// `release.lua`
    Release,
    /// `promote.lua`
    Promote,
    /// `rescue.lua`
    Rescue,
    /// `cancel.lua`
    Cancel,
    /// `defer.lua`
    Defer,
    /// `throttle.lua`
    Throttle,
    /// `unslot.lua`
    Unslot,
}

macro_rules! scripts {
    ($($op:ident => $file:literal),* $(,)?) => {
        impl Op {
            /// Every operation.
            pub const ALL: &'static [Op] = &[$(Op::$op),*];

            /// The script's Lua source: the shared prelude of slot functions (`slots.lua`),
            /// then the script itself.
            pub fn source(self) -> &'static str {
                match self {
                    $(Op::$op => concat!(
                        include_str!("scripts/slots.lua"),
                        include_str!(concat!("scripts/", $file))
                    ),)*
                }
            }

            fn script(self) -> &'static Script {
                $(
                    #[allow(non_upper_case_globals)]
                    static $op: LazyLock<Script> = LazyLock::new(|| Script::new(Op::$op.source()));
                )*
                match self {
                    $(Op::$op => &$op,)*
                }
            }
        }
    };
}
scripts! {
    Enqueue => "enqueue.lua",
    Claim => "claim.lua",
    Heartbeat => "heartbeat.lua",
    Ack => "ack.lua",
    Reschedule => "reschedule.lua",
    Release => "release.lua",
    Promote => "promote.lua",
    Rescue => "rescue.lua",
    Cancel => "cancel.lua",
    Defer => "defer.lua",
    Throttle => "throttle.lua",
    Unslot => "unslot.lua",
}

impl Op {
    /// The script's KEYS, in order (as its header comment lists them). All are keys of the
    /// one queue `k`, so they share its hash tag and the call stays on one cluster slot.
    pub fn keys(self, k: &QueueKeys) -> Vec<&str> {
        let keys: &[&String] = match self {
            Op::Enqueue => &[
                &k.payloads,
                &k.attempts,
                &k.ready,
                &k.scheduled,
                &k.retrying,
                &k.job_keys,
                &k.ring,
                &k.parked,
                &k.key_ready,
                &k.key_ready_count,
            ],
            Op::Claim => &[
                &k.ready,
                &k.payloads,
                &k.attempts,
                &k.leased,
                &k.owners,
                &k.paused,
                &k.limits,
                &k.slots,
                &k.running,
                &k.ring,
                &k.parked,
                &k.key_ready,
                &k.key_ready_count,
                &k.starts,
                &k.key_starts,
                &k.held,
                &k.epoch,
            ],
            Op::Heartbeat => &[&k.leased, &k.owners, &k.cancels],
            Op::Ack => &[
                &k.leased,
                &k.owners,
                &k.payloads,
                &k.attempts,
                &k.cancels,
                &k.rescued,
                &k.ready,
                &k.scheduled,
                &k.retrying,
                &k.slots,
                &k.running,
                &k.job_keys,
                &k.ring,
                &k.parked,
                &k.key_ready,
                &k.key_ready_count,
            ],
            Op::Reschedule => &[
                &k.leased,
                &k.owners,
                &k.rescued,
                &k.scheduled,
                &k.cancels,
                &k.retrying,
                &k.slots,
                &k.running,
                &k.ring,
                &k.parked,
                &k.key_ready,
            ],
            Op::Release => &[
                &k.leased,
                &k.owners,
                &k.attempts,
                &k.ready,
                &k.slots,
                &k.running,
                &k.job_keys,
                &k.ring,
                &k.parked,
                &k.key_ready,
                &k.key_ready_count,
            ],
            Op::Promote => &[
                &k.scheduled,
                &k.ready,
                &k.payloads,
                &k.retrying,
                &k.job_keys,
                &k.ring,
                &k.parked,
                &k.key_ready,
                &k.key_ready_count,
            ],
            Op::Rescue => &[
                &k.leased,
                &k.owners,
                &k.rescued,
                &k.payloads,
                &k.attempts,
                &k.slots,
                &k.running,
                &k.ring,
                &k.parked,
                &k.key_ready,
            ],
            Op::Cancel => &[
                &k.ready,
                &k.scheduled,
                &k.payloads,
                &k.attempts,
                &k.leased,
                &k.cancels,
                &k.retrying,
                &k.job_keys,
                &k.ring,
                &k.parked,
                &k.key_ready,
                &k.key_ready_count,
            ],
            Op::Defer => &[
                &k.leased,
                &k.owners,
                &k.attempts,
                &k.scheduled,
                &k.slots,
                &k.running,
                &k.ring,
                &k.parked,
                &k.key_ready,
            ],
            Op::Throttle => &[
                &k.leased,
                &k.owners,
                &k.attempts,
                &k.scheduled,
                &k.slots,
                &k.running,
                &k.ring,
                &k.parked,
                &k.key_ready,
                &k.held,
                &k.cancels,
            ],
            Op::Unslot => &[
                &k.owners,
                &k.slots,
                &k.running,
                &k.ring,
                &k.parked,
                &k.key_ready,
            ],
        };
        keys.iter().map(|s| s.as_str()).collect()
    }

    /// A call of this script on queue `k`, its keys set; the caller adds the arguments.
    fn invocation(self, k: &QueueKeys) -> ScriptInvocation<'static> {
        let mut inv = self.script().prepare_invoke();
        for key in self.keys(k) {
            inv.key(key);
        }
        inv
    }
}

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
    /// Claimed under a concurrency or key_concurrency limit: its slot is worth freeing as soon
    /// as the handler ends ([`RedisQueue::unslot`]) rather than with the outcome.
    pub capped: bool,
}

/// The pipeline reply of [`RedisQueue::limit_state`].
type LimitReply = (
    Vec<(String, u64)>,
    usize,
    Vec<(String, i64)>,
    Option<i64>,
    i64,
    Vec<(String, f64)>,
    usize,
);

/// What the limits of one queue are doing, for operators.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LimitState {
    /// The limits in force.
    pub limits: QueueLimits,
    /// Jobs of the queue holding a slot (running).
    pub running: usize,
    /// Limit keys with jobs running.
    pub running_keys: usize,
    /// The busiest keys: (key, jobs running), most first.
    pub running_by_key: Vec<(String, u64)>,
    /// Jobs with a limit key waiting in the per-key ready sets.
    pub keyed_ready: u64,
    /// The whole queue is held until then (a job without a key answered `RateLimited`).
    pub held_until_ms: Option<i64>,
    /// Keys held (`RateLimited`, or their `key_rate` used up) and until when, soonest first.
    pub held_keys: Vec<(String, i64)>,
    /// Keys held, all of them.
    pub held_key_count: usize,
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
///
/// Methods that name a *queue* (`enqueue` by the payload's queue, `claim`, `cancel`,
/// `set_paused`, `holds`, `lanes`) cover every lane of a sharded queue through the shard map;
/// methods about jobs already in Redis (`heartbeat`, `ack`, `reschedule`, `release`, `defer`)
/// and per-lane maintenance (`promote`, `rescue`, `epoch_present`, `set_epoch`) take a *lane*:
/// the job's [`Payload::lane`], or one of [`RedisQueue::lanes`]. For an unsharded queue the
/// lane is the queue.
#[derive(Clone)]
pub struct RedisQueue {
    conn: RedisConn,
    keys: Keys,
    shards: ShardMap,
}

/// Open a multiplexed, self-reconnecting connection to `target`.
pub async fn connect(target: &RedisTarget) -> Result<RedisConn> {
    RedisConn::connect(target).await
}

impl RedisQueue {
    /// Connect to Redis at `target`, using keys under `prefix`.
    pub async fn connect(target: &RedisTarget, prefix: &str) -> Result<Self> {
        Ok(RedisQueue {
            conn: connect(target).await?,
            keys: Keys::new(prefix),
            shards: ShardMap::default(),
        })
    }

    /// Wrap an existing connection.
    pub fn with_connection(conn: RedisConn, prefix: &str) -> Self {
        RedisQueue {
            conn,
            keys: Keys::new(prefix),
            shards: ShardMap::default(),
        }
    }

    /// The shard map (shared by every clone; empty until [`crate::shards::join`] fills it).
    pub fn shards(&self) -> &ShardMap {
        &self.shards
    }

    /// Every lane of `queue` that may hold jobs (just `queue` when it is not sharded).
    pub fn lanes(&self, queue: &str) -> Vec<String> {
        self.shards.lanes(queue)
    }

    /// The wake-up channel of the queue a lane belongs to (workers listen per queue).
    fn wake(&self, lane: &str) -> String {
        self.keys.wake_channel(logical(lane))
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A clone of the underlying connection.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Run a script call, retrying the transient errors of a cluster (a slot in migration, a
    /// failover, a script not yet loaded on a new master) a bounded number of times.
    async fn run<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T> {
        Ok(with_retry(|| {
            let mut conn = self.conn.clone();
            async move { inv.invoke_async(&mut conn).await }
        })
        .await?)
    }

    /// Round trip to Redis.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
        // On a cluster PING goes to every master and answers with one reply per node.
        let _: redis::Value = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Put jobs into their queues; jobs Redis already holds are skipped. Returns how many were
    /// added.
    pub async fn enqueue(&self, jobs: &[Enqueue]) -> Result<usize> {
        // Each job goes to its lane under the current shard map, which its payload records.
        let mut by_lane: BTreeMap<String, Vec<(Payload, &Enqueue)>> = BTreeMap::new();
        for j in jobs {
            let p = &j.payload;
            let lane = self
                .shards
                .lane_for(&p.queue, p.shard_key.as_deref().unwrap_or(&p.id));
            let mut payload = p.clone();
            payload.lane = (lane != p.queue).then(|| lane.clone());
            by_lane.entry(lane).or_default().push((payload, j));
        }
        let mut added = 0;
        let mut conn = self.conn.clone();
        for (lane, jobs) in by_lane {
            let k = self.keys.queue(&lane);
            // The queue registry is outside the queue's hash slot, so it is a separate command.
            // It names queues, not lanes: lanes come from the shard map.
            let _: () = conn.sadd(self.keys.queues(), logical(&lane)).await?;
            for chunk in jobs.chunks(SCRIPT_BATCH) {
                let mut inv = Op::Enqueue.invocation(&k);
                inv.arg(self.wake(&lane));
                for (payload, j) in chunk {
                    let payload = serde_json::to_string(payload)
                        .map_err(|e| Error::Corrupt(e.to_string()))?;
                    let (place, score) = match j.placement {
                        Placement::Ready(s) => ("r", format!("{s:.0}")),
                        Placement::Scheduled(at) => ("s", at.to_string()),
                    };
                    inv.arg(&j.payload.id)
                        .arg(payload)
                        .arg(j.attempts)
                        .arg(place)
                        .arg(score)
                        .arg(j.payload.limit_key.as_deref().unwrap_or(""));
                }
                let n: usize = self.run(&inv).await?;
                added += n;
            }
        }
        Ok(added)
    }

    /// Claim up to `max` ready jobs of `queue` for `worker`, leased for `lease`. On a sharded
    /// queue, one script call per lane until `max` are claimed, starting at the next lane in
    /// rotation so every lane is drained: priorities are exact within a lane, approximate
    /// across lanes.
    pub async fn claim(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Claimed>> {
        Ok(self.claim_limited(queue, worker, lease, max).await?.0)
    }

    /// [`RedisQueue::claim`], also saying when the queue's limits may let more of its ready
    /// jobs start (`Some`: poll again after that instead of waiting for a wake-up, since a
    /// slot freeing or a rate window moving publishes nothing).
    pub async fn claim_limited(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        max: usize,
    ) -> Result<(Vec<Claimed>, Option<Duration>)> {
        let lanes = self.shards.lanes(queue);
        let start = if lanes.len() > 1 {
            self.shards.next_turn() % lanes.len()
        } else {
            0
        };
        let mut out = Vec::new();
        let mut soonest: Option<Duration> = None;
        for i in 0..lanes.len() {
            if out.len() >= max {
                break;
            }
            let k = self.keys.queue(&lanes[(start + i) % lanes.len()]);
            let mut inv = Op::Claim.invocation(&k);
            inv.arg(lease.as_millis() as u64)
                .arg(worker)
                .arg(max - out.len());
            // `{ jobs, wait }`, and `capped` (0/1) when jobs were looked at.
            let reply: Vec<redis::Value> = match self.run(&inv).await {
                Ok(r) => r,
                // Jobs already claimed from other lanes are leased to us: hand them over
                // rather than drop them (they would wait for their lease to expire).
                Err(e) if !out.is_empty() => {
                    tracing::debug!(error = %e, queue, "claim from one lane failed");
                    break;
                }
                Err(e) => return Err(e),
            };
            let mut reply = reply.into_iter();
            let raw: Vec<redis::Value> = field(reply.next(), "claimed jobs")?;
            let wait: i64 = field(reply.next(), "wait")?;
            let capped = reply
                .next()
                .map(|v| field::<i64>(Some(v), "capped"))
                .transpose()?
                .unwrap_or(0)
                == 1;
            if wait >= 0 {
                let w = Duration::from_millis(wait as u64);
                soonest = Some(soonest.map_or(w, |s| s.min(w)));
            }
            out.extend(parse_claimed(raw, capped)?);
        }
        Ok((out, soonest))
    }

    /// Give back jobs whose handler answered `RateLimited`, after MongoDB recorded them
    /// `scheduled` with the attempt returned: each goes to the schedule set until its time
    /// (ms since the epoch), uncharged, its slot freed, and its limit key (or the queue, for a
    /// job without one) held until then (see `throttle.lua`). Only jobs `worker` still holds
    /// are moved.
    pub async fn throttle(
        &self,
        queue: &str,
        worker: &str,
        items: &[(String, i64)],
    ) -> Result<usize> {
        let k = self.keys.queue(queue);
        let mut n = 0;
        for chunk in items.chunks(SCRIPT_BATCH) {
            let mut inv = Op::Throttle.invocation(&k);
            inv.arg(worker).arg(self.wake(queue));
            for (id, at) in chunk {
                inv.arg(id).arg(*at);
            }
            let m: usize = self.run(&inv).await?;
            n += m;
        }
        Ok(n)
    }

    /// Free the limit slots of `worker`'s jobs whose handlers ended (their outcome is not
    /// recorded yet; the lease stays). Returns how many slots were freed.
    pub async fn unslot(&self, queue: &str, worker: &str, ids: &[String]) -> Result<usize> {
        let k = self.keys.queue(queue);
        let mut n = 0;
        for chunk in ids.chunks(SCRIPT_BATCH) {
            let mut inv = Op::Unslot.invocation(&k);
            inv.arg(worker);
            for id in chunk {
                inv.arg(id);
            }
            let m: usize = self.run(&inv).await?;
            n += m;
        }
        Ok(n)
    }

    /// Set the limits `claim.lua` enforces on `queue` (replacing any), or remove them with
    /// `None`. Takes effect on the next claim. One `MULTI` on keys of the queue's slot, so a
    /// claim never sees half of a change.
    pub async fn set_limits(&self, queue: &str, limits: Option<&QueueLimits>) -> Result<()> {
        let mut conn = self.conn.clone();
        // Every lane of a sharded queue enforces the per-key limits of the keys it holds (a
        // key's jobs share one lane); queue-wide limits are refused on sharded queues.
        for lane in self.shards.lanes(queue) {
            let k = self.keys.queue(&lane);
            let mut pipe = redis::pipe();
            pipe.atomic().del(&k.limits).ignore();
            if let Some(l) = limits.filter(|l| !l.is_empty()) {
                pipe.hset_multiple(&k.limits, &l.to_fields()).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await?;
        }
        if limits.is_some() {
            // A limited queue is a queue in use (operators see it before its first job). The
            // registry is outside the queue's slot, so this is a command of its own.
            let _: () = conn.sadd(self.keys.queues(), queue).await?;
        }
        Ok(())
    }

    /// The limits `claim.lua` enforces on `queue` now.
    pub async fn limits(&self, queue: &str) -> Result<QueueLimits> {
        let mut conn = self.conn.clone();
        let lane = self.shards.lanes(queue).into_iter().next();
        let lane = lane.unwrap_or_else(|| queue.to_string());
        let raw: Vec<(String, u64)> = conn.hgetall(self.keys.queue(&lane).limits).await?;
        Ok(QueueLimits::from_fields(
            raw.iter().map(|(k, v)| (k.as_str(), *v)),
        ))
    }

    /// What the limits of `queue` are doing now: its limits, the jobs running per limit key
    /// (the `top` busiest keys), how many keyed jobs wait, and until when the queue or its
    /// keys are held. One pipeline on keys of the queue's slot.
    pub async fn limit_state(&self, queue: &str, top: usize) -> Result<LimitState> {
        let mut all = LimitState::default();
        let mut by_key: Vec<(String, u64)> = Vec::new();
        for lane in self.shards.lanes(queue) {
            let l = self.lane_limit_state(&lane, top).await?;
            if all.limits.is_empty() {
                all.limits = l.limits;
            }
            all.running += l.running;
            all.running_keys += l.running_keys;
            by_key.extend(l.running_by_key);
            all.keyed_ready += l.keyed_ready;
            all.held_until_ms = all.held_until_ms.max(l.held_until_ms);
            all.held_keys.extend(l.held_keys);
            all.held_key_count += l.held_key_count;
        }
        by_key.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        by_key.truncate(top);
        all.running_by_key = by_key;
        all.held_keys.sort_by_key(|(_, until)| *until);
        all.held_keys.truncate(top);
        Ok(all)
    }

    /// [`RedisQueue::limit_state`] of one lane: one pipeline on keys of its slot.
    async fn lane_limit_state(&self, queue: &str, top: usize) -> Result<LimitState> {
        let k = self.keys.queue(queue);
        let mut conn = self.conn.clone();
        let (limits, running_jobs, running, keyed_ready, held_ms, parked, parked_count): LimitReply =
            redis::pipe()
            .hgetall(&k.limits)
            .hlen(&k.slots)
            .hgetall(&k.running)
            .get(&k.key_ready_count)
            .pttl(&k.held)
            .zrange_withscores(&k.parked, 0, top as isize - 1)
            .zcard(&k.parked)
            .query_async(&mut conn)
            .await?;
        let now = crate::job::now_ms();
        let mut running: Vec<(String, u64)> = running
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k, n as u64))
            .collect();
        let running_keys = running.len();
        running.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        running.truncate(top);
        Ok(LimitState {
            limits: QueueLimits::from_fields(limits.iter().map(|(k, v)| (k.as_str(), *v))),
            running: running_jobs,
            running_keys,
            running_by_key: running,
            keyed_ready: keyed_ready.unwrap_or(0).max(0) as u64,
            held_until_ms: (held_ms > 0).then(|| now + held_ms),
            held_keys: parked
                .into_iter()
                .filter(|(_, until)| *until as i64 > now)
                .map(|(key, until)| (key, until as i64))
                .collect(),
            held_key_count: parked_count,
        })
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
        let mut inv = Op::Heartbeat.invocation(&k);
        inv.arg(lease.as_millis() as u64).arg(worker);
        for id in ids {
            inv.arg(id);
        }
        self.run(&inv).await
    }

    /// Forget jobs whose terminal state is recorded (see `ack.lua`). `worker` is `None` for
    /// the rescuer and the API.
    pub async fn ack(&self, queue: &str, worker: Option<&str>, ids: &[String]) -> Result<usize> {
        let k = self.keys.queue(queue);
        let mut n = 0;
        for chunk in ids.chunks(SCRIPT_BATCH) {
            let mut inv = Op::Ack.invocation(&k);
            inv.arg(worker.unwrap_or(""));
            for id in chunk {
                inv.arg(id);
            }
            let m: usize = self.run(&inv).await?;
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
        let mut n = 0;
        for chunk in items.chunks(SCRIPT_BATCH) {
            let mut inv = Op::Reschedule.invocation(&k);
            inv.arg(worker.unwrap_or("")).arg(self.wake(queue));
            for (id, at) in chunk {
                inv.arg(id).arg(*at);
            }
            let m: usize = self.run(&inv).await?;
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
        let mut inv = Op::Release.invocation(&k);
        inv.arg(worker).arg(self.wake(queue));
        for (id, score) in items {
            inv.arg(id).arg(format!("{score:.0}"));
        }
        self.run(&inv).await
    }

    /// Promote due scheduled jobs (at most `limit`). Returns the promoted ids and the time until
    /// the next scheduled job, if any.
    pub async fn promote(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<(Vec<String>, Option<Duration>)> {
        let k = self.keys.queue(queue);
        let mut inv = Op::Promote.invocation(&k);
        inv.arg(limit).arg(self.wake(queue));
        let (ids, next): (Vec<String>, i64) = self.run(&inv).await?;
        let next = (next >= 0).then(|| Duration::from_millis(next as u64));
        Ok((ids, next))
    }

    /// Take up to `limit` jobs from expired leases (and from rescues abandoned for `stale`).
    pub async fn rescue(&self, queue: &str, limit: usize, stale: Duration) -> Result<Vec<Claimed>> {
        let k = self.keys.queue(queue);
        let mut inv = Op::Rescue.invocation(&k);
        inv.arg(limit).arg(stale.as_millis() as u64);
        let raw: Vec<redis::Value> = self.run(&inv).await?;
        // Rescued jobs are not run here (their leases ended); no early slot release applies.
        parse_claimed(raw, false)
    }

    /// Cancel job `id` of `queue` in Redis (after MongoDB recorded it). On a sharded queue
    /// the lane is not known from MongoDB (a reshard may have moved it), so the job's lane
    /// under the current map is tried first, then the others.
    pub async fn cancel(
        &self,
        queue: &str,
        id: &str,
        shard_key: Option<&str>,
    ) -> Result<CancelEffect> {
        let mut lanes = self.shards.lanes(queue);
        let first = self.shards.lane_for(queue, shard_key.unwrap_or(id));
        if let Some(i) = lanes.iter().position(|l| *l == first) {
            lanes.swap(0, i);
        }
        for lane in lanes {
            let k = self.keys.queue(&lane);
            let mut inv = Op::Cancel.invocation(&k);
            inv.arg(id).arg(self.keys.cancel_channel());
            let r: String = self.run(&inv).await?;
            match r.as_str() {
                "removed" => return Ok(CancelEffect::Removed),
                "signalled" => return Ok(CancelEffect::Signalled),
                _ => {}
            }
        }
        Ok(CancelEffect::Absent)
    }

    /// Pause or resume claims from `queue`: sets or clears the flag `claim.lua` checks. The
    /// queue still accepts submissions while paused.
    /// On a sharded queue every lane has its own flag (under its own tag, for its claims):
    /// all are set or cleared.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let mut conn = self.conn.clone();
        for lane in self.shards.lanes(queue) {
            let k = self.keys.queue(&lane);
            if paused {
                let _: () = conn.set(&k.paused, "1").await?;
            } else {
                let _: () = conn.del(&k.paused).await?;
            }
        }
        Ok(())
    }

    /// Every queue name in use.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.keys.queues()).await?)
    }

    /// Whether Redis still holds its full copy of the live jobs of `queue` (see
    /// [`QueueKeys::epoch`]).
    pub async fn epoch_present(&self, queue: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.keys.queue(queue).epoch).await?)
    }

    /// Mark Redis as holding a full copy of the live jobs of `queue`. Only the reconciler calls
    /// this, after rebuilding the queue from MongoDB: were the enqueue script to set it, a
    /// queue whose node came back empty would look whole after its next submission.
    pub async fn set_epoch(&self, queue: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(
                self.keys.queue(queue).epoch,
                uuid::Uuid::new_v4().to_string(),
            )
            .await?;
        Ok(())
    }

    /// Which of `ids` (jobs of `queue`) Redis holds (a payload present in any lane), in
    /// order.
    pub async fn holds(&self, queue: &str, ids: &[String]) -> Result<Vec<bool>> {
        self.holds_in(&self.shards.lanes(queue), ids).await
    }

    /// Which of `ids` any of `lanes` holds (one pipeline per lane, each on one slot).
    pub async fn holds_in(&self, lanes: &[String], ids: &[String]) -> Result<Vec<bool>> {
        let mut out = vec![false; ids.len()];
        if ids.is_empty() {
            return Ok(out);
        }
        let mut conn = self.conn.clone();
        for lane in lanes {
            let k = self.keys.queue(lane);
            let mut pipe = redis::pipe();
            for id in ids {
                pipe.hexists(&k.payloads, id);
            }
            let held: Vec<bool> = pipe.query_async(&mut conn).await?;
            for (o, h) in out.iter_mut().zip(held) {
                *o |= h;
            }
        }
        Ok(out)
    }

    /// Whether a lane holds no job at all (nothing waiting, leased or being rescued): a
    /// draining lane may then leave the shard map.
    pub async fn lane_is_empty(&self, lane: &str) -> Result<bool> {
        let k = self.keys.queue(lane);
        let mut conn = self.conn.clone();
        let (payloads, leased, rescued, ready, scheduled): (u64, u64, u64, u64, u64) =
            redis::pipe()
                .hlen(&k.payloads)
                .zcard(&k.leased)
                .zcard(&k.rescued)
                .zcard(&k.ready)
                .zcard(&k.scheduled)
                .query_async(&mut conn)
                .await?;
        Ok(payloads + leased + rescued + ready + scheduled == 0)
    }

    /// The id before which the reconciler's fresh pass has checked every created job, if set.
    pub async fn fresh_mark(&self) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.get(self.keys.fresh_mark()).await?)
    }

    /// Move the reconciler's fresh-pass mark (see [`RedisQueue::fresh_mark`]).
    pub async fn set_fresh_mark(&self, mark: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.set(self.keys.fresh_mark(), mark).await?;
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

    /// Give the named lock up early (after the work it guarded is done). Unconditional: if
    /// the work outlasted the lock and another process holds it now, the worst case is two
    /// concurrent passes of idempotent work.
    pub async fn unlock(&self, name: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.del(self.keys.lock(name)).await?;
        Ok(())
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
        let mut inv = Op::Defer.invocation(&k);
        inv.arg(worker).arg(self.wake(queue));
        for (id, at) in items {
            inv.arg(id).arg(*at);
        }
        self.run(&inv).await
    }

    /// The keys of one queue.
    pub fn queue_keys(&self, queue: &str) -> QueueKeys {
        self.keys.queue(queue)
    }
}

/// One element of a script's array reply, as `T`.
fn field<T: redis::FromRedisValue>(v: Option<redis::Value>, what: &str) -> Result<T> {
    let v = v.ok_or_else(|| Error::Corrupt(format!("claim reply without {what}")))?;
    redis::from_redis_value(v).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn parse_claimed(raw: Vec<redis::Value>, capped: bool) -> Result<Vec<Claimed>> {
    let mut out = Vec::with_capacity(raw.len() / 3);
    let mut it = raw.into_iter();
    while let (Some(_id), Some(attempt), Some(payload)) = (it.next(), it.next(), it.next()) {
        let attempt: u32 = redis::from_redis_value(attempt)
            .map_err(|e| Error::Corrupt(format!("attempt: {e}")))?;
        let payload: String = redis::from_redis_value(payload)
            .map_err(|e| Error::Corrupt(format!("payload: {e}")))?;
        let payload: Payload =
            serde_json::from_str(&payload).map_err(|e| Error::Corrupt(format!("payload: {e}")))?;
        out.push(Claimed {
            payload,
            attempt,
            capped,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_conn::key_slot;

    /// Highest `KEYS[n]` a script's source uses.
    fn highest_key_index(source: &str) -> usize {
        source
            .match_indices("KEYS[")
            .filter_map(|(i, _)| {
                let rest = &source[i + 5..];
                rest[..rest.find(']')?].parse::<usize>().ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// Every script's key list lies in one Redis Cluster slot, for plain queue names and names
    /// that look like tags, and the list covers every `KEYS[n]` the script reads (a script
    /// that grew a key without the list growing would be caught here).
    #[test]
    fn every_script_touches_one_slot() {
        for prefix in ["jobmill", "t:lifecycle:ab12cd34", "a.b-c_d"] {
            let keys = Keys::new(prefix);
            // Plain queues, and shards of sharded queues (each under a tag of its own).
            let mut queues: Vec<String> = ["default", "imports", "q-1", "x_y", "9"]
                .map(String::from)
                .to_vec();
            for n in [2u16, 8, 64] {
                queues.extend((0..n).map(|i| crate::shards::lane_name("imports", i, n)));
            }
            for queue in &queues {
                let k = keys.queue(queue);
                for &op in Op::ALL {
                    let list = op.keys(&k);
                    assert_eq!(
                        list.len(),
                        highest_key_index(op.source()),
                        "{op:?}: key list and KEYS[n] of the script differ"
                    );
                    let slot = key_slot(list[0].as_bytes());
                    for key in &list {
                        assert_eq!(
                            key_slot(key.as_bytes()),
                            slot,
                            "{op:?} on {queue}: {key} is not in the slot of {}",
                            list[0]
                        );
                    }
                    // The queue's epoch lives in the same slot, so a node that lost the queue
                    // lost its epoch too.
                    assert_eq!(key_slot(k.epoch.as_bytes()), slot, "{op:?} epoch");
                    // Per-key sets: the scripts append a limit key to a prefix passed as a
                    // key; whatever the limit key, the name keeps the queue's tag.
                    for prefix in [&k.key_ready, &k.key_starts] {
                        for limit_key in ["customer:42", "api.stripe.com", "a", "{x}"] {
                            let full = format!("{prefix}{limit_key}");
                            assert_eq!(key_slot(full.as_bytes()), slot, "{op:?}: {full}");
                        }
                    }
                }
            }
        }
        assert_eq!(Op::ALL.len(), 12, "a new script must be added to Op::ALL");
    }
}
