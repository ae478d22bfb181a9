//! `GET /v1/models`: every routable name, built with the routing tables
//! (no upstream call).

use http::Response;

use super::json_response;
use crate::body::ResponseBody;
use crate::gateway::Gateway;

/// The model list.
pub fn list(gateway: &Gateway) -> Response<ResponseBody> {
    json_response(gateway.router().models_json())
}
