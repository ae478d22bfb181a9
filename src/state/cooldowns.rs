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

use super::KeyId;

type Key = (KeyId, Arc<str>);

/// Each entry lives until its own end.
struct UntilEnd;

impl Expiry<Key, Instant> for UntilEnd {
    fn expire_after_create(&self, _key: &Key, until: &Instant, created_at: Instant) -> Option<Duration> {
        Some(until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        until: &Instant,
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(until.saturating_duration_since(updated_at))
    }
}

/// (key, model) → until when it cools.
pub struct Cooldowns {
    map: Cache<Key, Instant>,
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
        if self.nanos(now) >= self.latest.load(Ordering::Acquire) {
            return None;
        }
        let until = self.map.get(&(key.clone(), model.clone()))?;
        (until > now).then_some(until)
    }

    /// Cools `model` on `key` until `until`; a longer cooldown in force stays.
    pub fn cool(&self, key: &KeyId, model: &Arc<str>, until: Instant) {
        self.latest.fetch_max(self.nanos(until), Ordering::AcqRel);
        self.map.entry((key.clone(), model.clone())).and_upsert_with(|current| match current {
            Some(entry) if *entry.value() > until => *entry.value(),
            _ => until,
        });
    }

    /// Pairs cooling at `now`.
    pub fn active(&self, now: Instant) -> usize {
        if self.nanos(now) >= self.latest.load(Ordering::Acquire) {
            return 0;
        }
        self.map.iter().filter(|(_, until)| *until > now).count()
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
        c.cool(&key, &model, now + Duration::from_secs(60));
        c.cool(&key, &model, now + Duration::from_secs(10));
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
            c.cool(&key, &Arc::from(format!("made-up-{i}")), until);
        }
        c.map.run_pending_tasks();
        assert!(c.map.entry_count() <= 1000, "{} entries", c.map.entry_count());
    }
}
