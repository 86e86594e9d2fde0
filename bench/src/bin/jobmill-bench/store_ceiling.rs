//! `store`: the store's own write ceilings on job-shaped documents with the job indexes
//! (sequential `insert_one`, `insert_many`, batched guarded updates). These are the baselines:
//! W1 is read against `insert_one`, W2 against the update ceiling (left in a temp file for `w2`),
//! and W3's floor inserts the same documents into the same kind of scratch collection.

use std::time::Instant;

use jobmill::store::Store;
use mongodb::bson::{doc, Document};

use crate::measure::rate;
use crate::servers::fresh;
use crate::{Rows, N};

/// The store's own write ceilings, with documents shaped like jobs and the same indexes.
pub(crate) async fn store_ceiling() -> anyhow::Result<Rows> {
    let (s, store, _) = fresh(1).await?;
    let db = store.database();
    let plain = db.collection::<Document>("ceiling_plain");
    let _ = plain.drop().await;
    let indexed = indexed_scratch(&store, "ceiling_indexed").await?;
    let mut out = Rows::new();
    // insert_one, sequential (what one synchronous submit costs).
    let t = Instant::now();
    for i in 0..2000 {
        plain.insert_one(job_doc(i)).await?;
    }
    let single = rate(2000, t.elapsed());
    // insert_many in batches of 1000, without and with the job indexes.
    let mut ids = Vec::new();
    for (coll, label) in [(&plain, "no indexes"), (&indexed, "job indexes")] {
        let docs: Vec<Document> = (0..N).map(job_doc).collect();
        if label == "job indexes" {
            ids = docs
                .iter()
                .map(|d| d.get_str("_id").unwrap().to_string())
                .collect();
        }
        let t = Instant::now();
        for chunk in docs.chunks(1000) {
            coll.insert_many(chunk.to_vec()).await?;
        }
        out.push((
            format!("insert_many ({label}) docs/s"),
            format!("{:.0}", rate(N, t.elapsed())),
            "store ceiling".into(),
        ));
    }
    // Batched guarded updates shaped like the worker's outcome writes, 1000 per command.
    let t = Instant::now();
    for chunk in ids.chunks(1000) {
        let updates: Vec<Document> = chunk
            .iter()
            .map(|id| doc! {
                "q": { "_id": id, "state": { "$in": ["queued", "scheduled", "running", "retrying"] }, "attempt": { "$lte": 1 } },
                "u": { "$set": { "state": "succeeded", "attempt": 1, "started_ms": 1_i64, "finished_ms": 2_i64,
                                 "result_json": "null", "enqueue_pending": false,
                                 "retention": { "expire_at": mongodb::bson::DateTime::now() } },
                       "$inc": { "rev": 1 } },
            })
            .collect();
        db.run_command(doc! { "update": "ceiling_indexed", "updates": updates, "ordered": true })
            .await?;
    }
    let ceiling = rate(N, t.elapsed());
    out.insert(
        0,
        (
            "insert_one docs/s".into(),
            format!("{single:.0}"),
            "store ceiling".into(),
        ),
    );
    out.push((
        "batched guarded updates/s".into(),
        format!("{ceiling:.0}"),
        "store ceiling (the W2 durable-rate baseline)".into(),
    ));
    let _ = plain.drop().await;
    let _ = indexed.drop().await;
    let _ = s;
    std::fs::write(ceiling_file(), format!("{ceiling}"))?;
    Ok(out)
}

/// A document shaped like a freshly submitted job.
pub(crate) fn job_doc(i: usize) -> Document {
    let id = uuid::Uuid::now_v7().to_string();
    doc! {
        "_id": &id, "list_key": &id, "tenant": "bench", "kind": "bench_noop", "queue": "bench",
        "priority": 0, "args_json": format!("{{\"ts\":{i}}}"), "state": "queued", "attempt": 0,
        "max_attempts": 3, "attempt_budget": 3, "timeout_ms": 300000_i64, "errors": {},
        "wants_events": false, "cancel_requested": false, "created_ms": 0_i64, "run_at_ms": 0_i64,
        "rev": 1_i64,
        "enqueue_pending": false,
    }
}

/// An empty scratch collection with the same indexes as the jobs collection.
pub(crate) async fn indexed_scratch(
    store: &Store,
    name: &str,
) -> anyhow::Result<mongodb::Collection<Document>> {
    let coll = store.database().collection::<Document>(name);
    let _ = coll.drop().await;
    // The jobs collection's own index definitions, options included (unique, partial, TTL):
    // each option changes what the store does per insert. (Not copied from `listIndexes`:
    // the MongoDB-compatible server leaves partial filters out of its answer.)
    coll.create_indexes(jobmill::store::job_indexes()).await?;
    Ok(coll)
}

pub(crate) fn ceiling_file() -> std::path::PathBuf {
    std::env::temp_dir().join("jobmill-bench-update-ceiling")
}
