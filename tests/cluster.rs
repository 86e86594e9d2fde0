//! Redis Cluster and Redis data loss: jobs survive losing part of Redis. The first test runs on
//! every pass (single server or cluster); the others start private clusters of their own and
//! run on the cluster pass of `scripts/test.sh` (`JOBMILL_TEST_REDIS_CLUSTER` set), where they
//! are skipped with a message otherwise, since each one is six redis-server processes.
//!
//! Every test is a fault test: it kills or empties real Redis processes or deletes real keys.

use std::time::{Duration, Instant};

use jobmill::keys::Keys;
use jobmill::redis_conn::key_slot;
use jobmill_tests::{cli, on_cluster, Ctx, PrivateCluster, ALICE, SIGKILL};
use mongodb::bson::doc;
use redis::AsyncCommands;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(240);

/// Number of this test's jobs in `states` (straight from MongoDB; one equality count per
/// state, which the MongoDB-compatible server answers from its index).
async fn count_in(ctx: &Ctx, states: &[&str]) -> u64 {
    let store = ctx.store().await;
    let jobs = store
        .database()
        .collection::<mongodb::bson::Document>(jobmill::store::JOBS);
    let mut n = 0;
    for s in states {
        n += jobs.count_documents(doc! { "state": *s }).await.unwrap();
    }
    n
}

/// Wait until `n` jobs are terminal, then assert they all succeeded.
async fn all_succeed(ctx: &Ctx, n: u64) {
    let end = Instant::now() + LIMIT;
    loop {
        let done = count_in(ctx, &["succeeded", "failed", "cancelled"]).await;
        if done == n {
            break;
        }
        assert!(Instant::now() < end, "only {done} of {n} jobs ended");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(count_in(ctx, &["succeeded"]).await, n, "some jobs failed");
}

async fn wait_succeeded_at_least(ctx: &Ctx, n: u64) {
    let end = Instant::now() + LIMIT;
    while count_in(ctx, &["succeeded"]).await < n {
        assert!(Instant::now() < end, "fewer than {n} jobs ever succeeded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn keys(ctx: &Ctx) -> Keys {
    Keys::new(&ctx.vars["JOBMILL_KEY_PREFIX"])
}

fn skip_unless_cluster(name: &str) -> bool {
    if on_cluster() {
        return false;
    }
    eprintln!("{name}: skipped, runs on the cluster pass of scripts/test.sh only");
    true
}

/// A failover may lose a node's last writes while the queue's epoch survives: the anti-entropy
/// sweep finds the live job in MongoDB that Redis no longer holds and puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_whose_redis_entries_vanish_still_runs() {
    let ctx = Ctx::new("sweep");
    let api = ctx.api().await;
    let worker = ctx.worker();
    // Wait for the reconciler's first round: the queue's epoch marks Redis as whole, so only
    // the sweep (not a rebuild) can bring the job back.
    let k = keys(&ctx).queue("default");
    let mut redis = ctx.redis().await;
    let end = Instant::now() + LIMIT;
    while !redis.exists::<_, bool>(&k.epoch).await.unwrap() {
        assert!(
            Instant::now() < end,
            "the reconciler never marked the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = api
        .submit(ALICE, json!({"kind": "noop", "delay_ms": 1500}))
        .await;
    // Delete every trace of the job in Redis, as a lost write would.
    let _: () = redis::pipe()
        .hdel(&k.payloads, &id)
        .hdel(&k.attempts, &id)
        .zrem(&k.scheduled, &id)
        .zrem(&k.ready, &id)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(redis.exists::<_, bool>(&k.epoch).await.unwrap());
    let j = api.wait_terminal(ALICE, &id, LIMIT).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    worker.stop().await;
}

/// A master SIGKILLed mid-drain of 2,000 jobs: its replica takes over and every job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_drain_loses_nothing() {
    if skip_unless_cluster("a_master_killed_mid_drain_loses_nothing") {
        return;
    }
    let cluster = PrivateCluster::start(&[]);
    let mut ctx = Ctx::on("mkill", &cluster.seeds, &jobmill_tests::shared_mongo());
    ctx.set("JOBMILL_LEASE_TTL", "3s");
    let api = ctx.api().await;
    let _w1 = ctx.worker_process(&["--concurrency", "16"]);
    let _w2 = ctx.worker_process(&["--concurrency", "16"]);
    let n = 2000;
    api.submit_many(
        ALICE,
        n,
        json!({"kind": "sleep", "args": {"ms": 100}, "max_attempts": 10}),
    )
    .await;
    wait_succeeded_at_least(&ctx, 100).await;
    // Mid-drain: most jobs are still waiting when the master dies.
    assert!(count_in(&ctx, &["succeeded"]).await < n as u64 / 2);
    let victim = cluster.master_of(key_slot(b"default"));
    let pid = victim.pid();
    assert!(jobmill_tests::unsafe_free_kill(pid, SIGKILL), "kill {pid}");
    all_succeed(&ctx, n as u64).await;
    // The queue's slot is served by another node now: the replica was promoted.
    assert_ne!(cluster.master_of(key_slot(b"default")).port, victim.port);
}

/// A master without a replica restarted empty (no persistence): only the queues on it are
/// rebuilt from MongoDB, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_empty_rebuilds_only_its_queues() {
    if skip_unless_cluster("a_master_restarted_empty_rebuilds_only_its_queues") {
        return;
    }
    let cluster = PrivateCluster::start(&["--replicas", "0", "--no-full-coverage"]);
    // Two queues on different masters.
    let names: Vec<String> = (0..100).map(|i| format!("q{i}")).collect();
    let a = names[0].clone();
    let a_port = cluster.master_of(key_slot(a.as_bytes())).port;
    let b = names
        .iter()
        .find(|n| cluster.master_of(key_slot(n.as_bytes())).port != a_port)
        .unwrap()
        .clone();
    let mut ctx = Ctx::on("mempty", &cluster.seeds, &jobmill_tests::shared_mongo());
    ctx.set("JOBMILL_QUEUES", &format!("{a},{b}"));
    let api = ctx.api().await;
    let (ka, kb) = (keys(&ctx).queue(&a), keys(&ctx).queue(&b));
    let mut redis = ctx.redis().await;
    // A worker's reconciler marks both queues whole; then no worker runs while Redis fails.
    let w = ctx.worker();
    let end = Instant::now() + LIMIT;
    loop {
        let ea: bool = redis.exists(&ka.epoch).await.unwrap();
        let eb: bool = redis.exists(&kb.epoch).await.unwrap();
        if ea && eb {
            break;
        }
        assert!(Instant::now() < end, "queues never marked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;
    api.submit_many(ALICE, 50, json!({"kind": "noop", "queue": a}))
        .await;
    api.submit_many(ALICE, 50, json!({"kind": "noop", "queue": b}))
        .await;
    let epoch_b: String = redis.get(&kb.epoch).await.unwrap();

    let node = cluster.master_of(key_slot(a.as_bytes()));
    cluster.restart_empty(node, false);
    let end = Instant::now() + LIMIT;
    while cli(node.port, &["cluster", "info"])
        .lines()
        .all(|l| l.trim() != "cluster_state:ok")
    {
        assert!(Instant::now() < end, "restarted node never rejoined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = Instant::now() + LIMIT;
    while redis.exists::<_, bool>(&ka.epoch).await.unwrap_or(true) {
        assert!(Instant::now() < end, "queue {a} still looks whole");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis.zcard::<_, usize>(&ka.ready).await.unwrap(), 0);

    let w = ctx.worker();
    all_succeed(&ctx, 100).await;
    w.stop().await;
    let epoch_b_after: String = redis.get(&kb.epoch).await.unwrap();
    assert_eq!(
        epoch_b, epoch_b_after,
        "queue {b} lost nothing and was not rebuilt"
    );
    assert!(
        redis.exists::<_, bool>(&ka.epoch).await.unwrap(),
        "{a} rebuilt"
    );
}

/// A busy queue's slot migrated to another master during a drain: MOVED and ASK are followed,
/// TRYAGAIN retried; nothing is lost and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_during_a_drain_loses_nothing() {
    if skip_unless_cluster("a_slot_moved_during_a_drain_loses_nothing") {
        return;
    }
    let cluster = PrivateCluster::start(&["--replicas", "0"]);
    // A queue whose slot is among the first 100 of the first master: `reshard` moves a
    // source's lowest slots first.
    let queue = (0..100_000)
        .map(|i| format!("m{i}"))
        .find(|q| key_slot(q.as_bytes()) < 100)
        .unwrap();
    let slot = key_slot(queue.as_bytes());
    let mut ctx = Ctx::on("reshard", &cluster.seeds, &jobmill_tests::shared_mongo());
    ctx.set("JOBMILL_QUEUES", &queue);
    let api = ctx.api().await;
    let _w1 = ctx.worker_process(&["--concurrency", "16"]);
    let n = 2000;
    api.submit_many(
        ALICE,
        n,
        json!({"kind": "sleep", "args": {"ms": 50}, "queue": queue}),
    )
    .await;
    wait_succeeded_at_least(&ctx, 100).await;
    let from = cluster.master_of(slot);
    let to = cluster
        .masters()
        .into_iter()
        .find(|m| m.port != from.port)
        .unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", from.port)])
        .args(["--cluster-from", &from.cli(&["cluster", "myid"])])
        .args(["--cluster-to", &to.cli(&["cluster", "myid"])])
        .args(["--cluster-slots", "100", "--cluster-yes"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reshard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cluster.master_of(slot).port,
        to.port,
        "slot {slot} did not move"
    );
    all_succeed(&ctx, n as u64).await;
    let retried = count_in(&ctx, &["succeeded"]).await;
    assert_eq!(retried, n as u64);
}

/// Naming both a cluster and a single Redis is a configuration error, reported at startup with
/// both names, never a silent choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_and_redis_url_together_stop_startup() {
    let mut ctx = Ctx::new("bothredis");
    ctx.set("JOBMILL_REDIS_CLUSTER", "redis://127.0.0.1:7001")
        .set("JOBMILL_REDIS_URL", "redis://127.0.0.1:6379/");
    let mut w = ctx.worker_process(&[]);
    let status = w
        .wait_exit(Duration::from_secs(60))
        .expect("the worker must refuse to start");
    assert!(!status.success());
    let out = w.output();
    assert!(
        out.contains("JOBMILL_REDIS_CLUSTER") && out.contains("JOBMILL_REDIS_URL"),
        "{out}"
    );
}
