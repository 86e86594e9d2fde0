//! jobmill's own benchmark: what the peers harness cannot measure. Every figure is reported with
//! the baseline it must be read against, measured in the same run on the same machine:
//! - `store`: the store's own ceilings (insert_one, insert_many, batched guarded updates).
//! - `w2`: 20,000 no-op jobs drained by one worker: handler rate, time until every outcome is
//!   durable in MongoDB, that durable rate against the store's update ceiling, and MongoDB
//!   commands per job (driver command monitoring).
//! - `w2apalis`: W2 through the apalis backend (`jobmill-apalis`) next to the native worker in
//!   the same run: handler rates (target: apalis at least 75% of native), every outcome
//!   durable, and worker CPU per job of both.
//! - `w2limits`: W2 on a queue with `concurrency: 40`, and with 1,000 distinct `limit_key`s at
//!   `key_concurrency: 1`, against the same queue unlimited in the same run (target: at most
//!   10% below unlimited).
//! - `w2cluster` (needs a cluster: `bench/run.sh w2cluster` starts one): W2 on a single Redis
//!   against a 3-master cluster with the queue unsharded and in 8 shards (handler rate, worker
//!   CPU per job, each master's Redis CPU per job), and W3's submit→start p99 on the cluster
//!   against the single Redis.
//! - `w3`: submit→start latency at 200 jobs/s (the harness's W3) between two passes of plain
//!   `insert_one` calls on the same schedule: the store's latency, W3's floor.
//! - `w1http`: 20,000 submissions over HTTP from 64 concurrent clients.
//! - `w1`: the library client: 2,000 sequential single submissions, and 20,000 in sequential
//!   batches of 1,000 (W1 bulk), to set against `store`'s ceilings.
//! - `soak` (not in the default list: minutes): the worker process's RSS over 200,000 jobs.
//! - `w5`: `wrk` on `GET /v1/jobs/{id}` of a finished job, plain and with `If-None-Match`,
//!   against a trivial axum endpoint returning a constant (the HTTP stack's ceiling).
//! - `w6`: a file uploaded in 8 MiB parts through the API and assembled by a `file_assembly`
//!   job, against a streaming copy of the same bytes between two local files.
//! - `w7`: NDJSON rows imported by a `bulk_import` job, against a raw `insert_many` loop of the
//!   same documents in the same batches on the same server.
//! - `w8`: 1,000 concurrent reads of a cold cached dataset page (single-flight rebuild), against
//!   the same 1,000 reads once the page is cached.
//! - `sched`: schedule fire lag at 100 schedules firing every second, against W3's
//!   submit→start p99 in the same run (target: at most 2×).
//! - `ui`: the dashboard's overview, queues, workers and first jobs page against the JSON
//!   endpoints serving the same data, at 1,000 and 1,000,000 stored jobs (`BENCH_UI_SMALL`,
//!   `BENCH_UI_JOBS`).
//!
//! `w6`–`w8`, `sched`, `ui` and `soak` take minutes at full size, so they run only when named.
//! Each works in a database of its own (`jobmill_bench_w6`...), dropped before and after, so a rerun starts cold.
//!
//! Needs: `BENCH_REDIS_URL` and `JOBMILL_BENCH_MONGODB_URI` (see `bench/run.sh`, which starts
//! private servers), `wrk` on the PATH for `w5`. Sizes: `BENCH_W6_MIB` (default 1024),
//! `BENCH_W7_ROWS` (default 1,000,000).
//!
//! ```text
//! jobmill-bench [store] [w1] [w2] [w2apalis] [w2limits] [w2cluster] [w2metrics] [queues] [sse]
//!               [w3] [w1http] [w5] [w6] [w7] [w8] [sched] [ui] [soak]
//!     (default: store w2 w3 w1http w5, in that order)
//! ```
//!
//! # Layout
//! `main` parses the workload names and dispatches; one module per workload:
//! [`store_ceiling`], [`w1_library`], [`w2_durable`], [`ops_views`], [`w3_floor`], [`w1_http`], [`w5`], [`w6_file_assembly`],
//! [`w7_bulk_import`], [`w8_stampede`], [`soak`]. What they share: [`servers`] (the deployment
//! under test: settings, store, API, worker), [`measure`] (rates, percentiles, pacing, knobs),
//! [`http`] (the API as a client sees it), [`local_files`] (the local-disk baselines).

mod http;
mod local_files;
mod measure;
mod ops_views;
mod sched_lag;
mod servers;
mod soak;
mod store_ceiling;
mod w1_http;
mod w1_library;
mod w2_cluster;
mod w2_durable;
mod w3_floor;
mod w5;
mod w6_file_assembly;
mod w7_bulk_import;
mod w8_stampede;
mod w9_ui;

use anyhow::bail;

use crate::ops_views::{queues_flat, sse_streams};
use crate::sched_lag::sched_lag;
use crate::soak::soak;
use crate::store_ceiling::store_ceiling;
use crate::w1_http::w1_http;
use crate::w1_library::w1_library;
use crate::w2_cluster::w2_cluster;
use crate::w2_durable::{w2_apalis, w2_durable, w2_limits, w2_metrics};
use crate::w3_floor::w3_floor;
use crate::w5::w5;
use crate::w6_file_assembly::w6_file_assembly;
use crate::w7_bulk_import::w7_bulk_import;
use crate::w8_stampede::w8_stampede;
use crate::w9_ui::w9_ui;

/// Jobs per run of `store`, `w2` and `w1http`.
pub(crate) const N: usize = 20_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut which: Vec<String> = std::env::args().skip(1).collect();
    if which.is_empty() {
        which = ["store", "w2", "w3", "w1http", "w5"]
            .map(String::from)
            .to_vec();
    }
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for w in &which {
        // The machine may be shared: each workload's figures are read with the load it ran
        // under.
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        rows.push((
            format!("{w} load average at start"),
            load.join(" "),
            format!(
                "{} cores",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
        ));
        let r = match w.as_str() {
            "store" => store_ceiling().await?,
            "w2" => w2_durable().await?,
            "w2apalis" => w2_apalis().await?,
            "w2limits" => w2_limits().await?,
            "w2cluster" => w2_cluster().await?,
            "w2metrics" => w2_metrics().await?,
            "queues" => queues_flat().await?,
            "sse" => sse_streams().await?,
            "w3" => w3_floor().await?,
            "soak" => soak().await?,
            "w1http" => w1_http().await?,
            "w1" => w1_library().await?,
            "w5" => w5().await?,
            "w6" => w6_file_assembly().await?,
            "w7" => w7_bulk_import().await?,
            "w8" => w8_stampede().await?,
            "sched" => sched_lag().await?,
            "ui" => w9_ui().await?,
            other => {
                bail!("unknown workload {other} (store, w1, w2, w2apalis, w2limits, w2cluster, w2metrics, queues, sse, w3, w1http, w5, w6, w7, w8, sched, ui, soak)")
            }
        };
        for (k, v, base) in r {
            eprintln!("{w}: {k} = {v}   [{base}]");
            rows.push((format!("{w} {k}"), v, base));
        }
    }
    println!("| measure | value | against (same run) |\n|---|---|---|");
    for (k, v, b) in rows {
        println!("| {k} | {v} | {b} |");
    }
    Ok(())
}

/// A workload's result rows: (measure, value, the same-run baseline it is read against).
pub(crate) type Rows = Vec<(String, String, String)>;
