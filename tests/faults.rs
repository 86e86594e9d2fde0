//! Nothing accepted is lost: real processes are killed and real servers flushed or stopped
//! while jobs run, and every accepted job still reaches a terminal state.

use std::time::Duration;

use jobmill_tests::{Ctx, PrivateMongo, PrivateRedis, ALICE, OPS, SIGKILL, SIGTERM};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);

async fn count_state(api: &jobmill_tests::Api, state: &str) -> usize {
    let a = api
        .get(&format!("/v1/jobs?state={state}&limit=500"), OPS)
        .await;
    a.body["jobs"].as_array().map(|v| v.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_a_worker_mid_run_loses_nothing() {
    let ctx = Ctx::new("sigkill");
    let api = ctx.api().await;
    let mut doomed = ctx.worker_process(&["--concurrency", "16"]);
    let survivor = ctx.worker_process(&["--concurrency", "16"]);
    let ids = api
        .submit_many(ALICE, 200, json!({"kind": "sleep", "args": {"ms": 300}}))
        .await;

    // Both workers busy: 32 slots, so at least 20 running means the doomed one holds jobs.
    let end = std::time::Instant::now() + LIMIT;
    while count_state(&api, "running").await < 20 {
        assert!(std::time::Instant::now() < end, "workers never got busy");
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
        if j["attempt"].as_i64().unwrap() > 1 {
            rerun += 1;
            let msg = j["errors"][0]["message"].as_str().unwrap_or("");
            assert!(msg.contains("lease expired"), "{j}");
        }
    }
    assert!(
        rerun > 0,
        "the killed worker's jobs should have been rescued and rerun"
    );
    drop(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_mid_run_loses_nothing() {
    let redis = PrivateRedis::start();
    let ctx = Ctx::on("flush", &redis.url, &jobmill_tests::shared_mongo());
    let api = ctx.api().await;
    let _w = ctx.worker_process(&["--concurrency", "8"]);
    let mut ids = api
        .submit_many(ALICE, 100, json!({"kind": "sleep", "args": {"ms": 100}}))
        .await;
    ids.extend(
        api.submit_many(ALICE, 10, json!({"kind": "noop", "delay_ms": 1500}))
            .await,
    );
    ids.extend(
        api.submit_many(
            ALICE,
            5,
            json!({"kind": "fail", "args": {"times": 1}, "max_attempts": 3}),
        )
        .await,
    );
    let end = std::time::Instant::now() + LIMIT;
    while count_state(&api, "succeeded").await < 10 {
        assert!(
            std::time::Instant::now() < end,
            "no progress before the flush"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.flushall().await;
    for id in &ids {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let _ = redis.pid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_outage_mid_run_loses_nothing() {
    let mut mongo = PrivateMongo::start();
    let ctx = Ctx::on("mongoout", &jobmill_tests::shared_redis(), &mongo.uri);
    let api = ctx.api().await;
    let _w = ctx.worker_process(&["--concurrency", "8"]);
    let ids = api
        .submit_many(ALICE, 60, json!({"kind": "sleep", "args": {"ms": 150}}))
        .await;
    let end = std::time::Instant::now() + LIMIT;
    while count_state(&api, "succeeded").await < 5 {
        assert!(
            std::time::Instant::now() < end,
            "no progress before the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mongo.down();
    // While the store is down, a submission is refused clearly (nothing accepted, no 500).
    let a = api.post("/v1/jobs", ALICE, json!({"kind": "noop"})).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.code(), "unavailable");
    tokio::time::sleep(Duration::from_secs(3)).await;
    mongo.up();
    for id in &ids {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_running_jobs_without_charging_attempts() {
    let mut ctx = Ctx::new("drain");
    ctx.set("JOBMILL_SHUTDOWN_TIMEOUT", "30s");
    let api = ctx.api().await;
    let mut w = ctx.worker_process(&["--concurrency", "4"]);
    let ids = api
        .submit_many(ALICE, 4, json!({"kind": "sleep", "args": {"ms": 1500}}))
        .await;
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
        assert_eq!(
            j["state"], "succeeded",
            "running jobs finish during the drain: {j}"
        );
        assert_eq!(j["attempt"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_unfinished_jobs_without_charging_attempts() {
    let mut ctx = Ctx::new("release");
    ctx.set("JOBMILL_SHUTDOWN_TIMEOUT", "300ms");
    let api = ctx.api().await;
    let mut w = ctx.worker_process(&["--concurrency", "4"]);
    let ids = api
        .submit_many(ALICE, 2, json!({"kind": "sleep", "args": {"ms": 4000}}))
        .await;
    for id in &ids {
        api.wait_state(ALICE, id, "running", LIMIT).await;
    }
    w.signal(SIGTERM);
    let status = w.wait_exit(Duration::from_secs(60)).expect("worker exits");
    assert!(status.success(), "{status:?}\n{}", w.output());
    for id in &ids {
        let j = api.get(&format!("/v1/jobs/{id}"), ALICE).await.body;
        assert_eq!(j["state"], "queued", "released back to the queue: {j}");
        assert_eq!(j["attempt"], 0, "the released attempt is not charged: {j}");
    }
    let next = ctx.worker();
    for id in &ids {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded");
        assert_eq!(j["attempt"], 1);
        assert!(j["errors"].as_array().unwrap().is_empty());
    }
    next.stop().await;
}

/// An API that dies between its MongoDB insert and its Redis push leaves a job that only
/// MongoDB knows. Submissions write no "pushed" confirmation any more; the reconciler's fresh
/// pass checks each new job once, a grace period after its creation, and pushes it.
/// Simulated exactly: a copy of a submitted job's document, under a fresh id, is inserted
/// straight into MongoDB, as the dead API's insert would have left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_inserted_but_never_pushed_still_runs() {
    let ctx = Ctx::new("unpushed");
    let api = ctx.api().await;
    let _w = ctx.worker_process(&["--concurrency", "4"]);
    let seen = api.submit(ALICE, json!({"kind": "noop"})).await;
    api.wait_terminal(ALICE, &seen, LIMIT).await;
    // The template waits in a queue no worker serves; its copy goes to the served one.
    let template = api
        .submit(ALICE, json!({"kind": "noop", "queue": "unserved"}))
        .await;
    let jobs = ctx
        .store()
        .await
        .database()
        .collection::<mongodb::bson::Document>("jobs");
    let find = |id: &str| jobs.find_one(mongodb::bson::doc! { "_id": id });
    let served = find(&seen).await.unwrap().expect("stored");
    let mut doc = find(&template).await.unwrap().expect("stored");
    let lost = jobmill::job::new_job_id();
    doc.insert("_id", &lost);
    doc.insert("list_key", &lost);
    doc.insert("queue", served.get_str("queue").unwrap());
    jobs.insert_one(doc).await.unwrap();
    let j = api.wait_terminal(ALICE, &lost, LIMIT).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    // The pass pushed only what Redis lacked: the template still waits where it was put.
    let t = api.get(&format!("/v1/jobs/{template}"), ALICE).await;
    assert_eq!(t.body["state"], "queued", "{}", t.body);
}
