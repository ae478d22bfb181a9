//! Stored Responses-API responses, kept for a later `previous_response_id`:
//! each turn (the request and the response as they were sent) with the
//! response it continued, so a conversation is a chain of rows, linear in
//! its length (a row never repeats the turns before it).
//!
//! In the database a turn also names its conversation (its first response,
//! `root`, and when that was made): a conversation is kept, and dropped, as
//! one, while its newest turn is within `state.responses_retention`, so a
//! chain never loses its start while its end can still be named. The table is also bounded in
//! bytes ([`KEPT_BYTES`]): past it, the conversations least recently
//! continued leave first.
//!
//! In Redis (`state.redis`) each turn is one key, `freeway:resp:<id>`, set
//! with the retention as its expiry; storing a turn renews the expiry of
//! the turns before it, for the same reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Bytes of stored turns the database keeps at most (requests and
/// responses as sent): tens of thousands of turns at the few KB a chat
/// turn takes, a month of a busy free-tier day's traffic. On disk a row
/// takes whole pages, up to about twice its bytes (rows just over half a
/// 4 KB page): at most about a quarter of a 1 GB free-tier volume.
pub const KEPT_BYTES: i64 = 128 << 20;

/// One stored turn of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// The response's id (`resp_…`).
    pub id: Arc<str>,
    /// The response this turn continued (its `previous_response_id`).
    pub earlier: Option<Arc<str>>,
    /// The id of the conversation's first response.
    pub root: Arc<str>,
    /// When the conversation's first response was made, wall-clock ms.
    pub started_ms: i64,
    /// Until when it may be named, wall-clock ms.
    pub until_ms: i64,
    /// The request, as the client sent it.
    pub request: Bytes,
    /// The response, as the client received it (whole; a stream's final
    /// response object).
    pub response: Bytes,
}

/// What looking a stored response up gives: the turn, nothing (unknown,
/// expired, or this store keeps none), or why what was found cannot be
/// read (a corrupt row).
pub type Lookup<'a> = Pin<Box<dyn Future<Output = Result<Option<StoredResponse>, String>> + Send + 'a>>;

/// A lookup that finds nothing.
pub fn nothing<'a>() -> Lookup<'a> {
    Box::pin(std::future::ready(Ok(None)))
}

/// The row key of response `id`: the first 64 bits of its SHA-256 (as
/// SQLite's signed integer), stable across versions.
fn key(id: &str) -> i64 {
    super::fingerprint(id) as i64
}

/// Writes `responses` (in the write-behind's transaction); the bytes added.
pub(super) fn insert(conn: &Connection, responses: &[StoredResponse]) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO responses (key, id, earlier, root, started_ms, until_ms, size, request, response)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut added = 0i64;
    for r in responses {
        let size = i64::try_from(r.request.len() + r.response.len()).unwrap_or(i64::MAX);
        stmt.execute(params![
            key(&r.id),
            &*r.id,
            r.earlier.as_deref(),
            &*r.root,
            r.started_ms,
            r.until_ms,
            size,
            &r.request[..],
            &r.response[..]
        ])?;
        added = added.saturating_add(size);
    }
    Ok(added)
}

/// The stored response `id`, if the table holds it.
pub(super) fn read(conn: &Connection, id: &str) -> Result<Option<StoredResponse>, String> {
    let row = conn
        .query_row(
            "SELECT id, earlier, root, started_ms, until_ms, request, response FROM responses WHERE key = ?1",
            params![key(id)],
            |r| {
                Ok(StoredResponse {
                    id: Arc::from(r.get::<_, String>(0)?),
                    earlier: r.get::<_, Option<String>>(1)?.map(Arc::from),
                    root: Arc::from(r.get::<_, String>(2)?),
                    started_ms: r.get(3)?,
                    until_ms: r.get(4)?,
                    request: Bytes::from(r.get::<_, Vec<u8>>(5)?),
                    response: Bytes::from(r.get::<_, Vec<u8>>(6)?),
                })
            },
        )
        .optional();
    // A column of the wrong type is a damaged row, not a failed request.
    let row = row.map_err(|e| format!("the stored row cannot be read: {e}"))?;
    // Another id with the same hash (one chance in 2^64) is not this one.
    Ok(row.filter(|r| &*r.id == id))
}

/// Bytes the table holds.
pub(super) fn held(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(sum(size), 0) FROM responses", [], |r| r.get(0))
}

/// Deletes the conversations whose newest turn ended before `now_ms`.
pub(super) fn expire(conn: &Connection, now_ms: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM responses WHERE (started_ms, root) IN
             (SELECT started_ms, root FROM responses GROUP BY started_ms, root HAVING max(until_ms) <= ?1)",
        params![now_ms],
    )
}

/// When the table holds more than `cap` bytes ([`KEPT_BYTES`]), deletes
/// whole conversations, the least recently continued first, until it holds
/// at most nine tenths of it (so pruning then waits for a good deal of new
/// turns, not the next one); the bytes it holds after.
pub(super) fn bound(conn: &Connection, bytes: i64, cap: i64) -> rusqlite::Result<i64> {
    if bytes <= cap {
        return Ok(bytes);
    }
    let mut to_free = bytes - cap / 10 * 9;
    let mut conversations = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT started_ms, root, sum(size) FROM responses GROUP BY started_ms, root ORDER BY max(until_ms)",
        )?;
        let mut rows = stmt.query([])?;
        while to_free > 0
            && let Some(row) = rows.next()?
        {
            conversations.push((row.get::<_, i64>(0)?, row.get::<_, String>(1)?));
            to_free -= row.get::<_, i64>(2)?;
        }
    }
    let mut stmt = conn.prepare_cached("DELETE FROM responses WHERE started_ms = ?1 AND root = ?2")?;
    for (started_ms, root) in &conversations {
        stmt.execute(params![started_ms, root])?;
    }
    let dropped = conversations.len();
    tracing::info!(conversations = dropped, "stored responses passed their bound; the oldest were dropped");
    held(conn)
}

/// The Redis key of the stored response `id`.
pub(super) fn redis_key(id: &str) -> String {
    format!("freeway:resp:{id}")
}

/// What a Redis value says before the request and response bytes.
#[derive(Serialize, Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    earlier: Option<&'a str>,
    root: &'a str,
    started_ms: i64,
    until_ms: i64,
    /// Bytes of the request (the response follows it).
    request: usize,
}

/// A turn as a Redis value: a one-line JSON header, then the request and
/// the response as they are (no escaping, no copy of either into JSON).
pub(super) fn encode(response: &StoredResponse) -> Vec<u8> {
    let header = Header {
        earlier: response.earlier.as_deref(),
        root: &response.root,
        started_ms: response.started_ms,
        until_ms: response.until_ms,
        request: response.request.len(),
    };
    // Ids are plain strings: the header always serialises.
    let mut value = serde_json::to_vec(&header).unwrap_or_default();
    value.reserve(1 + response.request.len() + response.response.len());
    value.push(b'\n');
    value.extend_from_slice(&response.request);
    value.extend_from_slice(&response.response);
    value
}

/// The turn `id` from its Redis value.
pub(super) fn decode(id: &str, value: &[u8]) -> Result<StoredResponse, String> {
    let bad = |why: &str| format!("the value in Redis cannot be read: {why}");
    let newline = memchr::memchr(b'\n', value).ok_or_else(|| bad("no header"))?;
    let header: Header<'_> = serde_json::from_slice(&value[..newline]).map_err(|e| bad(&e.to_string()))?;
    let body = &value[newline + 1..];
    if header.request > body.len() {
        return Err(bad("shorter than its header says"));
    }
    let (request, response) = body.split_at(header.request);
    Ok(StoredResponse {
        id: Arc::from(id),
        earlier: header.earlier.map(Arc::from),
        root: Arc::from(header.root),
        started_ms: header.started_ms,
        until_ms: header.until_ms,
        request: Bytes::copy_from_slice(request),
        response: Bytes::copy_from_slice(response),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(id: &str, earlier: Option<&str>, root: &str, until_ms: i64, size: usize) -> StoredResponse {
        StoredResponse {
            id: Arc::from(id),
            earlier: earlier.map(Arc::from),
            root: Arc::from(root),
            started_ms: 0,
            until_ms,
            request: Bytes::from(vec![b'q'; size / 2]),
            response: Bytes::from(vec![b'a'; size - size / 2]),
        }
    }

    /// A fresh database (and its folder, removed when dropped).
    fn table() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::db::Db::open(&dir.path().join("t.db")).unwrap();
        (dir, db.conn)
    }

    #[test]
    fn a_turn_reads_back_as_written() {
        let (_dir, conn) = table();
        let t = turn("resp_2", Some("resp_1"), "resp_1", 5_000, 10);
        assert_eq!(insert(&conn, std::slice::from_ref(&t)).unwrap(), 10);
        assert_eq!(read(&conn, "resp_2").unwrap(), Some(t));
        assert_eq!(read(&conn, "resp_3").unwrap(), None);
        assert_eq!(held(&conn).unwrap(), 10);
    }

    #[test]
    fn a_conversation_is_kept_while_its_newest_turn_is() {
        let (_dir, conn) = table();
        let old = turn("a1", None, "a1", 1_000, 10);
        let new = turn("a2", Some("a1"), "a1", 9_000, 10);
        let other = turn("b1", None, "b1", 2_000, 10);
        insert(&conn, &[old, new, other]).unwrap();
        assert_eq!(expire(&conn, 5_000).unwrap(), 1, "only the conversation that ended");
        assert!(read(&conn, "a1").unwrap().is_some(), "the start of a live conversation stays");
        assert!(read(&conn, "b1").unwrap().is_none());
    }

    #[test]
    fn past_the_bound_the_least_recently_continued_conversations_leave() {
        let (_dir, conn) = table();
        let turns: Vec<StoredResponse> =
            (0..5).map(|i| turn(&format!("r{i}"), None, &format!("r{i}"), 1_000 + i64::from(i), 1000)).collect();
        let added = insert(&conn, &turns).unwrap();
        assert_eq!(bound(&conn, added, 4000).unwrap(), 3000, "down to nine tenths of the cap or under");
        assert!(read(&conn, "r0").unwrap().is_none() && read(&conn, "r1").unwrap().is_none());
        assert!(read(&conn, "r4").unwrap().is_some() && read(&conn, "r3").unwrap().is_some());
        assert_eq!(bound(&conn, 3000, 4000).unwrap(), 3000, "within the bound, nothing leaves");
    }

    #[test]
    fn a_long_conversation_continued_lately_outlives_a_newer_short_one() {
        let (_dir, conn) = table();
        let turns = [
            turn("c1", None, "c1", 1_000, 1000),
            turn("s1", None, "s1", 2_000, 1000),
            turn("c2", Some("c1"), "c1", 9_000, 1000),
        ];
        let added = insert(&conn, &turns).unwrap();
        assert_eq!(bound(&conn, added, 2500).unwrap(), 2000);
        assert!(read(&conn, "s1").unwrap().is_none());
        assert!(read(&conn, "c1").unwrap().is_some(), "a conversation leaves whole or not at all");
    }

    #[test]
    fn a_redis_value_decodes_to_the_turn_and_damage_is_an_error() {
        let t = StoredResponse {
            request: Bytes::from_static(b"{\"input\":\"a\nb\"}"),
            response: Bytes::from_static(b"{\"output\":[]}"),
            ..turn("resp_9", Some("resp_8"), "resp_1", 77, 0)
        };
        let value = encode(&t);
        assert_eq!(decode("resp_9", &value).unwrap(), t);
        assert!(decode("resp_9", b"garbage").is_err());
        assert!(decode("resp_9", &value[..value.len() - 20]).is_err());
    }
}
