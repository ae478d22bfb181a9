//! The conversation as the policies read it from a request body, no
//! further than a hook needs: a bound of its size from the body's length,
//! its opening (what a session fingerprint hashes) with the rest scanned
//! but not parsed, or the whole of it. Bodies reach here already checked
//! whole (valid JSON, no field twice, `messages` an array of objects).

use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// An upper bound of the token estimate of the conversation in a raw body:
/// every message costs at least 11 bytes of JSON (`{"role":""}`) and
/// counts 4 tokens plus a quarter of its text, whose characters each take
/// at least a byte, so half the body's bytes is never less.
pub fn tokens_at_most(raw: &[u8]) -> i64 {
    i64::try_from(raw.len() / 2 + 1).unwrap_or(i64::MAX)
}

/// The whole conversation of `raw` (empty if, against its check, it
/// cannot be read).
pub fn parse(raw: &[u8]) -> Vec<Value> {
    #[derive(Deserialize)]
    struct Body {
        messages: Vec<Value>,
    }
    serde_json::from_slice::<Body>(raw).map(|b| b.messages).unwrap_or_default()
}

/// The opening of the conversation of `raw`: its messages up to and with
/// the first user message. Reading stops there: the rest of the body is
/// not even scanned (it was checked whole when the request came in).
pub fn opening(raw: &[u8]) -> Vec<Value> {
    let mut opening = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(raw);
    // serde has no way to stop reading mid-document but an error: reading
    // stops with STOP (serde_json adds the position) once the first user
    // message is in, and STOP is not a failure.
    match de.deserialize_map(BodyOpening(&mut opening)) {
        Err(e) if !e.to_string().starts_with(STOP) => Vec::new(),
        _ => opening,
    }
}

const STOP: &str = "the opening is read";

/// A body, read up to the opening of its `messages`.
struct BodyOpening<'a>(&'a mut Vec<Value>);

impl<'de> Visitor<'de> for BodyOpening<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a request body")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "messages" {
                return map.next_value_seed(MessagesOpening(self.0));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// `messages`, read up to the first user message.
struct MessagesOpening<'a>(&'a mut Vec<Value>);

impl<'de> DeserializeSeed<'de> for MessagesOpening<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MessagesOpening<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(message) = seq.next_element::<Value>()? {
            let user = message.get("role").and_then(Value::as_str) == Some("user");
            self.0.push(message);
            if user {
                return Err(A::Error::custom(STOP));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fingerprint;

    #[test]
    fn the_opening_ends_with_the_first_user_message_and_fingerprints_as_the_whole() {
        let bodies = [
            r#"{"model":"m","messages":[{"role":"system","content":"be \"brief\""},{"role":"user","content":[{"type":"text","text":"hi\u00e9"}]},{"role":"assistant","content":"a"},{"role":"user","content":"later"}],"stream":false}"#,
            r#"{"messages":[{"role":"developer","content":"d"},{"role":"system","content":"s"},{"role":"user","content":"u"}],"model":"m"}"#,
            r#"{"model":"m","messages":[{"role":"assistant","content":"no user at all"},{"role":"tool","content":"t","tool_call_id":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"first"},{"role":"system","content":"a system prompt after it"}]}"#,
        ];
        let lengths = [2, 3, 2, 1];
        for (body, length) in bodies.iter().zip(lengths) {
            let whole = parse(body.as_bytes());
            let opening = opening(body.as_bytes());
            assert_eq!(opening.len(), length, "{body}");
            assert_eq!(opening[..], whole[..length], "{body}");
            assert_eq!(fingerprint(&opening), fingerprint(&whole), "{body}");
        }
    }

    #[test]
    fn the_bound_is_never_below_the_estimate() {
        for body in [
            r#"{"model":"m","messages":[{"role":""}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"ééééééééé"},{"role":"user","content":"a"}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]},{"role":"assistant","content":""}],"model":"m"}"#,
        ] {
            let estimate = crate::policy::prune::tokens(&parse(body.as_bytes()));
            assert!(tokens_at_most(body.as_bytes()) >= i64::try_from(estimate).unwrap_or(i64::MAX), "{body}");
        }
    }
}
