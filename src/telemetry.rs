//! Optional OpenTelemetry trace export (`telemetry:` in the config): one
//! span per request, a child span per phase and one per upstream attempt,
//! sent in batches over OTLP/HTTP (protobuf) to a collector.
//!
//! ```text
//!  POST /v1/chat/completions      (server span, child of an inbound `traceparent`)
//!   ├─ parse
//!   ├─ policies.before_routing
//!   ├─ resolve
//!   ├─ policies.after_routing
//!   ├─ dispatch
//!   │   ├─ attempt a/m1          (client span: provider, model, key fingerprint,
//!   │   └─ attempt b/m2           upstream status, reason, latency)
//!   └─ relay                     (until the answer's last byte)
//! ```
//!
//! The spans are made directly with the `opentelemetry` API, not through
//! a `tracing` bridge: freeway's `tracing` events are log lines whose
//! fields were chosen for a terminal, and a bridge would export every one
//! of them; here each attribute is chosen, so none can carry a key, a
//! prompt or a client token. The request's [`Context`] travels with its
//! future ([`FutureExt::with_context`]), so the hooks in the request path
//! are one line each and take no parameter.
//!
//! Off (the default), nothing is built: [`Trace::current`] reads one
//! process-wide flag and every hook is a branch on `None`.
//!
//! Export runs on the SDK's batch thread, off the request path: spans wait
//! in a bounded queue (dropped when it is full), each export is bounded by
//! `telemetry.timeout`, and it goes through freeway's own hyper client
//! (no second HTTP stack). A collector that is down or slow costs a
//! request nothing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use opentelemetry::context::FutureExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};

use crate::body::ResponseBody;
use crate::config::TelemetryConfig;
use crate::metrics::Metrics;
use crate::plugin::UpstreamRequest;
use crate::upstream::{Upstream, read_body};

/// Set once any gateway in the process exports traces: until then
/// [`Trace::current`] does not even look at the task's context.
static ON: AtomicBool = AtomicBool::new(false);

/// A collector's answer is read up to this size (it is a few bytes of
/// protobuf, or an error message).
const MAX_COLLECTOR_ANSWER: usize = 64 * 1024;

/// The trace export of one gateway.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Telemetry {
    /// The exporter `config` describes, sending through `upstream` (so a
    /// collector behind `dispatch.ca_file` is trusted like a provider);
    /// `None` when export is off. Needs a Tokio runtime (the exports run
    /// on it). Spans dropped (queue full, export failed) count in `metrics`.
    pub fn new(config: &TelemetryConfig, upstream: Upstream, metrics: Arc<Metrics>) -> Result<Option<Self>, String> {
        let Some(base) = config.endpoint() else { return Ok(None) };
        let endpoint = if base.trim_end_matches('/').ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{}/v1/traces", base.trim_end_matches('/'))
        };
        let timeout = config.timeout.get();
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "telemetry: the trace exporter needs a Tokio runtime".to_owned())?;
        let headers: HashMap<String, String> =
            config.headers.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())).collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Collector { upstream, runtime, timeout })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let max = config.max_queue as usize;
        let waiting = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            waiting: waiting.clone(),
            metrics: metrics.clone(),
            failing: AtomicBool::new(false),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(max)
            .with_scheduled_delay(config.export_interval.get())
            .build();
        let inner = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let processor = Bounded { inner, waiting, max, metrics };
        // An inbound `traceparent` carries its caller's sampling decision;
        // the ratio decides for requests that start a trace here.
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(Resource::builder().with_service_name(config.service_name.clone()).build())
            .build();
        let tracer = provider.tracer("freeway");
        ON.store(true, Ordering::Relaxed);
        Ok(Some(Self { provider, tracer, propagator: TraceContextPropagator::new() }))
    }

    /// Serves `request` with `handle` inside its request span (a child of
    /// the caller's `traceparent` when it sent one). Only the API (`/v1/`)
    /// is traced; the span ends with the answer's last byte.
    pub async fn traced<B, F, Fut>(&self, request: Request<B>, handle: F) -> Response<ResponseBody>
    where
        F: FnOnce(Request<B>) -> Fut,
        Fut: Future<Output = Response<ResponseBody>>,
    {
        let path = request.uri().path();
        if !path.starts_with("/v1/") {
            return handle(request).await;
        }
        let (route, dialect) = route_of(path);
        let parent = self.propagator.extract(&HeaderExtractor(request.headers()));
        let method = request.method().as_str().to_owned();
        let span = self
            .tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("http.route", route),
                KeyValue::new("freeway.dialect", dialect),
            ])
            .start_with_context(&self.tracer, &parent);
        let request_cx = parent.with_span(span);
        let cx = request_cx.with_value(Active { tracer: self.tracer.clone(), request: request_cx.clone() });
        let mut response = handle(request).with_context(cx.clone()).await;
        let status = response.status();
        let span = request_cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        if status.is_server_error() {
            span.set_status(Status::error(status.canonical_reason().unwrap_or("server error")));
        }
        let relay = child(&self.tracer, &cx, "relay", SpanKind::Internal);
        response.body_mut().attach(Ends { relay, request: request_cx });
        response
    }

    /// Sends the spans still waiting and stops the exporter (graceful
    /// shutdown), on a blocking thread: the export itself runs on the
    /// runtime this is awaited on.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "telemetry: the last spans could not be exported"),
            Err(e) => tracing::warn!(error = %e, "telemetry: the exporter did not stop cleanly"),
        }
    }
}

/// The route and dialect of an API path: a fixed set, so no text a
/// client chose becomes a span name.
fn route_of(path: &str) -> (&'static str, &'static str) {
    match path.trim_end_matches('/') {
        "/v1/chat/completions" => ("/v1/chat/completions", "openai"),
        "/v1/embeddings" => ("/v1/embeddings", "openai"),
        "/v1/models" => ("/v1/models", "openai"),
        "/v1/messages" => ("/v1/messages", "anthropic"),
        "/v1/messages/count_tokens" => ("/v1/messages/count_tokens", "anthropic"),
        "/v1/responses" => ("/v1/responses", "responses"),
        _ => ("other", "none"),
    }
}

/// What a traced request's context carries besides its innermost span.
struct Active {
    tracer: SdkTracer,
    /// The context whose span is the request's own.
    request: Context,
}

/// A child span of the context's innermost span, in a context of its own.
fn child(tracer: &SdkTracer, parent: &Context, name: &'static str, kind: SpanKind) -> Context {
    let span = tracer.span_builder(name).with_kind(kind).start_with_context(tracer, parent);
    parent.with_span(span)
}

/// Ends the relay and request spans when the answer's body goes: its last
/// byte was sent, or its client went away.
struct Ends {
    relay: Context,
    request: Context,
}

impl Drop for Ends {
    fn drop(&mut self) {
        self.relay.span().end();
        self.request.span().end();
    }
}

/// The request being served, as seen from its phases: empty when tracing
/// is off or this request is not traced, and every method is then a branch.
pub struct Trace(Option<Context>);

impl Trace {
    /// The trace of the request whose future is running.
    pub fn current() -> Self {
        if !ON.load(Ordering::Relaxed) {
            return Self(None);
        }
        Self(Context::map_current(|cx| cx.get::<Active>().is_some().then(|| cx.clone())))
    }

    fn active(&self) -> Option<(&Context, &Active)> {
        let cx = self.0.as_ref()?;
        Some((cx, cx.get::<Active>()?))
    }

    /// A phase of the request: a child span, ended when the guard drops.
    pub fn phase(&self, name: &'static str) -> Phase {
        Phase(self.active().map(|(cx, active)| child(&active.tracer, cx, name, SpanKind::Internal)))
    }

    /// Runs `phase` inside a phase span named `name`: the spans it makes
    /// (the upstream attempts) are that span's children.
    pub async fn within<F: Future>(&self, name: &'static str, phase: F) -> F::Output {
        match self.active() {
            None => phase.await,
            Some((cx, active)) => {
                let cx = child(&active.tracer, cx, name, SpanKind::Internal);
                let out = phase.with_context(cx.clone()).await;
                cx.span().end();
                out
            }
        }
    }

    /// What the request asked for, once parsed: the model named (at most
    /// [`crate::proxy::MAX_NAME_BYTES`]), the client's name (its label,
    /// never its token), whether it streams.
    pub fn asked(&self, model: &str, client: Option<&str>, stream: bool) {
        let Some((_, active)) = self.active() else { return };
        let span = active.request.span();
        span.set_attribute(KeyValue::new("freeway.model", model.to_owned()));
        span.set_attribute(KeyValue::new("freeway.stream", stream));
        if let Some(client) = client {
            span.set_attribute(KeyValue::new("freeway.client", client.to_owned()));
        }
    }

    /// Who answered (provider and model), after how many failed attempts.
    pub fn routed(&self, via: Option<(&str, &str)>, failed_attempts: usize) {
        let Some((_, active)) = self.active() else { return };
        let span = active.request.span();
        if let Some((provider, model)) = via {
            span.set_attribute(KeyValue::new("freeway.routed_via", format!("{provider}/{model}")));
        }
        span.set_attribute(KeyValue::new("freeway.fallback_attempts", failed_attempts as i64));
    }

    /// The tokens the answer used (a stream's when it ends).
    pub fn tokens(&self, input: u64, output: u64) {
        let Some((_, active)) = self.active() else { return };
        let span = active.request.span();
        span.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", i64::try_from(input).unwrap_or(i64::MAX)));
        span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", i64::try_from(output).unwrap_or(i64::MAX)));
    }

    /// An upstream attempt on `provider`'s `model` with the key whose
    /// fingerprint is `key` (the key itself never leaves).
    pub fn attempt(&self, provider: &str, model: &str, key: u64) -> AttemptSpan {
        AttemptSpan(self.active().map(|(cx, active)| {
            let span = active
                .tracer
                .span_builder(format!("attempt {provider}/{model}"))
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("freeway.provider", provider.to_owned()),
                    KeyValue::new("freeway.upstream_model", model.to_owned()),
                    KeyValue::new("freeway.key", format!("{key:016x}")),
                ])
                .start_with_context(&active.tracer, cx);
            cx.with_span(span)
        }))
    }
}

/// A phase's span; it ends when this drops.
pub struct Phase(Option<Context>);

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// An upstream attempt's span, ended by [`AttemptSpan::end`].
pub struct AttemptSpan(Option<Context>);

impl AttemptSpan {
    /// The attempt's end: the upstream's status (none when it never
    /// answered), the reason (`ok`, or why it failed, redacted) and how
    /// long it took.
    pub fn end(self, status: Option<u16>, reason: &str, latency: Duration) {
        let Some(cx) = &self.0 else { return };
        let span = cx.span();
        if let Some(status) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        span.set_attribute(KeyValue::new("freeway.reason", reason.to_owned()));
        span.set_attribute(KeyValue::new("freeway.latency_ms", i64::try_from(latency.as_millis()).unwrap_or(i64::MAX)));
        if reason != "ok" {
            span.set_status(Status::Error { description: Cow::Owned(reason.to_owned()) });
        }
        span.end();
    }
}

/// The batch processor behind a bound of its own: the SDK drops spans
/// when its queue is full but keeps the count to itself; here a span past
/// `max` waiting (queued or being exported) is dropped and counted, so the
/// SDK's queue (as large) never fills.
struct Bounded {
    inner: BatchSpanProcessor,
    /// Spans handed to `inner` and not yet exported (or failed).
    waiting: Arc<AtomicUsize>,
    max: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded").field("inner", &self.inner).field("max", &self.max).finish_non_exhaustive()
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.trace_spans_dropped(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what leaves the queue and what is lost;
/// says once when the collector starts failing and once when it is back
/// (the SDK's own diagnostics are not built in).
struct Counted<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    failing: AtomicBool,
}

impl<E: std::fmt::Debug> std::fmt::Debug for Counted<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.waiting.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Err(e) => {
                self.metrics.trace_spans_dropped(n as u64);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, spans = n, "telemetry: an export to the collector failed; spans are dropped until it answers");
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("telemetry: the collector answers again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: freeway's pooled hyper client. The SDK's
/// batch thread is no Tokio thread, so each export is spawned on the
/// gateway's runtime and awaited from there, bounded by the timeout.
struct Collector {
    upstream: Upstream,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

#[async_trait]
impl HttpClient for Collector {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut headers = Vec::with_capacity(parts.headers.len());
        let mut name = None;
        // `HeaderMap::into_iter` names a header once for all its values.
        for (next, value) in parts.headers {
            if let Some(next) = next {
                name = Some(next);
            }
            if let Some(name) = &name {
                headers.push((name.clone(), value));
            }
        }
        let request = UpstreamRequest { method: parts.method, url: parts.uri.to_string(), headers, body };
        let upstream = self.upstream.clone();
        let limit = self.timeout;
        let exchange = self.runtime.spawn(async move {
            tokio::time::timeout(limit, async {
                let response = upstream.send(request).await?;
                let (parts, body) = response.into_parts();
                let bytes = read_body(body, MAX_COLLECTOR_ANSWER).await?;
                Ok::<_, crate::upstream::UpstreamError>(Response::from_parts(parts, bytes))
            })
            .await
        });
        match exchange.await {
            Err(e) => Err(Box::new(e)),
            Ok(Err(_)) => Err(format!("the collector did not answer within {limit:?}").into()),
            Ok(Ok(answer)) => answer.map_err(|e| Box::new(e) as HttpError),
        }
    }
}
