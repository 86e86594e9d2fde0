//! apalis-core 1.0's board/inspection traits (`backend::expose`) over jobmill, so apalis' board
//! can list jobmill queues, workers and jobs: [`ListQueues`], [`ListWorkers`], [`ListTasks`]
//! (this backend's kind), [`ListAllTasks`] (every kind) and [`Metrics`]. Jobs are read from
//! MongoDB (the system of record, all tenants: the board is an operator tool), queue depths
//! and workers from Redis (the worker registry the heartbeats keep).

use std::collections::HashMap;

use apalis_core::backend::codec::Codec;
use apalis_core::backend::{
    Filter, ListAllTasks, ListQueues, ListTasks, ListWorkers, Metrics, QueueInfo, RunningWorker,
    StatType, Statistic, WireFormatBackend,
};
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::status::Status;
use apalis_core::task::task_id::TaskId;
use apalis_core::task::Task;
use jobmill::job::Job;
use jobmill::store::ListQuery;
use jobmill::JobState;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::backend::JobmillBackend;
use crate::error::Error;

/// Most jobs one board page may reach (pages are offsets over a newest-first listing).
const MAX_SCAN: u32 = 1000;

/// Arguments as JSON: the wire format of jobmill jobs (`args` is stored as JSON text).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl<T: Serialize + DeserializeOwned> Codec<T> for JsonCodec {
    type Error = serde_json::Error;
    type Compact = Value;

    fn encode(&self, val: &T) -> Result<Value, serde_json::Error> {
        serde_json::to_value(val)
    }

    fn decode(&self, val: &Value) -> Result<T, serde_json::Error> {
        serde_json::from_value(val.clone())
    }
}

impl<Args> WireFormatBackend for JobmillBackend<Args> {
    type Codec = JsonCodec;
    type Compact = Value;

    fn codec(&self) -> &JsonCodec {
        &JsonCodec
    }
}

/// apalis' status of a jobmill state.
pub fn status_of(state: JobState) -> Status {
    match state {
        JobState::Queued => Status::Queued,
        JobState::Scheduled | JobState::Retrying => Status::Pending,
        JobState::Running => Status::Running,
        JobState::Succeeded => Status::Done,
        JobState::Failed => Status::Failed,
        JobState::Cancelled => Status::Killed,
    }
}

/// The jobmill states an apalis status stands for.
fn states_of(status: &Status) -> Vec<JobState> {
    JobState::ALL
        .into_iter()
        .filter(|s| status_of(*s) == *status)
        .collect()
}

fn task_of(job: Job) -> Task<Value> {
    let args = serde_json::from_str(&job.args_json).unwrap_or(Value::Null);
    let mut b = TaskBuilder::new(args)
        .task_id(TaskId::String(job.id))
        .attempt(job.attempt.max(0) as usize)
        .max_attempts(job.max_attempts.max(1) as usize)
        .priority(job.priority.max(0) as usize)
        .queue(job.queue.into())
        .status(status_of(job.state))
        .run_at_timestamp((job.run_at_ms.max(0) / 1000) as u64)
        .done_at(job.finished_ms.map(|ms| (ms.max(0) / 1000) as u64))
        .lock_at(job.started_ms.map(|ms| (ms.max(0) / 1000) as u64));
    if let Some(k) = job.idempotency_key {
        b = b.idempotency_key(k);
    }
    b.build()
}

impl<Args> JobmillBackend<Args> {
    /// Newest-first jobs (of `kind` if given) matching the board's filter.
    async fn tasks(&self, kind: Option<&str>, filter: &Filter) -> Result<Vec<Task<Value>>, Error> {
        let offset = filter.offset().min(MAX_SCAN) as usize;
        let limit = filter.limit().min(MAX_SCAN) as usize;
        let states: Vec<Option<JobState>> = match &filter.status {
            Some(s) => states_of(s).into_iter().map(Some).collect(),
            None => vec![None],
        };
        let mut jobs = Vec::new();
        for state in states {
            jobs.extend(
                self.runtime()
                    .store()
                    .list(&ListQuery {
                        tenant: None,
                        state,
                        kind: kind.map(str::to_string),
                        queue: None,
                        before: None,
                        limit: (offset + limit) as i64,
                        ..Default::default()
                    })
                    .await?,
            );
        }
        // Job ids are UUIDv7: newest first is descending id.
        jobs.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(jobs
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(task_of)
            .collect())
    }

    /// Every registered worker; `kind` keeps those that serve it.
    async fn workers(&self, kind: Option<&str>) -> Result<Vec<RunningWorker>, Error> {
        let queue = self.runtime().queue();
        let keys = queue.keys();
        let mut conn = queue.connection();
        let ids: Vec<String> = conn
            .zrange(keys.workers(), 0, -1)
            .await
            .map_err(jobmill::Error::from)?;
        let mut out = Vec::new();
        for id in ids {
            let h: HashMap<String, String> = conn
                .hgetall(keys.worker(&id))
                .await
                .map_err(jobmill::Error::from)?;
            if h.is_empty() {
                continue; // expired: the worker stopped heartbeating
            }
            let kinds = h.get("kinds").cloned().unwrap_or_default();
            if kind.is_some_and(|k| !kinds.split(',').any(|x| x == k)) {
                continue;
            }
            let ms = |f: &str| h.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out.push(RunningWorker {
                id,
                queue: h.get("queues").cloned().unwrap_or_default(),
                backend: "jobmill".into(),
                started_at: ms("started_ms") / 1000,
                last_heartbeat: ms("heartbeat_ms") / 1000,
                layers: format!("kinds: {kinds}"),
            });
        }
        Ok(out)
    }

    /// Depths of one queue in Redis: ready, scheduled (incl. retry backoff) and leased.
    async fn queue_stats(&self, name: &str) -> Result<Vec<Statistic>, Error> {
        let queue = self.runtime().queue();
        let mut conn = queue.connection();
        let (mut ready, mut scheduled, mut leased) = (0u64, 0u64, 0u64);
        // A sharded queue's depths are the sums over its lanes (one pipeline per lane's slot).
        for lane in queue.lanes(name) {
            let k = queue.queue_keys(&lane);
            let (r, s, l): (u64, u64, u64) = redis::pipe()
                .zcard(&k.ready)
                .zcard(&k.scheduled)
                .zcard(&k.leased)
                .query_async(&mut conn)
                .await
                .map_err(jobmill::Error::from)?;
            ready += r;
            scheduled += s;
            leased += l;
        }
        Ok([
            ("ready", ready),
            ("scheduled", scheduled),
            ("leased", leased),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (title, v))| Statistic {
            title: title.into(),
            stat_type: StatType::Number,
            value: v.to_string(),
            priority: Some(i as u64),
        })
        .collect())
    }
}

impl<Args> ListTasks for JobmillBackend<Args>
where
    Args: DeserializeOwned + Send + Sync + 'static,
{
    async fn list_tasks(&self, filter: &Filter) -> Result<Vec<Task<Value>>, Error> {
        self.tasks(Some(self.kind()), filter).await
    }
}

impl<Args> ListAllTasks for JobmillBackend<Args>
where
    Args: DeserializeOwned + Send + Sync + 'static,
{
    async fn list_all_tasks(&self, filter: &Filter) -> Result<Vec<Task<Value>>, Error> {
        self.tasks(None, filter).await
    }
}

impl<Args> ListWorkers for JobmillBackend<Args>
where
    Args: DeserializeOwned + Send + Sync + 'static,
{
    async fn list_workers(&self) -> Result<Vec<RunningWorker>, Error> {
        self.workers(Some(self.kind())).await
    }

    async fn list_all_workers(&self) -> Result<Vec<RunningWorker>, Error> {
        self.workers(None).await
    }
}

impl<Args> ListQueues for JobmillBackend<Args>
where
    Args: DeserializeOwned + Send + Sync + 'static,
{
    async fn list_queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let names = self.runtime().queue().queue_names().await?;
        let workers = self.workers(None).await?;
        let mut out = Vec::new();
        for name in names {
            let serving = workers
                .iter()
                .filter(|w| {
                    w.queue
                        .split(',')
                        .any(|q| q.split(':').next() == Some(&name))
                })
                .map(|w| w.id.clone())
                .collect();
            out.push(QueueInfo {
                stats: self.queue_stats(&name).await?,
                name,
                workers: serving,
                activity: Vec::new(),
            });
        }
        Ok(out)
    }
}

impl<Args> Metrics for JobmillBackend<Args>
where
    Args: DeserializeOwned + Send + Sync + 'static,
{
    async fn global(&self) -> Result<Vec<Statistic>, Error> {
        let mut totals: HashMap<String, u64> = HashMap::new();
        for name in self.runtime().queue().queue_names().await? {
            for s in self.queue_stats(&name).await? {
                *totals.entry(s.title).or_default() += s.value.parse::<u64>().unwrap_or(0);
            }
        }
        let mut out: Vec<Statistic> = totals
            .into_iter()
            .map(|(title, v)| Statistic {
                title,
                stat_type: StatType::Number,
                value: v.to_string(),
                priority: None,
            })
            .collect();
        out.sort_by(|a, b| a.title.cmp(&b.title));
        Ok(out)
    }

    async fn fetch_by_queue(&self) -> Result<Vec<Statistic>, Error> {
        let mut out = Vec::new();
        for name in self.runtime().queue().queue_names().await? {
            for mut s in self.queue_stats(&name).await? {
                s.title = format!("{name}: {}", s.title);
                out.push(s);
            }
        }
        Ok(out)
    }
}
