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

/// Replaces every occurrence of any of `secrets` in `text` with `***`.
/// Used on upstream error bodies before they are shown to a client or
/// logged: some providers echo the key they rejected.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        // Short values would redact ordinary words; real keys are long.
        if secret.len() >= 8 && out.contains(secret) {
            out = out.replace(secret, "***");
        }
    }
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
        let out = redact("bad key sk-very-secret-value given", &["sk-very-secret-value", "a"]);
        assert_eq!(out, "bad key *** given");
    }
}
