//! OpenAI chat-completions request → Gemini `generateContent` body.

use freeway_plugin_sdk as sdk;
use serde_json::{Map, Value, json};

use crate::schema;

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
    let generation = generation_config(&req)?;
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
