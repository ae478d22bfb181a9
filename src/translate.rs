//! The translation seam: the one narrow interface between the core and a
//! provider's wire format. The core does all I/O; a translator only turns
//! an OpenAI request into an upstream HTTP request and upstream bytes back
//! into OpenAI responses, stream events and error kinds.
//!
//! This mirrors the WIT interface the plugin host will load
//! (`providers/wit/`): the next release moves translators into WebAssembly
//! components, and the built-in [`openai_compat::OpenAiCompat`] goes away.

pub mod openai_compat;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::request::ChatRequest;

/// Plugin names this build knows.
pub const PLUGINS: &[&str] = &["openai-compat"];

/// The translator for a plugin name.
pub fn by_name(name: &str) -> Option<Arc<dyn Translator>> {
    match name {
        "openai-compat" => Some(Arc::new(openai_compat::OpenAiCompat)),
        _ => None,
    }
}

/// Where one attempt goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Provider API root, without a trailing slash.
    pub base_url: &'a str,
    /// The upstream's own model id.
    pub model: &'a str,
    /// The API key for this attempt, if the provider takes one.
    pub key: Option<&'a str>,
}

/// An HTTP request for the core to send.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// Full URL.
    pub url: String,
    /// Headers besides `host` and `content-length`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

/// Token counts an upstream reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// A decoded non-stream answer.
#[derive(Debug)]
pub struct Decoded {
    /// The OpenAI-shaped body to send to the client.
    pub body: Bytes,
    /// Usage, when reported.
    pub usage: Option<Usage>,
}

/// One event decoded from an upstream stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// An OpenAI `chat.completion.chunk`, as JSON, with the usage it
    /// reports (usually only the last chunk does).
    Chunk {
        /// The chunk's JSON.
        json: Bytes,
        /// Usage in this chunk.
        usage: Option<Usage>,
    },
    /// The upstream ended the stream normally.
    Done,
    /// The upstream reported an error inside the stream.
    Error {
        /// Its message.
        message: String,
    },
}

/// What an upstream error means for the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Too many requests: cool this model on this key, try the next key.
    RateLimited {
        /// How long the upstream asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The key's quota or credit is spent (402): next candidate.
    QuotaExhausted,
    /// The key is wrong or revoked (401/403): never use it again.
    InvalidKey,
    /// The client's request is wrong (400): return it, try nothing else.
    ClientError,
    /// Anything that another candidate may not have (404, 408, 5xx...).
    Transient,
}

/// Turns upstream stream bytes, in whatever pieces they arrive, into events.
pub trait StreamDecoder: Send {
    /// Feeds the next bytes; completed events are appended to `out`.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>);
    /// The upstream body ended; flush what is pending.
    fn finish(&mut self, out: &mut Vec<StreamEvent>);
}

/// A provider wire format.
pub trait Translator: Send + Sync {
    /// The plugin name (`openai-compat`).
    fn name(&self) -> &'static str;

    /// Builds the upstream request for a chat completion.
    fn build_chat(&self, request: &ChatRequest, target: Target<'_>) -> Result<UpstreamRequest, String>;

    /// Decodes a successful non-stream answer.
    fn decode_chat(&self, body: Bytes) -> Result<Decoded, String>;

    /// A fresh decoder for one streamed answer.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;

    /// Builds the request that lists the upstream's models (also used as
    /// the cheap live probe of `freeway check --probe`).
    fn build_models(&self, target: Target<'_>) -> Result<UpstreamRequest, String>;

    /// Decodes a model listing into model ids.
    fn decode_models(&self, body: &[u8]) -> Result<Vec<String>, String>;

    /// What an upstream error means. A `RateLimited` without `retry_after`
    /// lets the core read the standard `Retry-After` header.
    fn classify_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ErrorKind;
}
