//! Provider keys added through the admin API, kept in the state database
//! (table `provider_keys`, migration 3 of [`super::db`]) sealed with
//! AES-256-GCM: a random 96-bit nonce per row, and the provider's name and
//! the key's fingerprint as associated data, so a row copied to another
//! provider or fingerprint does not open. The key's text is never written
//! in the clear, never logged, never part of an error.
//!
//! The master key is `FREEWAY_MASTER_KEY` (exactly 64 hex digits), else a
//! key file `<db stem>.key` beside the database, created 0600 with
//! `create_new` the first time a key is stored (so two starts never
//! overwrite one another's). A row that does not open (another master key,
//! a damaged row) is listed as undecryptable and never used; it can be
//! deleted.
//!
//! Writes: the journal thread ([`super::journal`]) is the only other writer
//! of the file. Key changes do not go through it: they are rare operator
//! actions that must be on disk before the API answers 201, while the
//! journal is a lossy, batched write-behind queue with no reply channel.
//! The vault holds a second connection instead, with a busy timeout (the
//! journal's transactions last milliseconds, once per 500 ms) and
//! `synchronous = FULL`, so a committed key survives a power cut too. Its
//! calls block: the gateway makes them on tokio's blocking pool.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OpenFlags, params};

use crate::config::Env;
use crate::secret::Secret;

/// The variable that holds the master key.
pub const MASTER_KEY_VAR: &str = "FREEWAY_MASTER_KEY";

/// Bytes of the master key (AES-256).
const MASTER_LEN: usize = 32;

/// Bytes of the GCM tag after each sealed key.
const TAG_LEN: usize = 16;

/// How long a key change waits for the journal's transaction to end.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One key as the database holds it.
#[derive(Clone)]
pub struct StoredKey {
    /// The provider it is for.
    pub provider: String,
    /// Its fingerprint (the first 64 bits of its SHA-256), as state knows it.
    pub fingerprint: u64,
    /// The key; `None` when its row does not open (another master key, a
    /// damaged row).
    pub secret: Option<Secret>,
    /// Turned off by an operator: kept, not used.
    pub disabled: bool,
    /// When it was added (wall-clock ms since the Unix epoch).
    pub added_ms: i64,
}

/// Why a key could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// This provider already has a row for this fingerprint.
    #[error("this key is already stored for {0}")]
    Duplicate(String),
    /// The database, the key file or the random source failed.
    #[error("{0}")]
    Storage(String),
}

/// The encrypted key store of one state database.
pub struct Vault {
    conn: Mutex<Connection>,
    /// `None` until the key file is created (first key stored).
    master: Mutex<Option<[u8; MASTER_LEN]>>,
    /// Where the master key comes from, for messages: the variable or the file.
    source: String,
    /// The key file to create when there is no master key yet (`None` when
    /// it comes from the environment).
    key_file: Option<PathBuf>,
    rng: SystemRandom,
}

/// `FREEWAY_MASTER_KEY`'s key when it is set: `Err` names the variable
/// when it is not exactly 64 hex digits.
pub fn master_from_env(env: &Env) -> Result<Option<[u8; MASTER_LEN]>, String> {
    match env.get_nonempty(MASTER_KEY_VAR) {
        None => Ok(None),
        Some(text) => parse_master(&text)
            .map(Some)
            .ok_or_else(|| format!("{MASTER_KEY_VAR} must be exactly 64 hex digits (32 bytes); it is not")),
    }
}

/// The key file beside `db`: `freeway.db` → `freeway.key`.
pub fn key_file_for(db: &Path) -> PathBuf {
    db.with_extension("key")
}

impl Vault {
    /// The vault of the (already opened and migrated) database at `db`,
    /// with the master key from `env` or the key file beside it. `Err`
    /// says what to fix: a malformed variable, a key file readable by
    /// others or not 64 hex digits, a database that cannot be opened.
    pub fn open(db: &Path, env: &Env) -> Result<Self, String> {
        let (master, source, key_file) = match master_from_env(env)? {
            Some(master) => (Some(master), MASTER_KEY_VAR.to_owned(), None),
            None => {
                let file = key_file_for(db);
                let master = read_key_file(&file)?;
                (master, file.display().to_string(), Some(file))
            }
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let opened = Connection::open_with_flags(db, flags).and_then(|conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            Ok(conn)
        });
        let conn = opened.map_err(|e| format!("{}: the key store cannot be opened: {e}", db.display()))?;
        Ok(Self { conn: Mutex::new(conn), master: Mutex::new(master), source, key_file, rng: SystemRandom::new() })
    }

    /// Where the master key comes from: the variable's name or the file.
    pub fn master_source(&self) -> &str {
        &self.source
    }

    /// Every stored key, oldest first, opened with the master key (a row
    /// that does not open has no secret).
    pub fn load(&self) -> Result<Vec<StoredKey>, String> {
        let master = *self.master.lock().unwrap_or_else(|e| e.into_inner());
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let read = || -> rusqlite::Result<Vec<StoredKey>> {
            let mut statement = conn.prepare(
                "SELECT provider, fingerprint, sealed, disabled, added_ms FROM provider_keys \
                 ORDER BY added_ms, provider, fingerprint",
            )?;
            let rows = statement.query_map([], |row| {
                let provider: String = row.get(0)?;
                let fingerprint = row.get::<_, i64>(1)? as u64;
                let sealed: Vec<u8> = row.get(2)?;
                let secret = master.as_ref().and_then(|m| unseal(m, &provider, fingerprint, &sealed)).map(Secret::new);
                Ok(StoredKey { provider, fingerprint, secret, disabled: row.get(3)?, added_ms: row.get(4)? })
            })?;
            rows.collect()
        };
        read().map_err(|e| format!("the stored provider keys cannot be read: {e}"))
    }

    /// Seals `key` and stores it for `provider`, on disk before this
    /// returns; its fingerprint.
    pub fn add(&self, provider: &str, key: &str, added_ms: i64) -> Result<u64, VaultError> {
        let master = self.master_for_sealing().map_err(VaultError::Storage)?;
        let fingerprint = super::fingerprint(key);
        let sealed = seal(&master, &self.rng, provider, fingerprint, key).map_err(VaultError::Storage)?;
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let inserted = conn.execute(
            "INSERT INTO provider_keys (provider, fingerprint, sealed, disabled, added_ms) VALUES (?1, ?2, ?3, 0, ?4)",
            params![provider, fingerprint as i64, sealed, added_ms],
        );
        match inserted {
            Ok(_) => Ok(fingerprint),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                Err(VaultError::Duplicate(provider.to_owned()))
            }
            Err(e) => Err(VaultError::Storage(format!("the key could not be stored: {e}"))),
        }
    }

    /// Turns a stored key off or on; whether there was such a row.
    pub fn set_disabled(&self, provider: &str, fingerprint: u64, disabled: bool) -> Result<bool, String> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "UPDATE provider_keys SET disabled = ?3 WHERE provider = ?1 AND fingerprint = ?2",
            params![provider, fingerprint as i64, disabled],
        )
        .map(|n| n > 0)
        .map_err(|e| format!("the key could not be changed: {e}"))
    }

    /// Deletes a stored key; whether there was such a row.
    pub fn remove(&self, provider: &str, fingerprint: u64) -> Result<bool, String> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "DELETE FROM provider_keys WHERE provider = ?1 AND fingerprint = ?2",
            params![provider, fingerprint as i64],
        )
        .map(|n| n > 0)
        .map_err(|e| format!("the key could not be deleted: {e}"))
    }

    /// The master key, creating the key file the first time one is needed.
    fn master_for_sealing(&self) -> Result<[u8; MASTER_LEN], String> {
        let mut master = self.master.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = *master {
            return Ok(key);
        }
        let Some(file) = &self.key_file else {
            return Err(format!("no master key ({MASTER_KEY_VAR} is not set)"));
        };
        let created = create_key_file(file, &self.rng)?;
        *master = Some(created);
        Ok(created)
    }
}

/// 64 hex digits → 32 bytes; `None` for anything else.
fn parse_master(text: &str) -> Option<[u8; MASTER_LEN]> {
    let digits = text.as_bytes();
    if digits.len() != MASTER_LEN * 2 {
        return None;
    }
    let mut key = [0u8; MASTER_LEN];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key file's master key, if the file exists; `Err` when it is open to
/// others or does not hold 64 hex digits (one trailing newline allowed).
fn read_key_file(file: &Path) -> Result<Option<[u8; MASTER_LEN]>, String> {
    let mut opened = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: the master key file cannot be read: {e}", file.display())),
    };
    check_private(&opened, file)?;
    let mut text = String::new();
    opened
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: the master key file cannot be read: {e}", file.display()))?;
    let digits = text.strip_suffix('\n').unwrap_or(&text);
    parse_master(digits).map(Some).ok_or_else(|| {
        format!(
            "{}: the master key file must hold exactly 64 hex digits; it does not (restore it, or set \
             {MASTER_KEY_VAR})",
            file.display()
        )
    })
}

/// A key file others may read is refused: whoever reads it reads every key.
#[cfg(unix)]
fn check_private(opened: &std::fs::File, file: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = opened
        .metadata()
        .map_err(|e| format!("{}: the master key file cannot be read: {e}", file.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: the master key file has permissions {:o}; it must be readable by its owner only (chmod 600)",
            file.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_opened: &std::fs::File, _file: &Path) -> Result<(), String> {
    Ok(())
}

/// Creates the key file (0600, never over an existing one) with a fresh
/// random key; when another start created it first, its key.
fn create_key_file(file: &Path, rng: &SystemRandom) -> Result<[u8; MASTER_LEN], String> {
    let mut key = [0u8; MASTER_LEN];
    rng.fill(&mut key).map_err(|_| "no random bytes for a master key".to_owned())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut created = match options.open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_key_file(file)?
                .ok_or_else(|| format!("{}: the master key file vanished while it was read", file.display()));
        }
        Err(e) => return Err(format!("{}: the master key file cannot be created: {e}", file.display())),
    };
    created
        .write_all(format!("{}\n", to_hex(&key)).as_bytes())
        .and_then(|()| created.sync_all())
        .map_err(|e| format!("{}: the master key file cannot be written: {e}", file.display()))?;
    tracing::info!(file = %file.display(), "master key file created for provider keys added through the admin API");
    Ok(key)
}

/// What binds a sealed key to its row.
fn associated(provider: &str, fingerprint: u64) -> String {
    format!("freeway provider key\0{provider}\0{fingerprint:016x}")
}

fn cipher(master: &[u8; MASTER_LEN]) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, master).ok().map(LessSafeKey::new)
}

/// The nonce, then `key` sealed and its tag.
fn seal(
    master: &[u8; MASTER_LEN],
    rng: &SystemRandom,
    provider: &str,
    fingerprint: u64,
    key: &str,
) -> Result<Vec<u8>, String> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| "no random bytes for a nonce".to_owned())?;
    let cipher = cipher(master).ok_or_else(|| "the master key is not an AES-256 key".to_owned())?;
    let mut sealed = key.as_bytes().to_vec();
    cipher
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated(provider, fingerprint).as_bytes()),
            &mut sealed,
        )
        .map_err(|_| "the key could not be sealed".to_owned())?;
    let mut row = nonce.to_vec();
    row.extend_from_slice(&sealed);
    Ok(row)
}

/// The key a row holds, when it opens under `master` for this provider
/// and fingerprint (and is the key the fingerprint names).
fn unseal(master: &[u8; MASTER_LEN], provider: &str, fingerprint: u64, row: &[u8]) -> Option<String> {
    if row.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, sealed) = row.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = sealed.to_vec();
    let opened = cipher(master)?
        .open_in_place(nonce, Aad::from(associated(provider, fingerprint).as_bytes()), &mut buffer)
        .ok()?;
    let key = std::str::from_utf8(opened).ok()?.to_owned();
    (super::fingerprint(&key) == fingerprint).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: [u8; MASTER_LEN] = [7; MASTER_LEN];

    #[test]
    fn a_sealed_key_opens_only_for_its_own_provider_fingerprint_and_master() {
        let rng = SystemRandom::new();
        let key = "gsk-a-provider-key-0123456789";
        let fp = crate::state::fingerprint(key);
        let row = seal(&MASTER, &rng, "groq", fp, key).unwrap();
        assert_eq!(unseal(&MASTER, "groq", fp, &row).as_deref(), Some(key));
        assert_eq!(unseal(&MASTER, "cerebras", fp, &row), None, "moved to another provider");
        assert_eq!(unseal(&MASTER, "groq", fp ^ 1, &row), None, "moved to another fingerprint");
        assert_eq!(unseal(&[8; MASTER_LEN], "groq", fp, &row), None, "another master key");
        let mut damaged = row.clone();
        damaged[NONCE_LEN + 2] ^= 0x40;
        assert_eq!(unseal(&MASTER, "groq", fp, &damaged), None, "a damaged row");
        assert_ne!(seal(&MASTER, &rng, "groq", fp, key).unwrap(), row, "a fresh nonce per row");
    }

    #[test]
    fn master_keys_are_exactly_sixty_four_hex_digits() {
        assert_eq!(parse_master(&"0a".repeat(32)), Some([10; MASTER_LEN]));
        assert_eq!(parse_master(&"AB".repeat(32)), Some([0xab; MASTER_LEN]));
        for bad in ["".to_owned(), "0a".repeat(31), "0a".repeat(33), format!("{}+1", "0a".repeat(31)), "zz".repeat(32)]
        {
            assert_eq!(parse_master(&bad), None, "{bad}");
        }
        let env = Env::from_map([(MASTER_KEY_VAR, "abc")]);
        assert!(master_from_env(&env).unwrap_err().contains(MASTER_KEY_VAR));
    }
}
