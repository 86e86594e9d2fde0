//! The crate's one error type.

/// What can go wrong in the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine refused or failed (submission, stores).
    #[error(transparent)]
    Jobmill(#[from] jobmill::Error),
    /// The worker runtime could not start.
    #[error(transparent)]
    Worker(#[from] jobmill_worker::WorkerError),
    /// A pushed task's arguments do not serialize to JSON.
    #[error("task arguments are not JSON: {0}")]
    Args(#[from] serde_json::Error),
    /// A pushed task names a run time before the epoch or beyond the calendar.
    #[error("task run_at {0} is out of range")]
    RunAt(u64),
}
