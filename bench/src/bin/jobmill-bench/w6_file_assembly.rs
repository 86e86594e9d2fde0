//! `w6`: a file uploaded in 8 MiB parts through the API and assembled by a `file_assembly` job,
//! against a streaming copy of the same bytes between two local files (and the store's own rates
//! for 256 KiB chunks, the SHA-256 rate).

use std::time::Instant;

use anyhow::Context;
use jobmill::store::Store;
use mongodb::bson::{doc, Bson, Document};

use crate::http::upload_file;
use crate::local_files::{sha256_file, stream_copy, write_random, TempDir};
use crate::measure::{knob, mbps};
use crate::servers::{api_server, drop_scratch, scratch, Worker};
use crate::Rows;

/// W6: a file (`BENCH_W6_MIB`, default 1 GiB) uploaded in 8 MiB parts through the API and
/// assembled by a real worker, against a streaming copy of the same bytes between local files.
pub(crate) async fn w6_file_assembly() -> anyhow::Result<Rows> {
    let mib = knob("BENCH_W6_MIB", 1024)?;
    let size = (mib as u64) << 20;
    let (s, store, counter) = scratch("w6", 1).await?;
    let dir = TempDir::new("w6")?;
    let src = dir.0.join("w6.bin");
    eprintln!("w6: writing {mib} MiB to {}", src.display());
    let (sha, hashing, mut copies, synced) = tokio::task::spawn_blocking({
        let src = src.clone();
        move || -> std::io::Result<_> {
            write_random(&src, size as usize)?;
            let (sha, hashing) = sha256_file(&src)?;
            // The source was just written, so it is in the page cache, for the copy as for the
            // upload; the copy's writes land in the page cache too unless it syncs. One copy
            // untimed first: this machine is a microVM, and the first touch of guest memory
            // the page cache has not used yet is several times slower than the copy itself.
            stream_copy(&src, false)?;
            let copies = vec![stream_copy(&src, false)?, stream_copy(&src, false)?];
            let synced = stream_copy(&src, true)?;
            Ok((sha, hashing, copies, synced))
        }
    })
    .await??;
    let ceiling = chunk_ceiling(&store).await?;

    let base = api_server(&s).await?;
    let worker = Worker::start(&s, store.clone()).await?;
    let http = reqwest::Client::new();
    let before = counter.total();
    let by_name_before = counter.by_name();
    eprintln!(
        "w6: uploading {mib} MiB in parts of {} MiB",
        s.api.data.upload_part_size >> 20
    );
    let up = upload_file(&http, &base, &src, &sha, s.api.data.upload_part_size).await?;
    let cmds = counter.total() - before;
    let by_name: std::collections::BTreeMap<String, u64> = counter
        .by_name()
        .into_iter()
        .map(|(k, v)| {
            let v = v - by_name_before.get(&k).copied().unwrap_or(0);
            (k, v)
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    anyhow::ensure!(
        up.sha256 == sha,
        "the assembled file's SHA-256 {} is not the source's {sha}",
        up.sha256
    );
    // The copy again after the upload (median of three): the machine is shared, and copies
    // before and after bracket the API figures in time.
    copies.push(
        tokio::task::spawn_blocking({
            let src = src.clone();
            move || stream_copy(&src, false)
        })
        .await??,
    );
    worker.stop().await?;
    drop_scratch(&s, &store).await?;
    drop(dir);

    copies.sort();
    let copy = mbps(size, copies[1]);
    let pct = |v: f64| format!("{:.1}% of the copy ({:.3}×)", 100.0 * v / copy, v / copy);
    let upload = mbps(size, up.upload);
    let assembly = mbps(size, up.assembly);
    let both = mbps(size, up.upload + up.assembly);
    Ok(vec![
        (
            "streaming copy MB/s (baseline)".into(),
            format!("{copy:.0}"),
            format!(
                "{mib} MiB file to file in 8 MiB blocks, page cache; {:.0} MB/s with fsync",
                mbps(size, synced)
            ),
        ),
        (
            "store: insert_one of 256 KiB MB/s".into(),
            format!("{:.0}", ceiling.0),
            "store ceiling of the upload (one piece per insert_one)".into(),
        ),
        (
            "store: find_one + replace_one of 256 KiB MB/s".into(),
            format!("{:.0}", ceiling.1),
            "store ceiling of the assembly (a read and a chunk write per 256 KiB), no TTL index"
                .into(),
        ),
        (
            "SHA-256 of the file MB/s".into(),
            format!("{:.0}", mbps(size, hashing)),
            "read and hashed in this process (the hashing ceiling)".into(),
        ),
        (
            "upload MB/s".into(),
            format!("{upload:.0}"),
            format!(
                "{}; {:.0}% of the store's insert_one; {:.1} s, parts of {} MiB one at a time",
                pct(upload),
                100.0 * upload / ceiling.0,
                up.upload.as_secs_f64(),
                s.api.data.upload_part_size >> 20
            ),
        ),
        (
            "assembly MB/s".into(),
            format!("{assembly:.0}"),
            format!(
                "{}; {:.0}% of the store's read + write; {:.1} s from completion request to success; SHA-256 {}… verified",
                pct(assembly),
                100.0 * assembly / ceiling.1,
                up.assembly.as_secs_f64(),
                &sha[..16]
            ),
        ),
        (
            "upload + assembly MB/s".into(),
            format!("{both:.0}"),
            pct(both),
        ),
        (
            "worker mongodb commands during upload + assembly".into(),
            format!("{cmds}"),
            format!("file {}: {by_name:?}", up.file_id),
        ),
    ])
}

/// The store's own rates for 256 KiB binary documents (MB/s): `insert_one` (what the upload
/// does per piece), and `find_one` plus an upserting `replace_one` into a collection with the
/// chunks' unique index (what the assembly does per chunk). 64 of each, in scratch collections.
async fn chunk_ceiling(store: &Store) -> anyhow::Result<(f64, f64)> {
    const DOCS: usize = 64;
    let db = store.database();
    let (a, b) = (
        db.collection::<Document>("w6_ceiling_a"),
        db.collection::<Document>("w6_ceiling_b"),
    );
    b.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! { "file_id": 1, "n": 1 })
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build(),
    )
    .await?;
    let mut data = vec![0u8; jobmill_data::files::CHUNK_SIZE];
    for (i, x) in data.iter_mut().enumerate() {
        *x = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let bin = || {
        Bson::Binary(mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: data.clone(),
        })
    };
    let t = Instant::now();
    for i in 0..DOCS {
        a.insert_one(doc! { "_id": format!("p:{i}"), "n": i as i64, "data": bin() })
            .await?;
    }
    let insert = t.elapsed();
    let t = Instant::now();
    for i in 0..DOCS {
        let d = a
            .find_one(doc! { "_id": format!("p:{i}") })
            .await?
            .context("ceiling doc")?;
        let id = format!("f:{i}");
        b.replace_one(
            doc! { "_id": &id },
            doc! { "_id": &id, "file_id": "f", "n": i as i64, "data": d.get("data").cloned().unwrap_or(Bson::Null) },
        )
        .upsert(true)
        .await?;
    }
    let copy = t.elapsed();
    a.drop().await?;
    b.drop().await?;
    let bytes = (DOCS * jobmill_data::files::CHUNK_SIZE) as u64;
    Ok((mbps(bytes, insert), mbps(bytes, copy)))
}
