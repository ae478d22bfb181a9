//! [`PersistentState`]: the gateway's state kept in memory for the request
//! path, loaded from the state database at start-up and written back to it
//! behind the requests' backs (see [`super::journal`]).
//!
//! Every read is a memory read, exactly as without a database; every
//! change is applied in memory and queued for the file. What is written:
//! counters per second (as deltas, so a refund or a settled token count
//! corrects the right second), cooldowns with their wall-clock end and
//! reason, rejected keys by fingerprint, pins with their end, model lists,
//! the request log, and stored Responses-API turns. Circuits are not kept:
//! a restarted gateway probes a provider afresh.
//!
//! Stored turns are the one thing read back while serving, not at start-up
//! (there may be far more than memory should hold): a request naming a
//! response memory does not hold reads it on a connection of its own, off
//! the async threads; the file is in WAL mode, so it never waits on the
//! writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};

use super::circuits::{Circuit, CircuitChange, CircuitPolicy};
use super::db::{Db, OpenError};
use super::journal::{Journal, Write};
use super::responses::{self, Lookup, StoredResponse};
use super::usage::{Admission, Charge, LimitHit, Period, Refund, Used};
use super::{
    Budget, Clock, Cooling, KeyId, Learned, MAX_PIN_TTL, MemoryState, RequestRecord, StateBounds, StateHealth,
    StateStore,
};

/// State in memory, persisted to an SQLite file.
pub struct PersistentState {
    memory: MemoryState,
    journal: Journal,
    path: PathBuf,
    moved_aside: Option<PathBuf>,
    /// Model lists an earlier run saved, by provider.
    models: HashMap<String, String>,
    /// The connection stored responses are read on.
    reader: Arc<Mutex<Connection>>,
}

/// What was loaded from the file at start-up (for the log).
#[derive(Debug, Default)]
struct Loaded {
    counters: usize,
    cooldowns: usize,
    invalid: usize,
    pins: usize,
}

impl PersistentState {
    /// Opens the database at `path` and loads what it holds.
    pub fn open(path: &Path, log_retention: Duration, bounds: StateBounds, clock: Clock) -> Result<Self, OpenError> {
        let db = Db::open(path)?;
        let memory = MemoryState::with_clock(bounds, clock);
        let other = |e: rusqlite::Error| OpenError::Other { path: path.display().to_string(), message: e.to_string() };
        let (loaded, models) = load(&db, &memory, clock).map_err(other)?;
        tracing::info!(
            path = %path.display(),
            counters = loaded.counters,
            cooldowns = loaded.cooldowns,
            invalid_keys = loaded.invalid,
            pins = loaded.pins,
            "state loaded"
        );
        let moved_aside = db.moved_aside.clone();
        let reader = reader(path).map_err(other)?;
        let journal = Journal::start(db, path.to_owned(), log_retention, clock)
            .map_err(|e| OpenError::Other { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Self { memory, journal, path: path.to_owned(), moved_aside, models, reader: Arc::new(Mutex::new(reader)) })
    }

    fn usage(&self, key: &KeyId, model: Option<&Arc<str>>, charge: Charge, requests: i64, tokens: i64) {
        if requests == 0 && tokens == 0 {
            return;
        }
        self.journal.send(Write::Usage {
            provider: key.provider.clone(),
            fingerprint: key.fingerprint,
            model: model.cloned(),
            at_ms: self.memory.clock().wall_ms(charge.at),
            requests,
            tokens,
        });
    }

    /// Queues the change `delta(charge)` of each counter `admission` charged
    /// (and the one it only counted, with `counted`).
    fn correct(&self, admission: &Admission, counted: bool, delta: impl Fn(Charge) -> (i64, i64)) {
        let model_charge = if counted { admission.model_count() } else { admission.model_charge };
        for (charge, model) in [(admission.key_charge, None), (model_charge, Some(&admission.model))] {
            if let Some(charge) = charge {
                let (requests, tokens) = delta(charge);
                self.usage(&admission.key, model, charge, requests, tokens);
            }
        }
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A second, read-only connection to the (already migrated) file.
fn reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    Ok(conn)
}

/// Reads the file into `memory`; returns the saved model lists.
fn load(db: &Db, memory: &MemoryState, clock: Clock) -> rusqlite::Result<(Loaded, HashMap<String, String>)> {
    let now = Instant::now();
    let now_ms = clock.wall_ms(now);
    let mut loaded = Loaded::default();
    let key = |provider: String, fp: i64| KeyId { provider: Arc::from(provider), fingerprint: fp as u64 };

    let since = now_ms.saturating_sub(24 * 3600 * 1000) / 1000;
    let mut stmt = db
        .conn
        .prepare("SELECT provider, fingerprint, model, second, requests, tokens FROM usage WHERE second >= ?1")?;
    let rows = stmt.query_map(params![since], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut counters = std::collections::HashSet::new();
    for row in rows {
        let (provider, fp, model, second, requests, tokens) = row?;
        let id = key(provider, fp);
        let model: Option<Arc<str>> = (!model.is_empty()).then(|| Arc::from(model));
        memory.restore_usage(&id, model.as_ref(), second, requests.max(0) as u64, tokens.max(0) as u64, now);
        counters.insert((id, model));
    }
    loaded.counters = counters.len();

    let mut stmt =
        db.conn.prepare("SELECT provider, fingerprint, model, until_ms, reason FROM cooldowns WHERE until_ms > ?1")?;
    let rows = stmt.query_map(params![now_ms], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    for row in rows {
        let (provider, fp, model, until_ms, reason) = row?;
        // A cooldown longer than any the gateway sets is a broken row.
        let until_ms = until_ms.min(now_ms.saturating_add(40 * 24 * 3600 * 1000));
        if let Some(until) = clock.instant(until_ms) {
            let why = Cooling::from_label(&reason).unwrap_or(Cooling::RateLimited);
            memory.cool(&key(provider, fp), &Arc::from(model), until, why);
            loaded.cooldowns += 1;
        }
    }

    let mut stmt = db.conn.prepare("SELECT provider, fingerprint FROM invalid_keys")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (provider, fp) = row?;
        memory.mark_invalid(&key(provider, fp));
        loaded.invalid += 1;
    }

    let mut stmt = db.conn.prepare("SELECT session, target, until_ms FROM pins WHERE until_ms > ?1")?;
    let rows =
        stmt.query_map(params![now_ms], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
    for row in rows {
        let (session, target, until_ms) = row?;
        let max = now_ms.saturating_add(i64::try_from(MAX_PIN_TTL.as_millis()).unwrap_or(i64::MAX));
        if let Some(until) = clock.instant(until_ms.min(max)) {
            memory.restore_pin(&session, &target, until);
            loaded.pins += 1;
        }
    }

    let mut stmt = db.conn.prepare("SELECT provider, models FROM models")?;
    let models = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<HashMap<_, _>>>()?;
    Ok((loaded, models))
}

impl StateStore for PersistentState {
    fn cooling_until(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<Instant> {
        self.memory.cooling_until(key, model, now)
    }

    fn cool(&self, key: &KeyId, model: &Arc<str>, until: Instant, why: Cooling) {
        self.memory.cool(key, model, until, why);
        self.journal.send(Write::Cool {
            provider: key.provider.clone(),
            fingerprint: key.fingerprint,
            model: model.clone(),
            until_ms: self.memory.clock().wall_ms(until),
            reason: why.label(),
        });
    }

    fn cooling(&self, key: &KeyId, model: &Arc<str>, now: Instant) -> Option<(Instant, Cooling)> {
        self.memory.cooling(key, model, now)
    }

    fn cooldowns(&self, now: Instant) -> Vec<(KeyId, Arc<str>, Instant, Cooling)> {
        self.memory.cooldowns(now)
    }

    fn clear_cooldowns(&self, provider: &str, model: Option<&str>, fingerprint: Option<u64>) -> usize {
        let n = self.memory.clear_cooldowns(provider, model, fingerprint);
        self.journal.send(Write::Uncool { provider: Arc::from(provider), model: model.map(Arc::from), fingerprint });
        n
    }

    fn active_cooldowns(&self, now: Instant) -> usize {
        self.memory.active_cooldowns(now)
    }

    fn is_invalid(&self, key: &KeyId) -> bool {
        self.memory.is_invalid(key)
    }

    fn mark_invalid(&self, key: &KeyId) {
        self.memory.mark_invalid(key);
        self.journal.send(Write::Invalid {
            provider: key.provider.clone(),
            fingerprint: key.fingerprint,
            at_ms: self.memory.clock().now_ms(),
        });
    }

    fn invalid_keys(&self) -> Vec<KeyId> {
        self.memory.invalid_keys()
    }

    fn admit(
        &self,
        key: &KeyId,
        model: &Arc<str>,
        budget: &Budget,
        tokens: u64,
        now: Instant,
    ) -> Result<Admission, LimitHit> {
        let admission = self.memory.admit(key, model, budget, tokens, now)?;
        self.correct(&admission, true, |charge| (1, signed(charge.tokens)));
        Ok(admission)
    }

    fn settle(&self, admission: &Admission, actual_tokens: u64) {
        self.memory.settle(admission, actual_tokens);
        // A request only counted (no limit on its model) keeps its estimate
        // on disk: its tokens limit nothing, and this spares a write per
        // request.
        self.correct(admission, false, |charge| (0, signed(actual_tokens).saturating_sub(signed(charge.tokens))));
    }

    fn refund(&self, admission: &Admission, refund: Refund) {
        self.memory.refund(admission, refund);
        self.correct(admission, true, |charge| {
            let requests = if refund == Refund::Everything { -1 } else { 0 };
            (requests, -signed(charge.tokens))
        });
    }

    fn learned(&self, key: &KeyId, model: &Arc<str>) -> Option<Learned> {
        self.memory.learned(key, model)
    }

    fn learn(&self, key: &KeyId, model: &Arc<str>, update: &dyn Fn(Learned) -> Learned) {
        self.memory.learn(key, model, update);
    }

    fn used(&self, key: &KeyId, model: Option<&Arc<str>>, period: Option<&Period>, now: Instant) -> Option<Used> {
        self.memory.used(key, model, period, now)
    }

    fn usable(&self, key: &KeyId, model: &Arc<str>, budget: &Budget, now: Instant) -> bool {
        self.memory.usable(key, model, budget, now)
    }

    fn pinned(&self, session: &str, now: Instant) -> Option<Arc<str>> {
        self.memory.pinned(session, now)
    }

    fn pin(&self, session: &str, target: &str, ttl: Duration, now: Instant) -> bool {
        if !self.memory.pin(session, target, ttl, now) {
            return false;
        }
        let ttl_ms = i64::try_from(ttl.min(MAX_PIN_TTL).as_millis()).unwrap_or(i64::MAX);
        self.journal.send(Write::Pin {
            session: Arc::from(session),
            target: Arc::from(target),
            until_ms: self.memory.clock().wall_ms(now).saturating_add(ttl_ms),
        });
        true
    }

    fn pins(&self) -> u64 {
        self.memory.pins()
    }

    fn circuit(&self, provider: &Arc<str>, now: Instant, policy: &CircuitPolicy) -> Circuit {
        self.memory.circuit(provider, now, policy)
    }

    fn circuit_result(
        &self,
        provider: &Arc<str>,
        up: bool,
        now: Instant,
        policy: &CircuitPolicy,
    ) -> Option<CircuitChange> {
        self.memory.circuit_result(provider, up, now, policy)
    }

    fn open_circuits(&self) -> Vec<Arc<str>> {
        self.memory.open_circuits()
    }

    fn clock(&self) -> Clock {
        self.memory.clock()
    }

    fn logs_requests(&self) -> bool {
        true
    }

    fn log_request(&self, record: RequestRecord) {
        self.journal.send(Write::Request(Box::new(record)));
    }

    fn log_tokens(&self, id: i64, tokens_in: u64, tokens_out: u64) {
        self.journal.send(Write::Tokens { id, tokens_in, tokens_out });
    }

    fn save_models(&self, provider: &str, json: String) {
        let listed_ms = self.memory.clock().now_ms();
        self.journal.send(Write::Models { provider: provider.to_owned(), listed_ms, json });
    }

    fn saved_models(&self, provider: &str) -> Option<String> {
        self.models.get(provider).cloned()
    }

    fn keep_response(&self, response: &StoredResponse, _earlier: &[Arc<str>]) {
        self.journal.send(Write::Response(Box::new(response.clone())));
    }

    fn stored_response<'a>(&'a self, id: &'a str) -> Lookup<'a> {
        let (reader, id) = (self.reader.clone(), id.to_owned());
        Box::pin(async move {
            let read = move || responses::read(&reader.lock().unwrap_or_else(|e| e.into_inner()), &id);
            tokio::task::spawn_blocking(read).await.unwrap_or_else(|e| Err(e.to_string()))
        })
    }

    fn health(&self) -> StateHealth {
        StateHealth {
            backend: "sqlite",
            path: Some(self.path.display().to_string()),
            moved_aside: self.moved_aside.as_ref().map(|p| p.display().to_string()),
            failing: self.journal.failing(),
            dropped_writes: self.journal.dropped(),
            redis: None,
        }
    }

    fn flush(&self, within: Duration) -> bool {
        self.journal.flush(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    fn open(path: &Path) -> PersistentState {
        PersistentState::open(path, Duration::from_secs(3600), StateBounds::default(), Clock::system()).unwrap()
    }

    #[test]
    fn counters_cooldowns_keys_and_pins_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let key = KeyId { provider: Arc::from("p"), fingerprint: u64::MAX - 3 };
        let model: Arc<str> = Arc::from("m");
        let budget =
            Budget { model: Limits { rpd: Some(3), tpd: Some(1000), ..Limits::default() }, ..Budget::default() };
        let now = Instant::now();
        {
            let s = open(&path);
            let a = s.admit(&key, &model, &budget, 100, now).unwrap();
            s.settle(&a, 250);
            let b = s.admit(&key, &model, &budget, 100, now).unwrap();
            s.refund(&b, Refund::Everything);
            s.admit(&key, &model, &budget, 100, now).unwrap();
            s.cool(&key, &Arc::from("cold"), now + Duration::from_secs(3600), Cooling::DailyQuota);
            s.mark_invalid(&KeyId { provider: Arc::from("p"), fingerprint: 9 });
            s.pin("conv", "p/m", Duration::from_secs(600), now);
            s.save_models("p", "[1]".to_owned());
            assert!(s.flush(Duration::from_secs(5)));
        }
        let s = open(&path);
        let now = Instant::now();
        // 2 requests and 350 tokens were spent: one more fits, then none.
        let third = s.admit(&key, &model, &budget, 100, now).unwrap();
        assert_eq!(s.admit(&key, &model, &budget, 1, now).unwrap_err().limit, super::super::Limit::Rpd);
        s.refund(&third, Refund::Everything);
        assert_eq!(
            s.admit(&key, &model, &budget, 700, now).unwrap_err().limit,
            super::super::Limit::Tpd,
            "the settled tokens came back too"
        );
        let cooling = s.cooldowns(now);
        assert_eq!(cooling.len(), 1);
        assert_eq!(cooling[0].3, Cooling::DailyQuota);
        assert!(cooling[0].2 > now + Duration::from_secs(3590));
        assert!(s.is_invalid(&KeyId { provider: Arc::from("p"), fingerprint: 9 }));
        assert_eq!(s.pinned("conv", now).as_deref(), Some("p/m"));
        assert_eq!(s.saved_models("p").as_deref(), Some("[1]"));
    }

    #[tokio::test]
    async fn a_stored_response_is_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let turn = StoredResponse {
            id: Arc::from("resp_1"),
            earlier: None,
            root: Arc::from("resp_1"),
            started_ms: 1,
            until_ms: i64::MAX,
            request: bytes::Bytes::from_static(b"{}"),
            response: bytes::Bytes::from_static(b"{\"output\":[]}"),
        };
        {
            let s = open(&path);
            s.keep_response(&turn, &[]);
            assert!(s.flush(Duration::from_secs(5)));
            assert_eq!(s.stored_response("resp_1").await.unwrap().as_ref(), Some(&turn), "read while running");
        }
        let s = open(&path);
        assert_eq!(s.stored_response("resp_1").await.unwrap(), Some(turn));
        assert_eq!(s.stored_response("resp_2").await.unwrap(), None);
    }

    #[test]
    fn cleared_cooldowns_stay_cleared_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let key = KeyId { provider: Arc::from("p"), fingerprint: 1 };
        {
            let s = open(&path);
            s.cool(&key, &Arc::from("a"), Instant::now() + Duration::from_secs(600), Cooling::RateLimited);
            s.cool(&key, &Arc::from("b"), Instant::now() + Duration::from_secs(600), Cooling::RateLimited);
            assert!(s.flush(Duration::from_secs(5)));
            assert_eq!(s.clear_cooldowns("p", Some("a"), None), 1);
            assert!(s.flush(Duration::from_secs(5)));
        }
        let s = open(&path);
        let left: Vec<String> = s.cooldowns(Instant::now()).into_iter().map(|c| c.1.to_string()).collect();
        assert_eq!(left, vec!["b".to_owned()]);
    }

    #[test]
    fn a_restored_request_stays_in_the_sliding_minute_until_it_really_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let key = KeyId { provider: Arc::from("p"), fingerprint: 1 };
        let model: Arc<str> = Arc::from("m");
        let budget = Budget { model: Limits { rpm: Some(1), ..Limits::default() }, ..Budget::default() };
        {
            let s = open(&path);
            s.admit(&key, &model, &budget, 1, Instant::now()).unwrap();
            assert!(s.flush(Duration::from_secs(5)));
        }
        let s = open(&path);
        let now = Instant::now();
        let hit = s.admit(&key, &model, &budget, 1, now).unwrap_err();
        // Rows are per second: the request leaves the window a minute after
        // it was made (here: about now), not at its minute's end or start.
        let frees = hit.until - now;
        assert!(frees >= Duration::from_secs(58) && frees <= Duration::from_secs(61), "frees in {frees:?}");
    }
}
