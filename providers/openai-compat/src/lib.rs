//! The `openai-compat` plugin: every provider that speaks OpenAI's chat
//! completions API. Requests pass through with `model` replaced; answers and
//! stream chunks pass through after a check. Provider quirks are options in
//! the catalog, not code:
//!
//! - `chat_path` (default `/chat/completions`), `models_path` (`/models`),
//!   `embeddings_path` (`/embeddings`);
//! - `auth_header` (default `authorization`), `auth_scheme` (default `Bearer`);
//! - `drop_params`: comma-separated request fields the provider refuses;
//! - `models_free`: how to tell free models in the listing: `pricing`
//!   (prompt and completion price "0", "free" or empty, or a `:free` id),
//!   `all`, or unset (the catalog decides);
//! - `models_paid_prefixes`: comma-separated id prefixes that are never free
//!   (SiliconFlow's `Pro/`).

use std::cell::RefCell;

use freeway_plugin_kit as kit;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

wit_bindgen::generate!({ path: "../wit", world: "provider" });

use exports::freeway::provider::translator::{
    Answer, Capabilities, Chunk, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers, HttpRequest, ModelRecord,
    StreamEvent, Target, Usage,
};

struct Plugin;

fn usage(u: kit::Usage) -> Usage {
    Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens }
}

fn post(target: &Target, path_option: &str, default_path: &str, body: Vec<u8>, stream: bool) -> HttpRequest {
    let path = kit::option(&target.options, path_option).unwrap_or(default_path);
    HttpRequest {
        method: "POST".to_owned(),
        url: format!("{}{path}", target.base_url),
        headers: kit::json_headers(target.key.as_deref(), stream, &target.options),
        body,
    }
}

/// The request with `model` replaced and refused parameters dropped.
fn rewrite(request: &[u8], target: &Target) -> Result<(Vec<u8>, bool), String> {
    let mut body = kit::request_object(request)?;
    body.insert("model".to_owned(), Value::String(target.model.clone()));
    for param in kit::option_list(&target.options, "drop_params") {
        body.remove(param);
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    Ok((bytes, stream))
}

#[derive(Deserialize)]
struct AnswerCheck {
    choices: Option<IgnoredAny>,
    data: Option<IgnoredAny>,
    error: Option<Value>,
    usage: Option<kit::Usage>,
}

fn check_answer(body: Vec<u8>, expect: &str) -> Result<Answer, String> {
    let check: AnswerCheck = serde_json::from_slice(&body).map_err(|e| format!("the answer is not a {expect}: {e}"))?;
    if let Some(error) = check.error {
        return Err(format!("the answer is an error: {}", kit::error_message(&error)));
    }
    let present = if expect == "chat completion" { check.choices.is_some() } else { check.data.is_some() };
    if !present {
        return Err(format!("the answer is not a {expect}"));
    }
    Ok(Answer { body, usage: check.usage.map(usage) })
}

impl Guest for Plugin {
    type StreamDecoder = Decoder;

    fn describe() -> Descriptor {
        Descriptor {
            name: "openai-compat".to_owned(),
            interface_version: "0.1.0".to_owned(),
            capabilities: Capabilities::CHAT
                | Capabilities::STREAM
                | Capabilities::TOOLS
                | Capabilities::EMBEDDINGS
                | Capabilities::MODELS,
        }
    }

    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, String> {
        let (body, stream) = rewrite(&request, &target)?;
        Ok(post(&target, "chat_path", "/chat/completions", body, stream))
    }

    fn decode_chat(body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        check_answer(body, "chat completion")
    }

    fn build_embeddings(request: Vec<u8>, target: Target) -> Result<HttpRequest, String> {
        let (body, _) = rewrite(&request, &target)?;
        Ok(post(&target, "embeddings_path", "/embeddings", body, false))
    }

    fn decode_embeddings(body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        check_answer(body, "embeddings list")
    }

    fn build_models(target: Target) -> Result<HttpRequest, String> {
        let path = kit::option(&target.options, "models_path").unwrap_or("/models");
        let mut headers = kit::json_headers(target.key.as_deref(), false, &target.options);
        headers.retain(|(name, _)| name != "content-type");
        Ok(HttpRequest {
            method: "GET".to_owned(),
            url: format!("{}{path}", target.base_url),
            headers,
            body: Vec::new(),
        })
    }

    fn decode_models(body: Vec<u8>, target: Target) -> Result<Vec<ModelRecord>, String> {
        decode_models(&body, &target.options)
    }

    fn classify_error(status: u16, _headers: Headers, _body: Vec<u8>) -> ErrorKind {
        match status {
            429 => ErrorKind::RateLimited(None),
            402 => ErrorKind::QuotaExhausted,
            401 | 403 => ErrorKind::InvalidKey,
            400 | 422 => ErrorKind::ClientError,
            _ => ErrorKind::Transient,
        }
    }
}

#[derive(Deserialize)]
struct Listing {
    data: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    context_length: Option<u64>,
    context_window: Option<u64>,
    max_model_len: Option<u64>,
    pricing: Option<Value>,
    supported_parameters: Option<Vec<String>>,
}

/// Model listings: `{"data": [{"id": ...}, ...]}` plus the fields some
/// providers add (OpenRouter's `pricing` and `context_length`, vLLM's
/// `max_model_len`, Groq's `context_window`).
fn decode_models(body: &[u8], options: &[(String, String)]) -> Result<Vec<ModelRecord>, String> {
    let listing: Listing = serde_json::from_slice(body).map_err(|e| format!("not a model listing: {e}"))?;
    let how = kit::option(options, "models_free");
    let paid_prefixes = kit::option_list(options, "models_paid_prefixes");
    Ok(listing
        .data
        .into_iter()
        .map(|e| {
            let priced_free = e
                .pricing
                .as_ref()
                .map(|p| kit::is_zero_price(p.get("prompt")) && kit::is_zero_price(p.get("completion")));
            let free = if paid_prefixes.iter().any(|p| e.id.starts_with(p)) {
                Some(false)
            } else {
                match how {
                    Some("all") => Some(true),
                    Some("pricing") => Some(e.id.ends_with(":free") || priced_free.unwrap_or(false)),
                    _ if e.id.ends_with(":free") => Some(true),
                    _ => priced_free,
                }
            };
            let mut capabilities = Vec::new();
            if let Some(params) = &e.supported_parameters {
                if params.iter().any(|p| p == "tools") {
                    capabilities.push("tools".to_owned());
                }
                if params.iter().any(|p| p == "reasoning" || p == "include_reasoning") {
                    capabilities.push("reasoning".to_owned());
                }
            }
            ModelRecord {
                context_length: e.context_length.or(e.context_window).or(e.max_model_len),
                id: e.id,
                free,
                parameters: None,
                active_parameters: None,
                capabilities,
            }
        })
        .collect())
}

/// SSE `data:` events → chunks; `[DONE]` → done; `{"error": ...}` → error.
struct Decoder {
    parser: RefCell<kit::SseParser>,
}

#[derive(Deserialize)]
struct ChunkCheck {
    error: Option<Value>,
    usage: Option<kit::Usage>,
}

impl Decoder {
    fn drain(&self, parser: &mut kit::SseParser) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        while let Some(event) = parser.next_event() {
            let data = event.data;
            let trimmed = data.trim();
            if trimmed.is_empty() {
                continue;
            }
            if trimmed == "[DONE]" {
                out.push(StreamEvent::Done);
                continue;
            }
            // Only chunks that may carry an error or usage are parsed.
            let mut found = None;
            if data.contains("\"error\"") || data.contains("\"usage\"") {
                match serde_json::from_str::<ChunkCheck>(&data) {
                    Ok(ChunkCheck { error: Some(error), .. }) => {
                        out.push(StreamEvent::Error(kit::error_message(&error)));
                        continue;
                    }
                    Ok(check) => found = check.usage.map(usage),
                    Err(e) => {
                        out.push(StreamEvent::Error(format!("undecodable chunk: {e}")));
                        continue;
                    }
                }
            }
            out.push(StreamEvent::Chunk(Chunk { json: data.into_bytes(), usage: found }));
        }
        out
    }
}

impl GuestStreamDecoder for Decoder {
    fn new(_target: Target) -> Self {
        Self { parser: RefCell::new(kit::sse_parser()) }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        let mut parser = self.parser.borrow_mut();
        parser.feed(&bytes);
        self.drain(&mut parser)
    }

    fn finish(&self) -> Vec<StreamEvent> {
        let mut parser = self.parser.borrow_mut();
        parser.finish();
        self.drain(&mut parser)
    }
}

export!(Plugin);
