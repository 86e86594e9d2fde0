//! The dashboard's `POST` actions. Every one but sign-in goes through [`Posted`], which checks
//! the CSRF token before anything else (`403 csrf_failed`, nothing changes), then needs a
//! session; viewers are refused every action here, and the action itself runs through the
//! same function as its JSON route, with the same role and tenant checks.

use askama::Template;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use jobmill::limits::{LimitsSpec, RateSpec};
use jobmill_ops::bulk::BulkVerb;
use jobmill_ops::workers::Command;
use serde::Deserialize;

use super::schema_form;
use super::session::{self, UiUser};
use super::{enc, render, see_other, Chrome, UiResult};
use crate::auth::forbidden;
use crate::error::ApiError;
use crate::extract::Query;
use crate::extract::{JobId, ResourceId};
use crate::routes::actions::{bulk_action, Bulk, BulkRequest};
use crate::routes::schedules::TenantQuery;
use crate::settings::Role;
use crate::AppState;

/// A checked form post: the CSRF token matched this session's.
pub struct Posted {
    /// Who posted.
    pub user: UiUser,
    /// The form's fields, in order.
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of a field, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// Refuse viewers: the dashboard lets them change nothing.
    pub fn actor(&self) -> Result<(), ApiError> {
        match self.user.caller.role {
            Role::Viewer => Err(forbidden("a viewer key may only read")),
            Role::Operator | Role::Submitter => Ok(()),
        }
    }

    /// Where to go afterwards: the form's `back` field if it is a dashboard path, else
    /// `fallback`.
    pub fn back_or(&self, fallback: &str) -> String {
        self.get("back")
            .filter(|b| b.starts_with("/ui/") && !b.starts_with("//") && !b.contains('\\'))
            .unwrap_or_else(|| fallback.to_string())
    }
}

impl FromRequest<AppState> for Posted {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let user = session::user_of(state, req.headers());
        let header_token = session::header_token(req.headers());
        let is_form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let fields: Vec<(String, String)> = if is_form {
            Form::<Vec<(String, String)>>::from_request(req, state)
                .await
                .map(|Form(f)| f)
                .map_err(|e| ApiError::bad_request("invalid_form", e.body_text()))?
        } else {
            Vec::new()
        };
        let token = fields
            .iter()
            .find(|(n, _)| n == session::CSRF_FIELD)
            .map(|(_, v)| v.clone())
            .or(header_token);
        session::check_csrf(user.as_ref(), token.as_deref())?;
        let user = user.ok_or_else(|| ApiError::unauthorized("sign in at /ui/login"))?;
        Ok(Posted { user, fields })
    }
}

// ---------------------------------------------------------------- sign-in

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

/// `GET /ui/login`.
pub async fn login_form() -> Response {
    render(&LoginPage { error: None })
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct LoginForm {
    /// An API key.
    #[serde(default)]
    key: String,
}

/// `POST /ui/login`: check the key, set the session cookie (never the key itself).
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let key = form.map(|Form(f)| f.key).unwrap_or_default();
    match session::find_key(&state.keys, &key) {
        Some(k) => {
            let mut res = see_other("/ui/");
            res.headers_mut()
                .insert(SET_COOKIE, state.sessions.issue(k, &headers));
            res
        }
        None => {
            let mut res = render(&LoginPage {
                error: Some("That key is not one of this deployment's API keys.".into()),
            });
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            res
        }
    }
}

/// `POST /ui/logout`: clear the session cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap, _p: Posted) -> Response {
    let mut res = see_other("/ui/login");
    res.headers_mut()
        .insert(SET_COOKIE, state.sessions.clear(&headers));
    res
}

// ---------------------------------------------------------------- queues and workers

/// `POST /ui/queues/{name}/pause`.
pub async fn pause(State(state): State<AppState>, Path(name): Path<String>, p: Posted) -> UiResult {
    p.actor()?;
    crate::routes::queues::set_paused(&state, &p.user.caller, &name, true).await?;
    Ok(see_other(&p.back_or("/ui/queues")))
}

/// `POST /ui/queues/{name}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> UiResult {
    p.actor()?;
    crate::routes::queues::set_paused(&state, &p.user.caller, &name, false).await?;
    Ok(see_other(&p.back_or("/ui/queues")))
}

/// `POST /ui/workers/{id}/quiet`.
pub async fn quiet(State(state): State<AppState>, Path(id): Path<String>, p: Posted) -> UiResult {
    p.actor()?;
    crate::routes::workers::command(&state, &p.user.caller, &id, Command::Quiet).await?;
    Ok(see_other("/ui/workers"))
}

/// `POST /ui/workers/{id}/stop`.
pub async fn stop(State(state): State<AppState>, Path(id): Path<String>, p: Posted) -> UiResult {
    p.actor()?;
    crate::routes::workers::command(&state, &p.user.caller, &id, Command::Stop).await?;
    Ok(see_other("/ui/workers"))
}

/// `POST /ui/queues/{name}/limits`: set the queue's limits from the form, replacing any
/// (operators; the JSON `PUT`'s function, so the same checks and audit).
pub async fn limits_set(
    State(state): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> UiResult {
    p.actor()?;
    let spec = limits_from_form(&p)?;
    crate::routes::queues::set_limits(&state, &p.user.caller, &name, &spec).await?;
    Ok(see_other(&format!("/ui/queues/{}", enc(&name))))
}

/// `POST /ui/queues/{name}/limits/delete`: remove every limit (the JSON `DELETE`'s function).
pub async fn limits_delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> UiResult {
    p.actor()?;
    crate::routes::queues::remove_limits(&state, &p.user.caller, &name).await?;
    Ok(see_other(&format!("/ui/queues/{}", enc(&name))))
}

fn invalid_limits(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_limits", m)
}

/// The form's fields as the JSON body would give them. Empty fields are absent; the ranges
/// and the "at least one" rule are [`LimitsSpec::check`]'s, run by `set_limits`.
fn limits_from_form(p: &Posted) -> Result<LimitsSpec, ApiError> {
    let whole = |field: &str| -> Result<Option<u32>, ApiError> {
        p.get(field)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| invalid_limits(format!("{field} must be a whole number, like 10")))
            })
            .transpose()
    };
    let rate = |field: &str| -> Result<Option<RateSpec>, ApiError> {
        let max = whole(&format!("{field}_max"))?;
        match (max, p.get(&format!("{field}_per"))) {
            (None, None) => Ok(None),
            (Some(max), Some(per)) => Ok(Some(RateSpec { max, per })),
            _ => Err(invalid_limits(format!(
                "{field} needs both a number of starts and a window, like 10 per 1s"
            ))),
        }
    };
    Ok(LimitsSpec {
        concurrency: whole("concurrency")?,
        rate: rate("rate")?,
        key_concurrency: whole("key_concurrency")?,
        key_rate: rate("key_rate")?,
    })
}

// ---------------------------------------------------------------- schedules

/// A schedule's page, named as its forms name it (by tenant and name).
fn schedule_page(name: &str, q: &TenantQuery) -> String {
    let mut to = format!("/ui/schedules/{}", enc(name));
    if let Some(t) = &q.tenant {
        to.push_str(&format!("?tenant={}", enc(t)));
    }
    to
}

/// `POST /ui/schedules/{name}/pause` (`?tenant=`): the JSON route's function, so the same
/// tenant rule (another tenant's is `404` to a submitter) and role rule.
pub async fn schedule_pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
    p: Posted,
) -> UiResult {
    p.actor()?;
    crate::routes::schedules::set_paused(&state, &p.user.caller, &name, &q, true).await?;
    Ok(see_other(&schedule_page(&name, &q)))
}

/// `POST /ui/schedules/{name}/resume`.
pub async fn schedule_resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
    p: Posted,
) -> UiResult {
    p.actor()?;
    crate::routes::schedules::set_paused(&state, &p.user.caller, &name, &q, false).await?;
    Ok(see_other(&schedule_page(&name, &q)))
}

/// `POST /ui/schedules/{name}/trigger`: submit its job now; back to the schedule, whose runs
/// list the new job first.
pub async fn schedule_trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
    p: Posted,
) -> UiResult {
    p.actor()?;
    crate::routes::schedules::trigger(&state, &p.user.caller, &name, &q).await?;
    Ok(see_other(&schedule_page(&name, &q)))
}

/// `POST /ui/schedules/{name}/detach`: hand a code-managed schedule over to the API (audited;
/// `409 not_managed_by_code` otherwise).
pub async fn schedule_detach(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
    p: Posted,
) -> UiResult {
    p.actor()?;
    crate::routes::schedules::detach(&state, &p.user.caller, &name, &q).await?;
    Ok(see_other(&schedule_page(&name, &q)))
}

// ---------------------------------------------------------------- jobs

/// `POST /ui/jobs/{id}/cancel`.
pub async fn cancel(State(state): State<AppState>, JobId(id): JobId, p: Posted) -> UiResult {
    p.actor()?;
    crate::routes::jobs::cancel_job(&state, &p.user.caller, &id).await?;
    Ok(see_other(&format!("/ui/jobs/{id}")))
}

/// `POST /ui/jobs/{id}/retry`.
pub async fn retry(State(state): State<AppState>, JobId(id): JobId, p: Posted) -> UiResult {
    p.actor()?;
    crate::routes::jobs::retry_job(&state, &p.user.caller, &id).await?;
    Ok(see_other(&format!("/ui/jobs/{id}")))
}

#[derive(Template)]
#[template(path = "bulk_confirm.html")]
struct BulkConfirmPage {
    chrome: Chrome,
    verb: &'static str,
    action: String,
    count: u64,
    exact: bool,
    filter: Vec<(&'static str, String)>,
}

/// `POST /ui/jobs/actions/{verb}`: without `confirm`, a dry run whose count is shown on a
/// confirmation page; with `confirm=yes`, the bulk action starts and its job's page opens.
pub async fn bulk(State(state): State<AppState>, Path(verb): Path<String>, p: Posted) -> UiResult {
    p.actor()?;
    let (verb, name) = match verb.as_str() {
        "retry" => (BulkVerb::Retry, "retry"),
        "cancel" => (BulkVerb::Cancel, "cancel"),
        "discard" => (BulkVerb::Discard, "discard"),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "bulk actions are retry, cancel and discard",
            ))
        }
    };
    let filter: Vec<(&'static str, String)> = ["state", "kind", "queue", "owner"]
        .into_iter()
        .filter_map(|k| p.get(k).map(|v| (k, v)))
        .collect();
    let field = |k: &str| filter.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let confirmed = p.get("confirm").as_deref() == Some("yes");
    let req = BulkRequest {
        state: field("state"),
        kind: field("kind"),
        queue: field("queue"),
        owner: field("owner"),
        dry_run: !confirmed,
        ..BulkRequest::default()
    };
    match bulk_action(&state, &p.user.caller, verb, &req).await? {
        Bulk::Counted(c) => Ok(render(&BulkConfirmPage {
            chrome: Chrome::new(&p.user, format!("Confirm bulk {name}"), "jobs"),
            verb: name,
            action: format!("/ui/jobs/actions/{name}"),
            count: c.count,
            exact: c.exact,
            filter,
        })),
        Bulk::Started(job) => Ok(see_other(&format!("/ui/jobs/{}", job.id))),
    }
}

// ---------------------------------------------------------------- kinds

/// `POST /ui/kinds/{name}`: submit a job of the kind from its generated form, then open its
/// page. The submission is the JSON API's (`SubmitJob`, the catalog's schema check).
pub async fn enqueue(
    State(state): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> UiResult {
    p.actor()?;
    let kinds = crate::routes::kinds::kind_list(&state).await?;
    let kind = kinds.iter().find(|k| k.name == name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_kind", "no such public kind")
    })?;
    let args = schema_form::args_from_form(&kind.schema, &p.fields)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_args", m))?;
    let mut body = serde_json::json!({ "kind": name, "args": args });
    if let Some(q) = p.get("queue") {
        body["queue"] = q.into();
    }
    if let Some(pr) = p.get("priority") {
        let n: i32 = pr.parse().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_priority",
                "priority must be a whole number from 0 to 9",
            )
        })?;
        body["priority"] = n.into();
    }
    let submit: crate::view::SubmitJob = serde_json::from_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        )
    })?;
    let new = submit.into_new_job(None)?;
    let submitted = state.client.submit(&p.user.caller.tenant, new).await?;
    Ok(see_other(&format!("/ui/jobs/{}", submitted.job.id)))
}

// ---------------------------------------------------------------- webhooks

/// `POST /ui/webhooks/{id}/enable`.
pub async fn webhook_enable(
    State(state): State<AppState>,
    ResourceId(id): ResourceId,
    p: Posted,
) -> UiResult {
    p.actor()?;
    crate::routes::webhooks::set_enabled(&state, &p.user.caller, &id, true).await?;
    Ok(see_other("/ui/webhooks"))
}

/// `POST /ui/webhooks/{id}/disable`.
pub async fn webhook_disable(
    State(state): State<AppState>,
    ResourceId(id): ResourceId,
    p: Posted,
) -> UiResult {
    p.actor()?;
    crate::routes::webhooks::set_enabled(&state, &p.user.caller, &id, false).await?;
    Ok(see_other("/ui/webhooks"))
}

/// `POST /ui/deliveries/{id}/replay`.
pub async fn replay(
    State(state): State<AppState>,
    ResourceId(id): ResourceId,
    p: Posted,
) -> UiResult {
    p.actor()?;
    let d = crate::routes::deliveries::replay(&state, &p.user.caller, &id).await?;
    Ok(see_other(&p.back_or(&format!("/ui/jobs/{}", d.job_id))))
}
