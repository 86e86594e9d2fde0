//! Write-behind of outcomes, in two pipelined stages:
//! 1. MongoDB: whatever writes arrived while the previous batch was in flight go out together
//!    in one `update` command (hundreds of jobs per command at saturation).
//! 2. Redis: after MongoDB has the outcome, the job is acked, rescheduled or released in
//!    Redis, watchers are told, and the job leaves the in-flight table.
//!
//! The order is what makes a crash safe: until stage 2 runs the job is still leased (and its
//! lease renewed), so a worker that dies with outcomes in memory loses nothing: the leases
//! expire and the rescuer runs the jobs again. It is worse to lose a job than to run it twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobmill::job::Progress;
use jobmill::kind::ProgressSink;
use jobmill::observe::{AppliedOutcome, OutcomeHook};
use jobmill::outbox::{JobEvent, Subscribers};
use jobmill::queue::RedisQueue;
use jobmill::shards::logical;
use jobmill::state::Decision;
use jobmill::store::{Applied, RedisStep, Store, Write, WRITE_BATCH};
use jobmill_ops::metrics::{StoreName, WorkerMetrics};
use mongodb::bson::DateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::until_ok;
use crate::inflight::{Inflight, StopReason};

/// How often progress reports are written (the latest per job; older ones are dropped).
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long the MongoDB stage gathers writes after the first one arrives (see `mongo_stage`).
pub const GATHER: Duration = Duration::from_millis(20);
/// How long a stopping worker waits for its hooks' last writes.
const LAST_TICK: Duration = Duration::from_secs(5);
/// Items drained per round before coalescing (a start and its outcome usually both arrive,
/// so this yields about `WRITE_BATCH` statements).
const DRAIN: usize = 2 * WRITE_BATCH;

/// One write to record, with what Redis needs afterwards.
#[derive(Debug)]
pub struct Item {
    /// The lane holding the job in Redis ([`jobmill::job::Payload::lane`]: its queue, or its
    /// shard of a sharded queue); follow-ups go there.
    pub queue: String,
    /// The guarded write.
    pub write: Write,
    /// Ready score for a released job.
    pub release_score: f64,
}

/// Counters shown in the worker registry.
#[derive(Debug, Default)]
pub struct Stats {
    /// Attempts that ended `succeeded`.
    pub succeeded: AtomicU64,
    /// Attempts that ended `failed`.
    pub failed: AtomicU64,
    /// Attempts that ended `retrying`.
    pub retried: AtomicU64,
    /// Attempts that ended `cancelled`.
    pub cancelled: AtomicU64,
    /// Leases the heartbeat found taken from this worker.
    pub lease_expired: AtomicU64,
}

/// Latest progress per running job, drained every [`PROGRESS_EVERY`].
#[derive(Default)]
pub struct ProgressTable {
    jobs: Mutex<HashMap<String, Tracked>>,
}

/// What the table knows of a running job.
struct Tracked {
    queue: String,
    tenant: String,
    /// The latest report not yet written: (attempt, report).
    latest: Option<(u32, Progress)>,
    /// When its last `job.progress` event was recorded (the per-job rate limit).
    last_event: Option<Instant>,
}

/// One progress report ready to be written.
struct Report {
    id: String,
    queue: String,
    tenant: String,
    attempt: u32,
    progress: Progress,
}

impl ProgressTable {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.jobs.lock().expect("progress lock")
    }

    /// Remember which queue and tenant a running job belongs to.
    pub fn track(&self, id: &str, queue: &str, tenant: &str) {
        self.jobs().insert(
            id.to_string(),
            Tracked {
                queue: queue.to_string(),
                tenant: tenant.to_string(),
                latest: None,
                last_event: None,
            },
        );
    }

    /// Forget a job.
    pub fn untrack(&self, id: &str) {
        self.jobs().remove(id);
    }

    /// The job's unwritten progress report, removing it (it travels with the outcome instead).
    pub fn take(&self, id: &str) -> Option<Progress> {
        self.jobs()
            .get_mut(id)
            .and_then(|t| t.latest.take())
            .map(|(_, p)| p)
    }

    fn drain(&self) -> Vec<Report> {
        self.jobs()
            .iter_mut()
            .filter_map(|(id, t)| {
                let (attempt, progress) = t.latest.take()?;
                Some(Report {
                    id: id.clone(),
                    queue: t.queue.clone(),
                    tenant: t.tenant.clone(),
                    attempt,
                    progress,
                })
            })
            .collect()
    }

    /// Whether this job may emit a `job.progress` event now (at most one per `every`); if so,
    /// the time is taken.
    fn event_due(&self, id: &str, every: Duration) -> bool {
        let mut jobs = self.jobs();
        let Some(t) = jobs.get_mut(id) else {
            return false;
        };
        if t.last_event.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        t.last_event = Some(Instant::now());
        true
    }
}

impl ProgressSink for ProgressTable {
    fn report(&self, id: &str, attempt: u32, progress: Progress) {
        if let Some(t) = self.jobs().get_mut(id) {
            t.latest = Some((attempt, progress));
        }
    }
}

/// Sender side, held by executors.
///
/// The channel is unbounded on purpose: the fetcher stops claiming once
/// `JOBMILL_MAX_UNRECORDED` finished attempts wait here, which bounds it (at most a start and an
/// outcome per held job). A bounded channel would instead make handlers wait for MongoDB.
#[derive(Clone)]
pub struct Persister {
    tx: mpsc::UnboundedSender<Item>,
    /// Progress reports.
    pub progress: Arc<ProgressTable>,
    /// Cancelled when the MongoDB stage has ended (after its hooks' last tick).
    mongo_done: CancellationToken,
}

impl Persister {
    /// Queue a write.
    pub fn send(&self, item: Item) {
        if self.tx.send(item).is_err() {
            tracing::error!("persister stopped; outcome left to the lease rescuer");
        }
    }

    /// Wait until the MongoDB stage has ended, after the worker's stop: a process that exits
    /// sooner would cut the hooks' last writes off.
    pub async fn stopped(&self) {
        self.mongo_done.cancelled().await
    }
}

/// What the stages share.
pub struct Context {
    /// Store.
    pub store: Store,
    /// Queues.
    pub queue: RedisQueue,
    /// This worker's id (owner of its leases).
    pub worker: String,
    /// In-flight table.
    pub inflight: Arc<Inflight>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Fires when the worker has finished with everything.
    pub stop: CancellationToken,
    /// Who wants job events (the outbox).
    pub subscribers: Subscribers,
    /// Told of every flush's applied outcomes (the operator history).
    pub hooks: Vec<Arc<dyn OutcomeHook>>,
    /// Store errors are counted here.
    pub metrics: WorkerMetrics,
    /// Batches of at most this many writes go out one write per command (`JOBMILL_OUTCOME_SPLIT`).
    pub split: usize,
}

/// Start both stages.
pub fn spawn(ctx: Arc<Context>) -> Persister {
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::channel(4);
    let progress = Arc::new(ProgressTable::default());
    let (ctx2, progress2) = (ctx.clone(), progress.clone());
    let mongo_done = CancellationToken::new();
    let on_end = mongo_done.clone().drop_guard();
    tokio::spawn(async move {
        let _on_end = on_end;
        mongo_stage(ctx2, rx, done_tx, progress2).await
    });
    tokio::spawn(redis_stage(ctx, done_rx, progress.clone(), tx.clone()));
    Persister {
        tx,
        progress,
        mongo_done,
    }
}

type Batch = (Vec<Item>, Vec<Applied>);

async fn mongo_stage(
    ctx: Arc<Context>,
    mut rx: mpsc::UnboundedReceiver<Item>,
    done: mpsc::Sender<Batch>,
    progress: Arc<ProgressTable>,
) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            item = rx.recv() => match item {
                Some(i) => batch.push(i),
                None => return,
            },
            _ = tick.tick() => {
                for r in progress.drain() {
                    // Checked in this order so the rate limit is only spent on a sent event.
                    let event = ctx.subscribers.wants(&r.tenant, JobEvent::Progress)
                        && ctx
                            .subscribers
                            .progress_every()
                            .is_some_and(|every| progress.event_due(&r.id, every));
                    batch.push(Item {
                        queue: r.queue,
                        write: Write::Progress {
                            id: r.id,
                            attempt: r.attempt as i32,
                            progress: r.progress,
                            event,
                        },
                        release_score: 0.0,
                    });
                }
                tick_hooks(&ctx, false).await;
            }
            _ = ctx.stop.cancelled() => {
                tick_hooks(&ctx, true).await;
                return;
            }
        }
        // Gather for a moment before writing. A job's start and its outcome usually arrive
        // within a few ms of each other; written apart they cost MongoDB two commands per job
        // at a steady trickle, and on a store that serialises commands every extra one queues
        // in front of submissions (W3's tail). At saturation the batch fills before the window
        // ends, so throughput is unaffected; an outcome is recorded at most GATHER later.
        let window = tokio::time::Instant::now() + GATHER;
        while batch.len() < DRAIN {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(window, rx.recv()).await {
                        Ok(Some(i)) => batch.push(i),
                        Ok(None) | Err(_) => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        let batch = coalesce(batch);
        if batch.is_empty() {
            continue;
        }
        let writes: Vec<Write> = batch.iter().map(|i| i.write.clone()).collect();
        let Some(applied) = until_ok("record outcomes in mongodb", &ctx.stop, || async {
            let r = apply(&ctx, &writes).await;
            if r.is_err() {
                ctx.metrics.store_error(StoreName::Mongodb);
            }
            r
        })
        .await
        else {
            return;
        };
        tell_hooks(&ctx, &batch, &applied).await;
        if done.send((batch, applied)).await.is_err() {
            return;
        }
    }
}

/// Write one batch: in one command, or at a trickle one write per command.
///
/// A store that runs one command at a time (the MongoDB-compatible server of the dev stack
/// and the tests) makes a submission that arrives while the batch is written wait for all of
/// it; at a trickle that wait is most of a submission's tail (W3 in `docs/performance.md`).
/// One write per command lets submissions in between, for one more command per write. Only
/// small batches are split: once the store falls behind, batches grow past `split` and go
/// back to one command, so the extra commands never cost throughput. The commands go out in
/// order, one after the other, so a start and a later write of the same job still apply in
/// order; after an error the whole batch is sent again, which the guards make harmless (a
/// write that already took effect is recognised as such).
async fn apply(ctx: &Context, writes: &[Write]) -> jobmill::Result<Vec<Applied>> {
    if writes.len() > ctx.split {
        return ctx.store.apply(writes).await;
    }
    let mut applied = Vec::with_capacity(writes.len());
    for w in writes {
        applied.extend(ctx.store.apply(std::slice::from_ref(w)).await?);
    }
    Ok(applied)
}

/// Hand the outcomes MongoDB applied in this flush to the hooks, before the Redis follow-ups:
/// the jobs are still leased meanwhile, so a crash here loses no job (only, at worst, these
/// counts). Stale writes are left out, so each recorded transition is counted once.
async fn tell_hooks(ctx: &Context, batch: &[Item], applied: &[Applied]) {
    if ctx.hooks.is_empty() {
        return;
    }
    let outcomes: Vec<AppliedOutcome> = batch
        .iter()
        .zip(applied)
        .filter_map(|(item, applied)| match (&item.write, applied) {
            (
                Write::Finish {
                    started_at,
                    at,
                    decision,
                    ..
                },
                Applied::Done,
            ) => Some(AppliedOutcome::new(
                logical(&item.queue),
                decision,
                *started_at,
                *at,
            )),
            _ => None,
        })
        .collect();
    if outcomes.is_empty() {
        return;
    }
    let flush = uuid::Uuid::new_v4().to_string();
    for hook in &ctx.hooks {
        until_ok("record outcome history", &ctx.stop, || {
            hook.record(&flush, &outcomes)
        })
        .await;
    }
}

/// Let the hooks write what they deferred (everything when `last`, at shutdown). Not retried
/// here: a hook keeps what it could not write for its next tick. The last tick is bounded, so
/// a store that is down cannot hold up a stopping worker; the counts are then lost, never a job.
async fn tick_hooks(ctx: &Context, last: bool) {
    for hook in &ctx.hooks {
        let r = if last {
            tokio::time::timeout(LAST_TICK, hook.tick(true))
                .await
                .unwrap_or(Ok(()))
        } else {
            hook.tick(false).await
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "outcome hook tick failed; retried at the next tick");
        }
    }
}

/// Count a failed Redis follow-up.
fn counted<T>(ctx: &Context, r: jobmill::Result<T>) -> jobmill::Result<T> {
    if r.is_err() {
        ctx.metrics.store_error(StoreName::Redis);
    }
    r
}

/// Drop writes a later write of the same batch makes redundant: a start or progress report
/// followed by the attempt's outcome (the outcome carries the start time).
fn coalesce(batch: Vec<Item>) -> Vec<Item> {
    let finished: HashSet<(String, i32)> = batch
        .iter()
        .filter_map(|i| match &i.write {
            Write::Finish { id, attempt, .. } | Write::Release { id, attempt } => {
                Some((id.clone(), *attempt))
            }
            _ => None,
        })
        .collect();
    if finished.is_empty() {
        return batch;
    }
    batch
        .into_iter()
        .filter(|i| match &i.write {
            Write::Start { id, attempt, .. } | Write::Progress { id, attempt, .. } => {
                !finished.contains(&(id.clone(), *attempt))
            }
            _ => true,
        })
        .collect()
}

#[derive(Default)]
struct FollowUps {
    ack: HashMap<String, Vec<String>>,
    reschedule: HashMap<String, Vec<(String, i64)>>,
    release: HashMap<String, Vec<(String, f64)>>,
    throttle: HashMap<String, Vec<(String, i64)>>,
    changed: Vec<String>,
    leave: Vec<String>,
}

async fn redis_stage(
    ctx: Arc<Context>,
    mut rx: mpsc::Receiver<Batch>,
    progress: Arc<ProgressTable>,
    resend: mpsc::UnboundedSender<Item>,
) {
    while let Some((items, applied)) = tokio::select! {
        b = rx.recv() => b,
        _ = ctx.stop.cancelled() => None,
    } {
        let mut f = FollowUps::default();
        let now = DateTime::now().timestamp_millis();
        for (item, applied) in items.into_iter().zip(applied) {
            let id = item.write.id().to_string();
            let then = item.write.follow_up(&applied, now);
            if then.then_cancel {
                // A cancel was requested for this attempt and MongoDB refused our retry or
                // failure: record `cancelled` instead. The job stays leased (and in the
                // in-flight table) until that write lands, so nothing can rerun it meanwhile.
                if let Write::Finish {
                    attempt,
                    started_at,
                    decision,
                    ..
                } = &item.write
                {
                    tracing::info!(job = %id, attempt, "cancel requested; recording cancelled instead of {}", decision.state());
                    let _ = resend.send(Item {
                        queue: item.queue.clone(),
                        write: Write::Finish {
                            id: id.clone(),
                            attempt: *attempt,
                            started_at: *started_at,
                            at: DateTime::now(),
                            decision: Decision::Cancel(
                                "cancel requested while the attempt ran".into(),
                            ),
                            progress: None,
                            // As for a cancel of a waiting job: always recorded; the outbox
                            // loop clears an entry nobody wants.
                            record_event: true,
                        },
                        release_score: 0.0,
                    });
                }
                continue;
            }
            if let (Write::Finish { decision, .. }, Applied::Done) = (&item.write, &applied) {
                let counter = match decision {
                    Decision::Succeed(_) => &ctx.stats.succeeded,
                    // A rate-limited job runs again, like a retry (its attempt is not charged).
                    Decision::Retry { .. } | Decision::Throttle { .. } => &ctx.stats.retried,
                    Decision::Fail(_) => &ctx.stats.failed,
                    Decision::Cancel(_) => &ctx.stats.cancelled,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            match then.step {
                RedisStep::Keep => {}
                RedisStep::StopHandler => {
                    // Cancelled or moved on while we claimed it. Its outcome will be refused
                    // too, and that path cleans Redis up.
                    tracing::info!(job = %id, "start refused; stopping the handler");
                    ctx.inflight.stop(&id, StopReason::Stale);
                }
                RedisStep::Ack => f.ack.entry(item.queue).or_default().push(id.clone()),
                RedisStep::Reschedule(at) => f
                    .reschedule
                    .entry(item.queue)
                    .or_default()
                    .push((id.clone(), at)),
                RedisStep::Throttle(at) => f
                    .throttle
                    .entry(item.queue)
                    .or_default()
                    .push((id.clone(), at)),
                RedisStep::Release => f
                    .release
                    .entry(item.queue)
                    .or_default()
                    .push((id.clone(), item.release_score)),
            }
            if let (
                Write::Finish { attempt, .. },
                Applied::Stale {
                    actual,
                    attempt: now_attempt,
                },
            ) = (&item.write, &applied)
            {
                tracing::info!(job = %id, attempt, ?actual, now_attempt, "outcome refused: the job moved on");
            }
            if then.changed {
                f.changed.push(id.clone());
            }
            if then.done {
                f.leave.push(id);
            }
        }
        let worker = ctx.worker.as_str();
        for (q, ids) in &f.ack {
            until_ok("ack in redis", &ctx.stop, || async {
                counted(&ctx, ctx.queue.ack(q, Some(worker), ids).await)
            })
            .await;
        }
        for (q, items) in &f.reschedule {
            until_ok("reschedule in redis", &ctx.stop, || async {
                counted(&ctx, ctx.queue.reschedule(q, Some(worker), items).await)
            })
            .await;
        }
        for (q, items) in &f.throttle {
            until_ok("throttle in redis", &ctx.stop, || async {
                counted(&ctx, ctx.queue.throttle(q, worker, items).await)
            })
            .await;
        }
        for (q, items) in &f.release {
            until_ok("release in redis", &ctx.stop, || async {
                counted(&ctx, ctx.queue.release(q, worker, items).await)
            })
            .await;
        }
        if let Err(e) = ctx.queue.publish_changes(&f.changed).await {
            tracing::debug!(error = %e, "could not publish job changes");
        }
        for id in &f.leave {
            progress.untrack(id);
            ctx.inflight.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(write: Write) -> Item {
        Item {
            queue: "q".into(),
            write,
            release_score: 0.0,
        }
    }

    #[test]
    fn a_start_followed_by_its_outcome_is_one_write() {
        let at = DateTime::now();
        let batch = vec![
            item(Write::Start {
                id: "a".into(),
                attempt: 1,
                at,
            }),
            item(Write::Start {
                id: "b".into(),
                attempt: 1,
                at,
            }),
            item(Write::Progress {
                id: "a".into(),
                attempt: 1,
                progress: Progress {
                    done: 1,
                    total: None,
                    message: None,
                },
                event: false,
            }),
            item(Write::Finish {
                id: "a".into(),
                attempt: 1,
                started_at: Some(at),
                at,
                decision: Decision::Succeed(serde_json::json!(null)),
                progress: None,
                record_event: false,
            }),
            // An older attempt's start is not the same attempt: kept.
            item(Write::Start {
                id: "b".into(),
                attempt: 2,
                at,
            }),
        ];
        let kept: Vec<String> = coalesce(batch)
            .iter()
            .map(|i| format!("{:?}", std::mem::discriminant(&i.write)) + i.write.id())
            .collect();
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert!(kept.iter().filter(|k| k.ends_with('a')).count() == 1);
    }
}
