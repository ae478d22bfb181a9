//! Gemini answers (whole and streamed) → OpenAI chat completions and chunks.
//!
//! Thought parts (`"thought": true`, the summaries Gemini sends when asked
//! for `includeThoughts`) become `reasoning_content`. Thought signatures
//! stay with what they sign: on a function call, the tool call's
//! `extra_content.google.thought_signature` (Google's own OpenAI-compatible
//! convention); on any other part (the last part of a text answer, in a
//! stream perhaps a chunk with empty text), a `reasoning_details` entry
//! `{"type": "reasoning.encrypted", "data": SIG, "format":
//! "google-gemini-v1", "index": N}`, N counting the message's entries.

use std::collections::BTreeMap;

use freeway_plugin_sdk::{self as sdk, SseParser, StreamEvent, Usage};
use serde_json::{Map, Value, json};

use crate::request::SIGNATURE_FORMAT;

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
    /// Thought signatures of parts other than function calls, in order.
    signatures: Vec<String>,
}

/// The `reasoning_details` entry of the `index`th signature of a message.
fn signature_entry(signature: String, index: usize) -> Value {
    json!({"type": "reasoning.encrypted", "data": signature, "format": SIGNATURE_FORMAT, "index": index})
}

/// `reasoning_details` for `signatures`, numbered from `first`.
fn signature_entries(signatures: Vec<String>, first: usize) -> Value {
    Value::Array(signatures.into_iter().enumerate().map(|(n, s)| signature_entry(s, first + n)).collect())
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
        } else {
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                if part.get("thought").and_then(Value::as_bool).unwrap_or(false) {
                    out.reasoning.push_str(text);
                } else {
                    out.text.push_str(text);
                }
            }
            if let Some(signature) = part.get("thoughtSignature").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                out.signatures.push(signature.to_owned());
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
        if !parts.signatures.is_empty() {
            message.insert("reasoning_details".to_owned(), signature_entries(parts.signatures, 0));
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
    /// Signature entries sent so far (the next one's index).
    signatures: usize,
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
            if !parts.signatures.is_empty() {
                let count = parts.signatures.len();
                delta.insert("reasoning_details".to_owned(), signature_entries(parts.signatures, progress.signatures));
                progress.signatures += count;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each event as text, to compare runs.
    fn render(events: Vec<StreamEvent>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e {
                StreamEvent::Chunk(chunk) => String::from_utf8(chunk.json).unwrap(),
                StreamEvent::Error(message) => format!("error: {message}"),
                StreamEvent::Done => "done".to_owned(),
            })
            .collect()
    }

    fn stream(pieces: &[&[u8]]) -> Vec<String> {
        let mut stream = Stream::new("gemini-3-flash-preview");
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(stream.push(piece));
        }
        events.extend(stream.finish());
        render(events)
    }

    fn entry(data: &str, index: usize) -> Value {
        json!({"type": "reasoning.encrypted", "data": data, "format": "google-gemini-v1", "index": index})
    }

    #[test]
    fn text_signatures_become_reasoning_details() {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think", "thought": true},
            {"text": "The answer "},
            {"text": "is 4.", "thoughtSignature": "c2lnLTE="}
        ]}, "finishReason": "STOP", "index": 0}], "responseId": "r"});
        let (body, _) = decode(answer.to_string().as_bytes(), "gemini-3-flash-preview").unwrap();
        let message = serde_json::from_slice::<Value>(&body).unwrap()["choices"][0]["message"].clone();
        assert_eq!(
            message,
            json!({"role": "assistant", "content": "The answer is 4.", "reasoning_content": "Let me think",
                "reasoning_details": [entry("c2lnLTE=", 0)]})
        );
    }

    #[test]
    fn call_signatures_stay_on_the_calls_and_unsigned_answers_have_no_details() {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "call"}
        ]}, "finishReason": "STOP"}]});
        let (body, _) = decode(answer.to_string().as_bytes(), "gemini-3-flash-preview").unwrap();
        let message = serde_json::from_slice::<Value>(&body).unwrap()["choices"][0]["message"].clone();
        assert!(message.get("reasoning_details").is_none(), "{message}");
        assert_eq!(message["tool_calls"][0]["extra_content"]["google"]["thought_signature"], "call");
    }

    fn signed_stream() -> String {
        [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hmm, ", "thought": true}]}}],
                "responseId": "s"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Zürich is ☀"}]}}]}),
            // Gemini's last text chunk: empty text, the signature alone.
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "", "thoughtSignature": "QQ=="}]},
                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "thoughtsTokenCount": 2}}),
        ]
        .iter()
        .map(|e| format!("data: {e}\r\n\r\n"))
        .collect()
    }

    #[test]
    fn a_signature_in_a_stream_becomes_a_delta_of_its_own() {
        let events = stream(&[signed_stream().as_bytes()]);
        let deltas: Vec<Value> = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .map(|c| c["choices"][0]["delta"].clone())
            .collect();
        assert_eq!(deltas[0], json!({"role": "assistant", "reasoning_content": "Hmm, "}));
        assert_eq!(deltas[1], json!({"content": "Zürich is ☀"}));
        assert_eq!(deltas[2], json!({"reasoning_details": [entry("QQ==", 0)]}));
        assert_eq!(deltas[3], json!({}), "the finish chunk");
        assert_eq!(events.last().map(String::as_str), Some("done"));
    }

    #[test]
    fn signature_entries_count_across_the_stream() {
        let event = |sig: &str| {
            format!(
                "data: {}\r\n\r\n",
                json!({"candidates": [{"content": {"parts": [{"text": "a", "thoughtSignature": sig}]}}]})
            )
        };
        let events = stream(&[event("one").as_bytes(), event("two").as_bytes()]);
        let details: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["reasoning_details"].clone())
            .take(2)
            .collect();
        assert_eq!(details, vec![json!([entry("one", 0)]), json!([entry("two", 1)])]);
    }

    #[test]
    fn a_signed_stream_decodes_the_same_at_every_split_point() {
        let sample = signed_stream();
        let bytes = sample.as_bytes();
        let whole = stream(&[bytes]);
        assert!(whole.iter().any(|e| e.contains("\"reasoning_details\"")), "{whole:?}");
        for split in 1..bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(stream(&[a, b]), whole, "split at byte {split}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(stream(&singles), whole, "one byte at a time");
    }
}
