//! `POST /admin/api/playground`: a chat completion sent from the dashboard
//! and how it was routed. The browser holds an admin token, not a client
//! token, so the chat runs through the gateway's own chat endpoint as the
//! client `admin` (no budget of its own, logged as `admin`), never
//! streamed; the answer comes back with the routing headers and the
//! request's attempt trail as the request log recorded it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};

use super::params;
use crate::api::{json_response, read_body};
use crate::auth::Caller;
use crate::body::ResponseBody;
use crate::clients::Client;
use crate::config::ClientKey;
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::state::log::query::{self, Filter};

/// The client name playground chats are logged under.
pub const CLIENT: &str = "admin";

/// The header naming the provider/model that answered.
const ROUTED_VIA: &str = "x-routed-via";

/// The headers that tell how a request was routed (the proxy's respond
/// phase writes them), copied into the answer.
const ROUTING_HEADERS: &[&str] = &[
    ROUTED_VIA,
    "x-fallback-attempts",
    "x-freeway-remaining-requests-day",
    "x-freeway-remaining-reset",
    "retry-after",
];

/// How long the answer waits for the request log to be written before it
/// goes without the trail.
const LOG_WAIT: Duration = Duration::from_secs(2);

/// `POST /admin/api/playground`: takes a chat completion body (`model`
/// and `messages`, anything else the chat endpoint takes), answers
/// `{"status", "routed_via", "headers", "answer", "attempts", "log"}`.
pub async fn playground<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match run(gateway, request).await {
        Ok(body) => json_response(Bytes::from(body.to_string())),
        Err(e) => e.into_response(),
    }
}

async fn run<B>(gateway: &Gateway, request: Request<B>) -> Result<Value, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = &gateway.config().server;
    let mut claim = gateway.admission().bytes();
    let body = read_body(request, server.max_body_bytes, server.body_read_timeout.get(), &mut claim).await?;
    let mut chat: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("expected a chat completion body {{\"model\", \"messages\"}}: {e}"), None)
    })?;
    let model = match chat.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ApiError::bad_request("`model` must be a model name", Some("model"))),
    };
    // The answer is shown whole: a stream would only be read to its end.
    chat.insert("stream".to_owned(), Value::Bool(false));
    drop(claim);

    let started_ms = gateway.proxy().state().clock().now_ms();
    let mut inner = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(Value::Object(chat).to_string())))
        .map_err(|e| ApiError::Internal(format!("building the playground request: {e}")))?;
    inner.extensions_mut().insert(admin_caller());
    let response = crate::api::chat::chat(gateway, inner).await;

    let status = response.status().as_u16();
    let mut headers = Map::new();
    for name in ROUTING_HEADERS {
        if let Some(value) = response.headers().get(*name).and_then(|v| v.to_str().ok()) {
            headers.insert((*name).to_owned(), Value::String(value.to_owned()));
        }
    }
    let routed_via = headers.get(ROUTED_VIA).cloned().unwrap_or(Value::Null);
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Err(ApiError::Internal(format!("reading the chat answer: {e}"))),
    };
    let answer = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    let (attempts, log) = trail(gateway, &model, started_ms).await;
    Ok(json!({
        "status": status,
        "routed_via": routed_via,
        "headers": headers,
        "answer": answer,
        "attempts": attempts,
        "log": log,
    }))
}

/// The client the playground's chats run as: no budget, named `admin` in
/// the request log and the metrics.
fn admin_caller() -> Caller {
    let key = ClientKey { name: Some(CLIENT.to_owned()), token: None, rpm: None, rpd: None, tpd: None, models: None };
    Caller { label: CLIENT.to_owned(), client: Arc::new(Client::from_config(&key)) }
}

/// The attempt trail of the playground's request, read back from the log
/// (the newest `admin` request for `model` since it started: two
/// playground chats for one model at once could swap trails, which an
/// operator trying models by hand does not do), and the log row itself;
/// `null`s when the gateway keeps no log or it was not written in time.
async fn trail(gateway: &Gateway, model: &str, since_ms: i64) -> (Value, Value) {
    let Some(path) = params::log_file(gateway) else {
        return (Value::Null, Value::Null);
    };
    let state = Arc::clone(gateway.proxy().state());
    let flushed = tokio::task::spawn_blocking(move || state.flush(LOG_WAIT)).await.unwrap_or(false);
    if !flushed {
        tracing::warn!("the playground's request was not logged in time: its answer goes without the trail");
    }
    let filter = Filter {
        since_ms: Some(since_ms),
        client: Some(CLIENT.to_owned()),
        model: Some(model.to_owned()),
        ..Filter::default()
    };
    match params::read(path, move |conn| query::page(conn, &filter, None, 1)).await {
        Ok(mut rows) => match rows.pop() {
            Some(row) => {
                let attempts = row.attempts.clone();
                (attempts, serde_json::to_value(row).unwrap_or(Value::Null))
            }
            None => (Value::Null, Value::Null),
        },
        Err(_) => (Value::Null, Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_playground_client_is_named_admin() {
        let caller = admin_caller();
        assert_eq!(caller.label, CLIENT);
        assert_eq!(&**caller.client.name(), CLIENT);
    }
}
