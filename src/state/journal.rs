//! Write-behind: the request path hands what changed to a queue and goes
//! on; one thread gathers it and writes it to the database in one
//! transaction every [`FLUSH_EVERY`], so a killed process loses at most
//! that much. Usage changes are summed per counter and minute before they
//! are written (a thousand requests in a minute make one row update).
//!
//! The queue is bounded: when the disk cannot keep up, changes are dropped
//! and counted (`freeway_state_writes_dropped_total`) rather than letting
//! memory grow or making requests wait.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::params;

use super::db::Db;
use super::log::RequestRecord;
use super::responses::{self, StoredResponse};

/// How often gathered changes are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// How often the writer looks at the queue (a flush asked for waits at
/// most this long).
const TICK: Duration = Duration::from_millis(100);

/// Changes waiting in the queue, at most: 0.1 s of changes at 650k a
/// second.
const QUEUE: usize = 65_536;

/// How often ended cooldowns and pins, old usage, old log rows and
/// conversations past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Usage rows are kept this long: a rolling day, plus the longest calendar
/// day (25 h on a daylight-saving change) with room to spare.
const USAGE_KEPT_MS: i64 = 26 * 3600 * 1000;

/// One change to persist.
pub enum Write {
    /// Requests and tokens counted (negative: given back) in a counter at a
    /// wall-clock time.
    Usage {
        /// Provider.
        provider: Arc<str>,
        /// Key fingerprint.
        fingerprint: u64,
        /// The model, or `None` for the key's shared limits.
        model: Option<Arc<str>>,
        /// When, in wall-clock ms.
        at_ms: i64,
        /// Requests added.
        requests: i64,
        /// Tokens added.
        tokens: i64,
    },
    /// A model cools on a key until `until_ms`.
    Cool {
        /// Provider.
        provider: Arc<str>,
        /// Key fingerprint.
        fingerprint: u64,
        /// Model.
        model: Arc<str>,
        /// Wall-clock end.
        until_ms: i64,
        /// Why (`rate_limited`, `daily_quota`...).
        reason: &'static str,
    },
    /// Cooldowns cleared by an operator: a provider's, or one model's, or
    /// one key's.
    Uncool {
        /// Provider.
        provider: Arc<str>,
        /// Only this model.
        model: Option<Arc<str>>,
        /// Only this key.
        fingerprint: Option<u64>,
    },
    /// A key the upstream rejected.
    Invalid {
        /// Provider.
        provider: Arc<str>,
        /// Key fingerprint.
        fingerprint: u64,
        /// When.
        at_ms: i64,
    },
    /// A conversation pinned to a target.
    Pin {
        /// Session id.
        session: Arc<str>,
        /// `provider/model`.
        target: Arc<str>,
        /// Wall-clock end.
        until_ms: i64,
    },
    /// A provider's model list, as JSON.
    Models {
        /// Provider.
        provider: String,
        /// When it was listed.
        listed_ms: i64,
        /// The records, as JSON.
        json: String,
    },
    /// One served request.
    Request(Box<RequestRecord>),
    /// A Responses-API turn stored for a later `previous_response_id`.
    Response(Box<StoredResponse>),
    /// Tokens of a logged request, known once its answer (or stream) ended.
    Tokens {
        /// The request's log id.
        id: i64,
        /// Prompt tokens.
        tokens_in: u64,
        /// Completion tokens.
        tokens_out: u64,
    },
    /// Write everything gathered now and say so.
    Flush(SyncSender<()>),
}

/// The request path's handle on the queue.
pub struct Journal {
    tx: SyncSender<Write>,
    dropped: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Starts the writer thread over `db`, keeping the request log for
    /// `log_retention`.
    pub fn start(db: Db, path: PathBuf, log_retention: Duration, clock: super::Clock) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let failing = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            db,
            path,
            log_ms: i64::try_from(log_retention.as_millis()).unwrap_or(i64::MAX),
            clock,
            failing: failing.clone(),
            batch: Batch::default(),
            responses_held: 0,
        };
        let thread = std::thread::Builder::new().name("freeway-state".into()).spawn(move || writer.run(rx))?;
        Ok(Self { tx, dropped: Arc::new(AtomicU64::new(0)), failing, thread: Mutex::new(Some(thread)) })
    }

    /// Queues `write`; never waits.
    pub fn send(&self, write: Write) {
        match self.tx.try_send(write) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("the state database cannot keep up; changes are being dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Writes everything queued so far and waits until it is on disk (at
    /// most `within`). For shutdown and tests.
    pub fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Write::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(within).is_ok()
    }

    /// Changes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the last write to the database failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Whatever is queued is written before the gateway goes.
        self.flush(Duration::from_secs(5));
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Closing the queue ends the thread.
            let (closed, _) = sync_channel(0);
            drop(std::mem::replace(&mut self.tx, closed));
            let _ = thread.join();
        }
    }
}

type CounterRow = (Arc<str>, u64, Option<Arc<str>>, i64);
type CooldownRow = (Arc<str>, u64, Arc<str>);
/// Cooldowns an operator cleared: provider, only this model, only this key.
type Cleared = (Arc<str>, Option<Arc<str>>, Option<u64>);

/// Changes gathered since the last write.
#[derive(Default)]
struct Batch {
    usage: HashMap<CounterRow, (i64, i64)>,
    /// Cleared before the new cooldowns of the same batch are written.
    uncool: Vec<Cleared>,
    cooldowns: HashMap<CooldownRow, (i64, &'static str)>,
    invalid: Vec<(Arc<str>, u64, i64)>,
    pins: HashMap<Arc<str>, (Arc<str>, i64)>,
    models: HashMap<String, (i64, String)>,
    requests: Vec<RequestRecord>,
    /// Position in `requests` by log id.
    pending: HashMap<i64, usize>,
    /// Tokens of requests not in `requests`: written as updates, unless
    /// their record arrives in this batch.
    early_tokens: HashMap<i64, (u64, u64)>,
    responses: Vec<StoredResponse>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.usage.is_empty()
            && self.uncool.is_empty()
            && self.cooldowns.is_empty()
            && self.invalid.is_empty()
            && self.pins.is_empty()
            && self.models.is_empty()
            && self.requests.is_empty()
            && self.early_tokens.is_empty()
            && self.responses.is_empty()
    }

    /// Empties the batch for the next flush, keeping its allocations: a
    /// busy gateway logs thousands of requests per flush, and growing the
    /// list again from nothing every time was a tenth of the writer's work.
    fn clear(&mut self) {
        // Named one by one, so that a new field cannot be left out.
        let Self { usage, uncool, cooldowns, invalid, pins, models, requests, pending, early_tokens, responses } = self;
        usage.clear();
        uncool.clear();
        cooldowns.clear();
        invalid.clear();
        pins.clear();
        models.clear();
        requests.clear();
        pending.clear();
        early_tokens.clear();
        responses.clear();
    }

    fn add(&mut self, write: Write) {
        match write {
            Write::Usage { provider, fingerprint, model, at_ms, requests, tokens } => {
                let sum = self.usage.entry((provider, fingerprint, model, at_ms.div_euclid(1000))).or_default();
                sum.0 = sum.0.saturating_add(requests);
                sum.1 = sum.1.saturating_add(tokens);
            }
            Write::Cool { provider, fingerprint, model, until_ms, reason } => {
                let entry = self.cooldowns.entry((provider, fingerprint, model)).or_insert((until_ms, reason));
                if until_ms > entry.0 {
                    *entry = (until_ms, reason);
                }
            }
            Write::Uncool { provider, model, fingerprint } => {
                self.cooldowns.retain(|(p, f, m), _| {
                    !(*p == provider && model.as_ref().is_none_or(|x| x == m) && fingerprint.is_none_or(|x| x == *f))
                });
                self.uncool.push((provider, model, fingerprint));
            }
            Write::Invalid { provider, fingerprint, at_ms } => self.invalid.push((provider, fingerprint, at_ms)),
            Write::Pin { session, target, until_ms } => {
                self.pins.insert(session, (target, until_ms));
            }
            Write::Models { provider, listed_ms, json } => {
                self.models.insert(provider, (listed_ms, json));
            }
            Write::Request(mut record) => {
                // A non-stream answer's tokens are known before its record
                // is queued: they go in with the row, not as an update.
                if let Some((tokens_in, tokens_out)) = self.early_tokens.remove(&record.id) {
                    record.tokens_in = Some(tokens_in);
                    record.tokens_out = Some(tokens_out);
                }
                self.pending.insert(record.id, self.requests.len());
                self.requests.push(*record);
            }
            Write::Tokens { id, tokens_in, tokens_out } => match self.pending.get(&id) {
                Some(&i) => {
                    self.requests[i].tokens_in = Some(tokens_in);
                    self.requests[i].tokens_out = Some(tokens_out);
                }
                // Its row is in an earlier batch (a stream that ended later),
                // or its record has not been queued yet (a non-stream answer).
                None => {
                    self.early_tokens.insert(id, (tokens_in, tokens_out));
                }
            },
            Write::Response(response) => self.responses.push(*response),
            Write::Flush(_) => {}
        }
    }
}

/// The thread that owns the database connection.
struct Writer {
    db: Db,
    path: PathBuf,
    log_ms: i64,
    clock: super::Clock,
    failing: Arc<AtomicBool>,
    batch: Batch,
    /// Bytes of stored responses in the file (kept under
    /// [`responses::KEPT_BYTES`]).
    responses_held: i64,
}

impl Writer {
    /// Wakes every [`TICK`] and takes whatever the queue holds, rather
    /// than waiting on the queue: a writer blocked on it would have to be
    /// woken (a system call on the request path) for every change.
    fn run(mut self, rx: Receiver<Write>) {
        self.responses_held = responses::held(&self.db.conn).unwrap_or(0);
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        let mut next_prune = Instant::now();
        loop {
            std::thread::sleep(TICK);
            let mut flushes = Vec::new();
            let closed = loop {
                match rx.try_recv() {
                    Ok(Write::Flush(done)) => flushes.push(done),
                    Ok(write) => self.batch.add(write),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            let now = Instant::now();
            if closed || !flushes.is_empty() || now >= next_flush {
                self.write();
                next_flush = now + FLUSH_EVERY;
            }
            for done in flushes {
                let _ = done.send(());
            }
            if closed {
                return;
            }
            if now >= next_prune {
                let now_ms = self.clock.now_ms();
                if let Err(e) = self.db.prune(now_ms, USAGE_KEPT_MS, self.log_ms) {
                    tracing::warn!(path = %self.path.display(), "pruning the state database failed: {e}");
                }
                self.responses_held = responses::held(&self.db.conn).unwrap_or(self.responses_held);
                next_prune = now + PRUNE_EVERY;
            }
        }
    }

    /// Writes the batch in one transaction. On failure (a full disk) the
    /// batch is dropped and the failure reported once: state in memory is
    /// still right, only its copy on disk lags.
    fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let written = write_batch(&mut self.db, &self.batch);
        self.batch.clear();
        match written {
            Ok(added) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), "the state database is written again");
                }
                self.responses_held = self.responses_held.saturating_add(added);
                match responses::bound(&self.db.conn, self.responses_held, responses::KEPT_BYTES) {
                    Ok(held) => self.responses_held = held,
                    Err(e) => tracing::warn!(path = %self.path.display(), "pruning stored responses failed: {e}"),
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(path = %self.path.display(), "writing the state database failed: {e}");
                }
            }
        }
    }
}

/// SQLite stores signed 64-bit integers: a fingerprint keeps its bits.
fn signed(fingerprint: u64) -> i64 {
    fingerprint as i64
}

/// Writes `batch` in one transaction; the bytes of stored responses added.
fn write_batch(db: &mut Db, batch: &Batch) -> rusqlite::Result<i64> {
    let tx = db.conn.transaction()?;
    {
        // A refund may arrive without its charge in the same batch: a
        // negative change never takes a counter below zero.
        let mut stmt = tx.prepare_cached(
            "INSERT INTO usage (provider, fingerprint, model, second, requests, tokens)
             VALUES (?1, ?2, ?3, ?4, max(0, ?5), max(0, ?6))
             ON CONFLICT DO UPDATE SET requests = max(0, requests + ?5), tokens = max(0, tokens + ?6)",
        )?;
        for ((provider, fp, model, second), (requests, tokens)) in &batch.usage {
            let model = model.as_deref().unwrap_or("");
            stmt.execute(params![&**provider, signed(*fp), model, second, requests, tokens])?;
        }
        for (provider, model, fp) in &batch.uncool {
            tx.execute(
                "DELETE FROM cooldowns WHERE provider = ?1 AND (?2 IS NULL OR model = ?2) AND (?3 IS NULL OR fingerprint = ?3)",
                params![&**provider, model.as_deref(), fp.map(signed)],
            )?;
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO cooldowns (provider, fingerprint, model, until_ms, reason) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT DO UPDATE SET until_ms = excluded.until_ms, reason = excluded.reason
             WHERE excluded.until_ms > until_ms",
        )?;
        for ((provider, fp, model), (until, reason)) in &batch.cooldowns {
            stmt.execute(params![&**provider, signed(*fp), &**model, until, reason])?;
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO invalid_keys (provider, fingerprint, since_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?;
        for (provider, fp, at) in &batch.invalid {
            stmt.execute(params![&**provider, signed(*fp), at])?;
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO pins (session, target, until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO UPDATE SET target = excluded.target, until_ms = excluded.until_ms",
        )?;
        for (session, (target, until)) in &batch.pins {
            stmt.execute(params![&**session, &**target, until])?;
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO models (provider, listed_ms, models) VALUES (?1, ?2, ?3)
             ON CONFLICT DO UPDATE SET listed_ms = excluded.listed_ms, models = excluded.models",
        )?;
        for (provider, (listed, json)) in &batch.models {
            stmt.execute(params![provider, listed, json])?;
        }
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO requests (id, at_ms, client, model, route, answered_by, status, attempts,
                                              tokens_in, tokens_out, stream, tags, latency_ms, operation,
                                              prompt_estimate, has_tools, has_session, messages, messages_dropped)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )?;
        for r in &batch.requests {
            let attempts = serde_json::to_string(&r.attempts).unwrap_or_else(|_| "[]".to_owned());
            let tags = if r.tags.is_empty() {
                "[]".to_owned()
            } else {
                serde_json::to_string(&r.tags).unwrap_or_else(|_| "[]".to_owned())
            };
            stmt.execute(params![
                r.id,
                r.at_ms,
                r.client.as_deref(),
                &r.model,
                r.route.as_deref(),
                r.answered_by.as_deref(),
                r.status,
                attempts,
                r.tokens_in.map(saturate),
                r.tokens_out.map(saturate),
                r.stream,
                tags,
                saturate(r.latency_ms),
                r.shape.operation,
                r.shape.prompt_estimate.map(saturate),
                r.shape.has_tools,
                r.shape.has_session,
                r.shape.messages.as_deref(),
                r.shape.messages_dropped,
            ])?;
        }
        let mut stmt = tx.prepare_cached("UPDATE requests SET tokens_in = ?2, tokens_out = ?3 WHERE id = ?1")?;
        for (id, (tokens_in, tokens_out)) in &batch.early_tokens {
            stmt.execute(params![id, saturate(*tokens_in), saturate(*tokens_out)])?;
        }
    }
    let added = responses::insert(&tx, &batch.responses)?;
    tx.commit()?;
    Ok(added)
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
