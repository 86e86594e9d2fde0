//! jobmill-webhooks: signed result callbacks to the Standard Webhooks specification. A feature
//! of jobmill: it plugs into the engine as a submit hook (checks `callback_url`), a subscriber
//! of the job-event outbox, an internal kind (`webhook_delivery`) and two loops, and owns its
//! collections, indexes, settings and Redis channel.
//!
//! # How an event travels
//! 1. The engine's write that moves a job to a terminal state also records an outbox entry on
//!    the job when this feature wants it ([`Dispatcher`] says so from its subscriptions table,
//!    or the job was marked at submit), so the intent to notify is as durable as the state.
//! 2. The engine's outbox loop hands pending entries to [`Dispatcher`], which inserts one
//!    [`records::Delivery`] per (event, target) with a deterministic id and returns one
//!    `webhook_delivery` job per delivery on the [`QUEUE`] queue (idempotency key = delivery
//!    id); the engine submits them, then clears the entry.
//! 3. The `webhook_delivery` job ([`delivery`]) resolves the host, refuses private addresses
//!    and destinations outside the operator's list ([`guard`]), signs ([`signing`]), POSTs ([`send`]), logs the attempt and asks for a retry
//!    with this crate's backoff ([`retry_delay`]) until a 2xx, a `410`, or the schedule ends.
//!
//! # Layout
//! - [`Webhooks`]: the feature, as the binaries assemble it; [`WebhookSettings`] its section.
//! - [`callbacks`]: the submit hook.
//! - [`dispatcher`]: the outbox subscriber.
//! - [`delivery`]: the `webhook_delivery` kind.
//! - [`signing`]: `whsec_` secrets and `v1,` HMAC-SHA256 signatures.
//! - [`guard`]: URL checks, DNS resolution and the private-address refusal (SSRF).
//! - [`records`]: the MongoDB collections: endpoints, deliveries, tenant signing secrets.
//! - [`send`]: one HTTP attempt, with pinned addresses, no redirects and a bounded read.
//! - [`subscriptions`]: the worker's view of which tenants' endpoints want which events, so an
//!   endpoint registered after a job was submitted still gets that job's events.
#![warn(missing_docs)]

pub mod callbacks;
pub mod delivery;
pub mod dispatcher;
pub mod guard;
pub mod records;
pub mod send;
pub mod signing;
pub mod subscriptions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobmill::config::{Bounds, Env, RedisTarget, Section, Setting};
use jobmill::job::Job;
use jobmill::kind::Registry;
use jobmill::outbox::{BoxFuture, JobEvent, Subscriber};
use jobmill::pubsub::Subscription;
use jobmill::queue::RedisQueue;
use jobmill::store::Store;
use jobmill::{NewJob, Result, SubmitHook};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use callbacks::CallbackCheck;
pub use delivery::{DeliveryObserver, WebhookDelivery};
pub use dispatcher::Dispatcher;
pub use guard::{AllowList, Destinations};
use records::WebhookStore;
use subscriptions::Subscriptions;

/// The queue delivery jobs run on. Workers consume it by default (`JOBMILL_QUEUES`).
pub const QUEUE: &str = "webhooks";
/// The tenant that owns delivery jobs. It contains a `:`, which API key names cannot, so no
/// caller can own (or submit as) it.
pub const TENANT: &str = "system:webhooks";
/// The job field (in [`Job::ext`]) holding the URL that hears how the job ended.
pub const CALLBACK_URL: &str = "callback_url";
/// The Redis channel (under the key prefix) on which the API announces endpoint changes.
pub const ENDPOINTS_CHANNEL: &str = "endpoints";
/// Attempts of one delivery job: with the backoff below this spans about a day (see
/// [`schedule_span`]).
pub const DELIVERY_ATTEMPTS: u32 = 22;
/// The backoff ceiling stops doubling after this many retries.
const DOUBLINGS: u32 = 11;
/// Bytes of a response body kept in the attempt log.
pub const LOGGED_BODY_BYTES: usize = 1024;
/// Bytes of a response body read at most (the rest is never received).
pub const MAX_READ_BYTES: usize = 4096;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `JOBMILL_WEBHOOK_ALLOW`.
pub const ALLOW: Setting = Setting { env: "JOBMILL_WEBHOOK_ALLOW", default: "", bounds: Bounds::Text, doc: "hosts (host or host:port, comma-separated) whose callbacks may resolve to private or loopback addresses" };
/// `JOBMILL_WEBHOOK_DESTINATIONS`.
pub const DESTINATIONS: Setting = Setting { env: "JOBMILL_WEBHOOK_DESTINATIONS", default: "", bounds: Bounds::Text, doc: "the only destinations webhooks may reach: host names, IPs or CIDRs, each with an optional :port, comma-separated (none: any public address)" };
/// `JOBMILL_WEBHOOK_TIMEOUT`.
pub const TIMEOUT: Setting = Setting {
    env: "JOBMILL_WEBHOOK_TIMEOUT",
    default: "15s",
    bounds: Bounds::Duration(Duration::from_millis(100), secs(300)),
    doc: "timeout of one webhook delivery attempt",
};
/// `JOBMILL_WEBHOOK_RETRY_BASE`.
pub const RETRY_BASE: Setting = Setting {
    env: "JOBMILL_WEBHOOK_RETRY_BASE",
    default: "5s",
    bounds: Bounds::Duration(Duration::from_millis(1), secs(3600)),
    doc: "first webhook retry delay ceiling (doubles 11 times; 22 attempts span about a day)",
};
/// `JOBMILL_WEBHOOK_DISABLE_AFTER`.
pub const DISABLE_AFTER: Setting = Setting {
    env: "JOBMILL_WEBHOOK_DISABLE_AFTER",
    default: "5d",
    bounds: Bounds::Duration(Duration::ZERO, secs(365 * 86_400)),
    doc: "an endpoint failing this long without a success is disabled",
};
/// `JOBMILL_WEBHOOK_ROTATION_GRACE`.
pub const ROTATION_GRACE: Setting = Setting {
    env: "JOBMILL_WEBHOOK_ROTATION_GRACE",
    default: "24h",
    bounds: Bounds::Duration(Duration::ZERO, secs(30 * 86_400)),
    doc: "how long a rotated-out webhook secret keeps signing",
};
/// `JOBMILL_WEBHOOK_PROGRESS_EVERY`.
pub const PROGRESS_EVERY: Setting = Setting {
    env: "JOBMILL_WEBHOOK_PROGRESS_EVERY",
    default: "1s",
    bounds: Bounds::Duration(Duration::from_millis(10), secs(3600)),
    doc: "least time between two job.progress events of one job (for endpoints subscribed to them)",
};

/// Webhook settings (`JOBMILL_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Hosts (or host:port) that may resolve to private addresses.
    pub allow: AllowList,
    /// The only destinations webhooks may reach (`JOBMILL_WEBHOOK_DESTINATIONS`); empty: any
    /// that the address rules let through.
    pub destinations: Destinations,
    /// HTTP timeout of one attempt.
    pub timeout: Duration,
    /// Delay ceiling of the first retry.
    pub retry_base: Duration,
    /// An endpoint failing for this long without a success is disabled.
    pub disable_after: Duration,
    /// How long the previous secret keeps signing after a rotation.
    pub rotation_grace: Duration,
    /// Least time between two `job.progress` events of one job.
    pub progress_every: Duration,
}

impl Section for WebhookSettings {
    const SETTINGS: &'static [Setting] = &[
        ALLOW,
        DESTINATIONS,
        TIMEOUT,
        RETRY_BASE,
        DISABLE_AFTER,
        ROTATION_GRACE,
        PROGRESS_EVERY,
    ];

    fn read(env: &Env) -> Self {
        WebhookSettings {
            allow: env.parse(&ALLOW, AllowList::parse).unwrap_or_default(),
            destinations: env
                .parse(&DESTINATIONS, Destinations::parse)
                .unwrap_or_default(),
            timeout: env.duration(&TIMEOUT),
            retry_base: env.duration(&RETRY_BASE),
            disable_after: env.duration(&DISABLE_AFTER),
            rotation_grace: env.duration(&ROTATION_GRACE),
            progress_every: env.duration(&PROGRESS_EVERY),
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings::read(&Env::new(|_| None))
    }
}

/// Delay before retry number `failed` (1 = after the first failed attempt): the ceiling doubles
/// from `base` for [`DOUBLINGS`] retries, then stays; the delay is drawn from the upper half of
/// the ceiling (`unit` in 0..1), so retries of many deliveries spread out but the whole
/// schedule still spans at least half of [`schedule_span`].
pub fn retry_delay(base: Duration, failed: u32, unit: f64) -> Duration {
    let ceiling = base.saturating_mul(1 << failed.clamp(1, DOUBLINGS + 1).saturating_sub(1));
    ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// The longest a delivery is retried: the sum of every retry's ceiling.
pub fn schedule_span(base: Duration) -> Duration {
    (1..DELIVERY_ATTEMPTS)
        .map(|n| retry_delay(base, n, 1.0))
        .sum()
}

/// The job that sends delivery `id`, deduplicated by `key` (the delivery id for the first run,
/// `<id>:replay:<n>` for replays).
pub fn delivery_job(id: &str, key: String, timeout: Duration) -> NewJob {
    use jobmill::JobKind as _;
    NewJob {
        kind: WebhookDelivery::NAME.into(),
        args: serde_json::json!({ "delivery_id": id }),
        queue: Some(QUEUE.into()),
        max_attempts: Some(DELIVERY_ATTEMPTS),
        // Room for the HTTP timeout plus the store writes around it.
        timeout_ms: Some((timeout + Duration::from_secs(30)).as_millis() as u64),
        idempotency_key: Some(key),
        ..Default::default()
    }
}

/// The job's `callback_url`, if it has one.
pub fn callback_url(job: &Job) -> Option<&str> {
    job.ext.get(CALLBACK_URL).and_then(|v| v.as_str())
}

/// The webhooks feature, as a binary assembles it. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    hooks: WebhookStore,
    settings: WebhookSettings,
    queue: RedisQueue,
    redis: RedisTarget,
    subscriptions: Arc<Subscriptions>,
    changed: Arc<Notify>,
    callbacks: Arc<CallbackCheck>,
    observer: Option<Arc<dyn DeliveryObserver>>,
}

impl Webhooks {
    /// The feature on these stores. Deliveries are kept as long as jobs (`store`'s retention).
    pub fn new(
        store: &Store,
        queue: &RedisQueue,
        redis: RedisTarget,
        settings: WebhookSettings,
    ) -> Self {
        let hooks = WebhookStore::new(store.database(), store.retention());
        Webhooks {
            callbacks: Arc::new(CallbackCheck {
                hooks: hooks.clone(),
                allow: settings.allow.clone(),
                destinations: settings.destinations.clone(),
                has_endpoints: Mutex::new(HashMap::new()),
            }),
            hooks,
            settings,
            queue: queue.clone(),
            redis,
            subscriptions: Arc::new(Subscriptions::default()),
            changed: Arc::new(Notify::new()),
            observer: None,
        }
    }

    /// Tell `observer` of every delivery status the `webhook_delivery` kind records (the
    /// worker counts them in its metrics). Call before [`Webhooks::register_kinds`]. This crate
    /// knows no metrics library: whoever assembles the worker wires the two together.
    pub fn observe_deliveries(mut self, observer: Arc<dyn DeliveryObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The collections.
    pub fn store(&self) -> &WebhookStore {
        &self.hooks
    }

    /// The settings.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// Create the indexes. Idempotent; both binaries call it at startup.
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.hooks.ensure_indexes().await
    }

    /// The check of `callback_url` and of the tenant's endpoints at submit.
    pub fn submit_hook(&self) -> Arc<dyn SubmitHook> {
        self.callbacks.clone()
    }

    /// The outbox subscriber (the worker runs it).
    pub fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(Dispatcher {
            hooks: self.hooks.clone(),
            settings: self.settings.clone(),
            subscriptions: self.subscriptions.clone(),
        })
    }

    /// Register the internal `webhook_delivery` kind.
    pub fn register_kinds(&self, r: &mut Registry) {
        r.register_internal(
            WebhookDelivery::new(self.hooks.clone(), self.settings.clone())
                .observed_by(self.observer.clone()),
        );
    }

    /// The worker's loops of this feature: keep the subscriptions table fresh.
    pub fn loops(&self, stop: CancellationToken) -> Vec<BoxFuture<'static, ()>> {
        vec![
            Box::pin(refresh_subscriptions(self.clone(), stop.clone())),
            Box::pin(listen_for_changes(self.clone(), stop)),
        ]
    }

    /// A tenant's endpoints just changed: forget the cached answer here and tell the workers,
    /// which decide again when each job ends (a lost message only delays that by their reload
    /// period).
    pub async fn endpoints_changed(&self, tenant: &str) {
        self.callbacks.forget(tenant);
        let channel = self.queue.keys().feature(ENDPOINTS_CHANNEL);
        if let Err(e) = self.queue.publish(&channel, tenant).await {
            tracing::debug!(error = %e, "could not announce an endpoint change");
        }
    }
}

/// Reload the subscriptions table every [`subscriptions::REFRESH`], and at once when the API
/// announces an endpoint change. The announcement is only a hint; the timer bounds a missed one.
async fn refresh_subscriptions(w: Webhooks, stop: CancellationToken) {
    loop {
        if let Err(e) = w.subscriptions.refresh(&w.hooks).await {
            tracing::debug!(error = %e, "webhook subscriptions reload failed; keeping the last");
        }
        tokio::select! {
            _ = tokio::time::sleep(subscriptions::REFRESH) => {}
            _ = w.changed.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Turn the API's announcements of endpoint changes into early reloads.
async fn listen_for_changes(w: Webhooks, stop: CancellationToken) {
    let channel = w.queue.keys().feature(ENDPOINTS_CHANNEL);
    let mut sub = loop {
        match Subscription::open(&w.redis, std::slice::from_ref(&channel)).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!(error = %e, "endpoint announcements: subscribe failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = sub.next() => w.changed.notify_one(),
            _ = stop.cancelled() => return,
        }
    }
}

/// The event types an endpoint may subscribe to, by name.
pub fn parse_events(names: &[String]) -> std::result::Result<Vec<JobEvent>, String> {
    names
        .iter()
        .map(|n| {
            JobEvent::parse(n).ok_or_else(|| {
                format!(
                    "unknown event type '{}'; known: {}",
                    n.chars().take(64).collect::<String>(),
                    JobEvent::ALL.map(JobEvent::as_str).join(", ")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_doubles_then_levels_off_and_spans_about_a_day() {
        let b = Duration::from_secs(5);
        assert_eq!(retry_delay(b, 1, 1.0), b);
        assert_eq!(retry_delay(b, 2, 1.0), b * 2);
        assert_eq!(
            retry_delay(b, 3, 0.0),
            b * 2,
            "lower half of a 20 s ceiling"
        );
        assert_eq!(retry_delay(b, 12, 1.0), b * 2048);
        assert_eq!(retry_delay(b, 21, 1.0), b * 2048);
        let span = schedule_span(b);
        assert!(
            span > Duration::from_secs(20 * 3600) && span < Duration::from_secs(40 * 3600),
            "{span:?}"
        );
        // Even with the shortest draws, retries go on for more than half a day.
        let min: Duration = (1..DELIVERY_ATTEMPTS).map(|n| retry_delay(b, n, 0.0)).sum();
        assert!(min > Duration::from_secs(12 * 3600), "{min:?}");
    }
}
