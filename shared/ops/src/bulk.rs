//! Bulk actions on jobs chosen by a filter (`POST /v1/jobs/actions/{retry,cancel,discard}`):
//! counted with a time budget for a dry run, otherwise carried out by the internal kind
//! [`BulkAction`] in batches, so a million matching jobs never hold a request or the store.
//!
//! The job walks the matching jobs in `list_key` (creation) order and saves its position as a
//! checkpoint after each batch; a rerun after a crash resumes there. Within the batch that was
//! in flight, jobs already acted on no longer match the same guarded transition (a retried job
//! is no longer `failed`, a cancelled one no longer live, a discarded one gone), so each job is
//! acted on once. The single-job guards apply: `retry` only moves `failed`/`cancelled` jobs,
//! `cancel` stops running jobs cooperatively and never "cancels" a finished one, and `discard`
//! deletes finished jobs only.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use jobmill::kind::{JobContext, JobKind, KindDefaults, Outcome};
use jobmill::store::Store;
use jobmill::{JobClient, JobState, Result};
use mongodb::bson::{doc, Document};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most ids a filter may name.
pub const MAX_IDS: usize = 1000;
/// Jobs handled per batch.
pub const BATCH: i64 = 200;
/// Time a dry run may spend counting before it answers an estimate.
pub const COUNT_BUDGET: Duration = Duration::from_secs(2);

/// What to do with the matching jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkVerb {
    /// Queue `failed` and `cancelled` jobs again.
    Retry,
    /// Cancel live jobs (running ones cooperatively).
    Cancel,
    /// Delete finished jobs.
    Discard,
}

impl BulkVerb {
    /// The states a job must be in to be acted on.
    pub fn states(self) -> Vec<JobState> {
        match self {
            BulkVerb::Retry => vec![JobState::Failed, JobState::Cancelled],
            BulkVerb::Cancel => JobState::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .collect(),
            BulkVerb::Discard => JobState::ALL
                .into_iter()
                .filter(|s| s.is_terminal())
                .collect(),
        }
    }
}

/// Which jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    /// Only this state (must be one the action applies to).
    #[serde(default)]
    pub state: Option<String>,
    /// Only this kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only this queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Only this owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// Created at or after (ms since the epoch).
    #[serde(default)]
    pub created_after_ms: Option<i64>,
    /// Created before (ms since the epoch).
    #[serde(default)]
    pub created_before_ms: Option<i64>,
    /// A substring of the last error.
    #[serde(default)]
    pub error_contains: Option<String>,
    /// Only these ids (at most 1,000).
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

impl BulkFilter {
    /// The MongoDB filter (everything but `error_contains`, checked per job), after `after`.
    fn query(&self, verb: BulkVerb, after: Option<&str>) -> Document {
        let states: Vec<&str> = match self.state.as_deref().and_then(JobState::parse) {
            Some(s) => verb
                .states()
                .into_iter()
                .filter(|v| *v == s)
                .map(JobState::as_str)
                .collect(),
            None => verb.states().into_iter().map(JobState::as_str).collect(),
        };
        let mut f = doc! { "state": { "$in": states } };
        if let Some(k) = &self.kind {
            f.insert("kind", k);
        }
        if let Some(q) = &self.queue {
            f.insert("queue", q);
        }
        if let Some(o) = &self.owner {
            f.insert("tenant", o);
        }
        if let Some(ids) = &self.ids {
            f.insert("_id", doc! { "$in": ids });
        }
        let mut range = Document::new();
        let lower = [
            after.map(|a| (a.to_string(), "$gt")),
            self.created_after_ms
                .map(|ms| (jobmill::job::id_floor(ms), "$gte")),
        ];
        for (v, op) in lower.into_iter().flatten() {
            range.insert(op, v);
        }
        if let Some(ms) = self.created_before_ms {
            range.insert("$lt", jobmill::job::id_floor(ms));
        }
        if !range.is_empty() {
            f.insert("list_key", range);
        }
        f
    }

    fn error_matches(&self, job: &jobmill::Job) -> bool {
        match &self.error_contains {
            None => true,
            Some(needle) => job
                .errors_in_order()
                .last()
                .is_some_and(|e| e.message.contains(needle.as_str())),
        }
    }
}

/// A page of matching jobs in creation order after `after`.
async fn page(
    store: &Store,
    verb: BulkVerb,
    filter: &BulkFilter,
    after: Option<&str>,
    as_of_ms: Option<i64>,
) -> Result<Vec<jobmill::Job>> {
    let mut query = filter.query(verb, after);
    if let (Some(t), BulkVerb::Retry | BulkVerb::Discard) = (as_of_ms, verb) {
        // Only jobs that finished before the action was asked for: a job this action retried
        // that has failed again since must not be retried a second time by a rerun.
        query.insert("finished_ms", doc! { "$lt": t });
    }
    let coll = store
        .database()
        .collection::<jobmill::Job>(jobmill::store::JOBS);
    Ok(coll
        .find(query)
        .sort(doc! { "list_key": 1 })
        .limit(BATCH)
        .await?
        .try_collect()
        .await?)
}

/// A dry run's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BulkCount {
    /// Matching jobs counted.
    pub count: u64,
    /// Whether every matching job was counted (false: the time budget ran out first).
    pub exact: bool,
}

/// Count matching jobs, stopping after [`COUNT_BUDGET`].
pub async fn count(store: &Store, verb: BulkVerb, filter: &BulkFilter) -> Result<BulkCount> {
    let start = Instant::now();
    let mut after: Option<String> = None;
    let mut n = 0u64;
    loop {
        let jobs = page(store, verb, filter, after.as_deref(), None).await?;
        n += jobs.iter().filter(|j| filter.error_matches(j)).count() as u64;
        let Some(last) = jobs.last() else {
            return Ok(BulkCount {
                count: n,
                exact: true,
            });
        };
        if (jobs.len() as i64) < BATCH {
            return Ok(BulkCount {
                count: n,
                exact: true,
            });
        }
        after = Some(last.list_key.clone());
        if start.elapsed() > COUNT_BUDGET {
            return Ok(BulkCount {
                count: n,
                exact: false,
            });
        }
    }
}

/// Args of the internal kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkArgs {
    /// The action.
    pub action: BulkVerb,
    /// The filter.
    pub filter: BulkFilter,
    /// When the action was asked for (ms since the epoch): jobs finished later are left alone.
    #[serde(default)]
    pub as_of_ms: Option<i64>,
}

/// Where a bulk action got to (its checkpoint).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Position {
    after: Option<String>,
    done: u64,
}

/// The internal kind `jobs_bulk_action`.
pub struct BulkAction {
    client: JobClient,
}

impl BulkAction {
    /// The kind's name, for submitters.
    pub const NAME_STR: &'static str = <Self as JobKind>::NAME;

    /// Over `client` (its single-job transitions do the work).
    pub fn new(client: JobClient) -> Self {
        BulkAction { client }
    }

    async fn act(&self, verb: BulkVerb, job: &jobmill::Job) -> Result<bool> {
        let store = self.client.store();
        let r = match verb {
            BulkVerb::Retry => self.client.retry(&job.id, None).await.map(|_| true),
            BulkVerb::Cancel => self.client.cancel(&job.id, None).await.map(|_| true),
            BulkVerb::Discard => {
                // Guarded on a finished state: a job that went live again meanwhile stays.
                let terminal: Vec<&str> = BulkVerb::Discard
                    .states()
                    .into_iter()
                    .map(JobState::as_str)
                    .collect();
                let r = store
                    .database()
                    .collection::<Document>(jobmill::store::JOBS)
                    .delete_one(doc! { "_id": &job.id, "state": { "$in": terminal } })
                    .await?;
                if r.deleted_count == 1 {
                    // API processes cache finished jobs; the change event makes them forget.
                    let _ = self
                        .client
                        .queue()
                        .publish_changes(std::slice::from_ref(&job.id))
                        .await;
                }
                Ok(r.deleted_count == 1)
            }
        };
        match r {
            Ok(acted) => Ok(acted),
            // The job moved on between the read and the action: the guard said no.
            Err(jobmill::Error::Conflict { .. }) | Err(jobmill::Error::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl JobKind for BulkAction {
    const NAME: &'static str = "jobs_bulk_action";
    const DESCRIPTION: &'static str =
        "Retries, cancels or discards the jobs matching a filter, in batches (internal).";
    type Args = BulkArgs;

    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            queue: "default",
            max_attempts: 5,
            timeout: Duration::from_secs(6 * 3600),
        }
    }

    async fn run(&self, ctx: JobContext, args: BulkArgs) -> Outcome {
        let store = self.client.store();
        let mut pos: Position = match store.load_checkpoint(&ctx.id).await {
            Ok(Some(s)) => serde_json::from_str(&s).unwrap_or_default(),
            Ok(None) => Position::default(),
            Err(e) => return Outcome::retry(e),
        };
        loop {
            if ctx.is_cancelled() {
                return Outcome::Cancelled("bulk action cancelled".into());
            }
            let jobs = match page(
                store,
                args.action,
                &args.filter,
                pos.after.as_deref(),
                args.as_of_ms,
            )
            .await
            {
                Ok(j) => j,
                Err(e) => return Outcome::retry(e),
            };
            let Some(last) = jobs.last().map(|j| j.list_key.clone()) else {
                break;
            };
            for job in jobs.iter().filter(|j| args.filter.error_matches(j)) {
                match self.act(args.action, job).await {
                    Ok(true) => pos.done += 1,
                    Ok(false) => {}
                    Err(e) => return Outcome::retry(e),
                }
            }
            pos.after = Some(last);
            let state = serde_json::to_string(&pos).unwrap_or_default();
            if let Err(e) = store.save_checkpoint(&ctx.id, ctx.attempt, &state).await {
                return Outcome::retry(e);
            }
            ctx.progress(pos.done as i64, None, Some("jobs acted on"));
        }
        Outcome::success(serde_json::json!({ "action": args.action, "acted_on": pos.done }))
    }
}
