//! The one error type of the worker library.

/// Why a worker could not start or stop cleanly. Store and queue errors while running are not
/// here: the worker backs off and retries them.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Settings were invalid.
    #[error(transparent)]
    Config(#[from] jobmill::Error),
    /// The heartbeat thread could not be started.
    #[error("could not start the heartbeat thread: {0}")]
    Heartbeat(std::io::Error),
}
