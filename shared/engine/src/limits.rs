//! Concurrency and rate limits of a queue, and the `limit_key` a job may carry.
//!
//! Limits are part of claiming, so they are enforced by `claim.lua` in the same atomic step
//! that leases a job, under the queue's hash tag (see [`crate::keys::QueueKeys::limits`]). A
//! limit slot is held by a job's lease and freed by whichever script ends the lease (outcome
//! recorded, release at shutdown, deferral, rescue of an expired lease), never by a worker
//! reading a counter. The operator plane stores the operator's decision in MongoDB and writes
//! it here with [`crate::queue::RedisQueue::set_limits`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{fmt_duration, parse_duration};

/// Longest `limit_key`.
pub const MAX_LIMIT_KEY: usize = 128;
/// Largest `concurrency` or `key_concurrency`.
pub const MAX_CONCURRENCY: u32 = 1_000_000;
/// Largest `max` of a rate (the log keeps one entry per start in the window).
pub const MAX_RATE: u32 = 100_000;
/// Shortest and longest `per` of a rate.
pub const RATE_PER: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(86_400));

/// At most `max` starts in any window of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts allowed per window.
    pub max: u32,
    /// Window length.
    pub per: Duration,
}

/// The limits of one queue. Every field is optional; none set means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueLimits {
    /// At most this many jobs of the queue run at once, across the fleet.
    pub concurrency: Option<u32>,
    /// At most this many starts of the queue's jobs per window.
    pub rate: Option<Rate>,
    /// At most this many jobs of one `limit_key` run at once.
    pub key_concurrency: Option<u32>,
    /// At most this many starts of one `limit_key` per window.
    pub key_rate: Option<Rate>,
}

/// A rate as the API writes it: `{"max": 10, "per": "1s"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Starts allowed per window (1-100000).
    #[schema(minimum = 1, maximum = 100_000)]
    pub max: u32,
    /// Window length: a duration such as `500ms`, `1s`, `1m` (10 ms to 1 day).
    #[schema(example = "1s", pattern = r"^[0-9]+(ms|s|m|h|d)?$")]
    pub per: String,
}

/// A field that may be left out but, when sent, must hold a value: the document says these
/// fields are not nullable, so an explicit `null` is refused like any other wrong type (rather
/// than read as "not given", which would let `{"rate": null}` pass for a change).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Limits as the API reads and writes them (`PUT /v1/queues/{name}/limits`). At least one
/// field must be given (`DELETE` removes limits); the OpenAPI document says so with
/// `minProperties: 1`, added by the API's document modifier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// At most this many jobs of the queue run at once across the fleet (1-1000000).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 1_000_000, nullable = false)]
    pub concurrency: Option<u32>,
    /// At most `max` starts of the queue's jobs in any window of `per`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(nullable = false)]
    pub rate: Option<RateSpec>,
    /// At most this many jobs of one `limit_key` run at once (1-1000000).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 1_000_000, nullable = false)]
    pub key_concurrency: Option<u32>,
    /// At most `max` starts of one `limit_key` in any window of `per`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(nullable = false)]
    pub key_rate: Option<RateSpec>,
}

impl RateSpec {
    fn check(&self, field: &str) -> Result<Rate, String> {
        if !(1..=MAX_RATE).contains(&self.max) {
            return Err(format!("{field}.max must be from 1 to {MAX_RATE}"));
        }
        let per = parse_duration(&self.per).map_err(|e| format!("{field}.per: {e}"))?;
        if per < RATE_PER.0 || per > RATE_PER.1 {
            return Err(format!("{field}.per must be from 10ms to 1d"));
        }
        Ok(Rate { max: self.max, per })
    }
}

impl From<Rate> for RateSpec {
    fn from(r: Rate) -> Self {
        RateSpec {
            max: r.max,
            per: fmt_duration(r.per),
        }
    }
}

impl LimitsSpec {
    /// Check every field; the message names the first bad one.
    pub fn check(&self) -> Result<QueueLimits, String> {
        let conc = |v: Option<u32>, field: &str| match v {
            Some(n) if !(1..=MAX_CONCURRENCY).contains(&n) => {
                Err(format!("{field} must be from 1 to {MAX_CONCURRENCY}"))
            }
            other => Ok(other),
        };
        let limits = QueueLimits {
            concurrency: conc(self.concurrency, "concurrency")?,
            rate: self.rate.as_ref().map(|r| r.check("rate")).transpose()?,
            key_concurrency: conc(self.key_concurrency, "key_concurrency")?,
            key_rate: self
                .key_rate
                .as_ref()
                .map(|r| r.check("key_rate"))
                .transpose()?,
        };
        if limits.is_empty() {
            return Err(
                "give at least one of concurrency, rate, key_concurrency, key_rate (DELETE removes limits)"
                    .into(),
            );
        }
        Ok(limits)
    }
}

impl From<QueueLimits> for LimitsSpec {
    fn from(l: QueueLimits) -> Self {
        LimitsSpec {
            concurrency: l.concurrency,
            rate: l.rate.map(Into::into),
            key_concurrency: l.key_concurrency,
            key_rate: l.key_rate.map(Into::into),
        }
    }
}

impl QueueLimits {
    /// No limit set.
    pub fn is_empty(&self) -> bool {
        *self == QueueLimits::default()
    }

    /// Whether the queue as a whole is limited (not only its keys). A sharded queue cannot
    /// carry such a limit: each lane would enforce it separately
    /// ([`crate::shards::ShardMap::check_queue_wide_limit`] refuses it).
    pub fn is_queue_wide(&self) -> bool {
        self.concurrency.is_some() || self.rate.is_some()
    }

    /// The fields of the Redis hash `claim.lua` reads (`concurrency`, `rate_max`,
    /// `rate_per_ms`, `key_concurrency`, `key_rate_max`, `key_rate_per_ms`).
    pub fn to_fields(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        if let Some(c) = self.concurrency {
            out.push(("concurrency", u64::from(c)));
        }
        if let Some(r) = self.rate {
            out.push(("rate_max", u64::from(r.max)));
            out.push(("rate_per_ms", r.per.as_millis() as u64));
        }
        if let Some(c) = self.key_concurrency {
            out.push(("key_concurrency", u64::from(c)));
        }
        if let Some(r) = self.key_rate {
            out.push(("key_rate_max", u64::from(r.max)));
            out.push(("key_rate_per_ms", r.per.as_millis() as u64));
        }
        out
    }

    /// Read back what [`QueueLimits::to_fields`] wrote (unknown fields are ignored).
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let mut l = QueueLimits::default();
        let (mut rm, mut rp, mut km, mut kp) = (None, None, None, None);
        for (k, v) in fields {
            let v32 = u32::try_from(v).unwrap_or(u32::MAX);
            match k {
                "concurrency" => l.concurrency = Some(v32),
                "rate_max" => rm = Some(v32),
                "rate_per_ms" => rp = Some(Duration::from_millis(v)),
                "key_concurrency" => l.key_concurrency = Some(v32),
                "key_rate_max" => km = Some(v32),
                "key_rate_per_ms" => kp = Some(Duration::from_millis(v)),
                _ => {}
            }
        }
        l.rate = rm.zip(rp).map(|(max, per)| Rate { max, per });
        l.key_rate = km.zip(kp).map(|(max, per)| Rate { max, per });
        l
    }
}

/// Validate a job's `limit_key`: 1-128 characters among letters, digits and `. _ - : @ / + =`
/// (enough for `customer:42`, `api.stripe.com`, an e-mail or a base64 id; nothing a Redis key
/// name or a log line would trip on).
pub fn check_limit_key(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_LIMIT_KEY
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '/' | '+' | '=')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "limit_key must be 1-{MAX_LIMIT_KEY} letters, digits or . _ - : @ / + ="
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_trip_through_the_redis_fields() {
        let l = LimitsSpec {
            concurrency: Some(3),
            rate: Some(RateSpec {
                max: 10,
                per: "1s".into(),
            }),
            key_concurrency: Some(2),
            key_rate: Some(RateSpec {
                max: 5,
                per: "500ms".into(),
            }),
        }
        .check()
        .unwrap();
        let fields = l.to_fields();
        assert_eq!(
            QueueLimits::from_fields(fields.iter().map(|(k, v)| (*k, *v))),
            l
        );
        assert_eq!(LimitsSpec::from(l).rate.unwrap().per, "1s");
        assert!(l.is_queue_wide());
    }

    #[test]
    fn bad_limits_are_refused() {
        assert!(LimitsSpec::default().check().is_err());
        let bad = |s: LimitsSpec| s.check().unwrap_err();
        assert!(bad(LimitsSpec {
            concurrency: Some(0),
            ..Default::default()
        })
        .contains("concurrency"));
        assert!(bad(LimitsSpec {
            rate: Some(RateSpec {
                max: 1,
                per: "1x".into()
            }),
            ..Default::default()
        })
        .contains("rate.per"));
        assert!(bad(LimitsSpec {
            key_rate: Some(RateSpec {
                max: 0,
                per: "1s".into()
            }),
            ..Default::default()
        })
        .contains("key_rate.max"));
    }

    #[test]
    fn limit_keys() {
        for ok in [
            "customer:42",
            "api.stripe.com",
            "a",
            "x/y+z=",
            &"k".repeat(128),
        ] {
            assert!(check_limit_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "{x}", "é", &"k".repeat(129), "a\nb"] {
            assert!(check_limit_key(bad).is_err(), "{bad:?}");
        }
    }
}
