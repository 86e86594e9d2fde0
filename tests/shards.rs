//! Sharded queues (`JOBMILL_QUEUE_SHARDS`): a queue's shards spread over every master of the
//! cluster, drain completely with counts that add up, pause together, pin related jobs with a
//! `shard_key`, refuse a process whose shard count disagrees with the stored map, and move from
//! N to M shards with jobs in flight without losing any. Runs on both passes of
//! `scripts/test.sh` (single Redis and cluster); the per-master checks run on the cluster only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use jobmill::config::Config as _;
use jobmill::keys::Keys;
use jobmill::redis_conn::key_slot;
use jobmill::shards::lane_name;
use jobmill_tests::{on_cluster, Api, Ctx, ALICE, OPS};
use mongodb::bson::{doc, Document};
use redis::AsyncCommands;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(300);
/// Jobs of the drain test.
const DRAIN_JOBS: usize = 10_000;

fn keys(ctx: &Ctx) -> Keys {
    Keys::new(&ctx.vars["JOBMILL_KEY_PREFIX"])
}

fn sharded(name: &str, shards: &str) -> Ctx {
    let mut ctx = Ctx::new(name);
    ctx.set("JOBMILL_QUEUE_SHARDS", shards);
    ctx.set("JOBMILL_QUEUES", "imports");
    ctx
}

async fn count_in(ctx: &Ctx, state: &str) -> u64 {
    let store = ctx.store().await;
    store
        .database()
        .collection::<Document>(jobmill::store::JOBS)
        .count_documents(doc! { "state": state })
        .await
        .unwrap()
}

async fn wait_succeeded(ctx: &Ctx, n: u64) {
    let end = Instant::now() + LIMIT;
    loop {
        let done = count_in(ctx, "succeeded").await;
        if done == n {
            return;
        }
        assert!(done <= n, "{done} succeeded of {n}");
        assert!(Instant::now() < end, "only {done} of {n} jobs succeeded");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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

/// The cluster's masters: port → slot ranges (from `CLUSTER NODES` of a seed).
async fn masters() -> BTreeMap<u16, Vec<(u16, u16)>> {
    let seeds = std::env::var("JOBMILL_TEST_REDIS_CLUSTER").unwrap();
    let seed = seeds.split(',').next().unwrap().trim();
    let mut c = redis::Client::open(seed)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let port: u16 = f[1]
            .split('@')
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ranges = f[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => (r.parse().unwrap(), r.parse().unwrap()),
            })
            .collect();
        out.insert(port, ranges);
    }
    out
}

async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The headline test: 8 shards of one queue, `DRAIN_JOBS` jobs. On the cluster the shards
/// land on all 3 masters (`CLUSTER KEYSLOT` of each shard's keys, the master owning that slot
/// holds them, and every master's keyspace has this test's keys); pausing the queue pauses
/// every shard; the drain completes and the operator plane's counts and history add the
/// shards up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_shards_spread_pause_together_and_drain() {
    let ctx = sharded("shards8", "imports=8");
    let api = ctx.api().await;
    let k = keys(&ctx);
    let lanes: Vec<String> = (0..8).map(|i| lane_name("imports", i, 8)).collect();

    // Paused before any job exists: no worker may take one until resumed.
    let a = api.post("/v1/queues/imports/pause", OPS, json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut redis = ctx.redis().await;
    for lane in &lanes {
        assert!(
            redis
                .exists::<_, bool>(&k.queue(lane).paused)
                .await
                .unwrap(),
            "{lane} is not paused"
        );
    }
    api.submit_many(
        ALICE,
        DRAIN_JOBS,
        json!({"kind": "noop", "queue": "imports"}),
    )
    .await;

    // Every job is in one of the 8 shards, every shard has some, none is lost.
    let mut total = 0u64;
    for lane in &lanes {
        let n: u64 = redis.zcard(&k.queue(lane).ready).await.unwrap();
        assert!(n > 0, "shard {lane} got no job");
        total += n;
    }
    assert_eq!(total, DRAIN_JOBS as u64);
    let unsharded: u64 = redis.zcard(&k.queue("imports").ready).await.unwrap();
    assert_eq!(unsharded, 0, "nothing in the unsharded queue's keys");

    if on_cluster() {
        let masters = masters().await;
        assert_eq!(masters.len(), 3, "the test cluster has 3 masters");
        let mut used = BTreeSet::new();
        for lane in &lanes {
            let key = k.queue(lane).ready;
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            assert_eq!(slot, key_slot(key.as_bytes()), "{key}");
            let (&port, _) = masters
                .iter()
                .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
                .expect("a master owns every slot");
            // The master owning the slot holds the shard's keys.
            let mut c = node(port).await;
            let n: u64 = c.zcard(&key).await.unwrap();
            assert!(n > 0, "{key} is not on master {port}");
            used.insert(port);
        }
        assert_eq!(used.len(), 3, "8 shards on {used:?}, not on all 3 masters");
        for &port in masters.keys() {
            let mut c = node(port).await;
            let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
            let mut ours = 0usize;
            let mut it: redis::AsyncIter<String> =
                c.scan_match(format!("{}:*", k.prefix())).await.unwrap();
            while let Some(_key) = it.next_item().await {
                ours += 1;
            }
            assert!(
                dbsize > 0 && ours > 0,
                "master {port} holds none of this test's keys (dbsize {dbsize})"
            );
            eprintln!("master {port}: dbsize {dbsize}, keys of this test {ours}");
        }
    }

    let q = queue_view(&api, "imports").await;
    assert_eq!(q["paused"], true, "{q}");
    assert_eq!(q["counts"]["queued"], DRAIN_JOBS as u64, "{q}");

    let worker = ctx.worker();
    // Paused: the worker claims nothing. (A short look; the claim script itself is what
    // refuses, so there is nothing to race.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count_in(&ctx, "succeeded").await,
        0,
        "a paused shard handed out a job"
    );
    assert_eq!(
        count_in(&ctx, "running").await,
        0,
        "a paused shard handed out a job"
    );

    let a = api.post("/v1/queues/imports/resume", OPS, json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    for lane in &lanes {
        assert!(!redis
            .exists::<_, bool>(&k.queue(lane).paused)
            .await
            .unwrap());
    }
    wait_succeeded(&ctx, DRAIN_JOBS as u64).await;

    // The operator plane adds the shards up: nothing live is left, and the hour's history
    // (recorded per queue, not per shard) counts every job once.
    let end = Instant::now() + LIMIT;
    loop {
        let q = queue_view(&api, "imports").await;
        let c = &q["counts"];
        let live = ["queued", "scheduled", "retrying", "running"]
            .iter()
            .map(|s| c[s].as_u64().unwrap())
            .sum::<u64>();
        // History is recorded per queue (never per shard), at least once: a flush whose `$inc`
        // is retried after a MongoDB error may count twice (see docs/architecture.md, the
        // operator plane), so it is at least the number of jobs, and MongoDB's own count above
        // is the exact one.
        if live == 0 && q["succeeded_1h"].as_u64().unwrap() >= DRAIN_JOBS as u64 {
            assert_eq!(q["paused"], false);
            break;
        }
        assert!(Instant::now() < end, "counts never added up: {q}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for lane in &lanes {
        let n: u64 = redis.hlen(&k.queue(lane).payloads).await.unwrap();
        assert_eq!(n, 0, "{lane} still holds jobs");
    }
    worker.stop().await;
}

/// Jobs with the same `shard_key` share one shard; a bad key is refused with a clear 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_key_pins_related_jobs_to_one_shard() {
    let ctx = sharded("shardkey", "imports=4");
    let api = ctx.api().await;
    let k = keys(&ctx);
    let ids = api
        .submit_many(
            ALICE,
            40,
            json!({"kind": "noop", "queue": "imports", "shard_key": "customer-17"}),
        )
        .await;
    let mut redis = ctx.redis().await;
    let mut holders = BTreeSet::new();
    for i in 0..4 {
        let lane = lane_name("imports", i, 4);
        let held: Vec<bool> = {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hexists(&k.queue(&lane).payloads, id);
            }
            pipe.query_async(&mut redis).await.unwrap()
        };
        let n = held.iter().filter(|h| **h).count();
        if n > 0 {
            assert_eq!(n, ids.len(), "the key's jobs are split");
            holders.insert(lane);
        }
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
    let job = api.get(&format!("/v1/jobs/{}", ids[0]), ALICE).await;
    assert_eq!(job.status, 200);
    let a = api
        .post(
            "/v1/jobs",
            ALICE,
            json!({"kind": "noop", "queue": "imports", "shard_key": "x".repeat(201)}),
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.body);
    // A cancel finds the job in its shard.
    let a = api
        .post(&format!("/v1/jobs/{}/cancel", ids[1]), ALICE, json!({}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let lane = holders.into_iter().next().unwrap();
    assert!(!redis
        .hexists::<_, _, bool>(&k.queue(&lane).payloads, &ids[1])
        .await
        .unwrap());
}

/// A process whose `JOBMILL_QUEUE_SHARDS` disagrees with the stored shard map refuses to
/// start, naming the queue and both counts; one without the setting refuses too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_shard_count_refuses_to_start() {
    let ctx = sharded("shardsbad", "imports=4");
    let _api = ctx.api().await;
    let mut other = Ctx {
        vars: ctx.vars.clone(),
    };
    other.set("JOBMILL_QUEUE_SHARDS", "imports=2");
    let err =
        match jobmill_api::AppState::connect(&other.settings(), jobmill::Registry::new()).await {
            Ok(_) => panic!("an API with 2 shards started against a map of 4"),
            Err(e) => e.to_string(),
        };
    assert!(
        err.contains("imports") && err.contains("2 shard") && err.contains("says 4"),
        "{err}"
    );
    let config = jobmill_worker::WorkerConfig::from_lookup(|k| other.vars.get(k).cloned()).unwrap();
    let run = jobmill_worker::run(config, jobmill::Registry::new(), std::future::pending());
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the worker neither refused nor stopped")
        .expect_err("a worker with 2 shards started against a map of 4")
        .to_string();
    assert!(err.contains("imports") && err.contains("says 4"), "{err}");
    other.unset("JOBMILL_QUEUE_SHARDS");
    assert!(
        jobmill_api::AppState::connect(&other.settings(), jobmill::Registry::new())
            .await
            .is_err(),
        "an API without the setting started against a map of 4"
    );
}

/// N→M with jobs in flight: a queue of 2 shards with jobs waiting and running is moved to 3 by
/// a process started with `JOBMILL_QUEUE_RESHARD=true`. The processes already running adopt
/// the new map, keep draining the old shards, and new jobs go to the new ones (or, from a
/// process that has not re-read the map yet, to an old one, which is still drained). Every job
/// succeeds, the old shards leave the map once empty, and a process still set to 2 refuses to
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_with_jobs_in_flight_loses_nothing() {
    let old = sharded("reshard", "imports=2");
    let api_old = old.api().await;
    let worker_old = old.worker();
    let job = json!({"kind": "sleep", "queue": "imports", "args": {"ms": 30}});
    let mut ids = api_old.submit_many(ALICE, 400, job.clone()).await;
    // Some are running, most still waiting.
    let end = Instant::now() + LIMIT;
    while count_in(&old, "succeeded").await < 20 {
        assert!(Instant::now() < end, "the first jobs never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut new = Ctx {
        vars: old.vars.clone(),
    };
    new.set("JOBMILL_QUEUE_SHARDS", "imports=3");
    new.set("JOBMILL_QUEUE_RESHARD", "true");
    let api_new = new.api().await;
    let store = old.store().await;
    let map = jobmill::shards::load(store.database()).await.unwrap();
    assert_eq!(map["imports"].shards, 3);
    assert!(map["imports"].retired.contains(&2), "{map:?}");
    let worker_new = new.worker();
    // Both APIs keep accepting: the old one places by the old map until it re-reads it.
    ids.extend(api_old.submit_many(ALICE, 200, job.clone()).await);
    ids.extend(api_new.submit_many(ALICE, 200, job.clone()).await);

    wait_succeeded(&old, ids.len() as u64).await;
    assert_eq!(count_in(&old, "failed").await, 0);

    // The old shards drain and leave the map.
    let end = Instant::now() + LIMIT;
    loop {
        let map = jobmill::shards::load(store.database()).await.unwrap();
        if map["imports"].retired.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "the old shards never left the map: {map:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let k = keys(&old);
    let mut redis = old.redis().await;
    for i in 0..2 {
        let lane = lane_name("imports", i, 2);
        let n: u64 = redis.hlen(&k.queue(&lane).payloads).await.unwrap();
        assert_eq!(n, 0, "old shard {lane} still holds jobs");
    }

    // A process still set to 2 shards refuses to start now.
    let mut stale = Ctx {
        vars: old.vars.clone(),
    };
    stale.unset("JOBMILL_QUEUE_RESHARD");
    let err =
        match jobmill_api::AppState::connect(&stale.settings(), jobmill::Registry::new()).await {
            Ok(_) => panic!("an API with the old count started after the reshard"),
            Err(e) => e.to_string(),
        };
    assert!(err.contains("says 3"), "{err}");
    worker_old.stop().await;
    worker_new.stop().await;
    drop(api_new);
}
