//! The one error type of the `jobmill` library crate.

use crate::state::JobState;

/// Everything that can go wrong inside the library.
///
/// Callers branch on the variant: `Stale` and `Conflict` are expected outcomes of racing
/// writers, the `Redis`/`Mongo` variants are infrastructure failures that are retried with
/// backoff, and `Invalid*` are caller mistakes that map to 4xx answers in the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed; the message names every broken setting.
    #[error("invalid configuration:\n{0}")]
    Config(String),

    /// Bad input: a job submission failed validation (bad field, unknown kind), or a request
    /// of a feature is malformed (API 422).
    #[error("{message}")]
    InvalidJob {
        /// Stable machine-readable code, e.g. `unknown_kind`.
        code: &'static str,
        /// Human sentence.
        message: String,
    },

    /// The args of a submission do not match the kind's schema (API 422 `invalid_args`, with
    /// each problem's JSON Pointer into `args`).
    #[error("{message}")]
    InvalidArgs {
        /// Human sentence listing the problems.
        message: String,
        /// Each problem.
        details: Vec<ArgProblem>,
    },

    /// An idempotency key was used before with a different request (API 422
    /// `idempotency_key_reused`). Nothing was stored.
    #[error("this idempotency key was already used by job {job_id} with a different request")]
    IdempotencyKeyReused {
        /// The job that owns the key.
        job_id: String,
    },

    /// A guarded transition found the job in another state or attempt than expected, so a
    /// newer writer already moved it on. Nothing was written.
    #[error("job {id} was not in the expected state (it is {actual:?})")]
    Stale {
        /// The job id.
        id: String,
        /// What the store holds now, if the job still exists.
        actual: Option<JobState>,
    },

    /// The requested transition is not allowed from the job's current state (API 409).
    #[error("job {id} is {state}; {action} is not possible")]
    Conflict {
        /// The job id.
        id: String,
        /// The state the job is in.
        state: JobState,
        /// What was attempted (`cancel`, `retry`).
        action: &'static str,
    },

    /// No such job (or it belongs to another tenant).
    #[error("job not found")]
    NotFound,

    /// No such record of a feature (or it belongs to another tenant). The field names what was
    /// looked for.
    #[error("no such {0}")]
    Missing(&'static str),

    /// A request or a resource is in a state that forbids the action (API 409).
    #[error("{message}")]
    Refused {
        /// Stable machine-readable code.
        code: &'static str,
        /// Human sentence.
        message: String,
    },

    /// A streamed body is larger than its limit (API 413).
    #[error("{0}")]
    TooLarge(String),

    /// Redis failed or was unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    /// MongoDB failed or was unreachable.
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),

    /// MongoDB failed a grouped write that this caller's job was part of (the cause is shared
    /// by every caller of the group, so it travels as text).
    #[error("mongodb: {0}")]
    StoreUnavailable(String),

    /// A stored document or queue payload could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// One way the args of a submission break the kind's schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArgProblem {
    /// JSON Pointer into `args` (`""` for args as a whole).
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl Error {
    /// A shorthand for [`Error::InvalidJob`].
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidJob {
            code,
            message: message.into(),
        }
    }

    /// True for failures of Redis or MongoDB themselves: worth retrying after a pause.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Redis(_) | Error::Mongo(_) | Error::StoreUnavailable(_)
        )
    }
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
