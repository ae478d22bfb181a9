//! One attempt on one key: build (the plugin makes the upstream request),
//! send (the pooled client, under the attempt's timeouts), then decode the
//! answer or classify the error. Every failure leaves through [`attempt`],
//! the one place its text is redacted. Whatever the upstream's response
//! headers say about its limits (as the plugin reads them) travels back
//! with the answer ([`Success::limits`]) or the failure
//! ([`Failure::limits`]).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use tokio::time::timeout;

use super::Proxy;
use super::classify::{Failure, classify};
use super::request::{ClientRequest, Operation};
use crate::body::ResponseBody;
use crate::catalog::provider::Key;
use crate::catalog::routes::Candidate;
use crate::plugin::{
    ChatPlan, ErrorKind, Plugin, PluginError, PluginErrorKind, PluginSession, PluginStream, RateReport, Target,
    UpstreamRequest, check_answer,
};
use crate::state::{Admission, Refund};
use crate::telemetry::Trace;
use crate::upstream::relay::{Hold, Relay, RelaySettings};
use crate::upstream::{MAX_ANSWER_BYTES, UpstreamError, read_body};

/// Error bodies of streamed requests are read up to this size for
/// classification and messages.
const MAX_ERROR_BODY: usize = 256 * 1024;

/// An attempt that answered.
pub struct Success {
    /// The response for the client.
    pub response: Response<ResponseBody>,
    /// What the upstream's headers said about its limits (empty when the
    /// plugin reads none, or there were none).
    pub limits: Vec<RateReport>,
}

/// Tries `candidate` on `key`: the response for the client, or why not
/// (redacted of the provider's secrets).
pub async fn attempt(
    proxy: &Proxy,
    request: &ClientRequest,
    candidate: &Candidate,
    key: &Key,
    admission: &Admission,
) -> Result<Success, Failure> {
    let provider = &candidate.provider;
    let target =
        Target { base_url: &provider.base_url, model: &candidate.model, key: key.secret(), options: &provider.options };
    let result = async {
        // build: by the plugin's plan for this target when it has one that
        // serves this request, else in this attempt's own plugin instance
        let plan = match request.operation {
            Operation::Chat => provider.plans.get(&provider.plugin, &target, key.index),
            Operation::Embeddings => None,
        };
        let (mut translator, built) = match plan.filter(|plan| plan.serves(&request.raw)) {
            Some(plan) => {
                let built = plan
                    .build(&request.raw, request.conversation(), request.stream)
                    .map_err(|e| provider.plugin.refused(e));
                (Translator::Planned { plan, session: None }, built)
            }
            None => {
                let mut session = provider.plugin.session().map_err(Failure::plugin)?;
                let built = match request.operation {
                    Operation::Chat => session.build_chat(&request.raw, &target),
                    Operation::Embeddings => session.build_embeddings(&request.raw, &target),
                };
                (Translator::Called(session), built)
            }
        };
        let mut upstream_request = built.map_err(|e| match e.kind {
            PluginErrorKind::ClientRequest => unexpressible(&provider.name, e),
            _ => Failure::plugin(e),
        })?;
        upstream_request.headers.extend(provider.headers.iter().cloned());
        if request.stream {
            stream(proxy, &mut translator, upstream_request, candidate, &target, request, admission).await
        } else {
            whole(proxy, &mut translator, upstream_request, request, candidate, &target, admission).await
        }
    }
    .await;
    result.map_err(|failure| failure.redacted(&provider.redactor))
}

/// How an attempt translates: under the plugin's plan (an instance only
/// when an answer needs the plugin after all), or in its own instance.
enum Translator {
    Planned {
        plan: Arc<ChatPlan>,
        session: Option<PluginSession>,
    },
    Called(PluginSession),
    /// Its instance became a stream's decoder.
    Gone,
}

impl Translator {
    /// The attempt's plugin instance, taken now if the plan did without.
    fn session(&mut self, plugin: &Arc<Plugin>) -> Result<&mut PluginSession, PluginError> {
        match self {
            Self::Called(session) => Ok(session),
            Self::Planned { session: Some(session), .. } => Ok(session),
            Self::Planned { session, .. } => Ok(session.insert(plugin.session()?)),
            Self::Gone => {
                *self = Self::Called(plugin.session()?);
                self.session(plugin)
            }
        }
    }
}

/// The plugin cannot express the client's request for its provider (a
/// `build-error.client-error`): the client's own mistake, answered 400
/// with the plugin's message, and nothing else is tried (nothing was sent,
/// so the whole charge comes back).
fn unexpressible(provider: &str, e: PluginError) -> Failure {
    let message = format!("`{provider}` cannot serve this request: {}", e.message);
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "code": "unsupported_request",
            "param": null,
        }
    });
    let mut failure = Failure::transient("client_error", None, format!("{e}"));
    failure.kind = ErrorKind::ClientError;
    failure.body = Some(Bytes::from(body.to_string()));
    failure.refund = Refund::Everything;
    failure
}

/// A non-stream attempt: send, read the whole answer, decode it.
async fn whole(
    proxy: &Proxy,
    translator: &mut Translator,
    upstream_request: UpstreamRequest,
    request: &ClientRequest,
    candidate: &Candidate,
    target: &Target<'_>,
    admission: &Admission,
) -> Result<Success, Failure> {
    // send
    let limit = proxy.settings.timeout.get();
    let exchange = async {
        let response = proxy.upstream.send(upstream_request).await?;
        let (parts, body) = response.into_parts();
        let bytes = read_body(body, MAX_ANSWER_BYTES).await?;
        Ok::<_, UpstreamError>((parts, bytes))
    };
    let (parts, bytes) = match timeout(limit, exchange).await {
        Err(_) => return Err(Failure::timeout("the attempt", limit)),
        Ok(Err(e)) => return Err(Failure::from_upstream(e)),
        Ok(Ok(answer)) => answer,
    };
    let provider = &candidate.provider;
    let limits = provider.plugin.read_limits(parts.status.as_u16(), &parts.headers);
    if !parts.status.is_success() {
        let session = translator.session(&provider.plugin);
        let mut failure = classify(session, &provider.name, &provider.redactor, parts.status, &parts.headers, bytes);
        failure.limits = limits;
        return Err(failure);
    }
    // decode: under the plan, an answer it passes is only checked
    let decoded = match (request.operation, &*translator) {
        (Operation::Chat, Translator::Planned { plan, .. }) if plan.passes(&bytes) => {
            check_answer(bytes).map_err(|e| provider.plugin.refused(e))
        }
        (Operation::Chat, _) => translator.session(&provider.plugin).and_then(|s| s.decode_chat(&bytes, target)),
        (Operation::Embeddings, _) => {
            translator.session(&provider.plugin).and_then(|s| s.decode_embeddings(&request.raw, &bytes, target))
        }
    }
    .map_err(|e| {
        let mut failure = Failure::undecodable(e, parts.status);
        failure.limits = limits.clone();
        failure
    })?;
    if let Some(usage) = decoded.usage {
        proxy.metrics.tokens(&candidate.provider.name, &candidate.metric_model(), usage);
        proxy.state.settle(admission, usage.total());
        if let Some(client) = &request.client {
            client.spend(&proxy.metrics, &*proxy.state, usage);
        }
        if request.log_id != 0 {
            proxy.state.log_tokens(request.log_id, usage.prompt_tokens, usage.completion_tokens);
        }
        Trace::current().tokens(usage.prompt_tokens, usage.completion_tokens);
    }
    let mut body = decoded.body;
    // An agent must never get a tool call it cannot run: mend what is
    // unambiguous, fail the attempt (and fall back) otherwise.
    if request.operation == Operation::Chat && request.has_tools {
        match super::repair::answer(&body, &request.raw) {
            Ok(None) => {}
            Ok(Some((mended, mends))) => {
                for mend in mends {
                    proxy.metrics.tool_call_repair(mend.label());
                }
                body = mended.into();
            }
            Err(reason) => {
                let mut failure = Failure::transient("bad_tool_call", Some(parts.status.as_u16()), reason);
                failure.limits = limits;
                return Err(failure);
            }
        }
    }
    let body = candidate.provider.redactor.redact_answer(body);
    let mut response = Response::new(ResponseBody::full(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(Success { response, limits })
}

/// A streamed attempt: send, then wait for the first event before
/// committing to this candidate (until then, a failure can fall back). A
/// request with tools waits longer when the stream begins with a tool
/// call: until the call is complete and checked (`repair::stream`), so
/// that a call that cannot be mended falls back too.
async fn stream(
    proxy: &Proxy,
    translator: &mut Translator,
    upstream_request: UpstreamRequest,
    candidate: &Candidate,
    target: &Target<'_>,
    request: &ClientRequest,
    admission: &Admission,
) -> Result<Success, Failure> {
    enum Start {
        Relay(Box<Relay>, Vec<RateReport>),
        Status(http::response::Parts, Bytes),
        Plugin(PluginError, Vec<RateReport>),
    }
    let provider = &candidate.provider;
    let limit = proxy.settings.first_byte_timeout.get();
    let settings = RelaySettings {
        idle: proxy.settings.stream_idle_timeout.get(),
        redactor: provider.redactor.clone(),
        drop_usage_only: !request.wants_usage,
        hold: (request.operation == Operation::Chat && request.has_tools).then(|| {
            let check = super::repair::stream::ToolCalls::new(request.raw.clone(), proxy.metrics.clone());
            Box::new(check) as Box<dyn Hold>
        }),
    };
    // A planned stream may pass its plain chunks as the bytes they came in,
    // unless a hold looks at each chunk.
    let frames = settings.hold.is_none();
    // send, then wait for the first event
    let start = async {
        let response = proxy.upstream.send(upstream_request).await?;
        if !response.status().is_success() {
            let (parts, body) = response.into_parts();
            let bytes = read_body(body, MAX_ERROR_BODY).await.unwrap_or_default();
            return Ok(Start::Status(parts, bytes));
        }
        let limits = provider.plugin.read_limits(response.status().as_u16(), response.headers());
        let decoder = match std::mem::replace(translator, Translator::Gone) {
            Translator::Planned { plan, .. } => Ok(PluginStream::planned(provider.plugin.clone(), plan, frames)),
            Translator::Called(session) => session.into_stream(target),
            Translator::Gone => provider.plugin.session().and_then(|s| s.into_stream(target)),
        };
        let decoder = match decoder {
            Ok(decoder) => decoder,
            Err(e) => return Ok(Start::Plugin(e, limits)),
        };
        let mut relay = Box::new(Relay::new(response.into_body(), decoder, settings, &proxy.watchdog));
        relay.first_event().await;
        Ok::<_, UpstreamError>(Start::Relay(relay, limits))
    };
    let (mut relay, limits) = match timeout(limit, start).await {
        Err(_) => return Err(Failure::timeout("waiting for the first event", limit)),
        Ok(Err(e)) => return Err(Failure::from_upstream(e)),
        Ok(Ok(Start::Status(parts, bytes))) => {
            let limits = provider.plugin.read_limits(parts.status.as_u16(), &parts.headers);
            let session = translator.session(&provider.plugin);
            let mut failure =
                classify(session, &provider.name, &provider.redactor, parts.status, &parts.headers, bytes);
            failure.limits = limits;
            return Err(failure);
        }
        Ok(Ok(Start::Plugin(e, limits))) => {
            let mut failure = Failure::plugin(e);
            failure.limits = limits;
            return Err(failure);
        }
        Ok(Ok(Start::Relay(mut relay, limits))) => {
            // Past its first event, a stream whose tool call is held is
            // bounded by the idle timeout and the hold's byte bound, not
            // the first-byte timeout: a long call is no slow upstream.
            match relay.prime().await {
                Ok(()) => (relay, limits),
                Err(unsent) => {
                    let outcome = if unsent.refused { "bad_tool_call" } else { "upstream_error" };
                    let mut failure = Failure::transient(outcome, Some(200), unsent.reason);
                    failure.limits = limits;
                    return Err(failure);
                }
            }
        }
    };
    // record, when the stream ends: tokens, settled budgets, failures
    let metrics = proxy.metrics.clone();
    let state = Arc::clone(&proxy.state);
    let (name, model) = (provider.name.clone(), candidate.metric_model());
    let admission = admission.clone();
    let log_id = request.log_id;
    let client = request.client.clone();
    let trace = Trace::current();
    relay.on_end(move |outcome| {
        if let Some(usage) = outcome.usage {
            metrics.tokens(&name, &model, usage);
            state.settle(&admission, usage.total());
            if let Some(client) = &client {
                client.spend(&metrics, &*state, usage);
            }
            if log_id != 0 {
                state.log_tokens(log_id, usage.prompt_tokens, usage.completion_tokens);
            }
            trace.tokens(usage.prompt_tokens, usage.completion_tokens);
        }
        match &outcome.error {
            Some(_) if outcome.client_gone => metrics.stream_client_gone(&name, &model),
            Some(error) => {
                metrics.stream_failure(&name, &model);
                tracing::warn!(provider = %name, model = %model, chunks = outcome.chunks, error = %error, "stream failed after its first byte");
            }
            None => {}
        }
    });
    let mut response = Response::new(ResponseBody::relay(relay));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(Success { response, limits })
}
