//! Hot reload: a watcher on the policies folder calls back when a file
//! changes, is added, deleted or renamed over (an editor's atomic save), or
//! when the folder itself is replaced.
//!
//! The folder is watched, not the files: after an atomic save a watch on
//! the file goes silent. Its parent is watched too, so replacing the whole
//! folder is seen; the watch on the folder is re-armed after every change.
//! Reading a file is not a change: inotify reports opens and reads too,
//! and the reload reads every file, so counting those would make each
//! reload set off the next one, for ever.
//!
//! The [`PolicyWatcher`] owns the file watch; dropping it (with its
//! gateway) stops the watch and ends the thread that waits for events.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Events within this window are one change (an editor writes, renames,
/// touches).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A running watch on a policies folder.
pub struct PolicyWatcher {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
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
        // The watcher goes with the last strong handle (ours): its event
        // handler, and the sender in it, go too, and the thread's loop
        // ends. Do not join: a reload may be running on it.
        self.thread.take();
    }
}

/// Watches `dir` and calls `on_change` once per burst of changes, on a
/// thread of its own, until the returned watcher is dropped (or
/// `on_change` returns `false`).
pub fn spawn(dir: PathBuf, on_change: impl Fn() -> bool + Send + 'static) -> Result<PolicyWatcher, String> {
    let (tx, rx) = mpsc::channel::<()>();
    let watched = dir.clone();
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| match result {
        Ok(event) if changes(&event, &watched) => {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "policy watcher error"),
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    arm(&mut watcher, &dir)?;
    let watcher = Arc::new(Mutex::new(watcher));
    let weak: Weak<Mutex<RecommendedWatcher>> = Arc::downgrade(&watcher);
    // A name of its own per watcher (at most 15 bytes, what Linux keeps),
    // so an operator, or a test, can tell which watcher a thread is.
    static WATCHERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = WATCHERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000;
    let thread = std::thread::Builder::new()
        .name(format!("fw-policies-{n}"))
        .spawn(move || {
            while rx.recv().is_ok() {
                // The rest of the burst.
                loop {
                    match rx.recv_timeout(DEBOUNCE) {
                        Ok(()) => {}
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                // The folder may be a new one under the same name: watch it
                // again first, then reload. A change while the watch is
                // down is read by this reload; one after it sends an event.
                // (Re-arming after the reload lost a save made in between.)
                {
                    let Some(watcher) = weak.upgrade() else { return };
                    let mut watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = watcher.unwatch(&dir);
                    if let Err(e) = arm(&mut *watcher, &dir) {
                        tracing::warn!("{e}");
                    }
                }
                if !on_change() {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the policy watcher: {e}"))?;
    Ok(PolicyWatcher { _watcher: watcher, thread: Some(thread) })
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

/// A change inside the folder, or to the folder itself: anything but an
/// access (an open, a read, a close after reading).
fn changes(event: &notify::Event, dir: &Path) -> bool {
    !matches!(event.kind, EventKind::Access(_)) && event.paths.iter().any(|p| concerns(p, dir))
}

/// A path inside the folder, or the folder itself.
fn concerns(path: &Path, dir: &Path) -> bool {
    path == dir || path.parent() == Some(dir) || path.starts_with(dir)
}
