//! Relays an upstream SSE stream to the client as it arrives.
//!
//! The relay polls the upstream body directly from the client's response
//! body (no extra task, no channel per stream), runs each piece through the
//! provider's stream decoder and re-frames the OpenAI chunks as SSE. Before
//! the first byte reaches the client the dispatcher calls
//! [`Relay::first_event`] and [`Relay::prime`]: a stream that fails before
//! its first chunk can still fall back to another candidate. After that, a
//! failure ends the stream with one error event and no `[DONE]`.
//!
//! A relay may be given a [`Hold`] that keeps chunks back until they can
//! be checked (a request with tools: its tool calls, until they are
//! complete). Without one, each chunk is framed as it comes, unparsed.
//!
//! Being polled by the client's connection has one weakness: a client that
//! stops reading (an HTTP/2 window at 0, a full TCP buffer) stops the polls,
//! and with them the relay's own idle timer. The [`Watchdog`] covers that:
//! it sees every live relay, and cuts one that has waited on its client for
//! `stream_idle_timeout`, or that has run for `stream_max_duration`,
//! releasing the upstream connection and the plugin instance at once.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::errors::stream_error_event;
use crate::metrics::Metrics;
use crate::plugin::{PluginStream, StreamEvent, Usage};
use crate::secret::Redactor;

/// How a relayed stream ended, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOutcome {
    /// Chunks relayed.
    pub chunks: usize,
    /// Usage the upstream reported.
    pub usage: Option<Usage>,
    /// Why it ended early, if it did (redacted).
    pub error: Option<String>,
    /// The end was the client's doing: it went away, or stopped reading and
    /// was cut. Not an upstream failure.
    pub client_gone: bool,
}

type Observer = Box<dyn FnOnce(&StreamOutcome) + Send>;

/// How a relay is configured.
pub struct RelaySettings {
    /// Longest silence allowed from the upstream between two pieces, and
    /// longest wait for the client to take what is ready.
    pub idle: Duration,
    /// Removes the provider's secrets from every frame.
    pub redactor: Redactor,
    /// Drop the usage-only chunk (empty `choices`) the client did not ask
    /// for: the gateway asks for usage to settle budgets, the client may
    /// not expect it.
    pub drop_usage_only: bool,
    /// Keeps chunks back until they can be checked (`None`: every chunk
    /// goes as it comes).
    pub hold: Option<Box<dyn Hold>>,
}

/// Keeps a stream's chunks back until they can be checked, and says when
/// and how they go on.
pub trait Hold: Send {
    /// The stream's next chunk (its JSON): what to send now.
    fn push(&mut self, json: Bytes) -> Step;
    /// The stream ended well (`[DONE]`): what is still held, checked.
    fn end(&mut self) -> Step;
}

/// What a [`Hold`] lets through.
#[derive(Debug)]
pub enum Step {
    /// This chunk, now, as it came.
    Pass(Bytes),
    /// Nothing yet.
    Held,
    /// These chunks, in this order.
    Release(Vec<Bytes>),
    /// What is held must not reach the client: the stream fails, saying
    /// why. Before its first chunk, the attempt fails as `bad_tool_call`
    /// (and may fall back).
    Refuse(String),
}

/// Why a stream failed before anything reached its client.
#[derive(Debug)]
pub struct Unsent {
    /// What went wrong (redacted).
    pub reason: String,
    /// A [`Hold`] refused what the upstream sent (a tool call that cannot
    /// be mended), rather than the upstream failing.
    pub refused: bool,
}

/// What the watchdog may take away from a relay: the upstream body and the
/// decoder (with its plugin instance).
type Parts = (Incoming, PluginStream);

/// The part of a relay the watchdog shares. The relay only bumps counters
/// on its hot path; the watchdog reads them a few times per idle period.
struct Live {
    parts: Mutex<Option<Parts>>,
    /// What must be let go when the stream is cut (the request's place in
    /// flight), not when its client gets round to closing.
    held: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    started: Instant,
    /// Frames the client has asked for so far.
    progress: AtomicU64,
    /// The relay has a frame out and waits for the client to ask again
    /// (not for its upstream).
    waiting: AtomicBool,
    /// Why the watchdog cut it ([`CUT_NONE`] while it runs).
    cut: AtomicU8,
}

const CUT_NONE: u8 = 0;
const CUT_STALLED: u8 = 1;
const CUT_TOO_LONG: u8 = 2;

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Parts>> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A live upstream stream being relayed.
pub struct Relay {
    live: Arc<Live>,
    state: State,
    /// Its place in the watchdog's list, given back when it is dropped.
    watch: Watch,
}

/// Everything of a relay but what the watchdog shares.
struct State {
    pending: VecDeque<Bytes>,
    scratch: Vec<StreamEvent>,
    /// Taken out of the settings, to be used beside them.
    hold: Option<Box<dyn Hold>>,
    settings: RelaySettings,
    timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    ended: bool,
    /// The upstream and decoder were let go (at the end, or by a cut).
    released: bool,
    outcome: StreamOutcome,
    observer: Option<Observer>,
    /// Something came from the decoder (sent or held).
    heard: bool,
    /// The stream failed because its hold refused what it held.
    refused: bool,
}

impl Relay {
    /// Starts relaying `upstream` through `decoder`, watched by `watchdog`.
    pub fn new(upstream: Incoming, decoder: PluginStream, mut settings: RelaySettings, watchdog: &Watchdog) -> Self {
        let now = Instant::now();
        let live = Arc::new(Live {
            parts: Mutex::new(Some((upstream, decoder))),
            held: Mutex::new(None),
            started: now,
            progress: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            cut: AtomicU8::new(CUT_NONE),
        });
        let watch = watchdog.watch(&live);
        let state = State {
            pending: VecDeque::new(),
            scratch: Vec::new(),
            hold: settings.hold.take(),
            timer: Box::pin(tokio::time::sleep_until(now + settings.idle)),
            settings,
            last_activity: now,
            ended: false,
            released: false,
            outcome: StreamOutcome { chunks: 0, usage: None, error: None, client_gone: false },
            observer: None,
            heard: false,
            refused: false,
        };
        Self { live, state, watch }
    }

    /// Waits for the upstream's first event, or its end (the dispatcher
    /// bounds this wait by the first-byte timeout).
    pub async fn first_event(&mut self) {
        // Without a hold, the first event is the first chunk to send.
        let heard_is_enough = self.state.hold.is_some();
        poll_fn(|cx| self.poll_fill(cx, heard_is_enough)).await;
    }

    /// Waits for the first chunk to send to the client, or the end: at
    /// once when the first event was one, else while the [`Hold`] keeps
    /// chunks back (bounded by the idle timeout and the hold's own bound).
    /// `Err` when the stream failed or ended before its first chunk:
    /// nothing has reached the client, so the dispatcher may try another
    /// candidate.
    pub async fn prime(&mut self) -> Result<(), Unsent> {
        poll_fn(|cx| self.poll_fill(cx, false)).await;
        match (&self.state.outcome.error, self.state.outcome.chunks) {
            (Some(error), 0) => Err(Unsent { reason: error.clone(), refused: self.state.refused }),
            _ => {
                // From here on, the client is the one expected to read.
                self.live.waiting.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Keeps `guard` until the stream ends: its last byte is sent, its client
    /// goes away, or the watchdog cuts it.
    pub fn hold(&mut self, guard: Box<dyn std::any::Any + Send>) {
        *self.live.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }

    /// Calls `observer` once when the stream ends (at once if it has).
    pub fn on_end(&mut self, observer: impl FnOnce(&StreamOutcome) + Send + 'static) {
        if self.state.ended {
            observer(&self.state.outcome);
        } else {
            self.state.observer = Some(Box::new(observer));
        }
    }

    /// Everything has been handed to the client.
    pub fn is_finished(&self) -> bool {
        self.state.ended && self.state.pending.is_empty()
    }

    /// The next SSE frame for the client.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        // Being polled: the client took what it was given. Only the relay
        // writes this counter (the watchdog reads it): no atomic add needed.
        let progress = self.live.progress.load(Ordering::Relaxed);
        self.live.progress.store(progress.wrapping_add(1), Ordering::Relaxed);
        match self.poll_fill(cx, false) {
            Poll::Ready(()) => {
                let next = self.state.take_pending();
                self.live.waiting.store(next.is_some() && !self.is_finished(), Ordering::Relaxed);
                Poll::Ready(next)
            }
            Poll::Pending => {
                self.live.waiting.store(false, Ordering::Relaxed);
                Poll::Pending
            }
        }
    }

    /// Ready when there is a frame to send or the stream has ended (or,
    /// with `heard_is_enough`, when the decoder gave anything at all).
    fn poll_fill(&mut self, cx: &mut Context<'_>, heard_is_enough: bool) -> Poll<()> {
        loop {
            let state = &mut self.state;
            if state.ended && !state.released {
                // Release the upstream connection and the plugin instance
                // now, not when the client gets round to closing.
                state.released = true;
                drop(self.live.lock().take());
            }
            if !state.pending.is_empty() || state.ended || heard_is_enough && state.heard {
                return Poll::Ready(());
            }
            let mut parts = self.live.lock();
            let Some((upstream, decoder)) = parts.as_mut() else {
                drop(parts);
                let cut = self.live.cut.load(Ordering::Relaxed);
                let message = match cut {
                    CUT_TOO_LONG => "the stream ran past dispatch.stream_max_duration and was closed",
                    _ => "the client stopped reading and the stream was closed",
                };
                state.outcome.client_gone = cut == CUT_STALLED;
                state.fail(message.to_owned());
                continue;
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    state.last_activity = Instant::now();
                    if let Ok(data) = frame.into_data() {
                        let decoded = decoder.push(&data, &mut state.scratch);
                        drop(parts);
                        state.absorb();
                        if let Err(e) = decoded {
                            state.fail(e.to_string());
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    drop(parts);
                    state.fail(format!("the upstream stream broke off: {e}"));
                }
                Poll::Ready(None) => {
                    let decoded = decoder.finish(&mut state.scratch);
                    drop(parts);
                    state.absorb();
                    if let Err(e) = decoded {
                        state.fail(e.to_string());
                    } else if !state.ended {
                        state.fail("the upstream ended the stream without [DONE]".to_owned());
                    }
                }
                Poll::Pending => {
                    drop(parts);
                    // The timer is re-armed lazily: resetting it on every
                    // chunk would cost a timer-wheel update per chunk.
                    if state.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let deadline = state.last_activity.checked_add(state.settings.idle);
                    match deadline {
                        Some(deadline) if Instant::now() < deadline => state.timer.as_mut().reset(deadline),
                        _ => {
                            let message = format!("the upstream sent nothing for {:?}", state.settings.idle);
                            state.fail(message);
                        }
                    }
                }
            }
        }
    }
}

impl State {
    /// Every frame ready for the client, as one piece: the events an
    /// upstream read produced leave in one body frame (one chunk of the
    /// client's chunked encoding), not one frame each.
    fn take_pending(&mut self) -> Option<Bytes> {
        if self.pending.len() <= 1 {
            return self.pending.pop_front();
        }
        let mut out = BytesMut::with_capacity(self.pending.iter().map(Bytes::len).sum());
        for frame in self.pending.drain(..) {
            out.put_slice(&frame);
        }
        Some(out.freeze())
    }

    fn absorb(&mut self) {
        self.heard |= !self.scratch.is_empty();
        for event in std::mem::take(&mut self.scratch) {
            if self.ended {
                break;
            }
            match event {
                StreamEvent::Chunk { json, usage } => {
                    if usage.is_some() {
                        self.outcome.usage = usage;
                        if self.settings.drop_usage_only && usage_only(&json) {
                            continue;
                        }
                    }
                    match self.hold.as_mut() {
                        None => self.send(json),
                        Some(hold) => {
                            let step = hold.push(json);
                            self.take(step);
                        }
                    }
                }
                StreamEvent::Frames { sse, chunks } => {
                    // Only a relay without a hold asks for frames.
                    let sse = self.settings.redactor.redact_answer(sse);
                    self.pending.push_back(sse);
                    self.outcome.chunks += chunks;
                }
                StreamEvent::Done => {
                    if let Some(hold) = self.hold.as_mut() {
                        let step = hold.end();
                        self.take(step);
                    }
                    if !self.ended {
                        self.pending.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                        self.end();
                    }
                }
                StreamEvent::Error { message } => self.fail(format!("the upstream reported an error: {message}")),
            }
        }
    }

    /// Frames `json` for the client.
    fn send(&mut self, json: Bytes) {
        let json = self.settings.redactor.redact_answer(json);
        let mut frame = BytesMut::with_capacity(json.len() + 8);
        frame.put_slice(b"data: ");
        frame.put_slice(&json);
        frame.put_slice(b"\n\n");
        self.pending.push_back(frame.freeze());
        self.outcome.chunks += 1;
    }

    /// Does what the hold said. What it holds when the stream fails is
    /// dropped with it: a call never reaches the client half checked.
    fn take(&mut self, step: Step) {
        match step {
            Step::Pass(json) => self.send(json),
            Step::Held => {}
            Step::Release(chunks) => {
                for json in chunks {
                    self.send(json);
                }
            }
            Step::Refuse(reason) => {
                self.refused = true;
                self.fail(format!("the upstream's tool call cannot be run: {reason}"));
            }
        }
    }

    fn fail(&mut self, message: String) {
        if self.ended {
            return;
        }
        // Upstream and plugin text: never with a key in it.
        let message = self.settings.redactor.redact(&message).into_owned();
        self.pending.push_back(stream_error_event(&message, "stream_failed"));
        self.outcome.error = Some(message);
        self.end();
    }

    fn end(&mut self) {
        self.ended = true;
        if let Some(observer) = self.observer.take() {
            observer(&self.outcome);
        }
    }
}

/// A usage-only chunk: `"choices": []` with usage (what a provider sends
/// last when asked to `include_usage`). Read off the bytes: a chunk is one
/// JSON object, and its `choices` key is followed by an empty array or not.
fn usage_only(json: &[u8]) -> bool {
    let Some(at) = memchr::memmem::find(json, b"\"choices\"") else { return false };
    let mut rest = json[at + b"\"choices\"".len()..].iter().filter(|b| !b.is_ascii_whitespace());
    rest.next() == Some(&b':') && rest.next() == Some(&b'[') && rest.next() == Some(&b']')
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.watch.leave();
        if let Some(observer) = self.state.observer.take() {
            self.state.outcome.error = Some("the client went away".to_owned());
            self.state.outcome.client_gone = true;
            observer(&self.state.outcome);
        }
    }
}

/// Sees every live relay of a gateway and cuts the ones whose client
/// stopped reading, or that ran too long. One background task per gateway,
/// waking a few times per idle period; it ends with the gateway.
pub struct Watchdog {
    inner: Arc<WatchdogInner>,
}

/// A watched relay, and the progress the watchdog last saw it make and
/// when.
struct Watched {
    live: Arc<Live>,
    seen: u64,
    since: Instant,
}

/// The relays being watched: slots a relay takes when it starts and gives
/// back when it is dropped (so a relay's shared part is freed by the
/// thread that served it, not in a batch by the watchdog).
#[derive(Default)]
struct Slots {
    slots: Vec<Option<Watched>>,
    free: Vec<usize>,
}

/// A relay's place in its watchdog's list.
struct Watch {
    inner: Weak<WatchdogInner>,
    slot: usize,
}

impl Watch {
    fn leave(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut list = inner.relays.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = list.slots.get_mut(self.slot)
                && slot.take().is_some()
            {
                list.free.push(self.slot);
            }
        }
        self.inner = Weak::new();
    }
}

struct WatchdogInner {
    relays: Mutex<Slots>,
    idle: Duration,
    max_duration: Duration,
    metrics: Arc<Metrics>,
    started: std::sync::Once,
}

impl Watchdog {
    /// A watchdog cutting relays that waited on their client for `idle`,
    /// or ran for `max_duration`.
    pub fn new(idle: Duration, max_duration: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(WatchdogInner {
                relays: Mutex::new(Slots::default()),
                idle,
                max_duration,
                metrics,
                started: std::sync::Once::new(),
            }),
        }
    }

    /// Relays holding an upstream stream now (a cut relay whose client has
    /// not closed yet holds nothing).
    pub fn live(&self) -> usize {
        let relays = self.inner.relays.lock().unwrap_or_else(|e| e.into_inner());
        relays.slots.iter().flatten().filter(|w| w.live.lock().is_some()).count()
    }

    fn watch(&self, live: &Arc<Live>) -> Watch {
        let watched = Watched { live: live.clone(), seen: 0, since: live.started };
        let slot = {
            let mut list = self.inner.relays.lock().unwrap_or_else(|e| e.into_inner());
            match list.free.pop() {
                Some(slot) => {
                    list.slots[slot] = Some(watched);
                    slot
                }
                None => {
                    list.slots.push(Some(watched));
                    list.slots.len() - 1
                }
            }
        };
        self.inner.started.call_once(|| {
            let weak = Arc::downgrade(&self.inner);
            let tick = (self.inner.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(tick);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.sweep(Instant::now());
                }
            });
        });
        Watch { inner: Arc::downgrade(&self.inner), slot }
    }
}

impl WatchdogInner {
    fn sweep(&self, now: Instant) {
        let mut cut = Vec::new();
        {
            let mut list = self.relays.lock().unwrap_or_else(|e| e.into_inner());
            for watched in list.slots.iter_mut().flatten() {
                let live = watched.live.clone();
                let progress = live.progress.load(Ordering::Relaxed);
                if progress != watched.seen || !live.waiting.load(Ordering::Relaxed) {
                    // The client read, or the relay waits on its upstream
                    // (its own idle timer covers that).
                    watched.seen = progress;
                    watched.since = now;
                }
                if now.saturating_duration_since(live.started) >= self.max_duration {
                    cut.push((live, CUT_TOO_LONG));
                } else if now.saturating_duration_since(watched.since) >= self.idle {
                    cut.push((live, CUT_STALLED));
                }
            }
        }
        for (live, why) in cut {
            let taken = live.lock().take();
            if let Some(parts) = taken {
                live.cut.store(why, Ordering::Relaxed);
                let reason = if why == CUT_TOO_LONG { "max_duration" } else { "client_stalled" };
                self.metrics.stream_cut(reason);
                tracing::info!(
                    reason,
                    "closing a stream: its upstream connection, plugin instance and place in flight are released"
                );
                drop(parts);
                drop(live.held.lock().unwrap_or_else(|e| e.into_inner()).take());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::usage_only;

    #[test]
    fn usage_only_chunks_are_told_from_their_bytes() {
        assert!(usage_only(br#"{"id":"c","choices":[],"usage":{"prompt_tokens":1}}"#));
        assert!(usage_only(b"{\"id\": \"c\", \"choices\" : [ ]\n, \"usage\": {}}"));
        assert!(!usage_only(br#"{"id":"c","choices":[{"index":0,"delta":{}}],"usage":{}}"#));
        assert!(!usage_only(br#"{"id":"c","usage":{}}"#));
    }
}
