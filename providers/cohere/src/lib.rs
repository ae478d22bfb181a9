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
//! `search_document`), and the SDK's `auth_header`/`auth_scheme`.
//!
//! A `tool_choice` naming one function is approximated: Cohere can only
//! require *a* tool call, so the request offers that function alone with
//! `tool_choice: REQUIRED`.

mod chat;
mod embed;
mod stream;

use std::cell::RefCell;

use freeway_plugin_sdk::{
    self as sdk, Answer, BuildError, Capabilities, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers,
    HttpRequest, INTERFACE_VERSION, ModelRecord, QuotaWindow, RateReport, StreamEvent, Target,
};

struct Plugin;

/// The window of a 429: a trial key's monthly allowance ("limited to 1000
/// API calls / month") lasts until the month's reset, its per-minute limit
/// ("20 API calls / minute") a minute
/// (<https://docs.cohere.com/docs/rate-limits>).
fn window(body: &[u8]) -> QuotaWindow {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    if text.contains("month") {
        QuotaWindow::Month
    } else if text.contains("minute") {
        QuotaWindow::Minute
    } else {
        QuotaWindow::Unknown
    }
}

impl Guest for Plugin {
    type StreamDecoder = Decoder;

    fn describe() -> Descriptor {
        Descriptor {
            name: "cohere".to_owned(),
            interface_version: INTERFACE_VERSION.to_owned(),
            capabilities: Capabilities::CHAT
                | Capabilities::STREAM
                | Capabilities::TOOLS
                | Capabilities::EMBEDDINGS
                | Capabilities::MODELS,
        }
    }

    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        let (body, stream) = chat::build(&request, &target.model)?;
        Ok(sdk::post(&target, target.option("chat_path").unwrap_or("/chat"), body, stream))
    }

    /// Cohere's wire format is its own: every request is translated here.
    fn plan_chat(_target: Target) -> Option<sdk::ChatPlan> {
        None
    }

    fn decode_chat(body: Vec<u8>, target: Target) -> Result<Answer, String> {
        let (body, usage) = chat::decode(&body, &target.model)?;
        Ok(Answer { body, usage })
    }

    fn build_embeddings(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        let body = embed::build(&request, &target)?;
        Ok(sdk::post(&target, target.option("embed_path").unwrap_or("/embed"), body, false))
    }

    fn decode_embeddings(_request: Vec<u8>, body: Vec<u8>, target: Target) -> Result<Answer, String> {
        let (body, usage) = embed::decode(&body, &target.model)?;
        Ok(Answer { body, usage })
    }

    fn build_models(target: Target) -> Result<HttpRequest, String> {
        Ok(HttpRequest::get_json(embed::models_url(&target)).with_key(&target, sdk::DEFAULT_AUTH_HEADER))
    }

    fn decode_models(body: Vec<u8>, _target: Target) -> Result<Vec<ModelRecord>, String> {
        Ok(embed::decode_models(&body)?
            .into_iter()
            .map(|m| ModelRecord {
                context_length: m.context_length,
                capabilities: m.capabilities,
                ..ModelRecord::new(m.id)
            })
            .collect())
    }

    fn classify_error(status: u16, _headers: Headers, body: Vec<u8>) -> ErrorKind {
        if status == 429 { ErrorKind::rate_limited(None, window(&body)) } else { sdk::classify_status(status) }
    }

    /// Cohere documents no rate-limit headers.
    fn read_limits(_status: u16, _headers: Headers) -> Vec<RateReport> {
        Vec::new()
    }
}

/// SSE bytes → Cohere events → OpenAI chunks.
struct Decoder {
    stream: RefCell<stream::Stream>,
}

impl GuestStreamDecoder for Decoder {
    fn new(target: Target) -> Self {
        Self { stream: RefCell::new(stream::Stream::new(&target.model)) }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        self.stream.borrow_mut().push(&bytes)
    }

    fn finish(&self) -> Vec<StreamEvent> {
        self.stream.borrow_mut().finish()
    }
}

sdk::export_plugin!(Plugin);
