//! Extractors that answer bad input in the API's error shape instead of axum's plain-text
//! rejections: JSON bodies (malformed, wrong types, too large, wrong media type), query
//! strings, and job ids in paths.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            // curl -d sends application/x-www-form-urlencoded unless told otherwise; the body
            // must still be JSON, so accepting it only spares users a confusing 415.
            let jsonish = essence == "application/json"
                || essence.ends_with("+json")
                || essence == "application/x-www-form-urlencoded";
            if !jsonish {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as JSON with Content-Type: application/json",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than the limit (JOBMILL_MAX_BODY_BYTES)",
                )
            } else if crate::server::is_body_timeout(&e) {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                )
            } else {
                ApiError::bad_request("unreadable_body", "the request body could not be read")
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parse JSON, telling a syntax error (400) from a well-formed body of the wrong shape (422).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // JSON text is UTF-8 (RFC 8259 §8.1). Checked first: skipping a value with `IgnoredAny`
    // does not look inside strings, so bad bytes there would otherwise surface only in the
    // typed pass below, as a shape error.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ApiError::bad_request(
            "malformed_json",
            format!(
                "the body is not valid JSON: it is not UTF-8 (byte {})",
                e.valid_up_to()
            ),
        ));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // A syntax error the skipping pass let through (an invalid escape inside a string,
        // say) is still malformed JSON, not a body of the wrong shape.
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {inner}"),
            );
        }
        let msg = if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", msg)
    })
}

/// A query string.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded_from_str(q).map(Query)
    }
}

/// The `If-None-Match` header, if any (without cloning every header of the request).
pub struct IfNoneMatch(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IfNoneMatch(
            parts
                .headers
                .get(axum::http::header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ))
    }
}

fn serde_urlencoded_from_str<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    if q.is_empty() {
        // The common case (a plain poll); no URI to build.
        if let Ok(v) = serde_json::from_value::<T>(serde_json::json!({})) {
            return Ok(v);
        }
    }
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{q}")
            .parse()
            .map_err(|_| ApiError::bad_request("invalid_query", "the query string is malformed"))?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// A job id from the path, checked to be a UUID (anything else cannot name a job).
pub struct JobId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| {
                    ApiError::bad_request("invalid_id", "the job id is missing or malformed")
                })?;
        parse_job_id(&raw).map(JobId)
    }
}

/// Validate a job id (also used for cursors).
pub fn parse_job_id(raw: &str) -> Result<String, ApiError> {
    match uuid::Uuid::try_parse(raw) {
        Ok(u) => Ok(u.hyphenated().to_string()),
        Err(_) => Err(ApiError::bad_request(
            "invalid_id",
            format!(
                "'{}' is not a job id (a UUID like 0191b6a2-7c3e-7d4a-9f1e-2b3c4d5e6f70)",
                raw.chars().take(80).collect::<String>()
            ),
        )),
    }
}

/// The id of a webhook endpoint or delivery from the path (`we_...`, `dlv_...`): checked to be
/// short and plain before it reaches a query.
pub struct ResourceId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ResourceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request("invalid_id", "the id is missing or malformed");
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| bad())?;
        let ok = !raw.is_empty()
            && raw.len() <= 200
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(ResourceId(raw))
        } else {
            Err(bad())
        }
    }
}

/// Largest page of any listing.
pub const MAX_LIMIT: i64 = 500;
/// Default page of any listing.
pub const DEFAULT_LIMIT: i64 = 50;

/// Check a listing's `limit` and id `cursor` (the last id of the previous page).
pub fn page_params(
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<(i64, Option<String>), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be from 1 to {MAX_LIMIT}"),
        ));
    }
    let before = match cursor {
        None => None,
        Some(c) => Some(parse_job_id(c).map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor must be a next_cursor from an earlier page",
            )
        })?),
    };
    Ok((limit, before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Named {
        name: String,
    }

    #[test]
    fn non_utf8_and_bad_escapes_are_malformed_json() {
        for body in [
            &b"{\"name\": \"\xff\xfe\"}"[..],
            &b"{\"name\": \"\\ud800\"}"[..],
            &b"\xff"[..],
        ] {
            let e = parse_json::<Named>(body).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "malformed_json")
            );
        }
        let e = parse_json::<Named>(br#"{"name": 1}"#).unwrap_err();
        assert_eq!(e.code, "invalid_body");
        assert_eq!(parse_json::<Named>(br#"{"name": "a"}"#).unwrap().name, "a");
    }
}
