//! `GET /admin/api/status`: per provider, key and model, what was used,
//! the limit in force (configured, or learned from the upstream's
//! headers), what remains, when the quota resets, what is cooling down and
//! why, which keys the upstream rejected and which circuits are open.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::api::json_response;
use crate::body::ResponseBody;
use crate::catalog::provider::Provider;
use crate::config::Limits;
use crate::gateway::Gateway;
use crate::proxy::quota;
use crate::state::{Clock, Cooling, KeyId, Learned, Period, ResetPeriod, StateStore, Used};

/// The whole status answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The gateway's time, RFC 3339 in its local zone.
    pub now: String,
    /// The gateway's local zone (IANA name, or its offset).
    pub zone: String,
    /// The state backend, as `/health` shows it.
    pub state: serde_json::Value,
    /// Every enabled provider.
    pub providers: Vec<ProviderStatus>,
}

/// One provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderStatus {
    /// Its name.
    pub name: String,
    /// `closed` (requests go), or `open` (skipped, or waiting for a probe).
    pub circuit: String,
    /// Its next quota reset, when it has a calendar.
    pub reset: Option<Reset>,
    /// No calendar: daily counters roll over 24 hours.
    pub rolling: bool,
    /// Every key, in configured order.
    pub keys: Vec<KeyStatus>,
}

/// When a provider's quota resets next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reset {
    /// RFC 3339 in the gateway's zone.
    pub local: String,
    /// RFC 3339 in the provider's zone.
    pub provider: String,
    /// The provider's zone.
    pub zone: String,
    /// `daily` or `monthly`.
    pub period: String,
    /// Seconds from now.
    pub in_seconds: u64,
}

/// One key of a provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyStatus {
    /// Its position in the provider's key list: `#1`.
    pub key: String,
    /// 16 hex digits; `null` for a provider without keys.
    pub fingerprint: Option<String>,
    /// The upstream rejected it (401/403): it is not used.
    pub invalid: bool,
    /// Limits the key shares across its models, and their use.
    pub shared: Quota,
    /// Every model the provider routes, then any other model cooling on
    /// this key.
    pub models: Vec<ModelStatus>,
}

/// One model on one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStatus {
    /// The upstream model id.
    pub model: String,
    /// Use, limits and what remains.
    #[serde(flatten)]
    pub quota: Quota,
    /// Cooling down, until when and why.
    pub cooling: Option<CoolingStatus>,
}

/// What a counter used, its limits and what is left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quota {
    /// Requests and tokens in the last minute and the day.
    pub used: UsedStatus,
    /// Configured, learned, and in force.
    pub limit: LimitStatus,
    /// The limit in force minus what was used, where a limit is known.
    pub remaining: Figures,
}

/// [`Used`], as the API shows it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct UsedStatus {
    /// Requests in the last minute.
    pub requests_minute: u64,
    /// Tokens in the last minute.
    pub tokens_minute: u64,
    /// Requests in the day (the provider's calendar day, or 24 hours).
    pub requests_day: u64,
    /// Tokens in the day.
    pub tokens_day: u64,
}

/// Where a limit comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitStatus {
    /// From the config and catalog.
    pub configured: Figures,
    /// From the upstream's rate-limit headers, when it sent any.
    pub learned: Option<Figures>,
    /// What admission checks: each learned field replaces the configured one.
    pub in_force: Figures,
}

/// The four limits (or remainders), each `null` when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Requests per day.
    pub rpd: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Tokens per day.
    pub tpd: Option<u64>,
}

impl From<Limits> for Figures {
    fn from(l: Limits) -> Self {
        Self { rpm: l.rpm, rpd: l.rpd, tpm: l.tpm, tpd: l.tpd }
    }
}

/// A cooldown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoolingStatus {
    /// RFC 3339 in the gateway's zone.
    pub until: String,
    /// Seconds from now (rounded up).
    pub in_seconds: u64,
    /// `rate_limited`, `daily_quota`, `quota_exhausted` or `none_left`.
    pub reason: String,
}

/// `GET /admin/api/status`.
pub fn status(gateway: &Gateway) -> Response<ResponseBody> {
    let body = serde_json::to_vec(&status_of(gateway)).unwrap_or_default();
    json_response(Bytes::from(body))
}

/// The status as of now.
pub fn status_of(gateway: &Gateway) -> Status {
    let state = gateway.proxy().state();
    let clock = state.clock();
    let now = Instant::now();
    let view = View::new(state.as_ref(), clock, now);
    let providers = gateway.router().providers().iter().map(|p| view.provider(state.as_ref(), p)).collect();
    Status {
        now: view.format(clock.wall_ms(now), &view.local),
        zone: zone_name(&view.local),
        state: serde_json::to_value(state.health()).unwrap_or_default(),
        providers,
    }
}

/// What one status answer reads once: the state's sets, the clock, the zone.
struct View {
    clock: Clock,
    now: Instant,
    local: TimeZone,
    cooling: HashMap<(KeyId, Arc<str>), (Instant, Cooling)>,
    invalid: HashSet<KeyId>,
    open: HashSet<Arc<str>>,
}

impl View {
    fn new(state: &dyn StateStore, clock: Clock, now: Instant) -> Self {
        Self {
            clock,
            now,
            local: TimeZone::system(),
            cooling: state.cooldowns(now).into_iter().map(|(k, m, until, why)| ((k, m), (until, why))).collect(),
            invalid: state.invalid_keys().into_iter().collect(),
            open: state.open_circuits().into_iter().collect(),
        }
    }

    fn provider(&self, state: &dyn StateStore, p: &Provider) -> ProviderStatus {
        let reset = p.next_reset(&self.clock, self.now).zip(p.quota_reset.as_ref()).map(|(at, schedule)| {
            let ms = self.clock.wall_ms(at);
            let zone = schedule.reset().zone();
            Reset {
                local: self.format(ms, &self.local),
                provider: self.format(ms, zone),
                zone: zone_name(zone),
                period: match schedule.reset().period() {
                    ResetPeriod::Daily => "daily",
                    ResetPeriod::Monthly => "monthly",
                }
                .to_owned(),
                in_seconds: ceil_secs(at.saturating_duration_since(self.now)),
            }
        });
        // The key-wide counters count over the calendar day when the key
        // has a daily limit, as admission does.
        let key_period = p
            .quota_reset
            .as_ref()
            .filter(|_| crate::state::usage::daily(&p.key_limits))
            .and_then(|s| s.period(&self.clock, self.now));
        let models = p.models();
        let keys = p
            .keys
            .iter()
            .map(|key| {
                let id = &key.id;
                let shared = quota(state.used(id, None, key_period.as_ref(), self.now), p.key_limits, None, self.now);
                let mut rows: Vec<ModelStatus> = models
                    .iter()
                    .map(|m| {
                        let budget = p.budget_for(&m.id, &self.clock, self.now);
                        self.model(state, id, &m.id, budget.model, budget.period.as_ref())
                    })
                    .collect();
                // A model cooling on this key that the table does not list
                // (discovery dropped it, a route names it) still shows.
                let listed: HashSet<&str> = models.iter().map(|m| &*m.id).collect();
                let mut extra: Vec<&Arc<str>> =
                    self.cooling.keys().filter(|(k, m)| k == id && !listed.contains(&**m)).map(|(_, m)| m).collect();
                extra.sort();
                for m in extra {
                    let budget = p.budget_for(m, &self.clock, self.now);
                    rows.push(self.model(state, id, m, budget.model, budget.period.as_ref()));
                }
                KeyStatus {
                    key: format!("#{}", key.index + 1),
                    fingerprint: key.secret().map(|_| format!("{:016x}", id.fingerprint)),
                    invalid: self.invalid.contains(id),
                    shared,
                    models: rows,
                }
            })
            .collect();
        ProviderStatus {
            name: p.name.to_string(),
            circuit: if self.open.contains(&p.name) { "open" } else { "closed" }.to_owned(),
            rolling: p.quota_reset.is_none(),
            reset,
            keys,
        }
    }

    fn model(
        &self,
        state: &dyn StateStore,
        key: &KeyId,
        model: &Arc<str>,
        configured: Limits,
        period: Option<&Period>,
    ) -> ModelStatus {
        let used = state.used(key, Some(model), period, self.now);
        let learned = state.learned(key, model);
        let cooling = self.cooling.get(&(key.clone(), model.clone())).map(|&(until, why)| CoolingStatus {
            until: self.format(self.clock.wall_ms(until), &self.local),
            in_seconds: ceil_secs(until.saturating_duration_since(self.now)),
            reason: why.label().to_owned(),
        });
        ModelStatus { model: model.to_string(), quota: quota(used, configured, learned.as_ref(), self.now), cooling }
    }

    /// Wall-clock `ms` as RFC 3339 in `zone`.
    fn format(&self, ms: i64, zone: &TimeZone) -> String {
        match Timestamp::from_millisecond(ms) {
            Ok(t) => t.to_zoned_datetime(zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            Err(_) => String::new(),
        }
    }
}

/// Use, limits (learned fields replacing configured ones) and remainders.
fn quota(used: Option<Used>, configured: Limits, learned: Option<&Learned>, now: Instant) -> Quota {
    let used = used.unwrap_or_default();
    let in_force = quota::in_force(configured, learned, now);
    let left = |limit: Option<u64>, spent: u64| limit.map(|l| l.saturating_sub(spent));
    Quota {
        used: UsedStatus {
            requests_minute: used.requests_minute,
            tokens_minute: used.tokens_minute,
            requests_day: used.requests_day,
            tokens_day: used.tokens_day,
        },
        remaining: Figures {
            rpm: left(in_force.rpm, used.requests_minute),
            rpd: left(in_force.rpd, used.requests_day),
            tpm: left(in_force.tpm, used.tokens_minute),
            tpd: left(in_force.tpd, used.tokens_day),
        },
        limit: LimitStatus {
            configured: configured.into(),
            learned: learned.map(|l| quota::learned_limits(l, now).into()),
            in_force: in_force.into(),
        },
    }
}

fn zone_name(zone: &TimeZone) -> String {
    match zone.iana_name() {
        Some(name) => name.to_owned(),
        // A system zone without a name (a bare TZ rule): its offset now.
        None => zone.to_offset(Timestamp::now()).to_string(),
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    u64::try_from(d.as_millis().div_ceil(1000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_limits_replace_configured_ones_field_by_field() {
        let configured = Limits { rpm: Some(30), rpd: Some(1000), tpm: None, tpd: Some(500_000) };
        let stated = Limits { rpm: None, rpd: Some(14_400), tpm: Some(6000), tpd: None };
        let learned = Learned { stated, ..Learned::default() };
        let used =
            Used { requests_minute: 2, tokens_minute: 100, requests_day: 40, tokens_day: 9000, ..Used::default() };
        let now = Instant::now();
        let q = quota(Some(used), configured, Some(&learned), now);
        assert_eq!(q.limit.in_force, Figures { rpm: Some(30), rpd: Some(14_400), tpm: Some(6000), tpd: Some(500_000) });
        assert_eq!(q.remaining, Figures { rpm: Some(28), rpd: Some(14_360), tpm: Some(5900), tpd: Some(491_000) });
        // A per-minute limit a 429 showed, lower than the configured one.
        let inferred = crate::state::Inferred { value: 12, at: now, own: true };
        let learned = Learned { refused_rpm: Some(inferred), ..learned };
        let q = quota(Some(used), configured, Some(&learned), now);
        assert_eq!(q.limit.in_force.rpm, Some(12));
        assert_eq!(q.limit.learned.and_then(|l| l.rpm), Some(12));
        let none = quota(None, Limits::default(), None, now);
        assert_eq!(none.remaining, Figures::default());
    }
}
