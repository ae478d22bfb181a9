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

use super::chat::{Accepted, accept};
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

/// A kept conversation: its items, and about how many bytes they hold.
type Kept = (Arc<Vec<Value>>, u32);

/// Recent responses' conversations (their input and output items), by
/// response id, bounded in bytes and time.
pub struct Conversations {
    cache: Cache<String, Kept>,
}

impl Default for Conversations {
    fn default() -> Self {
        let cache = Cache::builder()
            .max_capacity(KEPT_BYTES)
            .weigher(|id: &String, kept: &Kept| kept.1.saturating_add(u32::try_from(id.len()).unwrap_or(u32::MAX)))
            .time_to_live(KEPT_FOR)
            .build();
        Self { cache }
    }
}

impl Conversations {
    /// The items of the conversation that ended with response `id`, and
    /// about how many bytes they hold.
    pub fn get(&self, id: &str) -> Option<(Arc<Vec<Value>>, u32)> {
        self.cache.get(id)
    }

    /// Keeps the conversation that ended with response `id`; `bytes`: about
    /// how large it is (the JSON it came from).
    pub fn keep(&self, id: String, items: Vec<Value>, bytes: usize) {
        self.cache.insert(id, (Arc::new(items), u32::try_from(bytes).unwrap_or(u32::MAX)));
    }
}

/// A response, whole or streamed.
pub async fn responses<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Accepted { body, session, client, in_flight, claim } = match accept(gateway, request).await {
        Ok(accepted) => accepted,
        Err(e) => return e.into_response(),
    };
    let thread = match responses::thread(&body) {
        Ok(thread) => thread,
        Err(e) => return ApiError::bad_request(e.message, None).into_response(),
    };
    let history = match thread.previous_response_id {
        None => None,
        Some(id) => match gateway.conversations().get(&id) {
            Some(items) => Some(items),
            None => {
                return ApiError::bad_request(
                    format!(
                        "previous_response_id `{id}` is not held by this gateway (it keeps non-streamed responses \
                         stored with `store` for {} minutes, in memory); send the whole conversation in `input` instead",
                        KEPT_FOR.as_secs() / 60
                    ),
                    Some("previous_response_id"),
                )
                .into_response();
            }
        },
    };
    let translated = match responses::to_chat(&body, history.as_ref().map_or(&[], |(items, _)| items.as_slice())) {
        Ok(translated) => translated,
        Err(e) => return ApiError::bad_request(e.message, None).into_response(),
    };
    let response = gateway.proxy().serve(Operation::Chat, Bytes::from(translated.chat), session, client).await;
    drop(claim);
    let (id, model) = (responses::new_response_id(), translated.model);
    // Kept for a next turn to name, unless the client said `store: false`.
    let keep = |answer: &[u8]| {
        if !thread.store {
            return;
        }
        let Ok(mut items) = responses::input_items(&body) else { return };
        if let Some((earlier, _)) = &history {
            items.splice(0..0, earlier.iter().cloned());
        }
        items.extend(responses::output_items(answer));
        let bytes = body.len() + answer.len() + history.as_ref().map_or(0, |(_, earlier)| *earlier as usize);
        gateway.conversations().keep(id.clone(), items, bytes);
    };
    let mut response = translate::answer(
        response,
        |chat| {
            let answer = responses::from_chat(chat, &id, &model, &body)?;
            keep(&answer);
            Ok(answer)
        },
        || Box::new(ResponsesStream::new(&id, &model, &body)),
    );
    response.body_mut().hold(in_flight);
    response
}
