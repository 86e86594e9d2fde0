//! Webhook callbacks end to end: a receiver built on the Standard Webhooks reference library
//! (`tests/webhook_receiver.py`, PyPI `standardwebhooks`) verifies every delivery, including
//! during secret rotations; retries, the attempt log, `410`, replay, the private-address
//! refusal, the destination list, and a worker SIGKILLed right after a job ended.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobmill_tests::{free_port, tmp_dir, Api, Ctx, Proc, ALICE, BOB, SIGKILL};
use serde_json::{json, Value};

/// Liveness bound: turns a hang into a failure, never a speed assertion.
const LIMIT: Duration = Duration::from_secs(60);

/// A running `webhook_receiver.py`.
struct Receiver {
    port: u16,
    out: PathBuf,
    secrets: PathBuf,
    _proc: Proc,
}

impl Receiver {
    fn start(secrets: &[&str], extra: &[&str]) -> Self {
        let python = std::env::var("JOBMILL_TEST_HOOKS_PYTHON").unwrap_or_else(|_| {
            panic!("JOBMILL_TEST_HOOKS_PYTHON is not set: run the tests through scripts/test.sh")
        });
        let port = free_port();
        let dir = tmp_dir().join(format!("receiver-{port}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("requests.jsonl");
        let secrets_file = dir.join("secrets");
        std::fs::write(&secrets_file, secrets.join("\n")).unwrap();
        let log = dir.join("receiver.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("webhook_receiver.py"))
            .args(["--port", &port.to_string()])
            .arg("--out")
            .arg(&out)
            .arg("--secrets-file")
            .arg(&secrets_file)
            .args(extra)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start webhook_receiver.py");
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < end,
                "receiver never listened: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Receiver {
            port,
            out,
            secrets: secrets_file,
            _proc: Proc { child, log },
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn set_secrets(&self, secrets: &[&str]) {
        std::fs::write(&self.secrets, secrets.join("\n")).unwrap();
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn wait_records(&self, n: usize) -> Vec<Value> {
        let end = Instant::now() + LIMIT;
        loop {
            let r = self.records();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < end,
                "receiver got {} of {n} requests: {r:?}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hooks_ctx(name: &str) -> Ctx {
    let mut ctx = Ctx::new(name);
    ctx.set("JOBMILL_WEBHOOK_ALLOW", "127.0.0.1")
        .set("JOBMILL_WEBHOOK_RETRY_BASE", "100ms")
        .set("JOBMILL_WEBHOOK_TIMEOUT", "5s");
    ctx
}

fn body_of(record: &Value) -> Value {
    serde_json::from_str(record["body"].as_str().unwrap()).unwrap()
}

/// The key's signing secret for `callback_url` deliveries.
async fn tenant_secret(api: &Api, key: &str) -> String {
    api.get("/v1/webhooks/secret", key).await.body["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Poll a JSON answer until `done` holds.
async fn wait_until(api: &Api, path: &str, key: &str, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + LIMIT;
    loop {
        let a = api.get(path, key).await;
        if a.status == 200 && done(&a.body) {
            return a.body;
        }
        assert!(Instant::now() < end, "{path} never got there: {}", a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_verifies_with_the_reference_library_including_during_rotation() {
    let ctx = hooks_ctx("hooks_sign");
    let api = ctx.api().await;
    let _worker = ctx.worker();

    let secret = api.get("/v1/webhooks/secret", ALICE).await;
    assert_eq!(secret.status, 200, "{}", secret.body);
    let s1 = secret.body["secret"].as_str().unwrap().to_string();
    assert!(s1.starts_with("whsec_"), "{s1}");
    // Per tenant: bob has another secret.
    let bob = api.get("/v1/webhooks/secret", BOB).await;
    assert_ne!(bob.body["secret"], secret.body["secret"]);

    // A registered endpoint for failures only, with its own secret.
    let ep_rx = Receiver::start(&[], &[]);
    let ep = api
        .post(
            "/v1/webhooks",
            ALICE,
            json!({"url": ep_rx.url("/ep"), "events": ["job.failed"]}),
        )
        .await;
    assert_eq!(ep.status, 201, "{}", ep.body);
    let ep_id = ep.body["id"].as_str().unwrap().to_string();
    let ep_secret = ep.body["secret"].as_str().unwrap().to_string();
    ep_rx.set_secrets(&[&ep_secret]);
    let listed = api.get("/v1/webhooks", ALICE).await;
    assert_eq!(listed.body["webhooks"][0]["id"], ep_id.as_str());
    assert!(
        !listed.body.to_string().contains("whsec_"),
        "{}",
        listed.body
    );
    let shown = api.get(&format!("/v1/webhooks/{ep_id}"), ALICE).await;
    assert!(!shown.body.to_string().contains("whsec_"), "{}", shown.body);
    assert_eq!(
        api.get(&format!("/v1/webhooks/{ep_id}"), BOB).await.status,
        404
    );

    // 1. A succeeded job with a callback_url: signed with the tenant secret.
    let rx = Receiver::start(&[&s1], &[]);
    let id = api
        .submit(
            ALICE,
            json!({"kind": "noop", "args": {"x": 1}, "callback_url": rx.url("/cb")}),
        )
        .await;
    let r = rx.wait_records(1).await;
    assert_eq!(r[0]["verified_by"], json!([0]), "{}", r[0]);
    let body = body_of(&r[0]);
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["state"], "succeeded");
    assert_eq!(body["data"]["result"], json!({"x": 1}));
    assert!(body["timestamp"].is_string());
    assert!(r[0]["headers"]["webhook-id"]
        .as_str()
        .unwrap()
        .starts_with("evt_"));
    assert!(!r[0]["body"].as_str().unwrap().contains("whsec_"));
    // The job view shows the callback URL but no secret.
    let job = api.get(&format!("/v1/jobs/{id}"), ALICE).await;
    assert_eq!(job.body["callback_url"], rx.url("/cb").as_str());
    assert!(!job.body.to_string().contains("whsec_"));

    // 2. A failed job: the callback and the endpoint both get it, each with its own secret.
    let failed = api
        .submit(
            ALICE,
            json!({"kind": "fail", "args": {"times": 1, "mode": "permanent"},
                   "callback_url": rx.url("/cb")}),
        )
        .await;
    let r = rx.wait_records(2).await;
    assert_eq!(body_of(&r[1])["type"], "job.failed");
    assert_eq!(r[1]["verified_by"], json!([0]), "{}", r[1]);
    let e = ep_rx.wait_records(1).await;
    assert_eq!(e[0]["verified_by"], json!([0]), "{}", e[0]);
    assert_eq!(body_of(&e[0])["data"]["id"], failed.as_str());
    assert_eq!(body_of(&e[0])["type"], "job.failed");
    // Same event, same webhook-id, whichever target.
    assert_eq!(e[0]["headers"]["webhook-id"], r[1]["headers"]["webhook-id"]);

    // 3. Rotate the tenant secret: deliveries carry both signatures, and each verifies.
    let rotated = api
        .post("/v1/webhooks/secret/rotate", ALICE, json!({}))
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let s2 = rotated.body["secret"].as_str().unwrap().to_string();
    assert_ne!(s1, s2);
    assert!(rotated.body["previous_secret_valid_until"].is_string());
    rx.set_secrets(&[&s1, &s2]);
    api.submit(
        ALICE,
        json!({"kind": "noop", "callback_url": rx.url("/cb")}),
    )
    .await;
    let r = rx.wait_records(3).await;
    assert_eq!(r[2]["verified_by"], json!([0, 1]), "{}", r[2]);
    assert_eq!(
        r[2]["headers"]["webhook-signature"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    // The new secret alone verifies too (a receiver that already switched).
    rx.set_secrets(&[&s2]);
    api.submit(
        ALICE,
        json!({"kind": "noop", "callback_url": rx.url("/cb")}),
    )
    .await;
    let r = rx.wait_records(4).await;
    assert_eq!(r[3]["verified_by"], json!([0]), "{}", r[3]);

    // 4. Rotate the endpoint's secret: both signatures again.
    let rot = api
        .post(
            &format!("/v1/webhooks/{ep_id}/secret/rotate"),
            ALICE,
            json!({}),
        )
        .await;
    assert_eq!(rot.status, 200, "{}", rot.body);
    let ep_secret2 = rot.body["secret"].as_str().unwrap().to_string();
    ep_rx.set_secrets(&[&ep_secret, &ep_secret2]);
    api.submit(
        ALICE,
        json!({"kind": "fail", "args": {"times": 1, "mode": "permanent"}}),
    )
    .await;
    let e = ep_rx.wait_records(2).await;
    assert_eq!(e[1]["verified_by"], json!([0, 1]), "{}", e[1]);

    // Every request any receiver got verified.
    for rec in rx.records().iter().chain(ep_rx.records().iter()) {
        assert!(
            rec["error"].is_null() || rec["verified_by"] != json!([]),
            "{rec}"
        );
        assert_ne!(rec["verified_by"], json!([]), "{rec}");
    }
    // Only failures went to the failures-only endpoint.
    assert_eq!(ep_rx.records().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_each_retry_once_with_the_same_webhook_id_then_replay() {
    let ctx = hooks_ctx("hooks_retry");
    let api = ctx.api().await;
    let _worker = ctx.worker();
    let secret = tenant_secret(&api, ALICE).await;
    let rx = Receiver::start(&[&secret], &["--fail-first", "3", "--fail-status", "500"]);
    let id = api
        .submit(
            ALICE,
            json!({"kind": "noop", "callback_url": rx.url("/hook")}),
        )
        .await;

    let path = format!("/v1/jobs/{id}/deliveries");
    let list = wait_until(&api, &path, ALICE, |b| {
        b["deliveries"][0]["status"] == "delivered"
    })
    .await;
    let d = &list["deliveries"][0];
    assert_eq!(list["deliveries"].as_array().unwrap().len(), 1, "{list}");
    let statuses: Vec<i64> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, vec![500, 500, 500, 200], "{d}");
    for (i, a) in d["attempts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(a["attempt"], i as i64 + 1);
        assert!(a["latency_ms"].as_i64().unwrap() >= 0);
        assert!(a["at"].is_string());
        assert!(a["response"].as_str().unwrap().contains("received"), "{a}");
    }

    // Exactly one request per attempt, all with the same webhook-id, all verified.
    let r = rx.records();
    assert_eq!(r.len(), 4, "{r:?}");
    let webhook_id = d["webhook_id"].as_str().unwrap();
    for rec in &r {
        assert_eq!(rec["headers"]["webhook-id"], webhook_id);
        assert_eq!(rec["verified_by"], json!([0]), "{rec}");
    }
    let answered: Vec<i64> = r.iter().map(|x| x["answered"].as_i64().unwrap()).collect();
    assert_eq!(answered, vec![500, 500, 500, 200]);

    // Replay: the same event (same webhook-id and body) once more.
    let did = d["id"].as_str().unwrap();
    assert_eq!(
        api.post(&format!("/v1/deliveries/{did}/replay"), BOB, json!({}))
            .await
            .status,
        404,
        "another tenant cannot replay it"
    );
    let rep = api
        .post(&format!("/v1/deliveries/{did}/replay"), ALICE, json!({}))
        .await;
    assert_eq!(rep.status, 202, "{}", rep.body);
    let r = rx.wait_records(5).await;
    assert_eq!(r[4]["headers"]["webhook-id"], webhook_id);
    assert_eq!(r[4]["body"], r[0]["body"]);
    assert_eq!(r[4]["verified_by"], json!([0]));
    let one = wait_until(&api, &format!("/v1/deliveries/{did}"), ALICE, |b| {
        b["status"] == "delivered" && b["attempts"].as_array().unwrap().len() == 5
    })
    .await;
    assert_eq!(one["attempts"][4]["status"], 200);
    assert_eq!(api.get(&path, BOB).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_which_can_be_enabled_again() {
    let ctx = hooks_ctx("hooks_gone");
    let api = ctx.api().await;
    let _worker = ctx.worker();
    let rx = Receiver::start(&[], &["--status", "410"]);
    let ep = api
        .post("/v1/webhooks", ALICE, json!({"url": rx.url("/gone")}))
        .await;
    assert_eq!(ep.status, 201, "{}", ep.body);
    assert_eq!(
        ep.body["events"],
        json!(["job.succeeded", "job.failed", "job.cancelled"])
    );
    let ep_id = ep.body["id"].as_str().unwrap().to_string();
    rx.set_secrets(&[ep.body["secret"].as_str().unwrap()]);

    // A cancelled waiting job is an event too.
    let id = api
        .submit(ALICE, json!({"kind": "noop", "delay_ms": 60_000}))
        .await;
    let c = api
        .post(&format!("/v1/jobs/{id}/cancel"), ALICE, json!({}))
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let r = rx.wait_records(1).await;
    assert_eq!(body_of(&r[0])["type"], "job.cancelled");
    assert_eq!(r[0]["verified_by"], json!([0]));

    let shown = wait_until(&api, &format!("/v1/webhooks/{ep_id}"), ALICE, |b| {
        b["enabled"] == false
    })
    .await;
    assert!(
        shown["disabled_reason"].as_str().unwrap().contains("410"),
        "{shown}"
    );
    let ds = wait_until(
        &api,
        &format!("/v1/webhooks/{ep_id}/deliveries"),
        ALICE,
        |b| b["deliveries"][0]["status"] == "gone",
    )
    .await;
    assert_eq!(ds["deliveries"][0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(ds["deliveries"][0]["attempts"][0]["status"], 410);
    // 410 stops at once: no retry reached the receiver.
    assert_eq!(rx.records().len(), 1);

    let en = api
        .post(&format!("/v1/webhooks/{ep_id}/enable"), ALICE, json!({}))
        .await;
    assert_eq!(en.status, 200, "{}", en.body);
    assert_eq!(en.body["enabled"], true);
    assert_eq!(
        api.post(&format!("/v1/webhooks/{ep_id}/enable"), BOB, json!({}))
            .await
            .status,
        404
    );
    // Enabled again: the next event reaches it (and is answered 410 again).
    api.submit(ALICE, json!({"kind": "noop"})).await;
    rx.wait_records(2).await;

    let del = api
        .raw(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{ep_id}"),
            Some(ALICE),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, 204);
    assert_eq!(
        api.get(&format!("/v1/webhooks/{ep_id}"), ALICE)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_unless_allow_listed() {
    let mut ctx = Ctx::new("hooks_ssrf");
    // The guard on its own: no destination list narrows what it has to refuse.
    ctx.unset("JOBMILL_WEBHOOK_DESTINATIONS")
        .set("JOBMILL_WEBHOOK_RETRY_BASE", "100ms");
    let api = ctx.api().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.10/",
        "http://[::1]:8080/",
        "http://[fd00::1]/",
        "http://localhost:9/",
        // IPv4 inside IPv6, and the blocks of the IANA special-purpose registries.
        "http://[2002:7f00:1::]/",             // 6to4 of 127.0.0.1
        "http://[::ffff:0:7f00:1]/",           // IPv4-translated 127.0.0.1
        "http://[100::1]/",                    // discard-only
        "http://[64:ff9b::a9fe:a9fe]/",        // NAT64 of 169.254.169.254
        "http://[2001:0:101:101::80ff:fffe]/", // Teredo, client 127.0.0.1
        "http://[::7f00:1]/",                  // IPv4-compatible 127.0.0.1
        "http://100.64.0.1/",                  // shared address space
        "http://198.18.0.1/",                  // benchmarking
        "http://240.0.0.1/",                   // reserved
    ] {
        let a = api
            .post(
                "/v1/jobs",
                ALICE,
                json!({"kind": "noop", "callback_url": url}),
            )
            .await;
        assert_eq!(a.status, 422, "{url}: {}", a.body);
        assert_eq!(a.code(), "callback_url_not_allowed", "{url}: {}", a.body);
        let w = api.post("/v1/webhooks", ALICE, json!({"url": url})).await;
        assert_eq!(w.status, 422, "{url}: {}", w.body);
        assert_eq!(w.code(), "callback_url_not_allowed", "{url}");
    }
    for url in [
        "ftp://example.com/",
        "https://user:pw@example.com/",
        "nonsense",
        "https://1.1.1.1:0/",
        "http://host:00080/",
        "http://@127.0.0.1/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http:127.0.0.1/",
    ] {
        let a = api
            .post(
                "/v1/jobs",
                ALICE,
                json!({"kind": "noop", "callback_url": url}),
            )
            .await;
        assert_eq!(a.status, 422, "{url}: {}", a.body);
        assert_eq!(a.code(), "invalid_callback_url", "{url}: {}", a.body);
        let w = api.post("/v1/webhooks", ALICE, json!({"url": url})).await;
        assert_eq!(w.status, 422, "{url}: {}", w.body);
        assert_eq!(w.code(), "invalid_callback_url", "{url}: {}", w.body);
    }
    let bad_events = api
        .post(
            "/v1/webhooks",
            ALICE,
            json!({"url": "https://93.184.216.34/", "events": ["job.exploded"]}),
        )
        .await;
    assert_eq!(bad_events.code(), "invalid_events");
    // A refused batch stores nothing.
    let b = api
        .post(
            "/v1/jobs/batch",
            ALICE,
            json!({"jobs": [{"kind": "noop"}, {"kind": "noop", "callback_url": "http://127.0.0.1/"}]}),
        )
        .await;
    assert_eq!(b.status, 422, "{}", b.body);
    let list = api.get("/v1/jobs", ALICE).await;
    assert_eq!(list.body["jobs"], json!([]), "{}", list.body);
    let hooks = api.get("/v1/webhooks", ALICE).await;
    assert_eq!(hooks.body["webhooks"], json!([]), "{}", hooks.body);

    // Allow-listed, the same URL is accepted ...
    let rx = Receiver::start(&[], &[]);
    ctx.set("JOBMILL_WEBHOOK_ALLOW", "127.0.0.1");
    let allowed_api = ctx.api().await;
    let id = allowed_api
        .submit(ALICE, json!({"kind": "noop", "callback_url": rx.url("/x")}))
        .await;
    // ... but a worker without the allow-list refuses it again at send time.
    ctx.set("JOBMILL_WEBHOOK_ALLOW", "");
    let _worker = ctx.worker();
    let ds = wait_until(
        &allowed_api,
        &format!("/v1/jobs/{id}/deliveries"),
        ALICE,
        |b| b["deliveries"][0]["status"] == "failed",
    )
    .await;
    let err = ds["deliveries"][0]["attempts"][0]["error"]
        .as_str()
        .unwrap();
    assert!(err.contains("127.0.0.1"), "{ds}");
    assert!(rx.records().is_empty(), "nothing was sent");
}

/// `JOBMILL_WEBHOOK_DESTINATIONS`: a loopback port that the allow-list lets through but the
/// destination list does not name is refused at submit, for callbacks, batches and endpoints;
/// and a worker whose list no longer names a stored target refuses to send to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_destinations_are_reached() {
    let rx = Receiver::start(&[], &[]);
    let other = free_port();
    let mut ctx = hooks_ctx("hooks_dest");
    ctx.set(
        "JOBMILL_WEBHOOK_DESTINATIONS",
        &format!("127.0.0.1:{}", rx.port),
    );
    let api = ctx.api().await;

    let elsewhere = format!("http://127.0.0.1:{other}/x");
    for url in [
        elsewhere.as_str(),
        // Loopback by another name: it resolves to 127.0.0.1, but on an unlisted port.
        &format!("http://localhost:{other}/x"),
    ] {
        let a = api
            .post(
                "/v1/jobs",
                ALICE,
                json!({"kind": "noop", "callback_url": url}),
            )
            .await;
        assert_eq!(a.status, 422, "{url}: {}", a.body);
        assert_eq!(a.code(), "destination_not_allowed", "{url}: {}", a.body);
        let w = api.post("/v1/webhooks", ALICE, json!({"url": url})).await;
        assert_eq!(w.status, 422, "{url}: {}", w.body);
        assert_eq!(w.code(), "destination_not_allowed", "{url}: {}", w.body);
    }
    let b = api
        .post(
            "/v1/jobs/batch",
            ALICE,
            json!({"jobs": [{"kind": "noop", "callback_url": rx.url("/ok")},
                            {"kind": "noop", "callback_url": elsewhere}]}),
        )
        .await;
    assert_eq!(b.status, 422, "{}", b.body);
    assert_eq!(b.code(), "destination_not_allowed", "{}", b.body);
    assert!(b.body.to_string().contains("job 1"), "{}", b.body);
    assert_eq!(api.get("/v1/jobs", ALICE).await.body["jobs"], json!([]));
    assert_eq!(
        api.get("/v1/webhooks", ALICE).await.body["webhooks"],
        json!([])
    );

    // The listed destination is accepted, as a callback and as an endpoint ...
    let ep = api
        .post("/v1/webhooks", ALICE, json!({"url": rx.url("/ep")}))
        .await;
    assert_eq!(ep.status, 201, "{}", ep.body);
    let id = api
        .submit(
            ALICE,
            json!({"kind": "noop", "callback_url": rx.url("/cb")}),
        )
        .await;
    // ... but a worker whose list names another port refuses both at send time, for good.
    ctx.set(
        "JOBMILL_WEBHOOK_DESTINATIONS",
        &format!("127.0.0.1:{other}"),
    );
    let _worker = ctx.worker();
    let ds = wait_until(&api, &format!("/v1/jobs/{id}/deliveries"), ALICE, |b| {
        let d = b["deliveries"].as_array().cloned().unwrap_or_default();
        d.len() == 2 && d.iter().all(|d| d["status"] == "failed")
    })
    .await;
    for d in ds["deliveries"].as_array().unwrap() {
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "not retried: {d}");
        let err = attempts[0]["error"].as_str().unwrap();
        assert!(err.contains("JOBMILL_WEBHOOK_DESTINATIONS"), "{d}");
    }
    assert!(rx.records().is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_a_job_ends_still_delivers_the_callback() {
    let ctx = hooks_ctx("hooks_kill");
    let api = ctx.api().await;
    let store = ctx.store().await;
    let secret = tenant_secret(&api, ALICE).await;
    let rx = Receiver::start(&[&secret], &[]);
    let mut doomed = ctx.worker_process(&[]);
    let id = api
        .submit(
            ALICE,
            json!({"kind": "sleep", "args": {"ms": 300}, "callback_url": rx.url("/k")}),
        )
        .await;
    // Kill the worker the moment MongoDB shows the job finished.
    let end = Instant::now() + LIMIT;
    loop {
        let job = store.get(&id, None).await.unwrap().unwrap();
        if job.state.is_terminal() {
            break;
        }
        assert!(Instant::now() < end, "job never finished: {:?}", job.state);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    doomed.signal(SIGKILL);
    doomed
        .wait_exit(Duration::from_secs(10))
        .expect("worker died");
    let job = store.get(&id, None).await.unwrap().unwrap();
    assert_eq!(job.state, jobmill::JobState::Succeeded);
    assert!(
        job.outbox.is_some(),
        "the terminal write carries the outbox"
    );
    eprintln!(
        "killed with the outbox {}",
        if job.outbox.as_ref().unwrap().pending == 1 {
            "still pending"
        } else {
            "already dispatched"
        }
    );

    let _survivor = ctx.worker_process(&[]);
    let r = rx.wait_records(1).await;
    // At least once: every copy is the same event, and each verifies.
    for rec in &r {
        assert_eq!(rec["headers"]["webhook-id"], r[0]["headers"]["webhook-id"]);
        assert_eq!(rec["verified_by"], json!([0]), "{rec}");
        assert_eq!(body_of(rec)["data"]["id"], id.as_str());
    }
    wait_until(&api, &format!("/v1/jobs/{id}/deliveries"), ALICE, |b| {
        b["deliveries"][0]["status"] == "delivered"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_keeps_failing_is_disabled_and_the_api_documents_webhooks() {
    let mut ctx = hooks_ctx("hooks_disable");
    ctx.set("JOBMILL_WEBHOOK_DISABLE_AFTER", "300ms");
    let api = ctx.api().await;
    let _worker = ctx.worker();
    let rx = Receiver::start(&[], &["--fail-first", "1000", "--fail-status", "503"]);
    let ep = api
        .post("/v1/webhooks", ALICE, json!({"url": rx.url("/down")}))
        .await;
    assert_eq!(ep.status, 201, "{}", ep.body);
    let ep_id = ep.body["id"].as_str().unwrap().to_string();
    rx.set_secrets(&[ep.body["secret"].as_str().unwrap()]);
    api.submit(ALICE, json!({"kind": "noop"})).await;

    let shown = wait_until(&api, &format!("/v1/webhooks/{ep_id}"), ALICE, |b| {
        b["enabled"] == false
    })
    .await;
    assert!(
        shown["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("without a success"),
        "{shown}"
    );
    let ds = wait_until(
        &api,
        &format!("/v1/webhooks/{ep_id}/deliveries"),
        ALICE,
        |b| b["deliveries"][0]["status"] == "failed",
    )
    .await;
    let attempts = ds["deliveries"][0]["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{ds}");
    assert!(attempts.iter().all(|a| a["status"] == 503), "{ds}");
    // Every attempt the receiver saw is logged, and each verified.
    let r = rx.records();
    assert_eq!(r.len(), attempts.len());
    assert!(r.iter().all(|x| x["verified_by"] == json!([0])));

    let doc = api.get("/openapi.json", ALICE).await;
    for path in [
        "/v1/webhooks",
        "/v1/webhooks/{id}",
        "/v1/webhooks/{id}/enable",
        "/v1/webhooks/{id}/deliveries",
        "/v1/webhooks/{id}/secret/rotate",
        "/v1/webhooks/secret",
        "/v1/webhooks/secret/rotate",
        "/v1/jobs/{id}/deliveries",
        "/v1/deliveries/{id}",
        "/v1/deliveries/{id}/replay",
    ] {
        assert!(
            doc.body["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    assert_eq!(
        api.get("/v1/webhooks/not-an-id!", ALICE).await.code(),
        "invalid_id"
    );
}

/// The event-time in ms carried in a `webhook-id` (`evt_<job>_<ms>`, `p` appended for
/// progress events).
fn event_ms(record: &Value) -> i64 {
    let id = record["headers"]["webhook-id"].as_str().unwrap();
    let ms = id.rsplit('_').next().unwrap().trim_end_matches('p');
    ms.parse().unwrap_or_else(|_| panic!("webhook-id {id}"))
}

/// Endpoints are asked when a job ends, not when it was submitted: ones registered while a job
/// runs still hear how it ended. `job.progress` goes only to endpoints that subscribe to it, at
/// most once per `JOBMILL_WEBHOOK_PROGRESS_EVERY` per job, and never to a `callback_url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_opt_in_and_rate_limited_and_late_endpoints_still_hear() {
    let mut ctx = hooks_ctx("hooks_progress");
    ctx.set("JOBMILL_WEBHOOK_PROGRESS_EVERY", "1s");
    let api = ctx.api().await;
    let _worker = ctx.worker();
    let tenant_secret = tenant_secret(&api, ALICE).await;
    let cb_rx = Receiver::start(&[&tenant_secret], &[]);

    // Both submitted while alice has no endpoint at all; 50 progress reports over 5 s each.
    let sleep = json!({"ms": 5000, "steps": 50});
    let plain = api
        .submit(ALICE, json!({"kind": "sleep", "args": sleep}))
        .await;
    let with_cb = api
        .submit(
            ALICE,
            json!({"kind": "sleep", "args": sleep, "callback_url": cb_rx.url("/cb")}),
        )
        .await;
    api.wait_state(ALICE, &plain, "running", LIMIT).await;
    api.wait_state(ALICE, &with_cb, "running", LIMIT).await;

    // Registered while they run: one endpoint for progress and successes, one with the default
    // events (the terminal ones).
    let prog_rx = Receiver::start(&[], &[]);
    let ep = api
        .post(
            "/v1/webhooks",
            ALICE,
            json!({"url": prog_rx.url("/p"), "events": ["job.progress", "job.succeeded"]}),
        )
        .await;
    assert_eq!(ep.status, 201, "{}", ep.body);
    prog_rx.set_secrets(&[ep.body["secret"].as_str().unwrap()]);
    let end_rx = Receiver::start(&[], &[]);
    let ep2 = api
        .post("/v1/webhooks", ALICE, json!({"url": end_rx.url("/e")}))
        .await;
    assert_eq!(ep2.status, 201, "{}", ep2.body);
    end_rx.set_secrets(&[ep2.body["secret"].as_str().unwrap()]);
    assert_eq!(
        ep2.body["events"],
        json!(["job.succeeded", "job.failed", "job.cancelled"])
    );
    // The premise: both endpoints exist before either job ends.
    let shown = api.get(&format!("/v1/jobs/{plain}"), ALICE).await;
    assert_eq!(shown.body["state"], "running", "{}", shown.body);

    api.wait_terminal(ALICE, &plain, LIMIT).await;
    api.wait_terminal(ALICE, &with_cb, LIMIT).await;

    // The terminal-events endpoint: both successes, nothing else.
    let ends = end_rx.wait_records(2).await;
    let mut ids: Vec<String> = ends
        .iter()
        .map(|r| {
            assert_eq!(r["verified_by"], json!([0]), "{r}");
            let b = body_of(r);
            assert_eq!(b["type"], "job.succeeded", "{b}");
            b["data"]["id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let mut want = vec![plain.clone(), with_cb.clone()];
    want.sort();
    assert_eq!(ids, want);

    // The progress endpoint: both successes, and progress of both jobs, spaced by the limit.
    let end = Instant::now() + LIMIT;
    let records = loop {
        let r = prog_rx.records();
        let done = r
            .iter()
            .filter(|r| body_of(r)["type"] == "job.succeeded")
            .count();
        if done == 2 {
            break r;
        }
        assert!(Instant::now() < end, "progress receiver got {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for job in [&plain, &with_cb] {
        let progress: Vec<&Value> = records
            .iter()
            .filter(|r| {
                let b = body_of(r);
                b["type"] == "job.progress" && b["data"]["id"] == job.as_str()
            })
            .collect();
        assert!(!progress.is_empty(), "no progress event for {job}");
        // 5 s of running, at most one event per second.
        assert!(progress.len() <= 6, "{} progress events", progress.len());
        let mut times: Vec<i64> = progress.iter().map(|r| event_ms(r)).collect();
        times.sort();
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= 900, "events too close: {times:?}");
        }
        for r in &progress {
            assert_eq!(r["verified_by"], json!([0]), "{r}");
            let b = body_of(r);
            assert_eq!(b["data"]["state"], "running", "{b}");
            assert_eq!(b["data"]["progress"]["total"], 5000, "{b}");
        }
    }

    // The job's own callback_url heard only how it ended.
    let cb = cb_rx.wait_records(1).await;
    assert_eq!(body_of(&cb[0])["type"], "job.succeeded");
    assert_eq!(cb[0]["verified_by"], json!([0]));
    let ds = api
        .get(&format!("/v1/jobs/{with_cb}/deliveries"), ALICE)
        .await;
    let to_cb: Vec<&Value> = ds.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["endpoint_id"].is_null())
        .collect();
    assert_eq!(to_cb.len(), 1, "{}", ds.body);
    assert_eq!(to_cb[0]["event"], "job.succeeded");

    // Unknown event types are refused with the list of known ones.
    let bad = api
        .post(
            "/v1/webhooks",
            ALICE,
            json!({"url": prog_rx.url("/x"), "events": ["job.progres"]}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.code(), "invalid_events");
    assert!(bad.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("job.progress"));
}

/// A delivery left `pending` by a sending job that ended without recording it (its MongoDB
/// writes failed on every attempt) can still be replayed; one whose job is still retrying
/// cannot (two sends at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_pending_delivery_can_be_replayed() {
    let ctx = hooks_ctx("hooks_orphan");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let secret = tenant_secret(&api, ALICE).await;
    let rx = Receiver::start(&[&secret], &[]);
    let id = api
        .submit(
            ALICE,
            json!({"kind": "noop", "callback_url": rx.url("/cb")}),
        )
        .await;
    let first = rx.wait_records(1).await;
    let ds = wait_until(&api, &format!("/v1/jobs/{id}/deliveries"), ALICE, |b| {
        b["deliveries"][0]["status"] == "delivered"
    })
    .await;
    let dlv = ds["deliveries"][0]["id"].as_str().unwrap().to_string();

    // Simulate the lost status write: the delivery says pending, its sending job has ended.
    let store = ctx.store().await;
    store
        .database()
        .collection::<mongodb::bson::Document>("webhook_deliveries")
        .update_one(
            mongodb::bson::doc! { "_id": &dlv },
            mongodb::bson::doc! { "$set": { "status": "pending" } },
        )
        .await
        .unwrap();
    let r = api
        .post(&format!("/v1/deliveries/{dlv}/replay"), ALICE, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let again = rx.wait_records(2).await;
    assert_eq!(
        again[1]["headers"]["webhook-id"],
        first[0]["headers"]["webhook-id"]
    );
    assert_eq!(again[1]["verified_by"], json!([0]));

    // Pending while its sending job is still retrying: refused, as two sends at once would be.
    let failing = Receiver::start(&[&secret], &["--status", "500"]);
    let id2 = api
        .submit(
            ALICE,
            json!({"kind": "noop", "callback_url": failing.url("/cb")}),
        )
        .await;
    let ds = wait_until(&api, &format!("/v1/jobs/{id2}/deliveries"), ALICE, |b| {
        b["deliveries"][0]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(ds["deliveries"][0]["status"], "pending", "{ds}");
    let dlv2 = ds["deliveries"][0]["id"].as_str().unwrap();
    let r = api
        .post(&format!("/v1/deliveries/{dlv2}/replay"), ALICE, json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.code(), "delivery_pending");
    drop(worker);
}
