//! Hot reload: a watcher on the policies folder recompiles the whole
//! pipeline when a file changes, is added, deleted or renamed over (an
//! editor's atomic save), or when the folder itself is replaced.
//!
//! The folder is watched, not the files: after an atomic save a watch on
//! the file goes silent. Its parent is watched too, so replacing the whole
//! folder is seen; the watch on the folder is re-armed after every change.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};

use crate::gateway::WeakGateway;

/// Events within this window are one change (an editor writes, renames,
/// touches).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches `dir` and reloads the gateway's policies on every change, on a
/// thread of its own, until the gateway is dropped.
pub fn spawn(gateway: WeakGateway, dir: PathBuf) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(DEBOUNCE, tx).map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    arm(debouncer.watcher(), &dir)?;
    std::thread::Builder::new()
        .name("freeway-policies".to_owned())
        .spawn(move || {
            for result in rx {
                let Some(gateway) = gateway.upgrade() else { return };
                match result {
                    Ok(events) if events.iter().any(|e| concerns(&e.path, &dir)) => {
                        gateway.reload_policies();
                        // The folder may be a new one under the same name.
                        let _ = debouncer.watcher().unwatch(&dir);
                        if let Err(e) = arm(debouncer.watcher(), &dir) {
                            tracing::warn!("{e}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "policy watcher error"),
                }
            }
        })
        .map_err(|e| format!("cannot start the policy watcher: {e}"))?;
    Ok(())
}

fn arm(watcher: &mut dyn Watcher, dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Errors here are harmless (it may be watched already).
        let _ = watcher.watch(parent, RecursiveMode::NonRecursive);
    }
    if dir.is_dir() {
        watcher.watch(dir, RecursiveMode::NonRecursive).map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// A change inside the folder, or to the folder itself.
fn concerns(path: &Path, dir: &Path) -> bool {
    path == dir || path.parent() == Some(dir) || path.starts_with(dir)
}
