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

    /// Pins `session` to `target` until `until`.
    pub fn pin(&self, session: &str, target: &str, until: Instant) {
        self.map.insert(Arc::from(session), (Arc::from(target), until));
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
        s.pin("conv", "groq/m", t0 + Duration::from_secs(60));
        assert_eq!(s.get("conv", t0 + Duration::from_secs(59)).as_deref(), Some("groq/m"));
        assert_eq!(s.get("conv", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn pins_stay_within_their_byte_bound() {
        let s = Pins::new(1 << 20);
        let until = Instant::now() + Duration::from_secs(600);
        let big = "x".repeat(200);
        for i in 0..50_000 {
            s.pin(&format!("{big}{i}"), "groq/m", until);
        }
        s.settle();
        assert!(s.weight() <= 1 << 20, "{} bytes", s.weight());
    }
}
