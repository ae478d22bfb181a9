//! OpenAI chat-completions request → Gemini `generateContent` body.
//!
//! Reasoning: `reasoning_effort` becomes `generationConfig.thinkingConfig`
//! (a `thinkingLevel` for Gemini 3 and later, a `thinkingBudget` for Gemini
//! 2.5, each the nearest value the model accepts; see [`thinking_config`]),
//! with `includeThoughts` when the client asked for reasoning. Thought
//! signatures go back where they came from: a tool call's
//! `extra_content.google.thought_signature` on its function call, and the
//! message's `google-gemini-v1` `reasoning_details` entry on its last text
//! part. Reasoning text (`reasoning_content`) is not sent back: Gemini reads
//! its thoughts from the signatures.

use freeway_plugin_sdk as sdk;
use serde_json::{Map, Value, json};

use crate::schema;

/// The `reasoning_details` format of Gemini's thought signatures.
pub const SIGNATURE_FORMAT: &str = "google-gemini-v1";

/// A thought signature that tells Gemini 3 not to validate a function call
/// that comes without its own (history from a client that dropped it, or
/// from another model). Documented in Gemini's thought-signatures guide.
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// The Gemini request body and whether the client asked for a stream.
pub struct Built {
    pub body: Vec<u8>,
    pub stream: bool,
}

pub fn build(request: &[u8], model: &str) -> Result<Built, String> {
    let req = sdk::request_object(request)?;
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let messages = req.get("messages").and_then(Value::as_array).ok_or("the request has no `messages` array")?;
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).ok_or_else(|| format!("message {i} has no role"))?;
        let (gemini_role, parts) = match role {
            "system" | "developer" => {
                system.extend(text_only(message.get("content"), i)?);
                continue;
            }
            "user" => ("user", user_parts(message.get("content"), i)?),
            "assistant" => ("model", assistant_parts(message, i)?),
            "tool" | "function" => ("user", vec![tool_result(message, &messages[..i], i)?]),
            other => return Err(format!("message {i} has an unknown role `{other}`")),
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last, existing)) if *last == gemini_role => existing.extend(parts),
            _ => contents.push((gemini_role, parts)),
        }
    }
    if contents.is_empty() {
        return Err("the request has no user or assistant message with content".to_owned());
    }
    let sign = needs_signatures(model);
    let contents: Vec<Value> = contents
        .into_iter()
        .map(|(role, mut parts)| {
            if role == "model" && sign {
                sign_first_call(&mut parts);
            }
            json!({"role": role, "parts": parts})
        })
        .collect();

    let mut body = Map::new();
    body.insert("contents".to_owned(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".to_owned(), json!({ "parts": system }));
    }
    let declarations = declarations(&req)?;
    if !declarations.is_empty() {
        body.insert("tools".to_owned(), json!([{ "functionDeclarations": declarations }]));
        if let Some(config) = tool_config(&req)? {
            body.insert("toolConfig".to_owned(), json!({ "functionCallingConfig": config }));
        }
    }
    let mut generation = generation_config(&req)?;
    if let Some(thinking) = thinking_config(&req, model) {
        generation.insert("thinkingConfig".to_owned(), thinking);
    }
    if !generation.is_empty() {
        body.insert("generationConfig".to_owned(), Value::Object(generation));
    }
    let body = serde_json::to_vec(&Value::Object(body)).map_err(|e| e.to_string())?;
    Ok(Built { body, stream })
}

/// Gemini 3 and later validate thought signatures on function calls in the
/// history; 1.x and 2.x do not know the sentinel, so it is not sent there.
fn needs_signatures(model: &str) -> bool {
    let name = model.strip_prefix("models/").unwrap_or(model);
    name.starts_with("gemini-") && !name.starts_with("gemini-1") && !name.starts_with("gemini-2")
}

/// A model turn whose function calls all lack a signature gets the sentinel
/// on its first call (Gemini only signs the first of parallel calls).
fn sign_first_call(parts: &mut [Value]) {
    let calls = || parts.iter().filter(|p| p.get("functionCall").is_some());
    if calls().any(|p| p.get("thoughtSignature").is_some()) {
        return;
    }
    if let Some(Value::Object(first)) = parts.iter_mut().find(|p| p.get("functionCall").is_some()) {
        first.insert("thoughtSignature".to_owned(), Value::String(SKIP_SIGNATURE.to_owned()));
    }
}

fn present<'a>(req: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    req.get(key).filter(|v| !v.is_null())
}

/// A system message's content: a string or text parts.
fn text_only(content: Option<&Value>, i: usize) -> Result<Vec<Value>, String> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(text_part(s).into_iter().collect()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") | None => {
                        out.extend(part.get("text").and_then(Value::as_str).and_then(text_part));
                    }
                    Some(other) => return Err(format!("message {i}: a `{other}` part is not allowed here")),
                }
            }
            Ok(out)
        }
        Some(_) => Err(format!("message {i}: content is neither a string nor a list of parts")),
    }
}

fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "text": text }))
}

/// A user message's content: text, images, audio and files.
fn user_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, String> {
    let Some(Value::Array(parts)) = content else {
        return text_only(content, i);
    };
    let mut out = Vec::new();
    for part in parts {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("text");
        match kind {
            "text" => out.extend(part.get("text").and_then(Value::as_str).and_then(text_part)),
            "image_url" => {
                let url = match part.get("image_url") {
                    Some(Value::String(url)) => url.as_str(),
                    Some(image) => image.get("url").and_then(Value::as_str).unwrap_or(""),
                    None => "",
                };
                out.push(media(url, None, i)?);
            }
            "input_audio" => {
                let audio = part.get("input_audio");
                let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str).unwrap_or("");
                let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str).unwrap_or("wav");
                if data.is_empty() {
                    return Err(format!("message {i}: an input_audio part has no data"));
                }
                out.push(json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}));
            }
            "file" => {
                let file = part.get("file");
                let name = file.and_then(|f| f.get("filename")).and_then(Value::as_str);
                match file.and_then(|f| f.get("file_data")).and_then(Value::as_str) {
                    Some(data) if data.starts_with("data:") => out.push(media(data, name, i)?),
                    Some(data) => {
                        let mime = name.and_then(mime_of).ok_or_else(|| {
                            format!("message {i}: cannot tell the type of file {name:?}; send it as a data: URL")
                        })?;
                        out.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
                    }
                    None => return Err(format!("message {i}: only files sent inline (file_data) are supported")),
                }
            }
            other => return Err(format!("message {i}: content parts of type `{other}` are not supported")),
        }
    }
    Ok(out)
}

/// A data: URL → inline data; an http(s) URL → file data with a MIME type
/// guessed from its extension.
fn media(url: &str, name: Option<&str>, i: usize) -> Result<Value, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| format!("message {i}: a malformed data: URL"))?;
        let mime =
            meta.strip_suffix(";base64").ok_or_else(|| format!("message {i}: only base64 data: URLs are supported"))?;
        let mime = if mime.is_empty() { name.and_then(mime_of).unwrap_or("application/octet-stream") } else { mime };
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let mime = mime_of(path).ok_or_else(|| {
            format!("message {i}: cannot tell the media type of {url}; send it as a base64 data: URL instead")
        })?;
        return Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}));
    }
    Err(format!("message {i}: an image or file URL must be a data: or http(s) URL"))
}

fn mime_of(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" => "text/html",
        "csv" => "text/csv",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "aac" => "audio/aac",
        "mp4" => "video/mp4",
        "mov" => "video/mov",
        "webm" => "video/webm",
        _ => return None,
    })
}

/// An assistant message: its text, then its tool calls as function calls.
fn assistant_parts(message: &Value, i: usize) -> Result<Vec<Value>, String> {
    let mut parts = Vec::new();
    match message.get("content") {
        Some(Value::Array(items)) => {
            for item in items {
                let text = item.get("text").or_else(|| item.get("refusal")).and_then(Value::as_str);
                parts.extend(text.and_then(text_part));
            }
        }
        other => parts.extend(text_only(other, i)?),
    }
    // Gemini wants a signature back in the part it came in: the last part
    // of the text (the tool calls carry their own).
    if let (Some(signature), Some(Value::Object(last))) = (text_signature(message), parts.last_mut()) {
        last.insert("thoughtSignature".to_owned(), Value::String(signature.to_owned()));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for call in calls {
            let function = call.get("function").unwrap_or(&Value::Null);
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("message {i}: a tool call has no function name"))?;
            let mut part = Map::new();
            part.insert("functionCall".to_owned(), json!({"name": name, "args": arguments(function, i)?}));
            let signature = call.pointer("/extra_content/google/thought_signature").and_then(Value::as_str);
            if let Some(signature) = signature {
                part.insert("thoughtSignature".to_owned(), Value::String(signature.to_owned()));
            }
            parts.push(Value::Object(part));
        }
    } else if let Some(function) = message.get("function_call").filter(|f| f.is_object()) {
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("message {i}: a function call has no name"))?;
        parts.push(json!({"functionCall": {"name": name, "args": arguments(function, i)?}}));
    }
    Ok(parts)
}

/// The thought signature of an assistant message's text: the last
/// `reasoning.encrypted` entry of `reasoning_details` in Gemini's format
/// (entries of other formats are another provider's, which Gemini cannot
/// verify).
fn text_signature(message: &Value) -> Option<&str> {
    let details = message.get("reasoning_details")?.as_array()?;
    details
        .iter()
        .filter(|d| d.get("format").and_then(Value::as_str) == Some(SIGNATURE_FORMAT))
        .filter(|d| d.get("type").and_then(Value::as_str) == Some("reasoning.encrypted"))
        .filter_map(|d| d.get("data").and_then(Value::as_str))
        .rfind(|data| !data.is_empty())
}

/// A tool call's `arguments` (a JSON string) as the object Gemini wants.
fn arguments(function: &Value, i: usize) -> Result<Value, String> {
    let parsed = match function.get("arguments") {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(json!({})),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|e| format!("message {i}: tool call arguments are not JSON: {e}"))?,
        Some(other) => other.clone(),
    };
    match parsed {
        Value::Object(_) => Ok(parsed),
        _ => Err(format!("message {i}: tool call arguments are not a JSON object")),
    }
}

/// A tool (or legacy function) result → a function response. The function
/// name comes from the assistant message that made the call.
fn tool_result(message: &Value, earlier: &[Value], i: usize) -> Result<Value, String> {
    let id = message.get("tool_call_id").and_then(Value::as_str);
    let from_call = id.and_then(|id| {
        earlier.iter().rev().find_map(|m| {
            m.get("tool_calls")?
                .as_array()?
                .iter()
                .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?
                .pointer("/function/name")?
                .as_str()
        })
    });
    let name = from_call.or_else(|| message.get("name").and_then(Value::as_str)).ok_or_else(|| match id {
        Some(id) => format!("message {i}: no earlier assistant tool call has the id `{id}`"),
        None => format!("message {i}: a tool message needs a tool_call_id"),
    })?;
    let text = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
        }
        Some(other) => other.to_string(),
    };
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        Ok(other) if !text.trim().is_empty() => json!({ "result": other }),
        _ => json!({ "result": text }),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// `tools` (and legacy `functions`) → function declarations.
fn declarations(req: &Map<String, Value>) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut add = |function: &Value| -> Result<(), String> {
        let name = function.get("name").and_then(Value::as_str).ok_or("a tool has no function name")?;
        let mut decl = Map::new();
        decl.insert("name".to_owned(), Value::String(name.to_owned()));
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            decl.insert("description".to_owned(), Value::String(description.to_owned()));
        }
        if let Some(parameters) = schema::parameters(function.get("parameters")) {
            decl.insert("parameters".to_owned(), parameters);
        }
        out.push(Value::Object(decl));
        Ok(())
    };
    if let Some(Value::Array(tools)) = present(req, "tools") {
        for tool in tools {
            match tool.get("type").and_then(Value::as_str) {
                Some("function") | None => add(tool.get("function").unwrap_or(&Value::Null))?,
                Some(other) => return Err(format!("tools of type `{other}` are not supported")),
            }
        }
    }
    if let Some(Value::Array(functions)) = present(req, "functions") {
        for function in functions {
            add(function)?;
        }
    }
    Ok(out)
}

/// `tool_choice` (or legacy `function_call`) → function calling config.
fn tool_config(req: &Map<String, Value>) -> Result<Option<Value>, String> {
    let choice = present(req, "tool_choice").or_else(|| present(req, "function_call"));
    let config = match choice {
        None => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => json!({"mode": "NONE"}),
            "auto" => json!({"mode": "AUTO"}),
            "required" | "any" => json!({"mode": "ANY"}),
            other => return Err(format!("unknown tool_choice `{other}`")),
        },
        Some(object) => {
            let name = object
                .pointer("/function/name")
                .or_else(|| object.get("name"))
                .and_then(Value::as_str)
                .ok_or("tool_choice names no function")?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
    };
    Ok(Some(config))
}

/// Sampling parameters → `generationConfig`.
fn generation_config(req: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut config = Map::new();
    let copies = [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
    ];
    for (from, to) in copies {
        if let Some(v) = present(req, from) {
            config.insert(to.to_owned(), v.clone());
        }
    }
    if let Some(max) = present(req, "max_completion_tokens").or_else(|| present(req, "max_tokens")) {
        config.insert("maxOutputTokens".to_owned(), max.clone());
    }
    match present(req, "stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".to_owned(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            config.insert("stopSequences".to_owned(), Value::Array(list.clone()));
        }
        _ => {}
    }
    if let Some(format) = present(req, "response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                config.insert("responseMimeType".to_owned(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".to_owned(), json!("application/json"));
                if let Some(schema) = format.pointer("/json_schema/schema") {
                    config.insert("responseSchema".to_owned(), schema::sanitize(schema));
                }
            }
            Some("text") | None => {}
            Some(other) => return Err(format!("response_format `{other}` is not supported")),
        }
    }
    Ok(config)
}

/// A reasoning effort, from least to most.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Effort {
    None,
    Minimal,
    Low,
    Medium,
    High,
}

impl Effort {
    fn parse(effort: &str) -> Option<Self> {
        Some(match effort {
            "none" => Self::None,
            "minimal" => Self::Minimal,
            "low" => Self::Low,
            "medium" => Self::Medium,
            // OpenAI's newer "xhigh": Gemini has nothing above high.
            "high" | "xhigh" => Self::High,
            _ => return None,
        })
    }
}

/// How a model takes its thinking controls (Google's thinking guide,
/// <https://ai.google.dev/gemini-api/docs/thinking>).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Thinking {
    /// Gemini 2.5: a `thinkingBudget` of tokens within `min..=max`, or 0
    /// (no thinking) where `off` says the model allows it.
    Budget { min: u32, max: u32, off: bool },
    /// Gemini 3 and later: a `thinkingLevel`. Every such model takes LOW and
    /// HIGH; MINIMAL and MEDIUM only some.
    Levels { minimal: bool, medium: bool },
}

/// The thinking controls of a model, from its name; `None` for models that
/// take none (1.x, 2.0, image and speech models, tuned models, others),
/// which are then left at their default.
fn thinking_of(model: &str) -> Option<Thinking> {
    let name = model.strip_prefix("models/").unwrap_or(model);
    let rest = name.strip_prefix("gemini-")?;
    if name.contains("-image") || name.contains("-tts") {
        return None;
    }
    let variant = |v: &str| rest.contains(&format!("-{v}")) || rest.starts_with(v);
    let lite = variant("flash-lite");
    let flash = !lite && variant("flash");
    let pro = variant("pro");
    // `gemini-flash-latest` and the like: aliases of the newest Gemini 3
    // release, given the levels every current model of that kind takes.
    if rest.ends_with("-latest") && !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return (lite || flash || pro).then_some(Thinking::Levels { minimal: lite, medium: true });
    }
    let (major, minor) = version(rest)?;
    match major {
        // 2.5 Flash: up to 24576, 0 for none; 2.5 Flash-Lite: 512 to 24576,
        // 0 for none; 2.5 Pro: 128 to 32768, and thinking cannot be turned
        // off.
        2 if minor == 5 && lite => Some(Thinking::Budget { min: 512, max: 24576, off: true }),
        2 if minor == 5 && flash => Some(Thinking::Budget { min: 1, max: 24576, off: true }),
        2 if minor == 5 && pro => Some(Thinking::Budget { min: 128, max: 32768, off: false }),
        0..=2 => None,
        // Gemini 3 Pro: LOW and HIGH only; 3.1 Pro: LOW to HIGH.
        3 if minor == 0 && pro => Some(Thinking::Levels { minimal: false, medium: false }),
        // Flash-Lite and Flash up to 3.6 take MINIMAL; Flash from 3.7
        // refuses it.
        _ if lite => Some(Thinking::Levels { minimal: true, medium: true }),
        3 if flash => Some(Thinking::Levels { minimal: minor < 7, medium: true }),
        // Any other (newer Pro, a later family): the levels all take.
        _ => Some(Thinking::Levels { minimal: false, medium: true }),
    }
}

/// The version a model name starts with (`2.5-flash` → (2, 5), `3-pro` →
/// (3, 0)).
fn version(rest: &str) -> Option<(u32, u32)> {
    let number = rest.split('-').next()?;
    let (major, minor) = number.split_once('.').unwrap_or((number, "0"));
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `reasoning_effort` → `generationConfig.thinkingConfig`, or `None` (the
/// model's default) when the request gives no effort or the model takes no
/// thinking controls. Each effort goes to the nearest value the model
/// accepts: `none` to no thinking where the model can stop, else to its
/// least; a level it lacks to the next one up (MEDIUM on Gemini 3 Pro is
/// HIGH, its default); a budget into the model's range. Thought summaries
/// are asked for whenever the client asked for reasoning.
fn thinking_config(req: &Map<String, Value>, model: &str) -> Option<Value> {
    let effort = Effort::parse(present(req, "reasoning_effort")?.as_str()?)?;
    let mut config = match thinking_of(model)? {
        Thinking::Levels { minimal, medium } => {
            let level = match effort {
                Effort::None | Effort::Minimal if minimal => "MINIMAL",
                Effort::None | Effort::Minimal | Effort::Low => "LOW",
                Effort::Medium if medium => "MEDIUM",
                Effort::Medium | Effort::High => "HIGH",
            };
            json!({ "thinkingLevel": level })
        }
        Thinking::Budget { min, max, off } => {
            // Anthropic-style budgets (the core maps thinking budgets under
            // 4096 to low, under 16384 to medium) inside Gemini's ranges.
            let nominal = match effort {
                Effort::None => 0,
                Effort::Minimal => 512,
                Effort::Low => 1024,
                Effort::Medium => 8192,
                Effort::High => 24576,
            };
            let budget = if nominal == 0 && off { 0 } else { nominal.clamp(min, max) };
            json!({ "thinkingBudget": budget })
        }
    };
    if effort != Effort::None {
        config["includeThoughts"] = Value::Bool(true);
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(model: &str, request: Value) -> Value {
        serde_json::from_slice(&build(request.to_string().as_bytes(), model).unwrap().body).unwrap()
    }

    fn thinking(model: &str, effort: &str) -> Value {
        let request = json!({"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": effort});
        body(model, request)["generationConfig"]["thinkingConfig"].clone()
    }

    #[test]
    fn model_families_take_their_own_controls() {
        let levels = |minimal, medium| Some(Thinking::Levels { minimal, medium });
        let budget = |min, max, off| Some(Thinking::Budget { min, max, off });
        let cases = [
            ("gemini-2.5-pro", budget(128, 32768, false)),
            ("models/gemini-2.5-flash", budget(1, 24576, true)),
            ("gemini-2.5-flash-preview-09-2025", budget(1, 24576, true)),
            ("gemini-2.5-flash-lite", budget(512, 24576, true)),
            ("gemini-3-pro-preview", levels(false, false)),
            ("gemini-3.1-pro-preview", levels(false, true)),
            ("gemini-3-flash-preview", levels(true, true)),
            ("gemini-3.6-flash", levels(true, true)),
            ("gemini-3.7-flash", levels(false, true)),
            ("gemini-3.8-flash", levels(false, true)),
            ("gemini-3.1-flash-lite", levels(true, true)),
            ("gemini-flash-latest", levels(false, true)),
            ("gemini-flash-lite-latest", levels(true, true)),
            ("gemini-pro-latest", levels(false, true)),
            ("gemini-4-pro", levels(false, true)),
            ("gemini-2.0-flash", None),
            ("gemini-1.5-pro", None),
            ("gemini-2.5-flash-image", None),
            ("gemini-2.5-flash-preview-tts", None),
            ("gemini-3-pro-image-preview", None),
            ("gemini-exp-1206", None),
            ("gemma-3-27b-it", None),
            ("tunedModels/gemini-2.5-flash", None),
        ];
        for (model, expected) in cases {
            assert_eq!(thinking_of(model), expected, "{model}");
        }
    }

    #[test]
    fn gemini_3_efforts_go_to_the_nearest_level_the_model_takes() {
        let table = [
            // model, then none, minimal, low, medium, high
            ("gemini-3-flash-preview", ["MINIMAL", "MINIMAL", "LOW", "MEDIUM", "HIGH"]),
            ("gemini-3.8-flash", ["LOW", "LOW", "LOW", "MEDIUM", "HIGH"]),
            ("gemini-3.1-pro-preview", ["LOW", "LOW", "LOW", "MEDIUM", "HIGH"]),
            ("gemini-3-pro-preview", ["LOW", "LOW", "LOW", "HIGH", "HIGH"]),
            ("gemini-3.1-flash-lite", ["MINIMAL", "MINIMAL", "LOW", "MEDIUM", "HIGH"]),
        ];
        for (model, levels) in table {
            for (effort, level) in ["none", "minimal", "low", "medium", "high"].into_iter().zip(levels) {
                let mut expected = json!({"thinkingLevel": level});
                if effort != "none" {
                    expected["includeThoughts"] = json!(true);
                }
                assert_eq!(thinking(model, effort), expected, "{model} {effort}");
            }
        }
        assert_eq!(
            thinking("gemini-3-flash-preview", "xhigh"),
            json!({"thinkingLevel": "HIGH", "includeThoughts": true})
        );
    }

    #[test]
    fn gemini_2_5_efforts_go_to_a_budget_in_the_model_range() {
        let table = [
            // model, then none, minimal, low, medium, high
            ("gemini-2.5-flash", [0, 512, 1024, 8192, 24576]),
            // Pro cannot stop thinking: none is its least budget.
            ("gemini-2.5-pro", [128, 512, 1024, 8192, 24576]),
            ("gemini-2.5-flash-lite", [0, 512, 1024, 8192, 24576]),
        ];
        for (model, budgets) in table {
            for (effort, budget) in ["none", "minimal", "low", "medium", "high"].into_iter().zip(budgets) {
                let mut expected = json!({"thinkingBudget": budget});
                if effort != "none" {
                    expected["includeThoughts"] = json!(true);
                }
                assert_eq!(thinking(model, effort), expected, "{model} {effort}");
            }
        }
    }

    #[test]
    fn no_effort_or_no_controls_leaves_the_model_default() {
        let plain = body("gemini-3-flash-preview", json!({"messages": [{"role": "user", "content": "Hi"}]}));
        assert!(plain.get("generationConfig").is_none(), "{plain}");
        let null = json!({"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": null});
        assert!(body("gemini-2.5-flash", null).get("generationConfig").is_none());
        assert_eq!(thinking("gemini-2.0-flash", "high"), Value::Null);
        assert_eq!(thinking("gemini-2.5-flash", "extreme"), Value::Null, "an effort Gemini has no match for");
        let with_sampling = json!({"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.2,
            "reasoning_effort": "low"});
        assert_eq!(
            body("gemini-2.5-flash", with_sampling)["generationConfig"],
            json!({"temperature": 0.2, "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}})
        );
    }

    #[test]
    fn a_text_signature_goes_back_on_the_last_text_part() {
        let request = json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
             "reasoning_content": "greeting",
             "reasoning_details": [
                {"type": "reasoning.text", "text": "t", "signature": "claude-sig", "format": "anthropic-claude-v1", "index": 0},
                {"type": "reasoning.encrypted", "data": "old", "format": "google-gemini-v1", "index": 0},
                {"type": "reasoning.encrypted", "data": "c2ln", "format": "google-gemini-v1", "index": 1},
                {"type": "reasoning.encrypted", "data": "other", "index": 2}
             ],
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
                "extra_content": {"google": {"thought_signature": "call-sig"}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        ]});
        let contents = body("gemini-3-flash-preview", request)["contents"].clone();
        assert_eq!(
            contents[1]["parts"],
            json!([
                {"text": "Hello"},
                {"text": " there", "thoughtSignature": "c2ln"},
                {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "call-sig"}
            ])
        );
    }

    #[test]
    fn signatures_of_other_formats_or_without_text_are_not_sent() {
        let request = json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "reasoning_content": "plain",
             "reasoning_details": [{"type": "reasoning.encrypted", "data": "x", "format": "anthropic-claude-v1"}]},
            {"role": "user", "content": "Go"},
            {"role": "assistant", "content": null,
             "reasoning_details": [{"type": "reasoning.encrypted", "data": "y", "format": "google-gemini-v1"}],
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        ]});
        let contents = body("gemini-3-flash-preview", request)["contents"].clone();
        assert_eq!(contents[1]["parts"], json!([{"text": "Hello"}]));
        assert_eq!(
            contents[3]["parts"],
            json!([{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": SKIP_SIGNATURE}]),
            "a text signature never lands on a function call"
        );
    }
}
