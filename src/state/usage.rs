//! Rate limits known before the upstream's 429: requests and tokens per
//! minute and per day, counted per (provider, model, key), and optionally
//! per key across all its models (OpenRouter's free pool is account-wide).
//!
//! A candidate whose next request would pass a limit is skipped without a
//! call, like one cooling down. Token budgets are charged with the
//! request's estimated size when it is admitted, corrected with the usage
//! the answer reports, and given back when the attempt fails.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::KeyId;
use crate::config::Limits;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// The day window is kept in buckets of this size (a rolling 24 h to within
/// five minutes, in 288 counters instead of one entry per request). Buckets
/// are aligned to the wall clock, and five minutes divides every time
/// zone's offset from UTC, so a calendar day starts on a bucket boundary
/// whatever the provider's zone; persisted counters are kept per bucket.
pub const DAY_BUCKET: Duration = Duration::from_secs(300);
const DAY_BUCKETS: usize = (DAY.as_secs() / DAY_BUCKET.as_secs()) as usize;

/// The most requests a counter keeps in its minute (160 KB): more than any
/// per-minute limit there is to count against, so a counter of a key
/// that serves thousands a second stays small.
pub const MINUTE_ENTRIES: usize = 10_000;

/// The completion a request is assumed to ask for when it names a
/// `max_tokens` but its model's context window is unknown: no model
/// answers more than this in one go, so a client's absurd `max_tokens`
/// cannot book a day's budget.
pub const MAX_COMPLETION_ESTIMATE: u64 = 262_144;

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

/// What a counter holds: requests and tokens in the last minute and in
/// the day (rolling, or the provider's calendar day).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Used {
    /// Requests in the last minute.
    pub requests_minute: u64,
    /// Tokens in the last minute.
    pub tokens_minute: u64,
    /// Requests in the day.
    pub requests_day: u64,
    /// Tokens in the day.
    pub tokens_day: u64,
    /// When the day's count next drops: the oldest counted request leaves
    /// the rolling day, or the calendar period ends.
    #[serde(skip)]
    pub day_frees: Option<Instant>,
    /// When the minute's count next drops (its oldest request leaves it).
    #[serde(skip)]
    pub minute_frees: Option<Instant>,
}

/// What one request was charged in one counter, to be corrected once its
/// usage is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub(super) at: Instant,
    pub(super) tokens: u64,
}

/// What one admitted request was charged against a key's limits: handed
/// back to [`super::StateStore::settle`] or [`super::StateStore::refund`].
#[derive(Debug, Clone)]
pub struct Admission {
    pub(super) key: KeyId,
    pub(super) model: Arc<str>,
    pub(super) model_charge: Option<Charge>,
    pub(super) key_charge: Option<Charge>,
    /// The request counted in the model's counter with no model limit to
    /// charge: how a limit nobody declared is learned from the upstream's
    /// 429 (kept locally, never shared).
    pub(super) seen: Option<Charge>,
    /// Requests the model's counter held in its last minute when this one
    /// was admitted, and when the oldest of them was.
    pub(super) minute_before: (u64, Option<Instant>),
}

impl Admission {
    /// An admission that charged and counted nothing.
    pub fn free(key: &KeyId, model: &Arc<str>) -> Self {
        Self {
            key: key.clone(),
            model: model.clone(),
            model_charge: None,
            key_charge: None,
            seen: None,
            minute_before: (0, None),
        }
    }

    /// Whether anything was charged against a limit.
    pub fn charged(&self) -> bool {
        self.model_charge.is_some() || self.key_charge.is_some()
    }

    /// The charge in the model's own counter, against its limits or only
    /// counted.
    pub(super) fn model_count(&self) -> Option<Charge> {
        self.model_charge.or(self.seen)
    }

    /// What the request found in the last minute of its model's counter
    /// on its key when it was admitted (if it was counted): what the
    /// upstream had already served of a minute's window, if it refuses
    /// this one.
    pub fn minute_before(&self) -> Option<MinuteBefore> {
        self.model_count().map(|c| MinuteBefore {
            admitted: c.at,
            requests: self.minute_before.0,
            oldest: self.minute_before.1,
        })
    }
}

/// See [`Admission::minute_before`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteBefore {
    /// When the request was admitted.
    pub admitted: Instant,
    /// Requests in the minute before it.
    pub requests: u64,
    /// When the oldest of them was admitted.
    pub oldest: Option<Instant>,
}

/// What a failed attempt gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refund {
    /// The upstream saw the request (it counts against requests per minute
    /// and day) but answered no tokens.
    Tokens,
    /// The request never reached the upstream (connect error, a plugin
    /// that refused to build it): nothing was spent.
    Everything,
}

/// One ten-minute bucket of the day: its number (since the counter's
/// origin), requests and tokens.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    number: u64,
    requests: u64,
    tokens: u64,
}

const EMPTY: Bucket = Bucket { number: u64::MAX, requests: 0, tokens: 0 };

/// The quota period a provider's calendar says is running: daily limits
/// count from `start` and free at `end` (instead of a rolling 24 hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// When the period began, in wall-clock seconds since the Unix epoch.
    pub start_secs: i64,
    /// When it ends (the next reset).
    pub end: Instant,
}

/// Requests and tokens in the last minute and (when a daily limit applies)
/// the last day.
#[derive(Debug)]
pub struct Usage {
    /// (time, tokens) of each request in the last minute.
    minute: VecDeque<(Instant, u64)>,
    /// Per bucket, indexed by bucket number modulo the ring; only kept for
    /// counters with a daily limit. A bucket's number is its wall-clock
    /// start divided by [`DAY_BUCKET`].
    day: Option<Box<[Bucket; DAY_BUCKETS]>>,
    origin: Instant,
    /// Wall-clock seconds at `origin`.
    origin_secs: i64,
}

impl Usage {
    /// Empty counters; `origin` is wall-clock `origin_secs` and anchors the
    /// day buckets; `daily` keeps the day window (7 KB) for counters that
    /// have a daily limit.
    pub fn new(origin: Instant, origin_secs: i64, daily: bool) -> Self {
        Self { minute: VecDeque::new(), day: daily.then(|| Box::new([EMPTY; DAY_BUCKETS])), origin, origin_secs }
    }

    /// Roughly how many bytes this counter holds (for the cache's bound).
    pub fn weight(daily: bool) -> u32 {
        let day = if daily { std::mem::size_of::<[Bucket; DAY_BUCKETS]>() } else { 0 };
        (std::mem::size_of::<Self>() + day + 256) as u32
    }

    /// Wall-clock seconds at `at`.
    fn wall_secs(&self, at: Instant) -> i64 {
        let since = i64::try_from(at.saturating_duration_since(self.origin).as_secs()).unwrap_or(i64::MAX);
        self.origin_secs.saturating_add(since)
    }

    fn bucket(&self, at: Instant) -> u64 {
        bucket_of(self.wall_secs(at))
    }

    /// When bucket `number` leaves the rolling day.
    fn bucket_end(&self, number: u64) -> Option<Instant> {
        let end = number.checked_add(DAY_BUCKETS as u64)?.checked_mul(DAY_BUCKET.as_secs())?;
        let after_origin = i64::try_from(end).ok()?.saturating_sub(self.origin_secs).max(0);
        self.origin.checked_add(Duration::from_secs(after_origin.unsigned_abs()))
    }

    /// Adds what a persisted bucket (or minute) counted: `requests` and
    /// `tokens` at wall-clock `secs`. Counts older than a day are dropped;
    /// those of the last minute also fill the minute window (requests
    /// spread evenly over the tokens).
    pub fn restore(&mut self, secs: i64, requests: u64, tokens: u64, now: Instant) {
        let now_secs = self.wall_secs(now);
        let age = now_secs.saturating_sub(secs);
        if !(0..DAY.as_secs() as i64).contains(&age) || requests == 0 && tokens == 0 {
            return;
        }
        if let Some(day) = &mut self.day {
            let number = bucket_of(secs);
            let slot = &mut day[(number % DAY_BUCKETS as u64) as usize];
            if slot.number != number {
                *slot = Bucket { number, requests: 0, tokens: 0 };
            }
            slot.requests = slot.requests.saturating_add(requests);
            slot.tokens = slot.tokens.saturating_add(tokens);
        }
        if age < MINUTE.as_secs() as i64
            && let Some(at) = now.checked_sub(Duration::from_secs(age.unsigned_abs()))
        {
            // A minute's requests are bounded by any sane rpm; a corrupt row
            // must not make the window huge.
            let n = requests.clamp(1, MINUTE_ENTRIES as u64);
            for i in 0..n {
                let share = tokens / n + u64::from(i < tokens % n);
                self.minute.push_back((at, share));
            }
            self.minute.make_contiguous().sort_by_key(|(t, _)| *t);
        }
    }

    fn prune(&mut self, now: Instant) {
        while self.minute.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) >= MINUTE) {
            self.minute.pop_front();
        }
    }

    /// Requests and tokens in the rolling day (or the calendar `period`),
    /// and when the oldest bucket that holds any leaves the window (or the
    /// period ends).
    fn day_totals(&self, now: Instant, period: Option<&Period>) -> (u64, u64, Option<Instant>) {
        let Some(day) = &self.day else { return (0, 0, None) };
        let current = self.bucket(now);
        let mut first = current.saturating_sub(DAY_BUCKETS as u64 - 1);
        if let Some(p) = period {
            // The bucket holding the reset counts whole: a few requests made
            // just before it may be counted in the new period, never fewer.
            first = first.max(bucket_of(p.start_secs));
        }
        let (mut requests, mut tokens, mut oldest) = (0u64, 0u64, None);
        for b in day.iter() {
            if b.number != u64::MAX && b.number >= first && b.number <= current {
                requests = requests.saturating_add(b.requests);
                tokens = tokens.saturating_add(b.tokens);
                oldest = Some(oldest.map_or(b.number, |o: u64| o.min(b.number)));
            }
        }
        let frees = match period {
            Some(p) => Some(p.end),
            None => oldest.and_then(|b| self.bucket_end(b)),
        };
        (requests, tokens, frees)
    }

    /// What this counter holds at `now`: the last minute and the day (or
    /// the calendar `period`).
    pub fn used(&mut self, now: Instant, period: Option<&Period>) -> Used {
        self.prune(now);
        let tokens_minute = self.minute.iter().fold(0u64, |sum, (_, t)| sum.saturating_add(*t));
        let (requests_day, tokens_day, day_frees) = self.day_totals(now, period);
        let minute_frees = self.minute.front().and_then(|(t, _)| t.checked_add(MINUTE));
        Used {
            requests_minute: self.minute.len() as u64,
            tokens_minute,
            requests_day,
            tokens_day,
            day_frees,
            minute_frees,
        }
    }

    /// Whether one more request of `tokens` fits in `limits` now (daily
    /// limits over the calendar `period` when the provider has one).
    pub fn check(
        &mut self,
        limits: &Limits,
        tokens: u64,
        now: Instant,
        period: Option<&Period>,
    ) -> Result<(), LimitHit> {
        self.prune(now);
        let in_minute = self.minute.len() as u64;
        let minute_frees = self.minute.front().and_then(|(t, _)| t.checked_add(MINUTE)).unwrap_or(now);
        if let Some(rpm) = limits.rpm
            && in_minute >= rpm
        {
            return Err(LimitHit { limit: Limit::Rpm, until: minute_frees });
        }
        if let Some(tpm) = limits.tpm {
            let used = self.minute.iter().fold(0u64, |sum, (_, t)| sum.saturating_add(*t));
            // A request larger than the whole budget is let through on an
            // empty window: the upstream decides, instead of never trying.
            if used > 0 && used.saturating_add(tokens) > tpm {
                return Err(LimitHit { limit: Limit::Tpm, until: minute_frees });
            }
        }
        if limits.rpd.is_some() || limits.tpd.is_some() {
            let (requests, used, frees) = self.day_totals(now, period);
            let until = frees.unwrap_or(now);
            if limits.rpd.is_some_and(|rpd| requests >= rpd) {
                return Err(LimitHit { limit: Limit::Rpd, until });
            }
            if limits.tpd.is_some_and(|tpd| used > 0 && used.saturating_add(tokens) > tpd) {
                return Err(LimitHit { limit: Limit::Tpd, until });
            }
        }
        Ok(())
    }

    /// Takes over what `older` (a counter without a day window, replaced
    /// by this one since a daily limit became known) counted: its minute,
    /// which also counts in this day.
    pub fn adopt(&mut self, older: &mut Usage) {
        for (at, tokens) in std::mem::take(&mut older.minute) {
            self.record(tokens, at);
        }
        self.minute.make_contiguous().sort_by_key(|(t, _)| *t);
    }

    /// Requests in the last minute, and when the oldest of them was.
    pub fn in_minute(&mut self, now: Instant) -> (u64, Option<Instant>) {
        self.prune(now);
        (self.minute.len() as u64, self.minute.front().map(|(t, _)| *t))
    }

    /// Counts one request of `tokens` (estimated).
    pub fn record(&mut self, tokens: u64, now: Instant) -> Charge {
        if self.minute.len() >= MINUTE_ENTRIES {
            // Past any per-minute limit a free tier has: the count stays a
            // floor, and the memory of a busy counter bounded.
            self.minute.pop_front();
        }
        self.minute.push_back((now, tokens));
        let number = self.bucket(now);
        if let Some(day) = &mut self.day {
            let slot = &mut day[(number % DAY_BUCKETS as u64) as usize];
            if slot.number != number {
                *slot = Bucket { number, requests: 0, tokens: 0 };
            }
            slot.requests = slot.requests.saturating_add(1);
            slot.tokens = slot.tokens.saturating_add(tokens);
        }
        Charge { at: now, tokens }
    }

    /// Replaces a request's estimated tokens with what the answer reported.
    pub fn settle(&mut self, charge: Charge, actual: u64) {
        self.adjust(charge, |_| Some(actual));
    }

    /// Gives back a failed request's tokens, or the whole request.
    pub fn refund(&mut self, charge: Charge, refund: Refund) {
        self.adjust(charge, |_| match refund {
            Refund::Tokens => Some(0),
            Refund::Everything => None,
        });
    }

    /// Sets a charge's tokens to `to(tokens)`, or removes the request when
    /// that is `None`.
    fn adjust(&mut self, charge: Charge, to: impl Fn(u64) -> Option<u64>) {
        let new = to(charge.tokens);
        // From the back: a charge is settled or refunded when its answer
        // comes, behind few newer ones, while the minute may hold thousands.
        if let Some(i) = self.minute.iter().rposition(|(t, tok)| *t == charge.at && *tok == charge.tokens) {
            match new {
                Some(tokens) => self.minute[i].1 = tokens,
                None => {
                    self.minute.remove(i);
                }
            }
        }
        let number = self.bucket(charge.at);
        if let Some(day) = &mut self.day {
            let slot = &mut day[(number % DAY_BUCKETS as u64) as usize];
            if slot.number == number {
                slot.tokens = slot.tokens.saturating_sub(charge.tokens).saturating_add(new.unwrap_or(0));
                if new.is_none() {
                    slot.requests = slot.requests.saturating_sub(1);
                }
            }
        }
    }
}

/// The day bucket holding wall-clock second `secs`.
pub fn bucket_of(secs: i64) -> u64 {
    (secs.max(0) as u64) / DAY_BUCKET.as_secs()
}

/// Whether any limit is set.
pub fn any(limits: &Limits) -> bool {
    limits.rpm.is_some() || limits.rpd.is_some() || limits.tpm.is_some() || limits.tpd.is_some()
}

/// Whether a daily limit is set.
pub fn daily(limits: &Limits) -> bool {
    limits.rpd.is_some() || limits.tpd.is_some()
}

/// A rough token count of a request for one model: about four bytes a
/// token for the prompt, plus the completion it asks for (`max_tokens`),
/// so that a budget is not overrun by the answer. The completion counts at
/// most the model's context window (or [`MAX_COMPLETION_ESTIMATE`] when
/// that is unknown): a client's `max_tokens` of 10^12 books no more than
/// the model could ever answer.
pub fn estimate_tokens(body_len: usize, max_tokens: Option<u64>, context_window: Option<u64>) -> u64 {
    let prompt = (body_len as u64).div_ceil(4);
    let completion = max_tokens.unwrap_or(0).min(context_window.unwrap_or(MAX_COMPLETION_ESTIMATE));
    prompt.saturating_add(completion)
}

#[cfg(test)]
impl Charge {
    fn with_tokens(self, tokens: u64) -> Self {
        Self { at: self.at, tokens }
    }
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
        let mut u = Usage::new(t0, 0, false);
        let l = limits(Some(2), None, None, None);
        u.record(10, t0);
        u.record(10, t0 + Duration::from_secs(10));
        let hit = u.check(&l, 10, t0 + Duration::from_secs(20), None).unwrap_err();
        assert_eq!(hit, LimitHit { limit: Limit::Rpm, until: t0 + MINUTE });
        assert!(u.check(&l, 10, t0 + MINUTE, None).is_ok(), "the first request left the window");
    }

    #[test]
    fn a_busy_minute_keeps_a_bounded_count_and_settles_its_newest_charges() {
        let t0 = Instant::now();
        let mut u = Usage::new(t0, 0, false);
        for i in 0..MINUTE_ENTRIES as u64 + 5 {
            u.record(1, t0 + Duration::from_micros(i));
        }
        let last = u.record(7, t0 + Duration::from_millis(100));
        assert_eq!(u.in_minute(t0 + Duration::from_millis(100)).0, MINUTE_ENTRIES as u64);
        u.refund(last, Refund::Everything);
        assert_eq!(u.in_minute(t0 + Duration::from_millis(100)).0, MINUTE_ENTRIES as u64 - 1);
    }

    #[test]
    fn tokens_per_minute_use_the_settled_usage() {
        let t0 = Instant::now();
        let mut u = Usage::new(t0, 0, false);
        let l = limits(None, None, Some(1000), None);
        let charge = u.record(900, t0);
        assert_eq!(u.check(&l, 200, t0, None).unwrap_err().limit, Limit::Tpm);
        u.settle(charge, 300);
        assert!(u.check(&l, 200, t0, None).is_ok(), "the answer used fewer tokens than estimated");
    }

    #[test]
    fn a_request_bigger_than_the_budget_goes_through_on_an_empty_window() {
        let mut u = Usage::new(Instant::now(), 0, true);
        assert!(u.check(&limits(None, None, Some(100), Some(100)), 5000, Instant::now(), None).is_ok());
    }

    #[test]
    fn requests_per_day_roll_in_buckets() {
        let t0 = Instant::now();
        let mut u = Usage::new(t0, 0, true);
        let l = limits(None, Some(3), None, None);
        for i in 0..3 {
            u.record(1, t0 + Duration::from_secs(i * 3600));
        }
        let hit = u.check(&l, 1, t0 + Duration::from_secs(5 * 3600), None).unwrap_err();
        assert_eq!(hit.limit, Limit::Rpd);
        assert_eq!(hit.until, t0 + DAY, "room again when the first bucket leaves the day");
        assert!(u.check(&l, 1, t0 + DAY + Duration::from_secs(1), None).is_ok());
    }

    #[test]
    fn refunds_give_back_tokens_or_the_whole_request() {
        let t0 = Instant::now();
        let mut u = Usage::new(t0, 0, true);
        let l = limits(Some(1), Some(1), None, Some(1000));
        let charge = u.record(5000, t0);
        assert_eq!(u.check(&limits(None, None, None, Some(1000)), 10, t0, None).unwrap_err().limit, Limit::Tpd);
        u.refund(charge, Refund::Tokens);
        assert!(u.check(&limits(None, None, None, Some(1000)), 10, t0, None).is_ok(), "tokens given back");
        assert_eq!(u.check(&l, 10, t0, None).unwrap_err().limit, Limit::Rpm, "the request still counts");
        u.refund(charge.with_tokens(0), Refund::Everything);
        assert!(u.check(&l, 10, t0, None).is_ok(), "nothing left of the request");
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        let t0 = Instant::now();
        let mut u = Usage::new(t0, 0, true);
        let charge = u.record(u64::MAX, t0);
        u.record(u64::MAX, t0);
        u.settle(charge, u64::MAX);
        let hit = u.check(&limits(None, None, Some(10), Some(10)), 1, t0, None).unwrap_err();
        assert_eq!(hit.limit, Limit::Tpm);
    }

    #[test]
    fn estimates_clamp_the_completion_to_what_the_model_could_answer() {
        assert_eq!(estimate_tokens(400, None, None), 100);
        assert_eq!(estimate_tokens(400, Some(256), None), 356);
        assert_eq!(estimate_tokens(400, Some(1_000_000_000_000), Some(8192)), 100 + 8192);
        assert_eq!(estimate_tokens(400, Some(u64::MAX), None), 100 + MAX_COMPLETION_ESTIMATE);
        assert_eq!(estimate_tokens(usize::MAX, Some(u64::MAX), Some(u64::MAX)), u64::MAX);
    }

    #[test]
    fn a_calendar_period_counts_from_its_start_and_frees_at_its_end() {
        let t0 = Instant::now();
        // The counter's origin is wall-clock 10:00:00 on some day.
        let ten = 1_700_000_000 / 86_400 * 86_400 + 10 * 3600;
        let mut u = Usage::new(t0, ten, true);
        let l = limits(None, Some(2), None, None);
        u.record(1, t0);
        u.record(1, t0 + Duration::from_secs(60));
        let period = Period { start_secs: ten + 3600, end: t0 + Duration::from_secs(5 * 3600) };
        let at = t0 + Duration::from_secs(2 * 3600);
        assert_eq!(u.check(&l, 1, at, None).unwrap_err().limit, Limit::Rpd, "a rolling day still holds both");
        assert!(u.check(&l, 1, at, Some(&period)).is_ok(), "a period that began after them holds neither");
        u.record(1, at);
        u.record(1, at);
        let hit = u.check(&l, 1, at, Some(&period)).unwrap_err();
        assert_eq!(hit.until, period.end, "room again at the reset, not a rolling day later");
    }

    #[test]
    fn restored_counts_fill_the_day_and_the_minute() {
        let t0 = Instant::now();
        let now_secs = 1_700_000_000;
        let mut u = Usage::new(t0, now_secs, true);
        u.restore(now_secs - 3600, 4, 400, t0);
        u.restore(now_secs - 10, 2, 10, t0);
        u.restore(now_secs - 2 * 86_400, 100, 100, t0);
        assert_eq!(u.check(&limits(None, Some(7), None, None), 1, t0, None), Ok(()));
        assert_eq!(u.check(&limits(None, Some(6), None, None), 1, t0, None).unwrap_err().limit, Limit::Rpd);
        assert_eq!(u.check(&limits(Some(2), None, None, None), 1, t0, None).unwrap_err().limit, Limit::Rpm);
        assert_eq!(u.check(&limits(None, None, None, Some(410)), 1, t0, None).unwrap_err().limit, Limit::Tpd);
    }
}
