//! OpenTelemetry trace export (`telemetry:`): a mock OTLP collector over
//! loopback receives what the gateway exports, decoded from protobuf; the
//! request span, its phases and attempts, their attributes and links.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use freeway::{Catalog, Env};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::net::TcpListener;

use crate::support::gateway::{Answer, TestGateway, chat_body, provider, start, start_with};
use crate::support::mock::{Behavior, Mock};

const KEY_A: &str = "sk-provider-a-secret-0123456789";
const KEY_B: &str = "sk-provider-b-secret-0123456789";
const CLIENT_TOKEN: &str = "ct-team-a-token-0123456789abcdef";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// A mock OTLP/HTTP collector: every span posted to `/v1/traces`, with
/// the `service.name` of its resource.
#[derive(Clone)]
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    posts: Arc<AtomicUsize>,
    authorization: Arc<Mutex<Option<String>>>,
}

impl Collector {
    /// `hang`: accept exports and never answer (a collector stuck).
    async fn start(hang: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = Self {
            addr: listener.local_addr().unwrap(),
            spans: Arc::default(),
            posts: Arc::default(),
            authorization: Arc::default(),
        };
        let shared = collector.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let c = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<Incoming>| {
                        let c = c.clone();
                        async move { Ok::<_, Infallible>(c.receive(request, hang).await) }
                    });
                    let _ = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        collector
    }

    async fn receive(&self, request: http::Request<Incoming>, hang: bool) -> http::Response<Full<Bytes>> {
        assert_eq!(request.uri().path(), "/v1/traces");
        assert_eq!(request.headers()["content-type"], "application/x-protobuf");
        let auth = request.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
        *self.authorization.lock().unwrap() = auth;
        let body = request.into_body().collect().await.unwrap().to_bytes();
        self.posts.fetch_add(1, Ordering::SeqCst);
        if hang {
            std::future::pending::<()>().await;
        }
        let export = ExportTraceServiceRequest::decode(body).unwrap();
        let mut spans = self.spans.lock().unwrap();
        for resource in export.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| value(a.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        let mut response = http::Response::new(Full::new(Bytes::new()));
        response.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
        response
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().iter().map(|(_, s)| s.clone()).collect()
    }

    /// The spans of the trace `trace_id` once its request span has come,
    /// within 10s.
    async fn trace(&self, trace_id: &str) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Span> = self.spans().into_iter().filter(|s| hex::encode(&s.trace_id) == trace_id).collect();
            if spans.iter().any(|s| s.kind == SpanKind::Server as i32) {
                // The children end before their request span: all in one batch or earlier.
                return spans;
            }
            assert!(Instant::now() < deadline, "no request span of trace {trace_id} exported within 10s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Hex without a crate: ids are 8 or 16 bytes.
mod hex {
    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).map(|a| value(a.value.as_ref()))
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span `{name}` among {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()))
}

/// Providers `a` and `b` (mocks), a route `r` over `a/m1` then `b/m2`, a
/// named client, and `telemetry` as given.
async fn gateway(telemetry: &str) -> (Mock, Mock, TestGateway) {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let yaml = format!(
        "server:\n  api_keys:\n    - {{name: team-a, token: {CLIENT_TOKEN}}}\nproviders:\n{}{}\
         routes:\n  r:\n    targets: [a/m1, b/m2]\n{telemetry}",
        provider("a", &a.base_url(), &[KEY_A], &["m1"]),
        provider("b", &b.base_url(), &[KEY_B], &["m2"]),
    );
    (a, b, start(&yaml).await)
}

fn exporting_to(collector: &Collector, interval: &str) -> String {
    format!(
        "telemetry:\n  otlp_endpoint: {}\n  export_interval: {interval}\n  service_name: freeway-test\n  \
         headers:\n    authorization: Bearer collector-secret\n",
        collector.url()
    )
}

async fn chat(gw: &TestGateway, traceparent: Option<&str>) -> Answer {
    let auth = format!("Bearer {CLIENT_TOKEN}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(tp) = traceparent {
        headers.push(("traceparent", tp));
    }
    gw.post("/v1/chat/completions", &chat_body("r", false), &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_is_exported_as_a_request_span_with_its_phases_and_two_attempts() {
    let collector = Collector::start(false).await;
    let (a, _b, gw) = gateway(&exporting_to(&collector, "20ms")).await;
    a.on_model("m1", Behavior::rate_limited("120"));
    let answer = chat(&gw, Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "b/m2");

    let spans = collector.trace(TRACE_ID).await;
    let request = named(&spans, "POST /v1/chat/completions");
    let id = hex::encode(&request.span_id);
    // The inbound traceparent's span is the request span's parent.
    assert_eq!(hex::encode(&request.parent_span_id), PARENT_ID);
    assert_eq!(request.kind, SpanKind::Server as i32);
    for (key, expected) in [
        ("http.route", "/v1/chat/completions"),
        ("freeway.dialect", "openai"),
        ("freeway.model", "r"),
        ("freeway.client", "team-a"),
        ("freeway.stream", "false"),
        ("freeway.routed_via", "b/m2"),
        ("freeway.fallback_attempts", "1"),
        ("http.response.status_code", "200"),
        ("gen_ai.usage.input_tokens", "7"),
        ("gen_ai.usage.output_tokens", "3"),
    ] {
        assert_eq!(attr(request, key).as_deref(), Some(expected), "request span attribute {key}");
    }
    for phase in ["parse", "policies.before_routing", "resolve", "policies.after_routing", "dispatch", "relay"] {
        let span = named(&spans, phase);
        assert_eq!(hex::encode(&span.parent_span_id), id, "{phase} is a child of the request span");
        assert!(span.start_time_unix_nano >= request.start_time_unix_nano, "{phase} starts within the request");
        assert!(span.end_time_unix_nano <= request.end_time_unix_nano, "{phase} ends within the request");
    }
    let dispatch = hex::encode(&named(&spans, "dispatch").span_id);
    let first = named(&spans, "attempt a/m1");
    let second = named(&spans, "attempt b/m2");
    for (span, provider, model, key, status) in [(first, "a", "m1", KEY_A, "429"), (second, "b", "m2", KEY_B, "200")] {
        assert_eq!(hex::encode(&span.parent_span_id), dispatch, "attempts are children of dispatch");
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(attr(span, "freeway.provider").as_deref(), Some(provider));
        assert_eq!(attr(span, "freeway.upstream_model").as_deref(), Some(model));
        let fingerprint = format!("{:016x}", freeway::state::fingerprint(key));
        assert_eq!(attr(span, "freeway.key"), Some(fingerprint), "the key's fingerprint, 16 hex digits");
        assert_eq!(attr(span, "http.response.status_code").as_deref(), Some(status));
        assert!(attr(span, "freeway.latency_ms").is_some());
    }
    assert!(first.start_time_unix_nano < second.start_time_unix_nano);
    let reason = attr(first, "freeway.reason").unwrap();
    assert!(reason != "ok" && !reason.is_empty(), "the first attempt says why it failed: {reason}");
    assert_eq!(attr(second, "freeway.reason").as_deref(), Some("ok"));
    // Never a key, a prompt or a client token in an attribute.
    for span in &spans {
        for a in &span.attributes {
            let v = value(a.value.as_ref());
            for secret in [KEY_A, KEY_B, CLIENT_TOKEN, "be brief", "hello"] {
                assert!(!v.contains(secret), "span {} attribute {} holds `{secret}`: {v}", span.name, a.key);
            }
        }
    }
    let services: Vec<String> = collector.spans.lock().unwrap().iter().map(|(s, _)| s.clone()).collect();
    assert!(services.iter().all(|s| s == "freeway-test"), "{services:?}");
    assert_eq!(collector.authorization.lock().unwrap().as_deref(), Some("Bearer collector-secret"));
    assert_eq!(dropped_spans(&gw).await, 0, "a collector that answers loses nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_request_span_ends_with_the_stream_and_carries_its_tokens() {
    let collector = Collector::start(false).await;
    let (_a, _b, gw) = gateway(&exporting_to(&collector, "20ms")).await;
    let auth = format!("Bearer {CLIENT_TOKEN}");
    let tp = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let sent = Instant::now();
    let answer =
        gw.post("/v1/chat/completions", &chat_body("r", true), &[("authorization", &auth), ("traceparent", &tp)]).await;
    assert_eq!(answer.status, 200);
    assert!(answer.text().contains("[DONE]"));
    let spans = collector.trace(TRACE_ID).await;
    let request = named(&spans, "POST /v1/chat/completions");
    assert_eq!(attr(request, "freeway.stream").as_deref(), Some("true"));
    assert_eq!(attr(request, "gen_ai.usage.output_tokens").as_deref(), Some("3"), "the stream's usage, at its end");
    let relay = named(&spans, "relay");
    let attempt = named(&spans, "attempt a/m1");
    assert!(relay.end_time_unix_nano >= attempt.end_time_unix_nano, "the relay lasts past the attempt's first event");
    assert!(sent.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_off_by_default_and_the_standard_variable_turns_it_on_only_through_the_config() {
    let collector = Collector::start(false).await;
    let mock = Mock::start().await;
    let base = format!("providers:\n{}", provider("a", &mock.base_url(), &[KEY_A], &["m1"]));
    let tp = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let through_var = "telemetry:\n  otlp_endpoint: ${OTEL_EXPORTER_OTLP_ENDPOINT:-}\n  export_interval: 10ms\n";
    let var = Env::from_map([("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())]);
    let none = || Env::from_map(Vec::<(String, String)>::new());
    // No `telemetry:`, even with the variable set; the config following
    // the variable while it is unset.
    let off = [
        start_with(&base, Catalog::empty(), var.clone()).await,
        start_with(&format!("{base}{through_var}"), Catalog::empty(), none()).await,
    ];
    for gw in &off {
        let answer = gw.post("/v1/chat/completions", &chat_body("m1", false), &[("traceparent", &tp)]).await;
        assert_eq!(answer.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(collector.posts.load(Ordering::SeqCst), 0, "nothing is exported unless the config says so");

    let on = start_with(&format!("{base}{through_var}"), Catalog::empty(), var).await;
    let answer = on.post("/v1/chat/completions", &chat_body("m1", false), &[("traceparent", &tp)]).await;
    assert_eq!(answer.status, 200);
    let spans = collector.trace(TRACE_ID).await;
    assert_eq!(attr(named(&spans, "POST /v1/chat/completions"), "freeway.routed_via").as_deref(), Some("a/m1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_stuck_never_delays_a_request() {
    // One that never answers (each export waits for its timeout), one
    // whose port is closed.
    let stuck = Collector::start(true).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    for endpoint in [stuck.url(), closed] {
        let telemetry = format!(
            "telemetry:\n  otlp_endpoint: {endpoint}\n  export_interval: 10ms\n  timeout: 5s\n  max_queue: 64\n"
        );
        let (a, _b, gw) = gateway(&telemetry).await;
        a.on_model("m1", Behavior::rate_limited("120"));
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for _ in 0..40 {
            let one = Instant::now();
            let answer = chat(&gw, None).await;
            assert_eq!(answer.status, 200, "{endpoint}: {}", answer.text());
            slowest = slowest.max(one.elapsed());
        }
        // A request that waited on an export would take the export's 5 s
        // timeout; the bounds leave room for a loaded 2-core machine.
        assert!(slowest < Duration::from_secs(2), "{endpoint}: a request took {slowest:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "{endpoint}: 40 requests took {:?}", started.elapsed());
        // 40 requests of 9 spans each, into a queue of 64 that empties
        // nowhere (stuck) or fails (closed): the loss is counted.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dropped = dropped_spans(&gw).await;
            if dropped >= 40 * 9 - 64 {
                break;
            }
            assert!(Instant::now() < deadline, "{endpoint}: {dropped} spans counted as dropped");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(stuck.posts.load(Ordering::SeqCst) > 0, "the stuck collector was sent exports");
}

async fn dropped_spans(gw: &TestGateway) -> u64 {
    let metrics = gw.get("/metrics", &[]).await.text();
    let line = metrics.lines().find(|l| l.starts_with("freeway_trace_spans_dropped_total ")).expect("the counter");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_sends_the_spans_still_waiting() {
    let collector = Collector::start(false).await;
    // Far longer than the test: only the shutdown can send them.
    let (_a, _b, mut gw) = gateway(&exporting_to(&collector, "1m")).await;
    assert_eq!(chat(&gw, Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))).await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(collector.spans().is_empty(), "exported before the interval");
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown()).await.unwrap().unwrap().unwrap();
    let spans = collector.spans();
    assert!(
        spans.iter().any(|s| s.name == "POST /v1/chat/completions" && hex::encode(&s.trace_id) == TRACE_ID),
        "the request span was sent before the server stopped: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_ratio_of_zero_traces_only_what_a_sampled_caller_asks_for() {
    let collector = Collector::start(false).await;
    let telemetry = format!("{}  sample_ratio: 0\n", exporting_to(&collector, "10ms"));
    let (_a, _b, gw) = gateway(&telemetry).await;
    assert_eq!(chat(&gw, None).await.status, 200);
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    assert_eq!(chat(&gw, Some(unsampled)).await.status, 200);
    assert_eq!(chat(&gw, Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))).await.status, 200);
    let spans = collector.trace(TRACE_ID).await;
    assert!(spans.len() >= 8, "the sampled caller's trace is whole: {}", spans.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let others: Vec<String> =
        collector.spans().iter().map(|s| hex::encode(&s.trace_id)).filter(|t| t != TRACE_ID).collect();
    assert!(others.is_empty(), "requests nobody sampled were exported: {others:?}");
}
