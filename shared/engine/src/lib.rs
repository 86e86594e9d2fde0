//! jobmill: the engine of a background job system. It knows jobs, queues, kinds and their
//! catalog, and nothing of the features built on it (webhooks, data): those plug in through
//! [`client::SubmitHook`], [`outbox::Subscriber`] and their own kinds, and own their own
//! collections, keys, settings and loops.
//!
//! # Layout
//! - [`job`]: the job record (MongoDB) and payload (Redis).
//! - [`state`]: the job state machine, attempt outcomes, the one `decide` function, backoff.
//! - [`store`]: MongoDB, the system of record; one guarded write per transition, and each
//!   write's Redis follow-up ([`store::Write::follow_up`]).
//! - [`queue`]: Redis queues, one Lua script per atomic operation (`src/scripts/`).
//! - [`redis_conn`]: one connection type over a single Redis or a Redis Cluster, the slot
//!   function and the bounded retry of transient cluster errors.
//! - [`keys`]: every Redis key and channel name of the engine.
//! - [`pubsub`]: Redis pub/sub for wake-ups, cancel signals and change events.
//! - [`client`]: submission (MongoDB first, then Redis), cancel, retry; submit hooks.
//! - [`kind`]: the `JobKind` trait, its context, typed outcome, and the `Registry`.
//! - [`catalog`]: the kinds catalog (announced JSON Schemas) that submissions are checked
//!   against.
//! - [`kinds`]: the engine's own kinds (`noop`, `sleep`, `fail`), one file each.
//! - [`outbox`]: the job-event outbox and its subscribers.
//! - [`view`]: the job as the API and event subscribers show it.
//! - [`config`]: the settings table machinery and the engine's own section.
//! - [`telemetry`]: logging setup and the shutdown signal of the binaries.
//! - [`error`]: the crate's error type.
#![warn(missing_docs)]

pub mod catalog;
pub mod client;
pub mod config;
pub mod error;
pub mod job;
pub mod keys;
pub mod kind;
pub mod kinds;
pub mod outbox;
pub mod pubsub;
pub mod queue;
pub mod redis_conn;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod view;

pub use client::{JobClient, NewJob, SubmitHook, Submitted};
pub use config::CoreSettings;
pub use error::{Error, Result};
pub use job::{Job, Progress};
pub use kind::{JobContext, JobKind, KindDefaults, Outcome, Registry};
pub use state::JobState;
