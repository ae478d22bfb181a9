//! OpenAI's shapes, as plugins read and write them: request bodies, usage,
//! chunks, errors, model records.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::{Chunk, ModelRecord, StreamEvent, Usage};

/// Reads OpenAI's usage object (`prompt_tokens`, `completion_tokens`; the
/// others are ignored, a missing count is 0), so that a plugin's serde
/// structs can hold an `Option<Usage>` directly.
impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(Usage { prompt_tokens: wire.prompt_tokens, completion_tokens: wire.completion_tokens })
    }
}

/// OpenAI's usage object for these counts (the total saturates: counts come
/// from upstreams and are not trusted to be small).
pub fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
    })
}

/// Parses an OpenAI request body into a JSON object.
pub fn request_object(request: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(request) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the request is not a JSON object".to_owned()),
        Err(e) => Err(format!("the request is not valid JSON: {e}")),
    }
}

/// The message of an error value: `{"message": ...}`, a string, or the JSON.
pub fn error_message(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        other => other.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| other.to_string()),
    }
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

/// An OpenAI `chat.completion.chunk` that carries only a usage object
/// (usually [`usage_json`], perhaps with the provider's details added).
pub fn usage_chunk_json(id: &str, model: &str, created: u64, usage: Value) -> Vec<u8> {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    })
    .to_string()
    .into_bytes()
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

impl StreamEvent {
    /// A chunk event: OpenAI chunk JSON and the usage it reports, if any.
    pub fn chunk(json: Vec<u8>, usage: Option<Usage>) -> Self {
        Self::Chunk(Chunk { json, usage })
    }
}

impl ModelRecord {
    /// A record that knows only the id; set the other fields with
    /// `ModelRecord { context_length, ..ModelRecord::new(id) }`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            context_length: None,
            free: None,
            parameters: None,
            active_parameters: None,
            capabilities: Vec::new(),
        }
    }
}
