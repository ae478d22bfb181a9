//! `POST /admin/api/cooldowns/reset`: ends the cooldowns (and daily
//! exhaustion) of a provider, optionally of one model and/or one key.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use serde::Deserialize;

use crate::api::{json_response, read_body};
use crate::body::ResponseBody;
use crate::errors::ApiError;
use crate::gateway::Gateway;

/// Largest body `POST /admin/api/cooldowns/reset` reads: its JSON is three
/// short fields.
const MAX_ADMIN_BODY: u64 = 64 * 1024;

/// The body of `POST /admin/api/cooldowns/reset`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    provider: String,
    model: Option<String>,
    key: Option<String>,
}

/// `POST /admin/api/cooldowns/reset`: ends the cooldowns (and daily
/// exhaustion) of a provider, optionally of one model and/or one key.
pub async fn reset_cooldowns<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = &gateway.config().server;
    let mut claim = gateway.admission().bytes();
    let body = match read_body(request, MAX_ADMIN_BODY, server.body_read_timeout.get(), &mut claim).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    match clear(gateway, &body) {
        Ok(n) => json_response(Bytes::from(serde_json::json!({ "cleared": n }).to_string())),
        Err(e) => e.into_response(),
    }
}

fn clear(gateway: &Gateway, body: &[u8]) -> Result<usize, ApiError> {
    let asked: ResetRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            format!("expected {{\"provider\": NAME, \"model\"?: ID, \"key\"?: FINGERPRINT}}: {e}"),
            None,
        )
    })?;
    let router = gateway.router();
    if !router.providers().iter().any(|p| *p.name == *asked.provider) {
        let names: Vec<&str> = router.providers().iter().map(|p| &*p.name).collect();
        return Err(ApiError::bad_request(
            format!("unknown provider `{}`; enabled providers: {}", asked.provider, names.join(", ")),
            Some("provider"),
        ));
    }
    let fingerprint = match asked.key.as_deref() {
        None => None,
        Some(text) => Some(parse_fingerprint(text).ok_or_else(|| {
            ApiError::bad_request(
                format!("`{text}` is not a key fingerprint: 16 hex digits, as /admin/api/status shows them"),
                Some("key"),
            )
        })?),
    };
    let n = gateway.proxy().state().clear_cooldowns(&asked.provider, asked.model.as_deref(), fingerprint);
    tracing::info!(provider = %asked.provider, model = ?asked.model, cleared = n, "cooldowns reset by an operator");
    Ok(n)
}

/// 16 hex digits, nothing else.
fn parse_fingerprint(text: &str) -> Option<u64> {
    (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u64::from_str_radix(text, 16).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_exactly_sixteen_hex_digits() {
        assert_eq!(parse_fingerprint("00000000000000ff"), Some(255));
        assert_eq!(parse_fingerprint("ABCDEF0123456789"), Some(0xabcd_ef01_2345_6789));
        for bad in ["", "ff", "+00000000000000f", "00000000000000fg", "0000000000000000f"] {
            assert_eq!(parse_fingerprint(bad), None, "{bad}");
        }
    }
}
