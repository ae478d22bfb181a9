//! A minimal freeway provider plugin.
//!
//! It serves an OpenAI-compatible API with one quirk: the key goes in an
//! `api-key` header instead of `Authorization: Bearer`. (For a quirk this
//! small the built-in `openai-compat` plugin's `auth_header` option would
//! do; the point here is the shape of a plugin.) The plugin is a pure
//! function of its inputs: it gets the OpenAI request and the target (base
//! URL, model, key, options) and returns the HTTP request for freeway to
//! send; then it gets the answer's bytes and returns OpenAI's shape.
//!
//! The types come from freeway's plugin SDK (`providers/sdk`), generated
//! from the interface freeway loads, `providers/wit/0.3.0/provider.wit`.

use freeway_plugin_sdk::{
    self as sdk, Answer, BuildError, Capabilities, Descriptor, ErrorKind, Guest, Headers, HttpRequest,
    INTERFACE_VERSION, ModelRecord, PassThrough, RateReport, Target,
};
use serde_json::Value;

/// The header this provider wants the key in.
const KEY_HEADER: &str = "api-key";

struct Minimal;

impl Guest for Minimal {
    /// The upstream streams OpenAI chunks already: the SDK's decoder passes
    /// them on. A provider with a stream format of its own implements
    /// `GuestStreamDecoder` instead (see `providers/gemini`).
    type StreamDecoder = PassThrough;

    /// The name config uses (`plugin: minimal`), and the interface version
    /// this was built against: freeway refuses a plugin of another version.
    fn describe() -> Descriptor {
        Descriptor {
            name: "minimal".to_owned(),
            interface_version: INTERFACE_VERSION.to_owned(),
            capabilities: Capabilities::CHAT | Capabilities::STREAM | Capabilities::MODELS,
        }
    }

    /// OpenAI request in, provider request out: here the same body with the
    /// provider's model id, sent to `{base_url}/chat/completions`. An error
    /// given as a `String` (`?` converts it) makes freeway try the next
    /// candidate; `BuildError::ClientError` answers the client 400 instead.
    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        let mut body = sdk::request_object(&request)?;
        body.insert("model".to_owned(), Value::String(target.model.clone()));
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let url = target.url("/chat/completions");
        Ok(HttpRequest::post_json(url, body, stream).with_key(&target, KEY_HEADER))
    }

    /// A plan lets freeway apply a translation that is only edits (set
    /// `model`, drop fields, the URL and headers) itself, without calling
    /// this plugin per request (see `providers/openai-compat`). `None`:
    /// every request comes to `build_chat`.
    fn plan_chat(_target: Target) -> Option<sdk::ChatPlan> {
        None
    }

    /// The answer is already OpenAI's shape; refuse anything that is not,
    /// and report its token counts (freeway's token budgets use them).
    fn decode_chat(body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        let value: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        if value.get("choices").is_none() {
            return Err("the answer has no choices".to_owned());
        }
        let usage = value.get("usage").and_then(|u| serde_json::from_value(u.clone()).ok());
        Ok(Answer { body, usage })
    }

    fn build_embeddings(_request: Vec<u8>, _target: Target) -> Result<HttpRequest, BuildError> {
        Err(BuildError::Failed("minimal has no embeddings".to_owned()))
    }

    fn decode_embeddings(_request: Vec<u8>, _body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        Err("minimal has no embeddings".to_owned())
    }

    fn build_models(target: Target) -> Result<HttpRequest, String> {
        Ok(HttpRequest::get_json(target.url("/models")).with_key(&target, KEY_HEADER))
    }

    fn decode_models(body: Vec<u8>, _target: Target) -> Result<Vec<ModelRecord>, String> {
        let value: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let data = value["data"].as_array().ok_or("no `data` in the listing")?;
        Ok(data.iter().filter_map(|m| m["id"].as_str()).map(ModelRecord::new).collect())
    }

    /// What an error status means for fallback: the SDK's usual table
    /// (429 rate limited, 401/403 bad key, 402 quota, 400/422 the request).
    fn classify_error(status: u16, _headers: Headers, _body: Vec<u8>) -> ErrorKind {
        sdk::classify_status(status)
    }

    /// What the upstream's rate-limit headers say; only called with the
    /// `limits` capability, which this plugin does not claim. A provider
    /// sending `x-ratelimit-*` headers would return
    /// `sdk::suffixed_reports(&headers, ...)` and claim `Capabilities::LIMITS`.
    fn read_limits(_status: u16, _headers: Headers) -> Vec<RateReport> {
        Vec::new()
    }
}

sdk::export_plugin!(Minimal);
