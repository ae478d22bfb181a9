//! A plugin built against interface 0.2.0, as plugins were before 0.3
//! (no `plan-chat`): the tests check that freeway still loads it and runs
//! every call through it (its 429's window, its client errors, the limits
//! it reads). It speaks OpenAI's API: requests pass through with `model`
//! replaced.

// The released interface, kept beside the current one in providers/wit/.
wit_bindgen::generate!({ path: "../../wit/0.2.0", world: "provider" });

use exports::freeway::provider::translator::{
    Answer, BuildError, Capabilities, Chunk, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers, HttpRequest,
    ModelRecord, QuotaWindow, RateLimit, RateReport, RateUnit, StreamEvent, Target,
};
use serde_json::Value;

struct V02;

/// The request with the target's model, posted to `path` under the base URL.
fn post(request: &[u8], target: &Target, path: &str) -> Result<HttpRequest, String> {
    let mut body: Value = serde_json::from_slice(request).map_err(|e| e.to_string())?;
    let object = body.as_object_mut().ok_or("the request is not a JSON object")?;
    object.insert("model".to_owned(), Value::String(target.model.clone()));
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(key) = &target.key {
        headers.push(("authorization".to_owned(), format!("Bearer {key}")));
    }
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    Ok(HttpRequest { method: "POST".to_owned(), url: format!("{}{path}", target.base_url), headers, body })
}

impl Guest for V02 {
    type StreamDecoder = Decoder;

    fn describe() -> Descriptor {
        Descriptor {
            name: "interface-0-2".to_owned(),
            interface_version: "0.2.0".to_owned(),
            capabilities: Capabilities::CHAT | Capabilities::STREAM | Capabilities::EMBEDDINGS | Capabilities::LIMITS,
        }
    }

    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        if target.model == "refuse" {
            return Err(BuildError::ClientError("interface-0-2 cannot express this".to_owned()));
        }
        post(&request, &target, "/chat/completions").map_err(BuildError::Failed)
    }

    fn decode_chat(body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        Ok(Answer { body, usage: None })
    }

    fn build_embeddings(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        post(&request, &target, "/embeddings").map_err(BuildError::Failed)
    }

    fn decode_embeddings(_request: Vec<u8>, body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        Ok(Answer { body, usage: None })
    }

    fn build_models(_target: Target) -> Result<HttpRequest, String> {
        Err("no listing".to_owned())
    }

    fn decode_models(_body: Vec<u8>, _target: Target) -> Result<Vec<ModelRecord>, String> {
        Err("no listing".to_owned())
    }

    /// A 429 waits 2 s, about a minute.
    fn classify_error(status: u16, _headers: Headers, _body: Vec<u8>) -> ErrorKind {
        match status {
            429 => ErrorKind::RateLimited(RateLimit { retry_after_ms: Some(2000), window: QuotaWindow::Minute }),
            400 => ErrorKind::ClientError,
            _ => ErrorKind::Transient,
        }
    }

    /// `x-ratelimit-remaining-requests`, per day.
    fn read_limits(_status: u16, headers: Headers) -> Vec<RateReport> {
        headers
            .iter()
            .filter(|(name, _)| name == "x-ratelimit-remaining-requests")
            .filter_map(|(_, value)| value.parse().ok())
            .map(|remaining| RateReport {
                unit: RateUnit::Requests,
                window: QuotaWindow::Day,
                limit: None,
                remaining: Some(remaining),
                reset: None,
            })
            .collect()
    }
}

/// OpenAI's SSE passed through: each `data:` line a chunk, `[DONE]` the end.
struct Decoder {
    pending: std::cell::RefCell<Vec<u8>>,
}

impl Decoder {
    fn events(&self, all: bool) -> Vec<StreamEvent> {
        let mut pending = self.pending.borrow_mut();
        let mut events = Vec::new();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            events.extend(Self::line(&line));
        }
        if all && !pending.is_empty() {
            let line: Vec<u8> = pending.drain(..).collect();
            events.extend(Self::line(&line));
        }
        events
    }

    fn line(line: &[u8]) -> Option<StreamEvent> {
        let text = std::str::from_utf8(line).ok()?.trim();
        let data = text.strip_prefix("data:")?.trim();
        if data == "[DONE]" {
            return Some(StreamEvent::Done);
        }
        Some(StreamEvent::Chunk(Chunk { json: data.as_bytes().to_vec(), usage: None }))
    }
}

impl GuestStreamDecoder for Decoder {
    fn new(_: Target) -> Self {
        Self { pending: std::cell::RefCell::new(Vec::new()) }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        self.pending.borrow_mut().extend(bytes);
        self.events(false)
    }

    fn finish(&self) -> Vec<StreamEvent> {
        self.events(true)
    }
}

export!(V02);
