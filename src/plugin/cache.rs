//! Compiled components, cached by content: in memory for the process, and
//! on disk across restarts (compiling a component takes ~200 ms, loading
//! a compiled one ~0.1 ms).

use std::collections::HashMap;
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

#[allow(unsafe_code)]
fn from_disk(engine: &Engine, file: &Path) -> Option<Component> {
    if !file.is_file() {
        return None;
    }
    // SAFETY: wasmtime runs a deserialized artifact as native code without
    // checking it. Only files this code wrote are loaded: the cache folder
    // is created private to the user (0700), names are content hashes, and
    // wasmtime itself refuses artifacts from another version or config.
    match unsafe { Component::deserialize_file(engine, file) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::debug!(file = %file.display(), error = %e, "stale plugin cache entry; recompiling");
            None
        }
    }
}

fn to_disk(component: &Component, file: &Path) {
    let Some(dir) = file.parent() else { return };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot cache a compiled plugin; it is compiled again next start");
    }
}
