//! The client's chat-completion request: parsed once, checked for what the
//! gateway relies on, and otherwise passed on untouched.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::errors::ApiError;

/// A parsed `POST /v1/chat/completions` body.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The `model` the client asked for (a route, `provider/model` or id).
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// The whole JSON object as sent, `model` included.
    pub body: Map<String, Value>,
    /// The body's bytes as the client sent them (what plugins translate).
    pub raw: Bytes,
}

impl ChatRequest {
    /// Parses and checks a request body. Every failure is a 400 that says
    /// which field is wrong.
    pub fn parse(bytes: Bytes) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"), None))?;
        let Value::Object(body) = value else {
            return Err(ApiError::bad_request("the request body must be a JSON object", None));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_owned(),
            Some(Value::String(_)) | None => {
                return Err(ApiError::bad_request(
                    "missing `model`: name a route (chat-free), a provider/model pair or a model id",
                    Some("model"),
                ));
            }
            Some(_) => return Err(ApiError::bad_request("`model` must be a string", Some("model"))),
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::bad_request("`stream` must be true or false", Some("stream"))),
        };
        match body.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => {
                for (i, m) in messages.iter().enumerate() {
                    match m.get("role") {
                        Some(Value::String(_)) => {}
                        _ if !m.is_object() => {
                            return Err(ApiError::bad_request(
                                format!("`messages[{i}]` must be an object with `role` and `content`"),
                                Some("messages"),
                            ));
                        }
                        _ => {
                            return Err(ApiError::bad_request(
                                format!("`messages[{i}]` has no `role` (system, user, assistant or tool)"),
                                Some("messages"),
                            ));
                        }
                    }
                }
            }
            Some(Value::Array(_)) => {
                return Err(ApiError::bad_request("`messages` must not be empty", Some("messages")));
            }
            Some(_) => return Err(ApiError::bad_request("`messages` must be an array", Some("messages"))),
            None => return Err(ApiError::bad_request("missing `messages`", Some("messages"))),
        }
        Ok(Self { model, stream, body, raw: bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        ChatRequest::parse(Bytes::copy_from_slice(body.as_bytes())).unwrap_err().message()
    }

    #[test]
    fn parses_and_keeps_the_raw_body() {
        let raw = Bytes::from_static(
            br#"{"model":"chat-free","stream":true,"messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#,
        );
        let r = ChatRequest::parse(raw.clone()).unwrap();
        assert_eq!(r.model, "chat-free");
        assert!(r.stream);
        assert_eq!(r.body["temperature"], 0.2);
        assert_eq!(r.raw, raw);
    }

    #[test]
    fn says_which_field_is_wrong() {
        assert!(err("{").contains("not valid JSON"));
        assert!(err("[]").contains("JSON object"));
        assert!(err(r#"{"messages":[{"role":"user","content":"x"}]}"#).contains("missing `model`"));
        assert!(err(r#"{"model":"m"}"#).contains("missing `messages`"));
        assert!(err(r#"{"model":"m","messages":[]}"#).contains("must not be empty"));
        assert!(err(r#"{"model":"m","messages":[{"content":"x"}]}"#).contains("no `role`"));
        assert!(err(r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#).contains("`stream`"));
        assert!(err(r#"{"model":5,"messages":[{"role":"user"}]}"#).contains("must be a string"));
    }
}
