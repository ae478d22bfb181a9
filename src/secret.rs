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

/// How much of a secret's start or end, found in a text, marks the secret:
/// a key cut short ("Bearer sk-abc…" at the end of a 200-character
/// summary) is redacted as surely as a whole one.
pub const PARTIAL_LEN: usize = 12;

/// Removes a set of secrets (a provider's keys and configured header
/// values) from text that came back from an upstream or a plugin, before
/// it reaches a client, a log line or `/health`. A secret is found whole,
/// and also cut short: whatever run of text begins with its first
/// [`PARTIAL_LEN`] bytes or ends with its last ones, as far as it matches
/// the secret, is replaced. Built once per provider; the searchers are
/// prepared up front, so a pass over a body is two SIMD substring searches
/// per secret.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Shared: every stream's relay holds the provider's redactor.
    secrets: std::sync::Arc<[Needle]>,
}

struct Needle {
    secret: Vec<u8>,
    head: memchr::memmem::Finder<'static>,
    tail: memchr::memmem::Finder<'static>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// A redactor for `secrets` (values shorter than [`MIN_REDACTED_LEN`]
    /// and duplicates are left out).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<&str> =
            secrets.into_iter().map(str::trim).filter(|s| s.len() >= MIN_REDACTED_LEN).collect();
        values.sort_unstable();
        values.dedup();
        let secrets = values
            .into_iter()
            .map(|s| {
                let bytes = s.as_bytes();
                let n = bytes.len().min(PARTIAL_LEN);
                Needle {
                    secret: bytes.to_vec(),
                    head: memchr::memmem::Finder::new(&bytes[..n]).into_owned(),
                    tail: memchr::memmem::Finder::new(&bytes[bytes.len() - n..]).into_owned(),
                }
            })
            .collect();
        Self { secrets }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Whether `bytes` hold any of the secrets, or a start or end of one.
    pub fn finds(&self, bytes: &[u8]) -> bool {
        self.secrets.iter().any(|n| n.head.find(bytes).is_some() || n.tail.find(bytes).is_some())
    }

    /// Whether `bytes` hold the start of any secret.
    fn finds_head(&self, bytes: &[u8]) -> bool {
        self.secrets.iter().any(|n| n.head.find(bytes).is_some())
    }

    /// The byte ranges of `haystack` that are (parts of) secrets, sorted and
    /// merged.
    fn ranges(&self, haystack: &[u8]) -> Vec<(usize, usize)> {
        let mut ranges = Vec::new();
        for needle in self.secrets.iter() {
            let secret = &needle.secret[..];
            let n = secret.len().min(PARTIAL_LEN);
            for at in needle.head.find_iter(haystack) {
                // As far as the text goes on matching the secret.
                let len = haystack[at..].iter().zip(secret).take_while(|(a, b)| a == b).count();
                ranges.push((at, at + len));
            }
            for at in needle.tail.find_iter(haystack) {
                let end = at + n;
                // Back from the end, as far as the text matches the secret's end.
                let len = haystack[..end].iter().rev().zip(secret.iter().rev()).take_while(|(a, b)| a == b).count();
                ranges.push((end - len, end));
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// `text` with every secret, whole or cut short, replaced by `***`.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.finds(text.as_bytes()) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (start, end) in self.ranges(text.as_bytes()) {
            // Whole characters only: a secret cut inside a multi-byte
            // character takes the whole character with it.
            let start = (0..=start).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            if start < last {
                continue;
            }
            out.push_str(&text[last..start]);
            out.push_str(REDACTED);
            last = end;
        }
        out.push_str(&text[last..]);
        std::borrow::Cow::Owned(out)
    }

    /// An answer or a stream chunk, as the upstream sent it, with every
    /// secret replaced; the same buffer when it holds none. What an
    /// upstream sends whole is not cut by anyone: a secret in it has its
    /// start in it, so one search per secret tells whether there is
    /// anything to do (this runs on every chunk of every stream).
    pub fn redact_answer(&self, body: bytes::Bytes) -> bytes::Bytes {
        if !self.finds_head(&body) {
            return body;
        }
        self.redact_bytes(body)
    }

    /// Bytes with every secret, whole or cut short, replaced; the same
    /// buffer when they hold none.
    pub fn redact_bytes(&self, body: bytes::Bytes) -> bytes::Bytes {
        if !self.finds(&body) {
            return body;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut last = 0;
        for (start, end) in self.ranges(&body) {
            out.extend_from_slice(&body[last..start]);
            out.extend_from_slice(REDACTED.as_bytes());
            last = end;
        }
        out.extend_from_slice(&body[last..]);
        bytes::Bytes::from(out)
    }
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
    fn a_secret_cut_short_is_redacted_too() {
        let key = "sk-soak-MRD0mzszVMHZsuHTV84BrExUUXlobNbe8ttLx";
        let r = Redactor::new([key]);
        // Cut by a summary's length limit.
        let cut = format!("the request carried authorization: Bearer {}…", &key[..30]);
        assert_eq!(r.redact(&cut), "the request carried authorization: Bearer ***…");
        // Starting in the middle.
        assert_eq!(r.redact(&format!("…{} was sent", &key[20..])), "…*** was sent");
        assert_eq!(&r.redact_bytes(bytes::Bytes::from(cut.clone()))[..], r.redact(&cut).as_bytes());
        // Too little of it to tell: left alone.
        assert_eq!(r.redact(&format!("x {}", &key[..8])), format!("x {}", &key[..8]));
    }

    #[test]
    fn redact_finds_every_occurrence_in_text_and_bytes() {
        let r = Redactor::new(["sk-0123456789", "sk-0123456789-longer", "ref-header-value"]);
        let text = "Bearer sk-0123456789-longer, again sk-0123456789sk-0123456789 ref-header-value é";
        assert_eq!(r.redact(text), "Bearer ***, again *** *** é", "adjacent secrets are one redaction");
        let body = bytes::Bytes::from_static(b"{\"k\":\"sk-0123456789\"}");
        assert_eq!(&r.redact_bytes(body)[..], b"{\"k\":\"***\"}");
        let clean = bytes::Bytes::from_static(b"nothing here");
        assert_eq!(r.redact_bytes(clean.clone()).as_ptr(), clean.as_ptr(), "no copy when clean");
    }
}
