//! The parse phase: the client's request (a chat completion or embeddings),
//! read once for the few fields the gateway relies on and otherwise passed
//! on untouched.
//!
//! Only what routing needs is taken out of the body (`model`, `stream`,
//! `max_tokens`, whether there are tools); the rest is skipped without
//! building a JSON tree, so a 16 MiB request costs one scan, not a copy.
//! The conversation is parsed into values only when a policy will read it.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::errors::ApiError;

/// Longest model name accepted (DESIGN.md, Bounds): no provider's id
/// comes near it, and every longer name would be a client's invention.
pub const MAX_NAME_BYTES: usize = 256;

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/embeddings`
    Embeddings,
}

/// A parsed request.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// Chat or embeddings.
    pub operation: Operation,
    /// The `model` the client asked for (a route, `provider/model` or id);
    /// policies may change it before routing.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// `max_tokens` (or `max_completion_tokens`), when given.
    pub max_tokens: Option<u64>,
    /// The request carries tools.
    pub has_tools: bool,
    /// A streamed request asked for a final usage chunk
    /// (`stream_options.include_usage`).
    pub wants_usage: bool,
    /// The body's bytes as the client sent them (what plugins translate);
    /// rewritten only when a policy changed the conversation.
    pub raw: Bytes,
    /// The conversation as values, when a policy reads it.
    pub messages: Option<Vec<Value>>,
}

/// The fields the gateway reads; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

impl ClientRequest {
    /// Parses and checks a chat request body; `keep_messages` parses the
    /// conversation into values for the policies. Every failure is a 400
    /// that says which field is wrong.
    pub fn parse(bytes: Bytes, keep_messages: bool) -> Result<Self, ApiError> {
        let head = head(&bytes)?;
        let model = model(head.model)?;
        let stream = boolean(head.stream, "stream")?;
        let max_tokens = match head.max_completion_tokens.filter(|v| v.get() != "null") {
            Some(raw) => count(Some(raw), "max_completion_tokens")?,
            None => count(head.max_tokens, "max_tokens")?,
        };
        let has_tools = head.tools.is_some_and(|t| t.get().trim_start().starts_with('[') && t.get() != "[]");
        let wants_usage = stream
            && head.stream_options.is_some_and(|o| {
                serde_json::from_str::<StreamOptions>(o.get()).is_ok_and(|o| o.include_usage == Some(true))
            });
        let Some(messages) = head.messages.filter(|m| m.get() != "null") else {
            return Err(ApiError::bad_request("missing `messages`", Some("messages")));
        };
        let messages = if keep_messages {
            let values: Vec<Value> = serde_json::from_str(messages.get())
                .map_err(|_| ApiError::bad_request("`messages` must be an array", Some("messages")))?;
            for (i, m) in values.iter().enumerate() {
                check_role(i, if m.is_object() { Shape::of(m) } else { Shape::NotObject })?;
            }
            nonempty(values.len())?;
            Some(values)
        } else {
            let shapes: Vec<Shape> = serde_json::from_str(messages.get())
                .map_err(|_| ApiError::bad_request("`messages` must be an array", Some("messages")))?;
            for (i, shape) in shapes.iter().enumerate() {
                check_role(i, *shape)?;
            }
            nonempty(shapes.len())?;
            None
        };
        Ok(Self { operation: Operation::Chat, model, stream, max_tokens, has_tools, wants_usage, raw: bytes, messages })
    }

    /// Parses and checks an embeddings request body.
    pub fn parse_embeddings(bytes: Bytes) -> Result<Self, ApiError> {
        let head = head(&bytes)?;
        let model = model(head.model)?;
        let input = head.input.map(|i| i.get().trim_start()).filter(|i| *i != "null");
        match input {
            Some(i) if i == "\"\"" || i == "[]" => {
                return Err(ApiError::bad_request("`input` must not be empty", Some("input")));
            }
            Some(i) if i.starts_with('"') || i.starts_with('[') => {}
            Some(_) => return Err(ApiError::bad_request("`input` must be a string or an array", Some("input"))),
            None => return Err(ApiError::bad_request("missing `input`", Some("input"))),
        }
        Ok(Self {
            operation: Operation::Embeddings,
            model,
            stream: false,
            max_tokens: None,
            has_tools: false,
            wants_usage: false,
            raw: bytes,
            messages: None,
        })
    }

    /// Puts a conversation a policy changed back into the body the plugins
    /// translate; every other field stays as the client sent it.
    pub fn replace_messages(&mut self, messages: &[Value]) -> Result<(), ApiError> {
        let mut body: serde_json::Map<String, Value> = serde_json::from_slice(&self.raw)
            .map_err(|e| ApiError::Internal(format!("re-reading a parsed request: {e}")))?;
        body.insert("messages".to_owned(), Value::Array(messages.to_vec()));
        let raw = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(format!("writing a request: {e}")))?;
        self.raw = Bytes::from(raw);
        Ok(())
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

fn head(bytes: &[u8]) -> Result<Head<'_>, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::bad_request("the request body must be a JSON object", None));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() { "has a field of the wrong type or a field twice" } else { "is not valid JSON" };
        ApiError::bad_request(format!("the request body {what}: {e}"), None)
    })
}

fn model(raw: Option<&RawValue>) -> Result<String, ApiError> {
    let missing = || {
        ApiError::bad_request(
            "missing `model`: name a route (chat-free), a provider/model pair or a model id",
            Some("model"),
        )
    };
    let Some(raw) = raw.filter(|r| r.get() != "null") else { return Err(missing()) };
    let text: String = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::bad_request("`model` must be a string", Some("model")))?;
    let name = text.trim();
    if name.is_empty() {
        return Err(missing());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::bad_request(
            format!("`model` is {} bytes long; names are at most {MAX_NAME_BYTES} bytes", name.len()),
            Some("model"),
        ));
    }
    Ok(name.to_owned())
}

fn boolean(raw: Option<&RawValue>, field: &'static str) -> Result<bool, ApiError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(ApiError::bad_request(format!("`{field}` must be true or false"), Some(field))),
    }
}

fn count(raw: Option<&RawValue>, field: &'static str) -> Result<Option<u64>, ApiError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) => match serde_json::from_str::<u64>(text) {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(ApiError::bad_request(format!("`{field}` must be a positive integer"), Some(field))),
        },
    }
}

fn nonempty(n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::bad_request("`messages` must not be empty", Some("messages")));
    }
    Ok(())
}

fn check_role(i: usize, shape: Shape) -> Result<(), ApiError> {
    match shape {
        Shape::WithRole => Ok(()),
        Shape::NotObject => Err(ApiError::bad_request(
            format!("`messages[{i}]` must be an object with `role` and `content`"),
            Some("messages"),
        )),
        Shape::NoRole => Err(ApiError::bad_request(
            format!("`messages[{i}]` has no `role` (system, user, assistant or tool)"),
            Some("messages"),
        )),
    }
}

/// What the gateway checks of one message, read without keeping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// An object with a string `role`.
    WithRole,
    /// An object without one.
    NoRole,
    /// Not an object.
    NotObject,
}

impl Shape {
    fn of(value: &Value) -> Self {
        if value.get("role").is_some_and(Value::is_string) { Self::WithRole } else { Self::NoRole }
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = Shape;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let mut shape = Shape::NoRole;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "role" {
                        let role = map.next_value::<&RawValue>()?;
                        if role.get().starts_with('"') {
                            shape = Shape::WithRole;
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(shape)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shape::NotObject)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::NotObject)
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::NotObject)
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::NotObject)
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::NotObject)
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::NotObject)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
                Ok(Shape::NotObject)
            }
        }
        deserializer.deserialize_any(ShapeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        ClientRequest::parse(Bytes::copy_from_slice(body.as_bytes()), false).unwrap_err().message()
    }

    #[test]
    fn parses_and_keeps_the_raw_body() {
        let raw = Bytes::from_static(
            br#"{"model":"chat-free","stream":true,"messages":[{"role":"user","content":"hi"}],"temperature":0.2,"max_tokens":64,"tools":[{"type":"function"}],"stream_options":{"include_usage":true}}"#,
        );
        for keep in [false, true] {
            let r = ClientRequest::parse(raw.clone(), keep).unwrap();
            assert_eq!(r.model, "chat-free");
            assert!(r.stream && r.has_tools && r.wants_usage);
            assert_eq!(r.max_tokens, Some(64));
            assert_eq!(r.raw, raw);
            assert_eq!(r.messages.is_some(), keep);
        }
    }

    #[test]
    fn says_which_field_is_wrong() {
        for keep in [false, true] {
            let err =
                |body: &str| ClientRequest::parse(Bytes::copy_from_slice(body.as_bytes()), keep).unwrap_err().message();
            assert!(err("{").contains("not valid JSON"));
            assert!(err("[]").contains("JSON object"));
            assert!(err(r#"{"messages":[{"role":"user","content":"x"}]}"#).contains("missing `model`"));
            assert!(err(r#"{"model":"m"}"#).contains("missing `messages`"));
            assert!(err(r#"{"model":"m","messages":[]}"#).contains("must not be empty"));
            assert!(err(r#"{"model":"m","messages":{}}"#).contains("must be an array"));
            assert!(err(r#"{"model":"m","messages":[{"content":"x"}]}"#).contains("no `role`"));
            assert!(err(r#"{"model":"m","messages":[{"role":1}]}"#).contains("no `role`"));
            assert!(err(r#"{"model":"m","messages":["hi"]}"#).contains("must be an object"));
            assert!(err(r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#).contains("`stream`"));
            assert!(err(r#"{"model":5,"messages":[{"role":"user"}]}"#).contains("must be a string"));
            assert!(err(r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#).contains("`max_tokens`"));
        }
    }

    #[test]
    fn model_names_are_bounded() {
        let long = format!("p/{}", "x".repeat(MAX_NAME_BYTES));
        let message = err(&format!(r#"{{"model":"{long}","messages":[{{"role":"user"}}]}}"#));
        assert!(message.contains("at most 256 bytes"), "{message}");
        let fits = format!("p/{}", "x".repeat(MAX_NAME_BYTES - 2));
        assert!(
            ClientRequest::parse(Bytes::from(format!(r#"{{"model":"{fits}","messages":[{{"role":"user"}}]}}"#)), false)
                .is_ok()
        );
    }

    #[test]
    fn a_changed_conversation_is_written_back_with_everything_else_kept() {
        let raw = Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"a"}],"seed":7}"#);
        let mut r = ClientRequest::parse(raw, true).unwrap();
        r.replace_messages(&[serde_json::json!({"role": "user", "content": "b"})]).unwrap();
        let body: Value = serde_json::from_slice(&r.raw).unwrap();
        assert_eq!(body["messages"][0]["content"], "b");
        assert_eq!(body["seed"], 7);
    }
}
