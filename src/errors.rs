//! Every error the API returns, in OpenAI's shape
//! (`{"error": {"message", "type", "code", "param"}}`), and the one place
//! that maps an error to its status code.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::body::ResponseBody;

/// One failed upstream attempt, as reported in a 502's `error.attempts`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attempt {
    /// Provider name.
    pub provider: String,
    /// Upstream model id.
    pub model: String,
    /// Upstream HTTP status, when there was one.
    pub status: Option<u16>,
    /// Why it failed, short and free of keys.
    pub reason: String,
}

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The offending field.
        param: Option<&'static str>,
    },
    /// 401: missing or wrong bearer token.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// 403: the endpoint is closed to this request whatever token it
    /// sends (the message says what to configure).
    #[error("{message}")]
    Forbidden {
        /// Why, and what to set.
        message: String,
    },
    /// 404: no such model or route.
    #[error("{message}")]
    UnknownModel {
        /// What was asked and the nearest known names.
        message: String,
    },
    /// 404: no such endpoint.
    #[error("unknown endpoint {0}")]
    UnknownEndpoint(String),
    /// 405.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
    /// 408: the client did not send its body in time.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// 413.
    #[error("the request body is larger than {limit} bytes (server.max_body_bytes)")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// 429: no candidate has capacity now (rate-limited, cooling down, at a
    /// limit or out of quota), whatever else failed.
    #[error(
        "no candidate for `{model}` has capacity now (rate-limited, cooling down or out of quota); retry in {}s",
        ceil_secs(*retry_after)
    )]
    RateLimited {
        /// The model asked for.
        model: String,
        /// Until the soonest cooldown ends.
        retry_after: Duration,
        /// Attempts made on this request (may be empty).
        attempts: Vec<Attempt>,
    },
    /// 502: every candidate failed.
    #[error("{message}")]
    AllFailed {
        /// Summary.
        message: String,
        /// Every attempt, in order.
        attempts: Vec<Attempt>,
    },
    /// 400 from the upstream: the client's request is wrong; the
    /// upstream's own error body (redacted) is passed on.
    #[error("the upstream rejected the request")]
    UpstreamRejected {
        /// Status to answer with (the upstream's 400 or 422).
        status: StatusCode,
        /// An OpenAI-shaped error body.
        body: Bytes,
    },
    /// 503: nothing is configured that could serve this.
    #[error("{message}")]
    Unavailable {
        /// What to set to fix it.
        message: String,
    },
    /// 503: the gateway holds as much as its bounds allow; retry shortly.
    #[error("{message}")]
    Overloaded {
        /// Which bound.
        message: String,
    },
    /// 500: a bug; the message is logged, the client gets a generic one.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    param: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<&'a [Attempt]>,
}

impl ApiError {
    /// A 400 with a message and the offending field.
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::BadRequest { message: message.into(), param }
    }

    /// The message shown to the client.
    pub fn message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error in freeway; see its log".to_owned(),
            other => other.to_string(),
        }
    }

    /// Status, OpenAI `type` and `code`.
    pub fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key"),
            Self::Forbidden { .. } => (StatusCode::FORBIDDEN, "permission_error", "forbidden"),
            Self::UnknownModel { .. } => (StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found"),
            Self::UnknownEndpoint(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "unknown_endpoint"),
            Self::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method_not_allowed")
            }
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "invalid_request_error", "request_timeout"),
            Self::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "request_too_large")
            }
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limit_exceeded"),
            Self::AllFailed { .. } => (StatusCode::BAD_GATEWAY, "upstream_error", "all_candidates_failed"),
            Self::UpstreamRejected { status, .. } => (*status, "invalid_request_error", "upstream_rejected"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "no_provider"),
            Self::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "overloaded"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
        }
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn body(&self) -> Bytes {
        if let Self::UpstreamRejected { body, .. } = self {
            return body.clone();
        }
        let (_, kind, code) = self.classify();
        let (param, attempts) = match self {
            Self::BadRequest { param, .. } => (*param, None),
            Self::UnknownModel { .. } => (Some("model"), None),
            Self::RateLimited { attempts, .. } | Self::AllFailed { attempts, .. } => (None, Some(attempts.as_slice())),
            _ => (None, None),
        };
        let envelope = Envelope { error: Body { message: self.message(), kind, code, param, attempts } };
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_else(|_| b"{\"error\":{}}".to_vec()))
    }

    /// The full HTTP response.
    pub fn into_response(self) -> Response<ResponseBody> {
        let (status, _, _) = self.classify();
        let mut response = Response::new(ResponseBody::full(self.body()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            Self::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(*retry_after)));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Overloaded { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds, rounded up, at least 1: what `Retry-After` carries.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// The SSE event that ends a stream which failed after its first byte.
pub fn stream_error_event(message: &str, code: &'static str) -> Bytes {
    let envelope = serde_json::json!({
        "error": { "message": message, "type": "upstream_error", "code": code }
    });
    Bytes::from(format!("data: {envelope}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_the_openai_shape_and_status() {
        let e = ApiError::AllFailed {
            message: "all failed".into(),
            attempts: vec![Attempt {
                provider: "groq".into(),
                model: "m".into(),
                status: Some(503),
                reason: "x".into(),
            }],
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "all failed");
        assert_eq!(v["error"]["type"], "upstream_error");
        assert_eq!(v["error"]["attempts"][0]["status"], 503);
        assert_eq!(e.into_response().status(), StatusCode::BAD_GATEWAY);

        let r = ApiError::RateLimited { model: "m".into(), retry_after: Duration::from_millis(200), attempts: vec![] }
            .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let e = ApiError::Internal("secret detail".into());
        assert!(!String::from_utf8_lossy(&e.body()).contains("secret detail"));
    }
}
