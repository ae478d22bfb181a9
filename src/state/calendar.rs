//! When a provider's daily (or monthly) quota resets, in the provider's own
//! time zone: `quota_reset: "00:00 America/Los_Angeles"` in the catalog or
//! the config.
//!
//! A free tier's "requests per day" is rarely a rolling 24 hours: Gemini's
//! resets at midnight Pacific time, OpenRouter's and Cloudflare's at
//! midnight UTC. Counting against the provider's calendar lets the gateway
//! spend a quota up to its real reset and cool an exhausted model exactly
//! until then, instead of guessing.
//!
//! Zones and daylight saving come from `jiff`. Its `tzdb-bundle-always`
//! feature (Cargo.toml) embeds the whole IANA database in the binary: jiff
//! still prefers the system copy (`/usr/share/zoneinfo`, updated with the
//! OS) and falls back to the embedded one, so a container without tzdata
//! still knows `America/Los_Angeles`. The default `tzdb-bundle-platform`
//! would embed it on Windows only.
//!
//! Local times that do not exist or occur twice are settled the way a
//! wall clock would: a reset at 02:30 on a day that jumps from 02:00 to
//! 03:00 happens when the clock jumps (03:00, the first instant after the
//! gap); a reset at 01:30 on a day that repeats 01:00-02:00 happens at
//! the first 01:30. So a calendar day is 23 or 25 hours long across the
//! transitions, as the provider's own counter sees it.

use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Span, Timestamp};

use super::{Clock, Period};

/// What the accepted forms look like, shown in every parse error.
const FORMS: &str = "expected \"HH:MM Zone\" (daily, e.g. \"00:00 America/Los_Angeles\" or \"00:00 UTC\") \
                     or \"monthly HH:MM Zone\" (the 1st of each month, e.g. \"monthly 00:00 UTC\")";

/// How often a quota resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetPeriod {
    /// Every day at the same local time.
    Daily,
    /// The 1st of every month at that local time.
    Monthly,
}

/// A provider's quota reset calendar: a local time of day in an IANA zone,
/// every day or on the 1st of every month.
#[derive(Debug, Clone)]
pub struct QuotaReset {
    period: ResetPeriod,
    hour: i8,
    minute: i8,
    zone: TimeZone,
    /// The zone's canonical IANA name, for display and comparison.
    zone_name: String,
}

impl PartialEq for QuotaReset {
    fn eq(&self, other: &Self) -> bool {
        self.period == other.period
            && self.hour == other.hour
            && self.minute == other.minute
            && self.zone_name == other.zone_name
    }
}

impl Eq for QuotaReset {}

impl QuotaReset {
    /// Parses the text an operator writes: `"00:00 America/Los_Angeles"`,
    /// `"07:30 Europe/Berlin"`, `"monthly 00:00 UTC"`. The error shows the
    /// accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let (period, clock, zone) = match words.as_slice() {
            [clock, zone] => (ResetPeriod::Daily, *clock, *zone),
            [word, clock, zone] if word.eq_ignore_ascii_case("monthly") => (ResetPeriod::Monthly, *clock, *zone),
            _ => return Err(format!("`{text}` is not a reset time: {FORMS}")),
        };
        let (hour, minute) = parse_clock(clock)
            .ok_or_else(|| format!("`{text}`: `{clock}` is not a time of day (HH:MM, 00:00 to 23:59): {FORMS}"))?;
        let tz = TimeZone::get(zone).map_err(|_| {
            format!("`{text}`: `{zone}` is not an IANA time zone (such as UTC or America/Los_Angeles): {FORMS}")
        })?;
        // jiff finds names case-insensitively; keep the database's spelling
        // so the same calendar always prints (and compares) the same.
        let zone_name = tz.iana_name().unwrap_or(zone).to_owned();
        Ok(Self { period, hour, minute, zone: tz, zone_name })
    }

    /// The first reset strictly after `now`.
    pub fn next_after(&self, now: Timestamp) -> Timestamp {
        self.resets_around(now).filter(|&t| t > now).min().unwrap_or_else(|| self.fallback(now, 1))
    }

    /// The last reset at or before `now` (start of the current quota period).
    pub fn period_start(&self, now: Timestamp) -> Timestamp {
        self.resets_around(now).filter(|&t| t <= now).max().unwrap_or_else(|| self.fallback(now, -1))
    }

    /// Daily or monthly.
    pub fn period(&self) -> ResetPeriod {
        self.period
    }

    /// The zone, for showing a reset time in the provider's own time.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The resets of the local days (or months) around `now`'s local date.
    /// Two on each side, not one: a zone that skipped a whole day (Samoa,
    /// 2011-12-30) or a reset moved by a gap must still leave one reset
    /// on each side of `now`.
    fn resets_around(&self, now: Timestamp) -> impl Iterator<Item = Timestamp> + '_ {
        let today = self.zone.to_datetime(now).date();
        (-2i32..=2).filter_map(move |step| {
            let day = match self.period {
                ResetPeriod::Daily => today.checked_add(Span::new().days(step)).ok()?,
                ResetPeriod::Monthly => today.first_of_month().checked_add(Span::new().months(step)).ok()?,
            };
            self.reset_on(day)
        })
    }

    /// The instant of the reset on local date `day`, settling a time the
    /// clock skips or repeats as the module doc says.
    fn reset_on(&self, day: Date) -> Option<Timestamp> {
        let local: DateTime = day.at(self.hour, self.minute, 0, 0);
        let ambiguous = self.zone.to_ambiguous_timestamp(local);
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(local).ok(),
            // The first occurrence: the offset in force before the clock
            // went back.
            AmbiguousOffset::Fold { before, .. } => before.to_timestamp(local).ok(),
            AmbiguousOffset::Gap { after, .. } => {
                // Read with the later offset, the local time names an instant
                // just before the jump; the jump itself is the zone's next
                // transition, the first instant the clock shows past the gap.
                let before_jump = after.to_timestamp(local).ok()?;
                match self.zone.following(before_jump).next() {
                    Some(transition) => Some(transition.timestamp()),
                    None => ambiguous.compatible().ok(),
                }
            }
        }
    }

    /// Only reached at the very ends of jiff's range (years -9999/9999),
    /// where there is no neighbouring day to compute: a nominal period away.
    fn fallback(&self, now: Timestamp, direction: i64) -> Timestamp {
        let days = match self.period {
            ResetPeriod::Daily => 1,
            ResetPeriod::Monthly => 31,
        };
        now.checked_add(SignedDuration::from_hours(24 * days * direction)).unwrap_or(now)
    }
}

impl fmt::Display for QuotaReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.period == ResetPeriod::Monthly {
            f.write_str("monthly ")?;
        }
        write!(f, "{:02}:{:02} {}", self.hour, self.minute, self.zone_name)
    }
}

/// `HH:MM` (one or two hour digits, two minute digits) to (hour, minute).
fn parse_clock(clock: &str) -> Option<(i8, i8)> {
    let (h, m) = clock.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
        return None;
    }
    let hour: i8 = h.parse().ok()?;
    let minute: i8 = m.parse().ok()?;
    ((0..24).contains(&hour) && (0..60).contains(&minute)).then_some((hour, minute))
}

/// A provider's reset calendar with its current period remembered, so the
/// request path pays the time-zone arithmetic once per period, not once per
/// request.
#[derive(Debug)]
pub struct Schedule {
    reset: QuotaReset,
    /// (start, end) of the period last asked about, in wall-clock ms.
    current: Mutex<(i64, i64)>,
}

impl Schedule {
    /// The schedule of `reset`.
    pub fn new(reset: QuotaReset) -> Self {
        Self { reset, current: Mutex::new((0, 0)) }
    }

    /// The calendar.
    pub fn reset(&self) -> &QuotaReset {
        &self.reset
    }

    /// (start, end) in wall-clock ms of the period holding `now_ms`.
    pub fn period_ms(&self, now_ms: i64) -> (i64, i64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if !(current.0..current.1).contains(&now_ms) {
            let now = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH);
            let start = self.reset.period_start(now).as_millisecond();
            let end = self.reset.next_after(now).as_millisecond();
            *current = (start, end);
        }
        *current
    }

    /// The quota period running at `now`, on `clock`: what daily limits
    /// count over (only for a daily calendar: a monthly reset leaves daily
    /// limits rolling over 24 hours).
    pub fn period(&self, clock: &Clock, now: Instant) -> Option<Period> {
        if self.reset.period() != ResetPeriod::Daily {
            return None;
        }
        let (start, end) = self.period_ms(clock.wall_ms(now));
        Some(Period { start_secs: start.div_euclid(1000), end: clock.instant(end)? })
    }

    /// The next reset after `now`, on `clock`.
    pub fn next_reset(&self, clock: &Clock, now: Instant) -> Option<Instant> {
        clock.instant(self.period_ms(clock.wall_ms(now)).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(text: &str) -> QuotaReset {
        QuotaReset::parse(text).unwrap()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn hours(h: i64) -> SignedDuration {
        SignedDuration::from_hours(h)
    }

    #[test]
    fn los_angeles_midnight_is_08_00_utc_in_winter_and_07_00_utc_in_summer() {
        let la = reset("00:00 America/Los_Angeles");
        assert_eq!(la.period(), ResetPeriod::Daily);
        assert_eq!(la.next_after(ts("2025-01-15T12:00:00Z")), ts("2025-01-16T08:00:00Z"));
        assert_eq!(la.period_start(ts("2025-01-15T12:00:00Z")), ts("2025-01-15T08:00:00Z"));
        assert_eq!(la.next_after(ts("2025-07-15T12:00:00Z")), ts("2025-07-16T07:00:00Z"));
        assert_eq!(la.period_start(ts("2025-07-15T12:00:00Z")), ts("2025-07-15T07:00:00Z"));
        // Late evening in LA is already the next UTC day: the period is
        // still the LA day that began that morning.
        assert_eq!(la.period_start(ts("2025-01-16T06:00:00Z")), ts("2025-01-15T08:00:00Z"));
        assert_eq!(la.next_after(ts("2025-01-16T06:00:00Z")), ts("2025-01-16T08:00:00Z"));
    }

    #[test]
    fn the_spring_forward_day_in_los_angeles_is_23_hours_long() {
        // 2025-03-09: clocks jump from 02:00 PST to 03:00 PDT.
        let la = reset("00:00 America/Los_Angeles");
        let now = ts("2025-03-09T12:00:00Z");
        let start = la.period_start(now);
        let end = la.next_after(now);
        assert_eq!(start, ts("2025-03-09T08:00:00Z"));
        assert_eq!(end, ts("2025-03-10T07:00:00Z"));
        assert_eq!(end.duration_since(start), hours(23));
    }

    #[test]
    fn the_fall_back_day_in_los_angeles_is_25_hours_long() {
        // 2025-11-02: clocks go back from 02:00 PDT to 01:00 PST.
        let la = reset("00:00 America/Los_Angeles");
        let now = ts("2025-11-02T12:00:00Z");
        let start = la.period_start(now);
        let end = la.next_after(now);
        assert_eq!(start, ts("2025-11-02T07:00:00Z"));
        assert_eq!(end, ts("2025-11-03T08:00:00Z"));
        assert_eq!(end.duration_since(start), hours(25));
    }

    #[test]
    fn a_reset_in_the_skipped_hour_happens_when_the_clock_jumps() {
        // 02:30 does not exist on 2025-03-09 in LA; the clock shows 03:00
        // PDT (10:00 UTC) right after 01:59:59 PST.
        let r = reset("02:30 America/Los_Angeles");
        assert_eq!(r.next_after(ts("2025-03-09T08:00:00Z")), ts("2025-03-09T10:00:00Z"));
        assert_eq!(r.period_start(ts("2025-03-09T10:00:00Z")), ts("2025-03-09T10:00:00Z"));
        // The day before and after keep their 02:30 (PST, then PDT).
        assert_eq!(r.period_start(ts("2025-03-09T09:59:59Z")), ts("2025-03-08T10:30:00Z"));
        assert_eq!(r.next_after(ts("2025-03-09T10:00:00Z")), ts("2025-03-10T09:30:00Z"));
    }

    #[test]
    fn a_reset_in_the_repeated_hour_happens_at_its_first_occurrence() {
        // 01:30 occurs twice on 2025-11-02 in LA: 08:30 UTC (PDT) and 09:30
        // UTC (PST). Only the first is a reset.
        let r = reset("01:30 America/Los_Angeles");
        assert_eq!(r.next_after(ts("2025-11-02T07:00:00Z")), ts("2025-11-02T08:30:00Z"));
        assert_eq!(r.next_after(ts("2025-11-02T08:30:00Z")), ts("2025-11-03T09:30:00Z"));
        assert_eq!(r.period_start(ts("2025-11-02T09:45:00Z")), ts("2025-11-02T08:30:00Z"));
    }

    #[test]
    fn utc_midnight_and_an_odd_minute() {
        let utc = reset("00:00 UTC");
        assert_eq!(utc.next_after(ts("2025-06-30T23:59:59Z")), ts("2025-07-01T00:00:00Z"));
        assert_eq!(utc.period_start(ts("2025-06-30T23:59:59Z")), ts("2025-06-30T00:00:00Z"));
        let berlin = reset("07:30 Europe/Berlin");
        // Berlin is UTC+2 in summer.
        assert_eq!(berlin.next_after(ts("2025-06-30T06:00:00Z")), ts("2025-07-01T05:30:00Z"));
    }

    #[test]
    fn a_reset_exactly_now_starts_the_period_and_the_next_is_a_day_later() {
        let utc = reset("00:00 UTC");
        let now = ts("2025-05-05T00:00:00Z");
        assert_eq!(utc.period_start(now), now);
        assert_eq!(utc.next_after(now), ts("2025-05-06T00:00:00Z"));
        let la = reset("00:00 America/Los_Angeles");
        let now = ts("2025-05-05T07:00:00Z");
        assert_eq!(la.period_start(now), now);
        assert_eq!(la.next_after(now), ts("2025-05-06T07:00:00Z"));
        let monthly = reset("monthly 00:00 UTC");
        let now = ts("2025-05-01T00:00:00Z");
        assert_eq!(monthly.period_start(now), now);
        assert_eq!(monthly.next_after(now), ts("2025-06-01T00:00:00Z"));
    }

    #[test]
    fn monthly_resets_cross_the_year_end_and_february() {
        let m = reset("monthly 00:00 UTC");
        assert_eq!(m.period(), ResetPeriod::Monthly);
        assert_eq!(m.next_after(ts("2024-12-31T23:00:00Z")), ts("2025-01-01T00:00:00Z"));
        assert_eq!(m.period_start(ts("2024-12-31T23:00:00Z")), ts("2024-12-01T00:00:00Z"));
        assert_eq!(m.period_start(ts("2025-01-01T00:30:00Z")), ts("2025-01-01T00:00:00Z"));
        // February: 28 days in 2025, 29 in 2024.
        let start = m.period_start(ts("2025-02-14T00:00:00Z"));
        let end = m.next_after(ts("2025-02-14T00:00:00Z"));
        assert_eq!((start, end), (ts("2025-02-01T00:00:00Z"), ts("2025-03-01T00:00:00Z")));
        assert_eq!(end.duration_since(start), hours(24 * 28));
        let leap = m.next_after(ts("2024-02-29T23:59:59Z"));
        assert_eq!(leap.duration_since(m.period_start(ts("2024-02-29T23:59:59Z"))), hours(24 * 29));
        // In a zone: the 1st at midnight Pacific, with the offset of that day.
        let la = reset("monthly 00:00 America/Los_Angeles");
        assert_eq!(la.next_after(ts("2025-03-15T00:00:00Z")), ts("2025-04-01T07:00:00Z"));
        assert_eq!(la.period_start(ts("2025-03-15T00:00:00Z")), ts("2025-03-01T08:00:00Z"));
        // Before midnight on the 31st in LA it is already the 1st in UTC.
        assert_eq!(la.period_start(ts("2025-01-01T05:00:00Z")), ts("2024-12-01T08:00:00Z"));
    }

    #[test]
    fn the_canonical_text_round_trips() {
        for text in ["00:00 America/Los_Angeles", "00:00 UTC", "07:30 Europe/Berlin", "monthly 00:00 UTC"] {
            assert_eq!(reset(text).to_string(), text);
            assert_eq!(reset(&reset(text).to_string()), reset(text));
        }
        // Loose spellings come out canonical.
        assert_eq!(reset("  7:30   europe/berlin ").to_string(), "07:30 Europe/Berlin");
        assert_eq!(reset("MONTHLY 00:00 utc").to_string(), "monthly 00:00 UTC");
        assert_eq!(reset("00:00 America/Los_Angeles").zone().iana_name(), Some("America/Los_Angeles"));
    }

    #[test]
    fn parse_errors_show_the_accepted_forms() {
        for bad in [
            "",
            "midnight",
            "00:00",
            "24:00 UTC",
            "12:60 UTC",
            "1200 UTC",
            "12:5 UTC",
            "-1:00 UTC",
            "00:00 Mars/Olympus",
            "00:00 PST8PDTX",
            "weekly 00:00 UTC",
            "monthly 00:00",
            "00:00 UTC extra",
        ] {
            let err = QuotaReset::parse(bad).unwrap_err();
            assert!(
                err.contains("\"00:00 America/Los_Angeles\"") && err.contains("\"monthly 00:00 UTC\""),
                "{bad}: {err}"
            );
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
        }
        assert!(
            QuotaReset::parse("00:00 Mars/Olympus").unwrap_err().contains("`Mars/Olympus` is not an IANA time zone")
        );
        assert!(QuotaReset::parse("25:00 UTC").unwrap_err().contains("`25:00` is not a time of day"));
    }

    #[test]
    fn a_schedule_follows_the_clock_across_a_reset() {
        let la = Schedule::new(QuotaReset::parse("00:00 America/Los_Angeles").unwrap());
        // 2026-01-15 23:59:58 in Los Angeles (PST, UTC-8) = 07:59:58 UTC on the 16th.
        let before: Timestamp = "2026-01-16T07:59:58Z".parse().unwrap();
        let clock = Clock::starting_at(before.as_millisecond());
        let now = Instant::now();
        let period = la.period(&clock, now).unwrap();
        assert_eq!(period.start_secs, "2026-01-15T08:00:00Z".parse::<Timestamp>().unwrap().as_second());
        let left = period.end.saturating_duration_since(now);
        assert!(left <= std::time::Duration::from_secs(2) && left > std::time::Duration::from_millis(1900), "{left:?}");
        let after = now + std::time::Duration::from_secs(3);
        let next = la.period(&clock, after).unwrap();
        assert_eq!(next.start_secs, "2026-01-16T08:00:00Z".parse::<Timestamp>().unwrap().as_second());
        assert_eq!(la.next_reset(&clock, after), Some(next.end));
        let monthly = Schedule::new(QuotaReset::parse("monthly 00:00 UTC").unwrap());
        assert_eq!(monthly.period(&clock, now), None, "daily limits roll over 24 h under a monthly reset");
        assert!(monthly.next_reset(&clock, now).is_some());
    }
}
