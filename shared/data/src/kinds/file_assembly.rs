//! `file_assembly`: makes an upload's parts one file without copying a byte (see
//! [`crate::files`]): it checks that parts 0..N are all there, reads them once in order (one
//! sequential streaming pass, a few MiB per query) checking each part's SHA-256 and computing
//! the whole file's, compares that with the declared one, and commits the file as metadata, an
//! ordered manifest of the pieces already stored.
//!
//! Resumable and idempotent. Nothing is written before the commit, which is one idempotent
//! write of the file's document, so an attempt killed at any point leaves nothing to undo or
//! double. A rerun after a SIGKILL re-reads from the start rather than continuing from stored
//! hash progress, because:
//! - `sha2`'s running state cannot be saved and restored (its crate offers no serialisation), so
//!   resuming would mean either hashing with a hand-rolled serialisable SHA-256 or trusting
//!   per-part digests instead of the whole file's one sequential read;
//! - storing progress is a write per step on a store that serves one command at a time, which
//!   slows every pass to speed up the rare killed one; a rerun costs at most one more read of
//!   the file, which is exactly what the pass costs anyway.
//!
//! Memory is bounded by [`PIECES_PER_READ`] pieces, whatever the file's size.

use std::time::Duration;

use jobmill::job::now_ms;
use jobmill::kind::{JobContext, JobKind, KindDefaults, Outcome};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::files::{
    hex_digest, piece_id, FileMeta, FilePart, FileState, FileStore, Part, PieceHome, CHUNK_SIZE,
    ID_PATTERN,
};

/// Pieces read per query: 4 MiB. Enough that the round trip is a small share of the read, small
/// enough that the worker's memory stays well under its budget during a 1 GiB pass.
pub const PIECES_PER_READ: usize = 4 * 1024 * 1024 / CHUNK_SIZE;

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
    /// The kind, with the file store it reads parts from and commits files to.
    pub fn new(files: FileStore) -> Self {
        FileAssembly { files }
    }
}

impl JobKind for FileAssembly {
    const NAME: &'static str = "file_assembly";
    const DESCRIPTION: &'static str =
        "Makes an upload's parts one stored file, checking its SHA-256, without copying its bytes; resumable.";
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
            // Store trouble: the next attempt starts the read again.
            Err(e) => Outcome::retry(e),
        }
    }
}

/// A piece to read: its part's index in the upload and its number in the part.
struct Wanted {
    part: usize,
    k: i64,
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
    // Closed before the parts are read: a part re-sent from now on no longer deletes the
    // pieces it replaces, which the manifest made from this read may list.
    files.close_upload(upload_id).await?;
    let parts = files.parts(upload_id).await?;
    if let Err(msg) = check_parts(&parts, upload.part_size, upload.size) {
        return Ok(Outcome::fail(msg));
    }
    let total: i64 = parts.iter().map(|p| p.size).sum();
    ctx.progress(
        0,
        Some(total),
        Some(&format!("checking {} parts", parts.len())),
    );

    // The hash pass: every piece once, in file order, a batch per query.
    let mut pass = Pass {
        parts: &parts,
        file: Sha256::new(),
        part: Sha256::new(),
        part_bytes: 0,
        done: 0,
    };
    let mut batch: Vec<Wanted> = Vec::with_capacity(PIECES_PER_READ);
    for (i, p) in parts.iter().enumerate() {
        for k in 0..p.pieces {
            let home_changes = batch.last().is_some_and(|w| parts[w.part].home != p.home);
            if batch.len() == PIECES_PER_READ || home_changes {
                if let Some(o) = pass.read(ctx, files, &mut batch, total).await? {
                    return Ok(o);
                }
            }
            batch.push(Wanted { part: i, k });
        }
    }
    if let Some(o) = pass.read(ctx, files, &mut batch, total).await? {
        return Ok(o);
    }
    if pass.done != total {
        return Err(jobmill::Error::Corrupt(format!(
            "read {} bytes of the parts, expected {total}",
            pass.done
        )));
    }
    let digest = hex_digest(&pass.file.finalize());
    if let Some(declared) = &upload.sha256 {
        if !declared.eq_ignore_ascii_case(&digest) {
            return Ok(Outcome::fail(format!(
                "sha256 mismatch: the upload declared {declared} but the assembled bytes hash to {digest}; no file was kept"
            )));
        }
    }
    files
        .commit_file(&FileMeta {
            id: file_id.clone(),
            list_key: file_id.clone(),
            tenant: upload.tenant.clone(),
            filename: upload.filename.clone(),
            size: total,
            sha256: Some(digest.clone()),
            content_type: upload.content_type.clone(),
            chunk_size: CHUNK_SIZE as i64,
            parts: Some(
                parts
                    .iter()
                    .map(|p| FilePart {
                        token: p.token.clone(),
                        size: p.size,
                        pieces: p.pieces,
                        sha256: p.sha256.clone(),
                    })
                    .collect(),
            ),
            state: FileState::Complete,
            created_ms: now_ms(),
        })
        .await?;
    files.finish_upload(upload_id).await?;
    ctx.progress(total, Some(total), Some("assembled"));
    Ok(Outcome::success(
        json!({ "file_id": file_id, "size": total, "sha256": digest }),
    ))
}

/// The running state of the hash pass.
struct Pass<'a> {
    parts: &'a [Part],
    file: Sha256,
    /// The current part's digest and bytes so far.
    part: Sha256,
    part_bytes: i64,
    /// Bytes hashed.
    done: i64,
}

impl Pass<'_> {
    /// Read and hash the pieces in `batch` (all from one collection), then empty it. Returns an
    /// outcome when the job must end here (a part's bytes do not match its checksum, or the job
    /// was cancelled).
    async fn read(
        &mut self,
        ctx: &JobContext,
        files: &FileStore,
        batch: &mut Vec<Wanted>,
        total: i64,
    ) -> jobmill::Result<Option<Outcome>> {
        let Some(first) = batch.first() else {
            return Ok(None);
        };
        let home = self.parts[first.part].home;
        let ids: Vec<String> = batch
            .iter()
            .map(|w| {
                let p = &self.parts[w.part];
                piece_id(&p.upload_id, p.n, &p.token, w.k)
            })
            .collect();
        let datas = files.pieces_by_id(home, &ids).await?;
        for (w, data) in batch.iter().zip(&datas) {
            let p = &self.parts[w.part];
            if home == PieceHome::UploadPieces {
                files
                    .adopt_piece(&p.upload_id, p.n, &p.token, w.k, data)
                    .await?;
            }
            self.file.update(data);
            self.part.update(data);
            self.part_bytes += data.len() as i64;
            self.done += data.len() as i64;
            if w.k == p.pieces - 1 {
                let sha = hex_digest(&std::mem::take(&mut self.part).finalize());
                let bytes = std::mem::take(&mut self.part_bytes);
                if bytes != p.size || !sha.eq_ignore_ascii_case(&p.sha256) {
                    return Ok(Some(Outcome::fail(format!(
                        "part {}: the stored bytes ({bytes} bytes, SHA-256 {sha}) do not match the part as received ({} bytes, SHA-256 {}); no file was kept",
                        p.n, p.size, p.sha256
                    ))));
                }
            }
        }
        batch.clear();
        ctx.progress(
            self.done,
            Some(total),
            Some(&format!("{} of {total} bytes checked", self.done)),
        );
        if ctx.is_cancelled() {
            return Ok(Some(Outcome::Cancelled("cancelled while checking".into())));
        }
        Ok(None)
    }
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
