//! A minimal, fast mock of an OpenAI-compatible upstream, for load benchmarks.
//!
//! `benches/load.sh` starts it, sends the same chat requests to it directly
//! and through `freeway` (configured with this mock as its only provider),
//! and compares throughput and latency: the difference is what the gateway
//! adds. So the mock must cost as little as possible: every answer is built
//! once at start-up and sent from shared bytes, there is no artificial delay
//! and no per-request logging, and connections are kept alive.
//!
//! Usage: `cargo run --release --example mock_upstream -- [--port N]`
//! (default 0: any free port). Once bound it prints exactly one line,
//! `listening on 127.0.0.1:PORT`, to stdout, then serves until killed.
//!
//! Endpoints (any path prefix, so `/v1/...` works):
//! - `POST .../chat/completions`: a fixed `chat.completion` JSON, or, when
//!   the request body has `"stream":true`, a fixed `text/event-stream` of
//!   `chat.completion.chunk` events, a usage chunk and `data: [DONE]`;
//! - `GET .../models`: a list with the single model `mock-model`;
//! - anything else: 404.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::json;
use tokio::net::TcpListener;

/// The model id every answer names.
const MODEL: &str = "mock-model";
/// A fixed creation time, so that the answers never change.
const CREATED: u64 = 1_700_000_000;

/// Every answer body, built once and shared by all connections.
struct Answers {
    completion: Bytes,
    stream: Bytes,
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
        let mut stream = Vec::new();
        for (i, word) in words.iter().enumerate() {
            let delta =
                if i == 0 { json!({ "role": "assistant", "content": word }) } else { json!({ "content": word }) };
            let finish = if i + 1 == words.len() { json!("stop") } else { json!(null) };
            let chunk = json!({
                "id": "chatcmpl-mock-0001",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]
            });
            push_event(&mut stream, &serde_json::to_vec(&chunk)?);
        }
        let usage = json!({
            "id": "chatcmpl-mock-0001",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [],
            "usage": { "prompt_tokens": 256, "completion_tokens": 8, "total_tokens": 264 }
        });
        push_event(&mut stream, &serde_json::to_vec(&usage)?);
        push_event(&mut stream, b"[DONE]");

        let models = json!({ "object": "list", "data": [{ "id": MODEL, "object": "model" }] });
        let not_found = json!({ "error": { "message": "not found", "type": "invalid_request_error" } });
        Ok(Self {
            completion: serde_json::to_vec(&completion)?.into(),
            stream: stream.into(),
            models: serde_json::to_vec(&models)?.into(),
            not_found: serde_json::to_vec(&not_found)?.into(),
        })
    }
}

/// Appends one SSE `data:` event.
fn push_event(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// True when the request body asks for a stream (`"stream":true`, with or
/// without a space after the colon). A byte search is enough for a mock and
/// much cheaper than parsing the JSON.
fn wants_stream(body: &[u8]) -> bool {
    contains(body, b"\"stream\":true") || contains(body, b"\"stream\": true")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn handle(answers: Arc<Answers>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let is_chat = request.method() == Method::POST && path.ends_with("/chat/completions");
    let is_models = request.method() == Method::GET && path.ends_with("/models");
    if is_models {
        return Ok(respond(StatusCode::OK, "application/json", answers.models.clone()));
    }
    if !is_chat {
        return Ok(respond(StatusCode::NOT_FOUND, "application/json", answers.not_found.clone()));
    }
    // Read the whole body, as a real upstream would, before answering.
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(respond(StatusCode::BAD_REQUEST, "text/plain", Bytes::from_static(b"bad body")));
        }
    };
    if wants_stream(&body) {
        let mut response = respond(StatusCode::OK, "text/event-stream", answers.stream.clone());
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(response)
    } else {
        Ok(respond(StatusCode::OK, "application/json", answers.completion.clone()))
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
    let answers = Arc::new(Answers::build()?);
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
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small answers must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(answers.clone(), request));
            // Errors here are clients hanging up (the load generator stopping):
            // nothing to report.
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
