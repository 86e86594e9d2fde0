//! The web dashboard, served by the API process under `/ui/`.
//!
//! Server-rendered HTML ([askama] templates under `api/templates/`, compiled into the binary)
//! with a small script of our own (`api/assets/ui.js`) that makes pages live over
//! `EventSource`; CSS, script and icon are embedded too ([`assets`]), so `cargo build` alone
//! builds it and it needs no network. Pages read through the same functions as the JSON
//! routes (`routes::*`: `list_page`, `load`, `set_paused`, `set_limits`, `remove_limits`,
//! `command`, `bulk_action`, `kind_list`, `schedules::{list, show, set_paused, trigger,
//! detach}`, the ops views), with a [`Caller`](crate::auth::Caller) made from the session,
//! so the tenant and role rules are the API's own.
//!
//! - [`session`]: sign-in, signed session cookies, CSRF tokens.
//! - [`pages`]: the `GET` pages.
//! - [`forms`]: the `POST` actions (every one checks the CSRF token first).
//! - [`chart`]: the SVG charts of the per-minute history.
//! - [`schema_form`]: a form generated from a kind's JSON Schema, and its answer back to args.
//! - [`assets`]: embedded CSS, script and icon.
//!
//! Left out of `/openapi.json` on purpose: these routes answer HTML for browsers, not the
//! JSON API, so the schema fuzzer (`scripts/fuzz.sh`) never sees them; `tests/ui.rs` and the
//! browser tests in `tests/ui/` cover them.
//!
//! Every page carries a strict Content-Security-Policy (scripts, styles and connections from
//! this origin only; no inline script or style), `X-Frame-Options: DENY` and `no-store`.

pub mod assets;
pub mod chart;
pub mod forms;
pub mod pages;
pub mod schema_form;
pub mod session;

use askama::Template;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};

use crate::error::ApiError;
use crate::AppState;
use session::UiUser;

/// The Content-Security-Policy of every dashboard answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(forms::login_form).post(forms::login))
        .route("/ui/logout", post(forms::logout))
        .route("/ui/queues", get(pages::queues))
        .route("/ui/queues/{name}", get(pages::queue))
        .route("/ui/queues/{name}/pause", post(forms::pause))
        .route("/ui/queues/{name}/resume", post(forms::resume))
        .route("/ui/queues/{name}/limits", post(forms::limits_set))
        .route(
            "/ui/queues/{name}/limits/delete",
            post(forms::limits_delete),
        )
        .route("/ui/schedules", get(pages::schedules))
        .route("/ui/schedules/{name}", get(pages::schedule))
        .route("/ui/schedules/{name}/pause", post(forms::schedule_pause))
        .route("/ui/schedules/{name}/resume", post(forms::schedule_resume))
        .route(
            "/ui/schedules/{name}/trigger",
            post(forms::schedule_trigger),
        )
        .route("/ui/schedules/{name}/detach", post(forms::schedule_detach))
        .route("/ui/workers", get(pages::workers))
        .route("/ui/workers/{id}/quiet", post(forms::quiet))
        .route("/ui/workers/{id}/stop", post(forms::stop))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/actions/{verb}", post(forms::bulk))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/cancel", post(forms::cancel))
        .route("/ui/jobs/{id}/retry", post(forms::retry))
        .route("/ui/jobs/{id}/events", get(pages::job_events))
        .route("/ui/events", get(pages::fleet_events))
        .route("/ui/kinds", get(pages::kinds))
        .route("/ui/kinds/{name}", post(forms::enqueue))
        .route("/ui/webhooks", get(pages::webhooks))
        .route("/ui/webhooks/{id}/enable", post(forms::webhook_enable))
        .route("/ui/webhooks/{id}/disable", post(forms::webhook_disable))
        .route("/ui/deliveries/{id}/replay", post(forms::replay))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/files", get(pages::files))
        .route("/ui/assets/{file}", get(assets::serve))
        .layer(axum::middleware::from_fn(html_errors))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Security headers on every dashboard answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// A browser gets an error as an HTML page (with the same status and code); a script or
/// `curl` that does not ask for HTML keeps the API's JSON error.
async fn html_errors(req: Request, next: Next) -> Response {
    let wants_html = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let res = next.run(req).await;
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !wants_html || !is_json || res.status().is_success() {
        return res;
    }
    let status = res.status();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let code = v["error"]["code"].as_str().unwrap_or("error").to_string();
    let message = v["error"]["message"].as_str().unwrap_or("").to_string();
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        code,
        message,
    };
    let mut out = render(&page).into_response();
    *out.status_mut() = status;
    // The cause of a 5xx rides in the extensions to the middleware that logs it.
    *out.extensions_mut() = parts.extensions;
    for (k, v) in parts.headers.iter() {
        if k != CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

/// An error shown as a page.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: &'static str,
    code: String,
    message: String,
}

/// Render a template to an HTML answer; a template that fails to render is an internal error.
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(s) => Html(s).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard template failed to render");
            let mut r = Response::new(Body::from("internal error; it has been logged"));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

/// What every page's frame shows: title, navigation, who is signed in, the CSRF token.
pub struct Chrome {
    /// Page title.
    pub title: String,
    /// Active navigation entry.
    pub nav: &'static str,
    /// The key's name.
    pub owner: String,
    /// `operator`, `viewer` or `submitter`.
    pub role: &'static str,
    /// This session's CSRF token (for every form).
    pub csrf: String,
    /// Operators and viewers: fleet pages in the navigation.
    pub fleet: bool,
    /// Operators: fleet actions (pause, quiet, bulk).
    pub operator: bool,
    /// Operators and submitters: job actions (a viewer changes nothing here).
    pub may_act: bool,
}

impl Chrome {
    /// The frame of a page for `user`.
    pub fn new(user: &UiUser, title: impl Into<String>, nav: &'static str) -> Self {
        Chrome {
            title: title.into(),
            nav,
            owner: user.caller.tenant.clone(),
            role: user.role_name(),
            csrf: user.csrf.clone(),
            fleet: user.sees_fleet(),
            operator: user.is_operator(),
            may_act: user.may_act(),
        }
    }
}

/// A time shown both relative ("3 min ago") and absolute (UTC); the script keeps the
/// relative part fresh.
#[derive(Debug, Clone, Default)]
pub struct When {
    /// RFC 3339, for the `datetime` attribute.
    pub iso: String,
    /// `2026-12-01 21:09:02 UTC`.
    pub abs: String,
    /// `3 min ago`, `in 5 s`.
    pub rel: String,
}

impl When {
    /// From ms since the epoch.
    pub fn ms(ms: i64) -> Self {
        Self::at(DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default())
    }

    /// From an RFC 3339 string (as job views carry them).
    pub fn rfc3339(s: &str) -> Self {
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self::at(t.with_timezone(&Utc)))
            .unwrap_or_default()
    }

    /// From a time.
    pub fn at(t: DateTime<Utc>) -> Self {
        When {
            iso: t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            abs: t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            rel: relative(Utc::now().signed_duration_since(t).num_milliseconds()),
        }
    }
}

/// `ago_ms` as words: "just now", "12 s ago", "3 min ago", "in 2 h".
pub fn relative(ago_ms: i64) -> String {
    let (future, ms) = if ago_ms < 0 {
        (true, -ago_ms)
    } else {
        (false, ago_ms)
    };
    let s = ms / 1000;
    let text = match s {
        0..=1 => return "just now".to_string(),
        2..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A byte count as `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Pretty JSON for display (escaped by the template like any other text).
pub fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Redirect after a successful form post (303: the browser follows with a GET).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Percent-encode a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A refused request, as the JSON API words it.
pub type UiResult = Result<Response, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(500), "just now");
        assert_eq!(relative(12_000), "12 s ago");
        assert_eq!(relative(180_000), "3 min ago");
        assert_eq!(relative(-7_200_000), "in 2 h");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(enc("a b/c:d"), "a%20b%2Fc%3Ad");
    }
}
