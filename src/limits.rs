//! Rate limits known before the upstream's 429: requests and tokens per
//! minute and per day, counted per (provider, model, key), and optionally per
//! key across all its models (OpenRouter's free pool is account-wide).
//!
//! A candidate whose next request would pass a limit is skipped without a
//! call, like one cooling down. Token budgets are charged with the request's
//! estimated size when it is sent and corrected with the usage the answer
//! reports.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Limits;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// The day window is kept in buckets of this size (a rolling 24 h to within
/// ten minutes, in 144 counters instead of one entry per request).
const DAY_BUCKET: Duration = Duration::from_secs(600);
const DAY_BUCKETS: usize = (DAY.as_secs() / DAY_BUCKET.as_secs()) as usize;

/// Which limit stopped a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Requests per minute.
    Rpm,
    /// Requests per day.
    Rpd,
    /// Tokens per minute.
    Tpm,
    /// Tokens per day.
    Tpd,
}

impl Limit {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Rpd => "rpd",
            Self::Tpm => "tpm",
            Self::Tpd => "tpd",
        }
    }
}

/// A request would pass `limit`; there is room again at `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHit {
    /// The limit.
    pub limit: Limit,
    /// When the window has room for this request again.
    pub until: Instant,
}

/// What one request was charged, to be corrected once its usage is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    at: Instant,
    tokens: u64,
}

/// Requests and tokens in the last minute and the last day.
#[derive(Debug)]
pub struct Usage {
    /// (time, tokens) of each request in the last minute.
    minute: VecDeque<(Instant, u64)>,
    /// (requests, tokens) per bucket, indexed by bucket number modulo the ring.
    day: Box<[(u64, u64, u64); DAY_BUCKETS]>,
    origin: Instant,
}

impl Default for Usage {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Usage {
    /// Empty counters; `origin` anchors the day buckets.
    pub fn new(origin: Instant) -> Self {
        Self { minute: VecDeque::new(), day: Box::new([(u64::MAX, 0, 0); DAY_BUCKETS]), origin }
    }

    fn bucket(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_secs() / DAY_BUCKET.as_secs()
    }

    fn prune(&mut self, now: Instant) {
        while self.minute.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) >= MINUTE) {
            self.minute.pop_front();
        }
    }

    /// Requests and tokens in the rolling day, and when the oldest bucket
    /// that holds any leaves the window.
    fn day_totals(&self, now: Instant) -> (u64, u64, Option<Instant>) {
        let current = self.bucket(now);
        let first = current.saturating_sub(DAY_BUCKETS as u64 - 1);
        let (mut requests, mut tokens, mut oldest) = (0, 0, None);
        for (number, r, t) in self.day.iter() {
            if *number != u64::MAX && *number >= first && *number <= current {
                requests += r;
                tokens += t;
                oldest = Some(oldest.map_or(*number, |o: u64| o.min(*number)));
            }
        }
        let frees = oldest.map(|b| self.origin + DAY_BUCKET * (b as u32 + DAY_BUCKETS as u32));
        (requests, tokens, frees)
    }

    /// Whether one more request of `tokens` fits in `limits` now.
    pub fn check(&mut self, limits: &Limits, tokens: u64, now: Instant) -> Result<(), LimitHit> {
        self.prune(now);
        let in_minute = self.minute.len() as u64;
        let minute_frees = self.minute.front().map(|(t, _)| *t + MINUTE).unwrap_or(now);
        if let Some(rpm) = limits.rpm
            && in_minute >= rpm
        {
            return Err(LimitHit { limit: Limit::Rpm, until: minute_frees });
        }
        if let Some(tpm) = limits.tpm {
            let used: u64 = self.minute.iter().map(|(_, t)| t).sum();
            // A request larger than the whole budget is let through on an
            // empty window: the upstream decides, instead of never trying.
            if used > 0 && used + tokens > tpm {
                return Err(LimitHit { limit: Limit::Tpm, until: minute_frees });
            }
        }
        if limits.rpd.is_some() || limits.tpd.is_some() {
            let (requests, used, frees) = self.day_totals(now);
            let until = frees.unwrap_or(now);
            if limits.rpd.is_some_and(|rpd| requests >= rpd) {
                return Err(LimitHit { limit: Limit::Rpd, until });
            }
            if limits.tpd.is_some_and(|tpd| used > 0 && used + tokens > tpd) {
                return Err(LimitHit { limit: Limit::Tpd, until });
            }
        }
        Ok(())
    }

    /// Counts one request of `tokens` (estimated).
    pub fn record(&mut self, tokens: u64, now: Instant) -> Charge {
        self.minute.push_back((now, tokens));
        let number = self.bucket(now);
        let slot = &mut self.day[(number % DAY_BUCKETS as u64) as usize];
        if slot.0 != number {
            *slot = (number, 0, 0);
        }
        slot.1 += 1;
        slot.2 += tokens;
        Charge { at: now, tokens }
    }

    /// Replaces a request's estimated tokens with what the answer reported.
    pub fn settle(&mut self, charge: Charge, actual: u64) {
        if let Some(entry) = self.minute.iter_mut().find(|(t, tok)| *t == charge.at && *tok == charge.tokens) {
            entry.1 = actual;
        }
        let number = self.bucket(charge.at);
        let slot = &mut self.day[(number % DAY_BUCKETS as u64) as usize];
        if slot.0 == number {
            slot.2 = slot.2.saturating_sub(charge.tokens) + actual;
        }
    }
}

/// Whether any limit is set.
pub fn any(limits: &Limits) -> bool {
    limits.rpm.is_some() || limits.rpd.is_some() || limits.tpm.is_some() || limits.tpd.is_some()
}

/// A rough token count of a request body: about four bytes a token for the
/// prompt, plus the completion it asks for (`max_tokens`), so that a budget
/// is not overrun by the answer.
pub fn estimate_tokens(body_len: usize, max_tokens: Option<u64>) -> u64 {
    (body_len as u64).div_ceil(4) + max_tokens.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u64>, rpd: Option<u64>, tpm: Option<u64>, tpd: Option<u64>) -> Limits {
        Limits { rpm, rpd, tpm, tpd }
    }

    #[test]
    fn requests_per_minute_slide() {
        let t0 = Instant::now();
        let mut u = Usage::new(t0);
        let l = limits(Some(2), None, None, None);
        u.record(10, t0);
        u.record(10, t0 + Duration::from_secs(10));
        let hit = u.check(&l, 10, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(hit, LimitHit { limit: Limit::Rpm, until: t0 + MINUTE });
        assert!(u.check(&l, 10, t0 + MINUTE).is_ok(), "the first request left the window");
    }

    #[test]
    fn tokens_per_minute_use_the_settled_usage() {
        let t0 = Instant::now();
        let mut u = Usage::new(t0);
        let l = limits(None, None, Some(1000), None);
        let charge = u.record(900, t0);
        assert_eq!(u.check(&l, 200, t0).unwrap_err().limit, Limit::Tpm);
        u.settle(charge, 300);
        assert!(u.check(&l, 200, t0).is_ok(), "the answer used fewer tokens than estimated");
    }

    #[test]
    fn a_request_bigger_than_the_budget_goes_through_on_an_empty_window() {
        let mut u = Usage::new(Instant::now());
        assert!(u.check(&limits(None, None, Some(100), Some(100)), 5000, Instant::now()).is_ok());
    }

    #[test]
    fn requests_per_day_roll_in_buckets() {
        let t0 = Instant::now();
        let mut u = Usage::new(t0);
        let l = limits(None, Some(3), None, None);
        for i in 0..3 {
            u.record(1, t0 + Duration::from_secs(i * 3600));
        }
        let hit = u.check(&l, 1, t0 + Duration::from_secs(5 * 3600)).unwrap_err();
        assert_eq!(hit.limit, Limit::Rpd);
        assert_eq!(hit.until, t0 + DAY, "room again when the first bucket leaves the day");
        assert!(u.check(&l, 1, t0 + DAY + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn estimates_count_prompt_bytes_and_the_completion_asked_for() {
        assert_eq!(estimate_tokens(400, None), 100);
        assert_eq!(estimate_tokens(400, Some(256)), 356);
    }
}
