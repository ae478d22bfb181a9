//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: the Anthropic
//! Messages API (Claude Code, the Anthropic SDKs). The request is
//! translated into a chat completion and served like one (policies,
//! routing, limits, fallback, plugins); the answer and its stream are
//! translated back, echoing the model name the client asked for. Errors
//! take Anthropic's shape in [`super::handle`].

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use serde_json::json;

use super::chat::{Accepted, accept};
use super::{json_response, translate};
use crate::body::ResponseBody;
use crate::dialect::anthropic::{self, MessagesStream};
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::proxy::Operation;

/// A message, whole or streamed.
pub async fn messages<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Accepted { body, session, client, in_flight, claim } = match accept(gateway, request).await {
        Ok(accepted) => accepted,
        Err(e) => return e.into_response(),
    };
    let translated = match anthropic::to_chat(&body) {
        Ok(translated) => translated,
        Err(e) => return ApiError::bad_request(e.message, None).into_response(),
    };
    drop(body);
    let response = gateway.proxy().serve(Operation::Chat, Bytes::from(translated.chat), session, client).await;
    drop(claim);
    let model = translated.model;
    let mut response = translate::answer(
        response,
        |chat| anthropic::from_chat(chat, &model).map(Bytes::from),
        || Box::new(MessagesStream::new(&model)),
    );
    response.body_mut().hold(in_flight);
    response
}

/// `{"input_tokens": N}`: an estimate, as freeway's limits count tokens.
pub async fn count_tokens<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let accepted = match accept(gateway, request).await {
        Ok(accepted) => accepted,
        Err(e) => return e.into_response(),
    };
    match anthropic::count_tokens(&accepted.body) {
        Ok(n) => json_response(Bytes::from(json!({"input_tokens": n}).to_string())),
        Err(e) => ApiError::bad_request(e.message, None).into_response(),
    }
}
