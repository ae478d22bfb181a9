//! `GET /health`: liveness, which providers are on (and what would turn
//! the others on), discovery's last refresh and the policies in force.
//! Nothing in it is text an upstream sent.

use bytes::Bytes;
use http::Response;
use serde_json::json;

use super::json_response;
use crate::body::ResponseBody;
use crate::gateway::Gateway;

/// The health answer.
pub fn health(gateway: &Gateway) -> Response<ResponseBody> {
    json_response(health_json(gateway))
}

/// The `/health` body.
pub fn health_json(gateway: &Gateway) -> Bytes {
    let router = gateway.router();
    let enabled: Vec<&str> = router.providers().iter().map(|p| &*p.name).collect();
    let disabled: Vec<serde_json::Value> = router
        .disabled()
        .iter()
        .map(|d| json!({"name": d.name, "set": d.what_to_set(), "switched_off": d.switched_off}))
        .collect();
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "providers": {"enabled": enabled, "disabled": disabled},
        "discovery": gateway.discovery().status(),
        "policies": gateway.proxy().policies().status(),
        "state": gateway.proxy().state().health(),
    });
    if enabled.is_empty() {
        body["hint"] = json!(router.no_provider_message());
    }
    Bytes::from(body.to_string())
}
