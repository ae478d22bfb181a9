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

use super::chat::accept;
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
    serve(gateway, request).await.unwrap_or_else(ApiError::into_response)
}

async fn serve<B>(gateway: &Gateway, request: Request<B>) -> Result<Response<ResponseBody>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let accepted = accept(gateway, request).await?;
    let translated = anthropic::to_chat(&accepted.body)?;
    let model = translated.model;
    let answer = accepted
        .serve(gateway, Operation::Chat, Bytes::from(translated.chat), |response| {
            translate::answer(
                response,
                |chat| anthropic::from_chat(chat, &model).map(Bytes::from),
                || Box::new(MessagesStream::new(&model)),
            )
        })
        .await;
    Ok(answer)
}

/// `{"input_tokens": N}`: an estimate, as freeway's limits count tokens.
pub async fn count_tokens<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let counted = async {
        let accepted = accept(gateway, request).await?;
        let n = anthropic::count_tokens(&accepted.body)?;
        Ok::<_, ApiError>(json_response(Bytes::from(json!({"input_tokens": n}).to_string())))
    };
    counted.await.unwrap_or_else(ApiError::into_response)
}
