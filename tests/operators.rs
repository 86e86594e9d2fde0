//! The operator plane on real processes: roles on every operator endpoint, workers (busy
//! slots, quiet, stop, gone), queue pauses (atomic in the claim script, surviving a FLUSHALL,
//! seen alike by two API replicas), exact queue counts, and the per-minute history.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use jobmill_tests::{Api, Ctx, PrivateRedis, ALICE, EYES, OPS, SIGKILL};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);

/// [`jobmill_tests::poll_until`] with this file's [`LIMIT`].
async fn until<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    jobmill_tests::poll_until(what, LIMIT, f).await
}

async fn queue(api: &Api, name: &str) -> Option<Value> {
    let a = api.get("/v1/queues", OPS).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .cloned()
}

async fn workers(api: &Api) -> Vec<Value> {
    let a = api.get("/v1/workers", OPS).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["workers"].as_array().unwrap().clone()
}

async fn audit(api: &Api) -> Vec<Value> {
    let a = api.get("/v1/audit?limit=500", OPS).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["records"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_endpoint_checks_the_role_and_audits_actions() {
    let ctx = Ctx::new("roles");
    let api = ctx.api().await;
    let w = ctx.worker_process(&["--concurrency", "2"]);
    let wid = until("the worker registers", || async {
        workers(&api)
            .await
            .first()
            .map(|w| w["id"].as_str().unwrap().to_string())
    })
    .await;
    api.submit(ALICE, json!({"kind": "noop", "queue": "roles"}))
        .await;

    let reads = [
        "/v1/workers".to_string(),
        format!("/v1/workers/{wid}"),
        "/v1/queues".to_string(),
        "/v1/queues/roles/history?minutes=5".to_string(),
        "/v1/audit".to_string(),
    ];
    for path in &reads {
        let a = api.get(path, ALICE).await;
        assert_eq!(
            (a.status, a.code()),
            (403, "forbidden"),
            "submitter GET {path}"
        );
        let a = api.get(path, EYES).await;
        assert_eq!(a.status, 200, "viewer GET {path}: {}", a.body);
        let a = api.get(path, OPS).await;
        assert_eq!(a.status, 200, "operator GET {path}: {}", a.body);
    }
    // A viewer reads every job, like an operator.
    let a = api.get("/v1/jobs?limit=10", EYES).await;
    assert_eq!(a.status, 200);
    assert!(!a.body["jobs"].as_array().unwrap().is_empty());

    // Refused actions change nothing and leave no audit record.
    let actions = [
        "/v1/queues/roles/pause".to_string(),
        "/v1/queues/roles/resume".to_string(),
        format!("/v1/workers/{wid}/quiet"),
    ];
    for path in &actions {
        for key in [ALICE, EYES] {
            let a = api.post(path, key, json!({})).await;
            assert_eq!((a.status, a.code()), (403, "forbidden"), "POST {path}");
        }
    }
    // A viewer submits nothing either.
    let a = api.post("/v1/jobs", EYES, json!({"kind": "noop"})).await;
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    assert_eq!(queue(&api, "roles").await.unwrap()["paused"], false);
    assert_eq!(
        workers(&api).await[0]["state"],
        "running",
        "a refused quiet reached the worker"
    );
    assert!(audit(&api).await.is_empty(), "refusals are not actions");

    // An operator acts; each action has its record, written with its result.
    let a = api.post("/v1/queues/roles/pause", OPS, json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["paused"], true);
    let a = api.post("/v1/queues/roles/resume", OPS, json!({})).await;
    assert_eq!((a.status, &a.body["paused"]), (200, &json!(false)));
    let a = api
        .post(&format!("/v1/workers/{wid}/quiet"), OPS, json!({}))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    // A viewer may rotate its own signing secret: audited, and the secret is not in the record.
    let a = api
        .post("/v1/webhooks/secret/rotate", EYES, json!({}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let secret = a.body["secret"]
        .as_str()
        .unwrap_or("no-secret-field")
        .to_string();

    let records = audit(&api).await;
    let actions: Vec<(&str, &str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("eyes", "signing_secret.rotate", "eyes", "done"),
            ("ops", "worker.quiet", wid.as_str(), "done"),
            ("ops", "queue.resume", "roles", "done"),
            ("ops", "queue.pause", "roles", "done"),
        ]
    );
    assert!(!serde_json::to_string(&records).unwrap().contains(&secret));
    let worker = until("the worker turns quiet", || async {
        let a = api.get(&format!("/v1/workers/{wid}"), OPS).await;
        (a.body["state"] == "quiet").then_some(a.body)
    })
    .await;
    for field in [
        "id",
        "host",
        "pid",
        "version",
        "started_at",
        "last_heartbeat_at",
        "state",
        "queues",
        "concurrency",
        "busy",
        "rss_bytes",
        "counters",
        "jobs",
    ] {
        assert!(worker.get(field).is_some(), "{field} missing: {worker}");
    }
    // Unknown workers and bad input are 4xx.
    let a = api.get("/v1/workers/nope", OPS).await;
    assert_eq!((a.status, a.code()), (404, "not_found"));
    let a = api
        .post("/v1/queues/bad%20name/pause", OPS, json!({}))
        .await;
    assert_eq!((a.status, a.code()), (400, "invalid_queue"));
    let a = api.get("/v1/queues/roles/history?minutes=1441", OPS).await;
    assert_eq!((a.status, a.code()), (400, "invalid_minutes"));
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_show_busy_slots_and_obey_quiet_and_stop() {
    let ctx = Ctx::new("workers");
    let api = ctx.api().await;
    let mut a_proc = ctx.worker_process(&["--concurrency", "2"]);
    let mut b_proc = ctx.worker_process(&["--concurrency", "3"]);
    until("two workers register", || async {
        (workers(&api).await.len() == 2).then_some(())
    })
    .await;
    // 5 long jobs fill both workers' slots exactly.
    let long = api
        .submit_many(ALICE, 5, json!({"kind": "sleep", "args": {"ms": 4000}}))
        .await;
    let seen = until("both workers report every slot busy", || async {
        let ws = workers(&api).await;
        let full = ws.iter().all(|w| {
            w["busy"] == w["concurrency"]
                && w["jobs"].as_array().unwrap().len() == w["busy"].as_u64().unwrap() as usize
        });
        full.then_some(ws)
    })
    .await;
    let held: usize = seen
        .iter()
        .map(|w| w["jobs"].as_array().unwrap().len())
        .sum();
    assert_eq!(held, 5);
    for w in &seen {
        for j in w["jobs"].as_array().unwrap() {
            assert_eq!(j["kind"], "sleep");
            assert_eq!(j["queue"], "default");
            assert!(long.contains(&j["id"].as_str().unwrap().to_string()));
        }
    }
    let small = seen.iter().find(|w| w["concurrency"] == 2).unwrap();
    let small_id = small["id"].as_str().unwrap().to_string();
    let big_id = seen.iter().find(|w| w["concurrency"] == 3).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Quiet the small one: its running jobs finish, then it claims nothing more.
    let r = api
        .post(&format!("/v1/workers/{small_id}/quiet"), OPS, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    for id in &long {
        assert_eq!(
            api.wait_terminal(ALICE, id, LIMIT).await["state"],
            "succeeded"
        );
    }
    let before = until("the quiet worker reports quiet and idle", || async {
        let w = api.get(&format!("/v1/workers/{small_id}"), OPS).await.body;
        (w["state"] == "quiet" && w["busy"] == 0).then_some(w)
    })
    .await;
    let more = api.submit_many(ALICE, 20, json!({"kind": "noop"})).await;
    for id in &more {
        assert_eq!(
            api.wait_terminal(ALICE, id, LIMIT).await["state"],
            "succeeded"
        );
    }
    let after = until("a heartbeat after the extra jobs", || async {
        let w = api.get(&format!("/v1/workers/{small_id}"), OPS).await.body;
        (w["last_heartbeat_at"] != before["last_heartbeat_at"]).then_some(w)
    })
    .await;
    assert_eq!(
        after["counters"]["succeeded"],
        before["counters"]["succeeded"]
    );
    assert_eq!(after["state"], "quiet");
    assert!(
        a_proc.child.try_wait().unwrap().is_none(),
        "a quiet worker stays up"
    );

    // Stop the big one: it drains and exits 0.
    let r = api
        .post(&format!("/v1/workers/{big_id}/stop"), OPS, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let st = b_proc.wait_exit(LIMIT).expect("stopped worker exits");
    assert!(st.success(), "{st:?}: {}", b_proc.output());

    // SIGKILL the quiet one: it turns `gone`.
    a_proc.signal(SIGKILL);
    a_proc.wait_exit(Duration::from_secs(10)).expect("killed");
    until("the killed worker turns gone", || async {
        let w = api.get(&format!("/v1/workers/{small_id}"), OPS).await.body;
        (w["state"] == "gone").then_some(())
    })
    .await;
    let r = api
        .post(&format!("/v1/workers/{small_id}/stop"), OPS, json!({}))
        .await;
    assert_eq!((r.status, r.code()), (409, "worker_gone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_hands_out_nothing_even_after_a_flushall() {
    let redis = PrivateRedis::start();
    let mongo = std::env::var("JOBMILL_TEST_MONGODB_URI").unwrap();
    let ctx = Ctx::on("pause", &redis.url, &mongo);
    let api = ctx.api().await;
    let replica = ctx.api().await;
    let _w = ctx.worker_process(&["--concurrency", "8", "--queues", "held,canary"]);
    let r = api.post("/v1/queues/held/pause", OPS, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ids = api
        .submit_many(ALICE, 100, json!({"kind": "noop", "queue": "held"}))
        .await;

    // A canary on another queue proves the worker is claiming; still nothing of `held` ran.
    let canary = api
        .submit(ALICE, json!({"kind": "noop", "queue": "canary"}))
        .await;
    api.wait_terminal(ALICE, &canary, LIMIT).await;
    let q = queue(&replica, "held").await.unwrap();
    assert_eq!(q["paused"], true, "the other replica agrees: {q}");
    assert_eq!(q["counts"]["queued"], 100, "{q}");
    assert_eq!(q["counts"]["running"], 0, "{q}");
    let first_latency = q["latency_seconds"].as_f64().unwrap();

    // Redis loses everything; the reconciler restores the pause before the jobs. A job
    // submitted at once reaches the emptied queue before the pause flag is back: the claim
    // script hands out nothing from a queue without its epoch, so it waits too.
    redis.flushall().await;
    let late = api
        .submit(ALICE, json!({"kind": "noop", "queue": "held"}))
        .await;
    let ids: Vec<String> = ids.into_iter().chain([late]).collect();
    until("the reconciler rebuilt redis", || async {
        let q = queue(&api, "held").await?;
        (q["counts"]["queued"] == 101).then_some(())
    })
    .await;
    let canary = api
        .submit(ALICE, json!({"kind": "noop", "queue": "canary"}))
        .await;
    api.wait_terminal(ALICE, &canary, LIMIT).await;
    for a in [&api, &replica] {
        let q = queue(a, "held").await.unwrap();
        assert_eq!(q["paused"], true, "{q}");
        assert_eq!(q["counts"]["running"], 0, "{q}");
        assert_eq!(q["counts"]["queued"], 101, "{q}");
        assert!(
            q["latency_seconds"].as_f64().unwrap() >= first_latency,
            "{q}"
        );
    }
    for id in ids.iter().rev().take(10) {
        assert_eq!(
            api.get(&format!("/v1/jobs/{id}"), ALICE).await.body["state"],
            "queued"
        );
    }

    // Resume on the replica: every job runs.
    let r = replica.post("/v1/queues/held/resume", OPS, json!({})).await;
    assert_eq!((r.status, &r.body["paused"]), (200, &json!(false)));
    for id in &ids {
        assert_eq!(
            api.wait_terminal(ALICE, id, LIMIT).await["state"],
            "succeeded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_counts_are_exact_and_history_adds_up_across_restarts() {
    let mut ctx = Ctx::new("counts");
    // Retries wait long enough to be counted (full jitter up to an hour).
    ctx.set("JOBMILL_RETRY_BASE", "1h")
        .set("JOBMILL_RETRY_MAX", "1h");
    let api = ctx.api().await;
    let mut w = ctx.worker_process(&["--concurrency", "8", "--queues", "mix"]);
    // Outcomes first: 7 succeed, 3 fail for good, 2 go to `retrying`.
    let ok = api
        .submit_many(ALICE, 7, json!({"kind": "noop", "queue": "mix"}))
        .await;
    let bad = api
        .submit_many(
            ALICE,
            3,
            json!({"kind": "fail", "queue": "mix", "args": {"times": 5, "mode": "permanent"}}),
        )
        .await;
    let retry = api
        .submit_many(
            ALICE,
            2,
            json!({"kind": "fail", "queue": "mix", "max_attempts": 3, "args": {"times": 5}}),
        )
        .await;
    for id in ok.iter().chain(&bad) {
        api.wait_terminal(ALICE, id, LIMIT).await;
    }
    for id in &retry {
        api.wait_state(ALICE, id, "retrying", LIMIT).await;
    }
    // Then 3 running, 4 scheduled, 5 queued (paused, so they stay queued).
    let running = api
        .submit_many(
            ALICE,
            3,
            json!({"kind": "sleep", "queue": "mix", "args": {"ms": 60000}}),
        )
        .await;
    for id in &running {
        api.wait_state(ALICE, id, "running", LIMIT).await;
    }
    api.post("/v1/queues/mix/pause", OPS, json!({})).await;
    api.submit_many(
        ALICE,
        4,
        json!({"kind": "noop", "queue": "mix", "delay_ms": 3_600_000}),
    )
    .await;
    api.submit_many(ALICE, 5, json!({"kind": "noop", "queue": "mix"}))
        .await;

    let q = until("the history holds every outcome", || async {
        let q = queue(&api, "mix").await?;
        (q["succeeded_1h"] == 7 && q["failed_1h"] == 3).then_some(q)
    })
    .await;
    assert_eq!(
        q["counts"],
        json!({"queued": 5, "scheduled": 4, "retrying": 2, "running": 3}),
        "{q}"
    );
    assert_eq!(q["consumers"], 1, "{q}");
    assert!(q["latency_seconds"].as_f64().unwrap() >= 0.0);
    let later = until("latency grows while paused", || async {
        let l = queue(&api, "mix").await?;
        (l["latency_seconds"].as_f64()? > q["latency_seconds"].as_f64()?).then_some(l)
    })
    .await;
    assert_eq!(later["counts"]["queued"], 5);

    // Cancel the long jobs, then restart everything: the history is still there and adds up.
    for id in &running {
        api.post(&format!("/v1/jobs/{id}/cancel"), ALICE, json!({}))
            .await;
        api.wait_terminal(ALICE, id, LIMIT).await;
    }
    w.signal(jobmill_tests::SIGTERM);
    let st = w.wait_exit(LIMIT).expect("worker drains");
    assert!(st.success(), "{}", w.output());
    drop(api);
    let api = ctx.api().await;
    let h = api.get("/v1/queues/mix/history?minutes=1440", OPS).await;
    assert_eq!(h.status, 200, "{}", h.body);
    let sum = |f: &str| -> u64 {
        h.body["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[f].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("succeeded"), 7, "{}", h.body);
    assert_eq!(sum("failed"), 3, "{}", h.body);
    assert_eq!(sum("retried"), 2, "{}", h.body);
    assert_eq!(sum("cancelled"), 3, "{}", h.body);
    assert!(h.body["buckets"][0]["avg_run_seconds"].as_f64().is_some());
}

/// Parse a Prometheus text exposition with a real parser.
/// The history hook as the persister drives it: a flush whose command failed after MongoDB
/// applied it is retried with the same flush id and outcomes, and must count once; a flush
/// taken in between writes is written by the next tick; a second
/// worker process writing the same minute adds to it; a bucket written by `$inc` before the
/// per-writer layout still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_flush_retried_after_it_applied_counts_once() {
    use jobmill::observe::{AppliedOutcome, OutcomeHook};
    use jobmill::JobState;
    use jobmill_ops::history::{History, HistoryHook};
    use mongodb::bson::{doc, DateTime, Document};

    let ctx = Ctx::new("histretry");
    let store = ctx.store().await;
    let history = History::new(store.database());
    history.ensure_indexes().await.unwrap();
    let now = DateTime::now();
    let outcome = |state| AppliedOutcome {
        queue: "h".into(),
        state,
        at: now,
        run_ms: Some(7),
    };
    let first = vec![
        outcome(JobState::Succeeded),
        outcome(JobState::Succeeded),
        outcome(JobState::Failed),
    ];
    let hook = HistoryHook::new(history.clone());
    hook.record("flush-1", &first).await.unwrap();
    // The reply was lost: the persister sends the same flush again.
    hook.record("flush-1", &first).await.unwrap();
    hook.record("flush-1", &first).await.unwrap();
    hook.record("flush-2", &[outcome(JobState::Retrying)])
        .await
        .unwrap();
    // Within a second of the first write, flush-2 waits for the persister's tick (or its
    // last one, at shutdown).
    hook.tick(true).await.unwrap();
    // Another worker process, same minute, same flush id by chance.
    let other = HistoryHook::new(history.clone());
    other
        .record("flush-1", &[outcome(JobState::Succeeded)])
        .await
        .unwrap();
    // A bucket of another queue as the previous layout wrote it.
    let minute = now.timestamp_millis() - now.timestamp_millis().rem_euclid(60_000);
    store
        .database()
        .collection::<Document>(jobmill_ops::history::HISTORY)
        .insert_one(doc! {
            "_id": format!("old|{minute}"),
            "queue": "old",
            "minute": DateTime::from_millis(minute),
            "succeeded": 4_i64,
        })
        .await
        .unwrap();
    HistoryHook::new(history.clone())
        .record(
            "flush-9",
            &[AppliedOutcome {
                queue: "old".into(),
                ..outcome(JobState::Succeeded)
            }],
        )
        .await
        .unwrap();

    let total = |v: &jobmill_ops::history::HistoryView,
                 f: fn(&jobmill_ops::history::Minute) -> u64| {
        v.buckets.iter().map(f).sum::<u64>()
    };
    let h = history.minutes("h", 5).await.unwrap();
    assert_eq!(total(&h, |m| m.succeeded), 3, "{h:?}");
    assert_eq!(total(&h, |m| m.failed), 1, "{h:?}");
    assert_eq!(total(&h, |m| m.retried), 1, "{h:?}");
    assert!(
        h.buckets.iter().all(|m| m.avg_run_seconds == Some(0.007)),
        "{h:?}"
    );
    let old = history.minutes("old", 5).await.unwrap();
    assert_eq!(total(&old, |m| m.succeeded), 5, "{old:?}");
    let recent = history.recent().await.unwrap();
    assert_eq!(recent["h"].last_60m.succeeded, 3);
    assert_eq!(recent["h"].last_60m.failed, 1);
}

/// Concurrent single submissions share an insert and one Redis push per group, and each is
/// answered only after its group's push: the queue counts every answered job at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_submissions_are_queued_when_answered() {
    let ctx = Ctx::new("group");
    let api = ctx.api().await;
    let ids = futures::future::join_all(
        (0..64).map(|_| api.submit(ALICE, json!({"kind": "noop", "queue": "grp"}))),
    )
    .await;
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 64);
    let q = queue(&api, "grp").await.expect("the queue is listed");
    assert_eq!(q["counts"]["queued"], 64, "{q}");
    for id in &ids {
        let j = api.get(&format!("/v1/jobs/{id}"), ALICE).await;
        assert_eq!((j.status, &j.body["state"]), (200, &json!("queued")));
    }
}

fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric}: unexpected {other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_metrics_endpoints_parse_and_count_what_ran() {
    let mut ctx = Ctx::new("metrics");
    ctx.set("JOBMILL_METRICS_TOKEN", "scrape-token-0123456789")
        .set("JOBMILL_WEBHOOK_ALLOW", "127.0.0.1")
        .set("JOBMILL_WEBHOOK_RETRY_BASE", "100ms");
    let api = ctx.api().await;
    let port = jobmill_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _w = ctx.worker_process(&["--queues", "m,webhooks", "--metrics-addr", &addr]);
    let ok = api
        .submit_many(ALICE, 5, json!({"kind": "noop", "queue": "m"}))
        .await;
    let bad = api
        .submit_many(
            ALICE,
            2,
            json!({"kind": "fail", "queue": "m", "args": {"times": 1, "mode": "permanent"}}),
        )
        .await;
    for id in ok.iter().chain(&bad) {
        api.wait_terminal(ALICE, id, LIMIT).await;
    }
    let http = reqwest::Client::new();
    let text = until("the worker serves metrics", || async {
        let r = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    })
    .await;
    let s = parse_metrics(&text);
    let jobs = |kind: &str, outcome: &str| {
        sample(
            &s,
            "jobmill_jobs_total",
            &[("queue", "m"), ("kind", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(jobs("noop", "succeeded"), Some(5.0), "{text}");
    assert_eq!(jobs("fail", "failed"), Some(2.0), "{text}");
    assert_eq!(
        sample(&s, "jobmill_worker_slots", &[]),
        Some(16.0),
        "{text}"
    );
    assert!(
        sample(&s, "jobmill_worker_busy_slots", &[]).is_some(),
        "{text}"
    );
    assert!(
        sample(&s, "jobmill_unrecorded_outcomes", &[]).is_some(),
        "{text}"
    );
    assert!(
        text.contains("jobmill_job_duration_seconds_bucket"),
        "{text}"
    );

    // Webhook deliveries by recorded status: a loopback receiver that takes `/ok` and answers
    // `/gone` with 410, and another that fails once with 500 before taking it.
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = axum::Router::new()
        .route("/ok", axum::routing::post(|| async { StatusCode::OK }))
        .route("/gone", axum::routing::post(|| async { StatusCode::GONE }))
        .route(
            "/flaky",
            axum::routing::post(move || {
                let failed_once = failed_once.clone();
                async move {
                    if failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rx_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    for path in ["ok", "gone", "flaky"] {
        api.submit_many(
            ALICE,
            1,
            json!({"kind": "noop", "queue": "m", "callback_url": format!("http://{rx_addr}/{path}")}),
        )
        .await;
    }
    let deliveries = |s: &prometheus_parse::Scrape, status: &str| {
        sample(s, "jobmill_webhook_deliveries_total", &[("status", status)]).unwrap_or(0.0)
    };
    let text = until("the worker counts every delivery status", || async {
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let s = parse_metrics(&text);
        (deliveries(&s, "delivered") >= 2.0 && deliveries(&s, "gone") >= 1.0).then_some(text)
    })
    .await;
    let s = parse_metrics(&text);
    assert_eq!(deliveries(&s, "delivered"), 2.0, "{text}");
    assert_eq!(deliveries(&s, "gone"), 1.0, "{text}");
    assert_eq!(
        deliveries(&s, "pending"),
        1.0,
        "the flaky receiver's 500: {text}"
    );
    assert_eq!(deliveries(&s, "failed"), 0.0, "{text}");

    // The API's fleet view: a viewer key or the scrape token, never a submitter.
    api.post("/v1/queues/m/pause", OPS, json!({})).await;
    api.submit_many(ALICE, 3, json!({"kind": "noop", "queue": "m"}))
        .await;
    let fetch = |key: &'static str| {
        let http = http.clone();
        let url = format!("{}/metrics", api.base);
        async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(fetch(ALICE).await.0, 403);
    assert_eq!(fetch("not-a-key-at-all-000").await.0, 401);
    let (status, text) = fetch(EYES).await;
    assert_eq!(status, 200, "{text}");
    let (status, by_token) = fetch("scrape-token-0123456789").await;
    assert_eq!(status, 200, "{by_token}");
    let s = parse_metrics(&text);
    assert_eq!(
        sample(
            &s,
            "jobmill_queue_jobs",
            &[("queue", "m"), ("state", "queued")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&s, "jobmill_queue_paused", &[("queue", "m")]),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&s, "jobmill_queue_latency_seconds", &[("queue", "m")]).is_some());
    assert_eq!(
        sample(&s, "jobmill_workers", &[("state", "running")]),
        Some(1.0),
        "{text}"
    );
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

/// Reads events off a streaming answer.
struct SseReader {
    res: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(api: &Api, path: &str, key: &str, last_id: Option<&str>) -> (u16, SseReader) {
        let mut req = api.http.get(format!("{}{path}", api.base)).bearer_auth(key);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let res = req.send().await.unwrap();
        (
            res.status().as_u16(),
            SseReader {
                res,
                buf: String::new(),
            },
        )
    }

    /// The next event, or `None` when the server closed the stream.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if event.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(Sse {
                    event,
                    id,
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                });
            }
            let chunk = tokio::time::timeout(LIMIT, self.res.chunk())
                .await
                .expect("stream stalled")
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stream_resumes_from_last_event_id_without_missing_a_state() {
    let ctx = Ctx::new("sse");
    let api = ctx.api().await;
    let _w = ctx.worker_process(&["--queues", "s"]);
    api.post("/v1/queues/s/pause", OPS, json!({})).await;
    let id = api
        .submit(
            ALICE,
            json!({"kind": "sleep", "queue": "s", "args": {"ms": 300}}),
        )
        .await;
    let path = format!("/v1/jobs/{id}/events");
    // Someone else's job is not found; a viewer may watch it.
    assert_eq!(
        SseReader::open(&api, &path, jobmill_tests::BOB, None)
            .await
            .0,
        404
    );
    assert_eq!(SseReader::open(&api, &path, EYES, None).await.0, 200);

    let (status, mut first) = SseReader::open(&api, &path, ALICE, None).await;
    assert_eq!(status, 200);
    let e = first.next().await.expect("the current state at once");
    assert_eq!(
        (e.event.as_str(), &e.data["state"]),
        ("state", &json!("queued"))
    );
    let last = e.id.clone();
    drop(first);

    // While nobody listens, the job runs and finishes.
    api.post("/v1/queues/s/resume", OPS, json!({})).await;
    api.wait_terminal(ALICE, &id, LIMIT).await;

    let (_, mut resumed) = SseReader::open(&api, &path, ALICE, Some(&last)).await;
    let mut seen = Vec::new();
    while let Some(e) = resumed.next().await {
        assert!(
            e.id.parse::<i64>().unwrap() > last.parse::<i64>().unwrap(),
            "{e:?}"
        );
        seen.push(e);
    }
    let end = seen.last().expect("the final state");
    assert_eq!(
        (end.event.as_str(), &end.data["state"]),
        ("state", &json!("succeeded"))
    );
    // Resuming at the terminal revision sends nothing and closes.
    let (_, mut done) = SseReader::open(&api, &path, ALICE, Some(&end.id)).await;
    assert!(done.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_stream_sees_every_job_finish_on_two_replicas() {
    let ctx = Ctx::new("fleet");
    let api = ctx.api().await;
    let replica = ctx.api().await;
    let a = SseReader::open(&api, "/v1/events?queue=f&state=succeeded", EYES, None).await;
    let b = SseReader::open(&replica, "/v1/events?queue=f", OPS, None).await;
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(
        SseReader::open(&api, "/v1/events", ALICE, None).await.0,
        403
    );
    let (mut a, mut b) = (a.1, b.1);
    let _w = ctx.worker_process(&["--queues", "f"]);
    // A job on another queue is filtered out.
    api.submit(ALICE, json!({"kind": "noop", "queue": "other"}))
        .await;
    let ids = api
        .submit_many(ALICE, 200, json!({"kind": "noop", "queue": "f"}))
        .await;
    for reader in [&mut a, &mut b] {
        let mut done = std::collections::HashSet::new();
        while done.len() < ids.len() {
            let e = reader.next().await.expect("stream open");
            assert_eq!(e.event, "state");
            assert_eq!(e.data["queue"], "f", "{e:?}");
            if e.data["state"] == "succeeded" {
                done.insert(e.data["id"].as_str().unwrap().to_string());
            }
        }
        assert!(ids.iter().all(|id| done.contains(id)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_filter_by_owner_and_creation_time() {
    let ctx = Ctx::new("filters");
    let api = ctx.api().await;
    let early = api
        .submit(ALICE, json!({"kind": "noop", "queue": "nobody"}))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = api
        .submit(ALICE, json!({"kind": "noop", "queue": "nobody"}))
        .await;
    let bobs = api
        .submit(
            jobmill_tests::BOB,
            json!({"kind": "noop", "queue": "nobody"}),
        )
        .await;
    let ids = |a: &jobmill_tests::Answer| -> Vec<String> {
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let cut = cut.replace('+', "%2B");
    assert_eq!(
        ids(&api.get("/v1/jobs?owner=alice", EYES).await),
        vec![late.clone(), early.clone()]
    );
    assert_eq!(
        ids(&api.get("/v1/jobs?owner=bob", OPS).await),
        vec![bobs.clone()]
    );
    assert_eq!(
        ids(&api.get(&format!("/v1/jobs?created_after={cut}"), OPS).await),
        vec![bobs.clone(), late.clone()]
    );
    assert_eq!(
        ids(&api
            .get(&format!("/v1/jobs?created_before={cut}"), ALICE)
            .await),
        vec![early.clone()]
    );
    let a = api.get("/v1/jobs?owner=bob", ALICE).await;
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = api.get("/v1/jobs?created_after=yesterday", OPS).await;
    assert_eq!((a.status, a.code()), (400, "invalid_filter"));
}

/// Run the built `jobmill` binary against `api` with `key`.
async fn cli(api: &Api, key: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(jobmill_tests::bin("jobmill"))
        .args(["--url", &api.base, "--key", key])
        .args(args)
        .env_remove("JOBMILL_URL")
        .env_remove("JOBMILL_KEY")
        .output()
        .await
        .expect("run jobmill");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_waits_lists_and_reports_errors() {
    let ctx = Ctx::new("cli");
    let api = ctx.api().await;
    let _w = ctx.worker_process(&["--queues", "default"]);

    let (code, out, err) = cli(
        &api,
        ALICE,
        &["--json", "submit", "noop", "--args", "{}", "--wait"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let job: Value = serde_json::from_str(out.trim()).expect("--json parses");
    assert_eq!(job["state"], "succeeded");

    let (code, out, err) = cli(
        &api,
        ALICE,
        &[
            "--json",
            "submit",
            "fail",
            "--args",
            r#"{"times": 5, "mode": "permanent"}"#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let failed: Value = serde_json::from_str(out.trim()).unwrap();
    let id = failed["id"].as_str().unwrap().to_string();
    let (code, out, _) = cli(&api, ALICE, &["wait", &id]).await;
    assert_ne!(code, 0, "a failed job's wait must fail: {out}");
    assert!(out.contains("failed"), "{out}");

    let (code, out, _) = cli(&api, ALICE, &["--json", "ls", "--limit", "5"]).await;
    assert_eq!(code, 0);
    let page: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    let (code, out, _) = cli(&api, OPS, &["queues"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("QUEUE") && out.contains("default"), "{out}");
    let (code, out, _) = cli(&api, OPS, &["workers"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("running"), "{out}");

    // API errors show the code and message, with a non-zero exit.
    let (code, _, err) = cli(&api, ALICE, &["queues", "pause", "default"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("forbidden"), "{err}");
    let (code, _, err) = cli(&api, ALICE, &["submit", "no_such_kind"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unknown_kind"), "{err}");

    // Bulk retry by filter: a dry-run count, a refusal without a terminal or --yes, then the
    // bulk action job, which retries the one failed job once.
    let retry = |extra: &'static [&'static str]| {
        let mut a = vec![
            "--json",
            "retry",
            "--filter",
            "state=failed",
            "--filter",
            "kind=fail",
        ];
        a.extend_from_slice(extra);
        a
    };
    let (code, out, err) = cli(&api, OPS, &retry(&["--dry-run"])).await;
    assert_eq!(code, 0, "{out}{err}");
    let counted: Value = serde_json::from_str(out.trim()).expect("--json parses");
    assert_eq!(counted, json!({"count": 1, "exact": true}));
    let (code, _, err) = cli(&api, OPS, &retry(&[])).await;
    assert_eq!(code, 2, "no terminal and no --yes: {err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}"), ALICE).await.body["attempt"],
        1,
        "nothing retried without confirmation"
    );
    let (code, _, err) = cli(&api, ALICE, &retry(&["--yes"])).await;
    assert_eq!(code, 1, "a submitter may not: {err}");
    assert!(err.contains("forbidden"), "{err}");
    let (code, _, err) = cli(&api, OPS, &["retry", "--filter", "colour=red", "--yes"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key"), "{err}");
    let (code, out, err) = cli(&api, OPS, &retry(&["--yes"])).await;
    assert_eq!(code, 0, "{out}{err}");
    let bulk: Value = serde_json::from_str(out.trim()).expect("--json parses");
    let bulk_id = bulk["id"]
        .as_str()
        .expect("the bulk action job")
        .to_string();
    let done = api.wait_terminal(OPS, &bulk_id, LIMIT).await;
    assert_eq!(done["result"]["acted_on"], 1, "{done}");
    let j = until("the failed job ran again", || async {
        let j = api.get(&format!("/v1/jobs/{id}"), ALICE).await.body;
        (j["attempt"] == 2 && j["state"] == "failed").then_some(j)
    })
    .await;
    assert_eq!(j["attempt"], 2, "{j}");

    let (code, out, _) = cli(&api, ALICE, &["completions", "bash"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("jobmill"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_counts_then_retries_each_once_and_discard_spares_live_jobs() {
    let ctx = Ctx::new("bulk");
    let api = ctx.api().await;
    let _w = ctx.worker_process(&["--queues", "default,b", "--concurrency", "8"]);
    let failing = api.submit_many(
        ALICE,
        30,
        json!({"kind": "fail", "queue": "b", "args": {"times": 9, "mode": "permanent", "message": "boom 42"}}),
    )
    .await;
    let fine = api
        .submit_many(ALICE, 5, json!({"kind": "noop", "queue": "b"}))
        .await;
    for id in failing.iter().chain(&fine) {
        api.wait_terminal(ALICE, id, LIMIT).await;
    }
    // Live jobs that no action may touch: queued in a paused queue.
    api.post("/v1/queues/held/pause", OPS, json!({})).await;
    let live = api
        .submit_many(ALICE, 4, json!({"kind": "noop", "queue": "held"}))
        .await;

    let filter = json!({"kind": "fail", "state": "failed", "error_contains": "boom 42"});
    let mut dry = filter.clone();
    dry["dry_run"] = json!(true);
    let a = api.post("/v1/jobs/actions/retry", ALICE, dry.clone()).await;
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = api.post("/v1/jobs/actions/retry", EYES, dry.clone()).await;
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = api.post("/v1/jobs/actions/retry", OPS, dry.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"count": 30, "exact": true}));
    let a = api
        .post(
            "/v1/jobs/actions/retry",
            OPS,
            json!({"state": "running", "dry_run": true}),
        )
        .await;
    assert_eq!(
        a.body,
        json!({"count": 0, "exact": true}),
        "retry never applies to running jobs"
    );
    let a = api
        .post("/v1/jobs/actions/retry", OPS, json!({"state": "nope"}))
        .await;
    assert_eq!((a.status, a.code()), (400, "invalid_filter"));

    let a = api.post("/v1/jobs/actions/retry", OPS, filter).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let bulk_id = a.body["id"].as_str().unwrap().to_string();
    let done = api.wait_terminal(OPS, &bulk_id, LIMIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["acted_on"], 30, "{done}");
    for id in &failing {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        // Failed once, retried once, failed again: exactly two attempts.
        assert_eq!(j["attempt"], 2, "{j}");
    }

    // Discard every finished job of this test: the live ones stay.
    let a = api
        .post("/v1/jobs/actions/discard", OPS, json!({"dry_run": true}))
        .await;
    let finished = a.body["count"].as_u64().unwrap();
    assert!(finished >= 35, "{}", a.body);
    let a = api.post("/v1/jobs/actions/discard", OPS, json!({})).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let bulk2 = a.body["id"].as_str().unwrap().to_string();
    api.wait_terminal(OPS, &bulk2, LIMIT).await;
    for id in failing.iter().chain(&fine) {
        // The API forgets its cached copy on the change event the discard publishes.
        until("a discarded job is gone", || async {
            (api.get(&format!("/v1/jobs/{id}"), ALICE).await.status == 404).then_some(())
        })
        .await;
    }
    for id in &live {
        let j = api.get(&format!("/v1/jobs/{id}"), ALICE).await;
        assert_eq!((j.status, &j.body["state"]), (200, &json!("queued")));
    }
    let actions: Vec<String> = audit(&api)
        .await
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect();
    assert!(actions.contains(&"jobs.retry".to_string()), "{actions:?}");
    assert!(actions.contains(&"jobs.discard".to_string()), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_retry_killed_mid_way_still_retries_each_job_once() {
    let ctx = Ctx::new("bulkkill");
    let api = ctx.api().await;
    // Worker B runs the jobs (and their reruns); A and then C run the bulk action.
    let _b = ctx.worker_process(&["--queues", "b", "--concurrency", "16"]);
    let mut failing = Vec::new();
    for _ in 0..4 {
        failing.extend(
            api.submit_many(
                ALICE,
                150,
                json!({"kind": "fail", "queue": "b", "args": {"times": 9, "mode": "permanent"}}),
            )
            .await,
        );
    }
    for id in &failing {
        api.wait_terminal(ALICE, id, LIMIT).await;
    }
    let mut a = ctx.worker_process(&["--queues", "default"]);
    let r = api
        .post(
            "/v1/jobs/actions/retry",
            OPS,
            json!({"kind": "fail", "state": "failed"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let bulk = r.body["id"].as_str().unwrap().to_string();
    // Kill it once it has made progress (or, on a fast machine, whenever it is running).
    until("the bulk action runs", || async {
        let j = api.get(&format!("/v1/jobs/{bulk}"), OPS).await.body;
        (j["state"] == "running" || jobmill_tests::is_terminal(&j)).then_some(())
    })
    .await;
    a.signal(SIGKILL);
    a.wait_exit(Duration::from_secs(10)).expect("killed");
    let _c = ctx.worker_process(&["--queues", "default"]);
    let done = api.wait_terminal(OPS, &bulk, LIMIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    for id in &failing {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["attempt"], 2, "retried exactly once: {j}");
    }
}
