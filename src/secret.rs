//! A string that must never reach a log line, a response or a header we
//! send back to a client: upstream API keys and client bearer tokens.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret value. `Debug` and `Display` print `***`, so a config dump or a
/// log line that includes one by mistake leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send it (an upstream
    /// `Authorization` header) or compare it (client token check).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value is empty (an unset `${VAR}` expands to "").
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Secrets shorter than this are not redacted: they would blank ordinary
/// words, and real keys are long.
pub const MIN_REDACTED_LEN: usize = 8;

/// What replaces a secret in redacted text.
pub const REDACTED: &str = "***";

/// Removes a set of secrets (a provider's keys and configured header
/// values) from text that came back from an upstream or a plugin, before
/// it reaches a client, a log line or `/health`. Built once per provider;
/// each secret's searcher is prepared up front, so a pass over a body is a
/// SIMD substring search per secret.
#[derive(Clone, Default)]
pub struct Redactor {
    finders: Vec<memchr::memmem::Finder<'static>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.finders.len())
    }
}

impl Redactor {
    /// A redactor for `secrets` (values shorter than [`MIN_REDACTED_LEN`]
    /// and duplicates are left out).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<&str> =
            secrets.into_iter().map(str::trim).filter(|s| s.len() >= MIN_REDACTED_LEN).collect();
        // Longest first: a secret that contains another is replaced whole.
        values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        values.dedup();
        Self { finders: values.into_iter().map(|s| memchr::memmem::Finder::new(s.as_bytes()).into_owned()).collect() }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }

    /// Whether `bytes` hold any of the secrets.
    pub fn finds(&self, bytes: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(bytes).is_some())
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.finds(text.as_bytes()) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut bytes = text.as_bytes().to_vec();
        for finder in &self.finders {
            bytes = replace_all(&bytes, finder);
        }
        // Replacing whole UTF-8 sequences with ASCII keeps the text valid.
        std::borrow::Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A body (an answer, a stream chunk) with every secret replaced; the
    /// same buffer when it holds none.
    pub fn redact_bytes(&self, body: bytes::Bytes) -> bytes::Bytes {
        if !self.finds(&body) {
            return body;
        }
        let mut out = body.to_vec();
        for finder in &self.finders {
            out = replace_all(&out, finder);
        }
        bytes::Bytes::from(out)
    }
}

fn replace_all(haystack: &[u8], finder: &memchr::memmem::Finder<'_>) -> Vec<u8> {
    let needle = finder.needle().len();
    let mut out = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for at in finder.find_iter(haystack) {
        if at < last {
            continue;
        }
        out.extend_from_slice(&haystack[last..at]);
        out.extend_from_slice(REDACTED.as_bytes());
        last = at + needle;
    }
    out.extend_from_slice(&haystack[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("sk-very-secret-value");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "sk-very-secret-value");
    }

    #[test]
    fn redact_replaces_long_secrets_only() {
        let r = Redactor::new(["sk-very-secret-value", "a"]);
        assert_eq!(r.redact("bad key sk-very-secret-value given"), "bad key *** given");
        assert_eq!(r.redact("a plain text"), "a plain text");
    }

    #[test]
    fn redact_finds_every_occurrence_in_text_and_bytes() {
        let r = Redactor::new(["sk-0123456789", "sk-0123456789-longer", "ref-header-value"]);
        let text = "Bearer sk-0123456789-longer, again sk-0123456789sk-0123456789 ref-header-value é";
        assert_eq!(r.redact(text), "Bearer ***, again ****** *** é");
        let body = bytes::Bytes::from_static(b"{\"k\":\"sk-0123456789\"}");
        assert_eq!(&r.redact_bytes(body)[..], b"{\"k\":\"***\"}");
        let clean = bytes::Bytes::from_static(b"nothing here");
        assert_eq!(r.redact_bytes(clean.clone()).as_ptr(), clean.as_ptr(), "no copy when clean");
    }
}
