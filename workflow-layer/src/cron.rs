//! Cron expressions in IANA time zones (sans-IO): which instants a schedule names.
//!
//! Expressions are read by the `cron` crate: `sec min hour day-of-month month day-of-week
//! [year]`, or the classic five fields `min hour day-of-month month day-of-week` (second 0).
//! They name **wall-clock times** in the schedule's zone; each maps to one instant:
//! - a time that exists once is that instant;
//! - a time the clocks pass twice (the hour repeated when they go back) fires once, at its
//!   first occurrence;
//! - a time the clocks skip (the hour lost when they go forward) fires once, at the instant
//!   the clocks jump (02:30 on a day that goes from 02:00 to 03:00 fires at 03:00); several
//!   skipped times fire once together, and never after a later time already fired.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub(crate) struct CronSpec {
    schedule: cron::Schedule,
    zone: Tz,
}

impl CronSpec {
    /// Parses `expression` (five, six or seven fields) and `zone` (an IANA name such as
    /// `Europe/Paris`, or `UTC`); the error says which is wrong and why.
    pub(crate) fn parse(expression: &str, zone: &str) -> Result<Self, String> {
        let fields = expression.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {}", expression.trim()),
            6 | 7 => expression.trim().to_owned(),
            n => {
                return Err(format!(
                    "cron expression `{expression}` has {n} fields; expected 5 (min hour dom \
                     month dow), 6 (with seconds first) or 7 (and a year)"
                ))
            }
        };
        let schedule = cron::Schedule::from_str(&full)
            .map_err(|e| format!("cron expression `{expression}` is invalid: {e}"))?;
        let zone = Tz::from_str(zone.trim())
            .map_err(|_| format!("time zone `{zone}` is not an IANA time zone name"))?;
        if schedule.after(&Utc::now()).next().is_none() {
            return Err(format!(
                "cron expression `{expression}` names no future time"
            ));
        }
        Ok(Self { schedule, zone })
    }

    /// The first instant strictly after `after`, if any.
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone).naive_local();
        // Wall-clock times after `after`'s own (the schedule walked on naive times).
        let mut walk = self.schedule.after(&Utc.from_utc_datetime(&local));
        loop {
            let wall = walk.next()?.naive_utc();
            let at = self.instant(wall);
            if at > after {
                return Some(at);
            }
        }
    }

    /// Up to `n` instants strictly before `before` and strictly after `floor`, oldest first.
    pub(crate) fn last_before(
        &self,
        before: DateTime<Utc>,
        floor: DateTime<Utc>,
        n: usize,
    ) -> Vec<DateTime<Utc>> {
        let local = before.with_timezone(&self.zone).naive_local();
        let mut walk = self.schedule.after(&Utc.from_utc_datetime(&local));
        let mut found: Vec<DateTime<Utc>> = Vec::with_capacity(n.min(1_024));
        while found.len() < n {
            let Some(wall) = walk.next_back() else { break };
            let at = self.instant(wall.naive_utc());
            if at <= floor {
                break;
            }
            // Skipped times map to one instant: keep it once.
            if at < before && found.last() != Some(&at) {
                found.push(at);
            }
        }
        found.reverse();
        found
    }

    /// The instant a wall-clock time of the zone fires at (see the module doc).
    fn instant(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        match self.zone.from_local_datetime(&wall) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            LocalResult::None => self.gap_end(wall),
        }
    }

    /// The instant the clocks jumped over `wall`: between `wall` read with the offset after
    /// the jump (still before it) and with the offset before it (already after it).
    fn gap_end(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        let offset_at = |t: DateTime<Utc>| {
            i64::from(
                self.zone
                    .offset_from_utc_datetime(&t.naive_utc())
                    .fix()
                    .local_minus_utc(),
            )
        };
        let around = Utc.from_utc_datetime(&wall);
        // Offsets a day either side: before and after the jump (zones change at most
        // twice a year).
        let before = offset_at(around - chrono::Duration::days(1));
        let after = offset_at(around + chrono::Duration::days(1));
        let mut lo = around - chrono::Duration::seconds(after);
        let mut hi = around - chrono::Duration::seconds(before);
        if hi <= lo {
            return hi;
        }
        // The first second whose offset is the later one.
        while hi - lo > chrono::Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if offset_at(mid) == after {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn walk(spec: &CronSpec, from: &str, n: usize) -> Vec<String> {
        let mut at = utc(from);
        (0..n)
            .map(|_| {
                at = spec.next_after(at).expect("a next instant");
                at.with_timezone(&spec.zone).to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn five_six_and_seven_fields_and_clear_errors() {
        let every_minute = CronSpec::parse("* * * * *", "UTC").expect("five fields");
        assert_eq!(
            walk(&every_minute, "2026-03-01T10:00:30Z", 2),
            ["2026-03-01T10:01:00+00:00", "2026-03-01T10:02:00+00:00"]
        );
        let every_second = CronSpec::parse("*/1 * * * * *", "UTC").expect("six fields");
        assert_eq!(
            walk(&every_second, "2026-03-01T10:00:00Z", 2),
            ["2026-03-01T10:00:01+00:00", "2026-03-01T10:00:02+00:00"]
        );
        CronSpec::parse("0 0 12 * * * 2099", "UTC").expect("seven fields");
        let err = CronSpec::parse("* * *", "UTC").expect_err("three fields");
        assert!(err.contains("has 3 fields"), "{err}");
        let err = CronSpec::parse("0 61 * * * *", "UTC").expect_err("minute 61");
        assert!(err.contains("`0 61 * * * *` is invalid"), "{err}");
        let err = CronSpec::parse("* * * * *", "Mars/Olympus").expect_err("zone");
        assert!(err.contains("`Mars/Olympus`"), "{err}");
        let err = CronSpec::parse("0 0 0 1 1 * 2001", "UTC").expect_err("only the past");
        assert!(err.contains("no future time"), "{err}");
    }

    #[test]
    fn a_daily_time_in_the_spring_gap_fires_once_when_the_clocks_jump() {
        // New York, 2026-03-08: 02:00 EST -> 03:00 EDT; 02:30 does not exist.
        let spec = CronSpec::parse("0 30 2 * * *", "America/New_York").expect("valid");
        assert_eq!(
            walk(&spec, "2026-03-06T12:00:00Z", 3),
            [
                "2026-03-07T02:30:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-09T02:30:00-04:00"
            ]
        );
    }

    #[test]
    fn every_minute_across_the_gap_fires_once_at_the_jump_then_goes_on() {
        let spec = CronSpec::parse("0 * * * * *", "America/New_York").expect("valid");
        // 01:58 EST .. : 01:58, 01:59, then 02:00-02:59 skipped, firing once at 03:00 EDT.
        assert_eq!(
            walk(&spec, "2026-03-08T06:57:30Z", 4),
            [
                "2026-03-08T01:58:00-05:00",
                "2026-03-08T01:59:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-08T03:01:00-04:00"
            ]
        );
    }

    #[test]
    fn a_repeated_hour_fires_once() {
        // New York, 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 happens twice.
        let spec = CronSpec::parse("0 30 1 * * *", "America/New_York").expect("valid");
        assert_eq!(
            walk(&spec, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        // Hourly at :30 across the change: 00:30, 01:30 (once), 02:30 EST.
        let hourly = CronSpec::parse("0 30 * * * *", "America/New_York").expect("valid");
        assert_eq!(
            walk(&hourly, "2026-11-01T04:00:00Z", 3),
            [
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T02:30:00-05:00"
            ]
        );
    }

    #[test]
    fn the_last_instants_before_a_time_oldest_first_above_a_floor() {
        let spec = CronSpec::parse("0 0 * * * *", "UTC").expect("valid");
        let got = spec.last_before(utc("2026-03-01T10:30:00Z"), utc("2026-03-01T06:00:00Z"), 3);
        assert_eq!(
            got,
            [
                utc("2026-03-01T08:00:00Z"),
                utc("2026-03-01T09:00:00Z"),
                utc("2026-03-01T10:00:00Z")
            ]
        );
        let floored = spec.last_before(utc("2026-03-01T10:30:00Z"), utc("2026-03-01T08:30:00Z"), 5);
        assert_eq!(
            floored,
            [utc("2026-03-01T09:00:00Z"), utc("2026-03-01T10:00:00Z")]
        );
    }
}
