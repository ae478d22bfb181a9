//! The connection to Redis: the admission script, the write-behind queue
//! (counter corrections and published changes), the subscription that
//! applies other instances' changes, and whether Redis is there at all.
//!
//! Two background tasks, both ending when the gateway's state is dropped:
//! - the writer sends queued operations as one pipeline per batch; when
//!   Redis does not answer it keeps them (counter deltas summed per counter
//!   and second) and, every half second, pings; when Redis answers again it
//!   replays them (the reconciliation) and says Redis is back;
//! - the subscriber holds a pub/sub connection (reconnecting with backoff),
//!   loads the cooldowns and rejected keys Redis holds whenever it
//!   (re)connects, then applies each change another instance publishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Client, RedisError, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::super::responses::{self, StoredResponse};
use super::super::{Clock, Cooling, KeyId, StateStore};

/// The channel every instance publishes its changes on.
const CHANNEL: &str = "freeway:events";
/// Cooldowns in force: a sorted set scored by their wall-clock end (ms).
pub(super) const COOLDOWNS: &str = "freeway:cooldowns";
/// Keys an upstream rejected: a set of `provider<TAB>fingerprint`.
pub(super) const INVALID: &str = "freeway:invalid";
/// How long a counter lives after its last change: a day and an hour.
pub(super) const COUNTER_TTL_SECS: i64 = 90_000;
/// Operations a batch sends at most (one pipeline).
const BATCH: usize = 512;
/// Queued operations at most; past it they are dropped (and counted).
const QUEUE: usize = 65_536;
/// Operations kept while Redis is away, at most (counter deltas are summed
/// per counter and second, so this is many minutes of a busy gateway).
const PENDING: usize = 200_000;
/// How often a writer that lost Redis tries again.
const RETRY: Duration = Duration::from_millis(500);
/// The longest the subscriber waits between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A cooldown longer than any the gateway sets is a broken entry.
const MAX_COOLDOWN_MS: i64 = 40 * 24 * 3600 * 1000;

/// A change one instance publishes and the others apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Event {
    /// A model cools on a key until `until_ms` (wall clock).
    Cool { provider: String, fingerprint: u64, model: String, until_ms: i64, reason: String },
    /// Cooldowns cleared (an operator's reset).
    Uncool { provider: String, model: Option<String>, fingerprint: Option<u64> },
    /// An upstream rejected a key.
    Invalid { provider: String, fingerprint: u64 },
    /// A conversation is pinned to a model until `until_ms`.
    Pin { session: String, target: String, until_ms: i64 },
}

/// What goes over the channel: the change and who made it.
#[derive(Serialize, Deserialize)]
struct Message {
    from: u64,
    #[serde(flatten)]
    event: Event,
}

/// Something to write to Redis behind the request's back.
#[derive(Debug)]
pub(super) enum Op {
    /// Adds `requests` and `tokens` (either may be negative: a refund, a
    /// settled token count) to counter `key` at wall-clock second `sec`.
    Usage { key: String, sec: i64, requests: i64, tokens: i64 },
    /// Stores (where it lasts) and publishes a change.
    Event(Event),
    /// Stores a Responses-API turn for `ttl_secs`, and renews the turns
    /// before it (`earlier`, their ids) as long. Encoded when sent, off the
    /// request path.
    Response { response: Box<StoredResponse>, ttl_secs: i64, earlier: Vec<Arc<str>> },
}

/// How the link to Redis is doing, for `/health`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisHealth {
    /// Redis answers commands: counters are shared.
    pub connected: bool,
    /// The subscription to other instances' changes is open.
    pub subscribed: bool,
    /// Since when `connected` has been what it is (RFC 3339).
    pub since: String,
    /// The last error Redis gave, if any since it was last reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Counter changes and published changes waiting for Redis to return.
    pub pending: u64,
    /// Commands that failed since start.
    pub errors: u64,
    /// Changes dropped: the queue or the pending store was full.
    pub dropped: u64,
}

/// Up or down, and what the writer keeps.
struct Status {
    up: bool,
    subscribed: bool,
    since_ms: i64,
    last_error: Option<String>,
    pending: u64,
}

/// The shared part: the connection, the script, the queue, the status.
pub(super) struct Link {
    /// Who this instance is in published messages (random per start).
    pub(super) instance: u64,
    pub(super) manager: ConnectionManager,
    pub(super) admit: Script,
    pub(super) clock: Clock,
    ops: mpsc::Sender<Op>,
    status: Mutex<Status>,
    errors: AtomicU64,
    dropped: AtomicU64,
}

impl Link {
    /// Opens the link to `url` and starts its two tasks; `state` is the
    /// local store others' changes are applied to.
    pub(super) fn start(url: &str, state: Weak<dyn StateStore>, clock: Clock) -> Result<Arc<Self>, String> {
        let client = Client::open(url).map_err(|e| e.to_string())?;
        // Commands fail fast while Redis is away (the writer and the
        // admission decide what to do); reconnection is the manager's.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| e.to_string())?;
        let (ops, rx) = mpsc::channel(QUEUE);
        let link = Arc::new(Self {
            instance: fastrand::u64(..),
            manager: manager.clone(),
            admit: Script::new(include_str!("admit.lua")),
            clock,
            ops,
            status: Mutex::new(Status {
                up: false,
                subscribed: false,
                since_ms: clock.now_ms(),
                last_error: None,
                pending: 0,
            }),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(write_behind(Arc::downgrade(&link), rx, manager));
        tokio::spawn(subscribe(Arc::downgrade(&link), client, state));
        Ok(link)
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether Redis answered last time anyone asked.
    pub(super) fn is_up(&self) -> bool {
        self.status().up
    }

    /// Queues `op` for Redis; never waits (a full queue drops it).
    pub(super) fn queue(&self, op: Op) {
        if self.ops.try_send(op).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A command failed: Redis is counted as away until the writer reaches
    /// it again (said once in the log, not per request).
    pub(super) fn failed(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut status = self.status();
        status.last_error = Some(error.to_string());
        if status.up {
            status.up = false;
            status.since_ms = self.clock.now_ms();
            tracing::warn!(error = %error, "Redis is unreachable: this instance serves on its own state and reconciles when Redis returns");
        }
    }

    /// The writer reached Redis and replayed `reconciled` pending changes.
    fn reached(&self, reconciled: usize) {
        let mut status = self.status();
        if !status.up {
            status.up = true;
            status.since_ms = self.clock.now_ms();
            status.last_error = None;
            tracing::info!(reconciled, "Redis is reachable: counters, cooldowns and pins are shared");
        }
    }

    fn set_pending(&self, pending: usize) {
        self.status().pending = pending as u64;
    }

    fn set_subscribed(&self, subscribed: bool) {
        self.status().subscribed = subscribed;
    }

    /// What `/health` shows.
    pub(super) fn health(&self) -> RedisHealth {
        let status = self.status();
        let since = jiff::Timestamp::from_millisecond(status.since_ms).map(|t| t.to_string()).unwrap_or_default();
        RedisHealth {
            connected: status.up,
            subscribed: status.subscribed,
            since,
            last_error: status.last_error.clone(),
            pending: status.pending,
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// What waits for Redis to come back: counter deltas summed per (counter,
/// second), changes in the order they were made.
#[derive(Default)]
struct Pending {
    usage: HashMap<(String, i64), (i64, i64)>,
    events: Vec<Event>,
    dropped: u64,
}

impl Pending {
    fn len(&self) -> usize {
        self.usage.len() + self.events.len()
    }

    fn keep(&mut self, ops: Vec<Op>) {
        for op in ops {
            if self.len() >= PENDING {
                self.dropped += 1;
                continue;
            }
            match op {
                Op::Usage { key, sec, requests, tokens } => {
                    let sum = self.usage.entry((key, sec)).or_default();
                    sum.0 = sum.0.saturating_add(requests);
                    sum.1 = sum.1.saturating_add(tokens);
                }
                Op::Event(event) => self.events.push(event),
                // A stored response is not kept for later: it may be large,
                // and while Redis is away it is served from local state.
                Op::Response { .. } => {}
            }
        }
    }

    fn take(&mut self) -> Vec<Op> {
        let usage = self.usage.drain().map(|((key, sec), (requests, tokens))| Op::Usage { key, sec, requests, tokens });
        usage.chain(self.events.drain(..).map(Op::Event)).collect()
    }
}

/// Sends queued operations to Redis, keeps them while it is away, and
/// replays them when it returns.
async fn write_behind(link: Weak<Link>, mut rx: mpsc::Receiver<Op>, mut conn: ConnectionManager) {
    let mut pending = Pending::default();
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            op = rx.recv() => {
                let Some(op) = op else { return };
                let mut batch = vec![op];
                while batch.len() < BATCH && let Ok(op) = rx.try_recv() {
                    batch.push(op);
                }
                let Some(link) = link.upgrade() else { return };
                // While anything waits, new changes wait behind it (their order).
                if link.is_up() && pending.len() == 0 {
                    if let Err(e) = send(&mut conn, &link, &batch).await {
                        link.failed(&e);
                        pending.keep(batch);
                    }
                } else {
                    pending.keep(batch);
                }
                link.set_pending(pending.len());
                link.dropped.fetch_add(std::mem::take(&mut pending.dropped), Ordering::Relaxed);
            }
            _ = retry.tick() => {
                let Some(link) = link.upgrade() else { return };
                if !link.is_up() || pending.len() > 0 {
                    reconcile(&mut conn, &link, &mut pending).await;
                    link.set_pending(pending.len());
                }
            }
        }
    }
}

/// Pings Redis; when it answers, replays what waited and marks it up.
async fn reconcile(conn: &mut ConnectionManager, link: &Link, pending: &mut Pending) {
    if let Err(e) = redis::cmd("PING").query_async::<String>(conn).await {
        link.failed(&e);
        return;
    }
    let ops = pending.take();
    let replayed = ops.len();
    let mut sent = 0;
    for chunk in ops.chunks(BATCH) {
        if let Err(e) = send(conn, link, chunk).await {
            link.failed(&e);
            break;
        }
        sent += chunk.len();
    }
    if sent < replayed {
        // What was not sent waits for the next try.
        pending.keep(ops.into_iter().skip(sent).collect());
        return;
    }
    link.reached(replayed);
}

/// A cooldown as a member of [`COOLDOWNS`].
pub(super) fn cooldown_member(provider: &str, fingerprint: u64, model: &str, reason: &str) -> String {
    format!("{provider}\t{fingerprint:016x}\t{model}\t{reason}")
}

/// Sends `ops` as one pipeline (one round trip).
async fn send(conn: &mut ConnectionManager, link: &Link, ops: &[Op]) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    for op in ops {
        match op {
            Op::Usage { key, sec, requests, tokens } => {
                let bucket = sec.div_euclid(super::super::usage::DAY_BUCKET.as_secs() as i64);
                for (field, delta) in [
                    (format!("r:{sec}"), requests),
                    (format!("R:{bucket}"), requests),
                    (format!("t:{sec}"), tokens),
                    (format!("T:{bucket}"), tokens),
                ] {
                    if *delta != 0 {
                        pipe.cmd("HINCRBY").arg(key).arg(field).arg(*delta).ignore();
                    }
                }
                pipe.cmd("EXPIRE").arg(key).arg(COUNTER_TTL_SECS).ignore();
            }
            Op::Response { response, ttl_secs, earlier } => {
                let key = responses::redis_key(&response.id);
                pipe.cmd("SET").arg(key).arg(responses::encode(response)).arg("EX").arg(*ttl_secs).ignore();
                for id in earlier {
                    pipe.cmd("EXPIRE").arg(responses::redis_key(id)).arg(*ttl_secs).ignore();
                }
            }
            Op::Event(event) => {
                match event {
                    Event::Cool { provider, fingerprint, model, until_ms, reason } => {
                        let member = cooldown_member(provider, *fingerprint, model, reason);
                        pipe.cmd("ZADD").arg(COOLDOWNS).arg(*until_ms).arg(member).ignore();
                    }
                    Event::Uncool { provider, model, fingerprint } => {
                        let fingerprint = fingerprint.map(|f| format!("{f:016x}")).unwrap_or_default();
                        pipe.cmd("EVAL")
                            .arg(include_str!("uncool.lua"))
                            .arg(1)
                            .arg(COOLDOWNS)
                            .arg(provider)
                            .arg(model.as_deref().unwrap_or(""))
                            .arg(fingerprint)
                            .ignore();
                    }
                    Event::Invalid { provider, fingerprint } => {
                        pipe.cmd("SADD").arg(INVALID).arg(format!("{provider}\t{fingerprint:016x}")).ignore();
                    }
                    // Pins are only published: a new instance's conversations
                    // pin themselves again.
                    Event::Pin { .. } => {}
                }
                let message = Message { from: link.instance, event: event.clone() };
                if let Ok(json) = serde_json::to_string(&message) {
                    pipe.cmd("PUBLISH").arg(CHANNEL).arg(json).ignore();
                }
            }
        }
    }
    // Ended cooldowns leave the set as others are added.
    pipe.cmd("ZREMRANGEBYSCORE").arg(COOLDOWNS).arg("-inf").arg(link.clock.now_ms()).ignore();
    pipe.query_async::<()>(conn).await
}

/// Keeps a subscription to other instances' changes open, applying them
/// to `state`.
async fn subscribe(link: Weak<Link>, client: Client, state: Weak<dyn StateStore>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await;
        let Some(current) = link.upgrade() else { return };
        match connected {
            Ok(Ok(mut pubsub)) => match pubsub.subscribe(CHANNEL).await {
                Ok(()) => {
                    // Subscribed first, loaded second: a change made between
                    // the two is applied twice, which changes nothing.
                    let mut conn = current.manager.clone();
                    let clock = current.clock;
                    let instance = current.instance;
                    drop(current);
                    if let Err(e) = load(&mut conn, &state, clock).await
                        && let Some(link) = link.upgrade()
                    {
                        link.failed(&e);
                    }
                    if let Some(link) = link.upgrade() {
                        link.set_subscribed(true);
                    }
                    backoff = Duration::from_millis(50);
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => {
                                let Some(message) = message else { break };
                                let Some(state) = state.upgrade() else { return };
                                apply_message(message.get_payload_bytes(), instance, &*state, clock);
                            }
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                                if state.strong_count() == 0 {
                                    return;
                                }
                            }
                        }
                    }
                    let Some(link) = link.upgrade() else { return };
                    link.set_subscribed(false);
                    link.failed(&"the subscription to other instances' changes closed");
                }
                Err(e) => current.failed(&e),
            },
            Ok(Err(e)) => current.failed(&e),
            Err(_) => current.failed(&"connecting timed out"),
        }
        if state.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Loads the cooldowns and rejected keys Redis holds into `state`.
async fn load(conn: &mut ConnectionManager, state: &Weak<dyn StateStore>, clock: Clock) -> Result<(), RedisError> {
    let now_ms = clock.now_ms();
    let cooling: Vec<(String, i64)> =
        redis::cmd("ZRANGEBYSCORE").arg(COOLDOWNS).arg(now_ms).arg("+inf").arg("WITHSCORES").query_async(conn).await?;
    let invalid: Vec<String> = redis::cmd("SMEMBERS").arg(INVALID).query_async(conn).await?;
    let Some(state) = state.upgrade() else { return Ok(()) };
    let (mut cooldowns, mut keys) = (0usize, 0usize);
    for (member, until_ms) in cooling {
        let mut parts = member.split('\t');
        let (Some(provider), Some(fingerprint), Some(model), Some(reason)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(fingerprint) = u64::from_str_radix(fingerprint, 16) else { continue };
        let event = Event::Cool {
            provider: provider.to_owned(),
            fingerprint,
            model: model.to_owned(),
            until_ms,
            reason: reason.to_owned(),
        };
        apply(event, &*state, clock);
        cooldowns += 1;
    }
    for member in invalid {
        if let Some((provider, fingerprint)) = member.split_once('\t')
            && let Ok(fingerprint) = u64::from_str_radix(fingerprint, 16)
        {
            apply(Event::Invalid { provider: provider.to_owned(), fingerprint }, &*state, clock);
            keys += 1;
        }
    }
    tracing::info!(cooldowns, invalid_keys = keys, "shared state loaded from Redis");
    Ok(())
}

/// Applies a published message unless this instance sent it.
fn apply_message(payload: &[u8], instance: u64, state: &dyn StateStore, clock: Clock) {
    match serde_json::from_slice::<Message>(payload) {
        Ok(message) if message.from != instance => apply(message.event, state, clock),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "ignored a message on the freeway channel"),
    }
}

/// Applies another instance's change to the local state (not published
/// again: `state` is the store under the shared one).
fn apply(event: Event, state: &dyn StateStore, clock: Clock) {
    let now_ms = clock.now_ms();
    match event {
        Event::Cool { provider, fingerprint, model, until_ms, reason } => {
            let until_ms = until_ms.min(now_ms.saturating_add(MAX_COOLDOWN_MS));
            if let Some(until) = clock.instant(until_ms) {
                let why = Cooling::from_label(&reason).unwrap_or(Cooling::RateLimited);
                state.cool(&KeyId { provider: Arc::from(provider), fingerprint }, &Arc::from(model), until, why);
            }
        }
        Event::Uncool { provider, model, fingerprint } => {
            state.clear_cooldowns(&provider, model.as_deref(), fingerprint);
        }
        Event::Invalid { provider, fingerprint } => {
            state.mark_invalid(&KeyId { provider: Arc::from(provider), fingerprint });
        }
        Event::Pin { session, target, until_ms } => {
            let ttl = Duration::from_millis(until_ms.saturating_sub(now_ms).max(0).unsigned_abs());
            if !ttl.is_zero() {
                state.pin(&session, &target, ttl, Instant::now());
            }
        }
    }
}
