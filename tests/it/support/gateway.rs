//! Starts a freeway gateway in-process on a loopback port, and a small HTTP
//! client to talk to it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use freeway::state::Clock;
use freeway::{Catalog, Config, Env, Gateway};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// A gateway on `yaml`, with no catalog and an empty environment, so only
/// what the test configures exists.
pub async fn start(yaml: &str) -> TestGateway {
    start_with(yaml, Catalog::empty(), Env::from_map(Vec::<(String, String)>::new())).await
}

/// Tests of the core run without the built-in policies (sticky sessions
/// would pin their identical requests), unless the config names them.
const NO_POLICIES: &str =
    "\npolicies:\n  disabled: [auto-tier, free-alias, favorites, context-prune, sticky-session]\n";

pub async fn start_with(yaml: &str, catalog: Catalog, env: Env) -> TestGateway {
    start_at(yaml, catalog, env, Clock::system()).await
}

/// [`start_at`] with the connections served by `workers` threads, as
/// `freeway serve` serves them.
pub async fn start_on_threads(yaml: &str, workers: usize) -> TestGateway {
    let env = Env::from_map(Vec::<(String, String)>::new());
    launch(yaml, Catalog::empty(), env, Clock::system(), Some(workers)).await
}

/// [`start_with`] on `clock` (a wall clock started just before a reset).
pub async fn start_at(yaml: &str, catalog: Catalog, env: Env, clock: Clock) -> TestGateway {
    launch(yaml, catalog, env, clock, None).await
}

async fn launch(yaml: &str, catalog: Catalog, env: Env, clock: Clock, workers: Option<usize>) -> TestGateway {
    let yaml = if yaml.contains("policies:") { yaml.to_owned() } else { format!("{yaml}{NO_POLICIES}") };
    let loaded = Config::from_yaml(&yaml, "test config", &env, &catalog).unwrap_or_else(|e| panic!("{e}"));
    let gateway = Gateway::with_clock(loaded.config, catalog, &env, clock).await.unwrap_or_else(|e| panic!("{e:?}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = match workers {
        None => tokio::spawn(freeway::server::serve(gateway.clone(), listener, shutdown)),
        Some(n) => tokio::spawn(freeway::server::serve_on_threads(gateway.clone(), listener, n, shutdown)),
    };
    TestGateway { addr, gateway: gateway.clone(), shutdown: Some(tx), task: Some(task) }
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts a graceful shutdown and returns the server task.
    pub fn shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap()
    }

    pub async fn chat(&self, model: &str) -> Answer {
        self.post("/v1/chat/completions", &chat_body(model, false), &[]).await
    }

    pub async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
        let response = send(&self.url(path), "POST", body, headers).await;
        Answer::read(response).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let response = send(&self.url(path), "GET", "", headers).await;
        Answer::read(response).await
    }

    /// Starts a streaming chat request and returns the live response.
    pub async fn stream(&self, model: &str) -> Response<Incoming> {
        send(&self.url("/v1/chat/completions"), "POST", &chat_body(model, true), &[]).await
    }
}

/// A small chat request; streamed ones ask for the final usage chunk, as
/// the OpenAI SDKs do when told to.
pub fn chat_body(model: &str, stream: bool) -> String {
    let mut body = serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "temperature": 0.1
    });
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(url: &str, method: &str, body: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
    let mut builder = Request::builder().method(method).uri(url).header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    tokio::time::timeout(Duration::from_secs(20), client().request(request))
        .await
        .expect("gateway did not answer within 20s")
        .expect("request failed")
}

/// A whole response.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub async fn read(response: Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
            .await
            .expect("body did not arrive within 20s")
            .expect("body failed")
            .to_bytes();
        Self { status: parts.status, headers: parts.headers, body }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    pub fn routed_via(&self) -> &str {
        self.header("x-routed-via")
    }

    pub fn fallback_attempts(&self) -> usize {
        self.header("x-fallback-attempts")
            .parse()
            .unwrap_or_else(|_| panic!("no x-fallback-attempts: {:?}", self.headers))
    }

    /// The SSE `data:` payloads of a stream body.
    pub fn events(&self) -> Vec<String> {
        sse_events(&self.text())
    }
}

pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.trim().strip_prefix("data:").map(|d| d.trim().to_owned())).collect()
}

/// A stream's events as (event name, data JSON): the Anthropic and
/// Responses dialects name each event (`Value::Null` for a data line that
/// is not JSON).
pub fn named_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event:")).unwrap_or_default().trim().to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data:")).unwrap_or("null").trim();
            (name, serde_json::from_str(data).unwrap_or(Value::Null))
        })
        .collect()
}

/// Reads the next data frame of a streaming response, with a deadline.
pub async fn next_frame(body: &mut Incoming, within: Duration) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(within, body.frame()).await.expect("no frame in time")?;
        if let Ok(data) = frame.expect("stream failed").into_data() {
            return Some(data);
        }
    }
}

/// A provider block for a mock.
pub fn provider(name: &str, base_url: &str, keys: &[&str], models: &[&str]) -> String {
    format!(
        "  {name}:\n    plugin: openai-compat\n    base_url: {base_url}\n    keys: [{}]\n    models: [{}]\n",
        keys.join(", "),
        models.join(", ")
    )
}

/// A streamed chat request to the gateway, ready for any client.
pub fn stream_request(gw: &TestGateway, model: &str) -> Request<Full<Bytes>> {
    Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(model, true))))
        .unwrap()
}

/// An HTTP/2 (prior knowledge) client; with `window`, streams get that
/// small a window and never more unless their bodies are read.
pub fn h2_client(window: Option<u32>) -> Client<HttpConnector, Full<Bytes>> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(true);
    if let Some(window) = window {
        builder.http2_initial_stream_window_size(window).http2_initial_connection_window_size(1024 * 1024);
    }
    builder.build_http()
}
