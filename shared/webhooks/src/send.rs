//! One HTTP attempt of a delivery: connect only to the addresses the guard approved (pinned, so
//! a second DNS answer cannot redirect the request), follow no redirects, give up after the
//! timeout, and read at most [`MAX_READ_BYTES`](crate::MAX_READ_BYTES) of the answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use url::Url;

use crate::MAX_READ_BYTES;

/// A signed request, ready to send.
#[derive(Debug, Clone)]
pub struct Signed {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp` (unix seconds).
    pub timestamp: i64,
    /// `webhook-signature`.
    pub signature: String,
    /// The JSON body.
    pub body: String,
}

/// What came of one attempt.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Time until the answer or the error.
    pub latency: Duration,
    /// Connection error or timeout.
    pub error: Option<String>,
    /// The start of the response body.
    pub body: Vec<u8>,
}

/// POST `msg` to `url`, connecting only to `addrs`.
pub async fn post(url: &Url, addrs: &[SocketAddr], msg: &Signed, timeout: Duration) -> Answer {
    let started = Instant::now();
    let fail = |e: String| Answer {
        status: None,
        latency: started.elapsed(),
        error: Some(e),
        body: Vec::new(),
    };
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("jobmill-webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(host) = url.domain() {
        builder = builder.resolve_to_addrs(host, addrs);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return fail(format!("http client: {e}")),
    };
    let res = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &msg.id)
        .header("webhook-timestamp", msg.timestamp.to_string())
        .header("webhook-signature", &msg.signature)
        .body(msg.body.clone())
        .send()
        .await;
    let mut res = match res {
        Ok(r) => r,
        Err(e) => return fail(describe(&e)),
    };
    let status = res.status().as_u16();
    let mut body = Vec::new();
    // Stop reading once enough is in: a hostile receiver cannot make us download a gigabyte.
    while body.len() < MAX_READ_BYTES {
        match res.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_READ_BYTES);
    Answer {
        status: Some(status),
        latency: started.elapsed(),
        error: None,
        body,
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's Display names the URL, which is the target (not a secret); the source chain
    // says why.
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
