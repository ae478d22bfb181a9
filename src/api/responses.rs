//! `POST /v1/responses`: the OpenAI Responses API (Codex CLI, the OpenAI
//! SDKs' `responses`), stateless: the request is translated into a chat
//! completion and served like one; the answer and its stream are
//! translated back. A `previous_response_id` is served while this gateway
//! holds that response ([`Conversations`]), else a 400 that says to send
//! the whole conversation.
//!
//! Where a stored response is held: in memory for an hour (the hot layer:
//! a next turn usually comes within seconds, before the write-behind has
//! written anything), and, with a state database or Redis, there for
//! `state.responses_retention`. A lookup goes memory → database → Redis,
//! and what it reads back is kept in memory again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use moka::Expiry;
use moka::sync::Cache;
use serde_json::Value;

use super::chat::accept;
use super::translate;
use crate::body::ResponseBody;
use crate::dialect::responses::{self, ResponsesStream};
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::proxy::Operation;
use crate::state::{StateStore, StoredResponse};

/// How long a response stays in memory, and so, without a state store,
/// how long it is available as a `previous_response_id`.
pub const KEPT_FOR: Duration = Duration::from_secs(3600);
/// Bytes of conversations kept in memory (older ones leave first); a
/// conversation read back from the state store is refused past it too.
pub const KEPT_BYTES: u64 = 64 << 20;
/// Turns a conversation read back from the state store may have: a guard
/// against a damaged chain that loops.
const MAX_TURNS: usize = 10_000;
/// The longest id looked up in the state store (freeway's are 37 bytes).
const MAX_ID: usize = 256;

/// One kept turn: the request and the response as they were sent, after
/// the turn it continued. Kept raw: parsed only when a next turn names it,
/// so keeping a response costs a reference, not a copy.
pub struct Turn {
    id: Arc<str>,
    /// The conversation's first response, and when it was made (wall
    /// clock, ms).
    root: Arc<str>,
    started_ms: i64,
    earlier: Option<Arc<Turn>>,
    request: Bytes,
    response: Bytes,
    /// Bytes of this turn and every earlier one.
    bytes: u32,
}

impl Turn {
    /// Turn `id` after `earlier` (the first of a conversation started at
    /// `now_ms` without one).
    fn new(id: Arc<str>, now_ms: i64, earlier: Option<Arc<Turn>>, request: Bytes, response: Bytes) -> Self {
        let (root, started_ms) = match &earlier {
            Some(t) => (t.root.clone(), t.started_ms),
            None => (id.clone(), now_ms),
        };
        let before = earlier.as_ref().map_or(0, |t| t.bytes);
        let own = u32::try_from(request.len() + response.len()).unwrap_or(u32::MAX);
        Self { id, root, started_ms, earlier, request, response, bytes: before.saturating_add(own) }
    }

    /// A turn read back from the state store, after `earlier`.
    fn restored(row: StoredResponse, earlier: Option<Arc<Turn>>) -> Self {
        let bytes = earlier.as_ref().map_or(0, |t| t.bytes);
        let own = u32::try_from(row.request.len() + row.response.len()).unwrap_or(u32::MAX);
        Self {
            id: row.id,
            root: row.root,
            started_ms: row.started_ms,
            earlier,
            request: row.request,
            response: row.response,
            bytes: bytes.saturating_add(own),
        }
    }

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

    /// The ids of the turns before this one, newest first.
    fn earlier_ids(&self) -> Vec<Arc<str>> {
        std::iter::successors(self.earlier.as_deref(), |t| t.earlier.as_deref()).map(|t| t.id.clone()).collect()
    }
}

/// A turn in memory, and how long it stays there.
#[derive(Clone)]
struct Kept {
    turn: Arc<Turn>,
    stays: Duration,
}

/// Each turn stays in memory its own time: an hour for a new one, less
/// for one read back near the end of its retention.
struct Stays;

impl Expiry<String, Kept> for Stays {
    fn expire_after_create(&self, _id: &String, kept: &Kept, _now: Instant) -> Option<Duration> {
        Some(kept.stays)
    }
}

/// Recent responses' conversations, by response id, bounded in bytes and
/// time (a handle: clones share the cache), over the state store.
#[derive(Clone)]
pub struct Conversations {
    cache: Cache<String, Kept>,
}

impl Default for Conversations {
    fn default() -> Self {
        let cache = Cache::builder()
            .max_capacity(KEPT_BYTES)
            .weigher(|id: &String, kept: &Kept| {
                kept.turn.bytes.saturating_add(u32::try_from(id.len()).unwrap_or(u32::MAX))
            })
            .expire_after(Stays)
            .build();
        Self { cache }
    }
}

impl Conversations {
    /// The conversation that ended with response `id`: from memory, else
    /// (unless `retention` is zero: nothing is stored there) read back
    /// from `state` turn by turn until a turn memory holds, and kept in
    /// memory again. `None` when neither holds it whole: unknown, past its
    /// retention, or damaged (which is logged).
    pub async fn find(&self, state: &dyn StateStore, retention: Duration, id: &str) -> Option<Arc<Turn>> {
        if let Some(kept) = self.cache.get(id) {
            return Some(kept.turn);
        }
        if retention.is_zero() || id.len() > MAX_ID {
            return None;
        }
        let now_ms = state.clock().now_ms();
        // Newest first, until the first turn or one memory holds.
        let (mut read, mut base, mut bytes) = (Vec::<StoredResponse>::new(), None, 0usize);
        let mut next: Option<Arc<str>> = Some(Arc::from(id));
        while let Some(wanted) = next.take() {
            if !read.is_empty()
                && let Some(kept) = self.cache.get(&*wanted)
            {
                base = Some(kept.turn);
                break;
            }
            let row = match state.stored_response(&wanted).await {
                Ok(Some(row)) => row,
                // Unknown, or an earlier turn gone (Redis evicted it).
                Ok(None) => return None,
                Err(why) => {
                    tracing::warn!(response = %wanted, "a stored response cannot be read ({why}); answered as not held");
                    return None;
                }
            };
            if read.is_empty() && row.until_ms <= now_ms {
                return None;
            }
            if let Err(why) = readable(&row) {
                tracing::warn!(response = %wanted, "a stored response is damaged ({why}); answered as not held");
                return None;
            }
            bytes = bytes.saturating_add(row.request.len() + row.response.len());
            if bytes as u64 > KEPT_BYTES || read.len() >= MAX_TURNS {
                tracing::warn!(response = %id, turns = read.len() + 1, bytes, "a stored conversation is too long to read back");
                return None;
            }
            next = row.earlier.clone();
            read.push(row);
        }
        for row in read.into_iter().rev() {
            let left = Duration::from_millis(u64::try_from(row.until_ms.saturating_sub(now_ms)).unwrap_or(0));
            let turn = Arc::new(Turn::restored(row, base.take()));
            if !left.is_zero() {
                self.cache.insert(turn.id.to_string(), Kept { turn: turn.clone(), stays: left.min(KEPT_FOR) });
            }
            base = Some(turn);
        }
        base
    }

    /// Keeps the turn that answered `request` with `response` (whose id is
    /// `id`), after `earlier`: in memory, and in `state` for `retention`
    /// (unless zero).
    pub fn keep(
        &self,
        state: &dyn StateStore,
        retention: Duration,
        id: String,
        earlier: Option<Arc<Turn>>,
        request: Bytes,
        response: Bytes,
    ) {
        let id: Arc<str> = Arc::from(id);
        let now_ms = state.clock().now_ms();
        let turn = Arc::new(Turn::new(id.clone(), now_ms, earlier, request, response));
        if !retention.is_zero() {
            let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let stored = StoredResponse {
                id: id.clone(),
                earlier: turn.earlier.as_ref().map(|t| t.id.clone()),
                root: turn.root.clone(),
                started_ms: turn.started_ms,
                until_ms: now_ms.saturating_add(retention_ms),
                request: turn.request.clone(),
                response: turn.response.clone(),
            };
            state.keep_response(&stored, &turn.earlier_ids());
        }
        self.cache.insert(id.to_string(), Kept { turn, stays: KEPT_FOR });
    }
}

/// Whether a turn read back holds what a next turn needs: the request's
/// input, a response object.
fn readable(row: &StoredResponse) -> Result<(), String> {
    responses::input_items(&row.request).map_err(|e| format!("its request: {e}"))?;
    serde_json::from_slice::<serde_json::Map<String, Value>>(&row.response)
        .map_err(|e| format!("its response: {e}"))?;
    Ok(())
}

/// The 400 for a `previous_response_id` this gateway does not hold,
/// saying where and how long it keeps responses.
fn not_held(id: &str, state: &dyn StateStore, retention: Duration) -> ApiError {
    let health = state.health();
    let (kept_for, place) = if retention.is_zero() || (health.backend == "memory" && health.redis.is_none()) {
        (KEPT_FOR, "in memory")
    } else {
        (retention, "in its state store")
    };
    ApiError::bad_request(
        format!(
            "previous_response_id `{id}` is not held by this gateway (it keeps responses stored with `store` for {}, \
             {place}); send the whole conversation in `input` instead",
            span(kept_for)
        ),
        Some("previous_response_id"),
    )
}

/// A retention as people say it: `60 minutes`, `36 hours`, `30 days`.
fn span(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 86_400 && s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 && s > 3600 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s / 60),
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
    // Parsed once: the thread, the chat request and the response objects
    // all read it.
    let parsed = responses::Request::parse(&body)?;
    let thread = parsed.thread()?;
    let state = gateway.proxy().state();
    let retention = gateway.config().state.responses_retention.get();
    let history = match thread.previous_response_id {
        None => None,
        Some(id) => Some(
            gateway
                .conversations()
                .find(&**state, retention, &id)
                .await
                .ok_or_else(|| not_held(&id, &**state, retention))?,
        ),
    };
    let items = history.as_ref().map(|turn| turn.items()).unwrap_or_default();
    let translated = responses::to_chat(&parsed, &items)?;
    let (id, model) = (responses::new_response_id(), translated.model);
    // Each answer is kept for a next turn to name, unless the client said
    // `store: false`.
    let answer = accepted
        .serve(gateway, Operation::Chat, Bytes::from(translated.chat), |response| {
            translate::answer(
                response,
                |chat| {
                    let answer = Bytes::from(responses::from_chat(chat, &id, &model, &parsed)?);
                    if thread.store {
                        let (earlier, request) = (history.clone(), body.clone());
                        gateway.conversations().keep(&**state, retention, id.clone(), earlier, request, answer.clone());
                    }
                    Ok(answer)
                },
                || {
                    let stream = ResponsesStream::new(&id, &model, &parsed);
                    if !thread.store {
                        return Box::new(stream);
                    }
                    let (conversations, state, id, earlier, body) =
                        (gateway.conversations().clone(), state.clone(), id.clone(), history.clone(), body.clone());
                    Box::new(stream.on_done(move |answer| {
                        conversations.keep(&*state, retention, id, earlier, body, Bytes::copy_from_slice(answer));
                    }))
                },
            )
        })
        .await;
    Ok(answer)
}
