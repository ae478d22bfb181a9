//! Helpers shared by freeway's provider plugins. Plain Rust, no bindings:
//! each plugin maps these to its own generated WIT types.

use serde::Deserialize;
use serde_json::{Map, Value, json};

pub use sse_parse::SseParser;

/// Upper bound on one buffered SSE event (a runaway upstream cannot make a
/// decoder grow without limit).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// A fresh SSE parser with the event size bound.
pub fn sse_parser() -> SseParser {
    SseParser::new().max_buffer(MAX_EVENT_BYTES)
}

/// Token counts, in OpenAI's field names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// The value of option `name` in a target's options.
pub fn option<'a>(options: &'a [(String, String)], name: &str) -> Option<&'a str> {
    options.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A comma-separated option as a list of trimmed, non-empty items.
pub fn option_list<'a>(options: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    option(options, name).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
}

/// The message of an error value: `{"message": ...}`, a string, or the JSON.
pub fn error_message(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        other => other.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| other.to_string()),
    }
}

/// Parses an OpenAI request body into a JSON object.
pub fn request_object(request: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(request) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the request is not a JSON object".to_owned()),
        Err(e) => Err(format!("the request is not valid JSON: {e}")),
    }
}

/// Standard request headers: JSON body, `accept`, and the key in
/// `auth_header` (default `authorization`) with `auth_scheme` (default
/// `Bearer`; the option `auth_scheme` set to empty sends the bare key).
pub fn json_headers(key: Option<&str>, stream: bool, options: &[(String, String)]) -> Vec<(String, String)> {
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("accept".to_owned(), if stream { "text/event-stream" } else { "application/json" }.to_owned()),
    ];
    if let Some(key) = key {
        let name = option(options, "auth_header").unwrap_or("authorization").to_ascii_lowercase();
        let value = match option(options, "auth_scheme") {
            Some("") => key.to_owned(),
            Some(scheme) => format!("{scheme} {key}"),
            None if name == "authorization" => format!("Bearer {key}"),
            None => key.to_owned(),
        };
        headers.push((name, value));
    }
    headers
}

/// An OpenAI `chat.completion.chunk` with one choice.
pub fn chunk_json(id: &str, model: &str, created: u64, delta: Value, finish_reason: Option<&str>) -> Vec<u8> {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
    .to_string()
    .into_bytes()
}

/// An OpenAI `chat.completion.chunk` that carries only usage.
pub fn usage_chunk_json(id: &str, model: &str, created: u64, usage: Usage) -> Vec<u8> {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_json(usage),
    })
    .to_string()
    .into_bytes()
}

/// OpenAI's usage object.
pub fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// `true` for the strings providers use for a zero price.
pub fn is_zero_price(price: Option<&Value>) -> bool {
    match price {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => {
            let s = s.trim();
            s.is_empty() || s.eq_ignore_ascii_case("free") || s.parse::<f64>().is_ok_and(|p| p == 0.0)
        }
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(_) => false,
    }
}
