//! The HTTP API: which endpoint a request is for, authentication, reading
//! the body, and the small endpoints (models, health, metrics).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::body::ResponseBody;
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::policy::PolicyRun;
use crate::request::{ClientRequest, Operation};

/// The endpoints, named as they appear in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `GET /v1/models`
    Models,
    /// `GET /health`
    Health,
    /// `GET /metrics`
    Metrics,
    /// Anything else.
    Other,
}

impl Endpoint {
    fn of(path: &str) -> Self {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/models" => Self::Models,
            "/health" | "/healthz" => Self::Health,
            "/metrics" => Self::Metrics,
            _ => Self::Other,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Models => "/v1/models",
            Self::Health => "/health",
            Self::Metrics => "/metrics",
            Self::Other => "other",
        }
    }

    fn method(self) -> Method {
        match self {
            Self::ChatCompletions | Self::Embeddings => Method::POST,
            _ => Method::GET,
        }
    }
}

/// Answers one request.
pub async fn handle<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let path = request.uri().path();
    let endpoint = Endpoint::of(path);
    let protected = path.starts_with("/v1/") || path.starts_with("/admin/");
    let response = if protected && !gateway.auth().allows(request.headers()) {
        ApiError::Unauthorized.into_response()
    } else if endpoint == Endpoint::Other {
        ApiError::UnknownEndpoint(path.to_owned()).into_response()
    } else if request.method() != endpoint.method()
        && !(request.method() == Method::HEAD && endpoint.method() == Method::GET)
    {
        let mut r =
            ApiError::MethodNotAllowed { method: request.method().to_string(), path: path.to_owned() }.into_response();
        let allow = if endpoint.method() == Method::POST { "POST" } else { "GET, HEAD" };
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        r
    } else {
        match endpoint {
            Endpoint::ChatCompletions => dispatch(gateway, request, ClientRequest::parse).await,
            Endpoint::Embeddings => dispatch(gateway, request, ClientRequest::parse_embeddings).await,
            Endpoint::Models => json_response(gateway.router().models_json()),
            Endpoint::Health => json_response(health_json(gateway)),
            Endpoint::Metrics => {
                let text = gateway.metrics().render(gateway.router().active_cooldowns());
                let mut r = Response::new(ResponseBody::full(text));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
                r
            }
            Endpoint::Other => ApiError::UnknownEndpoint(path.to_owned()).into_response(),
        }
    };
    let elapsed = started.elapsed();
    gateway.metrics().request(endpoint.label(), response.status().as_u16(), elapsed);
    tracing::debug!(endpoint = endpoint.label(), status = response.status().as_u16(), ?elapsed, "answered");
    response
}

/// Reads, parses and resolves a request, then runs it through the dispatcher.
async fn dispatch<B>(
    gateway: &Gateway,
    request: Request<B>,
    parse: fn(Bytes) -> Result<ClientRequest, ApiError>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = &gateway.config().server;
    let session = request.headers().get("x-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = match read_body(request, server.max_body_bytes, server.body_read_timeout.get()).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let mut parsed = match parse(bytes) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    // The pipeline this request started on serves it to the end, whatever reloads meanwhile.
    let pipeline = gateway.policies().current();
    let run = if parsed.operation == Operation::Chat && pipeline.has_request_hooks() {
        Some(PolicyRun::before_routing(gateway, pipeline, &mut parsed, session).await)
    } else {
        None
    };
    let mut candidates = match gateway.router().resolve(&parsed.model) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Some(run) = &run {
        run.after_routing(gateway, &mut parsed, &mut candidates);
    }
    let response = gateway.dispatcher().run(&parsed, &candidates).await;
    if let Some(run) = &run {
        run.finish(gateway, &response);
    }
    response
}

/// Reads a request body under the size limit (413) and the read timeout (408).
async fn read_body<B>(request: Request<B>, limit: u64, within: Duration) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let body = Limited::new(request.into_body(), usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(within, body.collect()).await {
        Err(_) => Err(ApiError::BodyTimeout(within)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::PayloadTooLarge { limit }),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("could not read the request body: {e}"), None)),
    }
}

fn json_response(body: Bytes) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The `/v1/models` body: routes, then every `provider/model`.
pub fn models_json(gateway_router: &crate::routing::Router) -> Bytes {
    let mut data: Vec<serde_json::Value> = gateway_router
        .route_names()
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "freeway"}))
        .collect();
    for p in gateway_router.providers() {
        for m in p.models().iter() {
            let mut entry = json!({
                "id": format!("{}/{}", p.name, m.id),
                "object": "model",
                "created": 0,
                "owned_by": &*p.name,
                "free": m.free,
            });
            if let Some(context) = m.context {
                entry["context_length"] = json!(context);
            }
            data.push(entry);
        }
    }
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}

/// The `/health` body: liveness, providers, and discovery's last refresh.
pub fn health_json(gateway: &Gateway) -> Bytes {
    let router = gateway.router();
    let enabled: Vec<&str> = router.providers().iter().map(|p| &*p.name).collect();
    let disabled: Vec<serde_json::Value> = router
        .disabled()
        .iter()
        .map(|d| json!({"name": d.name, "set": d.what_to_set(), "switched_off": d.switched_off}))
        .collect();
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "providers": {"enabled": enabled, "disabled": disabled},
        "discovery": gateway.discovery().status(),
        "policies": gateway.policies().status(),
    });
    if enabled.is_empty() {
        body["hint"] = json!(router.no_provider_message());
    }
    Bytes::from(body.to_string())
}
