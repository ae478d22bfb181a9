//! Several gateways, one budget: [`SharedState`] shares request and token
//! counters, cooldowns (daily exhaustion included), rejected keys and
//! session pins between instances through Redis (`state.redis`).
//!
//! Reads stay local and synchronous: every [`StateStore`] method answers
//! from the store underneath (memory, or memory backed by the database),
//! exactly as with one instance. What Redis adds:
//!
//! - **Counters are exact across instances.** Once the local admission
//!   passes, the dispatcher asks [`SharedBudget::admit`]: one round trip
//!   (EVALSHA of `shared/admit.lua`) checks every shared counter of the
//!   request's budget — the key's and the model's, per minute and per day
//!   (rolling, or the provider's calendar period) — and charges them all,
//!   or charges nothing and says which limit stands and when it frees.
//!   Then the local admission is given back and the candidate is skipped
//!   like a local limit. Settled token counts and refunds go to Redis
//!   behind the request's back (the write-behind queue of [`link`]).
//! - **Changes are published.** A cooldown, a rejected key, a cleared
//!   cooldown or a pin is applied locally, then queued: stored in Redis
//!   where it must outlive an instance (cooldowns in a sorted set scored by
//!   their end, rejected keys in a set) and published on a channel every
//!   instance subscribes to; each applies the others' changes to its own
//!   store. An instance that (re)connects loads the cooldowns and rejected
//!   keys Redis holds. Pins are published only.
//! - **Stored responses are shared.** A Responses-API turn kept with
//!   `store` is set in Redis with its retention as expiry (behind the
//!   request's back; dropped, not queued, while Redis is away: the local
//!   store still has it). A lookup the local store cannot answer asks
//!   Redis, waiting at most [`FETCH_WAIT`] (`responses.rs` has the layout).
//! - **Redis away is not an outage.** A request never waits on Redis more
//!   than [`ADMIT_WAIT`]: when Redis is known to be away, or does not answer
//!   in time, local state decides, and the charge waits (summed) to be
//!   added to Redis when it returns. `/health` says which, the log says it
//!   once each way.
//!
//! Key layout: one hash per counter, `freeway:u:{provider:fingerprint}`
//! for a key's shared limits and `freeway:u:{provider:fingerprint}:model`
//! for a model on a key; fields `r:<second>`/`t:<second>` count requests
//! and tokens per wall-clock second (the sliding minute, exact to a
//! second) and `R:<bucket>`/`T:<bucket>` per five-minute bucket (the day,
//! like the local counters of `usage.rs`). One key per counter keeps the
//! script to one `HGETALL` per counter and lets a correction land in the
//! second and bucket it corrects; the hash tag puts a request's two
//! counters in one Redis Cluster slot; each counter expires a day and an
//! hour after its last change, and the script drops fields that left every
//! window. Time is each instance's wall clock (keep them in NTP sync).

mod link;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use link::RedisHealth;
use link::{Event, Link, Op};

use super::circuits::{Circuit, CircuitChange, CircuitPolicy};
use super::responses::{self, Lookup, StoredResponse};
use super::usage::{Admission, Charge, Limit, LimitHit, Period, Refund, Used};
use super::{Budget, Clock, Cooling, KeyId, Learned, MAX_PIN_TTL, RequestRecord, StateHealth, StateStore};
use crate::config::Limits;

/// The longest a request waits for Redis to admit it; past it, local state
/// decides (and Redis is charged when its answer comes).
pub const ADMIT_WAIT: Duration = Duration::from_millis(50);

/// The longest a request waits for Redis to give a stored response this
/// instance does not hold; past it the response counts as not held (a 400
/// that says to send the whole conversation). Longer than [`ADMIT_WAIT`]:
/// there is no local answer to fall back on, and the value may be large.
pub const FETCH_WAIT: Duration = Duration::from_millis(250);

/// Tokens a request may charge in Redis at most: Lua counts in doubles,
/// exact to 2^53.
const MAX_TOKENS: u64 = 1 << 50;

/// A budget shared between instances: the dispatcher's async hook after a
/// local admission.
pub trait SharedBudget: Send + Sync {
    /// Checks `admission` (already charged locally) against the shared
    /// counters of `budget`, and charges them. `Err` says which shared
    /// limit stands and when it frees; the local admission has then been
    /// given back, so the caller skips the candidate as for a local
    /// [`LimitHit`]. Answers `Ok` at once when nothing is shared (no limit
    /// applies) or Redis is away, and within [`ADMIT_WAIT`] in any case.
    fn admit<'a>(
        &'a self,
        admission: &'a Admission,
        budget: &'a Budget,
        now: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<(), LimitHit>> + Send + 'a>>;
}

/// A state store shared through Redis, over a local one (memory, or the
/// database): see the module's documentation.
pub struct SharedState {
    inner: Arc<dyn StateStore>,
    link: Arc<Link>,
}

impl SharedState {
    /// Shares `inner` through the Redis at `url` (connecting in the
    /// background: the gateway starts, and serves, without Redis). Must run
    /// inside a Tokio runtime.
    pub fn start(url: &str, inner: Arc<dyn StateStore>) -> Result<Self, String> {
        let link = Link::start(url, Arc::downgrade(&inner), inner.clock())?;
        Ok(Self { inner, link })
    }

    fn publish(&self, event: Event) {
        self.link.queue(Op::Event(event));
    }

    /// The shared counters `admission` charged: Redis key and charge.
    fn charged(admission: &Admission) -> impl Iterator<Item = (String, Charge)> + '_ {
        let key = admission.key_charge.map(|c| (counter_key(&admission.key, None), c));
        let model = admission.model_charge.map(|c| (counter_key(&admission.key, Some(&admission.model)), c));
        key.into_iter().chain(model)
    }

    /// Queues the change `delta(charge)` (requests, tokens) of each counter
    /// `admission` charged.
    fn correct(&self, admission: &Admission, delta: impl Fn(Charge) -> (i64, i64)) {
        for (key, charge) in Self::charged(admission) {
            let (requests, tokens) = delta(charge);
            if requests != 0 || tokens != 0 {
                let sec = self.link.clock.wall_ms(charge.at).div_euclid(1000);
                self.link.queue(Op::Usage { key, sec, requests, tokens });
            }
        }
    }
}

/// The Redis key of a counter: `key`'s shared limits, or `model` on `key`.
fn counter_key(key: &KeyId, model: Option<&str>) -> String {
    match model {
        None => format!("freeway:u:{{{}:{:016x}}}", key.provider, key.fingerprint),
        Some(model) => format!("freeway:u:{{{}:{:016x}}}:{model}", key.provider, key.fingerprint),
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A limit as the script reads it (-1: none).
fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, signed)
}

/// The script's answer: `None` when charged, else the limit and when it
/// frees (wall-clock seconds).
fn verdict(reply: &[i64]) -> Option<(Limit, i64)> {
    let (&[index, code, frees], _) = reply.split_first_chunk::<3>()?;
    let limit = match code {
        1 => Limit::Rpm,
        2 => Limit::Rpd,
        3 => Limit::Tpm,
        4 => Limit::Tpd,
        _ => return None,
    };
    (index > 0).then_some((limit, frees))
}

impl SharedBudget for SharedState {
    fn admit<'a>(
        &'a self,
        admission: &'a Admission,
        budget: &'a Budget,
        now: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<(), LimitHit>> + Send + 'a>> {
        Box::pin(async move {
            if !admission.charged() {
                return Ok(());
            }
            let charge = |charge: Charge, sign: i64| (sign, sign * signed(charge.tokens.min(MAX_TOKENS)));
            if !self.link.is_up() {
                // Local state decided; Redis counts it when it returns.
                self.correct(admission, |c| charge(c, 1));
                return Ok(());
            }
            let clock = self.link.clock;
            let tokens = admission.key_charge.or(admission.model_charge).map_or(0, |c| c.tokens.min(MAX_TOKENS));
            let (start, end) = match budget.period {
                Some(Period { start_secs, end }) => (start_secs, clock.wall_ms(end).saturating_add(999) / 1000),
                None => (-1, -1),
            };
            let mut keys = Vec::with_capacity(2);
            let mut args = vec![clock.wall_ms(now).div_euclid(1000), signed(tokens), start, end];
            let limited = [
                (admission.key_charge, &budget.key, None),
                (admission.model_charge, &budget.model, Some(&*admission.model)),
            ];
            for (_, limits, model) in limited.iter().filter(|(c, _, _)| c.is_some()) {
                let Limits { rpm, rpd, tpm, tpd } = **limits;
                keys.push(counter_key(&admission.key, *model));
                args.extend([rpm, rpd, tpm, tpd].map(limit_arg));
            }
            // The script runs in its own task: when it answers after the
            // request stopped waiting, or fails, the charge still reaches
            // Redis (now, or when it returns).
            let (tx, rx) = oneshot::channel::<Vec<i64>>();
            let link = self.link.clone();
            let later: Vec<Op> = Self::charged(admission)
                .map(|(key, c)| {
                    let (requests, tokens) = charge(c, 1);
                    Op::Usage { key, sec: clock.wall_ms(c.at).div_euclid(1000), requests, tokens }
                })
                .collect();
            tokio::spawn(async move {
                let mut invocation = link.admit.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                for arg in &args {
                    invocation.arg(*arg);
                }
                let mut conn = link.manager.clone();
                match invocation.invoke_async::<Vec<i64>>(&mut conn).await {
                    Ok(reply) => {
                        if let Err(reply) = tx.send(reply)
                            && verdict(&reply).is_some()
                        {
                            // Refused after the request went on its own: it
                            // was served, so it counts.
                            later.into_iter().for_each(|op| link.queue(op));
                        }
                    }
                    Err(e) => {
                        link.failed(&e);
                        later.into_iter().for_each(|op| link.queue(op));
                    }
                }
            });
            let Ok(Ok(reply)) = tokio::time::timeout(ADMIT_WAIT, rx).await else { return Ok(()) };
            let Some((limit, frees)) = verdict(&reply) else { return Ok(()) };
            self.inner.refund(admission, Refund::Everything);
            let until = clock.instant(frees.saturating_mul(1000)).unwrap_or(now).max(now);
            Err(LimitHit { limit, until })
        })
    }
}

impl StateStore for SharedState {
    fn cooling_until(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<Instant> {
        self.inner.cooling_until(key, model, now)
    }

    fn cool(&self, key: &KeyId, model: &Arc<str>, until: Instant, why: Cooling) {
        self.inner.cool(key, model, until, why);
        self.publish(Event::Cool {
            provider: key.provider.to_string(),
            fingerprint: key.fingerprint,
            model: model.to_string(),
            until_ms: self.link.clock.wall_ms(until),
            reason: why.label().to_owned(),
        });
    }

    fn cooling(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<(Instant, Cooling)> {
        self.inner.cooling(key, model, now)
    }

    fn cooldowns(&self, now: Instant) -> Vec<(KeyId, Arc<str>, Instant, Cooling)> {
        self.inner.cooldowns(now)
    }

    fn clear_cooldowns(&self, provider: &str, model: Option<&str>, fingerprint: Option<u64>) -> usize {
        let n = self.inner.clear_cooldowns(provider, model, fingerprint);
        self.publish(Event::Uncool { provider: provider.to_owned(), model: model.map(str::to_owned), fingerprint });
        n
    }

    fn active_cooldowns(&self, now: Instant) -> usize {
        self.inner.active_cooldowns(now)
    }

    fn is_invalid(&self, key: &KeyId) -> bool {
        self.inner.is_invalid(key)
    }

    fn mark_invalid(&self, key: &KeyId) {
        self.inner.mark_invalid(key);
        self.publish(Event::Invalid { provider: key.provider.to_string(), fingerprint: key.fingerprint });
    }

    fn invalid_keys(&self) -> Vec<KeyId> {
        self.inner.invalid_keys()
    }

    fn admit(
        &self,
        key: &KeyId,
        model: &Arc<str>,
        budget: &Budget,
        tokens: u64,
        now: Instant,
    ) -> Result<Admission, LimitHit> {
        // Local only: the dispatcher asks Redis next (`SharedBudget::admit`).
        self.inner.admit(key, model, budget, tokens, now)
    }

    fn settle(&self, admission: &Admission, actual_tokens: u64) {
        self.inner.settle(admission, actual_tokens);
        let actual = signed(actual_tokens.min(MAX_TOKENS));
        self.correct(admission, |c| (0, actual.saturating_sub(signed(c.tokens.min(MAX_TOKENS)))));
    }

    fn refund(&self, admission: &Admission, refund: Refund) {
        self.inner.refund(admission, refund);
        self.correct(admission, |c| {
            let requests = if refund == Refund::Everything { -1 } else { 0 };
            (requests, -signed(c.tokens.min(MAX_TOKENS)))
        });
    }

    fn learned(&self, key: &KeyId, model: &Arc<str>) -> Option<Learned> {
        self.inner.learned(key, model)
    }

    fn learn(&self, key: &KeyId, model: &Arc<str>, update: &dyn Fn(Learned) -> Learned) {
        self.inner.learn(key, model, update);
    }

    fn used(&self, key: &KeyId, model: Option<&Arc<str>>, period: Option<&Period>, now: Instant) -> Option<Used> {
        self.inner.used(key, model, period, now)
    }

    fn usable(&self, key: &KeyId, model: &Arc<str>, budget: &Budget, now: Instant) -> bool {
        self.inner.usable(key, model, budget, now)
    }

    fn pinned(&self, session: &str, now: Instant) -> Option<Arc<str>> {
        self.inner.pinned(session, now)
    }

    fn pin(&self, session: &str, target: &str, ttl: Duration, now: Instant) -> bool {
        if !self.inner.pin(session, target, ttl, now) {
            return false;
        }
        let ttl_ms = signed(u64::try_from(ttl.min(MAX_PIN_TTL).as_millis()).unwrap_or(u64::MAX));
        self.publish(Event::Pin {
            session: session.to_owned(),
            target: target.to_owned(),
            until_ms: self.link.clock.wall_ms(now).saturating_add(ttl_ms),
        });
        true
    }

    fn pins(&self) -> u64 {
        self.inner.pins()
    }

    fn circuit(&self, provider: &Arc<str>, now: Instant, policy: &CircuitPolicy) -> Circuit {
        self.inner.circuit(provider, now, policy)
    }

    fn circuit_result(
        &self,
        provider: &Arc<str>,
        up: bool,
        now: Instant,
        policy: &CircuitPolicy,
    ) -> Option<CircuitChange> {
        self.inner.circuit_result(provider, up, now, policy)
    }

    fn open_circuits(&self) -> Vec<Arc<str>> {
        self.inner.open_circuits()
    }

    fn clock(&self) -> Clock {
        self.inner.clock()
    }

    fn logs_requests(&self) -> bool {
        self.inner.logs_requests()
    }

    fn log_request(&self, record: RequestRecord) {
        self.inner.log_request(record);
    }

    fn log_tokens(&self, id: i64, tokens_in: u64, tokens_out: u64) {
        self.inner.log_tokens(id, tokens_in, tokens_out);
    }

    fn save_models(&self, provider: &str, json: String) {
        self.inner.save_models(provider, json);
    }

    fn saved_models(&self, provider: &str) -> Option<String> {
        self.inner.saved_models(provider)
    }

    fn keep_response(&self, response: &StoredResponse, earlier: &[Arc<str>]) {
        self.inner.keep_response(response, earlier);
        // While Redis is away the turn stays local (not queued for later).
        let ttl_ms = response.until_ms.saturating_sub(self.link.clock.now_ms());
        if ttl_ms <= 0 || !self.link.is_up() {
            return;
        }
        self.link.queue(Op::Response {
            response: Box::new(response.clone()),
            ttl_secs: ttl_ms.saturating_add(999) / 1000,
            earlier: earlier.to_vec(),
        });
    }

    fn stored_response<'a>(&'a self, id: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            if let Some(found) = self.inner.stored_response(id).await? {
                return Ok(Some(found));
            }
            if !self.link.is_up() {
                return Ok(None);
            }
            let mut conn = self.link.manager.clone();
            let mut get = redis::cmd("GET");
            let get = get.arg(responses::redis_key(id)).query_async::<Option<Vec<u8>>>(&mut conn);
            match tokio::time::timeout(FETCH_WAIT, get).await {
                Ok(Ok(Some(value))) => responses::decode(id, &value).map(Some),
                Ok(Ok(None)) | Err(_) => Ok(None),
                Ok(Err(e)) => {
                    self.link.failed(&e);
                    Ok(None)
                }
            }
        })
    }

    fn health(&self) -> StateHealth {
        StateHealth { redis: Some(self.link.health()), ..self.inner.health() }
    }

    fn flush(&self, within: Duration) -> bool {
        self.inner.flush(within)
    }

    fn shared(&self) -> Option<&dyn SharedBudget> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_keys_share_a_slot_per_key_and_tell_counters_apart() {
        let key = KeyId { provider: Arc::from("groq"), fingerprint: 0xab };
        assert_eq!(counter_key(&key, None), "freeway:u:{groq:00000000000000ab}");
        assert_eq!(counter_key(&key, Some("llama")), "freeway:u:{groq:00000000000000ab}:llama");
    }

    #[test]
    fn verdicts_read_the_scripts_answer() {
        assert_eq!(verdict(&[0]), None);
        assert_eq!(verdict(&[2, 2, 1_700_000_000]), Some((Limit::Rpd, 1_700_000_000)));
        assert_eq!(verdict(&[1, 9, 5]), None, "an unknown limit is no refusal");
    }
}
