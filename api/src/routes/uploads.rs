//! `/v1/uploads`: start an upload, send its parts (streamed, checksummed, idempotent), see what
//! arrived, and complete it into a `file_assembly` job.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use jobmill::{JobKind as _, NewJob};
use jobmill_data::files::{
    parse_content_md5, parse_sha256_hex, PartCheck, Upload, UploadState, MAX_FILENAME, MAX_PARTS,
};
use jobmill_data::kinds::{check_parts, FileAssembly};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{parse_job_id, Json};
use crate::routes::jobs::job_response;
use crate::view::JobView;
use crate::AppState;

/// Start an upload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"filename": "products.csv", "content_type": "text/csv"}))]
pub struct CreateUpload {
    /// Name of the file (1-255 characters, no control characters).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,255}$"
    )]
    pub filename: String,
    /// Total size in bytes, if known; the assembly checks it. At most 10000 parts of
    /// `part_size` (`JOBMILL_UPLOAD_PART_SIZE`).
    pub size: Option<u64>,
    /// Content type served with the file (1-200 printable ASCII characters).
    #[schema(min_length = 1, max_length = 200, pattern = r"^[\x20-\x7E]{1,200}$")]
    pub content_type: Option<String>,
    /// SHA-256 of the whole file (64 hex digits); the assembly checks it.
    #[schema(pattern = r"^[0-9A-Fa-f]{64}$")]
    pub sha256: Option<String>,
}

/// One part that arrived.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartView {
    /// Part number, from 0.
    pub n: i64,
    /// Bytes.
    pub size: i64,
    /// SHA-256 of the part.
    pub sha256: String,
}

/// An upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadView {
    /// Upload id (also the id of the assembled file).
    pub id: String,
    /// File name.
    pub filename: String,
    /// `open`, `completing` or `completed`.
    pub state: String,
    /// Every part but the last must have exactly this many bytes.
    pub part_size: i64,
    /// Declared size.
    pub size: Option<i64>,
    /// Declared SHA-256.
    pub sha256: Option<String>,
    /// Parts received so far, in order.
    pub parts: Vec<PartView>,
    /// Bytes received so far.
    pub bytes_received: i64,
    /// The `file_assembly` job, once completion was asked for.
    pub job_id: Option<String>,
}

fn view(up: &Upload, parts: &[jobmill_data::files::Part]) -> UploadView {
    UploadView {
        id: up.id.clone(),
        filename: up.filename.clone(),
        state: up.state.as_str().to_string(),
        part_size: up.part_size,
        size: up.size,
        sha256: up.sha256.clone(),
        parts: parts
            .iter()
            .map(|p| PartView {
                n: p.n,
                size: p.size,
                sha256: p.sha256.clone(),
            })
            .collect(),
        bytes_received: parts.iter().map(|p| p.size).sum(),
        job_id: up.job_id.clone(),
    }
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// Start an upload. Send its parts with `PUT /v1/uploads/{id}/parts/{n}`, each `part_size`
/// bytes but the last.
#[utoipa::path(post, path = "/v1/uploads", tag = "files", request_body = CreateUpload,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created", body = UploadView),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 408, description = "the body did not arrive within JOBMILL_HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 415, description = "the body is not sent as JSON", body = ErrorBody),
        (status = 422, description = "bad filename, size, content type or sha256", body = ErrorBody),
    ))]
pub async fn uploads_create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateUpload>,
) -> Result<Response, ApiError> {
    let part_size = state.data.settings().upload_part_size as i64;
    if body.filename.is_empty()
        || body.filename.chars().count() > MAX_FILENAME
        || body.filename.chars().any(char::is_control)
    {
        return Err(unprocessable(
            "invalid_filename",
            format!("filename must be 1-{MAX_FILENAME} characters without control characters"),
        ));
    }
    let max_size = part_size.saturating_mul(MAX_PARTS);
    if body.size.is_some_and(|s| s > max_size as u64) {
        return Err(unprocessable(
            "invalid_size",
            format!("size must be at most {max_size} bytes ({MAX_PARTS} parts of {part_size})"),
        ));
    }
    if let Some(ct) = &body.content_type {
        if ct.is_empty() || ct.len() > 200 || !ct.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            return Err(unprocessable(
                "invalid_content_type",
                "content_type must be 1-200 printable ASCII characters",
            ));
        }
    }
    let sha256 = match &body.sha256 {
        None => None,
        Some(s) => {
            // Exactly the 64 digits, as documented (the parser alone would forgive spaces).
            if s.trim() != s {
                return Err(unprocessable(
                    "invalid_sha256",
                    "a SHA-256 must be 64 hex digits",
                ));
            }
            parse_sha256_hex(s).map_err(|m| unprocessable("invalid_sha256", m))?;
            Some(s.trim().to_ascii_lowercase())
        }
    };
    let up = state
        .data
        .files()
        .create_upload(
            &caller.tenant,
            body.filename,
            body.size.map(|s| s as i64),
            body.content_type,
            sha256,
            part_size,
        )
        .await?;
    let mut res = (StatusCode::CREATED, axum::Json(view(&up, &[]))).into_response();
    if let Ok(v) = format!("/v1/uploads/{}", up.id).parse() {
        res.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(res)
}

async fn load(state: &AppState, caller: &Caller, raw_id: &str) -> Result<Upload, ApiError> {
    let id = parse_job_id(raw_id)
        .map_err(|_| ApiError::bad_request("invalid_id", "the upload id must be a UUID"))?;
    state
        .data
        .files()
        .upload(&id, caller.scope())
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such upload"))
}

/// Which parts arrived and how many bytes so far.
#[utoipa::path(get, path = "/v1/uploads/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "upload id")),
    responses(
        (status = 200, description = "the upload", body = UploadView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such upload for this key", body = ErrorBody),
    ))]
pub async fn uploads_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let up = load(&state, &caller, &id).await?;
    let parts = state.data.files().parts(&up.id).await?;
    Ok(axum::Json(view(&up, &parts)).into_response())
}

/// Send part `n` (from 0) as the raw body. Streamed to the store, never held whole. An optional
/// `Content-MD5` (base64) or `x-content-sha256` (hex) is checked before the part is kept.
/// Sending a part again replaces it; parts may arrive in any order.
#[utoipa::path(put, path = "/v1/uploads/{id}/parts/{n}", tag = "files", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "upload id"),
           ("n" = i64, Path, description = "part number from 0", minimum = 0, maximum = 9999),
           ("Content-MD5" = Option<String>, Header, nullable = false, description = "base64 MD5 of the part",
            pattern = r"^[A-Za-z0-9+/]{21}[AQgw]==$"),
           ("x-content-sha256" = Option<String>, Header, nullable = false, description = "hex SHA-256 of the part",
            pattern = r"^[0-9A-Fa-f]{64}$")),
    request_body(content = inline(crate::view::Binary), content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "stored", body = PartView),
        (status = 400, description = "bad id, part number or checksum header", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such upload for this key", body = ErrorBody),
        (status = 409, description = "the upload is already completed", body = ErrorBody),
        (status = 408, description = "the part did not arrive within JOBMILL_HTTP_BODY_TIMEOUT", body = ErrorBody),
        (status = 413, description = "the part is larger than part_size", body = ErrorBody),
        (status = 422, description = "the checksum does not match the bytes", body = ErrorBody),
    ))]
pub async fn uploads_part(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, n)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Digits only: `i64::from_str` would also take a sign, which the document does not allow.
    let n: i64 = Some(n.as_str())
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .filter(|n| (0..MAX_PARTS).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_part",
                format!("the part number must be from 0 to {}", MAX_PARTS - 1),
            )
        })?;
    let mut check = PartCheck::default();
    if let Some(v) = headers.get("content-md5") {
        let v = v.to_str().unwrap_or("");
        check.md5 =
            Some(parse_content_md5(v).map_err(|m| ApiError::bad_request("invalid_checksum", m))?);
    }
    if let Some(v) = headers.get("x-content-sha256") {
        let v = v.to_str().unwrap_or("");
        check.sha256 =
            Some(parse_sha256_hex(v).map_err(|m| ApiError::bad_request("invalid_checksum", m))?);
    }
    let up = load(&state, &caller, &id).await?;
    // A body cut off by JOBMILL_HTTP_BODY_TIMEOUT answers 408, not the store's generic
    // "unreadable body": the client was too slow, and may send the part again.
    let timed_out = std::sync::atomic::AtomicBool::new(false);
    let stream = body.into_data_stream().inspect_err(|e| {
        if crate::server::is_body_timeout(e) {
            timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let part = match state.data.files().put_part(&up, n, stream, check).await {
        Ok(part) => part,
        Err(_) if timed_out.load(std::sync::atomic::Ordering::Relaxed) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the part did not arrive in time (JOBMILL_HTTP_BODY_TIMEOUT); send it again",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(axum::Json(PartView {
        n: part.n,
        size: part.size,
        sha256: part.sha256,
    })
    .into_response())
}

/// Complete the upload: submits a `file_assembly` job (once; asking again answers the same
/// job). Its result is `{"file_id", "size", "sha256"}`.
#[utoipa::path(post, path = "/v1/uploads/{id}/complete", tag = "files", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "upload id")),
    responses(
        (status = 202, description = "the file_assembly job", body = JobView),
        (status = 200, description = "completion was asked before; the same job", body = JobView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such upload for this key", body = ErrorBody),
        (status = 422, description = "parts are missing or have the wrong size", body = ErrorBody),
    ))]
pub async fn uploads_complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let up = load(&state, &caller, &id).await?;
    if up.state == UploadState::Open {
        let parts = state.data.files().parts(&up.id).await?;
        check_parts(&parts, up.part_size, up.size)
            .map_err(|m| unprocessable("incomplete_upload", m))?;
    }
    // The idempotency key makes a repeated (or concurrent) completion answer the same job.
    let submitted = state
        .client
        .submit(
            &up.tenant,
            NewJob {
                kind: FileAssembly::NAME.into(),
                args: json!({ "upload_id": up.id }),
                idempotency_key: Some(format!("file_assembly:{}", up.id)),
                ..Default::default()
            },
        )
        .await?;
    state
        .data
        .files()
        .mark_completing(&up.id, &submitted.job.id)
        .await?;
    let status = if submitted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(job_response(status, &submitted.job))
}
