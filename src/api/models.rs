//! `GET /v1/models`: every routable name, built with the routing tables
//! (no upstream call). A request carrying `anthropic-version` (Claude Code,
//! the Anthropic SDKs) gets the list in Anthropic's shape; its client
//! gives up on a slow list, and this one is answered from memory. A named
//! client restricted to some models (`server.api_keys[].models`) is shown
//! only those.

use bytes::Bytes;
use http::{Request, Response};
use serde_json::{Value, json};

use super::json_response;
use crate::auth::Caller;
use crate::body::ResponseBody;
use crate::gateway::Gateway;

/// The model list (for a client whose `models` globs restrict it, only the
/// names it may use).
pub fn list<B>(gateway: &Gateway, request: &Request<B>) -> Response<ResponseBody> {
    let headers = request.headers();
    let mut openai = gateway.router().models_json();
    if let Some(caller) = request.extensions().get::<Caller>()
        && caller.client.checks_models()
    {
        openai = only(&openai, |id| caller.client.may_use(id));
    }
    if !headers.contains_key("anthropic-version") {
        return json_response(openai);
    }
    json_response(anthropic_shape(&openai))
}

/// OpenAI's model list with only the names `keep` keeps.
fn only(openai: &[u8], keep: impl Fn(&str) -> bool) -> Bytes {
    let mut list: Value = serde_json::from_slice(openai).unwrap_or_default();
    if let Some(data) = list.get_mut("data").and_then(Value::as_array_mut) {
        data.retain(|m| m["id"].as_str().is_some_and(&keep));
    }
    Bytes::from(list.to_string())
}

/// OpenAI's model list as Anthropic's: `{data: [{type, id, display_name,
/// created_at}], has_more, first_id, last_id}`.
fn anthropic_shape(openai: &[u8]) -> Bytes {
    let list: Value = serde_json::from_slice(openai).unwrap_or_default();
    let data: Vec<Value> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"}))
        .collect();
    let first = data.first().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    Bytes::from(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anthropic_shape_lists_the_same_names() {
        let openai =
            br#"{"object":"list","data":[{"id":"free","object":"model"},{"id":"groq/llama","object":"model"}]}"#;
        let v: Value = serde_json::from_slice(&anthropic_shape(openai)).unwrap();
        assert_eq!(v["data"][1]["id"], "groq/llama");
        assert_eq!(v["data"][0]["type"], "model");
        assert_eq!(
            (v["first_id"].as_str(), v["last_id"].as_str(), v["has_more"].as_bool()),
            (Some("free"), Some("groq/llama"), Some(false))
        );
    }
}
