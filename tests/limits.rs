//! Queue limits on real processes: `key_concurrency` and `concurrency` never exceeded across
//! two workers, round-robin fairness across limit keys, slots freed when a worker holding them
//! is SIGKILLed, a queue `rate` kept in every one-second window, and `RateLimited` answers that
//! reschedule without charging an attempt. Every check reads the jobs' recorded start and end
//! times from the store, never sleeps.

use std::time::Duration;

use jobmill::client::NewJob;
use jobmill::Job;
use jobmill_tests::{Api, Ctx, ALICE, OPS, SIGKILL};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(180);

/// [`jobmill_tests::poll_until`] with this file's [`LIMIT`].
async fn until<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    jobmill_tests::poll_until(what, LIMIT, f).await
}

async fn put_limits(api: &Api, queue: &str, limits: Value) {
    let a = api
        .raw(
            reqwest::Method::PUT,
            &format!("/v1/queues/{queue}/limits"),
            Some(OPS),
            Some(("application/json", serde_json::to_vec(&limits).unwrap())),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// Submit `n` jobs of `kind` with `args` on `queue` under `key`, in batches, through the
/// library (the API path is the same `submit_batch`). Returns their ids in order.
async fn submit(
    ctx: &Ctx,
    queue: &str,
    key: Option<&str>,
    kind: &str,
    args: Value,
    n: usize,
) -> Vec<String> {
    let client = ctx.client().await;
    let mut ids = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let take = left.min(500);
        let news = (0..take)
            .map(|_| NewJob {
                kind: kind.into(),
                args: args.clone(),
                queue: Some(queue.into()),
                limit_key: key.map(str::to_string),
                ..Default::default()
            })
            .collect();
        for s in client.submit_batch("alice", news).await.unwrap() {
            ids.push(s.job.id);
        }
        left -= take;
    }
    ids
}

/// Wait until every job is terminal; return them as stored.
async fn finished(ctx: &Ctx, ids: &[String]) -> Vec<Job> {
    let store = ctx.store().await;
    until("every job terminal", || {
        let store = store.clone();
        async move {
            let jobs = store.get_many(ids).await.unwrap();
            (jobs.len() == ids.len() && jobs.iter().all(|j| j.state.is_terminal())).then_some(jobs)
        }
    })
    .await
}

/// Most jobs of `jobs` running at once, from their recorded [start, end] times. An end sorts
/// before a start at the same millisecond: the slot is freed only after the end is recorded,
/// so a job starting in that millisecond started after it.
fn max_overlap<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for j in jobs {
        let (Some(s), Some(e)) = (j.started_ms, j.finished_ms) else {
            panic!("job {} has no recorded start and end: {:?}", j.id, j.state);
        };
        edges.push((s, 1));
        edges.push((e, -1));
    }
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

fn all_succeeded(jobs: &[Job]) {
    for j in jobs {
        assert_eq!(
            j.state,
            jobmill::JobState::Succeeded,
            "{}: {:?}",
            j.id,
            j.errors
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_concurrency_holds_per_key_across_two_workers() {
    let mut ctx = Ctx::new("limits_key");
    ctx.set("JOBMILL_QUEUES", "lk");
    let api = ctx.api().await;
    put_limits(&api, "lk", json!({ "key_concurrency": 2 })).await;
    let mut ids = submit(
        &ctx,
        "lk",
        Some("customer:1"),
        "sleep",
        json!({"ms": 40}),
        50,
    )
    .await;
    ids.extend(
        submit(
            &ctx,
            "lk",
            Some("customer:2"),
            "sleep",
            json!({"ms": 40}),
            50,
        )
        .await,
    );
    let _w1 = ctx.worker_process(&[]);
    let _w2 = ctx.worker_process(&[]);
    let jobs = finished(&ctx, &ids).await;
    all_succeeded(&jobs);
    for key in ["customer:1", "customer:2"] {
        let of_key: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.limit_key.as_deref() == Some(key))
            .collect();
        assert_eq!(of_key.len(), 50);
        let most = max_overlap(of_key);
        assert!(most <= 2, "key {key} had {most} jobs running at once");
    }
    // Nothing leaked: every slot came back.
    let q = queue_view(&api, "lk").await;
    assert_eq!(q["limits"]["running"], 0, "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_concurrency_holds_across_two_workers() {
    let mut ctx = Ctx::new("limits_conc");
    ctx.set("JOBMILL_QUEUES", "lc");
    let api = ctx.api().await;
    put_limits(&api, "lc", json!({ "concurrency": 3 })).await;
    let ids = submit(&ctx, "lc", None, "sleep", json!({"ms": 40}), 60).await;
    let _w1 = ctx.worker_process(&[]);
    let _w2 = ctx.worker_process(&[]);
    let jobs = finished(&ctx, &ids).await;
    all_succeeded(&jobs);
    let most = max_overlap(&jobs);
    assert!(most <= 3, "{most} jobs of the queue ran at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_take_turns_so_a_small_key_is_not_starved() {
    let mut ctx = Ctx::new("limits_fair");
    ctx.set("JOBMILL_QUEUES", "lf");
    let a = submit(&ctx, "lf", Some("big"), "noop", json!({}), 1000).await;
    let b = submit(&ctx, "lf", Some("small"), "noop", json!({}), 10).await;
    let _w = ctx.worker();
    let a_jobs = finished(&ctx, &a).await;
    let b_jobs = finished(&ctx, &b).await;
    all_succeeded(&a_jobs);
    all_succeeded(&b_jobs);
    let mut a_starts: Vec<i64> = a_jobs.iter().map(|j| j.started_ms.unwrap()).collect();
    a_starts.sort();
    let a_100th = a_starts[99];
    let b_last = b_jobs.iter().map(|j| j.started_ms.unwrap()).max().unwrap();
    assert!(
        b_last <= a_100th,
        "the small key's last start ({b_last}) came after the big key's 100th ({a_100th})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_frees_its_slots_within_a_lease() {
    let mut ctx = Ctx::new("limits_kill");
    ctx.set("JOBMILL_QUEUES", "lkill");
    let api = ctx.api().await;
    put_limits(&api, "lkill", json!({ "key_concurrency": 2 })).await;
    let ids = submit(&ctx, "lkill", Some("k"), "sleep", json!({"ms": 1500}), 6).await;
    let w1 = ctx.worker_process(&[]);
    let store = ctx.store().await;
    // The first worker holds both slots of the key.
    let held: Vec<String> = until("two jobs running on the first worker", || {
        let store = store.clone();
        let ids = ids.clone();
        async move {
            let jobs = store.get_many(&ids).await.unwrap();
            let running: Vec<String> = jobs
                .iter()
                .filter(|j| j.state == jobmill::JobState::Running)
                .map(|j| j.id.clone())
                .collect();
            (running.len() == 2).then_some(running)
        }
    })
    .await;
    w1.signal(SIGKILL);
    let killed_at = jobmill::job::now_ms();
    let _w2 = ctx.worker_process(&[]);
    let jobs = finished(&ctx, &ids).await;
    all_succeeded(&jobs);
    for j in jobs.iter().filter(|j| held.contains(&j.id)) {
        assert_eq!(j.attempt, 2, "{} was rescued and ran again", j.id);
    }
    // Every run after the kill was on the second worker; with the dead worker's slots freed
    // the key ran at its full concurrency again, and never above it.
    let after: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.started_ms.unwrap() > killed_at)
        .collect();
    assert_eq!(after.len(), 6, "every job ran (again) after the kill");
    assert_eq!(max_overlap(after), 2, "the key ran 2 at once again");
    let q = queue_view(&api, "lkill").await;
    assert_eq!(q["limits"]["running"], 0, "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_rate_holds_in_every_second() {
    let mut ctx = Ctx::new("limits_rate");
    ctx.set("JOBMILL_QUEUES", "lr");
    let api = ctx.api().await;
    put_limits(&api, "lr", json!({ "rate": {"max": 10, "per": "1s"} })).await;
    let ids = submit(&ctx, "lr", None, "noop", json!({}), 50).await;
    let _w1 = ctx.worker_process(&[]);
    let _w2 = ctx.worker_process(&[]);
    let jobs = finished(&ctx, &ids).await;
    all_succeeded(&jobs);
    let mut starts: Vec<i64> = jobs.iter().map(|j| j.started_ms.unwrap()).collect();
    starts.sort();
    // Claims are limited by claim time; a start is recorded a little after its claim, so one
    // window may see one more (the +1 of the contract).
    for (i, s) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().take_while(|t| **t < s + 1000).count();
        assert!(
            in_window <= 11,
            "{in_window} starts in the second from {s}: {:?}",
            jobs.iter()
                .map(|j| (j.started_ms.unwrap() - starts[0], j.attempt, &j.errors))
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limited_reschedules_without_an_attempt_and_holds_the_key() {
    let mut ctx = Ctx::new("limits_429");
    ctx.set("JOBMILL_QUEUES", "l429");
    let api = ctx.api().await;
    let _w = ctx.worker();
    // One attempt only: were a rate limit charged, the job would fail.
    let until_ms = jobmill::job::now_ms() + 1000;
    let id = api
        .submit(
            ALICE,
            json!({
                "kind": "throttled", "queue": "l429", "limit_key": "api.example.com",
                "max_attempts": 1, "args": {"until_ms": until_ms, "after_ms": 1500}
            }),
        )
        .await;
    // It ran once and was told to wait: back to `scheduled`, its attempt given back, its key
    // held.
    let store = ctx.store().await;
    let waiting: Job = until("the job rate limited", || {
        let store = store.clone();
        let id = id.clone();
        async move {
            let j = store.get(&id, None).await.unwrap()?;
            (j.state == jobmill::JobState::Scheduled && j.started_ms.is_some()).then_some(j)
        }
    })
    .await;
    assert_eq!(waiting.attempt, 0, "the attempt was given back");
    let q = queue_view(&api, "l429").await;
    let held = q["limits"]["throttled_keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        held.iter().any(|k| k["key"] == "api.example.com"),
        "key shown as held: {q}"
    );
    // A sibling of the same key waits for the hold.
    let sibling = api
        .submit(
            ALICE,
            json!({"kind": "noop", "queue": "l429", "limit_key": "api.example.com"}),
        )
        .await;
    let done = api.wait_terminal(ALICE, &id, LIMIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 1, "{done}");
    assert_eq!(done["result"]["attempt"], 1, "{done}");
    let s = api.wait_terminal(ALICE, &sibling, LIMIT).await;
    assert_eq!(s["state"], "succeeded", "{s}");
    let sib = store.get(&sibling, None).await.unwrap().unwrap();
    assert!(
        sib.started_ms.unwrap() >= waiting.run_at_ms - 5,
        "the sibling started at {} while the key was held until {}",
        sib.started_ms.unwrap(),
        waiting.run_at_ms
    );
    // A cancel requested while rate limited-and-running ends it `cancelled`: covered by the
    // state table (`decide`); here, a waiting job is simply cancelled.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_are_set_audited_shown_and_removed_by_operators_only() {
    let ctx = Ctx::new("limits_api");
    let api = ctx.api().await;
    let body = json!({ "concurrency": 40, "key_rate": {"max": 5, "per": "1s"} });
    let bytes = serde_json::to_vec(&body).unwrap();
    let a = api
        .raw(
            reqwest::Method::PUT,
            "/v1/queues/lapi/limits",
            Some(ALICE),
            Some(("application/json", bytes.clone())),
            &[],
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    for bad in [
        json!({}),
        json!({"concurrency": 0}),
        json!({"rate": {"max": 10, "per": "soon"}}),
        json!({"rate": {"max": 10}}),
        json!({"colour": "red"}),
    ] {
        let a = api
            .raw(
                reqwest::Method::PUT,
                "/v1/queues/lapi/limits",
                Some(OPS),
                Some(("application/json", serde_json::to_vec(&bad).unwrap())),
                &[],
            )
            .await;
        assert_eq!(a.status, 422, "{bad}: {}", a.body);
    }
    put_limits(&api, "lapi", body).await;
    let q = queue_view(&api, "lapi").await;
    assert_eq!(q["limits"]["set"]["concurrency"], 40, "{q}");
    assert_eq!(q["limits"]["set"]["key_rate"]["per"], "1s", "{q}");
    let a = api
        .raw(
            reqwest::Method::DELETE,
            "/v1/queues/lapi/limits",
            Some(OPS),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.get("limits").is_none(), "{}", a.body);
    let audit = api.get("/v1/audit", OPS).await;
    let actions: Vec<&str> = audit.body["records"]
        .as_array()
        .or_else(|| audit.body["items"].as_array())
        .map(|r| r.iter().filter_map(|r| r["action"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        actions.contains(&"queue.limits_set") && actions.contains(&"queue.limits_delete"),
        "{}",
        audit.body
    );
    // A bad limit key is refused at submission.
    let a = api
        .post(
            "/v1/jobs",
            ALICE,
            json!({"kind": "noop", "limit_key": "has space"}),
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.body);
}

async fn queue_view(api: &Api, name: &str) -> Value {
    let a = api.get("/v1/queues", OPS).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_queue_takes_per_key_limits_but_refuses_queue_wide_ones() {
    let mut ctx = Ctx::new("limits_shards");
    ctx.set("JOBMILL_QUEUE_SHARDS", "lsh=4");
    ctx.set("JOBMILL_QUEUES", "lsh");
    let api = ctx.api().await;
    for wide in [
        json!({"concurrency": 3}),
        json!({"rate": {"max": 5, "per": "1s"}, "key_concurrency": 1}),
    ] {
        let a = api
            .raw(
                reqwest::Method::PUT,
                "/v1/queues/lsh/limits",
                Some(OPS),
                Some(("application/json", serde_json::to_vec(&wide).unwrap())),
                &[],
            )
            .await;
        assert_eq!(a.status, 409, "{wide}: {}", a.body);
        assert_eq!(a.code(), "sharded_queue", "{}", a.body);
    }
    put_limits(&api, "lsh", json!({ "key_concurrency": 1 })).await;
    // A job with a limit key is placed by it: a different shard_key is refused.
    let a = api
        .post(
            "/v1/jobs",
            ALICE,
            json!({"kind": "noop", "queue": "lsh", "limit_key": "a", "shard_key": "b"}),
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.body);
    let mut ids = Vec::new();
    for i in 0..30 {
        let key = ["k1", "k2", "k3"][i % 3];
        ids.push(
            api.submit(
                ALICE,
                json!({"kind": "sleep", "queue": "lsh", "limit_key": key, "args": {"ms": 30}}),
            )
            .await,
        );
    }
    let _w = ctx.worker();
    let jobs = finished(&ctx, &ids).await;
    all_succeeded(&jobs);
    for key in ["k1", "k2", "k3"] {
        let of_key: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.limit_key.as_deref() == Some(key))
            .collect();
        let most = max_overlap(of_key);
        assert!(most <= 1, "key {key} had {most} jobs running at once");
    }
}
