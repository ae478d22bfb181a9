//! `GET /admin/api/policies`: the routing scripts in force, why the last
//! reload was refused (each compile error with its file and line) and when
//! the policies were last (re)loaded. `/health` says much the same, but it
//! may be closed to all but client tokens (`server.protect_health`), and
//! the dashboard holds an admin token.

use bytes::Bytes;
use http::Response;
use serde_json::json;

use crate::api::json_response;
use crate::body::ResponseBody;
use crate::gateway::Gateway;

/// `GET /admin/api/policies`.
pub fn policies(gateway: &Gateway) -> Response<ResponseBody> {
    let (settings, changed, _) = gateway.policy_settings();
    let body = json!({
        "status": gateway.proxy().policies().status(),
        "settings": settings,
        "changed": changed,
    });
    json_response(Bytes::from(body.to_string()))
}
