//! `bulk_import`: streams a stored file (NDJSON or CSV) into a tenant's dataset in batches.
//!
//! - **Streaming.** The file is read one chunk at a time; records are cut across chunk
//!   boundaries, so memory holds one chunk, one record and at most three batches: the one
//!   being written, one waiting, and the one being parsed. Reading and parsing overlap the
//!   previous batch's write.
//! - **Idempotent rows.** Every row gets a deterministic `_id`: the key's value when `key` is
//!   given (written as an upsert that replaces the row), otherwise `<file>:<row>`, inserted with
//!   duplicates ignored. Importing the same file twice, or rerunning after a crash, never
//!   duplicates a row.
//! - **Checkpoints.** After each batch the byte offset of the next record and the counts so
//!   far are saved; a retry resumes there. Rows between the checkpoint and the crash are
//!   written again, harmlessly (see above), and counted as they were the first time.
//! - **Bad rows** are counted and the first [`MAX_ERRORS`] reported; a file that is not the
//!   declared format at all (nothing parses in the first [`SNIFF_ROWS`] rows, or a CSV header
//!   that is not one) fails the job.

use std::collections::BTreeMap;
use std::time::Duration;

use jobmill::kind::{JobContext, JobKind, KindDefaults, Outcome};
use jobmill::store::Store;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cache::PageCache;
use crate::datasets::{check_name, Dataset, Datasets, NAME_PATTERN};
use crate::files::{FileMeta, FileState, FileStore, ID_PATTERN};

/// Most errors listed in the result.
pub const MAX_ERRORS: usize = 1000;
/// Rows looked at before deciding the file is not the declared format at all.
pub const SNIFF_ROWS: u64 = 100;
/// Longest record; a longer one is a bad row (and a runaway quote cannot eat the memory).
pub const MAX_RECORD: usize = 1024 * 1024;
/// Default rows per write.
pub const DEFAULT_BATCH: usize = 1000;

/// Arguments of `bulk_import`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkImportArgs {
    /// The stored file (from an upload).
    #[schemars(regex(pattern = ID_PATTERN))]
    pub file_id: String,
    /// The file's format.
    pub format: Format,
    /// Target dataset name (`[a-z0-9_]{1,48}`).
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub dataset: String,
    /// Field to upsert on: a row with the same value replaces the earlier one.
    #[serde(default)]
    #[schemars(regex(pattern = FIELD_PATTERN), extend("not" = {"const": "_id"}))]
    pub key: Option<String>,
    /// Rows per write (1-10000, default 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10_000))]
    pub batch_size: Option<usize>,
    /// Expected type per field. A row whose field has another type is a bad row. Without it
    /// CSV values are inferred (empty → null, integers, decimals, true/false, else text).
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"pattern": FIELD_PATTERN, "not": {"const": "_id"}}))]
    pub schema: Option<BTreeMap<String, FieldType>>,
}

/// A field name a row may have: 1-128 characters, no `.`, no leading `$`, not `_id`.
pub const FIELD_PATTERN: &str = r"^[^$.][^.]{0,127}$";

/// The format of an imported file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// Comma-separated values with a header row.
    Csv,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }
}

/// The type a schema expects of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Text.
    String,
    /// Any number.
    Number,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
}

impl FieldType {
    fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
        }
    }
}

impl std::fmt::Display for FieldType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Imports files into datasets.
pub struct BulkImport {
    store: Store,
    files: FileStore,
    datasets: Datasets,
    cache: PageCache,
}

impl BulkImport {
    /// The kind, with the stores it reads and writes and the cache it asks to rebuild.
    pub fn new(store: Store, files: FileStore, datasets: Datasets, cache: PageCache) -> Self {
        BulkImport {
            store,
            files,
            datasets,
            cache,
        }
    }
}

fn check_field(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.starts_with('$') || name.contains('.') {
        return Err(format!(
            "field name '{}' must be 1-128 characters, without '.' or a leading '$'",
            name.chars().take(60).collect::<String>()
        ));
    }
    if name == "_id" {
        return Err("field name _id is reserved".into());
    }
    Ok(())
}

impl JobKind for BulkImport {
    const NAME: &'static str = "bulk_import";
    const DESCRIPTION: &'static str = "Imports a stored NDJSON or CSV file into a dataset in batches, upserting on a key; reports bad rows.";
    type Args = BulkImportArgs;

    fn validate(&self, a: &BulkImportArgs) -> Result<(), String> {
        uuid::Uuid::try_parse(&a.file_id).map_err(|_| "file_id must be a file id (a UUID)")?;
        check_name(&a.dataset)?;
        if let Some(k) = &a.key {
            check_field(k)?;
        }
        if a.batch_size.is_some_and(|b| !(1..=10_000).contains(&b)) {
            return Err("batch_size must be from 1 to 10000".into());
        }
        for f in a.schema.iter().flat_map(|s| s.keys()) {
            check_field(f)?;
        }
        Ok(())
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            max_attempts: 5,
            timeout: Duration::from_secs(6 * 3600),
            ..KindDefaults::default()
        }
    }

    async fn run(&self, ctx: JobContext, a: BulkImportArgs) -> Outcome {
        match import(&ctx, self, &a).await {
            Ok(o) => o,
            // Store trouble: the next attempt resumes from the checkpoint.
            Err(e) => Outcome::retry(e),
        }
    }
}

/// What survives a crash: where to resume and what was counted so far.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Checkpoint {
    /// Byte offset of the next record to read.
    offset: u64,
    /// Records numbered so far (CSV: data rows; NDJSON: lines).
    row: u64,
    /// CSV header.
    header: Option<Vec<String>>,
    inserted: u64,
    updated: u64,
    failed: u64,
    /// Whether any row parsed yet (format sniffing).
    any_ok: bool,
    errors: Vec<(u64, String)>,
}

impl Checkpoint {
    fn fail_row(&mut self, row: u64, msg: String) {
        self.failed += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push((row, format!("row {row}: {msg}")));
        }
    }
}

async fn import(ctx: &JobContext, k: &BulkImport, a: &BulkImportArgs) -> jobmill::Result<Outcome> {
    let files = &k.files;
    let store = &k.store;
    let file = match files.file(&a.file_id, Some(&ctx.tenant)).await? {
        Some(f) if f.state == FileState::Complete => f,
        _ => return Ok(Outcome::fail(format!("file {} does not exist", a.file_id))),
    };
    let datasets = &k.datasets;
    let ds = datasets.ensure(&ctx.tenant, &a.dataset).await?;
    let cp: Checkpoint = match store.load_checkpoint(&ctx.id).await? {
        Some(s) => serde_json::from_str(&s).unwrap_or_default(),
        None => Checkpoint::default(),
    };
    let written = (cp.inserted, cp.updated);
    // Reading and parsing the next batch overlaps the write of the current one: the two halves
    // run concurrently on this task, one batch in between. Batches are written and checkpointed
    // in order, each checkpoint saved only after its batch is stored, so a crash still resumes
    // at the first row not written.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let (parsed, stored) = tokio::join!(
        read_batches(files, &file, a, cp, tx),
        write_batches(ctx, k, &ds, a.key.is_some(), written, file.size, rx)
    );
    // A store error on either side: the next attempt resumes from the checkpoint.
    let ended_early = parsed?;
    let cp = match stored? {
        Stored::All(cp) => cp,
        Stored::Cancelled => {
            return Ok(Outcome::Cancelled("cancelled between batches".into()));
        }
        // The reading half stopped with an outcome (the file is not the declared format).
        Stored::Stopped => {
            return Ok(ended_early.unwrap_or_else(|| {
                Outcome::retry("the import's reader stopped before the end of the file")
            }))
        }
    };
    datasets.bump_generation(&ds).await?;
    // The cached pages of this dataset are stale now: ask for one rebuild (coalesced with any
    // already queued). A failure here must not fail the import; the next cache miss asks again.
    if let Err(e) = k.cache.request_rebuild(&ctx.tenant, &a.dataset).await {
        tracing::warn!(error = %e, dataset = %a.dataset, "could not request a cache rebuild");
    }
    Ok(Outcome::success(json!({
        "dataset": a.dataset,
        "rows": cp.row,
        "inserted": cp.inserted,
        "updated": cp.updated,
        "failed": cp.failed,
        "errors": cp.errors.iter().map(|(row, e)| json!({"row": row, "error": e})).collect::<Vec<_>>(),
    })))
}

/// Rows parsed and ready to write, with the checkpoint to save once they are stored: its
/// offset is past them, and its `inserted`/`updated` are the writer's to fill in.
struct Batch {
    rows: Vec<(u64, Document)>,
    after: Checkpoint,
    /// The file's last batch (maybe empty).
    last: bool,
}

/// The reading half: the file from the checkpoint's offset, block by block, cut into records
/// and parsed into batches sent to the writer. Returns an outcome when the file turns out not
/// to be the declared format; returns early, quietly, when the writer stopped.
async fn read_batches(
    files: &FileStore,
    file: &FileMeta,
    a: &BulkImportArgs,
    mut cp: Checkpoint,
    tx: tokio::sync::mpsc::Sender<Batch>,
) -> jobmill::Result<Option<Outcome>> {
    let batch_size = a.batch_size.unwrap_or(DEFAULT_BATCH);
    let total = file.size.max(0) as u64;
    let mut reader = Records::new(a.format == Format::Csv, cp.offset);
    let mut batch: Vec<(u64, Document)> = Vec::with_capacity(batch_size);
    let mut pos = cp.offset;
    let mut eof = false;
    while !eof {
        let data = if pos < total {
            // One stored block (a piece, or a chunk of the previous layout) at a time.
            let (at, block) = files.block_at(file, pos).await?;
            let from = (pos - at) as usize;
            if from >= block.len() {
                return Err(jobmill::Error::Corrupt(format!(
                    "the block at {at} of the file is short"
                )));
            }
            pos = at + block.len() as u64;
            block[from..].to_vec()
        } else {
            eof = true;
            Vec::new()
        };
        for rec in reader.feed(&data, eof) {
            if let Some(o) = handle_record(&mut cp, a, file, rec, &mut batch) {
                return Ok(Some(o));
            }
            if batch.len() >= batch_size {
                let rows = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                if send(&tx, &mut cp, rows, false).await.is_err() {
                    return Ok(None);
                }
            }
        }
    }
    if let Some(o) = sniff(&cp, a, true) {
        return Ok(Some(o));
    }
    let _ = send(&tx, &mut cp, batch, true).await;
    Ok(None)
}

/// Hand `rows` to the writer with the checkpoint as of their end. Errs when the writer stopped.
async fn send(
    tx: &tokio::sync::mpsc::Sender<Batch>,
    cp: &mut Checkpoint,
    rows: Vec<(u64, Document)>,
    last: bool,
) -> Result<(), ()> {
    if let Some(&(end, _)) = rows.last() {
        cp.offset = end;
    }
    let after = cp.clone();
    tx.send(Batch { rows, after, last }).await.map_err(|_| ())
}

/// How the writing half ended.
enum Stored {
    /// Every batch, the last included, is stored; the final checkpoint.
    All(Checkpoint),
    /// Cancelled between batches.
    Cancelled,
    /// The reader stopped before its last batch.
    Stopped,
}

/// The writing half: each batch stored, then its checkpoint saved and progress reported, in the
/// order read. `written` is what earlier attempts inserted and updated.
async fn write_batches(
    ctx: &JobContext,
    k: &BulkImport,
    ds: &Dataset,
    keyed: bool,
    written: (u64, u64),
    size: i64,
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
) -> jobmill::Result<Stored> {
    let total = size.max(0) as u64;
    let (mut inserted, mut updated) = written;
    while let Some(Batch {
        rows,
        mut after,
        last,
    }) = rx.recv().await
    {
        let (i, u) = write_batch(&k.datasets, ds, keyed, rows).await?;
        inserted += i;
        updated += u;
        after.inserted = inserted;
        after.updated = updated;
        save(ctx, &k.store, &after).await?;
        report(ctx, &after, total);
        if last {
            return Ok(Stored::All(after));
        }
        if ctx.is_cancelled() {
            return Ok(Stored::Cancelled);
        }
    }
    Ok(Stored::Stopped)
}

async fn save(ctx: &JobContext, store: &Store, cp: &Checkpoint) -> jobmill::Result<()> {
    let s = serde_json::to_string(cp).map_err(|e| jobmill::Error::Corrupt(e.to_string()))?;
    store.save_checkpoint(&ctx.id, ctx.attempt, &s).await
}

fn report(ctx: &JobContext, cp: &Checkpoint, total: u64) {
    ctx.progress(
        cp.offset as i64,
        Some(total as i64),
        Some(&format!(
            "{} rows: {} inserted, {} updated, {} failed",
            cp.row, cp.inserted, cp.updated, cp.failed
        )),
    );
}

/// Fail the job when nothing of the first rows parsed: the file is not the declared format.
fn sniff(cp: &Checkpoint, a: &BulkImportArgs, at_end: bool) -> Option<Outcome> {
    let seen = cp.row;
    if cp.any_ok || seen == 0 || (!at_end && seen < SNIFF_ROWS) {
        return None;
    }
    let first = cp
        .errors
        .first()
        .map(|(_, e)| e.clone())
        .unwrap_or_default();
    Some(Outcome::fail(format!(
        "the file is not {}: none of its first {} rows could be read ({first})",
        a.format.as_str(),
        seen.min(SNIFF_ROWS)
    )))
}

/// One cut record: its bytes (or that it was too long) and the offset just past it.
struct Record {
    bytes: Vec<u8>,
    too_long: bool,
    end: u64,
}

/// Cuts a byte stream into records: lines, or for CSV lines outside quotes.
struct Records {
    csv: bool,
    buf: Vec<u8>,
    in_quotes: bool,
    too_long: bool,
    /// Offset of the next byte fed.
    at: u64,
}

impl Records {
    fn new(csv: bool, offset: u64) -> Self {
        Records {
            csv,
            buf: Vec::new(),
            in_quotes: false,
            too_long: false,
            at: offset,
        }
    }

    fn feed(&mut self, data: &[u8], eof: bool) -> Vec<Record> {
        let mut out = Vec::new();
        for &b in data {
            self.at += 1;
            if b == b'"' && self.csv && !self.too_long {
                self.in_quotes = !self.in_quotes;
            }
            if b == b'\n' && (!self.in_quotes || self.too_long) {
                out.push(self.take());
                continue;
            }
            if self.buf.len() >= MAX_RECORD {
                self.too_long = true;
                self.buf.clear();
            }
            if !self.too_long {
                self.buf.push(b);
            }
        }
        if eof && (!self.buf.is_empty() || self.too_long) {
            out.push(self.take());
        }
        out
    }

    fn take(&mut self) -> Record {
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let r = Record {
            bytes,
            too_long: self.too_long,
            end: self.at,
        };
        self.too_long = false;
        self.in_quotes = false;
        r
    }
}

/// Parse one record into the batch (or the error list). Returns an outcome to end the job with
/// when the file turns out not to be the declared format.
fn handle_record(
    cp: &mut Checkpoint,
    a: &BulkImportArgs,
    file: &FileMeta,
    rec: Record,
    batch: &mut Vec<(u64, Document)>,
) -> Option<Outcome> {
    let csv = a.format == Format::Csv;
    if csv && cp.header.is_none() {
        cp.offset = rec.end;
        let header = std::str::from_utf8(&rec.bytes)
            .ok()
            .filter(|_| !rec.too_long)
            .and_then(|s| parse_csv_record(s).ok());
        let Some(header) = header else {
            return Some(Outcome::fail(
                "the file is not csv: its first line is not a header row",
            ));
        };
        let mut seen = std::collections::HashSet::new();
        for h in &header {
            if let Err(e) = check_field(h) {
                return Some(Outcome::fail(format!(
                    "the file is not usable csv: header: {e}"
                )));
            }
            if !seen.insert(h) {
                return Some(Outcome::fail(format!(
                    "the file is not usable csv: header names column {h} twice"
                )));
            }
        }
        cp.header = Some(header);
        return None;
    }
    cp.row += 1;
    let row = cp.row;
    let blank = rec.bytes.iter().all(|b| b.is_ascii_whitespace());
    let parsed = if rec.too_long {
        Err(format!("longer than {MAX_RECORD} bytes"))
    } else if blank {
        Err("empty line".to_string())
    } else {
        match std::str::from_utf8(&rec.bytes) {
            Err(_) => Err("not UTF-8 text".to_string()),
            Ok(text) if csv => csv_row(text, cp.header.as_deref().unwrap_or(&[]), a),
            Ok(text) => json_row(text, a),
        }
    };
    let parsed = parsed.and_then(|d| with_id(d, row, a, file));
    match parsed {
        Ok(d) => {
            cp.any_ok = true;
            batch.push((rec.end, d));
        }
        Err(e) => {
            // A bad row still moves the offset, once the rows before it are written.
            if batch.is_empty() {
                cp.offset = rec.end;
            } else if let Some(last) = batch.last_mut() {
                last.0 = rec.end;
            }
            cp.fail_row(row, e);
        }
    }
    sniff(cp, a, false)
}

fn with_id(
    mut d: Document,
    row: u64,
    a: &BulkImportArgs,
    file: &FileMeta,
) -> Result<Document, String> {
    let id = match &a.key {
        None => format!("{}:{row:012}", file.id),
        Some(k) => match d.get(k) {
            Some(Bson::String(s)) if !s.is_empty() => s.clone(),
            Some(Bson::Int32(i)) => i.to_string(),
            Some(Bson::Int64(i)) => i.to_string(),
            Some(Bson::Double(f)) if f.fract() == 0.0 && f.abs() < 9e15 => (*f as i64).to_string(),
            None | Some(Bson::Null) => return Err(format!("field {k}: the key is missing")),
            Some(_) => return Err(format!("field {k}: the key must be a string or an integer")),
        },
    };
    d.insert("_id", id);
    Ok(d)
}

fn json_row(text: &str, a: &BulkImportArgs) -> Result<Document, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("not a JSON object".into());
    };
    let mut d = Document::new();
    for (k, v) in map {
        check_field(&k).map_err(|e| format!("field {k}: {e}"))?;
        if let Some(t) = a.schema.as_ref().and_then(|s| s.get(&k)) {
            let ok = match t {
                FieldType::String => v.is_string(),
                FieldType::Number => v.is_number(),
                FieldType::Integer => v.is_i64() || v.is_u64(),
                FieldType::Boolean => v.is_boolean(),
            };
            if !ok && !v.is_null() {
                return Err(format!(
                    "field {k}: expected {t}, got {}",
                    short(&v.to_string())
                ));
            }
        }
        let b = Bson::try_from(v).map_err(|e| format!("field {k}: {e}"))?;
        d.insert(k, b);
    }
    Ok(d)
}

fn short(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

fn csv_row(text: &str, header: &[String], a: &BulkImportArgs) -> Result<Document, String> {
    let fields = parse_csv_record(text)?;
    if fields.len() != header.len() {
        return Err(format!(
            "expected {} fields, got {}",
            header.len(),
            fields.len()
        ));
    }
    let mut d = Document::new();
    for (name, raw) in header.iter().zip(fields) {
        let want = a.schema.as_ref().and_then(|s| s.get(name)).copied();
        let v = csv_value(&raw, want).map_err(|t| {
            format!(
                "field {name}: expected {t}, got {}",
                short(&format!("{raw:?}"))
            )
        })?;
        d.insert(name.clone(), v);
    }
    Ok(d)
}

/// Type a CSV value: as the schema says, or inferred.
fn csv_value(raw: &str, want: Option<FieldType>) -> Result<Bson, &'static str> {
    let int = || raw.parse::<i64>().ok().map(Bson::Int64);
    let num = || {
        int().or_else(|| {
            raw.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Bson::Double)
        })
    };
    let boolean = || match raw {
        "true" => Some(Bson::Boolean(true)),
        "false" => Some(Bson::Boolean(false)),
        _ => None,
    };
    if raw.is_empty() {
        return Ok(Bson::Null);
    }
    match want {
        Some(FieldType::String) => Ok(Bson::String(raw.to_string())),
        Some(FieldType::Number) => num().ok_or("number"),
        Some(FieldType::Integer) => int().ok_or("integer"),
        Some(FieldType::Boolean) => boolean().ok_or("boolean"),
        None => Ok(num()
            .or_else(boolean)
            .unwrap_or_else(|| Bson::String(raw.to_string()))),
    }
}

/// Split one complete CSV record into fields (RFC 4180: commas, quoted fields, `""` escapes).
fn parse_csv_record(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else if c == ',' {
            out.push(std::mem::take(&mut field));
            was_quoted = false;
        } else if c == '"' && field.is_empty() && !was_quoted {
            quoted = true;
            was_quoted = true;
        } else if was_quoted {
            return Err("text after a closing quote".into());
        } else {
            field.push(c);
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    out.push(field);
    Ok(out)
}

/// Write a batch's rows (moved into the command, not copied): how many were inserted and how
/// many updated.
async fn write_batch(
    datasets: &Datasets,
    ds: &Dataset,
    keyed: bool,
    rows: Vec<(u64, Document)>,
) -> jobmill::Result<(u64, u64)> {
    if rows.is_empty() {
        return Ok((0, 0));
    }
    let coll = datasets.rows_of(ds);
    let n = rows.len() as u64;
    if keyed {
        // Replacement upserts by _id, in order (a key repeated within the batch ends as its
        // last row). The replacement carries its _id, which every server keeps.
        let updates: Vec<Document> = rows
            .into_iter()
            .map(|(_, d)| {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                doc! { "q": { "_id": id }, "u": d, "upsert": true }
            })
            .collect();
        let reply = datasets
            .database()
            .run_command(doc! { "update": coll.name(), "updates": updates, "ordered": true })
            .await?;
        if let Ok(errs) = reply.get_array("writeErrors") {
            return Err(jobmill::Error::Corrupt(format!(
                "import write rejected: {errs:?}"
            )));
        }
        let upserted = reply.get_array("upserted").map(|a| a.len()).unwrap_or(0) as u64;
        Ok((upserted, n - upserted))
    } else {
        let docs: Vec<Document> = rows.into_iter().map(|(_, d)| d).collect();
        match coll.insert_many(docs).ordered(false).await {
            Ok(_) => {}
            // Rows already stored by an earlier attempt (or an earlier import of this file):
            // same id, same row. Anything else is a real failure.
            Err(e) => {
                let only_dups = match e.kind.as_ref() {
                    ErrorKind::InsertMany(im) => {
                        im.write_concern_error.is_none()
                            && im
                                .write_errors
                                .as_ref()
                                .is_some_and(|w| w.iter().all(|w| w.code == 11000))
                    }
                    _ => false,
                };
                if !only_dups {
                    return Err(e.into());
                }
            }
        }
        // Counted as inserted even when an earlier attempt wrote them: the count is "rows of
        // this file now in the dataset", which is what a resumed import must report.
        Ok((n, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_split_on_unquoted_newlines_across_feeds() {
        let mut r = Records::new(true, 0);
        let mut got = r.feed(b"a,b\n1,\"x\ny\"\n2,", false);
        got.extend(r.feed(b"z\r\n3,w", true));
        let texts: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8(r.bytes.clone()).unwrap())
            .collect();
        assert_eq!(texts, vec!["a,b", "1,\"x\ny\"", "2,z", "3,w"]);
        assert_eq!(got[1].end, 12);
    }

    #[test]
    fn csv_fields_and_values() {
        assert_eq!(
            parse_csv_record("a,\"b,c\",\"d\"\"e\",").unwrap(),
            vec!["a", "b,c", "d\"e", ""]
        );
        assert!(parse_csv_record("\"open").is_err());
        assert_eq!(csv_value("12", None), Ok(Bson::Int64(12)));
        assert_eq!(csv_value("1.5", None), Ok(Bson::Double(1.5)));
        assert_eq!(csv_value("true", None), Ok(Bson::Boolean(true)));
        assert_eq!(csv_value("", None), Ok(Bson::Null));
        assert_eq!(
            csv_value("12", Some(FieldType::String)),
            Ok(Bson::String("12".into()))
        );
        assert_eq!(csv_value("abc", Some(FieldType::Number)), Err("number"));
    }
}
