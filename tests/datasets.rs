//! bulk_import (CSV and NDJSON, bad rows, upserts, SIGKILL mid-import), the datasets API, and
//! the page cache (single-flight rebuild under a stampede, full pages during a rebuild).

use std::time::{Duration, Instant};

use jobmill_tests::{Api, Ctx, ALICE, BOB, SIGKILL};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(180);

/// Upload small `bytes` as one part, assemble, return the file id.
async fn store_file(api: &Api, key: &str, bytes: &[u8]) -> String {
    let a = api
        .post("/v1/uploads", key, json!({"filename": "rows"}))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_string();
    let a = api
        .raw(
            reqwest::Method::PUT,
            &format!("/v1/uploads/{id}/parts/0"),
            Some(key),
            Some(("application/octet-stream", bytes.to_vec())),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api
        .post(&format!("/v1/uploads/{id}/complete"), key, json!({}))
        .await;
    let j = api
        .wait_terminal(key, a.body["id"].as_str().unwrap(), LIMIT)
        .await;
    assert_eq!(j["state"], "succeeded", "{j}");
    j["result"]["file_id"].as_str().unwrap().to_string()
}

async fn import(api: &Api, key: &str, args: Value) -> Value {
    let id = api
        .submit(key, json!({"kind": "bulk_import", "args": args}))
        .await;
    api.wait_terminal(key, &id, LIMIT).await
}

fn csv_file() -> Vec<u8> {
    let mut s = String::from("sku,name,price,qty\r\n");
    for i in 1..=200 {
        match i {
            5 => s.push_str("s5,\"five, the bad\",abc,1\r\n"),
            10 => s.push_str("s10,ten\r\n"),
            150 => s.push_str("s150,\"quoted \"\"name\"\"\",1.5\r\n"),
            // A quoted newline inside a field is one row.
            7 => s.push_str("s7,\"seven\nlines\",7.25,7\r\n"),
            _ => s.push_str(&format!("s{i},item {i},{}.5,{i}\r\n", i * 2)),
        }
    }
    s.into_bytes()
}

fn ndjson_file(n: usize, bad: bool) -> Vec<u8> {
    let mut s = String::new();
    for i in 1..=n {
        let line = match i {
            3 if bad => "not json at all".to_string(),
            7 if bad => "[1, 2, 3]".to_string(),
            9 if bad => json!({"id": 9, "price": "nine"}).to_string(),
            _ => json!({"id": i, "price": i as f64 * 1.5, "tags": ["a", "b"]}).to_string(),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_ndjson_imports_report_bad_rows_and_upsert_on_a_key() {
    let ctx = Ctx::new("import");
    let api = ctx.api().await;
    let worker = ctx.worker();

    let csv = store_file(&api, ALICE, &csv_file()).await;
    let args = json!({"file_id": csv, "format": "csv", "dataset": "products", "key": "sku",
                      "schema": {"price": "number"}, "batch_size": 64});
    let j = import(&api, ALICE, args.clone()).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let r = &j["result"];
    assert_eq!(r["inserted"], 197, "{r}");
    assert_eq!(r["updated"], 0, "{r}");
    assert_eq!(r["failed"], 3, "{r}");
    assert_eq!(
        r["errors"],
        json!([
            {"row": 5, "error": "row 5: field price: expected number, got \"abc\""},
            {"row": 10, "error": "row 10: expected 4 fields, got 2"},
            {"row": 150, "error": "row 150: expected 4 fields, got 3"},
        ])
    );
    assert!(j["progress"]["total"].as_i64().unwrap() > 0);
    // Again, with the key: every good row is an update, none is duplicated.
    let j = import(&api, ALICE, args).await;
    assert_eq!(j["result"]["inserted"], 0, "{j}");
    assert_eq!(j["result"]["updated"], 197, "{j}");
    assert_eq!(j["result"]["failed"], 3, "{j}");

    let nd = store_file(&api, ALICE, &ndjson_file(100, true)).await;
    let args = json!({"file_id": nd, "format": "ndjson", "dataset": "events",
                      "schema": {"price": "number"}});
    let j = import(&api, ALICE, args.clone()).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"]["inserted"], 97, "{j}");
    assert_eq!(j["result"]["failed"], 3, "{j}");
    let errors = j["result"]["errors"].as_array().unwrap();
    assert_eq!(errors[0]["row"], 3);
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("row 3: invalid JSON"),
        "{errors:?}"
    );
    assert_eq!(errors[1]["error"], "row 7: not a JSON object");
    assert_eq!(
        errors[2]["error"],
        "row 9: field price: expected number, got \"nine\""
    );
    // Without a key the rows' ids come from the file: importing it again adds nothing.
    let j = import(&api, ALICE, args).await;
    assert_eq!(j["state"], "succeeded", "{j}");

    let list = api.get("/v1/datasets", ALICE).await;
    assert_eq!(
        list.body["datasets"],
        json!([{"name": "events", "rows": 97}, {"name": "products", "rows": 197}])
    );

    // Seek pagination through every row, in _id order, no repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/datasets/products/rows?limit=50&sort=_id".to_string(),
            Some(c) => format!("/v1/datasets/products/rows?limit=50&cursor={c}"),
        };
        let a = api.get(&path, ALICE).await;
        assert_eq!(a.status, 200, "{}", a.body);
        for r in a.body["rows"].as_array().unwrap() {
            seen.push(r["_id"].as_str().unwrap().to_string());
        }
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 197);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen);
    let row = api
        .get("/v1/datasets/products/rows?limit=1&cursor=s69", ALICE)
        .await;
    assert_eq!(row.body["rows"][0]["sku"], "s7");
    assert_eq!(row.body["rows"][0]["name"], "seven\nlines");
    assert_eq!(row.body["rows"][0]["price"], 7.25);
    let a = api
        .get("/v1/datasets/products/rows?sort=price", ALICE)
        .await;
    assert_eq!(a.code(), "invalid_sort");

    // Tenant isolation and name validation.
    assert_eq!(
        api.get("/v1/datasets", BOB).await.body["datasets"],
        json!([])
    );
    assert_eq!(api.get("/v1/datasets/products/rows", BOB).await.status, 404);
    assert_eq!(
        api.get("/v1/datasets/products/pages/0", BOB).await.status,
        404
    );
    assert_eq!(
        api.get("/v1/datasets/Bad.Name/rows", ALICE).await.code(),
        "invalid_dataset"
    );
    let a = api
        .post("/v1/jobs", BOB, json!({"kind": "bulk_import", "args": {"file_id": csv, "format": "csv", "dataset": "stolen"}}))
        .await;
    let j = api
        .wait_terminal(BOB, a.body["id"].as_str().unwrap(), LIMIT)
        .await;
    assert_eq!(j["state"], "failed", "bob cannot import alice's file: {j}");
    for bad in [
        json!({"file_id": csv, "format": "xml", "dataset": "d"}),
        json!({"file_id": csv, "format": "csv", "dataset": "x; drop"}),
        json!({"file_id": csv, "format": "csv", "dataset": "d", "key": "$where"}),
        json!({"file_id": "nope", "format": "csv", "dataset": "d"}),
    ] {
        let a = api
            .post(
                "/v1/jobs",
                ALICE,
                json!({"kind": "bulk_import", "args": bad}),
            )
            .await;
        assert_eq!(a.code(), "invalid_args", "{}", a.body);
    }

    // Not the declared format at all: the job fails, saying so.
    let j = import(
        &api,
        ALICE,
        json!({"file_id": csv, "format": "ndjson", "dataset": "oops"}),
    )
    .await;
    assert_eq!(j["state"], "failed", "{j}");
    let msg = j["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("the file is not ndjson"), "{msg}");
    worker.stop().await;
}

async fn row_count(ctx: &Ctx, tenant: &str, name: &str) -> u64 {
    let store = ctx.store().await;
    store
        .database()
        .collection::<mongodb::bson::Document>(&jobmill_data::datasets::collection_name(
            tenant, name,
        ))
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_import_leaves_exactly_one_copy_of_each_row() {
    let ctx = Ctx::new("impkill");
    let api = ctx.api().await;
    let rows = 30_000;
    let file = {
        let w = ctx.worker();
        let f = store_file(&api, ALICE, &ndjson_file(rows, false)).await;
        w.stop().await;
        f
    };
    let mut doomed = ctx.worker_process(&["--concurrency", "2"]);
    let id = api
        .submit(ALICE, json!({"kind": "bulk_import", "args": {"file_id": file, "format": "ndjson", "dataset": "big", "batch_size": 250}}))
        .await;
    let end = Instant::now() + LIMIT;
    loop {
        let j = api.get(&format!("/v1/jobs/{id}"), ALICE).await.body;
        let done = j["progress"]["done"].as_i64().unwrap_or(0);
        let total = j["progress"]["total"].as_i64().unwrap_or(i64::MAX);
        if j["state"] == "running" && done > 0 && done < total {
            break;
        }
        assert!(
            j["state"] != "succeeded",
            "import finished before the kill: {j}"
        );
        assert!(Instant::now() < end, "import never got going: {j}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.signal(SIGKILL);
    doomed
        .wait_exit(Duration::from_secs(10))
        .expect("worker died");
    let partial = row_count(&ctx, "alice", "big").await;
    assert!(partial < rows as u64, "killed mid-import");
    let _survivor = ctx.worker_process(&["--concurrency", "2"]);
    let j = api.wait_terminal(ALICE, &id, LIMIT).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert!(j["attempt"].as_i64().unwrap() > 1, "{j}");
    assert_eq!(j["result"]["inserted"], rows, "{j}");
    assert_eq!(j["result"]["failed"], 0, "{j}");
    assert_eq!(row_count(&ctx, "alice", "big").await, rows as u64);
}

async fn rebuild_jobs(api: &Api) -> Vec<Value> {
    let a = api
        .get("/v1/jobs?kind=cache_rebuild&limit=500", ALICE)
        .await;
    a.body["jobs"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_reads_cause_one_rebuild_and_pages_stay_full_during_rebuilds() {
    let ctx = Ctx::new("stampede");
    let api = ctx.api().await;
    let worker = ctx.worker();
    let file = store_file(&api, ALICE, &ndjson_file(600, false)).await;
    let j = import(
        &api,
        ALICE,
        json!({"file_id": file, "format": "ndjson", "dataset": "listing", "key": "id"}),
    )
    .await;
    assert_eq!(j["state"], "succeeded", "{j}");
    // The finished import asked for a rebuild.
    let first = rebuild_jobs(&api).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let j = api
        .wait_terminal(ALICE, first[0]["id"].as_str().unwrap(), LIMIT)
        .await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let a = api.get("/v1/datasets/listing/pages/0", ALICE).await;
    assert_eq!(a.headers["x-cache"], "hit");
    assert_eq!(a.body["rows"].as_array().unwrap().len(), 50);
    worker.stop().await;

    // Make it cold, with no worker running so the rebuild stays queued.
    let keys = jobmill_data::keys::DataKeys::new(&jobmill::keys::Keys::new(
        &ctx.vars["JOBMILL_KEY_PREFIX"],
    ))
    .cache("alice", "listing");
    let mut conn = ctx.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(&keys.current)
        .arg(&keys.rebuild)
        .query_async(&mut conn)
        .await
        .unwrap();

    let reads = (0..1000).map(|i| {
        let http = api.http.clone();
        let url = format!("{}/v1/datasets/listing/pages/{}", api.base, i % 10);
        tokio::spawn(async move {
            let res = http.get(url).bearer_auth(ALICE).send().await.unwrap();
            assert_eq!(res.status().as_u16(), 200);
            let h = res.headers().clone();
            let body: Value = res.json().await.unwrap();
            (
                h["x-cache"].to_str().unwrap().to_string(),
                h.get("x-rebuild-job")
                    .map(|v| v.to_str().unwrap().to_string()),
                body["rows"].as_array().unwrap().len(),
            )
        })
    });
    let answers = futures::future::join_all(reads).await;
    let mut named = std::collections::HashSet::new();
    for a in answers {
        let (cache, job, rows) = a.unwrap();
        assert_eq!(cache, "miss");
        assert_eq!(rows, 50, "a miss still answers a full page");
        named.insert(job.expect("a miss names the rebuild job"));
    }
    let all = rebuild_jobs(&api).await;
    assert_eq!(
        all.len(),
        2,
        "exactly one rebuild for 1000 cold reads: {all:?}"
    );
    assert_eq!(named.len(), 1, "{named:?}");
    let new = all.iter().find(|j| j["id"] != first[0]["id"]).unwrap();
    assert!(named.contains(new["id"].as_str().unwrap()));
    assert_eq!(new["state"], "queued");

    // Run it; then rebuild again while readers read: every answer is a full page.
    let worker = ctx.worker();
    let j = api
        .wait_terminal(ALICE, new["id"].as_str().unwrap(), LIMIT)
        .await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let rebuild = api
        .submit(
            ALICE,
            json!({"kind": "cache_rebuild", "args": {"dataset": "listing"}}),
        )
        .await;
    let mut hits = 0;
    let end = Instant::now() + LIMIT;
    loop {
        let paths: Vec<String> = (0..10)
            .map(|n| format!("/v1/datasets/listing/pages/{n}"))
            .collect();
        let batch = paths.iter().map(|p| api.get(p, ALICE));
        for a in futures::future::join_all(batch).await {
            assert_eq!(a.status, 200);
            assert_eq!(a.body["rows"].as_array().unwrap().len(), 50, "{}", a.body);
            if a.headers["x-cache"] == "hit" {
                hits += 1;
            }
        }
        let j = api.get(&format!("/v1/jobs/{rebuild}"), ALICE).await.body;
        if j["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < end, "{j}");
    }
    assert!(hits > 0);
    let after = api.get("/v1/datasets/listing/pages/3", ALICE).await;
    assert_eq!(after.headers["x-cache"], "hit");
    assert_eq!(after.body["rows"].as_array().unwrap().len(), 50);
    worker.stop().await;
}
