//! Wall-clock time for state that outlives the process.
//!
//! The request path measures time with [`Instant`] (monotonic, cheap, never
//! jumps); what is written to disk or shared with another instance needs a
//! wall-clock time instead (a cooldown's end, the minute a request was
//! counted in, a calendar reset). A [`Clock`] ties the two together once,
//! at start-up, so both directions are one addition. Tests start it at a
//! chosen wall time (a minute before a provider's midnight) instead of
//! waiting for that time to come.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Maps the monotonic clock to wall-clock milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    anchor_ms: i64,
}

impl Clock {
    /// The system's wall clock, as of now.
    pub fn system() -> Self {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::starting_at(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }

    /// A clock that reads `unix_ms` now and runs forward in real time:
    /// for tests that need to be just before a reset.
    pub fn starting_at(unix_ms: i64) -> Self {
        Self { anchor: Instant::now(), anchor_ms: unix_ms }
    }

    /// Wall-clock milliseconds at `at`.
    pub fn wall_ms(&self, at: Instant) -> i64 {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if at >= self.anchor {
            self.anchor_ms.saturating_add(ms(at - self.anchor))
        } else {
            self.anchor_ms.saturating_sub(ms(self.anchor - at))
        }
    }

    /// Wall-clock milliseconds now.
    pub fn now_ms(&self) -> i64 {
        self.wall_ms(Instant::now())
    }

    /// The [`Instant`] at wall-clock `unix_ms`, when the platform's
    /// monotonic clock reaches back (or forward) that far.
    pub fn instant(&self, unix_ms: i64) -> Option<Instant> {
        let offset = unix_ms.saturating_sub(self.anchor_ms);
        let d = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 { self.anchor.checked_add(d) } else { self.anchor.checked_sub(d) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_wall_times_convert_both_ways() {
        let c = Clock::starting_at(1_700_000_000_000);
        let later = Instant::now() + Duration::from_secs(3600);
        let ms = c.wall_ms(later);
        assert!((1_700_003_600_000..1_700_003_601_000).contains(&ms), "{ms}");
        assert_eq!(c.instant(ms).map(|i| c.wall_ms(i)), Some(ms));
        assert!(c.now_ms() >= 1_700_000_000_000);
        let past = c.instant(1_700_000_000_000 - 1000).map(|i| c.wall_ms(i));
        assert!(past.is_none_or(|ms| ms == 1_699_999_999_000));
    }
}
