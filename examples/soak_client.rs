//! The soak run's load driver: `benches/soak.sh` builds it, starts freeway in
//! front of `examples/mock_upstream.rs`, and runs this against freeway.
//!
//! It sends a mix of request kinds, each at its own rate and with its own
//! bound on requests in flight (open loop: a kind at its bound skips a tick
//! rather than queueing), and judges every answer against what that kind
//! must get:
//!
//! - `chat`, `stream`: `mock/<name>` with a fresh name (up to 256 bytes) and
//!   a fresh `X-Session-ID` each time; `free`: the `free` route with fresh
//!   (now and then reused) session ids, so sticky-session pins pile up;
//! - `long-name`, `long-session`: over 256 bytes, must be 400;
//! - the mock's misbehaviours (`soak-429`, `-hang`, `-5xx`, `-errbody`,
//!   `-badreq`, `-slow`, `-streamerr`, `-endless`), whole and streamed;
//! - stalled readers: HTTP/1.1 with a tiny receive buffer, and HTTP/2 with
//!   a closed window (0, dropped after the hold, or small, read after the
//!   hold), on endless streams; the watchdog must cut them;
//! - `big-body` (slowly uploaded bodies near `max_body_bytes`, to meet
//!   `max_in_flight_bytes`) and `burst` (a wave of slow requests every 20 s,
//!   past `max_in_flight`).
//!
//! Every response header and body byte is scanned for the secrets given
//! with `--secret` (any 12-byte piece of one counts, so a key cut in half
//! still shows). 5xx answers are sorted: 502s that the mock's behaviour
//! explains (each attempt failed the way that behaviour fails), 503s from
//! the gateway's own bounds (`code: overloaded`), and the rest, which must
//! be none.
//!
//! Usage: `soak_client --addr 127.0.0.1:PORT --duration SECS
//!   [--secret S]... [--idle SECS] [--max-duration SECS] [--scale F]
//!   [--summary FILE]`. It prints a table and, with `--summary`, writes
//!   `name=value` lines for the script's verdict. It exits 1 when any answer
//!   was unexplained or unexpected, or a secret was seen.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{HeaderMap, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Sleep, timeout};

/// Length of the secret pieces searched for.
const PIECE: usize = 12;
/// Longest model name and session id freeway accepts (DESIGN.md, Bounds).
const MAX_NAME: usize = 256;
/// How much of a body is kept for judging it (its start and its end).
const KEEP_HEAD: usize = 64 * 1024;
const KEEP_TAIL: usize = 4 * 1024;
/// Samples of each problem kept for the report.
const SAMPLES: usize = 12;

// --- command line --------------------------------------------------------------

struct Args {
    addr: SocketAddr,
    duration: Duration,
    secrets: Vec<String>,
    /// freeway's `dispatch.stream_idle_timeout` and `stream_max_duration`:
    /// how long stalled readers hold, and how long endless streams last.
    idle: Duration,
    max_duration: Duration,
    /// Multiplies every rate.
    scale: f64,
    summary: Option<String>,
    /// Only these kinds (by name), to look at one of them alone.
    only: Option<Vec<String>>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        duration: Duration::from_secs(300),
        secrets: Vec::new(),
        idle: Duration::from_secs(4),
        max_duration: Duration::from_secs(20),
        scale: 1.0,
        summary: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => args.addr = value()?.parse()?,
            "--duration" => args.duration = Duration::from_secs_f64(value()?.parse()?),
            "--secret" => args.secrets.push(value()?),
            "--idle" => args.idle = Duration::from_secs_f64(value()?.parse()?),
            "--max-duration" => args.max_duration = Duration::from_secs_f64(value()?.parse()?),
            "--scale" => args.scale = value()?.parse()?,
            "--summary" => args.summary = Some(value()?),
            "--only" => args.only = Some(value()?.split(',').map(|k| k.trim().to_owned()).collect()),
            other => return Err(format!("unknown argument `{other}` (see the doc comment of soak_client.rs)").into()),
        }
    }
    if args.secrets.iter().any(|s| s.len() < PIECE) {
        return Err(format!("secrets must be at least {PIECE} bytes long").into());
    }
    Ok(args)
}

// --- what is sent --------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Chat,
    Stream,
    Free,
    LongName,
    LongSession,
    RateLimited,
    RateLimitedStream,
    Hang,
    HangStream,
    ServerError,
    ServerErrorStream,
    ErrorBody,
    BadRequest,
    Slow,
    SlowStream,
    StreamError,
    Endless,
    StalledH1,
    StalledH2,
    StalledH2Dropped,
    BigBody,
    Burst,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Stream => "stream",
            Kind::Free => "free (sessions)",
            Kind::LongName => "name > 256 B",
            Kind::LongSession => "session > 256 B",
            Kind::RateLimited => "429 upstream",
            Kind::RateLimitedStream => "429 upstream, stream",
            Kind::Hang => "hanging upstream",
            Kind::HangStream => "hanging upstream, stream",
            Kind::ServerError => "5xx upstream",
            Kind::ServerErrorStream => "5xx upstream, stream",
            Kind::ErrorBody => "200 + error body",
            Kind::BadRequest => "400 upstream",
            Kind::Slow => "slow upstream",
            Kind::SlowStream => "slow stream",
            Kind::StreamError => "stream error event",
            Kind::Endless => "endless stream, read",
            Kind::StalledH1 => "stalled reader h1",
            Kind::StalledH2 => "stalled reader h2, resumed",
            Kind::StalledH2Dropped => "stalled reader h2, window 0",
            Kind::BigBody => "big body (in-flight bytes)",
            Kind::Burst => "burst (max_in_flight)",
        }
    }

    /// The kind's name for `--only`.
    fn key(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Stream => "stream",
            Kind::Free => "free",
            Kind::LongName => "long-name",
            Kind::LongSession => "long-session",
            Kind::RateLimited => "429",
            Kind::RateLimitedStream => "429-stream",
            Kind::Hang => "hang",
            Kind::HangStream => "hang-stream",
            Kind::ServerError => "5xx",
            Kind::ServerErrorStream => "5xx-stream",
            Kind::ErrorBody => "errbody",
            Kind::BadRequest => "badreq",
            Kind::Slow => "slow",
            Kind::SlowStream => "slow-stream",
            Kind::StreamError => "streamerr",
            Kind::Endless => "endless",
            Kind::StalledH1 => "stalled-h1",
            Kind::StalledH2 => "stalled-h2",
            Kind::StalledH2Dropped => "stalled-h2-window0",
            Kind::BigBody => "big-body",
            Kind::Burst => "burst",
        }
    }

    fn stream(self) -> bool {
        matches!(
            self,
            Kind::Stream
                | Kind::RateLimitedStream
                | Kind::HangStream
                | Kind::ServerErrorStream
                | Kind::SlowStream
                | Kind::StreamError
                | Kind::Endless
                | Kind::StalledH1
                | Kind::StalledH2
                | Kind::StalledH2Dropped
        )
    }

    /// The mock behaviour this kind asks for, if any.
    fn behaviour(self) -> Option<&'static str> {
        Some(match self {
            Kind::RateLimited | Kind::RateLimitedStream => "429",
            Kind::Hang | Kind::HangStream => "hang",
            Kind::ServerError | Kind::ServerErrorStream => "5xx",
            Kind::ErrorBody => "errbody",
            Kind::BadRequest => "badreq",
            Kind::Slow | Kind::SlowStream | Kind::Burst => "slow",
            Kind::StreamError => "streamerr",
            Kind::Endless | Kind::StalledH1 | Kind::StalledH2 | Kind::StalledH2Dropped => "endless",
            _ => return None,
        })
    }
}

/// Random visible text from an alphabet without `-`, so that a random name
/// never spells the mock's `soak-` marker.
fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._";
    (0..len).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}

/// A chat request body.
fn chat_body(model: &str, stream: bool, content: &str) -> Bytes {
    let mut body = json!({
        "model": model,
        "messages": [
            { "role": "system", "content": "You are a concise assistant." },
            { "role": "user", "content": content },
        ],
        "max_tokens": 64,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({ "include_usage": true });
    }
    Bytes::from(body.to_string())
}

// --- request bodies --------------------------------------------------------------

/// A request body: whole, or sent in pieces with a pause between them (a
/// slow upload, so that bodies overlap in the gateway).
enum ReqBody {
    Full(Option<Bytes>),
    Paced { pieces: VecDeque<Bytes>, pause: Duration, timer: Pin<Box<Sleep>>, armed: bool },
}

impl ReqBody {
    fn full(bytes: Bytes) -> Self {
        ReqBody::Full(Some(bytes))
    }

    fn paced(bytes: Bytes, pieces: usize, pause: Duration) -> Self {
        let size = bytes.len().div_ceil(pieces.max(1)).max(1);
        let pieces = (0..bytes.len()).step_by(size).map(|at| bytes.slice(at..(at + size).min(bytes.len()))).collect();
        ReqBody::Paced { pieces, pause, timer: Box::pin(tokio::time::sleep(Duration::ZERO)), armed: false }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            ReqBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Paced { pieces, pause, timer, armed } => {
                if *armed {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *armed = false;
                }
                let Some(next) = pieces.pop_front() else { return Poll::Ready(None) };
                timer.as_mut().reset(tokio::time::Instant::now() + *pause);
                *armed = true;
                Poll::Ready(Some(Ok(Frame::data(next))))
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ReqBody::Full(b) => http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Paced { pieces, .. } => {
                http_body::SizeHint::with_exact(pieces.iter().map(|p| p.len() as u64).sum::<u64>())
            }
        }
    }
}

// --- looking for secrets ----------------------------------------------------------

/// Every `PIECE`-byte piece of every secret: seeing any of them in an
/// answer means a secret, or a large part of one, got out.
struct Scanner {
    pieces: HashSet<[u8; PIECE]>,
}

impl Scanner {
    fn new(secrets: &[String]) -> Self {
        let mut pieces = HashSet::new();
        for secret in secrets {
            for window in secret.as_bytes().windows(PIECE) {
                let mut piece = [0; PIECE];
                piece.copy_from_slice(window);
                pieces.insert(piece);
            }
        }
        Self { pieces }
    }

    /// Scans `data`, continuing from the last `PIECE - 1` bytes seen
    /// (`carry`), so that a secret split across two frames is still found.
    /// Returns the text around the first hit.
    fn scan(&self, carry: &mut Vec<u8>, data: &[u8]) -> Option<String> {
        if self.pieces.is_empty() {
            return None;
        }
        carry.extend_from_slice(data);
        let mut hit = None;
        for (at, window) in carry.windows(PIECE).enumerate() {
            let mut piece = [0; PIECE];
            piece.copy_from_slice(window);
            if self.pieces.contains(&piece) {
                let from = at.saturating_sub(60);
                let to = (at + PIECE + 60).min(carry.len());
                hit = Some(String::from_utf8_lossy(&carry[from..to]).into_owned());
                break;
            }
        }
        let keep = carry.len().saturating_sub(PIECE - 1);
        carry.drain(..keep);
        hit
    }
}

// --- tallies ------------------------------------------------------------------------

/// How an answer counts in the verdict.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// What this kind must get.
    Ok,
    /// A 502 that the mock's misbehaviour explains.
    Upstream5xx,
    /// A 503 from the gateway's own bounds (allowed, counted apart).
    Bound503,
    /// Any other 5xx: must be none.
    Unexplained5xx,
    /// Any other answer this kind must not get (or no answer).
    Unexpected,
}

#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<Kind, BTreeMap<String, u64>>,
    skipped: BTreeMap<Kind, u64>,
    ok: u64,
    upstream_5xx: u64,
    bound_503: u64,
    unexplained_5xx: u64,
    unexpected: u64,
    samples: Vec<String>,
    leaks: u64,
    leaks_by_kind: BTreeMap<Kind, u64>,
    leak_samples: Vec<String>,
    /// Streams held by a stalled reader past the idle timeout.
    stalled_streams: u64,
    /// Endless streams read to their end (cut at the maximum duration).
    endless_streams: u64,
}

struct Ctx {
    args: Args,
    client: Client<HttpConnector, ReqBody>,
    scanner: Scanner,
    tally: Mutex<Tally>,
    names: AtomicU64,
    sessions: AtomicU64,
    serial: AtomicU64,
    /// Recent session ids, some of which `free` requests send again.
    recent_sessions: Mutex<VecDeque<String>>,
    stop_at: Instant,
}

impl Ctx {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, kind: Kind, label: &str, class: Class, detail: Option<String>) {
        let mut t = self.tally();
        *t.by_kind.entry(kind).or_default().entry(label.to_owned()).or_default() += 1;
        match class {
            Class::Ok => t.ok += 1,
            Class::Upstream5xx => t.upstream_5xx += 1,
            Class::Bound503 => t.bound_503 += 1,
            Class::Unexplained5xx => t.unexplained_5xx += 1,
            Class::Unexpected => t.unexpected += 1,
        }
        let prefix = format!("{}: {label}: ", kind.name());
        let shown = t.samples.iter().filter(|s| s.starts_with(&prefix)).count();
        if matches!(class, Class::Unexplained5xx | Class::Unexpected) && shown < 2 && t.samples.len() < SAMPLES {
            let detail = detail.unwrap_or_default();
            let detail: String = detail.chars().take(400).collect();
            t.samples.push(format!("{prefix}{detail}"));
        }
    }

    fn leak(&self, kind: Kind, context: String) {
        let mut t = self.tally();
        t.leaks += 1;
        *t.leaks_by_kind.entry(kind).or_default() += 1;
        if t.leak_samples.len() < SAMPLES {
            t.leak_samples.push(format!("{}: …{context}…", kind.name()));
        }
    }

    /// A fresh `mock/<name>` of at most 256 bytes, never seen before.
    fn fresh_name(&self) -> String {
        let n = self.names.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("mock/{n:x}.");
        let len = fastrand::usize(prefix.len()..=MAX_NAME);
        format!("{prefix}{}", random_text(len - prefix.len()))
    }

    /// A fresh session id of 8 to 256 bytes.
    fn fresh_session(&self) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("s{n:x}.");
        let len = fastrand::usize(prefix.len().max(8)..=MAX_NAME);
        format!("{prefix}{}", random_text(len - prefix.len()))
    }

    /// Whether `--only` (if given) names this kind.
    fn wanted(&self, kind: Kind) -> bool {
        self.args.only.as_ref().is_none_or(|only| only.iter().any(|k| k == kind.key()))
    }

    fn serial(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::Relaxed)
    }

    fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.args.addr)
    }
}

// --- answers ------------------------------------------------------------------------

/// What came back, with the body's start and end kept for judging.
struct Answer {
    status: u16,
    headers: HeaderMap,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.head).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.head[..self.head.len().min(300)]).into_owned();
        if self.head.len() > 300 {
            text.push_str(" … ");
            text.push_str(&String::from_utf8_lossy(&self.tail[self.tail.len().saturating_sub(300)..]));
        }
        text
    }

    fn ends_done(&self) -> bool {
        self.tail.ends_with(b"data: [DONE]\n\n")
    }

    fn tail_has(&self, needle: &str) -> bool {
        memchr::memmem::find(&self.tail, needle.as_bytes()).is_some()
    }
}

/// Keeps the first `KEEP_HEAD` and the last `KEEP_TAIL` bytes of a body.
struct Keeper {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Keeper {
    fn new() -> Self {
        Self { head: Vec::new(), tail: Vec::new() }
    }

    fn push(&mut self, data: &[u8]) {
        if self.head.len() < KEEP_HEAD {
            let take = (KEEP_HEAD - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
        }
        self.tail.extend_from_slice(data);
        if self.tail.len() > 2 * KEEP_TAIL {
            let cut = self.tail.len() - KEEP_TAIL;
            self.tail.drain(..cut);
        }
    }
}

/// Scans the headers, then reads the body to its end (scanning it too).
async fn read_answer(ctx: &Ctx, kind: Kind, response: Response<Incoming>) -> Result<Answer, String> {
    let (parts, mut body) = response.into_parts();
    for (name, value) in &parts.headers {
        let mut carry = Vec::new();
        let line = format!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        if let Some(context) = ctx.scanner.scan(&mut carry, line.as_bytes()) {
            ctx.leak(kind, format!("header {context}"));
        }
    }
    let mut keeper = Keeper::new();
    let mut carry = Vec::new();
    let mut leaked = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if !leaked && let Some(context) = ctx.scanner.scan(&mut carry, &data) {
                ctx.leak(kind, format!("body {context}"));
                leaked = true;
            }
            keeper.push(&data);
        }
    }
    Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, head: keeper.head, tail: keeper.tail })
}

/// Whether a 502's attempts all failed the way the mock's behaviour fails.
fn upstream_explains(kind: Kind, answer: &Answer) -> bool {
    let body = answer.json();
    let Some(attempts) = body["error"]["attempts"].as_array() else { return false };
    if attempts.is_empty() {
        return false;
    }
    attempts.iter().all(|a| {
        let status = a["status"].as_u64();
        let reason = a["reason"].as_str().unwrap_or_default();
        match kind.behaviour() {
            Some("5xx") => matches!(status, Some(500 | 503)),
            Some("hang") => status.is_none() && reason.contains("timed out"),
            Some("errbody") => status == Some(200),
            Some("429") => status == Some(429),
            _ => false,
        }
    })
}

/// Judges an answer against what its kind must get.
fn judge(kind: Kind, answer: &Answer) -> (String, Class) {
    let status = answer.status;
    let code = answer.json()["error"]["code"].as_str().unwrap_or_default().to_owned();
    if status == 503 && code == "overloaded" {
        return ("503 overloaded (bound)".into(), Class::Bound503);
    }
    if status == 502 {
        return if upstream_explains(kind, answer) {
            ("502 (upstream failed)".into(), Class::Upstream5xx)
        } else {
            ("502 UNEXPLAINED".into(), Class::Unexplained5xx)
        };
    }
    if status >= 500 {
        return (format!("{status} UNEXPLAINED"), Class::Unexplained5xx);
    }
    let ok = |label: &str| (label.to_owned(), Class::Ok);
    let bad = |label: &str| (format!("{status} UNEXPECTED ({label})"), Class::Unexpected);
    match kind {
        Kind::LongName | Kind::LongSession | Kind::BadRequest if status == 400 => ok("400"),
        Kind::RateLimited | Kind::RateLimitedStream if status == 429 => {
            if answer.headers.contains_key("retry-after") {
                ok("429")
            } else {
                bad("no Retry-After")
            }
        }
        _ if status != 200 => bad("status"),
        Kind::StreamError => {
            if answer.tail_has("\"stream_failed\"") && !answer.ends_done() {
                ok("200, error event")
            } else {
                bad("no error event")
            }
        }
        Kind::Endless => {
            if answer.tail_has("stream_max_duration") {
                ok("200, cut at max duration")
            } else {
                bad("not cut at max duration")
            }
        }
        _ if kind.stream() => {
            if answer.ends_done() {
                ok("200")
            } else {
                bad("stream without [DONE]")
            }
        }
        _ => {
            if answer.json()["choices"].is_array() {
                ok("200")
            } else {
                bad("not a completion")
            }
        }
    }
}

// --- request kinds --------------------------------------------------------------------

/// One request of `kind` through the pooled HTTP/1.1 client.
async fn one(ctx: Arc<Ctx>, kind: Kind) {
    let serial = ctx.serial();
    let stream = kind.stream();
    let mut session = None;
    let (model, content) = match kind {
        Kind::Chat | Kind::Stream => {
            session = Some(ctx.fresh_session());
            (ctx.fresh_name(), "Say hello.".to_owned())
        }
        Kind::Free => {
            let reuse = fastrand::u8(..10) == 0;
            let mut recent = ctx.recent_sessions.lock().unwrap_or_else(|e| e.into_inner());
            let id = match recent.get(fastrand::usize(..recent.len().max(1))) {
                Some(id) if reuse => id.clone(),
                _ => {
                    let id = ctx.fresh_session();
                    recent.push_back(id.clone());
                    if recent.len() > 256 {
                        recent.pop_front();
                    }
                    id
                }
            };
            session = Some(id);
            ("free".to_owned(), "A soak question: say hello.".to_owned())
        }
        Kind::LongName => {
            let len = fastrand::usize(MAX_NAME + 1..=1200);
            (format!("mock/{}", random_text(len - 5)), "Say hello.".to_owned())
        }
        Kind::LongSession => {
            session = Some(random_text(fastrand::usize(MAX_NAME + 1..=2000)));
            (ctx.fresh_name(), "Say hello.".to_owned())
        }
        Kind::RateLimited | Kind::RateLimitedStream => {
            // A few names, so that most requests meet a cooldown.
            (format!("mock/soak-429-{}", serial % 16), "Say hello.".to_owned())
        }
        Kind::BigBody => {
            let size = fastrand::usize(256 * 1024..=900 * 1024);
            (format!("mock/big-{serial:x}"), "x".repeat(size))
        }
        _ => {
            let behaviour = kind.behaviour().unwrap_or("none");
            (format!("mock/soak-{behaviour}-{serial:x}"), "Say hello.".to_owned())
        }
    };
    let bytes = chat_body(&model, stream, &content);
    let body =
        if kind == Kind::BigBody { ReqBody::paced(bytes, 8, Duration::from_millis(200)) } else { ReqBody::full(bytes) };
    let mut request = Request::post(ctx.url()).header("content-type", "application/json");
    if let Some(session) = session {
        request = request.header("x-session-id", session);
    }
    let request = match request.body(body) {
        Ok(request) => request,
        Err(e) => return ctx.record(kind, "could not build the request", Class::Unexpected, Some(e.to_string())),
    };
    let limit =
        if kind == Kind::Endless { ctx.args.max_duration + Duration::from_secs(30) } else { Duration::from_secs(60) };
    let started = Instant::now();
    let exchange = async {
        let response = ctx.client.request(request).await.map_err(|e| format!("request: {e:?}"))?;
        read_answer(&ctx, kind, response).await
    };
    match timeout(limit, exchange).await {
        Err(_) => ctx.record(kind, "no answer in time", Class::Unexpected, Some(format!("{limit:?}"))),
        Ok(Err(e)) => ctx.record(kind, "transport error", Class::Unexpected, Some(e)),
        Ok(Ok(answer)) => {
            let (label, class) = judge(kind, &answer);
            if kind == Kind::Endless && class == Class::Ok {
                ctx.tally().endless_streams += 1;
                // Cut at the maximum duration, not long after it.
                if started.elapsed() > ctx.args.max_duration + Duration::from_secs(5) {
                    let late = format!("lasted {:?}", started.elapsed());
                    return ctx.record(kind, "cut late", Class::Unexpected, Some(late));
                }
            }
            ctx.record(kind, &label, class, Some(answer.text()));
        }
    }
}

/// How long a stalled reader stops reading: well past the idle timeout and
/// the watchdog's tick, well short of the maximum duration.
fn hold(ctx: &Ctx) -> Duration {
    (ctx.args.idle * 2 + Duration::from_secs(3)).min(ctx.args.max_duration.saturating_sub(Duration::from_secs(4)))
}

/// An HTTP/1.1 client with a tiny receive buffer that starts an endless
/// stream, reads its headers, stops reading for [`hold`], then reads on:
/// the stream must end with the watchdog's error event.
async fn stalled_h1(ctx: Arc<Ctx>) {
    let kind = Kind::StalledH1;
    match timeout(hold(&ctx) + Duration::from_secs(40), stalled_h1_exchange(&ctx)).await {
        Err(_) => ctx.record(kind, "not closed after the hold", Class::Unexpected, None),
        Ok(Err(e)) => ctx.record(kind, "transport error", Class::Unexpected, Some(e)),
        Ok(Ok(answer)) => {
            ctx.tally().stalled_streams += 1;
            let verdict = if answer.status != 200 {
                judge(kind, &answer)
            } else if answer.tail_has("stopped reading") {
                ("200, cut: client stopped reading".into(), Class::Ok)
            } else {
                ("200 UNEXPECTED (no stalled-client cut)".into(), Class::Unexpected)
            };
            ctx.record(kind, &verdict.0, verdict.1, Some(answer.text()));
        }
    }
}

async fn stalled_h1_exchange(ctx: &Ctx) -> Result<Answer, String> {
    let kind = Kind::StalledH1;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // The kernel doubles it and has a floor (~4.5 KB): tiny either way.
    socket.set_recv_buffer_size(1024).map_err(|e| e.to_string())?;
    let mut stream = socket.connect(ctx.args.addr).await.map_err(|e| format!("connect: {e}"))?;
    // A fast endless stream: the kernel's socket buffers (autotuned up to
    // net.ipv4.tcp_wmem's maximum, 4 MB by default) must fill before
    // freeway can see that its client stopped reading.
    let body = chat_body(&format!("mock/soak-flood-h1-{:x}", ctx.serial()), true, "Go on for ever.");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        ctx.args.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.write_all(&body).await.map_err(|e| e.to_string())?;
    // Read up to the end of the response headers, then stop.
    let mut received = Vec::new();
    let mut buf = vec![0; 4096];
    let header_end = loop {
        let n = timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .map_err(|_| "no response headers".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the headers".into());
        }
        received.extend_from_slice(&buf[..n]);
        if let Some(at) = memchr::memmem::find(&received, b"\r\n\r\n") {
            break at + 4;
        }
    };
    let status = std::str::from_utf8(&received[..header_end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no status line")?;
    let mut carry = Vec::new();
    if let Some(context) = ctx.scanner.scan(&mut carry, &received) {
        ctx.leak(kind, context);
    }
    let mut keeper = Keeper::new();
    keeper.push(&received[header_end..]);
    if status == 200 {
        tokio::time::sleep(hold(ctx)).await;
    }
    // Read on to the end: the last chunk (`0\r\n\r\n`) or the connection's end.
    loop {
        let n = timeout(Duration::from_secs(15), stream.read(&mut buf))
            .await
            .map_err(|_| "the stream did not end after the hold".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        if let Some(context) = ctx.scanner.scan(&mut carry, &buf[..n]) {
            ctx.leak(kind, context);
        }
        keeper.push(&buf[..n]);
        if keeper.tail.ends_with(b"\r\n0\r\n\r\n") || (status != 200 && keeper.tail.ends_with(b"}")) {
            break;
        }
    }
    Ok(Answer { status, headers: HeaderMap::new(), head: keeper.head, tail: keeper.tail })
}

/// One HTTP/2 connection with more endless streams than
/// `max_streams_per_connection` allows at once. With `window` 0 no data can
/// flow: each stream is held, then dropped. With a small window each
/// stream is held, then read: it must end with the watchdog's error event.
async fn stalled_h2(ctx: Arc<Ctx>, streams: usize, window: u32) {
    let kind = if window == 0 { Kind::StalledH2Dropped } else { Kind::StalledH2 };
    let tcp = match TcpStream::connect(ctx.args.addr).await {
        Ok(tcp) => tcp,
        Err(e) => return ctx.record(kind, "connect error", Class::Unexpected, Some(e.to_string())),
    };
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(1 << 20)
        .adaptive_window(false)
        .handshake::<_, ReqBody>(TokioIo::new(tcp))
        .await;
    let (sender, connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => return ctx.record(kind, "handshake error", Class::Unexpected, Some(e.to_string())),
    };
    let driver = tokio::spawn(connection);
    let mut tasks = Vec::new();
    for i in 0..streams {
        let ctx = ctx.clone();
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let model = format!("mock/soak-endless-h2-{:x}-{i}", ctx.serial());
            let request = Request::post(ctx.url())
                .header("content-type", "application/json")
                .body(ReqBody::full(chat_body(&model, true, "Go on for ever.")));
            let request = match request {
                Ok(request) => request,
                Err(e) => {
                    return ctx.record(kind, "could not build the request", Class::Unexpected, Some(e.to_string()));
                }
            };
            let limit = hold(&ctx) * 3 + Duration::from_secs(60);
            let exchange = async {
                sender.ready().await.map_err(|e| format!("ready: {e}"))?;
                let response = sender.send_request(request).await.map_err(|e| format!("request: {e:?}"))?;
                if response.status() != 200 {
                    if window == 0 {
                        // No body can arrive through a closed window: judge
                        // by the status alone.
                        return Ok(Some(Answer {
                            status: response.status().as_u16(),
                            headers: response.headers().clone(),
                            head: Vec::new(),
                            tail: Vec::new(),
                        }));
                    }
                    return read_answer(&ctx, kind, response).await.map(Some);
                }
                tokio::time::sleep(hold(&ctx)).await;
                if window == 0 {
                    drop(response);
                    return Ok(None);
                }
                timeout(Duration::from_secs(15), read_answer(&ctx, kind, response))
                    .await
                    .map_err(|_| "the stream did not end after the hold".to_owned())?
                    .map(Some)
            };
            match timeout(limit, exchange).await {
                Err(_) => ctx.record(kind, "no answer in time", Class::Unexpected, None),
                // The client sent more streams than the server allows before
                // it saw the server's SETTINGS: refusing them is right.
                Ok(Err(e)) if e.contains("REFUSED_STREAM") => {
                    ctx.record(kind, "refused (over max_streams_per_connection)", Class::Ok, None)
                }
                Ok(Err(e)) => ctx.record(kind, "transport error", Class::Unexpected, Some(e)),
                Ok(Ok(None)) => {
                    ctx.tally().stalled_streams += 1;
                    ctx.record(kind, "200, held and dropped", Class::Ok, None);
                }
                Ok(Ok(Some(answer))) => {
                    let verdict = if answer.status == 503 && window == 0 {
                        ("503 (window 0: body not read)".into(), Class::Bound503)
                    } else if answer.status != 200 {
                        judge(kind, &answer)
                    } else if answer.tail_has("stopped reading") {
                        ctx.tally().stalled_streams += 1;
                        ("200, cut: client stopped reading".into(), Class::Ok)
                    } else {
                        ("200 UNEXPECTED (no stalled-client cut)".into(), Class::Unexpected)
                    };
                    ctx.record(kind, &verdict.0, verdict.1, Some(answer.text()));
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    drop(sender);
    driver.abort();
}

// --- pacing -----------------------------------------------------------------------------

/// Starts `job` `rate` times a second with at most `bound` of them running,
/// until the end of the run. A tick that finds the bound reached is skipped
/// (and counted), so that a slow gateway gets less load, not a queue.
async fn generate<F, Fut>(ctx: Arc<Ctx>, kind: Kind, rate: f64, bound: usize, job: F)
where
    F: Fn(Arc<Ctx>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rate = rate * ctx.args.scale;
    if rate <= 0.0 || !ctx.wanted(kind) {
        return;
    }
    let slots = Arc::new(Semaphore::new(bound));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = Vec::new();
    while Instant::now() < ctx.stop_at {
        ticker.tick().await;
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let fut = job(ctx.clone());
                running.push(tokio::spawn(async move {
                    fut.await;
                    drop(slot);
                }));
            }
            Err(_) => *ctx.tally().skipped.entry(kind).or_default() += 1,
        }
        running.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
    }
    for task in running {
        let _ = task.await;
    }
}

/// Every 20 s, `size` slow requests at once: more than `max_in_flight`.
async fn bursts(ctx: Arc<Ctx>, size: usize) {
    if !ctx.wanted(Kind::Burst) {
        return;
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(20));
    ticker.tick().await;
    while Instant::now() + Duration::from_secs(5) < ctx.stop_at {
        ticker.tick().await;
        let wave: Vec<_> = (0..size).map(|_| tokio::spawn(one(ctx.clone(), Kind::Burst))).collect();
        for task in wave {
            let _ = task.await;
        }
    }
}

// --- report --------------------------------------------------------------------------------

fn report(ctx: &Ctx, elapsed: Duration) -> (String, bool) {
    let t = ctx.tally();
    let mut out = String::new();
    let total: u64 = t.by_kind.values().flat_map(|m| m.values()).sum();
    let _ = writeln!(out, "requests by kind and answer ({total} in {:.0} s):", elapsed.as_secs_f64());
    for (kind, labels) in &t.by_kind {
        let n: u64 = labels.values().sum();
        let detail: Vec<String> = labels.iter().map(|(label, count)| format!("{label}: {count}")).collect();
        let skipped = t.skipped.get(kind).map(|s| format!("  [{s} ticks skipped at the bound]")).unwrap_or_default();
        let _ = writeln!(out, "  {:<28} {:>7}  {}{skipped}", kind.name(), n, detail.join(", "));
    }
    let names = ctx.names.load(Ordering::Relaxed);
    let sessions = ctx.sessions.load(Ordering::Relaxed);
    let _ = writeln!(out, "distinct model names sent (<= 256 B): {names}; distinct session ids: {sessions}");
    let _ = writeln!(
        out,
        "answers as expected: {}; 502 caused by the upstream: {}; 503 from freeway's bounds: {}",
        t.ok, t.upstream_5xx, t.bound_503
    );
    let _ = writeln!(
        out,
        "5xx NOT caused by the upstream: {}; other unexpected answers: {}",
        t.unexplained_5xx, t.unexpected
    );
    for sample in &t.samples {
        let _ = writeln!(out, "  ! {sample}");
    }
    let by_kind: Vec<String> = t.leaks_by_kind.iter().map(|(k, n)| format!("{}: {n}", k.name())).collect();
    let by_kind = if by_kind.is_empty() { String::new() } else { format!(" ({})", by_kind.join(", ")) };
    let _ = writeln!(out, "answers with a secret in them (headers, bodies, stream events): {}{by_kind}", t.leaks);
    for sample in &t.leak_samples {
        let _ = writeln!(out, "  ! {sample}");
    }
    let pass = t.unexplained_5xx == 0 && t.unexpected == 0 && t.leaks == 0 && total > 0;
    (out, pass)
}

fn write_summary(ctx: &Ctx, path: &str, pass: bool) -> std::io::Result<()> {
    let t = ctx.tally();
    let total: u64 = t.by_kind.values().flat_map(|m| m.values()).sum();
    let lines = [
        ("requests", total),
        ("ok", t.ok),
        ("upstream_5xx", t.upstream_5xx),
        ("bound_503", t.bound_503),
        ("unexplained_5xx", t.unexplained_5xx),
        ("unexpected", t.unexpected),
        ("leaks", t.leaks),
        ("stalled_streams", t.stalled_streams),
        ("endless_streams", t.endless_streams),
        ("names", ctx.names.load(Ordering::Relaxed)),
        ("sessions", ctx.sessions.load(Ordering::Relaxed)),
        ("pass", u64::from(pass)),
    ];
    let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(path, text)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // Idle connections are dropped before freeway closes them (its
    // header_read_timeout, 10 s): reusing one freeway is closing at that
    // moment fails the request, a race of the client's making.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(128)
        .pool_idle_timeout(Duration::from_secs(5))
        .build(connector);
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        scanner: Scanner::new(&args.secrets),
        stop_at: started + args.duration,
        args,
        client,
        tally: Mutex::new(Tally::default()),
        names: AtomicU64::new(0),
        sessions: AtomicU64::new(0),
        serial: AtomicU64::new(0),
        recent_sessions: Mutex::new(VecDeque::new()),
    });

    // (kind, requests per second, bound on those in flight)
    let plain = [
        (Kind::Chat, 150.0, 64),
        (Kind::Stream, 60.0, 64),
        (Kind::Free, 20.0, 32),
        (Kind::LongName, 5.0, 8),
        (Kind::LongSession, 2.0, 8),
        (Kind::RateLimited, 6.0, 16),
        (Kind::RateLimitedStream, 3.0, 16),
        (Kind::Hang, 2.0, 16),
        (Kind::HangStream, 1.0, 16),
        (Kind::ServerError, 6.0, 16),
        (Kind::ServerErrorStream, 3.0, 16),
        (Kind::ErrorBody, 3.0, 16),
        (Kind::BadRequest, 3.0, 16),
        (Kind::Slow, 2.0, 16),
        (Kind::SlowStream, 4.0, 32),
        (Kind::StreamError, 3.0, 16),
        (Kind::Endless, 0.2, 6),
        (Kind::BigBody, 4.0, 12),
    ];
    let mut generators = Vec::new();
    for (kind, rate, bound) in plain {
        generators.push(tokio::spawn(generate(ctx.clone(), kind, rate, bound, move |ctx| one(ctx, kind))));
    }
    generators.push(tokio::spawn(generate(ctx.clone(), Kind::StalledH1, 0.5, 8, stalled_h1)));
    // 48 streams on a connection that allows 32 at once: the rest wait.
    generators.push(tokio::spawn(generate(ctx.clone(), Kind::StalledH2, 0.1, 2, |ctx| stalled_h2(ctx, 48, 1024))));
    generators.push(tokio::spawn(generate(ctx.clone(), Kind::StalledH2Dropped, 0.1, 2, |ctx| stalled_h2(ctx, 40, 0))));
    generators.push(tokio::spawn(bursts(ctx.clone(), 150)));

    // Progress, so that a long run shows it is alive.
    let progress = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(30));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let t = ctx.tally();
                let total: u64 = t.by_kind.values().flat_map(|m| m.values()).sum();
                eprintln!(
                    "soak_client: {:>4.0} s, {total} answers, {} unexplained 5xx, {} unexpected, {} leaks",
                    started.elapsed().as_secs_f64(),
                    t.unexplained_5xx,
                    t.unexpected,
                    t.leaks
                );
            }
        })
    };
    for generator in generators {
        let _ = generator.await;
    }
    progress.abort();

    let (text, pass) = report(&ctx, started.elapsed());
    print!("{text}");
    if let Some(path) = &ctx.args.summary {
        write_summary(&ctx, path, pass)?;
    }
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}
