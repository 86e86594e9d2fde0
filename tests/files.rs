//! Uploads in parts, file assembly (also across a worker SIGKILL), downloads with ranges, and
//! tenant isolation of uploads and files.

use std::time::{Duration, Instant};

use base64::Engine as _;
use jobmill_tests::{Api, Ctx, ALICE, BOB, SIGKILL};
use md5::Digest as _;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

const LIMIT: Duration = Duration::from_secs(180);

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn put_part(
    api: &Api,
    key: &str,
    id: &str,
    n: usize,
    bytes: &[u8],
    headers: &[(&str, &str)],
) -> jobmill_tests::Answer {
    api.raw(
        Method::PUT,
        &format!("/v1/uploads/{id}/parts/{n}"),
        Some(key),
        Some(("application/octet-stream", bytes.to_vec())),
        headers,
    )
    .await
}

async fn download(
    api: &Api,
    key: &str,
    id: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = api
        .http
        .get(format!("{}/v1/files/{id}", api.base))
        .bearer_auth(key);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.unwrap().to_vec())
}

/// Upload `bytes` in parts of `part` bytes, in reverse order; returns the upload id.
async fn upload(api: &Api, key: &str, bytes: &[u8], part: usize, sha256: &str) -> String {
    let a = api
        .post(
            "/v1/uploads",
            key,
            json!({"filename": "data.bin", "size": bytes.len(), "sha256": sha256, "content_type": "application/octet-stream"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["part_size"], part);
    let id = a.body["id"].as_str().unwrap().to_string();
    let parts: Vec<&[u8]> = bytes.chunks(part).collect();
    for (n, p) in parts.iter().enumerate().rev() {
        let a = put_part(api, key, &id, n, p, &[]).await;
        assert_eq!(a.status, 200, "part {n}: {}", a.body);
        assert_eq!(a.body["sha256"], sha_hex(p));
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_out_of_order_then_download_whole_and_by_ranges() {
    let mut ctx = Ctx::new("upload");
    ctx.set("JOBMILL_UPLOAD_PART_SIZE", "65536");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let bytes = data(3 * 1024 * 1024 + 1234, 7);
    let sha = sha_hex(&bytes);
    let id = upload(&api, ALICE, &bytes, 65536, &sha).await;

    // Checksummed re-sends: right ones are accepted (idempotently), wrong ones are refused and
    // leave the stored part alone.
    let p1 = &bytes[65536..131072];
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(p1));
    let a = put_part(&api, ALICE, &id, 1, p1, &[("content-md5", &md5)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = put_part(
        &api,
        ALICE,
        &id,
        1,
        p1,
        &[("x-content-sha256", &sha_hex(p1))],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = put_part(
        &api,
        ALICE,
        &id,
        1,
        &bytes[..65536],
        &[("content-md5", &md5)],
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.code(), "checksum_mismatch");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Content-MD5 does not match"));
    let a = put_part(
        &api,
        ALICE,
        &id,
        1,
        &bytes[..65536],
        &[("x-content-sha256", &sha_hex(p1)[..])],
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    let a = put_part(
        &api,
        ALICE,
        &id,
        1,
        &bytes[..65536],
        &[("content-md5", "garbage")],
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    // Larger than the part size: refused.
    let a = put_part(&api, ALICE, &id, 2, &data(65537, 1), &[]).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.code(), "payload_too_large");

    let up = api.get(&format!("/v1/uploads/{id}"), ALICE).await;
    assert_eq!(up.status, 200);
    assert_eq!(up.body["bytes_received"], bytes.len());
    assert_eq!(up.body["parts"].as_array().unwrap().len(), 49);
    assert_eq!(up.body["parts"][1]["sha256"], sha_hex(p1));

    // Bob sees none of it.
    assert_eq!(api.get(&format!("/v1/uploads/{id}"), BOB).await.status, 404);
    assert_eq!(put_part(&api, BOB, &id, 0, b"x", &[]).await.status, 404);
    let a = api
        .post(&format!("/v1/uploads/{id}/complete"), BOB, json!({}))
        .await;
    assert_eq!(a.status, 404);

    let a = api
        .post(&format!("/v1/uploads/{id}/complete"), ALICE, json!({}))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["kind"], "file_assembly");
    let job = a.body["id"].as_str().unwrap().to_string();
    let again = api
        .post(&format!("/v1/uploads/{id}/complete"), ALICE, json!({}))
        .await;
    assert_eq!(again.body["id"], job.as_str(), "completion is idempotent");
    let j = api.wait_terminal(ALICE, &job, LIMIT).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"]["sha256"], sha.as_str());
    assert_eq!(j["result"]["size"], bytes.len());
    assert_eq!(j["progress"]["done"], bytes.len());
    let file = j["result"]["file_id"].as_str().unwrap().to_string();
    let a = put_part(&api, ALICE, &id, 0, &bytes[..65536], &[]).await;
    assert_eq!(
        a.status, 409,
        "a completed upload takes no parts: {}",
        a.body
    );

    // Whole.
    let (st, h, body) = download(&api, ALICE, &file, None).await;
    assert_eq!(st, 200);
    assert_eq!(h["content-length"], bytes.len().to_string().as_str());
    assert_eq!(h["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(sha_hex(&body), sha);
    assert!(body == bytes);
    // Ranges, across chunk boundaries too.
    for (range, from, to) in [
        ("bytes=0-99", 0, 100),
        ("bytes=262000-600000", 262000, 600001),
        ("bytes=3000000-", 3000000, bytes.len()),
        ("bytes=-10", bytes.len() - 10, bytes.len()),
    ] {
        let (st, h, body) = download(&api, ALICE, &file, Some(range)).await;
        assert_eq!(st, 206, "{range}");
        assert_eq!(
            h["content-range"],
            format!("bytes {from}-{}/{}", to - 1, bytes.len()).as_str()
        );
        assert!(body == bytes[from..to], "{range}");
    }
    let (st, h, _) = download(&api, ALICE, &file, Some("bytes=99999999-")).await;
    assert_eq!(st, 416);
    assert_eq!(
        h["content-range"],
        format!("bytes */{}", bytes.len()).as_str()
    );
    let head = api
        .raw(
            Method::HEAD,
            &format!("/v1/files/{file}"),
            Some(ALICE),
            None,
            &[],
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.headers["content-length"],
        bytes.len().to_string().as_str()
    );

    // Listing and isolation.
    let list = api.get("/v1/files", ALICE).await;
    assert_eq!(list.body["files"][0]["id"], file.as_str());
    assert_eq!(list.body["files"][0]["sha256"], sha.as_str());
    let list = api.get("/v1/files", BOB).await;
    assert_eq!(list.body["files"], json!([]));
    assert_eq!(download(&api, BOB, &file, None).await.0, 404);
    let del = api
        .raw(
            Method::DELETE,
            &format!("/v1/files/{file}"),
            Some(BOB),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, 404);
    assert_eq!(
        api.get("/v1/files/not-a-uuid", ALICE).await.code(),
        "invalid_id"
    );

    // Delete removes the file and its chunks.
    let del = api
        .raw(
            Method::DELETE,
            &format!("/v1/files/{file}"),
            Some(ALICE),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, 204);
    assert_eq!(download(&api, ALICE, &file, None).await.0, 404);
    let store = ctx.store().await;
    let left = store
        .database()
        .collection::<mongodb::bson::Document>("file_chunks")
        .count_documents(mongodb::bson::doc! { "file_id": &file })
        .await
        .unwrap();
    assert_eq!(left, 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_whole_file_sha256_and_missing_parts_are_rejected_clearly() {
    let mut ctx = Ctx::new("badsha");
    ctx.set("JOBMILL_UPLOAD_PART_SIZE", "65536");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let bytes = data(300_000, 3);
    let wrong = sha_hex(b"something else");
    let id = upload(&api, ALICE, &bytes, 65536, &wrong).await;
    let a = api
        .post(&format!("/v1/uploads/{id}/complete"), ALICE, json!({}))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let j = api
        .wait_terminal(ALICE, a.body["id"].as_str().unwrap(), LIMIT)
        .await;
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["attempt"], 1, "a checksum mismatch is not retried: {j}");
    let msg = j["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("sha256 mismatch") && msg.contains(&wrong) && msg.contains(&sha_hex(&bytes)),
        "{msg}"
    );
    assert_eq!(api.get("/v1/files", ALICE).await.body["files"], json!([]));

    // A gap in the parts is refused before any job is made.
    let a = api
        .post("/v1/uploads", ALICE, json!({"filename": "gap.bin"}))
        .await;
    let gap = a.body["id"].as_str().unwrap().to_string();
    put_part(&api, ALICE, &gap, 0, &bytes[..65536], &[]).await;
    put_part(&api, ALICE, &gap, 2, &bytes[..100], &[]).await;
    let a = api
        .post(&format!("/v1/uploads/{gap}/complete"), ALICE, json!({}))
        .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.code(), "incomplete_upload");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing: 1"),
        "{}",
        a.body
    );

    // Bad creation input.
    for (body, code) in [
        (json!({"filename": ""}), "invalid_filename"),
        (json!({"filename": "a", "sha256": "xyz"}), "invalid_sha256"),
        (json!({"filename": "a", "size": -1}), "invalid_body"),
    ] {
        let a = api.post("/v1/uploads", ALICE, body.clone()).await;
        assert_eq!(a.code(), code, "{body}: {}", a.body);
    }
    worker.stop().await;
}

async fn job(api: &Api, id: &str) -> Value {
    api.get(&format!("/v1/jobs/{id}"), ALICE).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_assembly_resumes_and_bytes_are_exact() {
    let mut ctx = Ctx::new("asmkill");
    ctx.set("JOBMILL_UPLOAD_PART_SIZE", "262144");
    let api = ctx.api().await;
    let bytes = data(40 * 1024 * 1024 + 77, 11);
    let sha = sha_hex(&bytes);
    let id = upload(&api, ALICE, &bytes, 262144, &sha).await;
    let mut doomed = ctx.worker_process(&["--concurrency", "2"]);
    let a = api
        .post(&format!("/v1/uploads/{id}/complete"), ALICE, json!({}))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let jid = a.body["id"].as_str().unwrap().to_string();

    // Kill it once it is running and has stored some, but not all, of the file.
    let end = Instant::now() + LIMIT;
    let seen = loop {
        let j = job(&api, &jid).await;
        let done = j["progress"]["done"].as_i64().unwrap_or(0);
        if j["state"] == "running" && done > 0 && done < bytes.len() as i64 {
            break j;
        }
        assert!(
            j["state"] != "succeeded",
            "assembly finished before the kill: {j}"
        );
        assert!(Instant::now() < end, "assembly never got going: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    doomed.signal(SIGKILL);
    doomed
        .wait_exit(Duration::from_secs(10))
        .expect("worker died");
    assert_eq!(seen["attempt"], 1);

    let _survivor = ctx.worker_process(&["--concurrency", "2"]);
    let j = api.wait_terminal(ALICE, &jid, LIMIT).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert!(
        j["attempt"].as_i64().unwrap() > 1,
        "the killed attempt was rerun: {j}"
    );
    assert_eq!(j["result"]["sha256"], sha.as_str());
    let (st, _, body) = download(&api, ALICE, j["result"]["file_id"].as_str().unwrap(), None).await;
    assert_eq!(st, 200);
    assert_eq!(body.len(), bytes.len());
    assert_eq!(sha_hex(&body), sha);
}
