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
use crate::range::{parse_range, Wanted};
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
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FileListParams {
    /// Page size, 1-500 (default 50).
    #[param(nullable = false, minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>, nullable = false)]
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
    let (files, next_cursor) = list_page(&state, &caller, p).await?;
    Ok(axum::Json(FilePage {
        files: files.iter().map(FileView::from).collect(),
        next_cursor,
    })
    .into_response())
}

/// A page of the files the caller may see, and the next cursor (the JSON listing and the
/// dashboard's).
pub(crate) async fn list_page(
    state: &AppState,
    caller: &Caller,
    p: FileListParams,
) -> Result<(Vec<FileMeta>, Option<String>), ApiError> {
    let (limit, before) = page_params(p.limit, p.cursor.as_deref())?;
    let files = state
        .data
        .files()
        .list_files(caller.scope(), before.as_deref(), limit)
        .await?;
    let next_cursor = (files.len() as i64 == limit)
        .then(|| files.last().map(|f| f.id.clone()))
        .flatten();
    Ok((files, next_cursor))
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

/// Download a file. `ETag` is its SHA-256; `Range: bytes=a-b` answers `206`; `HEAD` answers
/// the headers only.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "file id (its upload's id)"),
           ("Range" = Option<String>, Header, nullable = false, description = "bytes=start-end (one range; anything else answers the whole file)"),
           ("If-None-Match" = Option<String>, Header, nullable = false, description = "the ETag of an earlier answer")),
    responses(
        (status = 200, description = "the whole file, with the content type it was uploaded with (application/octet-stream if none)",
            content_type = "*/*", body = inline(crate::view::Binary)),
        (status = 206, description = "the requested range", content_type = "*/*", body = inline(crate::view::Binary)),
        (status = 304, description = "If-None-Match matched the ETag"),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
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
    // `end` is exclusive here; parse_range guarantees start <= last < size.
    let (status, start, end) = match wanted {
        Wanted::All => (StatusCode::OK, 0, size),
        Wanted::Satisfiable { start, end: last } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{last}/{size}")) {
                h.insert(CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, last + 1)
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

/// The headers of a download (`Content-Length`, `ETag`, `Content-Range`), without the bytes.
#[utoipa::path(head, path = "/v1/files/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "file id (its upload's id)"),
           ("Range" = Option<String>, Header, nullable = false, description = "bytes=start-end (one range; anything else answers the whole file)"),
           ("If-None-Match" = Option<String>, Header, nullable = false, description = "the ETag of an earlier answer")),
    responses(
        (status = 200, description = "the whole file's headers"),
        (status = 206, description = "the requested range's headers"),
        (status = 304, description = "If-None-Match matched the ETag"),
        (status = 400, description = "bad id"),
        (status = 401, description = "missing or unknown API key"),
        (status = 404, description = "no such file for this key"),
        (status = 416, description = "the range starts past the end"),
    ))]
pub async fn files_head(
    state: State<AppState>,
    caller: Caller,
    id: Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    files_show(state, caller, id, Method::HEAD, headers).await
}

/// Delete a file and its chunks.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "file id (its upload's id)")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
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
