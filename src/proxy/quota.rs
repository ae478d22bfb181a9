//! What the upstream says about its quota, turned into state: how long a
//! 429 cools a model on a key (a daily quota until the provider's reset,
//! a per-minute one for its `Retry-After`), the limits its rate-limit
//! headers state (they replace the configured guess for that key), and a
//! window the headers say is spent (the candidate is skipped until the
//! reset they name, without a call).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Proxy;
use crate::catalog::provider::{Key, Provider};
use crate::catalog::routes::Candidate;
use crate::config::Limits;
use crate::plugin::{QuotaWindow, RateReport, RateUnit};
use crate::state::{Budget, Cooling, KeyId, ResetPeriod};

/// A daily quota's 429 from a provider without a daily calendar is retried
/// this often: its day rolls, and nothing says when it frees.
pub const DAILY_RETRY: Duration = Duration::from_secs(3600);
/// The same for a monthly quota without a monthly calendar.
pub const MONTHLY_RETRY: Duration = Duration::from_secs(24 * 3600);
/// The longest any quota cools a model (a month and a day).
pub const MAX_QUOTA_COOLDOWN: Duration = Duration::from_secs(32 * 24 * 3600);

/// Until when a 429 about `window` cools a model of `provider`, and why:
/// a daily (monthly) quota until the provider's next daily (monthly) reset
/// when its calendar has one, else at least [`DAILY_RETRY`]
/// ([`MONTHLY_RETRY`]) or the upstream's own wait if longer; any other
/// window for the upstream's wait, else `cooldown`.
pub fn rate_limit_cooldown(
    proxy: &Proxy,
    provider: &Provider,
    window: QuotaWindow,
    retry_after: Option<Duration>,
    cooldown: Duration,
    now: Instant,
) -> (Option<Instant>, Cooling) {
    let calendar = |period: ResetPeriod| {
        provider
            .quota_reset
            .as_ref()
            .filter(|s| s.reset().period() == period)
            .and_then(|s| s.next_reset(&proxy.clock, now))
    };
    let quota = |period: ResetPeriod, fallback: Duration| {
        let until = calendar(period)
            .or_else(|| now.checked_add(retry_after.unwrap_or(fallback).max(fallback).min(MAX_QUOTA_COOLDOWN)));
        (until, Cooling::DailyQuota)
    };
    match window {
        QuotaWindow::Day => quota(ResetPeriod::Daily, DAILY_RETRY),
        QuotaWindow::Month => quota(ResetPeriod::Monthly, MONTHLY_RETRY),
        QuotaWindow::Minute | QuotaWindow::Unknown => {
            let wait = retry_after.unwrap_or(cooldown).clamp(Duration::from_secs(1), super::MAX_COOLDOWN);
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
                Some(after) => now.checked_add(after.min(MAX_QUOTA_COOLDOWN)),
                // "Nothing left today" without a time: the provider's reset.
                None if report.window == QuotaWindow::Day => candidate.provider.next_reset(&proxy.clock, now),
                None => None,
            };
            if let Some(until) = until.filter(|u| *u > now) {
                spent_until = Some(spent_until.map_or(until, |s| s.max(until)));
            }
        }
    }
    proxy.state.learn(&key.id, &candidate.model, stated);
    if let Some(until) = spent_until {
        proxy.state.cool(&key.id, &candidate.model, until, Cooling::NoneLeft);
        tracing::debug!(provider = %candidate.provider.name, model = %candidate.model, key = key.index, "upstream says nothing is left; skipped until its reset");
    }
    spent_until
}

/// `budget` with what the upstream stated for this key in place of the
/// configured guess.
pub fn with_learned(mut budget: Budget, learned: Option<Limits>) -> Budget {
    if let Some(l) = learned {
        let m = &mut budget.model;
        m.rpm = l.rpm.or(m.rpm);
        m.rpd = l.rpd.or(m.rpd);
        m.tpm = l.tpm.or(m.tpm);
        m.tpd = l.tpd.or(m.tpd);
    }
    budget
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
        proxy.state.learned(&key.id, &candidate.model),
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
