//! Cooldowns: a model on a key rests until a time the upstream named
//! (`Retry-After`, a daily quota's reset) or `dispatch.cooldown`.
//!
//! Entries leave the cache when their cooldown ends (per-entry expiry), and
//! the cache is capped: a client that makes the gateway cool thousands of
//! made-up model names cannot grow it past its bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

use super::{Cooling, KeyId};

type Key = (KeyId, Arc<str>);
type Value = (Instant, Cooling);

/// Each entry lives until its own end.
struct UntilEnd;

impl Expiry<Key, Value> for UntilEnd {
    fn expire_after_create(&self, _key: &Key, value: &Value, created_at: Instant) -> Option<Duration> {
        Some(value.0.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Value,
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.0.saturating_duration_since(updated_at))
    }
}

/// (key, model) → until when it cools.
pub struct Cooldowns {
    map: Cache<Key, Value>,
    /// The latest end of any cooldown ever set, in nanoseconds after
    /// `base`: once it has passed, nothing cools and lookups are skipped
    /// (the common case, paid by every request).
    latest: AtomicU64,
    base: Instant,
}

impl Cooldowns {
    /// At most `capacity` cooling pairs.
    pub fn new(capacity: u64) -> Self {
        Self {
            map: Cache::builder().max_capacity(capacity).expire_after(UntilEnd).build(),
            latest: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// When `model` stops cooling on `key`, if it cools at `now`.
    pub fn until(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<Instant> {
        self.get(key, model, now).map(|(until, _)| until)
    }

    /// Until when `model` cools on `key` and why, if it cools at `now`.
    pub fn get(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<(Instant, Cooling)> {
        if self.nanos(now) >= self.latest.load(Ordering::Acquire) {
            return None;
        }
        let (until, why) = self.map.get(&(key.clone(), model.clone()))?;
        (until > now).then_some((until, why))
    }

    /// Cools `model` on `key` until `until` for `why`; a longer cooldown in
    /// force stays. Whether this one is now in force.
    pub fn cool(&self, key: &KeyId, model: &Arc<str>, until: Instant, why: Cooling) -> bool {
        self.latest.fetch_max(self.nanos(until), Ordering::AcqRel);
        let entry = self.map.entry((key.clone(), model.clone())).and_upsert_with(|current| match current {
            Some(entry) if entry.value().0 > until => *entry.value(),
            _ => (until, why),
        });
        entry.value().0 == until
    }

    /// Ends the cooldowns of `provider` (only `model`'s, only `key`'s when
    /// given); how many ended.
    pub fn clear(&self, provider: &str, model: Option<&str>, fingerprint: Option<u64>) -> usize {
        let ended: Vec<Key> = self
            .map
            .iter()
            .filter(|(key, _)| {
                let (k, m) = &**key;
                &*k.provider == provider
                    && model.is_none_or(|x| x == &**m)
                    && fingerprint.is_none_or(|f| f == k.fingerprint)
            })
            .map(|(key, _)| (*key).clone())
            .collect();
        for key in &ended {
            self.map.invalidate(key);
        }
        ended.len()
    }

    /// Every cooling pair at `now`, with its end and reason.
    pub fn list(&self, now: Instant) -> Vec<(KeyId, Arc<str>, Instant, Cooling)> {
        if self.nanos(now) >= self.latest.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.map
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|(key, (until, why))| (key.0.clone(), key.1.clone(), until, why))
            .collect()
    }

    /// Pairs cooling at `now`.
    pub fn active(&self, now: Instant) -> usize {
        if self.nanos(now) >= self.latest.load(Ordering::Acquire) {
            return 0;
        }
        self.map.iter().filter(|(_, (until, _))| *until > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldowns_end_and_never_shorten() {
        let c = Cooldowns::new(100);
        let key = KeyId { provider: Arc::from("p"), fingerprint: 1 };
        let model: Arc<str> = Arc::from("m");
        let now = Instant::now();
        assert_eq!(c.until(&key, &model, now), None);
        assert!(c.cool(&key, &model, now + Duration::from_secs(60), Cooling::RateLimited));
        assert!(!c.cool(&key, &model, now + Duration::from_secs(10), Cooling::RateLimited));
        assert_eq!(c.until(&key, &model, now), Some(now + Duration::from_secs(60)));
        assert_eq!(c.until(&key, &model, now + Duration::from_secs(61)), None);
        assert_eq!(c.until(&key, &Arc::from("other"), now), None);
        assert_eq!(c.active(now), 1);
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let c = Cooldowns::new(1000);
        let key = KeyId { provider: Arc::from("p"), fingerprint: 1 };
        let until = Instant::now() + Duration::from_secs(600);
        for i in 0..20_000 {
            c.cool(&key, &Arc::from(format!("made-up-{i}")), until, Cooling::RateLimited);
        }
        c.map.run_pending_tasks();
        assert!(c.map.entry_count() <= 1000, "{} entries", c.map.entry_count());
    }
}
