//! A minimal, fast mock of an OpenAI-compatible upstream, for the load
//! benchmark and the soak run.
//!
//! `benches/load.sh` starts it, sends the same chat requests to it directly
//! and through `freeway` (configured with this mock as its only provider),
//! and compares throughput and latency: the difference is what the gateway
//! adds. So the mock must cost as little as possible on that path: every
//! answer is built once at start-up and sent from shared bytes, there is no
//! artificial delay and no per-request logging, and connections are kept
//! alive.
//!
//! `benches/soak.sh` also needs an upstream that misbehaves. A chat request
//! whose model name contains `soak-<behaviour>` (or that carries an
//! `x-mock-behaviour: <behaviour>` header) gets that behaviour:
//!
//! | behaviour   | answer |
//! |-------------|--------|
//! | `429`       | 429 with `Retry-After: 2` |
//! | `hang`      | nothing for five minutes (then the normal answer) |
//! | `5xx`       | 500 or 503, sometimes as plain text |
//! | `errbody`   | 200 whose body is an error object, not a completion |
//! | `badreq`    | 400 (the client's request is wrong: freeway passes it on) |
//! | `slow`      | streams: a chunk every 250 ms; non-stream: the answer after 1 s |
//! | `endless`   | streams: a ~1 KB chunk every 10 ms, forever; non-stream: normal |
//! | `flood`     | streams: a ~16 KB chunk every 2 ms, forever (fills a stalled client's socket buffers fast) |
//! | `streamerr` | streams: two chunks, then an error event and the end, no `[DONE]` |
//!
//! Every error text above (bodies and the stream's error event) echoes the
//! `Authorization` header the mock received and every `x-soak-*` header, so
//! that a gateway leaking an upstream key or a configured header value
//! shows it. Part of each message is padding of varying length, so that
//! the echoed secret sometimes sits across the point where a gateway would
//! cut a long message short. Only requests with the marker pay for any of
//! this: the benchmark's requests take the fixed path (one substring
//! search over the body).
//!
//! Usage: `cargo run --release --example mock_upstream -- [--port N]`
//! (default 0: any free port). Once bound it prints exactly one line,
//! `listening on 127.0.0.1:PORT`, to stdout, then serves until killed.
//!
//! Endpoints (any path prefix, so `/v1/...` works):
//! - `POST .../chat/completions`: a fixed `chat.completion` JSON, or, when
//!   the request body has `"stream":true`, a fixed `text/event-stream` of
//!   `chat.completion.chunk` events, a usage chunk and `data: [DONE]`
//!   (unless a behaviour above applies);
//! - `GET .../models`: a list with the single model `mock-model`, or, with
//!   an `x-mock-models: fail` header, a 500 echoing the secrets as above
//!   (what a model listing that leaks looks like to discovery);
//! - anything else: 404.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// The model id every answer names.
const MODEL: &str = "mock-model";
/// A fixed creation time, so that the answers never change.
const CREATED: u64 = 1_700_000_000;
/// How long `hang` holds a request: longer than any timeout under test, short
/// enough that held requests do not pile up for ever if nobody gives up.
const HANG: Duration = Duration::from_secs(300);
/// `slow`: the delay between two stream chunks, and before a whole answer.
const SLOW_CHUNK: Duration = Duration::from_millis(250);
const SLOW_ANSWER: Duration = Duration::from_secs(1);
/// `endless`: the delay between two ~1 KB chunks (about 100 KB/s).
const ENDLESS_CHUNK: Duration = Duration::from_millis(10);
/// `flood`: the delay between two ~16 KB chunks (about 8 MB/s).
const FLOOD_CHUNK: Duration = Duration::from_millis(2);
/// The marker a model name carries to ask for a behaviour.
const MARKER: &[u8] = b"soak-";

/// Every answer body, built once and shared by all connections.
struct Answers {
    completion: Bytes,
    /// The normal stream, as one piece (the benchmark's path) ...
    stream: Bytes,
    /// ... and as its events, for `slow`.
    stream_events: Vec<Bytes>,
    /// `endless`: the first event (with the role) and the one repeated.
    endless_first: Bytes,
    endless_chunk: Bytes,
    flood_chunk: Bytes,
    models: Bytes,
    not_found: Bytes,
}

impl Answers {
    fn build() -> Result<Self, serde_json::Error> {
        let content = "This is a fixed answer from the mock upstream used by the freeway load benchmark. \
                       It is long enough to make the response about five hundred bytes, like a short real \
                       completion, and it never changes.";
        let completion = json!({
            "id": "chatcmpl-mock-0001",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": { "prompt_tokens": 256, "completion_tokens": 48, "total_tokens": 304 }
        });

        let words = ["Hello", " from", " the", " mock", " upstream", ",", " streaming", " now."];
        let mut stream_events = Vec::new();
        for (i, word) in words.iter().enumerate() {
            let finish = if i + 1 == words.len() { json!("stop") } else { json!(null) };
            stream_events.push(event(&chunk(word, i == 0, finish))?);
        }
        let usage = json!({
            "id": "chatcmpl-mock-0001",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [],
            "usage": { "prompt_tokens": 256, "completion_tokens": 8, "total_tokens": 264 }
        });
        stream_events.push(event(&usage)?);
        stream_events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let stream: Vec<u8> = stream_events.iter().flat_map(|e| e.iter().copied()).collect();

        let filler = " and on".repeat(140);
        let models = json!({ "object": "list", "data": [{ "id": MODEL, "object": "model" }] });
        let not_found = json!({ "error": { "message": "not found", "type": "invalid_request_error" } });
        Ok(Self {
            completion: serde_json::to_vec(&completion)?.into(),
            stream: stream.into(),
            stream_events,
            endless_first: event(&chunk("It goes on", true, json!(null)))?,
            endless_chunk: event(&chunk(&filler, false, json!(null)))?,
            flood_chunk: event(&chunk(&filler.repeat(16), false, json!(null)))?,
            models: serde_json::to_vec(&models)?.into(),
            not_found: serde_json::to_vec(&not_found)?.into(),
        })
    }
}

/// One `chat.completion.chunk` carrying `text`.
fn chunk(text: &str, first: bool, finish: serde_json::Value) -> serde_json::Value {
    let delta = if first { json!({ "role": "assistant", "content": text }) } else { json!({ "content": text }) };
    json!({
        "id": "chatcmpl-mock-0001",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]
    })
}

/// One SSE `data:` event.
fn event(value: &serde_json::Value) -> Result<Bytes, serde_json::Error> {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(value)?);
    out.extend_from_slice(b"\n\n");
    Ok(out.into())
}

/// What a chat request asked the mock to do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Normal,
    RateLimited,
    Hang,
    ServerError,
    ErrorBody,
    BadRequest,
    Slow,
    Endless,
    Flood,
    StreamError,
}

impl Behaviour {
    fn parse(name: &str) -> Self {
        match name {
            "429" => Self::RateLimited,
            "hang" => Self::Hang,
            "5xx" => Self::ServerError,
            "errbody" => Self::ErrorBody,
            "badreq" => Self::BadRequest,
            "slow" => Self::Slow,
            "endless" => Self::Endless,
            "flood" => Self::Flood,
            "streamerr" => Self::StreamError,
            _ => Self::Normal,
        }
    }

    /// From the `x-mock-behaviour` header, else from `soak-<name>` in the
    /// request's model.
    fn of(headers: &HeaderMap, body: &[u8]) -> Self {
        if let Some(name) = headers.get("x-mock-behaviour").and_then(|v| v.to_str().ok()) {
            return Self::parse(name.trim());
        }
        // The benchmark's path: one substring search, no JSON parsing.
        if memchr::memmem::find(body, MARKER).is_none() {
            return Self::Normal;
        }
        #[derive(serde::Deserialize)]
        struct Model {
            model: String,
        }
        let Ok(Model { model }) = serde_json::from_slice::<Model>(body) else { return Self::Normal };
        let Some(at) = model.find("soak-") else { return Self::Normal };
        let rest = &model[at + MARKER.len()..];
        let name = rest.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or_default();
        Self::parse(name)
    }
}

/// A response body: whole, or events paced by a timer (`slow`, `endless`).
enum MockBody {
    Full(Option<Bytes>),
    Paced(Box<Paced>),
}

/// Sends `events` one per `period` (the first at once), then `repeat` for
/// ever if set, else ends.
struct Paced {
    events: VecDeque<Bytes>,
    repeat: Option<Bytes>,
    period: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Paced(paced) => {
                if paced.armed {
                    if paced.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    paced.armed = false;
                }
                let Some(next) = paced.events.pop_front().or_else(|| paced.repeat.clone()) else {
                    return Poll::Ready(None);
                };
                let deadline = tokio::time::Instant::now() + paced.period;
                paced.timer.as_mut().reset(deadline);
                paced.armed = true;
                Poll::Ready(Some(Ok(Frame::data(next))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }
}

fn paced(events: Vec<Bytes>, repeat: Option<Bytes>, period: Duration) -> MockBody {
    MockBody::Paced(Box::new(Paced {
        events: events.into(),
        repeat,
        period,
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        armed: false,
    }))
}

/// True when the request body asks for a stream (`"stream":true`, with or
/// without a space after the colon). A byte search is enough for a mock and
/// much cheaper than parsing the JSON.
fn wants_stream(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\"stream\":true").is_some()
        || memchr::memmem::find(body, b"\"stream\": true").is_some()
}

fn respond(status: StatusCode, content_type: &'static str, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<MockBody> {
    respond(status, content_type, MockBody::Full(Some(body)))
}

fn event_stream(body: MockBody) -> Response<MockBody> {
    let mut response = respond(StatusCode::OK, "text/event-stream", body);
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The secrets a request carried, as one line: its `Authorization` and every
/// `x-soak-*` header. What a careless upstream would put in an error.
fn echo(headers: &HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        if name == "authorization" || name.as_str().starts_with("x-soak-") {
            let value = String::from_utf8_lossy(value.as_bytes());
            out.push_str(&format!("{name}: {value}; "));
        }
    }
    out
}

/// An error message echoing the secrets after `n % 240` characters of
/// padding (no spaces, so that squeezing whitespace does not move them): with
/// the padding varying, the secrets land before, across and after the
/// 200-character mark at which error summaries are often cut.
fn leaky_message(what: &str, headers: &HeaderMap, n: u64) -> String {
    let pad = "~".repeat((n % 240) as usize);
    format!("{pad}{what}; the request carried {}", echo(headers))
}

fn error_json(message: &str, kind: &str) -> Bytes {
    Bytes::from(json!({ "error": { "message": message, "type": kind } }).to_string())
}

struct Mock {
    answers: Answers,
    /// Counts misbehaving answers, to vary them.
    counter: AtomicU64,
}

async fn handle(mock: Arc<Mock>, request: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let answers = &mock.answers;
    let path = request.uri().path();
    let is_chat = request.method() == Method::POST && path.ends_with("/chat/completions");
    let is_models = request.method() == Method::GET && path.ends_with("/models");
    if is_models {
        if request.headers().get("x-mock-models").is_some_and(|v| v == "fail") {
            let n = mock.counter.fetch_add(1, Ordering::Relaxed);
            let message = leaky_message("cannot list models", request.headers(), n);
            return Ok(full(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                error_json(&message, "server_error"),
            ));
        }
        return Ok(full(StatusCode::OK, "application/json", answers.models.clone()));
    }
    if !is_chat {
        return Ok(full(StatusCode::NOT_FOUND, "application/json", answers.not_found.clone()));
    }
    let (parts, body) = request.into_parts();
    // Read the whole body, as a real upstream would, before answering.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "text/plain", Bytes::from_static(b"bad body"))),
    };
    let stream = wants_stream(&body);
    let behaviour = Behaviour::of(&parts.headers, &body);
    if behaviour == Behaviour::Normal {
        return Ok(if stream {
            event_stream(MockBody::Full(Some(answers.stream.clone())))
        } else {
            full(StatusCode::OK, "application/json", answers.completion.clone())
        });
    }
    Ok(misbehave(&mock, behaviour, stream, &parts.headers).await)
}

/// The answers of the soak's behaviours.
async fn misbehave(mock: &Mock, behaviour: Behaviour, stream: bool, headers: &HeaderMap) -> Response<MockBody> {
    let answers = &mock.answers;
    let n = mock.counter.fetch_add(1, Ordering::Relaxed);
    let normal = |answers: &Answers| {
        if stream {
            event_stream(MockBody::Full(Some(answers.stream.clone())))
        } else {
            full(StatusCode::OK, "application/json", answers.completion.clone())
        }
    };
    match behaviour {
        Behaviour::Normal => normal(answers),
        Behaviour::RateLimited => {
            let message = leaky_message("rate limited", headers, n);
            let mut response =
                full(StatusCode::TOO_MANY_REQUESTS, "application/json", error_json(&message, "rate_limit"));
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("2"));
            response
        }
        Behaviour::Hang => {
            tokio::time::sleep(HANG).await;
            normal(answers)
        }
        Behaviour::ServerError => {
            let status =
                if n.is_multiple_of(2) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::SERVICE_UNAVAILABLE };
            let message = leaky_message("the upstream broke", headers, n);
            if n.is_multiple_of(3) {
                full(status, "text/plain", Bytes::from(message))
            } else {
                full(status, "application/json", error_json(&message, "server_error"))
            }
        }
        Behaviour::ErrorBody => {
            let message = leaky_message("key problem", headers, n);
            full(StatusCode::OK, "application/json", error_json(&message, "server_error"))
        }
        Behaviour::BadRequest => {
            let message = leaky_message("this request is wrong", headers, n);
            full(StatusCode::BAD_REQUEST, "application/json", error_json(&message, "invalid_request_error"))
        }
        Behaviour::Slow if stream => event_stream(paced(answers.stream_events.clone(), None, SLOW_CHUNK)),
        Behaviour::Slow => {
            tokio::time::sleep(SLOW_ANSWER).await;
            normal(answers)
        }
        Behaviour::Endless if stream => {
            event_stream(paced(vec![answers.endless_first.clone()], Some(answers.endless_chunk.clone()), ENDLESS_CHUNK))
        }
        Behaviour::Flood if stream => {
            event_stream(paced(vec![answers.endless_first.clone()], Some(answers.flood_chunk.clone()), FLOOD_CHUNK))
        }
        Behaviour::StreamError if stream => {
            let message = leaky_message("the stream broke", headers, n);
            let mut broken = b"data: ".to_vec();
            broken.extend_from_slice(&error_json(&message, "server_error"));
            broken.extend_from_slice(b"\n\n");
            let events = vec![answers.stream_events[0].clone(), answers.stream_events[1].clone(), broken.into()];
            event_stream(paced(events, None, Duration::from_millis(20)))
        }
        Behaviour::Endless | Behaviour::Flood | Behaviour::StreamError => normal(answers),
    }
}

/// Reads `--port N` (or `--port=N`) from the command line; 0 by default.
fn parse_port() -> Result<u16, Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut port = 0;
    while let Some(arg) = args.next() {
        if arg == "--port" {
            port = args.next().ok_or("--port needs a value")?.parse()?;
        } else if let Some(value) = arg.strip_prefix("--port=") {
            port = value.parse()?;
        } else {
            return Err(format!("unknown argument `{arg}`; usage: mock_upstream [--port N]").into());
        }
    }
    Ok(port)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let port = parse_port()?;
    let mock = Arc::new(Mock { answers: Answers::build()?, counter: AtomicU64::new(0) });
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
    }

    // HTTP/1.1 with keep-alive (and HTTP/2 if a client asks for it).
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather
                // than spin or stop serving.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small answers must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let mock = mock.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(mock.clone(), request));
            // Errors here are clients hanging up (the load generator stopping):
            // nothing to report.
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
