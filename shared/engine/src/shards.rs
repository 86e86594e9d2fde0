//! Sharded queues: one logical queue spread over N physical sub-queues ("lanes"), so a hot
//! queue spans the masters of a Redis Cluster.
//!
//! A lane is an ordinary queue for the Lua scripts: its keys share its own hash tag, and every
//! script runs on one lane unchanged (one slot per call, as before). Sharding is a layer above
//! the scripts:
//! - `JOBMILL_QUEUE_SHARDS=imports=8,default=4` (engine settings, so API and workers agree)
//!   declares the count; a queue not named has one shard, whose lane is the queue's own name:
//!   its keys are exactly those of an unsharded queue.
//! - Lane `i` of `n` is named `{queue}.{i}.{salt}`, the smallest salt that puts the tag's CRC16
//!   slot in the `i`-th of `n` equal slot ranges ([`lane_name`]). Queue names cannot contain
//!   `.`, so a lane never collides with a queue, and its queue is the part before the first `.`
//!   ([`logical`]). Spreading by slot range, not by trusting a hash of the name, is what makes
//!   `n` lanes land on all masters of a cluster whose masters own contiguous slot ranges.
//! - Submission places a job on lane `fnv1a(shard_key or id) % n`; the payload in Redis names
//!   its lane, so every follow-up (heartbeat, ack, reschedule, release, defer) goes to the lane
//!   that holds the job, whatever the map says by then.
//! - Claims rotate the starting lane ([`ShardMap::next_turn`]), so workers drain every lane.
//!   Priorities are exact within a lane and approximate across lanes: a claim takes the best
//!   jobs of the lane it starts at, which may be below the best job of another lane.
//!
//! The map is stored in MongoDB (`queue_shards`, one document per sharded queue), checked by
//! every process at startup ([`join`]): a process whose setting disagrees refuses to start. A
//! change from N to M lanes is recorded by one process started with `JOBMILL_QUEUE_RESHARD=true`:
//! the old count is kept as *retired*, and its lanes stay in the claim rotation, the scheduler
//! and the rescuer until they are empty; new jobs go to the new lanes. Running processes reload
//! the map every [`RELOAD_EVERY`]; the worker's reconciler drops a retired count once its lanes
//! are empty and [`RETIRE_GRACE`] has passed (so no process still places jobs by the old map). A
//! job a stale process still pushed to a retired lane after that is found by the anti-entropy
//! sweep (MongoDB is the system of record) and requeued on the new map.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::Database;
use serde::{Deserialize, Serialize};

use crate::config::check_queue_name;
use crate::error::{Error, Result};
use crate::redis_conn::key_slot;

/// Most shards a queue may have.
pub const MAX_SHARDS: u16 = 64;
/// MongoDB collection of the shard map (engine-owned): `{_id: queue, shards, retired,
/// changed_ms}`.
pub const QUEUE_SHARDS: &str = "queue_shards";
/// How often running processes re-read the shard map.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How long a retired count stays in the map at least, even once its lanes are empty: every
/// process has re-read the map by then, so none still places jobs by the old count.
pub const RETIRE_GRACE: Duration = Duration::from_secs(10);
/// Number of Redis Cluster slots.
const SLOTS: u32 = 16_384;
/// Separates a queue name from its lane's index and salt (queue names cannot contain it).
const LANE_SEP: char = '.';

/// Parse `name=count,...` (`JOBMILL_QUEUE_SHARDS`).
pub fn parse_shards(raw: &str) -> std::result::Result<BTreeMap<String, u16>, String> {
    let mut out = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, n)) = part.split_once('=') else {
            return Err(format!(
                "'{}' is not queue=count (e.g. imports=8)",
                part.chars().take(80).collect::<String>()
            ));
        };
        let (name, n) = (name.trim(), n.trim());
        check_queue_name(name)?;
        let n: u16 = n
            .parse()
            .ok()
            .filter(|n| (1..=MAX_SHARDS).contains(n))
            .ok_or_else(|| format!("shard count of queue '{name}' must be 1-{MAX_SHARDS}"))?;
        if out.insert(name.to_string(), n).is_some() {
            return Err(format!("queue '{name}' is listed twice"));
        }
    }
    Ok(out)
}

/// The slot range `[lo, hi)` lane `i` of `n` lives in.
fn slot_range(i: u16, n: u16) -> (u32, u32) {
    let (i, n) = (u32::from(i), u32::from(n.max(1)));
    (i * SLOTS / n, (i + 1) * SLOTS / n)
}

/// The name (and hash tag) of lane `i` of `n` of `queue`; `queue` itself when `n` is 1, so an
/// unsharded queue keeps its key names.
pub fn lane_name(queue: &str, i: u16, n: u16) -> String {
    if n <= 1 {
        return queue.to_string();
    }
    let (lo, hi) = slot_range(i, n);
    // CRC16 spreads consecutive salts over the slots, so a range of 16384/n slots is hit after
    // about n tries; the search is deterministic, so every process finds the same name.
    (0u32..)
        .map(|salt| format!("{queue}{LANE_SEP}{i}{LANE_SEP}{salt}"))
        .find(|tag| (lo..hi).contains(&u32::from(key_slot(tag.as_bytes()))))
        .expect("some salt lands in every slot range")
}

/// The queue a lane belongs to (the lane itself for an unsharded queue).
pub fn logical(lane: &str) -> &str {
    lane.split(LANE_SEP).next().unwrap_or(lane)
}

/// The lane index of a job placed by `key` (its `shard_key`, else its id) among `n`: FNV-1a,
/// fixed forever since every process must compute the same.
pub fn shard_index(key: &str, n: u16) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(n.max(1))) as u16
}

/// The lanes of one sharded queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Current shard count: new jobs go to these lanes.
    pub shards: u16,
    /// Earlier counts whose lanes may still hold jobs (draining).
    pub retired: Vec<u16>,
    /// When the map of this queue last changed (ms since the epoch).
    pub changed_ms: i64,
    current: Vec<String>,
    draining: Vec<String>,
}

impl Layout {
    /// The layout of `queue` with `shards` lanes, draining the lanes of `retired` counts.
    pub fn new(queue: &str, shards: u16, retired: Vec<u16>, changed_ms: i64) -> Self {
        let current: Vec<String> = (0..shards).map(|i| lane_name(queue, i, shards)).collect();
        let mut seen: BTreeSet<String> = current.iter().cloned().collect();
        let mut draining = Vec::new();
        for &n in &retired {
            for i in 0..n {
                let lane = lane_name(queue, i, n);
                if seen.insert(lane.clone()) {
                    draining.push(lane);
                }
            }
        }
        Layout {
            shards,
            retired,
            changed_ms,
            current,
            draining,
        }
    }

    /// Lanes new jobs go to, in index order.
    pub fn current(&self) -> &[String] {
        &self.current
    }

    /// Lanes of retired counts that are not current lanes too: claimed, promoted and rescued
    /// until empty, never written to.
    pub fn draining(&self) -> &[String] {
        &self.draining
    }
}

#[derive(Default)]
struct MapInner {
    layouts: RwLock<BTreeMap<String, Arc<Layout>>>,
    turn: AtomicUsize,
}

/// The shard map a process works with, shared by every clone of its
/// [`RedisQueue`](crate::queue::RedisQueue). Empty (every queue one lane) until [`join`] fills it.
#[derive(Clone, Default)]
pub struct ShardMap {
    inner: Arc<MapInner>,
}

impl std::fmt::Debug for ShardMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

impl ShardMap {
    /// The layout of `queue`, if it is sharded (or was, and still drains).
    pub fn layout(&self, queue: &str) -> Option<Arc<Layout>> {
        self.inner
            .layouts
            .read()
            .expect("shard map lock")
            .get(queue)
            .cloned()
    }

    /// Every queue with a layout.
    pub fn snapshot(&self) -> BTreeMap<String, Arc<Layout>> {
        self.inner.layouts.read().expect("shard map lock").clone()
    }

    /// Replace the map.
    pub fn install(&self, layouts: BTreeMap<String, Layout>) {
        *self.inner.layouts.write().expect("shard map lock") =
            layouts.into_iter().map(|(q, l)| (q, Arc::new(l))).collect();
    }

    /// Current shard count of `queue`.
    pub fn shards(&self, queue: &str) -> u16 {
        self.layout(queue).map_or(1, |l| l.shards)
    }

    /// The lane a new job of `queue` placed by `key` goes to.
    pub fn lane_for(&self, queue: &str, key: &str) -> String {
        match self.layout(queue) {
            Some(l) if l.shards > 1 => l.current[usize::from(shard_index(key, l.shards))].clone(),
            Some(l) => l.current[0].clone(),
            None => queue.to_string(),
        }
    }

    /// Every lane of `queue` that may hold jobs: current lanes, then draining ones.
    pub fn lanes(&self, queue: &str) -> Vec<String> {
        match self.layout(queue) {
            Some(l) => l.current.iter().chain(&l.draining).cloned().collect(),
            None => vec![queue.to_string()],
        }
    }

    /// The lanes of `queue` new jobs go to.
    pub fn current_lanes(&self, queue: &str) -> Vec<String> {
        match self.layout(queue) {
            Some(l) => l.current.clone(),
            None => vec![queue.to_string()],
        }
    }

    /// The draining lanes of `queue`.
    pub fn draining_lanes(&self, queue: &str) -> Vec<String> {
        self.layout(queue)
            .map(|l| l.draining.clone())
            .unwrap_or_default()
    }

    /// A turn counter for rotating the first lane a claim tries, so every lane is drained.
    pub fn next_turn(&self) -> usize {
        self.inner.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// Hook for queue limits: a queue-wide concurrency or rate limit cannot be enforced by a
    /// claim script that sees one lane, so it is refused on a sharded queue. (Per-key limits
    /// are fine: a key's jobs share one lane, as `shard_key` defaults to `limit_key`.)
    pub fn check_queue_wide_limit(&self, queue: &str) -> Result<()> {
        let n = self.shards(queue);
        if n > 1 || self.layout(queue).is_some_and(|l| !l.draining.is_empty()) {
            return Err(Error::Refused {
                code: "sharded_queue",
                message: format!(
                    "queue '{queue}' has {n} shards; a queue-wide concurrency or rate limit \
                     needs an unsharded queue (per-key limits work on sharded queues)"
                ),
            });
        }
        Ok(())
    }
}

/// One document of [`QUEUE_SHARDS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardDoc {
    #[serde(rename = "_id")]
    queue: String,
    shards: i32,
    #[serde(default)]
    retired: Vec<i32>,
    changed_ms: i64,
}

impl ShardDoc {
    fn layout(&self) -> Layout {
        let n = |v: i32| v.clamp(1, i32::from(MAX_SHARDS)) as u16;
        Layout::new(
            &self.queue,
            n(self.shards),
            self.retired.iter().map(|&r| n(r)).collect(),
            self.changed_ms,
        )
    }
}

fn collection(db: &Database) -> mongodb::Collection<ShardDoc> {
    db.collection(QUEUE_SHARDS)
}

/// The shard map stored in MongoDB.
pub async fn load(db: &Database) -> Result<BTreeMap<String, Layout>> {
    let docs: Vec<ShardDoc> = collection(db).find(doc! {}).await?.try_collect().await?;
    Ok(docs
        .into_iter()
        .map(|d| (d.queue.clone(), d.layout()))
        .collect())
}

/// Check this process's `wanted` counts against the stored map, record counts the map does not
/// have yet, and (with `reshard`) record changed counts, retiring the old ones. Returns the map
/// to work with; a disagreement without `reshard` is a [`Error::Config`] naming the queue and
/// both counts.
pub async fn agree(
    db: &Database,
    wanted: &BTreeMap<String, u16>,
    reshard: bool,
) -> Result<BTreeMap<String, Layout>> {
    let coll = collection(db);
    let mut problems = Vec::new();
    for _round in 0..3 {
        let stored: BTreeMap<String, ShardDoc> = coll
            .find(doc! {})
            .await?
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .map(|d| (d.queue.clone(), d))
            .collect();
        problems.clear();
        let mut raced = false;
        let queues: BTreeSet<&String> = wanted.keys().chain(stored.keys()).collect();
        for q in queues {
            let want = wanted.get(q).copied().unwrap_or(1);
            let now = crate::job::now_ms();
            match stored.get(q) {
                Some(d) if d.shards == i32::from(want) => {}
                None if want == 1 => {}
                None => {
                    // First declaration of a sharded queue. The queue may already hold jobs in
                    // its unsharded lane: retire count 1 so that lane drains (it leaves the
                    // map at once if empty).
                    let d = ShardDoc {
                        queue: q.clone(),
                        shards: i32::from(want),
                        retired: vec![1],
                        changed_ms: now,
                    };
                    match coll.insert_one(&d).await {
                        Ok(_) => {}
                        // Another process declared it at the same time: compare again.
                        Err(e) if crate::store::is_duplicate_key(&e) => raced = true,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(d) if reshard => {
                    let mut retired: Vec<i32> = d.retired.clone();
                    if !retired.contains(&d.shards) {
                        retired.push(d.shards);
                    }
                    retired.retain(|&r| r != i32::from(want));
                    let new = ShardDoc {
                        queue: q.clone(),
                        shards: i32::from(want),
                        retired,
                        changed_ms: now.max(d.changed_ms + 1),
                    };
                    // Guarded on the version read, so two reshards cannot interleave.
                    let r = coll
                        .replace_one(doc! {"_id": q, "changed_ms": d.changed_ms}, &new)
                        .await?;
                    if r.matched_count == 0 {
                        raced = true;
                    } else {
                        tracing::warn!(queue = %q, from = d.shards, to = want, "resharded queue; the old shards drain first");
                    }
                }
                Some(d) => problems.push(format!(
                    "queue '{q}': JOBMILL_QUEUE_SHARDS gives it {want} shard(s), but the shard \
                     map in MongoDB (collection {QUEUE_SHARDS}) says {}; set \
                     JOBMILL_QUEUE_SHARDS to match, or start one process with \
                     JOBMILL_QUEUE_RESHARD=true to move the queue to {want} shard(s) (its \
                     current shards drain first)",
                    d.shards
                )),
            }
        }
        if !raced {
            break;
        }
    }
    if !problems.is_empty() {
        return Err(Error::Config(problems.join("\n")));
    }
    load(db).await
}

/// Agree on the shard map (see [`agree`]), install it in `map` and keep it fresh: a task
/// re-reads it every [`RELOAD_EVERY`] for as long as `map` is alive.
pub async fn join(
    db: &Database,
    wanted: &BTreeMap<String, u16>,
    reshard: bool,
    map: &ShardMap,
) -> Result<()> {
    map.install(agree(db, wanted, reshard).await?);
    let weak: Weak<MapInner> = Arc::downgrade(&map.inner);
    let db = db.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let Some(inner) = weak.upgrade() else { return };
            match load(&db).await {
                Ok(layouts) => ShardMap { inner }.install(layouts),
                Err(e) => tracing::debug!(error = %e, "could not reload the shard map"),
            }
        }
    });
    Ok(())
}

/// [`join`] with a process's settings, on the map of `queue` (every process that places or
/// claims jobs calls this once at startup, before it touches a queue).
pub async fn join_settings(
    store: &crate::store::Store,
    settings: &crate::config::CoreSettings,
    queue: &crate::queue::RedisQueue,
) -> Result<()> {
    join(
        store.database(),
        &settings.queue_shards,
        settings.queue_reshard,
        queue.shards(),
    )
    .await
}

/// Drop the retired counts of `queue` from the stored map, guarded on the map not having
/// changed since `layout` was read. The caller checked that every draining lane is empty and
/// that [`RETIRE_GRACE`] has passed since the change.
pub async fn retire_drained(db: &Database, queue: &str, layout: &Layout) -> Result<bool> {
    let r = collection(db)
        .update_one(
            doc! {"_id": queue, "changed_ms": layout.changed_ms},
            doc! {"$set": {"retired": Vec::<i32>::new(), "changed_ms": layout.changed_ms + 1}},
        )
        .await?;
    Ok(r.modified_count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_setting() {
        let m = parse_shards("imports=8, default=4").unwrap();
        assert_eq!(m["imports"], 8);
        assert_eq!(m["default"], 4);
        assert!(parse_shards("").unwrap().is_empty());
        assert!(parse_shards("imports").is_err());
        assert!(parse_shards("imports=0").is_err());
        assert!(parse_shards("imports=65").is_err());
        assert!(parse_shards("a=2,a=3").is_err());
        assert!(parse_shards("bad.name=2").is_err());
    }

    /// N lanes cover N distinct slot ranges, so a cluster whose masters own contiguous ranges
    /// gets lanes on every master.
    #[test]
    fn lanes_cover_distinct_slot_ranges() {
        for queue in ["imports", "default", "q-1", "x_y", "9"] {
            for n in [2u16, 3, 4, 8, 16, 64] {
                let lanes: Vec<String> = (0..n).map(|i| lane_name(queue, i, n)).collect();
                let mut ranges = BTreeSet::new();
                for (i, lane) in lanes.iter().enumerate() {
                    let slot = u32::from(key_slot(lane.as_bytes()));
                    let range = slot * u32::from(n) / SLOTS;
                    assert_eq!(range, i as u32, "{lane} of {n}");
                    ranges.insert(range);
                    assert_eq!(logical(lane), queue);
                    // The slot of the lane's keys is the slot of its tag.
                    let key = crate::keys::Keys::new("jm").queue(lane).ready;
                    assert_eq!(u32::from(key_slot(key.as_bytes())), slot);
                }
                assert_eq!(ranges.len(), usize::from(n));
            }
            assert_eq!(lane_name(queue, 0, 1), queue, "one shard keeps the name");
        }
    }

    #[test]
    fn placement_is_stable_and_spread() {
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[usize::from(shard_index(&format!("job-{i}"), 8))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(shard_index("abc", 8), shard_index("abc", 8));
    }

    #[test]
    fn layouts_drain_retired_lanes_once() {
        let l = Layout::new("imports", 4, vec![2, 1], 0);
        assert_eq!(l.current().len(), 4);
        assert!(l.draining().contains(&"imports".to_string()));
        assert!(l.draining().iter().all(|d| !l.current().contains(d)));
        let map = ShardMap::default();
        assert_eq!(map.lanes("imports"), vec!["imports".to_string()]);
        map.install([("imports".to_string(), l.clone())].into());
        assert_eq!(map.lanes("imports").len(), 4 + l.draining().len());
        assert!(map.check_queue_wide_limit("imports").is_err());
        assert!(map.check_queue_wide_limit("other").is_ok());
        let lane = map.lane_for("imports", "k");
        assert!(l.current().contains(&lane));
    }
}
