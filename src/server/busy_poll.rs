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
//! path ([`Serving`]: a request arrived, its answer is ready). While its
//! window is open it yields to the runtime in a loop; each yield makes the
//! runtime poll the I/O driver without waiting and run whatever became
//! ready. Outside its window it sleeps until the next mark.
//!
//! It polls only at low concurrency: while its thread serves at most one
//! request, on at most [`FEW_CONNECTIONS`] connections. With more, the
//! thread's wake-ups already serve several requests each, and on a machine
//! short of cores the CPU it would burn is taken from the work (measured
//! at concurrency 16 on 2 cores: polling regardless cost a third more CPU
//! per request and a fifth of the throughput; polling whenever one request
//! was in flight still cost a quarter more CPU). A thread without a spinner
//! (the caller's runtime of `server::serve`) ignores the marks.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The most connections a thread may serve and still poll.
pub const FEW_CONNECTIONS: usize = 2;

/// A worker's spinner, as its thread sees it.
struct Spinner {
    window: Duration,
    /// The connections its thread serves.
    connections: Arc<AtomicUsize>,
    /// The last mark.
    marked: Option<Instant>,
    /// Requests arrived and not yet answered.
    serving: usize,
    /// The spinner's task, asleep until the next mark.
    asleep: Option<Waker>,
    /// Rounds of polling so far (for tests).
    rounds: u64,
}

impl Spinner {
    /// Low concurrency: polling may pay.
    fn quiet(&self) -> bool {
        self.serving <= 1 && self.connections.load(Ordering::Relaxed) <= FEW_CONNECTIONS
    }

    fn open(&self) -> bool {
        self.quiet() && self.marked.is_some_and(|at| at.elapsed() < self.window)
    }

    /// Opens the window from now, when the thread is quiet: the spinner's
    /// task to wake, if it sleeps. A busier thread reads no clock and
    /// wakes nothing.
    fn mark(&mut self) -> Option<Waker> {
        if !self.quiet() {
            return None;
        }
        self.marked = Some(Instant::now());
        self.asleep.take()
    }
}

thread_local! {
    static SPINNER: RefCell<Option<Spinner>> = const { RefCell::new(None) };
}

/// A request on this thread from its arrival until its answer is ready
/// (or it is dropped unanswered): each end marks the thread's spinner, if
/// it has one, which then polls for its window from that moment.
pub struct Serving(());

impl Serving {
    /// A request arrived.
    pub fn arrived() -> Self {
        mark(|spinner| spinner.serving += 1);
        Self(())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        mark(|spinner| spinner.serving = spinner.serving.saturating_sub(1));
    }
}

/// `f` on this thread's spinner: `None` when the thread has none (or is
/// being torn down).
fn with_spinner<R>(f: impl FnOnce(&mut Spinner) -> R) -> Option<R> {
    SPINNER.try_with(|spinner| spinner.borrow_mut().as_mut().map(f)).ok().flatten()
}

/// Counts with `change` and marks this thread's spinner; its task is woken
/// once the spinner is let go.
fn mark(change: impl FnOnce(&mut Spinner)) {
    let asleep = with_spinner(|spinner| {
        change(spinner);
        spinner.mark()
    });
    if let Some(task) = asleep.flatten() {
        task.wake();
    }
}

/// Rounds of polling this thread's spinner has made.
#[cfg(test)]
fn rounds() -> u64 {
    with_spinner(|spinner| spinner.rounds).unwrap_or(0)
}

/// The spinner of the current thread's runtime (a current-thread runtime:
/// its yields are this thread's polls), serving `connections`. Runs until
/// its task is dropped with the runtime; the thread then has no spinner
/// again.
pub async fn spin(window: Duration, connections: Arc<AtomicUsize>) {
    struct Installed;
    impl Drop for Installed {
        fn drop(&mut self) {
            // Not in `with_spinner`: the spinner is taken out, not lent.
            let _ = SPINNER.try_with(|spinner| spinner.borrow_mut().take());
        }
    }
    SPINNER.with(|spinner| {
        *spinner.borrow_mut() =
            Some(Spinner { window, connections, marked: None, serving: 0, asleep: None, rounds: 0 });
    });
    let _installed = Installed;
    loop {
        // Asleep until a mark opens the window.
        std::future::poll_fn(|cx| {
            let open = with_spinner(|spinner| {
                let open = spinner.open();
                if !open {
                    spinner.asleep = Some(cx.waker().clone());
                }
                open
            });
            if open == Some(true) { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
        // Polling while it stays open (each mark moves its end).
        while with_spinner(|spinner| {
            spinner.rounds += 1;
            spinner.open()
        }) == Some(true)
        {
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
    fn a_request_opens_a_window_of_polling_as_does_its_answer_unless_the_thread_is_busier() {
        current_thread().block_on(async {
            let window = Duration::from_millis(100);
            let connections = Arc::new(AtomicUsize::new(1));
            let spinner = tokio::spawn(spin(window, connections.clone()));
            tokio::task::yield_now().await;
            // Installed, and asleep: no mark yet.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let before = rounds();
            assert_eq!(before, 0, "the spinner polled before any mark");

            // A request arrives: polling.
            let request = Serving::arrived();
            let marked = Instant::now();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let during = rounds();
            assert!(during > before + 1, "a request's arrival opened no polling: {before} → {during} rounds");

            // Past the window it sleeps again: no more rounds.
            tokio::time::sleep((window * 2).saturating_sub(marked.elapsed())).await;
            let after = rounds();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(rounds(), after, "the spinner kept polling after its window");

            // The answer wakes it.
            drop(request);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let answered = rounds();
            assert!(answered > after + 1, "an answer did not wake the spinner");

            // Two requests in flight: no polling, whatever arrives.
            tokio::time::sleep(window * 2).await;
            let (first, second) = (Serving::arrived(), Serving::arrived());
            let idle = rounds();
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(rounds() <= idle + 1, "the spinner polled with two requests in flight");
            // One answered, one left: polling again.
            drop(first);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let polling = rounds();
            assert!(polling > idle + 2, "down to one request, the spinner did not poll");
            drop(second);

            // Many connections: no polling.
            connections.store(FEW_CONNECTIONS + 1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let many = rounds();
            drop(Serving::arrived());
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(rounds() <= many + 1, "the spinner polled for a thread serving many connections");
            connections.store(FEW_CONNECTIONS, Ordering::Relaxed);
            drop(Serving::arrived());
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(rounds() > many + 2, "back to few connections, the spinner did not poll");

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
        drop(Serving::arrived());
        assert_eq!(rounds(), 0);
        SPINNER.with(|spinner| assert!(spinner.borrow().is_none()));
    }
}
