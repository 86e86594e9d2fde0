//! The HTTP server loop: hyper's HTTP/1 connection builder with the timeouts a hostile client
//! makes necessary (axum's plain `serve` has none of them).
//!
//! - **Header timeout** (`JOBMILL_HTTP_HEADER_TIMEOUT`): hyper's `header_read_timeout`. A
//!   request head must be complete within this time after the connection is ready for it, so
//!   headers trickled a byte at a time cannot hold a connection.
//! - **Body timeout** (`JOBMILL_HTTP_BODY_TIMEOUT`): the whole request body must arrive within
//!   this time after its head. Generous (an 8 MiB part on a slow link), but finite.
//! - **Idle timeout** (`JOBMILL_HTTP_IDLE_TIMEOUT`): a connection with no request in flight is
//!   closed after this much silence. A request in flight (a long-poll, a download, a future
//!   event stream) is never idle: it is bounded by its own limits (`wait` is at most 60 s).
//!   hyper also runs the header timer while it waits for the next request, so an idle
//!   connection is closed after the shorter of the two.
//! - **Connection limit** (`JOBMILL_HTTP_MAX_CONNECTIONS`): beyond it, new connections wait in
//!   the listen backlog until one closes.
//!
//! HTTP/1.1 only (axum's `serve` also took HTTP/2 with prior knowledge): the header timeout is
//! an HTTP/1 feature of hyper, and sniffing for an HTTP/2 preface would itself wait, untimed,
//! for a client's first bytes.
//!
//! The four settings are a section of the API's configuration ([`HttpLimits`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use jobmill::config::{Bounds, Env, Section, Setting};

/// Limits of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to receive a complete request head.
    pub header_timeout: Duration,
    /// Time to receive a complete request body, from its head.
    pub body_timeout: Duration,
    /// Silence after which a connection with no request in flight is closed.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// `JOBMILL_HTTP_HEADER_TIMEOUT`.
pub const HEADER_TIMEOUT: Setting = Setting {
    env: "JOBMILL_HTTP_HEADER_TIMEOUT",
    default: "10s",
    bounds: Bounds::Duration(Duration::from_millis(1), Duration::from_secs(3600)),
    doc: "time to receive a request's headers",
};
/// `JOBMILL_HTTP_BODY_TIMEOUT`: 8 MiB in 5 minutes is about 28 KiB/s, so a poor mobile link still
/// makes it.
pub const BODY_TIMEOUT: Setting = Setting {
    env: "JOBMILL_HTTP_BODY_TIMEOUT",
    default: "5m",
    bounds: Bounds::Duration(Duration::from_millis(1), Duration::from_secs(86_400)),
    doc: "time to receive a request's whole body",
};
/// `JOBMILL_HTTP_IDLE_TIMEOUT`.
pub const IDLE_TIMEOUT: Setting = Setting {
    env: "JOBMILL_HTTP_IDLE_TIMEOUT",
    default: "5s",
    bounds: Bounds::Duration(Duration::from_millis(1), Duration::from_secs(3600)),
    doc: "a kept-alive connection without a request is closed after this",
};
/// `JOBMILL_HTTP_MAX_CONNECTIONS`: room for a thousand open event streams or long-polls and the
/// usual traffic. Semaphore::MAX_PERMITS bounds it; far beyond any file-descriptor limit.
pub const MAX_CONNECTIONS: Setting = Setting {
    env: "JOBMILL_HTTP_MAX_CONNECTIONS",
    default: "4096",
    bounds: Bounds::Count(1, 1_000_000),
    doc: "connections served at once; more wait",
};

impl Section for HttpLimits {
    const SETTINGS: &'static [Setting] =
        &[HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS];

    fn read(env: &Env) -> Self {
        HttpLimits {
            header_timeout: env.duration(&HEADER_TIMEOUT),
            body_timeout: env.duration(&BODY_TIMEOUT),
            idle_timeout: env.duration(&IDLE_TIMEOUT),
            max_connections: env.count(&MAX_CONNECTIONS),
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::read(&Env::new(|_| None))
    }
}

impl HttpLimits {
    /// Read the limits alone through `get`; every broken setting is named.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> jobmill::Result<HttpLimits> {
        let env = Env::new(get);
        let limits = HttpLimits::read(&env);
        env.finish()?;
        Ok(limits)
    }
}

/// How long shutdown waits for requests in flight (longer than the longest long-poll).
const DRAIN: Duration = Duration::from_secs(70);

/// Serve `app` on `listener` with `limits` until `shutdown` resolves, then stop accepting and
/// let requests in flight finish (at most [`DRAIN`]).
pub async fn serve_on(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting: at the limit, new connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.context("connection semaphore closed")?,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let svc = {
            let app = app.clone();
            let activity = activity.clone();
            let body_timeout = limits.body_timeout;
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                let guard = InFlight::start(activity.clone());
                async move {
                    let req = req.map(|b| Body::new(Deadline::new(b, body_timeout)));
                    let res = app.oneshot(req).await?;
                    // The request stays in flight until its answer is written (or dropped).
                    Ok::<_, std::convert::Infallible>(res.map(|b| {
                        Body::new(b.map_frame(move |f| {
                            let _ = &guard;
                            f
                        }))
                    }))
                }
            })
        };
        let conn = graceful.watch(builder.serve_connection(io, svc));
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = activity.idle_for(idle) => {
                    tracing::debug!(%peer, "idle connection closed");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

/// What a connection is doing, for the idle timeout.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` of the last byte read or answer finished.
    last_ms: AtomicU64,
    /// Requests whose answer is not written yet.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once the connection has had no request in flight and no incoming byte for
    /// `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            let wait = if self.in_flight.load(Ordering::Relaxed) > 0 {
                // A request in flight (a long-poll, a download) is not idle; its end touches
                // the clock, so looking again a whole period later is soon enough.
                idle
            } else if quiet >= idle {
                return;
            } else {
                // When the quiet period could run out (not sooner than 100 ms, so a connection
                // that keeps receiving bytes does not make this spin).
                (idle - quiet).max(Duration::from_millis(100))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Marks one request in flight; dropping it ends that.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records when bytes arrive.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The request body did not arrive within `JOBMILL_HTTP_BODY_TIMEOUT`.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time (JOBMILL_HTTP_BODY_TIMEOUT)")
    }
}

impl std::error::Error for BodyTimedOut {}

/// True if `e` (or what caused it) is a [`BodyTimedOut`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A request body that fails with [`BodyTimedOut`] once its deadline has passed. The deadline
/// is for the whole body, not per frame: a byte now and then must not keep it alive forever.
struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<Sleep>>,
    timed_out: bool,
}

impl Deadline {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
            timed_out: false,
        }
    }
}

impl HttpBody for Deadline {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.timed_out = true;
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            HttpLimits::from_lookup(lookup(&[])).unwrap(),
            HttpLimits::default()
        );
        let l = HttpLimits::from_lookup(lookup(&[
            ("JOBMILL_HTTP_HEADER_TIMEOUT", "500ms"),
            ("JOBMILL_HTTP_BODY_TIMEOUT", "2m"),
            ("JOBMILL_HTTP_IDLE_TIMEOUT", "3s"),
            ("JOBMILL_HTTP_MAX_CONNECTIONS", "10"),
        ]))
        .unwrap();
        assert_eq!(l.header_timeout, Duration::from_millis(500));
        assert_eq!(l.body_timeout, Duration::from_secs(120));
        assert_eq!(l.idle_timeout, Duration::from_secs(3));
        assert_eq!(l.max_connections, 10);
        assert!(HttpLimits::default().max_connections >= 2000);
    }

    #[test]
    fn every_bad_setting_is_named() {
        let errs = HttpLimits::from_lookup(lookup(&[
            ("JOBMILL_HTTP_HEADER_TIMEOUT", "soon"),
            ("JOBMILL_HTTP_BODY_TIMEOUT", "0s"),
            ("JOBMILL_HTTP_MAX_CONNECTIONS", "0"),
        ]))
        .unwrap_err()
        .to_string();
        let lines: Vec<&str> = errs.lines().skip(1).collect();
        assert_eq!(lines.len(), 3, "{errs}");
        assert!(lines[0].starts_with("JOBMILL_HTTP_HEADER_TIMEOUT"));
        assert!(lines[1].starts_with("JOBMILL_HTTP_BODY_TIMEOUT"));
        assert!(lines[2].starts_with("JOBMILL_HTTP_MAX_CONNECTIONS"));
    }
}
