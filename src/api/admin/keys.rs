//! `/admin/api/keys`: the provider keys, and changing them live.
//!
//! - `GET /admin/api/keys`: every key (environment, config, added here)
//!   by fingerprint and source, with what state knows of it, and every
//!   provider with what would enable it.
//! - `POST /admin/api/keys` `{"provider", "key"}`: the key is checked with
//!   one model listing, then stored encrypted and used at once (201).
//! - `PATCH /admin/api/keys/{provider}/{fingerprint}` `{"disabled": bool}`
//!   and `DELETE` (204): keys added here only; the others are edited where
//!   they come from (409 says where).
//! - `POST /admin/api/keys/{provider}/{fingerprint}/test`: one listing
//!   with that key, whatever its source.
//!
//! A key's text is never in an answer, a log line or an error: answers
//! name a key by its fingerprint, and the upstream's words are redacted of
//! it before they are shown. Errors are hand-made rather than serde's,
//! whose messages may quote the value they could not read.

use std::collections::HashSet;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use serde_json::{Value, json};

use super::super::{json_response, read_body};
use crate::body::ResponseBody;
use crate::catalog::provider::KeySource;
use crate::gateway::{Gateway, KeyError};
use crate::secret::{MIN_REDACTED_LEN, Secret};
use crate::state::KeyId;

/// Largest body these endpoints read: a provider name and a key.
const MAX_BODY: u64 = 16 * 1024;

/// `GET` or `POST /admin/api/keys`.
pub async fn keys<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if request.method() == Method::POST {
        return add(gateway, request).await;
    }
    json_response(Bytes::from(list(gateway).to_string()))
}

/// `PATCH` or `DELETE /admin/api/keys/{provider}/{fingerprint}`.
pub async fn key<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (provider, fingerprint) = match named(request.uri().path(), false) {
        Ok(named) => named,
        Err((status, code, message, param)) => return error(status, code, message, param),
    };
    if request.method() == Method::DELETE {
        return match gateway.remove_key(&provider, fingerprint).await {
            Ok(()) => {
                let mut r = Response::new(ResponseBody::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            Err(e) => refusal(&e),
        };
    }
    let server = &gateway.config().server;
    let mut claim = gateway.admission().bytes();
    let body = match read_body(request, MAX_BODY, server.body_read_timeout.get(), &mut claim).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let disabled = match asked.as_object() {
        Some(fields) if fields.len() == 1 => fields.get("disabled").and_then(Value::as_bool),
        _ => None,
    };
    let Some(disabled) = disabled else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected {\"disabled\": true|false}",
            Some("disabled"),
        );
    };
    match gateway.set_key_disabled(&provider, fingerprint, disabled).await {
        Ok(()) => json_response(Bytes::from(
            json!({"provider": provider, "fingerprint": hex(fingerprint), "disabled": disabled}).to_string(),
        )),
        Err(e) => refusal(&e),
    }
}

/// `POST /admin/api/keys/{provider}/{fingerprint}/test`: one listing with
/// that key.
pub async fn test(gateway: &Gateway, path: &str) -> Response<ResponseBody> {
    let (provider, fingerprint) = match named(path, true) {
        Ok(named) => named,
        Err((status, code, message, param)) => return error(status, code, message, param),
    };
    let live = gateway
        .router()
        .providers()
        .iter()
        .filter(|p| *p.name == *provider)
        .flat_map(|p| p.keys.iter())
        .find(|k| k.id.fingerprint == fingerprint)
        .and_then(|k| k.secret().map(Secret::new));
    let secret = match live {
        Some(secret) => secret,
        None => {
            match gateway.stored_keys().into_iter().find(|k| k.provider == provider && k.fingerprint == fingerprint) {
                Some(stored) => match stored.secret {
                    Some(secret) => secret,
                    None => {
                        let body =
                            json!({"ok": false, "error": "this key cannot be decrypted with the master key in use"});
                        return json_response(Bytes::from(body.to_string()));
                    }
                },
                None => return refusal(&KeyError::NotFound { provider, fingerprint }),
            }
        }
    };
    let body = match gateway.list_models_with(&provider, secret.expose()).await {
        Ok(Some(n)) => json!({"ok": true, "models": n}),
        Ok(None) => {
            json!({"ok": false, "error": format!("{provider}'s plugin cannot list models, so a key cannot be tested")})
        }
        Err(e) => json!({"ok": false, "error": e.detail}),
    };
    json_response(Bytes::from(body.to_string()))
}

/// Every key and every provider.
fn list(gateway: &Gateway) -> Value {
    let router = gateway.router();
    let state = gateway.proxy().state();
    let cooling: HashSet<KeyId> = state.cooldowns(Instant::now()).into_iter().map(|(key, ..)| key).collect();
    let stored = gateway.stored_keys();
    let names = gateway.provider_names();
    let mut keys = Vec::new();
    let mut providers = Vec::new();
    for name in &names {
        let spec = gateway.provider_spec(name).unwrap_or_default();
        let live = router.providers().iter().find(|p| *p.name == **name);
        let off = router.disabled().iter().find(|d| d.name == *name);
        providers.push(json!({
            "name": name,
            "enabled": live.is_some(),
            "key_vars": spec.key_env.clone().unwrap_or_default(),
            "signup": spec.signup,
            "missing": off.map(|d| d.missing.clone()).unwrap_or_default(),
            "switched_off": off.is_some_and(|d| d.switched_off),
        }));
        let mut shown = HashSet::new();
        for key in live.iter().flat_map(|p| p.keys.iter()).filter(|k| k.secret().is_some()) {
            let row = stored.iter().find(|s| s.provider == *name && s.fingerprint == key.id.fingerprint);
            let what = if state.is_invalid(&key.id) {
                "invalid"
            } else if cooling.contains(&key.id) {
                "cooling"
            } else {
                "ready"
            };
            let mut entry = json!({
                "provider": name,
                "fingerprint": hex(key.id.fingerprint),
                "source": key.source.label(),
                "editable": key.source == KeySource::Api,
                "disabled": false,
                "added": row.and_then(|r| rfc3339(r.added_ms)),
                "state": what,
            });
            if let KeySource::Environment(var) = &key.source {
                entry["env"] = json!(var);
            }
            keys.push(entry);
            shown.insert(key.id.fingerprint);
        }
        // Stored keys the provider does not use: turned off, unreadable,
        // or the provider is off for another reason.
        for row in stored.iter().filter(|s| s.provider == *name && !shown.contains(&s.fingerprint)) {
            let what = if row.secret.is_none() {
                "undecryptable"
            } else if row.disabled {
                "disabled"
            } else {
                "provider_disabled"
            };
            keys.push(stored_entry(row.provider.as_str(), row.fingerprint, row.disabled, row.added_ms, what));
        }
    }
    // Rows of a provider the catalog and config no longer know: shown so
    // they can be deleted.
    for row in stored.iter().filter(|s| !names.contains(&s.provider)) {
        let what = if row.secret.is_none() { "undecryptable" } else { "unknown_provider" };
        keys.push(stored_entry(row.provider.as_str(), row.fingerprint, row.disabled, row.added_ms, what));
    }
    json!({"keys": keys, "providers": providers, "stored": gateway.stores_keys()})
}

fn stored_entry(provider: &str, fingerprint: u64, disabled: bool, added_ms: i64, what: &str) -> Value {
    json!({
        "provider": provider,
        "fingerprint": hex(fingerprint),
        "source": KeySource::Api.label(),
        "editable": true,
        "disabled": disabled,
        "added": rfc3339(added_ms),
        "state": what,
    })
}

/// `POST /admin/api/keys`.
async fn add<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !gateway.stores_keys() {
        return refusal(&KeyError::NoStorage);
    }
    let server = &gateway.config().server;
    let mut claim = gateway.admission().bytes();
    let body = match read_body(request, MAX_BODY, server.body_read_timeout.get(), &mut claim).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let (provider, key) = match fields(&body) {
        Ok(asked) => asked,
        Err((message, param)) => return error(StatusCode::BAD_REQUEST, "invalid_request", &message, Some(param)),
    };
    let Some(spec) = gateway.provider_spec(&provider) else {
        let message =
            format!("unknown provider `{provider}`; known providers: {}", gateway.provider_names().join(", "));
        return error(StatusCode::BAD_REQUEST, "invalid_request", &message, Some("provider"));
    };
    if spec.enabled == Some(false) {
        let message = format!("{provider} is turned off in the config (enabled: false): turn it on there first");
        return error(StatusCode::CONFLICT, "provider_switched_off", &message, Some("provider"));
    }
    // Checked before the listing too, so a key already known costs no
    // call upstream (and again, under the lock, when it is stored).
    if gateway.has_key(&provider, crate::state::fingerprint(key.expose())) {
        return refusal(&KeyError::Duplicate(provider));
    }
    let models = match gateway.list_models_with(&provider, key.expose()).await {
        Ok(models) => models,
        Err(e) => {
            let refused =
                e.kind.strip_prefix("HTTP ").and_then(|s| s.parse::<u16>().ok()).filter(|s| matches!(s, 401 | 403));
            return match refused {
                Some(_) => {
                    tracing::info!(provider = %provider, reason = %e.detail, "a key offered through the admin API was refused by the provider");
                    let message = format!("{provider} refused this key ({}); it was not stored", e.detail);
                    error(StatusCode::BAD_REQUEST, "key_refused", &message, Some("key"))
                }
                None => {
                    tracing::warn!(provider = %provider, reason = %e.detail, "a key offered through the admin API could not be checked");
                    let message = format!(
                        "the key could not be checked with {provider} ({}); it was not stored, try again",
                        e.detail
                    );
                    error(StatusCode::BAD_GATEWAY, "key_unchecked", &message, None)
                }
            };
        }
    };
    match gateway.add_key(&provider, key).await {
        Ok(fingerprint) => {
            let body = json!({"provider": provider, "fingerprint": hex(fingerprint), "models": models});
            let mut r = json_response(Bytes::from(body.to_string()));
            *r.status_mut() = StatusCode::CREATED;
            r
        }
        Err(e) => refusal(&e),
    }
}

/// The provider and key of a `POST /admin/api/keys` body, or what is wrong
/// with it and which field (never quoting the key).
fn fields(body: &[u8]) -> Result<(String, Secret), (String, &'static str)> {
    const SHAPE: &str = "expected {\"provider\": NAME, \"key\": KEY}";
    let asked: Value = serde_json::from_slice(body).map_err(|_| (format!("the body is not JSON: {SHAPE}"), "body"))?;
    let Some(fields) = asked.as_object() else { return Err((format!("the body is not an object: {SHAPE}"), "body")) };
    if let Some(other) = fields.keys().find(|k| !matches!(k.as_str(), "provider" | "key")) {
        let other: String = other.chars().take(64).collect();
        return Err((format!("unknown field `{other}`: {SHAPE}"), "body"));
    }
    let provider = match fields.get("provider").and_then(Value::as_str).map(str::trim) {
        Some(p) if !p.is_empty() && p.len() <= 256 => p.to_owned(),
        _ => return Err((format!("`provider` must be a provider's name: {SHAPE}"), "provider")),
    };
    let key = match fields.get("key").and_then(Value::as_str).map(str::trim) {
        Some(k) if k.len() >= MIN_REDACTED_LEN && !k.chars().any(|c| c.is_whitespace() || c.is_control()) => k,
        Some(_) => {
            return Err((
                format!("`key` must be an API key: at least {MIN_REDACTED_LEN} characters, no spaces"),
                "key",
            ));
        }
        None => return Err((format!("`key` must be a string: {SHAPE}"), "key")),
    };
    Ok((provider, Secret::new(key)))
}

/// What is wrong with a path: status, code, message, field.
type BadPath = (StatusCode, &'static str, &'static str, Option<&'static str>);

/// The provider and fingerprint a path names:
/// `/admin/api/keys/{provider}/{fingerprint}[/test]`.
fn named(path: &str, test: bool) -> Result<(String, u64), BadPath> {
    let rest = path.trim_end_matches('/').strip_prefix("/admin/api/keys/").unwrap_or_default();
    let rest = if test { rest.strip_suffix("/test").unwrap_or_default() } else { rest };
    let Some((provider, fingerprint)) = rest.split_once('/').filter(|(p, f)| !p.is_empty() && !f.contains('/')) else {
        return Err((
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
            "expected /admin/api/keys/{provider}/{fingerprint}",
            None,
        ));
    };
    let Some(fingerprint) = parse_fingerprint(fingerprint) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a key is named by its fingerprint: 16 hex digits, as GET /admin/api/keys shows them",
            Some("fingerprint"),
        ));
    };
    let provider = percent_encoding::percent_decode_str(provider).decode_utf8_lossy().into_owned();
    Ok((provider, fingerprint))
}

/// 16 hex digits, nothing else.
fn parse_fingerprint(text: &str) -> Option<u64> {
    (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u64::from_str_radix(text, 16).ok())?
}

fn hex(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

/// Wall-clock milliseconds as RFC 3339.
fn rfc3339(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())
}

/// The answer to a key change that did not happen.
fn refusal(e: &KeyError) -> Response<ResponseBody> {
    let (status, code) = match e {
        KeyError::NoStorage => (StatusCode::CONFLICT, "keys_not_stored"),
        KeyError::Duplicate(_) => (StatusCode::CONFLICT, "duplicate_key"),
        KeyError::NotFound { .. } => (StatusCode::NOT_FOUND, "key_not_found"),
        KeyError::NotEditable { .. } => (StatusCode::CONFLICT, "key_not_editable"),
        KeyError::Storage(why) => {
            tracing::error!("a provider key change failed: {why}");
            (StatusCode::INTERNAL_SERVER_ERROR, "key_store_failed")
        }
    };
    error(status, code, &e.to_string(), None)
}

/// An error in OpenAI's shape with any status (the admin API's 404 and 409
/// have no [`crate::errors::ApiError`] of their own).
fn error(status: StatusCode, code: &str, message: &str, param: Option<&str>) -> Response<ResponseBody> {
    let kind = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
    let body = json!({"error": {"message": message, "type": kind, "code": code, "param": param}});
    let mut r = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_error_never_quotes_the_key() {
        for body in [
            r#"{"provider": "groq", "key": "short"}"#,
            r#"{"provider": "groq", "key": "has a space in it"}"#,
            r#"{"provider": 7, "key": "gsk-secret-value-123"}"#,
            r#"{"provider": "groq", "key": "gsk-secret-value-123", "extra": 1}"#,
        ] {
            let (message, _) = fields(body.as_bytes()).err().unwrap();
            for secret in ["short", "has a space", "gsk-secret"] {
                assert!(!message.contains(secret), "{message}");
            }
        }
        let (provider, key) = fields(br#"{"provider": "groq", "key": " gsk-secret-value-123 "}"#).unwrap();
        assert_eq!((provider.as_str(), key.expose()), ("groq", "gsk-secret-value-123"));
    }

    #[test]
    fn paths_name_a_provider_and_a_fingerprint() {
        assert_eq!(named("/admin/api/keys/groq/00000000000000ff", false).ok(), Some(("groq".to_owned(), 255)));
        assert_eq!(named("/admin/api/keys/groq/00000000000000ff/test", true).ok(), Some(("groq".to_owned(), 255)));
        for bad in ["/admin/api/keys/groq", "/admin/api/keys/groq/ff", "/admin/api/keys//00000000000000ff"] {
            assert!(named(bad, false).is_err(), "{bad}");
        }
    }
}
