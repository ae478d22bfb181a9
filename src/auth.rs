//! Client authentication: bearer tokens from `server.api_keys`, compared in
//! constant time.

use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The accepted client tokens, kept as SHA-256 digests: comparing digests
/// of equal length leaks neither a token's content nor its length.
pub struct Auth {
    digests: Vec<[u8; 32]>,
}

impl Auth {
    /// From the configured tokens; empty means no authentication.
    pub fn new(tokens: &[Secret]) -> Self {
        Self { digests: tokens.iter().filter(|t| !t.is_empty()).map(|t| digest(t.expose())).collect() }
    }

    /// Tokens are required.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// True when authentication is off or the request carries a valid
    /// token in `Authorization: Bearer …` (or `x-api-key`, which some SDKs send).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.digests.is_empty() {
            return true;
        }
        let Some(token) = token(headers) else { return false };
        let presented = digest(token);
        // Compare against every token without stopping early.
        self.digests.iter().fold(0u8, |found, d| found | d.ct_eq(&presented).unwrap_u8()) == 1
    }

    /// How the request log names the client: `token-` and the first eight
    /// hex digits of its token's SHA-256 (stable across restarts, useless
    /// for recovering the token); `None` when authentication is off.
    pub fn client(&self, headers: &HeaderMap) -> Option<String> {
        if self.digests.is_empty() {
            return None;
        }
        let d = digest(token(headers)?);
        Some(format!("token-{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3]))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn checks_bearer_tokens() {
        let auth = Auth::new(&[Secret::new("token-one-0123456789"), Secret::new("token-two-0123456789")]);
        assert!(auth.allows(&with("authorization", "Bearer token-two-0123456789")));
        assert!(auth.allows(&with("authorization", "bearer token-one-0123456789")));
        assert!(auth.allows(&with("x-api-key", "token-one-0123456789")));
        assert!(!auth.allows(&with("authorization", "Bearer token-one")));
        assert!(!auth.allows(&with("authorization", "Basic token-one-0123456789")));
        assert!(!auth.allows(&HeaderMap::new()));
        assert!(Auth::new(&[]).allows(&HeaderMap::new()));
    }
}
