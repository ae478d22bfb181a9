//! The `anthropic` plugin: Anthropic's native Messages API (`POST /messages`)
//! behind OpenAI's chat-completions shapes.
//!
//! Requests: system and developer messages become the top-level `system`;
//! user, assistant and tool messages become alternating `user` / `assistant`
//! turns of content blocks (text, image, document, `tool_use`,
//! `tool_result`), consecutive turns of one role merged. `max_tokens` is
//! required upstream: the request's `max_completion_tokens` or `max_tokens`,
//! else the option `default_max_tokens`, else 4096. `reasoning_effort`
//! (`low`, `medium`, `high`) turns on extended thinking with a budget that
//! stays under `max_tokens`; a request's own `thinking` object passes through.
//!
//! Thinking across turns (Anthropic signs its thinking and wants it back,
//! first in the assistant turn, during a tool-use loop): an assistant
//! message's `reasoning_details` entries of format `anthropic-claude-v1`
//! become `thinking` blocks (with their signature) and `redacted_thinking`
//! blocks, in order, before its text and tool calls. Entries of other
//! formats, unsigned thinking and plain `reasoning_content` are not sent:
//! Anthropic can verify only its own. When thinking is on but the last
//! assistant turn calls tools without starting with a thinking block (the
//! turn came from another model, or the client dropped the blocks),
//! Anthropic would refuse the request; thinking is turned off
//! (`{"type": "disabled"}`) for that request instead, so the agent goes on.
//! So it is for a forced tool call (`tool_choice` `required` or a named
//! function), which Anthropic does not take with thinking.
//!
//! Answers and streams come back as `chat.completion` and
//! `chat.completion.chunk` bodies: text blocks → `content`, `tool_use` →
//! `tool_calls`, thinking → `reasoning_content` (the texts concatenated)
//! and `reasoning_details` (one entry per thinking or redacted block:
//! `reasoning.text` with text and signature, `reasoning.encrypted` with the
//! data, each with its `index` among the message's reasoning blocks). In
//! streams the text arrives as `reasoning_content` deltas, the signature in
//! one `reasoning_details` delta when its block ends (without the text), and
//! a redacted block whole in one delta.
//!
//! Options:
//!
//! - `anthropic_version` (default `2023-06-01`) and `anthropic_beta` (sent as
//!   the `anthropic-beta` header when set);
//! - `default_max_tokens` (default 4096);
//! - `auth_header` (default `x-api-key`; `authorization` sends a Bearer key,
//!   for Anthropic-compatible endpoints that want one) and `auth_scheme`;
//! - `chat_path` (default `/messages`), `models_path` (default `/models`).
//!
//! Anthropic has no embeddings API: the embeddings calls refuse.

use std::cell::RefCell;

use freeway_plugin_sdk::{
    self as sdk, Answer, BuildError, Capabilities, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers,
    HttpRequest, INTERFACE_VERSION, ModelRecord, RateReport, StreamEvent, Target, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[cfg(test)]
mod tests;
mod thinking;

const DEFAULT_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u64 = 4096;
const NO_EMBEDDINGS: &str = "anthropic has no embeddings API";
/// Anthropic's smallest thinking budget.
const MIN_THINKING_BUDGET: u64 = 1024;

struct Plugin;

/// The request with the API version, the beta features asked for, and the key.
fn with_headers(request: HttpRequest, target: &Target) -> HttpRequest {
    let version = target.option("anthropic_version").unwrap_or(DEFAULT_VERSION);
    let mut request = request.with_header("anthropic-version", version);
    if let Some(beta) = target.option("anthropic_beta").filter(|b| !b.trim().is_empty()) {
        request = request.with_header("anthropic-beta", beta.trim());
    }
    request.with_key(target, "x-api-key")
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A text block, or nothing for empty text (Anthropic refuses empty blocks).
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

/// A `data:` URL → (media type, base64 data).
fn data_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url.strip_prefix("data:").ok_or("not a data: URL")?;
    let (meta, data) = rest.split_once(',').ok_or("a data: URL without a comma")?;
    let media_type = meta.strip_suffix(";base64").ok_or_else(|| format!("a data: URL that is not base64 ({meta})"))?;
    if media_type.is_empty() {
        return Err("a data: URL without a media type".to_owned());
    }
    Ok((media_type, data))
}

fn image_block(part: &Value) -> Result<Value, String> {
    let url = match part.get("image_url") {
        Some(Value::String(url)) => url.as_str(),
        Some(obj) => obj.get("url").and_then(Value::as_str).unwrap_or_default(),
        None => "",
    };
    if url.starts_with("data:") {
        let (media_type, data) = data_url(url).map_err(|e| format!("image_url: {e}"))?;
        Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}))
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
    } else {
        Err("image_url must be a data: URL or an http(s) URL".to_owned())
    }
}

/// A `file` content part with inline data (a PDF) → a document block.
fn document_block(part: &Value) -> Result<Value, String> {
    let file = part.get("file").unwrap_or(&Value::Null);
    let Some(data) = file.get("file_data").and_then(Value::as_str) else {
        return Err("file parts need inline file_data (anthropic cannot read OpenAI file ids)".to_owned());
    };
    let (media_type, data) = match data_url(data) {
        Ok(found) => found,
        // Bare base64, as some clients send it: assume a PDF.
        Err(_) if !data.starts_with("data:") => ("application/pdf", data),
        Err(e) => return Err(format!("file_data: {e}")),
    };
    let mut block = json!({"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}});
    if let Some(name) = file.get("filename").and_then(Value::as_str) {
        block["title"] = Value::String(name.to_owned());
    }
    Ok(block)
}

/// User (or tool result) content: a string or a list of parts.
fn content_blocks(content: Option<&Value>, role: &str) -> Result<Vec<Value>, String> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text_block(text).into_iter().collect()),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("text");
                match kind {
                    "text" => blocks.extend(text_block(part.get("text").and_then(Value::as_str).unwrap_or_default())),
                    // An assistant's refusal, sent back in a later turn.
                    "refusal" if role == "assistant" => {
                        blocks.extend(text_block(part.get("refusal").and_then(Value::as_str).unwrap_or_default()))
                    }
                    "image_url" if role != "assistant" => blocks.push(image_block(part)?),
                    "file" if role != "assistant" => blocks.push(document_block(part)?),
                    other => {
                        return Err(format!("a {role} content part of type `{other}` is not supported by anthropic"));
                    }
                }
            }
            Ok(blocks)
        }
        Some(_) => Err(format!("a {role} message's content must be a string or a list of parts")),
    }
}

/// The text of a system message (a string or text parts).
fn system_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .map(|p| match p.get("type").and_then(Value::as_str).unwrap_or("text") {
                    "text" => Ok(p.get("text").and_then(Value::as_str).unwrap_or_default()),
                    other => Err(format!("a system content part of type `{other}` is not supported by anthropic")),
                })
                .collect::<Result<_, _>>()?;
            Ok(texts.concat())
        }
        Some(_) => Err("a system message's content must be a string or a list of parts".to_owned()),
    }
}

fn tool_use_block(call: &Value) -> Result<Value, String> {
    let id = call.get("id").and_then(Value::as_str).ok_or("an assistant tool call has no id")?;
    let function = call.get("function").unwrap_or(&Value::Null);
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("assistant tool call `{id}` has no function name"))?;
    let input = match function.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(args)) if args.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(args)) => serde_json::from_str::<Value>(args)
            .map_err(|e| format!("assistant tool call `{id}` has arguments that are not valid JSON: {e}"))?,
        Some(other) => other.clone(),
    };
    let input = match input {
        Value::Object(_) => input,
        Value::Null => Value::Object(Map::new()),
        _ => return Err(format!("assistant tool call `{id}` has arguments that are not a JSON object")),
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn tool_result_block(message: &Value) -> Result<Value, String> {
    let id = message.get("tool_call_id").and_then(Value::as_str).ok_or("a tool message has no tool_call_id")?;
    let mut block = json!({"type": "tool_result", "tool_use_id": id});
    match message.get("content") {
        Some(Value::String(text)) if !text.is_empty() => block["content"] = Value::String(text.clone()),
        Some(Value::Array(_)) => {
            let blocks = content_blocks(message.get("content"), "tool")?;
            if !blocks.is_empty() {
                block["content"] = Value::Array(blocks);
            }
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err("a tool message's content must be a string or a list of parts".to_owned()),
    }
    Ok(block)
}

struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

/// Appends blocks to the conversation, merging with the last turn when it
/// has the same role (Anthropic wants the roles to alternate).
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.blocks.extend(blocks),
        _ => turns.push(Turn { role, blocks }),
    }
}

/// OpenAI messages → (system prompt, Anthropic messages).
fn convert_messages(messages: &[Value]) -> Result<(Option<String>, Vec<Value>), String> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::with_capacity(messages.len());
    for message in messages {
        let role = message.get("role").and_then(Value::as_str).unwrap_or_default();
        match role {
            "system" | "developer" => {
                let text = system_text(message.get("content"))?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => push_turn(&mut turns, "user", content_blocks(message.get("content"), "user")?),
            "assistant" => {
                // Thinking first: Anthropic requires it.
                let mut blocks = thinking::request_blocks(message);
                blocks.extend(content_blocks(message.get("content"), "assistant")?);
                if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
                    for call in calls {
                        blocks.push(tool_use_block(call)?);
                    }
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => push_turn(&mut turns, "user", vec![tool_result_block(message)?]),
            "function" => return Err("`function` messages are not supported; send `tool` messages".to_owned()),
            other => return Err(format!("unknown message role `{other}`")),
        }
    }
    if turns.is_empty() {
        return Err("the request has no user or assistant message".to_owned());
    }
    let messages = turns
        .into_iter()
        .map(|mut turn| {
            // In a user turn, tool results come before anything else.
            if turn.role == "user" {
                turn.blocks.sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
            }
            json!({"role": turn.role, "content": turn.blocks})
        })
        .collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, messages))
}

fn convert_tools(tools: &[Value]) -> Result<Vec<Value>, String> {
    tools
        .iter()
        .map(|tool| {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
            if kind != "function" {
                return Err(format!("tools of type `{kind}` are not supported by anthropic"));
            }
            let function = tool.get("function").ok_or("a tool without a function")?;
            let name = function.get("name").and_then(Value::as_str).ok_or("a tool function without a name")?;
            let mut out = Map::new();
            out.insert("name".to_owned(), Value::String(name.to_owned()));
            if let Some(description) = function.get("description").and_then(Value::as_str) {
                out.insert("description".to_owned(), Value::String(description.to_owned()));
            }
            let schema = match function.get("parameters") {
                Some(schema @ Value::Object(_)) => schema.clone(),
                _ => json!({"type": "object", "properties": {}}),
            };
            out.insert("input_schema".to_owned(), schema);
            Ok(Value::Object(out))
        })
        .collect()
}

fn convert_tool_choice(choice: Option<&Value>) -> Result<Option<Map<String, Value>>, String> {
    let mut out = Map::new();
    match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => {
            let kind = match s.as_str() {
                "auto" => "auto",
                "required" => "any",
                "none" => "none",
                other => return Err(format!("unknown tool_choice `{other}`")),
            };
            out.insert("type".to_owned(), Value::String(kind.to_owned()));
        }
        Some(obj @ Value::Object(_)) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or("tool_choice names no function")?;
            out.insert("type".to_owned(), Value::String("tool".to_owned()));
            out.insert("name".to_owned(), Value::String(name.to_owned()));
        }
        Some(_) => return Err("tool_choice must be a string or an object".to_owned()),
    }
    Ok(Some(out))
}

fn as_u64(value: Option<&Value>) -> Option<u64> {
    value.and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)))
}

/// The OpenAI request → the Messages API body; also whether it streams.
fn build_body(request: &[u8], target: &Target) -> Result<(Vec<u8>, bool), String> {
    let req = sdk::request_object(request)?;
    let messages = req.get("messages").and_then(Value::as_array).ok_or("the request has no messages list")?;
    if as_u64(req.get("n")).is_some_and(|n| n > 1) {
        return Err("anthropic answers with one choice: n > 1 is not supported".to_owned());
    }
    let (system, messages) = convert_messages(messages)?;
    let unverifiable_tool_turn = thinking::unverifiable_tool_turn(&messages);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);

    let mut body = Map::new();
    body.insert("model".to_owned(), Value::String(target.model.clone()));
    if let Some(system) = system {
        body.insert("system".to_owned(), Value::String(system));
    }
    body.insert("messages".to_owned(), Value::Array(messages));

    let asked_max = as_u64(req.get("max_completion_tokens")).or_else(|| as_u64(req.get("max_tokens")));
    let default_max = match target.option("default_max_tokens") {
        Some(v) => v.trim().parse::<u64>().map_err(|_| format!("option default_max_tokens is not a number: {v}"))?,
        None => DEFAULT_MAX_TOKENS,
    };
    let max_tokens = asked_max.unwrap_or(default_max);
    body.insert("max_tokens".to_owned(), json!(max_tokens));

    // Extended thinking: the request's own `thinking`, or `reasoning_effort`.
    let mut thinking = match req.get("thinking") {
        Some(t @ Value::Object(_)) => Some(t.clone()),
        _ => {
            let budget = match req.get("reasoning_effort").and_then(Value::as_str) {
                Some("low") => Some(MIN_THINKING_BUDGET),
                Some("medium") => Some(4096),
                Some("high") | Some("xhigh") => Some(16384),
                _ => None,
            };
            // The budget counts in max_tokens and must stay below it.
            budget
                .map(|b| b.min(max_tokens.saturating_sub(1)))
                .filter(|b| *b >= MIN_THINKING_BUDGET)
                .map(|b| json!({"type": "enabled", "budget_tokens": b}))
        }
    };
    let mut thinking_on = thinking.as_ref().is_some_and(|t| t.get("type").and_then(Value::as_str) != Some("disabled"));
    // A forced tool call (`required`, or one function named) and thinking
    // do not go together at Anthropic (thinking takes tool_choice auto or
    // none only): the client's forced call wins.
    let has_tools = req.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let forced_tool = has_tools
        && match req.get("tool_choice") {
            Some(Value::String(mode)) => mode == "required",
            Some(Value::Object(choice)) => choice.get("type").and_then(Value::as_str) == Some("function"),
            _ => false,
        };
    if thinking_on && (unverifiable_tool_turn || forced_tool) {
        // Anthropic refuses thinking in a tool-use loop whose last turn
        // has no thinking of its own ("To avoid this requirement, disable
        // thinking"): this request goes without, the next turns think again.
        thinking = Some(json!({"type": "disabled"}));
        thinking_on = false;
    }
    if let Some(thinking) = thinking {
        body.insert("thinking".to_owned(), thinking);
    }

    // Sampling: Anthropic's temperature is 0..1; thinking allows none of it
    // but a top_p of at least 0.95.
    if !thinking_on {
        if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
            body.insert("temperature".to_owned(), json!(t.clamp(0.0, 1.0)));
        }
        if let Some(k) = as_u64(req.get("top_k")) {
            body.insert("top_k".to_owned(), json!(k));
        }
    }
    if let Some(p) = req.get("top_p").and_then(Value::as_f64)
        && (!thinking_on || p >= 0.95)
    {
        body.insert("top_p".to_owned(), json!(p));
    }
    match req.get("stop") {
        Some(Value::String(s)) if !s.is_empty() => {
            body.insert("stop_sequences".to_owned(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            body.insert("stop_sequences".to_owned(), Value::Array(list.clone()));
        }
        _ => {}
    }

    let tools = match req.get("tools") {
        Some(Value::Array(tools)) if !tools.is_empty() => convert_tools(tools)?,
        _ => Vec::new(),
    };
    if !tools.is_empty() {
        body.insert("tools".to_owned(), Value::Array(tools));
        let mut choice = convert_tool_choice(req.get("tool_choice"))?;
        if req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
            let choice = choice.get_or_insert_with(|| {
                let mut auto = Map::new();
                auto.insert("type".to_owned(), Value::String("auto".to_owned()));
                auto
            });
            if choice.get("type").and_then(Value::as_str) != Some("none") {
                choice.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
            }
        }
        if let Some(choice) = choice {
            body.insert("tool_choice".to_owned(), Value::Object(choice));
        }
    }

    if let Some(user) = req.get("user").and_then(Value::as_str) {
        body.insert("metadata".to_owned(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".to_owned(), Value::Bool(true));
    }
    let bytes = serde_json::to_vec(&Value::Object(body)).map_err(|e| e.to_string())?;
    Ok((bytes, stream))
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and anything newer.
        _ => "stop",
    }
}

/// Anthropic's usage object, as far as it is known.
#[derive(Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// All the prompt tokens: the uncached ones and those written to or read
    /// from the cache.
    fn prompt(&self) -> Option<u64> {
        if self.input_tokens.is_none()
            && self.cache_creation_input_tokens.is_none()
            && self.cache_read_input_tokens.is_none()
        {
            return None;
        }
        // Saturating: the counts come from the upstream.
        Some(
            self.input_tokens
                .unwrap_or(0)
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0)),
        )
    }

    /// Later counts replace earlier ones (the stream's counts are totals).
    fn update(&mut self, later: AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }

    fn known(&self) -> Option<Usage> {
        if self.prompt().is_none() && self.output_tokens.is_none() {
            return None;
        }
        Some(Usage { prompt_tokens: self.prompt().unwrap_or(0), completion_tokens: self.output_tokens.unwrap_or(0) })
    }

    fn json(&self, totals: Usage) -> Value {
        let mut usage = sdk::usage_json(totals);
        if let Some(cached) = self.cache_read_input_tokens {
            usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
        }
        usage
    }
}

#[derive(Deserialize)]
struct Message {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    content: Vec<Value>,
    stop_reason: Option<String>,
    usage: Option<AnthropicUsage>,
    error: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn decode_message(body: &[u8], target: &Target) -> Result<Answer, String> {
    let message: Message =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not an anthropic message: {e}"))?;
    if let Some(error) = message.error.as_ref().filter(|_| message.kind.as_deref() == Some("error")) {
        return Err(format!("the answer is an error: {}", sdk::error_message(error)));
    }
    if message.kind.as_deref().is_some_and(|k| k != "message") {
        return Err(format!("the answer is not a message but a {}", message.kind.unwrap_or_default()));
    }
    let mut text = String::new();
    let mut reasoning = String::new();
    // Every thinking block with its signature, and every redacted one, for
    // the client to send back on the next turn.
    let mut details = Vec::new();
    let mut tool_calls = Vec::new();
    for block in &message.content {
        let index = details.len() as u64;
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => {
                let thought = block.get("thinking").and_then(Value::as_str).unwrap_or_default();
                reasoning.push_str(thought);
                let signature = block.get("signature").and_then(Value::as_str).filter(|s| !s.is_empty());
                details.push(thinking::text_entry(Some(thought), signature, index));
            }
            Some("redacted_thinking") => {
                let data = block.get("data").and_then(Value::as_str).unwrap_or_default();
                details.push(thinking::encrypted_entry(data, index));
            }
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                        "arguments": input.to_string(),
                    },
                }));
            }
            // Server tools and their results: nothing an OpenAI client can use.
            _ => {}
        }
    }
    let mut reply = Map::new();
    reply.insert("role".to_owned(), json!("assistant"));
    let content = if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) };
    reply.insert("content".to_owned(), content);
    if !reasoning.is_empty() {
        reply.insert("reasoning_content".to_owned(), Value::String(reasoning));
    }
    if !details.is_empty() {
        reply.insert("reasoning_details".to_owned(), Value::Array(details));
    }
    if !tool_calls.is_empty() {
        reply.insert("tool_calls".to_owned(), Value::Array(tool_calls));
    }
    let raw_usage = message.usage.unwrap_or_default();
    let totals = raw_usage.known();
    let mut answer = json!({
        "id": message.id.unwrap_or_default(),
        "object": "chat.completion",
        "created": 0,
        "model": message.model.unwrap_or_else(|| target.model.clone()),
        "choices": [{
            "index": 0,
            "message": reply,
            "finish_reason": finish_reason(message.stop_reason.as_deref()),
            "logprobs": null,
        }],
    });
    if let Some(totals) = totals {
        answer["usage"] = raw_usage.json(totals);
    }
    Ok(Answer { body: answer.to_string().into_bytes(), usage: totals })
}

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Listing {
    data: Vec<ListedModel>,
}

#[derive(Deserialize)]
struct ListedModel {
    id: String,
    max_input_tokens: Option<u64>,
    capabilities: Option<Value>,
    lifecycle: Option<String>,
}

fn supported(capabilities: Option<&Value>, name: &str) -> bool {
    capabilities.and_then(|c| c.get(name)).and_then(|c| c.get("supported")).and_then(Value::as_bool).unwrap_or(false)
}

fn decode_models(body: &[u8]) -> Result<Vec<ModelRecord>, String> {
    let listing: Listing = serde_json::from_slice(body).map_err(|e| format!("not a model listing: {e}"))?;
    Ok(listing
        .data
        .into_iter()
        .filter(|m| m.lifecycle.as_deref() != Some("retired"))
        .map(|m| {
            // Every model of the Messages API takes tools.
            let mut capabilities = vec!["tools".to_owned()];
            if supported(m.capabilities.as_ref(), "thinking") {
                capabilities.push("reasoning".to_owned());
            }
            if supported(m.capabilities.as_ref(), "image_input") {
                capabilities.push("vision".to_owned());
            }
            ModelRecord { context_length: m.max_input_tokens, capabilities, ..ModelRecord::new(m.id) }
        })
        .collect())
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// (error type, message) from `{"type": "error", "error": {"type", "message"}}`.
fn error_details(body: &[u8]) -> (String, String) {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = value.get("error").unwrap_or(&Value::Null);
    let kind = error.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    let message = match error {
        Value::Null => String::from_utf8_lossy(body).into_owned(),
        other => sdk::error_message(other),
    };
    (kind, message)
}

fn classify(status: u16, body: &[u8]) -> ErrorKind {
    match status {
        400 | 422 => {
            let (kind, message) = error_details(body);
            let message = message.to_ascii_lowercase();
            let spent = kind == "billing_error"
                || message.contains("credit balance")
                || message.contains("usage limit")
                || message.contains("spend limit");
            if spent { ErrorKind::QuotaExhausted } else { ErrorKind::ClientError }
        }
        // Anthropic's limits are per minute; its message says which.
        429 => ErrorKind::rate_limited(None, sdk::window_in_message(&error_details(body).1)),
        // 404 (a model this key cannot see), 413 (another provider may take
        // a larger request), 529 overloaded, 5xx, and everything else are
        // transient, as the SDK's table says.
        _ => sdk::classify_status(status),
    }
}

// ---------------------------------------------------------------------------
// The plugin
// ---------------------------------------------------------------------------

impl Guest for Plugin {
    type StreamDecoder = Decoder;

    fn describe() -> Descriptor {
        Descriptor {
            name: "anthropic".to_owned(),
            interface_version: INTERFACE_VERSION.to_owned(),
            capabilities: Capabilities::CHAT
                | Capabilities::STREAM
                | Capabilities::TOOLS
                | Capabilities::MODELS
                | Capabilities::LIMITS,
        }
    }

    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        let (body, stream) = build_body(&request, &target)?;
        let url = target.url(target.option("chat_path").unwrap_or("/messages"));
        Ok(with_headers(HttpRequest::post_json(url, body, stream), &target))
    }

    /// Anthropic's wire format is its own: every request is translated here.
    fn plan_chat(_target: Target) -> Option<sdk::ChatPlan> {
        None
    }

    fn decode_chat(body: Vec<u8>, target: Target) -> Result<Answer, String> {
        decode_message(&body, &target)
    }

    fn build_embeddings(_request: Vec<u8>, _target: Target) -> Result<HttpRequest, BuildError> {
        Err(BuildError::Failed(NO_EMBEDDINGS.to_owned()))
    }

    fn decode_embeddings(_request: Vec<u8>, _body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        Err(NO_EMBEDDINGS.to_owned())
    }

    fn build_models(target: Target) -> Result<HttpRequest, String> {
        let path = target.option("models_path").unwrap_or("/models");
        Ok(with_headers(HttpRequest::get_json(target.url(&format!("{path}?limit=1000"))), &target))
    }

    fn decode_models(body: Vec<u8>, _target: Target) -> Result<Vec<ModelRecord>, String> {
        decode_models(&body)
    }

    fn classify_error(status: u16, _headers: Headers, body: Vec<u8>) -> ErrorKind {
        classify(status, &body)
    }

    /// `anthropic-ratelimit-*`: requests and tokens per minute, resets in
    /// RFC 3339.
    fn read_limits(_status: u16, headers: Headers) -> Vec<RateReport> {
        sdk::anthropic_reports(&headers)
    }
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// One SSE event of a Messages stream (only the fields used).
#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<Message>,
    index: Option<u64>,
    content_block: Option<Value>,
    delta: Option<Value>,
    usage: Option<AnthropicUsage>,
    error: Option<Value>,
}

/// Anthropic stream events → OpenAI chunks.
struct Decoder {
    state: RefCell<StreamState>,
}

struct StreamState {
    parser: sdk::SseParser,
    id: String,
    model: String,
    role_sent: bool,
    /// Anthropic content-block index → OpenAI tool-call index.
    tool_blocks: Vec<(u64, u64)>,
    /// Reasoning blocks (thinking or redacted) started so far: the next
    /// one's `index` in `reasoning_details`.
    reasoning_blocks: u64,
    /// Thinking blocks not ended yet: (content-block index, reasoning index,
    /// the signature so far).
    thinking_blocks: Vec<(u64, u64, String)>,
    usage: AnthropicUsage,
    stop_reason: Option<String>,
    /// `message_stop` or an error was seen: nothing more is decoded.
    ended: bool,
}

impl StreamState {
    fn chunk(&mut self, mut delta: Map<String, Value>, finish: Option<&str>) -> StreamEvent {
        if !self.role_sent {
            delta.insert("role".to_owned(), Value::String("assistant".to_owned()));
            self.role_sent = true;
        }
        StreamEvent::chunk(sdk::chunk_json(&self.id, &self.model, 0, Value::Object(delta), finish), None)
    }

    fn delta_chunk(&mut self, key: &str, value: Value) -> StreamEvent {
        let mut delta = Map::new();
        delta.insert(key.to_owned(), value);
        self.chunk(delta, None)
    }

    /// Ends the open thinking block at `position`: its signature, if it
    /// has one, goes out as one `reasoning_details` delta (its text went
    /// out already, as `reasoning_content`).
    fn end_thinking(&mut self, position: usize, out: &mut Vec<StreamEvent>) {
        let (_, index, signature) = self.thinking_blocks.remove(position);
        if !signature.is_empty() {
            let entry = thinking::text_entry(None, Some(&signature), index);
            let event = self.delta_chunk("reasoning_details", json!([entry]));
            out.push(event);
        }
    }

    fn fail(&mut self, message: String, out: &mut Vec<StreamEvent>) {
        self.ended = true;
        out.push(StreamEvent::Error(message));
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        while let Some(event) = self.parser.next_event() {
            if self.ended {
                continue;
            }
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            let wire: WireEvent = match serde_json::from_str(data) {
                Ok(wire) => wire,
                Err(e) => {
                    self.fail(format!("undecodable stream event: {e}"), out);
                    continue;
                }
            };
            let kind = wire.kind.clone().unwrap_or_else(|| event.event.clone());
            self.handle(&kind, wire, out);
        }
    }

    fn handle(&mut self, kind: &str, wire: WireEvent, out: &mut Vec<StreamEvent>) {
        match kind {
            "message_start" => {
                if let Some(message) = wire.message {
                    if let Some(id) = message.id {
                        self.id = id;
                    }
                    if let Some(model) = message.model {
                        self.model = model;
                    }
                    if let Some(usage) = message.usage {
                        self.usage.update(usage);
                    }
                }
                if !self.role_sent {
                    let event = self.delta_chunk("content", Value::String(String::new()));
                    out.push(event);
                }
            }
            "content_block_start" => {
                let block = wire.content_block.unwrap_or(Value::Null);
                let index = wire.index.unwrap_or(0);
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            let event = self.delta_chunk("content", Value::String(text.to_owned()));
                            out.push(event);
                        }
                    }
                    Some("thinking") => {
                        // A whole block (from a proxy that does not stream
                        // it) may carry its signature already.
                        let signature = block.get("signature").and_then(Value::as_str).unwrap_or_default();
                        self.thinking_blocks.push((index, self.reasoning_blocks, signature.to_owned()));
                        self.reasoning_blocks += 1;
                        if let Some(text) = block.get("thinking").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            let event = self.delta_chunk("reasoning_content", Value::String(text.to_owned()));
                            out.push(event);
                        }
                    }
                    Some("redacted_thinking") => {
                        let data = block.get("data").and_then(Value::as_str).unwrap_or_default();
                        let entry = thinking::encrypted_entry(data, self.reasoning_blocks);
                        self.reasoning_blocks += 1;
                        let event = self.delta_chunk("reasoning_details", json!([entry]));
                        out.push(event);
                    }
                    Some("tool_use") => {
                        let tool_index = self.tool_blocks.len() as u64;
                        self.tool_blocks.push((index, tool_index));
                        // Streams start with an empty input; a whole one
                        // (from a proxy that does not stream it) goes at once.
                        let arguments = match block.get("input") {
                            Some(Value::Object(map)) if !map.is_empty() => Value::Object(map.clone()).to_string(),
                            _ => String::new(),
                        };
                        let call = json!([{
                            "index": tool_index,
                            "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                            "type": "function",
                            "function": {
                                "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                                "arguments": arguments,
                            },
                        }]);
                        let event = self.delta_chunk("tool_calls", call);
                        out.push(event);
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = wire.delta.unwrap_or(Value::Null);
                let index = wire.index.unwrap_or(0);
                let text_of = |field: &str| delta.get(field).and_then(Value::as_str).filter(|t| !t.is_empty());
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(text) = text_of("text") {
                            let event = self.delta_chunk("content", Value::String(text.to_owned()));
                            out.push(event);
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(text) = text_of("thinking") {
                            let event = self.delta_chunk("reasoning_content", Value::String(text.to_owned()));
                            out.push(event);
                        }
                    }
                    Some("input_json_delta") => {
                        let Some(partial) = text_of("partial_json") else { return };
                        let Some(&(_, tool_index)) = self.tool_blocks.iter().find(|(block, _)| *block == index) else {
                            return;
                        };
                        let call = json!([{"index": tool_index, "function": {"arguments": partial}}]);
                        let event = self.delta_chunk("tool_calls", call);
                        out.push(event);
                    }
                    Some("signature_delta") => {
                        let Some(signature) = text_of("signature") else { return };
                        if let Some(open) = self.thinking_blocks.iter_mut().find(|(block, _, _)| *block == index) {
                            open.2.push_str(signature);
                        }
                    }
                    // Citation deltas: nothing for OpenAI clients.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = wire.index.unwrap_or(0);
                if let Some(position) = self.thinking_blocks.iter().position(|(block, _, _)| *block == index) {
                    self.end_thinking(position, out);
                }
            }
            "message_delta" => {
                if let Some(reason) = wire.delta.as_ref().and_then(|d| d.get("stop_reason")).and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(usage) = wire.usage {
                    self.usage.update(usage);
                }
            }
            "message_stop" => {
                // A block never ended still hands over its signature.
                while !self.thinking_blocks.is_empty() {
                    self.end_thinking(0, out);
                }
                let finish = finish_reason(self.stop_reason.as_deref());
                let event = self.chunk(Map::new(), Some(finish));
                out.push(event);
                if let Some(totals) = self.usage.known() {
                    let json = sdk::usage_chunk_json(&self.id, &self.model, 0, self.usage.json(totals));
                    out.push(StreamEvent::chunk(json, Some(totals)));
                }
                out.push(StreamEvent::Done);
                self.ended = true;
            }
            "error" => {
                let error = wire.error.unwrap_or(Value::Null);
                let message = sdk::error_message(&error);
                let message = match error.get("type").and_then(Value::as_str) {
                    Some(kind) => format!("{message} ({kind})"),
                    None => message,
                };
                self.fail(message, out);
            }
            // ping, and event types added later.
            _ => {}
        }
    }
}

impl GuestStreamDecoder for Decoder {
    fn new(target: Target) -> Self {
        Self {
            state: RefCell::new(StreamState {
                parser: sdk::sse_parser(),
                id: String::new(),
                model: target.model,
                role_sent: false,
                tool_blocks: Vec::new(),
                reasoning_blocks: 0,
                thinking_blocks: Vec::new(),
                usage: AnthropicUsage::default(),
                stop_reason: None,
                ended: false,
            }),
        }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        let mut state = self.state.borrow_mut();
        let mut out = Vec::new();
        if state.ended {
            return out;
        }
        state.parser.feed(&bytes);
        state.drain(&mut out);
        out
    }

    fn finish(&self) -> Vec<StreamEvent> {
        let mut state = self.state.borrow_mut();
        let mut out = Vec::new();
        if state.ended {
            return out;
        }
        state.parser.finish();
        state.drain(&mut out);
        if !state.ended {
            state.fail("the stream ended before message_stop".to_owned(), &mut out);
        }
        out
    }
}

sdk::export_plugin!(Plugin);
