//! Server-Sent Events:
//! - `GET /v1/jobs/{id}/events`: one job. The current state at once, then a `state` event on
//!   every recorded state change and a `progress` event on every recorded progress report,
//!   closing after the terminal state. Every event's `id` is the job's revision, so a client
//!   that reconnects with `Last-Event-ID` gets only what is newer. The job is re-read when the
//!   change events name it (and, in case an event was missed, every [`RECHECK`]).
//! - `GET /v1/events`: state changes across the fleet, filtered by queue, kind and state. All
//!   such streams of one API process share one [`FleetFeed`]: it reads each changed batch of
//!   jobs from MongoDB once, whatever the number of clients, so no client polls the store.
//!
//! Keep-alive comments every [`KEEP_ALIVE`] keep proxies from closing idle streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use jobmill::view::JobView;
use jobmill::{Job, JobState};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JobId, Query};
use crate::watch::mentions;
use crate::AppState;

/// Interval of keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a job stream re-reads its job without an event (a missed pub/sub message).
pub const RECHECK: Duration = Duration::from_secs(10);

fn stream(rx: mpsc::Receiver<Event>) -> impl IntoResponse {
    let mut rx = rx;
    let s =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>)));
    Sse::new(s).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn job_event(name: &str, job: &Job) -> Event {
    Event::default()
        .event(name)
        .id(job.rev.to_string())
        .json_data(JobView::from(job))
        .unwrap_or_else(|_| Event::default().comment("unrenderable job"))
}

/// Live events of one job.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "job id"),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "the last revision received; only newer events are sent"),
    ),
    responses(
        (status = 200, description = "text/event-stream of `state` and `progress` events (data: the job; id: its revision)", content_type = "text/event-stream"),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such job for this key", body = ErrorBody),
    ))]
pub async fn jobs_events(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_seen: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1);
    // Subscribe before the first read, so no change between the two is missed.
    let mut changes = state.watch.subscribe();
    let store = state.client.store().clone();
    let scope = caller.scope().map(str::to_string);
    let first = store
        .get(&id, scope.as_deref())
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    let (tx, rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let mut sent_rev = last_seen;
        let mut sent_state: Option<(JobState, i32)> = None;
        let mut job = first;
        loop {
            if job.rev > sent_rev {
                let now = (job.state, job.attempt);
                // The first event after a (re)connect is always a `state` event.
                let name = match sent_state {
                    Some(prev) if prev == now => "progress",
                    _ => "state",
                };
                if tx.send(job_event(name, &job)).await.is_err() {
                    return;
                }
                sent_rev = job.rev;
                sent_state = Some(now);
            }
            if job.state.is_terminal() {
                return;
            }
            // Wait for an event naming the job (or the recheck), then read it again.
            let deadline = tokio::time::Instant::now() + RECHECK;
            loop {
                tokio::select! {
                    m = changes.recv() => match m {
                        Ok(payload) if mentions(&payload, &id) => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tx.closed() => return,
                }
            }
            match store.get(&id, scope.as_deref()).await {
                Ok(Some(j)) => job = j,
                Ok(None) => return,
                Err(e) => tracing::debug!(error = %e, "job stream read failed; retrying"),
            }
        }
    });
    Ok(stream(rx).into_response())
}

/// Filters of the fleet stream.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetQuery {
    /// Only this queue.
    #[param(nullable = false, max_length = 128)]
    pub queue: Option<String>,
    /// Only this kind.
    #[param(nullable = false, max_length = 128)]
    pub kind: Option<String>,
    /// Only changes into this state.
    #[param(value_type = Option<crate::view::StateFilter>, nullable = false, inline)]
    pub state: Option<String>,
}

/// State changes across the fleet.
#[utoipa::path(get, path = "/v1/events", tag = "operators", security(("bearer" = [])),
    params(FleetQuery),
    responses(
        (status = 200, description = "text/event-stream of `state` events (data: the job; id: its revision)", content_type = "text/event-stream"),
        (status = 400, description = "invalid_state", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 403, description = "a submitter key", body = ErrorBody),
    ))]
pub async fn events_index(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<FleetQuery>,
) -> Result<Response, ApiError> {
    caller.require_viewer()?;
    for (name, v) in [("kind", &q.kind), ("queue", &q.queue)] {
        if v.as_ref().is_some_and(|v| v.chars().count() > 128) {
            return Err(ApiError::bad_request(
                "invalid_filter",
                format!("{name} is too long"),
            ));
        }
    }
    let want_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_state", format!("'{s}' is not a job state"))
        })?),
    };
    let mut feed = state.fleet.subscribe(&state);
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        loop {
            let job = tokio::select! {
                j = feed.recv() => match j {
                    Ok(j) => j,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = Event::default().comment(format!("{n} changes skipped: the client read too slowly"));
                        if tx.send(note).await.is_err() { return; }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            };
            let keep = q.queue.as_ref().is_none_or(|x| *x == job.queue)
                && q.kind.as_ref().is_none_or(|x| *x == job.kind)
                && want_state.is_none_or(|s| s == job.state);
            if keep && tx.send(job_event("state", &job)).await.is_err() {
                return;
            }
        }
    });
    Ok(stream(rx).into_response())
}

/// One per API process: turns change events into state changes of whole jobs, read from
/// MongoDB once per batch of events and fanned out to every fleet stream.
#[derive(Clone, Default)]
pub struct FleetFeed {
    tx: Arc<Mutex<Option<broadcast::Sender<Arc<Job>>>>>,
}

impl FleetFeed {
    /// A receiver of state changes; starts the feed on first use.
    pub fn subscribe(&self, state: &AppState) -> broadcast::Receiver<Arc<Job>> {
        let mut slot = self.tx.lock().expect("fleet feed lock");
        if let Some(tx) = slot.as_ref() {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(4096);
        *slot = Some(tx.clone());
        tokio::spawn(run_feed(state.clone(), tx));
        rx
    }
}

async fn run_feed(state: AppState, tx: broadcast::Sender<Arc<Job>>) {
    let mut changes = state.watch.subscribe();
    // Last state seen of each live job, so progress-only changes are not sent as state
    // changes. Terminal jobs leave it.
    let mut seen: HashMap<String, (JobState, i32)> = HashMap::new();
    loop {
        let mut ids: Vec<String> = Vec::new();
        match changes.recv().await {
            Ok(p) => ids.extend(p.split(',').map(str::to_string)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "fleet feed lagged behind the change events");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
        // Take whatever else arrived meanwhile: one read for the lot.
        while ids.len() < 1000 {
            match changes.try_recv() {
                Ok(p) => ids.extend(p.split(',').map(str::to_string)),
                Err(_) => break,
            }
        }
        ids.sort();
        ids.dedup();
        if tx.receiver_count() == 0 {
            // Nobody listens right now: skip the read (no client waits for these changes).
            seen.clear();
            continue;
        }
        let jobs = match state.client.store().get_many(&ids).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "fleet feed could not read changed jobs");
                continue;
            }
        };
        for job in jobs {
            let now = (job.state, job.attempt);
            if seen.get(&job.id) == Some(&now) {
                continue;
            }
            if job.state.is_terminal() {
                seen.remove(&job.id);
            } else {
                seen.insert(job.id.clone(), now);
            }
            let _ = tx.send(Arc::new(job));
        }
    }
}
