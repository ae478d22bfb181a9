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

use serde_json::{Map, Value, json};

use super::{DialectError, Translated};

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
                return Err(field_error(format!("{path}.type"), format!("a {other} block belongs in an assistant turn")));
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
/// calls, and its thinking as `reasoning_content` (with the signature as
/// `reasoning_signature`, so a target that checks signatures can be given
/// them back).
fn assistant_turn(blocks: &[Value], path: &str, out: &mut Vec<Value>) -> Result<(), DialectError> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    let mut signature = String::new();
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
                reasoning.push_str(string_field(block, "thinking", &path)?);
                if let Some(s) = block.get("signature").and_then(Value::as_str) {
                    signature.push_str(s);
                }
            }
            // Redacted thinking is encrypted for Anthropic alone: no text
            // to keep, and no other target can read it.
            "redacted_thinking" => {}
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
    if !signature.is_empty() {
        message.insert("reasoning_signature".into(), signature.into());
    }
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
                {"role": "assistant", "content": "Reading.", "reasoning_content": "they want a read", "reasoning_signature": "sig==",
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
            (json!({"model": "m", "max_tokens": 1, "messages": [], "temperature": "hot"}), "temperature: must be a number"),
        ];
        for (request, expected) in cases {
            let message = error_of(request.clone());
            assert!(message.starts_with(expected), "{request}: {message}");
        }
        assert!(to_chat(b"{").unwrap_err().message.contains("not valid JSON"));
    }
}
