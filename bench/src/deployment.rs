//! The bench deployment: one queue (`bench`) under its own key prefix and database, settings
//! from the harness's environment, MongoDB command counting, and the reset that keeps MongoDB in
//! step with the harness's FLUSHDB.
//!
//! The harness wipes Redis between workloads. Redis-only systems forget everything with it;
//! jobmill also keeps every job in MongoDB, and its reconciler would faithfully put the jobs of
//! the previous workload back. So the adapter treats "the generation marker vanished from Redis"
//! as "the harness reset the system" and empties the jobs collection too, then marks Redis as
//! holding a full copy (the epoch), exactly the state of a fresh deployment.

use jobmill::config::Config as _;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jobmill::catalog::Catalog;
use jobmill::client::{JobClient, Limits};
use jobmill::config::CoreSettings;
use jobmill::queue::RedisQueue;
use jobmill::store::Store;
use jobmill::Registry;
use jobmill_api::ApiConfig;
use jobmill_worker::WorkerConfig;
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use redis::AsyncCommands;

/// Queue of every bench job.
pub const QUEUE: &str = "bench";
/// Tenant of every bench job.
pub const TENANT: &str = "bench";
/// API key of the HTTP variant.
pub const API_SECRET: &str = "bench-secret-0123456789";
/// An operator key, for the operator views (`GET /v1/queues`) the benchmarks read.
pub const OPS_SECRET: &str = "bench-ops-secret-0123456789";
/// Redis key whose disappearance means the harness reset the system.
const GENERATION: &str = "bench:jobmill:generation";

/// The settings of the bench deployment: an API process's and a worker process's, read from
/// the same variables. Derefs to the engine's section, which both share.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What `jobmill-api` would load.
    pub api: ApiConfig,
    /// What `jobmill-worker` would load.
    pub worker: WorkerConfig,
}

impl std::ops::Deref for Settings {
    type Target = CoreSettings;

    fn deref(&self) -> &CoreSettings {
        &self.api.core
    }
}

impl std::ops::DerefMut for Settings {
    fn deref_mut(&mut self) -> &mut CoreSettings {
        &mut self.api.core
    }
}

impl Settings {
    /// The worker's config, with the engine's section as changed through `DerefMut`.
    pub fn worker_config(&self) -> WorkerConfig {
        let mut w = self.worker.clone();
        w.core = self.api.core.clone();
        w
    }
}

/// A submission client over these stores that knows `registry`'s kinds (no feature hooks: the
/// bench measures the engine's own path).
pub fn client(store: Store, queue: RedisQueue, registry: &Registry, s: &Settings) -> JobClient {
    JobClient::new(
        store,
        queue,
        Catalog::new(registry),
        Limits::from_settings(s),
        Vec::new(),
    )
}

/// Settings for the bench deployment, from `BENCH_*` variables.
pub fn settings(concurrency: usize) -> anyhow::Result<Settings> {
    settings_with(concurrency, &[])
}

/// [`settings`] with some variables replaced (`("JOBMILL_REDIS_CLUSTER", seeds)` with a blank
/// `JOBMILL_REDIS_URL` for a cluster, `JOBMILL_QUEUE_SHARDS`, another database or prefix).
pub fn settings_with(
    concurrency: usize,
    overrides: &[(&'static str, String)],
) -> anyhow::Result<Settings> {
    let redis =
        std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6391/0".into());
    let mongo = std::env::var("JOBMILL_BENCH_MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27391/?directConnection=true".into());
    let api_port = std::env::var("JOBMILL_BENCH_API_PORT").unwrap_or_else(|_| "8391".into());
    let vars: BTreeMap<&str, String> = [
        ("JOBMILL_REDIS_URL", redis),
        ("JOBMILL_MONGODB_URI", mongo),
        ("JOBMILL_MONGODB_DB", "jobmill_bench".to_string()),
        ("JOBMILL_KEY_PREFIX", "jmbench".to_string()),
        ("JOBMILL_QUEUES", QUEUE.to_string()),
        ("JOBMILL_CONCURRENCY", concurrency.to_string()),
        ("JOBMILL_API_ADDR", format!("127.0.0.1:{api_port}")),
        (
            "JOBMILL_API_KEYS",
            format!("{TENANT}:{API_SECRET}:submitter,benchops:{OPS_SECRET}:operator"),
        ),
        ("JOBMILL_MAX_ARGS_BYTES", "4096".to_string()),
        (
            "JOBMILL_LOG",
            std::env::var("JOBMILL_LOG").unwrap_or_else(|_| "warn".into()),
        ),
        // Outcomes may run ahead of MongoDB by a whole W2 run; see docs/performance.md.
        (
            "JOBMILL_MAX_UNRECORDED",
            std::env::var("JOBMILL_MAX_UNRECORDED").unwrap_or_else(|_| "25000".into()),
        ),
    ]
    .into_iter()
    .collect();
    let mut vars = vars;
    for (k, v) in overrides {
        vars.insert(k, v.clone());
    }
    Ok(Settings {
        api: ApiConfig::from_lookup(|k| vars.get(k).cloned())?,
        worker: WorkerConfig::from_lookup(|k| vars.get(k).cloned())?,
    })
}

/// MongoDB commands sent by this process, by command name.
#[derive(Clone, Default)]
pub struct CommandCounter {
    by_name: Arc<Mutex<BTreeMap<String, u64>>>,
    total: Arc<AtomicU64>,
    /// When tracing: started commands by request id, and the finished ones.
    trace: Arc<Mutex<Option<CommandTrace>>>,
}

/// Each finished command: when it started (ms since the Unix epoch), its name, its collection
/// and how long the driver waited for it (µs).
#[derive(Default)]
struct CommandTrace {
    started: BTreeMap<i32, (f64, String, String)>,
    done: Vec<(f64, String, String, u128)>,
}

impl CommandCounter {
    /// Total commands so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts by command name.
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        self.by_name.lock().expect("counter").clone()
    }

    /// Start recording every command's start, target and duration when the environment
    /// variable `var` names a file (`BENCH_W3_TRACE` and the like); returns that file, for
    /// [`Self::write_trace`].
    pub fn trace_if(&self, var: &str) -> Option<String> {
        let file = std::env::var(var).ok()?;
        *self.trace.lock().expect("trace") = Some(CommandTrace::default());
        Some(file)
    }

    /// Stop tracing and write the commands finished since [`Self::trace_if`] to
    /// `<file>.commands`, a line each: `start_ms name collection duration_us`.
    pub fn write_trace(&self, file: &str) -> std::io::Result<()> {
        let t = self.trace.lock().expect("trace").take().unwrap_or_default();
        let lines: Vec<String> = t
            .done
            .into_iter()
            .map(|(at, name, coll, us)| format!("{at:.3} {name} {coll} {us}"))
            .collect();
        std::fs::write(format!("{file}.commands"), lines.join("\n"))
    }

    fn on_event(&self, ev: CommandEvent) {
        match ev {
            CommandEvent::Started(started) => {
                self.total.fetch_add(1, Ordering::Relaxed);
                *self
                    .by_name
                    .lock()
                    .expect("counter")
                    .entry(started.command_name.clone())
                    .or_default() += 1;
                if let Some(t) = self.trace.lock().expect("trace").as_mut() {
                    let coll = started
                        .command
                        .get(&started.command_name)
                        .and_then(|v| v.as_str())
                        .unwrap_or("-")
                        .to_string();
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64() * 1000.0)
                        .unwrap_or(0.0);
                    t.started
                        .insert(started.request_id, (at, started.command_name, coll));
                }
            }
            CommandEvent::Succeeded(ev) => self.finished(ev.request_id, ev.duration),
            CommandEvent::Failed(ev) => self.finished(ev.request_id, ev.duration),
            _ => {}
        }
    }

    fn finished(&self, request_id: i32, took: std::time::Duration) {
        if let Some(t) = self.trace.lock().expect("trace").as_mut() {
            if let Some((at, name, coll)) = t.started.remove(&request_id) {
                t.done.push((at, name, coll, took.as_micros()));
            }
        }
    }
}

/// A store whose client counts every command it starts (driver command monitoring).
pub async fn counted_store(s: &Settings) -> anyhow::Result<(Store, CommandCounter)> {
    let counter = CommandCounter::default();
    let mut opts = jobmill::store::client_options_for(s).await?;
    let c = counter.clone();
    opts.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
        c.on_event(ev)
    }));
    let store = Store::connect_with(opts, &s.mongodb_db, s.retention)?;
    Ok((store, counter))
}

/// If the harness reset Redis since the last call, empty MongoDB's jobs too (see module doc).
pub async fn sync_with_harness_reset(s: &Settings, store: &Store) -> anyhow::Result<()> {
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    let mut conn = queue.connection();
    // Two phases, so nobody inserts jobs while another process is still emptying the
    // collection (the harness starts the worker and the producer back to back).
    let won: bool = redis::cmd("SET")
        .arg(GENERATION)
        .arg("resetting")
        .arg("NX")
        .arg("EX")
        .arg(120)
        .query_async::<Option<String>>(&mut conn)
        .await?
        .is_some();
    if won {
        store
            .database()
            .collection::<mongodb::bson::Document>(jobmill::store::JOBS)
            .drop()
            .await?;
        store.ensure_indexes().await?;
        queue.set_epoch(QUEUE).await?;
        let _: () = conn.set(GENERATION, "ready").await?;
    } else {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while conn.get::<_, Option<String>>(GENERATION).await?.as_deref() != Some("ready") {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "bench reset never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let _: () = conn.sadd(queue.keys().queues(), QUEUE).await?;
    Ok(())
}
