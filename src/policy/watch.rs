//! Hot reload: a watcher on the policies folder calls back when a file
//! changes, is added, deleted or renamed over (an editor's atomic save), or
//! when the folder itself is replaced.
//!
//! The folder is watched, not the files: after an atomic save a watch on
//! the file goes silent. Its parent is watched too, so replacing the whole
//! folder is seen; the watch on the folder is re-armed after every change.
//!
//! The [`PolicyWatcher`] owns the file watch; dropping it (with its
//! gateway) stops the watch and ends the thread that waits for events.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

/// Events within this window are one change (an editor writes, renames,
/// touches).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A running watch on a policies folder.
pub struct PolicyWatcher {
    _debouncer: Arc<Mutex<Debouncer<RecommendedWatcher>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PolicyWatcher {
    /// Whether the thread that handles changes is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The name of its thread (`fw-policies-N`).
    pub fn thread_name(&self) -> Option<&str> {
        self.thread.as_ref().and_then(|t| t.thread().name())
    }
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        // The debouncer goes with the last strong handle (ours): its event
        // sender closes and the thread's loop ends. Do not join: a reload
        // may be running on it, and it ends by itself.
        self.thread.take();
    }
}

/// Watches `dir` and calls `on_change` on every change, on a thread of its
/// own, until the returned watcher is dropped (or `on_change` returns
/// `false`).
pub fn spawn(dir: PathBuf, on_change: impl Fn() -> bool + Send + 'static) -> Result<PolicyWatcher, String> {
    let (tx, rx) = mpsc::channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(DEBOUNCE, tx).map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    arm(debouncer.watcher(), &dir)?;
    let debouncer = Arc::new(Mutex::new(debouncer));
    let weak: Weak<Mutex<Debouncer<RecommendedWatcher>>> = Arc::downgrade(&debouncer);
    // A name of its own per watcher (at most 15 bytes, what Linux keeps),
    // so an operator, or a test, can tell which watcher a thread is.
    static WATCHERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = WATCHERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000;
    let thread = std::thread::Builder::new()
        .name(format!("fw-policies-{n}"))
        .spawn(move || {
            for result in rx {
                match result {
                    Ok(events) if events.iter().any(|e| concerns(&e.path, &dir)) => {
                        if !on_change() {
                            return;
                        }
                        // The folder may be a new one under the same name.
                        let Some(debouncer) = weak.upgrade() else { return };
                        let mut debouncer = debouncer.lock().unwrap_or_else(|e| e.into_inner());
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
    Ok(PolicyWatcher { _debouncer: debouncer, thread: Some(thread) })
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
