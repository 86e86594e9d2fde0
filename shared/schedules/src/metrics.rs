//! The feature's Prometheus metrics, registered into the worker's registry (its `/metrics`):
//! `jobmill_schedule_fires_total`, `jobmill_schedule_skipped_total{reason}` and
//! `jobmill_schedule_lag_seconds` (planned fire time to the job's submission).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::SkipReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The schedule metrics of one process. Cheap to clone; updates are atomic.
#[derive(Clone)]
pub struct ScheduleMetrics {
    fires: Counter,
    skipped: Family<ReasonLabels, Counter>,
    lag: Histogram,
}

impl Default for ScheduleMetrics {
    fn default() -> Self {
        ScheduleMetrics {
            fires: Counter::default(),
            skipped: Family::default(),
            // 1 ms to about 10 minutes.
            lag: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
        }
    }
}

impl ScheduleMetrics {
    /// Fresh metrics, registered into `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = ScheduleMetrics::default();
        r.register(
            "jobmill_schedule_fires",
            "Schedule runs this process submitted",
            m.fires.clone(),
        );
        r.register(
            "jobmill_schedule_skipped",
            "Schedule ticks not fired, by reason (overlap, paused, catch_up)",
            m.skipped.clone(),
        );
        r.register(
            "jobmill_schedule_lag_seconds",
            "Delay from a run's planned fire time to its submission",
            m.lag.clone(),
        );
        m
    }

    /// A run planned `lag_seconds` ago was submitted.
    pub fn fired(&self, lag_seconds: f64) {
        self.fires.inc();
        self.lag.observe(lag_seconds.max(0.0));
    }

    /// `n` ticks were skipped for `reason`.
    pub fn skipped(&self, reason: SkipReason, n: u64) {
        if n > 0 {
            self.skipped
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str().to_string(),
                })
                .inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let mut r = Registry::default();
        let m = ScheduleMetrics::register(&mut r);
        m.fired(0.01);
        m.skipped(SkipReason::Overlap, 2);
        m.skipped(SkipReason::CatchUp, 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for needle in [
            "jobmill_schedule_fires_total 1",
            "jobmill_schedule_skipped_total{reason=\"overlap\"} 2",
            "jobmill_schedule_skipped_total{reason=\"catch_up\"} 1",
            "jobmill_schedule_lag_seconds_count 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
