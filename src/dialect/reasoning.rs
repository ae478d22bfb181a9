//! Reasoning a target needs back on the next turn, carried through clients
//! that speak another dialect.
//!
//! Inside freeway, an assistant message (request), an answer's message or
//! a stream delta carries reasoning as plugins write it (see the WIT's
//! `build-chat`): `reasoning_content` (the text to show), `reasoning_details`
//! (OpenRouter's entries: `reasoning.text` with a `signature`,
//! `reasoning.encrypted` with `data`; `format` says who can verify it) and,
//! for Gemini's thought signatures on function calls,
//! `tool_calls[i].extra_content` (Google's own OpenAI-compatible field).
//!
//! A Messages client keeps thinking blocks and their `signature`s and sends
//! them back; a Responses client keeps reasoning items and their
//! `encrypted_content`. Those are the only fields such clients are sure to
//! hand back untouched (Claude Code and Codex rebuild `tool_use` blocks and
//! `function_call` items from their own types), so whatever the client's
//! dialect has no place for is [`Carried`], sealed into one opaque token
//! (`freeway1.` + base64url of JSON) that rides in those fields and is
//! opened when it comes back. Anthropic's own signed thinking has a place in
//! the Messages dialect (thinking and redacted_thinking blocks) and stays
//! as it is there, so that it reaches Anthropic byte for byte.
//!
//! The token is not secret (it holds what the upstream gave the client),
//! and nothing in it is trusted: it is parsed as data and each plugin takes
//! only the entries of its own format.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::DialectError;

/// `format` of the entries Anthropic signs (thinking) or encrypts
/// (redacted thinking).
pub const ANTHROPIC: &str = "anthropic-claude-v1";

/// The start of a sealed [`Carried`] token.
const PREFIX: &str = "freeway1.";

/// The largest token opened (a client could send anything): far above a
/// turn's signatures, which are a few KB.
const MAX_TOKEN: usize = 4 << 20;

/// What a turn's reasoning carries that the client's dialect has no place
/// for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried {
    /// `reasoning_details` entries.
    pub details: Vec<Value>,
    /// Tool calls' `extra_content`, by call id.
    pub calls: Vec<(String, Value)>,
}

impl Carried {
    /// Whether there is nothing to carry.
    pub fn is_empty(&self) -> bool {
        self.details.is_empty() && self.calls.is_empty()
    }

    /// Takes what `other` carries too.
    pub fn merge(&mut self, other: Carried) {
        self.details.extend(other.details);
        self.calls.extend(other.calls);
    }

    /// The opaque token.
    pub fn seal(&self) -> String {
        let calls: Map<String, Value> = self.calls.iter().cloned().collect();
        let body = json!({"d": self.details, "c": calls});
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body.to_string()))
    }

    /// `token` opened: `None` when it is not one of freeway's (an
    /// upstream's own signature), an error naming `path` when it claims to
    /// be but is damaged.
    pub fn open(token: &str, path: &str) -> Result<Option<Carried>, DialectError> {
        let Some(encoded) = token.strip_prefix(PREFIX) else { return Ok(None) };
        let damaged = || {
            DialectError::new(format!("{path}: the reasoning token freeway gave is damaged; send it back unchanged"))
        };
        if encoded.len() > MAX_TOKEN {
            return Err(damaged());
        }
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| damaged())?;
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(damaged());
        };
        let details = match body.remove("d") {
            Some(Value::Array(details)) => details.into_iter().filter(Value::is_object).collect(),
            _ => Vec::new(),
        };
        let calls = match body.remove("c") {
            Some(Value::Object(calls)) => calls.into_iter().collect(),
            _ => Vec::new(),
        };
        Ok(Some(Carried { details, calls }))
    }

    /// Puts what is carried back on an assistant message: the entries after
    /// its own `reasoning_details`, each `extra_content` on the tool call
    /// of its id. Returns the `extra_content`s whose call the message does
    /// not have (yet: a Responses turn's calls arrive one item at a time).
    #[must_use = "a call not found yet may come later"]
    pub fn apply(self, message: &mut Map<String, Value>) -> Carried {
        if !self.details.is_empty() {
            match message.get_mut("reasoning_details") {
                Some(Value::Array(existing)) => existing.extend(self.details),
                _ => {
                    message.insert("reasoning_details".into(), Value::Array(self.details));
                }
            }
        }
        let mut left = Carried::default();
        let mut tool_calls = match message.get_mut("tool_calls") {
            Some(Value::Array(tool_calls)) => Some(tool_calls),
            _ => None,
        };
        for (id, extra) in self.calls {
            let call = tool_calls
                .as_mut()
                .and_then(|calls| calls.iter_mut().find(|c| c.get("id").and_then(Value::as_str) == Some(id.as_str())));
            match call {
                Some(Value::Object(call)) => {
                    call.insert("extra_content".into(), extra);
                }
                _ => left.calls.push((id, extra)),
            }
        }
        left
    }

    /// What an answer's message carries: all its `reasoning_details` and
    /// its tool calls' `extra_content`.
    pub fn of_message(message: &Value) -> Self {
        let details = message.get("reasoning_details").and_then(Value::as_array).cloned().unwrap_or_default();
        let calls = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|call| {
                let extra = call.get("extra_content").filter(|e| !e.is_null())?;
                Some((call.get("id")?.as_str()?.to_owned(), extra.clone()))
            })
            .collect();
        Self { details, calls }
    }
}

/// Whether a `reasoning_details` entry is Anthropic's.
pub fn is_anthropic(entry: &Value) -> bool {
    entry.get("format").and_then(Value::as_str) == Some(ANTHROPIC)
}

/// An entry's `type`.
pub fn kind(entry: &Value) -> &str {
    entry.get("type").and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_token_opens_to_what_was_sealed_and_others_are_not_ours() {
        let carried = Carried {
            details: vec![json!({"type": "reasoning.encrypted", "data": "c2ln", "format": "google-gemini-v1"})],
            calls: vec![("call_1".into(), json!({"google": {"thought_signature": "abc"}}))],
        };
        let token = carried.seal();
        assert!(token.starts_with(PREFIX));
        assert_eq!(Carried::open(&token, "x").unwrap(), Some(carried));
        assert_eq!(Carried::open("EqQBCkYIBhgC", "x").unwrap(), None, "Anthropic's own signature");
        let damaged = Carried::open("freeway1.%%%", "messages[1].content[0].signature").unwrap_err();
        assert!(damaged.message.starts_with("messages[1].content[0].signature: "), "{}", damaged.message);
    }

    #[test]
    fn applied_entries_follow_the_messages_own_and_extras_find_their_calls() {
        let mut message = json!({
            "role": "assistant",
            "reasoning_details": [{"type": "reasoning.text", "text": "t", "signature": "s", "format": ANTHROPIC}],
            "tool_calls": [{"id": "a", "type": "function"}, {"id": "b", "type": "function"}],
        });
        let carried = Carried {
            details: vec![json!({"type": "reasoning.encrypted", "data": "d"})],
            calls: vec![("b".into(), json!({"google": {"thought_signature": "sb"}})), ("zz".into(), json!({}))],
        };
        let left = carried.apply(message.as_object_mut().unwrap());
        assert_eq!(left.calls, vec![("zz".to_owned(), json!({}))], "a call of a later item");
        assert!(left.details.is_empty());
        assert_eq!(message["reasoning_details"].as_array().unwrap().len(), 2);
        assert_eq!(message["reasoning_details"][1]["data"], "d");
        assert!(message["tool_calls"][0].get("extra_content").is_none());
        assert_eq!(message["tool_calls"][1]["extra_content"]["google"]["thought_signature"], "sb");
        assert_eq!(
            Carried::of_message(&message).calls,
            vec![("b".into(), json!({"google": {"thought_signature": "sb"}}))]
        );
    }
}
