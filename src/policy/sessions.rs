//! Sticky sessions: which model first answered a conversation, for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Conversation → the `provider/model` that answered it, with an expiry.
#[derive(Debug, Default)]
pub struct Sessions {
    pins: Mutex<HashMap<String, (String, Instant)>>,
}

/// Past this many pins, expired ones are swept on the next insert.
const SWEEP_ABOVE: usize = 10_000;

impl Sessions {
    /// The model pinned to `key`, if the pin has not expired.
    pub fn get(&self, key: &str, now: Instant) -> Option<String> {
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.get(key).filter(|(_, until)| *until > now).map(|(model, _)| model.clone())
    }

    /// Pins `key` to `model` for `ttl` from `now`.
    pub fn pin(&self, key: &str, model: &str, ttl: Duration, now: Instant) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if pins.len() > SWEEP_ABOVE {
            pins.retain(|_, (_, until)| *until > now);
        }
        pins.insert(key.to_owned(), (model.to_owned(), now + ttl));
    }

    /// Pins in force.
    pub fn len(&self, now: Instant) -> usize {
        self.pins.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|(_, until)| *until > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_expire() {
        let s = Sessions::default();
        let t0 = Instant::now();
        s.pin("conv", "groq/m", Duration::from_secs(60), t0);
        assert_eq!(s.get("conv", t0 + Duration::from_secs(59)).as_deref(), Some("groq/m"));
        assert_eq!(s.get("conv", t0 + Duration::from_secs(61)), None);
        assert_eq!(s.len(t0), 1);
    }
}
