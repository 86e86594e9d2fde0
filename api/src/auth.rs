//! Bearer API keys. A key's name is the tenant that owns the jobs it submits; `submitter` keys
//! see only their own jobs, `operator` keys see all.

use crate::settings::Role;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

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

impl Caller {
    /// The tenant filter for reads and writes: `None` lets operators reach every job.
    pub fn scope(&self) -> Option<&str> {
        match self.role {
            Role::Operator => None,
            Role::Submitter => Some(&self.tenant),
        }
    }
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
        Ok(Caller {
            tenant: key.name.clone(),
            role: key.role,
        })
    }
}

/// The token of a `Bearer` credential. The scheme is case-insensitive (RFC 9110 §11.1), so
/// `bearer` and `BEARER` work too.
fn bearer_token(h: &str) -> Option<&str> {
    let (scheme, token) = h.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, constant_time_eq};

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
}
