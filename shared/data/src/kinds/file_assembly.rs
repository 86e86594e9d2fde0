//! `file_assembly`: turns an upload's parts into one stored file (see [`crate::files`]),
//! checking the whole file's SHA-256 against the declared one.
//!
//! Resumable and idempotent: the file id is the upload id and chunk `n` always has the id
//! `<file>:<n>`, so a rerun after a crash finds the chunks already written, re-hashes them (read
//! back one at a time, so memory stays bounded) and writes only the rest. A chunk written twice
//! is overwritten with the same bytes: no file can have missing or doubled bytes.

use std::time::Duration;

use jobmill::job::now_ms;
use jobmill::kind::{JobContext, JobKind, KindDefaults, Outcome};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::files::{hex_digest, FileMeta, FileState, FileStore, Part, CHUNK_SIZE, ID_PATTERN};

/// Pieces read per query: a default 8 MiB part in one read, and at most 8 MiB held in memory
/// whatever the part size (see [`FileStore::pieces`] for why reads are batched).
const PIECES_PER_READ: i64 = (8 * 1024 * 1024 / CHUNK_SIZE) as i64;

/// Arguments of `file_assembly`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileAssemblyArgs {
    /// The upload to assemble.
    #[schemars(regex(pattern = ID_PATTERN))]
    pub upload_id: String,
}

/// Assembles uploads into files.
pub struct FileAssembly {
    files: FileStore,
}

impl FileAssembly {
    /// The kind, with the file store it reads parts from and writes files to.
    pub fn new(files: FileStore) -> Self {
        FileAssembly { files }
    }
}

impl JobKind for FileAssembly {
    const NAME: &'static str = "file_assembly";
    const DESCRIPTION: &'static str =
        "Assembles an upload's parts into one stored file, checking its SHA-256; resumable.";
    type Args = FileAssemblyArgs;

    fn validate(&self, a: &FileAssemblyArgs) -> Result<(), String> {
        uuid::Uuid::try_parse(&a.upload_id)
            .map(|_| ())
            .map_err(|_| "upload_id must be an upload id (a UUID)".to_string())
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            max_attempts: 5,
            timeout: Duration::from_secs(6 * 3600),
            ..KindDefaults::default()
        }
    }

    async fn run(&self, ctx: JobContext, a: FileAssemblyArgs) -> Outcome {
        match assemble(&ctx, &self.files, &a.upload_id).await {
            Ok(o) => o,
            // Store trouble: the next attempt resumes where this one stopped.
            Err(e) => Outcome::retry(e),
        }
    }
}

async fn assemble(
    ctx: &JobContext,
    files: &FileStore,
    upload_id: &str,
) -> jobmill::Result<Outcome> {
    let Some(upload) = files.upload(upload_id, Some(&ctx.tenant)).await? else {
        return Ok(Outcome::fail(format!(
            "upload {upload_id} does not exist (or expired)"
        )));
    };
    let file_id = upload.id.clone();
    // Already done by an earlier attempt whose outcome was not recorded.
    if let Some(f) = files.file(&file_id, None).await? {
        if f.state == FileState::Complete {
            return Ok(Outcome::success(
                json!({ "file_id": f.id, "size": f.size, "sha256": f.sha256 }),
            ));
        }
    }
    let parts = files.parts(upload_id).await?;
    if let Err(msg) = check_parts(&parts, upload.part_size, upload.size) {
        return Ok(Outcome::fail(msg));
    }
    let total: i64 = parts.iter().map(|p| p.size).sum();
    files
        .begin_file(&FileMeta {
            id: file_id.clone(),
            list_key: file_id.clone(),
            tenant: upload.tenant.clone(),
            filename: upload.filename.clone(),
            size: total,
            sha256: None,
            content_type: upload.content_type.clone(),
            chunk_size: CHUNK_SIZE as i64,
            state: FileState::Assembling,
            created_ms: now_ms(),
        })
        .await?;

    // Resume: chunks 0..done are stored; re-hash them instead of rewriting them.
    let cs = CHUNK_SIZE as i64;
    let total_chunks = (total + cs - 1) / cs;
    let done = files.contiguous_chunks(&file_id).await?.min(total_chunks);
    let mut sha = Sha256::new();
    for n in 0..done {
        let data = files
            .chunk(&file_id, n)
            .await?
            .ok_or_else(|| jobmill::Error::Corrupt(format!("chunk {n} vanished")))?;
        sha.update(&data);
        if ctx.is_cancelled() {
            return Ok(Outcome::Cancelled("cancelled while re-reading".into()));
        }
    }
    let offset = done * cs;
    ctx.progress(
        offset,
        Some(total),
        Some(&format!(
            "{} of {} chunks stored{}",
            done,
            total_chunks,
            if done > 0 { " (resumed)" } else { "" }
        )),
    );

    // Stream the parts from `offset`, re-cut into fixed-size chunks.
    let mut n = done;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_SIZE);
    let mut part_start = 0i64;
    for part in &parts {
        let part_end = part_start + part.size;
        if part_end <= offset {
            part_start = part_end;
            continue;
        }
        let mut piece_start = part_start;
        for from in (0..part.pieces).step_by(PIECES_PER_READ as usize) {
            for data in files.pieces(part, from, PIECES_PER_READ).await? {
                let piece_end = piece_start + data.len() as i64;
                if piece_end <= offset {
                    piece_start = piece_end;
                    continue;
                }
                let skip = (offset - piece_start).max(0) as usize;
                let mut rest = &data[skip..];
                piece_start = piece_end;
                while !rest.is_empty() {
                    let take = (CHUNK_SIZE - buf.len()).min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() == CHUNK_SIZE {
                        let chunk = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_SIZE));
                        sha.update(&chunk);
                        files.write_chunk(&file_id, n, chunk).await?;
                        n += 1;
                        ctx.progress(
                            (n * cs).min(total),
                            Some(total),
                            Some(&format!("{n} of {total_chunks} chunks stored")),
                        );
                        if ctx.is_cancelled() {
                            return Ok(Outcome::Cancelled("cancelled while assembling".into()));
                        }
                    }
                }
            }
        }
        part_start = part_end;
    }
    if !buf.is_empty() {
        sha.update(&buf);
        files.write_chunk(&file_id, n, buf).await?;
        n += 1;
    }
    if n != total_chunks {
        return Err(jobmill::Error::Corrupt(format!(
            "wrote {n} chunks, expected {total_chunks}"
        )));
    }
    let digest = hex_digest(&sha.finalize());
    if let Some(declared) = &upload.sha256 {
        if !declared.eq_ignore_ascii_case(&digest) {
            files.discard_file(&file_id).await?;
            return Ok(Outcome::fail(format!(
                "sha256 mismatch: the upload declared {declared} but the assembled bytes hash to {digest}; no file was kept"
            )));
        }
    }
    files.complete_file(&file_id, total, &digest).await?;
    files.finish_upload(upload_id).await?;
    ctx.progress(total, Some(total), Some("assembled"));
    Ok(Outcome::success(
        json!({ "file_id": file_id, "size": total, "sha256": digest }),
    ))
}

/// Parts 0..N all present, every part but the last exactly `part_size`, and the declared size
/// (if any) matched.
pub fn check_parts(parts: &[Part], part_size: i64, declared: Option<i64>) -> Result<(), String> {
    if parts.is_empty() {
        return Err("the upload has no parts".into());
    }
    let missing: Vec<i64> = {
        let have: std::collections::HashSet<i64> = parts.iter().map(|p| p.n).collect();
        let last = parts.iter().map(|p| p.n).max().unwrap_or(0);
        (0..=last).filter(|n| !have.contains(n)).take(20).collect()
    };
    if !missing.is_empty() {
        return Err(format!(
            "parts are missing: {}",
            missing
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let last = parts.len() - 1;
    for p in &parts[..last] {
        if p.size != part_size {
            return Err(format!(
                "part {} has {} bytes; every part but the last must have exactly {part_size}",
                p.n, p.size
            ));
        }
    }
    let total: i64 = parts.iter().map(|p| p.size).sum();
    if let Some(d) = declared {
        if d != total {
            return Err(format!(
                "the upload declared {d} bytes but its parts hold {total}"
            ));
        }
    }
    Ok(())
}
