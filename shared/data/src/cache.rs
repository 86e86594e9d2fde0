//! The Redis page cache of dataset listings: versioned pages swapped in atomically, and the
//! single-flight rule that at most one `cache_rebuild` per dataset is queued or running.
//!
//! - A version is one HASH (page number → page JSON, `pages` → how many were written), built
//!   completely, then made current by `cache_swap.lua`. The replaced version stays readable for
//!   [`OLD_VERSION_GRACE`] (a reader may have just read `current`), then expires.
//! - Single flight: the `rebuild` key holds the job id of the rebuild in flight. The first
//!   requester wins `SET NX` with a `pending:<nonce>` placeholder, submits the job (idempotency
//!   key derived from the nonce) and writes its id; everyone else reads the id. The job clears
//!   the key when it ends (`cache_release.lua`); a key left by a job that died for good
//!   expires after [`REBUILD_MARK_TTL`].

use std::sync::LazyLock;
use std::time::Duration;

use mongodb::bson::Document;
use redis::{AsyncCommands, Script};
use serde_json::json;

use jobmill::error::{Error, Result};
use jobmill::redis_conn::RedisConn;
use jobmill::{JobClient, JobKind as _, NewJob};

use crate::datasets::{row_json, Dataset, Datasets};
use crate::keys::{CacheKeys, DataKeys};
use crate::kinds::CacheRebuild;

static SWAP: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/cache_swap.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/cache_release.lua")));

/// How long a replaced version stays readable.
pub const OLD_VERSION_GRACE: Duration = Duration::from_secs(60);
/// How long an unfinished version may live (a rebuild that died mid-way leaves it behind).
pub const BUILDING_TTL: Duration = Duration::from_secs(3600);
/// Longest a single-flight marker lives if its job never clears it.
pub const REBUILD_MARK_TTL: Duration = Duration::from_secs(600);
/// Rows a rebuild reads per query (whole pages of them): bounds its memory.
const REBUILD_WINDOW_ROWS: usize = 5000;

/// What a page read found.
#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    /// The page JSON of the current version.
    Hit(String),
    /// No current version (cold), or it does not hold the page.
    Miss {
        /// The current version the reader found (`None`: cold), for
        /// [`PageCache::request_rebuild_after_miss`].
        current: Option<String>,
    },
}

/// Handle to the page cache. Cheap to clone.
#[derive(Clone)]
pub struct PageCache {
    client: JobClient,
    conn: RedisConn,
    keys: DataKeys,
    /// Rows per page.
    pub page_size: usize,
    /// Leading pages cached.
    pub pages: usize,
}

impl PageCache {
    /// The cache over a client's Redis (rebuilds are submitted through the client).
    pub fn new(client: &JobClient, page_size: usize, pages: usize) -> Self {
        PageCache {
            client: client.clone(),
            conn: client.queue().connection(),
            keys: DataKeys::new(client.queue().keys()),
            page_size,
            pages,
        }
    }

    fn keys(&self, tenant: &str, dataset: &str) -> CacheKeys {
        self.keys.cache(tenant, dataset)
    }

    /// Page `n` from the current version.
    pub async fn read(&self, tenant: &str, dataset: &str, n: u64) -> Result<Cached> {
        let k = self.keys(tenant, dataset);
        let mut c = self.conn.clone();
        let Some(version): Option<String> = c.get(&k.current).await? else {
            return Ok(Cached::Miss { current: None });
        };
        // Not atomic with the GET above, and need not be: a replaced version stays readable
        // for OLD_VERSION_GRACE, far longer than this round trip.
        let (page, pages): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(k.version(&version))
            .arg(n)
            .arg("pages")
            .query_async(&mut c)
            .await?;
        Ok(match (page, pages) {
            (Some(p), _) => Cached::Hit(p),
            // The dataset ends before page n: an empty page, still from the cache.
            (None, Some(pages)) if n >= pages => Cached::Hit(page_json(
                dataset,
                n,
                self.page_size,
                Vec::new(),
                Some(&version),
            )),
            _ => Cached::Miss {
                current: Some(version),
            },
        })
    }

    /// Ask for a rebuild of a dataset's cache: returns the job id of the one queued or running,
    /// submitting it if there is none.
    pub async fn request_rebuild(&self, tenant: &str, dataset: &str) -> Result<String> {
        Ok(self
            .request(tenant, dataset, None)
            .await?
            .expect("always submits when unguarded"))
    }

    /// Ask for a rebuild after a miss that found `seen` as the current version (`None`: cold).
    /// Returns `None`, submitting nothing, when a rebuild swapped in a new version since: a
    /// reader can miss, then find the marker gone because that rebuild already ended (under a
    /// stampede with a worker running, the miss's MongoDB read takes long enough for this to
    /// happen), and would otherwise start a second rebuild of a cache that is fresh.
    pub async fn request_rebuild_after_miss(
        &self,
        tenant: &str,
        dataset: &str,
        seen: Option<&str>,
    ) -> Result<Option<String>> {
        self.request(tenant, dataset, Some(seen)).await
    }

    async fn request(
        &self,
        tenant: &str,
        dataset: &str,
        unless_swapped_since: Option<Option<&str>>,
    ) -> Result<Option<String>> {
        let k = self.keys(tenant, dataset);
        let mut c = self.conn.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let nonce = uuid::Uuid::new_v4().simple().to_string();
            let placeholder = format!("pending:{nonce}");
            let won: Option<String> = redis::cmd("SET")
                .arg(&k.rebuild)
                .arg(&placeholder)
                .arg("NX")
                .arg("EX")
                .arg(30)
                .query_async(&mut c)
                .await?;
            if won.is_some() {
                if let Some(seen) = unless_swapped_since {
                    // A rebuild swaps its version in before it clears the marker, so having won
                    // the marker means any rebuild that ended after the miss is visible here.
                    let now: Option<String> = c.get(&k.current).await?;
                    if now.as_deref() != seen {
                        let mut inv = RELEASE.prepare_invoke();
                        inv.key(&k.rebuild).arg(&placeholder);
                        let _: i64 = invoke(&c, &inv).await?;
                        return Ok(None);
                    }
                }
                let submitted = self
                    .client
                    .submit(
                        tenant,
                        NewJob {
                            kind: CacheRebuild::NAME.into(),
                            args: json!({ "dataset": dataset }),
                            idempotency_key: Some(format!("cache_rebuild:{dataset}:{nonce}")),
                            ..Default::default()
                        },
                    )
                    .await;
                let job = match submitted {
                    Ok(s) => s.job,
                    Err(e) => {
                        let _: () = c.del(&k.rebuild).await?;
                        return Err(e);
                    }
                };
                let _: () = redis::cmd("SET")
                    .arg(&k.rebuild)
                    .arg(&job.id)
                    .arg("EX")
                    .arg(REBUILD_MARK_TTL.as_secs())
                    .query_async(&mut c)
                    .await?;
                return Ok(Some(job.id));
            }
            // Someone else is submitting or has submitted: wait for the job id.
            let current: Option<String> = c.get(&k.rebuild).await?;
            match current {
                Some(v) if !v.starts_with("pending:") => return Ok(Some(v)),
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Corrupt(
                    "a cache rebuild is being submitted but its job id never appeared".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Clear the single-flight marker if it names `job_id`.
    pub async fn release(&self, tenant: &str, dataset: &str, job_id: &str) -> Result<()> {
        let k = self.keys(tenant, dataset);
        let c = self.conn.clone();
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&k.rebuild).arg(job_id);
        let _: i64 = invoke(&c, &inv).await?;
        Ok(())
    }

    /// Build a new version of the first `pages` pages and swap it in. Returns the version and
    /// how many pages it holds. `progress(done)` is called after each page.
    pub async fn rebuild(
        &self,
        datasets: &Datasets,
        ds: &Dataset,
        pages: usize,
        progress: impl Fn(usize),
    ) -> Result<(String, usize)> {
        let k = self.keys(&ds.tenant, &ds.name);
        let mut c = self.conn.clone();
        let version = jobmill::job::new_job_id();
        let vkey = k.version(&version);
        let mut written = 0;
        // Rows are read by seek on `_id`, a window of pages per query, not one skip query per
        // page: on the compatible server every sorted query sorts the whole dataset, so ten
        // skip queries over an imported million rows held the store for seconds (W7).
        let window = (REBUILD_WINDOW_ROWS / self.page_size.max(1)).max(1);
        let mut after: Option<String> = None;
        let mut n = 0;
        'windows: while n < pages {
            let take = window.min(pages - n);
            let rows = datasets
                .rows_after(ds, after.as_deref(), (take * self.page_size) as i64)
                .await?;
            if let Some(last) = rows.last() {
                after = Some(
                    last.get_str("_id")
                        .map_err(|e| Error::Corrupt(format!("row _id: {e}")))?
                        .to_string(),
                );
            }
            let mut rows = rows.into_iter();
            for _ in 0..take {
                let page: Vec<Document> = rows.by_ref().take(self.page_size).collect();
                let full = page.len() == self.page_size;
                if !page.is_empty() {
                    let json = page_json(
                        &ds.name,
                        n as u64,
                        self.page_size,
                        page.into_iter().map(row_json).collect(),
                        Some(&version),
                    );
                    let _: () = redis::pipe()
                        .hset(&vkey, n, json)
                        .expire(&vkey, BUILDING_TTL.as_secs() as i64)
                        .query_async(&mut c)
                        .await?;
                    written = n + 1;
                }
                n += 1;
                progress(n);
                if !full {
                    break 'windows;
                }
            }
        }
        let _: () = redis::pipe()
            .hset(&vkey, "pages", written)
            .expire(&vkey, BUILDING_TTL.as_secs() as i64)
            .query_async(&mut c)
            .await?;
        // Compare-and-set against a concurrent rebuild (only possible after a lease expired).
        loop {
            let old: Option<String> = c.get(&k.current).await?;
            let old = old.unwrap_or_default();
            let old_key = if old.is_empty() {
                vkey.clone()
            } else {
                k.version(&old)
            };
            let mut inv = SWAP.prepare_invoke();
            inv.key(&k.current)
                .key(&vkey)
                .key(&old_key)
                .arg(&old)
                .arg(&version)
                .arg(OLD_VERSION_GRACE.as_secs());
            let swapped: i64 = invoke(&c, &inv).await?;
            if swapped == 1 {
                return Ok((version, written));
            }
        }
    }
}

/// Run a cache script, retrying the transient errors of a Redis Cluster (a slot in migration,
/// a failover) a bounded number of times. Its keys share the dataset's hash tag, so it runs on
/// one slot.
async fn invoke<T: redis::FromRedisValue>(
    conn: &RedisConn,
    inv: &redis::ScriptInvocation<'_>,
) -> Result<T> {
    Ok(jobmill::redis_conn::with_retry(|| {
        let mut c = conn.clone();
        async move { inv.invoke_async(&mut c).await }
    })
    .await?)
}

/// The JSON of one page, as cached and as served.
pub fn page_json(
    dataset: &str,
    n: u64,
    page_size: usize,
    rows: Vec<serde_json::Value>,
    version: Option<&str>,
) -> String {
    json!({
        "dataset": dataset,
        "page": n,
        "page_size": page_size,
        "rows": rows,
        "version": version,
    })
    .to_string()
}
