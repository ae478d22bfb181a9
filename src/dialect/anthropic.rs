//! The Anthropic Messages API (`POST /v1/messages`, as Claude Code and the
//! Anthropic SDKs send it), translated to and from OpenAI chat completions.
//!
//! Pure translation: a Messages request becomes a chat completion request
//! ([`to_chat`]), a chat completion answer becomes a Messages answer
//! ([`from_chat`]), a chat completion stream becomes Anthropic's event
//! stream ([`MessagesStream`]), and errors take Anthropic's shape
//! ([`error_body`]). Every request error names the field it is about
//! (`messages[2].content[0].type: unknown block type "foo"`), because the
//! client's author reads it and must find the field.

use std::fmt::Display;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::chunks::{ChatEvent, Chunk, ChunkReader, ChunkUsage};
use super::reasoning::{self, Carried};
use super::{DialectError, StreamTranslator, Translated};

/// An error about the field at `path`.
fn field_error(path: impl Display, what: impl Display) -> DialectError {
    DialectError::new(format!("{path}: {what}"))
}

/// A short random id (for answers whose upstream gave none).
fn random_id(prefix: &str) -> String {
    let tail: String = std::iter::repeat_with(fastrand::alphanumeric).take(24).collect();
    format!("{prefix}{tail}")
}

/// Messages request JSON → OpenAI chat completion request JSON.
///
/// Fields the chat request has no place for (`container`, `mcp_servers`,
/// `service_tier`, ...) are ignored rather than forwarded, so a plugin never
/// sees a field it does not know; fields that change the meaning of the
/// request and cannot be honoured (server tools) are errors.
pub fn to_chat(body: &[u8]) -> Result<Translated, DialectError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| DialectError::new(format!("the body is not valid JSON: {e}")))?;
    let Some(request) = request.as_object() else {
        return Err(DialectError::new("the body must be a JSON object"));
    };
    let model = match request.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        Some(_) => return Err(field_error("model", "must be a non-empty string")),
        None => return Err(field_error("model", "is required")),
    };
    let max_tokens = match request.get("max_tokens") {
        Some(value) => match value.as_u64() {
            Some(n) if n >= 1 => n,
            _ => return Err(field_error("max_tokens", "must be an integer of at least 1")),
        },
        None => return Err(field_error("max_tokens", "is required")),
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(field_error("stream", "must be a boolean")),
    };

    let mut messages = Vec::new();
    if let Some(system) = request.get("system") {
        let text = system_text(system)?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let Some(turns) = request.get("messages") else {
        return Err(field_error("messages", "is required"));
    };
    let Some(turns) = turns.as_array() else {
        return Err(field_error("messages", "must be an array"));
    };
    for (i, turn) in turns.iter().enumerate() {
        translate_turn(turn, &format!("messages[{i}]"), &mut messages)?;
    }

    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(model.clone()));
    chat.insert("messages".into(), Value::Array(messages));
    chat.insert("max_tokens".into(), max_tokens.into());
    if let Some(tools) = request.get("tools") {
        let tools = translate_tools(tools)?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = request.get("tool_choice") {
        translate_tool_choice(choice, &mut chat)?;
    }
    match request.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(stops)) => {
            if stops.iter().any(|s| !s.is_string()) {
                return Err(field_error("stop_sequences", "must be an array of strings"));
            }
            if !stops.is_empty() {
                chat.insert("stop".into(), Value::Array(stops.clone()));
            }
        }
        Some(_) => return Err(field_error("stop_sequences", "must be an array of strings")),
    }
    for name in ["temperature", "top_p", "top_k"] {
        match request.get(name) {
            None | Some(Value::Null) => {}
            Some(value @ Value::Number(_)) => {
                chat.insert(name.into(), value.clone());
            }
            Some(_) => return Err(field_error(name, "must be a number")),
        }
    }
    if let Some(thinking) = request.get("thinking")
        && let Some(effort) = reasoning_effort(thinking)?
    {
        chat.insert("reasoning_effort".into(), effort.into());
    }
    if let Some(user) = request.get("metadata").and_then(|m| m.get("user_id")) {
        match user {
            Value::Null => {}
            Value::String(user) => {
                chat.insert("user".into(), Value::String(user.clone()));
            }
            _ => return Err(field_error("metadata.user_id", "must be a string")),
        }
    }
    chat.insert("stream".into(), Value::Bool(stream));
    if stream {
        // The usage chunk is where the stream's `message_delta` finds its
        // token counts.
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Translated { chat: Value::Object(chat).to_string().into_bytes(), model, stream })
}

/// A block's `type`, required.
fn block_type<'a>(block: &'a Value, path: &str) -> Result<&'a str, DialectError> {
    if !block.is_object() {
        return Err(field_error(path, "must be an object"));
    }
    block.get("type").and_then(Value::as_str).ok_or_else(|| field_error(format!("{path}.type"), "is required"))
}

/// A required string field of an object.
fn string_field<'a>(object: &'a Value, name: &str, path: &str) -> Result<&'a str, DialectError> {
    match object.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(field_error(format!("{path}.{name}"), "must be a string")),
        None => Err(field_error(format!("{path}.{name}"), "is required")),
    }
}

/// `system` as a string or text blocks, as one text (blocks joined by a
/// blank line: a chat request has one leading system message).
fn system_text(system: &Value) -> Result<String, DialectError> {
    match system {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                let path = format!("system[{j}]");
                match block_type(block, &path)? {
                    "text" => texts.push(string_field(block, "text", &path)?),
                    other => {
                        return Err(field_error(
                            format!("{path}.type"),
                            format!("the system prompt takes text blocks, not \"{other}\""),
                        ));
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => Err(field_error("system", "must be a string or an array of text blocks")),
    }
}

/// One turn of `messages` → the chat messages it becomes (a user turn with
/// tool results becomes several).
fn translate_turn(turn: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), DialectError> {
    if !turn.is_object() {
        return Err(field_error(path, "must be an object"));
    }
    let role = string_field(turn, "role", path)?;
    if role != "user" && role != "assistant" {
        return Err(field_error(format!("{path}.role"), format!("must be \"user\" or \"assistant\", not \"{role}\"")));
    }
    let content_path = format!("{path}.content");
    match turn.get("content") {
        Some(Value::String(text)) => {
            out.push(json!({"role": role, "content": text}));
            Ok(())
        }
        Some(Value::Array(blocks)) if role == "user" => user_turn(blocks, &content_path, out),
        Some(Value::Array(blocks)) => assistant_turn(blocks, &content_path, out),
        Some(_) => Err(field_error(content_path, "must be a string or an array of content blocks")),
        None => Err(field_error(content_path, "is required")),
    }
}

/// A user turn's blocks: each `tool_result` becomes a `tool` message, in
/// order and before the turn's other content (a chat request must answer
/// the assistant's tool calls right after them); text and images follow
/// as one user message.
fn user_turn(blocks: &[Value], path: &str, out: &mut Vec<Value>) -> Result<(), DialectError> {
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let path = format!("{path}[{j}]");
        match block_type(block, &path)? {
            "text" => parts.push(json!({"type": "text", "text": string_field(block, "text", &path)?})),
            "image" => parts.push(image_part(block, &path)?),
            "tool_result" => {
                let id = string_field(block, "tool_use_id", &path)?;
                let (mut text, images) = tool_result_content(block.get("content"), &format!("{path}.content"))?;
                if block.get("is_error").and_then(Value::as_bool).unwrap_or(false) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                // A tool message carries text only: the result's images
                // (a screenshot, an image file read) ride in the user
                // message that follows, labelled with their call.
                if !images.is_empty() {
                    parts.push(json!({"type": "text", "text": format!("(image from the result of tool call {id})")}));
                    parts.extend(images);
                }
            }
            other @ ("tool_use" | "thinking" | "redacted_thinking") => {
                return Err(field_error(
                    format!("{path}.type"),
                    format!("a {other} block belongs in an assistant turn"),
                ));
            }
            other => return Err(field_error(format!("{path}.type"), format!("unknown block type \"{other}\""))),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = match parts.as_slice() {
        [Value::Object(part)] if part.get("type").and_then(Value::as_str) == Some("text") => {
            part.get("text").cloned().unwrap_or_default()
        }
        _ => Value::Array(parts),
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

/// An `image` block → a chat `image_url` part.
fn image_part(block: &Value, path: &str) -> Result<Value, DialectError> {
    let source_path = format!("{path}.source");
    let Some(source) = block.get("source").filter(|s| s.is_object()) else {
        return Err(field_error(source_path, "is required (an object)"));
    };
    let url = match string_field(source, "type", &source_path)? {
        "base64" => {
            let media_type = string_field(source, "media_type", &source_path)?;
            let data = string_field(source, "data", &source_path)?;
            format!("data:{media_type};base64,{data}")
        }
        "url" => string_field(source, "url", &source_path)?.to_owned(),
        other => {
            return Err(field_error(format!("{source_path}.type"), format!("unknown image source \"{other}\"")));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `tool_result`'s content (a string, or text and image blocks): its
/// text, and its images as chat parts.
fn tool_result_content(content: Option<&Value>, path: &str) -> Result<(String, Vec<Value>), DialectError> {
    match content {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(text)) => Ok((text.clone(), Vec::new())),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for (k, block) in blocks.iter().enumerate() {
                let path = format!("{path}[{k}]");
                match block_type(block, &path)? {
                    "text" => texts.push(string_field(block, "text", &path)?),
                    "image" => images.push(image_part(block, &path)?),
                    other => {
                        return Err(field_error(
                            format!("{path}.type"),
                            format!("a tool result takes text and image blocks, not \"{other}\""),
                        ));
                    }
                }
            }
            Ok((texts.join("\n\n"), images))
        }
        Some(_) => Err(field_error(path, "must be a string or an array of content blocks")),
    }
}

/// An assistant turn's blocks → one assistant message: its text, its tool
/// calls, its thinking text as `reasoning_content`, and what a target needs
/// back as `reasoning_details` (Anthropic's signed and redacted thinking as
/// Anthropic entries; what freeway sealed into a signature opened again,
/// see `reasoning.rs`).
fn assistant_turn(blocks: &[Value], path: &str, out: &mut Vec<Value>) -> Result<(), DialectError> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    let mut details = Vec::new();
    let mut carried = Carried::default();
    for (j, block) in blocks.iter().enumerate() {
        let path = format!("{path}[{j}]");
        match block_type(block, &path)? {
            "text" => texts.push(string_field(block, "text", &path)?),
            "tool_use" => {
                let id = string_field(block, "id", &path)?;
                let name = string_field(block, "name", &path)?;
                let arguments = match block.get("input") {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(input @ Value::Object(_)) => input.to_string(),
                    Some(_) => return Err(field_error(format!("{path}.input"), "must be an object")),
                };
                calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
            }
            "thinking" => {
                let text = string_field(block, "thinking", &path)?;
                reasoning.push_str(text);
                let signature = block.get("signature").and_then(Value::as_str).unwrap_or_default();
                match Carried::open(signature, &format!("{path}.signature"))? {
                    Some(opened) => carried.merge(opened),
                    None if signature.is_empty() => {}
                    None => details.push(json!({"type": "reasoning.text", "text": text, "signature": signature,
                        "format": reasoning::ANTHROPIC, "index": details.len()})),
                }
            }
            // Encrypted for Anthropic alone: only an Anthropic target gets it.
            "redacted_thinking" => {
                let data = string_field(block, "data", &path)?;
                details.push(json!({"type": "reasoning.encrypted", "data": data, "format": reasoning::ANTHROPIC,
                    "index": details.len()}));
            }
            other @ ("tool_result" | "image") => {
                return Err(field_error(format!("{path}.type"), format!("a {other} block belongs in a user turn")));
            }
            other => return Err(field_error(format!("{path}.type"), format!("unknown block type \"{other}\""))),
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    let content = if texts.is_empty() && !calls.is_empty() { Value::Null } else { texts.join("\n\n").into() };
    message.insert("content".into(), content);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), reasoning.into());
    }
    if !details.is_empty() {
        message.insert("reasoning_details".into(), Value::Array(details));
    }
    // (The turn's calls are all in `message`: nothing is left for later.)
    let _ = carried.apply(&mut message);
    out.push(Value::Object(message));
    Ok(())
}

/// `tools` → chat function tools. Server tools (web search, code
/// execution, ...) run inside Anthropic's API; no other target runs them.
fn translate_tools(tools: &Value) -> Result<Vec<Value>, DialectError> {
    let tools = match tools {
        Value::Null => return Ok(Vec::new()),
        Value::Array(tools) => tools,
        _ => return Err(field_error("tools", "must be an array")),
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        if !tool.is_object() {
            return Err(field_error(path, "must be an object"));
        }
        match tool.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if kind == "custom" => {}
            Some(Value::String(kind)) => {
                return Err(field_error(
                    format!("{path}.type"),
                    format!("the server tool \"{kind}\" is not supported (only client tools with an input_schema)"),
                ));
            }
            Some(_) => return Err(field_error(format!("{path}.type"), "must be a string")),
        }
        let name = string_field(tool, "name", &path)?;
        let parameters = match tool.get("input_schema") {
            Some(schema @ Value::Object(_)) => schema.clone(),
            Some(_) => return Err(field_error(format!("{path}.input_schema"), "must be an object")),
            None => return Err(field_error(format!("{path}.input_schema"), "is required")),
        };
        let mut function = Map::new();
        function.insert("name".into(), name.into());
        if let Some(description) = tool.get("description").and_then(Value::as_str) {
            function.insert("description".into(), description.into());
        }
        function.insert("parameters".into(), parameters);
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

/// `tool_choice` → chat `tool_choice` (and `parallel_tool_calls`).
fn translate_tool_choice(choice: &Value, chat: &mut Map<String, Value>) -> Result<(), DialectError> {
    if choice.is_null() {
        return Ok(());
    }
    let kind = block_type(choice, "tool_choice")?;
    let value = match kind {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => json!({"type": "function", "function": {"name": string_field(choice, "name", "tool_choice")?}}),
        other => return Err(field_error("tool_choice.type", format!("unknown tool choice \"{other}\""))),
    };
    chat.insert("tool_choice".into(), value);
    if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        chat.insert("parallel_tool_calls".into(), false.into());
    }
    Ok(())
}

/// `thinking` → chat `reasoning_effort`, from the budget: low below 4096
/// tokens, medium below 16384, high from there.
fn reasoning_effort(thinking: &Value) -> Result<Option<&'static str>, DialectError> {
    if thinking.is_null() {
        return Ok(None);
    }
    match block_type(thinking, "thinking")? {
        "enabled" => {
            let Some(budget) = thinking.get("budget_tokens").and_then(Value::as_u64) else {
                return Err(field_error("thinking.budget_tokens", "must be a non-negative integer"));
            };
            Ok(Some(match budget {
                0..4096 => "low",
                4096..16384 => "medium",
                _ => "high",
            }))
        }
        // Adaptive thinking leaves the depth to the model: no effort said.
        "disabled" | "adaptive" => Ok(None),
        other => Err(field_error("thinking.type", format!("unknown thinking type \"{other}\""))),
    }
}

/// A chat `finish_reason` → Anthropic's `stop_reason`. A stop on one of
/// the request's stop sequences cannot be told from a natural stop in a
/// chat answer, so both are `end_turn`; tool calls always mean `tool_use`
/// (some targets say `stop` after calling tools).
fn stop_reason(finish_reason: Option<&str>, called_tools: bool) -> &'static str {
    if called_tools {
        return "tool_use";
    }
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// An answer's reasoning as thinking blocks: Anthropic's signed and
/// redacted thinking as Anthropic wrote it; the rest (the text of another
/// target's reasoning, and what that target needs back, sealed as the
/// signature) in one thinking block after them.
fn thinking_blocks(message: &Value, content: &mut Vec<Value>) {
    let text = ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|name| message.get(*name).and_then(Value::as_str))
        .unwrap_or_default();
    let mut rest = Carried::of_message(message);
    let details = std::mem::take(&mut rest.details);
    let signed_texts =
        details.iter().filter(|d| reasoning::is_anthropic(d) && reasoning::kind(d) == "reasoning.text").count();
    let mut shown = false;
    for entry in details {
        if !reasoning::is_anthropic(&entry) {
            rest.details.push(entry);
            continue;
        }
        let field = |name: &str| entry.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        match reasoning::kind(&entry) {
            "reasoning.text" => {
                // A streamed answer's entry has its signature only: the text
                // is the message's, when it is the only signed block.
                let mut thinking = field("text");
                if thinking.is_empty() && signed_texts == 1 {
                    thinking = text.to_owned();
                }
                shown |= !thinking.is_empty();
                content.push(json!({"type": "thinking", "thinking": thinking, "signature": field("signature")}));
            }
            "reasoning.encrypted" => content.push(json!({"type": "redacted_thinking", "data": field("data")})),
            _ => rest.details.push(entry),
        }
    }
    let text = if shown { "" } else { text };
    if !text.is_empty() || !rest.is_empty() {
        let signature = if rest.is_empty() { String::new() } else { rest.seal() };
        content.push(json!({"type": "thinking", "thinking": text, "signature": signature}));
    }
}

/// OpenAI chat completion response JSON → Messages response JSON (`model`
/// echoed as the client asked).
pub fn from_chat(chat: &[u8], model: &str) -> Result<Vec<u8>, DialectError> {
    let chat: Value = serde_json::from_slice(chat)
        .map_err(|e| DialectError::new(format!("the upstream answer is not valid JSON: {e}")))?;
    let Some(choice) = chat.get("choices").and_then(|c| c.get(0)) else {
        return Err(field_error("choices", "the upstream answer has no choice"));
    };
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    thinking_blocks(message, &mut content);
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        // Some targets answer with content parts, as requests may send.
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = message.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (k, call) in calls.iter().enumerate() {
        let path = format!("choices[0].message.tool_calls[{k}]");
        let function = call.get("function").unwrap_or(&Value::Null);
        let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
        let input = match function.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(arguments)) if arguments.trim().is_empty() => json!({}),
            Some(Value::String(arguments)) => serde_json::from_str(arguments).map_err(|e| {
                field_error(
                    format!("{path}.function.arguments"),
                    format!("the tool call's arguments are not JSON: {e}"),
                )
            })?,
            // Some targets send the arguments already parsed.
            Some(arguments) => arguments.clone(),
        };
        let id = call.get("id").and_then(Value::as_str).map_or_else(|| random_id("toolu_"), str::to_owned);
        content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str);
    let usage = chat.get("usage");
    let tokens = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64).unwrap_or(0);
    let id = match chat.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => random_id("msg_"),
    };
    let answer = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish_reason, !calls.is_empty()),
        "stop_sequence": null,
        "usage": {"input_tokens": tokens("prompt_tokens"), "output_tokens": tokens("completion_tokens")}
    });
    Ok(answer.to_string().into_bytes())
}

/// Anthropic's error type for an HTTP status.
///
/// 400 invalid_request_error, 401 authentication_error, 403
/// permission_error, 404 not_found_error, 413 request_too_large, 429
/// rate_limit_error, 500/502 api_error, 503/529 overloaded_error, else
/// api_error.
pub fn error_type(status: u16) -> &'static str {
    match status {
        // A request the client must change: malformed, the wrong method, a
        // body too slow to arrive.
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Anthropic's error body
/// `{"type":"error","error":{"type": error_type(status),"message":...}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}}).to_string().into_bytes()
}

/// `POST /v1/messages/count_tokens`: an estimate of the input tokens
/// (system + messages + tools) at about 4 bytes a token, as freeway's
/// limits estimate (`crate::state::usage::estimate_tokens`); never 0 for
/// non-empty input. No upstream is asked: the answer must be cheap, and
/// the target that will serve the request is not known yet.
pub fn count_tokens(body: &[u8]) -> Result<u64, DialectError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| DialectError::new(format!("the body is not valid JSON: {e}")))?;
    if !request.is_object() {
        return Err(DialectError::new("the body must be a JSON object"));
    }
    match request.get("messages") {
        Some(Value::Array(_)) => {}
        Some(_) => return Err(field_error("messages", "must be an array")),
        None => return Err(field_error("messages", "is required")),
    }
    let mut bytes = 0usize;
    for name in ["system", "messages", "tools"] {
        match request.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => bytes += text.len(),
            Some(Value::Array(items)) if items.is_empty() => {}
            Some(value) => bytes += value.to_string().len(),
        }
    }
    Ok((bytes as u64).div_ceil(4))
}

/// The kind of the content block a stream has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    /// Redacted thinking (whole in its start event).
    Redacted,
    Text,
    /// A tool call, by its index in the chat stream.
    Tool(u32),
}

/// Chat completion SSE stream → Anthropic's event stream: `message_start`,
/// `ping`, per block `content_block_start`, its deltas and
/// `content_block_stop`, then `message_delta` (stop reason, usage) and
/// `message_stop`; or, when the upstream fails or the stream is cut,
/// Anthropic's `error` event and nothing after it.
///
/// Holds only the open block's kind and the few facts the closing events
/// need, never the answer.
pub struct MessagesStream {
    reader: ChunkReader,
    model: String,
    started: bool,
    /// `message_stop` or `error` was sent: nothing may follow.
    ended: bool,
    /// The open block and its Anthropic index.
    open: Option<(Open, u32)>,
    next_index: u32,
    /// The open thinking block's signature (Anthropic's), sent just before
    /// it closes.
    signature: String,
    /// What another target needs back (its `reasoning_details`, a call's
    /// `extra_content`), sealed into the signature of the next thinking
    /// block to close, or of one opened for it before a tool call or at
    /// the end.
    pending: Carried,
    /// The highest chat tool call index that had a block (a later piece
    /// of an earlier call cannot reopen its closed block).
    last_tool: Option<u32>,
    finish_reason: Option<String>,
    usage: Option<ChunkUsage>,
}

impl MessagesStream {
    /// A translator answering as `model` (the name the client asked for).
    pub fn new(model: &str) -> Self {
        Self {
            reader: ChunkReader::default(),
            model: model.to_owned(),
            started: false,
            ended: false,
            open: None,
            next_index: 0,
            signature: String::new(),
            pending: Carried::default(),
            last_tool: None,
            finish_reason: None,
            usage: None,
        }
    }

    fn on_event(&mut self, event: ChatEvent, out: &mut String) {
        if self.ended {
            return;
        }
        match event {
            ChatEvent::Chunk(chunk) => self.on_chunk(chunk, out),
            ChatEvent::Done => {
                self.start("", out);
                self.close_block(out);
                self.flush_pending(out);
                let called_tools = self.last_tool.is_some();
                let usage = match self.usage {
                    Some(u) => json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}),
                    None => json!({"output_tokens": 0}),
                };
                let stop = stop_reason(self.finish_reason.as_deref(), called_tools);
                emit(
                    out,
                    "message_delta",
                    json!({"delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
                );
                emit(out, "message_stop", json!({}));
                self.ended = true;
            }
            ChatEvent::Error { message } => self.fail(&message, out),
        }
    }

    /// Anthropic's error event; the stream says nothing after it.
    fn fail(&mut self, message: &str, out: &mut String) {
        emit(out, "error", json!({"error": {"type": "api_error", "message": message}}));
        self.ended = true;
    }

    /// `message_start` and a `ping`, once, before anything else.
    fn start(&mut self, chat_id: &str, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let id = if chat_id.is_empty() { random_id("msg_") } else { format!("msg_{chat_id}") };
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}
        });
        emit(out, "message_start", json!({"message": message}));
        emit(out, "ping", json!({}));
    }

    fn on_chunk(&mut self, chunk: Chunk, out: &mut String) {
        self.start(&chunk.id, out);
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        // One answer is asked for; other choices have no place in it.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let delta = choice.delta;
            if let Some(thinking) = delta.reasoning_content.filter(|t| !t.is_empty()) {
                let index = self.ensure_open(Open::Thinking, empty_thinking(), out);
                delta_event(out, index, json!({"type": "thinking_delta", "thinking": thinking}));
            }
            for entry in delta.reasoning_details {
                self.on_detail(entry, out);
            }
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                let index = self.ensure_open(Open::Text, json!({"type": "text", "text": ""}), out);
                delta_event(out, index, json!({"type": "text_delta", "text": text}));
            }
            for call in delta.tool_calls {
                let function = call.function.unwrap_or_default();
                let index = match self.open {
                    Some((Open::Tool(k), index)) if k == call.index => index,
                    // A piece of a call whose block closed: Anthropic's
                    // stream cannot reopen a block, and upstreams stream
                    // calls one after another, so this does not happen
                    // in practice.
                    _ if self.last_tool.is_some_and(|last| call.index <= last) => continue,
                    _ => {
                        self.last_tool = Some(call.index);
                        let id = call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| random_id("toolu_"));
                        if let Some(extra) = call.extra_content.filter(|e| !e.is_null()) {
                            self.pending.calls.push((id.clone(), extra));
                        }
                        // What this call needs back rides in a thinking
                        // block before it, as Anthropic orders them.
                        self.flush_pending(out);
                        let name = function.name.clone().unwrap_or_default();
                        let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                        self.ensure_open(Open::Tool(call.index), block, out)
                    }
                };
                if let Some(arguments) = function.arguments.filter(|a| !a.is_empty()) {
                    delta_event(out, index, json!({"type": "input_json_delta", "partial_json": arguments}));
                }
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
    }

    /// The index of an open block of `kind`, closing another kind and
    /// starting `block` if need be.
    fn ensure_open(&mut self, kind: Open, block: Value, out: &mut String) -> u32 {
        if let Some((open, index)) = self.open
            && open == kind
        {
            return index;
        }
        self.start_block(kind, block, out)
    }

    /// Closes the open block and starts `block`; its index.
    fn start_block(&mut self, kind: Open, block: Value, out: &mut String) -> u32 {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        emit(out, "content_block_start", json!({"index": index, "content_block": block}));
        index
    }

    fn close_block(&mut self, out: &mut String) {
        let Some((kind, index)) = self.open.take() else { return };
        if kind == Open::Thinking {
            let signature = if !self.signature.is_empty() {
                std::mem::take(&mut self.signature)
            } else if !self.pending.is_empty() {
                std::mem::take(&mut self.pending).seal()
            } else {
                String::new()
            };
            if !signature.is_empty() {
                delta_event(out, index, json!({"type": "signature_delta", "signature": signature}));
            }
        }
        emit(out, "content_block_stop", json!({"index": index}));
    }

    /// One `reasoning_details` entry of a delta: Anthropic's signature
    /// closes the thinking block it signs, its redacted thinking is a block
    /// of its own; another target's entry waits in `pending`.
    fn on_detail(&mut self, entry: Value, out: &mut String) {
        if !reasoning::is_anthropic(&entry) {
            self.pending.details.push(entry);
            return;
        }
        let field = |name: &str| entry.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        match reasoning::kind(&entry) {
            "reasoning.text" => {
                let index = self.ensure_open(Open::Thinking, empty_thinking(), out);
                let text = field("text");
                if !text.is_empty() {
                    delta_event(out, index, json!({"type": "thinking_delta", "thinking": text}));
                }
                let signature = field("signature");
                if !signature.is_empty() {
                    if !self.pending.is_empty() {
                        // The block is Anthropic's: what waits goes in a
                        // block of its own.
                        self.open = None;
                        delta_event(out, index, json!({"type": "signature_delta", "signature": signature}));
                        emit(out, "content_block_stop", json!({"index": index}));
                    } else {
                        self.signature = signature;
                        self.close_block(out);
                    }
                }
            }
            "reasoning.encrypted" => {
                let block = json!({"type": "redacted_thinking", "data": field("data")});
                self.start_block(Open::Redacted, block, out);
                self.close_block(out);
            }
            _ => self.pending.details.push(entry),
        }
    }

    /// Seals what waits into a thinking block: the open one, or one of its
    /// own.
    fn flush_pending(&mut self, out: &mut String) {
        if self.pending.is_empty() {
            return;
        }
        if !matches!(self.open, Some((Open::Thinking, _))) {
            self.start_block(Open::Thinking, empty_thinking(), out);
        }
        self.close_block(out);
    }
}

/// A thinking block as it starts, before its deltas.
fn empty_thinking() -> Value {
    json!({"type": "thinking", "thinking": "", "signature": ""})
}

/// One event, `event: <type>\ndata: <json with the same type>\n\n`.
fn emit(out: &mut String, kind: &str, data: Value) {
    let mut data = data;
    if let Value::Object(fields) = &mut data {
        fields.insert("type".into(), kind.into());
    }
    out.push_str("event: ");
    out.push_str(kind);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

fn delta_event(out: &mut String, index: u32, delta: Value) {
    emit(out, "content_block_delta", json!({"index": index, "delta": delta}));
}

impl StreamTranslator for MessagesStream {
    fn feed(&mut self, chat: &[u8]) -> Bytes {
        let mut out = String::new();
        for event in self.reader.feed(chat) {
            self.on_event(event, &mut out);
        }
        Bytes::from(out)
    }

    fn finish(&mut self) -> Bytes {
        let mut out = String::new();
        for event in self.reader.finish() {
            self.on_event(event, &mut out);
        }
        if !self.ended {
            self.fail("the upstream stream ended early", &mut out);
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_of(request: Value) -> Value {
        let translated = to_chat(request.to_string().as_bytes()).unwrap();
        serde_json::from_slice(&translated.chat).unwrap()
    }

    fn error_of(request: Value) -> String {
        to_chat(request.to_string().as_bytes()).unwrap_err().message
    }

    #[test]
    fn a_full_request_translates_field_by_field() {
        let request = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "read", "description": "Reads a file", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "thinking": {"type": "enabled", "budget_tokens": 8000},
            "metadata": {"user_id": "u-1"},
            "stream": true,
            "service_tier": "auto",
            "container": "c"
        });
        let translated = to_chat(request.to_string().as_bytes()).unwrap();
        assert_eq!(translated.model, "claude-sonnet-4-5");
        assert!(translated.stream);
        let chat: Value = serde_json::from_slice(&translated.chat).unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [
                    {"role": "system", "content": "You are terse.\n\nUse tools."},
                    {"role": "user", "content": "hi"}
                ],
                "tools": [{"type": "function", "function": {"name": "read", "description": "Reads a file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "stop": ["END"],
                "temperature": 0.5,
                "top_p": 0.9,
                "top_k": 40,
                "reasoning_effort": "medium",
                "user": "u-1",
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn a_minimal_request_does_not_stream_and_forwards_nothing_unknown() {
        let chat = chat_of(json!({"model": "m", "max_tokens": 1, "system": "be brief", "messages": [], "foo": 1}));
        assert_eq!(
            chat,
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "be brief"}], "stream": false})
        );
    }

    #[test]
    fn tool_choices_and_thinking_budgets_map() {
        let base = |extra: Value| {
            let mut request = json!({"model": "m", "max_tokens": 5, "messages": []});
            request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            chat_of(request)
        };
        assert_eq!(base(json!({"tool_choice": {"type": "auto"}}))["tool_choice"], "auto");
        assert_eq!(base(json!({"tool_choice": {"type": "none"}}))["tool_choice"], "none");
        assert_eq!(
            base(json!({"tool_choice": {"type": "tool", "name": "read"}}))["tool_choice"],
            json!({"type": "function", "function": {"name": "read"}})
        );
        assert!(base(json!({"tool_choice": {"type": "auto"}})).get("parallel_tool_calls").is_none());
        for (budget, effort) in [(1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high")] {
            let chat = base(json!({"thinking": {"type": "enabled", "budget_tokens": budget}}));
            assert_eq!(chat["reasoning_effort"], effort, "budget {budget}");
        }
        assert!(base(json!({"thinking": {"type": "disabled"}})).get("reasoning_effort").is_none());
    }

    #[test]
    fn every_block_type_reaches_the_chat_request() {
        let chat = chat_of(json!({
            "model": "m", "max_tokens": 100,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "they want a read", "signature": "sig=="},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.rs"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "list", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "and then?"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "fn main() {}"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": [{"type": "text", "text": "no such dir"}]}
                ]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_3", "name": "shot", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_3", "content": [
                        {"type": "text", "text": "done"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}
                    ]}
                ]},
                {"role": "user", "content": "consecutive users are kept"}
            ]
        }));
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}
                ]},
                {"role": "assistant", "content": "Reading.", "reasoning_content": "they want a read",
                 "reasoning_details": [
                    {"type": "reasoning.text", "text": "they want a read", "signature": "sig==",
                     "format": "anthropic-claude-v1", "index": 0},
                    {"type": "reasoning.encrypted", "data": "opaque", "format": "anthropic-claude-v1", "index": 1}
                 ],
                 "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "read", "arguments": "{\"path\":\"a.rs\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "list", "arguments": "{}"}}
                 ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "fn main() {}"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such dir"},
                {"role": "user", "content": "and then?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_3", "type": "function", "function": {"name": "shot", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_3", "content": "done"},
                {"role": "user", "content": [
                    {"type": "text", "text": "(image from the result of tool call toolu_3)"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}
                ]},
                {"role": "user", "content": "consecutive users are kept"}
            ])
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"max_tokens": 1, "messages": []}), "model: is required"),
            (json!({"model": "m", "messages": []}), "max_tokens: is required"),
            (json!({"model": "m", "max_tokens": 0, "messages": []}), "max_tokens: must be an integer of at least 1"),
            (json!({"model": "m", "max_tokens": 1}), "messages: is required"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role: must be \"user\" or \"assistant\", not \"system\"",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": [{"type": "foo"}]}]}),
                "messages[2].content[0].type: unknown block type \"foo\"",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
                "messages[0].content[0].source.type: unknown image source \"file\"",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]}),
                "messages[0].content[0].tool_use_id: is required",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": [1]}]}]}),
                "messages[0].content[0].input: must be an object",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [], "tools": [{"name": "a", "input_schema": {}}, {"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[1].type: the server tool \"web_search_20250305\" is not supported",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [], "tool_choice": {"type": "tool"}}),
                "tool_choice.name: is required",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [], "system": [{"type": "image"}]}),
                "system[0].type: the system prompt takes text blocks, not \"image\"",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [], "temperature": "hot"}),
                "temperature: must be a number",
            ),
        ];
        for (request, expected) in cases {
            let message = error_of(request.clone());
            assert!(message.starts_with(expected), "{request}: {message}");
        }
        assert!(to_chat(b"{").unwrap_err().message.contains("not valid JSON"));
    }

    fn answer_of(chat: Value) -> Value {
        serde_json::from_slice(&from_chat(chat.to_string().as_bytes(), "claude-x").unwrap()).unwrap()
    }

    #[test]
    fn an_answer_with_every_block_translates_back() {
        let answer = answer_of(json!({
            "id": "chatcmpl-1", "model": "upstream-m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me look.", "reasoning_content": "need the file",
                "reasoning_details": [{"type": "reasoning.text", "signature": "sig", "format": "anthropic-claude-v1", "index": 0},
                    {"type": "reasoning.encrypted", "data": "red", "format": "anthropic-claude-v1", "index": 1}],
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{\"path\":\"a.rs\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "list", "arguments": ""}}
                ]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}
        }));
        assert_eq!(
            answer,
            json!({
                "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [
                    {"type": "thinking", "thinking": "need the file", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "red"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "call_1", "name": "read", "input": {"path": "a.rs"}},
                    {"type": "tool_use", "id": "call_2", "name": "list", "input": {}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 34}
            })
        );
    }

    #[test]
    fn every_finish_reason_maps_to_a_stop_reason() {
        for (finish, stop) in [
            (json!("stop"), "end_turn"),
            (json!("length"), "max_tokens"),
            (json!("tool_calls"), "tool_use"),
            (json!("content_filter"), "refusal"),
            (Value::Null, "end_turn"),
        ] {
            let answer =
                answer_of(json!({"id": "c", "choices": [{"message": {"content": "x"}, "finish_reason": finish}]}));
            assert_eq!(answer["stop_reason"], stop, "{finish}");
        }
        let called =
            answer_of(json!({"choices": [{"finish_reason": "stop", "message": {"content": null, "reasoning": "r",
            "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{}"}}]}}]}));
        assert_eq!(called["stop_reason"], "tool_use", "tool calls mean tool_use whatever the finish reason");
        assert_eq!(called["content"][0], json!({"type": "thinking", "thinking": "r", "signature": ""}));
        assert_eq!(called["content"].as_array().unwrap().len(), 2, "no empty text block: {called}");
        assert!(called["id"].as_str().unwrap().starts_with("msg_"));
    }

    #[test]
    fn bad_tool_arguments_and_empty_answers_are_errors() {
        let bad = json!({"choices": [{"message": {"tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{oops"}}]}}]});
        let message = from_chat(bad.to_string().as_bytes(), "m").unwrap_err().message;
        assert!(message.starts_with("choices[0].message.tool_calls[0].function.arguments: "), "{message}");
        assert!(from_chat(br#"{"choices": []}"#, "m").unwrap_err().message.starts_with("choices: "));
        assert!(from_chat(b"nope", "m").is_err());
    }

    #[test]
    fn a_tool_round_trip_keeps_ids_and_order() {
        let answer =
            answer_of(json!({"id": "c", "choices": [{"finish_reason": "tool_calls", "message": {"content": null,
            "tool_calls": [
                {"id": "call_a", "function": {"name": "read", "arguments": "{\"p\":1}"}},
                {"id": "call_b", "function": {"name": "read", "arguments": "{\"p\":2}"}}
            ]}}]}));
        let chat = chat_of(json!({"model": "m", "max_tokens": 9, "messages": [
            {"role": "user", "content": "read both"},
            {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "one"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "two"},
                {"type": "text", "text": "now sum them"}
            ]}
        ]}));
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(messages[1]["tool_calls"][0]["id"], "call_a");
        assert_eq!(messages[1]["tool_calls"][1]["function"]["arguments"], "{\"p\":2}");
        assert_eq!(messages[2], json!({"role": "tool", "tool_call_id": "call_a", "content": "one"}));
        assert_eq!(messages[3], json!({"role": "tool", "tool_call_id": "call_b", "content": "two"}));
        assert_eq!(messages[4], json!({"role": "user", "content": "now sum them"}));
    }

    #[test]
    fn errors_take_anthropics_shape() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (504, "api_error"),
        ] {
            assert_eq!(error_type(status), kind, "{status}");
        }
        let body: Value = serde_json::from_slice(&error_body(429, "slow down")).unwrap();
        assert_eq!(body, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}));
    }

    #[test]
    fn count_tokens_estimates_four_bytes_a_token() {
        assert_eq!(count_tokens(br#"{"model": "m", "messages": []}"#).unwrap(), 0);
        assert_eq!(count_tokens(br#"{"model": "m", "system": "a", "messages": []}"#).unwrap(), 1);
        let small = count_tokens(br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#).unwrap();
        assert!(small >= 1);
        let long = "x".repeat(4000);
        let request = json!({"model": "m", "system": long, "messages": [{"role": "user", "content": long}],
            "tools": [{"name": "t", "input_schema": {"type": "object"}}]});
        let tokens = count_tokens(request.to_string().as_bytes()).unwrap();
        assert!((2000..2100).contains(&tokens), "{tokens}");
        assert_eq!(count_tokens(br#"{"model": "m"}"#).unwrap_err().message, "messages: is required");
    }

    /// A realistic chat stream: a role chunk, reasoning with a signature,
    /// text, two tool calls in pieces, the finish, usage, `[DONE]`.
    const STREAM: &str = concat!(
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"Think\"}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"ing.\",\"reasoning_details\":[{\"type\":\"reasoning.text\",\"signature\":\"s1\",\"format\":\"anthropic-claude-v1\",\"index\":0}]}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9\"}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"read\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"path\\\":\"}}]}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"a.rs\\\"}\"}}]}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"list\",\"arguments\":\"{}\"}}]}}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"c9\",\"model\":\"up\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":13}}\n\n",
        "data: [DONE]\n\n",
    );

    fn translate(pieces: &[&[u8]]) -> String {
        let mut stream = MessagesStream::new("claude-x");
        let mut out = Vec::new();
        for piece in pieces {
            out.extend_from_slice(&stream.feed(piece));
        }
        out.extend_from_slice(&stream.finish());
        String::from_utf8(out).unwrap()
    }

    /// The events of an Anthropic stream, as (event name, data).
    fn parse_events(stream: &str) -> Vec<(String, Value)> {
        stream
            .split_terminator("\n\n")
            .map(|event| {
                let (name, data) = event.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_owned();
                let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], name.as_str(), "the data names its event");
                (name, data)
            })
            .collect()
    }

    #[test]
    fn a_stream_becomes_anthropics_event_sequence() {
        let events = parse_events(&translate(&[STREAM.as_bytes()]));
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let data: Vec<&Value> = events.iter().map(|(_, data)| data).collect();
        assert_eq!(data[0]["message"]["id"], "msg_c9");
        assert_eq!(data[0]["message"]["model"], "claude-x");
        assert_eq!(data[0]["message"]["content"], json!([]));
        assert_eq!(data[0]["message"]["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
        assert_eq!(data[2]["content_block"], json!({"type": "thinking", "thinking": "", "signature": ""}));
        assert_eq!(data[3]["delta"], json!({"type": "thinking_delta", "thinking": "Think"}));
        assert_eq!(
            data[5],
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s1"}})
        );
        assert_eq!(data[6], &json!({"type": "content_block_stop", "index": 0}));
        assert_eq!(
            data[7],
            &json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(data[9]["delta"], json!({"type": "text_delta", "text": "lo é"}));
        assert_eq!(data[11]["content_block"], json!({"type": "tool_use", "id": "call_1", "name": "read", "input": {}}));
        assert_eq!(data[11]["index"], 2);
        let partial: String = data[12..14].iter().map(|d| d["delta"]["partial_json"].as_str().unwrap()).collect();
        assert_eq!(partial, "{\"path\":\"a.rs\"}");
        assert_eq!(data[15]["content_block"]["id"], "call_2");
        assert_eq!(data[15]["index"], 3);
        assert_eq!(data[16]["delta"], json!({"type": "input_json_delta", "partial_json": "{}"}));
        assert_eq!(
            data[18],
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"input_tokens": 21, "output_tokens": 13}})
        );
        assert_eq!(data[19], &json!({"type": "message_stop"}));
    }

    #[test]
    fn a_stream_translates_the_same_at_every_split() {
        let whole = translate(&[STREAM.as_bytes()]);
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            assert_eq!(translate(&[&bytes[..at], &bytes[at..]]), whole, "split at {at}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(translate(&bytewise), whole);
    }

    #[test]
    fn a_stream_answers_as_it_goes() {
        let mut stream = MessagesStream::new("claude-x");
        let first_text = STREAM.find("lo \\u00e9").unwrap();
        let out = stream.feed(&STREAM.as_bytes()[..first_text]);
        let events = parse_events(std::str::from_utf8(&out).unwrap());
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "content_block_delta", "the text so far is out before the stream ends");
        assert_eq!(last["delta"], json!({"type": "text_delta", "text": "Hel"}));
        assert!(stream.feed(b"").is_empty());
    }

    #[test]
    fn a_stream_that_ends_in_text_says_end_turn_or_max_tokens() {
        for (finish, stop) in [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")] {
            let stream = format!(
                "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"hi\"}}}}]}}\n\n\
                 data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{finish}\"}}]}}\n\ndata: [DONE]\n\n"
            );
            let events = parse_events(&translate(&[stream.as_bytes()]));
            let (name, delta) = &events[events.len() - 2];
            assert_eq!(name, "message_delta");
            assert_eq!(delta["delta"]["stop_reason"], stop);
            assert_eq!(delta["usage"], json!({"output_tokens": 0}), "no usage chunk came");
        }
    }

    #[test]
    fn an_upstream_error_mid_stream_is_the_last_event() {
        let stream = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"upstream reset\",\"type\":\"upstream_error\"}}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"more\"}}]}\n\n",
            "data: [DONE]\n\n",
        );
        let events = parse_events(&translate(&[stream.as_bytes()]));
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["message_start", "ping", "content_block_start", "content_block_delta", "error"]);
        assert_eq!(events[4].1, json!({"type": "error", "error": {"type": "api_error", "message": "upstream reset"}}));
    }

    #[test]
    fn a_stream_cut_short_ends_with_an_error_event() {
        let cut = &STREAM[..STREAM.find("\"finish_reason\"").unwrap()];
        let events = parse_events(&translate(&[cut.as_bytes()]));
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(data["error"]["message"], "the upstream stream ended early");
        assert!(events.iter().all(|(name, _)| name != "message_stop"));
        let nothing = parse_events(&translate(&[]));
        assert_eq!(nothing.len(), 1, "an empty stream is only the error: {nothing:?}");
        assert_eq!(nothing[0].0, "error");
    }

    /// Another target's reasoning (Gemini's thought text and a call's
    /// thought signature) is one thinking block whose signature carries
    /// what the target needs; sent back, it reaches the chat request whole.
    #[test]
    fn another_targets_signatures_ride_in_a_thinking_block_and_come_back() {
        let extra = json!({"google": {"thought_signature": "R2VtaW5p"}});
        let text_signature =
            json!({"type": "reasoning.encrypted", "data": "dGV4dA", "format": "google-gemini-v1", "index": 0});
        let answer = answer_of(json!({"choices": [{"finish_reason": "tool_calls", "message": {
            "content": null, "reasoning_content": "plan", "reasoning_details": [text_signature],
            "tool_calls": [{"id": "call_9", "type": "function", "extra_content": extra,
                "function": {"name": "write", "arguments": "{}"}}]}}]}));
        let content = answer["content"].as_array().unwrap();
        assert_eq!(content.len(), 2, "{answer}");
        assert_eq!(content[0]["type"], "thinking");
        assert_eq!(content[0]["thinking"], "plan");
        assert!(content[0]["signature"].as_str().unwrap().starts_with("freeway1."));
        // The client sends the turn back as Claude Code does.
        let chat = chat_of(json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_9", "content": "ok"}]}
        ]}));
        let assistant = &chat["messages"][1];
        assert_eq!(assistant["reasoning_content"], "plan");
        assert_eq!(assistant["reasoning_details"], json!([text_signature]));
        assert_eq!(assistant["tool_calls"][0]["extra_content"], extra);
        let mut damaged = content[0].clone();
        damaged["signature"] = json!("freeway1.not base64!");
        let error = error_of(json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": "go"}, {"role": "assistant", "content": [damaged]}]}));
        assert!(error.starts_with("messages[1].content[0].signature: "), "{error}");
    }

    #[test]
    fn a_streamed_call_signature_closes_the_thinking_block_and_redacted_thinking_is_its_own_block() {
        let stream = concat!(
            "data: {\"id\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_details\":[{\"type\":\"reasoning.encrypted\",\"data\":\"r1\",\"format\":\"anthropic-claude-v1\",\"index\":0}]}}]}\n\n",
            "data: {\"id\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"plan\"}}]}\n\n",
            "data: {\"id\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_9\",\"extra_content\":{\"google\":{\"thought_signature\":\"R2Vt\"}},\"function\":{\"name\":\"write\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"id\":\"g\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let events = parse_events(&translate(&[stream.as_bytes()]));
        let blocks: Vec<&Value> =
            events.iter().filter(|(name, _)| name == "content_block_start").map(|(_, d)| &d["content_block"]).collect();
        assert_eq!(blocks[0], &json!({"type": "redacted_thinking", "data": "r1"}));
        assert_eq!(blocks[1]["type"], "thinking");
        assert_eq!(blocks[2]["type"], "tool_use");
        let signature = events
            .iter()
            .find_map(|(_, d)| (d["delta"]["type"] == "signature_delta").then(|| d["delta"]["signature"].clone()))
            .unwrap();
        assert_eq!(events.iter().filter(|(_, d)| d["delta"]["type"] == "signature_delta").count(), 1);
        let opened = Carried::open(signature.as_str().unwrap(), "s").unwrap().unwrap();
        assert_eq!(opened.calls, vec![("call_9".to_owned(), json!({"google": {"thought_signature": "R2Vt"}}))]);
        // The signature comes before the thinking block stops, which is
        // before the call's block starts.
        let position = |wanted: &dyn Fn(&Value) -> bool| events.iter().position(|(_, d)| wanted(d)).unwrap();
        assert!(
            position(&|d| d["delta"]["type"] == "signature_delta")
                < position(&|d| d["content_block"]["type"] == "tool_use")
        );
    }
}
