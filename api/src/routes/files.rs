//! `/v1/files`: list a tenant's files, download one (streamed, with `ETag` and single `Range`
//! requests; `HEAD` too), delete one.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use jobmill_data::files::{FileMeta, FileState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{page_params, parse_job_id, Query};
use crate::AppState;

/// A stored file.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileView {
    /// File id.
    pub id: String,
    /// Name.
    pub filename: String,
    /// Bytes.
    pub size: i64,
    /// SHA-256 (hex), also the download's `ETag`.
    pub sha256: Option<String>,
    /// Content type.
    pub content_type: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

impl From<&FileMeta> for FileView {
    fn from(f: &FileMeta) -> Self {
        FileView {
            id: f.id.clone(),
            filename: f.filename.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            content_type: f.content_type.clone(),
            created_ms: f.created_ms,
        }
    }
}

/// A page of files.
#[derive(Debug, Serialize, ToSchema)]
pub struct FilePage {
    /// Newest first.
    pub files: Vec<FileView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FileListParams {
    /// Page size, 1-500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List files, newest first.
#[utoipa::path(get, path = "/v1/files", tag = "files", security(("bearer" = [])), params(FileListParams),
    responses(
        (status = 200, description = "a page of files", body = FilePage),
        (status = 400, description = "bad limit or cursor", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
    ))]
pub async fn files_index(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<FileListParams>,
) -> Result<Response, ApiError> {
    let (limit, before) = page_params(p.limit, p.cursor.as_deref())?;
    let files = state
        .data
        .files()
        .list_files(caller.scope(), before.as_deref(), limit)
        .await?;
    let next_cursor = (files.len() as i64 == limit)
        .then(|| files.last().map(|f| f.id.clone()))
        .flatten();
    Ok(axum::Json(FilePage {
        files: files.iter().map(FileView::from).collect(),
        next_cursor,
    })
    .into_response())
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file")
}

async fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<FileMeta, ApiError> {
    let id = parse_job_id(raw)
        .map_err(|_| ApiError::bad_request("invalid_id", "the file id must be a UUID"))?;
    match state.data.files().file(&id, caller.scope()).await? {
        Some(f) if f.state == FileState::Complete => Ok(f),
        _ => Err(not_found()),
    }
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// The whole file (no header, or one we do not serve partially, like several ranges).
    All,
    /// Bytes `[start, end)`.
    Part(u64, u64),
    /// Nothing of the file can be served (416).
    Unsatisfiable,
}

/// Parse a single `bytes=` range against a file of `size` bytes (RFC 9110 §14.1.2). Anything
/// we do not understand is ignored, which the RFC allows: the answer is then the whole file.
fn parse_range(h: &str, size: u64) -> Wanted {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last b bytes.
        return match b.parse::<u64>() {
            Ok(0) => Wanted::Unsatisfiable,
            Ok(n) if size == 0 => {
                let _ = n;
                Wanted::Unsatisfiable
            }
            Ok(n) => Wanted::Part(size.saturating_sub(n), size),
            Err(_) => Wanted::All,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return Wanted::All;
    };
    let end = if b.is_empty() {
        size
    } else {
        match b.parse::<u64>() {
            Ok(last) if last >= start => (last + 1).min(size),
            _ => return Wanted::All,
        }
    };
    if start >= size {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part(start, end)
}

/// Download a file. `ETag` is its SHA-256; `Range: bytes=a-b` answers `206`; `HEAD` answers
/// the headers only.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "file id"),
           ("Range" = Option<String>, Header, description = "bytes=start-end (one range)")),
    responses(
        (status = 200, description = "the whole file", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range"),
        (status = 304, description = "If-None-Match matched the ETag"),
        (status = 404, description = "no such file for this key", body = ErrorBody),
        (status = 416, description = "the range starts past the end"),
    ))]
pub async fn files_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let f = load(&state, &caller, &id).await?;
    let size = f.size.max(0) as u64;
    let tag = format!("\"{}\"", f.sha256.clone().unwrap_or_default());
    let mut h = HeaderMap::new();
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(ETAG, v);
    }
    let ct = f
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(CONTENT_TYPE, ct);
    if headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    let wanted = match headers.get(RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) => parse_range(r, size),
        None => Wanted::All,
    };
    let (status, start, end) = match wanted {
        Wanted::All => (StatusCode::OK, 0, size),
        Wanted::Part(s, e) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{}/{size}", e - 1)) {
                h.insert(CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, s, e)
        }
        Wanted::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(CONTENT_RANGE, v);
            }
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, h).into_response());
        }
    };
    h.insert(CONTENT_LENGTH, HeaderValue::from(end - start));
    if method == Method::HEAD {
        return Ok((status, h).into_response());
    }
    let stream = state
        .data
        .files()
        .read_range(&f, start, end)
        .map_err(|e| std::io::Error::other(e.to_string()));
    Ok((status, h, Body::from_stream(stream)).into_response())
}

/// Delete a file and its chunks.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "file id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such file for this key", body = ErrorBody),
    ))]
pub async fn files_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let f = load(&state, &caller, &id).await?;
    if !state
        .data
        .files()
        .delete_file(&f.id, caller.write_scope())
        .await?
    {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Wanted::Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Wanted::Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Wanted::Part(90, 100));
        assert_eq!(parse_range("bytes=-1000", 100), Wanted::Part(0, 100));
        assert_eq!(parse_range("bytes=50-1000", 100), Wanted::Part(50, 100));
        assert_eq!(parse_range("bytes=100-", 100), Wanted::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Wanted::All);
        assert_eq!(parse_range("items=0-1", 100), Wanted::All);
        assert_eq!(parse_range("bytes=9-1", 100), Wanted::All);
    }
}
