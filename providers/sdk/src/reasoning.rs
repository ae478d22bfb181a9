//! Reasoning text under one name. Upstreams call it `reasoning_content`
//! (DeepSeek, Qwen), `reasoning` (OpenRouter, Groq, vLLM) or
//! `reasoning_details` (OpenRouter's structured form); freeway's chat
//! clients get `reasoning_content`, in answers and in stream deltas. The
//! other fields stay (`reasoning_details` may carry what the upstream needs
//! back on the next turn).

use serde_json::Value;

/// Whether `json` (an answer or a chunk) may hold reasoning under another
/// name: a byte search, so that the common case costs no parse.
pub fn needs_normalising(json: &[u8]) -> bool {
    // One search for both names (`"reasoning_content"` shares the prefix
    // too, so a hit is confirmed on the bytes after it); bytes, so that no
    // UTF-8 check runs over every chunk.
    const PREFIX: &[u8] = b"\"reasoning";
    let mut rest = json;
    while let Some(i) = rest.windows(PREFIX.len()).position(|w| w == PREFIX) {
        let after = &rest[i + PREFIX.len()..];
        if after.starts_with(b"\"") || after.starts_with(b"_details\"") {
            return true;
        }
        rest = after;
    }
    false
}

/// Gives each message and delta of a chat answer or chunk its reasoning as
/// `reasoning_content`; whether anything changed.
pub fn normalise(answer: &mut Value) -> bool {
    let mut changed = false;
    if let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            for part in ["message", "delta"] {
                if let Some(object) = choice.get_mut(part) {
                    changed |= normalise_one(object);
                }
            }
        }
    }
    changed
}

fn normalise_one(object: &mut Value) -> bool {
    let Some(map) = object.as_object_mut() else { return false };
    if map.get("reasoning_content").is_some_and(|v| !v.is_null()) {
        return false;
    }
    if let Some(Value::String(text)) = map.remove("reasoning") {
        map.insert("reasoning_content".to_owned(), Value::String(text));
        return true;
    }
    let text: String = map
        .get("reasoning_details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("text").or_else(|| d.get("summary")).and_then(Value::as_str))
        .collect();
    if text.is_empty() {
        return false;
    }
    map.insert("reasoning_content".to_owned(), Value::String(text));
    true
}

/// `json` with its reasoning normalised, or `None` when nothing changed.
pub fn normalised(json: &[u8]) -> Option<Vec<u8>> {
    if !needs_normalising(json) {
        return None;
    }
    let mut value: Value = serde_json::from_slice(json).ok()?;
    normalise(&mut value).then(|| serde_json::to_vec(&value).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_name_becomes_reasoning_content() {
        let answer = br#"{"choices":[{"message":{"role":"assistant","content":"4","reasoning":"2+2"}}]}"#;
        let v: Value = serde_json::from_slice(&normalised(answer).unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["reasoning_content"], "2+2");
        assert!(v["choices"][0]["message"].get("reasoning").is_none());
        let chunk = br#"{"choices":[{"delta":{"reasoning_details":[{"type":"reasoning.text","text":"hm"}]}}]}"#;
        let v: Value = serde_json::from_slice(&normalised(chunk).unwrap()).unwrap();
        assert_eq!(v["choices"][0]["delta"]["reasoning_content"], "hm");
        assert_eq!(v["choices"][0]["delta"]["reasoning_details"][0]["text"], "hm", "kept for the next turn");
    }

    #[test]
    fn answers_already_normal_are_not_parsed_or_changed() {
        assert!(!needs_normalising(br#"{"choices":[{"delta":{"reasoning_content":"x"}}]}"#));
        let both = json!({"choices": [{"message": {"reasoning_content": "a", "reasoning": "b"}}]});
        assert_eq!(normalised(both.to_string().as_bytes()), None);
    }
}
