//! The `cohere` plugin: Cohere's native v2 API (`https://api.cohere.com/v2`).
//!
//! - chat: OpenAI chat completions → `POST {base}/chat` (messages, tools,
//!   tool results, sampling parameters, JSON output), answers and SSE
//!   streams back to OpenAI shapes;
//! - embeddings: `POST {base}/embed` with float vectors;
//! - models: the v1 listing beside the v2 base (`…/v1/models?endpoint=chat`).
//!
//! Options: `chat_path` (default `/chat`), `embed_path` (`/embed`),
//! `models_url` (the whole listing URL), `embed_input_type` (default
//! `search_document`), and kit's `auth_header`/`auth_scheme`.
//!
//! A `tool_choice` naming one function is approximated: Cohere can only
//! require *a* tool call, so the request offers that function alone with
//! `tool_choice: REQUIRED`.

mod chat;
mod embed;
mod stream;

use std::cell::RefCell;

use freeway_plugin_kit as kit;

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
        url: format!("{}{path}", target.base_url.trim_end_matches('/')),
        headers: kit::json_headers(target.key.as_deref(), stream, &target.options),
        body,
    }
}

/// Whether a 429 body says the key's monthly allowance (trial keys: 1,000
/// calls a month) is spent, rather than a per-minute limit.
fn monthly_limit(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("month")
}

impl Guest for Plugin {
    type StreamDecoder = Decoder;

    fn describe() -> Descriptor {
        Descriptor {
            name: "cohere".to_owned(),
            interface_version: "0.1.0".to_owned(),
            capabilities: Capabilities::CHAT
                | Capabilities::STREAM
                | Capabilities::TOOLS
                | Capabilities::EMBEDDINGS
                | Capabilities::MODELS,
        }
    }

    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, String> {
        let (body, stream) = chat::build(&request, &target.model)?;
        Ok(post(&target, "chat_path", "/chat", body, stream))
    }

    fn decode_chat(body: Vec<u8>, target: Target) -> Result<Answer, String> {
        let (body, found) = chat::decode(&body, &target.model)?;
        Ok(Answer { body, usage: found.map(usage) })
    }

    fn build_embeddings(request: Vec<u8>, target: Target) -> Result<HttpRequest, String> {
        let body = embed::build(&request, &target.model, &target.options)?;
        Ok(post(&target, "embed_path", "/embed", body, false))
    }

    fn decode_embeddings(body: Vec<u8>, target: Target) -> Result<Answer, String> {
        let (body, found) = embed::decode(&body, &target.model)?;
        Ok(Answer { body, usage: found.map(usage) })
    }

    fn build_models(target: Target) -> Result<HttpRequest, String> {
        let mut headers = kit::json_headers(target.key.as_deref(), false, &target.options);
        headers.retain(|(name, _)| name != "content-type");
        Ok(HttpRequest {
            method: "GET".to_owned(),
            url: embed::models_url(&target.base_url, &target.options),
            headers,
            body: Vec::new(),
        })
    }

    fn decode_models(body: Vec<u8>, _target: Target) -> Result<Vec<ModelRecord>, String> {
        Ok(embed::decode_models(&body)?
            .into_iter()
            .map(|m| ModelRecord {
                id: m.id,
                context_length: m.context_length,
                free: None,
                parameters: None,
                active_parameters: None,
                capabilities: m.capabilities,
            })
            .collect())
    }

    fn classify_error(status: u16, _headers: Headers, body: Vec<u8>) -> ErrorKind {
        match status {
            429 if monthly_limit(&body) => ErrorKind::QuotaExhausted,
            429 => ErrorKind::RateLimited(None),
            402 => ErrorKind::QuotaExhausted,
            401 | 403 => ErrorKind::InvalidKey,
            400 | 422 => ErrorKind::ClientError,
            _ => ErrorKind::Transient,
        }
    }
}

/// SSE bytes → Cohere events → OpenAI chunks.
struct Decoder {
    state: RefCell<(kit::SseParser, stream::Stream)>,
}

impl Decoder {
    fn drain(parser: &mut kit::SseParser, state: &mut stream::Stream, out: &mut Vec<stream::Out>) {
        while let Some(event) = parser.next_event() {
            state.event(&event.event, &event.data, out);
        }
        if parser.overflows() > 0 {
            state.dropped(out);
        }
    }
}

fn events(out: Vec<stream::Out>) -> Vec<StreamEvent> {
    out.into_iter()
        .map(|o| match o {
            stream::Out::Chunk(json, found) => StreamEvent::Chunk(Chunk { json, usage: found.map(usage) }),
            stream::Out::Done => StreamEvent::Done,
            stream::Out::Error(message) => StreamEvent::Error(message),
        })
        .collect()
}

impl GuestStreamDecoder for Decoder {
    fn new(target: Target) -> Self {
        Self { state: RefCell::new((kit::sse_parser(), stream::Stream::new(&target.model))) }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        let mut guard = self.state.borrow_mut();
        let (parser, state) = &mut *guard;
        parser.feed(&bytes);
        let mut out = Vec::new();
        Self::drain(parser, state, &mut out);
        events(out)
    }

    fn finish(&self) -> Vec<StreamEvent> {
        let mut guard = self.state.borrow_mut();
        let (parser, state) = &mut *guard;
        parser.finish();
        let mut out = Vec::new();
        Self::drain(parser, state, &mut out);
        state.finish(&mut out);
        events(out)
    }
}

export!(Plugin);
