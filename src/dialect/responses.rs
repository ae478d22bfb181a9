//! The OpenAI Responses API (`POST /v1/responses`, as Codex CLI and the
//! OpenAI SDKs' `responses` send it), translated to and from chat
//! completions.
//!
//! - [`to_chat`]: a Responses request (with the items of earlier turns when
//!   it names a `previous_response_id`) becomes a chat completion request.
//! - [`from_chat`]: a chat completion becomes a `response` object.
//! - [`ResponsesStream`]: a chat completion stream becomes the Responses
//!   event stream (`response.created` … `response.completed`).
//! - [`input_items`], [`output_items`]: what a turn adds to a conversation,
//!   kept by the endpoint for `previous_response_id`.
//!
//! Pure translation, no I/O. Every request error names the field path
//! (`input[3].type`), so the client sees what to fix.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::chunks::{ChatEvent, Chunk, ChunkReader, ChunkUsage};
use super::reasoning::Carried;
use super::{DialectError, StreamTranslator, Translated};
use bytes::Bytes;

/// An error about the field at `path`.
fn field_error(path: &str, message: impl std::fmt::Display) -> DialectError {
    DialectError::new(format!("{path}: {message}"))
}

/// The request body as a JSON object.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, DialectError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DialectError::new("the request body is not a JSON object")),
        Err(e) => Err(DialectError::new(format!("the request body is not JSON: {e}"))),
    }
}

/// A Responses request, parsed once for everything that reads it (the
/// conversation it continues, the chat request, the response objects that
/// echo its settings).
#[derive(Debug, Clone)]
pub struct Request {
    map: Map<String, Value>,
}

impl Request {
    /// Parses a request body (a JSON object).
    pub fn parse(body: &[u8]) -> Result<Self, DialectError> {
        parse_object(body).map(|map| Self { map })
    }

    /// Its `previous_response_id` and `store`.
    pub fn thread(&self) -> Result<Thread, DialectError> {
        let previous_response_id = match self.map.get("previous_response_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(_) => return Err(field_error("previous_response_id", "expected a string")),
        };
        let store = match self.map.get("store") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(store)) => *store,
            Some(_) => return Err(field_error("store", "expected true or false")),
        };
        Ok(Thread { previous_response_id, store })
    }

    /// Only the settings a response object echoes.
    fn echoed(&self) -> Map<String, Value> {
        ECHOED.iter().filter_map(|name| self.map.get(*name).map(|v| ((*name).to_owned(), v.clone()))).collect()
    }
}

/// How a request joins a conversation kept by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// The response it continues (`previous_response_id`).
    pub previous_response_id: Option<String>,
    /// `store` (default true): whether its response may be kept for a next
    /// turn to name.
    pub store: bool,
}

/// A new response id: `resp_` and 32 random alphanumerics (the item ids of
/// the response derive from it, so they are unique too).
pub fn new_response_id() -> String {
    let mut id = String::with_capacity(37);
    id.push_str("resp_");
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(32));
    id
}

/// The id of a response's output item `index` (`msg_…`, `fc_…`, `rs_…`):
/// derived from the response id so a stream and its final object agree.
fn item_id(prefix: &str, response_id: &str, index: usize) -> String {
    let base = response_id.strip_prefix("resp_").unwrap_or(response_id);
    format!("{prefix}_{base}_{index}")
}

/// The input items of a request (a string input as one user message item),
/// kept for a later `previous_response_id`.
pub fn input_items(body: &[u8]) -> Result<Vec<Value>, DialectError> {
    let request = parse_object(body)?;
    match request.get("input") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        })]),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(_) => Err(field_error("input", "expected a string or an array of items")),
    }
}

/// The items a finished response adds to a conversation: its output items.
pub fn output_items(response: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(response) {
        Ok(Value::Object(mut map)) => match map.remove("output") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Responses request JSON → OpenAI chat completion request JSON.
/// `history`: the input and output items of the earlier turns when the
/// request names a `previous_response_id` (empty otherwise), prepended to
/// this request's input.
pub fn to_chat(request: &Request, history: &[Value]) -> Result<Translated, DialectError> {
    let request = &request.map;
    let model = match request.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        None | Some(Value::Null) => return Err(field_error("model", "required")),
        Some(_) => return Err(field_error("model", "expected a model name")),
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(field_error("stream", "expected true or false")),
    };

    let mut messages = Messages::default();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(_) => return Err(field_error("instructions", "expected a string")),
    }
    for (i, item) in history.iter().enumerate() {
        messages.item(item, &format!("previous_response.items[{i}]"))?;
    }
    match request.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                messages.item(item, &format!("input[{i}]"))?;
            }
        }
        Some(_) => return Err(field_error("input", "expected a string or an array of items")),
    }
    if messages.list.iter().all(|m| m.get("role").and_then(Value::as_str) == Some("system")) {
        return Err(field_error("input", "required (no message to answer)"));
    }

    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(model.clone()));
    chat.insert("messages".into(), Value::Array(messages.finish()));
    let mut tools = Vec::new();
    if let Some(listed) = request.get("tools").filter(|t| !t.is_null()) {
        translate_tools(listed, "tools", &mut tools)?;
    }
    // Codex sends the tools of some models as an input item.
    for (i, item) in request.get("input").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if item.get("type").and_then(Value::as_str) == Some("additional_tools") {
            let path = format!("input[{i}].tools");
            translate_tools(item.get("tools").unwrap_or(&Value::Null), &path, &mut tools)?;
        }
    }
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = request.get("tool_choice").filter(|t| !t.is_null()) {
        chat.insert("tool_choice".into(), translate_tool_choice(choice)?);
    }
    if let Some(max) = request.get("max_output_tokens").filter(|t| !t.is_null()) {
        if !max.is_u64() {
            return Err(field_error("max_output_tokens", "expected a positive integer"));
        }
        chat.insert("max_tokens".into(), max.clone());
    }
    for name in ["temperature", "top_p"] {
        if let Some(value) = request.get(name).filter(|t| !t.is_null()) {
            if !value.is_number() {
                return Err(field_error(name, "expected a number"));
            }
            chat.insert(name.into(), value.clone());
        }
    }
    if let Some(parallel) = request.get("parallel_tool_calls").filter(|t| !t.is_null()) {
        if !parallel.is_boolean() {
            return Err(field_error("parallel_tool_calls", "expected true or false"));
        }
        chat.insert("parallel_tool_calls".into(), parallel.clone());
    }
    match request.get("reasoning") {
        None | Some(Value::Null) => {}
        Some(Value::Object(reasoning)) => match reasoning.get("effort") {
            None | Some(Value::Null) => {}
            Some(Value::String(effort)) => {
                chat.insert("reasoning_effort".into(), Value::String(effort.clone()));
            }
            Some(_) => return Err(field_error("reasoning.effort", "expected a string")),
        },
        Some(_) => return Err(field_error("reasoning", "expected an object")),
    }
    if let Some(format) = translate_text_format(request.get("text"))? {
        chat.insert("response_format".into(), format);
    }
    // `safety_identifier` is the newer name of `user`; either reaches the
    // upstream as chat's `user`.
    for name in ["safety_identifier", "user"] {
        match request.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(user)) => {
                chat.insert("user".into(), Value::String(user.clone()));
                break;
            }
            Some(_) => return Err(field_error(name, "expected a string")),
        }
    }
    chat.insert("stream".into(), Value::Bool(stream));
    if stream {
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    // `store`, `metadata`, `truncation`, `include`, `service_tier`,
    // `prompt_cache_key` and the like are accepted and not sent upstream.
    let chat = serde_json::to_vec(&Value::Object(chat)).map_err(|e| DialectError::new(e.to_string()))?;
    Ok(Translated { chat, model, stream })
}

/// The chat messages being built from Responses items.
#[derive(Default)]
struct Messages {
    list: Vec<Value>,
    /// Reasoning text of a `reasoning` item, waiting for the assistant
    /// message (or function call) that follows it.
    reasoning: Option<String>,
    /// What a `reasoning` item's `encrypted_content` carries for the
    /// target (signatures, see `reasoning.rs`), waiting likewise.
    carried: Carried,
}

impl Messages {
    /// Appends a message; an assistant message takes the waiting reasoning.
    /// Reasoning text belongs to the turn it precedes and is dropped before
    /// another message; what it carries for the target, when no assistant
    /// turn follows, belongs to the assistant turn just before (freeway
    /// puts a reasoning item after the answer when a signature came last).
    fn push(&mut self, mut message: Value) {
        let assistant = message.get("role").and_then(Value::as_str) == Some("assistant");
        let reasoning = self.reasoning.take();
        let carried = std::mem::take(&mut self.carried);
        if assistant && let Some(map) = message.as_object_mut() {
            if let Some(reasoning) = reasoning {
                map.insert("reasoning_content".into(), Value::String(reasoning));
            }
            // Its calls come as later items.
            self.carried = carried.apply(map);
        } else if !carried.is_empty() {
            self.carry_back(carried);
        }
        self.list.push(message);
    }

    /// Gives `carried` to the last message when it is the assistant's
    /// (what finds no place there has no turn left to go to).
    fn carry_back(&mut self, carried: Carried) {
        if let Some(last) = self.list.last_mut().and_then(Value::as_object_mut)
            && last.get("role").and_then(Value::as_str) == Some("assistant")
        {
            let _ = carried.apply(last);
        }
    }

    /// The chat messages, with what still waits given to the last turn.
    fn finish(mut self) -> Vec<Value> {
        let carried = std::mem::take(&mut self.carried);
        self.carry_back(carried);
        self.list
    }

    /// Translates one Responses item found at `path`.
    fn item(&mut self, item: &Value, path: &str) -> Result<(), DialectError> {
        let Some(map) = item.as_object() else {
            return Err(field_error(path, "expected an item object"));
        };
        let kind = match map.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            None | Some(Value::Null) if map.contains_key("role") => "message",
            None | Some(Value::Null) => return Err(field_error(&format!("{path}.type"), "required")),
            Some(_) => return Err(field_error(&format!("{path}.type"), "expected a string")),
        };
        match kind {
            "message" => self.message(map, path),
            "function_call" => self.function_call(map, path),
            "custom_tool_call" => self.custom_tool_call(map, path),
            // Tools, read with the request's own (`to_chat`).
            "additional_tools" => Ok(()),
            "function_call_output" | "custom_tool_call_output" => {
                let call_id = required_string(map, "call_id", path)?;
                let output = match map.get("output") {
                    Some(Value::String(output)) => output.clone(),
                    Some(Value::Array(parts)) => joined_text(parts, &format!("{path}.output"))?,
                    None | Some(Value::Null) => return Err(field_error(&format!("{path}.output"), "required")),
                    Some(_) => return Err(field_error(&format!("{path}.output"), "expected a string")),
                };
                self.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
                Ok(())
            }
            "reasoning" => {
                let mut texts = Vec::new();
                // The summary is what the client was shown; without one,
                // the raw reasoning text some providers return.
                for field in ["summary", "content"] {
                    if let Some(Value::Array(parts)) = map.get(field) {
                        texts.extend(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)));
                    }
                    if !texts.is_empty() {
                        break;
                    }
                }
                if !texts.is_empty() {
                    self.reasoning = Some(texts.join("\n\n"));
                }
                // Another gateway's or OpenAI's own encrypted reasoning
                // means nothing to a chat target: only freeway's is opened.
                if let Some(Value::String(token)) = map.get("encrypted_content") {
                    let path = format!("{path}.encrypted_content");
                    if let Some(carried) = Carried::open(token, &path)? {
                        self.carried.merge(carried);
                    }
                }
                Ok(())
            }
            other => Err(field_error(&format!("{path}.type"), format!("unsupported item type '{other}'"))),
        }
    }

    /// A `message` item.
    fn message(&mut self, map: &Map<String, Value>, path: &str) -> Result<(), DialectError> {
        let role = match map.get("role").and_then(Value::as_str) {
            Some("developer" | "system") => "system",
            Some("user") => "user",
            Some("assistant") => "assistant",
            Some(other) => return Err(field_error(&format!("{path}.role"), format!("unknown role '{other}'"))),
            None => return Err(field_error(&format!("{path}.role"), "required")),
        };
        let content_path = format!("{path}.content");
        let content = match map.get("content") {
            Some(Value::String(text)) => Value::String(text.clone()),
            Some(Value::Array(parts)) => parts_to_chat(parts, role, &content_path)?,
            None | Some(Value::Null) => return Err(field_error(&content_path, "required")),
            Some(_) => return Err(field_error(&content_path, "expected a string or an array of parts")),
        };
        self.push(json!({"role": role, "content": content}));
        Ok(())
    }

    /// A `function_call` item: a tool call of the assistant's turn, merged
    /// into the assistant message just before it (its text or earlier
    /// calls of the same turn) so the upstream sees one turn.
    fn function_call(&mut self, map: &Map<String, Value>, path: &str) -> Result<(), DialectError> {
        let arguments = match map.get("arguments") {
            Some(Value::String(arguments)) => arguments.clone(),
            None | Some(Value::Null) => "{}".to_owned(),
            Some(_) => return Err(field_error(&format!("{path}.arguments"), "expected a string")),
        };
        self.tool_call(map, arguments, path)
    }

    /// A `custom_tool_call` item (free-form input, as Codex's `apply_patch`):
    /// a chat tool call whose one argument is the input (see
    /// [`custom_tool`]).
    fn custom_tool_call(&mut self, map: &Map<String, Value>, path: &str) -> Result<(), DialectError> {
        let input = match map.get("input") {
            Some(Value::String(input)) => input.as_str(),
            None | Some(Value::Null) => "",
            Some(_) => return Err(field_error(&format!("{path}.input"), "expected a string")),
        };
        self.tool_call(map, json!({ CUSTOM_INPUT: input }).to_string(), path)
    }

    /// A tool call of the assistant's turn with these arguments.
    fn tool_call(&mut self, map: &Map<String, Value>, arguments: String, path: &str) -> Result<(), DialectError> {
        let call_id = required_string(map, "call_id", path)?;
        let name = required_string(map, "name", path)?;
        let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
        let reasoning = self.reasoning.take();
        if let Some(last) = self.list.last_mut().and_then(Value::as_object_mut)
            && last.get("role").and_then(Value::as_str) == Some("assistant")
        {
            if let Some(reasoning) = reasoning {
                last.entry("reasoning_content").or_insert(Value::String(reasoning));
            }
            match last.get_mut("tool_calls") {
                Some(Value::Array(calls)) => calls.push(call),
                _ => {
                    last.insert("tool_calls".into(), Value::Array(vec![call]));
                }
            }
            self.carried = std::mem::take(&mut self.carried).apply(last);
            return Ok(());
        }
        self.reasoning = reasoning;
        self.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
        Ok(())
    }
}

/// A string field an item requires.
fn required_string(map: &Map<String, Value>, field: &str, path: &str) -> Result<String, DialectError> {
    match map.get(field) {
        Some(Value::String(value)) => Ok(value.clone()),
        None | Some(Value::Null) => Err(field_error(&format!("{path}.{field}"), "required")),
        Some(_) => Err(field_error(&format!("{path}.{field}"), "expected a string")),
    }
}

/// The text of a part (`input_text`, `output_text`, `text`, `refusal`), or
/// `None` for another kind of part.
fn part_text<'a>(part: &'a Map<String, Value>, kind: &str, path: &str) -> Result<Option<&'a str>, DialectError> {
    let field = match kind {
        "input_text" | "output_text" | "text" => "text",
        "refusal" => "refusal",
        _ => return Ok(None),
    };
    match part.get(field) {
        Some(Value::String(text)) => Ok(Some(text)),
        _ => Err(field_error(&format!("{path}.{field}"), "expected a string")),
    }
}

/// The type of a content part at `path`.
fn part_kind<'a>(part: &'a Value, path: &str) -> Result<(&'a Map<String, Value>, &'a str), DialectError> {
    let Some(map) = part.as_object() else {
        return Err(field_error(path, "expected a content part object"));
    };
    match map.get("type") {
        Some(Value::String(kind)) => Ok((map, kind)),
        _ => Err(field_error(&format!("{path}.type"), "required")),
    }
}

/// The text parts of a list, joined (a tool output given as parts).
fn joined_text(parts: &[Value], path: &str) -> Result<String, DialectError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let part_path = format!("{path}[{j}]");
        let (map, kind) = part_kind(part, &part_path)?;
        match part_text(map, kind, &part_path)? {
            Some(piece) => text.push_str(piece),
            None => {
                return Err(field_error(&format!("{part_path}.type"), format!("unsupported part type '{kind}' here")));
            }
        }
    }
    Ok(text)
}

/// A message's content parts as chat content: a string for the assistant
/// (which some upstreams take only as a string) and for one text part,
/// chat parts otherwise.
fn parts_to_chat(parts: &[Value], role: &str, path: &str) -> Result<Value, DialectError> {
    let mut chat_parts = Vec::with_capacity(parts.len());
    let mut only_text = true;
    for (j, part) in parts.iter().enumerate() {
        let part_path = format!("{path}[{j}]");
        let (map, kind) = part_kind(part, &part_path)?;
        if let Some(text) = part_text(map, kind, &part_path)? {
            chat_parts.push(json!({"type": "text", "text": text}));
            continue;
        }
        if kind != "input_image" || role == "assistant" {
            return Err(field_error(&format!("{part_path}.type"), format!("unsupported content part type '{kind}'")));
        }
        let url = match map.get("image_url") {
            Some(Value::String(url)) => url,
            _ if map.get("file_id").is_some_and(|f| !f.is_null()) => {
                return Err(field_error(&format!("{part_path}.file_id"), "file ids are not supported; send image_url"));
            }
            _ => return Err(field_error(&format!("{part_path}.image_url"), "required")),
        };
        let mut image = Map::new();
        image.insert("url".into(), Value::String(url.clone()));
        if let Some(Value::String(detail)) = map.get("detail") {
            image.insert("detail".into(), Value::String(detail.clone()));
        }
        only_text = false;
        chat_parts.push(json!({"type": "image_url", "image_url": image}));
    }
    let texts = || chat_parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str));
    if role == "assistant" {
        return Ok(Value::String(texts().collect()));
    }
    if only_text && chat_parts.len() == 1 {
        return Ok(Value::String(texts().collect()));
    }
    Ok(Value::Array(chat_parts))
}

/// Function and custom tools (those in a `namespace` group too) as chat
/// tools, appended to `out`. Hosted tools (web search, file search…) are
/// left out: no chat upstream can run them, and agents (Codex CLI) offer
/// them beside the function tools they work with, so refusing them would
/// refuse the agent. A tool with no type is an error.
fn translate_tools(tools: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), DialectError> {
    let Value::Array(tools) = tools else {
        return Err(field_error(at, "expected an array"));
    };
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("{at}[{i}]");
        let Some(map) = tool.as_object() else {
            return Err(field_error(&path, "expected a tool object"));
        };
        match map.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some("custom") => {
                out.push(custom_tool(map, &path)?);
                continue;
            }
            Some("namespace") => {
                translate_tools(map.get("tools").unwrap_or(&Value::Null), &format!("{path}.tools"), out)?;
                continue;
            }
            Some(_) => continue,
            None => return Err(field_error(&format!("{path}.type"), "required")),
        }
        let mut function = Map::new();
        function.insert("name".into(), Value::String(required_string(map, "name", &path)?));
        for field in ["description", "parameters", "strict"] {
            if let Some(value) = map.get(field).filter(|v| !v.is_null()) {
                function.insert(field.into(), value.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(())
}

/// The one argument of a custom tool's chat function.
const CUSTOM_INPUT: &str = "input";

/// A custom tool (free-form input, as Codex's `apply_patch`) as a chat
/// function taking its input as one string argument, the input's grammar
/// (Lark or a regex) told to the model in the argument's description.
fn custom_tool(map: &Map<String, Value>, path: &str) -> Result<Value, DialectError> {
    let name = required_string(map, "name", path)?;
    let description = map.get("description").and_then(Value::as_str).unwrap_or_default();
    let mut input = "The tool's whole input, as raw text (not JSON).".to_owned();
    if let Some(Value::Object(format)) = map.get("format")
        && format.get("type").and_then(Value::as_str) == Some("grammar")
    {
        let syntax = format.get("syntax").and_then(Value::as_str).unwrap_or("lark");
        let definition = format.get("definition").and_then(Value::as_str).unwrap_or_default();
        input.push_str(&format!(" It must match this {syntax} grammar:\n{definition}"));
    }
    Ok(json!({"type": "function", "function": {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {CUSTOM_INPUT: {"type": "string", "description": input}},
            "required": [CUSTOM_INPUT],
            "additionalProperties": false,
        },
    }}))
}

/// What a request's tools are, as far as their calls' items need: custom
/// tools answer as `custom_tool_call` items, and a call of a tool in a
/// `namespace` group names its namespace.
#[derive(Debug, Default)]
struct Offered {
    custom: Vec<String>,
    /// (tool name, namespace).
    namespaced: Vec<(String, String)>,
}

impl Offered {
    /// The tools of `request` (`tools` and `additional_tools` input items).
    fn of(request: &Map<String, Value>) -> Self {
        let mut offered = Self::default();
        offered.add(request.get("tools"), None);
        for item in request.get("input").and_then(Value::as_array).into_iter().flatten() {
            if item.get("type").and_then(Value::as_str) == Some("additional_tools") {
                offered.add(item.get("tools"), None);
            }
        }
        offered
    }

    fn add(&mut self, tools: Option<&Value>, namespace: Option<&str>) {
        for tool in tools.and_then(Value::as_array).into_iter().flatten() {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
            match tool.get("type").and_then(Value::as_str) {
                Some("namespace") => self.add(tool.get("tools"), Some(name)),
                Some(kind @ ("custom" | "function")) => {
                    if kind == "custom" {
                        self.custom.push(name.to_owned());
                    }
                    if let Some(namespace) = namespace {
                        self.namespaced.push((name.to_owned(), namespace.to_owned()));
                    }
                }
                _ => {}
            }
        }
    }

    /// Makes `item` (a call whose name is known) what its tool says.
    fn shape(&self, item: &mut Item, response_id: &str, index: usize) {
        if self.custom.contains(&item.name) {
            item.make_custom(response_id, index);
        }
        item.namespace = self.namespaced.iter().find(|(name, _)| *name == item.name).map(|(_, ns)| ns.clone());
    }
}

/// A custom tool's input from its chat call's arguments: the `input`
/// argument, or the arguments themselves when the model wrote the input
/// bare.
fn custom_input(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(mut map)) => match map.remove(CUSTOM_INPUT) {
            Some(Value::String(input)) => input,
            _ => arguments.to_owned(),
        },
        _ => arguments.to_owned(),
    }
}

/// `tool_choice` in chat's form.
fn translate_tool_choice(choice: &Value) -> Result<Value, DialectError> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => Ok(choice.clone()),
        Value::String(other) => Err(field_error("tool_choice", format!("unknown mode '{other}'"))),
        Value::Object(map) => match map.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => {
                let name = required_string(map, "name", "tool_choice")?;
                Ok(json!({"type": "function", "function": {"name": name}}))
            }
            Some(other) => Err(field_error("tool_choice.type", format!("'{other}' is not supported"))),
            None => Err(field_error("tool_choice.type", "required")),
        },
        _ => Err(field_error("tool_choice", "expected a string or an object")),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn translate_text_format(text: Option<&Value>) -> Result<Option<Value>, DialectError> {
    let format = match text {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(text)) => match text.get("format") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(format)) => format,
            Some(_) => return Err(field_error("text.format", "expected an object")),
        },
        Some(_) => return Err(field_error("text", "expected an object")),
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            schema.insert("name".into(), Value::String(required_string(format, "name", "text.format")?));
            match format.get("schema") {
                Some(Value::Object(_)) => {}
                _ => return Err(field_error("text.format.schema", "expected a JSON schema object")),
            }
            for field in ["schema", "strict", "description"] {
                if let Some(value) = format.get(field).filter(|v| !v.is_null()) {
                    schema.insert(field.into(), value.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(other) => Err(field_error("text.format.type", format!("unknown format '{other}'"))),
        None => Err(field_error("text.format.type", "required")),
    }
}

/// What an output item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Message,
    Call,
}

/// An output item of a response, whole or still streaming.
#[derive(Debug, Clone)]
struct Item {
    kind: Kind,
    id: String,
    /// The reasoning summary, the message's text, or the call's arguments.
    text: String,
    /// A call's id (the chat tool call id) and function name.
    call_id: String,
    name: String,
    /// A call's index among the chat message's tool calls.
    chat_index: u32,
    /// A reasoning item's `encrypted_content`: what the target needs back
    /// on the next turn, sealed (see `reasoning.rs`).
    encrypted: Option<String>,
    /// A call of a custom tool: a `custom_tool_call` item, whose input is
    /// the call's `input` argument.
    custom: bool,
    /// A call's tool's namespace, when it was offered in one.
    namespace: Option<String>,
    /// Whether `response.output_item.added` was sent for it.
    announced: bool,
    done: bool,
}

impl Item {
    /// Output item `index` of response `response_id`.
    fn new(kind: Kind, response_id: &str, index: usize) -> Self {
        let prefix = match kind {
            Kind::Reasoning => "rs",
            Kind::Message => "msg",
            Kind::Call => "fc",
        };
        Self {
            kind,
            id: item_id(prefix, response_id, index),
            text: String::new(),
            call_id: String::new(),
            name: String::new(),
            chat_index: 0,
            encrypted: None,
            custom: false,
            namespace: None,
            announced: false,
            done: false,
        }
    }

    /// The item as the Responses API shows it.
    fn to_json(&self) -> Value {
        let status = if self.done { "completed" } else { "in_progress" };
        match self.kind {
            Kind::Reasoning => {
                let summary =
                    if self.text.is_empty() { json!([]) } else { json!([{"type": "summary_text", "text": self.text}]) };
                let mut item = json!({"type": "reasoning", "id": self.id, "summary": summary});
                if let Some(encrypted) = &self.encrypted {
                    item["encrypted_content"] = Value::String(encrypted.clone());
                }
                item
            }
            Kind::Message => {
                let content = if self.text.is_empty() && !self.done { json!([]) } else { json!([self.part()]) };
                json!({"type": "message", "id": self.id, "status": status, "role": "assistant", "content": content})
            }
            Kind::Call => {
                let mut call = if self.custom {
                    json!({
                        "type": "custom_tool_call",
                        "id": self.id,
                        "call_id": self.call_id,
                        "name": self.name,
                        "input": if self.done { custom_input(&self.text) } else { String::new() },
                        "status": status,
                    })
                } else {
                    json!({
                        "type": "function_call",
                        "id": self.id,
                        "call_id": self.call_id,
                        "name": self.name,
                        "arguments": self.text,
                        "status": status,
                    })
                };
                if let Some(namespace) = &self.namespace {
                    call["namespace"] = Value::String(namespace.clone());
                }
                call
            }
        }
    }

    /// Makes the item a custom tool's call (before it is announced).
    fn make_custom(&mut self, response_id: &str, index: usize) {
        self.custom = true;
        self.id = item_id("ctc", response_id, index);
    }

    /// A message's text part.
    fn part(&self) -> Value {
        json!({"type": "output_text", "text": self.text, "annotations": []})
    }
}

/// Token usage in the Responses shape.
fn usage_json(input: u64, output: u64, cached: u64, reasoning: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output,
    })
}

/// A response's status and incomplete reason from the chat finish reason.
fn outcome(finish_reason: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish_reason {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

/// The request settings a response object echoes.
const ECHOED: [&str; 14] = [
    "instructions",
    "max_output_tokens",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "store",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "user",
    "metadata",
];

/// What a response object says besides its output.
struct Envelope<'a> {
    id: &'a str,
    model: &'a str,
    created_at: u64,
    request: &'a Map<String, Value>,
}

impl Envelope<'_> {
    /// The response object, echoing the request's settings (with the API's
    /// defaults where the request left them out) as the real API does.
    fn object(&self, status: &str, output: Vec<Value>, usage: Value, incomplete: Option<&str>, error: Value) -> Value {
        let echo =
            |name: &str, default: Value| self.request.get(name).filter(|v| !v.is_null()).cloned().unwrap_or(default);
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete.map(|reason| json!({"reason": reason})),
            "instructions": echo("instructions", Value::Null),
            "max_output_tokens": echo("max_output_tokens", Value::Null),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
            "previous_response_id": echo("previous_response_id", Value::Null),
            "reasoning": echo("reasoning", json!({"effort": null, "summary": null})),
            "store": echo("store", json!(true)),
            "temperature": echo("temperature", json!(1.0)),
            "text": echo("text", json!({"format": {"type": "text"}})),
            "tool_choice": echo("tool_choice", json!("auto")),
            "tools": echo("tools", json!([])),
            "top_p": echo("top_p", json!(1.0)),
            "truncation": echo("truncation", json!("disabled")),
            "usage": usage,
            "user": echo("user", Value::Null),
            "metadata": echo("metadata", json!({})),
        })
    }
}

/// Chat completion JSON → a Responses `response` object (status
/// `completed`, or `incomplete` when the answer was cut by the token
/// limit), with `id` and `model` given; `request` is the original Responses
/// request, whose settings the object echoes.
pub fn from_chat(chat: &[u8], id: &str, model: &str, request: &Request) -> Result<Vec<u8>, DialectError> {
    let chat: Value = serde_json::from_slice(chat)
        .map_err(|e| DialectError::new(format!("the upstream answer is not a chat completion: {e}")))?;
    let request = &request.map;
    let offered = Offered::of(request);
    let choice = chat.pointer("/choices/0");
    let message = choice.and_then(|c| c.get("message"));
    let text_of = |value: Option<&Value>| match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    };
    let mut items = Vec::new();
    let reasoning = text_of(message.and_then(|m| m.get("reasoning_content").or_else(|| m.get("reasoning"))));
    let carried = message.map(Carried::of_message).unwrap_or_default();
    if !reasoning.is_empty() || !carried.is_empty() {
        let mut item = Item::new(Kind::Reasoning, id, items.len());
        item.text = reasoning;
        item.encrypted = (!carried.is_empty()).then(|| carried.seal());
        item.done = true;
        items.push(item);
    }
    let text = text_of(message.and_then(|m| m.get("content")));
    if !text.is_empty() {
        let mut item = Item::new(Kind::Message, id, items.len());
        item.text = text;
        item.done = true;
        items.push(item);
    }
    if let Some(Value::Array(calls)) = message.and_then(|m| m.get("tool_calls")) {
        for call in calls {
            let mut item = Item::new(Kind::Call, id, items.len());
            item.call_id = call.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            item.name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().to_owned();
            item.text = match call.pointer("/function/arguments") {
                Some(Value::String(arguments)) => arguments.clone(),
                Some(other) if !other.is_null() => other.to_string(),
                _ => "{}".to_owned(),
            };
            offered.shape(&mut item, id, items.len());
            item.done = true;
            items.push(item);
        }
    }
    let (status, incomplete) = outcome(choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str));
    let usage = chat.get("usage").map_or(Value::Null, |usage| {
        let count = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
        usage_json(
            count("/prompt_tokens"),
            count("/completion_tokens"),
            count("/prompt_tokens_details/cached_tokens"),
            count("/completion_tokens_details/reasoning_tokens"),
        )
    });
    let envelope = Envelope { id, model, created_at: unix_now(), request };
    let output = items.iter().map(Item::to_json).collect();
    let object = envelope.object(status, output, usage, incomplete, Value::Null);
    serde_json::to_vec(&object).map_err(|e| DialectError::new(e.to_string()))
}

/// Chat completion SSE stream → the Responses event stream: `event: <type>`
/// and `data: <json>` with a `sequence_number` counting from 0. Output
/// items open as their first delta arrives and close when another kind
/// begins; the texts are kept only for the final `response.completed`
/// object, which carries them whole.
pub struct ResponsesStream {
    reader: ChunkReader,
    id: String,
    model: String,
    request: Map<String, Value>,
    created_at: u64,
    sequence: u64,
    started: bool,
    /// After `response.completed`, `.incomplete` or `.failed`: nothing more.
    ended: bool,
    items: Vec<Item>,
    /// The item receiving deltas.
    open: Option<usize>,
    /// The request's tools, as their calls' items need.
    offered: Offered,
    /// What the target needs back (its `reasoning_details`, a call's
    /// `extra_content`), sealed into the next reasoning item to close, or
    /// into one made for it before a call or at the end.
    pending: Carried,
    usage: Option<ChunkUsage>,
    finish_reason: Option<String>,
    out: Vec<u8>,
    /// Given the final response object when the stream ends well.
    on_done: Option<OnDone>,
}

/// What a stream that ended well hands its final response object to.
type OnDone = Box<dyn FnOnce(&[u8]) + Send>;

impl ResponsesStream {
    /// Calls `done` with the final response object's JSON when the stream
    /// ends with `response.completed` or `.incomplete` (not when it fails).
    pub fn on_done(mut self, done: impl FnOnce(&[u8]) + Send + 'static) -> Self {
        self.on_done = Some(Box::new(done));
        self
    }

    /// A translator for response `id`, answering as `model` the Responses
    /// request `request` (whose settings the response objects echo).
    pub fn new(id: &str, model: &str, request: &Request) -> Self {
        Self {
            reader: ChunkReader::default(),
            id: id.to_owned(),
            model: model.to_owned(),
            offered: Offered::of(&request.map),
            request: request.echoed(),
            created_at: unix_now(),
            sequence: 0,
            started: false,
            ended: false,
            items: Vec::new(),
            open: None,
            pending: Carried::default(),
            usage: None,
            finish_reason: None,
            out: Vec::new(),
            on_done: None,
        }
    }

    /// Writes one event.
    fn emit(&mut self, kind: &str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".into(), Value::String(kind.to_owned()));
        data.insert("sequence_number".into(), Value::from(self.sequence));
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        self.sequence += 1;
        self.out.extend_from_slice(b"event: ");
        self.out.extend_from_slice(kind.as_bytes());
        self.out.extend_from_slice(b"\ndata: ");
        // A map of JSON values always serialises.
        self.out.extend_from_slice(Value::Object(data).to_string().as_bytes());
        self.out.extend_from_slice(b"\n\n");
    }

    /// The response object as it stands.
    fn object(&self, status: &str, incomplete: Option<&str>, error: Value) -> Value {
        let envelope =
            Envelope { id: &self.id, model: &self.model, created_at: self.created_at, request: &self.request };
        let output = if status == "in_progress" { Vec::new() } else { self.items.iter().map(Item::to_json).collect() };
        let usage = match self.usage {
            Some(usage) if status != "in_progress" => usage_json(usage.prompt_tokens, usage.completion_tokens, 0, 0),
            _ => Value::Null,
        };
        envelope.object(status, output, usage, incomplete, error)
    }

    /// `response.created` and `response.in_progress`, once.
    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        // The same object for both events: serialised once.
        let response = self.object("in_progress", None, Value::Null).to_string();
        self.emit_response("response.created", &response);
        self.emit_response("response.in_progress", &response);
    }

    /// Writes an event whose one field is `response`, already serialised
    /// (the response object echoes the request's settings, tools included:
    /// the largest thing a stream writes).
    fn emit_response(&mut self, kind: &str, response: &str) {
        let head = json!({"type": kind, "sequence_number": self.sequence}).to_string();
        self.sequence += 1;
        self.out.extend_from_slice(b"event: ");
        self.out.extend_from_slice(kind.as_bytes());
        self.out.extend_from_slice(b"\ndata: ");
        // `head` is an object: its closing brace gives way to the field.
        self.out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        self.out.extend_from_slice(b",\"response\":");
        self.out.extend_from_slice(response.as_bytes());
        self.out.extend_from_slice(b"}\n\n");
    }

    /// The open item of `kind` (for a call, of chat index `chat_index`),
    /// closing another open item first and opening a new one if needed.
    fn item(&mut self, kind: Kind, chat_index: u32) -> usize {
        if let Some(open) = self.open {
            let item = &self.items[open];
            if item.kind == kind && (kind != Kind::Call || item.chat_index == chat_index) {
                return open;
            }
            self.close();
        }
        let index = self.items.len();
        let mut item = Item::new(kind, &self.id, index);
        item.chat_index = chat_index;
        self.items.push(item);
        self.open = Some(index);
        if kind != Kind::Call {
            // A call is announced once its id and name are known.
            self.announce(index);
        }
        index
    }

    /// `response.output_item.added` (and a first part) for item `index`.
    fn announce(&mut self, index: usize) {
        self.items[index].announced = true;
        let item = self.items[index].to_json();
        let id = self.items[index].id.clone();
        self.emit("response.output_item.added", json!({"output_index": index, "item": item}));
        match self.items[index].kind {
            Kind::Message => self.emit(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
            ),
            Kind::Reasoning => self.emit(
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""}}),
            ),
            Kind::Call => {}
        }
    }

    /// Closes the open item: its `.done` events with the whole text.
    fn close(&mut self) {
        let Some(index) = self.open.take() else { return };
        self.items[index].done = true;
        if self.items[index].kind == Kind::Reasoning && !self.pending.is_empty() {
            self.items[index].encrypted = Some(std::mem::take(&mut self.pending).seal());
        }
        let item = self.items[index].clone();
        match item.kind {
            Kind::Message => {
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": item.id, "output_index": index, "content_index": 0, "text": item.text,
                        "logprobs": []}),
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": item.id, "output_index": index, "content_index": 0, "part": item.part()}),
                );
            }
            Kind::Reasoning if item.text.is_empty() => {}
            Kind::Reasoning => {
                self.emit(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": item.id, "output_index": index, "summary_index": 0, "text": item.text}),
                );
                self.emit(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": item.id, "output_index": index, "summary_index": 0,
                        "part": {"type": "summary_text", "text": item.text}}),
                );
            }
            Kind::Call if item.custom => {
                let input = custom_input(&item.text);
                self.emit(
                    "response.custom_tool_call_input.delta",
                    json!({"item_id": item.id, "output_index": index, "delta": input}),
                );
                self.emit(
                    "response.custom_tool_call_input.done",
                    json!({"item_id": item.id, "output_index": index, "input": input}),
                );
            }
            Kind::Call => self.emit(
                "response.function_call_arguments.done",
                json!({"item_id": item.id, "output_index": index, "name": item.name, "arguments": item.text}),
            ),
        }
        self.emit("response.output_item.done", json!({"output_index": index, "item": item.to_json()}));
    }

    /// Seals what waits into a reasoning item: the open one, or one of its
    /// own.
    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if !self.open.is_some_and(|open| self.items[open].kind == Kind::Reasoning) {
            // An item with no summary: no summary part events.
            self.close();
            let index = self.items.len();
            let mut item = Item::new(Kind::Reasoning, &self.id, index);
            item.announced = true;
            let added = item.to_json();
            self.items.push(item);
            self.open = Some(index);
            self.emit("response.output_item.added", json!({"output_index": index, "item": added}));
        }
        self.close();
    }

    /// Translates one chat event.
    fn event(&mut self, event: ChatEvent) {
        if self.ended {
            return;
        }
        match event {
            ChatEvent::Chunk(chunk) => self.chunk(chunk),
            ChatEvent::Done => {
                self.close();
                self.flush_pending();
                let (status, incomplete) = outcome(self.finish_reason.as_deref());
                // Serialised once, for the event and for whoever keeps it.
                let response = self.object(status, incomplete, Value::Null).to_string();
                if let Some(done) = self.on_done.take() {
                    done(response.as_bytes());
                }
                let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
                self.emit_response(kind, &response);
                self.ended = true;
            }
            ChatEvent::Error { message } => self.fail(&message),
        }
    }

    /// `response.failed`, and nothing after it.
    fn fail(&mut self, message: &str) {
        let response = self.object("failed", None, json!({"code": "server_error", "message": message}));
        self.emit("response.failed", json!({"response": response}));
        self.ended = true;
    }

    /// Translates one chunk's deltas (of its first choice: the Responses API
    /// has one output).
    fn chunk(&mut self, chunk: Chunk) {
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else { return };
        self.pending.details.extend(choice.delta.reasoning_details);
        if let Some(reasoning) = choice.delta.reasoning_content.filter(|r| !r.is_empty()) {
            let index = self.item(Kind::Reasoning, 0);
            self.items[index].text.push_str(&reasoning);
            let id = self.items[index].id.clone();
            self.emit(
                "response.reasoning_summary_text.delta",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": reasoning}),
            );
        }
        if let Some(content) = choice.delta.content.filter(|c| !c.is_empty()) {
            let index = self.item(Kind::Message, 0);
            self.items[index].text.push_str(&content);
            let id = self.items[index].id.clone();
            self.emit(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": content, "logprobs": []}),
            );
        }
        for call in choice.delta.tool_calls {
            if let Some(extra) = call.extra_content.filter(|e| !e.is_null()) {
                let known = self.items.iter().rev().find(|i| i.kind == Kind::Call && i.chat_index == call.index);
                let id = call.id.clone().or_else(|| known.map(|i| i.call_id.clone())).unwrap_or_default();
                self.pending.calls.push((id, extra));
            }
            // What the call needs back rides in a reasoning item before it.
            self.flush_pending();
            let index = self.item(Kind::Call, call.index);
            let item = &mut self.items[index];
            let fresh = !item.announced;
            if let Some(id) = call.id.filter(|id| !id.is_empty()) {
                item.call_id = id;
            }
            let (name, arguments) = call.function.map(|f| (f.name, f.arguments)).unwrap_or_default();
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                item.name = name;
            }
            if fresh {
                self.offered.shape(item, &self.id, index);
                self.announce(index);
            }
            if let Some(arguments) = arguments.filter(|a| !a.is_empty()) {
                self.items[index].text.push_str(&arguments);
                if self.items[index].custom {
                    // The input is inside JSON until the arguments end:
                    // it goes out whole when the call closes.
                    continue;
                }
                let id = self.items[index].id.clone();
                self.emit(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": arguments}),
                );
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
        }
    }
}

impl StreamTranslator for ResponsesStream {
    fn feed(&mut self, chat: &[u8]) -> Bytes {
        self.start();
        for event in self.reader.feed(chat) {
            self.event(event);
        }
        Bytes::from(std::mem::take(&mut self.out))
    }

    fn finish(&mut self) -> Bytes {
        self.start();
        for event in self.reader.finish() {
            self.event(event);
        }
        if !self.ended {
            self.fail("the upstream stream ended before it was complete");
        }
        Bytes::from(std::mem::take(&mut self.out))
    }
}

/// Now, in unix seconds (`created_at`).
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &[u8]) -> Request {
        Request::parse(body).unwrap()
    }

    fn previous_response_id(body: &[u8]) -> Result<Option<String>, DialectError> {
        Request::parse(body)?.thread().map(|t| t.previous_response_id)
    }

    fn thread(body: &[u8]) -> Result<Thread, DialectError> {
        Request::parse(body)?.thread()
    }

    fn chat(body: Value, history: &[Value]) -> Value {
        let translated = to_chat(&req(&serde_json::to_vec(&body).unwrap()), history).unwrap();
        serde_json::from_slice(&translated.chat).unwrap()
    }

    fn chat_error(body: Value) -> String {
        to_chat(&req(&serde_json::to_vec(&body).unwrap()), &[]).unwrap_err().message
    }

    #[test]
    fn a_string_input_is_one_user_message_after_the_instructions() {
        let translated =
            to_chat(&req(br#"{"model":"gpt-5","input":"hi","instructions":"be brief","stream":true}"#), &[]).unwrap();
        assert_eq!(translated.model, "gpt-5");
        assert!(translated.stream);
        let chat: Value = serde_json::from_slice(&translated.chat).unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "gpt-5",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn items_become_messages_with_parts_and_roles() {
        let chat = chat(
            json!({"model": "m", "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
                {"role": "user", "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                ]},
                {"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "a ", "annotations": []},
                    {"type": "output_text", "text": "cat"},
                ]},
                {"role": "user", "content": "thanks"},
            ]}),
            &[],
        );
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "rules"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                ]},
                {"role": "assistant", "content": "a cat"},
                {"role": "user", "content": "thanks"},
            ])
        );
        assert_eq!(chat["stream"], json!(false));
        assert!(chat.get("stream_options").is_none());
    }

    #[test]
    fn function_calls_merge_into_one_assistant_turn_and_outputs_are_tool_messages() {
        let chat = chat(
            json!({"model": "m", "input": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "two cities"}],
                 "encrypted_content": "opaque"},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2",
                 "output": [{"type": "input_text", "text": "rain"}]},
            ]}),
            &[],
        );
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "reasoning_content": "two cities", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": "rain"},
            ])
        );
    }

    #[test]
    fn an_assistant_text_then_a_call_is_one_turn_and_reasoning_without_a_turn_is_dropped() {
        let chat = chat(
            json!({"model": "m", "input": [
                {"role": "user", "content": "go"},
                {"type": "message", "role": "assistant", "content": "looking"},
                {"type": "function_call", "call_id": "c1", "name": "ls", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "lost"}]},
                {"role": "user", "content": "and?"},
            ]}),
            &[],
        );
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "looking", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
                {"role": "user", "content": "and?"},
            ])
        );
    }

    #[test]
    fn history_comes_before_the_input_after_the_instructions() {
        let first = br#"{"model":"m","input":"hi"}"#;
        let mut history = input_items(first).unwrap();
        history.push(json!({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "hello", "annotations": []}]}));
        let chat = chat(
            json!({"model": "m", "instructions": "sys", "input": "again", "previous_response_id": "resp_x"}),
            &history,
        );
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ])
        );
        assert_eq!(previous_response_id(br#"{"previous_response_id":"resp_x"}"#).unwrap().as_deref(), Some("resp_x"));
        assert_eq!(previous_response_id(br#"{"model":"m"}"#).unwrap(), None);
        assert!(thread(br#"{"model":"m"}"#).unwrap().store, "store defaults to true");
        assert!(!thread(br#"{"store":false}"#).unwrap().store);
        assert!(thread(br#"{"store":"no"}"#).unwrap_err().message.starts_with("store"));
        assert!(
            previous_response_id(br#"{"previous_response_id":3}"#)
                .unwrap_err()
                .message
                .contains("previous_response_id")
        );
    }

    #[test]
    fn options_tools_and_text_format_map_to_chat() {
        let chat = chat(
            json!({"model": "m", "input": "x", "max_output_tokens": 100, "temperature": 0.2, "top_p": 0.9,
                "parallel_tool_calls": false, "reasoning": {"effort": "high", "summary": "auto"},
                "safety_identifier": "u1", "store": false, "metadata": {"a": "b"}, "truncation": "auto",
                "include": ["reasoning.encrypted_content"], "service_tier": "auto",
                "tools": [{"type": "function", "name": "f", "description": "d",
                    "parameters": {"type": "object"}, "strict": true},
                    {"type": "web_search", "external_web_access": true},
                    {"type": "namespace", "name": "agents", "tools": []}],
                "tool_choice": {"type": "function", "name": "f"},
                "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
            }),
            &[],
        );
        assert_eq!(chat["max_tokens"], json!(100));
        assert_eq!(chat["temperature"], json!(0.2));
        assert_eq!(chat["top_p"], json!(0.9));
        assert_eq!(chat["parallel_tool_calls"], json!(false));
        assert_eq!(chat["reasoning_effort"], json!("high"));
        assert_eq!(chat["user"], json!("u1"));
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "f", "description": "d",
                "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(chat["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
        assert_eq!(
            chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}})
        );
        for ignored in ["store", "metadata", "truncation", "include", "service_tier"] {
            assert!(chat.get(ignored).is_none(), "{ignored}");
        }
        let object = self::chat(
            json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}},
            "tool_choice": "required"}),
            &[],
        );
        assert_eq!(object["response_format"], json!({"type": "json_object"}));
        assert_eq!(object["tool_choice"], json!("required"));
        let plain = self::chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}), &[]);
        assert!(plain.get("response_format").is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"input": "x"}), "model: required"),
            (json!({"model": "m"}), "input: required"),
            (json!({"model": "m", "input": 3}), "input: expected"),
            (
                json!({"model": "m", "input": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                    {"role": "user", "content": "c"}, {"type": "item_reference", "id": "x"}]}),
                "input[3].type: unsupported item type 'item_reference'",
            ),
            (
                json!({"model": "m", "input": [{"role": "robot", "content": "a"}]}),
                "input[0].role: unknown role 'robot'",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0].type: unsupported content part type 'input_file'",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
                "input[0].call_id: required",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}),
                "input[0].output: required",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}, {"name": "g"}]}),
                "tools[1].type: required",
            ),
            (json!({"model": "m", "input": "x", "tool_choice": {"type": "file_search"}}), "tool_choice.type"),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}),
                "text.format.schema",
            ),
            (json!({"model": "m", "input": "x", "temperature": "hot"}), "temperature: expected a number"),
            (json!({"model": "m", "input": "x", "max_output_tokens": -1}), "max_output_tokens"),
        ];
        for (body, expected) in cases {
            let message = chat_error(body.clone());
            assert!(message.starts_with(expected), "{body}: {message}");
        }
        let history_error = to_chat(&req(br#"{"model":"m","input":"x"}"#), &[json!({"type": "mystery"})]).unwrap_err();
        assert!(history_error.message.starts_with("previous_response.items[0].type"), "{}", history_error.message);
        assert!(Request::parse(b"[1]").is_err());
    }

    #[test]
    fn ids_and_input_items() {
        let id = new_response_id();
        assert!(id.starts_with("resp_") && id.len() >= 29, "{id}");
        assert!(id[5..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(id, new_response_id());
        let items = vec![json!({"role": "user", "content": "a"})];
        assert_eq!(input_items(br#"{"input":[{"role":"user","content":"a"}]}"#).unwrap(), items);
        assert!(input_items(br#"{"input":1}"#).unwrap_err().message.starts_with("input"));
        assert_eq!(output_items(br#"{"output":[{"type":"message"}]}"#), vec![json!({"type": "message"})]);
        assert!(output_items(b"nope").is_empty());
    }

    fn request() -> Request {
        req(&serde_json::to_vec(&json!({"model": "gpt-5", "input": "hi", "instructions": "be brief",
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "tool_choice": "auto", "max_output_tokens": 500, "temperature": 0.5, "store": false,
            "metadata": {"k": "v"}, "previous_response_id": "resp_prev"}))
        .unwrap())
    }

    fn answer(chat: Value) -> Value {
        let body = from_chat(&serde_json::to_vec(&chat).unwrap(), "resp_abc", "gpt-5", &request()).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn a_text_answer_is_a_completed_response_echoing_the_request() {
        let response = answer(json!({"id": "c", "model": "up", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                "completion_tokens_details": {"reasoning_tokens": 1}}}));
        assert_eq!(response["id"], json!("resp_abc"));
        assert_eq!(response["object"], json!("response"));
        assert!(response["created_at"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(response["status"], json!("completed"));
        assert_eq!(response["model"], json!("gpt-5"));
        assert_eq!(
            response["output"],
            json!([{"type": "message", "id": "msg_abc_0", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}])
        );
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 7})
        );
        assert_eq!(response["instructions"], json!("be brief"));
        assert_eq!(response["tools"][0]["name"], json!("weather"));
        assert_eq!(response["tool_choice"], json!("auto"));
        assert_eq!(response["max_output_tokens"], json!(500));
        assert_eq!(response["temperature"], json!(0.5));
        assert_eq!(response["top_p"], json!(1.0));
        assert_eq!(response["store"], json!(false));
        assert_eq!(response["metadata"], json!({"k": "v"}));
        assert_eq!(response["previous_response_id"], json!("resp_prev"));
        assert_eq!(response["error"], Value::Null);
        assert_eq!(response["incomplete_details"], Value::Null);
        assert!(response.get("output_text").is_none());
    }

    #[test]
    fn reasoning_and_tool_calls_become_items_in_order() {
        let response = answer(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "reasoning_content": "think", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"c\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
            ]}, "finish_reason": "tool_calls"}]}));
        assert_eq!(
            response["output"],
            json!([
                {"type": "reasoning", "id": "rs_abc_0", "summary": [{"type": "summary_text", "text": "think"}]},
                {"type": "function_call", "id": "fc_abc_1", "call_id": "call_1", "name": "weather",
                    "arguments": "{\"c\":1}", "status": "completed"},
                {"type": "function_call", "id": "fc_abc_2", "call_id": "call_2", "name": "time",
                    "arguments": "{}", "status": "completed"},
            ])
        );
        assert_eq!(response["status"], json!("completed"));
        let items = output_items(&serde_json::to_vec(&response).unwrap());
        assert_eq!(items.len(), 3);
        // The items feed the next turn: one assistant turn with its reasoning.
        let next = chat(
            json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "call_1",
            "output": "ok"}]}),
            &items,
        );
        assert_eq!(next["messages"][0]["reasoning_content"], json!("think"));
        assert_eq!(next["messages"][0]["tool_calls"][1]["id"], json!("call_2"));
        assert_eq!(next["messages"][1], json!({"role": "tool", "tool_call_id": "call_1", "content": "ok"}));
    }

    #[test]
    fn a_length_cut_is_incomplete_and_junk_is_an_error() {
        let response = answer(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hel",
            "reasoning": "r"}, "finish_reason": "length"}]}));
        assert_eq!(response["status"], json!("incomplete"));
        assert_eq!(response["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!(response["output"][0]["type"], json!("reasoning"));
        assert_eq!(response["output"][1]["content"][0]["text"], json!("Hel"));
        assert!(from_chat(b"not json", "resp_x", "m", &req(b"{}")).is_err());
    }

    /// A realistic chat stream: reasoning, text, two tool calls, usage.
    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"reasoning_content\":\"Let me \"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"check.\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Checking \"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"both é.\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"time\",\"arguments\":\"{}\"}}]}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":30}}\n\n",
        "data: [DONE]\n\n",
    );

    fn stream_split(chat: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut stream = ResponsesStream::new("resp_abc", "gpt-5", &request());
        stream.created_at = 1;
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&chat.len())) {
            out.extend_from_slice(&stream.feed(&chat[from..cut]));
            from = cut;
        }
        out.extend_from_slice(&stream.finish());
        out
    }

    /// The events of a Responses stream, checking their framing and that
    /// the sequence numbers count from 0.
    fn parse_events(bytes: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\n\n"), "{text}");
        let mut events = Vec::new();
        for block in text.split_terminator("\n\n") {
            let (event, data) = block.split_once('\n').unwrap();
            let kind = event.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], json!(kind));
            assert_eq!(data["sequence_number"], json!(events.len()), "{block}");
            events.push(data);
        }
        events
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn a_stream_translates_identically_at_every_split() {
        let chat = STREAM.as_bytes();
        let whole = stream_split(chat, &[]);
        for at in 0..=chat.len() {
            assert_eq!(stream_split(chat, &[at]), whole, "split at {at}");
        }
        for at in (0..chat.len()).step_by(7) {
            assert_eq!(stream_split(chat, &[at / 2, at]), whole, "split at {} and {at}", at / 2);
        }
        let events = parse_events(&whole);
        assert_eq!(
            types(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(events[0]["response"]["status"], json!("in_progress"));
        assert_eq!(events[0]["response"]["output"], json!([]));
        assert_eq!(
            events[9]["item"],
            json!({"type": "message", "id": "msg_abc_1", "status": "in_progress", "role": "assistant", "content": []})
        );
        assert_eq!(events[10]["part"], json!({"type": "output_text", "text": "", "annotations": []}));
        assert_eq!(events[12]["delta"], json!("both é."));
        assert_eq!(events[12]["item_id"], json!("msg_abc_1"));
        assert_eq!(events[13]["text"], json!("Checking both é."));
        assert_eq!(
            events[16]["item"],
            json!({"type": "function_call", "id": "fc_abc_2", "call_id": "call_1", "name": "weather",
                "arguments": "", "status": "in_progress"})
        );
        assert_eq!(events[19]["arguments"], json!("{\"city\":\"Paris\"}"));
        assert_eq!(events[24]["item"]["status"], json!("completed"));
        assert_eq!(events[24]["output_index"], json!(3));

        // The final object is what the same answer gives whole.
        let whole_chat = json!({"choices": [{"index": 0, "message": {"role": "assistant",
            "content": "Checking both é.", "reasoning_content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
            ]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 12, "completion_tokens": 30}});
        let mut expected = answer(whole_chat);
        expected["created_at"] = json!(1);
        assert_eq!(events[25]["response"], expected);
    }

    #[test]
    fn a_length_cut_stream_ends_incomplete() {
        let chat = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let events = parse_events(&stream_split(chat.as_bytes(), &[]));
        let last = events.last().unwrap();
        assert_eq!(last["type"], json!("response.incomplete"));
        assert_eq!(last["response"]["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], json!("Hel"));
    }

    #[test]
    fn an_error_event_or_a_cut_stream_fails_and_nothing_follows() {
        let error = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"upstream died\",\"type\":\"upstream_error\"}}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: [DONE]\n\n",
        );
        let events = parse_events(&stream_split(error.as_bytes(), &[]));
        assert_eq!(
            types(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.failed",
            ]
        );
        let failed = &events[5]["response"];
        assert_eq!(failed["status"], json!("failed"));
        assert_eq!(failed["error"], json!({"code": "server_error", "message": "upstream died"}));

        let cut = &STREAM[..STREAM.find("data: [DONE]").unwrap()];
        let events = parse_events(&stream_split(cut.as_bytes(), &[]));
        let last = events.last().unwrap();
        assert_eq!(last["type"], json!("response.failed"));
        assert!(last["response"]["error"]["message"].as_str().unwrap().contains("ended before"));
        assert_eq!(types(&events).iter().filter(|t| t.starts_with("response.failed")).count(), 1);
        assert!(!types(&events).contains(&"response.completed"));

        // Nothing at all from upstream: still a well-formed failed stream.
        let events = parse_events(&stream_split(b"", &[]));
        assert_eq!(types(&events), ["response.created", "response.in_progress", "response.failed"]);
    }

    /// What a target needs back (a call's thought signature, a signed
    /// entry) rides in the reasoning item's `encrypted_content` and reaches
    /// the chat request again on the next turn, from the items a client
    /// sends back or from the stored conversation.
    #[test]
    fn signatures_ride_in_encrypted_content_and_come_back() {
        let extra = json!({"google": {"thought_signature": "R2Vt"}});
        let entry = json!({"type": "reasoning.encrypted", "data": "dGV4dA", "format": "google-gemini-v1", "index": 0});
        let response = answer(json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": null, "reasoning_content": "plan", "reasoning_details": [entry],
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "extra_content": extra, "function": {"name": "b", "arguments": "{}"}},
        ]}}]}));
        let reasoning = &response["output"][0];
        assert_eq!(reasoning["type"], "reasoning");
        assert!(reasoning["encrypted_content"].as_str().unwrap().starts_with("freeway1."), "{reasoning}");
        let items = output_items(&serde_json::to_vec(&response).unwrap());
        let next = chat(
            json!({"model": "m", "input": [
            {"type": "function_call_output", "call_id": "call_1", "output": "1"},
            {"type": "function_call_output", "call_id": "call_2", "output": "2"}]}),
            &items,
        );
        let assistant = &next["messages"][0];
        assert_eq!(assistant["reasoning_details"], json!([entry]));
        assert!(assistant["tool_calls"][0].get("extra_content").is_none());
        assert_eq!(assistant["tool_calls"][1]["extra_content"], extra, "a call of a later item finds its signature");
        // Without text, the reasoning item still carries them.
        let bare = answer(json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "hi", "reasoning_details": [entry]}}]}));
        assert_eq!(bare["output"][0]["summary"], json!([]));
        assert_eq!(bare["output"][1]["type"], "message");
        let mut damaged = bare["output"][0].clone();
        damaged["encrypted_content"] = json!("freeway1.@@");
        let error = chat_error(json!({"model": "m", "input": [damaged, {"role": "user", "content": "x"}]}));
        assert!(error.starts_with("input[0].encrypted_content: "), "{error}");
    }

    #[test]
    fn a_streamed_signature_closes_into_a_reasoning_item_before_its_call_and_a_late_one_comes_last() {
        let chat_stream = concat!(
            "data: {\"id\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_9\",\"extra_content\":{\"google\":{\"thought_signature\":\"R2Vt\"}},\"function\":{\"name\":\"write\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"id\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"done\"}}]}\n\n",
            "data: {\"id\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_details\":[{\"type\":\"reasoning.encrypted\",\"data\":\"late\",\"format\":\"google-gemini-v1\"}]},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let events = parse_events(&stream_split(chat_stream.as_bytes(), &[]));
        let completed = events.last().unwrap();
        assert_eq!(completed["type"], "response.completed");
        let output = completed["response"]["output"].as_array().unwrap();
        let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["reasoning", "function_call", "message", "reasoning"]);
        assert!(!types(&events).contains(&"response.reasoning_summary_part.added"), "no empty summary parts");
        let first = Carried::open(output[0]["encrypted_content"].as_str().unwrap(), "x").unwrap().unwrap();
        assert_eq!(first.calls, vec![("call_9".to_owned(), json!({"google": {"thought_signature": "R2Vt"}}))]);
        // Sent back, the late entry joins the assistant turn before it.
        let items: Vec<Value> = output.clone();
        let next = chat(json!({"model": "m", "input": "next"}), &items);
        assert_eq!(next["messages"][0]["tool_calls"][0]["extra_content"]["google"]["thought_signature"], "R2Vt");
        assert_eq!(next["messages"][1]["content"], "done");
        assert_eq!(next["messages"][1]["reasoning_details"][0]["data"], "late");
    }

    const PATCH: &str = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch";

    /// Codex's free-form `apply_patch`: a custom tool is a chat function
    /// with one string argument, its call a `custom_tool_call` with the
    /// input, and both items come back as a chat tool call and its result.
    #[test]
    fn custom_tools_are_functions_of_one_input_both_ways() {
        let tool = json!({"type": "custom", "name": "apply_patch", "description": "Edit files.",
            "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch"}});
        let sent = chat(
            json!({"model": "m", "input": "go", "tools": [tool],
            "tool_choice": {"type": "custom", "name": "apply_patch"}}),
            &[],
        );
        let function = &sent["tools"][0]["function"];
        assert_eq!(function["name"], "apply_patch");
        assert_eq!(function["description"], "Edit files.");
        assert_eq!(function["parameters"]["required"], json!(["input"]));
        let hint = function["parameters"]["properties"]["input"]["description"].as_str().unwrap();
        assert!(hint.contains("lark grammar:\nstart: begin_patch"), "{hint}");
        assert_eq!(sent["tool_choice"], json!({"type": "function", "function": {"name": "apply_patch"}}));

        let request = json!({"model": "m", "input": "go", "tools": [tool]}).to_string();
        let arguments = json!({"input": PATCH}).to_string();
        let answered = |arguments: &str| -> Value {
            let chat = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": null, "tool_calls": [{"id": "call_p", "type": "function",
                "function": {"name": "apply_patch", "arguments": arguments}}]}}]});
            let bytes = from_chat(chat.to_string().as_bytes(), "resp_abc", "m", &req(request.as_bytes())).unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let response = answered(&arguments);
        assert_eq!(
            response["output"][0],
            json!({"type": "custom_tool_call", "id": "ctc_abc_0", "call_id": "call_p", "name": "apply_patch",
                "input": PATCH, "status": "completed"})
        );
        assert_eq!(answered(PATCH)["output"][0]["input"], PATCH, "a bare input is the input");

        let items = output_items(&serde_json::to_vec(&response).unwrap());
        let next = chat(
            json!({"model": "m", "input": [{"type": "custom_tool_call_output", "call_id": "call_p",
            "output": "Done!"}]}),
            &items,
        );
        assert_eq!(next["messages"][0]["tool_calls"][0]["function"]["arguments"], arguments);
        assert_eq!(next["messages"][1], json!({"role": "tool", "tool_call_id": "call_p", "content": "Done!"}));
    }

    #[test]
    fn a_streamed_custom_call_gives_its_input_whole_when_it_closes() {
        let arguments = json!({"input": PATCH}).to_string();
        let (a, b) = arguments.split_at(20);
        let piece = |delta: Value| format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": delta}]}));
        let chat_stream = [
            piece(json!({"tool_calls": [{"index": 0, "id": "call_p", "function": {"name": "apply_patch", "arguments": a}}]})),
            piece(json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]})),
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let request = json!({"model": "m", "input": "go", "tools": [{"type": "custom", "name": "apply_patch"}]});
        let mut stream = ResponsesStream::new("resp_abc", "m", &req(request.to_string().as_bytes()));
        let mut out = stream.feed(chat_stream.as_bytes()).to_vec();
        out.extend_from_slice(&stream.finish());
        let events = parse_events(&out);
        let kinds = types(&events);
        assert!(!kinds.contains(&"response.function_call_arguments.delta"), "{kinds:?}");
        let done = events.iter().find(|e| e["type"] == "response.custom_tool_call_input.done").unwrap();
        assert_eq!(done["input"], PATCH);
        assert_eq!(done["item_id"], "ctc_abc_0");
        let added = events.iter().find(|e| e["type"] == "response.output_item.added").unwrap();
        assert_eq!(added["item"]["type"], "custom_tool_call");
        let completed = events.last().unwrap();
        assert_eq!(completed["response"]["output"][0]["input"], PATCH);
    }

    /// Codex's newest models: tools in an `additional_tools` input item,
    /// grouped in namespaces; a call names its tool's namespace.
    #[test]
    fn tools_in_an_input_item_and_in_namespaces_are_offered_and_their_calls_name_the_namespace() {
        let request = json!({"model": "m", "tools": [{"type": "web_search"}], "input": [
            {"type": "additional_tools", "role": "developer", "tools": [
                {"type": "namespace", "name": "functions", "tools": [
                    {"type": "custom", "name": "exec", "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}},
                    {"type": "function", "name": "wait", "parameters": {"type": "object"}}]},
                {"type": "function", "name": "top", "parameters": {"type": "object"}}]},
            {"role": "user", "content": "go"}]});
        let sent = chat(request.clone(), &[]);
        let names: Vec<&str> =
            sent["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["exec", "wait", "top"]);
        assert_eq!(sent["messages"], json!([{"role": "user", "content": "go"}]));
        let chat_answer = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "exec", "arguments": "{\"input\":\"1+1\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "top", "arguments": "{}"}}]}}]});
        let bytes =
            from_chat(chat_answer.to_string().as_bytes(), "resp_abc", "m", &req(request.to_string().as_bytes()))
                .unwrap();
        let response: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(response["output"][0]["type"], "custom_tool_call");
        assert_eq!(response["output"][0]["namespace"], "functions");
        assert_eq!(response["output"][0]["input"], "1+1");
        assert_eq!(response["output"][1]["type"], "function_call");
        assert!(response["output"][1].get("namespace").is_none());
        let error = chat_error(json!({"model": "m", "input": [{"type": "additional_tools", "tools": [{"name": "x"}]},
            {"role": "user", "content": "go"}]}));
        assert_eq!(error, "input[0].tools[0].type: required");
    }
}
