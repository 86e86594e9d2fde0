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

/// A form post from a browser, which asks for HTML (errors come back as pages).
async fn post_form_html(api: &Api, cookie: &str, path: &str, form: &str) -> Page {
    send(
        client()
            .post(format!("{}{path}", api.base))
            .header(COOKIE, cookie)
            .header("accept", "text/html")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.to_string()),
    )
    .await
}

async fn create_schedule(api: &Api, key: &str, body: Value) {
    let a = api.post("/v1/schedules", key, body.clone()).await;
    assert_eq!(a.status, 201, "create {body}: {}", a.body);
}

async fn schedule_paused(api: &Api, key: &str, path: &str) -> bool {
    let a = api.get(path, key).await;
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    a.body["paused"] == true
}

#[tokio::test]
async fn the_schedules_pages_list_show_and_escape() {
    let ctx = Ctx::new("ui_sched");
    let api = ctx.api().await;
    let evil = "<script>alert('s')</script>\"><img src=x onerror=alert(1)>";
    // Names cannot carry markup: the API refuses them, so only values can.
    let a = api
        .post(
            "/v1/schedules",
            ALICE,
            json!({"name": evil, "cron": "0 3 * * *", "job": {"kind": "noop"}}),
        )
        .await;
    assert_eq!((a.status, a.code()), (422, "invalid_name"), "{}", a.body);
    create_schedule(
        &api,
        ALICE,
        json!({"name": "nightly.report", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
            "overlap": "skip",
            "job": {"kind": "fail", "queue": "uis", "args": {"times": 0, "message": evil}}}),
    )
    .await;

    let (cookie, _) = sign_in(&api, OPS, &[]).await;
    let list = get(&api, &cookie, "/ui/schedules").await;
    assert_eq!(list.status, 200, "{}", list.body);
    for want in [
        "href=\"/ui/schedules/nightly.report?tenant=alice\"",
        "0 3 * * *",
        "Europe/Berlin",
        ">fail<",
        ">uis<",
        ">skip<",
        ">api<",
        "aria-current=\"page\">Schedules<",
    ] {
        assert!(list.body.contains(want), "{want} missing: {}", list.body);
    }
    let page = get(&api, &cookie, "/ui/schedules/nightly.report?tenant=alice").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("<script>alert"),
        "raw script in the page"
    );
    assert!(!page.body.contains("<img src=x"), "raw tag in the page");
    assert!(
        page.body.contains("&#60;script&#62;") || page.body.contains("&lt;script&gt;"),
        "{}",
        page.body
    );
    assert_eq!(
        page.body.matches("<li><time").count(),
        5,
        "the next 5 runs: {}",
        page.body
    );
    // Operators act on every tenant's; detach is for code-managed schedules only.
    assert!(page
        .body
        .contains("/ui/schedules/nightly.report/pause?tenant=alice"));
    assert!(page.body.contains("/trigger?tenant=alice"));
    assert!(!page.body.contains("/detach"), "{}", page.body);

    // Trigger now: back to the schedule, whose runs link the new job.
    let token = csrf_of(&page.body);
    let p = post_form(
        &api,
        &cookie,
        "/ui/schedules/nightly.report/trigger?tenant=alice",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(
        p.headers[LOCATION],
        "/ui/schedules/nightly.report?tenant=alice"
    );
    let shown = api
        .get("/v1/schedules/nightly.report?tenant=alice", OPS)
        .await;
    let job = shown.body["runs"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = get(&api, &cookie, "/ui/schedules/nightly.report?tenant=alice").await;
    assert!(
        page.body.contains(&format!("href=\"/ui/jobs/{job}\"")),
        "{}",
        page.body
    );
    assert!(page.body.contains(">triggered<"), "{}", page.body);

    // A refused action is an HTML page with the API's code, never a 500.
    let p = post_form_html(
        &api,
        &cookie,
        "/ui/schedules/nightly.report/detach?tenant=alice",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 409, "{}", p.body);
    assert!(
        p.body.contains("<html") && p.body.contains("not_managed_by_code"),
        "{}",
        p.body
    );

    // The kinds page names the schedules of each kind.
    let kinds = get(&api, &cookie, "/ui/kinds").await.body;
    assert!(
        kinds.contains("href=\"/ui/schedules/nightly.report?tenant=alice\""),
        "{kinds}"
    );
}

#[tokio::test]
async fn submitters_see_only_their_own_schedules() {
    let ctx = Ctx::new("ui_sched_tenant");
    let api = ctx.api().await;
    let (cookie, _) = sign_in(&api, ALICE, &[]).await;
    let empty = get(&api, &cookie, "/ui/schedules").await;
    assert_eq!(empty.status, 200);
    assert!(
        empty.body.contains("POST /v1/schedules") && empty.body.contains("jobmill schedules"),
        "the empty state says how to create one: {}",
        empty.body
    );
    let body = json!({"name": "theirs", "cron": "0 0 * * *", "job": {"kind": "noop"}});
    create_schedule(&api, BOB, body).await;
    create_schedule(
        &api,
        ALICE,
        json!({"name": "mine", "cron": "0 0 * * *", "job": {"kind": "noop"}}),
    )
    .await;
    let list = get(&api, &cookie, "/ui/schedules").await.body;
    assert!(list.contains("/ui/schedules/mine?tenant=alice"), "{list}");
    assert!(
        !list.contains("theirs"),
        "another tenant's schedule is listed"
    );
    for path in ["/ui/schedules/theirs?tenant=bob", "/ui/schedules/theirs"] {
        let p = get(&api, &cookie, path).await;
        assert_eq!(p.status, 404, "{path}: {}", p.body);
        assert!(p.body.contains("<html"), "{path}: {}", p.body);
    }
    // Nor can it act on it.
    let token = csrf_of(&list);
    let p = post_form(
        &api,
        &cookie,
        "/ui/schedules/theirs/pause?tenant=bob",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 404, "{}", p.body);
    assert!(!schedule_paused(&api, BOB, "/v1/schedules/theirs").await);
    // Its own: the buttons, and they work.
    let page = get(&api, &cookie, "/ui/schedules/mine?tenant=alice")
        .await
        .body;
    assert!(
        page.contains("/ui/schedules/mine/pause?tenant=alice"),
        "{page}"
    );
    let p = post_form(
        &api,
        &cookie,
        "/ui/schedules/mine/pause?tenant=alice",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(schedule_paused(&api, ALICE, "/v1/schedules/mine").await);
}

#[tokio::test]
async fn schedule_actions_follow_roles_and_need_the_csrf_token() {
    let ctx = Ctx::new("ui_sched_roles");
    let api = ctx.api().await;
    create_schedule(
        &api,
        ALICE,
        json!({"name": "mine", "cron": "*/5 * * * *", "job": {"kind": "noop"}}),
    )
    .await;
    let path = "/ui/schedules/mine?tenant=alice";
    let json_path = "/v1/schedules/mine?tenant=alice";

    // A viewer reads the page, sees no button, and is refused with a valid token.
    let (eyes, _) = sign_in(&api, EYES, &[]).await;
    let page = get(&api, &eyes, path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for button in ["/pause?", "/resume?", "/trigger?", "/detach?"] {
        assert!(!page.body.contains(button), "a viewer sees {button}");
    }
    let token = csrf_of(&page.body);
    for verb in ["pause", "trigger"] {
        let p = post_form(
            &api,
            &eyes,
            &format!("/ui/schedules/mine/{verb}?tenant=alice"),
            &format!("csrf_token={token}"),
        )
        .await;
        assert_eq!(p.status, 403, "{verb}: {}", p.body);
        let body: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    assert!(!schedule_paused(&api, OPS, json_path).await);
    assert_eq!(
        api.get(json_path, OPS).await.body["runs"],
        json!([]),
        "a viewer's refused trigger ran the job"
    );

    // An operator without the token: 403 csrf_failed, nothing changes.
    let (ops, _) = sign_in(&api, OPS, &[]).await;
    let p = post_form(&api, &ops, "/ui/schedules/mine/pause?tenant=alice", "").await;
    assert_eq!(p.status, 403, "{}", p.body);
    let body: Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(body["error"]["code"], "csrf_failed");
    assert!(!schedule_paused(&api, OPS, json_path).await);

    // With it, pause and resume work, and the page follows.
    let token = csrf_of(&get(&api, &ops, path).await.body);
    let p = post_form(
        &api,
        &ops,
        "/ui/schedules/mine/pause?tenant=alice",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.headers[LOCATION], path);
    assert!(schedule_paused(&api, OPS, json_path).await);
    let page = get(&api, &ops, path).await.body;
    assert!(page.contains("id=\"schedule-state\">paused<"), "{page}");
    assert!(
        page.contains("/ui/schedules/mine/resume?tenant=alice"),
        "{page}"
    );
    let p = post_form(
        &api,
        &ops,
        "/ui/schedules/mine/resume?tenant=alice",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(!schedule_paused(&api, OPS, json_path).await);
}

async fn limits_of(api: &Api, queue: &str) -> Value {
    let a = api.get("/v1/queues", OPS).await;
    a.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .map(|q| q["limits"]["set"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_limits_form_sets_and_removes_limits_through_the_api_rules() {
    let ctx = Ctx::new("ui_limits");
    let api = ctx.api().await;
    api.submit(OPS, json!({"kind": "noop", "queue": "uil"}))
        .await;
    let (cookie, _) = sign_in(&api, OPS, &[]).await;
    let page = get(&api, &cookie, "/ui/queues/uil").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("No limits"), "{}", page.body);
    assert!(page.body.contains("action=\"/ui/queues/uil/limits\""));
    let token = csrf_of(&page.body);

    let p = post_form(
        &api,
        &cookie,
        "/ui/queues/uil/limits",
        &format!(
            "csrf_token={token}&concurrency=40&rate_max=10&rate_per=1s&key_concurrency=1\
             &key_rate_max=&key_rate_per="
        ),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.headers[LOCATION], "/ui/queues/uil");
    let want = json!({"concurrency": 40, "rate": {"max": 10, "per": "1s"}, "key_concurrency": 1});
    assert_eq!(limits_of(&api, "uil").await, want);
    let list = get(&api, &cookie, "/ui/queues").await.body;
    assert!(list.contains("conc 40 · 10/1s · key 1"), "{list}");
    let page = get(&api, &cookie, "/ui/queues/uil").await.body;
    assert!(page.contains("40 jobs at once"), "{page}");
    assert!(
        page.contains("value=\"40\""),
        "the form shows what is set: {page}"
    );
    assert!(page.contains("/ui/queues/uil/limits/delete"), "{page}");
    let audit = api.get("/v1/audit", OPS).await.body.to_string();
    assert!(audit.contains("queue.limits_set"), "{audit}");

    // Bad input is a 4xx with the reason, and changes nothing.
    for (form, why) in [
        ("concurrency=abc", "whole number"),
        ("concurrency=0", "concurrency"),
        ("rate_max=5", "both"),
        ("rate_max=5&rate_per=1y", "rate.per"),
        ("concurrency=", "at least one"),
    ] {
        let p = post_form(
            &api,
            &cookie,
            "/ui/queues/uil/limits",
            &format!("csrf_token={token}&{form}"),
        )
        .await;
        assert_eq!(p.status, 422, "{form}: {}", p.body);
        let body: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_limits", "{form}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{form}: {body}"
        );
    }
    let p = post_form_html(
        &api,
        &cookie,
        "/ui/queues/uil/limits",
        &format!("csrf_token={token}&concurrency=-3"),
    )
    .await;
    assert_eq!(p.status, 422);
    assert!(p.body.contains("<html") && p.body.contains("invalid_limits"));
    assert_eq!(limits_of(&api, "uil").await, want);

    // Without the token, or from a viewer or a submitter: refused, nothing changes.
    let p = post_form(&api, &cookie, "/ui/queues/uil/limits/delete", "").await;
    assert_eq!(p.status, 403);
    for key in [EYES, ALICE] {
        let (other, _) = sign_in(&api, key, &[]).await;
        let t = csrf_of(&get(&api, &other, "/ui/").await.body);
        for path in ["/ui/queues/uil/limits", "/ui/queues/uil/limits/delete"] {
            let p = post_form(&api, &other, path, &format!("csrf_token={t}&concurrency=1")).await;
            assert_eq!(p.status, 403, "{path}: {}", p.body);
        }
    }
    let viewer_page = get(&api, &sign_in(&api, EYES, &[]).await.0, "/ui/queues/uil").await;
    assert!(viewer_page.body.contains("40 jobs at once"));
    assert!(!viewer_page.body.contains("limits/delete"));
    assert_eq!(limits_of(&api, "uil").await, want);

    // Remove limits.
    let p = post_form(
        &api,
        &cookie,
        "/ui/queues/uil/limits/delete",
        &format!("csrf_token={token}"),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let set = limits_of(&api, "uil").await;
    assert!(set.is_null() || set == json!({}), "{set}");
    let list = get(&api, &cookie, "/ui/queues").await.body;
    assert!(!list.contains("conc 40"), "{list}");
}
