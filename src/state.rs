//! What the gateway learns while it runs, behind one narrow interface:
//! cooldowns per (key, model), request and token counters against the
//! free-tier limits, keys the upstream rejected, sticky-session pins, and
//! Responses-API turns stored for a later `previous_response_id`.
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
//! | `learned.rs` | what an upstream's headers and 429s said of a key's limits |
//! | `pins.rs` | conversation → the model that answered it |
//! | `calendar.rs` | when each provider's daily or monthly quota resets |
//! | `circuits.rs` | per provider: closed, open until when, or probing |
//! | `memory.rs` | [`MemoryState`]: the five above, bounded |
//! | `clock.rs` | the monotonic clock tied to wall-clock time |
//! | `db.rs` | the SQLite file: schema, migrations, a corrupt file moved aside |
//! | `journal.rs` | write-behind: changes queued, written once per 500 ms |
//! | `log.rs` | the request log's records |
//! | `responses.rs` | stored Responses-API turns: their table, their Redis values |
//! | `persistent.rs` | [`PersistentState`]: memory, loaded from and written to the file |
//! | `shared.rs` | [`SharedState`]: any of the above, shared with other instances through Redis |
//! | `vault.rs` | provider keys added through the admin API, sealed with AES-256-GCM |

mod calendar;
mod circuits;
mod clock;
mod cooldowns;
pub mod db;
mod journal;
mod keys;
mod learned;
pub mod log;
mod memory;
mod persistent;
mod pins;
pub mod responses;
mod shared;
pub mod usage;
pub mod vault;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use calendar::{QuotaReset, ResetPeriod, Schedule};
pub use circuits::{Circuit, CircuitChange, CircuitPolicy};
pub use clock::Clock;
pub use learned::{Inferred, Learned};
pub use log::{AttemptRecord, RequestRecord};
pub use memory::{MemoryState, StateBounds};
pub use persistent::PersistentState;
pub use responses::StoredResponse;
pub use shared::{ADMIT_WAIT, RedisHealth, SharedBudget, SharedState};
pub use usage::{Admission, Limit, LimitHit, MinuteBefore, Period, Refund, Used};

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
    /// The provider's current quota period, when its daily quota resets
    /// on a calendar (else daily limits roll over 24 hours).
    pub period: Option<Period>,
}

/// Why a model cools down on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooling {
    /// A 429 (for its `Retry-After`, or `dispatch.cooldown`).
    RateLimited,
    /// A 429 about a daily (or monthly) quota: until the provider's reset.
    DailyQuota,
    /// The key's credit or quota is spent (402).
    QuotaExhausted,
    /// The upstream's rate-limit headers said nothing is left.
    NoneLeft,
}

impl Cooling {
    /// How it is written in the database, the status API and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::DailyQuota => "daily_quota",
            Self::QuotaExhausted => "quota_exhausted",
            Self::NoneLeft => "none_left",
        }
    }

    /// The reason written as `label`.
    pub fn from_label(label: &str) -> Option<Self> {
        [Self::RateLimited, Self::DailyQuota, Self::QuotaExhausted, Self::NoneLeft]
            .into_iter()
            .find(|c| c.label() == label)
    }
}

/// How the state store is doing, for `/health`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StateHealth {
    /// `memory` or `sqlite`.
    pub backend: &'static str,
    /// The database file, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where a corrupt database was moved at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_aside: Option<String>,
    /// The last write to the database failed (a full disk...).
    pub failing: bool,
    /// Changes dropped because the database could not keep up.
    pub dropped_writes: u64,
    /// What the link to Redis is doing, when state is shared (`state.redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisHealth>,
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

    /// Cools `model` on `key` until `until`, for `why` (never shortens a
    /// cooldown).
    fn cool(&self, key: &KeyId, model: &Arc<str>, until: Instant, why: Cooling);

    /// Until when `model` cools on `key` at `now`, and why.
    fn cooling(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<(Instant, Cooling)>;

    /// Every model/key pair cooling at `now`: until when, and why.
    fn cooldowns(&self, now: Instant) -> Vec<(KeyId, Arc<str>, Instant, Cooling)>;

    /// Ends the cooldowns (and daily exhaustion) of `provider`, or of one
    /// of its models or keys; how many ended.
    fn clear_cooldowns(&self, provider: &str, model: Option<&str>, fingerprint: Option<u64>) -> usize;

    /// Model/key pairs cooling down at `now`, across every provider.
    fn active_cooldowns(&self, now: Instant) -> usize;

    /// Whether the upstream rejected `key` (401/403).
    fn is_invalid(&self, key: &KeyId) -> bool;

    /// The upstream rejected `key`: it is not used again until the config
    /// changes.
    fn mark_invalid(&self, key: &KeyId);

    /// Every key the upstream rejected.
    fn invalid_keys(&self) -> Vec<KeyId>;

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

    /// What the upstream taught about `model` on `key`: the limits its
    /// headers stated, a per-minute limit read from its 429s, refusals in
    /// a row that named no time.
    fn learned(&self, key: &KeyId, model: &Arc<str>) -> Option<Learned>;

    /// Replaces what was learned about `model` on `key` with
    /// `update(what was known)`.
    fn learn(&self, key: &KeyId, model: &Arc<str>, update: &dyn Fn(Learned) -> Learned);

    /// What `key` has used at `now`: for `model`, or (`None`) against the
    /// key's shared limits; `None` when nothing was counted.
    fn used(&self, key: &KeyId, model: Option<&Arc<str>>, period: Option<&Period>, now: Instant) -> Option<Used>;

    /// Whether a request to `model` could go on `key` now: not invalid, not
    /// cooling, not at a limit (nothing is charged).
    fn usable(&self, key: &KeyId, model: &Arc<str>, budget: &Budget, now: Instant) -> bool;

    /// The `provider/model` a conversation is pinned to, if the pin holds.
    fn pinned(&self, session: &str, now: Instant) -> Option<Arc<str>>;

    /// Pins a conversation to `target` for `ttl` (at most [`MAX_PIN_TTL`]);
    /// whether anything changed (a same-target pin refreshed moments ago
    /// is left as it is: see [`pins::refresh`]).
    fn pin(&self, session: &str, target: &str, ttl: Duration, now: Instant) -> bool;

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

    /// The clock that ties this store's instants to wall-clock time.
    fn clock(&self) -> Clock;

    /// Whether served requests are logged (there is a database to log to).
    fn logs_requests(&self) -> bool {
        false
    }

    /// Logs a served request (nothing, without a database).
    fn log_request(&self, _record: RequestRecord) {}

    /// The tokens a logged request used, once its answer ended.
    fn log_tokens(&self, _id: i64, _tokens_in: u64, _tokens_out: u64) {}

    /// Keeps `provider`'s model list (JSON) for the next start.
    fn save_models(&self, _provider: &str, _json: String) {}

    /// The model list kept for `provider` by an earlier run.
    fn saved_models(&self, _provider: &str) -> Option<String> {
        None
    }

    /// Keeps a Responses-API turn until its `until_ms`, for a later
    /// `previous_response_id` (never waits: it is written behind the
    /// request's back). `earlier`: the ids of the turns before it, newest
    /// first, for a store that expires turns one by one (Redis) and must
    /// keep them as long. Nothing, without a database or Redis: the API
    /// layer keeps recent turns in memory itself.
    fn keep_response(&self, _response: &StoredResponse, _earlier: &[Arc<str>]) {}

    /// The turn stored as response `id`, from the database (or Redis), as
    /// long as it is held, whatever its `until_ms` (the caller judges
    /// that); `Err` says why a row that was found cannot be read. Only
    /// asked when memory does not hold the turn (after a restart, for a
    /// response another instance made): it may read the disk or Redis, in
    /// bounded time.
    fn stored_response<'a>(&'a self, _id: &'a str) -> responses::Lookup<'a> {
        responses::nothing()
    }

    /// How the store is doing.
    fn health(&self) -> StateHealth;

    /// The budget this store shares with other instances, when it does:
    /// the dispatcher asks it after each local admission.
    fn shared(&self) -> Option<&dyn SharedBudget> {
        None
    }

    /// Writes whatever is waiting to be written, waiting at most `within`
    /// (shutdown, tests); whether it all was.
    fn flush(&self, _within: Duration) -> bool {
        true
    }
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
