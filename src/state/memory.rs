//! [`MemoryState`]: the gateway's state in process memory, every part of it
//! bounded and expiring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::circuits::{Circuit, CircuitChange, CircuitPolicy, Circuits};
use super::cooldowns::Cooldowns;
use super::keys::KeyHealth;
use super::pins::Pins;
use super::usage::{self, Admission, Charge, LimitHit, Period, Refund, Usage, Used};
use super::{Budget, Clock, Cooling, KeyId, Learned, MAX_PIN_TTL, StateHealth, StateStore};
use crate::config::Limits;

/// How much each part of the state may hold.
#[derive(Debug, Clone, Copy)]
pub struct StateBounds {
    /// Cooling (key, model) pairs.
    pub cooldowns: u64,
    /// Bytes of usage counters (a counter with a daily window is ~2.5 KB).
    pub usage_bytes: u64,
    /// Bytes of session pins (ids are at most 256 bytes).
    pub pin_bytes: u64,
}

impl Default for StateBounds {
    fn default() -> Self {
        Self { cooldowns: 100_000, usage_bytes: 32 << 20, pin_bytes: 16 << 20 }
    }
}

/// A usage counter: (key, model), or (key, None) for the key's shared limits.
type CounterKey = (KeyId, Option<Arc<str>>);

/// One counter, and whether it keeps a day window.
struct Counter {
    daily: bool,
    usage: Mutex<Usage>,
}

impl Counter {
    fn lock(&self) -> MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Limits that make a counter keep its day window.
const COUNT_DAY: Limits = Limits { rpm: None, rpd: Some(u64::MAX), tpm: None, tpd: None };

/// A counter unused for this long holds nothing any window still counts.
const COUNTER_IDLE: Duration = Duration::from_secs(25 * 3600);

/// Cooldowns, usage counters, rejected keys and pins, in memory.
pub struct MemoryState {
    cooldowns: Cooldowns,
    usage: Cache<CounterKey, Arc<Counter>>,
    keys: KeyHealth,
    pins: Pins,
    circuits: Circuits,
    clock: Clock,
    /// What the upstreams taught, per (key, model); `any_learned`
    /// spares the lookup while nothing was learned.
    learned: Cache<(KeyId, Arc<str>), Learned>,
    any_learned: AtomicBool,
}

impl Default for MemoryState {
    fn default() -> Self {
        Self::new(StateBounds::default())
    }
}

impl MemoryState {
    /// Empty state within `bounds`, on the system clock.
    pub fn new(bounds: StateBounds) -> Self {
        Self::with_clock(bounds, Clock::system())
    }

    /// Empty state within `bounds`, on `clock`.
    pub fn with_clock(bounds: StateBounds, clock: Clock) -> Self {
        let usage = Cache::builder()
            .max_capacity(bounds.usage_bytes)
            .weigher(|_: &CounterKey, c: &Arc<Counter>| Usage::weight(c.daily))
            .time_to_idle(COUNTER_IDLE)
            .build();
        Self {
            cooldowns: Cooldowns::new(bounds.cooldowns),
            usage,
            keys: KeyHealth::default(),
            pins: Pins::new(bounds.pin_bytes),
            circuits: Circuits::default(),
            clock,
            // One entry per (key, model) an upstream answered: bounded by what
            // the providers serve, capped against made-up names anyway.
            learned: Cache::builder().max_capacity(bounds.cooldowns).time_to_idle(COUNTER_IDLE).build(),
            any_learned: AtomicBool::new(false),
        }
    }

    /// Adds what an earlier run counted for `key` (and `model`) at
    /// wall-clock `secs`.
    pub fn restore_usage(
        &self,
        key: &KeyId,
        model: Option<&Arc<str>>,
        secs: i64,
        requests: u64,
        tokens: u64,
        now: Instant,
    ) {
        self.counter(key, model, &COUNT_DAY, now).lock().restore(secs, requests, tokens, now);
    }

    /// Pins `session` to `target` until `until` (an earlier run's pin).
    pub fn restore_pin(&self, session: &str, target: &str, until: Instant) {
        self.pins.pin(session, target, until, Instant::now());
    }

    /// The counter for `key` (and `model`), created for `limits`.
    fn counter(&self, key: &KeyId, model: Option<&Arc<str>>, limits: &Limits, now: Instant) -> Arc<Counter> {
        let daily = usage::daily(limits);
        let id = (key.clone(), model.cloned());
        let secs = self.clock.wall_ms(now).div_euclid(1000);
        let make = || Arc::new(Counter { daily, usage: Mutex::new(Usage::new(now, secs, daily)) });
        let found = self.usage.get_with(id.clone(), make);
        if daily && !found.daily {
            // The limits gained a daily window since the counter was made:
            // what it counted carries over.
            let replaced = make();
            replaced.lock().adopt(&mut found.lock());
            self.usage.insert(id, replaced.clone());
            return replaced;
        }
        found
    }

    fn existing(&self, key: &KeyId, model: Option<&Arc<str>>) -> Option<Arc<Counter>> {
        self.usage.get(&(key.clone(), model.cloned()))
    }

    /// Applies `fix` to each counter `admission` charged (that is still kept).
    fn correct(&self, admission: &Admission, fix: impl Fn(&mut Usage, Charge)) {
        let charged = [(admission.key_charge, None), (admission.model_count(), Some(&admission.model))];
        for (charge, model) in charged {
            if let Some(charge) = charge
                && let Some(counter) = self.existing(&admission.key, model)
            {
                fix(&mut counter.lock(), charge);
            }
        }
    }
}

impl StateStore for MemoryState {
    fn cooling_until(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<Instant> {
        self.cooldowns.until(key, model, now)
    }

    fn cool(&self, key: &KeyId, model: &Arc<str>, until: Instant, why: Cooling) {
        self.cooldowns.cool(key, model, until, why);
    }

    fn cooling(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<(Instant, Cooling)> {
        self.cooldowns.get(key, model, now)
    }

    fn cooldowns(&self, now: Instant) -> Vec<(KeyId, Arc<str>, Instant, Cooling)> {
        self.cooldowns.list(now)
    }

    fn clear_cooldowns(&self, provider: &str, model: Option<&str>, fingerprint: Option<u64>) -> usize {
        self.cooldowns.clear(provider, model, fingerprint)
    }

    fn active_cooldowns(&self, now: Instant) -> usize {
        self.cooldowns.active(now)
    }

    fn is_invalid(&self, key: &KeyId) -> bool {
        self.keys.is_invalid(key)
    }

    fn mark_invalid(&self, key: &KeyId) {
        self.keys.mark_invalid(key);
    }

    fn invalid_keys(&self) -> Vec<KeyId> {
        self.keys.list()
    }

    fn admit(
        &self,
        key: &KeyId,
        model: &Arc<str>,
        budget: &Budget,
        tokens: u64,
        now: Instant,
    ) -> Result<Admission, LimitHit> {
        let (by_model, by_key) = (usage::any(&budget.model), usage::any(&budget.key));
        let key_counter = by_key.then(|| self.counter(key, None, &budget.key, now));
        // The model's counter counts every request, limits or not: when the
        // upstream refuses one, how many it had let through in the minute
        // is its limit (`proxy::quota::refused`), and the operator sees
        // what each key did today.
        let model_counter = self.counter(key, Some(model), &COUNT_DAY, now);
        // One lock order everywhere: the key's counter, then the model's.
        let mut key_usage = key_counter.as_deref().map(Counter::lock);
        let mut model_usage = model_counter.lock();
        if let Some(u) = key_usage.as_mut() {
            u.check(&budget.key, tokens, now, budget.period.as_ref())?;
        }
        if by_model {
            model_usage.check(&budget.model, tokens, now, budget.period.as_ref())?;
        }
        let minute_before = model_usage.in_minute(now);
        let charge = model_usage.record(tokens, now);
        Ok(Admission {
            key: key.clone(),
            model: model.clone(),
            key_charge: key_usage.map(|mut u| u.record(tokens, now)),
            model_charge: by_model.then_some(charge),
            seen: (!by_model).then_some(charge),
            minute_before,
        })
    }

    fn settle(&self, admission: &Admission, actual_tokens: u64) {
        self.correct(admission, |usage, charge| usage.settle(charge, actual_tokens));
    }

    fn refund(&self, admission: &Admission, refund: Refund) {
        self.correct(admission, |usage, charge| usage.refund(charge, refund));
    }

    fn learned(&self, key: &KeyId, model: &Arc<str>) -> Option<Learned> {
        if !self.any_learned.load(Ordering::Relaxed) {
            return None;
        }
        self.learned.get(&(key.clone(), model.clone()))
    }

    fn learn(&self, key: &KeyId, model: &Arc<str>, update: &dyn Fn(Learned) -> Learned) {
        self.any_learned.store(true, Ordering::Relaxed);
        self.learned
            .entry((key.clone(), model.clone()))
            .and_upsert_with(|known| update(known.map(|e| *e.value()).unwrap_or_default()));
    }

    fn used(&self, key: &KeyId, model: Option<&Arc<str>>, period: Option<&Period>, now: Instant) -> Option<Used> {
        Some(self.existing(key, model)?.lock().used(now, period))
    }

    fn usable(&self, key: &KeyId, model: &Arc<str>, budget: &Budget, now: Instant) -> bool {
        if self.is_invalid(key) || self.cooling_until(key, model, now).is_some() {
            return false;
        }
        if usage::any(&budget.key)
            && let Some(c) = self.existing(key, None)
            && c.lock().check(&budget.key, 0, now, budget.period.as_ref()).is_err()
        {
            return false;
        }
        !(usage::any(&budget.model)
            && self
                .existing(key, Some(model))
                .is_some_and(|c| c.lock().check(&budget.model, 0, now, budget.period.as_ref()).is_err()))
    }

    fn pinned(&self, session: &str, now: Instant) -> Option<Arc<str>> {
        self.pins.get(session, now)
    }

    fn pin(&self, session: &str, target: &str, ttl: Duration, now: Instant) -> bool {
        now.checked_add(ttl.min(MAX_PIN_TTL)).is_some_and(|until| self.pins.pin(session, target, until, now))
    }

    fn pins(&self) -> u64 {
        self.pins.len()
    }

    fn circuit(&self, provider: &Arc<str>, now: Instant, policy: &CircuitPolicy) -> Circuit {
        self.circuits.check(provider, now, policy)
    }

    fn circuit_result(
        &self,
        provider: &Arc<str>,
        up: bool,
        now: Instant,
        policy: &CircuitPolicy,
    ) -> Option<CircuitChange> {
        self.circuits.record(provider, up, now, policy)
    }

    fn open_circuits(&self) -> Vec<Arc<str>> {
        self.circuits.open()
    }

    fn clock(&self) -> Clock {
        self.clock
    }

    fn health(&self) -> StateHealth {
        StateHealth { backend: "memory", ..StateHealth::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyId {
        KeyId { provider: Arc::from("p"), fingerprint: 7 }
    }

    #[test]
    fn admitted_requests_settle_and_refund() {
        let s = MemoryState::default();
        let model: Arc<str> = Arc::from("m");
        let budget =
            Budget { model: Limits { tpd: Some(1000), ..Limits::default() }, key: Limits::default(), period: None };
        let now = Instant::now();
        let a = s.admit(&key(), &model, &budget, 900, now).unwrap();
        assert!(s.admit(&key(), &model, &budget, 200, now).is_err());
        s.refund(&a, Refund::Tokens);
        assert!(s.usable(&key(), &model, &budget, now));
        let b = s.admit(&key(), &model, &budget, 200, now).unwrap();
        s.settle(&b, 950);
        assert!(s.admit(&key(), &model, &budget, 100, now).is_err(), "settled usage counts");
    }

    #[test]
    fn no_limit_charges_nothing_but_counts_the_minute() {
        let s = MemoryState::default();
        let (model, now) = (Arc::from("m"), Instant::now());
        let a = s.admit(&key(), &model, &Budget::default(), 10, now).unwrap();
        assert!(!a.charged(), "nothing to share or check against");
        assert_eq!(a.minute_before().map(|m| m.requests), Some(0));
        let b = s.admit(&key(), &model, &Budget::default(), 10, now).unwrap();
        assert_eq!(b.minute_before().map(|m| (m.requests, m.oldest)), Some((1, Some(now))), "the first one counts");
        s.refund(&b, Refund::Everything);
        let c = s.admit(&key(), &model, &Budget::default(), 10, now).unwrap();
        assert_eq!(c.minute_before().map(|m| m.requests), Some(1), "a refused one does not");
        s.usage.run_pending_tasks();
        assert_eq!(s.usage.entry_count(), 1, "the model's counter, no key counter");
        assert_eq!(s.used(&key(), Some(&model), None, now).map(|u| u.requests_day), Some(2));
    }

    #[test]
    fn a_counter_that_gains_a_daily_limit_keeps_its_minute() {
        let s = MemoryState::default();
        let (model, now) = (Arc::from("m"), Instant::now());
        let per_minute =
            Budget { model: Limits::default(), key: Limits { rpm: Some(10), ..Limits::default() }, period: None };
        s.admit(&key(), &model, &per_minute, 10, now).unwrap();
        let daily = Budget { key: Limits { rpm: Some(10), rpd: Some(10), ..Limits::default() }, ..per_minute };
        s.admit(&key(), &model, &daily, 10, now).unwrap();
        let used = s.used(&key(), None, None, now).unwrap();
        assert_eq!((used.requests_minute, used.requests_day), (2, 2), "the first request still counts");
    }

    #[test]
    fn counters_for_made_up_models_stay_within_their_bound() {
        let s = MemoryState::new(StateBounds { usage_bytes: 1 << 20, ..StateBounds::default() });
        let budget =
            Budget { model: Limits { rpd: Some(10), ..Limits::default() }, key: Limits::default(), period: None };
        let now = Instant::now();
        for i in 0..5000 {
            let _ = s.admit(&key(), &Arc::from(format!("junk-{i}")), &budget, 1, now);
        }
        s.usage.run_pending_tasks();
        assert!(s.usage.weighted_size() <= 1 << 20, "{} bytes", s.usage.weighted_size());
    }

    #[test]
    fn pins_are_clamped_to_the_longest_ttl() {
        let s = MemoryState::default();
        let now = Instant::now();
        s.pin("conv", "p/m", Duration::MAX, now);
        assert_eq!(s.pinned("conv", now + MAX_PIN_TTL - Duration::from_secs(1)).as_deref(), Some("p/m"));
        assert_eq!(s.pinned("conv", now + MAX_PIN_TTL + Duration::from_secs(1)), None);
    }
}
