//! `server.busy_poll`: a worker thread that has just had something to do
//! keeps polling its connections for a while instead of going to sleep.
//!
//! At low concurrency a proxied request wakes its worker twice: once when
//! the client's request arrives and once when the upstream's reply does.
//! Each wake-up of a sleeping thread costs the waker an interrupt to the
//! sleeping CPU and the sleeper the time to come back, tens of
//! microseconds on a virtual machine, where a halted CPU is woken through
//! the host. A worker that is still polling when the bytes arrive reads
//! them at once. The price is the CPU burnt while polling: up to the
//! window after each request arrives and after each answer is ready.
//!
//! One spinner task per worker runtime (`spin`), marked by the request
//! path (`active`). While its window is open it yields to the runtime in a
//! loop; each yield makes the runtime poll the I/O driver without waiting
//! and run whatever became ready. Outside its window it sleeps until the
//! next mark. A thread without a spinner (the caller's runtime of
//! `server::serve`) ignores the marks.

use std::cell::RefCell;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// A worker's spinner, as its thread sees it.
struct Spinner {
    window: Duration,
    /// The last mark.
    marked: Option<Instant>,
    /// The spinner's task, asleep until the next mark.
    asleep: Option<Waker>,
    /// Rounds of polling so far (for tests).
    rounds: u64,
}

impl Spinner {
    fn open(&self) -> bool {
        self.marked.is_some_and(|at| at.elapsed() < self.window)
    }
}

thread_local! {
    static SPINNER: RefCell<Option<Spinner>> = const { RefCell::new(None) };
}

/// Something happened on this thread (a request arrived, an answer is
/// ready): its spinner, if it has one, polls for its window from now.
pub fn active() {
    SPINNER.with(|spinner| {
        if let Some(spinner) = spinner.borrow_mut().as_mut() {
            spinner.marked = Some(Instant::now());
            if let Some(task) = spinner.asleep.take() {
                task.wake();
            }
        }
    });
}

/// Rounds of polling this thread's spinner has made.
#[cfg(test)]
fn rounds() -> u64 {
    SPINNER.with(|spinner| spinner.borrow().as_ref().map_or(0, |s| s.rounds))
}

/// The spinner of the current thread's runtime (a current-thread runtime:
/// its yields are this thread's polls). Runs until its task is dropped
/// with the runtime; the thread then has no spinner again.
pub async fn spin(window: Duration) {
    struct Installed;
    impl Drop for Installed {
        fn drop(&mut self) {
            SPINNER.with(|spinner| spinner.borrow_mut().take());
        }
    }
    SPINNER.with(|spinner| {
        *spinner.borrow_mut() = Some(Spinner { window, marked: None, asleep: None, rounds: 0 });
    });
    let _installed = Installed;
    loop {
        // Asleep until a mark opens the window.
        std::future::poll_fn(|cx| {
            SPINNER.with(|spinner| {
                let mut spinner = spinner.borrow_mut();
                let Some(spinner) = spinner.as_mut() else { return Poll::Pending };
                if spinner.open() {
                    Poll::Ready(())
                } else {
                    spinner.asleep = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        // Polling while it stays open (each mark moves its end).
        while SPINNER.with(|spinner| {
            let mut spinner = spinner.borrow_mut();
            let Some(spinner) = spinner.as_mut() else { return false };
            spinner.rounds += 1;
            spinner.open()
        }) {
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn a_mark_opens_a_window_of_polling_that_closes_on_its_own_and_reopens_on_the_next_mark() {
        current_thread().block_on(async {
            let window = Duration::from_millis(100);
            let spinner = tokio::spawn(spin(window));
            tokio::task::yield_now().await;
            // Installed, and asleep: no mark yet.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let before = rounds();
            assert_eq!(before, 0, "the spinner polled before any mark");

            active();
            let marked = Instant::now();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let during = rounds();
            assert!(during > before + 1, "a mark opened no polling: {before} → {during} rounds");

            // Past the window it sleeps again: no more rounds.
            tokio::time::sleep((window * 2).saturating_sub(marked.elapsed())).await;
            let after = rounds();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(rounds(), after, "the spinner kept polling after its window");

            // The next mark wakes it.
            active();
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(rounds() > after + 1, "a second mark did not wake the spinner");

            // A runtime serving while it spins still runs its other tasks.
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move { tx.send(7).expect("receiver") });
            assert_eq!(rx.await.expect("sender"), 7);

            spinner.abort();
            let _ = spinner.await;
            assert_eq!(rounds(), 0, "the thread kept a spinner after its task ended");
        });
    }

    #[test]
    fn marks_on_a_thread_without_a_spinner_change_nothing() {
        active();
        assert_eq!(rounds(), 0);
        SPINNER.with(|spinner| assert!(spinner.borrow().is_none()));
    }
}
