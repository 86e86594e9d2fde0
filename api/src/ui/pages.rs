//! The dashboard's `GET` pages. Each reads through the same functions as the JSON routes,
//! with the session's [`Caller`](crate::auth::Caller): operators and viewers see the fleet,
//! submitters their own jobs and schedules only (and a `403` page for fleet pages).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use jobmill::view::JobView;
use jobmill::JobState;
use jobmill_ops::queues::{KeyRunning, LimitsView, QueueView};
use jobmill_ops::workers::{self, WorkerState};
use jobmill_schedules::model::{RunView, ScheduleView};
use jobmill_schedules::{CatchUp, ManagedBy, Overlap};
use serde::Deserialize;

use super::chart::{self, Chart};
use super::schema_form::{self, Field};
use super::session::UiUser;
use super::{bytes, enc, pretty, render, Chrome, UiResult, When};
use crate::error::ApiError;
use crate::extract::{parse_job_id, JobId};
use crate::routes::jobs::ListParams;
use crate::routes::schedules::TenantQuery;
use crate::AppState;

/// How often fleet pages refresh without an event (history figures change without one).
const REFRESH_MS: u32 = 5000;

// ---------------------------------------------------------------- overview

/// Totals of the overview.
pub struct Totals {
    /// Ready to run.
    pub queued: u64,
    /// Running.
    pub running: u64,
    /// Waiting for their run time.
    pub scheduled: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    /// Failed in the last hour.
    pub failed_1h: u64,
    /// Succeeded per minute over the last 5 minutes.
    pub succeeded_per_min: String,
    /// A submitter's counts stop at this many.
    pub capped_at: Option<u64>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    totals: Totals,
    chart: Option<Chart>,
    queues: usize,
    live_workers: usize,
    events: String,
    refresh_ms: u32,
}

/// Most of a submitter's own jobs counted per state (its counts come from the store).
const TENANT_COUNT_CAP: u64 = 10_000;

/// `GET /ui/`: totals, the last hour's chart, live.
pub async fn overview(State(state): State<AppState>, user: UiUser) -> UiResult {
    let now = jobmill::job::now_ms();
    let page = if user.sees_fleet() {
        let queues = state.ops.queue_list().await?;
        let workers = workers::list(state.ops.queue()).await?;
        let mut t = Totals {
            queued: 0,
            running: 0,
            scheduled: 0,
            retrying: 0,
            failed_1h: 0,
            succeeded_per_min: String::new(),
            capped_at: None,
        };
        let mut ok_5m = 0;
        for q in &queues {
            t.queued += q.counts.queued;
            t.running += q.counts.running;
            t.scheduled += q.counts.scheduled;
            t.retrying += q.counts.retrying;
            t.failed_1h += q.failed_1h;
            ok_5m += q.recent.last_5m.succeeded;
        }
        t.succeeded_per_min = format!("{:.1}", ok_5m as f64 / 5.0);
        let mut lists = Vec::new();
        for q in &queues {
            lists.push(state.ops.history().minutes(&q.name, 60).await?.buckets);
        }
        let by = chart::sum_minutes(lists.iter().map(Vec::as_slice));
        OverviewPage {
            chrome: Chrome::new(&user, "Overview", "overview"),
            totals: t,
            chart: Some(chart::draw(&by, now, 60, 1)),
            queues: queues.len(),
            live_workers: workers
                .iter()
                .filter(|w| w.state != WorkerState::Gone)
                .count(),
            events: "/ui/events".into(),
            refresh_ms: REFRESH_MS,
        }
    } else {
        // A submitter's own jobs, counted in the store through its tenant index.
        let store = state.client.store();
        let tenant = user.caller.tenant.as_str();
        let count = |s: JobState, since: Option<i64>| {
            store.count_tenant(tenant, s, since, TENANT_COUNT_CAP)
        };
        let ok_5m = count(JobState::Succeeded, Some(now - 300_000)).await?;
        OverviewPage {
            chrome: Chrome::new(&user, "Overview", "overview"),
            totals: Totals {
                queued: count(JobState::Queued, None).await?,
                running: count(JobState::Running, None).await?,
                scheduled: count(JobState::Scheduled, None).await?,
                retrying: count(JobState::Retrying, None).await?,
                failed_1h: count(JobState::Failed, Some(now - 3_600_000)).await?,
                succeeded_per_min: format!("{:.1}", ok_5m as f64 / 5.0),
                capped_at: Some(TENANT_COUNT_CAP),
            },
            chart: None,
            queues: 0,
            live_workers: 0,
            events: String::new(),
            refresh_ms: REFRESH_MS,
        }
    };
    Ok(render(&page))
}

// ---------------------------------------------------------------- queues

/// One queue row.
pub struct QueueRow {
    name: String,
    href: String,
    paused: bool,
    queued: u64,
    scheduled: u64,
    retrying: u64,
    running: u64,
    latency: String,
    consumers: usize,
    succeeded_1h: u64,
    failed_1h: u64,
    limits: String,
}

impl QueueRow {
    fn of(q: QueueView) -> Self {
        QueueRow {
            href: format!("/ui/queues/{}", enc(&q.name)),
            paused: q.paused,
            queued: q.counts.queued,
            scheduled: q.counts.scheduled,
            retrying: q.counts.retrying,
            running: q.counts.running,
            latency: latency(q.latency_seconds),
            consumers: q.consumers,
            succeeded_1h: q.succeeded_1h,
            failed_1h: q.failed_1h,
            limits: limits_summary(q.limits.as_ref()),
            name: q.name,
        }
    }
}

/// The limits in force, compactly: `conc 40 · 10/1s · key 1 · key 5/1s`, or `—`.
fn limits_summary(l: Option<&LimitsView>) -> String {
    let Some(l) = l else {
        return "—".into();
    };
    let set = &l.set;
    let mut parts = Vec::new();
    if let Some(n) = set.concurrency {
        parts.push(format!("conc {n}"));
    }
    if let Some(r) = &set.rate {
        parts.push(format!("{}/{}", r.max, r.per));
    }
    if let Some(n) = set.key_concurrency {
        parts.push(format!("key {n}"));
    }
    if let Some(r) = &set.key_rate {
        parts.push(format!("key {}/{}", r.max, r.per));
    }
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(" · ")
    }
}

#[derive(Template)]
#[template(path = "queues.html")]
struct QueuesPage {
    chrome: Chrome,
    rows: Vec<QueueRow>,
    refresh_ms: u32,
}

fn latency(s: f64) -> String {
    if s <= 0.0 {
        "0 s".into()
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else {
        super::relative((s * 1000.0) as i64)
            .trim_end_matches(" ago")
            .to_string()
    }
}

/// `GET /ui/queues`.
pub async fn queues(State(state): State<AppState>, user: UiUser) -> UiResult {
    user.caller.require_viewer()?;
    let rows = state
        .ops
        .queue_list()
        .await?
        .into_iter()
        .map(QueueRow::of)
        .collect();
    Ok(render(&QueuesPage {
        chrome: Chrome::new(&user, "Queues", "queues"),
        rows,
        refresh_ms: REFRESH_MS,
    }))
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    chrome: Chrome,
    row: QueueRow,
    limits: LimitsPanel,
    chart: Chart,
    jobs_href: String,
    refresh_ms: u32,
}

/// `GET /ui/queues/{name}`: the queue and its last 24 hours.
pub async fn queue(
    State(state): State<AppState>,
    user: UiUser,
    Path(name): Path<String>,
) -> UiResult {
    user.caller.require_viewer()?;
    crate::routes::queues::check_name(&name)?;
    let q = state.ops.queue_one(&name).await?;
    let history = state.ops.history().minutes(&name, 1440).await?;
    let by = chart::sum_minutes([history.buckets.as_slice()]);
    let chart = chart::draw(&by, jobmill::job::now_ms(), 96, 15);
    Ok(render(&QueuePage {
        chrome: Chrome::new(&user, format!("Queue {name}"), "queues"),
        jobs_href: format!("/ui/jobs?queue={}", enc(&name)),
        limits: LimitsPanel::of(q.limits.as_ref(), &name),
        row: QueueRow::of(q),
        chart,
        refresh_ms: REFRESH_MS * 6,
    }))
}

/// A queue's limits as its page shows them, with the form's current values.
pub struct LimitsPanel {
    /// Any limit is set.
    has_set: bool,
    /// What is set, as `(what, value)` lines.
    set: Vec<(&'static str, String)>,
    /// Jobs of the queue holding a slot.
    running: u64,
    /// Limit keys with jobs running.
    running_keys: u64,
    /// Jobs with a `limit_key` waiting.
    keyed_queued: u64,
    /// The whole queue is held until then.
    throttled_until: Option<When>,
    /// Keys held now.
    throttled_keys: u64,
    /// The busiest keys.
    top_keys: Vec<KeyRunning>,
    /// Where the form posts.
    action: String,
    /// Where "Remove limits" posts.
    delete_action: String,
    concurrency: String,
    rate_max: String,
    rate_per: String,
    key_concurrency: String,
    key_rate_max: String,
    key_rate_per: String,
}

impl LimitsPanel {
    fn of(l: Option<&LimitsView>, queue: &str) -> Self {
        let num = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_default();
        let href = format!("/ui/queues/{}/limits", enc(queue));
        let mut p = LimitsPanel {
            has_set: false,
            set: Vec::new(),
            running: 0,
            running_keys: 0,
            keyed_queued: 0,
            throttled_until: None,
            throttled_keys: 0,
            top_keys: Vec::new(),
            delete_action: format!("{href}/delete"),
            action: href,
            concurrency: String::new(),
            rate_max: String::new(),
            rate_per: String::new(),
            key_concurrency: String::new(),
            key_rate_max: String::new(),
            key_rate_per: String::new(),
        };
        let Some(l) = l else { return p };
        let set = &l.set;
        if let Some(n) = set.concurrency {
            p.set.push(("Concurrency", format!("{n} jobs at once")));
        }
        if let Some(r) = &set.rate {
            p.set
                .push(("Rate", format!("{} starts per {}", r.max, r.per)));
            p.rate_max = r.max.to_string();
            p.rate_per = r.per.clone();
        }
        if let Some(n) = set.key_concurrency {
            p.set
                .push(("Per key concurrency", format!("{n} jobs at once")));
        }
        if let Some(r) = &set.key_rate {
            p.set
                .push(("Per key rate", format!("{} starts per {}", r.max, r.per)));
            p.key_rate_max = r.max.to_string();
            p.key_rate_per = r.per.clone();
        }
        p.has_set = !p.set.is_empty();
        p.concurrency = num(set.concurrency);
        p.key_concurrency = num(set.key_concurrency);
        p.running = l.running;
        p.running_keys = l.running_keys;
        p.keyed_queued = l.keyed_queued;
        p.throttled_until = l.throttled_until_ms.map(When::ms);
        p.throttled_keys = l.throttled_key_count;
        p.top_keys = l.top_keys.clone();
        p
    }
}

// ---------------------------------------------------------------- schedules

/// The wire name of an overlap policy (as the JSON API and `jobmill schedules` write it).
fn overlap_name(o: Overlap) -> &'static str {
    match o {
        Overlap::Allow => "allow",
        Overlap::Skip => "skip",
        Overlap::BufferOne => "buffer_one",
    }
}

/// The wire name of a catch-up policy.
fn catch_up_name(c: CatchUp) -> &'static str {
    match c {
        CatchUp::None => "none",
        CatchUp::Latest => "latest",
        CatchUp::All => "all",
    }
}

/// Who owns a schedule's definition, as the JSON API writes it.
fn managed_by_name(m: ManagedBy) -> &'static str {
    match m {
        ManagedBy::Api => "api",
        ManagedBy::Code => "code",
    }
}

/// A schedule's page: its name with `?tenant=` (every schedule is named by tenant and name;
/// the JSON route reads the same query).
fn schedule_href(s: &ScheduleView) -> String {
    format!("/ui/schedules/{}?tenant={}", enc(&s.name), enc(&s.tenant))
}

/// One schedule row.
pub struct ScheduleRow {
    name: String,
    tenant: String,
    href: String,
    cron: String,
    timezone: String,
    kind: String,
    queue: String,
    /// The template names no queue: the kind's default applies.
    queue_default: bool,
    overlap: &'static str,
    paused: bool,
    managed_by: &'static str,
    next: Option<When>,
}

impl ScheduleRow {
    fn of(s: &ScheduleView, kind_queue: &dyn Fn(&str) -> Option<String>) -> Self {
        let (queue, queue_default) = match &s.job.queue {
            Some(q) => (q.clone(), false),
            None => (kind_queue(&s.job.kind).unwrap_or_default(), true),
        };
        ScheduleRow {
            name: s.name.clone(),
            tenant: s.tenant.clone(),
            href: schedule_href(s),
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
            kind: s.job.kind.clone(),
            queue,
            queue_default,
            overlap: overlap_name(s.overlap),
            paused: s.paused,
            managed_by: managed_by_name(s.managed_by),
            next: s.next_run_at.map(When::at),
        }
    }
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    chrome: Chrome,
    rows: Vec<ScheduleRow>,
}

/// The default queue of each public kind, by name (for templates that name no queue).
fn kind_queues(state: &AppState) -> impl Fn(&str) -> Option<String> {
    let kinds = state.client.catalog().public();
    move |name: &str| {
        kinds
            .iter()
            .find(|k| k.name == name)
            .map(|k| k.defaults.queue.clone())
    }
}

/// `GET /ui/schedules`: the schedules the user may see (as `GET /v1/schedules`).
pub async fn schedules(State(state): State<AppState>, user: UiUser) -> UiResult {
    let list = crate::routes::schedules::list(&state, &user.caller).await?;
    let kq = kind_queues(&state);
    Ok(render(&SchedulesPage {
        chrome: Chrome::new(&user, "Schedules", "schedules"),
        rows: list
            .iter()
            .map(|s| ScheduleRow::of(&ScheduleView::of(s), &kq))
            .collect(),
    }))
}

/// One run of a schedule.
pub struct RunRow {
    fire: When,
    job_href: Option<String>,
    job_id: String,
    state: String,
    manual: bool,
    catch_up: bool,
    error: String,
}

impl RunRow {
    fn of(r: &RunView) -> Self {
        RunRow {
            fire: When::at(r.fire_time),
            job_href: r.job_id.as_ref().map(|id| format!("/ui/jobs/{}", enc(id))),
            job_id: r.job_id.clone().unwrap_or_default(),
            state: r.state.clone(),
            manual: r.manual,
            catch_up: r.catch_up,
            error: r.error.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "schedule.html")]
struct SchedulePage {
    chrome: Chrome,
    row: ScheduleRow,
    id: String,
    catch_up: String,
    args: String,
    version: i64,
    starts: Option<When>,
    ends: Option<When>,
    created: When,
    updated: When,
    code_managed: bool,
    next_runs: Vec<When>,
    runs: Vec<RunRow>,
    /// `/ui/schedules/{name}`; each action appends `/pause` etc. and `tenant_query`.
    base: String,
    /// `?tenant=…`.
    tenant_query: String,
}

/// `GET /ui/schedules/{name}` (`?tenant=` for another tenant's, as the JSON route): the
/// schedule, its next fire times and last runs, and its actions.
pub async fn schedule(
    State(state): State<AppState>,
    user: UiUser,
    Path(name): Path<String>,
    crate::extract::Query(q): crate::extract::Query<TenantQuery>,
) -> UiResult {
    let view = crate::routes::schedules::show(&state, &user.caller, &name, &q).await?;
    let kq = kind_queues(&state);
    Ok(render(&SchedulePage {
        chrome: Chrome::new(&user, format!("Schedule {}", view.name), "schedules"),
        row: ScheduleRow::of(&view, &kq),
        catch_up: format!(
            "{} within {}",
            catch_up_name(view.catch_up),
            view.catch_up_within
        ),
        args: view.job.args.as_ref().map(pretty).unwrap_or_default(),
        version: view.version,
        starts: view.starts_at.map(When::at),
        ends: view.ends_at.map(When::at),
        created: When::at(view.created_at),
        updated: When::at(view.updated_at),
        code_managed: view.managed_by == ManagedBy::Code,
        next_runs: view
            .next_runs
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(When::at)
            .collect(),
        runs: view
            .runs
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(RunRow::of)
            .collect(),
        base: format!("/ui/schedules/{}", enc(&view.name)),
        tenant_query: format!("?tenant={}", enc(&view.tenant)),
        id: view.id,
    }))
}

// ---------------------------------------------------------------- workers

/// A job a worker holds.
pub struct HeldRow {
    id: String,
    kind: String,
    started: When,
}

/// One worker row.
pub struct WorkerRow {
    id: String,
    host_pid: String,
    version: String,
    state: &'static str,
    gone: bool,
    queues: String,
    busy: usize,
    total: usize,
    memory: String,
    heartbeat: When,
    started: When,
    counters: String,
    jobs: Vec<HeldRow>,
    quiet_action: String,
    stop_action: String,
}

#[derive(Template)]
#[template(path = "workers.html")]
struct WorkersPage {
    chrome: Chrome,
    rows: Vec<WorkerRow>,
    refresh_ms: u32,
}

/// `GET /ui/workers`.
pub async fn workers(State(state): State<AppState>, user: UiUser) -> UiResult {
    user.caller.require_viewer()?;
    let rows = workers::list(state.ops.queue())
        .await?
        .into_iter()
        .map(|w| {
            let state = match w.state {
                WorkerState::Running => "running",
                WorkerState::Quiet => "quiet",
                WorkerState::Stopping => "stopping",
                WorkerState::Gone => "gone",
            };
            let c = &w.counters;
            WorkerRow {
                host_pid: format!("{}:{}", w.host, w.pid),
                version: w.version.clone(),
                state,
                gone: w.state == WorkerState::Gone,
                queues: w
                    .queues
                    .iter()
                    .map(|q| format!("{} ×{}", q.name, q.weight))
                    .collect::<Vec<_>>()
                    .join(", "),
                busy: w.busy,
                total: w.concurrency,
                memory: if w.rss_bytes == 0 {
                    "—".into()
                } else {
                    bytes(w.rss_bytes)
                },
                heartbeat: When::at(w.last_heartbeat_at),
                started: When::at(w.started_at),
                counters: format!(
                    "{} ok · {} failed · {} retried · {} cancelled · {} lost",
                    c.succeeded, c.failed, c.retried, c.cancelled, c.lease_expired
                ),
                jobs: w
                    .jobs
                    .iter()
                    .map(|j| HeldRow {
                        id: j.id.clone(),
                        kind: j.kind.clone(),
                        started: When::at(j.started_at),
                    })
                    .collect(),
                quiet_action: format!("/ui/workers/{}/quiet", enc(&w.id)),
                stop_action: format!("/ui/workers/{}/stop", enc(&w.id)),
                id: w.id,
            }
        })
        .collect();
    Ok(render(&WorkersPage {
        chrome: Chrome::new(&user, "Workers", "workers"),
        rows,
        refresh_ms: REFRESH_MS,
    }))
}

// ---------------------------------------------------------------- jobs

/// Filters of the jobs page (and of its bulk actions).
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    /// State.
    pub state: Option<String>,
    /// Kind.
    pub kind: Option<String>,
    /// Queue.
    pub queue: Option<String>,
    /// Owner (fleet users).
    pub owner: Option<String>,
    /// A job id to go to.
    pub id: Option<String>,
    /// Page cursor.
    pub cursor: Option<String>,
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// One job row.
pub struct JobRow {
    id: String,
    kind: String,
    queue: String,
    state: &'static str,
    attempt: String,
    owner: String,
    created: When,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    rows: Vec<JobRow>,
    states: Vec<(&'static str, bool)>,
    kind: String,
    queue: String,
    owner: String,
    filtered: bool,
    next_href: Option<String>,
    events: String,
}

/// `GET /ui/jobs`: the listing with filters, cursor paging and bulk actions.
pub async fn jobs(
    State(state): State<AppState>,
    user: UiUser,
    Query(q): Query<JobsQuery>,
) -> UiResult {
    if let Some(id) = nonempty(&q.id) {
        let id = parse_job_id(&id)?;
        return Ok(super::see_other(&format!("/ui/jobs/{id}")));
    }
    let st = nonempty(&q.state);
    let kind = nonempty(&q.kind);
    let queue = nonempty(&q.queue);
    let owner = nonempty(&q.owner).filter(|_| user.sees_fleet());
    let cursor = nonempty(&q.cursor);
    let (jobs, next) = crate::routes::jobs::list_page(
        &state,
        &user.caller,
        ListParams {
            state: st.clone(),
            kind: kind.clone(),
            queue: queue.clone(),
            owner: owner.clone(),
            cursor,
            limit: Some(50),
            ..ListParams::default()
        },
    )
    .await?;
    let filter_query = filter_query(&st, &kind, &queue, &owner);
    let rows = jobs
        .iter()
        .map(|j| JobRow {
            id: j.id.clone(),
            kind: j.kind.clone(),
            queue: j.queue.clone(),
            state: j.state.as_str(),
            attempt: format!("{}/{}", j.attempt, j.max_attempts),
            owner: j.tenant.clone(),
            created: When::ms(j.created_ms),
        })
        .collect();
    Ok(render(&JobsPage {
        chrome: Chrome::new(&user, "Jobs", "jobs"),
        rows,
        states: JobState::ALL
            .iter()
            .map(|s| (s.as_str(), st.as_deref() == Some(s.as_str())))
            .collect(),
        filtered: st.is_some() || kind.is_some() || queue.is_some() || owner.is_some(),
        kind: kind.unwrap_or_default(),
        queue: queue.unwrap_or_default(),
        owner: owner.unwrap_or_default(),
        next_href: next.map(|c| format!("/ui/jobs?{filter_query}cursor={}", enc(&c))),
        events: if user.sees_fleet() {
            "/ui/events".into()
        } else {
            String::new()
        },
    }))
}

fn filter_query(
    st: &Option<String>,
    kind: &Option<String>,
    queue: &Option<String>,
    owner: &Option<String>,
) -> String {
    let mut s = String::new();
    for (k, v) in [
        ("state", st),
        ("kind", kind),
        ("queue", queue),
        ("owner", owner),
    ] {
        if let Some(v) = v {
            s.push_str(&format!("{k}={}&", enc(v)));
        }
    }
    s
}

/// One entry of a job's timeline.
pub struct Step {
    what: String,
    detail: String,
    when: When,
    class: &'static str,
}

/// One delivery row.
#[derive(Clone)]
pub struct DeliveryRow {
    id: String,
    event: String,
    url: String,
    status: String,
    attempts: usize,
    last: String,
    created: When,
    replayable: bool,
    replay_action: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobView,
    args: String,
    result: Option<String>,
    ext: Option<String>,
    created: When,
    run_at: When,
    progress_value: i64,
    progress_max: i64,
    progress_text: String,
    live: bool,
    cancellable: bool,
    retryable: bool,
    steps: Vec<Step>,
    deliveries: Vec<DeliveryRow>,
    job_events: String,
}

/// `GET /ui/jobs/{id}`.
pub async fn job(State(state): State<AppState>, user: UiUser, JobId(id): JobId) -> UiResult {
    let job = crate::routes::jobs::load(&state, &user.caller, &id).await?;
    let view = JobView::from(&job);
    let deliveries = state
        .webhooks
        .store()
        .deliveries_of_job(&id, user.caller.scope(), 50)
        .await?;
    let mut steps = vec![Step {
        what: "accepted".into(),
        detail: format!("queue {}, priority {}", view.queue, view.priority),
        when: When::rfc3339(&view.created_at),
        class: "",
    }];
    for e in &view.errors {
        steps.push(Step {
            what: format!("attempt {} failed", e.attempt),
            detail: e.message.clone(),
            when: When::rfc3339(&e.at),
            class: "bad",
        });
    }
    if let Some(s) = &view.started_at {
        steps.push(Step {
            what: format!("attempt {} started", view.attempt),
            detail: String::new(),
            when: When::rfc3339(s),
            class: "",
        });
    }
    if let Some(f) = &view.finished_at {
        steps.push(Step {
            what: view.state.as_str().to_string(),
            detail: String::new(),
            when: When::rfc3339(f),
            class: if view.state == JobState::Succeeded {
                "ok"
            } else {
                "bad"
            },
        });
    }
    steps.sort_by(|a, b| a.when.iso.cmp(&b.when.iso));
    let (pv, pm, pt) = match &view.progress {
        Some(p) => {
            let max = p.total.filter(|t| *t > 0).unwrap_or(100);
            let text = format!(
                "{}{}{}",
                p.done,
                p.total.map(|t| format!(" / {t}")).unwrap_or_default(),
                p.message
                    .as_ref()
                    .map(|m| format!(" · {m}"))
                    .unwrap_or_default()
            );
            (p.done.min(max), max, text)
        }
        None if view.state == JobState::Succeeded => (1, 1, "done".to_string()),
        None => (0, 1, "no progress reported".to_string()),
    };
    let may = user.may_act();
    let live = !view.state.is_terminal();
    let page = JobPage {
        chrome: Chrome::new(&user, format!("Job {}", view.id), "jobs"),
        args: pretty(&view.args),
        result: view.result.as_ref().map(pretty),
        ext: (!view.ext.is_empty()).then(|| pretty(&serde_json::Value::Object(view.ext.clone()))),
        created: When::rfc3339(&view.created_at),
        run_at: When::rfc3339(&view.run_at),
        progress_value: pv,
        progress_max: pm,
        progress_text: pt,
        live,
        cancellable: may && live,
        retryable: may && matches!(view.state, JobState::Failed | JobState::Cancelled),
        steps,
        deliveries: deliveries.iter().map(|d| delivery_row(d, may)).collect(),
        job_events: if live {
            format!("/ui/jobs/{}/events", view.id)
        } else {
            String::new()
        },
        job: view,
    };
    Ok(render(&page))
}

fn delivery_row(d: &jobmill_webhooks::records::Delivery, may: bool) -> DeliveryRow {
    let attempts = d.attempts_in_order();
    let last = attempts
        .last()
        .map(|a| match (a.status, &a.error) {
            (Some(s), _) => format!("HTTP {s} in {} ms", a.latency_ms),
            (None, Some(e)) => e.clone(),
            (None, None) => "no answer".into(),
        })
        .unwrap_or_else(|| "not sent yet".into());
    DeliveryRow {
        id: d.id.clone(),
        event: d.event.as_str().to_string(),
        url: d.url.clone(),
        status: d.status.as_str().to_string(),
        attempts: attempts.len(),
        last,
        created: When::ms(d.created_ms),
        replayable: may && d.status.is_final(),
        replay_action: format!("/ui/deliveries/{}/replay", enc(&d.id)),
    }
}

/// `GET /ui/jobs/{id}/events`: the job's event stream, the same as `/v1/jobs/{id}/events`,
/// authenticated by the session (`EventSource` cannot send an `Authorization` header).
pub async fn job_events(
    State(state): State<AppState>,
    user: UiUser,
    JobId(id): JobId,
    headers: HeaderMap,
) -> UiResult {
    crate::routes::events::jobs_events(State(state), user.caller, JobId(id), headers).await
}

/// `GET /ui/events`: the fleet's state changes, as `/v1/events` (viewers and operators).
pub async fn fleet_events(State(state): State<AppState>, user: UiUser) -> UiResult {
    crate::routes::events::events_index(
        State(state),
        user.caller,
        crate::extract::Query(crate::routes::events::FleetQuery {
            queue: None,
            kind: None,
            state: None,
        }),
    )
    .await
}

// ---------------------------------------------------------------- kinds

/// One kind with its form.
pub struct KindRow {
    name: String,
    description: String,
    queue: String,
    max_attempts: u32,
    timeout: String,
    workers: u64,
    schema: String,
    fields: Vec<Field>,
    action: String,
    /// Schedules (visible to the user) whose job is of this kind: `(name, tenant, href)`.
    schedules: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "kinds.html")]
struct KindsPage {
    chrome: Chrome,
    kinds: Vec<KindRow>,
}

/// `GET /ui/kinds`: the catalog, each kind with a form generated from its schema and the
/// schedules that submit it (one read of the schedule listing the user may see).
pub async fn kinds(State(state): State<AppState>, user: UiUser) -> UiResult {
    let mut by_kind: std::collections::BTreeMap<String, Vec<(String, String, String)>> =
        Default::default();
    for s in crate::routes::schedules::list(&state, &user.caller).await? {
        let v = ScheduleView::of(&s);
        by_kind
            .entry(s.job.kind)
            .or_default()
            .push((s.name, s.tenant, schedule_href(&v)));
    }
    let kinds = crate::routes::kinds::kind_list(&state)
        .await?
        .into_iter()
        .map(|k| KindRow {
            schedules: by_kind.remove(&k.name).unwrap_or_default(),
            fields: schema_form::fields(&k.schema),
            schema: pretty(&k.schema),
            queue: k.defaults.queue,
            max_attempts: k.defaults.max_attempts,
            timeout: format!("{} s", k.defaults.timeout_ms as f64 / 1000.0),
            workers: k.workers,
            description: k.description,
            action: format!("/ui/kinds/{}", enc(&k.name)),
            name: k.name,
        })
        .collect();
    Ok(render(&KindsPage {
        chrome: Chrome::new(&user, "Kinds", "kinds"),
        kinds,
    }))
}

// ---------------------------------------------------------------- webhooks

/// One endpoint with its recent deliveries.
pub struct EndpointRow {
    id: String,
    url: String,
    events: String,
    enabled: bool,
    disabled_reason: String,
    owner: String,
    toggle_action: String,
    deliveries: Vec<DeliveryRow>,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    endpoints: Vec<EndpointRow>,
}

/// `GET /ui/webhooks`: endpoints with their last deliveries.
pub async fn webhooks(State(state): State<AppState>, user: UiUser) -> UiResult {
    let store = state.webhooks.store();
    let scope = user.caller.scope();
    let eps = store
        .list_endpoints(scope, crate::routes::webhooks::MAX_ENDPOINTS)
        .await?;
    let may = user.may_act();
    let mut endpoints = Vec::new();
    for ep in eps {
        let ds = store.deliveries_of_endpoint(&ep.id, scope, 10).await?;
        let enabled = ep.enabled == 1;
        endpoints.push(EndpointRow {
            url: ep.url.clone(),
            events: ep
                .events
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            enabled,
            disabled_reason: ep.disabled_reason.clone().unwrap_or_default(),
            owner: ep.tenant.clone(),
            toggle_action: format!(
                "/ui/webhooks/{}/{}",
                enc(&ep.id),
                if enabled { "disable" } else { "enable" }
            ),
            deliveries: ds.iter().map(|d| delivery_row(d, may)).collect(),
            id: ep.id,
        });
    }
    Ok(render(&WebhooksPage {
        chrome: Chrome::new(&user, "Webhooks", "webhooks"),
        endpoints,
    }))
}

// ---------------------------------------------------------------- audit

/// One audit row.
pub struct AuditRow {
    at: When,
    key: String,
    action: String,
    target: String,
    outcome: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    rows: Vec<AuditRow>,
    next_href: Option<String>,
}

/// Query of the audit page.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    cursor: Option<String>,
}

fn wire<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// `GET /ui/audit`: operator actions, newest first.
pub async fn audit(
    State(state): State<AppState>,
    user: UiUser,
    Query(q): Query<AuditQuery>,
) -> UiResult {
    user.caller.require_viewer()?;
    let cursor = match nonempty(&q.cursor) {
        Some(c) if uuid::Uuid::parse_str(&c).is_ok() => Some(c),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_cursor",
                "cursor must be a next_cursor from an earlier page",
            ))
        }
        None => None,
    };
    let page = state.ops.audit().list(cursor.as_deref(), 50).await?;
    let rows = page
        .records
        .iter()
        .map(|r| {
            let mut detail = Vec::new();
            if let Some(f) = &r.filter {
                detail.push(format!("filter {f}"));
            }
            if let Some(res) = &r.result {
                detail.push(format!("result {res}"));
            }
            AuditRow {
                at: When::at(r.at),
                key: r.key.clone(),
                action: wire(&r.action),
                target: r.target.clone(),
                outcome: wire(&r.outcome),
                detail: detail.join("; "),
            }
        })
        .collect();
    Ok(render(&AuditPage {
        chrome: Chrome::new(&user, "Audit", "audit"),
        rows,
        next_href: page
            .next_cursor
            .map(|c| format!("/ui/audit?cursor={}", enc(&c))),
    }))
}

// ---------------------------------------------------------------- files

/// One file row.
pub struct FileRow {
    id: String,
    filename: String,
    size: String,
    sha256: String,
    owner: String,
    created: When,
}

#[derive(Template)]
#[template(path = "files.html")]
struct FilesPage {
    chrome: Chrome,
    rows: Vec<FileRow>,
    next_href: Option<String>,
}

/// `GET /ui/files`: assembled files (a submitter's own), newest first.
pub async fn files(
    State(state): State<AppState>,
    user: UiUser,
    Query(q): Query<AuditQuery>,
) -> UiResult {
    let (files, next) = crate::routes::files::list_page(
        &state,
        &user.caller,
        crate::routes::files::FileListParams {
            limit: Some(50),
            cursor: nonempty(&q.cursor),
        },
    )
    .await?;
    let rows = files
        .iter()
        .map(|f| FileRow {
            id: f.id.clone(),
            filename: f.filename.clone(),
            size: bytes(f.size.max(0) as u64),
            sha256: f.sha256.clone().unwrap_or_default(),
            owner: f.tenant.clone(),
            created: When::ms(f.created_ms),
        })
        .collect();
    Ok(render(&FilesPage {
        chrome: Chrome::new(&user, "Files", "files"),
        rows,
        next_href: next.map(|c| format!("/ui/files?cursor={}", enc(&c))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobmill::limits::{LimitsSpec, RateSpec};

    fn view(set: LimitsSpec) -> LimitsView {
        LimitsView {
            set,
            running: 3,
            running_keys: 1,
            top_keys: vec![KeyRunning {
                key: "api.example.com".into(),
                running: 3,
            }],
            keyed_queued: 0,
            throttled_until_ms: None,
            throttled_keys: Vec::new(),
            throttled_key_count: 0,
        }
    }

    #[test]
    fn limits_read_compactly() {
        assert_eq!(limits_summary(None), "—");
        // Keys running with nothing set: the queue shows, but no limit does.
        assert_eq!(limits_summary(Some(&view(LimitsSpec::default()))), "—");
        let set = LimitsSpec {
            concurrency: Some(40),
            rate: Some(RateSpec {
                max: 10,
                per: "1s".into(),
            }),
            key_concurrency: Some(1),
            key_rate: Some(RateSpec {
                max: 5,
                per: "1m".into(),
            }),
        };
        assert_eq!(
            limits_summary(Some(&view(set.clone()))),
            "conc 40 · 10/1s · key 1 · key 5/1m"
        );
        let panel = LimitsPanel::of(Some(&view(set)), "q");
        assert!(panel.has_set);
        assert_eq!(panel.set.len(), 4);
        assert_eq!(
            (panel.rate_max.as_str(), panel.rate_per.as_str()),
            ("10", "1s")
        );
        assert_eq!(panel.action, "/ui/queues/q/limits");
        assert_eq!(panel.delete_action, "/ui/queues/q/limits/delete");
        assert!(!LimitsPanel::of(None, "q").has_set);
    }
}
