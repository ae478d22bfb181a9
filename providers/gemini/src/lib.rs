//! The `gemini` plugin: Google's native Gemini API (`generateContent`,
//! `streamGenerateContent?alt=sse`, `batchEmbedContents`, `models`).
//!
//! `base_url` is the API root with its version
//! (`https://generativelanguage.googleapis.com/v1beta`); the key goes in
//! `x-goog-api-key`. The target model is an id (`gemini-2.5-flash`) or a
//! resource name (`models/...`, `tunedModels/...`); the id goes into the URL
//! percent-encoded as one path segment, whatever a client sent. Options:
//!
//! - `auth_header` (default `x-goog-api-key`), `auth_scheme` (default none);
//! - `embedding_task_type`: a `taskType` for embeddings (`RETRIEVAL_QUERY`...).
//!
//! Reasoning, in the fields of freeway's internal chat shape: a request's
//! `reasoning_effort` (`none`, `minimal`, `low`, `medium`, `high`)
//! sets `generationConfig.thinkingConfig` — a `thinkingLevel` on Gemini 3
//! and later, a `thinkingBudget` on Gemini 2.5, the nearest value each
//! model takes — and, unless it is `none`, `includeThoughts`; with no effort
//! the model thinks as it does by default. Thought summaries come back as
//! `reasoning_content`. Thought signatures come back on tool calls
//! (`extra_content.google.thought_signature`) or, for other parts, as
//! `reasoning_details` entries of format `google-gemini-v1`, and go back to
//! Gemini on the next turn in the part they came in; Gemini 3 gets Google's
//! `skip_thought_signature_validator` on a model turn whose function calls
//! have none (history from another model or a client that dropped them).

mod request;
mod response;
mod schema;

use std::cell::RefCell;

use freeway_plugin_sdk::{
    self as sdk, Answer, BuildError, Capabilities, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers,
    HttpRequest, INTERFACE_VERSION, ModelRecord, QuotaWindow, RateReport, StreamEvent, Target, Usage,
};
use serde_json::{Value, json};

struct Plugin;

/// Where Gemini wants the key (the options `auth_header` and `auth_scheme`
/// can say otherwise).
const KEY_HEADER: &str = "x-goog-api-key";

/// Model names Gemini takes with their collection: a target model given
/// as `tunedModels/my-model` or `models/gemini-2.5-flash` keeps it.
const COLLECTIONS: [&str; 2] = ["models/", "tunedModels/"];

/// The model's resource name and its URL path (the id percent-encoded as one
/// segment: a client's model id must not reach another path or the query).
fn model_resource(target: &Target) -> Result<(String, String), String> {
    let model = target.model.as_str();
    let (collection, id) =
        COLLECTIONS.iter().find_map(|c| model.strip_prefix(c).map(|id| (*c, id))).unwrap_or(("models/", model));
    Ok((format!("{collection}{id}"), format!("/{collection}{}", sdk::path_segment(id)?)))
}

/// A POST of a JSON body to the model's `:{method}`.
fn post(target: &Target, method: &str, body: Vec<u8>, stream: bool) -> Result<HttpRequest, String> {
    let (_, path) = model_resource(target)?;
    let url = target.url(&format!("{path}:{method}"));
    Ok(HttpRequest::post_json(url, body, stream).with_key(target, KEY_HEADER))
}

impl Guest for Plugin {
    type StreamDecoder = Decoder;

    fn describe() -> Descriptor {
        Descriptor {
            name: "gemini".to_owned(),
            interface_version: INTERFACE_VERSION.to_owned(),
            capabilities: Capabilities::CHAT
                | Capabilities::STREAM
                | Capabilities::TOOLS
                | Capabilities::EMBEDDINGS
                | Capabilities::MODELS,
        }
    }

    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        let built = request::build(&request, &target.model)?;
        let method = if built.stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
        Ok(post(&target, method, built.body, built.stream)?)
    }

    /// Gemini's wire format is its own: every request is translated here.
    fn plan_chat(_target: Target) -> Option<sdk::ChatPlan> {
        None
    }

    fn decode_chat(body: Vec<u8>, target: Target) -> Result<Answer, String> {
        let (body, usage) = response::decode(&body, &target.model)?;
        Ok(Answer { body, usage })
    }

    fn build_embeddings(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        let req = sdk::request_object(&request)?;
        let inputs: Vec<&str> = match req.get("input") {
            Some(Value::String(s)) => vec![s.as_str()],
            // Token arrays another provider may embed: not a client error.
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().ok_or("gemini embeds text only (token arrays are not supported)".to_owned()))
                .collect::<Result<_, _>>()?,
            // No provider embeds nothing: the client's mistake.
            _ => return Err(BuildError::ClientError("the request has no `input`".to_owned())),
        };
        if inputs.is_empty() {
            return Err(BuildError::ClientError("the request's `input` is empty".to_owned()));
        }
        let (model, _) = model_resource(&target)?;
        let dimensions = req.get("dimensions").filter(|d| !d.is_null());
        let task = target.option("embedding_task_type");
        let requests: Vec<Value> = inputs
            .into_iter()
            .map(|text| {
                let mut one = json!({"model": model, "content": {"parts": [{"text": text}]}});
                if let Some(d) = dimensions {
                    one["outputDimensionality"] = d.clone();
                }
                if let Some(task) = task {
                    one["taskType"] = json!(task);
                }
                one
            })
            .collect();
        let body = json!({ "requests": requests }).to_string().into_bytes();
        Ok(post(&target, "batchEmbedContents", body, false)?)
    }

    fn decode_embeddings(request: Vec<u8>, body: Vec<u8>, target: Target) -> Result<Answer, String> {
        let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
        if let Some(error) = answer.get("error") {
            return Err(format!("the answer is an error: {}", sdk::error_message(error)));
        }
        let embeddings = answer.get("embeddings").and_then(Value::as_array).ok_or("the answer has no embeddings")?;
        // batchEmbedContents answers in the order of its requests, one per
        // input: an answer of another length cannot be matched to them.
        let inputs = match sdk::request_object(&request)?.get("input") {
            Some(Value::Array(items)) => items.len(),
            _ => 1,
        };
        if embeddings.len() != inputs {
            return Err(format!("the answer has {} embeddings for {inputs} inputs", embeddings.len()));
        }
        let data: Vec<Value> = embeddings
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let values = e.get("values").cloned().unwrap_or_else(|| json!([]));
                json!({"object": "embedding", "index": index, "embedding": values})
            })
            .collect();
        let prompt = answer.pointer("/usageMetadata/promptTokenCount").and_then(Value::as_u64);
        let tokens = prompt.unwrap_or(0);
        let out = json!({
            "object": "list",
            "data": data,
            "model": target.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        });
        Ok(Answer {
            body: out.to_string().into_bytes(),
            usage: prompt.map(|p| Usage { prompt_tokens: p, completion_tokens: 0 }),
        })
    }

    fn build_models(target: Target) -> Result<HttpRequest, String> {
        Ok(HttpRequest::get_json(target.url("/models?pageSize=1000")).with_key(&target, KEY_HEADER))
    }

    fn decode_models(body: Vec<u8>, _target: Target) -> Result<Vec<ModelRecord>, String> {
        let listing: Value = serde_json::from_slice(&body).map_err(|e| format!("not a model listing: {e}"))?;
        let models = listing.get("models").and_then(Value::as_array).ok_or("not a model listing: no `models`")?;
        Ok(models
            .iter()
            .filter_map(|m| {
                let name = m.get("name").and_then(Value::as_str)?;
                let methods: Vec<&str> = m
                    .get("supportedGenerationMethods")
                    .and_then(Value::as_array)
                    .map(|l| l.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut capabilities = Vec::new();
                if methods.contains(&"generateContent") {
                    capabilities.push("chat".to_owned());
                    capabilities.push("tools".to_owned());
                }
                if methods.contains(&"embedContent") || methods.contains(&"batchEmbedContents") {
                    capabilities.push("embeddings".to_owned());
                }
                if m.get("thinking").and_then(Value::as_bool).unwrap_or(false) {
                    capabilities.push("reasoning".to_owned());
                }
                Some(ModelRecord {
                    context_length: m.get("inputTokenLimit").and_then(Value::as_u64),
                    capabilities,
                    ..ModelRecord::new(name.strip_prefix("models/").unwrap_or(name))
                })
            })
            .collect())
    }

    fn classify_error(status: u16, _headers: Headers, body: Vec<u8>) -> ErrorKind {
        classify(status, &body)
    }

    /// Gemini sends no rate-limit headers (its 429 body says it all).
    fn read_limits(_status: u16, _headers: Headers) -> Vec<RateReport> {
        Vec::new()
    }
}

/// Gemini errors: `{"error": {"code", "message", "status", "details": [...]}}`
/// (sometimes inside a list).
fn classify(status: u16, body: &[u8]) -> ErrorKind {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = parsed.get("error").or_else(|| parsed.pointer("/0/error")).unwrap_or(&Value::Null);
    let rpc_status = error.get("status").and_then(Value::as_str).unwrap_or("");
    let message = error.get("message").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    let details = error.get("details").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if status == 429 || rpc_status == "RESOURCE_EXHAUSTED" {
        let delay = details.iter().find_map(|d| d.get("retryDelay").and_then(Value::as_str)).and_then(duration_ms);
        return ErrorKind::rate_limited(delay, quota_window(details));
    }
    let key_rejected = details.iter().any(|d| {
        matches!(
            d.get("reason").and_then(Value::as_str),
            Some("API_KEY_INVALID" | "API_KEY_EXPIRED" | "API_KEY_SERVICE_BLOCKED")
        )
    }) || message.contains("api key not valid")
        || message.contains("api key expired")
        || message.contains("api key not found");
    match status {
        401 | 403 => ErrorKind::InvalidKey,
        400 if key_rejected => ErrorKind::InvalidKey,
        // "User location is not supported": this key or region, not the request.
        400 if rpc_status == "FAILED_PRECONDITION" => ErrorKind::Transient,
        400 | 413 => ErrorKind::ClientError,
        _ => ErrorKind::Transient,
    }
}

/// The window of the quota a 429 is about: `google.rpc.QuotaFailure`
/// violations name it in their `quotaId`
/// (`GenerateRequestsPerDayPerProjectPerModel-FreeTier`,
/// `GenerateContentInputTokensPerModelPerMinute-FreeTier`; see
/// <https://ai.google.dev/gemini-api/docs/troubleshooting#error-codes>). A
/// daily one wins over a per-minute one: it lasts longer.
fn quota_window(details: &[Value]) -> QuotaWindow {
    let ids = details
        .iter()
        .filter(|d| d.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with("google.rpc.QuotaFailure")))
        .filter_map(|d| d.get("violations").and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.get("quotaId").and_then(Value::as_str));
    let mut window = QuotaWindow::Unknown;
    for id in ids {
        if id.contains("PerDay") {
            return QuotaWindow::Day;
        }
        if id.contains("PerMinute") {
            window = QuotaWindow::Minute;
        }
    }
    window
}

/// A protobuf JSON duration (`"30s"`, `"1.5s"`) in milliseconds.
fn duration_ms(text: &str) -> Option<u64> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| (seconds * 1000.0).round() as u64)
}

/// Stream decoder: Gemini's SSE events → OpenAI chunks.
struct Decoder {
    stream: RefCell<response::Stream>,
}

impl GuestStreamDecoder for Decoder {
    fn new(target: Target) -> Self {
        Self { stream: RefCell::new(response::Stream::new(&target.model)) }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        self.stream.borrow_mut().push(&bytes)
    }

    fn finish(&self) -> Vec<StreamEvent> {
        self.stream.borrow_mut().finish()
    }
}

sdk::export_plugin!(Plugin);
