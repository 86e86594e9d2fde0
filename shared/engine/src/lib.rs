//! jobmill: the engine of a background job system. It knows jobs, queues, kinds and their
//! catalog, and nothing of the features built on it: those plug in through
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
//! - [`observe`]: hooks told of applied outcomes (exact counters for features).
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
pub mod observe;
pub mod outbox;
pub mod pubsub;
pub mod queue;
pub mod redis_conn;
pub mod shards;
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

#[cfg(test)]
mod layout {
    //! The engine knows nothing of its features: this fails if its source names one, or if its
    //! manifest depends on another crate of the workspace.

    use std::path::Path;

    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("src dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "lua") {
                let text = std::fs::read_to_string(&path).expect("source");
                out.push((path.display().to_string(), text));
            }
        }
    }

    #[test]
    fn the_engine_names_no_feature_and_depends_on_no_workspace_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        sources(&root.join("src"), &mut files);
        // Spelled in pieces so this test does not name them itself.
        let forbidden = [
            ["web", "hook"].concat(),
            ["data", "set"].concat(),
            ["call", "back"].concat(),
            ["up", "load"].concat(),
            ["File", "Store"].concat(),
            ["page ", "cache"].concat(),
        ];
        for (path, text) in &files {
            let lower = text.to_lowercase();
            for word in &forbidden {
                assert!(
                    !lower.contains(&word.to_lowercase()),
                    "{path} names the feature word '{word}'"
                );
            }
        }
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
        assert!(
            !manifest.contains("jobmill-"),
            "the engine depends on a workspace crate:\n{manifest}"
        );
    }
}
