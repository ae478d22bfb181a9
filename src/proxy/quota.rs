//! What the upstream says about its quota, turned into state: how long a
//! 429 cools a model on a key (a daily quota until the provider's reset,
//! a per-minute one for its `Retry-After`), the limits its rate-limit
//! headers state (they replace the configured guess for that key), and a
//! window the headers say is spent (the candidate is skipped until the
//! reset they name, without a call).

use std::time::{Duration, Instant};

use super::Proxy;
use crate::catalog::provider::{Key, Provider};
use crate::catalog::routes::Candidate;
use crate::config::Limits;
use crate::plugin::{QuotaWindow, RateReport, RateUnit};
use crate::state::{Budget, Cooling, ResetPeriod};

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
