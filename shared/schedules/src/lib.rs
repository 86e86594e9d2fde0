//! jobmill-schedules: periodic schedules. A feature of jobmill like webhooks and data: it owns
//! its collections (`schedules`, `schedule_runs`), indexes, settings section, firing loop and
//! metrics, and submits its runs through the engine's [`JobClient`] with idempotency keys.
//!
//! # Layout
//! - [`Schedules`]: the feature, as the binaries assemble it; [`ScheduleSettings`] its section.
//! - [`timetable`]: cron expressions in IANA time zones (`croner`, `chrono-tz`).
//! - [`model`]: the stored schedule, its policies, and the API's shapes.
//! - [`store`]: the MongoDB collections and the guarded writes of the firing loop.
//! - [`firing`]: the firing loop (every worker runs it) and the plan of one tick; how a tick
//!   fires exactly once is told there.
//! - [`declare`]: schedules declared in a worker binary's code, next to its kinds.
//! - [`metrics`]: `jobmill_schedule_*` on the worker's `/metrics`.
#![warn(missing_docs)]

pub mod declare;
pub mod firing;
pub mod metrics;
pub mod model;
pub mod store;
pub mod timetable;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobmill::config::{parse_duration, Bounds, Env, Section, Setting};
use jobmill::job::now_ms;
use jobmill::outbox::BoxFuture;
use jobmill::{Error, JobClient, Result, SubmitHook, Submitted};
use tokio_util::sync::CancellationToken;

pub use declare::ScheduleSpec;
pub use metrics::ScheduleMetrics;
use model::{
    at, CreateSchedule, PatchSchedule, RunView, Schedule, ScheduleView, MAX_CATCH_UP_WITHIN_MS,
    MAX_NAME_LEN, NEVER,
};
pub use model::{CatchUp, ManagedBy, Overlap};
use store::{Run, ScheduleStore};
use timetable::Timetable;

/// `JOBMILL_MAX_SCHEDULES`.
pub const MAX_SCHEDULES: Setting = Setting {
    env: "JOBMILL_MAX_SCHEDULES",
    default: "1000",
    bounds: Bounds::Count(0, 1_000_000),
    doc: "schedules one tenant may own",
};
/// `JOBMILL_SCHEDULE_POLL`.
pub const SCHEDULE_POLL: Setting = Setting {
    env: "JOBMILL_SCHEDULE_POLL",
    default: "500ms",
    bounds: Bounds::Duration(Duration::from_millis(10), Duration::from_secs(60)),
    doc: "longest sleep of the schedule firing loop (it wakes at the next tick); a tick later than two periods counts as missed",
};

/// Most runs shown by `GET /v1/schedules/{name}`.
pub const SHOWN_RUNS: i64 = 20;
/// Fire times shown by `GET /v1/schedules/{name}`.
pub const SHOWN_NEXT: usize = 5;
/// Default `catch_up_within`.
pub const DEFAULT_CATCH_UP_WITHIN: Duration = Duration::from_secs(3600);

/// Schedule settings.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// Schedules per tenant.
    pub max_schedules: usize,
    /// Longest sleep of the firing loop.
    pub poll: Duration,
}

impl ScheduleSettings {
    /// How late a tick may be and still fire as on time: two loop periods.
    pub fn grace_ms(&self) -> i64 {
        2 * self.poll.as_millis() as i64
    }
}

impl Section for ScheduleSettings {
    const SETTINGS: &'static [Setting] = &[MAX_SCHEDULES, SCHEDULE_POLL];

    fn read(env: &Env) -> Self {
        ScheduleSettings {
            max_schedules: env.count(&MAX_SCHEDULES),
            poll: env.duration(&SCHEDULE_POLL),
        }
    }
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings::read(&Env::new(|_| None))
    }
}

/// The schedules feature. Cheap to clone.
#[derive(Clone)]
pub struct Schedules {
    store: ScheduleStore,
    client: JobClient,
    settings: ScheduleSettings,
    hooks: Arc<Vec<Arc<dyn SubmitHook>>>,
    metrics: ScheduleMetrics,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Error {
    Error::invalid(code, message)
}

fn refused(code: &'static str, message: impl Into<String>) -> Error {
    Error::Refused {
        code,
        message: message.into(),
    }
}

fn parse_time(field: &'static str, code: &'static str, v: &str) -> Result<i64> {
    if v.len() > 64 {
        return Err(invalid(code, format!("{field} is an RFC 3339 time")));
    }
    DateTime::parse_from_rfc3339(v)
        .map(|d| d.with_timezone(&Utc).timestamp_millis())
        .map_err(|e| {
            invalid(
                code,
                format!("{field} must be an RFC 3339 time like 2026-01-02T03:04:05Z: {e}"),
            )
        })
}

fn parse_within(v: &str) -> Result<i64> {
    let bad = |m: String| invalid("invalid_catch_up_within", m);
    if v.len() > 32 {
        return Err(bad(
            "catch_up_within is a duration like 30s, 10m or 1h".into()
        ));
    }
    let d = parse_duration(v).map_err(bad)?;
    let ms = d.as_millis() as i64;
    if !(1000..=MAX_CATCH_UP_WITHIN_MS).contains(&ms) {
        return Err(bad("catch_up_within must be from 1s to 7d".into()));
    }
    Ok(ms)
}

/// Check a schedule name: 1-64 letters, digits, `_`, `-` or `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_name",
            format!("schedule names are 1-{MAX_NAME_LEN} letters, digits, '_', '-' or '.'"),
        ))
    }
}

impl Schedules {
    /// The feature over `client`'s stores. `hooks` are the features' submit hooks, run on a
    /// schedule's job template when it is created or changed (the runs themselves go through
    /// `client`, which runs them again).
    pub fn new(
        client: &JobClient,
        settings: ScheduleSettings,
        hooks: Vec<Arc<dyn SubmitHook>>,
        metrics: ScheduleMetrics,
    ) -> Self {
        let store = client.store();
        Schedules {
            store: ScheduleStore::new(store.database(), store.retention()),
            client: client.clone(),
            settings,
            hooks: Arc::new(hooks),
            metrics,
        }
    }

    /// Create the feature's indexes (idempotent).
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.store.ensure_indexes().await
    }

    /// The collections.
    pub fn store(&self) -> &ScheduleStore {
        &self.store
    }

    /// The submission path of the runs.
    pub fn client(&self) -> &JobClient {
        &self.client
    }

    /// The settings.
    pub fn settings(&self) -> &ScheduleSettings {
        &self.settings
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &ScheduleMetrics {
        &self.metrics
    }

    /// The firing loop, for a process that fires schedules (every worker; API replicas may
    /// too). `worker` names the process in the run records.
    pub fn loops(&self, worker: &str, stop: CancellationToken) -> Vec<BoxFuture<'static, ()>> {
        vec![firing::spawnable(self.clone(), worker.to_string(), stop)]
    }

    /// Check a job template as a submission by `tenant` would be checked (catalog, bounds,
    /// the features' hooks). Nothing is written.
    async fn check_template(&self, tenant: &str, s: &Schedule) -> Result<()> {
        let mut job = self.client.prepare(tenant, s.job.new_job(s.job_key(0)))?;
        for h in self.hooks.iter() {
            h.prepare(tenant, std::slice::from_mut(&mut job), false)
                .await?;
        }
        Ok(())
    }

    /// Check the timing fields and plan the next tick from `now_ms`.
    fn plan_next(&self, s: &mut Schedule, now_ms: i64) -> Result<()> {
        let tt = Timetable::parse(&s.cron, &s.timezone, at(now_ms))?;
        if s.ends_at_ms != 0 && s.ends_at_ms <= s.starts_at_ms {
            return Err(invalid("invalid_window", "ends_at must be after starts_at"));
        }
        s.next_run_at_ms = firing::first_tick(s, &tt, now_ms);
        if s.next_run_at_ms == NEVER {
            return Err(invalid(
                "cron_never_fires",
                "this schedule has no tick between now (or starts_at) and ends_at",
            ));
        }
        Ok(())
    }

    /// Create a schedule owned by `tenant`.
    pub async fn create(&self, tenant: &str, req: CreateSchedule) -> Result<Schedule> {
        check_name(&req.name)?;
        let now = now_ms();
        let mut s = Schedule {
            id: format!("sch_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.to_string(),
            name: req.name,
            cron: req.cron,
            timezone: req.timezone.unwrap_or_else(|| "UTC".into()),
            job: req.job.template()?,
            overlap: req.overlap.unwrap_or_default(),
            catch_up: req.catch_up.unwrap_or_default(),
            catch_up_within_ms: match &req.catch_up_within {
                Some(v) => parse_within(v)?,
                None => DEFAULT_CATCH_UP_WITHIN.as_millis() as i64,
            },
            starts_at_ms: match &req.starts_at {
                Some(v) => parse_time("starts_at", "invalid_starts_at", v)?,
                None => 0,
            },
            ends_at_ms: match &req.ends_at {
                Some(v) => parse_time("ends_at", "invalid_ends_at", v)?,
                None => 0,
            },
            paused: i32::from(req.paused.unwrap_or(false)),
            managed_by: ManagedBy::Api,
            version: 0,
            rev: 1,
            next_run_at_ms: NEVER,
            pending_at_ms: 0,
            pending_ms: Vec::new(),
            pending_catch_up: 0,
            buffered_ms: 0,
            last_job_id: String::new(),
            created_ms: now,
            updated_ms: now,
        };
        self.plan_next(&mut s, now)?;
        self.check_template(tenant, &s).await?;
        if self.store.count(tenant).await? >= self.settings.max_schedules as u64 {
            return Err(invalid(
                "too_many_schedules",
                format!(
                    "a tenant may own at most {} schedules (JOBMILL_MAX_SCHEDULES)",
                    self.settings.max_schedules
                ),
            ));
        }
        if !self.store.insert(&s).await? {
            return Err(refused(
                "schedule_exists",
                format!("a schedule named '{}' exists already", s.name),
            ));
        }
        Ok(s)
    }

    /// `tenant`'s schedule `name`.
    pub async fn get(&self, tenant: &str, name: &str) -> Result<Schedule> {
        check_name(name).map_err(|_| Error::Missing("schedule"))?;
        self.store
            .get(tenant, name)
            .await?
            .ok_or(Error::Missing("schedule"))
    }

    fn editable(s: &Schedule) -> Result<()> {
        match s.managed_by {
            ManagedBy::Api => Ok(()),
            ManagedBy::Code => Err(refused(
                "managed_by_code",
                format!(
                    "schedule '{}' is declared in a worker's code (version {}); change the code, or detach it first (POST /v1/schedules/{}/detach)",
                    s.name, s.version, s.name
                ),
            )),
        }
    }

    /// Change a schedule (API-managed only). Timing changes plan the next tick afresh.
    pub async fn update(&self, mut s: Schedule, req: PatchSchedule) -> Result<Schedule> {
        Self::editable(&s)?;
        let read_rev = s.rev;
        let now = now_ms();
        let timing = req.cron.is_some()
            || req.timezone.is_some()
            || req.starts_at.is_some()
            || req.ends_at.is_some()
            || req.paused == Some(false);
        if let Some(v) = req.cron {
            s.cron = v;
        }
        if let Some(v) = req.timezone {
            s.timezone = v;
        }
        if let Some(v) = req.job {
            s.job = v.template()?;
        }
        if let Some(v) = req.overlap {
            s.overlap = v;
        }
        if let Some(v) = req.catch_up {
            s.catch_up = v;
        }
        if let Some(v) = &req.catch_up_within {
            s.catch_up_within_ms = parse_within(v)?;
        }
        if let Some(v) = &req.starts_at {
            s.starts_at_ms = parse_time("starts_at", "invalid_starts_at", v)?;
        }
        if let Some(v) = &req.ends_at {
            s.ends_at_ms = parse_time("ends_at", "invalid_ends_at", v)?;
        }
        if let Some(p) = req.paused {
            s.paused = i32::from(p);
        }
        if timing {
            self.plan_next(&mut s, now)?;
        } else {
            Timetable::parse(&s.cron, &s.timezone, at(now))?;
        }
        self.check_template(&s.tenant, &s).await?;
        s.updated_ms = now;
        if !self.store.save_definition(&s, read_rev).await? {
            return Err(refused(
                "schedule_changed",
                "the schedule changed meanwhile; read it again and retry",
            ));
        }
        s.rev = read_rev + 1;
        Ok(s)
    }

    /// Delete a schedule (API-managed only).
    pub async fn delete(&self, s: &Schedule) -> Result<()> {
        Self::editable(s)?;
        self.store.delete(&s.id).await?;
        Ok(())
    }

    /// Pause (ticks are skipped, reason `paused`) or resume (the next tick from now on; the
    /// paused time is not caught up).
    pub async fn set_paused(&self, s: &Schedule, paused: bool) -> Result<Schedule> {
        let next = if paused {
            None
        } else {
            let tt = Timetable::parse(&s.cron, &s.timezone, Utc::now())?;
            Some(firing::first_tick(s, &tt, now_ms()))
        };
        self.store.set_paused(&s.id, paused, next).await?;
        self.store
            .get_id(&s.id)
            .await?
            .ok_or(Error::Missing("schedule"))
    }

    /// Run the schedule now, outside its timetable (and its overlap policy).
    pub async fn trigger(&self, s: &Schedule, by: &str) -> Result<Submitted> {
        let now = now_ms();
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let key = format!("schedule:{}:trigger:{nonce}", s.id);
        let sub = self.client.submit(&s.tenant, s.job.new_job(key)).await?;
        let run = Run {
            schedule_id: s.id.clone(),
            fire_ms: now,
            job_id: sub.job.id.clone(),
            error: None,
            catch_up: false,
            manual: true,
            fired_by: by.to_string(),
        };
        self.store
            .record_run(&run, &format!("{}:m:{nonce}", s.id))
            .await?;
        self.store.set_last_job(&s.id, &sub.job.id).await?;
        Ok(sub)
    }

    /// Hand a code-managed schedule over to the API: from now on deploys leave it alone and
    /// the API may change it. `not_managed_by_code` if it is not code-managed.
    pub async fn detach(&self, s: &Schedule) -> Result<Schedule> {
        if !self.store.detach(&s.id).await? {
            return Err(refused(
                "not_managed_by_code",
                format!("schedule '{}' is managed through the API already", s.name),
            ));
        }
        self.store
            .get_id(&s.id)
            .await?
            .ok_or(Error::Missing("schedule"))
    }

    /// The full view: the next 5 fire times and the last 20 runs with their jobs' states.
    pub async fn show(&self, s: &Schedule) -> Result<ScheduleView> {
        let mut v = ScheduleView::of(s);
        let tt = Timetable::parse(&s.cron, &s.timezone, Utc::now()).ok();
        v.next_runs = Some(match (&tt, s.next_run_at_ms) {
            (Some(tt), next) if next != NEVER => {
                let mut out = vec![at(next)];
                out.extend(
                    tt.upcoming(at(next), SHOWN_NEXT - 1)
                        .into_iter()
                        .filter(|t| s.ends_at_ms == 0 || t.timestamp_millis() <= s.ends_at_ms),
                );
                out
            }
            _ => Vec::new(),
        });
        let runs = self.store.runs(&s.id, SHOWN_RUNS).await?;
        let ids: Vec<String> = runs
            .iter()
            .filter(|r| !r.job_id.is_empty())
            .map(|r| r.job_id.clone())
            .collect();
        let jobs = self.client.store().get_many(&ids).await?;
        v.runs = Some(
            runs.into_iter()
                .map(|r| {
                    let state = if r.job_id.is_empty() {
                        "not_submitted".to_string()
                    } else {
                        jobs.iter()
                            .find(|j| j.id == r.job_id)
                            .map(|j| j.state.as_str().to_string())
                            .unwrap_or_else(|| "unknown".into())
                    };
                    RunView {
                        fire_time: at(r.fire_ms),
                        job_id: (!r.job_id.is_empty()).then_some(r.job_id),
                        state,
                        catch_up: r.catch_up,
                        manual: r.manual,
                        error: r.error,
                        fired_by: (!r.fired_by.is_empty()).then_some(r.fired_by),
                    }
                })
                .collect(),
        );
        Ok(v)
    }

    /// Upsert the schedules a worker binary declares (at its start). A new declaration is
    /// inserted; a newer `version` replaces a code-managed one; a schedule the API manages
    /// (created there, or detached) is never touched, so a deploy cannot revert an operator's
    /// edit. Returns the declarations ignored for that reason.
    pub async fn declare(&self, specs: &[ScheduleSpec]) -> Result<Vec<String>> {
        let mut ignored = Vec::new();
        for spec in specs {
            let now = now_ms();
            let mut s = spec.to_schedule(now)?;
            self.plan_next(&mut s, now)?;
            // Kinds of other workers may not be known to this process; the catalog's check
            // runs again at each run's submission.
            match self.check_template(&s.tenant, &s).await {
                Err(Error::InvalidJob {
                    code: "unknown_kind",
                    ..
                })
                | Ok(()) => {}
                Err(e) => return Err(e),
            }
            if !self.store.upgrade_code(&s).await? {
                if let Some(cur) = self.store.get(&s.tenant, &s.name).await? {
                    if cur.managed_by == ManagedBy::Api {
                        tracing::warn!(
                            schedule = %s.name,
                            tenant = %s.tenant,
                            "a schedule declared in code is managed through the API (detached); the declaration is ignored"
                        );
                        ignored.push(s.name.clone());
                    }
                }
            }
        }
        Ok(ignored)
    }
}
