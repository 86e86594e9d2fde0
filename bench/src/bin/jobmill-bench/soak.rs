//! `soak`: the RSS of one worker process (`bench-peer worker cpu`) over 200,000 no-op jobs,
//! against its own RSS when idle and after the second round (the first includes warm-up).

use std::time::{Duration, Instant};

use anyhow::Context;

use jobmill::queue::RedisQueue;
use jobmill_bench::deployment::TENANT;
use jobmill_bench::kinds;
use mongodb::bson::{doc, Document};

use crate::measure::env_f64;
use crate::servers::{fresh, noop_batch};
use crate::Rows;

/// Resident set size of process `pid`, MiB.
pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

/// Worker memory over a long drain. One worker process (`bench-peer worker cpu`, the harness's
/// W2 worker) drains `BENCH_SOAK_ROUNDS` (20) rounds of 10,000 no-op jobs; after each round the
/// finished jobs are deleted from MongoDB, as retention would, so the store does not slow down
/// round after round. RSS is sampled every 250 ms. Flat means the last round ends where the
/// second did (the first round includes warm-up allocations).
pub(crate) async fn soak() -> anyhow::Result<Rows> {
    let rounds = (env_f64("BENCH_SOAK_ROUNDS", 20.0) as usize).max(2);
    let per_round = 10_000usize;
    let (s, store, _) = fresh(64).await?;
    let exe = std::env::current_exe()?.with_file_name("bench-peer");
    let log = std::fs::File::create(std::env::temp_dir().join("jobmill-bench-soak-worker.log"))?;
    let mut child = tokio::process::Command::new(&exe)
        .args(["worker", "cpu"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    let pid = child.id().context("worker pid")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_mib(pid)?;
    let peak = std::sync::Arc::new(std::sync::Mutex::new(idle));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Ok(v) = rss_mib(pid) {
                {
                    let mut p = peak.lock().expect("peak");
                    *p = p.max(v);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let registry = kinds::registry(&s.redis).await?;
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    let client = jobmill_bench::deployment::client(store.clone(), queue, &registry, &s);
    let jobs = store
        .database()
        .collection::<Document>(jobmill::store::JOBS);
    let t0 = Instant::now();
    let mut after_round = Vec::with_capacity(rounds);
    for round in 0..rounds {
        for _ in 0..per_round / 1000 {
            client.submit_batch(TENANT, noop_batch(1000)).await?;
        }
        // Deleting what succeeded is both the retention and the "all durable" check.
        let mut gone = 0u64;
        let until = Instant::now() + Duration::from_secs(300);
        while gone < per_round as u64 {
            anyhow::ensure!(Instant::now() < until, "round {round} did not drain");
            tokio::time::sleep(Duration::from_millis(300)).await;
            gone += jobs
                .delete_many(doc! { "state": "succeeded" })
                .await?
                .deleted_count;
        }
        after_round.push(rss_mib(pid)?);
        eprintln!(
            "soak: round {}/{rounds} done after {:.0} s, worker RSS {:.1} MiB",
            round + 1,
            t0.elapsed().as_secs_f64(),
            after_round[round]
        );
    }
    let elapsed = t0.elapsed();
    sampler.abort();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let peak = *peak.lock().expect("peak");
    let (second, last) = (after_round[1], after_round[rounds - 1]);
    Ok(vec![
        (
            "worker RSS idle".into(),
            format!("{idle:.1} MiB"),
            "before the first job".into(),
        ),
        (
            format!("worker RSS after rounds 2 / {rounds}"),
            format!("{second:.1} / {last:.1} MiB"),
            format!(
                "{:+.1} MiB over {} jobs in {:.0} s",
                last - second,
                per_round * (rounds - 1),
                elapsed.as_secs_f64()
            ),
        ),
        (
            "worker RSS peak".into(),
            format!("{peak:.1} MiB"),
            "sampled every 250 ms".into(),
        ),
    ])
}
