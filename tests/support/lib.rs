//! Test harness: per-test isolation on real servers (a fresh Redis key prefix and MongoDB
//! database per test, never a flush of the shared servers), in-process API and workers, real
//! worker processes to kill, and private redis-server / nx-27017 instances for the tests that
//! restart or flush a server.
//!
//! `scripts/test.sh` starts the shared servers and exports `JOBMILL_TEST_*`.

use jobmill::config::Config as _;
use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobmill::config::CoreSettings;
use jobmill::Registry;
use jobmill_api::ApiConfig;
use jobmill_worker::WorkerConfig;
use serde_json::Value;
use tokio::sync::oneshot;

/// Secrets of the test keys.
pub const ALICE: &str = "alice-secret-0123456789";
/// Another submitter.
pub const BOB: &str = "bob-secret-0123456789ab";
/// An operator.
pub const OPS: &str = "ops-secret-0123456789abc";
/// Key `eyes` (viewer).
pub const EYES: &str = "eyes-secret-0123456789ab";
/// Every test's `JOBMILL_WEBHOOK_DESTINATIONS`: loopback only.
pub const LOOPBACK: &str = "127.0.0.1,localhost,[::1]";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test.sh, which starts the servers")
    })
}

/// Where the built binaries are.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("JOBMILL_TEST_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// Scratch space for logs and private servers (under `target/`, so it is ignored by git).
pub fn tmp_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/jobmill-tests");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A free port on loopback, never one this process handed out before: the kernel may give a
/// released port again, and two servers of one test (an API and a worker's metrics, say) then
/// meet on it, so that a request reaches the wrong one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// The shared test Redis of this run: the cluster's seed URLs (comma-separated) on the cluster
/// pass of `scripts/test.sh` (`JOBMILL_TEST_REDIS_CLUSTER`), else the single server's URL.
pub fn shared_redis() -> String {
    match std::env::var("JOBMILL_TEST_REDIS_CLUSTER") {
        Ok(seeds) if !seeds.trim().is_empty() => seeds,
        _ => env("JOBMILL_TEST_REDIS_URL"),
    }
}

/// Whether this run is the cluster pass.
pub fn on_cluster() -> bool {
    std::env::var("JOBMILL_TEST_REDIS_CLUSTER").is_ok_and(|s| !s.trim().is_empty())
}

/// The shared test MongoDB.
pub fn shared_mongo() -> String {
    env("JOBMILL_TEST_MONGODB_URI")
}

/// The settings naming `redis`: seed URLs with commas are a cluster (`JOBMILL_REDIS_CLUSTER`),
/// anything else one server (`JOBMILL_REDIS_URL`).
fn redis_vars(redis: &str) -> (&'static str, String) {
    if redis.contains(',') {
        ("JOBMILL_REDIS_CLUSTER", redis.to_string())
    } else {
        ("JOBMILL_REDIS_URL", redis.to_string())
    }
}

/// One test's private corner of the servers.
pub struct Ctx {
    /// Settings as env vars (also handed to worker processes).
    pub vars: HashMap<String, String>,
}

impl Ctx {
    /// A fresh prefix and database on the shared test servers.
    pub fn new(name: &str) -> Self {
        Self::on(name, &shared_redis(), &shared_mongo())
    }

    /// A fresh prefix and database on the given servers. `redis` is a URL, or a cluster's
    /// comma-separated seed URLs.
    pub fn on(name: &str, redis: &str, mongo_uri: &str) -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let vars: HashMap<String, String> = [
            redis_vars(redis),
            ("JOBMILL_MONGODB_URI", mongo_uri.to_string()),
            ("JOBMILL_MONGODB_DB", format!("t_{name}_{tag}")),
            ("JOBMILL_KEY_PREFIX", format!("t:{name}:{tag}")),
            (
                "JOBMILL_API_KEYS",
                format!(
                    "alice:{ALICE}:submitter,bob:{BOB}:submitter,ops:{OPS}:operator,eyes:{EYES}:viewer"
                ),
            ),
            ("JOBMILL_LEASE_TTL", "2s".into()),
            ("JOBMILL_RETRY_BASE", "100ms".into()),
            ("JOBMILL_RETRY_MAX", "1s".into()),
            ("JOBMILL_CANCEL_GRACE", "2s".into()),
            ("JOBMILL_SHUTDOWN_TIMEOUT", "10s".into()),
            ("JOBMILL_CONCURRENCY", "16".into()),
            ("JOBMILL_LOG", "warn,jobmill_worker=info".into()),
            // No test may send a webhook off this machine, whatever URL it names.
            ("JOBMILL_WEBHOOK_DESTINATIONS", LOOPBACK.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ctx { vars }
    }

    /// Override a setting.
    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.insert(k.to_string(), v.to_string());
        self
    }

    /// Drop a setting (back to its default).
    pub fn unset(&mut self, k: &str) -> &mut Self {
        self.vars.remove(k);
        self
    }

    /// Typed settings of an API process.
    pub fn settings(&self) -> ApiConfig {
        ApiConfig::from_lookup(|k| self.vars.get(k).cloned()).expect("test settings")
    }

    /// The engine's settings.
    pub fn core(&self) -> CoreSettings {
        self.settings().core
    }

    /// Start the API in this process on a free port.
    pub async fn api(&self) -> Api {
        let settings = self.settings();
        let state = jobmill_api::AppState::connect(&settings, Registry::new())
            .await
            .expect("api state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // The real server loop, with the HTTP limits a test may shorten through `set`.
        let limits = settings.http.clone();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            jobmill_api::server::serve_on(listener, jobmill_api::app(state), limits, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Api {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            _stop: tx,
        }
    }

    /// Run a worker inside this process.
    pub fn worker(&self) -> InprocWorker {
        let settings = WorkerConfig::from_lookup(|k| self.vars.get(k).cloned()).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            jobmill_worker::run(settings, Registry::new(), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        InprocWorker {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Start a real `jobmill-worker` process.
    pub fn worker_process(&self, args: &[&str]) -> Proc {
        self.process("jobmill-worker", args)
    }

    /// Start a real process of a workspace binary (a worker of the stock kind or a user's own,
    /// like `custom-kind-worker`) with this test's settings.
    pub fn process(&self, binary: &str, args: &[&str]) -> Proc {
        let log_dir = tmp_dir();
        let log = log_dir.join(format!(
            "{binary}-{}-{}.log",
            self.vars["JOBMILL_KEY_PREFIX"].replace(':', "_"),
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin(binary))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.vars)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        Proc { child, log }
    }

    /// A library client on this test's servers that knows the engine's kinds (`noop`,
    /// `sleep`, `fail`).
    pub async fn client(&self) -> jobmill::JobClient {
        let catalog = jobmill::catalog::Catalog::new(&Registry::builtin());
        jobmill::JobClient::connect(&self.core(), catalog)
            .await
            .expect("client")
    }

    /// A connection to this test's Redis (single server or cluster, as the run is).
    pub async fn redis(&self) -> jobmill::redis_conn::RedisConn {
        jobmill::redis_conn::RedisConn::connect(&self.core().redis)
            .await
            .expect("redis")
    }

    /// A direct store handle on this test's database.
    pub async fn store(&self) -> jobmill::store::Store {
        let s = self.core();
        jobmill::store::Store::connect_settings(&s).await.unwrap()
    }
}

/// A worker running in the test process.
pub struct InprocWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl InprocWorker {
    /// Ask it to drain and wait until it stopped.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

/// A child process, killed with SIGKILL when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Where its output goes.
    pub log: PathBuf,
}

impl Proc {
    /// Send a signal.
    pub fn signal(&self, sig: i32) {
        let rc = unsafe_free_kill(self.child.id(), sig);
        assert!(rc, "kill({}, {sig}) failed", self.child.id());
    }

    /// Wait for exit, at most `limit`; returns the status if it exited.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill(2)` through the `kill` command, keeping the crate free of unsafe code.
pub fn unsafe_free_kill(pid: u32, sig: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// SIGKILL.
pub const SIGKILL: i32 = libc::SIGKILL;
/// SIGTERM.
pub const SIGTERM: i32 = libc::SIGTERM;

/// A running API and an HTTP client for it.
pub struct Api {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// Client.
    pub http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// Status and JSON body of an answer.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body parsed as JSON (Null if empty or not JSON).
    pub body: Value,
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// Send a request with an optional key and raw body.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (h, v) in headers {
            req = req.header(*h, *v);
        }
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, key: &str, body: Value) -> Answer {
        self.raw(
            reqwest::Method::POST,
            path,
            Some(key),
            Some(("application/json", serde_json::to_vec(&body).unwrap())),
            &[],
        )
        .await
    }

    /// GET.
    pub async fn get(&self, path: &str, key: &str) -> Answer {
        self.raw(reqwest::Method::GET, path, Some(key), None, &[])
            .await
    }

    /// Submit a job and return its id (asserting 202).
    pub async fn submit(&self, key: &str, body: Value) -> String {
        let a = self.post("/v1/jobs", key, body.clone()).await;
        assert_eq!(a.status, 202, "submit {body}: {}", a.body);
        a.body["id"].as_str().unwrap().to_string()
    }

    /// Submit `n` copies of `job` through `POST /v1/jobs/batch` (1,000 per request, asserting
    /// 202); their ids in order.
    pub async fn submit_many(&self, key: &str, n: usize, job: Value) -> Vec<String> {
        self.submit_jobs(key, &vec![job; n]).await
    }

    /// Submit `jobs` through `POST /v1/jobs/batch` (1,000 per request, asserting 202); their
    /// ids in order.
    pub async fn submit_jobs(&self, key: &str, jobs: &[Value]) -> Vec<String> {
        let mut ids = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(1000) {
            let body = serde_json::json!({ "jobs": chunk });
            let a = self.post("/v1/jobs/batch", key, body).await;
            assert_eq!(a.status, 202, "{}", a.body);
            ids.extend(
                a.body["jobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|j| j["id"].as_str().unwrap().to_string()),
            );
        }
        ids
    }

    /// Long-poll until the job is terminal; panics after `limit` (a liveness bound, not a
    /// speed assertion: it only turns a hang into a failure).
    pub async fn wait_terminal(&self, key: &str, id: &str, limit: Duration) -> Value {
        let end = Instant::now() + limit;
        loop {
            let a = self.get(&format!("/v1/jobs/{id}?wait=5"), key).await;
            assert_eq!(a.status, 200, "{}", a.body);
            let state = a.body["state"].as_str().unwrap().to_string();
            if ["succeeded", "failed", "cancelled"].contains(&state.as_str()) {
                return a.body;
            }
            assert!(
                Instant::now() < end,
                "job {id} still {state} after {limit:?}: {}",
                a.body
            );
        }
    }

    /// Poll until the job is in `state`.
    pub async fn wait_state(&self, key: &str, id: &str, state: &str, limit: Duration) -> Value {
        let end = Instant::now() + limit;
        loop {
            let a = self.get(&format!("/v1/jobs/{id}"), key).await;
            if a.body["state"] == state {
                return a.body;
            }
            assert!(
                Instant::now() < end,
                "job {id} never became {state}: {}",
                a.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Poll `f` every 100 ms until it returns `Some`, failing the test after `limit` (a hang
/// bound, not a timing check).
pub async fn poll_until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a job answer is in a terminal state.
pub fn is_terminal(job: &Value) -> bool {
    ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or(""))
}

/// A private Redis for tests that flush or restart it: one redis-server, or on the cluster pass
/// a private Redis Cluster (`scripts/redis-cluster.sh` in a folder of its own, on free ports).
pub struct PrivateRedis {
    /// Its URL, or the cluster's comma-separated seed URLs (what [`Ctx::on`] takes).
    pub url: String,
    kind: PrivateKind,
}

enum PrivateKind {
    Single(Proc),
    Cluster(PrivateCluster),
}

impl PrivateRedis {
    /// Start one on a free port (a private cluster on the cluster pass).
    pub fn start() -> Self {
        if on_cluster() {
            let c = PrivateCluster::start(&[]);
            return PrivateRedis {
                url: c.seeds.clone(),
                kind: PrivateKind::Cluster(c),
            };
        }
        let port = free_port();
        let dir = tmp_dir().join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("redis.log");
        let bin = std::env::var("JOBMILL_TEST_REDIS_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        wait_port(port);
        PrivateRedis {
            url: format!("redis://127.0.0.1:{port}/"),
            kind: PrivateKind::Single(Proc { child, log }),
        }
    }

    /// FLUSHALL (on every master of a cluster): it is ours alone.
    pub async fn flushall(&self) {
        let target = Ctx::on("flush", &self.url, "mongodb://unused").core().redis;
        let mut c = jobmill::redis_conn::RedisConn::connect(&target)
            .await
            .unwrap();
        // A cluster routes FLUSHALL to every master and answers once per node.
        let _: redis::Value = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    }

    /// The server's pid (the first master's on a cluster).
    pub fn pid(&self) -> u32 {
        match &self.kind {
            PrivateKind::Single(p) => p.child.id(),
            PrivateKind::Cluster(c) => c.nodes[0].pid(),
        }
    }
}

/// A private Redis Cluster started with `scripts/redis-cluster.sh` in a folder of its own;
/// stopped when dropped.
pub struct PrivateCluster {
    /// Seed URLs, comma-separated.
    pub seeds: String,
    /// Every node, in the script's order.
    pub nodes: Vec<ClusterNode>,
    dir: PathBuf,
    /// Nodes this harness restarted itself (reaped when the cluster is dropped).
    restarted: std::sync::Mutex<Vec<Child>>,
}

/// One node of a [`PrivateCluster`].
pub struct ClusterNode {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its folder (pid file, log, nodes.conf).
    pub dir: PathBuf,
}

impl ClusterNode {
    /// The pid of the node's redis-server.
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("redis.pid"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// `redis-cli -p PORT args...` output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

/// `redis-cli -h 127.0.0.1 -p PORT args...`, its stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The repository's `scripts/redis-cluster.sh`.
fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh")
}

impl PrivateCluster {
    /// Start 3 masters (`args` go to `redis-cluster.sh start`, e.g. `--replicas 0`).
    pub fn start(args: &[&str]) -> Self {
        let dir = tmp_dir().join(format!(
            "cluster-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Free ports: the script checks each port and its bus port (+10000) itself.
        let out = Command::new(cluster_script())
            .arg("start")
            .args(args)
            .env("JOBMILL_CLUSTER_DIR", &dir)
            .env_remove("JOBMILL_CLUSTER_PORT")
            .stdin(Stdio::null())
            .output()
            .expect("redis-cluster.sh");
        assert!(
            out.status.success(),
            "redis-cluster.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seeds = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ports = std::fs::read_to_string(dir.join("ports")).unwrap();
        let nodes = ports
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, p)| ClusterNode {
                port: p.trim().parse().unwrap(),
                dir: dir.join(format!("node{}", i + 1)),
            })
            .collect();
        PrivateCluster {
            seeds,
            nodes,
            dir,
            restarted: Default::default(),
        }
    }

    /// The node that is master of `slot` now (asked of any live node).
    pub fn master_of(&self, slot: u16) -> &ClusterNode {
        for n in &self.nodes {
            let view = n.cli(&["cluster", "nodes"]);
            if view.is_empty() {
                continue;
            }
            for line in view.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let port: u16 = f[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                for range in &f[8..] {
                    if range.starts_with('[') {
                        continue;
                    }
                    let (lo, hi) = match range.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap_or(1), b.parse().unwrap_or(0)),
                        None => {
                            let v: u16 = range.parse().unwrap_or(u16::MAX);
                            (v, v)
                        }
                    };
                    if (lo..=hi).contains(&slot) {
                        return self.nodes.iter().find(|n| n.port == port).expect("node");
                    }
                }
            }
            break;
        }
        panic!("no master holds slot {slot}");
    }

    /// The ports of the current masters.
    pub fn masters(&self) -> Vec<&ClusterNode> {
        self.nodes
            .iter()
            .filter(|n| n.cli(&["role"]).lines().next() == Some("master"))
            .collect()
    }

    /// Kill `node` (SIGKILL) and start it again on the same port and cluster config but with
    /// no data, as a master without persistence comes back after a crash.
    pub fn restart_empty(&self, node: &ClusterNode, full_coverage: bool) {
        let pid = node.pid();
        assert!(unsafe_free_kill(pid, SIGKILL), "kill {pid}");
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok() {
            assert!(Instant::now() < end, "node {} never died", node.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        // The same options scripts/redis-cluster.sh starts a node with.
        let child = Command::new("redis-server")
            .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(node.dir.join("nodes.conf"))
            .args(["--cluster-node-timeout", "2000"])
            .args([
                "--cluster-require-full-coverage",
                if full_coverage { "yes" } else { "no" },
            ])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&node.dir)
            .arg("--logfile")
            .arg(node.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        // The stop script finds it by this file.
        std::fs::write(node.dir.join("redis.pid"), child.id().to_string()).unwrap();
        self.restarted.lock().unwrap().push(child);
        wait_port(node.port);
    }

    /// The folder of the cluster.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(cluster_script())
            .arg("stop")
            .env("JOBMILL_CLUSTER_DIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for mut c in self.restarted.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A private nx-27017 (the MongoDB-compatible server) that a test may stop and start again.
pub struct PrivateMongo {
    /// Its URI.
    pub uri: String,
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl PrivateMongo {
    /// Start one on a free port with its data in a folder (kept across restarts).
    pub fn start() -> Self {
        let port = free_port();
        let dir = tmp_dir().join(format!("nx-{port}"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut m = PrivateMongo {
            uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            port,
            dir,
            proc: None,
        };
        m.up();
        m
    }

    /// Start the server process.
    pub fn up(&mut self) {
        let log = self.dir.join("nx.log");
        let _ = std::fs::remove_file(self.dir.join("nx.pid"));
        let child = Command::new(env("JOBMILL_TEST_NX_BIN"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--host", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--log-file")
            .arg(&log)
            .arg("--pid-file")
            .arg(self.dir.join("nx.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nx-27017");
        wait_port(self.port);
        self.proc = Some(Proc { child, log });
    }

    /// Kill the server process.
    pub fn down(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(SIGKILL);
            p.wait_exit(Duration::from_secs(10));
        }
    }
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        self.down();
    }
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}
