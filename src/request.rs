//! The client's request (a chat completion or embeddings): parsed once,
//! checked for what the gateway relies on, and otherwise passed on untouched.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::errors::ApiError;

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/embeddings`
    Embeddings,
}

/// A parsed request body.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// Chat or embeddings.
    pub operation: Operation,
    /// The `model` the client asked for (a route, `provider/model` or id).
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// The whole JSON object as sent, `model` included.
    pub body: Map<String, Value>,
    /// The body's bytes as the client sent them (what plugins translate).
    pub raw: Bytes,
}

impl ClientRequest {
    /// Parses and checks a chat request body. Every failure is a 400 that
    /// says which field is wrong.
    pub fn parse(bytes: Bytes) -> Result<Self, ApiError> {
        let body = object(&bytes)?;
        let model = model(&body)?;
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
        Ok(Self { operation: Operation::Chat, model, stream, body, raw: bytes })
    }

    /// Parses and checks an embeddings request body.
    pub fn parse_embeddings(bytes: Bytes) -> Result<Self, ApiError> {
        let body = object(&bytes)?;
        let model = model(&body)?;
        match body.get("input") {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::Array(items)) if !items.is_empty() => {}
            Some(Value::String(_) | Value::Array(_)) => {
                return Err(ApiError::bad_request("`input` must not be empty", Some("input")));
            }
            Some(_) => {
                return Err(ApiError::bad_request("`input` must be a string or an array", Some("input")));
            }
            None => return Err(ApiError::bad_request("missing `input`", Some("input"))),
        }
        Ok(Self { operation: Operation::Embeddings, model, stream: false, body, raw: bytes })
    }
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"), None))?;
    match value {
        Value::Object(body) => Ok(body),
        _ => Err(ApiError::bad_request("the request body must be a JSON object", None)),
    }
}

fn model(body: &Map<String, Value>) -> Result<String, ApiError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(m.trim().to_owned()),
        Some(Value::String(_)) | None => Err(ApiError::bad_request(
            "missing `model`: name a route (chat-free), a provider/model pair or a model id",
            Some("model"),
        )),
        Some(_) => Err(ApiError::bad_request("`model` must be a string", Some("model"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        ClientRequest::parse(Bytes::copy_from_slice(body.as_bytes())).unwrap_err().message()
    }

    #[test]
    fn parses_and_keeps_the_raw_body() {
        let raw = Bytes::from_static(
            br#"{"model":"chat-free","stream":true,"messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#,
        );
        let r = ClientRequest::parse(raw.clone()).unwrap();
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
