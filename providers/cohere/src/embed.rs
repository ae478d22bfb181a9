//! Embeddings (OpenAI `/embeddings` ↔ Cohere `/v2/embed`) and model
//! listings (Cohere's `/v1/models`).

use std::sync::atomic::{AtomicBool, Ordering};

use freeway_plugin_sdk::{self as sdk, Target, Usage};
use serde_json::{Map, Value, json};

use crate::chat::count;

/// Whether the request this instance last built asked for base64 vectors.
/// A plugin instance serves one attempt (build, then decode), so this is
/// that attempt's choice; a decode without a build answers floats.
static BASE64: AtomicBool = AtomicBool::new(false);

/// The Cohere embed body for an OpenAI embeddings request.
pub fn build(request: &[u8], target: &Target) -> Result<Vec<u8>, String> {
    let req = sdk::request_object(request)?;
    let texts: Vec<Value> = match req.get("input") {
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => items.clone(),
        Some(Value::Array(items)) if items.is_empty() => return Err("the embeddings input is empty".to_owned()),
        Some(Value::Array(_)) => {
            return Err("cohere embeds text only: token-id inputs are not supported".to_owned());
        }
        _ => return Err("the embeddings request has no input".to_owned()),
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(format!("encoding_format {other:?} is not supported")),
    };
    BASE64.store(base64, Ordering::Relaxed);
    // Cohere needs to know what the texts are for; a client may say it
    // (`input_type`, a Cohere field), the config may, else documents.
    let input_type = req
        .get("input_type")
        .and_then(Value::as_str)
        .or_else(|| target.option("embed_input_type"))
        .unwrap_or("search_document");
    let mut body = Map::new();
    body.insert("model".to_owned(), Value::String(target.model.clone()));
    body.insert("texts".to_owned(), Value::Array(texts));
    body.insert("input_type".to_owned(), Value::String(input_type.to_owned()));
    body.insert("embedding_types".to_owned(), json!(["float"]));
    if let Some(dimensions) = req.get("dimensions").filter(|d| !d.is_null()) {
        body.insert("output_dimension".to_owned(), dimensions.clone());
    }
    serde_json::to_vec(&Value::Object(body)).map_err(|e| e.to_string())
}

/// A Cohere embed response → an OpenAI embeddings list.
pub fn decode(body: &[u8], model: &str) -> Result<(Vec<u8>, Option<Usage>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    // `embeddings_by_type` answers: {"float": [[...]]}; older ones: [[...]].
    let vectors = match v.get("embeddings") {
        Some(Value::Object(by_type)) => by_type.get("float").and_then(Value::as_array),
        Some(Value::Array(list)) => Some(list),
        _ => None,
    };
    let Some(vectors) = vectors else {
        return Err(match crate::chat::error_text(&v) {
            Some(e) => format!("cohere answered with an error: {e}"),
            None => "the answer has no float embeddings".to_owned(),
        });
    };
    let base64 = BASE64.load(Ordering::Relaxed);
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let numbers = vector.as_array().ok_or("an embedding is not a list of numbers")?;
            let embedding = if base64 { Value::String(base64_f32(numbers)?) } else { Value::Array(numbers.clone()) };
            Ok(json!({"object": "embedding", "index": index, "embedding": embedding}))
        })
        .collect::<Result<Vec<_>, &str>>()?;
    let tokens = v.get("meta").and_then(|m| m.get("billed_units")).and_then(|b| count(b.get("input_tokens")));
    let mut answer = json!({"object": "list", "data": data, "model": model});
    if let Some(tokens) = tokens {
        answer["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    let usage = tokens.map(|t| Usage { prompt_tokens: t, completion_tokens: 0 });
    Ok((serde_json::to_vec(&answer).map_err(|e| e.to_string())?, usage))
}

/// Little-endian f32s in base64, as OpenAI's `encoding_format: base64`.
fn base64_f32(numbers: &[Value]) -> Result<String, &'static str> {
    let mut bytes = Vec::with_capacity(numbers.len() * 4);
    for n in numbers {
        let f = n.as_f64().ok_or("an embedding is not a list of numbers")? as f32;
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], *group.get(1).unwrap_or(&0), *group.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    Ok(out)
}

/// The model listing URL: the `models_url` option, else the v1 listing
/// beside the v2 base (`…/v2` → `…/v1/models?endpoint=chat`).
pub fn models_url(target: &Target) -> String {
    if let Some(url) = target.option("models_url") {
        return url.to_owned();
    }
    let base = target.base_url.trim_end_matches('/');
    let v1 = match base.strip_suffix("/v2") {
        Some(root) => format!("{root}/v1"),
        None => base.to_owned(),
    };
    format!("{v1}/models?endpoint=chat&page_size=1000")
}

/// One model of a Cohere listing.
pub struct Listed {
    pub id: String,
    pub context_length: Option<u64>,
    pub capabilities: Vec<String>,
}

/// A Cohere listing: `{"models": [{"name", "endpoints", "features",
/// "context_length", ...}]}`.
pub fn decode_models(body: &[u8]) -> Result<Vec<Listed>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not a model listing: {e}"))?;
    let models = v.get("models").and_then(Value::as_array).ok_or("not a cohere model listing (no models)")?;
    let words = |m: &Value, field: &str| -> Vec<String> {
        m.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect()
    };
    Ok(models
        .iter()
        .filter_map(|m| {
            let id = m.get("name").and_then(Value::as_str)?.to_owned();
            let endpoints = words(m, "endpoints");
            let features = words(m, "features");
            let has = |list: &[String], names: &[&str]| list.iter().any(|w| names.contains(&w.as_str()));
            let mut capabilities = Vec::new();
            let mut add = |c: &str, yes: bool| {
                if yes {
                    capabilities.push(c.to_owned());
                }
            };
            add("chat", has(&endpoints, &["chat"]));
            add("embeddings", has(&endpoints, &["embed"]));
            add("rerank", has(&endpoints, &["rerank"]));
            add("tools", has(&features, &["tools", "tool_use", "strict_tools"]));
            add("reasoning", has(&features, &["reasoning", "thinking"]));
            let vision = m.get("supports_vision").and_then(Value::as_bool).unwrap_or(false);
            add("vision", vision || has(&features, &["vision", "image_input"]));
            Some(Listed { id, context_length: count(m.get("context_length")), capabilities })
        })
        .collect())
}
