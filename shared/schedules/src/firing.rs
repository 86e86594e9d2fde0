//! The firing loop, run by every worker (any number at once), and the plan of one tick.
//!
//! # How a tick fires exactly once
//! 1. A round reads the schedules whose `next_run_at_ms` is due and that have no pending claim.
//! 2. For each, [`plan`] decides from the stored schedule and the clock which fire times to
//!    submit (the tick itself, or missed ticks per `catch_up`) and the next tick; the overlap
//!    policy may turn the fires into skips (or a buffered tick).
//! 3. The process claims the tick with one guarded update: `next_run_at_ms` equal to what it
//!    read and no pending claim → the next tick, plus the fire times as a pending claim. Of
//!    any number of processes, one update matches; the others move on. (The updates of every
//!    due schedule go in one `update` command; each statement is guarded on its own, and the
//!    process reads back which ones it won by the nonce the statements wrote.)
//! 4. The winner submits one job per fire time with the idempotency key
//!    `schedule:<id>:<fire time>`, records the runs, then clears the claim.
//! 5. A claim still pending a second later (its process died, or lost MongoDB) is finished by
//!    any process: submitting again with the same keys returns the jobs already made, so a
//!    tick is neither lost nor doubled.

use std::time::Duration;

use std::collections::{BTreeMap, HashMap, HashSet};

use jobmill::job::now_ms;
use jobmill::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::model::{at, CatchUp, Overlap, Schedule, SkipReason, MAX_CATCH_UP_RUNS, NEVER};
use crate::store::{Claim, Run};
use crate::timetable::Timetable;
use crate::Schedules;

/// Most jobs in one submission.
const SUBMIT_CHUNK: usize = 500;
/// Most schedules read per query.
const BATCH: i64 = 1000;
/// A claim older than this is finished by whichever process sees it.
const STALE_CLAIM_MS: i64 = 1000;
/// Most missed ticks counted one by one for the skipped metric.
const COUNT_CAP: u64 = 10_000;
/// How often the loop reloads the kinds catalog, so it can submit kinds other workers announced.
const CATALOG_REFRESH: Duration = Duration::from_secs(5);

/// What to do with a due schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Fire times to submit, oldest first.
    pub fires: Vec<i64>,
    /// The fires are missed ticks fired late.
    pub catch_up: bool,
    /// The next tick ([`NEVER`] when none).
    pub next: i64,
    /// Ticks not fired, and why.
    pub skipped: u64,
    /// Why they were not fired.
    pub reason: SkipReason,
}

/// The first tick at or after `from_ms`, within the schedule's window.
pub fn first_tick(s: &Schedule, tt: &Timetable, from_ms: i64) -> i64 {
    let from = from_ms.max(s.starts_at_ms);
    match tt.next_from(at(from)) {
        Some(t) if s.ends_at_ms == 0 || t.timestamp_millis() <= s.ends_at_ms => {
            t.timestamp_millis()
        }
        _ => NEVER,
    }
}

fn count_ticks(tt: &Timetable, from_ms: i64, before_ms: i64) -> u64 {
    let mut n = 0;
    let mut t = tt.next_from(at(from_ms));
    while let Some(x) = t {
        if x.timestamp_millis() >= before_ms || n >= COUNT_CAP {
            break;
        }
        n += 1;
        t = tt.next_after(x);
    }
    n
}

/// The plan of a due schedule at `now_ms`. A tick late by less than `grace_ms` (two loop
/// periods) simply fires; older ticks were missed and follow `catch_up`.
pub fn plan(s: &Schedule, tt: &Timetable, now_ms: i64, grace_ms: i64) -> Plan {
    let due = s.next_run_at_ms;
    if s.is_paused() {
        return Plan {
            fires: Vec::new(),
            catch_up: false,
            next: first_tick(s, tt, now_ms + 1),
            skipped: count_ticks(tt, due, now_ms + 1).max(1),
            reason: SkipReason::Paused,
        };
    }
    let cutoff = now_ms - grace_ms;
    if due >= cutoff {
        return Plan {
            fires: vec![due],
            catch_up: false,
            next: first_tick(s, tt, due + 1),
            skipped: 0,
            reason: SkipReason::CatchUp,
        };
    }
    // Ticks in [due, cutoff) were missed; the first tick from the cutoff on fires normally.
    let in_window = |t: i64| {
        t >= due && t >= now_ms - s.catch_up_within_ms && (s.ends_at_ms == 0 || t <= s.ends_at_ms)
    };
    let missed = count_ticks(tt, due, cutoff);
    let mut fires = Vec::new();
    match s.catch_up {
        CatchUp::None => {}
        CatchUp::Latest => {
            if let Some(t) = tt.prev_before(at(cutoff)).map(|t| t.timestamp_millis()) {
                if in_window(t) {
                    fires.push(t);
                }
            }
        }
        CatchUp::All => {
            let mut t = tt.prev_before(at(cutoff));
            while let Some(x) = t {
                let ms = x.timestamp_millis();
                if !in_window(ms) || fires.len() >= MAX_CATCH_UP_RUNS {
                    break;
                }
                fires.push(ms);
                t = tt.prev_before(x);
            }
            fires.reverse();
        }
    }
    Plan {
        skipped: missed.saturating_sub(fires.len() as u64),
        catch_up: true,
        next: first_tick(s, tt, cutoff),
        fires,
        reason: SkipReason::CatchUp,
    }
}

/// The firing loop: a round, then sleep until the earliest next tick (at most one period).
pub async fn run(sched: Schedules, worker: String, stop: CancellationToken) {
    let period = sched.settings().poll;
    let mut last_refresh: Option<tokio::time::Instant> = None;
    loop {
        if last_refresh.is_none_or(|t| t.elapsed() >= CATALOG_REFRESH) {
            let client = sched.client();
            if let Err(e) = client.catalog().refresh(client.store()).await {
                tracing::debug!(error = %e, "schedules: kinds catalog not refreshed");
            }
            last_refresh = Some(tokio::time::Instant::now());
        }
        let wait = match round(&sched, &worker).await {
            Ok(Some(next)) => {
                let until = next - now_ms();
                Duration::from_millis(until.clamp(0, period.as_millis() as i64) as u64)
            }
            Ok(None) => period,
            Err(e) => {
                tracing::warn!(error = %e, "schedule round failed; retrying");
                period
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
        }
    }
}

/// One round: fire due ticks, finish stale claims, release buffered ticks. Returns the
/// earliest next tick. Every step works on all the schedules at once (one claim command, one
/// submission per tenant, one insert of runs, one finishing command), so a round costs a
/// handful of store round trips however many schedules are due, and one when none exists.
pub async fn round(sched: &Schedules, worker: &str) -> Result<Option<i64>> {
    let store = sched.store();
    // No schedule: nothing is due, pending or buffered. A schedule created now is seen next
    // round, as it would be if it had been created just after this round's queries.
    if !store.any().await? {
        return Ok(None);
    }
    let now = now_ms();
    let due = store.due(now, BATCH).await?;
    if !due.is_empty() {
        fire_due(sched, &due, now, worker).await?;
    }
    let stale = store.stale_pending(now - STALE_CLAIM_MS, BATCH).await?;
    if !stale.is_empty() {
        tracing::info!(
            claims = stale.len(),
            "finishing claims their process left pending"
        );
        let work = stale
            .iter()
            .map(|s| Work {
                s,
                fires: s.pending_ms.clone(),
                catch_up: s.pending_catch_up != 0,
                claimed_at: s.pending_at_ms,
            })
            .collect();
        submit_claims(sched, work, worker).await?;
    }
    let buffered = store.buffered(BATCH).await?;
    if !buffered.is_empty() {
        let running = running_jobs(sched, buffered.iter()).await?;
        let mut work = Vec::new();
        for s in &buffered {
            if running.contains(&s.last_job_id) {
                continue;
            }
            let claimed_at = now_ms();
            if store
                .claim_buffered(&s.id, s.buffered_ms, claimed_at)
                .await?
            {
                work.push(Work {
                    s,
                    fires: vec![s.buffered_ms],
                    catch_up: false,
                    claimed_at,
                });
            }
        }
        submit_claims(sched, work, worker).await?;
    }
    store.earliest().await
}

/// A claim this process holds: the jobs to submit for it.
struct Work<'a> {
    s: &'a Schedule,
    fires: Vec<i64>,
    catch_up: bool,
    claimed_at: i64,
}

/// The previous runs (of `schedules`) that have not ended.
async fn running_jobs<'a>(
    sched: &Schedules,
    schedules: impl Iterator<Item = &'a Schedule>,
) -> Result<HashSet<String>> {
    let ids: Vec<String> = schedules
        .filter(|s| !s.last_job_id.is_empty())
        .map(|s| s.last_job_id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(sched
        .client()
        .store()
        .get_many(&ids)
        .await?
        .into_iter()
        .filter(|j| !j.state.is_terminal())
        .map(|j| j.id)
        .collect())
}

async fn fire_due(sched: &Schedules, due: &[Schedule], now: i64, worker: &str) -> Result<()> {
    let running = running_jobs(sched, due.iter().filter(|s| s.overlap != Overlap::Allow)).await?;
    let grace = sched.settings().grace_ms();
    let mut claims = Vec::with_capacity(due.len());
    // Per claim: the skips to count and the fires to submit if this process wins it.
    let mut plans = HashMap::with_capacity(due.len());
    for s in due {
        let tt = match Timetable::parse(&s.cron, &s.timezone, at(now)) {
            Ok(tt) => tt,
            Err(p) => {
                // Stored schedules were checked when written; one that stopped firing is parked.
                tracing::warn!(schedule = %s.id, problem = %p.message, "schedule cannot fire; parked");
                claims.push(Claim {
                    id: s.id.clone(),
                    expected_next: s.next_run_at_ms,
                    next: NEVER,
                    fires: Vec::new(),
                    catch_up: false,
                    buffered_ms: None,
                });
                continue;
            }
        };
        let p = plan(s, &tt, now, grace);
        let mut fires = p.fires.clone();
        let mut buffered = None;
        let mut overlap_skipped = 0;
        // A held tick counts as a run in progress: when a run has just ended, the tick it held
        // fires first (the buffered pass below). Firing a due tick here too would start two
        // runs, the later tick before the held one, both once the last run ended.
        let held = s.overlap == Overlap::BufferOne && s.buffered_ms != 0;
        if !fires.is_empty()
            && s.overlap != Overlap::Allow
            && (held || running.contains(&s.last_job_id))
        {
            overlap_skipped = fires.len() as u64;
            if s.overlap == Overlap::BufferOne && s.buffered_ms == 0 {
                buffered = fires.last().copied();
                overlap_skipped -= 1;
            }
            fires.clear();
        }
        claims.push(Claim {
            id: s.id.clone(),
            expected_next: s.next_run_at_ms,
            next: p.next,
            fires: fires.clone(),
            catch_up: p.catch_up,
            buffered_ms: buffered,
        });
        plans.insert(s.id.as_str(), (s, p, fires, overlap_skipped));
    }
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let claimed_at = now_ms();
    let won = sched
        .store()
        .claim_many(&claims, &nonce, claimed_at)
        .await?;
    let m = sched.metrics();
    let mut work = Vec::new();
    for id in &won {
        let Some((s, p, fires, overlap_skipped)) = plans.remove(id.as_str()) else {
            continue;
        };
        m.skipped(p.reason, p.skipped);
        m.skipped(SkipReason::Overlap, overlap_skipped);
        if !fires.is_empty() {
            work.push(Work {
                s,
                fires,
                catch_up: p.catch_up,
                claimed_at,
            });
        }
    }
    submit_claims(sched, work, worker).await
}

/// Submit the jobs of claims, record their runs and clear them. A store failure leaves the
/// claims pending, to be finished by a later round (of any process) with the same keys.
async fn submit_claims(sched: &Schedules, work: Vec<Work<'_>>, worker: &str) -> Result<()> {
    if work.is_empty() {
        return Ok(());
    }
    // The runs of one tenant go in one submission (in chunks of at most 500 jobs).
    let mut by_tenant: BTreeMap<&str, Vec<(usize, i64)>> = BTreeMap::new();
    for (w, item) in work.iter().enumerate() {
        for &fire in &item.fires {
            by_tenant
                .entry(item.s.tenant.as_str())
                .or_default()
                .push((w, fire));
        }
    }
    let mut outcome: HashMap<(usize, i64), (String, Option<String>)> = HashMap::new();
    for (tenant, items) in by_tenant {
        for chunk in items.chunks(SUBMIT_CHUNK) {
            let news = chunk
                .iter()
                .map(|(w, fire)| {
                    let s = work[*w].s;
                    s.job.new_job(s.job_key(*fire))
                })
                .collect();
            match sched.client().submit_batch(tenant, news).await {
                Ok(subs) => {
                    for (item, sub) in chunk.iter().zip(subs) {
                        outcome.insert(*item, (sub.job.id, None));
                    }
                }
                Err(e) if !is_refusal(&e) && !matches!(e, Error::IdempotencyKeyReused { .. }) => {
                    return Err(e)
                }
                // One job of the chunk is refused (or was first submitted with another
                // template): submit them one by one, so the others still fire.
                Err(_) => {
                    for &(w, fire) in chunk {
                        let s = work[w].s;
                        let r = match submit_one(sched, s, fire).await {
                            Ok(id) => (id, None),
                            Err(e) if is_refusal(&e) => {
                                tracing::warn!(schedule = %s.id, error = %e, "schedule run refused");
                                (String::new(), Some(e.to_string()))
                            }
                            Err(e) => return Err(e),
                        };
                        outcome.insert((w, fire), r);
                    }
                }
            }
        }
    }
    let now = now_ms();
    let mut runs = Vec::new();
    let mut finished = Vec::new();
    for (w, item) in work.iter().enumerate() {
        let mut last_job = String::new();
        for &fire in &item.fires {
            let (job_id, error) = outcome.remove(&(w, fire)).unwrap_or_default();
            if error.is_none() && !job_id.is_empty() {
                sched.metrics().fired((now - fire) as f64 / 1000.0);
                last_job = job_id.clone();
            }
            let run = Run {
                schedule_id: item.s.id.clone(),
                fire_ms: fire,
                job_id,
                error,
                catch_up: item.catch_up,
                manual: false,
                fired_by: worker.to_string(),
            };
            runs.push((run, format!("{}:{fire}", item.s.id)));
        }
        finished.push((item.s.id.clone(), item.claimed_at, last_job));
    }
    sched.store().record_runs(&runs).await?;
    sched.store().finish_many(&finished).await
}

fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::InvalidJob { .. } | Error::InvalidArgs { .. })
}

/// Submit the run planned at `fire`; the job of an earlier submission of the same run if there
/// was one.
async fn submit_one(sched: &Schedules, s: &Schedule, fire: i64) -> Result<String> {
    let client = sched.client();
    let key = s.job_key(fire);
    let mut refreshed = false;
    loop {
        match client.submit(&s.tenant, s.job.new_job(key.clone())).await {
            Ok(sub) => return Ok(sub.job.id),
            // The template changed since the first submission of this run: that job stands.
            Err(Error::IdempotencyKeyReused { job_id }) => return Ok(job_id),
            // A kind another worker announced since the catalog was last read.
            Err(Error::InvalidJob {
                code: "unknown_kind",
                ..
            }) if !refreshed => {
                refreshed = true;
                client.catalog().refresh(client.store()).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The loop as a boxed future, for the binaries' lists of feature loops.
pub fn spawnable(
    sched: Schedules,
    worker: String,
    stop: CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(run(sched, worker, stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobTemplate, ManagedBy};

    fn sched(catch_up: CatchUp, next_ms: i64) -> Schedule {
        Schedule {
            id: "sch_1".into(),
            tenant: "t".into(),
            name: "n".into(),
            cron: "* * * * * *".into(),
            timezone: "UTC".into(),
            job: JobTemplate {
                kind: "noop".into(),
                args_json: "{}".into(),
                queue: None,
                priority: None,
                max_attempts: None,
                timeout_ms: None,
                callback_url: None,
            },
            overlap: Overlap::Allow,
            catch_up,
            catch_up_within_ms: 3_600_000,
            starts_at_ms: 0,
            ends_at_ms: 0,
            paused: 0,
            managed_by: ManagedBy::Api,
            version: 0,
            rev: 1,
            next_run_at_ms: next_ms,
            pending_at_ms: 0,
            pending_ms: vec![],
            pending_catch_up: 0,
            buffered_ms: 0,
            last_job_id: String::new(),
            created_ms: 0,
            updated_ms: 0,
        }
    }

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn a_slightly_late_tick_simply_fires() {
        let s = sched(CatchUp::None, T0);
        let tt = Timetable::parse(&s.cron, "UTC", at(T0)).unwrap();
        let p = plan(&s, &tt, T0 + 300, 400);
        assert_eq!(p.fires, vec![T0]);
        assert_eq!(p.next, T0 + 1000);
        assert!(!p.catch_up);
    }

    #[test]
    fn missed_ticks_follow_catch_up() {
        let now = T0 + 5_200;
        for (policy, fires) in [
            (CatchUp::None, vec![]),
            (CatchUp::Latest, vec![T0 + 4000]),
            (
                CatchUp::All,
                vec![T0, T0 + 1000, T0 + 2000, T0 + 3000, T0 + 4000],
            ),
        ] {
            let s = sched(policy, T0);
            let tt = Timetable::parse(&s.cron, "UTC", at(T0)).unwrap();
            let p = plan(&s, &tt, now, 400);
            assert_eq!(p.fires, fires, "{policy:?}");
            assert_eq!(p.skipped, 5 - fires.len() as u64, "{policy:?}");
            // 5.0 s is within the grace and fires normally next.
            assert_eq!(p.next, T0 + 5000, "{policy:?}");
        }
    }

    #[test]
    fn all_fires_at_most_100_and_only_within_the_window() {
        let mut s = sched(CatchUp::All, T0);
        let tt = Timetable::parse(&s.cron, "UTC", at(T0)).unwrap();
        let p = plan(&s, &tt, T0 + 500_000, 400);
        assert_eq!(p.fires.len(), 100);
        assert_eq!(*p.fires.last().unwrap(), T0 + 499_000);
        s.catch_up_within_ms = 10_000;
        let p = plan(&s, &tt, T0 + 500_000, 400);
        assert_eq!(p.fires.first(), Some(&(T0 + 490_000)));
    }

    #[test]
    fn paused_schedules_skip_and_move_on() {
        let mut s = sched(CatchUp::All, T0);
        s.paused = 1;
        let tt = Timetable::parse(&s.cron, "UTC", at(T0)).unwrap();
        let p = plan(&s, &tt, T0 + 2_500, 400);
        assert!(p.fires.is_empty());
        assert_eq!(p.reason, SkipReason::Paused);
        assert_eq!(p.next, T0 + 3000);
        assert_eq!(p.skipped, 3);
    }

    #[test]
    fn ends_at_stops_the_timetable() {
        let mut s = sched(CatchUp::None, T0);
        s.ends_at_ms = T0;
        let tt = Timetable::parse(&s.cron, "UTC", at(T0)).unwrap();
        let p = plan(&s, &tt, T0 + 100, 400);
        assert_eq!(p.fires, vec![T0]);
        assert_eq!(p.next, NEVER);
    }
}
