//! The embedded database (SQLite) that keeps state across restarts: usage
//! counters per second, cooldowns with their wall-clock end, rejected keys
//! by fingerprint, session pins, the last model list of each provider, the
//! request log, and stored Responses-API turns ([`super::responses`]).
//!
//! Only the write-behind thread ([`super::journal`]) writes, in one
//! transaction per batch; the request path never touches the file. The
//! one exception is the key vault ([`super::vault`]), which writes the
//! rare operator changes to its own table on its own connection. The
//! schema is versioned with SQLite's `user_version`: [`MIGRATIONS`] brings
//! an older file up to date, a file from a newer freeway is refused (it may
//! hold what this version cannot read), and a file that is not a database
//! or fails its integrity check is moved aside and reported: the gateway
//! starts on a fresh file instead of failing at every start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// Each step takes the schema from version `i` to `i + 1`; the schema's
/// version is the number of steps applied. Public so tests can make a file
/// of an earlier version.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE usage (
         provider TEXT NOT NULL, fingerprint INTEGER NOT NULL,
         model TEXT NOT NULL,          -- '' for a key's limits shared by all its models
         second INTEGER NOT NULL,      -- wall-clock second since the Unix epoch
         requests INTEGER NOT NULL, tokens INTEGER NOT NULL,
         PRIMARY KEY (provider, fingerprint, model, second)) WITHOUT ROWID;
     CREATE TABLE cooldowns (
         provider TEXT NOT NULL, fingerprint INTEGER NOT NULL, model TEXT NOT NULL,
         until_ms INTEGER NOT NULL, reason TEXT NOT NULL,
         PRIMARY KEY (provider, fingerprint, model)) WITHOUT ROWID;
     CREATE TABLE invalid_keys (
         provider TEXT NOT NULL, fingerprint INTEGER NOT NULL, since_ms INTEGER NOT NULL,
         PRIMARY KEY (provider, fingerprint)) WITHOUT ROWID;
     CREATE TABLE pins (
         session TEXT PRIMARY KEY, target TEXT NOT NULL, until_ms INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE models (
         provider TEXT PRIMARY KEY, listed_ms INTEGER NOT NULL, models TEXT NOT NULL) WITHOUT ROWID;
     -- id: wall-clock ms x 1000 + a sequence, so the rows are in time order
     -- and a time range is an id range (no second index to keep per row).
     CREATE TABLE requests (
         id INTEGER PRIMARY KEY,
         at_ms INTEGER NOT NULL, client TEXT, model TEXT NOT NULL, route TEXT,
         answered_by TEXT, status INTEGER NOT NULL, attempts TEXT NOT NULL,
         tokens_in INTEGER, tokens_out INTEGER, stream INTEGER NOT NULL,
         tags TEXT NOT NULL, latency_ms INTEGER NOT NULL);",
    // 2: stored Responses-API turns, for `previous_response_id`. Rows are
    // appended in rowid order and found by a 64-bit hash of their id (ids
    // are random: a text key would be written all over its index); the
    // conversations index starts with when a conversation started, so new
    // turns append to it too. Pruning reads that index, never the rows.
    "CREATE TABLE responses (
         key INTEGER NOT NULL,         -- the first 64 bits of the id's SHA-256
         id TEXT NOT NULL,
         earlier TEXT,                 -- the response this turn continued
         root TEXT NOT NULL,           -- the conversation's first response
         started_ms INTEGER NOT NULL,  -- when the conversation started, wall clock
         until_ms INTEGER NOT NULL,    -- wall-clock end of this turn's retention
         size INTEGER NOT NULL,        -- bytes of request + response
         request BLOB NOT NULL, response BLOB NOT NULL);
     CREATE UNIQUE INDEX responses_by_key ON responses (key);
     CREATE INDEX responses_by_conversation ON responses (started_ms, root, until_ms, size);",
    // 3: provider keys added through the admin API (`super::vault`), each
    // sealed with AES-256-GCM under the master key; the fingerprint is in
    // the clear so a row that no longer opens can still be listed and
    // deleted.
    "CREATE TABLE provider_keys (
         provider TEXT NOT NULL, fingerprint INTEGER NOT NULL,
         sealed BLOB NOT NULL,         -- the 96-bit nonce, then the sealed key and its tag
         disabled INTEGER NOT NULL DEFAULT 0,
         added_ms INTEGER NOT NULL,    -- wall clock
         PRIMARY KEY (provider, fingerprint)) WITHOUT ROWID;",
    // 4: what `freeway replay` runs the policies on when no body is kept:
    // the kind of request, the prompt's token estimate, whether tools were
    // offered and a session id sent; and, with `state.log_bodies`, the
    // messages (JSON) or a mark that they were too large to keep. Older
    // rows keep NULLs and replay on what they have.
    "ALTER TABLE requests ADD COLUMN operation TEXT;
     ALTER TABLE requests ADD COLUMN prompt_estimate INTEGER;
     ALTER TABLE requests ADD COLUMN has_tools INTEGER;
     ALTER TABLE requests ADD COLUMN has_session INTEGER;
     ALTER TABLE requests ADD COLUMN messages TEXT;
     ALTER TABLE requests ADD COLUMN messages_dropped INTEGER;",
];

/// The schema version this freeway writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file was written by a newer freeway.
    #[error(
        "{path}: the state database has schema version {found}, newer than this freeway's {SCHEMA_VERSION}; \
         run the newer freeway, or point state.path at another file"
    )]
    Newer {
        /// The file.
        path: String,
        /// Its version.
        found: i64,
    },
    /// Anything else (permissions, a full disk, a folder that cannot be made).
    #[error("{path}: {message}")]
    Other {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// An open state database, and what opening it found.
pub struct Db {
    pub(super) conn: Connection,
    /// Where a corrupt file was moved, when one was.
    pub moved_aside: Option<PathBuf>,
}

impl Db {
    /// Opens (or creates) the database at `path`, bringing its schema up
    /// to date. A corrupt file is moved aside and a fresh one created.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let other = |message: String| OpenError::Other { path: path.display().to_string(), message };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| other(format!("cannot create its folder: {e}")))?;
        }
        match Self::open_checked(path) {
            Ok(conn) => Ok(Self { conn, moved_aside: None }),
            Err(Broken::Newer(found)) => Err(OpenError::Newer { path: path.display().to_string(), found }),
            Err(Broken::Io(message)) => Err(other(message)),
            Err(Broken::Corrupt(why)) => {
                let aside = aside_name(path);
                std::fs::rename(path, &aside)
                    .map_err(|e| other(format!("is corrupt ({why}) and cannot be moved aside: {e}")))?;
                for suffix in ["-wal", "-shm"] {
                    let mut side = path.as_os_str().to_owned();
                    side.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(side));
                }
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    "the state database is corrupt ({why}); it was moved aside and a new one started"
                );
                let conn = Self::open_checked(path).map_err(|e| other(e.to_string()))?;
                Ok(Self { conn, moved_aside: Some(aside) })
            }
        }
    }

    fn open_checked(path: &Path) -> Result<Connection, Broken> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(Broken::from_sqlite)?;
        // Another instance (or `freeway status` reading) may hold a lock for
        // a moment; wait rather than fail.
        conn.busy_timeout(Duration::from_secs(5)).map_err(Broken::from_sqlite)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(Broken::from_sqlite)?;
        if version > SCHEMA_VERSION {
            return Err(Broken::Newer(version));
        }
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(Broken::from_sqlite)?;
        if check != "ok" {
            return Err(Broken::Corrupt(check));
        }
        // WAL: the writer never blocks readers; NORMAL sync: a killed
        // process loses nothing committed (only a power cut may lose the
        // last transactions), at a fraction of FULL's fsyncs.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(Broken::from_sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(Broken::from_sqlite)?;
        migrate(&conn, version).map_err(Broken::from_sqlite)?;
        Ok(conn)
    }

    /// Deletes what no window needs any more: usage older than `usage_ms`,
    /// cooldowns and pins that ended, requests older than `log_ms`, stored
    /// conversations whose retention ended.
    pub fn prune(&self, now_ms: i64, usage_ms: i64, log_ms: i64) -> rusqlite::Result<()> {
        let second = now_ms.saturating_sub(usage_ms) / 1000;
        self.conn.execute("DELETE FROM usage WHERE second < ?1", params![second])?;
        self.conn.execute("DELETE FROM cooldowns WHERE until_ms <= ?1", params![now_ms])?;
        self.conn.execute("DELETE FROM pins WHERE until_ms <= ?1", params![now_ms])?;
        let oldest_id = now_ms.saturating_sub(log_ms).saturating_mul(1000);
        self.conn.execute("DELETE FROM requests WHERE id < ?1", params![oldest_id])?;
        super::responses::expire(&self.conn, now_ms)?;
        Ok(())
    }

    /// Reads a value from the requests table's newest row (tests, status).
    pub fn requests_logged(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
    }

    /// The newest model list saved for `provider`.
    pub fn models_of(&self, provider: &str) -> rusqlite::Result<Option<String>> {
        self.conn.query_row("SELECT models FROM models WHERE provider = ?1", params![provider], |r| r.get(0)).optional()
    }
}

/// What kept a file from opening.
enum Broken {
    Newer(i64),
    Corrupt(String),
    Io(String),
}

impl Broken {
    fn from_sqlite(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Self::Corrupt(e.to_string()),
            _ => Self::Io(e.to_string()),
        }
    }
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Newer(v) => write!(f, "schema version {v} is newer than {SCHEMA_VERSION}"),
            Self::Corrupt(why) => write!(f, "corrupt: {why}"),
            Self::Io(why) => f.write_str(why),
        }
    }
}

/// Applies the migrations after `from`, each in its own transaction with
/// the version it reaches.
fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    for (i, step) in MIGRATIONS.iter().enumerate().skip(usize::try_from(from).unwrap_or(0)) {
        let to = i as i64 + 1;
        conn.execute_batch(&format!("BEGIN; {step}; PRAGMA user_version = {to}; COMMIT;"))?;
        tracing::info!(version = to, "state database schema migrated");
    }
    Ok(())
}

/// `freeway.db` → `freeway.db.corrupt-<unix seconds>` (a new name each time).
fn aside_name(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{secs}"));
    let mut candidate = PathBuf::from(&name);
    let mut n = 1;
    while candidate.exists() {
        let mut next = name.clone();
        next.push(format!("-{n}"));
        candidate = PathBuf::from(next);
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_the_current_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/freeway.db");
        let db = Db::open(&path).unwrap();
        let v: i64 = db.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        drop(db);
        assert!(Db::open(&path).unwrap().moved_aside.is_none());
    }

    #[test]
    fn a_file_of_the_first_schema_migrates_and_keeps_what_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freeway.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute("INSERT INTO pins (session, target, until_ms) VALUES ('s', 'p/m', 9)", []).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert!(db.moved_aside.is_none());
        let v: i64 = db.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let pins: i64 = db.conn.query_row("SELECT count(*) FROM pins", [], |r| r.get(0)).unwrap();
        assert_eq!(pins, 1, "the migration kept the rows");
        assert_eq!(super::super::responses::held(&db.conn).unwrap(), 0, "the new table is there, empty");
    }

    #[test]
    fn a_newer_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freeway.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let e = Db::open(&path).err().unwrap().to_string();
        assert!(e.contains("newer than this freeway"), "{e}");
        assert!(path.exists());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freeway.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let db = Db::open(&path).unwrap();
        let aside = db.moved_aside.clone().unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), vec![0x5a; 8192], "the broken file is kept for the operator");
        assert_eq!(db.requests_logged().unwrap(), 0);
    }
}
