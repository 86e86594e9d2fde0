//! A job's life through the real API, Redis, MongoDB and an in-process worker: success,
//! retries, timeout, panic, permanent failure, cancel, retry, scheduling, ETag and long-poll.

use std::time::Duration;

use jobmill_tests::{Ctx, ALICE};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_run_succeed_then_list_etag_and_long_poll() {
    let ctx = Ctx::new("happy");
    let api = ctx.api().await;
    let worker = ctx.worker();

    let a = api
        .post("/v1/jobs", ALICE, json!({"kind": "noop", "args": {"n": 7}}))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.headers["location"], format!("/v1/jobs/{id}").as_str());
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    for field in [
        "id",
        "kind",
        "queue",
        "priority",
        "state",
        "attempt",
        "max_attempts",
        "progress",
        "result",
        "errors",
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
    ] {
        assert!(a.body.get(field).is_some(), "missing {field}: {}", a.body);
    }

    let done = api.wait_terminal(ALICE, &id, LIMIT).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"], json!({"n": 7}));
    assert_eq!(done["attempt"], 1);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    // The listing shows it.
    let list = api.get("/v1/jobs?state=succeeded&kind=noop", ALICE).await;
    assert_eq!(list.status, 200);
    assert!(list.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));

    // ETag / If-None-Match.
    let first = api.get(&format!("/v1/jobs/{id}"), ALICE).await;
    let tag = first.headers["etag"].to_str().unwrap().to_string();
    let again = api
        .raw(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}"),
            Some(ALICE),
            None,
            &[("if-none-match", &tag)],
        )
        .await;
    assert_eq!(again.status, 304);
    let stale = api
        .raw(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}"),
            Some(ALICE),
            None,
            &[("if-none-match", "\"nope\"")],
        )
        .await;
    assert_eq!(stale.status, 200);

    // ?wait= on a finished job answers at once (it cannot change any more).
    let w = api.get(&format!("/v1/jobs/{id}?wait=30"), ALICE).await;
    assert_eq!(w.status, 200);
    assert_eq!(w.body["state"], "succeeded");

    // ?wait= with If-None-Match holds until the job changes: a sleep job moves from its
    // current tag to a newer one.
    let sleeper = api
        .submit(ALICE, json!({"kind": "sleep", "args": {"ms": 400}}))
        .await;
    let cur = api.get(&format!("/v1/jobs/{sleeper}"), ALICE).await;
    let tag = cur.headers["etag"].to_str().unwrap().to_string();
    let changed = api
        .raw(
            reqwest::Method::GET,
            &format!("/v1/jobs/{sleeper}?wait=30"),
            Some(ALICE),
            None,
            &[("if-none-match", &tag)],
        )
        .await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.headers["etag"].to_str().unwrap(), tag);
    let end = api.wait_terminal(ALICE, &sleeper, LIMIT).await;
    assert_eq!(end["state"], "succeeded");
    assert_eq!(
        end["progress"]["done"], 400,
        "sleep reports progress: {end}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_one_error_per_attempt() {
    let ctx = Ctx::new("retries");
    let api = ctx.api().await;
    let worker = ctx.worker();

    let exhausted = api
        .submit(
            ALICE,
            json!({"kind": "fail", "args": {"times": 5}, "max_attempts": 3}),
        )
        .await;
    let recovers = api
        .submit(
            ALICE,
            json!({"kind": "fail", "args": {"times": 2}, "max_attempts": 3}),
        )
        .await;

    let j = api.wait_terminal(ALICE, &exhausted, LIMIT).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["attempt"], 3);
    let errors = j["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{j}");
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["attempt"], i as i64 + 1);
        assert_eq!(e["message"], format!("planned failure {} of 5", i + 1));
    }
    // Attempts happen one after the other (their failure times are ordered).
    let ats: Vec<&str> = errors.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(ats.windows(2).all(|w| w[0] <= w[1]), "{ats:?}");

    let j = api.wait_terminal(ALICE, &recovers, LIMIT).await;
    assert_eq!(j["state"], "succeeded");
    assert_eq!(j["attempt"], 3);
    assert_eq!(j["errors"].as_array().unwrap().len(), 2);
    assert_eq!(j["result"], json!({"succeeded_on_attempt": 3}));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_panic_and_permanent_failure() {
    let ctx = Ctx::new("outcomes");
    let api = ctx.api().await;
    let worker = ctx.worker();

    let timeout = api
        .submit(
            ALICE,
            json!({"kind": "sleep", "args": {"ms": 30000}, "timeout_ms": 200, "max_attempts": 1}),
        )
        .await;
    let panic = api
        .submit(ALICE, json!({"kind": "fail", "args": {"times": 9, "mode": "panic", "message": "kaboom"}, "max_attempts": 2}))
        .await;
    let permanent = api
        .submit(ALICE, json!({"kind": "fail", "args": {"times": 9, "mode": "permanent", "message": "bad input"}, "max_attempts": 5}))
        .await;

    let j = api.wait_terminal(ALICE, &timeout, LIMIT).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["errors"][0]["message"], "timed out after 200 ms");

    let j = api.wait_terminal(ALICE, &panic, LIMIT).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(
        j["attempt"], 2,
        "a panic is a failed attempt that is retried: {j}"
    );
    assert_eq!(j["errors"][0]["message"], "panicked: kaboom");

    let j = api.wait_terminal(ALICE, &permanent, LIMIT).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["attempt"], 1, "a permanent failure is not retried: {j}");
    assert_eq!(j["errors"][0]["message"], "bad input");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running_then_retry() {
    let ctx = Ctx::new("cancel");
    let api = ctx.api().await;
    let worker = ctx.worker();

    // A scheduled job is cancelled at once.
    let later = api
        .submit(ALICE, json!({"kind": "noop", "delay_ms": 60000}))
        .await;
    let a = api
        .post(&format!("/v1/jobs/{later}/cancel"), ALICE, json!(null))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["state"], "cancelled");

    // A running job's handler is told to stop and the job ends cancelled.
    let running = api
        .submit(ALICE, json!({"kind": "sleep", "args": {"ms": 60000}}))
        .await;
    api.wait_state(ALICE, &running, "running", LIMIT).await;
    let a = api
        .post(&format!("/v1/jobs/{running}/cancel"), ALICE, json!(null))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["cancel_requested"], true);
    let j = api.wait_terminal(ALICE, &running, LIMIT).await;
    assert_eq!(j["state"], "cancelled");

    // A handler that answers its cancellation with "retry" still ends the job cancelled, with
    // no further attempt: a cancel answered 202 is never lost.
    let stubborn = api
        .submit(
            ALICE,
            json!({"kind": "sleep", "args": {"ms": 60000, "on_cancel": "retry"}, "max_attempts": 5}),
        )
        .await;
    api.wait_state(ALICE, &stubborn, "running", LIMIT).await;
    let a = api
        .post(&format!("/v1/jobs/{stubborn}/cancel"), ALICE, json!(null))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let j = api.wait_terminal(ALICE, &stubborn, LIMIT).await;
    assert_eq!(j["state"], "cancelled", "{j}");
    assert_eq!(j["attempt"], 1, "no further attempt: {j}");

    // A terminal job cannot be cancelled.
    let a = api
        .post(&format!("/v1/jobs/{running}/cancel"), ALICE, json!(null))
        .await;
    assert_eq!(a.status, 409);
    assert_eq!(a.code(), "not_cancellable");

    // A failed job is retried with a fresh attempt budget.
    let flaky = api
        .submit(
            ALICE,
            json!({"kind": "fail", "args": {"times": 1}, "max_attempts": 1}),
        )
        .await;
    let j = api.wait_terminal(ALICE, &flaky, LIMIT).await;
    assert_eq!(j["state"], "failed");
    let a = api
        .post(&format!("/v1/jobs/{flaky}/retry"), ALICE, json!(null))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["state"], "queued");
    assert_eq!(a.body["max_attempts"], 2);
    let j = api.wait_terminal(ALICE, &flaky, LIMIT).await;
    assert_eq!(j["state"], "succeeded");
    assert_eq!(j["attempt"], 2);
    // A succeeded job cannot be retried; a cancelled one can.
    let a = api
        .post(&format!("/v1/jobs/{flaky}/retry"), ALICE, json!(null))
        .await;
    assert_eq!(a.status, 409);
    assert_eq!(a.code(), "not_retryable");
    let a = api
        .post(&format!("/v1/jobs/{later}/retry"), ALICE, json!(null))
        .await;
    assert_eq!(a.status, 202);
    let j = api.wait_terminal(ALICE, &later, LIMIT).await;
    assert_eq!(j["state"], "succeeded");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_job_does_not_start_before_run_at() {
    let ctx = Ctx::new("sched");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let a = api
        .post(
            "/v1/jobs",
            ALICE,
            json!({"kind": "noop", "run_at": run_at.to_rfc3339()}),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["state"], "scheduled");
    let by_delay = api
        .submit(ALICE, json!({"kind": "noop", "delay_ms": 1000}))
        .await;
    let id = a.body["id"].as_str().unwrap();
    for id in [id, by_delay.as_str()] {
        let j = api.wait_terminal(ALICE, id, LIMIT).await;
        assert_eq!(j["state"], "succeeded");
        let started =
            chrono::DateTime::parse_from_rfc3339(j["started_at"].as_str().unwrap()).unwrap();
        let due = chrono::DateTime::parse_from_rfc3339(j["run_at"].as_str().unwrap()).unwrap();
        assert!(started >= due, "started {started} before run_at {due}");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_run_highest_first() {
    let mut ctx = Ctx::new("prio");
    ctx.set("JOBMILL_CONCURRENCY", "1");
    let api = ctx.api().await;
    // Queue everything before any worker runs, then let one handler slot drain it.
    let low = api
        .submit(ALICE, json!({"kind": "noop", "priority": 0}))
        .await;
    let high = api
        .submit(ALICE, json!({"kind": "noop", "priority": 9}))
        .await;
    let worker = ctx.worker();
    let l = api.wait_terminal(ALICE, &low, LIMIT).await;
    let h = api.wait_terminal(ALICE, &high, LIMIT).await;
    assert!(
        h["started_at"].as_str() <= l["started_at"].as_str(),
        "high {h} low {l}"
    );
    worker.stop().await;
}
