//! jobmill: a background job system. This crate is the core shared by the API and the workers.
//!
//! # Layout
//! - [`state`]: the job state machine, attempt outcomes, the one `decide` function, backoff.
//! - [`job`]: the job record (MongoDB) and payload (Redis).
//! - [`kind`]: the `JobKind` trait a job kind implements, its context and typed outcome.
//! - [`kinds`]: the built-in kinds (`noop`, `sleep`, `fail`, `file_assembly`, `bulk_import`,
//!   `cache_rebuild`), one file each.
//! - [`cache`]: the Redis page cache of dataset listings (versions, atomic swap, single flight).
//! - [`datasets`]: per-tenant collections of imported rows, with seek pagination.
//! - [`files`]: the file store: uploads in parts, assembled files in chunk collections.
//! - [`store`]: MongoDB, the system of record; one guarded method per transition.
//! - [`queue`]: Redis queues, one Lua script per atomic operation (`src/scripts/`).
//! - [`keys`]: every Redis key name.
//! - [`pubsub`]: Redis pub/sub for wake-ups, cancel signals and change events.
//! - [`view`]: the job as the API and webhook events show it.
//! - [`webhooks`]: signed result callbacks: signing, SSRF guard, endpoints and deliveries.
//! - [`client`]: submission (MongoDB first, then Redis), cancel, retry.
//! - [`config`]: typed `JOBMILL_*` settings, validated at startup.
//! - [`telemetry`]: logging setup and the shutdown signal of the binaries.
//! - [`error`]: the crate's error type.
#![warn(missing_docs)]

pub mod cache;
pub mod client;
pub mod config;
pub mod datasets;
pub mod error;
pub mod files;
pub mod job;
pub mod keys;
pub mod kind;
pub mod kinds;
pub mod pubsub;
pub mod queue;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod view;
pub mod webhooks;

pub use client::{JobClient, NewJob, Submitted};
pub use config::Settings;
pub use error::{Error, Result};
pub use job::{Job, Progress};
pub use kind::{JobContext, JobKind, Outcome, Registry};
pub use state::JobState;
