//! The HTTP contract: every kind of bad input gets the right 4xx and code and writes nothing;
//! auth and tenant isolation; idempotency keys; all-or-nothing batches; health and OpenAPI.

use jobmill_tests::{Ctx, ALICE, BOB, OPS};
use reqwest::Method;
use serde_json::{json, Value};

async fn job_count(ctx: &Ctx) -> u64 {
    ctx.store()
        .await
        .database()
        .collection::<mongodb::bson::Document>("jobs")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_clear_4xx_and_change_nothing() {
    let mut ctx = Ctx::new("badinput");
    ctx.set("JOBMILL_MAX_BODY_BYTES", "65536")
        .set("JOBMILL_MAX_ARGS_BYTES", "4096");
    let api = ctx.api().await;
    // One real job of alice's, to probe other tenants and terminal states with.
    let alices = api
        .submit(ALICE, json!({"kind": "noop", "delay_ms": 3600000}))
        .await;
    let before = job_count(&ctx).await;

    let json_ct = "application/json";
    let huge = vec![b'x'; 70_000];
    let big_args = json!({"kind": "noop", "args": {"blob": "y".repeat(5000)}}).to_string();
    let batch_1001 = json!({"jobs": vec![json!({"kind": "noop"}); 1001]}).to_string();
    let batch_bad = json!({"jobs": [{"kind": "noop"}, {"kind": "nope"}]}).to_string();
    let batch_dup = json!({"jobs": [{"kind": "noop", "idempotency_key": "k"}, {"kind": "noop", "idempotency_key": "k"}]}).to_string();
    let long_key = "k".repeat(300);
    let long_key_body = json!({"kind": "noop", "idempotency_key": long_key}).to_string();
    let other = format!("/v1/jobs/{alices}");
    let other_cancel = format!("/v1/jobs/{alices}/cancel");

    // (method, path, key, content type, body, extra header, expected status, expected code)
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        &'a str,
        Vec<u8>,
        Option<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let b = |s: &str| s.as_bytes().to_vec();
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b("{\"kind\": \"noop\","),
            None,
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b("not json at all"),
            None,
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(""),
            None,
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b("[1,2]"),
            None,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": 5}"#),
            None,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"args": {}}"#),
            None,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "surprise": 1}"#),
            None,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "nope"}"#),
            None,
            422,
            "unknown_kind",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "sleep", "args": {"ms": "soon"}}"#),
            None,
            422,
            "invalid_args",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "sleep", "args": {"ms": -5}}"#),
            None,
            422,
            "invalid_args",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "sleep", "args": {"ms": 999999999999}}"#),
            None,
            422,
            "invalid_args",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "priority": -1}"#),
            None,
            422,
            "invalid_priority",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "priority": 10}"#),
            None,
            422,
            "invalid_priority",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "priority": 1e30}"#),
            None,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "max_attempts": -1}"#),
            None,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "max_attempts": 0}"#),
            None,
            422,
            "invalid_max_attempts",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "max_attempts": 1000000}"#),
            None,
            422,
            "invalid_max_attempts",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "timeout_ms": 0}"#),
            None,
            422,
            "invalid_timeout",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "timeout_ms": 99999999999999}"#),
            None,
            422,
            "invalid_timeout",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "delay_ms": -5}"#),
            None,
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "delay_ms": 99999999999999}"#),
            None,
            422,
            "invalid_delay",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "run_at": "tomorrow"}"#),
            None,
            422,
            "invalid_run_at",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "run_at": "2999-01-01T00:00:00Z"}"#),
            None,
            422,
            "invalid_run_at",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "run_at": "2030-01-01T00:00:00Z", "delay_ms": 5}"#),
            None,
            422,
            "conflicting_schedule",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "queue": "a{b}"}"#),
            None,
            422,
            "invalid_queue",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "queue": ""}"#),
            None,
            422,
            "invalid_queue",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "queue": "../../etc"}"#),
            None,
            422,
            "invalid_queue",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            long_key_body.into_bytes(),
            None,
            422,
            "invalid_idempotency_key",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            b(r#"{"kind": "noop", "idempotency_key": "a"}"#),
            Some(("idempotency-key", "b")),
            422,
            "conflicting_idempotency_key",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            big_args.into_bytes(),
            None,
            422,
            "args_too_large",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            json_ct,
            huge,
            None,
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            "text/plain",
            b(r#"{"kind": "noop"}"#),
            None,
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/v1/jobs",
            None,
            json_ct,
            b(r#"{"kind": "noop"}"#),
            None,
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            "/v1/jobs",
            Some("wrong-key-0123456789"),
            json_ct,
            b(r#"{"kind": "noop"}"#),
            None,
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            "/v1/jobs/batch",
            Some(ALICE),
            json_ct,
            batch_1001.into_bytes(),
            None,
            422,
            "batch_too_large",
        ),
        (
            Method::POST,
            "/v1/jobs/batch",
            Some(ALICE),
            json_ct,
            batch_bad.into_bytes(),
            None,
            422,
            "unknown_kind",
        ),
        (
            Method::POST,
            "/v1/jobs/batch",
            Some(ALICE),
            json_ct,
            batch_dup.into_bytes(),
            None,
            422,
            "duplicate_idempotency_key",
        ),
        (
            Method::POST,
            "/v1/jobs/batch",
            Some(ALICE),
            json_ct,
            b(r#"{"jobs": []}"#),
            None,
            422,
            "empty_batch",
        ),
        (
            Method::GET,
            "/v1/jobs/not-a-uuid",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/jobs/%00",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/jobs/0191b6a2-7c3e-7d4a-9f1e-2b3c4d5e6f70",
            Some(ALICE),
            "",
            vec![],
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            &other,
            Some(BOB),
            "",
            vec![],
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            &other,
            None,
            "",
            vec![],
            None,
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            &other_cancel,
            Some(BOB),
            json_ct,
            vec![],
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/jobs/0191b6a2-7c3e-7d4a-9f1e-2b3c4d5e6f70?wait=999",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_wait",
        ),
        (
            Method::GET,
            "/v1/jobs?state=dead",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_state",
        ),
        (
            Method::GET,
            "/v1/jobs?limit=0",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_limit",
        ),
        (
            Method::GET,
            "/v1/jobs?limit=-3",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_limit",
        ),
        (
            Method::GET,
            "/v1/jobs?limit=abc",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/jobs?cursor=zzz",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_cursor",
        ),
        (
            Method::GET,
            "/v1/jobs?bogus=1",
            Some(ALICE),
            "",
            vec![],
            None,
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/nothing",
            Some(ALICE),
            "",
            vec![],
            None,
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/jobs",
            Some(ALICE),
            "",
            vec![],
            None,
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, key, ct, body, header, status, code) in cases {
        let label = format!(
            "{method} {path} {}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        let body = (!ct.is_empty()).then_some((ct, body));
        let headers: Vec<(&str, &str)> = header.into_iter().collect();
        let a = api.raw(method, path, key, body, &headers).await;
        assert_eq!(a.status, status, "{label}: {}", a.body);
        assert_eq!(a.code(), code, "{label}: {}", a.body);
        let msg = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.len() > 10,
            "{label}: the message should be a sentence: {}",
            a.body
        );
    }
    // The unknown-kind answer names the known kinds.
    let a = api.post("/v1/jobs", ALICE, json!({"kind": "nope"})).await;
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("noop") && msg.contains("sleep") && msg.contains("fail"),
        "{msg}"
    );
    assert_eq!(
        job_count(&ctx).await,
        before,
        "a rejected request wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_jobs_and_operators_see_all() {
    let ctx = Ctx::new("tenants");
    let api = ctx.api().await;
    let a = api
        .submit(ALICE, json!({"kind": "noop", "delay_ms": 3600000}))
        .await;
    let b = api
        .submit(BOB, json!({"kind": "noop", "delay_ms": 3600000}))
        .await;
    let ids = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&api.get("/v1/jobs", ALICE).await.body), vec![a.clone()]);
    assert_eq!(ids(&api.get("/v1/jobs", BOB).await.body), vec![b.clone()]);
    assert_eq!(
        ids(&api.get("/v1/jobs", OPS).await.body),
        vec![b.clone(), a.clone()]
    );
    assert_eq!(api.get(&format!("/v1/jobs/{b}"), ALICE).await.status, 404);
    assert_eq!(api.get(&format!("/v1/jobs/{b}"), OPS).await.status, 200);
    let c = api
        .post(&format!("/v1/jobs/{a}/cancel"), OPS, json!(null))
        .await;
    assert_eq!(c.status, 200, "operators act on every job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_newest_first_with_a_cursor() {
    let ctx = Ctx::new("paging");
    let api = ctx.api().await;
    let mut submitted = Vec::new();
    for i in 0..7 {
        submitted.push(
            api.submit(
                ALICE,
                json!({"kind": "noop", "args": {"i": i}, "delay_ms": 3600000}),
            )
            .await,
        );
    }
    submitted.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=3&cursor={c}"),
            None => "/v1/jobs?limit=3".to_string(),
        };
        let page = api.get(&path, ALICE).await;
        assert_eq!(page.status, 200);
        for j in page.body["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, submitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_original_job() {
    let ctx = Ctx::new("idem");
    let api = ctx.api().await;
    let first = api
        .post(
            "/v1/jobs",
            ALICE,
            json!({"kind": "noop", "idempotency_key": "order-42"}),
        )
        .await;
    assert_eq!(first.status, 202);
    // The same request again: the original job.
    let again = api
        .post(
            "/v1/jobs",
            ALICE,
            json!({"idempotency_key": "order-42", "kind": "noop"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["id"], first.body["id"]);
    // The same key with a different request is refused, naming the job that owns the key.
    let reused = api
        .post(
            "/v1/jobs",
            ALICE,
            json!({"kind": "noop", "idempotency_key": "order-42", "args": {"different": true}}),
        )
        .await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(reused.code(), "idempotency_key_reused");
    assert_eq!(reused.body["error"]["job_id"], first.body["id"]);
    // In a batch, the whole batch is refused and nothing of it is stored.
    let batch = api
        .post(
            "/v1/jobs/batch",
            ALICE,
            json!({"jobs": [{"kind": "noop", "idempotency_key": "fresh-1"},
                            {"kind": "noop", "queue": "other", "idempotency_key": "order-42"}]}),
        )
        .await;
    assert_eq!(batch.status, 422, "{}", batch.body);
    assert_eq!(batch.code(), "idempotency_key_reused");
    // The header works the same way.
    let by_header = api
        .raw(
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            Some(("application/json", br#"{"kind":"noop"}"#.to_vec())),
            &[("idempotency-key", "order-42")],
        )
        .await;
    assert_eq!(by_header.status, 200);
    assert_eq!(by_header.body["id"], first.body["id"]);
    // Keys are per tenant.
    let bobs = api
        .post(
            "/v1/jobs",
            BOB,
            json!({"kind": "noop", "idempotency_key": "order-42"}),
        )
        .await;
    assert_eq!(bobs.status, 202);
    assert_ne!(bobs.body["id"], first.body["id"]);
    assert_eq!(job_count(&ctx).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_all_or_nothing_and_keeps_order() {
    let ctx = Ctx::new("batch");
    let api = ctx.api().await;
    let bad = api
        .post(
            "/v1/jobs/batch",
            ALICE,
            json!({"jobs": [{"kind": "noop"}, {"kind": "sleep", "args": {"ms": "x"}}]}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("job 1:"),
        "{}",
        bad.body
    );
    assert_eq!(job_count(&ctx).await, 0);

    let ok = api
        .post(
            "/v1/jobs/batch",
            ALICE,
            json!({"jobs": [
                {"kind": "noop", "args": {"i": 0}},
                {"kind": "noop", "args": {"i": 1}, "priority": 5},
                {"kind": "sleep", "args": {"ms": 1}, "queue": "other"},
            ]}),
        )
        .await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    let jobs = ok.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[1]["args"], json!({"i": 1}));
    assert_eq!(jobs[2]["queue"], "other");
    assert_eq!(job_count(&ctx).await, 3);

    let worker = ctx.worker();
    for j in jobs.iter().take(2) {
        let done = api
            .wait_terminal(
                ALICE,
                j["id"].as_str().unwrap(),
                std::time::Duration::from_secs(60),
            )
            .await;
        assert_eq!(done["state"], "succeeded");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_openapi() {
    let ctx = Ctx::new("meta");
    let api = ctx.api().await;
    let h = api.raw(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(h.status, 200);
    let r = api.raw(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"redis": "ok", "mongodb": "ok"}));
    let doc = api.raw(Method::GET, "/openapi.json", None, None, &[]).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/batch", "post"),
        ("/v1/jobs/{id}", "get"),
        ("/v1/jobs/{id}/cancel", "post"),
        ("/v1/jobs/{id}/retry", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
        ("/v1/uploads", "post"),
        ("/v1/uploads/{id}", "get"),
        ("/v1/uploads/{id}/parts/{n}", "put"),
        ("/v1/uploads/{id}/complete", "post"),
        ("/v1/files", "get"),
        ("/v1/files/{id}", "get"),
        ("/v1/files/{id}", "delete"),
        ("/v1/datasets", "get"),
        ("/v1/datasets/{name}/rows", "get"),
        ("/v1/datasets/{name}/pages/{n}", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert!(doc.body["components"]["schemas"]["JobView"].is_object());
}
