//! `w7`: NDJSON rows imported by a `bulk_import` job, against a raw `insert_many` loop of the
//! same documents in the same batches on the same server.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use jobmill_bench::deployment::{QUEUE, TENANT};
use mongodb::bson::{Bson, Document};
use serde_json::{json, Value};

use crate::http::{api_json, upload_file, wait_job};
use crate::local_files::{sha256_file, TempDir};
use crate::measure::{knob, mbps, rate};
use crate::servers::{api_server, drop_scratch, scratch, Worker};
use crate::Rows;

/// One NDJSON row of W7, shaped like an order line (about 100 bytes).
fn w7_row(i: usize) -> String {
    json!({
        "id": i,
        "sku": format!("sku-{:07}", i % 1_000_000),
        "name": format!("item {i}"),
        "price": (i % 10_000) as f64 * 0.25,
        "qty": i % 100,
        "tags": ["a", "b"],
    })
    .to_string()
}

/// The document `bulk_import` makes of an NDJSON line: the same JSON-to-BSON conversion, and an
/// `_id` of the same shape (`<uuid>:<row, 12 digits>`).
fn w7_doc(line: &str, prefix: &str, row: usize) -> anyhow::Result<Document> {
    let Bson::Document(mut d) = Bson::try_from(serde_json::from_str::<Value>(line)?)? else {
        bail!("row {row} is not an object");
    };
    d.insert("_id", format!("{prefix}:{row:012}"));
    Ok(d)
}

/// W7: `BENCH_W7_ROWS` NDJSON rows (default 1,000,000) imported by a `bulk_import` job, against
/// a raw `insert_many` loop of the same documents, unordered, in the kind's batch size, into a
/// scratch collection of the same server.
pub(crate) async fn w7_bulk_import() -> anyhow::Result<Rows> {
    let rows = knob("BENCH_W7_ROWS", 1_000_000)?;
    // The kind's default batch (`DEFAULT_BATCH`, private to its module), also passed to the job
    // explicitly so the two loops cannot drift apart.
    let batch = 1000;
    let (s, store, counter) = scratch("w7", 2).await?;
    let dir = TempDir::new("w7")?;
    let path = dir.0.join("w7.ndjson");
    let (bytes, sha) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> std::io::Result<_> {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
            for i in 1..=rows {
                writeln!(w, "{}", w7_row(i))?;
            }
            w.flush()?;
            drop(w);
            Ok((std::fs::metadata(&path)?.len(), sha256_file(&path)?.0))
        }
    })
    .await??;
    eprintln!("w7: {rows} rows, {:.1} MB of NDJSON", bytes as f64 / 1e6);

    // Baseline. Documents are built batch by batch inside the timed loop, as the kind does;
    // parsing is a few µs per row against the store's ~100 µs.
    let raw = store.database().collection::<Document>("w7_raw");
    let prefix = uuid::Uuid::now_v7().to_string();
    let text = tokio::fs::read_to_string(&path).await?;
    let t = Instant::now();
    let mut lines = text.lines().enumerate();
    let mut done = 0;
    loop {
        let docs = lines
            .by_ref()
            .take(batch)
            .map(|(i, l)| w7_doc(l, &prefix, i + 1))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if docs.is_empty() {
            break;
        }
        done += docs.len();
        raw.insert_many(docs).ordered(false).await?;
        if done % 100_000 < batch {
            eprintln!(
                "w7 insert_many baseline: {done} rows, {:.0} rows/s",
                rate(done, t.elapsed())
            );
        }
    }
    let raw_time = t.elapsed();
    anyhow::ensure!(done == rows, "the baseline inserted {done} of {rows} rows");
    drop(text);
    // Gone before the import, so both write into an equally empty database.
    raw.drop().await?;

    let base = api_server(&s).await?;
    let worker = Worker::start(&s, store.clone()).await?;
    let http = reqwest::Client::new();
    let up = upload_file(&http, &base, &path, &sha, s.api.data.upload_part_size).await?;
    worker.stop().await?;
    // The import runs on the `bench` queue with a worker that consumes only that one: the
    // `cache_rebuild` the import submits at its end (on `default`) stays queued. Run alongside,
    // it paged through the new million rows while the import's outcome was being written, and
    // stalled the compatible server long enough for a status poll to get a 503.
    let mut only_bench = s.clone();
    only_bench.worker.worker.queues.retain(|q| q.name == QUEUE);
    let worker = Worker::start(&only_bench, store.clone()).await?;
    let before = counter.total();
    let trace = counter.trace_if("BENCH_W7_TRACE");
    let t = Instant::now();
    let job = api_json(
        http.post(format!("{base}/v1/jobs")).json(&json!({
            "kind": "bulk_import",
            "queue": QUEUE,
            "args": {"file_id": up.file_id, "format": "ndjson", "dataset": "w7", "batch_size": batch},
        })),
        202,
    )
    .await?;
    let id = job["id"].as_str().context("import job id")?;
    let j = wait_job(&http, &base, id, "w7 bulk_import").await?;
    let import_time = t.elapsed();
    if let Some(path) = &trace {
        counter.write_trace(path)?;
    }
    let cmds = counter.total() - before;
    anyhow::ensure!(j["state"] == "succeeded", "the import did not succeed: {j}");
    anyhow::ensure!(
        j["result"]["inserted"].as_u64() == Some(rows as u64) && j["result"]["failed"] == 0,
        "the import did not insert every row: {}",
        j["result"]
    );
    // The collection's own count, not `count_documents`: the compatible server answers that by
    // reading every row, which for a million rows holds it past the driver's 10 s heartbeat
    // (the driver then drops the connection). Nothing else writes to this fresh collection.
    let stored = store
        .database()
        .collection::<Document>(&jobmill_data::datasets::collection_name(TENANT, "w7"))
        .estimated_document_count()
        .await?;
    anyhow::ensure!(stored == rows as u64, "{stored} of {rows} rows are stored");
    worker.stop().await?;
    drop_scratch(&s, &store).await?;
    drop(dir);

    let baseline = rate(rows, raw_time);
    let import = rate(rows, import_time);
    Ok(vec![
        (
            "raw insert_many rows/s (baseline)".into(),
            format!("{baseline:.0}"),
            format!("{rows} rows, batches of {batch}, unordered, same documents"),
        ),
        (
            "bulk_import rows/s".into(),
            format!("{import:.0}"),
            format!(
                "{:.1}% of the raw loop ({:.3}×); {:.1} s from submission to success, {} rows verified",
                100.0 * import / baseline,
                import / baseline,
                import_time.as_secs_f64(),
                stored
            ),
        ),
        (
            "worker mongodb commands per 1,000 rows".into(),
            format!("{:.2}", cmds as f64 * 1000.0 / rows as f64),
            format!("{cmds} commands during the import; the raw loop sends 1"),
        ),
        (
            "NDJSON upload + assembly MB/s".into(),
            format!("{:.0}", mbps(bytes, up.upload + up.assembly)),
            format!("{:.1} MB, before the import (not in its time)", bytes as f64 / 1e6),
        ),
    ])
}
