//! The webhooks' side of the job-event outbox: which events are wanted (the subscriptions
//! table), and turning pending events into deliveries and delivery jobs.
//!
//! Every step is idempotent, so a round that dies anywhere (or two that race) never loses an
//! event and never sends one twice to the same target:
//! 1. insert one delivery per (event, target) with a deterministic id (duplicates ignored);
//! 2. return one `webhook_delivery` job per delivery with the delivery id as idempotency key
//!    (the engine's outbox loop submits them; a second submission returns the first job);
//! 3. the engine clears the outbox entry only after that.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jobmill::job::{now_ms, Job};
use jobmill::outbox::{BoxFuture, FollowUp, JobEvent, Subscriber};
use jobmill::view::{ts, JobView};
use jobmill::Result;
use serde_json::json;

use crate::records::{list_key, sending_job_key, Delivery, DeliveryStatus, WebhookStore};
use crate::subscriptions::Subscriptions;
use crate::{callback_url, delivery_job, WebhookSettings, TENANT};

/// The webhooks feature as a subscriber of the outbox.
pub struct Dispatcher {
    pub(crate) hooks: WebhookStore,
    pub(crate) settings: WebhookSettings,
    pub(crate) subscriptions: Arc<Subscriptions>,
}

impl Subscriber for Dispatcher {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn wants(&self, tenant: &str, event: JobEvent) -> bool {
        self.subscriptions.wants(tenant, event)
    }

    fn progress_every(&self) -> Option<Duration> {
        Some(self.settings.progress_every)
    }

    fn handle<'a>(&'a self, jobs: &'a [Job]) -> BoxFuture<'a, Result<Vec<FollowUp>>> {
        Box::pin(self.deliveries_of(jobs))
    }
}

impl Dispatcher {
    async fn deliveries_of(&self, jobs: &[Job]) -> Result<Vec<FollowUp>> {
        let tenants: Vec<String> = jobs
            .iter()
            .map(|j| j.tenant.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let endpoints = self.hooks.enabled_endpoints(&tenants).await?;
        let mut deliveries = Vec::new();
        for job in jobs {
            let Some(ob) = &job.outbox else { continue };
            let mut targets: Vec<(String, String, Option<String>)> = Vec::new();
            // A job's own callback_url hears only how it ended; progress is for endpoints that
            // subscribe to it.
            if let Some(url) = callback_url(job).filter(|_| ob.event != JobEvent::Progress) {
                targets.push(("cb".into(), url.to_string(), None));
            }
            for ep in endpoints
                .iter()
                .filter(|e| e.tenant == job.tenant && e.wants(ob.event))
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
            let now = now_ms();
            for (tag, url, endpoint_id) in targets {
                let id = format!("dlv_{}_{tag}", ob.id.trim_start_matches("evt_"));
                deliveries.push(Delivery {
                    list_key: list_key(now, &id),
                    id,
                    tenant: job.tenant.clone(),
                    job_id: job.id.clone(),
                    endpoint_id,
                    url,
                    event: ob.event,
                    event_id: ob.id.clone(),
                    body_json: body.clone(),
                    created_ms: now,
                    status: DeliveryStatus::Pending,
                    attempt_seq: 0,
                    replays: 0,
                    attempts: Default::default(),
                    retention: Some(self.hooks.retention_of_new()),
                });
            }
        }
        self.hooks.insert_deliveries(&deliveries).await?;
        if !deliveries.is_empty() {
            tracing::debug!(
                events = jobs.len(),
                deliveries = deliveries.len(),
                "webhooks dispatched"
            );
        }
        Ok(deliveries
            .iter()
            .map(|d| FollowUp {
                owner: TENANT.to_string(),
                job: delivery_job(&d.id, sending_job_key(&d.id, 0), self.settings.timeout),
            })
            .collect())
    }
}
