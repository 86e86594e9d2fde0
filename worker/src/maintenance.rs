//! The maintenance loops every worker runs. Each is safe to run in many processes at once (the
//! Redis scripts are atomic and the MongoDB writes guarded); the expensive ones take a short
//! Redis lock so only one process does the work per round.
//! - scheduler: promotes due scheduled and retrying jobs to the ready set, on time.
//! - rescuer: finds leases whose worker stopped heartbeating and retries or fails their jobs.
//! - reconciler: rebuilds a queue in Redis from MongoDB when the queue's Redis node lost its
//!   data (per-queue epoch), pushes jobs whose submitter never confirmed the Redis push, and
//!   sweeps MongoDB's live jobs in bounded batches for any Redis no longer holds.
//! - retention: deletes finished jobs whose retention ended (the jobs collection has no TTL
//!   index; see `Store::delete_expired` for why).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jobmill::client::enqueue_entry;
use jobmill::queue::Claimed;
use jobmill::state::{decide, AttemptOutcome};
use jobmill::store::{RedisStep, Write};
use mongodb::bson::DateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Most jobs promoted by one script call.
const PROMOTE_BATCH: usize = 1000;
/// Most jobs rescued by one script call.
const RESCUE_BATCH: usize = 200;
/// Longest sleep of the scheduler when nothing is scheduled.
const SCHEDULER_IDLE: Duration = Duration::from_secs(1);
/// How often the reconciler checks Redis.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How long after its retry the reconciler checks that a retried job reached Redis.
const PENDING_GRACE: Duration = Duration::from_secs(10);
/// How long after its creation the fresh pass checks that a job reached Redis. Its only cost
/// is a read of each job still waiting by then, so most jobs (done within it) are never read;
/// an API that died between insert and push delays its job by this much.
const FRESH_GRACE: Duration = Duration::from_secs(30);
/// Most pages of new jobs the fresh pass checks per round (the next round resumes).
const FRESH_PAGES: usize = 40;
/// How far back the fresh pass starts when it has no mark yet.
const FRESH_LOOKBACK: Duration = Duration::from_secs(600);
/// How often the retention sweep runs (one process at a time): MongoDB's TTL monitor also
/// runs once a minute, so finished jobs go as promptly as a TTL index would delete them.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Page size of the rebuild.
const REBUILD_PAGE: i64 = 500;

pub(crate) async fn scheduler(shared: Arc<Shared>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let mut sleep = SCHEDULER_IDLE;
        let lanes: Vec<String> = shared
            .settings
            .queues
            .iter()
            .flat_map(|q| shared.queue.lanes(&q.name))
            .collect();
        for lane in &lanes {
            loop {
                match shared.queue.promote(lane, PROMOTE_BATCH).await {
                    Ok((ids, next)) => {
                        if let Some(n) = next {
                            sleep = sleep.min(n);
                        }
                        let full = ids.len() == PROMOTE_BATCH;
                        if !ids.is_empty() {
                            // Off the timing path: a slow MongoDB must not delay promotion.
                            // Losing this write is harmless: the start write moves the job on.
                            let store = shared.store.clone();
                            tokio::spawn(async move {
                                if let Err(e) = store.mark_promoted(&ids).await {
                                    tracing::debug!(error = %e, "could not mark promoted jobs queued");
                                }
                            });
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, queue = %lane, "promote failed");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

pub(crate) async fn rescuer(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.core.rescue_period();
    // A rescue that stalls this long (its rescuer died) is taken over.
    let stale = shared.core.rescue_stale_after();
    loop {
        let mut queues: BTreeSet<String> = shared
            .settings
            .queues
            .iter()
            .map(|q| q.name.clone())
            .collect();
        match shared.queue.queue_names().await {
            Ok(all) => queues.extend(all),
            Err(e) => tracing::debug!(error = %e, "could not list queues"),
        }
        // Every lane of every queue, draining ones included: a lease in a draining lane
        // expires like any other.
        let lanes: Vec<String> = queues.iter().flat_map(|q| shared.queue.lanes(q)).collect();
        for q in lanes {
            loop {
                match shared.queue.rescue(&q, RESCUE_BATCH, stale).await {
                    Ok(taken) if taken.is_empty() => break,
                    Ok(taken) => {
                        let full = taken.len() == RESCUE_BATCH;
                        if let Err(e) = settle_rescued(&shared, &q, taken).await {
                            // The jobs stay in the rescued set and are taken again later.
                            tracing::warn!(error = %e, queue = %q, "rescue not recorded yet");
                            break;
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, queue = %q, "rescue failed");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Record the lost attempts of rescued jobs, then reschedule or forget them in Redis.
async fn settle_rescued(shared: &Shared, queue: &str, taken: Vec<Claimed>) -> jobmill::Result<()> {
    let now = DateTime::now();
    let mut writes: Vec<Write> = taken
        .iter()
        .map(|c| {
            let decision = decide(
                AttemptOutcome::LeaseExpired,
                c.attempt,
                c.payload.max_attempts.max(1) as u32,
                &shared.policy,
                rand::random::<f64>(),
                // Not known here; the store refuses the retry if a cancel was requested and
                // the rescue records `cancelled` instead (below).
                false,
            );
            Write::Finish {
                id: c.payload.id.clone(),
                attempt: c.attempt as i32,
                started_at: None,
                at: now,
                record_event: shared.subscribers.wants_end(
                    &c.payload.tenant,
                    c.payload.wants_events,
                    decision.state(),
                ),
                decision,
                progress: None,
            }
        })
        .collect();
    let mut applied = shared.store.apply(&writes).await?;
    // Jobs whose cancel was requested end `cancelled`, not retried: record that first.
    let cancels: Vec<Write> = writes
        .iter()
        .zip(&applied)
        .filter(|(w, a)| w.follow_up(a, now.timestamp_millis()).then_cancel)
        .map(|(w, _)| Write::Finish {
            id: w.id().to_string(),
            attempt: w.attempt(),
            started_at: None,
            at: now,
            decision: jobmill::state::Decision::Cancel(
                "cancel requested; the worker running it stopped heartbeating".into(),
            ),
            progress: None,
            record_event: true,
        })
        .collect();
    let cancelled = shared.store.apply(&cancels).await?;
    let mut cancelled = cancels.into_iter().zip(cancelled);
    for (w, a) in writes.iter_mut().zip(applied.iter_mut()) {
        if w.follow_up(a, now.timestamp_millis()).then_cancel {
            if let Some((cw, ca)) = cancelled.next() {
                *w = cw;
                *a = ca;
            }
        }
    }
    let mut ack = Vec::new();
    let mut reschedule = Vec::new();
    let mut changed = Vec::new();
    for (w, a) in writes.iter().zip(applied) {
        let then = w.follow_up(&a, now.timestamp_millis());
        let id = w.id().to_string();
        if then.changed {
            match then.step {
                RedisStep::Reschedule(_) => tracing::warn!(job = %id, "lease expired; retrying"),
                _ => tracing::warn!(job = %id, "lease expired; attempts exhausted"),
            }
            changed.push(id.clone());
        }
        match then.step {
            RedisStep::Reschedule(at) => reschedule.push((id, at)),
            RedisStep::Ack => ack.push(id),
            // A rescue writes only `Finish`, whose follow-ups are the two above.
            // A lease expiry never decides a rate limit.
            RedisStep::Keep
            | RedisStep::StopHandler
            | RedisStep::Release
            | RedisStep::Throttle(_) => {}
        }
    }
    shared.queue.reschedule(queue, None, &reschedule).await?;
    shared.queue.ack(queue, None, &ack).await?;
    let _ = shared.queue.publish_changes(&changed).await;
    Ok(())
}

/// Delete expired finished jobs once a minute, in one worker of the fleet per round.
pub(crate) async fn retention(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let round = async {
            if shared
                .queue
                .try_lock("retention", &shared.worker, RETENTION_EVERY)
                .await?
            {
                let deleted = shared.store.delete_expired(DateTime::now()).await?;
                if deleted > 0 {
                    tracing::debug!(deleted, "expired jobs deleted");
                }
            }
            Ok::<(), jobmill::Error>(())
        };
        if let Err(e) = round.await {
            tracing::warn!(error = %e, "retention sweep failed; next round retries");
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

pub(crate) async fn reconciler(shared: Arc<Shared>, stop: CancellationToken) {
    let mut sweep = Sweep::new();
    loop {
        if let Err(e) = reconcile_once(&shared, &mut sweep).await {
            tracing::warn!(error = %e, "reconcile failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn reconcile_once(shared: &Shared, sweep: &mut Sweep) -> jobmill::Result<()> {
    let q = &shared.queue;
    // Loss detection is per queue: each queue's epoch lives under the queue's hash tag, on the
    // node that holds the queue, so a single cluster master that comes back empty loses the
    // epochs of exactly its queues, and only those are rebuilt.
    // On a sharded queue each lane has its own epoch (on its own master). The lanes of a queue
    // that lost theirs are rebuilt together: one pass over the queue's live jobs puts each back
    // into its current lane, and the enqueue script skips those Redis still holds. Draining
    // lanes are checked too: `claim.lua` hands out nothing from a lane without its epoch.
    for queue in sweep.queues(shared).await {
        let mut lost = Vec::new();
        for lane in q.shards().lanes(&queue) {
            if !q.epoch_present(&lane).await?
                && q.try_lock(
                    &format!("rebuild:{lane}"),
                    &shared.worker,
                    Duration::from_secs(60),
                )
                .await?
            {
                lost.push(lane);
            }
        }
        if lost.is_empty() {
            continue;
        }
        let rebuilt = rebuild_lost(shared, &queue, &lost).await;
        // Free the locks either way: after a rebuild, should this lane's node lose its data
        // again within the lock's minute, the next round must be able to rebuild it; after a
        // failure, the next round (seconds away) retries rather than a minute later, while the
        // lanes hand out nothing (no epoch).
        for lane in &lost {
            q.unlock(&format!("rebuild:{lane}")).await?;
        }
        if let Err(e) = rebuilt {
            // The other queues still get their turn; this one is retried next round.
            tracing::warn!(queue = %queue, error = %e, "rebuild failed; retrying next round");
        }
    }
    retire_drained_lanes(shared).await?;
    if q.try_lock("pending", &shared.worker, RECONCILE_EVERY)
        .await?
    {
        pending_pass(shared).await?;
        fresh_pass(shared).await?;
    }
    if sweep.due() && q.try_lock("sweep", &shared.worker, SWEEP_EVERY).await? {
        sweep.run(shared).await?;
    }
    Ok(())
}

/// Push retried jobs whose retry was not confirmed in Redis within [`PENDING_GRACE`] (the
/// API died, or Redis failed, between the MongoDB write and the push).
async fn pending_pass(shared: &Shared) -> jobmill::Result<()> {
    let cutoff = id_at(std::time::SystemTime::now() - PENDING_GRACE);
    let jobs = shared.store.pending_enqueue(&cutoff, REBUILD_PAGE).await?;
    if jobs.is_empty() {
        return Ok(());
    }
    let entries: Vec<_> = jobs.iter().map(enqueue_entry).collect();
    let pushed = shared.queue.enqueue(&entries).await?;
    let ids: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
    shared.store.confirm_enqueued(&ids).await?;
    tracing::info!(
        pushed,
        checked = ids.len(),
        "pushed retried jobs whose push was not confirmed"
    );
    Ok(())
}

/// Check, once, that every job submitted since the last round reached Redis: the live jobs
/// created between the stored mark and [`FRESH_GRACE`] ago, in creation (id) order, at most
/// [`FRESH_PAGES`] pages a round; those Redis does not hold are pushed. This replaces a
/// confirmation write per submission (which competed with the inserts for the store): an API
/// that died, or lost Redis, between its insert and its push leaves a job this pass finds.
///
/// The grace is for cost: jobs done within it are never read. What keeps the reconciler off a
/// submission whose own push is still on its way is [`PENDING_GRACE`], the younger bound the
/// anti-entropy sweep also honours (a job pushed twice is harmless, as the enqueue script
/// skips jobs Redis holds, but one pushed again after it ran and left Redis would run twice).
/// It assumes the clocks of API and worker hosts agree within that, and that an insert lands
/// within the grace; a job created earlier than the mark when it lands is left to the sweep,
/// which walks every live job.
async fn fresh_pass(shared: &Shared) -> jobmill::Result<()> {
    let now = std::time::SystemTime::now();
    let cutoff = id_at(now - FRESH_GRACE);
    let start = match shared.queue.fresh_mark().await? {
        Some(m) => m,
        // A new deployment, or Redis lost the mark: start a while back (a lost Redis is
        // rebuilt from MongoDB anyway; the sweep covers anything older).
        None => id_at(now - FRESH_LOOKBACK),
    };
    let mut mark = start.clone();
    let mut pushed = 0;
    for _ in 0..FRESH_PAGES {
        let page = shared
            .store
            .live_jobs_created(&mark, &cutoff, REBUILD_PAGE)
            .await?;
        let full = page.len() as i64 == REBUILD_PAGE;
        if let Some(last) = page.last() {
            mark = last.id.clone();
        }
        pushed += requeue_missing(shared, page).await?;
        if !full {
            // Everything before the cutoff is checked (ids created at the cutoff's own
            // millisecond sort after it, so the next round still sees them).
            mark = mark.max(cutoff);
            break;
        }
    }
    if mark != start {
        shared.queue.set_fresh_mark(&mark).await?;
    }
    if pushed > 0 {
        tracing::warn!(pushed, "pushed submitted jobs that never reached redis");
    }
    Ok(())
}

/// Rebuild the `lost` lanes of `queue` (their epochs are gone): pauses and limits first, then
/// every live job, then the epochs, last, since `claim.lua` hands out nothing from a lane
/// without its epoch. Until then, jobs pushed meanwhile wait, and cannot run unpaused.
async fn rebuild_lost(shared: &Shared, queue: &str, lost: &[String]) -> jobmill::Result<()> {
    let q = &shared.queue;
    if shared.ops.pauses().restore(q, queue).await? {
        tracing::info!(queue = %queue, "restored the queue's pause into redis");
    }
    if shared.ops.limits().restore(q, queue).await? {
        tracing::info!(queue = %queue, "restored the queue's limits into redis");
    }
    let pushed = rebuild_queue(shared, queue).await?;
    for lane in lost {
        q.set_epoch(lane).await?;
    }
    if pushed > 0 {
        tracing::info!(queue = %queue, lanes = lost.len(), pushed, "rebuilt queue in redis from mongodb");
    }
    Ok(())
}

/// Put every live job of `queue` from MongoDB back into Redis. The enqueue script skips jobs
/// Redis still holds, so this never queues a job twice. Jobs that were running come back as
/// ready: their workers may still finish them, and whichever outcome is recorded first wins
/// the guarded write.
async fn rebuild_queue(shared: &Shared, queue: &str) -> jobmill::Result<usize> {
    let mut after: Option<String> = None;
    let mut pushed = 0usize;
    loop {
        let page = shared
            .store
            .live_jobs_page_of(Some(queue), after.as_deref(), REBUILD_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.list_key.clone());
        // Jobs still in a draining lane (placed before a reshard) stay there: putting them in
        // their new lane too would queue them twice.
        let draining = shared.queue.shards().draining_lanes(queue);
        let ids: Vec<String> = page.iter().map(|j| j.id.clone()).collect();
        let held = shared.queue.holds_in(&draining, &ids).await?;
        let entries: Vec<_> = page
            .iter()
            .zip(held)
            .filter(|(_, h)| !h)
            .map(|(j, _)| enqueue_entry(j))
            .collect();
        pushed += shared.queue.enqueue(&entries).await?;
        if (page.len() as i64) < REBUILD_PAGE {
            break;
        }
    }
    Ok(pushed)
}

/// Drop the retired shard counts of sharded queues whose draining lanes are empty, once every
/// process has had [`jobmill::shards::RETIRE_GRACE`] to re-read the map (so none places jobs
/// by the old count any more). Guarded on the map not having changed meanwhile.
async fn retire_drained_lanes(shared: &Shared) -> jobmill::Result<()> {
    let now = jobmill::job::now_ms();
    let grace = jobmill::shards::RETIRE_GRACE.as_millis() as i64;
    for (queue, layout) in shared.queue.shards().snapshot() {
        if layout.retired.is_empty() || now - layout.changed_ms < grace {
            continue;
        }
        let mut empty = true;
        for lane in layout.draining() {
            if !shared.queue.lane_is_empty(lane).await? {
                empty = false;
                break;
            }
        }
        if empty
            && jobmill::shards::retire_drained(shared.store.database(), &queue, &layout).await?
        {
            tracing::info!(queue = %queue, retired = ?layout.retired, "old shards drained; dropped from the shard map");
        }
    }
    Ok(())
}

/// How often the anti-entropy sweep runs (one process at a time, under a lock).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Jobs read from MongoDB per sweep batch.
const SWEEP_BATCH: i64 = 500;
/// Most batches per sweep round; the next round resumes where this one stopped.
const SWEEP_BATCHES: usize = 20;
/// How often the reconciler re-reads the queues that have live jobs in MongoDB.
const QUEUES_EVERY: Duration = Duration::from_secs(30);

/// The reconciler's memory between rounds: the queues to check, and the anti-entropy sweep's
/// place in MongoDB.
///
/// An epoch cannot see every loss: a failover may lose a master's last writes (a job's enqueue
/// that never reached the replica) while the epoch, written long before, survives. The sweep
/// closes that gap: it walks the live jobs of MongoDB in bounded batches, asks Redis which it
/// still holds (a payload present), re-reads the missing ones and puts back those still
/// waiting (or running for longer than a lease could last without Redis renewing it).
pub(crate) struct Sweep {
    after: Option<String>,
    last: Option<std::time::Instant>,
    mongo_queues: Vec<String>,
    queues_read: Option<std::time::Instant>,
}

impl Sweep {
    pub(crate) fn new() -> Self {
        Sweep {
            after: None,
            last: None,
            mongo_queues: Vec::new(),
            queues_read: None,
        }
    }

    fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= SWEEP_EVERY)
    }

    /// Queues to check: this worker's, the registry's, and (re-read now and then) those with
    /// live jobs in MongoDB, since the registry itself lives on one node and can be lost.
    async fn queues(&mut self, shared: &Shared) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = shared
            .settings
            .queues
            .iter()
            .map(|q| q.name.clone())
            .collect();
        match shared.queue.queue_names().await {
            Ok(all) => out.extend(all),
            Err(e) => tracing::debug!(error = %e, "could not list queues"),
        }
        if self.queues_read.is_none_or(|t| t.elapsed() >= QUEUES_EVERY) {
            match shared.store.live_queues().await {
                Ok(q) => {
                    self.mongo_queues = q;
                    self.queues_read = Some(std::time::Instant::now());
                }
                Err(e) => tracing::debug!(error = %e, "could not list queues with live jobs"),
            }
        }
        out.extend(self.mongo_queues.iter().cloned());
        out
    }

    /// One sweep round: at most [`SWEEP_BATCHES`] batches, then resume next round.
    async fn run(&mut self, shared: &Shared) -> jobmill::Result<()> {
        self.last = Some(std::time::Instant::now());
        let mut requeued = 0usize;
        for _ in 0..SWEEP_BATCHES {
            let page = shared
                .store
                .live_refs_page(self.after.as_deref(), SWEEP_BATCH)
                .await?;
            let Some(last) = page.last() else {
                self.after = None;
                break;
            };
            self.after = Some(last.id.clone());
            let full = page.len() as i64 == SWEEP_BATCH;
            requeued += requeue_missing(shared, page).await?;
            if !full {
                self.after = None;
                break;
            }
        }
        if requeued > 0 {
            tracing::warn!(requeued, "anti-entropy sweep put back jobs redis had lost");
        }
        Ok(())
    }
}

/// Put back those of `page` (live jobs read from MongoDB) that Redis does not hold.
async fn requeue_missing(
    shared: &Shared,
    page: Vec<jobmill::store::LiveRef>,
) -> jobmill::Result<usize> {
    // A submission's own push may still be on its way: the fresh pass covers those once they
    // are older than the grace, as the pending pass covers retried jobs still flagged.
    let young = id_at(std::time::SystemTime::now() - PENDING_GRACE);
    let mut by_queue: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for j in page {
        if j.id < young && !j.enqueue_pending {
            by_queue.entry(j.queue).or_default().push(j.id);
        }
    }
    let mut missing = Vec::new();
    for (queue, ids) in by_queue {
        let held = shared.queue.holds(&queue, &ids).await?;
        missing.extend(
            ids.into_iter()
                .zip(held)
                .filter(|(_, h)| !h)
                .map(|(id, _)| id),
        );
    }
    if missing.is_empty() {
        return Ok(0);
    }
    // Re-read: a job may have ended (and been forgotten by Redis) since the page was read.
    let now = jobmill::job::now_ms();
    let stuck_after = (shared.core.lease_ttl * 2).as_millis() as i64;
    let entries: Vec<_> = shared
        .store
        .get_many(&missing)
        .await?
        .iter()
        .filter(|j| match j.state {
            s if s.is_terminal() => false,
            // A running job keeps its payload in Redis until its outcome is recorded; one
            // whose entries are gone and which started longer ago than a lease could last
            // unrenewed has lost its lease with them.
            jobmill::JobState::Running => j.started_ms.is_some_and(|t| now - t > stuck_after),
            _ => true,
        })
        .map(enqueue_entry)
        .collect();
    shared.queue.enqueue(&entries).await
}

/// The smallest-looking job id created at `t`: ids are UUIDv7, ordered by creation time.
fn id_at(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, d.as_secs(), d.subsec_nanos());
    uuid::Uuid::new_v7(ts).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_ids_order_with_job_ids() {
        let before = id_at(std::time::SystemTime::now() - Duration::from_secs(1));
        let job = jobmill::job::new_job_id();
        let after = id_at(std::time::SystemTime::now() + Duration::from_secs(1));
        assert!(before < job && job < after);
    }
}
