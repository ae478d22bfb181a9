//! The parse phase: the client's request (a chat completion or embeddings),
//! read once for the few fields the gateway relies on and otherwise passed
//! on untouched.
//!
//! Only what routing needs is taken out of the body (`model`, `stream`,
//! `max_tokens`, whether there are tools); the rest is skipped without
//! building a JSON tree, so a 16 MiB request costs one scan, not a copy.
//! The conversation is parsed into values only when a policy will read it.

use std::fmt;
use std::ops::Range;

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
    /// Where `messages` lies in the body it was found in (that body's
    /// address and length, and the span): see [`ClientRequest::conversation`].
    conversation_at: Option<(usize, usize, Range<usize>)>,
    /// Its id in the request log (0: not logged).
    pub log_id: i64,
    /// The client whose budgets its answer's tokens count against.
    pub client: Option<crate::clients::Spender>,
}

/// The fields the gateway reads. Everything else is skipped without
/// building values, but checked: a number no JSON reader can hold (`1e400`)
/// is the client's mistake (400), not a plugin's refusal later (502).
#[derive(Default)]
struct Head<'a> {
    model: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    max_tokens: Option<&'a RawValue>,
    max_completion_tokens: Option<&'a RawValue>,
    tools: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
    input: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Head<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for HeadVisitor<'a> {
            type Value = Head<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head<'a>, A::Error> {
                let mut head = Head::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match &*key {
                        "model" => &mut head.model,
                        "stream" => &mut head.stream,
                        "messages" => &mut head.messages,
                        "max_tokens" => &mut head.max_tokens,
                        "max_completion_tokens" => &mut head.max_completion_tokens,
                        "tools" => &mut head.tools,
                        "stream_options" => &mut head.stream_options,
                        "input" => &mut head.input,
                        _ => {
                            map.next_value::<Checked>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::custom(format_args!("`{key}` is given twice")));
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(head)
            }
        }
        deserializer.deserialize_map(HeadVisitor(std::marker::PhantomData))
    }
}

/// Any JSON value, read and dropped without being kept, whose numbers are
/// parsed: what serde's `IgnoredAny` skips unchecked, this refuses the way
/// every JSON reader downstream (the plugins) would.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CheckedVisitor;
        impl<'de> Visitor<'de> for CheckedVisitor {
            type Value = Checked;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_key::<IgnoredAny>()?.is_some() {
                    map.next_value::<Checked>()?;
                }
                Ok(Checked)
            }
        }
        deserializer.deserialize_any(CheckedVisitor)
    }
}

/// Checks a kept field's value the way [`Checked`] checks the others.
fn check(raw: Option<&RawValue>, field: &'static str) -> Result<(), ApiError> {
    match raw {
        Some(raw) => serde_json::from_str::<Checked>(raw.get())
            .map(|_| ())
            .map_err(|e| ApiError::bad_request(format!("`{field}` is not valid JSON: {e}"), Some(field))),
        None => Ok(()),
    }
}

impl ClientRequest {
    /// Parses and checks a chat request body; `keep_messages` parses the
    /// conversation into values (for a log that keeps it). Every failure
    /// is a 400 that says which field is wrong.
    pub fn parse(bytes: Bytes, keep_messages: bool) -> Result<Self, ApiError> {
        let head = head(&bytes)?;
        let model = model(head.model)?;
        let stream = boolean(head.stream, "stream")?;
        let max_tokens = match head.max_completion_tokens.filter(|v| v.get() != "null") {
            Some(raw) => count(Some(raw), "max_completion_tokens")?,
            None => count(head.max_tokens, "max_tokens")?,
        };
        check(head.tools, "tools")?;
        check(head.stream_options, "stream_options")?;
        let has_tools = head.tools.is_some_and(|t| t.get().trim_start().starts_with('[') && t.get() != "[]");
        let wants_usage = stream
            && head.stream_options.is_some_and(|o| {
                serde_json::from_str::<StreamOptions>(o.get()).is_ok_and(|o| o.include_usage == Some(true))
            });
        let Some(messages) = head.messages.filter(|m| m.get() != "null") else {
            return Err(ApiError::bad_request("missing `messages`", Some("messages")));
        };
        let conversation_at = Some((bytes.as_ptr() as usize, bytes.len(), span_of(&bytes, messages.get().as_bytes())));
        let messages = if keep_messages {
            let values: Vec<Value> = serde_json::from_str(messages.get()).map_err(|e| messages_error(&e))?;
            for (i, m) in values.iter().enumerate() {
                check_role(i, if m.is_object() { Shape::of(m) } else { Shape::NotObject })?;
            }
            nonempty(values.len())?;
            Some(values)
        } else {
            let shapes: Vec<Shape> = serde_json::from_str(messages.get()).map_err(|e| messages_error(&e))?;
            for (i, shape) in shapes.iter().enumerate() {
                check_role(i, *shape)?;
            }
            nonempty(shapes.len())?;
            None
        };
        Ok(Self {
            operation: Operation::Chat,
            model,
            stream,
            max_tokens,
            has_tools,
            wants_usage,
            raw: bytes,
            messages,
            conversation_at,
            log_id: 0,
            client: None,
        })
    }

    /// Where the conversation (the `messages` value) lies in `raw`, while
    /// `raw` is the body it was found in: a plan copies it through without
    /// scanning it again.
    pub fn conversation(&self) -> Option<Range<usize>> {
        let (address, len, span) = self.conversation_at.as_ref()?;
        (*address == self.raw.as_ptr() as usize && *len == self.raw.len()).then(|| span.clone())
    }

    /// Parses and checks an embeddings request body.
    pub fn parse_embeddings(bytes: Bytes) -> Result<Self, ApiError> {
        let head = head(&bytes)?;
        let model = model(head.model)?;
        check(head.input, "input")?;
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
            conversation_at: None,
            log_id: 0,
            client: None,
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
        self.conversation_at = None;
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

/// The span of `part`, a slice of `whole`, within it.
fn span_of(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    start..start + part.len()
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

/// `messages` that are not an array of values any JSON reader can hold.
fn messages_error(e: &serde_json::Error) -> ApiError {
    let message = if e.is_data() && e.to_string().starts_with("invalid type") {
        "`messages` must be an array".to_owned()
    } else {
        format!("`messages` is not valid JSON: {e}")
    };
    ApiError::bad_request(message, Some("messages"))
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
                        // The last `role` counts, as in every JSON reader
                        // that keeps objects as maps (the plugins do).
                        let role = map.next_value::<&RawValue>()?;
                        shape = if role.get().starts_with('"') { Shape::WithRole } else { Shape::NoRole };
                    } else {
                        map.next_value::<Checked>()?;
                    }
                }
                Ok(shape)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
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
    fn numbers_no_reader_can_hold_are_the_clients_mistake() {
        for keep in [false, true] {
            for body in [
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e400}"#,
                r#"{"model":"m","messages":[{"role":"user","content":"x","n":[1e400]}]}"#,
                r#"{"model":"m","messages":[{"role":"user"}],"tools":[{"x":-1e999}]}"#,
                r#"{"model":"m","messages":[{"role":"user"}],"extra":{"deep":[{"x":1E+400}]}}"#,
            ] {
                let err = ClientRequest::parse(Bytes::copy_from_slice(body.as_bytes()), keep).unwrap_err();
                assert_eq!(err.classify().0, http::StatusCode::BAD_REQUEST, "{body}");
                assert!(err.message().contains("number out of range"), "{body}: {}", err.message());
            }
        }
        let embeddings = ClientRequest::parse_embeddings(Bytes::from_static(br#"{"model":"m","input":[1e400]}"#));
        assert!(embeddings.unwrap_err().message().contains("number out of range"));
    }

    #[test]
    fn the_last_of_two_roles_counts_whether_or_not_policies_read_the_conversation() {
        for keep in [false, true] {
            let err = ClientRequest::parse(
                Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","role":1}]}"#),
                keep,
            )
            .unwrap_err();
            assert!(err.message().contains("no `role`"), "{keep}: {}", err.message());
            assert!(
                ClientRequest::parse(
                    Bytes::from_static(br#"{"model":"m","messages":[{"role":1,"role":"user"}]}"#),
                    keep
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn a_field_given_twice_is_refused() {
        let e = err(r#"{"model":"a","model":"b","messages":[{"role":"user"}]}"#);
        assert!(e.contains("`model` is given twice"), "{e}");
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
