//! The conversation as the policies read it from a request body, no
//! further than a hook needs: a bound of its size from the body's length,
//! its opening (what a session fingerprint hashes) with the rest not even
//! scanned, or the whole of it. Bodies reach here already checked
//! whole (valid JSON, no field twice, `messages` an array of objects).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::request::Fingerprinter;

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

/// The session fingerprint of the conversation of `raw`, read from its
/// opening: the messages up to and with the first user message. Reading
/// stops there: the rest of the body is not even scanned (it was checked
/// whole when the request came in), and the opening's texts are hashed as
/// they are read, borrowed from the body unless they hold escapes.
pub fn fingerprint(raw: &[u8]) -> String {
    let mut fingerprint = Fingerprinter::default();
    let mut de = serde_json::Deserializer::from_slice(raw);
    // serde has no way to stop reading mid-document but an error: reading
    // stops with an error once the first user message is in, and that
    // error is not a failure.
    match de.deserialize_map(BodyOpening(&mut fingerprint)) {
        Err(_) if !fingerprint.is_complete() => Fingerprinter::default().finish(),
        _ => fingerprint.finish(),
    }
}

/// A body, read up to the opening of its `messages`.
struct BodyOpening<'a>(&'a mut Fingerprinter);

impl<'de> Visitor<'de> for BodyOpening<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a request body")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "messages" {
                return map.next_value_seed(MessagesOpening(self.0));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// `messages`, read up to the first user message.
struct MessagesOpening<'a>(&'a mut Fingerprinter);

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
        while let Some(Message { role, text }) = seq.next_element::<Message<'de>>()? {
            if self.0.add(role.as_deref(), &text) {
                return Err(A::Error::custom("the opening is read"));
            }
        }
        Ok(())
    }
}

/// A message as a fingerprint reads it: its role, if a string, and its
/// text as [`super::prune::text_of`] makes it.
struct Message<'de> {
    role: Option<Cow<'de, str>>,
    text: Cow<'de, str>,
}

impl<'de> Deserialize<'de> for Message<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Message<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
                let mut message = Message { role: None, text: Cow::Borrowed("") };
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "role" => message.role = map.next_value::<Text<'de>>()?.0,
                        "content" => message.text = map.next_value::<Content<'de>>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(message)
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The scalar `visit_*` methods of a visitor that reads every scalar other
/// than a string as `$value`.
macro_rules! scalars_are {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// Content's text: a string as it is, the `text` of each part of an
/// array joined by newlines, anything else none.
struct Content<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Content<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Parts;
        impl<'de> Visitor<'de> for Parts {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("message content")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Content<'de>, E> {
                Ok(Content(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Content<'de>, E> {
                Ok(Content(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content<'de>, A::Error> {
                let mut texts = Vec::new();
                while let Some(Part(text)) = seq.next_element::<Part<'de>>()? {
                    texts.extend(text);
                }
                Ok(Content(if texts.len() == 1 { texts.swap_remove(0) } else { Cow::Owned(texts.join("\n")) }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Content<'de>, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Content(Cow::Borrowed("")))
            }
            scalars_are!(Content(Cow::Borrowed("")));
        }
        d.deserialize_any(Parts)
    }
}

/// A content part's `text`, if it is an object with a string there.
struct Part<'de>(Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for Part<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Part<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a content part")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part<'de>, A::Error> {
                let mut text = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "text" {
                        text = map.next_value::<Text<'de>>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Part(text))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Part<'de>, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Part(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Part<'de>, E> {
                Ok(Part(None))
            }
            scalars_are!(Part(None));
        }
        d.deserialize_any(Fields)
    }
}

/// A string, or none for any other value.
struct Text<'de>(Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'de>, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'de>, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Text(None))
            }
            scalars_are!(Text(None));
        }
        d.deserialize_any(Str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fingerprint;

    #[test]
    fn the_opening_fingerprints_as_the_whole_and_is_read_no_further() {
        // Each body with how much of it is the opening (where reading stops).
        let bodies = [
            (
                r#"{"model":"m","messages":[{"role":"system","content":"be \"brief\""},{"role":"user","content":[{"type":"text","text":"hi\u00e9"},{"type":"image_url","image_url":{"url":"x"}},{"text":7},"odd",{"type":"text","text":"two"}]},"#,
                r#"{"role":"assistant","content":"a"},{"role":"user","content":"later"}],"stream":false}"#,
            ),
            (
                r#"{"messages":[{"role":"developer","content":"d"},{"content":"s","role":"system"},{"role":"tool","content":{"x":1}},{"role":7,"content":"not a role"},{"role":"user","content":"u"},"#,
                r#"{"role":"user","content":"u2"}],"model":"m"}"#,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"first"},"#,
                r#"{"role":"system","content":"after it"}]}"#,
            ),
            (
                r#"{"model":"m","messages":[{"role":"system","content":null},{"role":"user","content":[]},"#,
                r#"{"role":"user"}]}"#,
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (opening, rest) in bodies {
            let body = format!("{opening}{rest}");
            let whole = parse(body.as_bytes());
            assert!(whole.len() > 1, "{body}");
            assert_eq!(super::fingerprint(body.as_bytes()), fingerprint(&whole), "{body}");
            // What follows the first user message is never read.
            let cut = format!("{opening}{{{{ not json");
            assert_eq!(super::fingerprint(cut.as_bytes()), fingerprint(&whole), "{cut}");
            assert!(seen.insert(fingerprint(&whole)), "two openings share a fingerprint: {body}");
        }
        // Without a user message, the system messages; without messages, nothing.
        let no_user =
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"assistant","content":"a"}]}"#;
        assert_eq!(super::fingerprint(no_user.as_bytes()), fingerprint(&parse(no_user.as_bytes())));
        assert!(seen.insert(super::fingerprint(no_user.as_bytes())));
        assert_eq!(super::fingerprint(b"{\"model\":\"m\"}"), fingerprint(&[]));
        // A body broken before its opening is complete fingerprints as none.
        assert_eq!(super::fingerprint(br#"{"messages":[{"role":"system","content":"s"},{"#), fingerprint(&[]));
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
