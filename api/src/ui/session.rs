//! Dashboard sign-in: signed session cookies, CSRF tokens, and the [`UiUser`] extractor.
//!
//! - **The key never reaches the browser.** `POST /ui/login` checks the key like a bearer
//!   token, then sets a cookie holding only the key's name (the tenant), its role, a key id (a
//!   fingerprint of the secret, so a rotated key ends its sessions), an expiry and a random
//!   nonce, signed with HMAC-SHA256 under `JOBMILL_UI_SESSION_SECRET`. Every request checks
//!   the signature and the expiry, and looks the key up again: a key removed from
//!   `JOBMILL_API_KEYS` or given another role takes effect at once, since the role used is
//!   the key's current one, never the cookie's.
//! - **CSRF.** The token is an HMAC of the session's nonce under the same secret: stateless,
//!   so every replica sharing the secret accepts it, and different for every session. Every
//!   state-changing request but sign-in must carry it (form field `csrf_token` or header
//!   `X-CSRF-Token`); [`check_csrf`] runs before anything else of the request.
//! - Cookie flags: `HttpOnly; SameSite=Strict; Path=/ui`, `Max-Age` = the session's TTL, and
//!   `Secure` per `JOBMILL_UI_SECURE_COOKIE`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::{constant_time_eq, Caller};
use crate::error::ApiError;
use crate::settings::{ApiKey, Role, SecureCookie, UiSettings};
use crate::AppState;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "jobmill_session";
/// Form field carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf_token";
/// Header carrying the CSRF token (scripts and `fetch`).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Signing keys and cookie policy of one API process.
#[derive(Clone)]
pub struct Sessions {
    key: Arc<Vec<u8>>,
    secure: SecureCookie,
    ttl: Duration,
}

/// What a session cookie carries (never the API key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Claims {
    /// Key name (the tenant).
    o: String,
    /// Role at sign-in (informational; the key's current role is what counts).
    r: String,
    /// Key id: the first 16 hex digits of SHA-256 of the key's secret.
    k: String,
    /// Expiry, ms since the epoch.
    e: i64,
    /// Random nonce; the CSRF token is derived from it.
    n: String,
}

/// A signed-in dashboard user.
#[derive(Debug, Clone)]
pub struct UiUser {
    /// As the JSON API sees the same key: every data function takes it.
    pub caller: Caller,
    /// This session's CSRF token.
    pub csrf: String,
}

impl UiUser {
    /// Whether the user may act on the fleet (pause, quiet, bulk actions).
    pub fn is_operator(&self) -> bool {
        self.caller.role == Role::Operator
    }

    /// Whether the user sees every tenant (operators and viewers).
    pub fn sees_fleet(&self) -> bool {
        self.caller.scope().is_none()
    }

    /// Whether the user may change anything at all (viewers may not, through the dashboard).
    pub fn may_act(&self) -> bool {
        self.caller.role != Role::Viewer
    }

    /// The role as shown.
    pub fn role_name(&self) -> &'static str {
        role_name(self.caller.role)
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Operator => "operator",
        Role::Viewer => "viewer",
        Role::Submitter => "submitter",
    }
}

/// The fingerprint of a key's secret kept in sessions.
fn key_id(key: &ApiKey) -> String {
    let d = Sha256::digest(key.secret.expose().as_bytes());
    hex::encode(&d[..8])
}

impl Sessions {
    /// From the settings; without a configured secret, a random one (sessions then end with the
    /// process and are not shared between replicas, which the log says).
    pub fn new(s: &UiSettings) -> Self {
        let key = match &s.session_secret {
            Some(k) => k.expose().as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "JOBMILL_UI_SESSION_SECRET is not set: dashboard sessions are signed with a random key of this process, so they end when it restarts and other replicas refuse them"
                );
                let mut k = vec![0u8; 32];
                rand::rng().fill_bytes(&mut k);
                k
            }
        };
        Sessions {
            key: Arc::new(key),
            secure: s.secure_cookie,
            ttl: s.session_ttl,
        }
    }

    fn mac(&self, domain: &str, msg: &[u8]) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(domain.as_bytes());
        m.update(b"\0");
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    }

    fn csrf_of(&self, nonce: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("csrf", nonce.as_bytes()))
    }

    /// The `Set-Cookie` value of a new session for `key`.
    pub fn issue(&self, key: &ApiKey, headers: &HeaderMap) -> HeaderValue {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let claims = Claims {
            o: key.name.clone(),
            r: role_name(key.role).to_string(),
            k: key_id(key),
            e: jobmill::job::now_ms() + self.ttl.as_millis() as i64,
            n: hex::encode(nonce),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let sig = URL_SAFE_NO_PAD.encode(self.mac("session", payload.as_bytes()));
        let value = format!(
            "{COOKIE_NAME}={payload}.{sig}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.ttl.as_secs(),
            self.secure_attr(headers)
        );
        HeaderValue::from_str(&value).expect("cookie is ASCII")
    }

    /// The `Set-Cookie` value that ends the session.
    pub fn clear(&self, headers: &HeaderMap) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
            self.secure_attr(headers)
        ))
        .expect("cookie is ASCII")
    }

    fn secure_attr(&self, headers: &HeaderMap) -> &'static str {
        let https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        match (self.secure, https) {
            (SecureCookie::Always, _) | (SecureCookie::Auto, true) => "; Secure",
            _ => "",
        }
    }

    /// The user of a request's session cookie, checked against the current keys.
    fn user(&self, headers: &HeaderMap, keys: &[ApiKey]) -> Option<UiUser> {
        let raw = cookie_value(headers)?;
        let (payload, sig) = raw.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        if !constant_time_eq(&self.mac("session", payload.as_bytes()), &sig) {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        if claims.e <= jobmill::job::now_ms() {
            return None;
        }
        let key = keys
            .iter()
            .find(|k| k.name == claims.o && key_id(k) == claims.k)?;
        Some(UiUser {
            caller: Caller {
                tenant: key.name.clone(),
                role: key.role,
            },
            csrf: self.csrf_of(&claims.n),
        })
    }
}

/// The session cookie's value, if the request has one.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == COOKIE_NAME)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// The key whose secret is `given`, compared in constant time against every key.
pub fn find_key<'a>(keys: &'a [ApiKey], given: &str) -> Option<&'a ApiKey> {
    let mut found = None;
    for key in keys {
        if constant_time_eq(key.secret.expose().as_bytes(), given.trim().as_bytes()) {
            found = Some(key);
        }
    }
    found
}

/// No valid session: pages redirect to the sign-in form; other requests get `401`.
#[derive(Debug)]
pub struct SignedOut;

impl axum::response::IntoResponse for SignedOut {
    fn into_response(self) -> axum::response::Response {
        (
            StatusCode::SEE_OTHER,
            [(axum::http::header::LOCATION, "/ui/login")],
        )
            .into_response()
    }
}

impl FromRequestParts<AppState> for UiUser {
    type Rejection = SignedOut;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, SignedOut> {
        state
            .sessions
            .user(&parts.headers, &state.keys)
            .ok_or(SignedOut)
    }
}

/// The session user of a request, if any (for handlers that answer signed-out requests
/// themselves).
pub fn user_of(state: &AppState, headers: &HeaderMap) -> Option<UiUser> {
    state.sessions.user(headers, &state.keys)
}

/// `403 csrf_failed` unless `given` (the form field or header) is this session's token. Runs
/// before the action: nothing changes on a refusal. Without a session no token is valid.
pub fn check_csrf(user: Option<&UiUser>, given: Option<&str>) -> Result<(), ApiError> {
    let ok = match (user, given) {
        (Some(u), Some(g)) => constant_time_eq(u.csrf.as_bytes(), g.trim().as_bytes()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "the form's CSRF token is missing or wrong; reload the page and try again",
        ))
    }
}

/// The CSRF token a request sent in its header.
pub fn header_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobmill::config::Secret;

    fn sessions() -> Sessions {
        Sessions::new(&UiSettings {
            secure_cookie: SecureCookie::Auto,
            session_secret: Some(Secret::new("s".repeat(32))),
            session_ttl: Duration::from_secs(3600),
        })
    }

    fn key(name: &str, secret: &str, role: Role) -> ApiKey {
        ApiKey {
            name: name.into(),
            secret: Secret::new(secret),
            role,
        }
    }

    fn as_request(set_cookie: &HeaderValue) -> HeaderMap {
        let v = set_cookie.to_str().unwrap();
        let pair = v.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(pair).unwrap());
        h
    }

    #[test]
    fn a_session_round_trips_without_the_key() {
        let s = sessions();
        let k = key("ops", "0123456789abcdef", Role::Operator);
        let c = s.issue(&k, &HeaderMap::new());
        let text = c.to_str().unwrap();
        assert!(!text.contains("0123456789abcdef"));
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(!text.contains("Secure"));
        let u = s.user(&as_request(&c), std::slice::from_ref(&k)).unwrap();
        assert_eq!(u.caller.tenant, "ops");
        assert!(check_csrf(Some(&u), Some(&u.csrf)).is_ok());
        assert!(check_csrf(Some(&u), Some("nope")).is_err());
        assert!(check_csrf(Some(&u), None).is_err());
        // The key's current role counts; a rotated secret ends the session.
        let demoted = key("ops", "0123456789abcdef", Role::Viewer);
        let u = s.user(&as_request(&c), &[demoted]).unwrap();
        assert_eq!(u.caller.role, Role::Viewer);
        let rotated = key("ops", "fedcba9876543210", Role::Operator);
        assert!(s.user(&as_request(&c), &[rotated]).is_none());
    }

    #[test]
    fn tampered_or_foreign_cookies_are_refused() {
        let s = sessions();
        let k = key("alice", "0123456789abcdef", Role::Submitter);
        let c = s.issue(&k, &HeaderMap::new());
        let h = as_request(&c);
        let raw = cookie_value(&h).unwrap();
        let (payload, sig) = raw.split_once('.').unwrap();
        let forged = Claims {
            o: "alice".into(),
            r: "operator".into(),
            k: key_id(&k),
            e: i64::MAX,
            n: "x".into(),
        };
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let mut bad = HeaderMap::new();
        bad.insert(
            COOKIE,
            HeaderValue::from_str(&format!("{COOKIE_NAME}={forged}.{sig}")).unwrap(),
        );
        assert!(s.user(&bad, std::slice::from_ref(&k)).is_none());
        let other = Sessions::new(&UiSettings {
            secure_cookie: SecureCookie::Auto,
            session_secret: Some(Secret::new("t".repeat(32))),
            session_ttl: Duration::from_secs(3600),
        });
        assert!(other.user(&h, std::slice::from_ref(&k)).is_none());
        assert!(!payload.is_empty());
    }

    #[test]
    fn secure_follows_the_setting() {
        let mut https = HeaderMap::new();
        https.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let k = key("ops", "0123456789abcdef", Role::Operator);
        let auto = sessions();
        assert!(auto
            .issue(&k, &https)
            .to_str()
            .unwrap()
            .contains("; Secure"));
        assert!(!auto
            .issue(&k, &HeaderMap::new())
            .to_str()
            .unwrap()
            .contains("Secure"));
        let never = Sessions {
            secure: SecureCookie::Never,
            ..sessions()
        };
        assert!(!never.issue(&k, &https).to_str().unwrap().contains("Secure"));
        let always = Sessions {
            secure: SecureCookie::Always,
            ..sessions()
        };
        assert!(always
            .issue(&k, &HeaderMap::new())
            .to_str()
            .unwrap()
            .contains("; Secure"));
    }
}
