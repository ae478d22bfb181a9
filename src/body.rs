//! The body type of every response the gateway sends: a whole buffer, or a
//! live relay of an upstream stream, holding on to whatever must live as
//! long as the response does (the request's in-flight permit).

use std::any::Any;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::dialect::StreamTranslator;
use crate::upstream::relay::Relay;

/// A response body.
pub struct ResponseBody {
    kind: Kind,
    /// Dropped with the body: for a stream, when its last byte is sent or
    /// its client goes away.
    _guard: Option<Box<dyn Any + Send>>,
}

enum Kind {
    /// A complete body, sent at once.
    Full(Option<Bytes>),
    /// An SSE stream relayed from an upstream as it arrives.
    Relay(Box<Relay>),
    /// A relayed stream translated into an inbound dialect's events.
    Translated(Box<Translated>),
}

struct Translated {
    relay: Relay,
    translator: Box<dyn StreamTranslator>,
    finished: bool,
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self { kind: Kind::Full(Some(bytes.into())), _guard: None }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self { kind: Kind::Full(None), _guard: None }
    }

    /// A relayed stream.
    pub fn relay(relay: Box<Relay>) -> Self {
        Self { kind: Kind::Relay(relay), _guard: None }
    }

    /// A whole body's bytes, taken out (`None` for a stream).
    pub fn take_full(&mut self) -> Option<Bytes> {
        match &mut self.kind {
            Kind::Full(bytes) => Some(bytes.take().unwrap_or_default()),
            _ => None,
        }
    }

    /// Whether this is a relayed stream.
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, Kind::Relay(_) | Kind::Translated(_))
    }

    /// A relayed stream's chunks, passed through `translator` (a whole
    /// body stays as it is: the caller translates it).
    pub fn translate(self, translator: Box<dyn StreamTranslator>) -> Self {
        match self.kind {
            Kind::Relay(relay) => Self {
                kind: Kind::Translated(Box::new(Translated { relay: *relay, translator, finished: false })),
                _guard: self._guard,
            },
            kind => Self { kind, _guard: self._guard },
        }
    }

    /// Keeps `guard` until the body itself is dropped, besides whatever
    /// [`ResponseBody::hold`] holds (the trace's request span).
    pub fn attach(&mut self, guard: impl Any + Send) {
        let held = self._guard.take();
        self._guard = Some(Box::new((held, guard)));
    }

    /// Keeps `guard` alive until the body ends: dropped, or, for a stream,
    /// cut by the watchdog while its client still holds the connection.
    pub fn hold(&mut self, guard: impl Any + Send) {
        match &mut self.kind {
            Kind::Relay(relay) => relay.hold(Box::new(guard)),
            Kind::Translated(t) => t.relay.hold(Box::new(guard)),
            Kind::Full(_) => self._guard = Some(Box::new(guard)),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Relay(relay) => relay.poll_next(cx).map(|next| next.map(|b| Ok(Frame::data(b)))),
            Kind::Translated(t) => loop {
                if t.finished {
                    return Poll::Ready(None);
                }
                let out = match t.relay.poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(chat)) => t.translator.feed(&chat),
                    Poll::Ready(None) => {
                        t.finished = true;
                        t.translator.finish()
                    }
                };
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Relay(relay) => relay.is_finished(),
            Kind::Translated(t) => t.finished,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Relay(_) | Kind::Translated(_) => SizeHint::default(),
        }
    }
}
