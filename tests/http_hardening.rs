//! What a hostile client found: Range values at the edge of u64, HTTP timeouts (idle
//! connections, trickled headers, bodies that never finish) and the requests they must not cut
//! (slow part uploads, long-polls), the Bearer scheme's case, and non-UTF-8 JSON.
//!
//! Timeouts are checked by behaviour on raw sockets (the connection is closed, or an error is
//! answered), never by timing: every bound below only turns a hang into a failure.

use std::time::Duration;

use futures::StreamExt as _;
use jobmill_tests::{Ctx, ALICE};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for anything that should happen within seconds.
const HANG: Duration = Duration::from_secs(30);

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Read until the peer closes the connection (or HANG passes: then panic). Returns what was
/// received.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(HANG, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the server kept the connection open for {HANG:?}"
    );
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_ends_past_u64_are_clamped() {
    let ctx = Ctx::new("range");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&bytes));
    let a = api
        .post(
            "/v1/uploads",
            ALICE,
            json!({"filename": "r.bin", "size": bytes.len(), "sha256": sha}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_string();
    let p = api
        .raw(
            Method::PUT,
            &format!("/v1/uploads/{id}/parts/0"),
            Some(ALICE),
            Some(("application/octet-stream", bytes.clone())),
            &[],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let c = api
        .post(&format!("/v1/uploads/{id}/complete"), ALICE, json!({}))
        .await;
    assert_eq!(c.status, 202, "{}", c.body);
    let j = api
        .wait_terminal(ALICE, c.body["id"].as_str().unwrap(), HANG)
        .await;
    assert_eq!(j["state"], "succeeded", "{j}");

    let max = u64::MAX;
    for (range, from) in [
        (format!("bytes=0-{max}"), 0usize),
        (format!("bytes=5-{max}"), 5),
        ("bytes=995-99999999999999999999999".to_string(), 995),
        ("bytes=-99999999999999999999999".to_string(), 0),
    ] {
        for method in [Method::GET, Method::HEAD] {
            let res = api
                .http
                .request(method.clone(), format!("{}/v1/files/{id}", api.base))
                .bearer_auth(ALICE)
                .header("range", &range)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {range}: {e}"));
            assert_eq!(res.status().as_u16(), 206, "{method} {range}");
            let h = res.headers().clone();
            assert_eq!(
                h["content-range"],
                format!("bytes {from}-999/1000").as_str(),
                "{method} {range}"
            );
            assert_eq!(
                h["content-length"],
                (1000 - from).to_string().as_str(),
                "{method} {range}"
            );
            let body = res.bytes().await.unwrap();
            if method == Method::GET {
                assert!(body[..] == bytes[from..], "{range}");
            } else {
                assert!(body.is_empty());
            }
        }
    }
    let res = api
        .http
        .get(format!("{}/v1/files/{id}", api.base))
        .bearer_auth(ALICE)
        .header("range", format!("bytes={max}-{max}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 416);
    assert_eq!(res.headers()["content-range"], "bytes */1000");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive_and_non_utf8_json_is_malformed() {
    let ctx = Ctx::new("authcase");
    let api = ctx.api().await;
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let auth = format!("{scheme} {ALICE}");
        let a = api
            .raw(
                Method::GET,
                "/v1/jobs",
                None,
                None,
                &[("authorization", &auth)],
            )
            .await;
        assert_eq!(a.status, 200, "{scheme}: {}", a.body);
    }
    let a = api
        .raw(
            Method::GET,
            "/v1/jobs",
            None,
            None,
            &[("authorization", &format!("Basic {ALICE}"))],
        )
        .await;
    assert_eq!(a.status, 401);

    let a = api
        .raw(
            Method::POST,
            "/v1/jobs",
            Some(ALICE),
            Some((
                "application/json",
                b"{\"kind\": \"noop\", \"queue\": \"\xff\xfe\"}".to_vec(),
            )),
            &[],
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.code(), "malformed_json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let mut ctx = Ctx::new("idle");
    ctx.set("JOBMILL_HTTP_IDLE_TIMEOUT", "1s");
    let api = ctx.api().await;
    // A connection that never sends anything.
    let mut s = TcpStream::connect(addr(&api.base)).await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(!got.contains(" 200 "), "{got}");

    // A kept-alive connection after one answered request.
    let mut s = TcpStream::connect(addr(&api.base)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_off() {
    let mut ctx = Ctx::new("slowhead");
    ctx.set("JOBMILL_HTTP_HEADER_TIMEOUT", "1s");
    let api = ctx.api().await;
    let s = TcpStream::connect(addr(&api.base)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "GET /v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ALICE}\r\nx-padding: {}\r\n\r\n",
        "p".repeat(200)
    );
    // One byte every 300 ms: the whole head would take over a minute.
    let trickle = tokio::spawn(async move {
        for b in head.bytes() {
            if wr.write_all(&[b]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        true
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(HANG, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickled head held the connection");
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains(" 200 "), "answered a trickled head: {got}");
    trickle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_never_finish_are_cut_off() {
    let mut ctx = Ctx::new("slowbody");
    ctx.set("JOBMILL_HTTP_BODY_TIMEOUT", "2s");
    let api = ctx.api().await;
    // A JSON body: announced 100 bytes, 10 sent, then nothing.
    let mut s = TcpStream::connect(addr(&api.base)).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ALICE}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"kind\": "
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 408"), "expected 408: {got}");
    assert!(got.contains("body_timeout"), "{got}");

    // A part upload that stalls half-way.
    let a = api
        .post("/v1/uploads", ALICE, json!({"filename": "stall.bin"}))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap();
    let mut s = TcpStream::connect(addr(&api.base)).await.unwrap();
    let head = format!(
        "PUT /v1/uploads/{id}/parts/0 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ALICE}\r\ncontent-length: 100000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[7u8; 5000]).await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 408"), "expected 408: {got}");
    assert!(got.contains("body_timeout"), "{got}");
    let up = api.get(&format!("/v1/uploads/{id}"), ALICE).await;
    assert_eq!(up.body["parts"], json!([]), "a cut-off part is not kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_full_size_part_and_long_polls_are_not_cut() {
    let mut ctx = Ctx::new("slowpart");
    ctx.set("JOBMILL_HTTP_HEADER_TIMEOUT", "1s")
        .set("JOBMILL_HTTP_IDLE_TIMEOUT", "1s")
        .set("JOBMILL_HTTP_BODY_TIMEOUT", "60s");
    let api = ctx.api().await;
    let a = api
        .post("/v1/uploads", ALICE, json!({"filename": "big.bin"}))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let part_size = a.body["part_size"].as_u64().unwrap() as usize;
    assert_eq!(part_size, 8 * 1024 * 1024);
    let id = a.body["id"].as_str().unwrap().to_string();
    let bytes: Vec<u8> = (0..part_size).map(|i| (i * 7 % 253) as u8).collect();
    let sha = hex::encode(Sha256::digest(&bytes));
    // Eight pieces with pauses longer than the header and idle timeouts in between.
    let pieces: Vec<bytes::Bytes> = bytes
        .chunks(part_size / 8)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let stream = futures::stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        Ok::<_, std::io::Error>(p)
    });
    let res = api
        .http
        .put(format!("{}/v1/uploads/{id}/parts/0", api.base))
        .bearer_auth(ALICE)
        .header("content-length", part_size.to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("slow part upload");
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["size"], part_size);
    assert_eq!(body["sha256"], sha.as_str());

    // A long-poll longer than the idle timeout is answered, not cut.
    let job = api
        .submit(ALICE, json!({"kind": "noop", "delay_ms": 3_600_000}))
        .await;
    let a = api.get(&format!("/v1/jobs/{job}?wait=3"), ALICE).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["state"], "scheduled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let mut ctx = Ctx::new("connlimit");
    ctx.set("JOBMILL_HTTP_MAX_CONNECTIONS", "1")
        .set("JOBMILL_HTTP_IDLE_TIMEOUT", "60s")
        .set("JOBMILL_HTTP_HEADER_TIMEOUT", "60s");
    let api = ctx.api().await;
    // The one slot, held by a connection that sends nothing.
    let holder = TcpStream::connect(addr(&api.base)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = format!("{}/healthz", api.base);
    let http = api.http.clone();
    let waiting = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served beyond JOBMILL_HTTP_MAX_CONNECTIONS=1"
    );
    drop(holder);
    let status = tokio::time::timeout(HANG, waiting)
        .await
        .expect("the waiting request was never served")
        .unwrap()
        .expect("request");
    assert_eq!(status.as_u16(), 200);
}
