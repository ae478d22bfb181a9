//! Chat requests and answers: OpenAI chat completions ↔ Cohere's v2 chat.

use freeway_plugin_sdk::{self as sdk, Usage};
use serde_json::{Map, Value, json};

/// The Cohere v2 chat body for an OpenAI request, and whether it streams.
pub fn build(request: &[u8], model: &str) -> Result<(Vec<u8>, bool), String> {
    let req = sdk::request_object(request)?;
    let mut out = Map::new();
    out.insert("model".to_owned(), Value::String(model.to_owned()));

    let messages =
        req.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()).ok_or("the request has no messages")?;
    let messages = messages.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
    out.insert("messages".to_owned(), Value::Array(messages));

    if req.contains_key("functions") || req.contains_key("function_call") {
        return Err("`functions`/`function_call` are not supported by the cohere plugin; send `tools`".to_owned());
    }
    tools(&req, &mut out)?;
    parameters(&req, &mut out)?;

    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".to_owned(), Value::Bool(true));
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| e.to_string())?;
    Ok((body, stream))
}

fn message(i: usize, m: &Value) -> Result<Value, String> {
    let role = m.get("role").and_then(Value::as_str).ok_or_else(|| format!("messages[{i}] has no role"))?;
    let content = m.get("content");
    match role {
        "system" | "developer" => Ok(json!({"role": "system", "content": text_content(i, content, false)?})),
        "user" => Ok(json!({"role": "user", "content": text_content(i, content, true)?})),
        "assistant" => assistant(i, m),
        "tool" => {
            let id = m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("messages[{i}]: a tool message needs a tool_call_id"))?;
            Ok(json!({"role": "tool", "tool_call_id": id, "content": text_content(i, content, false)?}))
        }
        other => Err(format!("messages[{i}]: the role {other:?} is not supported by cohere")),
    }
}

/// A message's content: a string stays a string; parts become Cohere
/// content parts (text everywhere, images only from the user).
fn text_content(i: usize, content: Option<&Value>, images: bool) -> Result<Value, String> {
    match content {
        None | Some(Value::Null) => Ok(Value::String(String::new())),
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(Value::Array(parts)) => {
            parts.iter().map(|part| content_part(i, part, images)).collect::<Result<Vec<_>, _>>().map(Value::Array)
        }
        Some(_) => Err(format!("messages[{i}]: content must be a string or a list of parts")),
    }
}

fn content_part(i: usize, part: &Value, images: bool) -> Result<Value, String> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" | "refusal" => {
            let text = part
                .get(kind)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("messages[{i}]: a {kind} part has no {kind}"))?;
            Ok(json!({"type": "text", "text": text}))
        }
        "image_url" if images => {
            let image = part.get("image_url");
            let url = image
                .and_then(|u| u.get("url").or(Some(u)))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("messages[{i}]: an image_url part has no url"))?;
            let mut image_url = json!({"url": url});
            if let Some(detail) = image.and_then(|u| u.get("detail")).and_then(Value::as_str) {
                image_url["detail"] = Value::String(detail.to_owned());
            }
            Ok(json!({"type": "image_url", "image_url": image_url}))
        }
        other => Err(format!("messages[{i}]: content parts of type {other:?} are not supported by cohere here")),
    }
}

fn assistant(i: usize, m: &Value) -> Result<Value, String> {
    let mut out = Map::new();
    out.insert("role".to_owned(), Value::String("assistant".to_owned()));
    let calls = m.get("tool_calls").and_then(Value::as_array).filter(|c| !c.is_empty());
    if let Some(calls) = calls {
        let calls = calls
            .iter()
            .enumerate()
            .map(|(j, call)| {
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("messages[{i}].tool_calls[{j}] has no id"))?;
                let function = call.get("function");
                let name = function
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("messages[{i}].tool_calls[{j}] has no function name"))?;
                let arguments = match function.and_then(|f| f.get("arguments")) {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
            })
            .collect::<Result<Vec<_>, String>>()?;
        out.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    let content = text_content(i, m.get("content"), false)?;
    let empty = match &content {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    // With tool calls and nothing to say, Cohere takes no content at all.
    if !(empty && calls.is_some()) {
        out.insert("content".to_owned(), content);
    }
    Ok(Value::Object(out))
}

fn tools(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), String> {
    let listed = req.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty());
    let mut converted = Vec::new();
    let mut all_strict = true;
    for (j, tool) in listed.into_iter().flatten().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
        if kind != "function" {
            return Err(format!("tools[{j}]: tools of type {kind:?} are not supported by cohere"));
        }
        let function = tool.get("function").ok_or_else(|| format!("tools[{j}] has no function"))?;
        let name =
            function.get("name").and_then(Value::as_str).ok_or_else(|| format!("tools[{j}] has no function name"))?;
        let mut f = Map::new();
        f.insert("name".to_owned(), Value::String(name.to_owned()));
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            f.insert("description".to_owned(), Value::String(description.to_owned()));
        }
        let parameters = function
            .get("parameters")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        f.insert("parameters".to_owned(), parameters);
        all_strict &= function.get("strict").and_then(Value::as_bool).unwrap_or(false);
        converted.push(json!({"type": "function", "function": f}));
    }

    let choice = match req.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => None,
            "none" => Some("NONE"),
            "required" => Some("REQUIRED"),
            other => return Err(format!("tool_choice {other:?} is not supported by cohere")),
        },
        Some(Value::Object(o)) => {
            // A named function: Cohere can only force "some tool", so the
            // request offers that one tool alone and requires a call.
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str).unwrap_or("function") == "function")
                .ok_or("tool_choice must be auto, none, required or a function")?;
            converted.retain(|t| t["function"]["name"] == name);
            if converted.is_empty() {
                return Err(format!("tool_choice names the function {name:?}, which is not in tools"));
            }
            Some("REQUIRED")
        }
        Some(_) => return Err("tool_choice must be auto, none, required or a function".to_owned()),
    };

    if converted.is_empty() {
        if choice == Some("REQUIRED") {
            return Err("tool_choice is required but the request has no tools".to_owned());
        }
        return Ok(());
    }
    out.insert("tools".to_owned(), Value::Array(converted));
    if all_strict {
        out.insert("strict_tools".to_owned(), Value::Bool(true));
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".to_owned(), Value::String(choice.to_owned()));
    }
    Ok(())
}

fn parameters(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), String> {
    let get = |name: &str| req.get(name).filter(|v| !v.is_null());
    for (from, to) in [
        ("temperature", "temperature"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("top_p", "p"),
        ("top_k", "k"),
    ] {
        if let Some(v) = get(from) {
            out.insert(to.to_owned(), v.clone());
        }
    }
    if let Some(v) = get("max_completion_tokens").or_else(|| get("max_tokens")) {
        out.insert("max_tokens".to_owned(), v.clone());
    }
    match get("stop") {
        None => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".to_owned(), json!([s]));
        }
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            out.insert("stop_sequences".to_owned(), Value::Array(a.clone()));
        }
        Some(_) => return Err("stop must be a string or a list of strings".to_owned()),
    }
    if get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("cohere returns one choice: n > 1 is not supported".to_owned());
    }
    if let Some(format) = get("response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                out.insert("response_format".to_owned(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let schema = format.get("json_schema").and_then(|s| s.get("schema")).filter(|s| !s.is_null());
                let mut converted = json!({"type": "json_object"});
                if let Some(schema) = schema {
                    converted["json_schema"] = schema.clone();
                }
                out.insert("response_format".to_owned(), converted);
            }
            other => return Err(format!("response_format type {other:?} is not supported by cohere")),
        }
    }
    if let Some(effort) = get("reasoning_effort").and_then(Value::as_str) {
        let kind = if effort == "none" { "disabled" } else { "enabled" };
        out.insert("thinking".to_owned(), json!({"type": kind}));
    }
    Ok(())
}

/// A Cohere finish reason as OpenAI's; `None` for `ERROR` (the generation
/// failed: an error, not an answer).
pub fn finish_reason(raw: Option<&str>, had_tool_calls: bool) -> Option<&'static str> {
    let otherwise = if had_tool_calls { "tool_calls" } else { "stop" };
    let raw = raw.unwrap_or("").to_ascii_uppercase();
    Some(match raw.as_str() {
        "ERROR" => return None,
        "STOP_SEQUENCE" => "stop",
        "MAX_TOKENS" | "ERROR_LIMIT" | "TIMEOUT" => "length",
        "TOOL_CALL" => "tool_calls",
        "ERROR_TOXIC" => "content_filter",
        _ => otherwise,
    })
}

/// Token counts from a Cohere `usage` object: `tokens`, else `billed_units`.
pub fn usage(usage: Option<&Value>) -> Option<Usage> {
    let usage = usage?;
    ["tokens", "billed_units"].iter().find_map(|key| {
        let counts = usage.get(*key)?;
        let input = count(counts.get("input_tokens"));
        let output = count(counts.get("output_tokens"));
        (input.is_some() || output.is_some())
            .then(|| Usage { prompt_tokens: input.unwrap_or(0), completion_tokens: output.unwrap_or(0) })
    })
}

/// A token count, which Cohere's schema types as a number.
pub fn count(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.round() as u64))
}

/// The message of a Cohere error body (`{"message": ...}`), if it is one.
pub fn error_text(v: &Value) -> Option<String> {
    match v.get("message") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => v.get("error").map(sdk::error_message),
    }
}

/// A Cohere v2 chat response → an OpenAI `chat.completion`.
pub fn decode(body: &[u8], model: &str) -> Result<(Vec<u8>, Option<Usage>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let Some(message) = v.get("message").filter(|m| m.is_object()) else {
        return Err(match error_text(&v) {
            Some(e) => format!("cohere answered with an error: {e}"),
            None => "the answer is not a cohere chat response".to_owned(),
        });
    };

    let mut text = String::new();
    let mut reasoning = String::new();
    match message.get("content") {
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") | None => text.push_str(part.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("thinking") => {
                        reasoning.push_str(part.get("thinking").and_then(Value::as_str).unwrap_or(""));
                    }
                    Some(_) => {}
                }
            }
        }
        _ => {}
    }
    if let Some(plan) = message.get("tool_plan").and_then(Value::as_str).filter(|p| !p.is_empty()) {
        if !reasoning.is_empty() {
            reasoning.push('\n');
        }
        reasoning.push_str(plan);
    }

    let calls: Vec<Value> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(j, call)| {
            let function = call.get("function");
            let arguments = match function.and_then(|f| f.get("arguments")) {
                None | Some(Value::Null) => "{}".to_owned(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            json!({
                "id": call.get("id").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| format!("call_{j}")),
                "type": "function",
                "function": {
                    "name": function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or(""),
                    "arguments": arguments,
                },
            })
        })
        .collect();

    let raw_finish = v.get("finish_reason").and_then(Value::as_str);
    let Some(finish) = finish_reason(raw_finish, !calls.is_empty()) else {
        let detail = error_text(&v).map(|e| format!(": {e}")).unwrap_or_default();
        return Err(format!("cohere's generation failed (finish_reason ERROR){detail}"));
    };

    let mut out_message = Map::new();
    out_message.insert("role".to_owned(), Value::String("assistant".to_owned()));
    let content = if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) };
    out_message.insert("content".to_owned(), content);
    if !reasoning.is_empty() {
        out_message.insert("reasoning_content".to_owned(), Value::String(reasoning));
    }
    if !calls.is_empty() {
        out_message.insert("tool_calls".to_owned(), Value::Array(calls));
    }

    let usage = usage(v.get("usage"));
    let mut answer = json!({
        "id": v.get("id").and_then(Value::as_str).unwrap_or("cohere"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": out_message, "finish_reason": finish, "logprobs": null}],
    });
    if let Some(u) = usage {
        answer["usage"] = sdk::usage_json(u);
    }
    let body = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
    Ok((body, usage))
}
