//! MongoDB, the system of record: every job with its state, attempts, errors, progress and
//! result. Each transition has its own method (or [`Write`] variant for the worker's batched
//! writes), and every write is guarded on the state and attempt it expects, so a stale writer
//! changes nothing and learns it was stale.

use std::collections::HashMap;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, FindOneAndUpdateOptions, IndexOptions, ReadPreference,
    ReturnDocument, SelectionCriteria,
};
use mongodb::{Client, Collection, Database, IndexModel};

use crate::config::{CoreSettings, MongoWrites, WriteConcern};
use crate::error::{Error, Result};
use crate::job::{event_id, now_ms, Job, Progress, Retention};
use crate::outbox::JobEvent;
use crate::state::{Decision, JobState};

/// Name of the jobs collection.
pub const JOBS: &str = "jobs";
/// Name of the collection of handler checkpoints (keyed by job id).
pub const CHECKPOINTS: &str = "checkpoints";
/// Largest number of writes sent in one `update` command.
pub const WRITE_BATCH: usize = 1000;
/// Most pages of [`WRITE_BATCH`] expired jobs one [`Store::delete_expired`] call deletes.
pub const EXPIRE_PAGES: usize = 100;

/// One guarded write of the worker or the rescuer. Sent in batches by [`Store::apply`].
#[derive(Debug, Clone)]
pub enum Write {
    /// Attempt `attempt` started: → `running`.
    Start {
        /// Job id.
        id: String,
        /// Attempt number.
        attempt: i32,
        /// Start time.
        at: DateTime,
    },
    /// Progress of the running attempt (dropped silently if the attempt is no longer current).
    Progress {
        /// Job id.
        id: String,
        /// Attempt number.
        attempt: i32,
        /// The report.
        progress: Progress,
        /// Also record a `job.progress` outbox entry (a subscriber wants it and the job's rate
        /// limit allows one now).
        event: bool,
    },
    /// Attempt `attempt` ended with `decision`: → `succeeded`, `retrying`, `failed` or
    /// `cancelled`. Also carries the start time, so a start that was never written (the job
    /// finished before its start was flushed) needs no write of its own.
    Finish {
        /// Job id.
        id: String,
        /// Attempt number.
        attempt: i32,
        /// When the attempt started, if known.
        started_at: Option<DateTime>,
        /// When it ended.
        at: DateTime,
        /// What follows.
        decision: Decision,
        /// The handler's last progress report not yet written, so the final state shows it.
        progress: Option<Progress>,
        /// A subscriber wants this job's end ([`crate::outbox::Subscribers::wants_end`]): a
        /// terminal decision also records the outbox entry, in this same statement.
        record_event: bool,
    },
    /// Attempt `attempt` is given back unrun (graceful shutdown): → `queued`, attempt not
    /// charged.
    Release {
        /// Job id.
        id: String,
        /// Attempt number being returned.
        attempt: i32,
    },
}

impl Write {
    /// The job this write is about.
    pub fn id(&self) -> &str {
        match self {
            Write::Start { id, .. }
            | Write::Progress { id, .. }
            | Write::Finish { id, .. }
            | Write::Release { id, .. } => id,
        }
    }

    /// The attempt this write is about.
    pub fn attempt(&self) -> i32 {
        match self {
            Write::Start { attempt, .. }
            | Write::Progress { attempt, .. }
            | Write::Finish { attempt, .. }
            | Write::Release { attempt, .. } => *attempt,
        }
    }

    /// Whether a requested cancel overrides this write: an outcome that is neither success nor
    /// cancel (see [`crate::state::decide`]).
    fn yields_to_cancel(&self) -> bool {
        matches!(
            self,
            Write::Finish {
                decision: Decision::Retry { .. } | Decision::Fail(_) | Decision::Throttle { .. },
                ..
            }
        )
    }

    /// Whether the store's current (state, attempt) shows this write took effect, now or in an
    /// earlier try of the same batch (writes are retried after network errors).
    fn is_reflected_in(&self, state: JobState, current: i32) -> bool {
        match self {
            Write::Start { attempt, .. } => state == JobState::Running && current == *attempt,
            Write::Progress { .. } => true,
            Write::Finish {
                attempt, decision, ..
            } if decision.returns_attempt() => state == decision.state() && current == *attempt - 1,
            Write::Finish {
                attempt, decision, ..
            } => state == decision.state() && current == *attempt,
            Write::Release { attempt, .. } => !state.is_terminal() && current < *attempt,
        }
    }
}

/// What Redis must do for a job once MongoDB has answered one of its writes. Every caller of
/// [`Store::apply`] (the worker's persister, the rescuer) follows the same mapping
/// ([`Write::follow_up`]), so a transition and its Redis side are written in one place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RedisStep {
    /// Nothing to change in Redis.
    Keep,
    /// The attempt may not run (its start was refused): stop the handler. Its outcome will be
    /// refused as well, and that path cleans Redis up.
    StopHandler,
    /// Forget the job (`ack.lua`): it is terminal, or someone else owns its future.
    Ack,
    /// Its next attempt waits in the schedule set until this time (ms since the epoch).
    Reschedule(i64),
    /// Give it back to the ready set, attempt not charged (`release.lua`).
    Release,
    /// Rate limited: back to the schedule set until this time (ms since the epoch), attempt
    /// not charged, its limit key (or queue) held until then (`throttle.lua`).
    Throttle(i64),
}

/// A write's Redis follow-up, and what else the caller does with the job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FollowUp {
    /// The Redis step.
    pub step: RedisStep,
    /// The job visibly changed: tell watchers (long-polls, streams).
    pub changed: bool,
    /// The attempt is over for this worker: it leaves the in-flight table.
    pub done: bool,
    /// Record the attempt as `cancelled` instead (a new `Finish` with `Decision::Cancel`): the
    /// write was refused because a cancel was requested. The job stays leased meanwhile.
    pub then_cancel: bool,
}

impl Write {
    /// The Redis follow-up of this write, given what MongoDB did with it at `now_ms`.
    ///
    /// Why each stale case goes where it goes: a job that moved on to a newer live attempt is
    /// given back (`Reschedule(now)`: the script only acts if we still hold the lease), so it is
    /// never stranded in our lease; a job that ended or vanished is forgotten.
    pub fn follow_up(&self, applied: &Applied, now_ms: i64) -> FollowUp {
        let live = |actual: &Option<JobState>| actual.is_some_and(|s| !s.is_terminal());
        if *applied == Applied::CancelRequested {
            return FollowUp {
                step: RedisStep::Keep,
                changed: false,
                done: false,
                then_cancel: true,
            };
        }
        let (step, changed, done) = match (self, applied) {
            (Write::Start { .. }, Applied::Done) => (RedisStep::Keep, true, false),
            (Write::Start { .. }, Applied::Stale { .. }) => (RedisStep::StopHandler, false, false),
            (Write::Progress { .. }, Applied::Done) => (RedisStep::Keep, true, false),
            (Write::Progress { .. }, Applied::Stale { .. }) => (RedisStep::Keep, false, false),
            (Write::Finish { at, decision, .. }, Applied::Done) => {
                match decision.next_run_at(at.timestamp_millis()) {
                    Some(next) if decision.returns_attempt() => {
                        (RedisStep::Throttle(next), true, true)
                    }
                    Some(next) => (RedisStep::Reschedule(next), true, true),
                    None => (RedisStep::Ack, true, true),
                }
            }
            (Write::Finish { .. }, Applied::Stale { actual, .. }) if live(actual) => {
                (RedisStep::Reschedule(now_ms), false, true)
            }
            (Write::Finish { .. }, Applied::Stale { .. }) => (RedisStep::Ack, false, true),
            (Write::Release { .. }, Applied::Done) => (RedisStep::Release, true, true),
            (Write::Release { .. }, Applied::Stale { actual, .. }) if live(actual) => {
                (RedisStep::Release, false, true)
            }
            (Write::Release { .. }, Applied::Stale { .. }) => (RedisStep::Ack, false, true),
            (_, Applied::CancelRequested) => unreachable!("returned above"),
        };
        FollowUp {
            step,
            changed,
            done,
            then_cancel: false,
        }
    }
}

/// What became of one write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The write took effect.
    Done,
    /// An outcome other than success or cancel was refused because a cancel was requested for
    /// this very attempt (the worker had not heard of it yet). Nothing was written; the caller
    /// records `cancelled` instead ([`FollowUp::then_cancel`]), so no further attempt runs.
    CancelRequested,
    /// The job had moved on (newer attempt, or terminal); nothing was written.
    Stale {
        /// The job's state now, or `None` if it no longer exists.
        actual: Option<JobState>,
        /// The job's attempt now.
        attempt: i32,
    },
}

/// Filters of the job listing.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this tenant's jobs (`None` for operators).
    pub tenant: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only jobs older than this id (the cursor).
    pub before: Option<String>,
    /// Only jobs created at or after this time (ms since the epoch).
    pub created_after: Option<i64>,
    /// Only jobs created before this time (ms since the epoch).
    pub created_before: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// Result of inserting one submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored.
    New,
    /// Its idempotency key was already used by this tenant; nothing stored.
    DuplicateKey,
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    db: Database,
    jobs: Collection<Job>,
    retention: Duration,
}

/// Client options with the timeouts jobmill wants: fail fast when MongoDB is down, so callers
/// back off and retry instead of hanging for the driver's 30 s default.
pub async fn client_options(uri: &str) -> Result<ClientOptions> {
    let mut opts = ClientOptions::parse(uri).await?;
    opts.app_name.get_or_insert_with(|| "jobmill".to_string());
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(3));
    opts.connect_timeout.get_or_insert(Duration::from_secs(2));
    Ok(opts)
}

/// Client options for the engine's settings: [`client_options`] of the URI, plus the write
/// concern, journal and retryable writes of [`MongoWrites`], and reads on the primary.
///
/// Every read of job state goes to the primary (read preference `primary`, whatever the URI
/// says): a guarded transition, a long-poll or an ETag must see the latest write, which a
/// secondary may not have yet. No listing is sent to secondaries either: listings feed ETags and
/// the UI right after submissions, and a lagging secondary would show jobs going back in time.
pub async fn client_options_for(s: &CoreSettings) -> Result<ClientOptions> {
    let mut opts = client_options(s.mongodb_uri.expose()).await?;
    apply_writes(&mut opts, &s.mongodb_writes);
    Ok(opts)
}

/// Apply the write settings to parsed options (see [`client_options_for`]).
pub fn apply_writes(opts: &mut ClientOptions, w: &MongoWrites) {
    let mut concern = opts.write_concern.clone().unwrap_or_default();
    match &w.concern {
        // A replica set named in the URI gets majority writes unless the URI chose `w`:
        // an acknowledged job must survive the primary's failover.
        WriteConcern::Default => {
            if opts.repl_set_name.is_some() && concern.w.is_none() {
                concern.w = Some(Acknowledgment::Majority);
            }
        }
        WriteConcern::Majority => concern.w = Some(Acknowledgment::Majority),
        WriteConcern::Nodes(n) => concern.w = Some(Acknowledgment::Nodes(*n)),
        WriteConcern::Tag(t) => concern.w = Some(Acknowledgment::Custom(t.clone())),
    }
    if w.journal.is_some() {
        concern.journal = w.journal;
    }
    opts.write_concern = (concern.w.is_some() || concern.journal.is_some()).then_some(concern);
    opts.retry_writes = Some(w.retry_writes);
    opts.selection_criteria = Some(SelectionCriteria::ReadPreference(ReadPreference::Primary));
}

impl Store {
    /// Connect as the engine's settings say (URI, database, retention, write settings).
    pub async fn connect_settings(s: &CoreSettings) -> Result<Self> {
        Self::connect_with(client_options_for(s).await?, &s.mongodb_db, s.retention)
    }

    /// Connect with the default options for `uri`.
    pub async fn connect(uri: &str, db: &str, retention: Duration) -> Result<Self> {
        Self::connect_with(client_options(uri).await?, db, retention)
    }

    /// Connect with prepared options (benchmarks add command monitoring this way).
    pub fn connect_with(opts: ClientOptions, db: &str, retention: Duration) -> Result<Self> {
        let client = Client::with_options(opts)?;
        let db = client.database(db);
        Ok(Store {
            jobs: db.collection(JOBS),
            db,
            client,
            retention,
        })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Round trip to MongoDB.
    pub async fn ping(&self) -> Result<()> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    /// Create the indexes listing, idempotency, retention and reconciliation need. Idempotent;
    /// both binaries call it at startup.
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.drop_obsolete_job_indexes().await?;
        self.jobs.create_indexes(job_indexes()).await?;
        self.db
            .collection::<Document>(CHECKPOINTS)
            .create_index(Retention::ttl_index())
            .await?;
        Ok(())
    }

    /// Drop the jobs' indexes earlier versions created and this one replaced: the TTL index on
    /// `retention.expire_at` (retention is now the worker's sweep, [`Store::delete_expired`])
    /// and the compound outbox and enqueue-pending indexes (now single-field, see
    /// [`job_indexes`]). Dropped by the name the server lists, the one name every server
    /// accepts back. Two processes starting together may both try: the loser's failure is
    /// harmless, so it is only logged.
    async fn drop_obsolete_job_indexes(&self) -> Result<()> {
        let obsolete = |index: &IndexModel| {
            let keys: Vec<&str> = index.keys.keys().map(String::as_str).collect();
            let ttl = index
                .options
                .as_ref()
                .is_some_and(|o| o.expire_after.is_some());
            (keys == ["retention.expire_at"] && ttl)
                || keys == ["outbox.pending", "list_key"]
                || keys == ["enqueue_pending", "list_key"]
        };
        let indexes: Vec<IndexModel> = self.jobs.list_indexes().await?.try_collect().await?;
        for index in indexes.iter().filter(|i| obsolete(i)) {
            let Some(name) = index.options.as_ref().and_then(|o| o.name.clone()) else {
                continue;
            };
            if let Err(e) = self.jobs.drop_index(&name).await {
                tracing::debug!(error = %e, index = %name, "could not drop an obsolete jobs index");
            }
        }
        Ok(())
    }

    /// Delete finished jobs whose retention ended before `now`, a page at a time (at most
    /// [`EXPIRE_PAGES`] pages per call; the next call goes on). Returns how many went.
    ///
    /// The jobs collection has no TTL index: the MongoDB-compatible server used in tests and
    /// development deletes expired documents of a TTL collection before every read, by scanning
    /// the whole collection (20 ms per read at 20,000 jobs), and every command waits behind
    /// that. A sweep every minute, as MongoDB's own TTL monitor does, costs one indexed range
    /// read per minute instead. Only finished jobs carry a retention, so no live job can go.
    pub async fn delete_expired(&self, now: DateTime) -> Result<u64> {
        let expired = doc! { "retention.expire_at": { "$lt": now } };
        let mut deleted = 0;
        for _ in 0..EXPIRE_PAGES {
            let ids: Vec<Bson> = self
                .jobs
                .clone_with_type::<Document>()
                .find(expired.clone())
                .projection(doc! { "_id": 1 })
                .limit(WRITE_BATCH as i64)
                .await?
                .try_collect::<Vec<Document>>()
                .await?
                .into_iter()
                .filter_map(|d| d.get("_id").cloned())
                .collect();
            let page = ids.len();
            if page == 0 {
                break;
            }
            // The retention is checked again: a job retried since the read is live again (a
            // retry clears its retention) and must not go.
            let mut filter = expired.clone();
            filter.insert("_id", doc! { "$in": ids });
            deleted += self.jobs.delete_many(filter).await?.deleted_count;
            if page < WRITE_BATCH {
                break;
            }
        }
        Ok(deleted)
    }

    /// Retention of finished jobs.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The `retention` sub-document of a job finished at `finished`.
    fn retention_doc(&self, finished: DateTime) -> Document {
        Retention::after(finished, self.retention).to_doc()
    }

    // ----- submission -------------------------------------------------------------------

    /// Insert new jobs. A job whose idempotency key the tenant already used is reported as
    /// [`Inserted::DuplicateKey`] and not stored. On any other failure nothing of the batch is
    /// left behind (best effort: the inserted part is deleted again), so a submission that was
    /// not answered `202` never runs.
    pub async fn insert_jobs(&self, jobs: &[Job]) -> Result<Vec<Inserted>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if jobs.len() == 1 {
            return match self.jobs.insert_one(&jobs[0]).await {
                Ok(_) => Ok(vec![Inserted::New]),
                Err(e) if is_duplicate_key(&e) => Ok(vec![Inserted::DuplicateKey]),
                Err(e) => Err(e.into()),
            };
        }
        let mut out = vec![Inserted::New; jobs.len()];
        match self.jobs.insert_many(jobs).ordered(false).await {
            Ok(_) => Ok(out),
            Err(e) => {
                let dups: Option<Vec<usize>> = match e.kind.as_ref() {
                    ErrorKind::InsertMany(im) if im.write_concern_error.is_none() => im
                        .write_errors
                        .as_ref()
                        .map(|errs| {
                            errs.iter()
                                .map(|w| (w.code == 11000).then_some(w.index))
                                .collect::<Option<Vec<usize>>>()
                        })
                        .unwrap_or(None),
                    _ => None,
                };
                match dups {
                    Some(dups) => {
                        for i in dups {
                            out[i] = Inserted::DuplicateKey;
                        }
                        Ok(out)
                    }
                    None => {
                        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
                        let _ = self.jobs.delete_many(doc! { "_id": { "$in": ids } }).await;
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// Remove jobs that were inserted but must not run (the rest of their batch failed).
    pub async fn delete_unanswered(&self, ids: &[String]) -> Result<()> {
        self.jobs
            .delete_many(doc! { "_id": { "$in": ids }, "state": { "$in": JobState::live_names() } })
            .await?;
        Ok(())
    }

    /// The job a tenant submitted with an idempotency key.
    pub async fn find_by_idempotency_key(&self, tenant: &str, key: &str) -> Result<Option<Job>> {
        Ok(self
            .jobs
            .find_one(doc! { "tenant": tenant, "idempotency_key": key })
            .await?)
    }

    /// Record that these jobs are in Redis (clears `enqueue_pending`).
    pub async fn confirm_enqueued(&self, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(WRITE_BATCH) {
            self.jobs
                .update_many(
                    doc! { "_id": { "$in": chunk }, "enqueue_pending": true },
                    doc! { "$set": { "enqueue_pending": false } },
                )
                .await?;
        }
        Ok(())
    }

    // ----- reading ----------------------------------------------------------------------

    /// One job, optionally only if `tenant` owns it.
    pub async fn get(&self, id: &str, tenant: Option<&str>) -> Result<Option<Job>> {
        Ok(self
            .jobs
            .find_one(scoped(doc! { "_id": id }, tenant))
            .await?)
    }

    /// Several jobs by id.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Job>> {
        Ok(self
            .jobs
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?)
    }

    /// A page of the listing, newest first.
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<Job>> {
        let mut filter = scoped(Document::new(), q.tenant.as_deref());
        if let Some(s) = q.state {
            filter.insert("state", s.as_str());
        }
        if let Some(k) = &q.kind {
            filter.insert("kind", k);
        }
        if let Some(qu) = &q.queue {
            filter.insert("queue", qu);
        }
        // Creation times become a `list_key` range (ids are time-ordered), so they walk the
        // same indexes as the listing itself.
        let mut range = Document::new();
        if let Some(ms) = q.created_after {
            range.insert("$gte", crate::job::id_floor(ms));
        }
        let upper = [q.before.clone(), q.created_before.map(crate::job::id_floor)]
            .into_iter()
            .flatten()
            .min();
        if let Some(u) = upper {
            range.insert("$lt", u);
        }
        if !range.is_empty() {
            filter.insert("list_key", range);
        }
        newest_first(&self.jobs, filter, None, q.limit).await
    }

    /// How many of `tenant`'s jobs are in `state`, counting at most `cap` (a tenant's
    /// dashboard totals). Walks the `{tenant, state, list_key}` index. With `finished_since_ms`,
    /// only jobs that finished since then, looked for among those created in the day before
    /// it, so the walk stays within a day of the tenant's jobs in that state.
    pub async fn count_tenant(
        &self,
        tenant: &str,
        state: JobState,
        finished_since_ms: Option<i64>,
        cap: u64,
    ) -> Result<u64> {
        let mut filter = scoped(doc! { "state": state.as_str() }, Some(tenant));
        if let Some(since) = finished_since_ms {
            filter.insert(
                "list_key",
                doc! { "$gte": crate::job::id_floor(since - 86_400_000) },
            );
            filter.insert("finished_ms", doc! { "$gte": since });
        }
        Ok(self.jobs.count_documents(filter).limit(cap).await?)
    }

    /// Live (non-terminal) jobs in id order after `after`, only what asking Redis whether it
    /// holds them needs (the reconciler's anti-entropy sweep).
    pub async fn live_refs_page(&self, after: Option<&str>, limit: i64) -> Result<Vec<LiveRef>> {
        let mut filter = doc! { "state": { "$in": JobState::live_names() } };
        if let Some(a) = after {
            filter.insert("list_key", doc! { "$gt": a });
        }
        self.live_refs(filter, limit).await
    }

    /// [`LiveRef`]s of the jobs `filter` matches, in id order.
    async fn live_refs(&self, filter: Document, limit: i64) -> Result<Vec<LiveRef>> {
        Ok(self
            .jobs
            .clone_with_type::<LiveRef>()
            .find(filter)
            .projection(LiveRef::projection())
            .sort(doc! { "list_key": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Live (non-terminal) jobs in id order after `after`, whole, of one queue only when `queue`
    /// is given (the rebuild of one queue whose Redis node lost its data).
    pub async fn live_jobs_page_of(
        &self,
        queue: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        let mut filter = doc! { "state": { "$in": JobState::live_names() } };
        if let Some(q) = queue {
            filter.insert("queue", q);
        }
        if let Some(a) = after {
            filter.insert("list_key", doc! { "$gt": a });
        }
        Ok(self
            .jobs
            .find(filter)
            .sort(doc! { "list_key": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Live jobs created after `after` and before `before` (ids, which are UUIDv7, order by
    /// creation), oldest first: the reconciler's check that fresh submissions reached Redis.
    pub async fn live_jobs_created(
        &self,
        after: &str,
        before: &str,
        limit: i64,
    ) -> Result<Vec<LiveRef>> {
        let filter = doc! {
            "list_key": { "$gt": after, "$lt": before },
            "state": { "$in": JobState::live_names() },
        };
        self.live_refs(filter, limit).await
    }

    /// The queues that have live jobs: after a Redis node lost the queue registry, these are
    /// the queues the reconciler must still check.
    pub async fn live_queues(&self) -> Result<Vec<String>> {
        let names = self
            .jobs
            .distinct("queue", doc! { "state": { "$in": JobState::live_names() } })
            .await?;
        Ok(names
            .into_iter()
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect())
    }

    /// Live jobs still flagged `enqueue_pending` and created before `before_id`.
    pub async fn pending_enqueue(&self, before_id: &str, limit: i64) -> Result<Vec<Job>> {
        Ok(self
            .jobs
            .find(doc! {
                "enqueue_pending": true,
                "list_key": { "$lt": before_id },
                "state": { "$in": JobState::live_names() },
            })
            .sort(doc! { "list_key": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Jobs whose outbox entry the subscribers have not handled yet, oldest first.
    pub async fn pending_outbox(&self, limit: i64) -> Result<Vec<Job>> {
        Ok(self
            .jobs
            .find(doc! { "outbox.pending": 1 })
            .sort(doc! { "list_key": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Mark outbox entries handled. Guarded on the event id, so an entry that a newer terminal
    /// event (after a manual retry) replaced meanwhile stays pending.
    pub async fn clear_outbox(&self, events: &[(String, String)]) -> Result<()> {
        for chunk in events.chunks(WRITE_BATCH) {
            let updates: Vec<Document> = chunk
                .iter()
                .map(|(id, event)| {
                    doc! {
                        "q": { "_id": id, "outbox.id": event },
                        "u": { "$set": { "outbox.pending": 0 } },
                    }
                })
                .collect();
            self.db
                .run_command(doc! { "update": JOBS, "updates": updates, "ordered": false })
                .await?;
        }
        Ok(())
    }

    // ----- transitions requested through the API ---------------------------------------

    /// Cancel a waiting job (`queued`, `scheduled`, `retrying` → `cancelled`), or flag a running
    /// one (`cancel_requested`; its worker records `cancelled` when the handler stops).
    /// Returns the job after the change. Terminal jobs answer [`Error::Conflict`].
    pub async fn cancel(&self, id: &str, tenant: Option<&str>) -> Result<Job> {
        let now = DateTime::now();
        let mut filter = scoped(
            doc! { "_id": id, "state": { "$in": waiting_names() } },
            tenant,
        );
        let after = FindOneAndUpdateOptions::builder()
            .return_document(ReturnDocument::After)
            .build();
        // The outbox is always recorded here (the filter cannot depend on `wants_events`); the
        // outbox loop clears entries with nobody to tell. Cancels of waiting jobs are rare.
        let update = doc! {
            "$set": {
                "state": JobState::Cancelled.as_str(),
                "finished_ms": now.timestamp_millis(),
                "retention": self.retention_doc(now),
                "enqueue_pending": false,
                "outbox": outbox_doc(id, JobEvent::Cancelled, now.timestamp_millis()),
            },
            "$inc": { "rev": 1 },
        };
        if let Some(job) = self
            .jobs
            .find_one_and_update(filter.clone(), update)
            .with_options(after.clone())
            .await?
        {
            return Ok(job);
        }
        filter.insert("state", JobState::Running.as_str());
        let update = doc! { "$set": { "cancel_requested": true }, "$inc": { "rev": 1 } };
        if let Some(job) = self
            .jobs
            .find_one_and_update(filter, update)
            .with_options(after)
            .await?
        {
            return Ok(job);
        }
        match self.get(id, tenant).await? {
            None => Err(Error::NotFound),
            Some(job) => Err(Error::Conflict {
                id: id.to_string(),
                state: job.state,
                action: "cancel",
            }),
        }
    }

    /// Queue a `failed` or `cancelled` job again with a fresh attempt budget. The attempt
    /// counter keeps counting (it guards against stale writers), so the budget is extended:
    /// `max_attempts = attempt + attempt_budget`.
    pub async fn retry(&self, id: &str, tenant: Option<&str>) -> Result<Job> {
        let job = self.get(id, tenant).await?.ok_or(Error::NotFound)?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(Error::Conflict {
                id: id.to_string(),
                state: job.state,
                action: "retry",
            });
        }
        let now = DateTime::now();
        let filter = doc! {
            "_id": id,
            "state": job.state.as_str(),
            "attempt": job.attempt,
            "rev": job.rev,
        };
        let update = doc! {
            "$set": {
                "state": JobState::Queued.as_str(),
                "max_attempts": job.attempt + job.attempt_budget,
                "run_at_ms": now.timestamp_millis(),
                "finished_ms": Bson::Null,
                "retention": Bson::Null,
                "result_json": Bson::Null,
                "progress": Bson::Null,
                "cancel_requested": false,
                "enqueue_pending": true,
            },
            "$inc": { "rev": 1 },
        };
        let opts = FindOneAndUpdateOptions::builder()
            .return_document(ReturnDocument::After)
            .build();
        match self
            .jobs
            .find_one_and_update(filter, update)
            .with_options(opts)
            .await?
        {
            Some(job) => Ok(job),
            // Someone else retried it between our read and write.
            None => {
                let now = self.get(id, tenant).await?.ok_or(Error::NotFound)?;
                Err(Error::Conflict {
                    id: id.to_string(),
                    state: now.state,
                    action: "retry",
                })
            }
        }
    }

    // ----- handler checkpoints ----------------------------------------------------------

    /// The checkpoint a handler saved for job `id` (JSON text), if any.
    pub async fn load_checkpoint(&self, id: &str) -> Result<Option<String>> {
        let c: Collection<Document> = self.db.collection(CHECKPOINTS);
        Ok(c.find_one(doc! { "_id": id })
            .await?
            .and_then(|d| d.get_str("state_json").ok().map(str::to_string)))
    }

    /// Save a handler's checkpoint for job `id`, so a later attempt resumes from it. Not
    /// guarded on the attempt: a stale attempt can at worst move the checkpoint back, which
    /// costs repeated (idempotent) work, never lost work. Expires with the job's retention.
    pub async fn save_checkpoint(&self, id: &str, attempt: u32, state_json: &str) -> Result<()> {
        let c: Collection<Document> = self.db.collection(CHECKPOINTS);
        c.replace_one(
            doc! { "_id": id },
            doc! {
                "_id": id,
                "attempt": attempt as i64,
                "state_json": state_json,
                "retention": self.retention_doc(DateTime::now()),
            },
        )
        .upsert(true)
        .await?;
        Ok(())
    }

    // ----- transitions of workers and maintenance ----------------------------------------

    /// `scheduled` → `queued` for jobs the scheduler made ready.
    pub async fn mark_promoted(&self, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(WRITE_BATCH) {
            self.jobs
                .update_many(
                    doc! { "_id": { "$in": chunk }, "state": JobState::Scheduled.as_str() },
                    doc! { "$set": { "state": JobState::Queued.as_str() }, "$inc": { "rev": 1 } },
                )
                .await?;
        }
        Ok(())
    }

    /// Apply a batch of guarded writes in one `update` command (ordered, so a start and a later
    /// write of the same job apply in order). Returns what became of each write, in order.
    ///
    /// Writes are idempotent, so after a network error the caller simply sends the batch again:
    /// a write that already took effect is recognised by re-reading the job.
    pub async fn apply(&self, writes: &[Write]) -> Result<Vec<Applied>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let updates: Vec<Document> = writes.iter().map(|w| self.statement(w)).collect();
        let reply = self
            .db
            .run_command(doc! { "update": JOBS, "updates": updates, "ordered": true })
            .await?;
        if let Ok(errs) = reply.get_array("writeErrors") {
            return Err(Error::Corrupt(format!("update rejected: {errs:?}")));
        }
        let matched = reply
            .get_i32("n")
            .map(i64::from)
            .or_else(|_| reply.get_i64("n"))
            .unwrap_or(0);
        if matched as usize == writes.len() {
            return Ok(vec![Applied::Done; writes.len()]);
        }
        // Some writes matched nothing: read those jobs to tell "already applied" from "stale".
        let ids: Vec<String> = writes.iter().map(|w| w.id().to_string()).collect();
        let current: HashMap<String, (JobState, i32, bool)> = self
            .get_many(&ids)
            .await?
            .into_iter()
            .map(|j| (j.id, (j.state, j.attempt, j.cancel_requested)))
            .collect();
        Ok(writes
            .iter()
            .map(|w| match current.get(w.id()) {
                Some((state, attempt, _)) if w.is_reflected_in(*state, *attempt) => Applied::Done,
                Some((state, attempt, true))
                    if w.yields_to_cancel() && !state.is_terminal() && w.attempt() == *attempt =>
                {
                    Applied::CancelRequested
                }
                Some((state, attempt, _)) => Applied::Stale {
                    actual: Some(*state),
                    attempt: *attempt,
                },
                None => Applied::Stale {
                    actual: None,
                    attempt: 0,
                },
            })
            .collect())
    }

    /// The guarded `update` statement of one write.
    fn statement(&self, w: &Write) -> Document {
        let live = JobState::live_names();
        let (q, u) = match w {
            // Guard: the job is still live and no newer attempt has started.
            Write::Start { id, attempt, at } => (
                doc! { "_id": id, "state": { "$in": &live }, "attempt": { "$lte": attempt } },
                doc! {
                    "$set": {
                        "state": JobState::Running.as_str(),
                        "attempt": attempt,
                        "started_ms": at.timestamp_millis(),
                        "progress": Bson::Null,
                        "enqueue_pending": false,
                    },
                    "$inc": { "rev": 1 },
                },
            ),
            // Guard: exactly this attempt is running.
            // With an event, also: no outbox entry is pending. A pending entry is an earlier
            // run's terminal event (the job was retried by hand before the dispatcher got to
            // it), which a progress event must not replace; this report then waits a round.
            Write::Progress {
                id,
                attempt,
                progress,
                event,
            } => {
                let mut q =
                    doc! { "_id": id, "state": JobState::Running.as_str(), "attempt": attempt };
                let mut set = doc! { "progress": progress_doc(progress) };
                if *event {
                    // `$nin`, not `$ne`: the compatible server's update path does not match
                    // `$ne` against a missing field (MongoDB does; both agree on `$nin`).
                    q.insert("outbox.pending", doc! { "$nin": [1] });
                    let at_ms = now_ms();
                    let mut entry = outbox_doc(id, JobEvent::Progress, at_ms);
                    entry.insert("id", format!("{}p", event_id(id, at_ms)));
                    set.insert("outbox", entry);
                }
                (q, doc! { "$set": set, "$inc": { "rev": 1 } })
            }
            // Guard: still live and no newer attempt (a rescued-and-rerun job has a higher
            // attempt, so the stale worker's outcome is refused).
            Write::Finish {
                id,
                attempt,
                started_at,
                at,
                decision,
                progress,
                record_event,
            } => {
                // A rate limit gives the attempt back: the next claim runs it with the same
                // number (as a release at shutdown does).
                let recorded_attempt = if decision.returns_attempt() {
                    attempt - 1
                } else {
                    *attempt
                };
                let mut set = doc! {
                    "state": decision.state().as_str(),
                    "attempt": recorded_attempt,
                    "enqueue_pending": false,
                };
                if let Some(s) = started_at {
                    set.insert("started_ms", s.timestamp_millis());
                }
                if let Some(p) = progress {
                    set.insert("progress", progress_doc(p));
                }
                let error = |message: &str| {
                    doc! {
                        "attempt": attempt,
                        "at_ms": at.timestamp_millis(),
                        "message": truncate(message, 4000),
                    }
                };
                match decision {
                    Decision::Succeed(v) => {
                        set.insert("result_json", v.to_string());
                    }
                    Decision::Retry { error: e, .. } => {
                        set.insert(format!("errors.{attempt}"), error(e));
                    }
                    Decision::Fail(e) => {
                        set.insert(format!("errors.{attempt}"), error(e));
                    }
                    Decision::Cancel(_) | Decision::Throttle { .. } => {}
                }
                if let Some(at) = decision.next_run_at(at.timestamp_millis()) {
                    set.insert("run_at_ms", at);
                }
                if decision.state().is_terminal() {
                    set.insert("finished_ms", at.timestamp_millis());
                    set.insert("retention", self.retention_doc(*at));
                    // The outbox rides on the terminal write itself: if this statement applies,
                    // the event will be delivered, whatever crashes next.
                    if let Some(event) = JobEvent::ended(decision.state()).filter(|_| *record_event)
                    {
                        set.insert("outbox", outbox_doc(id, event, at.timestamp_millis()));
                    }
                }
                let mut q =
                    doc! { "_id": id, "state": { "$in": &live }, "attempt": { "$lte": attempt } };
                if w.yields_to_cancel() {
                    // A cancel answered 202 must not be lost to a retry or failure recorded by
                    // a worker that had not heard of it yet: such a write is refused, and the
                    // caller records `cancelled` instead (`Applied::CancelRequested`).
                    // `$nin`: the compatible server stores booleans set by `$set` as 0/1.
                    q.insert("cancel_requested", doc! { "$nin": [true, 1] });
                }
                (q, doc! { "$set": set, "$inc": { "rev": 1 } })
            }
            // Guard: this attempt is the one running.
            Write::Release { id, attempt } => (
                doc! { "_id": id, "state": JobState::Running.as_str(), "attempt": attempt },
                doc! {
                    "$set": {
                        "state": JobState::Queued.as_str(),
                        "attempt": attempt - 1,
                        "started_ms": Bson::Null,
                        "progress": Bson::Null,
                    },
                    "$inc": { "rev": 1 },
                },
            ),
        };
        doc! { "q": q, "u": u }
    }
}

/// The outbox sub-document of `event` of job `id` at `at_ms`.
fn outbox_doc(id: &str, event: JobEvent, at_ms: i64) -> Document {
    doc! {
        "pending": 1,
        "event": event.as_str(),
        "id": event_id(id, at_ms),
        "at_ms": at_ms,
    }
}

/// `filter` limited to `tenant`'s records (`None`: everyone's, for operators). The one place
/// the tenant rule of every collection is written.
pub fn scoped(mut filter: Document, tenant: Option<&str>) -> Document {
    if let Some(t) = tenant {
        filter.insert("tenant", t);
    }
    filter
}

/// A page of `coll` newest first by its `list_key`, before the cursor `before` if any: the one
/// listing query of every collection with a `list_key` (jobs, and the records of features).
pub async fn newest_first<T>(
    coll: &Collection<T>,
    mut filter: Document,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    if let Some(b) = before {
        filter.insert("list_key", doc! { "$lt": b });
    }
    Ok(coll
        .find(filter)
        .sort(doc! { "list_key": -1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?)
}

fn progress_doc(p: &Progress) -> Document {
    doc! { "done": p.done, "total": p.total, "message": p.message.clone() }
}

fn waiting_names() -> Vec<&'static str> {
    JobState::ALL
        .into_iter()
        .filter(|s| s.is_waiting())
        .map(JobState::as_str)
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Whether a MongoDB error is a unique-index violation.
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(we)) => we.code == 11000,
        ErrorKind::InsertMany(im) => im
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == 11000)),
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// What the reconciler's checks read of a live job: enough to ask Redis whether it holds it
/// (a whole job is read again only when Redis does not). A few short fields instead of the
/// whole document, since these checks read every job still waiting some seconds after its
/// creation. The id is also the paging key: `list_key` is a copy of it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LiveRef {
    /// The job's id.
    #[serde(rename = "_id")]
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// See [`Job::enqueue_pending`].
    #[serde(default, deserialize_with = "crate::job::lenient_bool")]
    pub enqueue_pending: bool,
}

impl LiveRef {
    /// The fields read.
    fn projection() -> Document {
        doc! { "_id": 1, "queue": 1, "enqueue_pending": 1 }
    }
}

/// The indexes of the jobs collection, options included (the benchmark's store ceilings
/// insert into a collection with exactly these).
pub fn job_indexes() -> Vec<IndexModel> {
    let plain = |keys: Document| IndexModel::builder().keys(keys).build();
    vec![
        // Listing, newest first: a tenant's jobs (optionally by state), and every job for
        // operators (optionally by state; also the reconciler's scan of live jobs). Kind and
        // queue filters walk the same index prefixes and filter on the way, so they never
        // scan the collection; dedicated indexes would cost every insert more than they save
        // (each index made inserts ~25% slower on the MongoDB-compatible server).
        plain(doc! { "tenant": 1, "list_key": -1 }),
        plain(doc! { "tenant": 1, "state": 1, "list_key": -1 }),
        plain(doc! { "list_key": -1 }),
        plain(doc! { "state": 1, "list_key": -1 }),
        IndexModel::builder()
            .keys(doc! { "tenant": 1, "idempotency_key": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .partial_filter_expression(doc! { "idempotency_key": { "$type": "string" } })
                    .build(),
            )
            .build(),
        // Retention's sweep (`Store::delete_expired`); not a TTL index, see there.
        Retention::sweep_index(),
        // The outbox loop's scan of events its subscribers have not handled yet, and the
        // reconciler's of retried jobs not yet confirmed in Redis. Single-field: the
        // MongoDB-compatible server answers an equality from a single-field index but scans
        // the collection for a compound one (70 ms at 20,000 jobs, every other command waiting
        // behind it); on MongoDB the few matching jobs are sorted in memory.
        IndexModel::builder()
            .keys(doc! { "outbox.pending": 1 })
            .options(
                IndexOptions::builder()
                    .partial_filter_expression(doc! { "outbox.pending": 1 })
                    .build(),
            )
            .build(),
        IndexModel::builder()
            .keys(doc! { "enqueue_pending": 1 })
            .options(
                IndexOptions::builder()
                    .partial_filter_expression(doc! { "enqueue_pending": true })
                    .build(),
            )
            .build(),
    ]
}

#[cfg(test)]
mod write_settings_tests {
    use super::*;

    fn opts(uri: &str, w: MongoWrites) -> ClientOptions {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut o = rt
            .block_on(async { ClientOptions::parse(uri).await })
            .unwrap();
        apply_writes(&mut o, &w);
        o
    }

    fn writes(concern: WriteConcern, journal: Option<bool>) -> MongoWrites {
        MongoWrites {
            concern,
            journal,
            retry_writes: true,
        }
    }

    #[test]
    fn driver_options_follow_the_write_settings() {
        // A replica set in the URI: majority by default, reads on the primary.
        let o = opts(
            "mongodb://a:1,b:2/?replicaSet=rs0&readPreference=secondary",
            writes(WriteConcern::Default, None),
        );
        let wc = o.write_concern.unwrap();
        assert_eq!(wc.w, Some(Acknowledgment::Majority));
        assert_eq!(wc.journal, None);
        assert_eq!(o.retry_writes, Some(true));
        assert!(matches!(
            o.selection_criteria,
            Some(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        ));
        // No replica set, nothing set: the server's default.
        let o = opts("mongodb://a:1/", writes(WriteConcern::Default, None));
        assert!(o.write_concern.is_none());
        // The URI's own w is kept when the setting is not given.
        let o = opts(
            "mongodb://a:1/?replicaSet=rs0&w=2",
            writes(WriteConcern::Default, None),
        );
        assert_eq!(o.write_concern.unwrap().w, Some(Acknowledgment::Nodes(2)));
        // The setting wins over the URI; journal and retryable writes are applied.
        let mut w = writes(WriteConcern::Tag("dcs".into()), Some(true));
        w.retry_writes = false;
        let o = opts("mongodb://a:1/?w=1", w);
        let wc = o.write_concern.unwrap();
        assert_eq!(wc.w, Some(Acknowledgment::Custom("dcs".into())));
        assert_eq!(wc.journal, Some(true));
        assert_eq!(o.retry_writes, Some(false));
    }
}
