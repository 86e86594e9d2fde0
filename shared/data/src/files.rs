//! The file store: uploads received in parts, and files made of those parts, in ordinary
//! MongoDB collections (no dots in collection names, so the same code runs on real MongoDB and
//! on the MongoDB-compatible server, which has no GridFS).
//!
//! | collection | one document per | `_id` |
//! |---|---|---|
//! | `uploads` | upload (metadata, state, declared size and SHA-256) | upload id (UUIDv7) |
//! | `upload_parts` | part that arrived and passed its checksum | `<upload>:<n>` |
//! | `file_pieces` | [`CHUNK_SIZE`] slice of a part's bytes (no TTL index) | `<upload>:<n>:<token>:<k>` |
//! | `files` | file (metadata, size, SHA-256, state, and its manifest of pieces) | file id (= upload id) |
//! | `upload_pieces`, `file_chunks` | the previous layout's pieces and chunks, still read | as before |
//!
//! A part is streamed into pieces under a fresh `token` while its checksums are computed; only
//! when they match is the part record switched to the new token (one atomic replace), and the
//! pieces of the token it replaced are deleted. So a part is never visible half-written, a bad
//! re-send never damages a good part, and memory stays at one piece per request. Concurrent
//! sends of the same part do not wait for each other: each writes its own token's pieces, and
//! the last switch wins (it deletes the loser's pieces).
//!
//! # A file is a manifest of the pieces already stored
//! Completing an upload does not copy a byte. The assembly reads the parts once, in order,
//! checking each part's SHA-256 and computing the whole file's, and then commits the file as
//! one metadata document: the ordered list of its parts' tokens, sizes and piece counts
//! ([`FilePart`]). The file's bytes are exactly the pieces that list names, `<file>:<n>:<token>:<k>`
//! for part `n`, piece `k`; downloads and ranges read them by `_id`.
//!
//! Chosen over renaming the pieces into file chunks in bulk: a rename is a rewrite of every
//! piece (MongoDB cannot change an `_id` in place, so it is an insert plus a delete of each
//! 256 KiB document), which is the very cost this layout removes, and a crash half-way through
//! a rename would leave a file spread over two collections. A manifest is one write, atomic, and
//! idempotent: an assembly killed at any point either committed it or left nothing to undo.
//! Pieces of parts are cut at [`CHUNK_SIZE`] from each part's start, so every piece but a part's
//! last is full, and byte `i` of part `n` is in piece `i / CHUNK_SIZE`.
//!
//! # Expiry without a TTL index on the bytes
//! `file_pieces` has no TTL index: a piece that became part of a file must never expire, and the
//! MongoDB-compatible server purges a TTL-indexed collection (a scan of every document) before
//! every read of it, which would put every download and hash pass behind a scan of all stored
//! bytes. Instead each upload carries `sweep_after`, and the worker's sweeper
//! ([`FileStore::sweep`]) deletes abandoned uploads with their parts and pieces, and, once a
//! completed upload's retention is over, its record and any pieces its file does not list
//! (leftovers of requests that died mid-way). Deleting a file deletes its record first, then
//! exactly the pieces of its upload.
//!
//! # The previous layout
//! Files assembled before this layout have no manifest; their bytes are in `file_chunks`
//! (`<file>:<n>`, [`FileMeta::chunk_size`] each) and are served from there, byte for byte.
//! Uploads begun before it keep their parts' pieces in `upload_pieces`, under the TTL index they
//! were written with ([`Part::home`] says where); their assembly copies each piece once into
//! `file_pieces` (same `_id`) during the hash pass, so a file never lists a piece that can expire.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use md5::Md5;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, DateTime, Document};
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
/// How much longer than its retention an upload whose assembly has not ended is kept: more
/// than `file_assembly`'s attempts can take (5 × a 6 h timeout, with backoff).
pub const COMPLETING_GRACE: Duration = Duration::from_secs(3 * 86_400);
/// Longest file name.
pub const MAX_FILENAME: usize = 255;

/// Uploads collection.
pub const UPLOADS: &str = "uploads";
/// Parts collection.
pub const UPLOAD_PARTS: &str = "upload_parts";
/// Pieces of parts and files (no TTL index).
pub const FILE_PIECES: &str = "file_pieces";
/// The previous layout's part pieces (TTL-indexed); still read for uploads begun before.
pub const UPLOAD_PIECES: &str = "upload_pieces";
/// The JSON Schema pattern of an upload or file id: a UUID, hyphenated or not.
pub const ID_PATTERN: &str =
    "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32})$";
/// Files collection.
pub const FILES: &str = "files";
/// The previous layout's file chunks; still served for files assembled before.
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
    /// When the sweeper may delete it (never completed: with its parts and pieces). Not a TTL
    /// field, so nothing deletes the record before the sweeper has seen its pieces.
    #[serde(default)]
    pub sweep_after: Option<DateTime>,
    /// When the sweeper found it `completing` without a file and gave its assembly
    /// [`COMPLETING_GRACE`] more (a time, not a flag: the compatible server turns a `$set`
    /// boolean into an integer).
    #[serde(default)]
    pub graced_at: Option<DateTime>,
    /// Uploads begun before the sweeper expire through this TTL field, with their parts and
    /// pieces (all TTL-indexed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
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
    /// Where its pieces are.
    #[serde(default)]
    pub home: PieceHome,
    /// Parts of uploads begun before the sweeper carry a TTL field; new parts are deleted with
    /// their upload by the sweeper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// The collection holding a part's pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PieceHome {
    /// `upload_pieces`, TTL-indexed: parts received before the manifest layout (their records
    /// have no `home`).
    #[default]
    UploadPieces,
    /// `file_pieces`, never expiring by itself.
    FilePieces,
}

/// One part of a file's manifest, in file order (part `n` is the `n`-th entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePart {
    /// The token whose pieces hold the part's bytes.
    pub token: String,
    /// Bytes.
    pub size: i64,
    /// Number of pieces, each [`FileMeta::chunk_size`] but the last.
    pub pieces: i64,
    /// SHA-256 of the part, hex (checked again by the assembly's read).
    pub sha256: String,
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
    /// Size of every piece (or, in the previous layout, chunk) but a part's last.
    pub chunk_size: i64,
    /// The manifest: the file's parts in order, whose pieces in `file_pieces` are its bytes.
    /// Absent for files of the previous layout, whose bytes are in `file_chunks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<FilePart>>,
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
    legacy_pieces: Collection<Document>,
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
            pieces: db.collection(FILE_PIECES),
            legacy_pieces: db.collection(UPLOAD_PIECES),
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
        // Kept for the previous layout's records, which expire through them.
        self.legacy_pieces
            .create_indexes(vec![
                ttl(),
                plain(doc! { "upload_id": 1, "n": 1, "token": 1 }),
            ])
            .await?;
        self.uploads
            .create_index(plain(doc! { "sweep_after": 1 }))
            .await?;
        self.pieces
            .create_index(plain(doc! { "upload_id": 1, "n": 1, "token": 1 }))
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

    fn sweep_after(&self) -> DateTime {
        Retention::from_now(self.retention).expire_at
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
            sweep_after: Some(self.sweep_after()),
            graced_at: None,
            retention: None,
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
        match self
            .stream_pieces(upload, n, &token, body, max, check.md5.is_some())
            .await
        {
            Ok((size, pieces, md5, sha)) => {
                let md5_mismatch = match (&check.md5, &md5) {
                    (Some(want), Some(got)) if want[..] != got[..] => Some(got),
                    _ => None,
                };
                let mismatch = if let Some(got) = md5_mismatch {
                    Some(format!(
                        "part {n}: Content-MD5 does not match the bytes received (their MD5 is {})",
                        base64_std(got)
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
                    home: PieceHome::FilePieces,
                    retention: None,
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
                    if old.token != token && self.still_open(&upload.id).await {
                        self.drop_pieces_of(&old, &upload.id, n, &old.token).await;
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

    /// Store a part's bytes as pieces: its size, its piece count, its MD5 (only when `want_md5`:
    /// the client sent `Content-MD5`; nothing else uses it, and at about 0.7 GB/s it is the
    /// costliest of the two hashes on a CPU with SHA extensions) and its SHA-256.
    async fn stream_pieces<S, E>(
        &self,
        upload: &Upload,
        n: i64,
        token: &str,
        mut body: S,
        max: usize,
        want_md5: bool,
    ) -> Result<(usize, usize, Option<Vec<u8>>, Vec<u8>)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut md5 = want_md5.then(Md5::new);
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
            if let Some(md5) = md5.as_mut() {
                md5.update(&bytes);
            }
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
        Ok((
            size,
            k,
            md5.map(|m| m.finalize().to_vec()),
            sha.finalize().to_vec(),
        ))
    }

    async fn insert_piece(
        &self,
        upload: &Upload,
        n: i64,
        token: &str,
        k: usize,
        data: Vec<u8>,
    ) -> Result<()> {
        self.pieces
            .insert_one(doc! {
                "_id": piece_id(&upload.id, n, token, k as i64),
                "upload_id": &upload.id,
                "n": n,
                "token": token,
                "k": k as i64,
                "data": binary(data),
            })
            .await?;
        Ok(())
    }

    /// Whether an upload still takes parts. A re-sent part deletes the pieces it replaced only
    /// then: once the assembly has begun (it closes the upload before it reads the parts), the
    /// replaced pieces may be the ones its manifest lists, so they are left to the sweeper.
    async fn still_open(&self, upload_id: &str) -> bool {
        matches!(
            self.uploads.find_one(doc! { "_id": upload_id }).await,
            Ok(Some(u)) if u.state == UploadState::Open
        )
    }

    async fn drop_pieces(&self, upload_id: &str, n: i64, token: &str) {
        // Best effort: the sweeper deletes leftovers with the upload anyway.
        let _ = self
            .pieces
            .delete_many(doc! { "upload_id": upload_id, "n": n, "token": token })
            .await;
    }

    async fn drop_pieces_of(&self, part: &Part, upload_id: &str, n: i64, token: &str) {
        match part.home {
            PieceHome::FilePieces => self.drop_pieces(upload_id, n, token).await,
            PieceHome::UploadPieces => {
                let _ = self
                    .legacy_pieces
                    .delete_many(doc! { "upload_id": upload_id, "n": n, "token": token })
                    .await;
            }
        }
    }

    /// Pieces by `_id`, in the order asked, from the collection `home`; every one must exist.
    ///
    /// One query for many pieces rather than one per piece, so a read costs one round trip per
    /// few MiB. `file_pieces` has no TTL index, so the compatible server does not scan it before
    /// the read (it does for `upload_pieces`, which only uploads of the previous layout read).
    /// Memory is the pieces asked for.
    pub async fn pieces_by_id(&self, home: PieceHome, ids: &[String]) -> Result<Vec<Vec<u8>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let coll = match home {
            PieceHome::FilePieces => &self.pieces,
            PieceHome::UploadPieces => &self.legacy_pieces,
        };
        let found: Vec<Document> = coll
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; ids.len()];
        let at: std::collections::HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        for d in found {
            let id = d.get_str("_id").unwrap_or_default();
            if let Some(&i) = at.get(id) {
                slots[i] = Some(doc_bytes(&d)?);
            }
        }
        slots
            .into_iter()
            .zip(ids)
            .map(|(s, id)| s.ok_or_else(|| Error::Corrupt(format!("piece {id} is missing"))))
            .collect()
    }

    /// Copy a piece of the previous layout into `file_pieces` under the same `_id`, so that the
    /// file listing it never loses it to `upload_pieces`' TTL. A copy already there (an
    /// assembly retried) is the same bytes.
    pub async fn adopt_piece(
        &self,
        upload_id: &str,
        n: i64,
        token: &str,
        k: i64,
        data: &[u8],
    ) -> Result<()> {
        let res = self
            .pieces
            .insert_one(doc! {
                "_id": piece_id(upload_id, n, token, k),
                "upload_id": upload_id,
                "n": n,
                "token": token,
                "k": k,
                "data": binary(data.to_vec()),
            })
            .await;
        match res {
            Err(e) if !jobmill::store::is_duplicate_key(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Close an upload to new parts (`open` → `completing`) before its assembly reads them; see
    /// [`FileStore::put_part`] for why.
    pub async fn close_upload(&self, upload_id: &str) -> Result<()> {
        self.uploads
            .update_one(
                doc! { "_id": upload_id, "state": UploadState::Open.as_str() },
                doc! { "$set": { "state": UploadState::Completing.as_str() } },
            )
            .await?;
        Ok(())
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

    /// The upload's file is committed: its part records are no longer needed. Its pieces are
    /// the file's now and stay; pieces no part listed are left to the sweeper.
    pub async fn finish_upload(&self, upload_id: &str) -> Result<()> {
        self.uploads
            .update_one(
                doc! { "_id": upload_id },
                doc! { "$set": { "state": UploadState::Completed.as_str() } },
            )
            .await?;
        self.parts
            .delete_many(doc! { "upload_id": upload_id })
            .await?;
        Ok(())
    }

    /// Delete what expired: uploads past `sweep_after`, at most `limit` of them per call. Returns
    /// how many were handled. Idempotent; several workers may sweep at once.
    ///
    /// - `open`: abandoned; its pieces, parts and record go (record last, so a sweep cut short
    ///   is finished by the next).
    /// - `completing` with a complete file: as `completed`. Without one, its assembly may still
    ///   be running or retrying: it gets [`COMPLETING_GRACE`] more, then goes as `open`.
    /// - `completed`: the record, its parts, and the upload's pieces its file does not list go;
    ///   the file's pieces stay. If the file was deleted, every piece of the upload goes.
    pub async fn sweep(&self, limit: i64) -> Result<usize> {
        let now = DateTime::now();
        let due: Vec<Upload> = self
            .uploads
            .find(doc! { "sweep_after": { "$lt": now } })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        for up in &due {
            let file = self.file(&up.id, None).await?;
            let listed = file
                .as_ref()
                .filter(|f| f.state == FileState::Complete)
                .and_then(|f| f.parts.clone());
            if let Some(parts) = listed {
                let tokens: Vec<&str> = parts.iter().map(|p| p.token.as_str()).collect();
                self.pieces
                    .delete_many(doc! { "upload_id": &up.id, "token": { "$nin": tokens } })
                    .await?;
            } else {
                match up.state {
                    UploadState::Completing if up.graced_at.is_none() => {
                        let later = DateTime::from_millis(
                            now.timestamp_millis()
                                .saturating_add(COMPLETING_GRACE.as_millis() as i64),
                        );
                        self.uploads
                            .update_one(
                                doc! { "_id": &up.id },
                                doc! { "$set": { "sweep_after": later, "graced_at": now } },
                            )
                            .await?;
                        continue;
                    }
                    UploadState::Open | UploadState::Completing => {
                        self.pieces
                            .delete_many(doc! { "upload_id": &up.id })
                            .await?;
                        // A previous-layout assembly that never finished.
                        if file.is_some() {
                            self.discard_file(&up.id).await?;
                        }
                    }
                    // The file was deleted (which deleted its pieces) or never kept.
                    UploadState::Completed => {
                        if file.is_none() {
                            self.pieces
                                .delete_many(doc! { "upload_id": &up.id })
                                .await?;
                        }
                    }
                }
            }
            self.parts.delete_many(doc! { "upload_id": &up.id }).await?;
            self.uploads.delete_one(doc! { "_id": &up.id }).await?;
        }
        Ok(due.len())
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

    /// Commit a file: one write of its metadata and manifest, idempotent (a retried assembly
    /// writes the same document). A file doc of the previous layout left by an assembly that
    /// never finished is replaced, and its chunks deleted.
    pub async fn commit_file(&self, meta: &FileMeta) -> Result<()> {
        let before = self
            .files
            .find_one_and_replace(doc! { "_id": &meta.id }, meta)
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .await?;
        if before.is_some_and(|b| b.parts.is_none()) {
            self.chunks
                .delete_many(doc! { "file_id": &meta.id })
                .await?;
        }
        Ok(())
    }

    /// Chunk `n` of a file of the previous layout.
    async fn chunk(&self, file_id: &str, n: i64) -> Result<Option<Vec<u8>>> {
        match self
            .chunks
            .find_one(doc! { "_id": format!("{file_id}:{n}") })
            .await?
        {
            Some(d) => Ok(Some(doc_bytes(&d)?)),
            None => Ok(None),
        }
    }

    /// The stored block (piece, or chunk of the previous layout) holding byte `pos` of a complete
    /// file: its offset in the file and its bytes. One read by `_id`.
    pub async fn block_at(&self, meta: &FileMeta, pos: u64) -> Result<(u64, Vec<u8>)> {
        let cs = meta.chunk_size.max(1) as u64;
        let Some(parts) = &meta.parts else {
            let n = pos / cs;
            let data = self.chunk(&meta.id, n as i64).await?.ok_or_else(|| {
                Error::Corrupt(format!("chunk {n} of file {} is missing", meta.id))
            })?;
            return Ok((n * cs, data));
        };
        let mut start = 0u64;
        for (n, p) in parts.iter().enumerate() {
            let end = start + p.size.max(0) as u64;
            if pos < end {
                let k = (pos - start) / cs;
                let id = piece_id(&meta.id, n as i64, &p.token, k as i64);
                let mut got = self
                    .pieces_by_id(PieceHome::FilePieces, std::slice::from_ref(&id))
                    .await?;
                return Ok((start + k * cs, got.pop().unwrap_or_default()));
            }
            start = end;
        }
        Err(Error::Corrupt(format!(
            "byte {pos} is beyond file {}'s manifest",
            meta.id
        )))
    }

    /// Delete a file and exactly its bytes. Metadata first: a crash in between leaves
    /// unreachable pieces (the sweeper's, with the upload), never a listed file with missing
    /// bytes.
    pub async fn delete_file(&self, id: &str, tenant: Option<&str>) -> Result<bool> {
        let f = scoped(doc! { "_id": id }, tenant);
        let Some(gone) = self.files.find_one_and_delete(f).await? else {
            return Ok(false);
        };
        match &gone.parts {
            // Every piece in `file_pieces` under this upload id is the file's (or garbage of
            // its upload); no other file's piece carries this id.
            Some(_) => {
                self.pieces.delete_many(doc! { "upload_id": id }).await?;
            }
            None => {
                self.chunks.delete_many(doc! { "file_id": id }).await?;
            }
        }
        Ok(true)
    }

    /// Remove a file of the previous layout whose assembly never finished.
    pub async fn discard_file(&self, id: &str) -> Result<()> {
        self.files.delete_one(doc! { "_id": id }).await?;
        self.chunks.delete_many(doc! { "file_id": id }).await?;
        Ok(())
    }

    /// Stream bytes `[start, end)` of a complete file, one block (256 KiB) in memory at a time,
    /// from whichever layout it is stored in.
    pub fn read_range(
        &self,
        meta: &FileMeta,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let store = self.clone();
        let meta = meta.clone();
        futures::stream::try_unfold(start, move |pos| {
            let store = store.clone();
            let meta = meta.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let (at, data) = store.block_at(&meta, pos).await?;
                let from = (pos - at) as usize;
                let to = ((end - at) as usize).min(data.len());
                if from >= to {
                    return Err(Error::Corrupt(format!(
                        "the block at {at} of file {} is short",
                        meta.id
                    )));
                }
                let piece = Bytes::copy_from_slice(&data[from..to]);
                Ok(Some((piece, at + to as u64)))
            }
        })
    }
}

/// The `_id` of piece `k` of part `n` of an upload, written under `token`.
pub fn piece_id(upload_id: &str, n: i64, token: &str, k: i64) -> String {
    format!("{upload_id}:{n}:{token}:{k}")
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
