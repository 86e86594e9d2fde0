//! The webhook dispatcher: turns the outbox entries that terminal writes (and rate-limited
//! progress writes) leave on jobs into deliveries and delivery jobs. Also keeps the worker's
//! table of webhook subscriptions fresh.
//!
//! Every step is idempotent, so a dispatcher that dies anywhere (or two that race past the
//! lock) never loses an event and never sends one twice to the same target:
//! 1. read jobs whose outbox is pending;
//! 2. insert one delivery per (event, target) with a deterministic id (duplicates ignored);
//! 3. submit one `webhook_delivery` job per delivery with the delivery id as idempotency key
//!    (a second submission returns the first job);
//! 4. only then clear the outbox entry, guarded on its event id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jobmill::client::MAX_BATCH;
use jobmill::view::{ts, JobView};
use jobmill::webhooks::records::{list_key, sending_job_key, status, Delivery};
use jobmill::webhooks::{delivery_job, PROGRESS, TENANT};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// How often the outbox is scanned while it has work (the lock lives as long, so one process
/// scans per round).
const EVERY: Duration = Duration::from_millis(200);
/// Longest pause while the outbox stays empty. The scan is an index lookup on MongoDB but a
/// collection scan on the MongoDB-compatible server, so an idle dispatcher backs off instead of
/// taxing every other write; a callback then waits at most this long to be dispatched.
const IDLE_MAX: Duration = Duration::from_millis(1600);
/// Jobs handled per round trip.
const BATCH: i64 = 500;

pub(crate) async fn dispatcher(shared: Arc<Shared>, timeout: Duration, stop: CancellationToken) {
    let mut pause = EVERY;
    loop {
        match shared
            .queue
            .try_lock("webhook-dispatch", &shared.worker, EVERY)
            .await
        {
            Ok(true) => loop {
                match dispatch_once(&shared, timeout).await {
                    Ok(n) if n as i64 == BATCH && !stop.is_cancelled() => continue,
                    Ok(0) => {
                        pause = (pause * 2).min(IDLE_MAX);
                        break;
                    }
                    Ok(_) => {
                        pause = EVERY;
                        break;
                    }
                    Err(e) => {
                        // The entries stay pending and the next round tries again.
                        tracing::warn!(error = %e, "webhook dispatch failed");
                        break;
                    }
                }
            },
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "dispatch lock"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Keep [`Shared::subscriptions`](crate::Shared) fresh: reload every
/// [`REFRESH`](jobmill::webhooks::subscriptions::REFRESH), and at once when the API announces
/// an endpoint change. The announcement is only a hint; the timer bounds a missed one.
pub(crate) async fn subscriptions(shared: Arc<Shared>, stop: CancellationToken) {
    let hooks = shared.store.webhooks();
    loop {
        if let Err(e) = shared.subscriptions.refresh(&hooks).await {
            tracing::debug!(error = %e, "webhook subscriptions reload failed; keeping the last");
        }
        tokio::select! {
            _ = tokio::time::sleep(jobmill::webhooks::subscriptions::REFRESH) => {}
            _ = shared.subscriptions_changed.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One round; returns how many outbox entries it handled.
async fn dispatch_once(shared: &Shared, timeout: Duration) -> jobmill::Result<usize> {
    let jobs = shared.store.pending_outbox(BATCH).await?;
    if jobs.is_empty() {
        return Ok(0);
    }
    let hooks = shared.store.webhooks();
    let tenants: Vec<String> = jobs
        .iter()
        .map(|j| j.tenant.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let endpoints = hooks.enabled_endpoints(&tenants).await?;
    let mut deliveries = Vec::new();
    let mut handled = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let Some(ob) = &job.outbox else { continue };
        handled.push((job.id.clone(), ob.id.clone()));
        let mut targets: Vec<(String, String, Option<String>)> = Vec::new();
        // A job's own callback_url hears only how it ended; progress is for endpoints that
        // subscribe to it.
        if let Some(url) = job.callback_url.as_ref().filter(|_| ob.event != PROGRESS) {
            targets.push(("cb".into(), url.clone(), None));
        }
        for ep in endpoints
            .iter()
            .filter(|e| e.tenant == job.tenant && e.wants(&ob.event))
        {
            targets.push((ep.id.clone(), ep.url.clone(), Some(ep.id.clone())));
        }
        if targets.is_empty() {
            continue;
        }
        // The body is fixed now and sent byte for byte on every attempt and replay.
        let body = json!({
            "type": ob.event,
            "timestamp": ts(ob.at_ms),
            "data": JobView::from(job),
        })
        .to_string();
        let now = jobmill::job::now_ms();
        for (tag, url, endpoint_id) in targets {
            let id = format!("dlv_{}_{tag}", ob.id.trim_start_matches("evt_"));
            deliveries.push(Delivery {
                list_key: list_key(now, &id),
                id,
                tenant: job.tenant.clone(),
                job_id: job.id.clone(),
                endpoint_id,
                url,
                event: ob.event.clone(),
                event_id: ob.id.clone(),
                body_json: body.clone(),
                created_ms: now,
                status: status::PENDING.into(),
                attempt_seq: 0,
                replays: 0,
                attempts: Default::default(),
                retention: Some(hooks.retention_of_new()),
            });
        }
    }
    hooks.insert_deliveries(&deliveries).await?;
    for chunk in deliveries.chunks(MAX_BATCH) {
        let news = chunk
            .iter()
            .map(|d| delivery_job(&d.id, sending_job_key(&d.id, 0), timeout))
            .collect();
        shared.client.submit_batch(TENANT, news).await?;
    }
    shared.store.clear_outbox(&handled).await?;
    if !deliveries.is_empty() {
        tracing::debug!(
            events = handled.len(),
            deliveries = deliveries.len(),
            "webhooks dispatched"
        );
    }
    Ok(jobs.len())
}
