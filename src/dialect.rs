//! Inbound dialects besides OpenAI chat completions, translated at the
//! edge (DESIGN.md, Inbound APIs): a request in a client's dialect becomes
//! an OpenAI chat completion request, which passes the policies, routing,
//! limits, fallback and plugins like any other; its answer (a JSON body or
//! an SSE stream of chat completion chunks) is translated back.
//!
//! | file | dialect |
//! |---|---|
//! | `anthropic.rs` | the Anthropic Messages API (`POST /v1/messages`, Claude Code, the Anthropic SDKs) |
//! | `responses.rs` | the OpenAI Responses API (`POST /v1/responses`, Codex CLI, the OpenAI SDKs' `responses`) |
//! | `chunks.rs` | reading a chat completion stream: SSE framing split anywhere, chunks as typed deltas |
//! | `reasoning.rs` | reasoning a target needs back (signatures), carried through each dialect's own fields |
//!
//! Each dialect module is pure translation (bytes in, bytes out), with no
//! I/O: the endpoints in `crate::api` wire them to the proxy.

use bytes::Bytes;

pub mod anthropic;
pub mod chunks;
pub mod reasoning;
pub mod responses;

/// A request translated into an OpenAI chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The chat completion request's JSON (with `stream` and, when
    /// streaming, `stream_options.include_usage` set).
    pub chat: Vec<u8>,
    /// The model name the client asked for (echoed in the answer where the
    /// client's SDK expects it).
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
}

/// A request the dialect cannot translate: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DialectError {
    /// What is wrong, naming the field (`messages[2].content[0].type`).
    pub message: String,
}

impl DialectError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

/// A request a dialect cannot translate is the client's to fix: 400.
impl From<DialectError> for crate::errors::ApiError {
    fn from(e: DialectError) -> Self {
        Self::bad_request(e.message, None)
    }
}

/// Turns a stream of chat completion chunks (the SSE bytes freeway relays
/// for a chat completion, split anywhere, ending with `data: [DONE]` or
/// with freeway's error event `data: {"error": {...}}`) into the dialect's
/// own event stream.
pub trait StreamTranslator: Send {
    /// Takes the next bytes of the chat stream; returns the dialect's
    /// bytes they complete (possibly empty).
    fn feed(&mut self, chat: &[u8]) -> Bytes;

    /// The chat stream ended (after `[DONE]`, an error event, or cut
    /// short): returns the dialect's closing events (for a stream cut
    /// without `[DONE]` or an error event, the dialect's error event).
    fn finish(&mut self) -> Bytes;
}
