//! The feature's MongoDB collections: `schedules` (one document per schedule, unique by
//! tenant and name) and `schedule_runs` (one document per run, `_id` = `<schedule>:<fire ms>`,
//! kept as long as jobs are).
//!
//! Every change the firing loop makes is one guarded `update_one`: a claim matches the
//! `next_run_at_ms` (or `buffered_ms`) it read and no pending claim, so of any number of
//! processes that read the same tick, exactly one claim matches.

use std::time::Duration;

use futures::TryStreamExt as _;
use jobmill::job::Retention;
use jobmill::store::is_duplicate_key;
use jobmill::{Error, Result};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

use crate::model::{ManagedBy, Schedule};

/// Schedules.
pub const SCHEDULES: &str = "schedules";
/// Runs of schedules.
pub const RUNS: &str = "schedule_runs";

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Corrupt(e.to_string())
}

/// A claim of one due schedule (see [`ScheduleStore::claim`]).
#[derive(Debug, Clone)]
pub struct Claim {
    /// Schedule id.
    pub id: String,
    /// The `next_run_at_ms` read.
    pub expected_next: i64,
    /// The next tick.
    pub next: i64,
    /// Fire times to submit.
    pub fires: Vec<i64>,
    /// The fires are catch-up runs.
    pub catch_up: bool,
    /// A tick to hold under `buffer_one`.
    pub buffered_ms: Option<i64>,
}

/// One run of a schedule.
#[derive(Debug, Clone)]
pub struct Run {
    /// Schedule id.
    pub schedule_id: String,
    /// Planned fire time (or, for a manual trigger, when it was asked for).
    pub fire_ms: i64,
    /// The job submitted; empty when the submission was refused.
    pub job_id: String,
    /// Why the submission was refused.
    pub error: Option<String>,
    /// A missed tick fired by catch-up.
    pub catch_up: bool,
    /// A manual trigger.
    pub manual: bool,
    /// The process that fired it.
    pub fired_by: String,
}

/// The collections. Cheap to clone.
#[derive(Clone)]
pub struct ScheduleStore {
    schedules: Collection<Schedule>,
    raw: Collection<Document>,
    runs: Collection<Document>,
    db: Database,
    retention: Duration,
}

impl ScheduleStore {
    /// Over `db`; run records follow the jobs' `retention`.
    pub fn new(db: &Database, retention: Duration) -> Self {
        ScheduleStore {
            schedules: db.collection(SCHEDULES),
            raw: db.collection(SCHEDULES),
            runs: db.collection(RUNS),
            db: db.clone(),
            retention,
        }
    }

    /// Unique names per tenant, the firing loop's lookups, the runs' order and TTL.
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.raw
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "tenant": 1, "name": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        for field in ["next_run_at_ms", "pending_at_ms", "buffered_ms"] {
            self.raw
                .create_index(IndexModel::builder().keys(doc! { field: 1 }).build())
                .await?;
        }
        self.runs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "schedule_id": 1, "fire_ms": -1 })
                    .build(),
            )
            .await?;
        self.runs.create_index(Retention::ttl_index()).await?;
        Ok(())
    }

    /// Schedules `tenant` owns.
    pub async fn count(&self, tenant: &str) -> Result<u64> {
        Ok(self.raw.count_documents(doc! { "tenant": tenant }).await?)
    }

    /// Store a new schedule; `schedule_exists` when the tenant has one of that name.
    pub async fn insert(&self, s: &Schedule) -> Result<bool> {
        match self.schedules.insert_one(s).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `tenant`'s schedule `name`.
    pub async fn get(&self, tenant: &str, name: &str) -> Result<Option<Schedule>> {
        Ok(self
            .schedules
            .find_one(doc! { "tenant": tenant, "name": name })
            .await?)
    }

    /// A schedule by id.
    pub async fn get_id(&self, id: &str) -> Result<Option<Schedule>> {
        Ok(self.schedules.find_one(doc! { "_id": id }).await?)
    }

    /// Schedules of `tenant` (every tenant's when `None`), by tenant and name.
    pub async fn list(&self, tenant: Option<&str>, limit: i64) -> Result<Vec<Schedule>> {
        let filter = match tenant {
            Some(t) => doc! { "tenant": t },
            None => doc! {},
        };
        let mut out: Vec<Schedule> = self
            .schedules
            .find(filter)
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        out.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        Ok(out)
    }

    /// Replace the definition of `s` (its firing state included: `next_run_at_ms`), guarded on
    /// the revision it was read at. False when another change came first.
    pub async fn save_definition(&self, s: &Schedule, read_rev: i64) -> Result<bool> {
        let job = mongodb::bson::to_bson(&s.job).map_err(corrupt)?;
        let set = doc! {
            "cron": &s.cron,
            "timezone": &s.timezone,
            "job": job,
            "overlap": mongodb::bson::to_bson(&s.overlap).map_err(corrupt)?,
            "catch_up": mongodb::bson::to_bson(&s.catch_up).map_err(corrupt)?,
            "catch_up_within_ms": s.catch_up_within_ms,
            "starts_at_ms": s.starts_at_ms,
            "ends_at_ms": s.ends_at_ms,
            "paused": s.paused,
            "managed_by": mongodb::bson::to_bson(&s.managed_by).map_err(corrupt)?,
            "version": s.version,
            "rev": read_rev + 1,
            "next_run_at_ms": s.next_run_at_ms,
            "updated_ms": s.updated_ms,
        };
        let r = self
            .raw
            .update_one(doc! { "_id": &s.id, "rev": read_rev }, doc! { "$set": set })
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Delete a schedule and its run records.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let r = self.raw.delete_one(doc! { "_id": id }).await?;
        self.runs.delete_many(doc! { "schedule_id": id }).await?;
        Ok(r.deleted_count == 1)
    }

    /// Whether any schedule exists. Most deployments define none; their workers' firing
    /// loops then cost the store this one query a round instead of four.
    pub async fn any(&self) -> Result<bool> {
        Ok(self
            .raw
            .find_one(doc! {})
            .projection(doc! { "_id": 1 })
            .await?
            .is_some())
    }

    /// Schedules whose next tick is due at `now_ms` and that have no pending claim.
    pub async fn due(&self, now_ms: i64, limit: i64) -> Result<Vec<Schedule>> {
        Ok(self
            .schedules
            .find(doc! { "next_run_at_ms": { "$lte": now_ms }, "pending_at_ms": 0_i64 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Claims made before `before_ms` and still pending (their process may have died).
    pub async fn stale_pending(&self, before_ms: i64, limit: i64) -> Result<Vec<Schedule>> {
        Ok(self
            .schedules
            .find(doc! { "pending_at_ms": { "$gt": 0_i64, "$lte": before_ms } })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Schedules holding a buffered tick and no pending claim.
    pub async fn buffered(&self, limit: i64) -> Result<Vec<Schedule>> {
        Ok(self
            .schedules
            .find(doc! { "buffered_ms": { "$gt": 0 }, "pending_at_ms": 0_i64 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// The earliest next tick of any schedule, if one is planned.
    pub async fn earliest(&self) -> Result<Option<i64>> {
        let d = self
            .raw
            .find_one(doc! { "next_run_at_ms": { "$lt": crate::model::NEVER } })
            .sort(doc! { "next_run_at_ms": 1 })
            .projection(doc! { "next_run_at_ms": 1 })
            .await?;
        Ok(d.and_then(|d| d.get_i64("next_run_at_ms").ok()))
    }

    /// The compare-and-set that decides who handles the tick at `expected_next`: move the
    /// schedule on to `next`, and record the fire times this process will submit (`fires`,
    /// maybe none) as a pending claim at `now_ms`. Only the process whose claim matched
    /// submits; if it dies before confirming, any process finishes the claim.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        id: &str,
        expected_next: i64,
        next: i64,
        fires: &[i64],
        catch_up: bool,
        buffered_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<bool> {
        let mut set = doc! { "next_run_at_ms": next };
        if !fires.is_empty() {
            set.insert("pending_at_ms", now_ms);
            set.insert(
                "pending_ms",
                fires.iter().map(|f| Bson::Int64(*f)).collect::<Vec<_>>(),
            );
            set.insert("pending_catch_up", i32::from(catch_up));
        }
        if let Some(b) = buffered_ms {
            set.insert("buffered_ms", b);
        }
        let r = self
            .raw
            .update_one(
                doc! { "_id": id, "next_run_at_ms": expected_next, "pending_at_ms": 0_i64 },
                doc! { "$set": set },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// [`ScheduleStore::claim`] for many schedules in one command: each statement is the same
    /// guarded update, and marks what it claimed with `nonce`. Returns the ids this process won
    /// (read back by `nonce`, since one command reports only a total of matches).
    pub async fn claim_many(
        &self,
        claims: &[Claim],
        nonce: &str,
        now_ms: i64,
    ) -> Result<Vec<String>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let updates: Vec<Document> = claims
            .iter()
            .map(|c| {
                let mut set = doc! { "next_run_at_ms": c.next, "claim": nonce };
                if !c.fires.is_empty() {
                    set.insert("pending_at_ms", now_ms);
                    set.insert(
                        "pending_ms",
                        c.fires.iter().map(|f| Bson::Int64(*f)).collect::<Vec<_>>(),
                    );
                    set.insert("pending_catch_up", i32::from(c.catch_up));
                }
                if let Some(b) = c.buffered_ms {
                    set.insert("buffered_ms", b);
                }
                doc! {
                    "q": { "_id": &c.id, "next_run_at_ms": c.expected_next, "pending_at_ms": 0_i64 },
                    "u": { "$set": set },
                }
            })
            .collect();
        let reply = self
            .db
            .run_command(doc! { "update": SCHEDULES, "updates": updates, "ordered": false })
            .await?;
        let matched = reply
            .get_i32("n")
            .map(i64::from)
            .or_else(|_| reply.get_i64("n"))
            .unwrap_or(0);
        if matched == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = claims.iter().map(|c| c.id.as_str()).collect();
        let won: Vec<Document> = self
            .raw
            .find(doc! { "_id": { "$in": ids }, "claim": nonce })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(won
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect())
    }

    /// [`ScheduleStore::finish_claim`] for many claims in one command.
    pub async fn finish_many(&self, done: &[(String, i64, String)]) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let updates: Vec<Document> = done
            .iter()
            .map(|(id, pending_at, last_job)| {
                let mut set = doc! { "pending_at_ms": 0_i64, "pending_ms": Bson::Array(vec![]) };
                if !last_job.is_empty() {
                    set.insert("last_job_id", last_job);
                }
                doc! { "q": { "_id": id, "pending_at_ms": pending_at }, "u": { "$set": set } }
            })
            .collect();
        self.db
            .run_command(doc! { "update": SCHEDULES, "updates": updates, "ordered": false })
            .await?;
        Ok(())
    }

    /// [`ScheduleStore::record_run`] for many runs in one insert (runs recorded before are
    /// ignored).
    pub async fn record_runs(&self, runs: &[(Run, String)]) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        let now = DateTime::now();
        let docs: Vec<Document> = runs
            .iter()
            .map(|(r, id)| self.run_doc(r, id, now))
            .collect();
        match self.runs.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn run_doc(&self, run: &Run, run_id: &str, now: DateTime) -> Document {
        doc! {
            "_id": run_id,
            "schedule_id": &run.schedule_id,
            "fire_ms": run.fire_ms,
            "job_id": &run.job_id,
            "error": run.error.clone().map(Bson::String).unwrap_or(Bson::Null),
            "catch_up": i32::from(run.catch_up),
            "manual": i32::from(run.manual),
            "fired_by": &run.fired_by,
            "retention": Retention::after(now, self.retention).to_doc(),
        }
    }

    /// Claim the buffered tick `buffered_ms` (the previous run ended).
    pub async fn claim_buffered(&self, id: &str, buffered_ms: i64, now_ms: i64) -> Result<bool> {
        let r = self
            .raw
            .update_one(
                doc! { "_id": id, "buffered_ms": buffered_ms, "pending_at_ms": 0_i64 },
                doc! { "$set": {
                    "buffered_ms": 0_i64,
                    "pending_at_ms": now_ms,
                    "pending_ms": [Bson::Int64(buffered_ms)],
                    "pending_catch_up": 0,
                } },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Confirm a claim: its jobs exist. `last_job_id` is the newest of them.
    pub async fn finish_claim(
        &self,
        id: &str,
        pending_at_ms: i64,
        last_job_id: &str,
    ) -> Result<bool> {
        let mut set = doc! { "pending_at_ms": 0_i64, "pending_ms": Bson::Array(vec![]) };
        if !last_job_id.is_empty() {
            set.insert("last_job_id", last_job_id);
        }
        let r = self
            .raw
            .update_one(
                doc! { "_id": id, "pending_at_ms": pending_at_ms },
                doc! { "$set": set },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Pause or resume; resuming plans the next tick afresh (`next`), without catching up
    /// the paused time.
    pub async fn set_paused(&self, id: &str, paused: bool, next: Option<i64>) -> Result<bool> {
        let mut set = doc! { "paused": i32::from(paused), "updated_ms": jobmill::job::now_ms() };
        if let Some(n) = next {
            set.insert("next_run_at_ms", n);
        }
        let r = self
            .raw
            .update_one(doc! { "_id": id }, doc! { "$set": set })
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Record the job of a manual trigger as the latest run.
    pub async fn set_last_job(&self, id: &str, job_id: &str) -> Result<()> {
        self.raw
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "last_job_id": job_id } },
            )
            .await?;
        Ok(())
    }

    /// Hand a code-managed schedule over to the API (`detach`). False if it was not
    /// code-managed.
    pub async fn detach(&self, id: &str) -> Result<bool> {
        let r = self
            .raw
            .update_one(
                doc! { "_id": id, "managed_by": "code" },
                doc! { "$set": { "managed_by": "api", "updated_ms": jobmill::job::now_ms() }, "$inc": { "rev": 1_i64 } },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// A code declaration, newer than what is stored (`version` greater), replaces a
    /// code-managed definition. A schedule the API manages is never touched. Returns whether
    /// anything changed.
    pub async fn upgrade_code(&self, s: &Schedule) -> Result<bool> {
        let Some(current) = self.get(&s.tenant, &s.name).await? else {
            return self.insert(s).await;
        };
        if current.managed_by != ManagedBy::Code || current.version >= s.version {
            return Ok(false);
        }
        let mut next = s.clone();
        next.id = current.id.clone();
        next.paused = current.paused;
        next.created_ms = current.created_ms;
        // Guarded on the version read, so two deploys racing cannot go backwards.
        let job = mongodb::bson::to_bson(&next.job).map_err(corrupt)?;
        let r = self
            .raw
            .update_one(
                doc! { "_id": &current.id, "managed_by": "code", "version": current.version },
                doc! { "$set": {
                    "cron": &next.cron,
                    "timezone": &next.timezone,
                    "job": job,
                    "overlap": mongodb::bson::to_bson(&next.overlap).map_err(corrupt)?,
                    "catch_up": mongodb::bson::to_bson(&next.catch_up).map_err(corrupt)?,
                    "catch_up_within_ms": next.catch_up_within_ms,
                    "starts_at_ms": next.starts_at_ms,
                    "ends_at_ms": next.ends_at_ms,
                    "version": next.version,
                    "next_run_at_ms": next.next_run_at_ms,
                    "updated_ms": next.updated_ms,
                }, "$inc": { "rev": 1_i64 } },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Record a run; a second record of the same run (a finished claim) is ignored.
    pub async fn record_run(&self, run: &Run, run_id: &str) -> Result<()> {
        let now = DateTime::now();
        let res = self.runs.insert_one(self.run_doc(run, run_id, now)).await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The newest `limit` runs of a schedule.
    pub async fn runs(&self, schedule_id: &str, limit: i64) -> Result<Vec<Run>> {
        let docs: Vec<Document> = self
            .runs
            .find(doc! { "schedule_id": schedule_id })
            .sort(doc! { "fire_ms": -1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        let flag = |d: &Document, k: &str| {
            d.get_i32(k)
                .map(|v| v != 0)
                .or_else(|_| d.get_bool(k))
                .unwrap_or(false)
        };
        Ok(docs
            .iter()
            .map(|d| Run {
                schedule_id: schedule_id.to_string(),
                fire_ms: d.get_i64("fire_ms").unwrap_or_default(),
                job_id: d.get_str("job_id").unwrap_or_default().to_string(),
                error: d.get_str("error").ok().map(str::to_string),
                catch_up: flag(d, "catch_up"),
                manual: flag(d, "manual"),
                fired_by: d.get_str("fired_by").unwrap_or_default().to_string(),
            })
            .collect())
    }
}
