//! Finished jobs, kept in memory for status polls.
//!
//! Polling a job that already ended is the most common request of all, and the answer almost
//! never changes: a finished job moves again only if someone retries it. So the API keeps
//! finished jobs here instead of reading MongoDB for every poll. Entries are dropped as soon as
//! the job-change event of their job arrives (every API replica subscribes, so a retry through
//! any replica clears them all), and a short time-to-live bounds how stale an entry can get if
//! an event is missed while Redis reconnects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;
use jobmill::Job;

/// A finished job with its answer already rendered: a poll costs a map lookup.
pub struct Cached {
    /// The job (for the tenant check).
    pub job: Job,
    /// The JSON body of `GET /v1/jobs/{id}`.
    pub body: Bytes,
    /// Its ETag.
    pub etag: HeaderValue,
    /// Its Location.
    pub location: HeaderValue,
}

/// Longest an entry is served without an invalidation.
pub const TTL: Duration = Duration::from_secs(2);
/// Most entries kept (a few MB); past it the oldest half is dropped.
pub const CAPACITY: usize = 20_000;

/// The cache. Cheap to share.
#[derive(Default)]
pub struct FinishedJobs {
    // A std Mutex: every critical section is a map operation, never an await.
    jobs: Mutex<HashMap<String, (Arc<Cached>, Instant)>>,
}

impl FinishedJobs {
    /// A fresh entry for `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Cached>> {
        let jobs = self.jobs.lock().expect("finished jobs lock");
        jobs.get(id)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(j, _)| j.clone())
    }

    /// Remember a finished job's rendered answer.
    pub fn put(&self, entry: Cached) {
        if !entry.job.state.is_terminal() {
            return;
        }
        let mut jobs = self.jobs.lock().expect("finished jobs lock");
        if jobs.len() >= CAPACITY {
            let now = Instant::now();
            jobs.retain(|_, (_, at)| now.duration_since(*at) < TTL / 2);
        }
        jobs.insert(entry.job.id.clone(), (Arc::new(entry), Instant::now()));
    }

    /// Forget the jobs named in a change event (comma-separated ids).
    pub fn forget(&self, event: &str) {
        let mut jobs = self.jobs.lock().expect("finished jobs lock");
        if jobs.is_empty() {
            return;
        }
        for id in event.split(',') {
            jobs.remove(id);
        }
    }

    /// Forget everything (the change events may have been missed).
    pub fn clear(&self) {
        self.jobs.lock().expect("finished jobs lock").clear();
    }
}
