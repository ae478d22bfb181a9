//! What the gateway learns while it runs, behind one narrow interface:
//! cooldowns per (key, model), request and token counters against the
//! free-tier limits, keys the upstream rejected, and sticky-session pins.
//!
//! The dispatcher and the policies never see how it is stored: they call
//! the operations of [`StateStore`], each named for what the request path
//! needs (is this model cooling on this key? admit one request; settle its
//! tokens; refund a failed attempt...). [`MemoryState`] keeps everything in
//! bounded, expiring caches (moka), as DESIGN.md's Bounds require: whatever
//! names clients send, memory stays capped. A persistent or shared store
//! (an embedded database, Redis) implements the same trait, so nothing
//! above this module changes when one is plugged in; its writes must not
//! wait on the request path, which is why every operation here is
//! synchronous and cheap.
//!
//! | file | what it keeps |
//! |---|---|
//! | `cooldowns.rs` | (key, model) → until when it cools |
//! | `usage.rs` | sliding-minute and rolling-day counters, limit checks |
//! | `keys.rs` | keys the upstream rejected (401/403) |
//! | `pins.rs` | conversation → the model that answered it |
//! | `calendar.rs` | when each provider's daily or monthly quota resets |
//! | `circuits.rs` | per provider: closed, open until when, or probing |
//! | `memory.rs` | [`MemoryState`]: the four above, bounded |

mod calendar;
mod circuits;
mod cooldowns;
mod keys;
mod memory;
mod pins;
pub mod usage;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use calendar::{QuotaReset, ResetPeriod};
pub use circuits::{Circuit, CircuitChange, CircuitPolicy};
pub use memory::{MemoryState, StateBounds};
pub use usage::{Admission, Limit, LimitHit, Refund};

use crate::config::Limits;

/// One API key of one provider, as state knows it: the provider's name and
/// a fingerprint of the key (never the key). Stable across restarts and
/// across reorderings of the key list, so a persistent store can use it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyId {
    /// The provider's name.
    pub provider: Arc<str>,
    /// The first 64 bits of the key's SHA-256 (0 for keyless providers).
    pub fingerprint: u64,
}

impl KeyId {
    /// The id of `key` at `provider`.
    pub fn new(provider: &Arc<str>, key: Option<&str>) -> Self {
        Self { provider: provider.clone(), fingerprint: key.map_or(0, fingerprint) }
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:016x}", self.provider, self.fingerprint)
    }
}

/// The first 64 bits of a key's SHA-256: enough to tell keys apart and to
/// show an operator which key is meant, useless for recovering the key.
pub fn fingerprint(key: &str) -> u64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The limits one request to a model on a key is checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    /// The model's own limits on this key.
    pub model: Limits,
    /// Limits the key shares across all its models.
    pub key: Limits,
}

/// Longest a session pin lasts, whatever a policy asks for.
pub const MAX_PIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The operations the request path needs from the gateway's state.
///
/// Implementations must be cheap and must not block on I/O: the dispatcher
/// calls them for every candidate of every request.
pub trait StateStore: Send + Sync {
    /// When `model` stops cooling down on `key`, if it is cooling at `now`.
    fn cooling_until(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<Instant>;

    /// Cools `model` on `key` until `until` (never shortens a cooldown).
    fn cool(&self, key: &KeyId, model: &Arc<str>, until: Instant);

    /// Model/key pairs cooling down at `now`, across every provider.
    fn active_cooldowns(&self, now: Instant) -> usize;

    /// Whether the upstream rejected `key` (401/403).
    fn is_invalid(&self, key: &KeyId) -> bool;

    /// The upstream rejected `key`: it is not used again until the config
    /// changes.
    fn mark_invalid(&self, key: &KeyId);

    /// Admits one request of about `tokens` to `model` on `key` under
    /// `budget`, and charges it; or says which limit it would pass and when
    /// there is room again.
    fn admit(
        &self,
        key: &KeyId,
        model: &Arc<str>,
        budget: &Budget,
        tokens: u64,
        now: Instant,
    ) -> Result<Admission, LimitHit>;

    /// Replaces an admitted request's estimated tokens with what its answer
    /// reported.
    fn settle(&self, admission: &Admission, actual_tokens: u64);

    /// Gives back what a failed attempt was charged.
    fn refund(&self, admission: &Admission, refund: Refund);

    /// Whether a request to `model` could go on `key` now: not invalid, not
    /// cooling, not at a limit (nothing is charged).
    fn usable(&self, key: &KeyId, model: &Arc<str>, budget: &Budget, now: Instant) -> bool;

    /// The `provider/model` a conversation is pinned to, if the pin holds.
    fn pinned(&self, session: &str, now: Instant) -> Option<Arc<str>>;

    /// Pins a conversation to `target` for `ttl` (at most [`MAX_PIN_TTL`]).
    fn pin(&self, session: &str, target: &str, ttl: Duration, now: Instant);

    /// Pins in force (approximately: expired pins leave in the background).
    fn pins(&self) -> u64;

    /// Whether a request may go to `provider` now (its circuit breaker).
    fn circuit(&self, provider: &Arc<str>, now: Instant, policy: &CircuitPolicy) -> Circuit;

    /// Records an attempt's result for `provider`'s circuit: `up` when the
    /// provider answered, `false` for a 5xx, a timeout or a connect error.
    fn circuit_result(
        &self,
        provider: &Arc<str>,
        up: bool,
        now: Instant,
        policy: &CircuitPolicy,
    ) -> Option<CircuitChange>;

    /// Providers whose circuit is not closed.
    fn open_circuits(&self) -> Vec<Arc<str>>;
}

/// `now + d`, or `None` when that is past what an `Instant` can hold.
pub fn later(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_keys_apart_and_hide_them() {
        let a = fingerprint("sk-aaaaaaaaaaaaaaaa");
        let b = fingerprint("sk-aaaaaaaaaaaaaaab");
        assert_ne!(a, b);
        let provider: Arc<str> = Arc::from("groq");
        let id = KeyId::new(&provider, Some("sk-aaaaaaaaaaaaaaaa"));
        assert_eq!(id.fingerprint, a);
        assert!(!format!("{id:?}").contains("sk-"));
        assert_eq!(KeyId::new(&provider, None).fingerprint, 0);
    }
}
