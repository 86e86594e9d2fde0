//! Bearer API keys and roles. A key's name is the tenant that owns the jobs it submits.
//! - `submitter` keys see and act on their own jobs only, and get `403 forbidden` from every
//!   operator endpoint (except the event stream of their own jobs).
//! - `viewer` keys read everything an operator may, and change nothing but their own webhook
//!   endpoints and signing secret: any other non-GET request is refused right here, before a
//!   handler runs, so no handler can forget the rule.
//! - `operator` keys read and act on everything.

use crate::settings::Role;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};

use crate::error::ApiError;
use crate::AppState;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant name (the key's name).
    pub tenant: String,
    /// Permissions.
    pub role: Role,
}

/// The paths a viewer may change: its own webhook endpoints and signing secret (every
/// handler under it is scoped to the caller's tenant through [`Caller::write_scope`]).
const VIEWER_WRITABLE: &str = "/v1/webhooks";

impl Caller {
    /// The tenant filter for reads: `None` lets operators and viewers see every job.
    pub fn scope(&self) -> Option<&str> {
        match self.role {
            Role::Operator | Role::Viewer => None,
            Role::Submitter => Some(&self.tenant),
        }
    }

    /// The tenant filter for changes: only operators reach other tenants' records.
    pub fn write_scope(&self) -> Option<&str> {
        match self.role {
            Role::Operator => None,
            Role::Viewer | Role::Submitter => Some(&self.tenant),
        }
    }

    /// Operator reads (workers, queues, audit, metrics): viewers and operators.
    pub fn require_viewer(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Viewer | Role::Operator => Ok(()),
            Role::Submitter => Err(forbidden("this endpoint needs a viewer or operator key")),
        }
    }

    /// Changes to tenant-owned records (schedules): operators and submitters. Viewers are
    /// refused before any JSON handler runs; functions the dashboard shares with those
    /// handlers check again, since its forms do not pass through that extractor.
    pub fn require_writer(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Operator | Role::Submitter => Ok(()),
            Role::Viewer => Err(forbidden("a viewer key may only read")),
        }
    }

    /// Operator actions (pause, quiet, stop, bulk actions): operators only.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Operator => Ok(()),
            Role::Viewer | Role::Submitter => Err(forbidden("this action needs an operator key")),
        }
    }
}

/// `403 forbidden`.
pub fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Whether a viewer may send `method` to `path`.
fn viewer_may(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || path == VIEWER_WRITABLE
        || path.starts_with(&format!("{VIEWER_WRITABLE}/"))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("send an API key as Authorization: Bearer <key>")
        })?;
        let token = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be 'Bearer <key>'")
        })?;
        // Compare against every key in constant time, so timing does not reveal a prefix.
        let mut found = None;
        for key in state.keys.iter() {
            if constant_time_eq(key.secret.expose().as_bytes(), token.as_bytes()) {
                found = Some(key);
            }
        }
        let key = found.ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
        if key.role == Role::Viewer && !viewer_may(&parts.method, parts.uri.path()) {
            return Err(forbidden(
                "a viewer key may only read, and change its own webhook endpoints and signing secret",
            ));
        }
        Ok(Caller {
            tenant: key.name.clone(),
            role: key.role,
        })
    }
}

/// The token of a `Bearer` credential. The scheme is case-insensitive (RFC 9110 §11.1), so
/// `bearer` and `BEARER` work too.
pub fn bearer_token(h: &str) -> Option<&str> {
    let (scheme, token) = h.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `token` is `secret`, in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive() {
        for h in ["Bearer k1", "bearer k1", "BEARER k1", "bEaReR   k1 "] {
            assert_eq!(bearer_token(h), Some("k1"), "{h}");
        }
        for h in ["Basic k1", "Bearer", "Bearer ", "Bearerk1", "Token k1"] {
            assert_eq!(bearer_token(h), None, "{h}");
        }
    }

    #[test]
    fn compares_whole_secrets() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn viewers_read_and_touch_only_their_webhooks() {
        assert!(viewer_may(&Method::GET, "/v1/jobs"));
        assert!(viewer_may(&Method::POST, "/v1/webhooks"));
        assert!(viewer_may(&Method::POST, "/v1/webhooks/secret/rotate"));
        assert!(viewer_may(&Method::DELETE, "/v1/webhooks/abc"));
        assert!(!viewer_may(&Method::POST, "/v1/jobs"));
        assert!(!viewer_may(&Method::POST, "/v1/queues/q/pause"));
        assert!(!viewer_may(&Method::DELETE, "/v1/files/x"));
        assert!(!viewer_may(&Method::POST, "/v1/webhooksx"));
    }
}
