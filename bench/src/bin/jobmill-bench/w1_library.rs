//! `w1`: W1 through the library client (`JobClient`), no worker running: sequential single
//! submissions and sequential batches of 1,000 (W1 bulk), to set against `store`'s ceilings.

use std::time::Instant;

use jobmill::queue::RedisQueue;
use jobmill_bench::deployment::{self, TENANT};
use jobmill_bench::kinds;

use crate::measure::rate;
use crate::servers::{fresh, noop_batch};
use crate::{Rows, N};

/// W1 through the library client, no worker running: sequential single submissions (against
/// the store's `insert_one`) and sequential batches of 1,000 (W1 bulk, against `insert_many`
/// with the job indexes). Each call returns once its jobs are in MongoDB.
pub(crate) async fn w1_library() -> anyhow::Result<Rows> {
    let (s, store, _) = fresh(1).await?;
    let registry = kinds::registry(&s.redis).await?;
    let queue = RedisQueue::connect(&s.redis, &s.key_prefix).await?;
    let client = deployment::client(store.clone(), queue, &registry, &s);
    const SINGLES: usize = 2000;
    let t = Instant::now();
    for job in noop_batch(SINGLES) {
        client.submit(TENANT, job).await?;
    }
    let single = rate(SINGLES, t.elapsed());
    let t = Instant::now();
    for _ in 0..N / 1000 {
        client.submit_batch(TENANT, noop_batch(1000)).await?;
    }
    let bulk = rate(N, t.elapsed());
    Ok(vec![
        (
            "single submissions/s, sequential".into(),
            format!("{single:.0}"),
            "store insert_one ceiling (store)".into(),
        ),
        (
            "bulk submissions/s, batches of 1000".into(),
            format!("{bulk:.0}"),
            "store insert_many ceiling with the job indexes (store)".into(),
        ),
    ])
}
