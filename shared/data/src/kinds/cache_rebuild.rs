//! `cache_rebuild`: recomputes the cached leading pages of a dataset listing into a new
//! version and swaps it in atomically (see [`crate::cache`]), so readers never see an empty or
//! half-built cache. At most one runs per dataset (single flight); it clears its marker when
//! it ends.

use std::time::Duration;

use jobmill::kind::{JobContext, JobKind, KindDefaults, Outcome};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::cache::PageCache;
use crate::datasets::{check_name, Datasets, NAME_PATTERN};

/// Arguments of `cache_rebuild`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheRebuildArgs {
    /// Dataset whose pages to rebuild.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub dataset: String,
    /// How many leading pages (default `JOBMILL_CACHE_PAGES`, at most 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub pages: Option<usize>,
}

/// Rebuilds dataset page caches.
pub struct CacheRebuild {
    cache: PageCache,
    datasets: Datasets,
}

impl CacheRebuild {
    /// The kind, with the cache it rebuilds and the datasets it reads.
    pub fn new(cache: PageCache, datasets: Datasets) -> Self {
        CacheRebuild { cache, datasets }
    }
}

impl JobKind for CacheRebuild {
    const NAME: &'static str = "cache_rebuild";
    const DESCRIPTION: &'static str =
        "Rebuilds a dataset's cached leading pages as a new version and swaps it in atomically.";
    type Args = CacheRebuildArgs;

    fn validate(&self, a: &CacheRebuildArgs) -> Result<(), String> {
        check_name(&a.dataset)?;
        if a.pages.is_some_and(|p| !(1..=1000).contains(&p)) {
            return Err("pages must be from 1 to 1000".into());
        }
        Ok(())
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            timeout: Duration::from_secs(600),
            ..KindDefaults::default()
        }
    }

    async fn run(&self, ctx: JobContext, a: CacheRebuildArgs) -> Outcome {
        let cache = &self.cache;
        let outcome = rebuild(&ctx, cache, &self.datasets, &a).await;
        // A retry keeps the marker (this same job runs again); any end releases it, so the next
        // miss may start a fresh rebuild.
        let ends = !matches!(outcome, Outcome::Retry { .. }) || ctx.attempt >= ctx.max_attempts;
        if ends {
            if let Err(e) = cache.release(&ctx.tenant, &a.dataset, &ctx.id).await {
                tracing::warn!(error = %e, "could not clear the rebuild marker; it expires");
            }
        }
        outcome
    }
}

async fn rebuild(
    ctx: &JobContext,
    cache: &PageCache,
    datasets: &Datasets,
    a: &CacheRebuildArgs,
) -> Outcome {
    let pages = a.pages.unwrap_or(cache.pages);
    // An import that finishes while we read would leave us caching old rows: compare the
    // dataset's generation before and after, and build again if it moved (a few times at most).
    for _ in 0..3 {
        let ds = match datasets.get(&ctx.tenant, &a.dataset).await {
            Ok(Some(d)) => d,
            Ok(None) => return Outcome::fail(format!("dataset {} does not exist", a.dataset)),
            Err(e) => return Outcome::retry(e),
        };
        ctx.progress(0, Some(pages as i64), Some("building a new version"));
        let built = cache
            .rebuild(datasets, &ds, pages, |done| {
                ctx.progress(
                    done as i64,
                    Some(pages as i64),
                    Some("building a new version"),
                )
            })
            .await;
        let (version, written) = match built {
            Ok(v) => v,
            Err(e) => return Outcome::retry(e),
        };
        match datasets.get(&ctx.tenant, &a.dataset).await {
            Ok(Some(now)) if now.generation != ds.generation => continue,
            Err(e) => return Outcome::retry(e),
            _ => {}
        }
        ctx.progress(pages as i64, Some(pages as i64), Some("swapped in"));
        return Outcome::success(json!({
            "dataset": a.dataset,
            "version": version,
            "pages": written,
            "generation": ds.generation,
        }));
    }
    Outcome::retry("the dataset kept changing during the rebuild")
}
