//! The file store: uploads received in parts, and assembled files, in ordinary MongoDB
//! collections (GridFS-style layout, no dots in collection names, so the same code runs on real
//! MongoDB and on the MongoDB-compatible server, which has no GridFS).
//!
//! | collection | one document per | `_id` |
//! |---|---|---|
//! | `uploads` | upload (metadata, state, declared size and SHA-256) | upload id (UUIDv7) |
//! | `upload_parts` | part that arrived and passed its checksum | `<upload>:<n>` |
//! | `upload_pieces` | [`CHUNK_SIZE`] slice of a part's bytes | `<upload>:<n>:<token>:<k>` |
//! | `files` | assembled file (metadata, size, SHA-256, state) | file id (= upload id) |
//! | `file_chunks` | [`CHUNK_SIZE`] slice of a file, numbered `n` | `<file>:<n>` |
//!
//! A part is streamed into pieces under a fresh `token` while its checksums are computed; only
//! when they match is the part record switched to the new token (one atomic replace), and the
//! pieces of the token it replaced are deleted. So a part is never visible half-written, a bad
//! re-send never damages a good part, and memory stays at one piece per request. Pieces of a
//! request that died mid-way carry a TTL and expire with the upload.
//!
//! File chunks have deterministic ids, so writing one twice (a retried assembly) overwrites it
//! with the same bytes: a file can never hold a chunk twice.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use md5::Md5;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use jobmill::error::{Error, Result};
use jobmill::job::{new_job_id, now_ms, Retention};
use jobmill::store::{newest_first, scoped};

/// Size of every file chunk and part piece but the last: 256 KiB. Small enough that a chunk
/// write is one quick round trip on the compatible server and memory per request stays tiny;
/// large enough that a 1 GiB file is 4096 documents.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Most parts one upload may have.
pub const MAX_PARTS: i64 = 10_000;
/// Longest file name.
pub const MAX_FILENAME: usize = 255;

/// Uploads collection.
pub const UPLOADS: &str = "uploads";
/// Parts collection.
pub const UPLOAD_PARTS: &str = "upload_parts";
/// Part pieces collection.
pub const UPLOAD_PIECES: &str = "upload_pieces";
/// The JSON Schema pattern of an upload or file id: a UUID, hyphenated or not.
pub const ID_PATTERN: &str =
    "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32})$";
/// Files collection.
pub const FILES: &str = "files";
/// File chunks collection.
pub const FILE_CHUNKS: &str = "file_chunks";

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Parts are accepted.
    Open,
    /// Completion was asked for: the assembly job is submitted.
    Completing,
    /// The assembly job ended (the file is `complete`, or the job failed).
    Completed,
}

impl UploadState {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Open => "open",
            UploadState::Completing => "completing",
            UploadState::Completed => "completed",
        }
    }
}

/// Where an assembled file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Its chunks are being written; never served.
    Assembling,
    /// Every byte is stored and its SHA-256 checked; served.
    Complete,
}

impl FileState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Assembling => "assembling",
            FileState::Complete => "complete",
        }
    }
}

/// An upload in progress (or completed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upload {
    /// Upload id; the assembled file gets the same id.
    #[serde(rename = "_id")]
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// File name to give the file.
    pub filename: String,
    /// Declared total size, if given.
    #[serde(default)]
    pub size: Option<i64>,
    /// Declared content type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Declared SHA-256 (lowercase hex), checked by the assembly.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Size of every part but the last.
    pub part_size: i64,
    /// Where it stands.
    pub state: UploadState,
    /// The assembly job, once completion was asked for.
    #[serde(default)]
    pub job_id: Option<String>,
    /// Creation time.
    pub created_ms: i64,
    /// Abandoned uploads expire.
    pub retention: Retention,
}

/// One received part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    /// `<upload>:<n>`.
    #[serde(rename = "_id")]
    pub id: String,
    /// Its upload.
    pub upload_id: String,
    /// Part number from 0.
    pub n: i64,
    /// Bytes.
    pub size: i64,
    /// SHA-256 of the part, hex.
    pub sha256: String,
    /// Which request's pieces hold the bytes.
    pub token: String,
    /// Number of pieces.
    pub pieces: i64,
    /// Expires with the upload.
    pub retention: Retention,
}

/// An assembled (or assembling) file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMeta {
    /// File id.
    #[serde(rename = "_id")]
    pub id: String,
    /// Copy of the id for the listing index (the compatible server cannot index `_id` in a
    /// compound index).
    pub list_key: String,
    /// Owner.
    pub tenant: String,
    /// Name.
    pub filename: String,
    /// Bytes.
    pub size: i64,
    /// SHA-256, hex (set when complete).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Content type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Chunk size the file was written with.
    pub chunk_size: i64,
    /// Only complete files are served.
    pub state: FileState,
    /// Creation time.
    pub created_ms: i64,
}

/// Checksums a client sent with a part.
#[derive(Debug, Clone, Default)]
pub struct PartCheck {
    /// From `Content-MD5` (base64 of the digest).
    pub md5: Option<Vec<u8>>,
    /// From `x-content-sha256` (hex).
    pub sha256: Option<Vec<u8>>,
}

/// Handle to the file store. Cheap to clone.
#[derive(Clone)]
pub struct FileStore {
    uploads: Collection<Upload>,
    parts: Collection<Part>,
    pieces: Collection<Document>,
    files: Collection<FileMeta>,
    chunks: Collection<Document>,
    retention: Duration,
}

/// Lowercase hex of a digest.
pub fn hex_digest(d: &[u8]) -> String {
    hex::encode(d)
}

fn binary(data: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: data,
    }
}

fn doc_bytes(d: &Document) -> Result<Vec<u8>> {
    d.get_binary_generic("data")
        .cloned()
        .map_err(|e| Error::Corrupt(format!("chunk without data: {e}")))
}

impl FileStore {
    /// The file store in `db`; abandoned uploads expire after `retention`.
    pub fn new(db: &Database, retention: Duration) -> Self {
        FileStore {
            uploads: db.collection(UPLOADS),
            parts: db.collection(UPLOAD_PARTS),
            pieces: db.collection(UPLOAD_PIECES),
            files: db.collection(FILES),
            chunks: db.collection(FILE_CHUNKS),
            retention,
        }
    }

    /// Create the indexes (idempotent).
    pub async fn ensure_indexes(&self) -> Result<()> {
        let ttl = Retention::ttl_index;
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        self.uploads.create_index(ttl()).await?;
        self.parts
            .create_indexes(vec![ttl(), plain(doc! { "upload_id": 1, "n": 1 })])
            .await?;
        self.pieces
            .create_indexes(vec![
                ttl(),
                plain(doc! { "upload_id": 1, "n": 1, "token": 1 }),
            ])
            .await?;
        self.files
            .create_index(plain(doc! { "tenant": 1, "list_key": -1 }))
            .await?;
        self.chunks
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "file_id": 1, "n": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        Ok(())
    }

    fn expiry(&self) -> Retention {
        Retention::from_now(self.retention)
    }

    // ----- uploads ----------------------------------------------------------------------

    /// Start an upload.
    pub async fn create_upload(
        &self,
        tenant: &str,
        filename: String,
        size: Option<i64>,
        content_type: Option<String>,
        sha256: Option<String>,
        part_size: i64,
    ) -> Result<Upload> {
        let up = Upload {
            id: new_job_id(),
            tenant: tenant.to_string(),
            filename,
            size,
            content_type,
            sha256,
            part_size,
            state: UploadState::Open,
            job_id: None,
            created_ms: now_ms(),
            retention: self.expiry(),
        };
        self.uploads.insert_one(&up).await?;
        Ok(up)
    }

    /// An upload, optionally only if `tenant` owns it.
    pub async fn upload(&self, id: &str, tenant: Option<&str>) -> Result<Option<Upload>> {
        let f = scoped(doc! { "_id": id }, tenant);
        Ok(self.uploads.find_one(f).await?)
    }

    /// The parts that arrived, in order.
    pub async fn parts(&self, upload_id: &str) -> Result<Vec<Part>> {
        let mut parts: Vec<Part> = self
            .parts
            .find(doc! { "upload_id": upload_id })
            .await?
            .try_collect()
            .await?;
        // Sorted here rather than by the server: the compatible server's integer sorts are not
        // to be trusted everywhere, and an upload has at most MAX_PARTS parts.
        parts.sort_by_key(|p| p.n);
        Ok(parts)
    }

    /// Receive part `n` from a byte stream, checking its size and checksums. Idempotent: a
    /// re-sent part replaces the earlier copy atomically. Nothing becomes visible unless every
    /// check passed.
    pub async fn put_part<S, E>(
        &self,
        upload: &Upload,
        n: i64,
        body: S,
        check: PartCheck,
    ) -> Result<Part>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if upload.state != UploadState::Open {
            return Err(Error::Refused {
                code: "upload_closed",
                message: format!(
                    "the upload is {}; parts are no longer accepted",
                    upload.state.as_str()
                ),
            });
        }
        if !(0..MAX_PARTS).contains(&n) {
            return Err(Error::invalid(
                "invalid_part",
                format!("part numbers run from 0 to {}", MAX_PARTS - 1),
            ));
        }
        let max = upload.part_size as usize;
        let token = uuid::Uuid::new_v4().simple().to_string();
        match self.stream_pieces(upload, n, &token, body, max).await {
            Ok((size, pieces, md5, sha)) => {
                let mismatch = if check.md5.as_ref().is_some_and(|m| m[..] != md5[..]) {
                    Some(format!(
                        "part {n}: Content-MD5 does not match the bytes received (their MD5 is {})",
                        base64_std(&md5)
                    ))
                } else if check.sha256.as_ref().is_some_and(|s| s[..] != sha[..]) {
                    Some(format!(
                        "part {n}: x-content-sha256 does not match the bytes received (their SHA-256 is {})",
                        hex_digest(&sha)
                    ))
                } else {
                    None
                };
                if let Some(message) = mismatch {
                    self.drop_pieces(&upload.id, n, &token).await;
                    return Err(Error::invalid("checksum_mismatch", message));
                }
                let part = Part {
                    id: format!("{}:{n}", upload.id),
                    upload_id: upload.id.clone(),
                    n,
                    size: size as i64,
                    sha256: hex_digest(&sha),
                    token: token.clone(),
                    pieces: pieces as i64,
                    retention: self.expiry(),
                };
                // The switch to the new pieces is this one replace; the replaced record tells
                // exactly which pieces are now garbage (never another request's live ones).
                let before = self
                    .parts
                    .find_one_and_replace(doc! { "_id": &part.id }, &part)
                    .upsert(true)
                    .return_document(ReturnDocument::Before)
                    .await?;
                if let Some(old) = before {
                    if old.token != token {
                        self.drop_pieces(&upload.id, n, &old.token).await;
                    }
                }
                Ok(part)
            }
            Err(e) => {
                self.drop_pieces(&upload.id, n, &token).await;
                Err(e)
            }
        }
    }

    async fn stream_pieces<S, E>(
        &self,
        upload: &Upload,
        n: i64,
        token: &str,
        mut body: S,
        max: usize,
    ) -> Result<(usize, usize, Vec<u8>, Vec<u8>)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut md5 = Md5::new();
        let mut sha = Sha256::new();
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_SIZE);
        let mut size = 0usize;
        let mut k = 0usize;
        while let Some(item) = body.next().await {
            let bytes = item.map_err(|e| {
                Error::invalid("unreadable_body", format!("reading part {n} failed: {e}"))
            })?;
            size += bytes.len();
            if size > max {
                return Err(Error::TooLarge(format!(
                    "part {n} is larger than the upload's part size of {max} bytes"
                )));
            }
            md5.update(&bytes);
            sha.update(&bytes);
            let mut rest: &[u8] = &bytes;
            while !rest.is_empty() {
                let take = (CHUNK_SIZE - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == CHUNK_SIZE {
                    let data = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_SIZE));
                    self.insert_piece(upload, n, token, k, data).await?;
                    k += 1;
                }
            }
        }
        if !buf.is_empty() || k == 0 {
            self.insert_piece(upload, n, token, k, buf).await?;
            k += 1;
        }
        Ok((size, k, md5.finalize().to_vec(), sha.finalize().to_vec()))
    }

    async fn insert_piece(
        &self,
        upload: &Upload,
        n: i64,
        token: &str,
        k: usize,
        data: Vec<u8>,
    ) -> Result<()> {
        let exp = self.expiry();
        self.pieces
            .insert_one(doc! {
                "_id": format!("{}:{n}:{token}:{k}", upload.id),
                "upload_id": &upload.id,
                "n": n,
                "token": token,
                "k": k as i64,
                "data": binary(data),
                "retention": exp.to_doc(),
            })
            .await?;
        Ok(())
    }

    async fn drop_pieces(&self, upload_id: &str, n: i64, token: &str) {
        // Best effort: leftovers expire with the upload anyway.
        let _ = self
            .pieces
            .delete_many(doc! { "upload_id": upload_id, "n": n, "token": token })
            .await;
    }

    /// Pieces `from..from + count` of a part (fewer at its end), in order.
    ///
    /// One query for several pieces rather than one per piece: the MongoDB-compatible server
    /// sweeps a TTL-indexed collection for expired documents before every read, a scan of every
    /// piece of every upload, which made assembly quadratic in the file's size (a 64 MiB file
    /// took 20 s, 1 GiB would take hours). Ordered here, not by the server, whose integer sorts
    /// are not to be trusted everywhere; memory is `count` pieces.
    pub async fn pieces(&self, part: &Part, from: i64, count: i64) -> Result<Vec<Vec<u8>>> {
        let to = (from + count).min(part.pieces);
        let mut found: Vec<Document> = self
            .pieces
            .find(doc! {
                "upload_id": &part.upload_id,
                "n": part.n,
                "token": &part.token,
                "k": { "$gte": from, "$lt": to },
            })
            .await?
            .try_collect()
            .await?;
        let k_of = |d: &Document| {
            d.get_i64("k")
                .ok()
                .or_else(|| d.get_i32("k").ok().map(i64::from))
        };
        found.sort_by_key(k_of);
        let ks: Vec<Option<i64>> = found.iter().map(k_of).collect();
        if ks != (from..to).map(Some).collect::<Vec<_>>() {
            return Err(Error::Corrupt(format!(
                "pieces {from}..{to} of part {} are incomplete (found {ks:?})",
                part.id
            )));
        }
        found.iter().map(doc_bytes).collect()
    }

    /// Move an upload from `open` to `completing` and remember its assembly job.
    pub async fn mark_completing(&self, upload_id: &str, job_id: &str) -> Result<()> {
        self.uploads
            .update_one(
                doc! { "_id": upload_id, "state": { "$in": [UploadState::Open.as_str(), UploadState::Completing.as_str()] } },
                doc! { "$set": { "state": UploadState::Completing.as_str(), "job_id": job_id } },
            )
            .await?;
        Ok(())
    }

    /// The upload's file is complete: its parts are no longer needed.
    pub async fn finish_upload(&self, upload_id: &str) -> Result<()> {
        self.uploads
            .update_one(
                doc! { "_id": upload_id },
                doc! { "$set": { "state": UploadState::Completed.as_str() } },
            )
            .await?;
        self.pieces
            .delete_many(doc! { "upload_id": upload_id })
            .await?;
        self.parts
            .delete_many(doc! { "upload_id": upload_id })
            .await?;
        Ok(())
    }

    // ----- files ------------------------------------------------------------------------

    /// A file, optionally only if `tenant` owns it (any state).
    pub async fn file(&self, id: &str, tenant: Option<&str>) -> Result<Option<FileMeta>> {
        let f = scoped(doc! { "_id": id }, tenant);
        Ok(self.files.find_one(f).await?)
    }

    /// Complete files, newest first, older than the cursor `before`.
    pub async fn list_files(
        &self,
        tenant: Option<&str>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FileMeta>> {
        let f = scoped(doc! { "state": FileState::Complete.as_str() }, tenant);
        newest_first(&self.files, f, before, limit).await
    }

    /// Record (or re-record, on a retried assembly) that a file is being assembled.
    pub async fn begin_file(&self, meta: &FileMeta) -> Result<()> {
        self.files
            .replace_one(doc! { "_id": &meta.id }, meta)
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Mark a file complete with its checksum.
    pub async fn complete_file(&self, id: &str, size: i64, sha256: &str) -> Result<()> {
        self.files
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "state": FileState::Complete.as_str(), "size": size, "sha256": sha256 } },
            )
            .await?;
        Ok(())
    }

    /// Write chunk `n` of a file (idempotent: same id, same bytes).
    pub async fn write_chunk(&self, file_id: &str, n: i64, data: Vec<u8>) -> Result<()> {
        let id = format!("{file_id}:{n}");
        self.chunks
            .replace_one(
                doc! { "_id": &id },
                doc! { "_id": &id, "file_id": file_id, "n": n, "data": binary(data) },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Chunk `n` of a file.
    pub async fn chunk(&self, file_id: &str, n: i64) -> Result<Option<Vec<u8>>> {
        match self
            .chunks
            .find_one(doc! { "_id": format!("{file_id}:{n}") })
            .await?
        {
            Some(d) => Ok(Some(doc_bytes(&d)?)),
            None => Ok(None),
        }
    }

    /// How many chunks from 0 on are stored without a gap: where a resumed assembly continues.
    pub async fn contiguous_chunks(&self, file_id: &str) -> Result<i64> {
        let ns: HashSet<i64> = self
            .chunks
            .find(doc! { "file_id": file_id })
            .projection(doc! { "n": 1, "_id": 0 })
            .await?
            .try_collect::<Vec<Document>>()
            .await?
            .iter()
            .filter_map(|d| {
                d.get_i64("n")
                    .ok()
                    .or_else(|| d.get_i32("n").ok().map(i64::from))
            })
            .collect();
        let mut c = 0;
        while ns.contains(&c) {
            c += 1;
        }
        Ok(c)
    }

    /// Delete a file and its chunks. Metadata first: a crash in between leaves unreachable
    /// chunks, never a listed file with missing bytes.
    pub async fn delete_file(&self, id: &str, tenant: Option<&str>) -> Result<bool> {
        let f = scoped(doc! { "_id": id }, tenant);
        let gone = self.files.delete_one(f).await?.deleted_count == 1;
        if gone {
            self.chunks.delete_many(doc! { "file_id": id }).await?;
        }
        Ok(gone)
    }

    /// Remove everything of a file whose assembly failed for good.
    pub async fn discard_file(&self, id: &str) -> Result<()> {
        self.files.delete_one(doc! { "_id": id }).await?;
        self.chunks.delete_many(doc! { "file_id": id }).await?;
        Ok(())
    }

    /// Stream bytes `[start, end)` of a complete file, one chunk in memory at a time.
    pub fn read_range(
        &self,
        meta: &FileMeta,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let store = self.clone();
        let id = meta.id.clone();
        let cs = meta.chunk_size.max(1) as u64;
        futures::stream::try_unfold(start, move |pos| {
            let store = store.clone();
            let id = id.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let n = pos / cs;
                let data = store
                    .chunk(&id, n as i64)
                    .await?
                    .ok_or_else(|| Error::Corrupt(format!("chunk {n} of file {id} is missing")))?;
                let from = (pos - n * cs) as usize;
                let to = ((end - n * cs) as usize).min(data.len());
                if from >= to {
                    return Err(Error::Corrupt(format!("chunk {n} of file {id} is short")));
                }
                let piece = Bytes::copy_from_slice(&data[from..to]);
                Ok(Some((piece, n * cs + to as u64)))
            }
        })
    }
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decode a `Content-MD5` header (base64 of the 16-byte digest).
pub fn parse_content_md5(v: &str) -> std::result::Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()
        .filter(|b| b.len() == 16)
        .ok_or_else(|| "Content-MD5 must be the base64 of a 16-byte MD5 digest".to_string())
}

/// Decode a SHA-256 given as 64 hex digits.
pub fn parse_sha256_hex(v: &str) -> std::result::Result<Vec<u8>, String> {
    hex::decode(v.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| "a SHA-256 must be 64 hex digits".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_headers_parse() {
        assert!(parse_content_md5("1B2M2Y8AsgTpgAmY7PhCfg==").is_ok());
        assert!(parse_content_md5("nope").is_err());
        assert!(parse_sha256_hex(&"ab".repeat(32)).is_ok());
        assert!(parse_sha256_hex("abc").is_err());
    }
}
