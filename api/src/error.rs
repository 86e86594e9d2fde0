//! `ApiError`, the one error type of the API: every failure becomes
//! `{"error": {"code", "message"}}` with a 4xx for the caller's mistakes and an opaque 5xx for
//! ours. Conversions never log: an internal error travels to the response in an extension and
//! [`log_internal_errors`] logs it once, with its cause chain, as axum's error-handling example
//! does.

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
    /// Per-field problems (`invalid_args`: JSON Pointer into `args` and the reason).
    pub details: Vec<jobmill::error::ArgProblem>,
    /// The job a refusal is about (`idempotency_key_reused`: the job that owns the key).
    pub job_id: Option<String>,
    /// The cause of an internal or store error, logged once by the middleware.
    pub cause: Option<String>,
}

/// The cause of a 5xx, carried from the handler to [`log_internal_errors`].
#[derive(Debug, Clone)]
pub struct Cause(pub String);

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
    /// For `invalid_args`: each problem, with `path` a JSON Pointer into `args`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ArgProblemView>,
    /// For `idempotency_key_reused`: the job that already owns the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// One problem with a submission's args.
#[derive(Serialize, ToSchema)]
pub struct ArgProblemView {
    /// JSON Pointer into `args` (`""` for args as a whole).
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            job_id: None,
            cause: None,
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
            E::IdempotencyKeyReused { job_id } => ApiError {
                job_id: Some(job_id.clone()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    format!(
                        "this idempotency key was already used by job {job_id} with a different request; use a new key for a new request"
                    ),
                )
            },
            E::InvalidArgs { message, details } => ApiError {
                details,
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_args", message)
            },
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
            E::Redis(err) => ApiError {
                cause: Some(format!("redis: {err}")),
                ..ApiError::unavailable("the queue (Redis)")
            },
            E::Mongo(err) => ApiError {
                cause: Some(format!("mongodb: {err}")),
                ..ApiError::unavailable("the job store (MongoDB)")
            },
            E::StoreUnavailable(err) => ApiError {
                cause: Some(format!("mongodb: {err}")),
                ..ApiError::unavailable("the job store (MongoDB)")
            },
            other => ApiError {
                cause: Some(cause_chain(&other)),
                ..ApiError::internal()
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self
                    .details
                    .into_iter()
                    .map(|d| ArgProblemView {
                        path: d.path,
                        reason: d.reason,
                    })
                    .collect(),
                job_id: self.job_id,
            },
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(cause) = self.cause {
            res.extensions_mut().insert(Cause(cause));
        }
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

/// An error and every `source` under it, as one line.
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        s.push_str(": ");
        s.push_str(&c.to_string());
        next = c.source();
    }
    s
}

/// Middleware: log each failure of ours once, with its cause. Store outages (503) are warnings
/// (the caller retries, nothing was accepted); anything else of ours is an error. Client
/// mistakes (4xx) are not logged here.
pub async fn log_internal_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    if let Some(Cause(cause)) = res.extensions().get::<Cause>() {
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%method, %path, cause = %cause, "store unavailable");
        } else {
            tracing::error!(%method, %path, cause = %cause, "internal error");
        }
    }
    res
}
