//! Every transition is guarded on state and attempt: a stale writer changes nothing and is told
//! so; a retried batch is recognised as already applied.

use jobmill::client::NewJob;
use jobmill::state::Decision;
use jobmill::store::{Applied, Write};
use jobmill::JobState;

use std::time::Duration;

use jobmill_tests::{Ctx, ALICE};
use mongodb::bson::DateTime;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writers_are_refused_and_retries_are_recognised() {
    let ctx = Ctx::new("guards");
    let client = ctx.client().await;
    let store = client.store().clone();
    store.ensure_indexes().await.unwrap();
    let job = noop_job(&client);
    let id = job.id.clone();
    store.insert_jobs(&[job]).await.unwrap();
    let now = DateTime::now();
    let start = |a| Write::Start {
        id: id.clone(),
        attempt: a,
        at: now,
    };
    let finish = |a, d| Write::Finish {
        id: id.clone(),
        attempt: a,
        started_at: Some(now),
        at: now,
        decision: d,
        progress: None,
        record_event: false,
    };

    assert_eq!(store.apply(&[start(1)]).await.unwrap(), vec![Applied::Done]);
    // The lease of attempt 1 was rescued and attempt 2 started elsewhere.
    assert_eq!(store.apply(&[start(2)]).await.unwrap(), vec![Applied::Done]);
    // The stale worker of attempt 1 finishes: refused, and told what the job is now.
    let r = store
        .apply(&[finish(1, Decision::Succeed(json!("old")))])
        .await
        .unwrap();
    assert_eq!(
        r,
        vec![Applied::Stale {
            actual: Some(JobState::Running),
            attempt: 2
        }]
    );
    // Attempt 2 fails for good.
    let fail = finish(2, Decision::Fail("boom".into()));
    assert_eq!(
        store.apply(std::slice::from_ref(&fail)).await.unwrap(),
        vec![Applied::Done]
    );
    // The same batch sent again (say after a network error) is recognised as applied.
    assert_eq!(
        store.apply(std::slice::from_ref(&fail)).await.unwrap(),
        vec![Applied::Done]
    );
    // Nothing moves a terminal job: not a late success, not a new start, not a release.
    let r = store
        .apply(&[
            finish(2, Decision::Succeed(json!(1))),
            start(3),
            Write::Release {
                id: id.clone(),
                attempt: 2,
            },
        ])
        .await
        .unwrap();
    assert!(
        r.iter().all(|a| matches!(
            a,
            Applied::Stale {
                actual: Some(JobState::Failed),
                ..
            }
        )),
        "{r:?}"
    );
    let stored = store.get(&id, None).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Failed);
    assert_eq!(stored.attempt, 2);
    assert_eq!(
        stored.errors_in_order().len(),
        1,
        "the error is recorded once"
    );
    assert!(stored.result_json.is_none());
    assert!(
        stored.retention.is_some(),
        "finished jobs get a retention deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_retry_are_guarded_on_state() {
    let ctx = Ctx::new("guards2");
    let client = ctx.client().await;
    let sub = client
        .submit(
            "alice",
            NewJob {
                kind: "noop".into(),
                args: json!({}),
                delay_ms: Some(3_600_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = sub.job.id;
    assert!(matches!(
        client.retry(&id, Some("alice")).await,
        Err(jobmill::Error::Conflict { .. })
    ));
    assert!(matches!(
        client.cancel(&id, Some("bob")).await,
        Err(jobmill::Error::NotFound)
    ));
    let c = client.cancel(&id, Some("alice")).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert!(matches!(
        client.cancel(&id, Some("alice")).await,
        Err(jobmill::Error::Conflict { .. })
    ));
    let r = client.retry(&id, None).await.unwrap();
    assert_eq!(r.state, JobState::Queued);
    assert!(matches!(
        client.retry(&id, None).await,
        Err(jobmill::Error::Conflict { .. })
    ));
}

/// MongoDB write settings reach the driver, and a refused write concern stops a process at
/// startup with a message naming the setting (the MongoDB-compatible server has no replica
/// sets, so a server-side refusal cannot be produced here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_concern_settings_are_applied_or_refused_clearly() {
    let mut ctx = Ctx::new("wconcern");
    ctx.set("JOBMILL_MONGODB_WRITE_CONCERN", "0");
    let mut w = ctx.worker_process(&[]);
    let status = w
        .wait_exit(Duration::from_secs(60))
        .expect("a worker with w=0 must not start");
    assert!(!status.success());
    let out = w.output();
    assert!(
        out.contains("JOBMILL_MONGODB_WRITE_CONCERN") && out.contains("unacknowledged"),
        "{out}"
    );
    // Acknowledged settings: journal and majority writes go through.
    ctx.set("JOBMILL_MONGODB_WRITE_CONCERN", "majority")
        .set("JOBMILL_MONGODB_JOURNAL", "true");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let id = api.submit(ALICE, json!({"kind": "noop"})).await;
    let j = api
        .wait_terminal(ALICE, &id, Duration::from_secs(120))
        .await;
    assert_eq!(j["state"], "succeeded", "{j}");
    worker.stop().await;
}

/// A worker that had not heard of a cancel yet cannot record a retry or a failure over it:
/// the store refuses the write (`CancelRequested`), and a `cancelled` write goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_cancel_wins_over_a_retry_recorded_after_it() {
    let ctx = Ctx::new("guards3");
    let store = ctx.store().await;
    store.ensure_indexes().await.unwrap();
    let client = ctx.client().await;
    let job = noop_job(&client);
    let id = job.id.clone();
    store.insert_jobs(&[job]).await.unwrap();
    let now = DateTime::now();
    let finish = |d| Write::Finish {
        id: id.clone(),
        attempt: 1,
        started_at: Some(now),
        at: now,
        decision: d,
        progress: None,
        record_event: false,
    };
    let start = Write::Start {
        id: id.clone(),
        attempt: 1,
        at: now,
    };
    assert_eq!(store.apply(&[start]).await.unwrap(), vec![Applied::Done]);
    let running = store.cancel(&id, None).await.unwrap();
    assert!(running.cancel_requested, "a running job is flagged");
    for refused in [
        Decision::Retry {
            error: "transient".into(),
            delay: std::time::Duration::from_millis(5),
        },
        Decision::Fail("boom".into()),
    ] {
        let w = finish(refused);
        let a = store.apply(std::slice::from_ref(&w)).await.unwrap();
        assert_eq!(a, vec![Applied::CancelRequested]);
        assert!(w.follow_up(&a[0], 0).then_cancel);
    }
    assert_eq!(
        store
            .apply(&[finish(Decision::Cancel("asked".into()))])
            .await
            .unwrap(),
        vec![Applied::Done]
    );
    let stored = store.get(&id, None).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Cancelled);
    assert_eq!(stored.attempt, 1);
    assert!(stored.errors_in_order().is_empty(), "no retry was recorded");
}

/// A `noop` job of tenant `alice`, prepared but not stored.
fn noop_job(client: &jobmill::client::JobClient) -> jobmill::Job {
    client
        .prepare(
            "alice",
            NewJob {
                kind: "noop".into(),
                args: json!({}),
                ..Default::default()
            },
        )
        .unwrap()
}

/// Retention is a sweep, not a TTL index (see `Store::delete_expired`): finished jobs past
/// their retention go, live ones (a retried one too) and finished ones still within it stay. An old deployment's
/// TTL index (and compound outbox index) on the jobs is dropped at start-up, so reads no longer
/// pay for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_sweep_deletes_expired_finished_jobs_only() {
    use futures::TryStreamExt;
    use jobmill::job::Retention;

    let ctx = Ctx::new("retention");
    let client = ctx.client().await;
    let store = client.store().clone();
    // The layout of earlier versions: a TTL index on the jobs' retention.
    let jobs = store
        .database()
        .collection::<mongodb::bson::Document>(jobmill::store::JOBS);
    jobs.create_index(Retention::ttl_index()).await.unwrap();
    jobs.create_index(
        mongodb::IndexModel::builder()
            .keys(mongodb::bson::doc! { "outbox.pending": 1, "list_key": 1 })
            .build(),
    )
    .await
    .unwrap();
    store.ensure_indexes().await.unwrap();
    let ttl_left: Vec<mongodb::IndexModel> = jobs
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        ttl_left
            .iter()
            .all(|i| i.options.as_ref().is_none_or(|o| o.expire_after.is_none())),
        "the jobs' TTL index is gone: {ttl_left:?}"
    );
    assert!(
        !ttl_left
            .iter()
            .any(|i| i.keys.contains_key("list_key") && i.keys.contains_key("outbox.pending")),
        "the compound outbox index is gone: {ttl_left:?}"
    );

    let mut ids = Vec::new();
    for _ in 0..4 {
        let job = noop_job(&client);
        ids.push(job.id.clone());
        store.insert_jobs(&[job]).await.unwrap();
    }
    let now = DateTime::now();
    // Jobs 0 and 1 succeed; job 2 stays queued; job 3 fails and is retried, which makes it
    // live again and clears its retention.
    for (id, decision) in [
        (&ids[0], Decision::Succeed(json!(1))),
        (&ids[1], Decision::Succeed(json!(1))),
        (&ids[3], Decision::Fail("boom".into())),
    ] {
        let done = [
            Write::Start {
                id: id.clone(),
                attempt: 1,
                at: now,
            },
            Write::Finish {
                id: id.clone(),
                attempt: 1,
                started_at: Some(now),
                at: now,
                decision,
                progress: None,
                record_event: false,
            },
        ];
        store.apply(&done).await.unwrap();
    }
    client.retry(&ids[3], Some("alice")).await.unwrap();
    // Now: every retention is days away, nothing goes.
    assert_eq!(store.delete_expired(now).await.unwrap(), 0);
    // Past the retention: the two finished jobs go, the queued one stays.
    let later = DateTime::from_millis(
        now.timestamp_millis() + store.retention().as_millis() as i64 + 1_000,
    );
    assert_eq!(store.delete_expired(later).await.unwrap(), 2);
    for id in &ids[..2] {
        assert!(store.get(id, None).await.unwrap().is_none(), "{id} expired");
    }
    let live = store.get(&ids[2], None).await.unwrap().unwrap();
    assert_eq!(live.state, JobState::Queued);
    let retried = store.get(&ids[3], None).await.unwrap().unwrap();
    assert_eq!(
        retried.state,
        JobState::Queued,
        "a retried job is live again"
    );
    assert_eq!(store.delete_expired(later).await.unwrap(), 0, "idempotent");
}
