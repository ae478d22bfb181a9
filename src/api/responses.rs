//! `POST /v1/responses`: the OpenAI Responses API (Codex CLI, the OpenAI
//! SDKs' `responses`), stateless: the request is translated into a chat
//! completion and served like one; the answer and its stream are
//! translated back. A `previous_response_id` is served while this gateway
//! holds that response ([`Conversations`]), else a 400 that says to send
//! the whole conversation.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use moka::sync::Cache;
use serde_json::Value;

use super::chat::accept;
use super::translate;
use crate::body::ResponseBody;
use crate::dialect::responses::{self, ResponsesStream};
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::proxy::Operation;

/// How long a response stays available as a `previous_response_id`.
pub const KEPT_FOR: Duration = Duration::from_secs(3600);
/// Bytes of conversations kept (older ones leave first).
pub const KEPT_BYTES: u64 = 64 << 20;

/// One kept turn: the request and the response as they were sent, after
/// the turn it continued. Kept raw: parsed only when a next turn names it,
/// so keeping a response costs a reference, not a copy.
pub struct Turn {
    earlier: Option<Arc<Turn>>,
    request: Bytes,
    response: Bytes,
    /// Bytes of this turn and every earlier one.
    bytes: u32,
}

impl Turn {
    /// The conversation's items up to and including this turn: each turn's
    /// input, then its output, oldest first.
    pub fn items(&self) -> Vec<Value> {
        let mut turns = vec![self];
        while let Some(earlier) = turns.last().and_then(|t| t.earlier.as_deref()) {
            turns.push(earlier);
        }
        let mut items = Vec::new();
        for turn in turns.into_iter().rev() {
            items.extend(responses::input_items(&turn.request).unwrap_or_default());
            items.extend(responses::output_items(&turn.response));
        }
        items
    }
}

/// Recent responses' conversations, by response id, bounded in bytes and
/// time (a handle: clones share the cache).
#[derive(Clone)]
pub struct Conversations {
    cache: Cache<String, Arc<Turn>>,
}

impl Default for Conversations {
    fn default() -> Self {
        let cache = Cache::builder()
            .max_capacity(KEPT_BYTES)
            .weigher(|id: &String, turn: &Arc<Turn>| {
                turn.bytes.saturating_add(u32::try_from(id.len()).unwrap_or(u32::MAX))
            })
            .time_to_live(KEPT_FOR)
            .build();
        Self { cache }
    }
}

impl Conversations {
    /// The conversation that ended with response `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Turn>> {
        self.cache.get(id)
    }

    /// Keeps the turn that answered `request` with `response` (whose id is
    /// `id`), after `earlier`.
    pub fn keep(&self, id: String, earlier: Option<Arc<Turn>>, request: Bytes, response: Bytes) {
        let before = earlier.as_ref().map_or(0, |t| t.bytes);
        let own = u32::try_from(request.len() + response.len()).unwrap_or(u32::MAX);
        let turn = Turn { earlier, request, response, bytes: before.saturating_add(own) };
        self.cache.insert(id, Arc::new(turn));
    }
}

/// A response, whole or streamed.
pub async fn responses<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
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
    let body = accepted.body.clone();
    let thread = responses::thread(&body)?;
    let history = match thread.previous_response_id {
        None => None,
        Some(id) => Some(gateway.conversations().get(&id).ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "previous_response_id `{id}` is not held by this gateway (it keeps responses \
                     stored with `store` for {} minutes, in memory); send the whole conversation in `input` instead",
                    KEPT_FOR.as_secs() / 60
                ),
                Some("previous_response_id"),
            )
        })?),
    };
    let items = history.as_ref().map(|turn| turn.items()).unwrap_or_default();
    let translated = responses::to_chat(&body, &items)?;
    let (id, model) = (responses::new_response_id(), translated.model);
    // Each answer is kept for a next turn to name, unless the client said
    // `store: false`.
    let answer = accepted
        .serve(gateway, Operation::Chat, Bytes::from(translated.chat), |response| {
            translate::answer(
                response,
                |chat| {
                    let answer = Bytes::from(responses::from_chat(chat, &id, &model, &body)?);
                    if thread.store {
                        gateway.conversations().keep(id.clone(), history.clone(), body.clone(), answer.clone());
                    }
                    Ok(answer)
                },
                || {
                    let stream = ResponsesStream::new(&id, &model, &body);
                    if !thread.store {
                        return Box::new(stream);
                    }
                    let (conversations, id, earlier, body) =
                        (gateway.conversations().clone(), id.clone(), history.clone(), body.clone());
                    Box::new(stream.on_done(move |answer| {
                        conversations.keep(id, earlier, body, Bytes::copy_from_slice(answer));
                    }))
                },
            )
        })
        .await;
    Ok(answer)
}
