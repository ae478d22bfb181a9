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
//!   (SiliconFlow's `Pro/`);
//! - `stream_usage` (default on): a streamed chat request asks for usage in
//!   its last chunk (`stream_options.include_usage: true`, merged into the
//!   client's own `stream_options`) so that token budgets settle; the client
//!   gets that chunk too (it has no choices). `"false"` leaves the request
//!   as the client sent it, as does listing `stream_options` in `drop_params`.
//!
//! - `reasoning_back`: comma-separated reasoning fields of the client's
//!   assistant turns the provider is sent back (`reasoning_content`,
//!   `reasoning`, `reasoning_details`, `extra_content` on tool calls);
//!   the others are taken off, since strict providers refuse fields they do
//!   not know (Mistral, Groq) and one target's signatures mean nothing to
//!   another. Unset: none. When `reasoning_content` is kept, a tool-calling
//!   turn without it (from another model) is sent with an empty one, since
//!   DeepSeek's thinking mode refuses such a turn without the field
//!   (<https://api-docs.deepseek.com/guides/thinking_mode#tool-calls>).
//!
//! Rate limits (`read-limits`): the `x-ratelimit-*` header families its
//! providers send, read with the SDK's parsers: Groq's unsuffixed
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (requests per
//! day, tokens per minute, as Groq documents), Cerebras' and Mistral's
//! suffixed `-requests-day` / `-tokens-minute` / `-tokens-month`, and
//! OpenRouter's `X-RateLimit-{Limit,Remaining,Reset}`. A 429's window comes
//! from its message: OpenRouter's `free-models-per-day`
//! (<https://openrouter.ai/docs/api-reference/limits>), Groq's
//! `rate_limit_exceeded` "... per day (RPD)" / "tokens per day (TPD)" or
//! "per minute" with its "Please try again in 20m6.432s"
//! (<https://console.groq.com/docs/rate-limits>).

use freeway_plugin_sdk::{
    self as sdk, Answer, BuildError, Capabilities, ChatPlan, Descriptor, ErrorKind, Guest, Headers, HttpRequest,
    INTERFACE_VERSION, ModelRecord, PassThrough, QuotaWindow, RateReport, Target, Usage,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

struct Plugin;

/// The request with `model` replaced, usage asked for on a chat stream, and
/// refused parameters dropped; and whether it asks for a stream.
fn rewrite(request: &[u8], target: &Target, chat: bool) -> Result<(Vec<u8>, bool), String> {
    let mut body = sdk::request_object(request)?;
    body.insert("model".to_owned(), Value::String(target.model.clone()));
    let dropped = target.option_list("drop_params");
    for param in &dropped {
        body.remove(*param);
    }
    if chat {
        reasoning_back(&mut body, &target.option_list("reasoning_back"));
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let usage_off = target.option("stream_usage").is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    if chat && stream && !usage_off && !dropped.contains(&"stream_options") {
        ask_for_usage(&mut body);
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    Ok((bytes, stream))
}

/// What `build-chat` and `decode-chat` do, as a plan freeway applies
/// itself: `model` set, `drop_params` dropped, usage asked for on a stream;
/// requests that hold a reasoning field this provider is not sent back (or
/// a tool call, when an empty `reasoning_content` may have to be added) go
/// to `build-chat`, and answers with reasoning under another name to
/// `decode-chat`, since those need edits inside the messages.
fn plan(target: &Target) -> Option<ChatPlan> {
    let dropped = target.option_list("drop_params");
    // A request whose `stream` is dropped is built as a non-stream one.
    if dropped.contains(&"stream") {
        return None;
    }
    let path = target.option("chat_path").unwrap_or("/chat/completions");
    let plain = sdk::post(target, path, Vec::new(), false);
    let streamed = sdk::post(target, path, Vec::new(), true);
    let keep = target.option_list("reasoning_back");
    let quoted = |field: &str| format!("\"{field}\"");
    let mut request_unless: Vec<String> =
        REASONING_FIELDS.iter().filter(|f| !keep.contains(f)).map(|f| quoted(f)).collect();
    if !keep.contains(&"extra_content") {
        request_unless.push(quoted("extra_content"));
    }
    if keep.contains(&"reasoning_content") {
        request_unless.push(quoted("tool_calls"));
    }
    let usage_off = target.option("stream_usage").is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    Some(ChatPlan {
        method: plain.method,
        url: plain.url,
        headers: plain.headers,
        stream_headers: streamed.headers,
        set_fields: vec![("model".to_owned(), serde_json::to_string(&target.model).ok()?)],
        drop_fields: dropped.iter().map(|d| (*d).to_owned()).collect(),
        stream_usage: !usage_off && !dropped.contains(&"stream_options"),
        request_unless,
        answer_unless: vec![quoted("reasoning"), quoted("reasoning_details")],
    })
}

/// The reasoning fields an assistant turn may carry (freeway's and other
/// gateways' names).
const REASONING_FIELDS: [&str; 4] = ["reasoning_content", "reasoning", "reasoning_details", "reasoning_signature"];

/// Keeps on the assistant turns only the reasoning fields in `keep`.
fn reasoning_back(body: &mut Map<String, Value>, keep: &[&str]) {
    let Some(Value::Array(messages)) = body.get_mut("messages") else { return };
    let keep_calls = keep.contains(&"extra_content");
    let fill_content = keep.contains(&"reasoning_content");
    for message in messages {
        let Some(message) = message.as_object_mut() else { continue };
        if message.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        for field in REASONING_FIELDS {
            if !keep.contains(&field) {
                message.remove(field);
            }
        }
        let calls = match message.get_mut("tool_calls") {
            Some(Value::Array(calls)) if !calls.is_empty() => calls,
            _ => continue,
        };
        if !keep_calls {
            for call in calls.iter_mut().filter_map(Value::as_object_mut) {
                call.remove("extra_content");
            }
        }
        if fill_content && !message.get("reasoning_content").is_some_and(Value::is_string) {
            message.insert("reasoning_content".to_owned(), Value::String(String::new()));
        }
    }
}

/// Sets `stream_options.include_usage`, keeping the client's other stream
/// options. A `stream_options` that is neither an object nor null is the
/// client's mistake, left for the upstream to refuse.
fn ask_for_usage(body: &mut Map<String, Value>) {
    let options = body.entry("stream_options").or_insert(Value::Null);
    if options.is_null() {
        *options = Value::Object(Map::new());
    }
    if let Value::Object(options) = options {
        options.insert("include_usage".to_owned(), Value::Bool(true));
    }
}

#[derive(Deserialize)]
struct AnswerCheck {
    choices: Option<IgnoredAny>,
    data: Option<IgnoredAny>,
    error: Option<Value>,
    usage: Option<Usage>,
}

fn check_answer(body: Vec<u8>, expect: &str) -> Result<Answer, String> {
    let check: AnswerCheck = serde_json::from_slice(&body).map_err(|e| format!("the answer is not a {expect}: {e}"))?;
    if let Some(error) = check.error {
        return Err(format!("the answer is an error: {}", sdk::error_message(&error)));
    }
    let present = if expect == "chat completion" { check.choices.is_some() } else { check.data.is_some() };
    if !present {
        return Err(format!("the answer is not a {expect}"));
    }
    // Reasoning under another name becomes `reasoning_content`.
    let body = sdk::reasoning::normalised(&body).unwrap_or(body);
    Ok(Answer { body, usage: check.usage })
}

impl Guest for Plugin {
    type StreamDecoder = PassThrough;

    fn describe() -> Descriptor {
        Descriptor {
            name: "openai-compat".to_owned(),
            interface_version: INTERFACE_VERSION.to_owned(),
            capabilities: Capabilities::CHAT
                | Capabilities::STREAM
                | Capabilities::TOOLS
                | Capabilities::EMBEDDINGS
                | Capabilities::MODELS
                | Capabilities::LIMITS
                | Capabilities::PLAN,
        }
    }

    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        let (body, stream) = rewrite(&request, &target, true)?;
        Ok(sdk::post(&target, target.option("chat_path").unwrap_or("/chat/completions"), body, stream))
    }

    fn decode_chat(body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        check_answer(body, "chat completion")
    }

    fn plan_chat(target: Target) -> Option<ChatPlan> {
        plan(&target)
    }

    fn build_embeddings(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        let (body, _) = rewrite(&request, &target, false)?;
        Ok(sdk::post(&target, target.option("embeddings_path").unwrap_or("/embeddings"), body, false))
    }

    fn decode_embeddings(_request: Vec<u8>, body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        check_answer(body, "embeddings list")
    }

    fn build_models(target: Target) -> Result<HttpRequest, String> {
        Ok(sdk::get(&target, target.option("models_path").unwrap_or("/models")))
    }

    fn decode_models(body: Vec<u8>, target: Target) -> Result<Vec<ModelRecord>, String> {
        decode_models(&body, &target)
    }

    fn classify_error(status: u16, _headers: Headers, body: Vec<u8>) -> ErrorKind {
        if status == 429 {
            return rate_limited(&body);
        }
        sdk::classify_status(status)
    }

    fn read_limits(_status: u16, headers: Headers) -> Vec<RateReport> {
        // Groq's unsuffixed headers are requests per day and tokens per
        // minute; the suffixed ones (Cerebras, Mistral) say their window.
        let mut reports = sdk::suffixed_reports(&headers, QuotaWindow::Day, QuotaWindow::Minute);
        reports.extend(sdk::plain_report(&headers, QuotaWindow::Unknown));
        reports
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: Option<String>,
}

/// A 429 with the window its message names (OpenRouter's
/// `free-models-per-day`, Groq's "tokens per day (TPD)" or "requests per
/// minute (RPM)") and the wait Groq writes in it ("Please try again in
/// 20m6.432s"); freeway reads a `Retry-After` header itself.
fn rate_limited(body: &[u8]) -> ErrorKind {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error)
        .and_then(|e| e.message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let retry_after_ms = message
        .split_once("try again in ")
        .and_then(|(_, rest)| rest.split(|c: char| c.is_whitespace() || c == ',').next())
        .map(|wait| wait.trim_end_matches('.'))
        .and_then(sdk::parse_duration_ms);
    ErrorKind::rate_limited(retry_after_ms, sdk::window_in_message(&message))
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
fn decode_models(body: &[u8], target: &Target) -> Result<Vec<ModelRecord>, String> {
    let listing: Listing = serde_json::from_slice(body).map_err(|e| format!("not a model listing: {e}"))?;
    let how = target.option("models_free");
    let paid_prefixes = target.option_list("models_paid_prefixes");
    Ok(listing
        .data
        .into_iter()
        .map(|e| {
            let priced_free = e
                .pricing
                .as_ref()
                .map(|p| sdk::is_zero_price(p.get("prompt")) && sdk::is_zero_price(p.get("completion")));
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

sdk::export_plugin!(Plugin);
