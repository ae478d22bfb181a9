//! Relays an upstream SSE stream to the client as it arrives.
//!
//! The relay polls the upstream body directly from the client's response
//! body (no extra task, no channel, natural back-pressure), runs each piece
//! through the provider's stream decoder and re-frames the OpenAI chunks as
//! SSE. Before the first byte reaches the client the dispatcher calls
//! [`Relay::prime`]: a stream that fails before its first chunk can still
//! fall back to another candidate. After that, a failure ends the stream with
//! one error event and no `[DONE]`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::errors::stream_error_event;
use crate::plugin::{PluginStream, StreamEvent, Usage};

/// How a relayed stream ended, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOutcome {
    /// Chunks relayed.
    pub chunks: usize,
    /// Usage the upstream reported.
    pub usage: Option<Usage>,
    /// Why it ended early, if it did.
    pub error: Option<String>,
}

type Observer = Box<dyn FnOnce(&StreamOutcome) + Send>;

/// A live upstream stream being relayed.
pub struct Relay {
    upstream: Incoming,
    decoder: PluginStream,
    pending: VecDeque<Bytes>,
    scratch: Vec<StreamEvent>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    ended: bool,
    outcome: StreamOutcome,
    observer: Option<Observer>,
}

impl Relay {
    /// Starts relaying `upstream`; `idle` is the longest silence allowed
    /// between two pieces of the upstream body.
    pub fn new(upstream: Incoming, decoder: PluginStream, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            upstream,
            decoder,
            pending: VecDeque::new(),
            scratch: Vec::new(),
            idle,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            last_activity: now,
            ended: false,
            outcome: StreamOutcome { chunks: 0, usage: None, error: None },
            observer: None,
        }
    }

    /// Waits for the first event. `Err` when the stream failed or ended
    /// before its first chunk: nothing has reached the client, so the
    /// dispatcher may try another candidate.
    pub async fn prime(&mut self) -> Result<(), String> {
        poll_fn(|cx| self.poll_fill(cx)).await;
        match (&self.outcome.error, self.outcome.chunks) {
            (Some(error), 0) => Err(error.clone()),
            _ => Ok(()),
        }
    }

    /// Calls `observer` once when the stream ends (at once if it has).
    pub fn on_end(&mut self, observer: impl FnOnce(&StreamOutcome) + Send + 'static) {
        if self.ended {
            observer(&self.outcome);
        } else {
            self.observer = Some(Box::new(observer));
        }
    }

    /// Everything has been handed to the client.
    pub fn is_finished(&self) -> bool {
        self.ended && self.pending.is_empty()
    }

    /// The next SSE frame for the client.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match self.poll_fill(cx) {
            Poll::Ready(()) => Poll::Ready(self.pending.pop_front()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Ready when there is a frame to send or the stream has ended.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.pending.is_empty() || self.ended {
                return Poll::Ready(());
            }
            match Pin::new(&mut self.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.last_activity = Instant::now();
                    if let Ok(data) = frame.into_data() {
                        let decoded = self.decoder.push(&data, &mut self.scratch);
                        self.absorb();
                        if let Err(e) = decoded {
                            self.fail(e.to_string());
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => self.fail(format!("the upstream stream broke off: {e}")),
                Poll::Ready(None) => {
                    let decoded = self.decoder.finish(&mut self.scratch);
                    self.absorb();
                    if let Err(e) = decoded {
                        self.fail(e.to_string());
                    } else if !self.ended {
                        self.fail("the upstream ended the stream without [DONE]".to_owned());
                    }
                }
                Poll::Pending => {
                    // The timer is re-armed lazily: resetting it on every
                    // chunk would cost a timer-wheel update per chunk.
                    if self.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let deadline = self.last_activity + self.idle;
                    if Instant::now() < deadline {
                        self.timer.as_mut().reset(deadline);
                    } else {
                        self.fail(format!("the upstream sent nothing for {:?}", self.idle));
                    }
                }
            }
        }
    }

    fn absorb(&mut self) {
        for event in std::mem::take(&mut self.scratch) {
            if self.ended {
                break;
            }
            match event {
                StreamEvent::Chunk { json, usage } => {
                    let mut frame = BytesMut::with_capacity(json.len() + 8);
                    frame.put_slice(b"data: ");
                    frame.put_slice(&json);
                    frame.put_slice(b"\n\n");
                    self.pending.push_back(frame.freeze());
                    self.outcome.chunks += 1;
                    if usage.is_some() {
                        self.outcome.usage = usage;
                    }
                }
                StreamEvent::Done => {
                    self.pending.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    self.end();
                }
                StreamEvent::Error { message } => self.fail(format!("the upstream reported an error: {message}")),
            }
        }
    }

    fn fail(&mut self, message: String) {
        if self.ended {
            return;
        }
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

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(observer) = self.observer.take() {
            self.outcome.error = Some("the client went away".to_owned());
            observer(&self.outcome);
        }
    }
}
