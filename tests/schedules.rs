//! Periodic schedules on real processes: exactly one job per tick with three workers and two
//! API replicas (one worker SIGKILLed mid-run), overlap policies, catch-up after every worker
//! was down, code-declared schedules and detach, tenant isolation and input checks.
//!
//! No assertion is about how long something took: each compares recorded fire times (from
//! the jobs' idempotency keys), job start and end times, and run records.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::TryStreamExt as _;
use jobmill::{Job, Registry};
use jobmill_schedules::{ScheduleSpec, Schedules};
use jobmill_tests::{free_port, Api, Ctx, Proc, ALICE, BOB, EYES, OPS, SIGKILL};
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(120);

/// [`jobmill_tests::poll_until`] with this file's [`LIMIT`].
async fn until<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    jobmill_tests::poll_until(what, LIMIT, f).await
}

fn ctx(name: &str) -> Ctx {
    let mut c = Ctx::new(name);
    c.set("JOBMILL_SCHEDULE_POLL", "200ms");
    c
}

fn now_ms() -> i64 {
    jobmill::job::now_ms()
}

/// A job of a schedule with its planned fire time (from its idempotency key).
#[derive(Debug, Clone)]
struct Fired {
    fire_ms: i64,
    job: Job,
}

/// Every job of schedule `id`, by fire time.
async fn fired(ctx: &Ctx, id: &str) -> Vec<Fired> {
    let store = ctx.store().await;
    let prefix = format!("schedule:{id}:");
    let jobs: Vec<Job> = store
        .database()
        .collection::<Job>("jobs")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out: Vec<Fired> = jobs
        .into_iter()
        .filter_map(|job| {
            let key = job.idempotency_key.clone()?;
            let rest = key.strip_prefix(&prefix)?;
            let t = chrono::DateTime::parse_from_rfc3339(rest).ok()?;
            Some(Fired {
                fire_ms: t.timestamp_millis(),
                job,
            })
        })
        .collect();
    out.sort_by_key(|f| f.fire_ms);
    out
}

/// Run records of schedule `id`, newest first.
async fn run_docs(ctx: &Ctx, id: &str) -> Vec<Document> {
    let store = ctx.store().await;
    store
        .database()
        .collection::<Document>("schedule_runs")
        .find(doc! { "schedule_id": id })
        .sort(doc! { "fire_ms": -1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn create(api: &Api, key: &str, body: Value) -> Value {
    let a = api.post("/v1/schedules", key, body.clone()).await;
    assert_eq!(a.status, 201, "create {body}: {}", a.body);
    a.body
}

async fn patch(api: &Api, path: &str, key: &str, body: Value) -> jobmill_tests::Answer {
    api.raw(
        reqwest::Method::PATCH,
        path,
        Some(key),
        Some(("application/json", serde_json::to_vec(&body).unwrap())),
        &[],
    )
    .await
}

/// Assert the fire times are whole seconds, distinct, and with no second missing.
fn assert_every_second(fires: &[i64], what: &str) {
    let set: BTreeSet<i64> = fires.iter().copied().collect();
    assert_eq!(
        set.len(),
        fires.len(),
        "{what}: a tick fired twice: {fires:?}"
    );
    let (first, last) = (*set.first().unwrap(), *set.last().unwrap());
    for t in (first..=last).step_by(1000) {
        assert!(
            set.contains(&t),
            "{what}: tick {t} is missing from {fires:?}"
        );
    }
}

/// A worker in this process that declares `specs`.
struct DeclaredWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl DeclaredWorker {
    fn start(ctx: &Ctx, specs: Vec<ScheduleSpec>) -> Self {
        use jobmill::config::Config as _;
        let settings =
            jobmill_worker::WorkerConfig::from_lookup(|k| ctx.vars.get(k).cloned()).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            jobmill_worker::run_declared(settings, Registry::new(), specs, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        DeclaredWorker {
            stop: Some(tx),
            handle,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.handle.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_tick_fires_exactly_once_across_processes_even_when_the_firer_dies() {
    let ctx = ctx("sched_once");
    let api1 = ctx.api().await;
    let api2 = ctx.api().await;
    let procs: Vec<Proc> = (0..3).map(|_| ctx.worker_process(&[])).collect();
    let s = create(
        &api1,
        ALICE,
        json!({"name": "every-second", "cron": "* * * * * *", "job": {"kind": "noop"},
               "catch_up": "all"}),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["next_runs"].as_array().unwrap().len(), 5, "{s}");

    // About ten ticks.
    let first = until("ten ticks", || async {
        let f = fired(&ctx, &id).await;
        (f.len() >= 10).then_some(f)
    })
    .await;
    // Kill the process that fired the latest tick.
    let runs = run_docs(&ctx, &id).await;
    let firer = runs[0].get_str("fired_by").unwrap().to_string();
    let pid: u32 = firer.split(':').nth(1).unwrap().parse().unwrap();
    let victim = procs
        .iter()
        .position(|p| p.child.id() == pid)
        .unwrap_or_else(|| panic!("{firer} is none of the worker processes"));
    procs[victim].signal(SIGKILL);
    let killed_after = runs[0].get_i64("fire_ms").unwrap();
    // The next ticks still fire (by the survivors).
    until("five more ticks after the kill", || async {
        let f = fired(&ctx, &id).await;
        (f.iter().filter(|x| x.fire_ms > killed_after).count() >= 5).then_some(())
    })
    .await;
    let a = api2
        .post("/v1/schedules/every-second/pause", ALICE, json!({}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A claim in flight when the pause landed still completes; wait for quiet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = fired(&ctx, &id).await;
    assert!(all.len() >= first.len() + 5);
    let fires: Vec<i64> = all.iter().map(|f| f.fire_ms).collect();
    assert_every_second(&fires, "every-second");
    assert!(
        fires.iter().any(|t| *t == killed_after + 1000),
        "the tick after the kill fired"
    );

    // Both API replicas show the same schedule with its runs.
    let shown = api2.get("/v1/schedules/every-second", ALICE).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let runs = shown.body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), all.len().min(20), "{}", shown.body);
    for r in runs {
        assert!(r["fire_time"].is_string() && r["job_id"].is_string(), "{r}");
        assert!(r["state"].is_string(), "{r}");
    }
    assert_eq!(shown.body["paused"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skip_never_overlaps_and_buffer_one_fires_once_after_the_long_run() {
    let mut ctx = ctx("sched_overlap");
    let port = free_port();
    ctx.set("JOBMILL_METRICS_ADDR", &format!("127.0.0.1:{port}"));
    let api = ctx.api().await;
    let worker = ctx.worker();
    let long = json!({"kind": "sleep", "args": {"ms": 2500}});
    let skip = create(
        &api,
        ALICE,
        json!({"name": "skip", "cron": "* * * * * *", "job": long, "overlap": "skip"}),
    )
    .await;
    let buffer = create(
        &api,
        ALICE,
        json!({"name": "buffer", "cron": "* * * * * *", "job": long, "overlap": "buffer_one"}),
    )
    .await;
    let (skip_id, buffer_id) = (
        skip["id"].as_str().unwrap().to_string(),
        buffer["id"].as_str().unwrap().to_string(),
    );
    until("three runs of each", || async {
        let a = fired(&ctx, &skip_id).await.len();
        let b = fired(&ctx, &buffer_id).await.len();
        (a >= 3 && b >= 3).then_some(())
    })
    .await;
    for name in ["skip", "buffer"] {
        let a = api
            .post(&format!("/v1/schedules/{name}/pause"), ALICE, json!({}))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let skip_runs = all_ended(&ctx, &skip_id).await;
    let buffer_runs = all_ended(&ctx, &buffer_id).await;
    for (what, runs) in [("skip", &skip_runs), ("buffer_one", &buffer_runs)] {
        for w in runs.windows(2) {
            let (a, b) = (&w[0].job, &w[1].job);
            assert!(
                b.started_ms.unwrap() >= a.finished_ms.unwrap(),
                "{what}: {} started before {} ended",
                b.id,
                a.id
            );
        }
    }
    // buffer_one: during each run but the last, exactly one tick was held, and it fired as
    // soon as that run ended (so its fire time lies within the run it waited for).
    for w in buffer_runs.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let held = buffer_runs
            .iter()
            .filter(|x| {
                x.fire_ms > a.job.started_ms.unwrap() && x.fire_ms <= a.job.finished_ms.unwrap()
            })
            .count();
        assert_eq!(
            held,
            1,
            "one buffered tick per long run: {:?}",
            fire_list(&buffer_runs)
        );
        assert!(
            b.fire_ms <= a.job.finished_ms.unwrap(),
            "{b:?} was buffered during {a:?}"
        );
    }
    // skip: no tick of a run's lifetime fired.
    for a in &skip_runs {
        let inside = skip_runs
            .iter()
            .filter(|x| {
                x.fire_ms > a.job.started_ms.unwrap() + 1000
                    && x.fire_ms < a.job.finished_ms.unwrap()
            })
            .count();
        assert_eq!(
            inside,
            0,
            "skip fired during a run: {:?}",
            fire_list(&skip_runs)
        );
    }
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("jobmill_schedule_fires_total") >= 6.0, "{text}");
    assert!(
        value("jobmill_schedule_skipped_total{reason=\"overlap\"}") >= 1.0,
        "{text}"
    );
    assert!(value("jobmill_schedule_lag_seconds_count") >= 6.0, "{text}");
    worker.stop().await;
}

/// The runs of schedule `id`, once every one has ended.
async fn all_ended(ctx: &Ctx, id: &str) -> Vec<Fired> {
    until("every run ended", || async {
        let f = fired(ctx, id).await;
        f.iter().all(|x| x.job.state.is_terminal()).then_some(f)
    })
    .await
}

fn fire_list(f: &[Fired]) -> Vec<(i64, Option<i64>, Option<i64>)> {
    f.iter()
        .map(|x| (x.fire_ms, x.job.started_ms, x.job.finished_ms))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_ticks_follow_catch_up_after_every_worker_stopped() {
    let mut ctx = ctx("sched_catchup");
    // Two periods (1 s) of slack, so a busy machine does not turn on-time ticks into misses.
    ctx.set("JOBMILL_SCHEDULE_POLL", "500ms");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let mut ids = Vec::new();
    for policy in ["none", "latest", "all"] {
        let s = create(
            &api,
            ALICE,
            json!({"name": policy, "cron": "* * * * * *", "job": {"kind": "noop"},
                   "catch_up": policy, "catch_up_within": "1h"}),
        )
        .await;
        ids.push(s["id"].as_str().unwrap().to_string());
    }
    until("two ticks of each", || async {
        for id in &ids {
            if fired(&ctx, id).await.len() < 2 {
                return None;
            }
        }
        Some(())
    })
    .await;
    worker.stop().await;
    let mut last_before = Vec::new();
    for id in &ids {
        last_before.push(fired(&ctx, id).await.last().unwrap().fire_ms);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restart = now_ms();
    // Nothing fired while no worker ran.
    for (id, last) in ids.iter().zip(&last_before) {
        assert_eq!(fired(&ctx, id).await.last().unwrap().fire_ms, *last);
    }
    let worker = ctx.worker();
    until("ticks after the restart", || async {
        for id in &ids {
            if !fired(&ctx, id)
                .await
                .iter()
                .any(|f| f.fire_ms >= restart + 2000)
            {
                return None;
            }
        }
        Some(())
    })
    .await;
    worker.stop().await;
    // For each schedule: the fire times after the gap began, split into catch-up runs and the
    // first run that was on time again (which ends the gap).
    let mut gaps = Vec::new();
    for (id, last) in ids.iter().zip(&last_before) {
        let docs = run_docs(&ctx, id).await;
        let late = |fire: i64| {
            docs.iter().any(|d| {
                d.get_i64("fire_ms").ok() == Some(fire)
                    && d.get_i32("catch_up").map(|v| v != 0).unwrap_or(false)
            })
        };
        let after: Vec<i64> = fired(&ctx, id)
            .await
            .iter()
            .map(|f| f.fire_ms)
            .filter(|t| t > last)
            .collect();
        let on_time = *after
            .iter()
            .find(|t| !late(**t))
            .expect("an on-time run after the restart");
        assert!(
            on_time - last >= 4000,
            "the gap is real: {last} → {on_time}"
        );
        let in_gap: Vec<i64> = after.into_iter().filter(|t| *t < on_time).collect();
        assert!(
            in_gap.iter().all(|t| late(*t)),
            "{in_gap:?} are catch-up runs"
        );
        gaps.push((*last, on_time, in_gap));
    }
    // `none`: nothing for the gap.
    assert!(gaps[0].2.is_empty(), "catch_up none fired {:?}", gaps[0]);
    // `latest`: one run, for the latest missed tick.
    assert_eq!(gaps[1].2.len(), 1, "catch_up latest fired {:?}", gaps[1]);
    // `all`: every missed tick.
    let (last, on_time, in_gap) = &gaps[2];
    let expected: Vec<i64> = (last + 1000..*on_time).step_by(1000).collect();
    assert_eq!(in_gap, &expected, "catch_up all");
    let all: Vec<i64> = fired(&ctx, &ids[2])
        .await
        .iter()
        .map(|f| f.fire_ms)
        .collect();
    assert_every_second(&all, "catch_up all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn code_declared_schedules_refuse_api_edits_until_detached() {
    let ctx = ctx("sched_code");
    let api = ctx.api().await;
    let spec = ScheduleSpec::new("nightly", "0 3 * * *", "noop")
        .tenant("alice")
        .timezone("Europe/Berlin");
    let worker = DeclaredWorker::start(&ctx, vec![spec.clone()]);
    let shown = until("the declared schedule", || async {
        let a = api.get("/v1/schedules/nightly", ALICE).await;
        (a.status == 200).then_some(a.body)
    })
    .await;
    assert_eq!(shown["managed_by"], "code");
    assert_eq!(shown["version"], 1);
    let a = patch(
        &api,
        "/v1/schedules/nightly",
        ALICE,
        json!({"cron": "0 4 * * *"}),
    )
    .await;
    assert_eq!((a.status, a.code()), (409, "managed_by_code"), "{}", a.body);
    let a = api
        .raw(
            reqwest::Method::DELETE,
            "/v1/schedules/nightly",
            Some(ALICE),
            None,
            &[],
        )
        .await;
    assert_eq!((a.status, a.code()), (409, "managed_by_code"), "{}", a.body);

    // A newer declaration replaces a code-managed schedule; an older one does not.
    let client = ctx.client().await;
    let sched = Schedules::new(&client, Default::default(), vec![], Default::default());
    sched
        .declare(&[spec.clone().version(2).timezone("America/New_York")])
        .await
        .unwrap();
    sched.declare(&[spec.clone().version(1)]).await.unwrap();
    let a = api.get("/v1/schedules/nightly", ALICE).await;
    assert_eq!(
        (a.body["version"].clone(), a.body["timezone"].clone()),
        (json!(2), json!("America/New_York"))
    );

    // Detach (audited), then the API may edit it, and deploys leave it alone.
    let a = api
        .post("/v1/schedules/nightly/detach", BOB, json!({}))
        .await;
    assert_eq!(a.status, 404, "another tenant cannot detach: {}", a.body);
    let a = api
        .post("/v1/schedules/nightly/detach", ALICE, json!({}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["managed_by"], "api");
    let a = api
        .post("/v1/schedules/nightly/detach", ALICE, json!({}))
        .await;
    assert_eq!((a.status, a.code()), (409, "not_managed_by_code"));
    let a = patch(
        &api,
        "/v1/schedules/nightly",
        ALICE,
        json!({"cron": "0 4 * * *"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["cron"], "0 4 * * *");
    let ignored = sched
        .declare(&[spec.clone().version(9).timezone("UTC")])
        .await
        .unwrap();
    assert_eq!(ignored, vec!["nightly".to_string()]);
    let a = api.get("/v1/schedules/nightly", ALICE).await;
    assert_eq!(
        (a.body["cron"].clone(), a.body["timezone"].clone()),
        (json!("0 4 * * *"), json!("America/New_York"))
    );
    let audit = api.get("/v1/audit?limit=500", OPS).await;
    let records = audit.body["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["action"] == "schedule.detach"
            && r["target"] == "alice/nightly"
            && r["outcome"] == "done"),
        "{}",
        audit.body
    );
    worker.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated_and_bad_input_is_refused() {
    let mut ctx = ctx("sched_tenants");
    ctx.set("JOBMILL_MAX_SCHEDULES", "2");
    let api = ctx.api().await;
    let body = json!({"name": "mine", "cron": "0 0 * * *", "job": {"kind": "noop"}});
    create(&api, ALICE, body.clone()).await;
    let a = api.post("/v1/schedules", ALICE, body.clone()).await;
    assert_eq!((a.status, a.code()), (409, "schedule_exists"));
    // Names are per tenant.
    create(&api, BOB, body.clone()).await;
    let a = api.get("/v1/schedules", BOB).await;
    let listed = a.body["schedules"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["tenant"], "bob");
    for (path, method) in [
        ("/v1/schedules/mine?tenant=alice", reqwest::Method::GET),
        (
            "/v1/schedules/mine/trigger?tenant=alice",
            reqwest::Method::POST,
        ),
        (
            "/v1/schedules/mine/pause?tenant=alice",
            reqwest::Method::POST,
        ),
    ] {
        let a = api
            .raw(
                method,
                path,
                Some(BOB),
                Some(("application/json", b"{}".to_vec())),
                &[],
            )
            .await;
        assert_eq!(a.status, 404, "{path}: {}", a.body);
    }
    // Operators and viewers read every tenant's; viewers change nothing.
    assert_eq!(
        api.get("/v1/schedules", OPS).await.body["schedules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let a = api.get("/v1/schedules/mine?tenant=alice", EYES).await;
    assert_eq!((a.status, a.body["tenant"].clone()), (200, json!("alice")));
    let a = api
        .post("/v1/schedules/mine/pause?tenant=alice", EYES, json!({}))
        .await;
    assert_eq!(a.status, 403);
    let a = api
        .post("/v1/schedules/mine/pause?tenant=alice", OPS, json!({}))
        .await;
    assert_eq!(
        (a.status, a.body["paused"].clone()),
        (200, json!(true)),
        "{}",
        a.body
    );
    // Trigger runs the job now.
    let a = api
        .post("/v1/schedules/mine/trigger", ALICE, json!({}))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["kind"], "noop");
    let shown = api.get("/v1/schedules/mine", ALICE).await;
    assert_eq!(
        shown.body["runs"][0]["job_id"], a.body["id"],
        "{}",
        shown.body
    );

    // Bad input: 4xx with a code, nothing stored.
    for (b, status, code) in [
        (
            json!({"name": "x", "cron": "* * * *", "job": {"kind": "noop"}}),
            422,
            "invalid_cron",
        ),
        (
            json!({"name": "x", "cron": "0 0 30 2 *", "job": {"kind": "noop"}}),
            422,
            "cron_never_fires",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "timezone": "Mars/Base", "job": {"kind": "noop"}}),
            422,
            "unknown_timezone",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "job": {"kind": "nope"}}),
            422,
            "unknown_kind",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "job": {"kind": "sleep", "args": {"ms": "x"}}}),
            422,
            "invalid_args",
        ),
        (
            json!({"name": "x y", "cron": "* * * * *", "job": {"kind": "noop"}}),
            422,
            "invalid_name",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "job": {"kind": "noop"}, "catch_up_within": "9y"}),
            422,
            "invalid_catch_up_within",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "job": {"kind": "noop"}, "overlap": "sometimes"}),
            422,
            "invalid_body",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "job": {"kind": "noop"}, "ends_at": "2001-01-01T00:00:00Z"}),
            422,
            "cron_never_fires",
        ),
        (
            json!({"name": "other", "cron": "* * * * *", "job": {"kind": "noop"}}),
            201,
            "",
        ),
        (
            json!({"name": "third", "cron": "* * * * *", "job": {"kind": "noop"}}),
            422,
            "too_many_schedules",
        ),
    ] {
        let a = api.post("/v1/schedules", ALICE, b.clone()).await;
        assert_eq!((a.status, a.code()), (status, code), "{b}: {}", a.body);
    }
    let a = api.get("/v1/schedules/x", ALICE).await;
    assert_eq!(a.status, 404);
    let a = patch(
        &api,
        "/v1/schedules/mine",
        ALICE,
        json!({"timezone": "Nowhere/City"}),
    )
    .await;
    assert_eq!((a.status, a.code()), (422, "unknown_timezone"));
    let a = patch(
        &api,
        "/v1/schedules/mine",
        ALICE,
        json!({"cron": "*/5 * * * * *", "timezone": "Europe/Berlin"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api
        .raw(
            reqwest::Method::DELETE,
            "/v1/schedules/mine",
            Some(ALICE),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, 204);
    assert_eq!(api.get("/v1/schedules/mine", ALICE).await.status, 404);
}
