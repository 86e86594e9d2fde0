//! The submitting side of jobmill, used by the API and by Rust programs that enqueue jobs
//! directly: validation against the kinds catalog, the MongoDB-then-Redis write order that makes
//! an accepted job durable, idempotency keys, cancel and retry. Features check and complete
//! submissions through [`SubmitHook`]s.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime as ChronoDateTime, Utc};
use mongodb::bson::DateTime;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{Access, Catalog};
use crate::config::{check_queue_name, CoreSettings};
use crate::error::{Error, Result};
use crate::job::{new_job_id, ready_score, Job, MAX_PRIORITY, MIN_PRIORITY};
use crate::outbox::BoxFuture;
use crate::queue::{CancelEffect, Enqueue, Placement, RedisQueue};
use crate::state::JobState;
use crate::store::{Inserted, Store};

/// Most attempts a job may be given.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest per-attempt timeout.
pub const MAX_TIMEOUT_MS: u64 = 7 * 86_400_000;
/// Furthest a job may be scheduled ahead.
pub const MAX_SCHEDULE_AHEAD_MS: u64 = 366 * 86_400_000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Longest shard key, in characters.
pub const MAX_SHARD_KEY: usize = 200;
/// Most jobs in one batch submission.
pub const MAX_BATCH: usize = 1000;
/// Default queue.
pub const DEFAULT_QUEUE: &str = "default";
/// Internal owners (the tenants of a feature's own jobs) contain this character, which API key
/// names cannot, so no caller can own or submit as one.
pub const INTERNAL_TENANT_SEP: char = ':';
/// Default priority.
pub const DEFAULT_PRIORITY: i32 = 0;

/// A job to submit. Everything but `kind` and `args` is optional.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// Kind name.
    pub kind: String,
    /// Arguments (checked by the kind's own validation).
    pub args: Value,
    /// Queue (default `default`).
    pub queue: Option<String>,
    /// 0..=9, higher runs first (default 0).
    pub priority: Option<i32>,
    /// Do not run before this time.
    pub run_at: Option<ChronoDateTime<Utc>>,
    /// Do not run before this many ms from now.
    pub delay_ms: Option<u64>,
    /// Attempts before failing for good (default: the kind's).
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (default: the kind's).
    pub timeout_ms: Option<u64>,
    /// Deduplication key, unique per tenant.
    pub idempotency_key: Option<String>,
    /// What the queue's per-key limits count the job against (see [`crate::limits`]).
    pub limit_key: Option<String>,
    /// Pins the job to one shard of a sharded queue: jobs with the same key share a shard
    /// (default: placed by the job's id).
    pub shard_key: Option<String>,
    /// Fields owned by features (see [`Job::ext`]), checked by their [`SubmitHook`]s.
    pub ext: serde_json::Map<String, Value>,
}

/// A feature's check of submissions: refuse what it cannot accept (a bad field of its own in
/// [`Job::ext`]) and complete the records (for example mark that their events are wanted).
/// Runs before anything is stored; an error refuses the whole submission.
pub trait SubmitHook: Send + Sync {
    /// Check and complete the jobs of one submission by `tenant`. In a batch, an error should
    /// name the job's index (`job {i}: ...`).
    fn prepare<'a>(
        &'a self,
        tenant: &'a str,
        jobs: &'a mut [Job],
        batch: bool,
    ) -> BoxFuture<'a, Result<()>>;
}

/// Result of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job (the original one when the idempotency key was seen before).
    pub job: Job,
    /// False when an earlier job with the same idempotency key was returned instead.
    pub created: bool,
}

/// Submission limits, from the settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest serialized args.
    pub max_args_bytes: usize,
}

impl Limits {
    /// The limits the settings ask for.
    pub fn from_settings(s: &CoreSettings) -> Self {
        Limits {
            max_args_bytes: s.max_args_bytes,
        }
    }
}

/// Submits, cancels and retries jobs. Cheap to clone: one reference count, since the API
/// clones its state (and with it this client) for every request.
#[derive(Clone)]
pub struct JobClient {
    inner: Arc<ClientParts>,
}

/// What a [`JobClient`] holds.
struct ClientParts {
    store: Store,
    queue: RedisQueue,
    catalog: Arc<Catalog>,
    limits: Limits,
    hooks: Vec<Arc<dyn SubmitHook>>,
    confirm: mpsc::UnboundedSender<Vec<String>>,
    inserts: mpsc::UnboundedSender<GroupedInsert>,
}

impl JobClient {
    /// Build a client. Spawns two background tasks (on the current Tokio runtime): one groups
    /// concurrent single submissions into one MongoDB insert, one batches the "this job is in
    /// Redis" confirmations of retried jobs into few MongoDB writes.
    pub fn new(
        store: Store,
        queue: RedisQueue,
        catalog: Arc<Catalog>,
        limits: Limits,
        hooks: Vec<Arc<dyn SubmitHook>>,
    ) -> Self {
        let (confirm, rx) = mpsc::unbounded_channel();
        tokio::spawn(confirm_loop(store.clone(), rx));
        let (inserts, rx) = mpsc::unbounded_channel();
        tokio::spawn(insert_group_loop(
            store.clone(),
            queue.clone(),
            confirm.clone(),
            rx,
        ));
        JobClient {
            inner: Arc::new(ClientParts {
                store,
                queue,
                catalog,
                limits,
                hooks,
                confirm,
                inserts,
            }),
        }
    }

    /// Connect to both stores with `settings`; submissions are checked against `catalog`.
    pub async fn connect(settings: &CoreSettings, catalog: Arc<Catalog>) -> Result<Self> {
        let store = Store::connect_settings(settings).await?;
        let queue = RedisQueue::connect(&settings.redis, &settings.key_prefix).await?;
        crate::shards::join_settings(&store, settings, &queue).await?;
        Ok(JobClient::new(
            store,
            queue,
            catalog,
            Limits::from_settings(settings),
            Vec::new(),
        ))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The queues.
    pub fn queue(&self) -> &RedisQueue {
        &self.inner.queue
    }

    /// The kinds catalog submissions are checked against.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.inner.catalog
    }

    /// Validate a submission of a public kind and build its job record. Nothing is written.
    pub fn prepare(&self, tenant: &str, new: NewJob) -> Result<Job> {
        self.prepare_as(tenant, new, Access::Public)
    }

    fn prepare_as(&self, tenant: &str, new: NewJob, access: Access) -> Result<Job> {
        let kind = self.inner.catalog.validate(&new.kind, &new.args, access)?;
        let idempotency_hash = new.idempotency_key.as_ref().map(|_| request_hash(&new));
        let defaults = &kind.defaults;
        let args_json = new.args.to_string();
        if args_json.len() > self.inner.limits.max_args_bytes {
            return Err(Error::invalid(
                "args_too_large",
                format!(
                    "args are {} bytes; the limit is {} (store large inputs elsewhere and pass their id)",
                    args_json.len(),
                    self.inner.limits.max_args_bytes
                ),
            ));
        }
        let queue = new.queue.unwrap_or_else(|| defaults.queue.clone());
        check_queue_name(&queue).map_err(|m| Error::invalid("invalid_queue", m))?;
        let priority = new.priority.unwrap_or(DEFAULT_PRIORITY);
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&priority) {
            return Err(Error::invalid(
                "invalid_priority",
                format!("priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, got {priority}"),
            ));
        }
        let max_attempts = new.max_attempts.unwrap_or(defaults.max_attempts);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(Error::invalid(
                "invalid_max_attempts",
                format!("max_attempts must be from 1 to {MAX_ATTEMPTS}, got {max_attempts}"),
            ));
        }
        let timeout_ms = new.timeout_ms.unwrap_or(defaults.timeout_ms);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(Error::invalid(
                "invalid_timeout",
                format!("timeout_ms must be from 1 to {MAX_TIMEOUT_MS}, got {timeout_ms}"),
            ));
        }
        if let Some(key) = &new.idempotency_key {
            if key.is_empty()
                || key.len() > MAX_IDEMPOTENCY_KEY
                || key.chars().any(|c| c.is_control())
            {
                return Err(Error::invalid(
                    "invalid_idempotency_key",
                    format!("idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"),
                ));
            }
        }
        if let Some(key) = &new.limit_key {
            crate::limits::check_limit_key(key)
                .map_err(|m| Error::invalid("invalid_limit_key", m))?;
            if new.shard_key.as_ref().is_some_and(|s| s != key) {
                return Err(Error::invalid(
                    "conflicting_shard_key",
                    "a job with a limit_key is placed by it: give no shard_key, or the same",
                ));
            }
        }
        if let Some(key) = &new.shard_key {
            // Characters, not bytes: the OpenAPI schema's `maxLength` counts characters.
            if key.is_empty()
                || key.chars().count() > MAX_SHARD_KEY
                || key.chars().any(|c| c.is_control())
            {
                return Err(Error::invalid(
                    "invalid_shard_key",
                    format!("shard_key must be 1-{MAX_SHARD_KEY} printable characters"),
                ));
            }
        }
        let now = DateTime::now();
        let now_ms = now.timestamp_millis();
        let run_at_ms = match (new.run_at, new.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "conflicting_schedule",
                    "give either run_at or delay_ms, not both",
                ))
            }
            (Some(at), None) => {
                let at = at.timestamp_millis();
                if at > now_ms + MAX_SCHEDULE_AHEAD_MS as i64 {
                    return Err(Error::invalid(
                        "invalid_run_at",
                        "run_at must be within a year from now",
                    ));
                }
                at.max(now_ms)
            }
            (None, Some(d)) => {
                if d > MAX_SCHEDULE_AHEAD_MS {
                    return Err(Error::invalid(
                        "invalid_delay",
                        format!("delay_ms must be at most {MAX_SCHEDULE_AHEAD_MS}"),
                    ));
                }
                now_ms + d as i64
            }
            (None, None) => now_ms,
        };
        let id = new_job_id();
        Ok(Job {
            list_key: id.clone(),
            id,
            tenant: tenant.to_string(),
            kind: new.kind,
            queue,
            // A key's jobs share one lane of a sharded queue, so its per-key limits stay exact
            // (each lane's claim script sees all of them).
            shard_key: new.shard_key.or_else(|| new.limit_key.clone()),
            priority,
            args_json,
            state: if run_at_ms > now_ms {
                JobState::Scheduled
            } else {
                JobState::Queued
            },
            attempt: 0,
            max_attempts: max_attempts as i32,
            attempt_budget: max_attempts as i32,
            timeout_ms: timeout_ms as i64,
            idempotency_key: new.idempotency_key,
            idempotency_hash,
            limit_key: new.limit_key,
            ext: new.ext,
            wants_events: false,
            outbox: None,
            progress: None,
            result_json: None,
            errors: Default::default(),
            cancel_requested: false,
            created_ms: now_ms,
            run_at_ms,
            started_ms: None,
            finished_ms: None,
            retention: None,
            rev: 1,
            // No flag, hence no confirmation write per submission: the reconciler's fresh pass
            // finds a job whose push never happened by its creation time (its id).
            enqueue_pending: false,
        })
    }

    /// Submit one job. Once this returns `Ok` the job is in MongoDB and will reach a terminal
    /// state, even if Redis was unreachable just now (the reconciler pushes it later).
    pub async fn submit(&self, tenant: &str, new: NewJob) -> Result<Submitted> {
        let mut out = self.submit_batch(tenant, vec![new]).await?;
        Ok(out.remove(0))
    }

    /// Submit several jobs: all are validated first, and if any is invalid none is stored.
    /// Jobs whose idempotency key was used before come back as the original job.
    pub async fn submit_batch(&self, tenant: &str, news: Vec<NewJob>) -> Result<Vec<Submitted>> {
        self.submit_as(tenant, news, Access::Public).await
    }

    /// Submit jobs of jobmill itself (a feature's follow-up jobs): internal kinds are allowed.
    /// Never reachable from a request.
    pub async fn submit_internal(&self, owner: &str, news: Vec<NewJob>) -> Result<Vec<Submitted>> {
        self.submit_as(owner, news, Access::Internal).await
    }

    async fn submit_as(
        &self,
        tenant: &str,
        news: Vec<NewJob>,
        access: Access,
    ) -> Result<Vec<Submitted>> {
        if news.is_empty() {
            return Err(Error::invalid(
                "empty_batch",
                "a batch needs at least one job",
            ));
        }
        if news.len() > MAX_BATCH {
            return Err(Error::invalid(
                "batch_too_large",
                format!("a batch holds at most {MAX_BATCH} jobs, got {}", news.len()),
            ));
        }
        let batch = news.len() > 1;
        let mut keys = HashSet::new();
        let mut jobs = Vec::with_capacity(news.len());
        for (i, new) in news.into_iter().enumerate() {
            if let Some(k) = &new.idempotency_key {
                if !keys.insert(k.clone()) {
                    return Err(Error::invalid(
                        "duplicate_idempotency_key",
                        format!("job {i} repeats an idempotency key used earlier in the batch"),
                    ));
                }
            }
            // In a batch, say which job is wrong.
            let job = self
                .prepare_as(tenant, new, access)
                .map_err(|e| in_batch(e, batch, i))?;
            jobs.push(job);
        }
        for hook in &self.inner.hooks {
            hook.prepare(tenant, &mut jobs, batch).await?;
        }
        // MongoDB first: from here on the job is durable and will run. A single submission
        // is pushed to Redis by its insert group, once for the whole group.
        let grouped = jobs.len() == 1;
        let inserted = if grouped {
            vec![self.insert_grouped(jobs[0].clone()).await?]
        } else {
            self.inner.store.insert_jobs(&jobs).await?
        };
        let mut out = Vec::with_capacity(jobs.len());
        let mut fresh = Vec::new();
        let mut reused = None;
        for (job, ins) in jobs.into_iter().zip(inserted) {
            match ins {
                Inserted::New => {
                    fresh.push(job.clone());
                    out.push(Submitted { job, created: true });
                }
                Inserted::DuplicateKey => {
                    let key = job.idempotency_key.as_deref().unwrap_or_default();
                    let original = self
                        .inner
                        .store
                        .find_by_idempotency_key(tenant, key)
                        .await?
                        .ok_or_else(|| {
                            Error::Corrupt("idempotency key is taken but its job is gone".into())
                        })?;
                    // The same key with a different request is a client bug that would
                    // silently drop the new request: refuse it. A job stored before requests
                    // were hashed has no hash and is taken as the same request.
                    if original
                        .idempotency_hash
                        .as_ref()
                        .is_some_and(|h| Some(h) != job.idempotency_hash.as_ref())
                    {
                        reused.get_or_insert(original.id.clone());
                    }
                    out.push(Submitted {
                        job: original,
                        created: false,
                    });
                }
            }
        }
        if let Some(job_id) = reused {
            // All or nothing: the other jobs of this submission were never answered 202 and
            // never pushed to Redis, so they are removed again.
            let ids: Vec<String> = fresh.iter().map(|j| j.id.clone()).collect();
            if !ids.is_empty() {
                self.inner.store.delete_unanswered(&ids).await?;
            }
            return Err(Error::IdempotencyKeyReused { job_id });
        }
        if !grouped {
            self.push_to_redis(&fresh).await;
        }
        Ok(out)
    }

    /// Insert one job together with whatever other single submissions are waiting (see
    /// [`insert_group_loop`]).
    async fn insert_grouped(&self, job: Job) -> Result<Inserted> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .inserts
            .send((job, tx))
            .map_err(|_| Error::StoreUnavailable("the insert task stopped".into()))?;
        rx.await
            .map_err(|_| Error::StoreUnavailable("the insert task stopped".into()))?
    }

    /// Push stored jobs into Redis (and confirm retried ones). A failure is logged, not
    /// returned: the reconciler pushes them once Redis answers (its fresh pass for new jobs,
    /// its pending pass for retried ones, which keep `enqueue_pending`).
    async fn push_to_redis(&self, jobs: &[Job]) {
        push_stored(&self.inner.queue, &self.inner.confirm, jobs).await;
    }

    /// Cancel a job (see [`Store::cancel`]) and remove or signal it in Redis.
    pub async fn cancel(&self, id: &str, tenant: Option<&str>) -> Result<Job> {
        let job = self.inner.store.cancel(id, tenant).await?;
        let effect = self
            .inner
            .queue
            .cancel(&job.queue, id, job.shard_key.as_deref())
            .await;
        match effect {
            Ok(CancelEffect::Removed) | Ok(CancelEffect::Signalled) | Ok(CancelEffect::Absent) => {}
            // MongoDB already says cancelled; if a worker claims the job anyway, its start is
            // refused by the state guard and it stops the handler.
            Err(e) => tracing::warn!(error = %e, job = id, "redis cancel failed"),
        }
        let _ = self.inner.queue.publish_changes(&[id.to_string()]).await;
        Ok(job)
    }

    /// Retry a failed or cancelled job (see [`Store::retry`]).
    pub async fn retry(&self, id: &str, tenant: Option<&str>) -> Result<Job> {
        let job = self.inner.store.retry(id, tenant).await?;
        self.push_to_redis(std::slice::from_ref(&job)).await;
        let _ = self.inner.queue.publish_changes(&[id.to_string()]).await;
        Ok(job)
    }
}

/// The hash of a submission as it was sent (kind, args, queue, priority, `run_at` or
/// `delay_ms`, attempts, timeout and the features' fields), kept with its idempotency key so
/// that the same key with a different request is refused. Defaults are not applied first: what
/// the client sent is what must match. Keys are sorted, so the order fields were written in
/// does not matter.
pub fn request_hash(new: &NewJob) -> String {
    use sha2::{Digest, Sha256};
    let mut request = serde_json::json!({
        "kind": new.kind,
        "args": new.args,
        "queue": new.queue,
        "priority": new.priority,
        "run_at": new.run_at.map(|t| t.timestamp_millis()),
        "delay_ms": new.delay_ms,
        "max_attempts": new.max_attempts,
        "timeout_ms": new.timeout_ms,
        "ext": new.ext,
    });
    // Only when given, so keys used before limits existed keep their hash.
    if let Some(k) = &new.limit_key {
        request["limit_key"] = Value::String(k.clone());
    }
    // Only when given, so the hashes of keys used before shard keys existed stay valid.
    if let Some(k) = &new.shard_key {
        request["shard_key"] = Value::String(k.clone());
    }
    hex::encode(Sha256::digest(canonical(&request).to_string().as_bytes()))
}

/// `v` with every object's keys in sorted order, whatever map type serde_json was built with.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Say which job of a batch an input error is about.
fn in_batch(e: Error, batch: bool, i: usize) -> Error {
    match e {
        Error::InvalidJob { code, message } if batch => Error::InvalidJob {
            code,
            message: format!("job {i}: {message}"),
        },
        Error::InvalidArgs { message, details } if batch => Error::InvalidArgs {
            message: format!("job {i}: {message}"),
            details,
        },
        other => other,
    }
}

/// The Redis entry of a stored live job.
pub fn enqueue_entry(job: &Job) -> Enqueue {
    let run_at = job.run_at_ms;
    let placement = match job.state {
        JobState::Scheduled | JobState::Retrying if run_at > crate::job::now_ms() => {
            Placement::Scheduled(run_at)
        }
        _ => Placement::Ready(ready_score(job.priority, run_at.min(crate::job::now_ms()))),
    };
    Enqueue {
        payload: job.payload(),
        attempts: job.attempt,
        placement,
    }
}

/// Push stored jobs into Redis and have them confirmed (see [`JobClient::push_to_redis`]).
async fn push_stored(
    queue: &RedisQueue,
    confirm: &mpsc::UnboundedSender<Vec<String>>,
    jobs: &[Job],
) {
    if jobs.is_empty() {
        return;
    }
    let entries: Vec<Enqueue> = jobs.iter().map(enqueue_entry).collect();
    match queue.enqueue(&entries).await {
        Ok(_) => {
            // Only retried jobs carry the flag (see `Job::enqueue_pending`).
            let flagged: Vec<String> = jobs
                .iter()
                .filter(|j| j.enqueue_pending)
                .map(|j| j.id.clone())
                .collect();
            if !flagged.is_empty() {
                let _ = confirm.send(flagged);
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            jobs = jobs.len(),
            "redis push failed; the reconciler will push these jobs"
        ),
    }
}

/// A single submission waiting for its insert.
type GroupedInsert = (Job, oneshot::Sender<Result<Inserted>>);

/// Group commit for single submissions: the submissions that arrive while one insert is in
/// flight go out together in the next `insert_many`. A lone sequential producer waits for
/// nothing extra; many concurrent ones (HTTP clients) share one MongoDB write per group instead
/// of one each. Unordered, so one job's duplicate idempotency key does not affect the others;
/// on any other failure every job of the group is removed again and every caller told (none of
/// them is answered 202, so none must run).
///
/// The group's new jobs are then pushed to Redis in one call (one script run per queue instead
/// of one per job), on a task of its own so the next group's insert does not wait for it; the
/// callers are answered after that push, as a lone submission always was, so a `202` still
/// means "in MongoDB, and in Redis unless Redis failed" (then the reconciler pushes it).
async fn insert_group_loop(
    store: Store,
    queue: RedisQueue,
    confirm: mpsc::UnboundedSender<Vec<String>>,
    mut rx: mpsc::UnboundedReceiver<GroupedInsert>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < crate::store::WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        let jobs: Vec<Job> = group.iter().map(|(j, _)| j.clone()).collect();
        match store.insert_jobs(&jobs).await {
            Ok(results) => {
                let fresh: Vec<Job> = jobs
                    .into_iter()
                    .zip(&results)
                    .filter(|(_, r)| matches!(r, Inserted::New))
                    .map(|(j, _)| j)
                    .collect();
                let (queue, confirm) = (queue.clone(), confirm.clone());
                tokio::spawn(async move {
                    push_stored(&queue, &confirm, &fresh).await;
                    for ((_, reply), r) in group.into_iter().zip(results) {
                        let _ = reply.send(Ok(r));
                    }
                });
            }
            Err(e) => {
                let why = e.to_string();
                for (_, reply) in group {
                    let _ = reply.send(Err(Error::StoreUnavailable(why.clone())));
                }
            }
        }
    }
}

/// How long confirmations gather before they are written: long enough that a steady stream of
/// submissions costs the store about two confirm commands a second (each one it serves delays
/// the submissions queued behind it), far below the reconciler's 10 s grace.
const CONFIRM_WINDOW: Duration = Duration::from_millis(500);

/// Batch confirmations: whatever arrived while the previous write ran goes in the next one.
async fn confirm_loop(store: Store, mut rx: mpsc::UnboundedReceiver<Vec<String>>) {
    while let Some(first) = rx.recv().await {
        // Wait a moment so a sequential producer's confirmations share one write instead of
        // doubling its MongoDB writes; nothing depends on the flag clearing sooner (the
        // reconciler only looks at jobs flagged for 10 s).
        tokio::time::sleep(CONFIRM_WINDOW).await;
        let mut ids = first;
        while let Ok(more) = rx.try_recv() {
            ids.extend(more);
            if ids.len() >= 10 * crate::store::WRITE_BATCH {
                break;
            }
        }
        for attempt in 0..3 {
            match store.confirm_enqueued(&ids).await {
                Ok(()) => break,
                Err(e) => {
                    // Harmless to give up: the reconciler finds the flag, sees the job already
                    // in Redis, and clears it.
                    tracing::debug!(error = %e, attempt, "confirm failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }
}
