//! Queues as operators see them. Every figure comes from Redis structure sizes and the
//! per-minute history, so the cost of `GET /v1/queues` does not grow with the number of jobs:
//! a few O(1) or O(log n) commands per queue and at most 60 history documents per queue.

use std::collections::{BTreeMap, BTreeSet};

use jobmill::job::{MAX_PRIORITY, MIN_PRIORITY};
use jobmill::limits::LimitsSpec;
use jobmill::queue::{LimitState, RedisQueue};
use jobmill::Result;
use serde::Serialize;
use utoipa::ToSchema;

use crate::history::Recent;

/// Live jobs of a queue by state, from structure sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueueCounts {
    /// Ready to run (the ready set).
    pub queued: u64,
    /// Waiting for their first run time (the schedule set minus retries).
    pub scheduled: u64,
    /// Waiting for a retry's backoff (the retrying set).
    pub retrying: u64,
    /// Leased to a worker, or taken from an expired lease and being rescued.
    pub running: u64,
}

/// One queue, as `GET /v1/queues` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueView {
    /// Queue name.
    pub name: String,
    /// Whether claims are paused.
    pub paused: bool,
    /// Live jobs by state.
    pub counts: QueueCounts,
    /// Age of the oldest job ready to run, in seconds (0 when none is ready).
    pub latency_seconds: f64,
    /// Live workers consuming the queue.
    pub consumers: usize,
    /// Jobs that succeeded in the last 60 minutes.
    pub succeeded_1h: u64,
    /// Jobs that failed in the last 60 minutes.
    pub failed_1h: u64,
    /// Succeeded and failed over the last 1, 5 and 60 minutes.
    pub recent: Recent,
    /// The queue's limits and what they are doing; absent when the queue has no limits and
    /// no job with a `limit_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsView>,
}

/// How many jobs of a limit key run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct KeyRunning {
    /// The limit key.
    pub key: String,
    /// Its jobs running.
    pub running: u64,
}

/// A limit key held until a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct KeyHeld {
    /// The limit key.
    pub key: String,
    /// Held (a handler answered `RateLimited`, or its `key_rate` is used up) until then, ms
    /// since the epoch.
    pub until_ms: i64,
}

/// The limits of a queue and what they are doing now (`GET /v1/queues`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LimitsView {
    /// The limits in force (empty when none is set).
    pub set: LimitsSpec,
    /// Jobs of the queue running (holding a slot).
    pub running: u64,
    /// Limit keys with jobs running.
    pub running_keys: u64,
    /// The busiest keys (at most 10), most jobs running first.
    pub top_keys: Vec<KeyRunning>,
    /// Jobs with a `limit_key` waiting to run (part of `counts.queued`).
    pub keyed_queued: u64,
    /// The whole queue is held until then (ms since the epoch): a job without a key answered
    /// `RateLimited`.
    pub throttled_until_ms: Option<i64>,
    /// Keys held, soonest free first (at most 10).
    pub throttled_keys: Vec<KeyHeld>,
    /// Keys held, all of them.
    pub throttled_key_count: u64,
}

/// Busiest and held keys shown per queue.
const TOP_KEYS: usize = 10;

impl LimitsView {
    fn from_state(l: LimitState) -> Option<Self> {
        let active = !l.limits.is_empty()
            || l.running_keys > 0
            || l.keyed_ready > 0
            || l.held_until_ms.is_some()
            || l.held_key_count > 0;
        active.then(|| LimitsView {
            set: l.limits.into(),
            running: l.running as u64,
            running_keys: l.running_keys as u64,
            top_keys: l
                .running_by_key
                .into_iter()
                .map(|(key, running)| KeyRunning { key, running })
                .collect(),
            keyed_queued: l.keyed_ready,
            throttled_until_ms: l.held_until_ms,
            throttled_keys: l
                .held_keys
                .into_iter()
                .map(|(key, until_ms)| KeyHeld { key, until_ms })
                .collect(),
            throttled_key_count: l.held_key_count as u64,
        })
    }
}

/// `{"queues": [...]}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueList {
    /// Queues with jobs, workers, a pause, or outcomes in the last hour; by name.
    pub queues: Vec<QueueView>,
}

/// What Redis says about one queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueState {
    /// Whether claims are paused.
    pub paused: bool,
    /// Counts by state.
    pub counts: QueueCounts,
    /// Ready time (ms since the epoch) of the oldest ready job.
    pub oldest_ready_ms: Option<i64>,
    /// Limits and their state, if any.
    pub limits: Option<LimitsView>,
}

/// Read one queue's structure sizes: one round trip per lane (every key of a lane is in its
/// slot). A sharded queue's figures add its lanes up (draining ones included); it shows as
/// paused when any lane is (pausing sets every lane's flag).
pub async fn state(queue: &RedisQueue, name: &str) -> Result<QueueState> {
    let mut total = QueueState::default();
    for lane in queue.lanes(name) {
        let s = lane_state(queue, &lane).await?;
        total.paused |= s.paused;
        total.counts.queued += s.counts.queued;
        total.counts.scheduled += s.counts.scheduled;
        total.counts.retrying += s.counts.retrying;
        total.counts.running += s.counts.running;
        total.oldest_ready_ms = match (total.oldest_ready_ms, s.oldest_ready_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    // Limits over every lane. Jobs with a limit key wait in per-key ready sets, counted apart
    // (their age is not in `latency_seconds`: reading every key's head would cost a lookup
    // per key).
    total.limits = LimitsView::from_state(queue.limit_state(name, TOP_KEYS).await?);
    total.counts.queued += total.limits.as_ref().map_or(0, |l| l.keyed_queued);
    Ok(total)
}

/// One lane's structure sizes in one round trip.
async fn lane_state(queue: &RedisQueue, lane: &str) -> Result<QueueState> {
    let k = queue.queue_keys(lane);
    let mut conn = queue.connection();
    let mut pipe = redis::pipe();
    pipe.exists(&k.paused)
        .zcard(&k.ready)
        .zcard(&k.scheduled)
        .scard(&k.retrying)
        .zcard(&k.leased)
        .zcard(&k.rescued);
    // The ready score is priority band * 1e13 + ready time (job::ready_score), so the oldest
    // ready job is the head of one of the bands: one bounded lookup per band.
    let bands: Vec<i32> = (MIN_PRIORITY..=MAX_PRIORITY).collect();
    for p in &bands {
        let band = f64::from(MAX_PRIORITY - p) * 1e13;
        pipe.cmd("ZRANGEBYSCORE")
            .arg(&k.ready)
            .arg(format!("{band:.0}"))
            .arg(format!("({:.0}", band + 1e13))
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
    }
    let raw: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    let mut it = raw.into_iter();
    let mut next = || it.next().unwrap_or(redis::Value::Nil);
    let paused: bool = val(next())?;
    let sizes: [u64; 5] = [
        val(next())?,
        val(next())?,
        val(next())?,
        val(next())?,
        val(next())?,
    ];
    let mut heads: Vec<Vec<(String, f64)>> = Vec::with_capacity(bands.len());
    for _ in &bands {
        heads.push(val(next())?);
    }
    let [ready, scheduled, retrying, leased, rescued] = sizes;
    let oldest_ready_ms = heads
        .iter()
        .filter_map(|h| h.first())
        .map(|(_, score)| (score % 1e13) as i64)
        .min();
    Ok(QueueState {
        paused,
        counts: QueueCounts {
            queued: ready,
            // The retrying set is a subset of the schedule set.
            scheduled: scheduled.saturating_sub(retrying),
            retrying,
            running: leased + rescued,
        },
        oldest_ready_ms,
        limits: None,
    })
}

/// Every queue worth showing.
pub async fn list(
    queue: &RedisQueue,
    consumers: &BTreeMap<String, usize>,
    recent: &BTreeMap<String, Recent>,
) -> Result<Vec<QueueView>> {
    let mut names: BTreeSet<String> = queue.queue_names().await?.into_iter().collect();
    names.extend(consumers.keys().cloned());
    names.extend(recent.keys().cloned());
    let now = jobmill::job::now_ms();
    let mut out = Vec::new();
    for name in names {
        let s = state(queue, &name).await?;
        let c = &s.counts;
        let consumers = consumers.get(&name).copied().unwrap_or(0);
        let recent = recent.get(&name).cloned().unwrap_or_default();
        let empty = c.queued + c.scheduled + c.retrying + c.running == 0;
        let quiet_hour = recent.last_60m.succeeded + recent.last_60m.failed == 0;
        if empty && consumers == 0 && !s.paused && quiet_hour && s.limits.is_none() {
            continue;
        }
        out.push(view(name, s, consumers, recent, now));
    }
    Ok(out)
}

/// One queue (shown even when it is empty).
pub async fn one(
    queue: &RedisQueue,
    name: &str,
    consumers: &BTreeMap<String, usize>,
    recent: &BTreeMap<String, Recent>,
) -> Result<QueueView> {
    let s = state(queue, name).await?;
    Ok(view(
        name.to_string(),
        s,
        consumers.get(name).copied().unwrap_or(0),
        recent.get(name).cloned().unwrap_or_default(),
        jobmill::job::now_ms(),
    ))
}

fn val<T: redis::FromRedisValue>(v: redis::Value) -> Result<T> {
    redis::from_redis_value(v).map_err(|e| jobmill::Error::Corrupt(format!("queue sizes: {e}")))
}

fn view(name: String, s: QueueState, consumers: usize, recent: Recent, now: i64) -> QueueView {
    QueueView {
        name,
        paused: s.paused,
        latency_seconds: s
            .oldest_ready_ms
            .map(|t| (now - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0),
        counts: s.counts,
        consumers,
        succeeded_1h: recent.last_60m.succeeded,
        failed_1h: recent.last_60m.failed,
        recent,
        limits: s.limits,
    }
}
