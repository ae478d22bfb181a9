//! Client authentication: bearer tokens from `server.api_keys`, compared in
//! constant time, and which client each names.

use std::sync::Arc;

use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::clients::Client;
use crate::config::ApiKey;
use crate::secret::Secret;

/// The accepted client tokens, kept as SHA-256 digests (the tokens
/// themselves are not kept): comparing digests of equal length leaks
/// neither a token's content nor its length.
pub struct Auth {
    digests: Vec<[u8; 32]>,
    /// The client each digest names, in the same order: its config entry's
    /// for the object form, one shared [`Client::plain`] for bare tokens.
    clients: Vec<Arc<Client>>,
    /// Whether the client at the same index is named (object form).
    named: Vec<bool>,
}

/// Who sent a request: how the request log names it and its budgets.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The request log's client: a named client's name, or `token-` and
    /// eight hex digits of a bare token's SHA-256.
    pub label: String,
    /// Its budgets and metrics label.
    pub client: Arc<Client>,
}

impl Auth {
    /// From bare tokens (admin tokens); empty means no authentication.
    pub fn new(tokens: &[Secret]) -> Self {
        let digests: Vec<[u8; 32]> = tokens.iter().filter(|t| !t.is_empty()).map(|t| digest(t.expose())).collect();
        let plain = Arc::new(Client::plain());
        Self { clients: vec![plain; digests.len()], named: vec![false; digests.len()], digests }
    }

    /// From `server.api_keys`: bare tokens and named clients.
    pub fn with_clients(keys: &[ApiKey]) -> Self {
        let plain = Arc::new(Client::plain());
        let mut auth = Self { digests: Vec::new(), clients: Vec::new(), named: Vec::new() };
        for key in keys.iter().filter(|k| !k.token().trim().is_empty()) {
            auth.digests.push(digest(key.token()));
            match key.client() {
                Some(c) => {
                    auth.clients.push(Arc::new(Client::from_config(c)));
                    auth.named.push(true);
                }
                None => {
                    auth.clients.push(plain.clone());
                    auth.named.push(false);
                }
            }
        }
        auth
    }

    /// Who sent the request: `None` when authentication is off or its
    /// token is unknown. Every digest is compared, without stopping early.
    pub fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let presented = digest(token(headers)?);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, d) in self.digests.iter().enumerate() {
            let equal = d.ct_eq(&presented);
            index.conditional_assign(&(i as u64), equal);
            found |= equal;
        }
        if !bool::from(found) {
            return None;
        }
        let index = usize::try_from(index).ok()?;
        let client = self.clients.get(index)?.clone();
        let label =
            if self.named.get(index).copied().unwrap_or(false) { client.name().to_string() } else { label(&presented) };
        Some(Caller { label, client })
    }

    /// Tokens are required.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// True when authentication is off or the request carries a valid
    /// token in `Authorization: Bearer …` (or `x-api-key`, which some SDKs send).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        // The same constant-time search as for a caller.
        self.digests.is_empty() || self.caller(headers).is_some()
    }
}

/// A bare token's name in the request log.
fn label(d: &[u8; 32]) -> String {
    format!("token-{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
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

    #[test]
    fn names_the_caller() {
        let yaml = "- bare-token-0123456789\n- {name: team-a, token: team-a-token-0123456789, rpd: 5}\n";
        let keys: Vec<ApiKey> = serde_yaml::from_str(yaml).unwrap();
        let auth = Auth::with_clients(&keys);
        let a = auth.caller(&with("authorization", "Bearer team-a-token-0123456789")).unwrap();
        assert_eq!((a.label.as_str(), &*a.client.name().clone()), ("team-a", "team-a"));
        let bare = auth.caller(&with("x-api-key", "bare-token-0123456789")).unwrap();
        assert!(bare.label.starts_with("token-") && &**bare.client.name() == "default", "{bare:?}");
        assert!(auth.caller(&with("x-api-key", "nope")).is_none());
        assert!(auth.allows(&with("x-api-key", "team-a-token-0123456789")));
    }
}
