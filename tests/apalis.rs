//! apalis handlers on jobmill queues (`jobmill-apalis`, run by the example `apalis-worker`
//! binary): jobs submitted over HTTP run on apalis workers, survive a SIGKILL of one, end as
//! the outcome table says, can be cancelled while running, and apalis pushes are deduplicated
//! by idempotency key; apalis' board traits list the same jobs, queues and workers.

use std::time::{Duration, Instant};

use jobmill::config::Config;
use jobmill_apalis::apalis_core::backend::finalize::Ephemeral;
use jobmill_apalis::apalis_core::backend::{
    Expose, Filter, ListQueues, ListTasks, ListWorkers, TaskSink,
};
use jobmill_apalis::apalis_core::task::builder::TaskBuilder;
use jobmill_apalis::apalis_core::task::status::Status;
use jobmill_apalis::{Jobmill, Kind, Kinds};
use jobmill_tests::{Api, Ctx, ALICE, OPS, SIGKILL, SIGTERM};
use jobmill_worker::WorkerConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(180);
const WORKER: &str = "apalis-worker";

/// Wait until a live worker serves `kind` (announced to the catalog), so the API accepts it.
async fn wait_kind(api: &Api, kind: &str) {
    let end = Instant::now() + LIMIT;
    loop {
        let a = api.get("/v1/kinds", ALICE).await;
        let served = a.body["kinds"].as_array().is_some_and(|ks| {
            ks.iter()
                .any(|k| k["name"] == kind && k["workers"].as_u64().unwrap_or(0) > 0)
        });
        if served {
            return;
        }
        assert!(Instant::now() < end, "kind {kind} never served: {}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count_state(api: &Api, state: &str) -> usize {
    let a = api
        .get(&format!("/v1/jobs?state={state}&limit=500"), OPS)
        .await;
    a.body["jobs"].as_array().map(|v| v.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_http_jobs_run_on_the_apalis_worker() {
    let ctx = Ctx::new("apalis_1k");
    let api = ctx.api().await;
    let _w = ctx.process(WORKER, &["--concurrency", "32"]);
    wait_kind(&api, "apalis_echo").await;
    let jobs: Vec<Value> = (0..1000)
        .map(|n| json!({"kind": "apalis_echo", "args": {"n": n}}))
        .collect();
    let ids = api.submit_jobs(ALICE, &jobs).await;
    for (n, id) in ids.iter().enumerate() {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["result"], json!({ "n": n }), "{j}");
        assert_eq!(j["attempt"], 1, "{j}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_an_apalis_worker_mid_run_loses_nothing() {
    let ctx = Ctx::new("apalis_kill");
    let api = ctx.api().await;
    let mut doomed = ctx.process(WORKER, &["--concurrency", "16"]);
    let survivor = ctx.process(WORKER, &["--concurrency", "16"]);
    wait_kind(&api, "apalis_behave").await;
    let job = json!({"kind": "apalis_behave", "args": {"mode": "ok", "ms": 300}});
    let ids = api.submit_many(ALICE, 200, job).await;

    // 32 slots over two workers: at least 20 running means the doomed one holds jobs.
    let end = Instant::now() + LIMIT;
    while count_state(&api, "running").await < 20 {
        assert!(Instant::now() < end, "workers never got busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.signal(SIGKILL);
    doomed
        .wait_exit(Duration::from_secs(10))
        .expect("worker died");

    let mut rerun = 0;
    for id in &ids {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        let attempts = j["attempt"].as_i64().unwrap();
        // A job that was not on the killed worker ran exactly once; one that was is rerun
        // once, after the rescuer found its lease expired.
        assert!(attempts <= 2, "{j}");
        if attempts > 1 {
            rerun += 1;
            let msg = j["errors"][0]["message"].as_str().unwrap_or("");
            assert!(msg.contains("lease expired"), "{j}");
        }
    }
    assert!(rerun > 0, "the killed worker's jobs should have been rerun");
    drop(survivor);
}

/// Submit one `apalis_behave` job and wait for its end.
async fn behave(api: &Api, args: Value, max_attempts: u32) -> Value {
    let id = api
        .submit(
            ALICE,
            json!({"kind": "apalis_behave", "args": args, "max_attempts": max_attempts}),
        )
        .await;
    api.wait_terminal(ALICE, &id, LIMIT).await
}

fn errors(j: &Value) -> Vec<String> {
    j["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_of_the_outcome_table() {
    let ctx = Ctx::new("apalis_outcomes");
    let api = ctx.api().await;
    let _w = ctx.process(WORKER, &["--concurrency", "8"]);
    wait_kind(&api, "apalis_behave").await;

    // Ok(value) → succeeded with the value.
    let j = behave(&api, json!({"mode": "ok"}), 3).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"], json!({"slept_ms": 0}), "{j}");
    assert_eq!(j["attempt"], 1, "{j}");

    // AbortError → failed for good after one attempt.
    let j = behave(&api, json!({"mode": "abort"}), 3).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["attempt"], 1, "{j}");
    assert!(errors(&j)[0].contains("AbortError"), "{j}");

    // RetryAfterError → retried (after its delay) until attempts are used up.
    let j = behave(&api, json!({"mode": "retry_after", "ms": 200}), 2).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["attempt"], 2, "{j}");
    let e = errors(&j);
    assert_eq!(e.len(), 2, "{j}");
    assert!(e.iter().all(|m| m.contains("RetryError")), "{j}");

    // Any other error → retried with backoff until attempts are used up.
    let j = behave(&api, json!({"mode": "error"}), 3).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["attempt"], 3, "{j}");
    assert!(
        errors(&j).iter().all(|m| m.contains("transient trouble")),
        "{j}"
    );

    // Panic → a failed attempt (retried), the message kept; the worker lives on.
    let j = behave(&api, json!({"mode": "panic"}), 2).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["attempt"], 2, "{j}");
    assert!(
        errors(&j).iter().all(|m| m.contains("panicked on purpose")),
        "{j}"
    );

    // apalis' TimeoutLayer (5 s in the example) ends a slow handler: a failed attempt.
    let j = behave(&api, json!({"mode": "sleep", "ms": 60_000}), 1).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(errors(&j)[0].contains("timed out"), "{j}");

    // A handler blocking its thread past the lease TTL (2 s in tests) keeps its lease: one
    // attempt, succeeded.
    let j = behave(&api, json!({"mode": "block", "ms": 3_500}), 3).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["attempt"], 1, "{j}");

    // The worker still serves after all that.
    let j = behave(&api, json!({"mode": "ok"}), 1).await;
    assert_eq!(j["state"], "succeeded", "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_reaches_a_running_apalis_handler() {
    let mut ctx = Ctx::new("apalis_cancel");
    // Longer than the wait below: a job ending within it was stopped through apalis'
    // TaskContext, not abandoned after the grace period.
    ctx.set("JOBMILL_CANCEL_GRACE", "600s");
    let api = ctx.api().await;
    let _w = ctx.process(WORKER, &["--concurrency", "4"]);
    wait_kind(&api, "apalis_behave").await;
    let id = api
        .submit(
            ALICE,
            json!({"kind": "apalis_behave", "args": {"mode": "wait_cancel"}}),
        )
        .await;
    api.wait_state(ALICE, &id, "running", LIMIT).await;
    let a = api
        .post(&format!("/v1/jobs/{id}/cancel"), ALICE, json!({}))
        .await;
    assert!(a.status < 300, "{}", a.body);
    let j = api.wait_terminal(ALICE, &id, LIMIT).await;
    assert_eq!(j["state"], "cancelled", "{j}");
    assert_eq!(j["attempt"], 1, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_apalis_worker_without_charging_attempts() {
    let mut ctx = Ctx::new("apalis_drain");
    ctx.set("JOBMILL_SHUTDOWN_TIMEOUT", "30s");
    let api = ctx.api().await;
    let mut w = ctx.process(WORKER, &["--concurrency", "4"]);
    wait_kind(&api, "apalis_behave").await;
    let job = json!({"kind": "apalis_behave", "args": {"mode": "ok", "ms": 1500}});
    let ids = api.submit_many(ALICE, 4, job).await;
    for id in &ids {
        api.wait_state(ALICE, id, "running", LIMIT).await;
    }
    w.signal(SIGTERM);
    let status = w
        .wait_exit(Duration::from_secs(60))
        .expect("worker exits after draining");
    assert!(status.success(), "{status:?}\n{}", w.output());
    for id in &ids {
        let j = api.get(&format!("/v1/jobs/{id}"), ALICE).await.body;
        assert_eq!(j["state"], "succeeded", "finished during the drain: {j}");
        assert_eq!(j["attempt"], 1, "{j}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_unfinished_apalis_jobs_uncharged() {
    let mut ctx = Ctx::new("apalis_release");
    ctx.set("JOBMILL_SHUTDOWN_TIMEOUT", "1s");
    let api = ctx.api().await;
    let mut w = ctx.process(WORKER, &["--concurrency", "2"]);
    wait_kind(&api, "apalis_behave").await;
    let job = json!({"kind": "apalis_behave", "args": {"mode": "ok", "ms": 4000}});
    let ids = api.submit_many(ALICE, 2, job).await;
    for id in &ids {
        api.wait_state(ALICE, id, "running", LIMIT).await;
    }
    w.signal(SIGTERM);
    let status = w
        .wait_exit(Duration::from_secs(60))
        .expect("worker exits after the drain time");
    assert!(status.success(), "{status:?}\n{}", w.output());
    // Another apalis worker picks them up; the released attempt was not charged.
    let _next = ctx.process(WORKER, &["--concurrency", "2"]);
    for id in &ids {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["attempt"], 1, "released, not charged: {j}");
    }
}

/// The example worker's `apalis_echo` args.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Echo {
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apalis_push_with_an_idempotency_key_twice_is_one_job() {
    let ctx = Ctx::new("apalis_push");
    let api = ctx.api().await;
    let _w = ctx.process(WORKER, &["--concurrency", "4"]);
    wait_kind(&api, "apalis_echo").await;

    // A pushing process: claims from a queue nothing is submitted to, serves no kinds.
    let mut vars = ctx.vars.clone();
    vars.insert("JOBMILL_QUEUES".into(), "apalis-push-only".into());
    let config = WorkerConfig::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let jobmill = Jobmill::start(config, Kinds::new())
        .await
        .unwrap()
        .tenant("alice");
    let mut sink = jobmill.sink(Kind::<Echo>::named("apalis_echo"));
    let task = || {
        TaskBuilder::new(Echo { n: 7 })
            .idempotency_key("push-once")
            .priority(5)
            .build()
    };
    sink.push_task(task()).await.unwrap();
    sink.push_task(task()).await.unwrap();
    let again = sink.submit(task()).await.unwrap();
    assert!(
        !again.created,
        "the key was used: the original job comes back"
    );

    let a = api.get("/v1/jobs?kind=apalis_echo&limit=50", ALICE).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["jobs"].as_array().unwrap().len(), 1, "{}", a.body);

    let j = api.wait_terminal(ALICE, &again.job.id, LIMIT).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"], json!({"n": 7}), "{j}");
    assert_eq!(j["priority"], 5, "{j}");
    assert_eq!(j["idempotency_key"], "push-once", "{j}");

    // apalis' board traits see the same jobs, queues and workers.
    fn exposes<B: Expose<Echo, Ephemeral>>(_: &B) {}
    exposes(&sink);
    let done = sink
        .list_tasks(&Filter {
            status: Some(Status::Done),
            page: 1,
            page_size: Some(10),
        })
        .await
        .unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].args, json!({"n": 7}));
    assert_eq!(
        done[0].task_id().map(|t| t.to_string()),
        Some(again.job.id.clone())
    );
    let queues = sink.list_queues().await.unwrap();
    assert!(queues.iter().any(|q| q.name == "default"), "{queues:?}");
    let serving = sink.list_workers().await.unwrap();
    assert_eq!(
        serving.len(),
        1,
        "only the apalis worker serves apalis_echo: {serving:?}"
    );
    let all = sink.list_all_workers().await.unwrap();
    assert_eq!(
        all.len(),
        2,
        "the apalis worker and this pushing process: {all:?}"
    );
}
