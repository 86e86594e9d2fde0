//! Workers as operators see them: what each worker publishes in the registry with its
//! heartbeat ([`WorkerStatus`], written by the worker), what the API answers ([`WorkerView`]),
//! and the commands an operator sends to one worker ([`Command`]).
//!
//! The registry is the engine's: a ZSET of worker id → last heartbeat and a hash per worker.
//! The hash carries the whole status as JSON in one field ([`STATUS_FIELD`]), next to the
//! engine's own fields, and lives for [`SEEN_FOR`] so a worker that died is still listed (as
//! `gone`) for a while.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use jobmill::queue::RedisQueue;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::keys;

/// Hash field of the worker registry holding the JSON [`WorkerStatus`].
pub const STATUS_FIELD: &str = "status";
/// How long a worker stays listed after its last heartbeat.
pub const SEEN_FOR: Duration = Duration::from_secs(600);
/// A worker whose heartbeat is older than this many leases is `gone`.
pub const GONE_AFTER_LEASES: u32 = 3;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Claiming and running jobs.
    Running,
    /// Told to stop claiming (`quiet`): running jobs finish, the process stays up.
    Quiet,
    /// Draining before exit (SIGTERM or `stop`).
    Stopping,
    /// No heartbeat for more than three leases: dead, hung or cut off.
    Gone,
}

/// An operator's command to one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop claiming; keep running what is held.
    Quiet,
    /// Drain and exit, as on SIGTERM.
    Stop,
}

impl Command {
    /// The wire form (pub/sub payload).
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Quiet => "quiet",
            Command::Stop => "stop",
        }
    }

    /// From the wire form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "quiet" => Some(Command::Quiet),
            "stop" => Some(Command::Stop),
            _ => None,
        }
    }
}

/// A queue a worker consumes, with its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueWeightView {
    /// Queue name.
    pub name: String,
    /// Relative claim weight.
    pub weight: u32,
}

/// Counters since the worker started (only outcomes MongoDB applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerCounters {
    /// Attempts that ended `succeeded`.
    pub succeeded: u64,
    /// Attempts that ended `failed` (no attempts left).
    pub failed: u64,
    /// Attempts that ended `retrying`.
    pub retried: u64,
    /// Attempts that ended `cancelled`.
    pub cancelled: u64,
    /// Leases this worker found taken from it (expired before it renewed them).
    pub lease_expired: u64,
}

/// A job a worker holds right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeldJob {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// When this attempt started, ms since the epoch.
    pub started_ms: i64,
    /// When the lease runs out unless renewed, ms since the epoch.
    pub lease_expires_ms: i64,
}

/// What a worker publishes with each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Worker id (`host:pid:random`).
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Software version.
    pub version: String,
    /// Start time, ms since the epoch.
    pub started_ms: i64,
    /// This heartbeat's time, ms since the epoch.
    pub heartbeat_ms: i64,
    /// The lease length, so readers can tell `gone` without knowing the worker's settings.
    pub lease_ms: i64,
    /// `running`, `quiet` or `stopping` (never `gone`: readers decide that).
    pub state: WorkerState,
    /// Queues consumed.
    pub queues: Vec<QueueWeightView>,
    /// Handler slots.
    pub concurrency: usize,
    /// Slots running a handler now.
    pub busy: usize,
    /// Resident memory in bytes (0 where unknown).
    pub rss_bytes: u64,
    /// Counters since start.
    pub counters: WorkerCounters,
    /// Jobs held now.
    pub jobs: Vec<HeldJob>,
}

/// A held job in an answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HeldJobView {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// When this attempt started.
    pub started_at: DateTime<Utc>,
    /// When the lease runs out unless renewed.
    pub lease_expires_at: DateTime<Utc>,
}

/// One worker, as `GET /v1/workers` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerView {
    /// Worker id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Software version.
    pub version: String,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// Last heartbeat.
    pub last_heartbeat_at: DateTime<Utc>,
    /// `running`, `quiet`, `stopping` or `gone`.
    pub state: WorkerState,
    /// Queues with their weights.
    pub queues: Vec<QueueWeightView>,
    /// Handler slots.
    pub concurrency: usize,
    /// Busy slots.
    pub busy: usize,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Counters since start.
    pub counters: WorkerCounters,
    /// Jobs held now.
    pub jobs: Vec<HeldJobView>,
}

/// `{"workers": [...]}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerList {
    /// Live workers first, then gone ones; newest heartbeat first within each.
    pub workers: Vec<WorkerView>,
}

pub(crate) fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl WorkerStatus {
    /// The view at `now_ms`: `gone` once the heartbeat is older than three leases.
    pub fn view(&self, now_ms: i64) -> WorkerView {
        let gone = now_ms - self.heartbeat_ms > self.lease_ms * i64::from(GONE_AFTER_LEASES);
        WorkerView {
            id: self.id.clone(),
            host: self.host.clone(),
            pid: self.pid,
            version: self.version.clone(),
            started_at: at(self.started_ms),
            last_heartbeat_at: at(self.heartbeat_ms),
            state: if gone { WorkerState::Gone } else { self.state },
            queues: self.queues.clone(),
            concurrency: self.concurrency,
            busy: if gone { 0 } else { self.busy },
            rss_bytes: self.rss_bytes,
            counters: self.counters.clone(),
            jobs: self
                .jobs
                .iter()
                .map(|j| HeldJobView {
                    id: j.id.clone(),
                    kind: j.kind.clone(),
                    queue: j.queue.clone(),
                    started_at: at(j.started_ms),
                    lease_expires_at: at(j.lease_expires_ms),
                })
                .collect(),
        }
    }
}

/// Resident memory of this process in bytes, from `/proc/self/statm` (0 elsewhere).
pub fn current_rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // 4 KiB pages: the size on every platform jobmill ships for.
    pages * 4096
}

/// Publish `status` in the registry (called by the worker's heartbeat).
pub async fn publish_status(queue: &RedisQueue, status: &WorkerStatus) -> jobmill::Result<()> {
    let keys = queue.keys();
    let key = keys.worker(&status.id);
    let json = serde_json::to_string(status).map_err(|e| jobmill::Error::Corrupt(e.to_string()))?;
    let mut conn = queue.connection();
    redis::pipe()
        .hset(&key, STATUS_FIELD, json)
        .ignore()
        .pexpire(&key, SEEN_FOR.as_millis() as i64)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// Every worker seen in the last [`SEEN_FOR`], live ones first.
pub async fn list(queue: &RedisQueue) -> jobmill::Result<Vec<WorkerView>> {
    let keys = queue.keys();
    let now = jobmill::job::now_ms();
    let since = now - SEEN_FOR.as_millis() as i64;
    let mut conn = queue.connection();
    // Entries older than the window are forgotten here; their hashes have expired.
    let _: () = conn.zrembyscore(keys.workers(), "-inf", since).await?;
    let ids: Vec<String> = conn.zrevrangebyscore(keys.workers(), "+inf", since).await?;
    // One HGET per worker, not one pipeline: each worker's hash has a slot of its own on a
    // Redis Cluster, and a pipeline is routed as a whole.
    let raw: Vec<Option<String>> = futures::future::try_join_all(ids.iter().map(|id| {
        let mut conn = conn.clone();
        let key = keys.worker(id);
        async move { conn.hget::<_, _, Option<String>>(key, STATUS_FIELD).await }
    }))
    .await?;
    let mut out: Vec<WorkerView> = raw
        .into_iter()
        .flatten()
        .filter_map(|s| serde_json::from_str::<WorkerStatus>(&s).ok())
        .map(|s| s.view(now))
        .collect();
    // Stable: live first, each group already newest heartbeat first.
    out.sort_by_key(|w| w.state == WorkerState::Gone);
    Ok(out)
}

/// One worker, if seen in the last [`SEEN_FOR`].
pub async fn get(queue: &RedisQueue, id: &str) -> jobmill::Result<Option<WorkerView>> {
    let mut conn = queue.connection();
    let raw: Option<String> = conn.hget(queue.keys().worker(id), STATUS_FIELD).await?;
    Ok(raw
        .and_then(|s| serde_json::from_str::<WorkerStatus>(&s).ok())
        .map(|s| s.view(jobmill::job::now_ms())))
}

/// Send `command` to worker `id`. Returns how many subscribers heard it (0: the worker is not
/// listening, e.g. gone).
pub async fn send(queue: &RedisQueue, id: &str, command: Command) -> jobmill::Result<usize> {
    let mut conn = queue.connection();
    let n: usize = conn
        .publish(keys::control_channel(queue.keys(), id), command.as_str())
        .await?;
    Ok(n)
}

/// Queue name → number of live workers consuming it.
pub fn consumers(workers: &[WorkerView]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for w in workers.iter().filter(|w| w.state != WorkerState::Gone) {
        for q in &w.queues {
            *out.entry(q.name.clone()).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(heartbeat_ms: i64) -> WorkerStatus {
        WorkerStatus {
            id: "h:1:x".into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            started_ms: 0,
            heartbeat_ms,
            lease_ms: 1000,
            state: WorkerState::Quiet,
            queues: vec![],
            concurrency: 4,
            busy: 2,
            rss_bytes: 0,
            counters: WorkerCounters::default(),
            jobs: vec![],
        }
    }

    #[test]
    fn a_worker_is_gone_after_three_leases_without_heartbeat() {
        assert_eq!(status(10_000).view(13_000).state, WorkerState::Quiet);
        let gone = status(10_000).view(13_001);
        assert_eq!(gone.state, WorkerState::Gone);
        assert_eq!(gone.busy, 0);
    }

    #[test]
    fn commands_round_trip() {
        for c in [Command::Quiet, Command::Stop] {
            assert_eq!(Command::parse(c.as_str()), Some(c));
        }
        assert_eq!(Command::parse("reboot"), None);
    }
}
