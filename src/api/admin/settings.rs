//! `GET /admin/api/settings` and `PUT /admin/api/settings`: the policy
//! settings in force (`policies.settings`, with the changes made here laid
//! over it) and changing them live — validated, kept beside the state
//! database, applied like a policy reload (`policy::settings`).

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use serde_json::{Value, json};

use super::super::{json_response, read_body};
use crate::body::ResponseBody;
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::policy::settings::MAX_BODY;

/// `GET` or `PUT /admin/api/settings`.
pub async fn settings<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if request.method() == Method::PUT
        && let Err(e) = change(gateway, request).await
    {
        return e.into_response();
    }
    let (settings, changed, file) = gateway.policy_settings();
    let body = json!({
        "settings": settings,
        "changed": changed,
        "kept_in": file.map(|f| f.display().to_string()),
    });
    json_response(Bytes::from(body.to_string()))
}

async fn change<B>(gateway: &Gateway, request: Request<B>) -> Result<(), ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = &gateway.config().server;
    let mut claim = gateway.admission().bytes();
    let body = read_body(request, MAX_BODY, server.body_read_timeout.get(), &mut claim).await?;
    let change: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}"), None))?;
    gateway.change_policy_settings(&change).map_err(|(clients, message)| {
        if clients {
            ApiError::bad_request(message, None)
        } else {
            tracing::warn!(problem = %message, "policy settings not changed");
            ApiError::Unavailable { message: format!("nothing changed: {message}") }
        }
    })
}
