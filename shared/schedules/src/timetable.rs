//! When a schedule fires: a cron expression (5 fields, or 6 with seconds) read by the `croner`
//! crate, in an IANA time zone from `chrono-tz`. Fire times are computed in the zone's wall
//! clock and handed out as UTC instants, so daylight-saving changes are the cron crate's and the
//! time-zone database's business, not ours:
//! - a wall time that does not exist (spring forward) fires at the first instant after the gap;
//! - a wall time that exists twice (fall back) fires once for a fixed-time expression, and at
//!   both instants for an expression that repeats within the hour (`*/15 * * * *`).

use std::str::FromStr as _;

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound as _, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Longest cron expression accepted.
pub const MAX_CRON_LEN: usize = 128;
/// Longest time zone name accepted.
pub const MAX_ZONE_LEN: usize = 64;

/// Why an expression or zone was refused: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeProblem {
    /// `invalid_cron`, `cron_never_fires` or `unknown_timezone`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl TimeProblem {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        TimeProblem {
            code,
            message: message.into(),
        }
    }
}

impl From<TimeProblem> for jobmill::Error {
    fn from(p: TimeProblem) -> Self {
        jobmill::Error::invalid(p.code, p.message)
    }
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Timetable {
    cron: Cron,
    tz: Tz,
}

/// Parse an IANA zone name (`Europe/Berlin`, `UTC`).
pub fn parse_zone(zone: &str) -> Result<Tz, TimeProblem> {
    if zone.len() > MAX_ZONE_LEN {
        return Err(TimeProblem::new(
            "unknown_timezone",
            format!("time zone names are at most {MAX_ZONE_LEN} characters"),
        ));
    }
    Tz::from_str(zone).map_err(|_| {
        TimeProblem::new(
            "unknown_timezone",
            format!(
                "'{}' is not an IANA time zone like UTC or Europe/Berlin",
                zone.chars().take(MAX_ZONE_LEN).collect::<String>()
            ),
        )
    })
}

impl Timetable {
    /// Parse `expr` (5 fields, or 6 with seconds first) in `zone`, and check that it fires at
    /// least once after `now`.
    pub fn parse(expr: &str, zone: &str, now: DateTime<Utc>) -> Result<Self, TimeProblem> {
        let tz = parse_zone(zone)?;
        if expr.len() > MAX_CRON_LEN {
            return Err(TimeProblem::new(
                "invalid_cron",
                format!("cron expressions are at most {MAX_CRON_LEN} characters"),
            ));
        }
        let seconds = match expr.split_whitespace().count() {
            5 => Seconds::Disallowed,
            6 => Seconds::Required,
            n => {
                return Err(TimeProblem::new(
                    "invalid_cron",
                    format!(
                        "a cron expression has 5 fields, or 6 with seconds first; this one has {n}"
                    ),
                ))
            }
        };
        let cron = CronParser::builder()
            .seconds(seconds)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| {
                TimeProblem::new("invalid_cron", format!("invalid cron expression: {e}"))
            })?;
        let t = Timetable { cron, tz };
        if t.next_after(now).is_none() {
            return Err(TimeProblem::new(
                "cron_never_fires",
                "this cron expression never fires (for example a day that no month has)",
            ));
        }
        Ok(t)
    }

    /// The zone.
    pub fn zone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.trunc_subsecs(0).with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The first fire time at or after `t`.
    pub fn next_from(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after(t - ChronoDuration::milliseconds(1))
            .filter(|n| *n >= t)
            .or_else(|| self.next_after(t))
    }

    /// The last fire time strictly before `t`.
    pub fn prev_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ceil to the second: a fire time equal to a fractional `t`'s second is before it.
        let ceil = if t.trunc_subsecs(0) == t {
            t
        } else {
            t.trunc_subsecs(0) + ChronoDuration::seconds(1)
        };
        let local = ceil.with_timezone(&self.tz);
        self.cron
            .find_previous_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Up to `n` fire times strictly after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let t = Timetable::parse(expr, zone, utc(from)).unwrap();
        t.upcoming(utc(from), n)
            .into_iter()
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect()
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            fires("*/15 * * * *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z"]
        );
        assert_eq!(
            fires("*/2 * * * * *", "UTC", "2026-01-01T00:00:00.500Z", 2),
            ["2026-01-01T00:00:02Z", "2026-01-01T00:00:04Z"]
        );
        for bad in ["* * * *", "* * * * * * *", "61 * * * *", "", "x y z a b"] {
            let e = Timetable::parse(bad, "UTC", Utc::now()).unwrap_err();
            assert_eq!(e.code, "invalid_cron", "{bad}");
        }
    }

    #[test]
    fn never_firing_expressions_and_unknown_zones_are_refused() {
        let e = Timetable::parse("0 0 30 2 *", "UTC", Utc::now()).unwrap_err();
        assert_eq!(e.code, "cron_never_fires");
        let e = Timetable::parse("* * * * *", "Mars/Olympus", Utc::now()).unwrap_err();
        assert_eq!(e.code, "unknown_timezone");
    }

    #[test]
    fn berlin_spring_forward_and_fall_back() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice and fires once.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-24T00:00:00Z", 3),
            [
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z"
            ]
        );
        // An hourly expression fires at each real hour, both 02:00s included.
        assert_eq!(
            fires("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", 4),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z"
            ]
        );
    }

    #[test]
    fn new_york_spring_forward_and_fall_back() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT.
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
        // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice and fires once.
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T05:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z"
            ]
        );
        // A daily 09:00 job keeps 09:00 local across the change (13:00Z, then 14:00Z).
        assert_eq!(
            fires("0 9 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-10-31T13:00:00Z", "2026-11-01T14:00:00Z"]
        );
    }

    #[test]
    fn previous_and_inclusive_times() {
        let t = Timetable::parse("* * * * * *", "UTC", Utc::now()).unwrap();
        let at = utc("2026-01-01T00:00:10Z");
        assert_eq!(t.next_from(at), Some(at));
        assert_eq!(t.prev_before(at), Some(utc("2026-01-01T00:00:09Z")));
        assert_eq!(
            t.prev_before(utc("2026-01-01T00:00:10.300Z")),
            Some(at),
            "a fire time in the same second but before t"
        );
    }
}
