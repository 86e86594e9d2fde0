//! Prometheus metrics, encoded by the Prometheus project's `prometheus-client` crate in the
//! Prometheus text format. Labels are low-cardinality only (queue, kind, outcome, state,
//! store): never a job id or a tenant.
//! - [`WorkerMetrics`]: one worker process's own figures, served on its `--metrics-addr`.
//! - [`fleet`]: the fleet-wide view the API serves, built at each scrape from the same
//!   queue and worker views as `GET /v1/queues` and `GET /v1/workers`.

use std::sync::Arc;

use jobmill::JobState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::queues::QueueView;
use crate::workers::{WorkerState, WorkerView};

/// The `Content-Type` of the answers.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: String,
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    queue: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueStateLabels {
    queue: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

/// A store a worker talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreName {
    /// MongoDB.
    Mongodb,
    /// Redis.
    Redis,
}

impl StoreName {
    fn as_str(self) -> &'static str {
        match self {
            StoreName::Mongodb => "mongodb",
            StoreName::Redis => "redis",
        }
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 9 hours.
    Histogram::new(exponential_buckets(0.001, 2.5, 16))
}

/// One worker process's metrics. Cheap to clone; updates are atomic.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    jobs: Family<JobLabels, Counter>,
    durations: Family<KindLabels, Histogram, fn() -> Histogram>,
    busy: Gauge,
    slots: Gauge,
    unrecorded: Gauge,
    lease_expired: Family<QueueLabels, Counter>,
    store_errors: Family<StoreLabels, Counter>,
    webhook_deliveries: Family<StatusLabels, Counter>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// A fresh registry.
    pub fn new() -> Self {
        Self::new_with(|_| {})
    }

    /// A fresh registry, with the features' own metrics registered by `features` (the
    /// schedules' `jobmill_schedule_*`), so one scrape serves them all.
    pub fn new_with(features: impl FnOnce(&mut Registry)) -> Self {
        let mut r = Registry::default();
        features(&mut r);
        let jobs = Family::<JobLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let (busy, slots, unrecorded) = (Gauge::default(), Gauge::default(), Gauge::default());
        let lease_expired = Family::<QueueLabels, Counter>::default();
        let store_errors = Family::<StoreLabels, Counter>::default();
        let webhook_deliveries = Family::<StatusLabels, Counter>::default();
        r.register(
            "jobmill_jobs",
            "Attempts this worker ran, by outcome",
            jobs.clone(),
        );
        r.register(
            "jobmill_job_duration_seconds",
            "Run time of attempts",
            durations.clone(),
        );
        r.register(
            "jobmill_worker_busy_slots",
            "Handler slots running a job",
            busy.clone(),
        );
        r.register("jobmill_worker_slots", "Handler slots", slots.clone());
        r.register(
            "jobmill_unrecorded_outcomes",
            "Finished attempts whose outcome is not recorded yet (the persister's backlog)",
            unrecorded.clone(),
        );
        r.register(
            "jobmill_lease_expired",
            "Leases this worker found taken from it",
            lease_expired.clone(),
        );
        r.register(
            "jobmill_store_errors",
            "Failed calls to a store (each retried)",
            store_errors.clone(),
        );
        r.register(
            "jobmill_webhook_deliveries",
            "Webhook delivery statuses this worker recorded: pending (an attempt failed and \
             will be retried), delivered, failed, gone",
            webhook_deliveries.clone(),
        );
        WorkerMetrics {
            registry: Arc::new(r),
            jobs,
            durations,
            busy,
            slots,
            unrecorded,
            lease_expired,
            store_errors,
            webhook_deliveries,
        }
    }

    /// An attempt of `kind` on `queue` ended in `outcome` after `seconds`.
    pub fn job_ended(&self, queue: &str, kind: &str, outcome: JobState, seconds: f64) {
        self.jobs
            .get_or_create(&JobLabels {
                queue: queue.to_string(),
                kind: kind.to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&KindLabels {
                queue: queue.to_string(),
                kind: kind.to_string(),
            })
            .observe(seconds);
    }

    /// `n` leases of `queue` were found taken.
    pub fn lease_expired(&self, queue: &str, n: u64) {
        self.lease_expired
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .inc_by(n);
    }

    /// A call to `store` failed.
    pub fn store_error(&self, store: StoreName) {
        self.store_errors
            .get_or_create(&StoreLabels {
                store: store.as_str().to_string(),
            })
            .inc();
    }

    /// A webhook delivery's `status` was recorded. The status names come from the webhooks
    /// feature (`DeliveryStatus::as_str`), which the worker wires in; this crate does not
    /// depend on it.
    pub fn webhook_delivery(&self, status: &'static str) {
        self.webhook_deliveries
            .get_or_create(&StatusLabels { status })
            .inc();
    }

    /// The slot gauges, set right before each scrape.
    pub fn set_slots(&self, busy: usize, slots: usize, unrecorded: usize) {
        self.busy.set(busy as i64);
        self.slots.set(slots as i64);
        self.unrecorded.set(unrecorded as i64);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The fleet-wide text exposition: queue depth, latency and pauses, and workers by state.
pub fn fleet(queues: &[QueueView], workers: &[WorkerView]) -> String {
    let mut r = Registry::default();
    let jobs = Family::<QueueStateLabels, Gauge>::default();
    let latency = Family::<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let paused = Family::<QueueLabels, Gauge>::default();
    let consumers = Family::<QueueLabels, Gauge>::default();
    let by_state = Family::<StateLabels, Gauge>::default();
    for q in queues {
        let c = &q.counts;
        for (state, n) in [
            (JobState::Queued, c.queued),
            (JobState::Scheduled, c.scheduled),
            (JobState::Retrying, c.retrying),
            (JobState::Running, c.running),
        ] {
            jobs.get_or_create(&QueueStateLabels {
                queue: q.name.clone(),
                state: state.as_str().to_string(),
            })
            .set(n as i64);
        }
        let ql = QueueLabels {
            queue: q.name.clone(),
        };
        latency.get_or_create(&ql).set(q.latency_seconds);
        paused.get_or_create(&ql).set(i64::from(q.paused));
        consumers.get_or_create(&ql).set(q.consumers as i64);
    }
    for state in [
        WorkerState::Running,
        WorkerState::Quiet,
        WorkerState::Stopping,
        WorkerState::Gone,
    ] {
        let n = workers.iter().filter(|w| w.state == state).count();
        let name = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        by_state
            .get_or_create(&StateLabels { state: name })
            .set(n as i64);
    }
    r.register(
        "jobmill_queue_jobs",
        "Live jobs by queue and state, from Redis structure sizes",
        jobs,
    );
    r.register(
        "jobmill_queue_latency_seconds",
        "Age of the oldest job ready to run",
        latency,
    );
    r.register(
        "jobmill_queue_paused",
        "1 while the queue is paused",
        paused,
    );
    r.register(
        "jobmill_queue_consumers",
        "Live workers consuming the queue",
        consumers,
    );
    r.register(
        "jobmill_workers",
        "Workers seen in the last 10 minutes, by state",
        by_state,
    );
    let mut out = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_metrics_follow_the_naming_conventions() {
        let m = WorkerMetrics::new();
        m.job_ended("q", "noop", JobState::Succeeded, 0.01);
        m.lease_expired("q", 2);
        m.store_error(StoreName::Mongodb);
        m.set_slots(1, 4, 0);
        m.webhook_delivery("delivered");
        let text = m.encode();
        for needle in [
            "jobmill_jobs_total{queue=\"q\",kind=\"noop\",outcome=\"succeeded\"} 1",
            "jobmill_job_duration_seconds_count{queue=\"q\",kind=\"noop\"} 1",
            "jobmill_worker_busy_slots 1",
            "jobmill_worker_slots 4",
            "jobmill_unrecorded_outcomes 0",
            "jobmill_lease_expired_total{queue=\"q\"} 2",
            "jobmill_store_errors_total{store=\"mongodb\"} 1",
            "jobmill_webhook_deliveries_total{status=\"delivered\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
