//! The API as a client sees it (W6, W7): requests with the bench key, polling a job until it
//! ends, and a file uploaded through `/v1/uploads` and assembled. Measures nothing itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use jobmill_bench::deployment::API_SECRET;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

/// Send a request with the bench key; its JSON answer, once the status is the one wanted.
pub(crate) async fn api_json(req: reqwest::RequestBuilder, want: u16) -> anyhow::Result<Value> {
    let res = req.bearer_auth(API_SECRET).send().await?;
    let status = res.status().as_u16();
    let body = res.text().await?;
    anyhow::ensure!(status == want, "status {status}, wanted {want}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// Poll a job through the API until it ends and return its final view. Every 100 ms: a poll of
/// a running job is a MongoDB read, and the workloads measured here run for seconds to minutes.
/// Progress goes to stderr every 5 s.
pub(crate) async fn wait_job(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    label: &str,
) -> anyhow::Result<Value> {
    let t = Instant::now();
    let mut shown = Instant::now();
    loop {
        let j = match api_json(http.get(format!("{base}/v1/jobs/{id}")), 200).await {
            Ok(j) => j,
            // The API answers 503 when MongoDB does not answer in time, and asks to retry: the
            // compatible server can stall for seconds under a heavy command.
            Err(e) if e.to_string().starts_with("status 503") => {
                eprintln!("{label}: status poll got 503, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if matches!(
            j["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return Ok(j);
        }
        if shown.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "{label}: {:.0} s, {}, {}",
                t.elapsed().as_secs_f64(),
                j["state"],
                j["progress"]["message"]
            );
            shown = Instant::now();
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(3 * 3600),
            "{label} did not finish: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A file uploaded and assembled through the API.
pub(crate) struct Uploaded {
    /// The stored file.
    pub(crate) file_id: String,
    /// SHA-256 the `file_assembly` job reported.
    pub(crate) sha256: String,
    /// From the first part sent to the last part acknowledged.
    pub(crate) upload: Duration,
    /// From the completion request to the job's success.
    pub(crate) assembly: Duration,
}

/// Upload `path` through `POST /v1/uploads` and `PUT .../parts/{n}`, in parts of `part_size`
/// sent one after another (the whole-file SHA-256 declared, so the assembly checks it), then
/// complete it and wait for its `file_assembly` job. Needs a worker running.
pub(crate) async fn upload_file(
    http: &reqwest::Client,
    base: &str,
    path: &Path,
    sha256: &str,
    part_size: usize,
) -> anyhow::Result<Uploaded> {
    let (id, upload) = send_parts(http, base, path, sha256, part_size, 1).await?;
    let size = tokio::fs::metadata(path).await?.len();
    let (file_id, sha256, assembly) = assemble_upload(http, base, &id, size).await?;
    Ok(Uploaded {
        file_id,
        sha256,
        upload,
        assembly,
    })
}

/// Start an upload of `path` and send its parts, `concurrency` requests at a time (each takes
/// the next part number). Returns the upload id and the time from the first part sent to the
/// last acknowledged.
pub(crate) async fn send_parts(
    http: &reqwest::Client,
    base: &str,
    path: &Path,
    sha256: &str,
    part_size: usize,
    concurrency: usize,
) -> anyhow::Result<(String, Duration)> {
    let size = tokio::fs::metadata(path).await?.len();
    let up = api_json(
        http.post(format!("{base}/v1/uploads")).json(&json!({
            "filename": path.file_name().and_then(|n| n.to_str()).unwrap_or("bench.bin"),
            "size": size,
            "sha256": sha256,
            "content_type": "application/octet-stream",
        })),
        201,
    )
    .await?;
    let id = up["id"].as_str().context("upload id")?.to_string();
    let parts = size.div_ceil(part_size as u64);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = Instant::now();
    let senders = (0..concurrency.max(1)).map(|_| {
        let (next, id, path) = (next.clone(), id.clone(), path.to_path_buf());
        async move {
            let mut f = tokio::fs::File::open(&path).await?;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= parts {
                    return anyhow::Ok(());
                }
                let at = n * part_size as u64;
                let mut part = vec![0u8; part_size.min((size - at) as usize)];
                tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(at)).await?;
                f.read_exact(&mut part).await?;
                api_json(
                    http.put(format!("{base}/v1/uploads/{id}/parts/{n}"))
                        .header("content-type", "application/octet-stream")
                        .body(part),
                    200,
                )
                .await?;
            }
        }
    });
    futures::future::try_join_all(senders).await?;
    Ok((id, t.elapsed()))
}

/// Complete an upload and wait for its `file_assembly` job: the file id, its SHA-256 and the
/// time from the completion request to the job's success.
pub(crate) async fn assemble_upload(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    size: u64,
) -> anyhow::Result<(String, String, Duration)> {
    let t = Instant::now();
    let job = api_json(
        http.post(format!("{base}/v1/uploads/{id}/complete"))
            .json(&json!({})),
        202,
    )
    .await?;
    let job_id = job["id"].as_str().context("assembly job id")?;
    let j = wait_job(http, base, job_id, "file_assembly").await?;
    let assembly = t.elapsed();
    anyhow::ensure!(j["state"] == "succeeded", "assembly did not succeed: {j}");
    anyhow::ensure!(
        j["result"]["size"].as_u64() == Some(size),
        "assembled size differs: {j}"
    );
    Ok((
        j["result"]["file_id"]
            .as_str()
            .context("file id")?
            .to_string(),
        j["result"]["sha256"]
            .as_str()
            .context("file sha256")?
            .to_string(),
        assembly,
    ))
}
