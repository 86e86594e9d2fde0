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

/// Start an upload of `len` bytes (declared size and SHA-256); returns its id.
async fn start_upload(api: &Api, key: &str, len: usize, sha256: &str) -> String {
    let a = api
        .post(
            "/v1/uploads",
            key,
            json!({"filename": "f.bin", "size": len, "sha256": sha256}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_str().unwrap().to_string()
}

/// Complete an upload and wait for its assembly; returns the finished job.
async fn complete(api: &Api, key: &str, id: &str) -> Value {
    let a = api
        .post(&format!("/v1/uploads/{id}/complete"), key, json!({}))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    api.wait_terminal(key, a.body["id"].as_str().unwrap(), LIMIT)
        .await
}

fn db(store: &jobmill::store::Store) -> &mongodb::Database {
    store.database()
}

/// Pieces stored in `file_pieces` under an upload (= file) id.
async fn pieces_of(store: &jobmill::store::Store, id: &str) -> u64 {
    db(store)
        .collection::<mongodb::bson::Document>("file_pieces")
        .count_documents(mongodb::bson::doc! { "upload_id": id })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_hash_pass_of_a_large_file_rereads_and_commits_once() {
    let mut ctx = Ctx::new("hashkill");
    ctx.set("JOBMILL_UPLOAD_PART_SIZE", "4194304");
    let api = ctx.api().await;
    let bytes = data(96 * 1024 * 1024 + 5, 21);
    let sha = sha_hex(&bytes);
    let id = upload(&api, ALICE, &bytes, 4194304, &sha).await;
    let store = ctx.store().await;
    let stored = pieces_of(&store, &id).await;
    // 24 parts of 16 pieces, and a last part of one 5-byte piece.
    assert_eq!(stored, 24 * 16 + 1);
    let mut doomed = ctx.worker_process(&["--concurrency", "2"]);
    let a = api
        .post(&format!("/v1/uploads/{id}/complete"), ALICE, json!({}))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let jid = a.body["id"].as_str().unwrap().to_string();
    let end = Instant::now() + LIMIT;
    loop {
        let j = job(&api, &jid).await;
        let done = j["progress"]["done"].as_i64().unwrap_or(0);
        if j["state"] == "running" && done > 0 && done < bytes.len() as i64 {
            break;
        }
        assert!(
            j["state"] != "succeeded",
            "the hash pass finished before the kill: {j}"
        );
        assert!(Instant::now() < end, "assembly never got going: {j}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.signal(SIGKILL);
    doomed
        .wait_exit(Duration::from_secs(10))
        .expect("worker died");
    // Killed mid-pass: no file was committed, and no byte was written or lost.
    assert_eq!(api.get("/v1/files", ALICE).await.body["files"], json!([]));
    assert_eq!(pieces_of(&store, &id).await, stored);

    let _survivor = ctx.worker_process(&["--concurrency", "2"]);
    let j = api.wait_terminal(ALICE, &jid, LIMIT).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert!(j["attempt"].as_i64().unwrap() > 1, "{j}");
    assert_eq!(j["result"]["sha256"], sha.as_str());
    assert_eq!(j["result"]["size"], bytes.len());
    // The file is the pieces that were uploaded: none copied, none doubled.
    assert_eq!(pieces_of(&store, &id).await, stored);
    let (st, _, body) = download(&api, ALICE, &id, None).await;
    assert_eq!(st, 200);
    assert!(body == bytes);
    let (st, _, body) = download(&api, ALICE, &id, Some("bytes=4194000-8389000")).await;
    assert_eq!(st, 206);
    assert!(body == bytes[4194000..8389001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_file_deletes_exactly_its_pieces() {
    let mut ctx = Ctx::new("delpieces");
    ctx.set("JOBMILL_UPLOAD_PART_SIZE", "65536");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let store = ctx.store().await;
    let (a_bytes, b_bytes) = (data(700_000, 5), data(333_333, 6));
    let a = upload(&api, ALICE, &a_bytes, 65536, &sha_hex(&a_bytes)).await;
    let b = upload(&api, ALICE, &b_bytes, 65536, &sha_hex(&b_bytes)).await;
    for id in [&a, &b] {
        let j = complete(&api, ALICE, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    assert_eq!(pieces_of(&store, &a).await, 11);
    assert_eq!(pieces_of(&store, &b).await, 6);
    let del = api
        .raw(
            Method::DELETE,
            &format!("/v1/files/{a}"),
            Some(ALICE),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, 204);
    assert_eq!(pieces_of(&store, &a).await, 0);
    assert_eq!(pieces_of(&store, &b).await, 6);
    let files = db(&store).collection::<mongodb::bson::Document>("files");
    assert_eq!(
        files
            .count_documents(mongodb::bson::doc! { "_id": &a })
            .await
            .unwrap(),
        0
    );
    let (st, _, body) = download(&api, ALICE, &b, None).await;
    assert_eq!(st, 200);
    assert!(body == b_bytes);
    assert_eq!(download(&api, ALICE, &a, None).await.0, 404);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_of_one_part_keep_the_last_complete_and_verified_one() {
    let mut ctx = Ctx::new("samepart");
    ctx.set("JOBMILL_UPLOAD_PART_SIZE", "1048576");
    let api = std::sync::Arc::new(ctx.api().await);
    let worker = ctx.worker();
    let store = ctx.store().await;
    let tail = data(1000, 99);
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| data(1048576, 100 + 2 * i)).collect();
    let last = data(1048576, 77);
    let mut whole = last.clone();
    whole.extend_from_slice(&tail);
    let id = start_upload(&api, ALICE, whole.len(), &sha_hex(&whole)).await;
    assert_eq!(put_part(&api, ALICE, &id, 1, &tail, &[]).await.status, 200);

    // Four good sends and one with a wrong checksum, all at once.
    let mut sends = Vec::new();
    for b in &bodies {
        let (api, id, b) = (api.clone(), id.clone(), b.clone());
        sends.push(tokio::spawn(async move {
            let sha = sha_hex(&b);
            put_part(&api, ALICE, &id, 0, &b, &[("x-content-sha256", &sha)])
                .await
                .status
        }));
    }
    let (api2, id2, bad) = (api.clone(), id.clone(), bodies[0].clone());
    let wrong = sha_hex(&bodies[1]);
    let bad_send = tokio::spawn(async move {
        let a = put_part(&api2, ALICE, &id2, 0, &bad, &[("x-content-sha256", &wrong)]).await;
        (a.status, a.body)
    });
    for s in sends {
        assert_eq!(s.await.unwrap(), 200);
    }
    let (status, body) = bad_send.await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "checksum_mismatch", "{body}");
    // One of the four won; the losers' and the refused send's pieces are gone.
    let up = api.get(&format!("/v1/uploads/{id}"), ALICE).await;
    let kept = up.body["parts"][0]["sha256"].as_str().unwrap().to_string();
    assert!(bodies.iter().any(|b| sha_hex(b) == kept), "{}", up.body);
    assert_eq!(pieces_of(&store, &id).await, 4 + 1);

    // A send that completes after all of them is the one kept.
    let sha = sha_hex(&last);
    let a = put_part(&api, ALICE, &id, 0, &last, &[("x-content-sha256", &sha)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(pieces_of(&store, &id).await, 4 + 1);
    let j = complete(&api, ALICE, &id).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let (st, _, body) = download(&api, ALICE, &id, None).await;
    assert_eq!(st, 200);
    assert!(body == whole);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_expires_without_touching_completed_files() {
    let mut ctx = Ctx::new("sweep");
    ctx.set("JOBMILL_UPLOAD_PART_SIZE", "65536");
    ctx.set("JOBMILL_UPLOAD_RETENTION", "60s");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let store = ctx.store().await;
    let kept = data(400_000, 8);
    let file = upload(&api, ALICE, &kept, 65536, &sha_hex(&kept)).await;
    let j = complete(&api, ALICE, &file).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let abandoned = data(200_000, 9);
    let gone = upload(&api, ALICE, &abandoned, 65536, &sha_hex(&abandoned)).await;
    assert_eq!(pieces_of(&store, &gone).await, 4);
    assert_eq!(pieces_of(&store, &file).await, 7);

    // Retention 60 s; the sweeper looks every 6 s.
    let end = Instant::now() + LIMIT;
    while api.get(&format!("/v1/uploads/{gone}"), ALICE).await.status != 404 {
        assert!(Instant::now() < end, "the abandoned upload never expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(pieces_of(&store, &gone).await, 0);
    let parts = db(&store)
        .collection::<mongodb::bson::Document>("upload_parts")
        .count_documents(mongodb::bson::doc! { "upload_id": &gone })
        .await
        .unwrap();
    assert_eq!(parts, 0);
    // The completed upload's record went too (same retention), its file's pieces did not.
    assert_eq!(
        api.get(&format!("/v1/uploads/{file}"), ALICE).await.status,
        404
    );
    assert_eq!(pieces_of(&store, &file).await, 7);
    let (st, _, body) = download(&api, ALICE, &file, None).await;
    assert_eq!(st, 200);
    assert!(body == kept);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_the_previous_chunk_layout_still_download_byte_for_byte() {
    let mut ctx = Ctx::new("oldlayout");
    ctx.set("JOBMILL_UPLOAD_PART_SIZE", "65536");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let store = ctx.store().await;
    let bytes = data(600_001, 12);
    let id = upload(&api, ALICE, &bytes, 65536, &sha_hex(&bytes)).await;
    let j = complete(&api, ALICE, &id).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    // Rewrite it as the previous version stored files: 256 KiB chunks in `file_chunks`, no
    // manifest.
    use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
    let files = db(&store).collection::<Document>("files");
    let mut meta = files.find_one(doc! { "_id": &id }).await.unwrap().unwrap();
    meta.remove("parts");
    files.replace_one(doc! { "_id": &id }, &meta).await.unwrap();
    let chunks = db(&store).collection::<Document>("file_chunks");
    for (n, c) in bytes.chunks(262144).enumerate() {
        chunks
            .insert_one(doc! {
                "_id": format!("{id}:{n}"), "file_id": &id, "n": n as i64,
                "data": Binary { subtype: BinarySubtype::Generic, bytes: c.to_vec() },
            })
            .await
            .unwrap();
    }
    db(&store)
        .collection::<Document>("file_pieces")
        .delete_many(doc! { "upload_id": &id })
        .await
        .unwrap();
    let (st, h, body) = download(&api, ALICE, &id, None).await;
    assert_eq!(st, 200);
    assert_eq!(h["etag"], format!("\"{}\"", sha_hex(&bytes)).as_str());
    assert!(body == bytes);
    let (st, _, body) = download(&api, ALICE, &id, Some("bytes=262000-530000")).await;
    assert_eq!(st, 206);
    assert!(body == bytes[262000..530001]);
    let del = api
        .raw(
            Method::DELETE,
            &format!("/v1/files/{id}"),
            Some(ALICE),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, 204);
    let left = chunks
        .count_documents(doc! { "file_id": &id })
        .await
        .unwrap();
    assert_eq!(left, 0);
    worker.stop().await;
}
