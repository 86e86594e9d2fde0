//! The dashboard's server-side rules over real HTTP: sign-in and its cookie's flags, CSRF
//! refusals that change nothing, roles (viewers act on nothing, submitters see only their own
//! jobs), the Content-Security-Policy, and escaping of job values. The browser tests in
//! `tests/ui/` drive the same pages in Chromium.

use jobmill_tests::{Api, Ctx, ALICE, BOB, EYES, OPS};
use reqwest::header::{HeaderMap, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

/// A browser-like client that follows no redirect, so answers are seen as sent.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

async fn send(req: reqwest::RequestBuilder) -> Page {
    let res = req.send().await.expect("request");
    Page {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap_or_default(),
    }
}

/// Sign in with `key`; the session cookie (`name=value`) and the raw `Set-Cookie`.
async fn sign_in(api: &Api, key: &str, extra: &[(&str, &str)]) -> (String, String) {
    let mut req = client()
        .post(format!("{}/ui/login", api.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("key={key}"));
    for (h, v) in extra {
        req = req.header(*h, *v);
    }
    let p = send(req).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.headers[LOCATION], "/ui/");
    let raw = p.headers[SET_COOKIE].to_str().unwrap().to_string();
    let pair = raw.split(';').next().unwrap().to_string();
    (pair, raw)
}

async fn get(api: &Api, cookie: &str, path: &str) -> Page {
    send(
        client()
            .get(format!("{}{path}", api.base))
            .header(COOKIE, cookie)
            .header("accept", "text/html"),
    )
    .await
}

async fn post_form(api: &Api, cookie: &str, path: &str, form: &str) -> Page {
    send(
        client()
            .post(format!("{}{path}", api.base))
            .header(COOKIE, cookie)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.to_string()),
    )
    .await
}

/// The CSRF token a page's forms carry.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf_token\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &html[at + "name=\"csrf_token\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

async fn paused(api: &Api, queue: &str) -> bool {
    let a = api.get("/v1/queues", OPS).await;
    a.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .map(|q| q["paused"] == true)
        .unwrap_or(false)
}

#[tokio::test]
async fn sign_in_sets_a_signed_http_only_cookie_and_never_the_key() {
    let ctx = Ctx::new("ui_cookie");
    let api = ctx.api().await;
    let (cookie, raw) = sign_in(&api, OPS, &[]).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Max-Age=", "Path=/ui"] {
        assert!(raw.contains(flag), "{flag} missing: {raw}");
    }
    assert!(!raw.contains("Secure"), "plain HTTP with auto: {raw}");
    assert!(!raw.contains(OPS), "the key itself is in the cookie: {raw}");
    // Behind a TLS proxy, `auto` adds Secure.
    let (_, raw) = sign_in(&api, OPS, &[("x-forwarded-proto", "https")]).await;
    assert!(raw.contains("; Secure"), "{raw}");

    // The session opens pages; a tampered one does not.
    let p = get(&api, &cookie, "/ui/").await;
    assert_eq!(p.status, 200, "{}", p.body);
    let csp = p.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let tampered = format!("{}x", cookie);
    let p = get(&api, &tampered, "/ui/").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.headers[LOCATION], "/ui/login");

    // A wrong key gets the form again, 401, and no cookie.
    let p = send(
        client()
            .post(format!("{}/ui/login", api.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("key=not-a-key-at-all-0000"),
    )
    .await;
    assert_eq!(p.status, 401);
    assert!(!p.headers.contains_key(SET_COOKIE));

    // Sign-out clears the cookie (with the token).
    let page = get(&api, &cookie, "/ui/").await.body;
    let p = post_form(
        &api,
        &cookie,
        "/ui/logout",
        &format!("csrf_token={}", csrf_of(&page)),
    )
    .await;
    assert_eq!(p.status, 303);
    assert!(p.headers[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

#[tokio::test]
async fn secure_cookie_settings_are_obeyed() {
    let mut ctx = Ctx::new("ui_secure");
    ctx.set("JOBMILL_UI_SECURE_COOKIE", "always");
    ctx.set("JOBMILL_UI_SESSION_SECRET", &"k".repeat(40));
    let api = ctx.api().await;
    let (cookie, raw) = sign_in(&api, OPS, &[]).await;
    assert!(raw.contains("; Secure"), "{raw}");
    // Another process with the same secret accepts the session.
    let other = ctx.api().await;
    assert_eq!(get(&other, &cookie, "/ui/").await.status, 200);
    let mut ctx2 = Ctx::new("ui_secure2");
    ctx2.set("JOBMILL_UI_SECURE_COOKIE", "never");
    let api2 = ctx2.api().await;
    let (_, raw) = sign_in(&api2, OPS, &[("x-forwarded-proto", "https")]).await;
    assert!(!raw.contains("Secure"), "{raw}");
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let ctx = Ctx::new("ui_csrf");
    let api = ctx.api().await;
    api.submit(OPS, json!({"kind": "noop", "queue": "uiq"}))
        .await;
    let (cookie, _) = sign_in(&api, OPS, &[]).await;
    let page = get(&api, &cookie, "/ui/queues").await;
    assert!(page.body.contains("/ui/queues/uiq/pause"), "{}", page.body);
    let token = csrf_of(&page.body);

    let p = post_form(&api, &cookie, "/ui/queues/uiq/pause", "").await;
    assert_eq!(p.status, 403);
    let body: Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(body["error"]["code"], "csrf_failed");
    let p = post_form(&api, &cookie, "/ui/queues/uiq/pause", "csrf_token=wrong").await;
    assert_eq!(p.status, 403);
    // Without any session either.
    let p = post_form(
        &api,
        "",
        "/ui/queues/uiq/pause",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 403);
    assert!(
        !paused(&api, "uiq").await,
        "a refused post paused the queue"
    );

    // A browser asking for HTML gets a page with the same status and code.
    let p = send(
        client()
            .post(format!("{}/ui/queues/uiq/pause", api.base))
            .header(COOKIE, &cookie)
            .header("accept", "text/html")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(""),
    )
    .await;
    assert_eq!(p.status, 403);
    assert!(
        p.body.contains("csrf_failed") && p.body.contains("<html"),
        "{}",
        p.body
    );

    // The form field and the header both work.
    let p = post_form(
        &api,
        &cookie,
        "/ui/queues/uiq/pause",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(paused(&api, "uiq").await);
    let p = send(
        client()
            .post(format!("{}/ui/queues/uiq/resume", api.base))
            .header(COOKIE, &cookie)
            .header("x-csrf-token", &token),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(!paused(&api, "uiq").await);
    // Each change is audited under the key's name.
    let audit = get(&api, &cookie, "/ui/audit").await.body;
    assert!(
        audit.contains("queue.pause") && audit.contains("queue.resume"),
        "{audit}"
    );
}

#[tokio::test]
async fn viewers_see_no_buttons_and_are_refused() {
    let ctx = Ctx::new("ui_viewer");
    let api = ctx.api().await;
    let id = api
        .submit(OPS, json!({"kind": "noop", "queue": "uiv"}))
        .await;
    let (cookie, _) = sign_in(&api, EYES, &[]).await;
    for path in [
        "/ui/queues".to_string(),
        format!("/ui/jobs/{id}"),
        "/ui/jobs".into(),
        "/ui/kinds".into(),
    ] {
        let p = get(&api, &cookie, &path).await;
        assert_eq!(p.status, 200, "{path}: {}", p.body);
        for button in ["/pause\"", "/cancel\"", "/ui/jobs/actions/", "Enqueue "] {
            assert!(
                !p.body.contains(button),
                "{path} shows {button} to a viewer"
            );
        }
    }
    let token = csrf_of(&get(&api, &cookie, "/ui/").await.body);
    for path in [
        "/ui/queues/uiv/pause".to_string(),
        format!("/ui/jobs/{id}/cancel"),
        "/ui/kinds/noop".into(),
    ] {
        let p = post_form(&api, &cookie, &path, &format!("csrf_token={token}")).await;
        assert_eq!(p.status, 403, "{path}: {}", p.body);
        let body: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{path}");
    }
    assert!(!paused(&api, "uiv").await);
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}"), OPS).await.body["state"],
        "queued"
    );
}

#[tokio::test]
async fn submitters_see_only_their_own_jobs() {
    let ctx = Ctx::new("ui_tenant");
    let api = ctx.api().await;
    let mine = api
        .submit(ALICE, json!({"kind": "noop", "queue": "uit"}))
        .await;
    let theirs = api
        .submit(BOB, json!({"kind": "noop", "queue": "uit"}))
        .await;
    let (cookie, _) = sign_in(&api, ALICE, &[]).await;
    let list = get(&api, &cookie, "/ui/jobs").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains(&mine));
    assert!(
        !list.body.contains(&theirs),
        "another tenant's job is listed"
    );
    assert_eq!(
        get(&api, &cookie, &format!("/ui/jobs/{mine}")).await.status,
        200
    );
    assert_eq!(
        get(&api, &cookie, &format!("/ui/jobs/{theirs}"))
            .await
            .status,
        404
    );
    // Their files page lists their own (none yet) and says how to upload.
    let files = get(&api, &cookie, "/ui/files").await;
    assert_eq!(files.status, 200);
    assert!(files.body.contains("POST /v1/uploads"), "{}", files.body);
    // Fleet pages are not theirs.
    for path in ["/ui/queues", "/ui/workers", "/ui/audit"] {
        assert_eq!(get(&api, &cookie, path).await.status, 403, "{path}");
    }
    // Its overview counts its own queued job only.
    let overview = get(&api, &cookie, "/ui/").await.body;
    assert!(overview.contains("id=\"t-queued\">1<"), "{overview}");
    // It cannot cancel another tenant's job, and can cancel its own.
    let token = csrf_of(&overview);
    let p = post_form(
        &api,
        &cookie,
        &format!("/ui/jobs/{theirs}/cancel"),
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 404);
    assert_eq!(
        api.get(&format!("/v1/jobs/{theirs}"), BOB).await.body["state"],
        "queued"
    );
    let p = post_form(
        &api,
        &cookie,
        &format!("/ui/jobs/{mine}/cancel"),
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(
        api.get(&format!("/v1/jobs/{mine}"), ALICE).await.body["state"],
        "cancelled"
    );
}

#[tokio::test]
async fn job_values_are_escaped() {
    let ctx = Ctx::new("ui_escape");
    let api = ctx.api().await;
    let evil = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>";
    let id = api
        .submit(
            OPS,
            json!({"kind": "fail", "args": {"times": 0, "message": evil}, "queue": "uie"}),
        )
        .await;
    let (cookie, _) = sign_in(&api, OPS, &[]).await;
    let p = get(&api, &cookie, &format!("/ui/jobs/{id}")).await;
    assert_eq!(p.status, 200);
    assert!(!p.body.contains("<script>alert"), "raw script in the page");
    assert!(!p.body.contains("<img src=x"), "raw tag in the page");
    assert!(
        p.body.contains("&#60;script&#62;") || p.body.contains("&lt;script&gt;"),
        "{}",
        p.body
    );
    // The filter fields echo escaped too.
    let p = get(&api, &cookie, "/ui/jobs?kind=%3Cscript%3E").await;
    assert!(!p.body.contains("value=\"<script>"), "{}", p.body);
}

#[tokio::test]
async fn the_kinds_form_enqueues_and_opens_the_job() {
    let ctx = Ctx::new("ui_kinds");
    let api = ctx.api().await;
    let (cookie, _) = sign_in(&api, ALICE, &[]).await;
    let page = get(&api, &cookie, "/ui/kinds").await;
    assert!(
        page.body.contains("name=\"arg.ms\""),
        "sleep's form has its ms field"
    );
    let token = csrf_of(&page.body);
    let p = post_form(
        &api,
        &cookie,
        "/ui/kinds/sleep",
        &format!("csrf_token={token}&arg.ms=10&arg.steps=&queue=uik"),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let to = p.headers[LOCATION].to_str().unwrap().to_string();
    let id = to.strip_prefix("/ui/jobs/").expect("the job's page");
    let job = api.get(&format!("/v1/jobs/{id}"), ALICE).await.body;
    assert_eq!(job["kind"], "sleep");
    assert_eq!(job["args"], json!({"ms": 10}));
    assert_eq!(job["queue"], "uik");
    // Bad args are refused by the catalog's schema, as on the JSON API.
    let p = post_form(
        &api,
        &cookie,
        "/ui/kinds/sleep",
        &format!("csrf_token={token}&arg.ms=-5"),
    )
    .await;
    assert_eq!(p.status, 422, "{}", p.body);
}
