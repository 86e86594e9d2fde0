//! Shared parts of jobmill's benchmarks: the harness's three handlers written as ordinary
//! user-defined job kinds, settings for the bench deployment, MongoDB command counting, and the
//! per-run reset that mirrors the harness's FLUSHDB.
//!
//! # Layout
//! - [`kinds`]: `bench_noop`, `bench_lat`, `bench_sleep` (the peers-bench handlers).
//! - [`deployment`]: settings, reset between workloads, command counting.

pub mod deployment;
pub mod kinds;
