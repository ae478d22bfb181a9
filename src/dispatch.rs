//! The dispatcher: tries a request's candidates in order until one answers.
//!
//! A request goes through these phases (each a function below):
//!
//! ```text
//! for each candidate, for each of its provider's keys (in turn):
//!   skip      — key invalid, or this model cooling down on this key
//!   build     — the provider's plugin turns the request into an upstream request
//!   send      — the pooled client sends it, under the attempt's timeouts
//!   decode    — 2xx: the plugin decodes the answer (or primes the stream)
//!   classify  — not 2xx: the plugin says what the error means, and the
//!               error carries its own decision (next key, next candidate,
//!               answer the client now)
//! respond     — the first success, with x-routed-via and x-fallback-attempts;
//!               or 429 (everything rate-limited/cooling) or 502 (attempts)
//! ```
//!
//! The fallback rules (DESIGN.md): 429 cools the model on that key
//! (honouring `Retry-After`) and tries the next key at once; 401/403 marks
//! the key invalid and tries the next key; 402, 404, 408, 5xx, connect
//! errors and timeouts move to the next candidate; an upstream 400 is
//! returned to the client at once. Streams fall back only until their first
//! chunk has been relayed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use tokio::time::timeout;
use tracing::Instrument;

use crate::body::ResponseBody;
use crate::config::DispatchConfig;
use crate::errors::{ApiError, Attempt};
use crate::limits;
use crate::metrics::Metrics;
use crate::plugin::{ErrorKind, PluginError, PluginSession, Target, UpstreamRequest};
use crate::providers::{Admission, KeySlot};
use crate::relay::Relay;
use crate::request::{ClientRequest, Operation};
use crate::routing::Candidate;
use crate::secret::redact;
use crate::upstream::{MAX_ANSWER_BYTES, Upstream, UpstreamError, read_body};

/// Header naming the provider/model that answered.
pub const ROUTED_VIA: &str = "x-routed-via";
/// Header counting the failed upstream attempts before the answer.
pub const FALLBACK_ATTEMPTS: &str = "x-fallback-attempts";

/// Longest cooldown honoured from an upstream's `Retry-After`.
const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);
/// Error bodies are read up to this size for classification and messages.
const MAX_ERROR_BODY: usize = 256 * 1024;

/// Tries candidates with fallback, cooldowns and key rotation.
pub struct Dispatcher {
    upstream: Upstream,
    settings: DispatchConfig,
    metrics: Arc<Metrics>,
}

/// Why one attempt failed, and so what the dispatcher does next.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    /// Metric label.
    outcome: &'static str,
    status: Option<u16>,
    reason: String,
    /// For client errors: the body to answer with.
    body: Option<Bytes>,
}

impl Failure {
    fn transient(outcome: &'static str, status: Option<u16>, reason: String) -> Self {
        Self { kind: ErrorKind::Transient, outcome, status, reason, body: None }
    }

    fn from_upstream(e: UpstreamError) -> Self {
        let outcome = if matches!(e, UpstreamError::Connect(_)) { "connect_error" } else { "upstream_error" };
        Self::transient(outcome, None, e.to_string())
    }

    fn plugin(e: PluginError) -> Self {
        Self::transient("plugin_error", None, e.to_string())
    }

    fn timeout(what: &str, after: Duration) -> Self {
        Self::transient("timeout", None, format!("{what} timed out after {after:?}"))
    }
}

impl Dispatcher {
    /// A dispatcher sending through `upstream`.
    pub fn new(upstream: Upstream, settings: DispatchConfig, metrics: Arc<Metrics>) -> Self {
        Self { upstream, settings, metrics }
    }

    /// Runs a request (chat or embeddings) against its candidates and
    /// returns the response for the client, success or error, with the
    /// routing headers set.
    pub async fn run(&self, request: &ClientRequest, candidates: &[Candidate]) -> Response<ResponseBody> {
        let mut failed: Vec<Attempt> = Vec::new();
        let mut skipped: Vec<Attempt> = Vec::new();
        let mut soonest: Option<Instant> = None;
        let mut only_rate_limits = true;
        let max = self.settings.max_attempts.max(1) as usize;
        let max_tokens = ["max_tokens", "max_completion_tokens"].iter().find_map(|k| request.body.get(*k)?.as_u64());
        let estimate = limits::estimate_tokens(request.raw.len(), max_tokens);
        let mut exhausted = false;

        'candidates: for candidate in candidates {
            let provider = &candidate.provider;
            if request.operation == Operation::Embeddings && !provider.plugin.capabilities().embeddings {
                only_rate_limits = false;
                skipped.push(Attempt {
                    provider: provider.name.to_string(),
                    model: candidate.model.to_string(),
                    status: None,
                    reason: format!("skipped: plugin `{}` has no embeddings", provider.plugin.name()),
                });
                continue;
            }
            let n = provider.keys.len();
            let start = provider.next_key_start();
            let mut usable = false;
            for k in 0..n {
                let key = &provider.keys[(start + k) % n];
                // skip
                if key.is_invalid() {
                    continue;
                }
                usable = true;
                if let Some(until) = key.cooling_until(&candidate.model, Instant::now()) {
                    soonest = Some(soonest.map_or(until, |s| s.min(until)));
                    continue;
                }
                if failed.len() >= max {
                    exhausted = true;
                    break 'candidates;
                }
                // limits known before the 429: a candidate at its limit is
                // skipped like one cooling down
                let limits = provider.limits_for(&candidate.model);
                let admission =
                    match key.admit(&candidate.model, &limits, &provider.key_limits, estimate, Instant::now()) {
                        Ok(admission) => admission,
                        Err(hit) => {
                            self.metrics.limit_skip(&provider.name, &candidate.model, hit.limit.label());
                            soonest = Some(soonest.map_or(hit.until, |s| s.min(hit.until)));
                            continue;
                        }
                    };
                let started = Instant::now();
                let span = tracing::debug_span!("attempt", provider = %provider.name, model = %candidate.model, key = key.index);
                let result = self.attempt(request, candidate, key, admission).instrument(span).await;
                let elapsed = started.elapsed();
                let failure = match result {
                    Ok(response) => {
                        self.metrics.attempt(&provider.name, &candidate.model, "ok", elapsed);
                        return with_routing(response, candidate, failed.len());
                    }
                    Err(failure) => failure,
                };
                self.metrics.attempt(&provider.name, &candidate.model, failure.outcome, elapsed);
                tracing::info!(
                    provider = %provider.name,
                    model = %candidate.model,
                    key = key.index,
                    outcome = failure.outcome,
                    status = failure.status,
                    reason = %failure.reason,
                    "upstream attempt failed"
                );
                failed.push(Attempt {
                    provider: provider.name.to_string(),
                    model: candidate.model.to_string(),
                    status: failure.status,
                    reason: failure.reason.clone(),
                });
                // classify: the failure carries its decision
                match failure.kind {
                    ErrorKind::ClientError => {
                        let body = failure.body.unwrap_or_default();
                        let status = failure.status.and_then(|s| StatusCode::from_u16(s).ok());
                        let error =
                            ApiError::UpstreamRejected { status: status.unwrap_or(StatusCode::BAD_REQUEST), body };
                        return with_routing(error.into_response(), candidate, failed.len() - 1);
                    }
                    ErrorKind::RateLimited { retry_after } => {
                        let wait = retry_after
                            .unwrap_or(self.settings.cooldown.get())
                            .clamp(Duration::from_secs(1), MAX_COOLDOWN);
                        let until = Instant::now() + wait;
                        key.cool(&candidate.model, until);
                        soonest = Some(soonest.map_or(until, |s| s.min(until)));
                        self.metrics.fallback(failure.outcome);
                        // the same model, at once, on the next key
                    }
                    ErrorKind::InvalidKey => {
                        tracing::warn!(provider = %provider.name, key = key.index, "upstream rejected the key; it is not used again until the config changes");
                        key.mark_invalid();
                        only_rate_limits = false;
                        self.metrics.fallback(failure.outcome);
                    }
                    ErrorKind::QuotaExhausted => {
                        key.cool(&candidate.model, Instant::now() + self.settings.cooldown.get());
                        only_rate_limits = false;
                        self.metrics.fallback(failure.outcome);
                        continue 'candidates;
                    }
                    ErrorKind::Transient => {
                        only_rate_limits = false;
                        self.metrics.fallback(failure.outcome);
                        continue 'candidates;
                    }
                }
            }
            if !usable {
                only_rate_limits = false;
                skipped.push(Attempt {
                    provider: provider.name.to_string(),
                    model: candidate.model.to_string(),
                    status: None,
                    reason: "skipped: every key of this provider was rejected (401/403)".to_owned(),
                });
            }
        }

        // respond: nothing answered
        let attempts_made = failed.len();
        failed.extend(skipped);
        let error = match soonest {
            Some(until) if only_rate_limits => ApiError::RateLimited {
                model: request.model.clone(),
                retry_after: until.saturating_duration_since(Instant::now()),
                attempts: failed,
            },
            _ => {
                let message = if exhausted {
                    format!("dispatch.max_attempts ({max}) reached for `{}`; every attempt failed", request.model)
                } else {
                    format!("every candidate for `{}` failed", request.model)
                };
                ApiError::AllFailed { message, attempts: failed }
            }
        };
        let mut response = error.into_response();
        response.headers_mut().insert(FALLBACK_ATTEMPTS, HeaderValue::from(attempts_made));
        response
    }

    /// One attempt on one key: build, send, decode or classify.
    async fn attempt(
        &self,
        request: &ClientRequest,
        candidate: &Candidate,
        key: &KeySlot,
        admission: Admission,
    ) -> Result<Response<ResponseBody>, Failure> {
        let provider = &candidate.provider;
        let target = Target {
            base_url: &provider.base_url,
            model: &candidate.model,
            key: key.secret(),
            options: &provider.options,
        };
        // build, in this attempt's own plugin instance
        let mut session = provider.plugin.session().map_err(Failure::plugin)?;
        let built = match request.operation {
            Operation::Chat => session.build_chat(&request.raw, &target),
            Operation::Embeddings => session.build_embeddings(&request.raw, &target),
        };
        let mut upstream_request = built.map_err(Failure::plugin)?;
        upstream_request.headers.extend(provider.headers.iter().cloned());
        if request.stream {
            self.attempt_stream(session, upstream_request, candidate, &target, key.index, admission).await
        } else {
            self.attempt_whole(session, upstream_request, request.operation, candidate, &target, (key, admission)).await
        }
    }

    async fn attempt_whole(
        &self,
        mut session: PluginSession,
        upstream_request: UpstreamRequest,
        operation: Operation,
        candidate: &Candidate,
        target: &Target<'_>,
        (key, admission): (&KeySlot, Admission),
    ) -> Result<Response<ResponseBody>, Failure> {
        // send
        let limit = self.settings.timeout.get();
        let exchange = async {
            let response = self.upstream.send(upstream_request).await?;
            let (parts, body) = response.into_parts();
            let bytes = read_body(body, MAX_ANSWER_BYTES).await?;
            Ok::<_, UpstreamError>((parts, bytes))
        };
        let (parts, bytes) = match timeout(limit, exchange).await {
            Err(_) => return Err(Failure::timeout("the attempt", limit)),
            Ok(Err(e)) => return Err(Failure::from_upstream(e)),
            Ok(Ok(answer)) => answer,
        };
        if !parts.status.is_success() {
            return Err(self.classify(&mut session, candidate, parts.status, &parts.headers, bytes));
        }
        // decode
        let decoded = match operation {
            Operation::Chat => session.decode_chat(&bytes, target),
            Operation::Embeddings => session.decode_embeddings(&bytes, target),
        };
        let decoded = decoded.map_err(|e| {
            let mut failure = Failure::plugin(e);
            failure.status = Some(parts.status.as_u16());
            failure
        })?;
        if let Some(usage) = decoded.usage {
            self.metrics.tokens(&candidate.provider.name, &candidate.model, usage);
            key.settle(&candidate.model, admission, usage.prompt_tokens + usage.completion_tokens);
        }
        let mut response = Response::new(ResponseBody::full(decoded.body));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(response)
    }

    async fn attempt_stream(
        &self,
        session: PluginSession,
        upstream_request: UpstreamRequest,
        candidate: &Candidate,
        target: &Target<'_>,
        key_index: usize,
        admission: Admission,
    ) -> Result<Response<ResponseBody>, Failure> {
        enum Start {
            Relay(Box<Relay>),
            Status(http::response::Parts, Bytes, Box<PluginSession>),
            Broken(String),
            Plugin(PluginError),
        }
        let provider = &candidate.provider;
        let limit = self.settings.first_byte_timeout.get();
        let idle = self.settings.stream_idle_timeout.get();
        // send, then prime: wait for the first event before committing
        let start = async {
            let response = self.upstream.send(upstream_request).await?;
            if !response.status().is_success() {
                let (parts, body) = response.into_parts();
                let bytes = read_body(body, MAX_ERROR_BODY).await.unwrap_or_default();
                return Ok(Start::Status(parts, bytes, Box::new(session)));
            }
            let decoder = match session.into_stream(target) {
                Ok(decoder) => decoder,
                Err(e) => return Ok(Start::Plugin(e)),
            };
            let mut relay = Box::new(Relay::new(response.into_body(), decoder, idle));
            Ok::<_, UpstreamError>(match relay.prime().await {
                Ok(()) => Start::Relay(relay),
                Err(e) => Start::Broken(e),
            })
        };
        let mut relay = match timeout(limit, start).await {
            Err(_) => return Err(Failure::timeout("waiting for the first event", limit)),
            Ok(Err(e)) => return Err(Failure::from_upstream(e)),
            Ok(Ok(Start::Status(parts, bytes, mut session))) => {
                return Err(self.classify(&mut session, candidate, parts.status, &parts.headers, bytes));
            }
            Ok(Ok(Start::Plugin(e))) => return Err(Failure::plugin(e)),
            Ok(Ok(Start::Broken(reason))) => {
                return Err(Failure::transient("upstream_error", Some(200), redact(&reason, &provider.secrets())));
            }
            Ok(Ok(Start::Relay(relay))) => relay,
        };
        let metrics = self.metrics.clone();
        let (name, model) = (provider.name.clone(), candidate.model.clone());
        let owner = provider.clone();
        relay.on_end(move |outcome| {
            if let Some(usage) = outcome.usage {
                metrics.tokens(&name, &model, usage);
                owner.keys[key_index].settle(&model, admission, usage.prompt_tokens + usage.completion_tokens);
            }
            if let Some(error) = &outcome.error {
                metrics.stream_failure(&name, &model);
                tracing::warn!(provider = %name, model = %model, chunks = outcome.chunks, error = %error, "stream failed after its first byte");
            }
        });
        let mut response = Response::new(ResponseBody::Relay(relay));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }

    /// classify: an upstream error status becomes a decision.
    fn classify(
        &self,
        session: &mut PluginSession,
        candidate: &Candidate,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Failure {
        let provider = &candidate.provider;
        let mut kind = session.classify_error(status, headers, &body).unwrap_or_else(|_| {
            // The plugin failed (and was counted); the status still tells a lot.
            match status.as_u16() {
                429 => ErrorKind::RateLimited { retry_after: None },
                401 | 403 => ErrorKind::InvalidKey,
                _ => ErrorKind::Transient,
            }
        });
        if let ErrorKind::RateLimited { retry_after: None } = kind {
            kind = ErrorKind::RateLimited { retry_after: retry_after(headers, SystemTime::now()) };
        }
        let secrets = provider.secrets();
        let text = redact(&String::from_utf8_lossy(&body), &secrets);
        let summary = summarize(&text);
        let outcome = match kind {
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::QuotaExhausted => "quota_exhausted",
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::ClientError => "client_error",
            ErrorKind::Transient => "upstream_error",
        };
        let reason = match kind {
            ErrorKind::RateLimited { retry_after: Some(d) } => {
                format!("HTTP {}: rate limited, retry after {}s: {summary}", status.as_u16(), d.as_secs())
            }
            ErrorKind::InvalidKey => format!("HTTP {}: the key was rejected", status.as_u16()),
            _ => format!("HTTP {}: {summary}", status.as_u16()),
        };
        let body = (kind == ErrorKind::ClientError).then(|| client_error_body(&text, provider.name.as_ref()));
        Failure { kind, outcome, status: Some(status.as_u16()), reason, body }
    }
}

fn with_routing(mut response: Response<ResponseBody>, candidate: &Candidate, failed: usize) -> Response<ResponseBody> {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("{}/{}", candidate.provider.name, candidate.model)) {
        headers.insert(ROUTED_VIA, value);
    }
    headers.insert(FALLBACK_ATTEMPTS, HeaderValue::from(failed));
    response
}

/// The standard `Retry-After` header: delay-seconds or an HTTP-date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_COOLDOWN.as_secs_f64())));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The message of an OpenAI-style error value (`{"message": ...}` or a string).
fn error_message(error: &serde_json::Value) -> String {
    match error {
        serde_json::Value::String(s) => s.clone(),
        other => other.get("message").and_then(|m| m.as_str()).map(str::to_owned).unwrap_or_else(|| other.to_string()),
    }
}

/// A short, single-line description of an upstream error body.
fn summarize(text: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("error").map(error_message).or_else(|| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        })
        .unwrap_or_else(|| text.to_owned());
    let one_line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "no error message".to_owned();
    }
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// The body of an upstream 400 for the client: the upstream's own error
/// when it is OpenAI-shaped, otherwise its text wrapped in that shape.
fn client_error_body(text: &str, provider: &str) -> Bytes {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text)
        && value.get("error").is_some_and(|e| e.is_object())
    {
        return Bytes::from(text.to_owned());
    }
    let envelope = serde_json::json!({
        "error": {
            "message": format!("{provider} rejected the request: {}", summarize(text)),
            "type": "invalid_request_error",
            "code": "upstream_rejected",
            "param": null,
        }
    });
    Bytes::from(envelope.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(90)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("garbage"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn summaries_are_short_and_single_line() {
        assert_eq!(summarize(r#"{"error":{"message":"model  overloaded\n now"}}"#), "model overloaded now");
        assert_eq!(summarize(""), "no error message");
        assert!(summarize(&"x".repeat(500)).chars().count() <= 201);
    }

    #[test]
    fn client_errors_keep_the_upstream_shape_or_get_ours() {
        let own = client_error_body(r#"{"error":{"message":"bad tool"}}"#, "groq");
        assert_eq!(&own[..], br#"{"error":{"message":"bad tool"}}"#);
        let wrapped: serde_json::Value = serde_json::from_slice(&client_error_body("nope", "groq")).unwrap();
        assert_eq!(wrapped["error"]["message"], "groq rejected the request: nope");
    }
}
