//! `webhook_delivery`: sends one webhook delivery (an event to one target) and, until a 2xx,
//! asks to be retried on the webhook backoff schedule. Submitted only by the worker's
//! outbox subscriber (owner [`TENANT`](crate::TENANT)), one job per delivery, with the
//! delivery id as idempotency key.
//!
//! At least once: a worker that dies after the POST but before recording it sends again, with
//! the same `webhook-id`, which is what receivers dedupe on.
//!
//! Every status it records is also told to the [`DeliveryObserver`] the worker wired in (its
//! `jobmill_webhook_deliveries_total{status}` counter), after MongoDB took it.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use jobmill::error::{Error, Result};
use jobmill::job::now_ms;
use jobmill::kind::{JobContext, JobKind, KindDefaults, Outcome};
use schemars::JsonSchema;

use crate::records::{AttemptLog, Delivery, DeliveryStatus, Endpoint, WebhookStore};
use crate::{
    guard, retry_delay, send, signing, WebhookSettings, DELIVERY_ATTEMPTS, LOGGED_BODY_BYTES,
    QUEUE, TENANT,
};

/// Arguments of `webhook_delivery`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryArgs {
    /// The delivery to send.
    #[schemars(length(min = 1, max = 200))]
    pub delivery_id: String,
}

/// Told of each delivery status the kind records: `pending` after a failed attempt that will
/// be retried, or the final `delivered`, `failed` or `gone`. Called after the store took the
/// status, so a count fed from here follows the records (a worker killed between the POST and
/// the record sends again and counts once).
pub trait DeliveryObserver: Send + Sync {
    /// `status` was just recorded for a delivery.
    fn recorded(&self, status: DeliveryStatus);
}

/// Sends one delivery; see the module doc. An internal kind: only the outbox subscriber and
/// replays submit it.
pub struct WebhookDelivery {
    hooks: WebhookStore,
    settings: WebhookSettings,
    observer: Option<Arc<dyn DeliveryObserver>>,
}

impl WebhookDelivery {
    /// The kind, with the collections it reads and writes.
    pub fn new(hooks: WebhookStore, settings: WebhookSettings) -> Self {
        WebhookDelivery {
            hooks,
            settings,
            observer: None,
        }
    }

    /// Tell `observer` (if any) of every status recorded.
    pub fn observed_by(mut self, observer: Option<Arc<dyn DeliveryObserver>>) -> Self {
        self.observer = observer;
        self
    }
}

/// The delivery records as this kind writes them: the store, then the observer.
struct Records<'a> {
    store: &'a WebhookStore,
    observer: Option<&'a dyn DeliveryObserver>,
}

impl Records<'_> {
    fn observe(&self, status: DeliveryStatus) {
        if let Some(o) = self.observer {
            o.recorded(status);
        }
    }

    async fn set_status(&self, id: &str, status: DeliveryStatus) -> Result<()> {
        self.store.set_status(id, status).await?;
        self.observe(status);
        Ok(())
    }

    async fn record_attempt(
        &self,
        id: &str,
        log: &AttemptLog,
        status: DeliveryStatus,
    ) -> Result<()> {
        self.store.record_attempt(id, log, status).await?;
        self.observe(status);
        Ok(())
    }
}

impl JobKind for WebhookDelivery {
    const NAME: &'static str = "webhook_delivery";
    type Args = DeliveryArgs;

    fn validate(&self, a: &DeliveryArgs) -> std::result::Result<(), String> {
        if a.delivery_id.is_empty() || a.delivery_id.len() > 200 {
            return Err("delivery_id must be 1-200 characters".into());
        }
        Ok(())
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            queue: QUEUE,
            max_attempts: DELIVERY_ATTEMPTS,
            timeout: Duration::from_secs(60),
        }
    }

    async fn run(&self, ctx: JobContext, args: DeliveryArgs) -> Outcome {
        // The API refuses internal kinds; this stays as a second line of defence.
        if ctx.tenant != TENANT {
            return Outcome::fail("webhook_delivery jobs are submitted by jobmill itself");
        }
        let hooks = &self.hooks;
        let records = Records {
            store: hooks,
            observer: self.observer.as_deref(),
        };
        match deliver(&ctx, &self.settings, &records, &args.delivery_id).await {
            Ok(o) => o,
            // MongoDB trouble on the last attempt: end the delivery too, so it shows `failed`
            // and can be replayed. If even that write fails, the replay route sees the
            // delivery's job ended and lets it be replayed anyway.
            Err(e) if ctx.attempt >= ctx.max_attempts => {
                if let Err(e2) = records
                    .set_status(&args.delivery_id, DeliveryStatus::Failed)
                    .await
                {
                    tracing::warn!(delivery = %args.delivery_id, error = %e2, "could not mark the delivery failed");
                }
                Outcome::fail(format!("store: {e}; out of attempts"))
            }
            // MongoDB trouble: nothing was decided; try again on the job backoff.
            Err(e) => Outcome::retry(format!("store: {e}")),
        }
    }
}

async fn deliver(
    ctx: &JobContext,
    settings: &WebhookSettings,
    records: &Records<'_>,
    id: &str,
) -> Result<Outcome> {
    let hooks = records.store;
    let Some(d) = hooks.get_delivery(id, None).await? else {
        return Ok(Outcome::fail(format!(
            "delivery {id} does not exist (expired?)"
        )));
    };
    if d.status != DeliveryStatus::Pending {
        // A rerun after the outcome was recorded (worker crash): nothing left to do.
        return Ok(Outcome::success(json!({ "status": d.status })));
    }
    let (secrets, endpoint) = match &d.endpoint_id {
        Some(eid) => match hooks.get_endpoint(eid, None).await? {
            None => {
                records.set_status(&d.id, DeliveryStatus::Failed).await?;
                return Ok(Outcome::fail("the endpoint was deleted"));
            }
            Some(ep) if ep.enabled != 1 => {
                records.set_status(&d.id, DeliveryStatus::Failed).await?;
                return Ok(Outcome::fail(format!(
                    "the endpoint is disabled ({})",
                    ep.disabled_reason.as_deref().unwrap_or("by hand")
                )));
            }
            Some(ep) => (ep.signing_secrets(), Some(ep)),
        },
        None => (
            hooks.tenant_secret(&d.tenant).await?.signing_secrets(),
            None,
        ),
    };
    let attempt = hooks.next_attempt(&d.id).await?;
    let at_ms = now_ms();
    let mut log = AttemptLog {
        attempt,
        at_ms,
        status: None,
        latency_ms: 0,
        error: None,
        response: None,
    };

    // Checked again at send time, on the addresses we will connect to.
    let rules = settings;
    let target = match guard::parse_url(&d.url) {
        Ok(u) => guard::resolve(&u, &rules.allow, &rules.destinations)
            .await
            .map(|a| (u, a)),
        // It passed when it was stored; failing now means the rules got stricter, and it
        // never will pass: refused for good, not retried.
        Err(Error::InvalidJob { message, .. }) => {
            Err(Error::invalid("callback_url_not_allowed", message))
        }
        Err(e) => Err(e),
    };
    let (url, addrs) = match target {
        Ok(t) => t,
        Err(Error::InvalidJob {
            code: "callback_url_not_allowed" | "destination_not_allowed",
            message,
        }) => {
            log.error = Some(message.clone());
            records
                .record_attempt(&d.id, &log, DeliveryStatus::Failed)
                .await?;
            return Ok(Outcome::fail(message));
        }
        Err(e) => {
            // A host that does not resolve (now) is retried like a connection error.
            let msg = e.to_string();
            log.error = Some(msg.clone());
            return failed(ctx, settings, records, &d, endpoint.as_ref(), log, msg).await;
        }
    };

    let timestamp = at_ms / 1000;
    let signature =
        signing::signature_header(&secrets, &d.event_id, timestamp, d.body_json.as_bytes())?;
    let msg = send::Signed {
        id: d.event_id.clone(),
        timestamp,
        signature,
        body: d.body_json.clone(),
    };
    let answer = send::post(&url, &addrs, &msg, settings.timeout).await;
    log.status = answer.status.map(i32::from);
    log.latency_ms = answer.latency.as_millis() as i64;
    log.error = answer.error.clone();
    if !answer.body.is_empty() {
        let n = answer.body.len().min(LOGGED_BODY_BYTES);
        log.response = Some(String::from_utf8_lossy(&answer.body[..n]).into_owned());
    }
    match answer.status {
        Some(s) if (200..300).contains(&s) => {
            records
                .record_attempt(&d.id, &log, DeliveryStatus::Delivered)
                .await?;
            if let Some(ep) = &endpoint {
                hooks.endpoint_succeeded(ep).await?;
            }
            tracing::debug!(delivery = %d.id, attempt, status = s, "webhook delivered");
            Ok(Outcome::success(
                json!({ "status": DeliveryStatus::Delivered, "http_status": s, "attempt": attempt }),
            ))
        }
        Some(410) => {
            records
                .record_attempt(&d.id, &log, DeliveryStatus::Gone)
                .await?;
            if let Some(ep) = &endpoint {
                hooks
                    .set_enabled(&ep.id, None, false, Some("the receiver answered 410 Gone"))
                    .await?;
                tracing::info!(endpoint = %ep.id, "webhook endpoint answered 410; disabled");
            }
            Ok(Outcome::fail(
                "the receiver answered 410 Gone; delivery stopped",
            ))
        }
        Some(s) => {
            let msg = format!("the receiver answered HTTP {s}");
            failed(ctx, settings, records, &d, endpoint.as_ref(), log, msg).await
        }
        None => {
            let msg = answer.error.unwrap_or_else(|| "no answer".into());
            failed(ctx, settings, records, &d, endpoint.as_ref(), log, msg).await
        }
    }
}

/// A failed attempt: retry on the webhook schedule, or end the delivery when the schedule ran
/// out or the endpoint has been failing for too long.
async fn failed(
    ctx: &JobContext,
    settings: &WebhookSettings,
    records: &Records<'_>,
    d: &Delivery,
    endpoint: Option<&Endpoint>,
    log: AttemptLog,
    msg: String,
) -> Result<Outcome> {
    let disabled = match endpoint {
        Some(ep) => {
            records
                .store
                .endpoint_failed(ep, settings.disable_after)
                .await?
        }
        None => false,
    };
    if disabled || ctx.attempt >= ctx.max_attempts {
        records
            .record_attempt(&d.id, &log, DeliveryStatus::Failed)
            .await?;
        let why = if disabled {
            "the endpoint kept failing and was disabled"
        } else {
            "the retry schedule is exhausted"
        };
        return Ok(Outcome::fail(format!("{msg}; {why}")));
    }
    records
        .record_attempt(&d.id, &log, DeliveryStatus::Pending)
        .await?;
    let delay = retry_delay(settings.retry_base, ctx.attempt, rand::random::<f64>());
    Ok(Outcome::retry_after(delay, msg))
}
