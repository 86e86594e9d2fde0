//! `w2cluster`: jobmill on a 3-master Redis Cluster against a single Redis, all in one run:
//! - W2 (`BENCH_W2C_JOBS` no-op jobs, default 20,000, one worker) on the single Redis, on the
//!   cluster with the queue unsharded, and on the cluster with the queue in 8 shards
//!   (`JOBMILL_QUEUE_SHARDS=bench=8`): handler rate, worker CPU per job (target: the cluster
//!   costs under 20% more than the single Redis), and each Redis master's CPU per job (`INFO
//!   cpu` before and after the drain; the 8 shards should load the masters about equally);
//! - W3 submit→start p99 on the cluster against the single Redis.
//!
//! Needs `BENCH_CLUSTER_SEEDS` (the cluster's seed URLs; `bench/run.sh` starts a private
//! 3-master cluster without replicas for this workload) next to `BENCH_REDIS_URL`. Each
//! variant works in a database and key prefix of its own, so the shard maps never meet.

use std::collections::BTreeMap;

use anyhow::Context;
use jobmill_bench::deployment;

use crate::measure::{env_f64, pct_ms};
use crate::servers::fresh_with;
use crate::w2_durable::{drain_on, Drain, Front};
use crate::w3_floor::submit_to_start;
use crate::Rows;

/// One deployment of the comparison.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// One redis-server (`BENCH_REDIS_URL`).
    Single,
    /// The cluster, the bench queue unsharded (one master holds it).
    Cluster,
    /// The cluster, the bench queue in 8 shards.
    Sharded,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Single => "single",
            Variant::Cluster => "cluster",
            Variant::Sharded => "sharded8",
        }
    }
}

fn seeds() -> anyhow::Result<String> {
    std::env::var("BENCH_CLUSTER_SEEDS")
        .context("w2cluster needs BENCH_CLUSTER_SEEDS (bench/run.sh starts a cluster)")
}

/// The masters of the cluster (ports on 127.0.0.1), from `CLUSTER NODES` of a seed.
async fn masters() -> anyhow::Result<Vec<u16>> {
    let seeds = seeds()?;
    let seed = seeds.split(',').next().context("no seed")?.trim();
    let mut c = redis::Client::open(seed)?
        .get_multiplexed_async_connection()
        .await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await?;
    let mut out = Vec::new();
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let addr = f[1].split('@').next().unwrap_or_default();
        out.push(addr.rsplit(':').next().unwrap_or_default().parse()?);
    }
    out.sort_unstable();
    Ok(out)
}

/// The single Redis's port, from `BENCH_REDIS_URL`.
fn single_port() -> anyhow::Result<u16> {
    let url =
        std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6391/0".into());
    let rest = url.rsplit(':').next().context("BENCH_REDIS_URL")?;
    Ok(rest.split('/').next().unwrap_or_default().parse()?)
}

fn overrides(v: Variant, what: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut o = vec![
        (
            "JOBMILL_MONGODB_DB",
            format!("jobmill_bench_{what}_{}", v.name()),
        ),
        ("JOBMILL_KEY_PREFIX", format!("jmbench{what}{}", v.name())),
    ];
    if v != Variant::Single {
        o.push(("JOBMILL_REDIS_URL", String::new()));
        o.push(("JOBMILL_REDIS_CLUSTER", seeds()?));
    }
    if v == Variant::Sharded {
        o.push(("JOBMILL_QUEUE_SHARDS", format!("{}=8", deployment::QUEUE)));
    }
    Ok(o)
}

async fn drain(v: Variant, n: usize, nodes: &[u16]) -> anyhow::Result<Drain> {
    let (s, store, _) = fresh_with(64, &overrides(v, "w2c")?).await?;
    let d = drain_on(Front::Native, s, store.clone(), n, nodes).await?;
    store.database().drop().await?;
    Ok(d)
}

fn per_master(us: &[f64], ports: &[u16]) -> String {
    ports
        .iter()
        .zip(us)
        .map(|(p, u)| format!("{p}: {u:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Largest over smallest of the masters' CPU per job (1.0 = perfectly even).
fn spread(us: &[f64]) -> f64 {
    let max = us.iter().cloned().fold(f64::MIN, f64::max);
    let min = us.iter().cloned().fold(f64::MAX, f64::min).max(1e-9);
    max / min
}

/// The whole comparison; see the module doc.
pub(crate) async fn w2_cluster() -> anyhow::Result<Rows> {
    let n = env_f64("BENCH_W2C_JOBS", 20_000.0) as usize;
    let single = [single_port()?];
    let masters = masters().await?;
    anyhow::ensure!(masters.len() == 3, "expected 3 masters, found {masters:?}");
    let mut d: BTreeMap<&str, Drain> = BTreeMap::new();
    for v in [Variant::Single, Variant::Cluster, Variant::Sharded] {
        let nodes: &[u16] = if v == Variant::Single {
            &single
        } else {
            &masters
        };
        d.insert(v.name(), drain(v, n, nodes).await?);
    }
    let (s, c, sh) = (&d["single"], &d["cluster"], &d["sharded8"]);
    let total = |x: &Drain| x.redis_cpu_per_job_us.iter().sum::<f64>();

    let rate = env_f64("BENCH_W3_RATE", 200.0);
    let secs = env_f64("BENCH_W3_SECS", 10.0);
    let mut w3 = BTreeMap::new();
    for v in [Variant::Single, Variant::Cluster] {
        let (settings, store, _) = fresh_with(64, &overrides(v, "w3c")?).await?;
        let (lat, _) = submit_to_start(&settings, &store, rate, secs).await?;
        store.database().drop().await?;
        w3.insert(v.name(), lat);
    }
    let p = |v: &Vec<u64>, q: f64| pct_ms(v, q);

    Ok(vec![
        (
            "W2 single redis: handler executions/s".into(),
            format!("{:.0}", s.handler_rate),
            format!(
                "{n} jobs; all durable after {:.2} s",
                s.durable.as_secs_f64()
            ),
        ),
        (
            "W2 cluster, 1 queue: handler executions/s".into(),
            format!("{:.0}", c.handler_rate),
            format!(
                "{:.0}% of single; all durable after {:.2} s",
                100.0 * c.handler_rate / s.handler_rate,
                c.durable.as_secs_f64()
            ),
        ),
        (
            "W2 cluster, 8 shards: handler executions/s".into(),
            format!("{:.0}", sh.handler_rate),
            format!(
                "{:.0}% of single; all durable after {:.2} s",
                100.0 * sh.handler_rate / s.handler_rate,
                sh.durable.as_secs_f64()
            ),
        ),
        (
            "worker CPU per job (µs): single / cluster / 8 shards".into(),
            format!(
                "{:.1} / {:.1} / {:.1}",
                s.cpu_per_job_us, c.cpu_per_job_us, sh.cpu_per_job_us
            ),
            format!(
                "cluster {:+.0}%, 8 shards {:+.0}% against single (target < +20%)",
                100.0 * (c.cpu_per_job_us / s.cpu_per_job_us - 1.0),
                100.0 * (sh.cpu_per_job_us / s.cpu_per_job_us - 1.0)
            ),
        ),
        (
            "redis CPU per job (µs), single".into(),
            format!("{:.1}", total(s)),
            format!("port {}", single[0]),
        ),
        (
            "redis CPU per job (µs) per master, cluster 1 queue".into(),
            per_master(&c.redis_cpu_per_job_us, &masters),
            format!(
                "sum {:.1} ({:.2}× single); max/min {:.1}",
                total(c),
                total(c) / total(s),
                spread(&c.redis_cpu_per_job_us)
            ),
        ),
        (
            "redis CPU per job (µs) per master, 8 shards".into(),
            per_master(&sh.redis_cpu_per_job_us, &masters),
            format!(
                "sum {:.1} ({:.2}× single); max/min {:.2} (target ≈ 1)",
                total(sh),
                total(sh) / total(s),
                spread(&sh.redis_cpu_per_job_us)
            ),
        ),
        (
            format!("W3 submit→start at {rate:.0}/s, single"),
            format!(
                "p50 {:.2} / p99 {:.2} ms",
                p(&w3["single"], 50.0),
                p(&w3["single"], 99.0)
            ),
            "baseline".into(),
        ),
        (
            format!("W3 submit→start at {rate:.0}/s, cluster"),
            format!(
                "p50 {:.2} / p99 {:.2} ms",
                p(&w3["cluster"], 50.0),
                p(&w3["cluster"], 99.0)
            ),
            format!(
                "p99 {:.2}× single",
                p(&w3["cluster"], 99.0) / p(&w3["single"], 99.0)
            ),
        ),
    ])
}
