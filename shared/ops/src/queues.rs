//! Queues as operators see them. Every figure comes from Redis structure sizes and the
//! per-minute history, so the cost of `GET /v1/queues` does not grow with the number of jobs:
//! a few O(1) or O(log n) commands per queue and at most 60 history documents per queue.

use std::collections::{BTreeMap, BTreeSet};

use jobmill::job::{MAX_PRIORITY, MIN_PRIORITY};
use jobmill::queue::RedisQueue;
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
        if empty && consumers == 0 && !s.paused && quiet_hour {
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
    }
}
