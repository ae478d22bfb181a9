//! Sticky sessions: which `provider/model` answered a conversation, for a
//! while. The cache is bounded by the bytes its keys and values hold, and
//! each pin leaves when its own time-to-live ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

/// A pin: the target and when it ends.
type Pin = (Arc<str>, Instant);

struct UntilEnd;

impl Expiry<Arc<str>, Pin> for UntilEnd {
    fn expire_after_create(&self, _key: &Arc<str>, pin: &Pin, created_at: Instant) -> Option<Duration> {
        Some(pin.1.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        pin: &Pin,
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(pin.1.saturating_duration_since(updated_at))
    }
}

/// How far a same-target pin's end may lag before it is written again:
/// a hundredth of its time-to-live, at least a second.
pub fn refresh(ttl: Duration) -> Duration {
    (ttl / 100).max(Duration::from_secs(1))
}

/// Conversation → the model that answered it.
pub struct Pins {
    map: Cache<Arc<str>, Pin>,
}

impl Pins {
    /// Pins holding at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        let map = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, pin: &Pin| (key.len() + pin.0.len() + 96).try_into().unwrap_or(u32::MAX))
            .expire_after(UntilEnd)
            .build();
        Self { map }
    }

    /// The target `session` is pinned to, if the pin holds at `now`.
    pub fn get(&self, session: &str, now: Instant) -> Option<Arc<str>> {
        self.map.get(session).filter(|(_, until)| *until > now).map(|(target, _)| target)
    }

    /// Pins `session` to `target` until `until`; whether anything changed.
    /// A conversation re-pinned to the same target on each turn is written
    /// again only once its end would move by more than a hundredth of the
    /// time-to-live (at least a second): a chatty session costs one write
    /// per [`refresh`] rather than one per request, here and in the stores
    /// behind this one (the state file, Redis), and its pin ends at most
    /// that much early.
    pub fn pin(&self, session: &str, target: &str, until: Instant, now: Instant) -> bool {
        if let Some((current, end)) = self.map.get(session)
            && *current == *target
            && end > now
            && until.saturating_duration_since(end) < refresh(until.saturating_duration_since(now))
        {
            return false;
        }
        self.map.insert(Arc::from(session), (Arc::from(target), until));
        true
    }

    /// Pins in force (approximate).
    pub fn len(&self) -> u64 {
        self.map.entry_count()
    }

    /// Bytes the pins hold (approximate, as weighed).
    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.map.weighted_size()
    }

    /// Applies pending evictions now.
    #[cfg(test)]
    fn settle(&self) {
        self.map.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_expire() {
        let s = Pins::new(1 << 20);
        let t0 = Instant::now();
        assert!(s.pin("conv", "groq/m", t0 + Duration::from_secs(60), t0));
        assert_eq!(s.get("conv", t0 + Duration::from_secs(59)).as_deref(), Some("groq/m"));
        assert_eq!(s.get("conv", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn a_same_target_pin_is_written_again_only_once_its_end_moved_enough() {
        let s = Pins::new(1 << 20);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1800);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert!(s.pin("conv", "groq/m", t0 + ttl, t0), "a new pin");
        assert!(!s.pin("conv", "groq/m", at(10) + ttl, at(10)), "10 s later: within 18 s of its end");
        assert!(s.pin("conv", "cerebras/m", at(11) + ttl, at(11)), "another target is written at once");
        assert!(!s.pin("conv", "cerebras/m", at(20) + ttl, at(20)));
        assert!(s.pin("conv", "cerebras/m", at(30) + ttl, at(30)), "19 s after its last write");
        assert_eq!(s.get("conv", at(30) + ttl - Duration::from_secs(1)).as_deref(), Some("cerebras/m"));
        // A short pin refreshes at least a second apart.
        assert!(s.pin("short", "groq/m", t0 + Duration::from_secs(5), t0));
        assert!(!s.pin("short", "groq/m", at(1) + Duration::from_millis(4_500), at(1)));
        assert!(s.pin("short", "groq/m", at(2) + Duration::from_secs(5), at(2)));
    }

    #[test]
    fn pins_stay_within_their_byte_bound() {
        let s = Pins::new(1 << 20);
        let until = Instant::now() + Duration::from_secs(600);
        let big = "x".repeat(200);
        for i in 0..50_000 {
            s.pin(&format!("{big}{i}"), "groq/m", until, Instant::now());
        }
        s.settle();
        assert!(s.weight() <= 1 << 20, "{} bytes", s.weight());
    }
}
