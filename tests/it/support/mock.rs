//! A mock OpenAI-compatible upstream: a real hyper server on a loopback
//! port whose behaviour is set per test (and per model or key), and which
//! logs every request it receives.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

/// What the mock does with a request.
#[derive(Clone)]
pub enum Behavior {
    /// A normal answer (JSON, or an SSE stream of `chunks` chunks when the
    /// request asks for a stream).
    Ok,
    /// An error status with an optional `Retry-After` and a body.
    Status { status: u16, retry_after: Option<String>, body: String },
    /// Accept the request and never answer.
    Hang,
    /// Stream `n` chunks, then break the connection.
    CutAfter(usize),
    /// Stream one chunk, then wait for a permit on the gate before the rest.
    Gated(Arc<Semaphore>),
    /// Wait for a permit on the gate, then answer normally (JSON).
    Held(Arc<Semaphore>),
    /// Stream one chunk, then go silent (connection stays open).
    StallAfterFirst,
    /// A 200 whose body is this text (for answers that are not chat completions).
    Raw(String),
    /// Any wire format: the reply is computed from the request (for mocks
    /// of providers that do not speak OpenAI's API).
    Custom(Responder),
    /// Stream chunks of about `size` bytes every millisecond, for ever: until
    /// the gateway lets go of the stream ([`Mock::open_streams`] tells).
    Endless(usize),
}

/// Computes a reply from the request: for native wire formats (Gemini,
/// Cohere, Anthropic...).
pub type Responder = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A scripted reply.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Sent one piece at a time, with a flush between: a stream arrives in
    /// these pieces (split them at awkward places to test decoders).
    pub pieces: Vec<String>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self { status, headers: vec![("content-type".into(), "application/json".into())], pieces: vec![body.into()] }
    }

    /// An SSE answer sent in these pieces.
    pub fn sse(pieces: Vec<String>) -> Self {
        Self { status: 200, headers: vec![("content-type".into(), "text/event-stream".into())], pieces }
    }
}

impl std::fmt::Debug for Behavior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Custom(_) => f.write_str("Custom"),
            other => write!(f, "{}", other.name()),
        }
    }
}

impl Behavior {
    fn name(&self) -> &'static str {
        match self {
            Self::Ok => "Ok",
            Self::Status { .. } => "Status",
            Self::Hang => "Hang",
            Self::CutAfter(_) => "CutAfter",
            Self::Gated(_) => "Gated",
            Self::Held(_) => "Held",
            Self::StallAfterFirst => "StallAfterFirst",
            Self::Raw(_) => "Raw",
            Self::Custom(_) => "Custom",
            Self::Endless(_) => "Endless",
        }
    }
}

impl Behavior {
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            retry_after: None,
            body: json!({"error": {"message": format!("mock says {status}")}}).to_string(),
        }
    }

    pub fn rate_limited(retry_after: &str) -> Self {
        Self::Status {
            status: 429,
            retry_after: Some(retry_after.to_owned()),
            body: json!({"error": {"message": "rate limit reached"}}).to_string(),
        }
    }
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub model: String,
    pub key: Option<String>,
    pub stream: bool,
    pub body: Value,
    /// The body's bytes as they arrived.
    pub raw: bytes::Bytes,
}

struct Rule {
    model: Option<String>,
    key: Option<String>,
    behavior: Behavior,
    once: bool,
}

#[derive(Default)]
struct State {
    rules: VecDeque<Rule>,
    seen: Vec<Seen>,
    /// Endless streams still being sent.
    open_streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// A running mock upstream.
#[derive(Clone)]
pub struct Mock {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

/// Chunks in a normal stream.
pub const STREAM_CHUNKS: usize = 3;

impl Mock {
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// A mock behind TLS (HTTP/2 and HTTP/1.1 offered by ALPN), with a
    /// certificate for 127.0.0.1 issued by a fresh CA; returns the CA in PEM.
    pub async fn start_tls() -> (Self, String) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mock = Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
        (mock, ca.pem())
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // As real servers do: without it, an answer written in two
                // pieces waits for the client's delayed ACK (~40 ms).
                let _ = stream.set_nodelay(true);
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    if let Some(tls) = tls {
                        let Ok(stream) = tls.accept(stream).await else { return };
                        let _ =
                            Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                        return;
                    }
                    let _ = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, state, connections }
    }

    /// Endless streams of this mock the gateway still holds.
    pub fn open_streams(&self) -> usize {
        self.state.lock().unwrap().open_streams.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request to `model` gets `behavior` (most recent rule wins).
    pub fn on_model(&self, model: &str, behavior: Behavior) {
        self.rule(Some(model), None, behavior, false);
    }

    /// Every request with `key` gets `behavior`.
    pub fn on_key(&self, key: &str, behavior: Behavior) {
        self.rule(None, Some(key), behavior, false);
    }

    /// The next request to `model` gets `behavior`, later ones the rest.
    pub fn once_model(&self, model: &str, behavior: Behavior) {
        self.rule(Some(model), None, behavior, true);
    }

    /// Every request gets `behavior`.
    pub fn on_all(&self, behavior: Behavior) {
        self.rule(None, None, behavior, false);
    }

    fn rule(&self, model: Option<&str>, key: Option<&str>, behavior: Behavior, once: bool) {
        let mut state = self.state.lock().unwrap();
        state.rules.push_front(Rule { model: model.map(str::to_owned), key: key.map(str::to_owned), behavior, once });
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many chat requests named `model`.
    pub fn calls_to(&self, model: &str) -> usize {
        self.seen().iter().filter(|s| s.model == model && !s.path.ends_with("/models")).count()
    }

    /// Every request except model listings.
    pub fn chats(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| !s.path.ends_with("/models")).collect()
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let version = req.version();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let method = req.method().to_string();
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned())).collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    // The key, wherever this wire format carries it.
    let key = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-goog-api-key"));
    let bytes = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // OpenAI carries the model in the body; Gemini in the path (models/{model}:...).
    let model = body["model"].as_str().map(str::to_owned).unwrap_or_else(|| {
        path.rsplit('/').next().and_then(|last| last.split(':').next()).unwrap_or_default().to_owned()
    });
    let stream = body["stream"].as_bool().unwrap_or(false)
        || path.contains("streamGenerateContent")
        || query.as_deref().is_some_and(|q| q.contains("alt=sse"));
    let seen = Seen {
        version,
        method,
        path: path.clone(),
        query,
        headers,
        model: model.clone(),
        key: key.clone(),
        stream,
        body,
        raw: bytes.clone(),
    };
    let behavior = {
        let mut s = state.lock().unwrap();
        s.seen.push(seen);
        let listing = path.ends_with("/models");
        let found = s.rules.iter().position(|r| {
            if listing {
                // Model listings: only a catch-all custom responder answers them.
                return r.model.is_none() && r.key.is_none() && matches!(r.behavior, Behavior::Custom(_));
            }
            r.model.as_deref().is_none_or(|m| m == model) && r.key.as_deref().is_none_or(|k| Some(k) == key.as_deref())
        });
        match found {
            Some(i) if s.rules[i].once => s.rules.remove(i).map(|r| r.behavior).unwrap_or(Behavior::Ok),
            Some(i) => s.rules[i].behavior.clone(),
            None if listing => {
                return Ok(full(
                    200,
                    json!({"object": "list", "data": [{"id": "listed-model", "object": "model"}]}).to_string(),
                ));
            }
            None => Behavior::Ok,
        }
    };
    Ok(match behavior {
        Behavior::Ok if stream => sse(model, STREAM_CHUNKS, StreamEnd::Done),
        Behavior::Ok => full(200, completion(&model)),
        Behavior::Status { status, retry_after, body } => {
            let mut r = full(status, body);
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            r
        }
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            full(500, String::new())
        }
        Behavior::CutAfter(n) => sse(model, n, StreamEnd::Break),
        Behavior::Gated(gate) => sse(model, 1, StreamEnd::Gate(gate)),
        Behavior::Held(gate) => {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            full(200, completion(&model))
        }
        Behavior::StallAfterFirst => sse(model, 1, StreamEnd::Stall),
        Behavior::Raw(text) => full(200, text),
        Behavior::Custom(responder) => {
            let seen = state.lock().unwrap().seen.last().cloned().unwrap();
            pieces(responder(&seen))
        }
        Behavior::Endless(size) => {
            let open = state.lock().unwrap().open_streams.clone();
            endless(model, size, open)
        }
    })
}

pub fn completion(model: &str) -> String {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from mock"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    })
    .to_string()
}

pub fn chunk(model: &str, i: usize) -> String {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": {"content": format!("part{i} ")}, "finish_reason": null}]
    })
    .to_string()
}

enum StreamEnd {
    Done,
    Break,
    Gate(Arc<Semaphore>),
    Stall,
}

fn sse(model: String, chunks: usize, end: StreamEnd) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    tokio::spawn(async move {
        let send = |text: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_ok() }
        };
        for i in 0..chunks {
            if !send(format!("data: {}\n\n", chunk(&model, i))).await {
                return;
            }
        }
        match end {
            StreamEnd::Done => {}
            StreamEnd::Break => {
                // Let hyper flush what was sent before the connection breaks.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                return;
            }
            StreamEnd::Gate(gate) => {
                let _permit = gate.acquire().await;
                for i in 1..STREAM_CHUNKS {
                    if !send(format!("data: {}\n\n", chunk(&model, i))).await {
                        return;
                    }
                }
            }
            StreamEnd::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
        }
        let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
        let _ = send(format!("data: {usage}\n\n")).await;
        let _ = send("data: [DONE]\n\n".to_owned()).await;
    });
    let mut r = Response::new(MockBody::Channel(rx));
    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    r
}

fn endless(model: String, size: usize, open: Arc<std::sync::atomic::AtomicUsize>) -> Response<MockBody> {
    use std::sync::atomic::Ordering;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    open.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let text = "x".repeat(size);
        for i in 0.. {
            let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"content": format!("{i} {text}")}, "finish_reason": null}]});
            if tx.send(Ok(Frame::data(Bytes::from(format!("data: {chunk}\n\n"))))).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        open.fetch_sub(1, Ordering::SeqCst);
    });
    let mut r = Response::new(MockBody::Channel(rx));
    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    r
}

fn pieces(reply: Reply) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    tokio::spawn(async move {
        for piece in reply.pieces {
            if tx.send(Ok(Frame::data(Bytes::from(piece)))).await.is_err() {
                return;
            }
            // Let each piece go out on its own.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut r = Response::new(MockBody::Channel(rx));
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        r.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    r
}

fn full(status: u16, body: String) -> Response<MockBody> {
    let mut r = Response::new(MockBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

pub enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut *self {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx),
        }
    }
}

/// An upstream that behaves like a model driving an agent: while the
/// conversation has no tool result, it calls `tool` with `arguments`; once
/// it has one, it answers in text that quotes the result (`done: ...`).
/// Streams (with usage) when asked to, the tool call's arguments in two
/// pieces.
pub fn agent(tool: &'static str, arguments: Value) -> Behavior {
    agent_of(vec![(tool, arguments)])
}

/// [`agent`] for a client that offers its own tools: the first of `calls`
/// whose tool the request offers is called; a request that offers none of
/// them (an agent's side requests: titles, summaries) gets a plain answer.
pub fn agent_of(calls: Vec<(&'static str, Value)>) -> Behavior {
    scripted_agent(calls, false)
}

/// [`agent_of`] for a target that reasons and signs its calls as Gemini 3
/// does: reasoning text before the call, and a thought signature on the
/// call (`extra_content`, [`THOUGHT_SIGNATURE`]) that it needs back.
pub fn signed_agent_of(calls: Vec<(&'static str, Value)>) -> Behavior {
    scripted_agent(calls, true)
}

/// The signature [`signed_agent_of`] puts on its calls.
pub const THOUGHT_SIGNATURE: &str = "c2lnbmVkIGJ5IHRoZSBtb2Nr";

fn scripted_agent(calls: Vec<(&'static str, Value)>, signed: bool) -> Behavior {
    Behavior::Custom(Arc::new(move |seen| {
        let offered = |name: &str| {
            seen.body["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["function"]["name"] == name || t["name"] == name)
        };
        let found = calls.iter().find(|(name, _)| offered(name)).cloned();
        let messages = seen.body["messages"].as_array().cloned().unwrap_or_default();
        let result = messages.iter().rev().find(|m| m["role"] == "tool").map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        // A side request offering none of the tools: a plain answer.
        let result = if found.is_none() { Some(result.unwrap_or_else(|| "ok".to_owned())) } else { result };
        let (tool, arguments) = found.unwrap_or(("", Value::Null));
        let model = seen.model.clone();
        let args = arguments.to_string();
        let usage = json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16});
        if !seen.stream {
            let message = match &result {
                Some(r) => json!({"role": "assistant", "content": format!("done: {r}")}),
                None => json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": args}}]}),
            };
            let mut message = message;
            if signed && result.is_none() {
                message["reasoning_content"] = json!("I will call the tool.");
                message["tool_calls"][0]["extra_content"] = json!({"google": {"thought_signature": THOUGHT_SIGNATURE}});
            }
            let finish = if result.is_some() { "stop" } else { "tool_calls" };
            let body = json!({"id": "chatcmpl-agent", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage});
            return Reply::json(200, body.to_string());
        }
        let chunk = |delta: Value, finish: Option<&str>| {
            let c = json!({"id": "chatcmpl-agent", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            format!("data: {c}\n\n")
        };
        let mut pieces = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        match &result {
            Some(r) => {
                pieces.push(chunk(json!({"content": "done: "}), None));
                pieces.push(chunk(json!({"content": r}), None));
                pieces.push(chunk(json!({}), Some("stop")));
            }
            None => {
                let (a, b) = args.split_at(args.len() / 2);
                let mut first =
                    json!({"index": 0, "id": "call_1", "type": "function", "function": {"name": tool, "arguments": a}});
                if signed {
                    pieces.push(chunk(json!({"reasoning_content": "I will call the tool."}), None));
                    first["extra_content"] = json!({"google": {"thought_signature": THOUGHT_SIGNATURE}});
                }
                pieces.push(chunk(json!({"tool_calls": [first]}), None));
                pieces.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}), None));
                pieces.push(chunk(json!({}), Some("tool_calls")));
            }
        }
        let last = json!({"id": "chatcmpl-agent", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": usage});
        pieces.push(format!("data: {last}\n\n"));
        pieces.push("data: [DONE]\n\n".to_owned());
        Reply { status: 200, headers: vec![("content-type".into(), "text/event-stream".into())], pieces }
    }))
}
