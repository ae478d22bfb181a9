//! The freeway plugin SDK: what every provider plugin shares.
//!
//! - The bindings of the plugin interface, `providers/wit/0.3.0`, generated
//!   once here. A plugin implements [`Guest`] (and [`GuestStreamDecoder`],
//!   or uses [`PassThrough`]) on these types and exports itself with
//!   [`export_plugin!`]; it needs no `wit-bindgen` of its own.
//! - [`INTERFACE_VERSION`], which `describe()` reports.
//! - Requests: [`post`] and [`get`] (the key where the options say),
//!   [`Target::option`], and [`path_segment`] for anything taken from a
//!   request or a model id that goes into a URL path.
//! - OpenAI shapes: usage, chunks, error messages, and [`PassThrough`], the
//!   stream decoder of an upstream that already streams OpenAI chunks.
//! - SSE parsing with a bound on one event ([`sse_parser`]).
//! - Rate limits: the common header families as [`RateReport`]s for
//!   `read-limits` ([`suffixed_reports`] for Groq, Cerebras and Mistral,
//!   [`plain_report`] for OpenRouter, [`anthropic_reports`]), the Go-like
//!   durations their resets are written in ([`parse_duration_ms`]), and
//!   [`ErrorKind::rate_limited`] / [`window_in_message`] for a 429's window.
//! - [`BuildError`] from a `String` is a plain failure, so `?` works in
//!   `build-chat`; a request the provider cannot express because of what the
//!   client sent is a [`BuildError::ClientError`].
//!
//! ```ignore
//! use freeway_plugin_sdk::{Guest, Descriptor, INTERFACE_VERSION, ...};
//!
//! struct Plugin;
//! impl Guest for Plugin { /* ... */ }
//! freeway_plugin_sdk::export_plugin!(Plugin);
//! ```

mod http;
mod limits;
mod openai;
pub mod reasoning;
mod stream;

wit_bindgen::generate!({
    path: "../wit/0.3.0",
    world: "provider",
    // The export macro is called from the plugin crates, and finds the
    // types here rather than beside the call.
    pub_export_macro: true,
    export_macro_name: "export_plugin",
    default_bindings_module: "freeway_plugin_sdk",
});

pub use exports::freeway::provider::translator::{
    Answer, BuildError, Capabilities, ChatPlan, Chunk, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers,
    HttpRequest, ModelRecord, QuotaWindow, RateLimit, RateReport, RateUnit, ResetTime, StreamEvent, Target, Usage,
};
pub use http::{DEFAULT_AUTH_HEADER, classify_status, get, path_segment, post};
pub use limits::{
    anthropic_reports, header, parse_count, parse_duration_ms, parse_rfc3339_ms, plain_report, suffixed_reports,
    window_in_message,
};
pub use openai::{chunk_json, error_message, is_zero_price, request_object, usage_chunk_json, usage_json};
pub use sse_parse::SseParser;
pub use stream::{MAX_EVENT_BYTES, PassThrough, sse_parser};

/// The interface version these bindings implement: the version of the WIT
/// package in `providers/wit/0.3.0/provider.wit`. freeway refuses a plugin
/// whose `describe()` reports another.
pub const INTERFACE_VERSION: &str = "0.3.0";

/// A build error given as text is a plain failure (freeway tries the next
/// candidate), so that `?` on a `Result<_, String>` works in `build-chat`.
impl From<String> for BuildError {
    fn from(message: String) -> Self {
        BuildError::Failed(message)
    }
}

/// As for a `String`.
impl From<&str> for BuildError {
    fn from(message: &str) -> Self {
        BuildError::Failed(message.to_owned())
    }
}
