//! The job state machine: every state, every outcome of an attempt, and the one pure function
//! that maps an outcome to the next state. `docs/state_machine.md` draws the same graph; keep
//! both true together.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a job is in its life. Stored as the snake_case string in MongoDB and shown as-is by
/// the API. Each variant says who moves a job out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Ready to run, waiting in the Redis ready set of its queue.
    /// Left by: a worker claiming it (→ `running`), or a cancel request (→ `cancelled`).
    Queued,
    /// Waiting for its `run_at` in the Redis schedule set.
    /// Left by: the scheduler loop when due (→ `queued`), a worker that claims it right after
    /// promotion before the `queued` write lands (→ `running`), or a cancel (→ `cancelled`).
    Scheduled,
    /// A worker holds a lease on it and its handler runs.
    /// Left by: that worker recording the attempt's outcome (→ `succeeded`, `retrying`,
    /// `failed`, `cancelled`), that worker releasing it on shutdown (→ `queued`, attempt not
    /// charged), or the rescuer when the lease expired because the worker died (→ `retrying`
    /// or `failed`).
    Running,
    /// An attempt failed and the next one waits for its backoff in the schedule set.
    /// Left by: a worker claiming it once the scheduler promoted it (→ `running`), or a
    /// cancel (→ `cancelled`).
    Retrying,
    /// Terminal: the handler returned success; `result` holds its value.
    /// Left by: nobody (retention deletes it).
    Succeeded,
    /// Terminal: attempts exhausted or the handler failed permanently; `errors` says why.
    /// Left by: `POST /v1/jobs/{id}/retry` (→ `queued` with a fresh attempt budget).
    Failed,
    /// Terminal: cancelled by a user while waiting, or its handler stopped on request.
    /// Left by: `POST /v1/jobs/{id}/retry` (→ `queued` with a fresh attempt budget).
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parse a stored or user-supplied name.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No further attempt will run.
    pub fn is_terminal(self) -> bool {
        match self {
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => true,
            JobState::Queued | JobState::Scheduled | JobState::Running | JobState::Retrying => {
                false
            }
        }
    }

    /// States in which the job waits for a worker (a cancel removes it at once).
    pub fn is_waiting(self) -> bool {
        match self {
            JobState::Queued | JobState::Scheduled | JobState::Retrying => true,
            JobState::Running | JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
                false
            }
        }
    }

    /// Names of the non-terminal states, for store filters.
    pub fn live_names() -> Vec<&'static str> {
        JobState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .map(JobState::as_str)
            .collect()
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened in one attempt. Produced by the executor (or the rescuer for a dead worker),
/// separate from the stored state: [`decide`] turns it into the next state.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The handler finished with a result.
    Succeeded(Value),
    /// The handler asked for another attempt, optionally after a given delay.
    Retry {
        /// Why this attempt failed.
        error: String,
        /// Delay requested by the handler instead of the backoff.
        after: Option<Duration>,
    },
    /// The handler failed in a way another attempt cannot fix.
    FailedPermanently(String),
    /// The handler stopped because it was asked to (or was abandoned after the grace period).
    Cancelled(String),
    /// The attempt ran past the job's timeout and was stopped.
    TimedOut(Duration),
    /// The handler panicked; the message is kept.
    Panicked(String),
    /// The worker holding the lease stopped heartbeating (it died); found by the rescuer.
    LeaseExpired,
    /// The handler was told to slow down (an upstream answered 429): run again after `after`
    /// without charging the attempt, and hold the job's limit key (or its queue) meanwhile.
    RateLimited {
        /// How long to wait (and hold the key).
        after: Duration,
    },
}

/// The next state of a job after an attempt, with what to record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// → `succeeded` with this result.
    Succeed(Value),
    /// → `retrying`; the error is recorded and the next attempt runs after `delay`.
    Retry {
        /// Error of this attempt.
        error: String,
        /// Time until the next attempt.
        delay: Duration,
    },
    /// → `failed`; the error of this last attempt is recorded.
    Fail(String),
    /// → `cancelled`.
    Cancel(String),
    /// → `scheduled` with the attempt given back (the handler answered `RateLimited`); the
    /// next attempt runs after `delay`, and the job's limit key (or queue) is held until then.
    Throttle {
        /// Time until the job runs again.
        delay: Duration,
    },
}

impl Decision {
    /// When the next attempt may run, for a decision to retry made at `at_ms`: the one place
    /// `run_at = at + delay` is computed.
    pub fn next_run_at(&self, at_ms: i64) -> Option<i64> {
        match self {
            Decision::Retry { delay, .. } | Decision::Throttle { delay } => {
                Some(at_ms.saturating_add(delay.as_millis().min(i64::MAX as u128) as i64))
            }
            Decision::Succeed(_) | Decision::Fail(_) | Decision::Cancel(_) => None,
        }
    }

    /// The state this decision moves the job to.
    pub fn state(&self) -> JobState {
        match self {
            Decision::Succeed(_) => JobState::Succeeded,
            Decision::Retry { .. } => JobState::Retrying,
            Decision::Fail(_) => JobState::Failed,
            Decision::Cancel(_) => JobState::Cancelled,
            Decision::Throttle { .. } => JobState::Scheduled,
        }
    }

    /// Whether the attempt that led here is given back (not charged): the job runs again
    /// with the same attempt number.
    pub fn returns_attempt(&self) -> bool {
        matches!(self, Decision::Throttle { .. })
    }
}

/// Exponential backoff with full jitter: attempt `n` waits a uniform random time in
/// `[0, min(max, base * 2^(n-1)))`. Full jitter spreads a burst of failures (a downstream
/// outage) instead of retrying them in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first retry delay.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl RetryPolicy {
    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(40);
        let ceiling = self.base.saturating_mul(1u32 << exp.min(31));
        let ceiling = if exp > 31 { self.max } else { ceiling };
        ceiling.min(self.max)
    }

    /// The delay after failed attempt `attempt`, given a uniform random `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// The one place that decides what follows an attempt. Pure: the caller passes the random
/// `unit` for the jitter, so this is tested as a table.
///
/// Once a cancel was requested (`cancel_requested`), every outcome except success ends the job
/// `cancelled`: a retry, a timeout, a panic, a permanent failure, an expired lease, and any
/// "retry later" outcome added later. No further attempt is ever scheduled for a job whose
/// cancel was answered `202`. (The store enforces the same rule on its side, for a cancel the
/// worker had not heard of yet: see `Applied::CancelRequested`.)
pub fn decide(
    outcome: AttemptOutcome,
    attempt: u32,
    max_attempts: u32,
    policy: &RetryPolicy,
    unit: f64,
    cancel_requested: bool,
) -> Decision {
    if cancel_requested {
        return match outcome {
            AttemptOutcome::Succeeded(v) => Decision::Succeed(v),
            AttemptOutcome::Cancelled(reason) => Decision::Cancel(reason),
            other => Decision::Cancel(format!(
                "cancel requested; the attempt ended with: {}",
                describe(&other)
            )),
        };
    }
    let retry_or_fail = |error: String, after: Option<Duration>| {
        if attempt >= max_attempts {
            Decision::Fail(error)
        } else {
            Decision::Retry {
                error,
                delay: after.unwrap_or_else(|| policy.delay(attempt, unit)),
            }
        }
    };
    match outcome {
        AttemptOutcome::Succeeded(v) => Decision::Succeed(v),
        AttemptOutcome::Retry { error, after } => retry_or_fail(error, after),
        AttemptOutcome::FailedPermanently(e) => Decision::Fail(e),
        AttemptOutcome::Cancelled(reason) => Decision::Cancel(reason),
        AttemptOutcome::TimedOut(d) => {
            retry_or_fail(format!("timed out after {} ms", d.as_millis()), None)
        }
        AttemptOutcome::Panicked(msg) => retry_or_fail(format!("panicked: {msg}"), None),
        AttemptOutcome::LeaseExpired => retry_or_fail(
            "the worker running this attempt stopped heartbeating (lease expired)".into(),
            None,
        ),
        // Not a failure: the attempt is given back, so the budget does not matter.
        AttemptOutcome::RateLimited { after } => Decision::Throttle { delay: after },
    }
}

/// A short account of an attempt's outcome, for the reason of a cancel that overrode it.
fn describe(o: &AttemptOutcome) -> String {
    match o {
        AttemptOutcome::Succeeded(_) => "success".into(),
        AttemptOutcome::Retry { error, .. } => format!("retry ({error})"),
        AttemptOutcome::FailedPermanently(e) => format!("failure ({e})"),
        AttemptOutcome::Cancelled(r) => format!("cancelled ({r})"),
        AttemptOutcome::TimedOut(d) => format!("timed out after {} ms", d.as_millis()),
        AttemptOutcome::Panicked(m) => format!("panic ({m})"),
        AttemptOutcome::LeaseExpired => "lease expired".into(),
        AttemptOutcome::RateLimited { after } => {
            format!("rate limited for {} ms", after.as_millis())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn transitions_table() {
        use AttemptOutcome as O;
        use JobState as S;
        let d = |ms| Some(Duration::from_millis(ms));
        // (outcome, attempt, max_attempts, expected state, expected delay for retries)
        let table: Vec<(O, u32, u32, S, Option<Duration>)> = vec![
            (O::Succeeded(json!(1)), 1, 3, S::Succeeded, None),
            (O::Succeeded(json!(1)), 3, 3, S::Succeeded, None),
            (
                O::Retry {
                    error: "x".into(),
                    after: None,
                },
                1,
                3,
                S::Retrying,
                d(500),
            ),
            (
                O::Retry {
                    error: "x".into(),
                    after: d(7),
                },
                1,
                3,
                S::Retrying,
                d(7),
            ),
            (
                O::Retry {
                    error: "x".into(),
                    after: d(7),
                },
                3,
                3,
                S::Failed,
                None,
            ),
            (O::FailedPermanently("x".into()), 1, 3, S::Failed, None),
            (O::Cancelled("asked".into()), 1, 3, S::Cancelled, None),
            (O::Cancelled("asked".into()), 3, 3, S::Cancelled, None),
            (
                O::TimedOut(Duration::from_secs(1)),
                2,
                3,
                S::Retrying,
                d(1000),
            ),
            (O::TimedOut(Duration::from_secs(1)), 3, 3, S::Failed, None),
            (O::Panicked("boom".into()), 1, 1, S::Failed, None),
            (O::Panicked("boom".into()), 1, 2, S::Retrying, d(500)),
            (O::LeaseExpired, 4, 5, S::Retrying, d(4000)),
            (O::LeaseExpired, 5, 5, S::Failed, None),
            (
                O::RateLimited {
                    after: d(300).unwrap(),
                },
                1,
                3,
                S::Scheduled,
                d(300),
            ),
            // The attempt is given back, so even the last one is not a failure.
            (
                O::RateLimited {
                    after: d(300).unwrap(),
                },
                3,
                3,
                S::Scheduled,
                d(300),
            ),
        ];
        for (outcome, attempt, max, state, delay) in table {
            let label = format!("{outcome:?} at {attempt}/{max}");
            let got = decide(outcome, attempt, max, &P, 0.5, false);
            assert_eq!(got.state(), state, "{label}");
            if let Decision::Retry {
                delay: got_delay, ..
            }
            | Decision::Throttle { delay: got_delay } = &got
            {
                assert_eq!(Some(*got_delay), delay, "{label}");
            }
            assert_eq!(
                got.returns_attempt(),
                state == S::Scheduled,
                "{label}: only a rate limit gives the attempt back"
            );
        }
    }

    #[test]
    fn after_a_cancel_request_only_success_does_not_cancel() {
        use AttemptOutcome as O;
        use JobState as S;
        let retry_after = O::Retry {
            error: "x".into(),
            after: Some(Duration::from_millis(7)),
        };
        // (outcome, attempt, max_attempts, expected state) with a cancel requested.
        let table: Vec<(O, u32, u32, S)> = vec![
            (O::Succeeded(json!(1)), 1, 3, S::Succeeded),
            (
                O::Retry {
                    error: "x".into(),
                    after: None,
                },
                1,
                3,
                S::Cancelled,
            ),
            (retry_after, 1, 3, S::Cancelled),
            (O::FailedPermanently("x".into()), 1, 3, S::Cancelled),
            (O::Cancelled("asked".into()), 1, 3, S::Cancelled),
            (O::TimedOut(Duration::from_secs(1)), 1, 3, S::Cancelled),
            (O::Panicked("boom".into()), 1, 3, S::Cancelled),
            (O::LeaseExpired, 1, 3, S::Cancelled),
            (O::LeaseExpired, 3, 3, S::Cancelled),
            (
                O::RateLimited {
                    after: Duration::from_millis(5),
                },
                1,
                3,
                S::Cancelled,
            ),
        ];
        for (outcome, attempt, max, state) in table {
            let label = format!("{outcome:?} at {attempt}/{max} after a cancel request");
            let got = decide(outcome, attempt, max, &P, 0.5, true);
            assert_eq!(got.state(), state, "{label}");
            assert_eq!(got.next_run_at(0), None, "{label}: no further attempt");
        }
    }

    #[test]
    fn errors_are_kept_with_their_cause() {
        match decide(
            AttemptOutcome::Panicked("index out of bounds".into()),
            1,
            1,
            &P,
            0.0,
            false,
        ) {
            Decision::Fail(e) => assert!(e.contains("panicked: index out of bounds")),
            other => panic!("{other:?}"),
        }
        match decide(
            AttemptOutcome::TimedOut(Duration::from_millis(250)),
            1,
            2,
            &P,
            0.0,
            false,
        ) {
            Decision::Retry { error, .. } => assert_eq!(error, "timed out after 250 ms"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let ceilings: Vec<u64> = (1..=9).map(|a| P.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(P.ceiling(u32::MAX), P.max);
        assert_eq!(P.ceiling(0), P.base);
    }

    #[test]
    fn backoff_is_full_jitter_below_the_ceiling() {
        for attempt in 1..20 {
            for unit in [0.0, 0.1, 0.5, 0.999_999] {
                let d = P.delay(attempt, unit);
                assert!(d <= P.ceiling(attempt));
            }
            assert_eq!(P.delay(attempt, 0.0), Duration::ZERO);
        }
        assert_eq!(P.delay(3, 2.0), P.ceiling(3), "unit is clamped");
    }

    #[test]
    fn states_round_trip_and_classify() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert!(!(s.is_terminal() && s.is_waiting()));
        }
        assert_eq!(
            JobState::live_names(),
            vec!["queued", "scheduled", "running", "retrying"]
        );
        assert_eq!(JobState::parse("dead"), None);
    }
}
