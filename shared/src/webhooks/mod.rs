//! Webhook result callbacks, signed to the Standard Webhooks specification.
//!
//! # How an event travels
//! 1. The write that moves a job to a terminal state also records an *outbox* entry on the job
//!    (`store.rs`), so the intent to notify is as durable as the state itself.
//! 2. The worker's dispatcher loop turns outbox entries into one [`records::Delivery`] per
//!    (event, target) with a deterministic id, enqueues one `webhook_delivery` job per delivery
//!    on the [`QUEUE`] queue (idempotency key = delivery id), then clears the entry.
//! 3. The `webhook_delivery` job ([`send`]) resolves the host, refuses private addresses and
//!    destinations outside the operator's list ([`guard`]), signs ([`signing`]), POSTs, logs the attempt and asks for a retry with
//!    this module's backoff ([`retry_delay`]) until a 2xx, a `410`, or the schedule ends.
//!
//! # Layout
//! - [`signing`]: `whsec_` secrets and `v1,` HMAC-SHA256 signatures.
//! - [`guard`]: URL checks, DNS resolution and the private-address refusal (SSRF).
//! - [`records`]: the MongoDB collections: endpoints, deliveries, tenant signing secrets.
//! - [`send`]: one HTTP attempt, with pinned addresses, no redirects and a bounded read.
//! - [`subscriptions`]: the worker's view of which tenants' endpoints want which events, so an
//!   endpoint registered after a job was submitted still gets that job's events.

pub mod guard;
pub mod records;
pub mod send;
pub mod signing;
pub mod subscriptions;

use std::time::Duration;

pub use guard::{AllowList, Destinations};

/// The queue delivery jobs run on. Workers consume it by default (`JOBMILL_QUEUES`).
pub const QUEUE: &str = "webhooks";
/// The tenant that owns delivery jobs. It contains a `:`, which API key names cannot, so no
/// caller can own (or submit as) it.
pub const TENANT: &str = "system:webhooks";
/// Event types an endpoint may subscribe to.
pub const EVENTS: [&str; 4] = ["job.succeeded", "job.failed", "job.cancelled", PROGRESS];
/// The events of a job that ended: what a job's `callback_url` receives, and what an endpoint
/// registered without `events` subscribes to.
pub const TERMINAL_EVENTS: [&str; 3] = ["job.succeeded", "job.failed", "job.cancelled"];
/// The progress event: sent only to endpoints that subscribe to it (never to a job's own
/// `callback_url`), at most once per [`WebhookSettings::progress_every`] per job.
pub const PROGRESS: &str = "job.progress";
/// Attempts of one delivery job: with the backoff below this spans about a day (see
/// [`schedule_span`]).
pub const DELIVERY_ATTEMPTS: u32 = 22;
/// The backoff ceiling stops doubling after this many retries.
const DOUBLINGS: u32 = 11;
/// Bytes of a response body kept in the attempt log.
pub const LOGGED_BODY_BYTES: usize = 1024;
/// Bytes of a response body read at most (the rest is never received).
pub const MAX_READ_BYTES: usize = 4096;

/// Default delay ceiling of the first retry.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(5);
/// Default HTTP timeout of one attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time an endpoint may fail without a success before it is disabled.
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(5 * 86_400);
/// Default time a rotated-out secret keeps signing.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(86_400);
/// Default least time between two `job.progress` events of one job.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(1);

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

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow: AllowList::default(),
            destinations: Destinations::default(),
            timeout: DEFAULT_TIMEOUT,
            retry_base: DEFAULT_RETRY_BASE,
            disable_after: DEFAULT_DISABLE_AFTER,
            rotation_grace: DEFAULT_ROTATION_GRACE,
            progress_every: DEFAULT_PROGRESS_EVERY,
        }
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
pub fn delivery_job(id: &str, key: String, timeout: Duration) -> crate::NewJob {
    crate::NewJob {
        kind: "webhook_delivery".into(),
        args: serde_json::json!({ "delivery_id": id }),
        queue: Some(QUEUE.into()),
        max_attempts: Some(DELIVERY_ATTEMPTS),
        // Room for the HTTP timeout plus the store writes around it.
        timeout_ms: Some((timeout + Duration::from_secs(30)).as_millis() as u64),
        idempotency_key: Some(key),
        ..Default::default()
    }
}

/// The `type` of the event a job in terminal state `state` emits.
pub fn event_type(state: crate::JobState) -> String {
    format!("job.{}", state.as_str())
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
