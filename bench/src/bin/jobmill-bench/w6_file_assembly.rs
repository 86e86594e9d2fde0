//! `w6`: a file uploaded in 8 MiB parts through the API and assembled by a `file_assembly` job,
//! against a streaming copy of the same bytes between two local files (and the store's own rates
//! for 256 KiB chunks, the SHA-256 rate).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{StreamExt, TryStreamExt};
use jobmill::store::Store;
use jobmill_bench::deployment::API_SECRET;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;
use sha2::{Digest, Sha256};

use crate::http::{assemble_upload, send_parts, Uploaded};
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
    eprintln!("w6: the store's insert_one of {mib} MiB in 256 KiB pieces");
    // The upload's baseline: the file's own bytes as 256 KiB pieces, each its own insert_one,
    // into a collection shaped like file_pieces. The 128-document rates above miss what a
    // store does as it grows by a gigabyte (its periodic checkpoints and file growth), which
    // the upload pays, and they write a repeated pattern, which this store writes faster than
    // a file's bytes; this pays what the upload pays. Kept to the end, so the upload
    // grows the store as the baseline did instead of reusing its freed pages (and because the
    // compatible server's drop of a 1 GiB collection outlasts the driver's 10 s heartbeat; the
    // scratch database goes at the end, which it removes whole).
    let volume = store.database().collection::<Document>("w6_ceiling_v");
    let volume_time = insert_shaped(&volume, file_pieces(&src)?).await?;
    let before = counter.total();
    let by_name_before = counter.by_name();
    eprintln!(
        "w6: uploading {mib} MiB in parts of {} MiB",
        s.api.data.upload_part_size >> 20
    );
    let part_size = s.api.data.upload_part_size;
    let trace = counter.trace_if("BENCH_W6_TRACE");
    let (upload_id, upload_time) = send_parts(&http, &base, &src, &sha, part_size, 1).await?;
    if let Some(path) = &trace {
        counter.write_trace(path)?;
    }
    let upload_cmds = counter.total() - before;
    // The upload's baseline again, now that the store holds the file: it was taken on an empty
    // store, and the upload filled it from empty to full.
    let insert_after = insert_rates(&store, false).await?;
    let inserts = ceiling.0.mean(insert_after);
    // The assembly's baseline: the same bytes read plainly from the store, before and after.
    let (read_bytes, read_before) = read_pieces_plainly(&store, &upload_id).await?;
    anyhow::ensure!(read_bytes == size, "read {read_bytes} of {size} bytes");
    let rss_idle = crate::soak::rss_mib(std::process::id())?;
    let (assembled, rss_peak) =
        peak_rss_during(assemble_upload(&http, &base, &upload_id, size)).await;
    let (file_id, assembled_sha, assembly_time) = assembled?;
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
    let (_, read_after) = read_pieces_plainly(&store, &upload_id).await?;
    let plain_read = (read_before + read_after) / 2;
    // Byte-identical: the whole file downloaded and hashed.
    let downloaded = {
        let res = http
            .get(format!("{base}/v1/files/{file_id}"))
            .bearer_auth(API_SECRET)
            .send()
            .await?
            .error_for_status()?;
        let mut body = res.bytes_stream();
        let mut h = Sha256::new();
        while let Some(b) = body.next().await {
            h.update(&b?);
        }
        hex::encode(h.finalize())
    };
    anyhow::ensure!(
        downloaded == sha,
        "the download's SHA-256 is not the source's"
    );
    eprintln!("w6: uploading {mib} MiB again, 4 parts at a time");
    let (_, upload4_time) = send_parts(&http, &base, &src, &sha, part_size, 4).await?;
    let up = Uploaded {
        file_id,
        sha256: assembled_sha,
        upload: upload_time,
        assembly: assembly_time,
    };
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
    let volume_rate = mbps(size, volume_time);
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
            format!("{:.0}", inserts.bare),
            format!(
                "store ceiling of the upload (one piece per insert_one); mean of {:.0} on the empty store and {:.0} after the upload",
                ceiling.0.bare, insert_after.bare
            ),
        ),
        (
            "store: insert_one of 256 KiB pieces MB/s".into(),
            format!("{:.0}", inserts.shaped),
            format!(
                "the same, shaped like file_pieces (its fields and index); {:.0} before, {:.0} after the upload",
                ceiling.0.shaped, insert_after.shaped
            ),
        ),
        (
            "store: insert_one of the file's bytes MB/s".into(),
            format!("{volume_rate:.0}"),
            format!(
                "the upload's baseline: the file's {mib} MiB as 256 KiB pieces shaped like file_pieces, one insert_one each, on the store the upload then grows further; {:.1} s",
                volume_time.as_secs_f64()
            ),
        ),
        (
            "store: find_one + replace_one of 256 KiB MB/s".into(),
            format!("{:.0}", ceiling.1),
            "the previous layout's assembly ceiling (a read and a chunk write per 256 KiB)".into(),
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
                "{}; {:.1}% of the store's insert_one of the same bytes; {:.0}% of its 128-piece rate of a pattern ({:.0}% of it shaped like file_pieces); {:.1} s, parts of {} MiB one at a time",
                pct(upload),
                100.0 * upload / volume_rate,
                100.0 * upload / inserts.bare,
                100.0 * upload / inserts.shaped,
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
            "store: plain sequential read MB/s".into(),
            format!("{:.0}", mbps(size, plain_read)),
            format!(
                "baseline of the assembly: the file's pieces in file order, 4 MiB per read ({:.1} s before, {:.1} s after the assembly); assembly / read = {:.2}×",
                read_before.as_secs_f64(),
                read_after.as_secs_f64(),
                up.assembly.as_secs_f64() / plain_read.as_secs_f64()
            ),
        ),
        (
            "upload MB/s, 4 parts at a time".into(),
            format!("{:.0}", mbps(size, upload4_time)),
            format!(
                "{:.0}% of the store's insert_one of the same bytes (one at a time); {:.1} s",
                100.0 * mbps(size, upload4_time) / volume_rate,
                upload4_time.as_secs_f64()
            ),
        ),
        (
            "bench process peak RSS during the assembly MiB".into(),
            format!("{rss_peak:.0}"),
            format!(
                "API + worker in one process, sampled every 20 ms; {rss_idle:.0} MiB just before; upload's mongodb commands {upload_cmds}"
            ),
        ),
        (
            "worker mongodb commands during upload + assembly".into(),
            format!("{cmds}"),
            format!("file {}: {by_name:?}", up.file_id),
        ),
    ])
}

/// 256 KiB documents of the ceilings, and how many of each.
const CEILING_DOCS: usize = 128;

/// The ceilings' 256 KiB: a fixed pattern, the same in every document. The store here writes
/// such bytes about 25% faster than a real file's (measured 2026-12-02: 256 MiB in 8.8 s
/// against 11.1 s for random bytes), so the upload's own baseline inserts the file's bytes.
fn ceiling_bytes() -> Vec<u8> {
    let mut data = vec![0u8; jobmill_data::files::CHUNK_SIZE];
    for (i, x) in data.iter_mut().enumerate() {
        *x = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    data
}

/// The store's `insert_one` rates for 256 KiB binary documents (MB/s), what the upload does per
/// piece.
#[derive(Clone, Copy)]
struct InsertRates {
    /// `_id` and the bytes.
    bare: f64,
    /// Shaped like `file_pieces`: its fields and its `upload_id, n, token` index.
    shaped: f64,
}

impl InsertRates {
    fn mean(self, other: InsertRates) -> InsertRates {
        InsertRates {
            bare: (self.bare + other.bare) / 2.0,
            shaped: (self.shaped + other.shaped) / 2.0,
        }
    }
}

/// [`InsertRates`] into scratch collections; the bare one, `w6_ceiling_a`, is kept full when
/// `keep_bare` (the assembly ceiling reads it), else dropped like the other.
async fn insert_rates(store: &Store, keep_bare: bool) -> anyhow::Result<InsertRates> {
    let db = store.database();
    let bin = binary(ceiling_bytes());
    let bytes = (CEILING_DOCS * jobmill_data::files::CHUNK_SIZE) as u64;
    let a = db.collection::<Document>("w6_ceiling_a");
    let t = Instant::now();
    for i in 0..CEILING_DOCS {
        a.insert_one(doc! { "_id": format!("p:{i}"), "n": i as i64, "data": bin.clone() })
            .await?;
    }
    let bare = mbps(bytes, t.elapsed());
    if !keep_bare {
        a.drop().await?;
    }
    let c = db.collection::<Document>("w6_ceiling_c");
    let pattern = std::iter::repeat_with(|| Ok(ceiling_bytes())).take(CEILING_DOCS);
    let shaped = mbps(bytes, insert_shaped(&c, pattern).await?);
    c.drop().await?;
    Ok(InsertRates { bare, shaped })
}

/// 256 KiB documents shaped like `file_pieces` (its fields and its `upload_id, n, token` index;
/// 32 to a part, as 8 MiB parts hold), each its own `insert_one`, into `c`, with the bytes
/// `pieces` yields: the time taken.
async fn insert_shaped(
    c: &Collection<Document>,
    pieces: impl Iterator<Item = std::io::Result<Vec<u8>>>,
) -> anyhow::Result<Duration> {
    c.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! { "upload_id": 1, "n": 1, "token": 1 })
            .build(),
    )
    .await?;
    let token = "0123456789abcdef0123456789abcdef";
    let t = Instant::now();
    for (i, data) in pieces.enumerate() {
        let (n, k) = (i as i64 / 32, i as i64 % 32);
        c.insert_one(doc! {
            "_id": jobmill_data::files::piece_id("u", n, token, k),
            "upload_id": "u", "n": n, "token": token, "k": k, "data": binary(data?),
        })
        .await?;
    }
    Ok(t.elapsed())
}

/// The file at `path` in 256 KiB pieces, read as they are asked for.
fn file_pieces(
    path: &std::path::Path,
) -> std::io::Result<impl Iterator<Item = std::io::Result<Vec<u8>>>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    Ok(std::iter::from_fn(move || {
        let mut piece = Vec::with_capacity(jobmill_data::files::CHUNK_SIZE);
        match (&mut f)
            .take(jobmill_data::files::CHUNK_SIZE as u64)
            .read_to_end(&mut piece)
        {
            Ok(0) => None,
            Ok(_) => Some(Ok(piece)),
            Err(e) => Some(Err(e)),
        }
    }))
}

fn binary(bytes: Vec<u8>) -> Bson {
    Bson::Binary(mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Generic,
        bytes,
    })
}

/// The store's own rates for 256 KiB binary documents (MB/s): `insert_one` ([`insert_rates`]),
/// and `find_one` plus an upserting `replace_one` into a collection with the chunks' unique
/// index (what the previous layout's assembly did per chunk).
async fn chunk_ceiling(store: &Store) -> anyhow::Result<(InsertRates, f64)> {
    let insert = insert_rates(store, true).await?;
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
    let t = Instant::now();
    for i in 0..CEILING_DOCS {
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
    let bytes = (CEILING_DOCS * jobmill_data::files::CHUNK_SIZE) as u64;
    Ok((insert, mbps(bytes, copy)))
}

/// The baseline of the assembly: a plain sequential read of an upload's pieces from the store,
/// in file order and in the assembly's own reads (`_id $in` of
/// [`PIECES_PER_READ`](jobmill_data::kinds::PIECES_PER_READ) pieces), with no
/// hashing and nothing else. Returns the bytes read and the time.
///
/// Not one cursor over all pieces: the compatible server builds a query's whole result before
/// its first batch, which for 1 GiB holds it busy for longer than the driver's 10 s heartbeat
/// (the driver then drops the connection).
async fn read_pieces_plainly(store: &Store, upload_id: &str) -> anyhow::Result<(u64, Duration)> {
    let t = Instant::now();
    let ids = piece_ids(store, upload_id).await?;
    let pieces = store
        .database()
        .collection::<Document>(jobmill_data::files::FILE_PIECES);
    let mut bytes = 0u64;
    for group in ids.chunks(jobmill_data::kinds::PIECES_PER_READ) {
        let mut cur = pieces.find(doc! { "_id": { "$in": group } }).await?;
        let mut found = 0;
        while let Some(d) = cur.try_next().await? {
            bytes += d.get_binary_generic("data").map(|b| b.len()).unwrap_or(0) as u64;
            found += 1;
        }
        anyhow::ensure!(found == group.len(), "{} of {} pieces", found, group.len());
    }
    Ok((bytes, t.elapsed()))
}

/// The `_id`s of an upload's pieces in file order: from its file's manifest once assembled,
/// from its part records before.
async fn piece_ids(store: &Store, upload_id: &str) -> anyhow::Result<Vec<String>> {
    use jobmill_data::files::{piece_id, FileStore};
    // The retention only matters to the sweeper, which this does not run.
    let files = FileStore::new(store.database(), Duration::ZERO);
    let parts: Vec<(i64, String, i64)> =
        match files.file(upload_id, None).await?.and_then(|f| f.parts) {
            Some(manifest) => manifest
                .into_iter()
                .enumerate()
                .map(|(n, p)| (n as i64, p.token, p.pieces))
                .collect(),
            None => files
                .parts(upload_id)
                .await?
                .into_iter()
                .map(|p| (p.n, p.token, p.pieces))
                .collect(),
        };
    Ok(parts
        .into_iter()
        .flat_map(|(n, token, pieces)| (0..pieces).map(move |k| piece_id(upload_id, n, &token, k)))
        .collect())
}

/// Peak resident set size of this process while `fut` runs, sampled every 20 ms (MiB).
async fn peak_rss_during<F: std::future::Future>(fut: F) -> (F::Output, f64) {
    let pid = std::process::id();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut peak = 0f64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(crate::soak::rss_mib(pid).unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        }
    });
    let out = fut.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap_or(0.0);
    (out, peak)
}
