//! What the upstream says about its quota, turned into state: how long a
//! 429 cools a model on a key (a daily quota until the provider's reset,
//! a per-minute one for its `Retry-After`), the limits its rate-limit
//! headers state (they replace the configured guess for that key), a
//! window the headers say is spent (the candidate is skipped until the
//! reset they name, without a call), and what a 429 itself teaches: how
//! many requests the key had let through in the minute before it refused
//! is its per-minute limit, and a refusal that names no time is probed
//! again later each time it repeats.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Proxy;
use crate::catalog::provider::{Key, Provider};
use crate::catalog::routes::Candidate;
use crate::config::Limits;
use crate::plugin::{QuotaWindow, RateReport, RateUnit};
use crate::state::{Admission, Budget, Cooling, Inferred, KeyId, Learned, ResetPeriod};

/// A daily quota's 429 from a provider without a daily calendar is retried
/// this often: its day rolls, and nothing says when it frees.
pub const DAILY_RETRY: Duration = Duration::from_secs(3600);
/// The same for a monthly quota without a monthly calendar.
pub const MONTHLY_RETRY: Duration = Duration::from_secs(24 * 3600);
/// The longest any quota cools a model (a month and a day).
pub const MAX_QUOTA_COOLDOWN: Duration = Duration::from_secs(32 * 24 * 3600);
/// Refusals in a row that name no time double the wait before the next
/// probe, up to this many times the first wait.
pub const MAX_BACKOFF_FACTOR: u32 = 4;
/// A per-minute limit read from a 429 holds this long after it was last
/// read: the provider may raise it, and the next 429 reads it again.
pub const INFERRED_TTL: Duration = Duration::from_secs(3600);
/// Added to a reset that rate-limit headers name: they write it rounded
/// (Groq: `7.66s`, `1m26.4s`), and a probe a hair early is refused.
pub const RESET_MARGIN: Duration = Duration::from_millis(500);
/// A window longer than this is not a minute's.
const MINUTE: Duration = Duration::from_secs(60);

/// The wait before probing again after the `strikes`-th refusal in a row
/// that named no time: `first`, doubled each time, at most
/// [`MAX_BACKOFF_FACTOR`] × `first`.
pub fn backoff(first: Duration, strikes: u32) -> Duration {
    let factor = 1u32.checked_shl(strikes.saturating_sub(1)).unwrap_or(u32::MAX).min(MAX_BACKOFF_FACTOR);
    first.saturating_mul(factor)
}

/// Until when a 429 about `window` cools a model of `provider`, and why:
/// a daily (monthly) quota until the provider's next daily (monthly) reset
/// when its calendar has one, else at least [`DAILY_RETRY`]
/// ([`MONTHLY_RETRY`]) backed off by `strikes` (see [`backoff`]), or the
/// upstream's own wait if longer; any other window for the upstream's
/// wait, else `cooldown` backed off by `strikes`.
pub fn rate_limit_cooldown(
    proxy: &Proxy,
    provider: &Provider,
    window: QuotaWindow,
    retry_after: Option<Duration>,
    cooldown: Duration,
    strikes: u32,
    now: Instant,
) -> (Option<Instant>, Cooling) {
    let calendar = |period: ResetPeriod| {
        provider
            .quota_reset
            .as_ref()
            .filter(|s| s.reset().period() == period)
            .and_then(|s| s.next_reset(&proxy.clock, now))
    };
    let quota = |period: ResetPeriod, first: Duration| {
        let fallback = backoff(first, strikes);
        let until = calendar(period)
            .or_else(|| now.checked_add(retry_after.unwrap_or(fallback).max(fallback).min(MAX_QUOTA_COOLDOWN)));
        (until, Cooling::DailyQuota)
    };
    match window {
        QuotaWindow::Day => quota(ResetPeriod::Daily, DAILY_RETRY),
        QuotaWindow::Month => quota(ResetPeriod::Monthly, MONTHLY_RETRY),
        QuotaWindow::Minute | QuotaWindow::Unknown => {
            let wait = retry_after
                .unwrap_or_else(|| backoff(cooldown, strikes).min(DAILY_RETRY))
                .clamp(Duration::from_secs(1), super::MAX_COOLDOWN);
            (now.checked_add(wait), Cooling::RateLimited)
        }
    }
}

/// Applies what an answer's rate-limit headers said for `candidate` on
/// `key`: the limits they state are learned, and a window with nothing
/// left cools the model until its reset. Returns when it cools, if it does.
pub fn learn(proxy: &Proxy, candidate: &Candidate, key: &Key, reports: &[RateReport], now: Instant) -> Option<Instant> {
    if reports.is_empty() {
        return None;
    }
    let mut stated = Limits::default();
    let mut spent_until: Option<Instant> = None;
    for report in reports {
        if let Some(limit) = report.limit.filter(|l| *l > 0) {
            let slot = match (report.unit, report.window) {
                (RateUnit::Requests, QuotaWindow::Minute) => Some(&mut stated.rpm),
                (RateUnit::Requests, QuotaWindow::Day) => Some(&mut stated.rpd),
                (RateUnit::Tokens, QuotaWindow::Minute) => Some(&mut stated.tpm),
                (RateUnit::Tokens, QuotaWindow::Day) => Some(&mut stated.tpd),
                _ => None,
            };
            if let Some(slot) = slot {
                *slot = Some(limit);
            }
        }
        if report.remaining == Some(0) {
            let until = match report.reset_after {
                Some(after) => now.checked_add(after.min(MAX_QUOTA_COOLDOWN) + RESET_MARGIN),
                // "Nothing left today" without a time: the provider's reset.
                None if report.window == QuotaWindow::Day => candidate.provider.next_reset(&proxy.clock, now),
                None => None,
            };
            if let Some(until) = until.filter(|u| *u > now) {
                spent_until = Some(spent_until.map_or(until, |s| s.max(until)));
            }
        }
    }
    if crate::state::usage::any(&stated) {
        proxy.state.learn(&key.id, &candidate.model, &|known| {
            let was = known.stated;
            let stated = Limits {
                rpm: stated.rpm.or(was.rpm),
                rpd: stated.rpd.or(was.rpd),
                tpm: stated.tpm.or(was.tpm),
                tpd: stated.tpd.or(was.tpd),
            };
            Learned { stated, ..known }
        });
    }
    if let Some(until) = spent_until {
        proxy.state.cool(&key.id, &candidate.model, until, Cooling::NoneLeft);
        tracing::debug!(provider = %candidate.provider.name, model = %candidate.model, key = key.index, "upstream says nothing is left; skipped until its reset");
    }
    spent_until
}

/// A per-minute limit read from this key's (or a sibling's) 429s, while
/// it holds.
fn inferred_rpm(learned: &Learned, now: Instant) -> Option<Inferred> {
    learned.refused_rpm.filter(|i| now.saturating_duration_since(i.at) < INFERRED_TTL)
}

/// The limits in force for a key: what the upstream stated in place of
/// the `configured` guess, and a per-minute limit its 429s showed (when
/// lower than the configured one: the upstream knows best).
pub fn in_force(configured: Limits, learned: Option<&Learned>, now: Instant) -> Limits {
    let Some(learned) = learned else { return configured };
    let l = &learned.stated;
    let refused = inferred_rpm(learned, now).map(|i| i.value);
    Limits {
        rpm: l.rpm.or(match (configured.rpm, refused) {
            (Some(configured), Some(refused)) => Some(configured.min(refused)),
            (configured, refused) => configured.or(refused),
        }),
        rpd: l.rpd.or(configured.rpd),
        tpm: l.tpm.or(configured.tpm),
        tpd: l.tpd.or(configured.tpd),
    }
}

/// What the upstream said of a key's limits, stated or read from its 429s.
pub fn learned_limits(learned: &Learned, now: Instant) -> Limits {
    Limits { rpm: learned.stated.rpm.or(inferred_rpm(learned, now).map(|i| i.value)), ..learned.stated }
}

/// `budget` with its model limits [`in_force`] for this key.
pub fn with_learned(mut budget: Budget, learned: Option<&Learned>, now: Instant) -> Budget {
    budget.model = in_force(budget.model, learned, now);
    budget
}

/// What a 429 from `key` (whose `admission` it refused) teaches, and until
/// when it cools the candidate and why.
///
/// - The requests the key had let through in the minute before this one
///   are its per-minute limit, for a 429 about a minute's window or one
///   that names no window and at most a minute's wait. Requests sent
///   together with it (admitted before the limit was read) lower it when
///   they are refused too; a later refusal that names nothing, with fewer
///   in the minute than the limit already read, is about another window
///   and does not lower it. The other keys of the provider assume it until
///   their own 429 says otherwise (free-tier keys of one provider share
///   their tier's limits).
/// - A refusal that names no time (a bare 429, a daily quota with no
///   calendar) counts a strike: the next probe waits twice as long, up to
///   [`MAX_BACKOFF_FACTOR`] times; an answer clears the strikes. A bare 429
///   whose limit was just read cools only until the minute's oldest request
///   leaves it.
pub fn refused(
    proxy: &Proxy,
    candidate: &Candidate,
    key: &Key,
    admission: &Admission,
    window: QuotaWindow,
    retry_after: Option<Duration>,
    now: Instant,
) -> (Option<Instant>, Cooling) {
    let provider = &candidate.provider;
    let model = &candidate.model;
    let known = proxy.state.learned(&key.id, model).unwrap_or_default();
    let bare = window == QuotaWindow::Unknown && retry_after.is_none();
    let mut read = None;
    if known.stated.rpm.is_none()
        && let Some(before) = admission.minute_before()
        && before.requests > 0
        && about_a_minute(window, retry_after, before.oldest, now)
    {
        read = match inferred_rpm(&known, now) {
            None => Some(before.requests),
            Some(i) if !i.own => Some(before.requests),
            Some(i) if !bare || before.admitted < i.at => Some(i.value.min(before.requests)),
            Some(_) => None,
        };
    }
    let unnamed = bare
        || matches!(window, QuotaWindow::Day | QuotaWindow::Month)
            && provider.quota_reset.as_ref().is_none_or(|s| {
                s.reset().period() != if window == QuotaWindow::Day { ResetPeriod::Daily } else { ResetPeriod::Monthly }
            });
    let strikes = if unnamed { known.strikes.saturating_add(1) } else { known.strikes };
    if read.is_some() || strikes != known.strikes {
        proxy.state.learn(&key.id, model, &|was| Learned {
            refused_rpm: read.map(|value| Inferred { value, at: now, own: true }).or(was.refused_rpm),
            strikes,
            ..was
        });
    }
    if let Some(value) = read {
        tracing::debug!(provider = %provider.name, model = %model, key = key.index, rpm = value, "a 429 showed the key's requests per minute");
        for sibling in provider.keys.iter().filter(|k| k.id != key.id) {
            proxy.state.learn(&sibling.id, model, &|was| {
                let own = inferred_rpm(&was, now).is_some_and(|i| i.own);
                if own || was.stated.rpm.is_some() {
                    return was;
                }
                Learned { refused_rpm: Some(Inferred { value, at: now, own: false }), ..was }
            });
        }
    }
    // A bare 429 whose limit was just read: the count says when there is
    // room again.
    if bare
        && read.is_some()
        && known.strikes == 0
        && let Some(frees) = proxy.state.used(&key.id, Some(model), None, now).and_then(|u| u.minute_frees)
        && frees > now
    {
        return (frees.checked_add(RESET_MARGIN), Cooling::RateLimited);
    }
    let cooldown = proxy.settings.cooldown.get();
    rate_limit_cooldown(proxy, provider, window, retry_after, cooldown, strikes, now)
}

/// Whether a 429 is about a sliding minute's window: it says so, or the
/// wait it names is when the oldest request of the last minute leaves it
/// (give or take the rounding of a `Retry-After` to whole seconds and the
/// time on the wire), or it names nothing. A wait much shorter than that
/// is a shorter window's (a request a second) and teaches no per-minute
/// limit.
fn about_a_minute(window: QuotaWindow, retry_after: Option<Duration>, oldest: Option<Instant>, now: Instant) -> bool {
    match (window, retry_after) {
        (QuotaWindow::Minute, _) => true,
        (QuotaWindow::Unknown, None) => true,
        (QuotaWindow::Unknown, Some(wait)) => {
            let Some(oldest) = oldest else { return false };
            let frees = (oldest + MINUTE).saturating_duration_since(now);
            wait <= MINUTE + Duration::from_secs(1) && wait + Duration::from_secs(2) >= frees
        }
        _ => false,
    }
}

/// After refusals that named no time, one request at a time probes a key:
/// the (key, model) pairs whose probe is in flight.
#[derive(Default)]
pub struct Probes {
    in_flight: Mutex<HashSet<(KeyId, Arc<str>)>>,
}

/// A probe in flight; the pair is free to probe again when it drops.
pub struct Probe<'a> {
    probes: &'a Probes,
    pair: (KeyId, Arc<str>),
}

impl Probes {
    /// A probe of `model` on `key`, unless one is in flight.
    pub fn start(&self, key: &KeyId, model: &Arc<str>) -> Option<Probe<'_>> {
        let pair = (key.clone(), model.clone());
        let started = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(pair.clone());
        // (The lock is let go first: a probe not started drops, and its
        // drop takes the lock.)
        started.then(|| Probe { probes: self, pair })
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.probes.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.pair);
    }
}

/// Daily requests left across a request's candidates whose daily limit is
/// known, and the soonest time one of their counts drops (DESIGN.md's
/// `x-freeway-remaining-requests-day` and `x-freeway-remaining-reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Requests left today.
    pub remaining: u64,
    /// When the soonest of their days frees requests (a calendar reset, or
    /// the oldest counted request leaving a rolling day).
    pub reset: Option<Instant>,
}

/// What is left of one key's daily requests on one model, when its limit
/// is known: (left, when it next frees).
fn left_on(proxy: &Proxy, candidate: &Candidate, key: &Key, now: Instant) -> Option<(u64, Option<Instant>)> {
    let provider = &candidate.provider;
    let budget = with_learned(
        provider.budget_for(&candidate.model, &proxy.clock, now),
        proxy.state.learned(&key.id, &candidate.model).as_ref(),
        now,
    );
    let rpd = budget.model.rpd?;
    let period = budget.period.as_ref();
    let used = proxy.state.used(&key.id, Some(&candidate.model), period, now).unwrap_or_default();
    let frees = period.map(|p| p.end).or(used.day_frees);
    Some((rpd.saturating_sub(used.requests_day), frees))
}

/// The capacity of `candidates` at `now`: per key, the model limits' room
/// summed over the candidates, capped by the key's own daily limit (shared
/// by its models, so counted once); rejected keys have none, and a model
/// cooling on a key for a daily quota (or headers that said nothing is
/// left) none until it ends. `None` when no candidate's daily limit is known.
pub fn capacity(proxy: &Proxy, candidates: &[Candidate], now: Instant) -> Option<Capacity> {
    // Per key: (sum of its models' room, its own room, soonest reset).
    let mut per_key: HashMap<&KeyId, (u64, Option<u64>)> = HashMap::new();
    let mut reset: Option<Instant> = None;
    let mut known = false;
    let mut sooner = |at: Option<Instant>| {
        if let Some(at) = at.filter(|a| *a > now) {
            reset = Some(reset.map_or(at, |r| r.min(at)));
        }
    };
    for candidate in candidates {
        let budget = candidate.provider.budget_for(&candidate.model, &proxy.clock, now);
        let key_limit = budget.key.rpd;
        for key in &candidate.provider.keys {
            let Some((mut left, frees)) =
                left_on(proxy, candidate, key, now).or_else(|| key_limit.map(|_| (u64::MAX, None)))
            else {
                continue;
            };
            known = true;
            sooner(frees);
            if proxy.state.is_invalid(&key.id) {
                left = 0;
            } else if let Some((until, Cooling::DailyQuota | Cooling::NoneLeft)) =
                proxy.state.cooling(&key.id, &candidate.model, now)
            {
                left = 0;
                sooner(Some(until));
            }
            let entry = per_key.entry(&key.id).or_insert((0, None));
            entry.0 = entry.0.saturating_add(left);
            if let Some(limit) = key_limit {
                let used = proxy.state.used(&key.id, None, budget.period.as_ref(), now).unwrap_or_default();
                sooner(used.day_frees);
                entry.1 = Some(limit.saturating_sub(used.requests_day));
            }
        }
    }
    known.then(|| Capacity {
        remaining: per_key
            .values()
            .fold(0u64, |sum, (models, own)| sum.saturating_add(own.map_or(*models, |o| o.min(*models)))),
        reset,
    })
}

/// Orders `candidates` by the daily requests each has left (most first),
/// for routes with the `headroom` strategy; candidates whose limit is not
/// known keep their written order after those whose limit is.
pub fn by_headroom(proxy: &Proxy, candidates: &mut [Candidate]) {
    let now = Instant::now();
    let mut keyed: Vec<(Option<u64>, Candidate)> = candidates
        .iter()
        .map(|c| {
            let left =
                c.provider.keys.iter().filter(|k| !proxy.state.is_invalid(&k.id)).fold(None, |sum: Option<u64>, k| {
                    match left_on(proxy, c, k, now) {
                        Some((left, _)) => Some(sum.unwrap_or(0).saturating_add(left)),
                        None => sum,
                    }
                });
            (left, c.clone())
        })
        .collect();
    // Stable: equal room keeps the written order.
    keyed.sort_by_key(|(left, _)| std::cmp::Reverse(left.map_or(0, |l| l.saturating_add(1))));
    for (slot, (_, c)) in candidates.iter_mut().zip(keyed) {
        *slot = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_its_cap() {
        let first = Duration::from_secs(60);
        let waits: Vec<u64> = (0..=6).map(|strikes| backoff(first, strikes).as_secs()).collect();
        assert_eq!(waits, [60, 60, 120, 240, 240, 240, 240]);
        assert_eq!(backoff(first, u32::MAX), first * MAX_BACKOFF_FACTOR, "no overflow");
    }
}
