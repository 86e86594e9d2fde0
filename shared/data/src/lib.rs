//! jobmill-data: large files, datasets and cached pages, the workloads jobmill was first built
//! for. A feature of jobmill: it owns its collections, indexes, Redis keys and settings, and
//! plugs its kinds (`file_assembly`, `bulk_import`, `cache_rebuild`) into the engine.
//!
//! # Layout
//! - [`Data`]: the feature, as the binaries assemble it; [`DataSettings`] its section.
//! - [`files`]: uploads in parts and assembled files (GridFS's layout without dots).
//! - [`datasets`]: per-tenant collections of imported rows, with seek pagination.
//! - [`cache`]: the Redis page cache of dataset listings (versions, atomic swap, single flight).
//! - [`keys`]: the cache's Redis key names.
//! - [`kinds`]: `file_assembly`, `bulk_import`, `cache_rebuild`, one file each.
#![warn(missing_docs)]

pub mod cache;
pub mod datasets;
pub mod files;
pub mod keys;
pub mod kinds;

use std::time::Duration;

use jobmill::config::{Bounds, Env, Section, Setting};
use jobmill::kind::Registry;
use jobmill::outbox::BoxFuture;
use jobmill::{JobClient, Result};
use tokio_util::sync::CancellationToken;

use cache::PageCache;
use datasets::Datasets;
use files::FileStore;
use kinds::{BulkImport, CacheRebuild, FileAssembly};

/// Smallest upload part size (tests use it to get many parts from a small file).
pub const MIN_UPLOAD_PART_SIZE: usize = 64 * 1024;

/// `JOBMILL_UPLOAD_PART_SIZE`.
pub const UPLOAD_PART_SIZE: Setting = Setting {
    env: "JOBMILL_UPLOAD_PART_SIZE",
    default: "8388608",
    bounds: Bounds::Count(MIN_UPLOAD_PART_SIZE as u64, 1024 * 1024 * 1024),
    doc: "size of an upload part in bytes (65536 or more)",
};
/// `JOBMILL_UPLOAD_RETENTION`.
pub const UPLOAD_RETENTION: Setting = Setting {
    env: "JOBMILL_UPLOAD_RETENTION",
    default: "24h",
    bounds: Bounds::Duration(Duration::from_secs(60), Duration::from_secs(365 * 86_400)),
    doc: "uploads never completed, and their parts, are deleted after this (by the worker's sweeper, within a tenth of it more)",
};
/// `JOBMILL_PAGE_SIZE`.
pub const PAGE_SIZE: Setting = Setting {
    env: "JOBMILL_PAGE_SIZE",
    default: "50",
    bounds: Bounds::Count(1, 1000),
    doc: "rows per page of GET /v1/datasets/{name}/pages/{n}",
};
/// `JOBMILL_CACHE_PAGES`.
pub const CACHE_PAGES: Setting = Setting {
    env: "JOBMILL_CACHE_PAGES",
    default: "10",
    bounds: Bounds::Count(1, 1000),
    doc: "leading pages of each dataset kept in the Redis cache",
};

/// The data feature's settings.
#[derive(Debug, Clone)]
pub struct DataSettings {
    /// Size of an upload part.
    pub upload_part_size: usize,
    /// Retention of uploads never completed.
    pub upload_retention: Duration,
    /// Rows per cached page.
    pub page_size: usize,
    /// Leading pages of a dataset kept in the cache.
    pub cache_pages: usize,
}

impl Section for DataSettings {
    const SETTINGS: &'static [Setting] =
        &[UPLOAD_PART_SIZE, UPLOAD_RETENTION, PAGE_SIZE, CACHE_PAGES];

    fn read(env: &Env) -> Self {
        DataSettings {
            upload_part_size: env.count(&UPLOAD_PART_SIZE),
            upload_retention: env.duration(&UPLOAD_RETENTION),
            page_size: env.count(&PAGE_SIZE),
            cache_pages: env.count(&CACHE_PAGES),
        }
    }
}

impl Default for DataSettings {
    fn default() -> Self {
        DataSettings::read(&Env::new(|_| None))
    }
}

/// The data feature, as a binary assembles it. Cheap to clone.
#[derive(Clone)]
pub struct Data {
    client: JobClient,
    files: FileStore,
    datasets: Datasets,
    cache: PageCache,
    settings: DataSettings,
}

impl Data {
    /// The feature over a client's stores; cache rebuilds are submitted through `client`.
    pub fn new(client: &JobClient, settings: DataSettings) -> Self {
        let db = client.store().database();
        Data {
            files: FileStore::new(db, settings.upload_retention),
            datasets: Datasets::new(db),
            cache: PageCache::new(client, settings.page_size, settings.cache_pages),
            client: client.clone(),
            settings,
        }
    }

    /// The file store.
    pub fn files(&self) -> &FileStore {
        &self.files
    }

    /// The datasets.
    pub fn datasets(&self) -> &Datasets {
        &self.datasets
    }

    /// The page cache.
    pub fn cache(&self) -> &PageCache {
        &self.cache
    }

    /// The settings.
    pub fn settings(&self) -> &DataSettings {
        &self.settings
    }

    /// Create the indexes. Idempotent; both binaries call it at startup.
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.files.ensure_indexes().await
    }

    /// Register `file_assembly`, `bulk_import` and `cache_rebuild`.
    pub fn register_kinds(&self, r: &mut Registry) {
        r.register(FileAssembly::new(self.files.clone()))
            .register(BulkImport::new(
                self.client.store().clone(),
                self.files.clone(),
                self.datasets.clone(),
                self.cache.clone(),
            ))
            .register(CacheRebuild::new(self.cache.clone(), self.datasets.clone()));
    }

    /// The worker's loops of this feature: the upload sweeper.
    pub fn loops(&self, stop: CancellationToken) -> Vec<BoxFuture<'static, ()>> {
        vec![Box::pin(sweep_uploads(
            self.files.clone(),
            sweep_period(self.settings.upload_retention),
            stop,
        ))]
    }
}

/// Uploads handled per sweep query.
const SWEEP_BATCH: i64 = 100;

/// How often the sweeper looks: a tenth of the retention, between 1 s and 60 s, so an abandoned
/// upload outlives its retention by at most a tenth of it (or a minute).
pub fn sweep_period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Delete expired uploads (see [`FileStore::sweep`]) every `period`, in batches until none is
/// due. It replaces a TTL index on the pieces, which the files made of them must not have.
async fn sweep_uploads(files: FileStore, period: Duration, stop: CancellationToken) {
    loop {
        loop {
            match files.sweep(SWEEP_BATCH).await {
                Ok(n) if n as i64 == SWEEP_BATCH && !stop.is_cancelled() => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "upload sweep failed; trying again later");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
    }
}
