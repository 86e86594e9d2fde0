//! `ApiError`, the one error type of the API: every failure becomes
//! `{"error": {"code", "message"}}` with a 4xx for the caller's mistakes and an opaque 5xx for
//! ours (logged once, here, with its cause).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human sentence.
    pub message: String,
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `unknown_kind`.
    pub code: String,
    /// What went wrong, for humans.
    pub message: String,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for a job that does not exist or is not the caller's.
    pub fn job_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such job")
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 503: a store is unreachable; the caller may retry.
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is unreachable right now; retry shortly"),
        )
    }

    /// 500 with an opaque body.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }
}

impl From<jobmill::Error> for ApiError {
    fn from(e: jobmill::Error) -> Self {
        use jobmill::Error as E;
        match e {
            E::InvalidJob { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            E::NotFound => ApiError::job_not_found(),
            E::Missing(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such {what}"),
            ),
            E::Refused { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            E::TooLarge(message) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            E::Conflict { state, action, .. } => ApiError::new(
                StatusCode::CONFLICT,
                if action == "retry" {
                    "not_retryable"
                } else {
                    "not_cancellable"
                },
                format!("the job is {state}; {action} is not possible"),
            ),
            E::Redis(err) => {
                tracing::warn!(error = %err, "redis error");
                ApiError::unavailable("the queue (Redis)")
            }
            E::Mongo(err) => {
                tracing::warn!(error = %err, "mongodb error");
                ApiError::unavailable("the job store (MongoDB)")
            }
            E::StoreUnavailable(err) => {
                tracing::warn!(error = %err, "mongodb error");
                ApiError::unavailable("the job store (MongoDB)")
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        res
    }
}
