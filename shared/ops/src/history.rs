//! Per-queue, per-minute outcome history in MongoDB (`queue_history`): succeeded, failed,
//! retried and cancelled counts, and run times as a sum and a fixed-bucket histogram (for the
//! average and the p95). The worker's persister feeds it through [`HistoryHook`] with the
//! outcomes MongoDB applied, so the counts are those of recorded transitions; the hook writes
//! them at most once per [`WRITE_EVERY`] (and at the worker's stop), so a figure lags the jobs
//! by about a second. Buckets live for [`KEEP`] and survive restarts and Redis
//! wipes; `GET /v1/queues` reads its 1/5/60-minute figures here, never from the jobs.
//!
//! # Exact under retries
//! A flush whose command fails is retried by the persister with the same outcomes, and a
//! command can fail *after* MongoDB applied it (a lost reply, a timeout). An `$inc` would then
//! count that flush twice. So each worker process keeps its own running totals per (queue,
//! minute) in memory and writes them as **absolute values** into a sub-document of the
//! bucket that only it writes (`w.<tally id>.<field>`, with `$set`): writing the same totals
//! twice changes nothing. A bucket's figure is the sum over its sub-documents (plus the
//! top-level fields of buckets written by `$inc` before this layout). The process adds a
//! flush's outcomes to its totals once, keyed by the flush id, however often the write is
//! retried. Totals of minutes that are over are forgotten after [`FORGET_AFTER`]; an outcome
//! arriving later for such a minute (a long MongoDB outage) starts a fresh sub-document, so
//! nothing already written is overwritten.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::TryStreamExt;
use jobmill::observe::{AppliedOutcome, OutcomeHook};
use jobmill::{JobState, Result};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::Serialize;
use utoipa::ToSchema;

/// Name of the history collection.
pub const HISTORY: &str = "queue_history";
/// How long a minute bucket is kept (the issue asks for at least 24 hours).
pub const KEEP: Duration = Duration::from_secs(48 * 3600);
/// Longest history one request may ask for, in minutes.
pub const MAX_MINUTES: u32 = 1440;
/// Upper edges (ms) of the run-time histogram buckets; one more bucket holds the rest.
pub const RUN_MS_EDGES: [i64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

const MINUTE_MS: i64 = 60_000;
/// How long after its minute a process keeps a bucket's running totals in memory.
pub const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);
/// The sub-document of a bucket holding each writer's absolute totals.
const WRITERS: &str = "w";

/// The history. Cheap to clone.
#[derive(Clone)]
pub struct History {
    coll: Collection<Document>,
}

/// One minute of one queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Minute {
    /// Start of the minute.
    pub minute: chrono::DateTime<chrono::Utc>,
    /// Attempts that ended `succeeded`.
    pub succeeded: u64,
    /// Attempts that ended `failed`.
    pub failed: u64,
    /// Attempts that ended `retrying`.
    pub retried: u64,
    /// Attempts that ended `cancelled`.
    pub cancelled: u64,
    /// Average run time of the attempts with a known start, in seconds.
    pub avg_run_seconds: Option<f64>,
    /// 95th percentile run time in seconds (the upper edge of the histogram bucket it falls
    /// in, so an upper bound).
    pub p95_run_seconds: Option<f64>,
}

/// `GET /v1/queues/{name}/history`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryView {
    /// Queue name.
    pub queue: String,
    /// Minutes covered.
    pub minutes: u32,
    /// Minutes with any outcome, oldest first (minutes without outcomes are left out).
    pub buckets: Vec<Minute>,
}

/// Succeeded and failed counts over the last 1, 5 and 60 minutes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Window {
    /// Succeeded in the window.
    pub succeeded: u64,
    /// Failed in the window.
    pub failed: u64,
}

/// A queue's recent outcome counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Recent {
    /// The current minute so far.
    #[serde(rename = "1m")]
    pub last_1m: Window,
    /// The last 5 minutes (the current one included).
    #[serde(rename = "5m")]
    pub last_5m: Window,
    /// The last 60 minutes (the current one included).
    #[serde(rename = "60m")]
    pub last_60m: Window,
}

fn bucket_of(run_ms: i64) -> usize {
    RUN_MS_EDGES
        .iter()
        .position(|edge| run_ms <= *edge)
        .unwrap_or(RUN_MS_EDGES.len())
}

fn minute_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(MINUTE_MS)
}

/// Add a set of outcomes of one (queue, minute) to `totals`.
fn add_outcomes(totals: &mut BTreeMap<String, i64>, outcomes: &[&AppliedOutcome]) {
    let mut add = |field: String, n: i64| {
        *totals.entry(field).or_insert(0) += n;
    };
    for o in outcomes {
        let field = match o.state {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Retrying => "retried",
            JobState::Cancelled => "cancelled",
            // Not an end of an attempt; never reported by the persister.
            JobState::Queued | JobState::Scheduled | JobState::Running => continue,
        };
        add(field.to_string(), 1);
        if let Some(ms) = o.run_ms {
            add("run_count".into(), 1);
            add("run_ms_sum".into(), ms);
            add(format!("rt_{}", bucket_of(ms)), 1);
        }
    }
}

/// Outcomes grouped by (queue, start of their minute).
fn by_bucket(outcomes: &[AppliedOutcome]) -> BTreeMap<(String, i64), Vec<&AppliedOutcome>> {
    let mut groups: BTreeMap<(String, i64), Vec<&AppliedOutcome>> = BTreeMap::new();
    for o in outcomes {
        groups
            .entry((o.queue.clone(), minute_start(o.at.timestamp_millis())))
            .or_default()
            .push(o);
    }
    groups
}

/// One writer's running totals of one bucket.
struct Totals {
    /// The sub-document they are written to: unique to this process and this run of totals.
    tally: String,
    counts: BTreeMap<String, i64>,
}

/// A bucket: (queue, start of its minute in ms).
type BucketKey = (String, i64);
/// A changed bucket with the number of its last change.
type Mark = (BucketKey, u64);

/// One process's running totals, which flush they last took in, and which buckets changed
/// since they were last written.
#[derive(Default)]
struct Tally {
    /// Unique per process (a fresh id per [`HistoryHook`]).
    epoch: String,
    /// Numbers the sub-documents of this process.
    serial: u64,
    buckets: BTreeMap<BucketKey, Totals>,
    /// The last flush added to the totals: a retry of it adds nothing.
    last_flush: Option<String>,
    /// Buckets changed since their last write, each with the number of the change, so a write
    /// clears only the buckets that did not change again while it was in flight.
    dirty: BTreeMap<BucketKey, u64>,
    changes: u64,
    /// When the last write succeeded (none yet: the first flush is written at once).
    last_write: Option<Instant>,
}

impl Tally {
    /// Take in one flush (once per flush id).
    fn take(&mut self, flush: &str, outcomes: &[AppliedOutcome], now_ms: i64) {
        if self.last_flush.as_deref() == Some(flush) {
            return;
        }
        for (key, outs) in by_bucket(outcomes) {
            let mut counts = BTreeMap::new();
            add_outcomes(&mut counts, &outs);
            if counts.is_empty() {
                continue;
            }
            let totals = self.buckets.entry(key.clone()).or_insert_with(|| {
                self.serial += 1;
                Totals {
                    tally: format!("{}_{}", self.epoch, self.serial),
                    counts: BTreeMap::new(),
                }
            });
            for (f, n) in counts {
                *totals.counts.entry(f).or_insert(0) += n;
            }
            self.changes += 1;
            self.dirty.insert(key, self.changes);
        }
        // Forget minutes long over, except those still to be written.
        let horizon = minute_start(now_ms) - FORGET_AFTER.as_millis() as i64;
        let dirty = &self.dirty;
        self.buckets
            .retain(|key, _| key.1 >= horizon || dirty.contains_key(key));
        self.last_flush = Some(flush.to_string());
    }

    /// The writes of every changed bucket (absolute totals, so writing one twice changes
    /// nothing), and the changes they carry, for [`Tally::written`].
    fn pending(&self) -> (Vec<Document>, Vec<Mark>) {
        let writes = self
            .dirty
            .keys()
            .filter_map(|key| Some((key, self.buckets.get(key)?)))
            .map(|((queue, minute), totals)| {
                let mut set = Document::new();
                for (f, n) in &totals.counts {
                    set.insert(format!("{WRITERS}.{}.{f}", totals.tally), *n);
                }
                let at = DateTime::from_millis(*minute);
                doc! {
                    "q": { "_id": format!("{queue}|{minute}") },
                    "u": {
                        "$set": set,
                        "$setOnInsert": {
                            "queue": queue,
                            "minute": at,
                            "retention": jobmill::job::Retention::after(at, KEEP).to_doc(),
                        },
                    },
                    "upsert": true,
                }
            })
            .collect();
        let marks = self.dirty.iter().map(|(k, n)| (k.clone(), *n)).collect();
        (writes, marks)
    }

    /// The writes of `marks` succeeded: those buckets are clean unless they changed since.
    fn written(&mut self, marks: &[Mark]) {
        for (key, n) in marks {
            if self.dirty.get(key) == Some(n) {
                self.dirty.remove(key);
            }
        }
    }
}

impl History {
    /// Over `db`.
    pub fn new(db: &Database) -> Self {
        History {
            coll: db.collection(HISTORY),
        }
    }

    /// TTL and read indexes.
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "retention.expire_at": 1 })
                    .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
                    .build(),
            )
            .await?;
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "queue": 1, "minute": 1 })
                    .build(),
            )
            .await?;
        self.coll
            .create_index(IndexModel::builder().keys(doc! { "minute": 1 }).build())
            .await?;
        Ok(())
    }

    /// Send one flush's bucket writes (one `update` command, an upsert per bucket).
    async fn write(&self, updates: Vec<Document>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let reply = self
            .coll
            .client()
            .database(self.coll.namespace().db.as_str())
            .run_command(doc! { "update": HISTORY, "updates": updates, "ordered": false })
            .await?;
        if let Ok(errs) = reply.get_array("writeErrors") {
            return Err(jobmill::Error::Corrupt(format!(
                "history update rejected: {errs:?}"
            )));
        }
        Ok(())
    }

    async fn since(&self, queue: Option<&str>, from_ms: i64) -> Result<Vec<Document>> {
        let mut filter = doc! { "minute": { "$gte": DateTime::from_millis(from_ms) } };
        if let Some(q) = queue {
            filter.insert("queue", q);
        }
        Ok(self
            .coll
            .find(filter)
            .sort(doc! { "minute": 1 })
            .await?
            .try_collect()
            .await?)
    }

    /// The last `minutes` minutes of `queue`, the current one included.
    pub async fn minutes(&self, queue: &str, minutes: u32) -> Result<HistoryView> {
        let now = jobmill::job::now_ms();
        let from = minute_start(now) - i64::from(minutes.saturating_sub(1)) * MINUTE_MS;
        let docs = self.since(Some(queue), from).await?;
        Ok(HistoryView {
            queue: queue.to_string(),
            minutes,
            buckets: docs.iter().map(minute_of).collect(),
        })
    }

    /// Recent counts of every queue with outcomes in the last hour.
    pub async fn recent(&self) -> Result<BTreeMap<String, Recent>> {
        let now = minute_start(jobmill::job::now_ms());
        let docs = self.since(None, now - 59 * MINUTE_MS).await?;
        let mut out: BTreeMap<String, Recent> = BTreeMap::new();
        for d in &docs {
            let Ok(q) = d.get_str("queue") else { continue };
            let minute = d
                .get_datetime("minute")
                .map(|m| m.timestamp_millis())
                .unwrap_or(0);
            let (s, f) = (count(d, "succeeded"), count(d, "failed"));
            let r = out.entry(q.to_string()).or_default();
            let windows = [
                (&mut r.last_1m, 0),
                (&mut r.last_5m, 4),
                (&mut r.last_60m, 59),
            ];
            for (w, back) in windows {
                if minute >= now - back * MINUTE_MS {
                    w.succeeded += s;
                    w.failed += f;
                }
            }
        }
        Ok(out)
    }
}

fn number(v: Option<&mongodb::bson::Bson>) -> u64 {
    match v {
        Some(mongodb::bson::Bson::Int32(n)) => (*n).max(0) as u64,
        Some(mongodb::bson::Bson::Int64(n)) => (*n).max(0) as u64,
        Some(mongodb::bson::Bson::Double(n)) => n.max(0.0) as u64,
        _ => 0,
    }
}

/// A bucket's figure: the sum of every writer's totals, plus the top-level field of a bucket
/// `$inc`'d before the per-writer layout.
fn count(d: &Document, field: &str) -> u64 {
    let writers: u64 = d
        .get_document(WRITERS)
        .map(|w| {
            w.values()
                .filter_map(|t| t.as_document())
                .map(|t| number(t.get(field)))
                .sum()
        })
        .unwrap_or(0);
    number(d.get(field)) + writers
}

fn minute_of(d: &Document) -> Minute {
    let minute = d
        .get_datetime("minute")
        .map(|m| m.timestamp_millis())
        .unwrap_or(0);
    let runs = count(d, "run_count");
    let hist: Vec<u64> = (0..=RUN_MS_EDGES.len())
        .map(|i| count(d, &format!("rt_{i}")))
        .collect();
    Minute {
        minute: crate::workers::at(minute),
        succeeded: count(d, "succeeded"),
        failed: count(d, "failed"),
        retried: count(d, "retried"),
        cancelled: count(d, "cancelled"),
        avg_run_seconds: (runs > 0).then(|| count(d, "run_ms_sum") as f64 / runs as f64 / 1000.0),
        p95_run_seconds: p95_seconds(&hist),
    }
}

/// The upper edge of the bucket holding the 95th percentile; the open last bucket reports its
/// lower edge.
fn p95_seconds(hist: &[u64]) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total * 95).div_ceil(100);
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let edge = RUN_MS_EDGES
                .get(i)
                .or(RUN_MS_EDGES.last())
                .copied()
                .unwrap_or(0);
            return Some(edge as f64 / 1000.0);
        }
    }
    None
}

/// How often a busy worker writes its history: the totals of a second's flushes go out in
/// one command instead of one command per flush (which was half of a trickle's updates, each
/// one a wait for the submissions behind it on a store that runs one command at a time).
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// Feeds the history from the persister's applied outcomes: one per worker process, holding
/// that process's running totals (see the module doc). Writes at most once per
/// [`WRITE_EVERY`], from a flush or from the persister's tick, and everything at its last tick.
/// A worker killed outright loses the totals it had not written yet (under a second's worth):
/// the history is a view of outcomes, the jobs themselves hold their states.
pub struct HistoryHook {
    history: History,
    tally: Mutex<Tally>,
}

impl HistoryHook {
    /// Over `history`, with totals of its own.
    pub fn new(history: History) -> Self {
        HistoryHook {
            history,
            tally: Mutex::new(Tally {
                epoch: uuid::Uuid::new_v4().simple().to_string(),
                ..Tally::default()
            }),
        }
    }

    fn due(&self) -> bool {
        lock(&self.tally)
            .last_write
            .is_none_or(|at| at.elapsed() >= WRITE_EVERY)
    }

    /// Write every changed bucket in one command; on success they are clean.
    async fn write_pending(&self) -> Result<()> {
        let (updates, marks) = lock(&self.tally).pending();
        if updates.is_empty() {
            return Ok(());
        }
        self.history.write(updates).await?;
        let mut tally = lock(&self.tally);
        tally.written(&marks);
        tally.last_write = Some(Instant::now());
        Ok(())
    }
}

/// A poisoned lock still holds consistent totals (every change is a few plain assignments).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OutcomeHook for HistoryHook {
    /// Takes the flush in once per flush id and writes when due: a retry of a flush whose
    /// write failed after MongoDB applied it (or part of it) writes the same absolute values
    /// again, so every outcome counts once.
    fn record<'a>(
        &'a self,
        batch: &'a str,
        outcomes: &'a [AppliedOutcome],
    ) -> BoxFuture<'a, Result<()>> {
        lock(&self.tally).take(batch, outcomes, jobmill::job::now_ms());
        Box::pin(async move {
            if self.due() {
                self.write_pending().await?;
            }
            Ok(())
        })
    }

    fn tick(&self, last: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if last || self.due() {
                self.write_pending().await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_fall_in_their_buckets() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(5), 0);
        assert_eq!(bucket_of(6), 1);
        assert_eq!(bucket_of(1_000_000), RUN_MS_EDGES.len());
    }

    #[test]
    fn p95_is_the_edge_of_its_bucket() {
        let mut hist = vec![0u64; RUN_MS_EDGES.len() + 1];
        hist[0] = 95;
        hist[7] = 5;
        assert_eq!(p95_seconds(&hist), Some(0.005));
        hist[0] = 94;
        assert_eq!(p95_seconds(&hist), Some(1.0));
        assert_eq!(p95_seconds(&[0, 0]), None);
    }

    fn outcome(queue: &str, state: JobState, at_ms: i64) -> AppliedOutcome {
        AppliedOutcome {
            queue: queue.into(),
            state,
            at: DateTime::from_millis(at_ms),
            run_ms: Some(3),
        }
    }

    fn tally() -> Tally {
        Tally {
            epoch: "e".into(),
            ..Tally::default()
        }
    }

    fn set_of(update: &Document) -> &Document {
        update
            .get_document("u")
            .and_then(|u| u.get_document("$set"))
            .unwrap()
    }

    #[test]
    fn a_retried_flush_writes_the_same_totals_and_a_new_one_adds() {
        let now = 10 * MINUTE_MS;
        let mut t = tally();
        let first = vec![
            outcome("q", JobState::Succeeded, now),
            outcome("q", JobState::Failed, now + 1),
        ];
        t.take("f1", &first, now);
        let (a, _) = t.pending();
        t.take("f1", &first, now);
        let (again, _) = t.pending();
        assert_eq!(a, again, "a retry writes the same absolute values");
        assert_eq!(set_of(&a[0]).get_i64("w.e_1.succeeded").unwrap(), 1);
        t.take("f2", &[outcome("q", JobState::Succeeded, now + 2)], now);
        let (b, _) = t.pending();
        assert_eq!(b.len(), 1);
        assert_eq!(set_of(&b[0]).get_i64("w.e_1.succeeded").unwrap(), 2);
        assert_eq!(set_of(&b[0]).get_i64("w.e_1.failed").unwrap(), 1);
        assert_eq!(set_of(&b[0]).get_i64("w.e_1.run_count").unwrap(), 3);
    }

    #[test]
    fn a_write_clears_only_buckets_unchanged_since() {
        let now = 10 * MINUTE_MS;
        let mut t = tally();
        t.take("f1", &[outcome("q", JobState::Succeeded, now)], now);
        t.take("f2", &[outcome("r", JobState::Succeeded, now)], now);
        let (writes, marks) = t.pending();
        assert_eq!(writes.len(), 2);
        // While that write is in flight, queue q changes again.
        t.take("f3", &[outcome("q", JobState::Failed, now)], now);
        t.written(&marks);
        let (left, _) = t.pending();
        assert_eq!(left.len(), 1, "q is still to be written");
        assert_eq!(set_of(&left[0]).get_i64("w.e_1.failed").unwrap(), 1);
        let (_, marks) = t.pending();
        t.written(&marks);
        assert!(t.pending().0.is_empty());
    }

    #[test]
    fn forgotten_minutes_start_a_fresh_sub_document() {
        let mut t = tally();
        t.take("f1", &[outcome("q", JobState::Succeeded, 0)], 0);
        let (_, marks) = t.pending();
        t.written(&marks);
        let later = 60 * MINUTE_MS;
        t.take("f2", &[outcome("q", JobState::Succeeded, later)], later);
        assert_eq!(t.buckets.len(), 1, "minute 0 is forgotten");
        let (_, marks) = t.pending();
        t.written(&marks);
        // A late outcome of minute 0 must not overwrite the totals already written there.
        t.take("f3", &[outcome("q", JobState::Succeeded, 5)], later);
        let (late, _) = t.pending();
        assert_eq!(set_of(&late[0]).get_i64("w.e_3.succeeded").unwrap(), 1);
        assert!(set_of(&late[0]).get("w.e_1.succeeded").is_none());
    }

    #[test]
    fn an_unwritten_minute_is_not_forgotten() {
        let mut t = tally();
        t.take("f1", &[outcome("q", JobState::Succeeded, 0)], 0);
        let later = 60 * MINUTE_MS;
        t.take("f2", &[outcome("q", JobState::Succeeded, later)], later);
        assert_eq!(t.pending().0.len(), 2, "minute 0 was never written");
    }

    #[test]
    fn a_bucket_sums_its_writers_and_old_increments() {
        let d = doc! {
            "succeeded": 2_i64,
            "w": { "a_1": { "succeeded": 3_i64 }, "b_1": { "succeeded": 4_i32, "failed": 1_i64 } },
        };
        assert_eq!(count(&d, "succeeded"), 9);
        assert_eq!(count(&d, "failed"), 1);
        assert_eq!(count(&d, "retried"), 0);
    }

    #[test]
    fn minutes_start_on_the_minute() {
        assert_eq!(minute_start(120_001), 120_000);
        assert_eq!(minute_start(119_999), 60_000);
    }
}
