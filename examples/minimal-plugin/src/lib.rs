//! A minimal freeway provider plugin.
//!
//! It serves an OpenAI-compatible API with one quirk: the key goes in an
//! `api-key` header instead of `Authorization: Bearer`. (For a quirk this
//! small the built-in `openai-compat` plugin's `auth_header` option would
//! do; the point here is the shape of a plugin.) The plugin is a pure
//! function of its inputs: it gets the OpenAI request and the target (base
//! URL, model, key, options) and returns the HTTP request for freeway to
//! send; then it gets the answer's bytes and returns OpenAI's shape.

use std::cell::RefCell;

use serde_json::Value;

// The interface freeway loads: providers/wit/provider.wit.
wit_bindgen::generate!({ path: "../../providers/wit", world: "provider" });

use exports::freeway::provider::translator::{
    Answer, Capabilities, Chunk, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers, HttpRequest, ModelRecord,
    StreamEvent, Target,
};

struct Minimal;

impl Guest for Minimal {
    type StreamDecoder = Decoder;

    /// The name config uses (`plugin: minimal`), and the interface version
    /// this was built against: freeway refuses a plugin of another version.
    fn describe() -> Descriptor {
        Descriptor {
            name: "minimal".to_owned(),
            interface_version: "0.1.0".to_owned(),
            capabilities: Capabilities::CHAT | Capabilities::STREAM | Capabilities::MODELS,
        }
    }

    /// OpenAI request in, provider request out: here the same body with the
    /// provider's model id, sent to `{base_url}/chat/completions`.
    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, String> {
        let mut body: Value = serde_json::from_slice(&request).map_err(|e| e.to_string())?;
        body["model"] = Value::String(target.model.clone());
        let stream = body["stream"].as_bool().unwrap_or(false);
        Ok(HttpRequest {
            method: "POST".to_owned(),
            url: format!("{}/chat/completions", target.base_url),
            headers: headers(&target, stream),
            body: serde_json::to_vec(&body).map_err(|e| e.to_string())?,
        })
    }

    /// The answer is already OpenAI's shape; refuse anything that is not.
    fn decode_chat(body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        let value: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        if value.get("choices").is_none() {
            return Err("the answer has no choices".to_owned());
        }
        Ok(Answer { body, usage: None })
    }

    fn build_embeddings(_request: Vec<u8>, _target: Target) -> Result<HttpRequest, String> {
        Err("minimal has no embeddings".to_owned())
    }

    fn decode_embeddings(_body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        Err("minimal has no embeddings".to_owned())
    }

    fn build_models(target: Target) -> Result<HttpRequest, String> {
        Ok(HttpRequest {
            method: "GET".to_owned(),
            url: format!("{}/models", target.base_url),
            headers: headers(&target, false),
            body: Vec::new(),
        })
    }

    fn decode_models(body: Vec<u8>, _target: Target) -> Result<Vec<ModelRecord>, String> {
        let value: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let data = value["data"].as_array().ok_or("no `data` in the listing")?;
        Ok(data
            .iter()
            .filter_map(|m| m["id"].as_str())
            .map(|id| ModelRecord {
                id: id.to_owned(),
                context_length: None,
                free: None,
                parameters: None,
                active_parameters: None,
                capabilities: Vec::new(),
            })
            .collect())
    }

    /// What an error status means for fallback.
    fn classify_error(status: u16, _headers: Headers, _body: Vec<u8>) -> ErrorKind {
        match status {
            429 => ErrorKind::RateLimited(None),
            401 | 403 => ErrorKind::InvalidKey,
            402 => ErrorKind::QuotaExhausted,
            400 | 422 => ErrorKind::ClientError,
            _ => ErrorKind::Transient,
        }
    }
}

fn headers(target: &Target, stream: bool) -> Vec<(String, String)> {
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("accept".to_owned(), if stream { "text/event-stream" } else { "application/json" }.to_owned()),
    ];
    if let Some(key) = &target.key {
        headers.push(("api-key".to_owned(), key.clone()));
    }
    headers
}

/// Upstream bytes arrive in arbitrary pieces (even mid-character): keep the
/// bytes that have no line end yet.
struct Decoder {
    pending: RefCell<Vec<u8>>,
}

impl Decoder {
    fn lines(&self, out: &mut Vec<StreamEvent>, flush: bool) {
        let mut pending = self.pending.borrow_mut();
        loop {
            let line: Vec<u8> = match pending.iter().position(|b| *b == b'\n') {
                Some(end) => pending.drain(..=end).collect(),
                None if flush && !pending.is_empty() => std::mem::take(&mut *pending),
                None => break,
            };
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:").map(str::trim) else { continue };
            if data == "[DONE]" {
                out.push(StreamEvent::Done);
            } else if !data.is_empty() {
                out.push(StreamEvent::Chunk(Chunk { json: data.as_bytes().to_vec(), usage: None }));
            }
        }
    }
}

impl GuestStreamDecoder for Decoder {
    fn new(_target: Target) -> Self {
        Self { pending: RefCell::new(Vec::new()) }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        self.pending.borrow_mut().extend_from_slice(&bytes);
        let mut out = Vec::new();
        self.lines(&mut out, false);
        out
    }

    fn finish(&self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        self.lines(&mut out, true);
        out
    }
}

export!(Minimal);
