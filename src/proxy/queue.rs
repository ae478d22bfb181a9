//! The admission queue: a request that found no capacity, where some frees
//! within `dispatch.queue_timeout` of its arrival, waits for it in line
//! instead of getting a 429 at once.
//!
//! One line per requested model name, first come first served: whoever is
//! at the head of a line holds its gate, sleeps until the soonest capacity
//! the last try named, tries again, and lets the gate go as soon as an
//! attempt is admitted (not when the answer is back: the next in line
//! need not wait for an upstream's latency). A head that is refused again
//! keeps its place. The line is bounded (`dispatch.queue_max` waiting
//! requests in all); a request that would wait past its deadline, or finds
//! the line full, gets the 429 with the soonest `Retry-After` at once; a
//! client that disconnects leaves the line (its future is dropped, and with
//! it its place and, at the head, the gate).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::dispatch::{self, Outcome};
use super::{Context, Proxy};
use crate::errors::ApiError;
use crate::metrics::Metrics;

/// The head of a line tries again this long after the soonest capacity
/// the last try named: `Retry-After` is whole seconds, so a window may free
/// up to a second after it says, and a try that comes early is a refused
/// call that costs quota (the pool benchmark counted them).
const WAKE_MARGIN: Duration = Duration::from_secs(1);

/// Distinct model names with a line of their own, at most (names are
/// resolved routes and models, so this is a backstop).
const LINES: u64 = 10_000;

/// The lines, and how many wait in them.
pub struct Queue {
    timeout: Duration,
    max: usize,
    waiting: AtomicUsize,
    lines: Cache<String, Arc<Line>>,
    /// Set when the gateway stops: waiters leave with their 429.
    closed: tokio::sync::watch::Sender<bool>,
}

/// One model name's line: its gate (held by the head), and how many wait.
struct Line {
    gate: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Counts a request in a line while it lives.
struct InLine(Arc<Line>);

impl InLine {
    fn new(line: Arc<Line>) -> Self {
        line.waiting.fetch_add(1, Ordering::AcqRel);
        Self(line)
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place in line: counted while it lives.
struct Place<'a> {
    queue: &'a Queue,
    metrics: &'a Metrics,
    outcome: &'static str,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queue_waiting(-1);
        // Dropped before it said how it ended: the client went away.
        self.metrics.queue_outcome(self.outcome);
    }
}

impl Queue {
    /// Requests wait at most `timeout` after their arrival (zero: no
    /// queue), `max` at a time.
    pub fn new(timeout: Duration, max: u32) -> Self {
        Self {
            timeout,
            max: max as usize,
            waiting: AtomicUsize::new(0),
            lines: Cache::builder().max_capacity(LINES).time_to_idle(Duration::from_secs(600)).build(),
            closed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Ends every wait, and every wait to come.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once the queue is closed.
    async fn closing(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// How a wait that did not get its turn ended: the deadline, or the
    /// gateway stopping.
    fn ended(&self) -> &'static str {
        if self.is_closed() { "shutdown" } else { "timeout" }
    }

    /// `wait`'s output, unless `deadline` passes or the queue closes first.
    async fn within<T>(&self, deadline: Instant, wait: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = tokio::time::timeout_at(deadline.into(), wait) => out.ok(),
            () = self.closing() => None,
        }
    }

    /// A place in line, when there is room.
    fn join<'a>(&'a self, metrics: &'a Metrics) -> Option<Place<'a>> {
        let joined =
            self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).is_ok();
        if !joined {
            metrics.queue_outcome("full");
            return None;
        }
        metrics.queue_waiting(1);
        Some(Place { queue: self, metrics, outcome: "gone" })
    }

    fn line(&self, model: &str) -> Arc<Line> {
        self.lines.get_with_by_ref(model, || {
            Arc::new(Line { gate: Arc::new(Semaphore::new(1)), waiting: AtomicUsize::new(0) })
        })
    }

    /// Whether requests for `model` are waiting in line.
    fn busy(&self, model: &str) -> bool {
        self.lines.get(model).is_some_and(|l| l.waiting.load(Ordering::Acquire) > 0)
    }
}

/// How long `outcome` says to wait for capacity, when capacity is why it
/// failed.
fn capacity_wait(outcome: &Outcome) -> Option<Duration> {
    match &outcome.result {
        Err(ApiError::RateLimited { retry_after, .. }) => Some(*retry_after),
        _ => None,
    }
}

/// Dispatches `ctx`'s request, waiting in line for capacity when the first
/// try found none and some frees before the request's deadline.
pub async fn dispatch(proxy: &Proxy, ctx: &Context) -> Outcome {
    let queue = &proxy.queue;
    let model = &ctx.request.model;
    // While others wait for this model, a newcomer goes behind them rather
    // than trying first: capacity that frees is theirs.
    let open = !queue.timeout.is_zero() && !queue.is_closed();
    let behind = open && queue.busy(model);
    let first = if behind {
        None
    } else {
        let first = dispatch::run(proxy, &ctx.request, &ctx.candidates, &mut None).await;
        let Some(wait) = capacity_wait(&first) else { return first };
        if !open || Instant::now() + wait + WAKE_MARGIN > ctx.started + queue.timeout {
            return first;
        }
        Some(first)
    };
    let deadline = ctx.started + queue.timeout;
    let Some(mut place) = queue.join(&proxy.metrics) else {
        return match first {
            Some(first) => first,
            None => dispatch::run(proxy, &ctx.request, &ctx.candidates, &mut None).await,
        };
    };
    let line = queue.line(model);
    let _in_line = InLine::new(line.clone());
    let mut outcome_at = Instant::now();
    let mut gate: Option<OwnedSemaphorePermit> = None;
    let mut outcome = match first {
        Some(first) => first,
        // Behind others: the first try is made at the head of the line.
        None => {
            match queue.within(deadline, line.gate.clone().acquire_owned()).await {
                Some(Ok(permit)) => gate = Some(permit),
                _ => {
                    place.outcome = queue.ended();
                    return dispatch::run(proxy, &ctx.request, &ctx.candidates, &mut None).await;
                }
            }
            let outcome = dispatch::run(proxy, &ctx.request, &ctx.candidates, &mut gate).await;
            outcome_at = Instant::now();
            outcome
        }
    };
    loop {
        if gate.is_none() {
            match queue.within(deadline, line.gate.clone().acquire_owned()).await {
                Some(Ok(permit)) => gate = Some(permit),
                // The deadline passed while others were ahead (or the
                // gateway is stopping).
                _ => {
                    place.outcome = queue.ended();
                    return aged(outcome, outcome_at);
                }
            }
        }
        let Some(wait) = capacity_wait(&outcome) else {
            place.outcome = "served";
            return outcome;
        };
        let at = outcome_at + wait + WAKE_MARGIN;
        if at > deadline {
            place.outcome = "timeout";
            return aged(outcome, outcome_at);
        }
        if queue.within(at, std::future::pending::<()>()).await.is_none() && queue.is_closed() {
            place.outcome = "shutdown";
            return aged(outcome, outcome_at);
        }
        outcome = dispatch::run(proxy, &ctx.request, &ctx.candidates, &mut gate).await;
        outcome_at = Instant::now();
        if capacity_wait(&outcome).is_none() {
            place.outcome = "served";
            return outcome;
        }
    }
}

/// `outcome` as of now: a 429's `Retry-After` was computed `since`.
fn aged(mut outcome: Outcome, since: Instant) -> Outcome {
    if let Err(ApiError::RateLimited { retry_after, .. }) = &mut outcome.result {
        *retry_after = retry_after.saturating_sub(since.elapsed());
    }
    outcome
}
