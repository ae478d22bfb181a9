//! The classify step of an attempt: why it failed, and so what the
//! dispatcher does next. A [`Failure`] carries its own decision (the
//! plugin's [`ErrorKind`]), as Pingora's errors carry whether a retry is
//! safe; the dispatcher only reads it.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};

use crate::plugin::{ErrorKind, PluginError, PluginSession, QuotaWindow, RateReport, error_message};
use crate::secret::Redactor;
use crate::state::Refund;
use crate::upstream::UpstreamError;

/// Longest cooldown honoured from an upstream's `Retry-After`.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

/// Why one attempt failed.
#[derive(Debug)]
pub struct Failure {
    /// What it means: next key, next candidate, or answer the client.
    pub kind: ErrorKind,
    /// Metric label.
    pub outcome: &'static str,
    /// The upstream's HTTP status, when there was one.
    pub status: Option<u16>,
    /// Why, on one line; redacted before it leaves the attempt.
    pub reason: String,
    /// For client errors: the body to answer with (redacted).
    pub body: Option<Bytes>,
    /// What the attempt's charge against the limits gets back.
    pub refund: Refund,
    /// What the upstream's headers said about its limits (the plugin read
    /// them; empty when there was no response, or nothing to read).
    pub limits: Vec<RateReport>,
    /// The upstream says the model is gone: 410, or a 404 whose body has
    /// the `model_not_found` code (OpenAI's and its imitators').
    pub model_gone: Option<Gone>,
}

/// How sure an upstream is that a model is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// 410: retired for good.
    Retired,
    /// 404 `model_not_found`: maybe a hiccup; twice in a row is believed.
    NotFound,
}

impl Failure {
    /// A failure worth trying the next candidate for.
    pub fn transient(outcome: &'static str, status: Option<u16>, reason: String) -> Self {
        Self {
            kind: ErrorKind::Transient,
            outcome,
            status,
            reason,
            body: None,
            refund: Refund::Tokens,
            limits: Vec::new(),
            model_gone: None,
        }
    }

    /// The exchange failed below HTTP.
    pub fn from_upstream(e: UpstreamError) -> Self {
        let connect = matches!(e, UpstreamError::Connect(_));
        let mut failure =
            Self::transient(if connect { "connect_error" } else { "upstream_error" }, None, e.to_string());
        if connect || matches!(e, UpstreamError::Request(_)) {
            failure.refund = Refund::Everything;
        }
        failure
    }

    /// A plugin call failed (building the request: nothing was sent).
    pub fn plugin(e: PluginError) -> Self {
        let mut failure = Self::transient("plugin_error", None, e.to_string());
        failure.refund = Refund::Everything;
        failure
    }

    /// A plugin could not decode what the upstream answered.
    pub fn undecodable(e: PluginError, status: StatusCode) -> Self {
        Self::transient("plugin_error", Some(status.as_u16()), e.to_string())
    }

    /// A timeout.
    pub fn timeout(what: &str, after: Duration) -> Self {
        Self::transient("timeout", None, format!("{what} timed out after {after:?}"))
    }

    /// The provider itself failed (a 5xx, a timeout, a connect error, a
    /// stream broken before its first chunk), as opposed to answering with
    /// an error about this request or key: what its circuit breaker counts.
    pub fn provider_down(&self) -> bool {
        match self.outcome {
            "timeout" | "connect_error" => true,
            "upstream_error" => self.status.is_none_or(|s| s >= 500 || s == 200),
            _ => false,
        }
    }

    /// The same failure with every secret of the provider removed from the
    /// text a client or a log line could see: the one place attempts are
    /// redacted, whatever produced the text (the upstream's body, a plugin's
    /// message, an I/O error).
    pub fn redacted(mut self, redactor: &Redactor) -> Self {
        if let std::borrow::Cow::Owned(clean) = redactor.redact(&self.reason) {
            self.reason = clean;
        }
        self.body = self.body.map(|b| redactor.redact_bytes(b));
        self
    }
}

/// An upstream error status becomes a decision: the plugin says what it
/// means (a rate limit with its delay, an exhausted quota, a bad key, the
/// client's own mistake, or something worth trying elsewhere). `session`
/// is the attempt's plugin instance, or why none could be had: then the
/// status alone decides.
///
/// The body is redacted before anything is cut from it: a summary that ends
/// in the middle of a key would keep the half a redactor could miss.
pub fn classify(
    session: Result<&mut PluginSession, PluginError>,
    provider: &str,
    redactor: &Redactor,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> Failure {
    let mut kind = session.and_then(|s| s.classify_error(status, headers, &body)).unwrap_or_else(|_| {
        // The plugin failed (and was counted); the status still tells a lot.
        match status.as_u16() {
            429 => ErrorKind::RateLimited { retry_after: None, window: QuotaWindow::Unknown },
            401 | 403 => ErrorKind::InvalidKey,
            _ => ErrorKind::Transient,
        }
    });
    if let ErrorKind::RateLimited { retry_after: None, window } = kind {
        kind = ErrorKind::RateLimited { retry_after: retry_after(headers, SystemTime::now()), window };
    }
    let model_gone = match status.as_u16() {
        410 => Some(Gone::Retired),
        404 if memchr::memmem::find(&body, b"model_not_found").is_some() => Some(Gone::NotFound),
        _ => None,
    };
    let lossy = String::from_utf8_lossy(&body);
    let text = redactor.redact(&lossy);
    let summary = summarize(&text);
    let outcome = match kind {
        ErrorKind::RateLimited { .. } => "rate_limited",
        ErrorKind::QuotaExhausted => "quota_exhausted",
        ErrorKind::InvalidKey => "invalid_key",
        ErrorKind::ClientError => "client_error",
        ErrorKind::Transient => "upstream_error",
    };
    let reason = match kind {
        ErrorKind::RateLimited { retry_after: Some(d), .. } => {
            format!("HTTP {}: rate limited, retry after {}s: {summary}", status.as_u16(), d.as_secs())
        }
        ErrorKind::InvalidKey => format!("HTTP {}: the key was rejected", status.as_u16()),
        _ => format!("HTTP {}: {summary}", status.as_u16()),
    };
    let body = (kind == ErrorKind::ClientError).then(|| client_error_body(&text, provider));
    // A request the upstream refused for its limits was not let into its
    // window: counting it would idle a key that still has room.
    let refund = if matches!(kind, ErrorKind::RateLimited { .. }) { Refund::Everything } else { Refund::Tokens };
    Failure { kind, outcome, status: Some(status.as_u16()), reason, body, refund, limits: Vec::new(), model_gone }
}

/// The standard `Retry-After` header: delay-seconds or an HTTP-date,
/// at most [`MAX_COOLDOWN`].
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_COOLDOWN));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_COOLDOWN.as_secs_f64())));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_COOLDOWN))
}

/// A short, single-line description of an upstream error body.
pub fn summarize(text: &str) -> String {
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
    use http::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(90)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("18446744073709551615"));
        assert_eq!(retry_after(&h, now), Some(MAX_COOLDOWN));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&h, now), Some(MAX_COOLDOWN));
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

    #[test]
    fn failures_are_redacted_in_their_reason_and_body() {
        let redactor = Redactor::new(["sk-secret-key-123"]);
        let mut f = Failure::transient("upstream_error", Some(400), "HTTP 400: bad key sk-secret-key-123".into());
        f.body = Some(Bytes::from_static(br#"{"error":{"message":"Bearer sk-secret-key-123"}}"#));
        let f = f.redacted(&redactor);
        assert_eq!(f.reason, "HTTP 400: bad key ***");
        assert_eq!(&f.body.unwrap()[..], br#"{"error":{"message":"Bearer ***"}}"#);
    }
}
