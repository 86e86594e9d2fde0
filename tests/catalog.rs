//! The kinds catalog: internal kinds are internal, a user's kind runs through the stock API
//! without rebuilding it (the `examples/custom-kind` worker announces it), schema errors name
//! their JSON Pointer, and a worker that does not serve a kind never fails its jobs.

use std::time::{Duration, Instant};

use jobmill_tests::{Api, Ctx, ALICE, OPS, SIGTERM};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// The catalog as `GET /v1/kinds` shows it, by name.
async fn kinds(api: &Api) -> Vec<Value> {
    let a = api.get("/v1/kinds", ALICE).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["kinds"].as_array().cloned().unwrap_or_default()
}

async fn kind(api: &Api, name: &str) -> Option<Value> {
    kinds(api).await.into_iter().find(|k| k["name"] == name)
}

/// Wait until `done` holds for the catalog entry of `name` (a hang fails after `LIMIT`).
async fn wait_kind(api: &Api, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + LIMIT;
    loop {
        if let Some(k) = kind(api, name).await.filter(|k| done(k)) {
            return k;
        }
        assert!(
            Instant::now() < end,
            "kind {name} never reached the state wanted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_kinds_are_refused_like_unknown_ones_and_never_listed() {
    let ctx = Ctx::new("internal");
    let api = ctx.api().await;
    for key in [ALICE, OPS] {
        let a = api
            .post(
                "/v1/jobs",
                key,
                json!({"kind": "webhook_delivery", "args": {"delivery_id": "dlv_x"}}),
            )
            .await;
        assert_eq!(a.status, 422, "{}", a.body);
        assert_eq!(a.code(), "unknown_kind");
        let msg = a.body["error"]["message"].as_str().unwrap();
        assert!(!msg.contains("webhook_delivery"), "{msg}");
        assert!(msg.contains("noop"), "the public kinds are named: {msg}");
    }
    let all = kinds(&api).await;
    let names: Vec<&str> = all.iter().filter_map(|k| k["name"].as_str()).collect();
    assert!(!names.contains(&"webhook_delivery"), "{names:?}");
    for public in [
        "noop",
        "sleep",
        "fail",
        "file_assembly",
        "bulk_import",
        "cache_rebuild",
    ] {
        assert!(names.contains(&public), "{public} missing from {names:?}");
    }
    let sleep = all.iter().find(|k| k["name"] == "sleep").unwrap();
    assert_eq!(sleep["defaults"]["queue"], "default");
    assert!(sleep["schema"]["properties"]["ms"].is_object(), "{sleep}");
    assert_eq!(sleep["workers"], 0, "no worker runs yet");
    // Nothing was stored by the refusals.
    let listed = api.get("/v1/jobs", OPS).await;
    assert_eq!(listed.body["jobs"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_kind_runs_through_the_stock_api_without_a_restart() {
    let ctx = Ctx::new("userkind");
    let api = ctx.api().await;
    let unknown = api
        .post(
            "/v1/jobs",
            ALICE,
            json!({"kind": "greet", "args": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(unknown.status, 422);
    assert_eq!(unknown.code(), "unknown_kind");

    // The user's worker starts: it announces `greet`, and the same API accepts it.
    let mut custom = ctx.process("custom-kind-worker", &["--queues", "default"]);
    let greet = wait_kind(&api, "greet", |k| k["workers"].as_u64() >= Some(1)).await;
    assert_eq!(
        greet["schema"]["properties"]["times"]["maximum"], 10,
        "{greet}"
    );

    // Bad args are refused with the JSON Pointer of each problem.
    for (args, path) in [
        (json!({"name": ""}), "/name"),
        (json!({"name": "Ada", "times": 11}), "/times"),
        (json!({"name": "Ada", "surprise": 1}), ""),
    ] {
        let a = api
            .post("/v1/jobs", ALICE, json!({"kind": "greet", "args": args}))
            .await;
        assert_eq!(a.status, 422, "{args}: {}", a.body);
        assert_eq!(a.code(), "invalid_args");
        let details = a.body["error"]["details"].as_array().cloned().unwrap();
        assert!(
            details.iter().any(|d| d["path"] == path),
            "{args}: no problem at '{path}' in {details:?}"
        );
    }

    // Stop the user's worker; a stock worker that does not serve `greet` takes the queue. It
    // must not fail `greet` jobs: they wait, uncharged, while its own kinds run.
    custom.signal(SIGTERM);
    assert!(custom.wait_exit(LIMIT).is_some(), "{}", custom.output());
    let stock = ctx.worker_process(&["--queues", "default"]);
    let mut greets = Vec::new();
    for i in 0..10 {
        greets.push(
            api.submit(
                ALICE,
                json!({"kind": "greet", "args": {"name": format!("n{i}"), "times": 2}}),
            )
            .await,
        );
    }
    let mut noops = Vec::new();
    for _ in 0..10 {
        noops.push(api.submit(ALICE, json!({"kind": "noop"})).await);
    }
    for id in &noops {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    for id in &greets {
        let j = api.get(&format!("/v1/jobs/{id}"), ALICE).await.body;
        let state = j["state"].as_str().unwrap();
        assert!(
            !["succeeded", "failed", "cancelled"].contains(&state),
            "not ended: {j}"
        );
        assert_eq!(j["errors"].as_array().map(Vec::len), Some(0), "{j}");
    }

    // The user's worker comes back: every `greet` job runs once and succeeds.
    let _custom = ctx.process("custom-kind-worker", &["--queues", "default"]);
    for id in &greets {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["attempt"], 1, "deferrals are not charged: {j}");
        assert!(j["result"]["greeting"]
            .as_str()
            .unwrap()
            .starts_with("Hello, n"));
    }
    drop(stock);
}
