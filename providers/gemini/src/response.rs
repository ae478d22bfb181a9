//! Gemini answers (whole and streamed) → OpenAI chat completions and chunks.

use std::collections::BTreeMap;

use freeway_plugin_sdk::{self as sdk, SseParser, StreamEvent, Usage};
use serde_json::{Map, Value, json};

/// Token counts from `usageMetadata`.
#[derive(Clone, Copy, Default)]
pub struct Tokens {
    prompt: u64,
    completion: u64,
    reasoning: u64,
    cached: u64,
}

impl Tokens {
    fn of(answer: &Value) -> Option<Self> {
        let meta = answer.get("usageMetadata")?;
        let n = |key: &str| meta.get(key).and_then(Value::as_u64).unwrap_or(0);
        let reasoning = n("thoughtsTokenCount");
        // Saturating: the counts come from the upstream.
        Some(Self {
            prompt: n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
            completion: n("candidatesTokenCount").saturating_add(reasoning),
            reasoning,
            cached: n("cachedContentTokenCount"),
        })
    }

    pub fn usage(self) -> Usage {
        Usage { prompt_tokens: self.prompt, completion_tokens: self.completion }
    }

    fn json(self) -> Value {
        let mut usage = sdk::usage_json(self.usage());
        if self.reasoning > 0 {
            usage["completion_tokens_details"] = json!({ "reasoning_tokens": self.reasoning });
        }
        if self.cached > 0 {
            usage["prompt_tokens_details"] = json!({ "cached_tokens": self.cached });
        }
        usage
    }
}

/// OpenAI's finish reason for Gemini's.
pub fn finish_reason(reason: &str, tool_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "LANGUAGE" => "content_filter",
        _ if tool_calls => "tool_calls",
        _ => "stop",
    }
}

fn completion_id(response_id: Option<&str>) -> String {
    format!("chatcmpl-{}", response_id.unwrap_or("gemini"))
}

/// A tool call id: Gemini's own when it gave one, else derived from the
/// response id and the call's position in the answer (unique across turns).
fn call_id(given: Option<&str>, response_id: Option<&str>, n: usize) -> String {
    match (given, response_id) {
        (Some(id), _) if !id.is_empty() => id.to_owned(),
        (_, Some(response)) => format!("call_{response}_{n}"),
        _ => format!("call_{n}"),
    }
}

/// One candidate's parts, sorted out.
#[derive(Default)]
struct Parts {
    text: String,
    reasoning: String,
    calls: Vec<Value>,
}

/// Reads a candidate's parts; `counter` numbers the calls across the answer.
fn read_parts(candidate: &Value, response_id: Option<&str>, counter: &mut usize) -> Parts {
    let mut out = Parts::default();
    let parts = candidate.pointer("/content/parts").and_then(Value::as_array);
    for part in parts.into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
            let arguments = match call.get("args") {
                None | Some(Value::Null) => "{}".to_owned(),
                Some(args) => args.to_string(),
            };
            let id = call_id(call.get("id").and_then(Value::as_str), response_id, *counter);
            *counter += 1;
            let mut tool_call = json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            });
            // Google's own OpenAI-compatible API carries the signature here;
            // clients that send the assistant message back return it.
            if let Some(signature) = part.get("thoughtSignature").and_then(Value::as_str) {
                tool_call["extra_content"] = json!({"google": {"thought_signature": signature}});
            }
            out.calls.push(tool_call);
        } else if let Some(text) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool).unwrap_or(false) {
                out.reasoning.push_str(text);
            } else {
                out.text.push_str(text);
            }
        }
    }
    out
}

fn candidate_index(candidate: &Value, position: usize) -> u64 {
    candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64)
}

fn block_reason(answer: &Value) -> Option<&str> {
    answer.pointer("/promptFeedback/blockReason").and_then(Value::as_str)
}

/// A whole `generateContent` answer → an OpenAI chat completion.
pub fn decode(body: &[u8], model: &str) -> Result<(Vec<u8>, Option<Usage>), String> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if let Some(error) = answer.get("error") {
        return Err(format!("the answer is an error: {}", sdk::error_message(error)));
    }
    let response_id = answer.get("responseId").and_then(Value::as_str);
    let tokens = Tokens::of(&answer);
    let candidates = answer.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut choices = Vec::new();
    let mut counter = 0;
    for (position, candidate) in candidates.iter().enumerate() {
        let parts = read_parts(candidate, response_id, &mut counter);
        let has_calls = !parts.calls.is_empty();
        let reason = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
        let mut message = Map::new();
        message.insert("role".to_owned(), json!("assistant"));
        let content = if parts.text.is_empty() && has_calls { Value::Null } else { Value::String(parts.text) };
        message.insert("content".to_owned(), content);
        if !parts.reasoning.is_empty() {
            message.insert("reasoning_content".to_owned(), Value::String(parts.reasoning));
        }
        if has_calls {
            message.insert("tool_calls".to_owned(), Value::Array(parts.calls));
        }
        choices.push(json!({
            "index": candidate_index(candidate, position),
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reason, has_calls),
        }));
    }
    if choices.is_empty() {
        let Some(reason) = block_reason(&answer) else {
            return Err("the answer has no candidates".to_owned());
        };
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": "", "refusal": format!("the prompt was blocked ({reason})")},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let mut out = json!({
        "id": completion_id(response_id),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": choices,
    });
    if let Some(tokens) = tokens {
        out["usage"] = tokens.json();
    }
    Ok((out.to_string().into_bytes(), tokens.map(Tokens::usage)))
}

/// Per-candidate progress in a stream.
#[derive(Default)]
struct Progress {
    started: bool,
    calls: usize,
    finished: bool,
}

/// The state of one streamed answer (`streamGenerateContent?alt=sse`).
pub struct Stream {
    parser: SseParser,
    model: String,
    response_id: Option<String>,
    id: Option<String>,
    candidates: BTreeMap<u64, Progress>,
    counter: usize,
    tokens: Option<Tokens>,
    failed: bool,
}

impl Stream {
    pub fn new(model: &str) -> Self {
        Self {
            parser: sdk::sse_parser(),
            model: model.to_owned(),
            response_id: None,
            id: None,
            candidates: BTreeMap::new(),
            counter: 0,
            tokens: None,
            failed: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Vec<StreamEvent> {
        self.parser.feed(bytes);
        let mut out = Vec::new();
        self.drain(&mut out);
        out
    }

    pub fn finish(&mut self) -> Vec<StreamEvent> {
        self.parser.finish();
        let mut out = Vec::new();
        self.drain(&mut out);
        if self.failed {
            return out;
        }
        let finished = !self.candidates.is_empty() && self.candidates.values().all(|c| c.finished);
        if !finished {
            out.push(StreamEvent::Error("the stream ended before the answer had a finish reason".to_owned()));
            return out;
        }
        if let Some(tokens) = self.tokens {
            let id = self.id();
            let chunk = sdk::usage_chunk_json(&id, &self.model, 0, tokens.json());
            out.push(StreamEvent::chunk(chunk, Some(tokens.usage())));
        }
        out.push(StreamEvent::Done);
        out
    }

    fn id(&mut self) -> String {
        let response_id = self.response_id.as_deref();
        self.id.get_or_insert_with(|| completion_id(response_id)).clone()
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        while let Some(event) = self.parser.next_event() {
            if self.failed {
                continue;
            }
            let data = event.data.trim();
            if data.is_empty() || data == "[DONE]" {
                continue;
            }
            match serde_json::from_str::<Value>(data) {
                Ok(value) => self.event(&value, out),
                Err(e) => self.fail(format!("undecodable event: {e}"), out),
            }
        }
    }

    fn fail(&mut self, message: String, out: &mut Vec<StreamEvent>) {
        self.failed = true;
        out.push(StreamEvent::Error(message));
    }

    fn chunk(&mut self, index: u64, delta: Value, finish: Option<&str>) -> StreamEvent {
        let chunk = json!({
            "id": self.id(),
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        StreamEvent::chunk(chunk.to_string().into_bytes(), None)
    }

    fn event(&mut self, answer: &Value, out: &mut Vec<StreamEvent>) {
        // Gemini's stream errors come as `{"error": {...}}`, alone or in a list.
        let error = answer.get("error").or_else(|| answer.pointer("/0/error"));
        if let Some(error) = error {
            self.fail(sdk::error_message(error), out);
            return;
        }
        if self.response_id.is_none() {
            self.response_id = answer.get("responseId").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some(tokens) = Tokens::of(answer) {
            self.tokens = Some(tokens);
        }
        let candidates = answer.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if candidates.is_empty() {
            if let Some(reason) = block_reason(answer) {
                self.fail(format!("the prompt was blocked ({reason})"), out);
            }
            return;
        }
        for (position, candidate) in candidates.iter().enumerate() {
            let index = candidate_index(candidate, position);
            let mut counter = self.counter;
            let parts = read_parts(candidate, self.response_id.as_deref(), &mut counter);
            self.counter = counter;
            let progress = self.candidates.entry(index).or_default();
            let mut delta = Map::new();
            if !progress.started {
                progress.started = true;
                delta.insert("role".to_owned(), json!("assistant"));
            }
            if !parts.reasoning.is_empty() {
                delta.insert("reasoning_content".to_owned(), Value::String(parts.reasoning));
            }
            if !parts.text.is_empty() {
                delta.insert("content".to_owned(), Value::String(parts.text));
            }
            if !parts.calls.is_empty() {
                let calls: Vec<Value> = parts
                    .calls
                    .into_iter()
                    .map(|mut call| {
                        call["index"] = json!(progress.calls);
                        progress.calls += 1;
                        call
                    })
                    .collect();
                delta.insert("tool_calls".to_owned(), Value::Array(calls));
            }
            let reason = candidate.get("finishReason").and_then(Value::as_str);
            if reason.is_some() {
                progress.finished = true;
            }
            let has_calls = progress.calls > 0;
            if !delta.is_empty() {
                let chunk = self.chunk(index, Value::Object(delta), None);
                out.push(chunk);
            }
            if let Some(reason) = reason {
                let chunk = self.chunk(index, json!({}), Some(finish_reason(reason, has_calls)));
                out.push(chunk);
            }
        }
    }
}
