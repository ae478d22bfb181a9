//! The host-side shapes of what crosses the plugin boundary: where an
//! attempt goes, the HTTP request a plugin builds, and what it decodes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// Where one attempt goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Provider API root, without a trailing slash.
    pub base_url: &'a str,
    /// The upstream's own model id.
    pub model: &'a str,
    /// The API key for this attempt, if the provider takes one.
    pub key: Option<&'a str>,
    /// Provider options from the catalog and config (quirks the plugin knows).
    pub options: &'a [(String, String)],
}

/// An HTTP request for the core to send.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// `GET` or `POST`.
    pub method: http::Method,
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

impl Usage {
    /// Prompt and completion tokens together (saturating: an upstream's
    /// absurd counts never wrap).
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// A model from a provider's listing (kept in the state database as JSON,
/// so a restart routes to it before discovery has run).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelRecord {
    /// The provider's id.
    pub id: String,
    /// Context window.
    pub context_length: Option<u64>,
    /// Free, when the listing says.
    pub free: Option<bool>,
    /// Parameters in total.
    pub parameters: Option<u64>,
    /// Parameters active per token.
    pub active_parameters: Option<u64>,
    /// `tools`, `reasoning`, `vision`...
    pub capabilities: Vec<String>,
}

/// What a plugin can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Chat completions.
    pub chat: bool,
    /// Streamed chat completions.
    pub stream: bool,
    /// Tool calls.
    pub tools: bool,
    /// Embeddings.
    pub embeddings: bool,
    /// Model listing.
    pub models: bool,
    /// Reads the upstream's rate-limit headers ([`super::Plugin::read_limits`];
    /// interface 0.2 on).
    pub limits: bool,
    /// May give a chat plan ([`super::Plugin::plan_chat`]; interface 0.3 on).
    pub plan: bool,
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
    /// Chunks already framed as SSE for the client (`data: {...}\n\n`
    /// each), passed by the host under a plugin's plan as they came: none
    /// carries usage or an error.
    Frames {
        /// The frames.
        sse: Bytes,
        /// How many chunks they are.
        chunks: usize,
    },
    /// The upstream ended the stream normally.
    Done,
    /// The upstream reported an error inside the stream.
    Error {
        /// Its message.
        message: String,
    },
}

/// The period a quota or a rate limit counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QuotaWindow {
    /// The upstream did not say (a 0.1 plugin never does): a short limit.
    #[default]
    Unknown,
    /// Per minute.
    Minute,
    /// Until the provider's next daily reset.
    Day,
    /// Until the provider's next monthly reset.
    Month,
}

impl QuotaWindow {
    /// Label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Minute => "minute",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateUnit {
    /// Requests.
    Requests,
    /// Tokens (prompt and completion together, as the upstreams count them).
    Tokens,
}

/// What an upstream said about one of its limits in a response's headers
/// (read by the plugin; see [`super::Plugin::read_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateReport {
    /// What it counts.
    pub unit: RateUnit,
    /// Over which period.
    pub window: QuotaWindow,
    /// The limit for the window.
    pub limit: Option<u64>,
    /// What is left of it.
    pub remaining: Option<u64>,
    /// How long after the response the count starts again (a reset the
    /// upstream gave as a point in time is turned into this with the system
    /// clock; one already past is [`Duration::ZERO`]).
    pub reset_after: Option<Duration>,
}

/// What an upstream error means for the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Too many requests: cool this model on this key, try the next key.
    RateLimited {
        /// How long the upstream asked us to wait, if it said.
        retry_after: Option<Duration>,
        /// Which limit was hit: a daily or monthly one lasts until the
        /// provider's reset, whatever `retry_after` says.
        window: QuotaWindow,
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
