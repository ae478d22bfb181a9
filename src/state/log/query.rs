//! Reading the request log back, for `GET /admin/api/requests` and
//! `GET /admin/api/usage`: pages of rows newest first, and the rows of a
//! time range summed per group. Everything here runs on a read-only
//! connection of its own, opened by the caller off the async threads; the
//! file is in WAL mode, so reading never waits on the writer or makes it
//! wait.
//!
//! A row's id is its wall-clock time in microseconds made unique (ms ×
//! 1000 + a sequence): ordering by id is ordering by (time, sequence), and
//! a time range is an id range on the table's own key, so paging is a
//! keyset on the id and needs no index of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, params_from_iter};
use serde::Serialize;

use crate::config::Price;

/// Rows `usage` sums at most: past it the oldest rows of the range are
/// left out and the answer says so. A million rows take about a second
/// to read and 100 MB would be far past any page; 200k keeps an answer
/// well under a second (see the figure in the README).
pub const USAGE_SCAN_CAP: usize = 200_000;

/// Opens the (already migrated) database at `path` read-only.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    Ok(conn)
}

/// Which status codes a filter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this code.
    Code(u16),
    /// Any error: 400 and up.
    Error,
    /// Any success: below 400.
    Ok,
}

/// What rows to keep. Times are wall-clock ms, `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// From this time on.
    pub since_ms: Option<i64>,
    /// Before this time.
    pub until_ms: Option<i64>,
    /// The client's label, exactly.
    pub client: Option<String>,
    /// The model the client asked for, exactly.
    pub model: Option<String>,
    /// A provider that answered or was attempted.
    pub provider: Option<String>,
    /// The status the client got.
    pub status: Option<StatusFilter>,
}

impl Filter {
    /// The `WHERE` clause (always something) and its parameters, for rows
    /// with an id under `before` too when given.
    fn clause(&self, before: Option<i64>) -> (String, Vec<SqlValue>) {
        let mut terms = vec!["1".to_owned()];
        let mut values = Vec::new();
        // Each term names its parameter as `?N`, N its place in `values`.
        let mut bind = |value: SqlValue, term: &dyn Fn(usize) -> String| {
            values.push(value);
            terms.push(term(values.len()));
        };
        if let Some(since) = self.since_ms {
            bind(SqlValue::Integer(since.saturating_mul(1000)), &|n| format!("id >= ?{n}"));
        }
        if let Some(until) = self.until_ms {
            bind(SqlValue::Integer(until.saturating_mul(1000)), &|n| format!("id < ?{n}"));
        }
        if let Some(id) = before {
            bind(SqlValue::Integer(id), &|n| format!("id < ?{n}"));
        }
        if let Some(client) = &self.client {
            bind(SqlValue::Text(client.clone()), &|n| format!("client = ?{n}"));
        }
        if let Some(model) = &self.model {
            bind(SqlValue::Text(model.clone()), &|n| format!("model = ?{n}"));
        }
        if let Some(provider) = &self.provider {
            // The answering attempt is in the trail too; `answered_by` is
            // checked first as it costs no JSON parse.
            bind(SqlValue::Text(provider.clone()), &|n| {
                format!(
                    "(substr(answered_by, 1, length(?{n}) + 1) = ?{n} || '/' OR EXISTS \
                     (SELECT 1 FROM json_each(requests.attempts) WHERE value ->> 'provider' = ?{n}))"
                )
            });
        }
        match self.status {
            Some(StatusFilter::Code(code)) => bind(SqlValue::Integer(i64::from(code)), &|n| format!("status = ?{n}")),
            Some(StatusFilter::Error) => bind(SqlValue::Integer(400), &|n| format!("status >= ?{n}")),
            Some(StatusFilter::Ok) => bind(SqlValue::Integer(400), &|n| format!("status < ?{n}")),
            None => {}
        }
        (terms.join(" AND "), values)
    }
}

/// One logged request, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    /// Its log id (also the cursor that pages past it).
    pub id: i64,
    /// When it arrived, RFC 3339 UTC.
    pub time: String,
    /// The client's label (`token-<hash>` or its name), when it had one.
    pub client: Option<String>,
    /// The model the client asked for.
    pub model: String,
    /// What the policies resolved it to, when they changed it.
    pub route: Option<String>,
    /// `provider/model` that answered.
    pub answered_by: Option<String>,
    /// The status the client got.
    pub status: u16,
    /// Every upstream attempt, in order: provider, model, key fingerprint,
    /// upstream status, reason, latency.
    pub attempts: serde_json::Value,
    /// Prompt tokens, once known.
    pub tokens_in: Option<u64>,
    /// Completion tokens, once known.
    pub tokens_out: Option<u64>,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Tags the policies set, as `[name, value]` pairs.
    pub tags: serde_json::Value,
    /// Until the answer's head was ready, in ms.
    pub latency_ms: u64,
}

/// Up to `limit` rows matching `filter` with ids under `before`, newest
/// first.
pub fn page(
    conn: &Connection,
    filter: &Filter,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<LoggedRequest>> {
    let (clause, values) = filter.clause(before);
    let sql = format!(
        "SELECT id, at_ms, client, model, route, answered_by, status, attempts, tokens_in, tokens_out, stream, tags,
                latency_ms
         FROM requests WHERE {clause} ORDER BY id DESC LIMIT {limit}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(values), |r| {
        let json = |text: String| serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok(LoggedRequest {
            id: r.get(0)?,
            time: rfc3339(r.get(1)?),
            client: r.get(2)?,
            model: r.get(3)?,
            route: r.get(4)?,
            answered_by: r.get(5)?,
            status: r.get(6)?,
            attempts: json(r.get(7)?),
            tokens_in: r.get::<_, Option<i64>>(8)?.map(unsigned),
            tokens_out: r.get::<_, Option<i64>>(9)?.map(unsigned),
            stream: r.get(10)?,
            tags: json(r.get(11)?),
            latency_ms: unsigned(r.get(12)?),
        })
    })?;
    rows.collect()
}

/// What a usage group is split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dimension {
    /// The provider that answered (`null` when none did).
    Provider,
    /// The model the client asked for.
    Model,
    /// The client's label.
    Client,
    /// The UTC day it arrived.
    Day,
    /// The UTC hour it arrived (`2026-12-01T13:00Z`): the dashboard's
    /// requests-over-time chart.
    Hour,
}

impl Dimension {
    /// Its name in `by=`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Model => "model",
            Self::Client => "client",
            Self::Day => "day",
            Self::Hour => "hour",
        }
    }

    /// The dimension named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Provider, Self::Model, Self::Client, Self::Day, Self::Hour].into_iter().find(|d| d.name() == name)
    }
}

/// The sums of one group.
#[derive(Debug, Clone, Serialize)]
pub struct UsageGroup {
    /// The group's value of each `by` dimension, by name.
    #[serde(flatten)]
    pub key: BTreeMap<&'static str, Option<String>>,
    /// Requests logged.
    pub requests: u64,
    /// Those the client got a success (below 400) for.
    pub succeeded: u64,
    /// `succeeded / requests`.
    pub success_rate: f64,
    /// Requests that took more than one attempt.
    pub fallbacks: u64,
    /// Prompt tokens (of requests whose usage is known).
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Median time to the answer's head, ms (nearest rank).
    pub latency_p50_ms: u64,
    /// 95th percentile, ms (nearest rank).
    pub latency_p95_ms: u64,
    /// What the tokens would have cost at paid list prices, in US
    /// dollars: the requests answered by a model with a known price
    /// (`price` in the catalog or config); `null` when none was.
    pub saved_usd: Option<f64>,
    /// Requests with tokens whose answering model has no known price (not
    /// in `saved_usd`).
    pub unpriced: u64,
}

/// What `usage` read.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// The groups, ordered by their key.
    pub groups: Vec<UsageGroup>,
    /// Rows summed.
    pub scanned: usize,
    /// More rows matched than [`USAGE_SCAN_CAP`]: the oldest were left out.
    pub capped: bool,
}

/// The rows matching `filter`'s times (newest first, at most `cap`),
/// summed per value of `by`; `price` knows what a `provider/model` costs.
pub fn usage(
    conn: &Connection,
    filter: &Filter,
    by: &[Dimension],
    cap: usize,
    price: &dyn Fn(&str) -> Option<Price>,
) -> rusqlite::Result<Usage> {
    let (clause, values) = filter.clause(None);
    let sql = format!(
        "SELECT at_ms, client, model, answered_by, status, json_array_length(attempts), tokens_in, tokens_out,
                latency_ms
         FROM requests WHERE {clause} ORDER BY id DESC LIMIT {}",
        cap.saturating_add(1)
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut groups: BTreeMap<Vec<Option<String>>, Sums> = BTreeMap::new();
    let mut scanned = 0;
    let mut capped = false;
    while let Some(r) = rows.next()? {
        if scanned == cap {
            capped = true;
            break;
        }
        scanned += 1;
        let answered_by: Option<String> = r.get(3)?;
        let key = by
            .iter()
            .map(|d| match d {
                Dimension::Provider => {
                    answered_by.as_deref().map(|a| a.split_once('/').map_or(a, |(p, _)| p).to_owned())
                }
                Dimension::Model => r.get(2).ok(),
                Dimension::Client => r.get::<_, Option<String>>(1).ok().flatten(),
                Dimension::Day => Some(day(r.get(0).unwrap_or(0))),
                Dimension::Hour => Some(hour(r.get(0).unwrap_or(0))),
            })
            .collect();
        let sums = groups.entry(key).or_default();
        let status: i64 = r.get(4)?;
        sums.requests += 1;
        sums.succeeded += u64::from(status < 400);
        sums.fallbacks += u64::from(r.get::<_, Option<i64>>(5)?.unwrap_or(0) > 1);
        let tokens_in = r.get::<_, Option<i64>>(6)?.map_or(0, unsigned);
        let tokens_out = r.get::<_, Option<i64>>(7)?.map_or(0, unsigned);
        sums.tokens_in = sums.tokens_in.saturating_add(tokens_in);
        sums.tokens_out = sums.tokens_out.saturating_add(tokens_out);
        if tokens_in + tokens_out > 0 {
            match answered_by.as_deref().and_then(price) {
                Some(p) => *sums.saved.get_or_insert(0.0) += p.cost(tokens_in, tokens_out),
                None => sums.unpriced += 1,
            }
        }
        sums.latencies.push(unsigned(r.get(8)?));
    }
    let groups = groups
        .into_iter()
        .map(|(values, mut s)| {
            s.latencies.sort_unstable();
            UsageGroup {
                key: by.iter().map(|d| d.name()).zip(values).collect(),
                requests: s.requests,
                succeeded: s.succeeded,
                success_rate: s.succeeded as f64 / s.requests.max(1) as f64,
                fallbacks: s.fallbacks,
                tokens_in: s.tokens_in,
                tokens_out: s.tokens_out,
                latency_p50_ms: nearest_rank(&s.latencies, 50),
                latency_p95_ms: nearest_rank(&s.latencies, 95),
                // Cents are the useful precision; float sums leave noise below.
                saved_usd: s.saved.map(|usd| (usd * 1e6).round() / 1e6),
                unpriced: s.unpriced,
            }
        })
        .collect();
    Ok(Usage { groups, scanned, capped })
}

/// A group's running sums.
#[derive(Default)]
struct Sums {
    requests: u64,
    succeeded: u64,
    fallbacks: u64,
    tokens_in: u64,
    tokens_out: u64,
    latencies: Vec<u64>,
    saved: Option<f64>,
    unpriced: u64,
}

/// The `p`th percentile of `sorted` by nearest rank (0 when empty): the
/// smallest value with at least p% of the values at or under it.
fn nearest_rank(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Wall-clock ms as RFC 3339 UTC.
fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

/// The UTC day of wall-clock ms, `YYYY-MM-DD`.
fn day(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// The UTC hour of wall-clock ms, `YYYY-MM-DDTHH:00Z`.
fn hour(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%dT%H:00Z").to_string()).unwrap_or_default()
}

/// One logged request as `freeway replay` runs it again: what the
/// policies looked at. Columns an older freeway did not write are `None`.
#[derive(Debug, Clone)]
pub struct ReplayRow {
    /// Its log id.
    pub id: i64,
    /// When it arrived, wall-clock ms.
    pub at_ms: i64,
    /// The model the client asked for.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// Tags the policies set (the tier `auto` was classified into...).
    pub tags: Vec<(String, String)>,
    /// `chat` or `embeddings`.
    pub operation: Option<String>,
    /// The prompt's token estimate.
    pub prompt_estimate: Option<u64>,
    /// Tools were offered.
    pub has_tools: Option<bool>,
    /// A session id was sent.
    pub has_session: Option<bool>,
    /// The messages as JSON (`state.log_bodies`).
    pub messages: Option<String>,
    /// The messages were too large to keep.
    pub messages_dropped: bool,
}

/// Calls `each` with every logged request from `since_ms` on, oldest
/// first, one row in memory at a time (a week of logged bodies would not
/// fit); `each` returning false stops. Reads a file of any schema: the
/// columns replay added (schema 4) read as `None` on an older one.
pub fn replay_rows(conn: &Connection, since_ms: i64, mut each: impl FnMut(ReplayRow) -> bool) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let extra = if version >= 4 {
        "operation, prompt_estimate, has_tools, has_session, messages, messages_dropped"
    } else {
        "NULL, NULL, NULL, NULL, NULL, NULL"
    };
    let sql = format!("SELECT id, at_ms, model, stream, tags, {extra} FROM requests WHERE id >= ?1 ORDER BY id");
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([since_ms.saturating_mul(1000)])?;
    while let Some(r) = rows.next()? {
        let tags: String = r.get(4)?;
        let row = ReplayRow {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            model: r.get(2)?,
            stream: r.get(3)?,
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            operation: r.get(5)?,
            prompt_estimate: r.get::<_, Option<i64>>(6)?.map(unsigned),
            has_tools: r.get(7)?,
            has_session: r.get(8)?,
            messages: r.get(9)?,
            messages_dropped: r.get::<_, Option<bool>>(10)?.unwrap_or(false),
        };
        if !each(row) {
            break;
        }
    }
    Ok(())
}

/// The providers tried by requests logged from `since_ms` on (they were
/// enabled then, whether or not their model list was saved).
pub fn attempted_providers(conn: &Connection, since_ms: i64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT value ->> 'provider' FROM requests, json_each(requests.attempts)
         WHERE requests.id >= ?1 AND value ->> 'provider' IS NOT NULL",
    )?;
    let names = stmt.query_map([since_ms.saturating_mul(1000)], |r| r.get(0))?;
    names.collect()
}

/// Counts are stored as SQLite's signed integers, never negative.
fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_an_older_schema_replay_on_what_they_have() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(crate::state::db::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO requests (id, at_ms, model, status, attempts, stream, tags, latency_ms)
                 VALUES (5000000, 5000, 'auto', 200, '[]', 1, '[[\"tier\",\"auto:lite\"]]', 3)",
                [],
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let mut rows = Vec::new();
        replay_rows(&conn, 0, |r| {
            rows.push(r);
            true
        })
        .unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.model.as_str(), r.stream, r.at_ms), ("auto", true, 5000));
        assert_eq!(r.tags, vec![("tier".to_owned(), "auto:lite".to_owned())]);
        assert!(r.operation.is_none() && r.prompt_estimate.is_none() && r.has_tools.is_none() && r.messages.is_none());
        let mut later = 0;
        replay_rows(&conn, 5001, |_| {
            later += 1;
            true
        })
        .unwrap();
        assert_eq!(later, 0, "the range starts at `since`");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(nearest_rank(&v, 50), 10);
        assert_eq!(nearest_rank(&v, 95), 19);
        assert_eq!(nearest_rank(&[7], 95), 7);
        assert_eq!(nearest_rank(&[], 50), 0);
    }
}
