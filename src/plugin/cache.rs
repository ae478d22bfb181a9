//! Compiled components, cached by content: in memory for the process, and
//! on disk across restarts (compiling a component takes ~200 ms, loading
//! a compiled one ~1 ms).
//!
//! A compiled artifact is native code that wasmtime runs without checking
//! it, so whoever can write the cache folder can run code in the gateway.
//! An artifact is loaded only from a folder and a file owned by the user
//! running freeway and writable by no one else, opened without following
//! links; anything else is compiled again (and the reason logged once).
//! Artifacts are written to a new file under an unpredictable name, created
//! exclusively (never through a link planted in advance), then renamed.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

static MEMORY: OnceLock<Mutex<HashMap<String, Component>>> = OnceLock::new();

/// The cache key: the component's hash and the engine's compatibility hash
/// (wasmtime version, target, settings), so a stale artifact is never loaded.
fn key(engine: &Engine, wasm: &[u8]) -> String {
    let content = Sha256::digest(wasm);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let hex: String = content.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{:016x}", hasher.finish())
}

/// The default folder for compiled plugins: `$XDG_CACHE_HOME/freeway` or
/// `~/.cache/freeway`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("freeway").join("plugins"))
}

/// The compiled component for `wasm`: from memory, from `dir`, or compiled
/// now (and then stored in both).
pub fn load(engine: &Engine, wasm: &[u8], dir: Option<&Path>) -> Result<Component, String> {
    let key = key(engine, wasm);
    let memory = MEMORY.get_or_init(Default::default);
    let file = dir.map(|d| d.join(format!("{key}.cwasm")));
    let known = memory.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
    if let Some(found) = known {
        // Another gateway in this process compiled it; make sure the next
        // start finds it on disk too.
        if let Some(file) = file.as_deref().filter(|f| !f.is_file()) {
            to_disk(&found, file);
        }
        return Ok(found);
    }
    let component = match file.as_deref().and_then(|f| from_disk(engine, f)) {
        Some(component) => component,
        None => {
            let component = Component::new(engine, wasm).map_err(|e| format!("does not compile: {e:#}"))?;
            if let Some(file) = &file {
                to_disk(&component, file);
            }
            component
        }
    };
    memory.lock().unwrap_or_else(|e| e.into_inner()).insert(key, component.clone());
    Ok(component)
}

/// Logs why the disk cache is not used, once per path and process (every
/// plugin would otherwise repeat it at every start of a gateway).
fn warn_once(path: &Path, why: &str) {
    static WARNED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let mut warned = WARNED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if warned.insert(path.to_owned()) {
        tracing::warn!(path = %path.display(), "not using the compiled-plugin cache: {why}; plugins are compiled again");
    }
}

#[cfg(unix)]
fn from_disk(engine: &Engine, file: &Path) -> Option<Component> {
    use std::io::Read;

    let dir = file.parent()?;
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if let Err(why) = private::trusted(&meta) {
                warn_once(dir, &format!("the folder {why}"));
                return None;
            }
        }
        Err(_) => return None,
    }
    let mut opened = match private::open_existing(file) {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn_once(file, &format!("cannot open it without following links: {e}"));
            return None;
        }
    };
    // Checked on the open file, so that what is checked is what is read.
    let meta = opened.metadata().ok()?;
    if let Err(why) = private::trusted(&meta).and_then(|()| private::regular(&meta)) {
        warn_once(file, &format!("the file {why}"));
        return None;
    }
    let mut bytes = Vec::new();
    opened.read_to_end(&mut bytes).ok()?;
    // SAFETY: wasmtime runs a deserialized artifact as native code without
    // checking it. Only files that the user running freeway owns, that no
    // one else can write, in a folder no one else can write, are loaded:
    // those this code wrote (or the user put there); names are content
    // hashes, and wasmtime itself refuses artifacts from another version or
    // config.
    #[allow(unsafe_code)]
    match unsafe { Component::deserialize(engine, &bytes) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::debug!(file = %file.display(), error = %e, "stale plugin cache entry; recompiling");
            None
        }
    }
}

/// Without a way to check owners here, compiled plugins are not cached on
/// disk.
#[cfg(not(unix))]
fn from_disk(_engine: &Engine, _file: &Path) -> Option<Component> {
    None
}

#[cfg(unix)]
fn to_disk(component: &Component, file: &Path) {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    let Some(dir) = file.parent() else { return };
    let write = || -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let meta = std::fs::metadata(dir)?;
        if meta.permissions().mode() & 0o077 != 0 && private::owned(&meta).is_ok() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        private::trusted(&std::fs::metadata(dir)?).map_err(|why| std::io::Error::other(format!("the folder {why}")))?;
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        private::write_new(dir, file, &bytes)
    };
    if let Err(e) = write() {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot cache a compiled plugin; it is compiled again next start");
    }
}

#[cfg(not(unix))]
fn to_disk(_component: &Component, _file: &Path) {}

/// Files only the current user can have written.
#[cfg(unix)]
mod private {
    use std::fs::{File, Metadata, OpenOptions};
    use std::hash::BuildHasher;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    use std::path::Path;

    use rustix::fs::OFlags;

    /// Owned by the user this process runs as.
    pub fn owned(meta: &Metadata) -> Result<(), String> {
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() == me { Ok(()) } else { Err(format!("is owned by user {}, not {me}", meta.uid())) }
    }

    /// Owned by this user and writable by no one else.
    pub fn trusted(meta: &Metadata) -> Result<(), String> {
        owned(meta)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!("is writable by its group or others (mode {mode:o})"));
        }
        Ok(())
    }

    /// A plain file (not a folder, device or pipe).
    pub fn regular(meta: &Metadata) -> Result<(), String> {
        if meta.is_file() { Ok(()) } else { Err("is not a regular file".to_owned()) }
    }

    /// Opens an existing file for reading; a symbolic link fails.
    pub fn open_existing(file: &Path) -> std::io::Result<File> {
        OpenOptions::new().read(true).custom_flags(nofollow()).open(file)
    }

    /// Creates a new file that did not exist (`O_CREAT|O_EXCL|O_NOFOLLOW`),
    /// readable and writable by this user only.
    pub fn create_new(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(nofollow()).open(path)
    }

    fn nofollow() -> i32 {
        // The flag's bits fit an i32 on every unix (0x20000 on Linux).
        i32::try_from(OFlags::NOFOLLOW.bits()).unwrap_or(0)
    }

    /// A temporary name in `dir` beside `file` that another user cannot
    /// guess (SipHash under the process's random keys).
    pub fn temp_name(dir: &Path, file: &Path, attempt: u32) -> std::path::PathBuf {
        let random = std::hash::RandomState::new().hash_one((std::process::id(), attempt, file));
        let stem = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        dir.join(format!(".{stem}.{random:016x}.tmp"))
    }

    /// Writes `bytes` to a new file under an unpredictable name, then
    /// renames it to `file`, so that a reader never sees half a file.
    pub fn write_new(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
        for attempt in 0..8 {
            let tmp = temp_name(dir, file, attempt);
            let mut out = match create_new(&tmp) {
                Ok(out) => out,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let written = out.write_all(bytes).and_then(|()| out.sync_all()).and_then(|()| std::fs::rename(&tmp, file));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            return written;
        }
        Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary name"))
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::private;

    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let planted = dir.path().join("planted.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let error = private::create_new(&planted).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists, "{error}");
        // A dangling link too: O_EXCL must not create its target.
        let missing = dir.path().join("would-be-created");
        let dangling = dir.path().join("dangling.tmp");
        std::os::unix::fs::symlink(&missing, &dangling).unwrap();
        assert!(private::create_new(&dangling).is_err());
        assert!(!missing.exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }

    /// The name the cache used to write through, `<key>.tmp<pid>`, could be
    /// guessed: a link planted there overwrote whatever it pointed to.
    #[test]
    fn writing_the_cache_never_follows_a_link_planted_at_a_guessable_name() {
        let engine = crate::plugin::engine::engine().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let wasm = crate::plugin::BUILTIN[0].1;
        let file = dir.path().join(format!("{}.cwasm", super::key(engine, wasm)));
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, file.with_extension(format!("tmp{}", std::process::id()))).unwrap();
        super::load(engine, wasm, Some(dir.path())).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert!(std::fs::symlink_metadata(&file).unwrap().is_file(), "the artifact was not written");
    }

    #[test]
    fn a_cached_file_is_written_private_under_a_name_no_one_can_guess() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.cwasm");
        let names: Vec<_> = (0..2).map(|_| private::temp_name(dir.path(), &file, 0)).collect();
        assert_ne!(names[0], names[1], "the same name twice");
        private::write_new(dir.path(), &file, b"artifact").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"artifact");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["k.cwasm"], "a temporary file was left behind");
    }

    #[test]
    fn a_link_is_not_opened_for_loading() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.cwasm");
        std::fs::write(&real, "x").unwrap();
        let link = dir.path().join("link.cwasm");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(private::open_existing(&real).is_ok());
        assert!(private::open_existing(&link).is_err());
    }
}
