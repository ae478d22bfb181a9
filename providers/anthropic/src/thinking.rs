//! Anthropic's thinking blocks ⇄ the `reasoning_details` entries of
//! freeway's chat shape (OpenRouter's shape, format `anthropic-claude-v1`).
//!
//! Anthropic signs each `thinking` block and encrypts `redacted_thinking`
//! ones; during a tool-use loop it wants them back, unmodified and first in
//! the assistant turn, or it refuses the request. Answers therefore carry
//! every block as an entry, and requests turn the entries back into blocks.

use serde_json::{Map, Value, json};

/// The `format` of entries only Anthropic can verify.
pub const FORMAT: &str = "anthropic-claude-v1";

/// The entry of a signed thinking block; `text` is left out in stream
/// deltas, where the text arrived as `reasoning_content` pieces before.
pub fn text_entry(text: Option<&str>, signature: Option<&str>, index: u64) -> Value {
    let mut entry = Map::new();
    entry.insert("type".to_owned(), Value::String("reasoning.text".to_owned()));
    if let Some(text) = text {
        entry.insert("text".to_owned(), Value::String(text.to_owned()));
    }
    if let Some(signature) = signature {
        entry.insert("signature".to_owned(), Value::String(signature.to_owned()));
    }
    entry.insert("format".to_owned(), Value::String(FORMAT.to_owned()));
    entry.insert("index".to_owned(), json!(index));
    Value::Object(entry)
}

/// The entry of a redacted (encrypted) thinking block.
pub fn encrypted_entry(data: &str, index: u64) -> Value {
    json!({"type": "reasoning.encrypted", "data": data, "format": FORMAT, "index": index})
}

fn type_of(value: &Value) -> &str {
    value.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn non_empty(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An assistant message's reasoning → the thinking and redacted-thinking
/// blocks that go first in its turn, in the order of its entries.
///
/// Only entries of Anthropic's format are used: no other provider's
/// reasoning can be verified here. A thinking block goes back only with its
/// signature (Anthropic refuses an unsigned one, and a turn without it is
/// handled by turning thinking off, see [`unverifiable_tool_turn`]). An
/// entry without text (a chat client that accumulated a stream) takes the
/// message's `reasoning_content` when it is the message's only text entry.
pub fn request_blocks(message: &Value) -> Vec<Value> {
    let entries: Vec<&Value> = message
        .get("reasoning_details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("format").and_then(Value::as_str) == Some(FORMAT))
        .collect();
    let text_entries = entries.iter().filter(|e| type_of(e) == "reasoning.text").count();
    let streamed_text = message.get("reasoning_content").and_then(Value::as_str).unwrap_or_default();
    let mut blocks = Vec::with_capacity(entries.len());
    for entry in &entries {
        match type_of(entry) {
            "reasoning.text" => {
                let Some(signature) = non_empty(entry.get("signature")) else { continue };
                let text = match entry.get("text").and_then(Value::as_str) {
                    Some(text) => text,
                    None if text_entries == 1 => streamed_text,
                    None => "",
                };
                blocks.push(json!({"type": "thinking", "thinking": text, "signature": signature}));
            }
            "reasoning.encrypted" => {
                if let Some(data) = non_empty(entry.get("data")) {
                    blocks.push(json!({"type": "redacted_thinking", "data": data}));
                }
            }
            // Summaries and types added later: nothing Anthropic verifies.
            _ => {}
        }
    }
    blocks
}

/// Whether Anthropic would refuse this conversation with thinking on: its
/// last assistant turn calls tools but does not start with a thinking or
/// redacted-thinking block (Anthropic: "a final assistant message must start
/// with a thinking block (preceding the lastmost set of tool_use and
/// tool_result blocks) ... To avoid this requirement, disable thinking").
/// That happens when the turn came from another model, whose reasoning
/// Anthropic cannot verify, or from a client that dropped the blocks.
pub fn unverifiable_tool_turn(messages: &[Value]) -> bool {
    let Some(last) = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("assistant")) else {
        return false;
    };
    let blocks = last.get("content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let calls_tools = blocks.iter().any(|b| type_of(b) == "tool_use");
    let starts_with_thinking = blocks.first().map(type_of).is_some_and(|t| t == "thinking" || t == "redacted_thinking");
    calls_tools && !starts_with_thinking
}
