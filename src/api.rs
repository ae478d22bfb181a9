//! The HTTP API: which endpoint a request is for, authentication, reading
//! the body under its limits; one file per endpoint under `api/`.

pub mod admin;
pub mod admission;
mod chat;
mod health;
mod messages;
mod metrics;
mod models;
pub mod responses;
mod translate;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

pub use health::health_json;

use crate::body::ResponseBody;
use crate::errors::ApiError;
use crate::gateway::Gateway;

/// The endpoints, named as they appear in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/messages` (Anthropic)
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic)
    CountTokens,
    /// `POST /v1/responses` (OpenAI Responses)
    Responses,
    /// `GET /v1/models`
    Models,
    /// `GET /health`
    Health,
    /// `GET /metrics`
    Metrics,
    /// `GET /admin/api/status`
    AdminStatus,
    /// `GET /admin/api/routes`
    AdminRoutes,
    /// `GET` or `PUT /admin/api/settings`
    AdminSettings,
    /// `POST /admin/api/cooldowns/reset`
    AdminCooldownsReset,
    /// `GET /admin/api/requests`
    AdminRequests,
    /// `GET /admin/api/usage`
    AdminUsage,
    /// `GET /admin/api/policies`
    AdminPolicies,
    /// `POST /admin/api/playground`
    AdminPlayground,
    /// `GET /admin` and `/admin/...` outside `/admin/api/`: the dashboard.
    AdminDashboard,
    /// `GET` or `POST /admin/api/keys`
    AdminKeys,
    /// `PATCH` or `DELETE /admin/api/keys/{provider}/{fingerprint}`
    AdminKey,
    /// `POST /admin/api/keys/{provider}/{fingerprint}/test`
    AdminKeyTest,
    /// Anything else.
    Other,
}

impl Endpoint {
    fn of(path: &str) -> Self {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/messages" => Self::Messages,
            "/v1/messages/count_tokens" => Self::CountTokens,
            "/v1/responses" => Self::Responses,
            "/v1/models" => Self::Models,
            "/health" | "/healthz" => Self::Health,
            "/metrics" => Self::Metrics,
            "/admin/api/status" => Self::AdminStatus,
            "/admin/api/routes" => Self::AdminRoutes,
            "/admin/api/settings" => Self::AdminSettings,
            "/admin/api/cooldowns/reset" => Self::AdminCooldownsReset,
            "/admin/api/requests" => Self::AdminRequests,
            "/admin/api/usage" => Self::AdminUsage,
            "/admin/api/policies" => Self::AdminPolicies,
            "/admin/api/playground" => Self::AdminPlayground,
            p if p == "/admin" || (p.starts_with("/admin/") && !p.starts_with("/admin/api/") && p != "/admin/api") => {
                Self::AdminDashboard
            }
            "/admin/api/keys" => Self::AdminKeys,
            p if p.starts_with("/admin/api/keys/") && p.ends_with("/test") => Self::AdminKeyTest,
            p if p.starts_with("/admin/api/keys/") => Self::AdminKey,
            _ => Self::Other,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Messages => "/v1/messages",
            Self::CountTokens => "/v1/messages/count_tokens",
            Self::Responses => "/v1/responses",
            Self::Models => "/v1/models",
            Self::Health => "/health",
            Self::Metrics => "/metrics",
            Self::AdminStatus => "/admin/api/status",
            Self::AdminRoutes => "/admin/api/routes",
            Self::AdminSettings => "/admin/api/settings",
            Self::AdminCooldownsReset => "/admin/api/cooldowns/reset",
            Self::AdminRequests => "/admin/api/requests",
            Self::AdminUsage => "/admin/api/usage",
            Self::AdminPolicies => "/admin/api/policies",
            Self::AdminPlayground => "/admin/api/playground",
            Self::AdminDashboard => "/admin/",
            Self::AdminKeys => "/admin/api/keys",
            // One label for every key: fingerprints are not label values.
            Self::AdminKey => "/admin/api/keys/{provider}/{fingerprint}",
            Self::AdminKeyTest => "/admin/api/keys/{provider}/{fingerprint}/test",
            Self::Other => "other",
        }
    }

    fn method(self) -> Method {
        match self {
            Self::ChatCompletions
            | Self::Embeddings
            | Self::Messages
            | Self::CountTokens
            | Self::Responses
            | Self::AdminCooldownsReset
            | Self::AdminPlayground
            | Self::AdminKeyTest => Method::POST,
            _ => Method::GET,
        }
    }

    /// The methods it answers, as the `Allow` header lists them.
    fn allow(self) -> &'static str {
        match self {
            Self::AdminSettings => "GET, HEAD, PUT",
            Self::AdminKeys => "GET, HEAD, POST",
            Self::AdminKey => "PATCH, DELETE",
            _ if self.method() == Method::POST => "POST",
            _ => "GET, HEAD",
        }
    }

    fn allows(self, method: &Method) -> bool {
        self.allow().split(", ").any(|m| m == method.as_str())
    }
}

/// Answers one request.
pub async fn handle<B>(gateway: &Gateway, mut request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let endpoint = Endpoint::of(request.uri().path());
    let server = &gateway.config().server;
    let protected = request.uri().path().starts_with("/v1/")
        || (endpoint == Endpoint::Health && server.protect_health)
        || (endpoint == Endpoint::Metrics && server.protect_metrics);
    // Who is asking, found once (a token's digest compared with every
    // client's): the endpoints read it from the request's extensions.
    let caller = if protected { gateway.auth().caller(request.headers()) } else { None };
    let unknown_caller = protected && gateway.auth().enabled() && caller.is_none();
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    let path = request.uri().path();
    // `/admin/api/` answers to admin tokens only (client tokens do not
    // open it), checked before anything else so its paths cannot be
    // probed; the dashboard's files hold no data and load without one.
    let admin_api = path.starts_with("/admin/api/") || path.trim_end_matches('/') == "/admin/api";
    let admin = if admin_api { admin::authorize(server, request.headers()).err() } else { None };
    let response = if let Some(refused) = admin {
        refused.into_response()
    } else if unknown_caller {
        ApiError::Unauthorized.into_response()
    } else if endpoint == Endpoint::Other {
        ApiError::UnknownEndpoint(path.to_owned()).into_response()
    } else if !endpoint.allows(request.method()) {
        let mut r =
            ApiError::MethodNotAllowed { method: request.method().to_string(), path: path.to_owned() }.into_response();
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(endpoint.allow()));
        r
    } else {
        let answer = async move {
            let path = request.uri().path();
            match endpoint {
                Endpoint::ChatCompletions => chat::chat(gateway, request).await,
                Endpoint::Embeddings => chat::embeddings(gateway, request).await,
                Endpoint::Messages => messages::messages(gateway, request).await,
                Endpoint::CountTokens => messages::count_tokens(gateway, request).await,
                Endpoint::Responses => responses::responses(gateway, request).await,
                Endpoint::Models => models::list(gateway, &request),
                Endpoint::Health => health::health(gateway),
                Endpoint::Metrics => metrics::scrape(gateway),
                Endpoint::AdminStatus => admin::status(gateway),
                Endpoint::AdminRoutes => admin::routes::routes(gateway),
                Endpoint::AdminSettings => admin::settings::settings(gateway, request).await,
                Endpoint::AdminCooldownsReset => admin::reset_cooldowns(gateway, request).await,
                Endpoint::AdminRequests => admin::requests::list(gateway, request.uri().query()).await,
                Endpoint::AdminUsage => admin::usage::summary(gateway, request.uri().query()).await,
                Endpoint::AdminPolicies => admin::policies::policies(gateway),
                Endpoint::AdminPlayground => admin::playground::playground(gateway, request).await,
                Endpoint::AdminDashboard => admin::dashboard::serve(path, request.headers()),
                Endpoint::AdminKeys => admin::keys::keys(gateway, request).await,
                Endpoint::AdminKey => admin::keys::key(gateway, request).await,
                Endpoint::AdminKeyTest => admin::keys::test(gateway, path).await,
                Endpoint::Other => ApiError::UnknownEndpoint(path.to_owned()).into_response(),
            }
        };
        guarded(endpoint, answer).await
    };
    // Every error of the Messages API, whatever raised it (the token, the
    // method, the body, the routing, the upstream), in Anthropic's shape.
    let response = match endpoint {
        Endpoint::Messages | Endpoint::CountTokens => {
            translate::error_shape(response, crate::dialect::anthropic::error_body)
        }
        _ => response,
    };
    // What the admin API answers is the gateway's state at one moment,
    // some of it sensitive: never kept by a browser or a proxy.
    let mut response = response;
    if admin_api {
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let elapsed = started.elapsed();
    gateway.metrics().request(endpoint.label(), response.status().as_u16(), elapsed);
    tracing::debug!(endpoint = endpoint.label(), status = response.status().as_u16(), ?elapsed, "answered");
    response
}

/// Waits for an endpoint's answer. A panic while it is made (a bug, never
/// the client's input) is logged and answered 500 in the endpoint's error
/// shape, instead of dropping the client's connection without an answer.
async fn guarded(
    endpoint: Endpoint,
    answer: impl std::future::Future<Output = Response<ResponseBody>>,
) -> Response<ResponseBody> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            tracing::error!(endpoint = endpoint.label(), panic = %what, "a request handler panicked; answered 500");
            ApiError::Internal(what).into_response()
        }
    }
}

/// Reads a request body under the size limit (413) and the read timeout
/// (408), claiming its bytes from `claim` as they arrive (503 when the
/// gateway already holds `server.max_in_flight_bytes`).
async fn read_body<B>(
    request: Request<B>,
    limit: u64,
    within: Duration,
    claim: &mut admission::Bytes,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut body = std::pin::pin!(Limited::new(request.into_body(), usize::try_from(limit).unwrap_or(usize::MAX)));
    let mut collected = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::BodyTimeout(within)),
            Ok(None) => break,
            Ok(Some(Err(e))) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!("could not read the request body: {e}"), None));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            claim.claim(data.len(), left).await?;
            if collected.is_empty() && data.len() as u64 == declared.unwrap_or(u64::MAX) {
                // The whole body in one piece: no copy.
                return Ok(data);
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

fn json_response(body: Bytes) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response<ResponseBody>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_and_one_that_does_not_as_it_answered() {
        let answered = guarded(Endpoint::Health, async { ApiError::Unauthorized.into_response() }).await;
        assert_eq!(answered.status(), 401);
        let answered = guarded(Endpoint::ChatCompletions, async {
            if Endpoint::of("/v1/chat/completions") == Endpoint::ChatCompletions {
                panic!("a bug in a handler");
            }
            ApiError::Unauthorized.into_response()
        })
        .await;
        assert_eq!(answered.status(), 500);
        assert_eq!(answered.headers()[header::CONTENT_TYPE], "application/json");
        let body = body_of(answered).await;
        assert_eq!(body["error"]["code"], "internal_error", "{body}");
        // The panic's text is for the log, not the client.
        assert!(!body.to_string().contains("a bug in a handler"), "{body}");
    }
}
