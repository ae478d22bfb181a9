//! Cohere v2 chat streams → OpenAI `chat.completion.chunk`s.
//!
//! Cohere sends SSE events whose JSON `type` repeats the event name:
//! `message-start`, `content-start`/`-delta`/`-end`, `tool-plan-delta`,
//! `tool-call-start`/`-delta`/`-end`, `citation-start`/`-end` and
//! `message-end` (finish reason, usage, maybe an error). The state here
//! sees whole events, so its output is the same however the bytes were cut.

use freeway_plugin_sdk::{self as sdk, SseParser, StreamEvent};
use serde_json::{Map, Value, json};

use crate::chat;

pub struct Stream {
    parser: SseParser,
    model: String,
    id: String,
    /// The role went out (in the first chunk).
    started: bool,
    /// Done or an error went out: the rest is ignored.
    ended: bool,
    /// Cohere's event index of each tool call → its OpenAI index.
    tools: Vec<(Option<u64>, usize)>,
    current_tool: Option<usize>,
}

impl Stream {
    pub fn new(model: &str) -> Self {
        Self {
            parser: sdk::sse_parser(),
            model: model.to_owned(),
            id: "cohere".to_owned(),
            started: false,
            ended: false,
            tools: Vec::new(),
            current_tool: None,
        }
    }

    /// The next bytes of the body.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<StreamEvent> {
        self.parser.feed(bytes);
        let mut out = Vec::new();
        self.drain(&mut out);
        out
    }

    /// The body ended.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        self.parser.finish();
        let mut out = Vec::new();
        self.drain(&mut out);
        if !self.ended {
            self.fail("the cohere stream ended before message-end".to_owned(), &mut out);
        }
        out
    }

    /// Every whole event the parser has; events it had to drop (too large)
    /// break the answer.
    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        while let Some(event) = self.parser.next_event() {
            self.event(&event.event, &event.data, out);
        }
        if self.parser.overflows() > 0 && !self.ended {
            self.fail("a cohere stream event exceeded the size limit".to_owned(), out);
        }
    }

    /// One SSE event: its name and data.
    fn event(&mut self, name: &str, data: &str, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        let data = data.trim();
        if data.is_empty() {
            return;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return self.fail(format!("undecodable cohere stream event: {e}"), out),
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(name);
        let message = v.get("delta").and_then(|d| d.get("message"));
        match kind {
            "message-start" => {
                if let Some(id) = v.get("id").and_then(Value::as_str) {
                    id.clone_into(&mut self.id);
                }
                if !self.started {
                    self.chunk(json!({"content": ""}), None, out);
                }
            }
            "content-start" | "content-delta" => {
                let content = message.and_then(|m| m.get("content"));
                if let Some(text) = str_field(content, "text") {
                    self.chunk(json!({"content": text}), None, out);
                }
                if let Some(thinking) = str_field(content, "thinking") {
                    self.chunk(json!({"reasoning_content": thinking}), None, out);
                }
            }
            "tool-plan-delta" => {
                if let Some(plan) = str_field(message, "tool_plan") {
                    self.chunk(json!({"reasoning_content": plan}), None, out);
                }
            }
            "tool-call-start" => self.tool_call_start(&v, message, out),
            "tool-call-delta" => self.tool_call_delta(&v, message, out),
            "message-end" => self.message_end(v.get("delta"), out),
            "error" => {
                let text = chat::error_text(&v)
                    .or_else(|| v.get("delta").and_then(chat::error_text))
                    .unwrap_or_else(|| v.to_string());
                self.fail(text, out);
            }
            // An error body where an event was expected.
            "message" if v.get("type").is_none() => {
                if let Some(text) = chat::error_text(&v) {
                    self.fail(text, out);
                }
            }
            // content-end, tool-call-end, citation-start/end, debug...
            _ => {}
        }
    }

    fn tool_call_start(&mut self, v: &Value, message: Option<&Value>, out: &mut Vec<StreamEvent>) {
        let event_index = v.get("index").and_then(Value::as_u64);
        for call in tool_calls(message) {
            let index = self.tools.len();
            self.tools.push((event_index, index));
            self.current_tool = Some(index);
            let function = call.get("function");
            let arguments = match function.and_then(|f| f.get("arguments")) {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                Some(other) => other.to_string(),
            };
            let id =
                call.get("id").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| format!("call_{index}"));
            let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or("");
            let delta = json!({"tool_calls": [{
                "index": index,
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }]});
            self.chunk(delta, None, out);
        }
    }

    fn tool_call_delta(&mut self, v: &Value, message: Option<&Value>, out: &mut Vec<StreamEvent>) {
        let by_event = v
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| self.tools.iter().rev().find(|(e, _)| *e == Some(i)).map(|(_, o)| *o));
        let Some(index) = by_event.or(self.current_tool) else {
            return self.fail("cohere sent a tool-call-delta before any tool-call-start".to_owned(), out);
        };
        for call in tool_calls(message) {
            if let Some(arguments) = str_field(call.get("function"), "arguments") {
                let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]});
                self.chunk(delta, None, out);
            }
        }
    }

    fn message_end(&mut self, delta: Option<&Value>, out: &mut Vec<StreamEvent>) {
        let error = delta.and_then(|d| d.get("error")).and_then(Value::as_str).filter(|e| !e.is_empty());
        let raw = delta.and_then(|d| d.get("finish_reason")).and_then(Value::as_str);
        let finish = chat::finish_reason(raw, !self.tools.is_empty());
        let (Some(finish), None) = (finish, error) else {
            let text = error.unwrap_or("cohere's generation failed (finish_reason ERROR)");
            return self.fail(text.to_owned(), out);
        };
        self.chunk(json!({}), Some(finish), out);
        if let Some(usage) = chat::usage(delta.and_then(|d| d.get("usage"))) {
            let json = sdk::usage_chunk_json(&self.id, &self.model, 0, sdk::usage_json(usage));
            out.push(StreamEvent::chunk(json, Some(usage)));
        }
        out.push(StreamEvent::Done);
        self.ended = true;
    }

    fn chunk(&mut self, delta: Value, finish: Option<&str>, out: &mut Vec<StreamEvent>) {
        let mut delta = match delta {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        if !self.started {
            delta.insert("role".to_owned(), Value::String("assistant".to_owned()));
            self.started = true;
        }
        let json = sdk::chunk_json(&self.id, &self.model, 0, Value::Object(delta), finish);
        out.push(StreamEvent::chunk(json, None));
    }

    fn fail(&mut self, message: String, out: &mut Vec<StreamEvent>) {
        out.push(StreamEvent::Error(message));
        self.ended = true;
    }
}

/// A non-empty string field of an optional object.
fn str_field<'a>(v: Option<&'a Value>, name: &str) -> Option<&'a str> {
    v?.get(name)?.as_str().filter(|s| !s.is_empty())
}

/// `delta.message.tool_calls`: one object in Cohere's stream, tolerated as a list.
fn tool_calls(message: Option<&Value>) -> Vec<&Value> {
    match message.and_then(|m| m.get("tool_calls")) {
        Some(Value::Array(calls)) => calls.iter().collect(),
        Some(call @ Value::Object(_)) => vec![call],
        _ => Vec::new(),
    }
}
