//! The two policy phases of a request, and the record phase after the
//! answer: the `request` hooks before routing (with questions to a
//! classifier answered in between), the `prepare` hooks after, and the
//! session pin once the outcome says who answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;

use super::dispatch::{self, Outcome};
use super::request::ClientRequest;
use super::{Context, Proxy};
use crate::catalog::routes::{Candidate, Router};
use crate::errors::ApiError;
use crate::policy::{PolicyRequest, Prefer, RequestState};

/// How long a policy's question to a model may take before the rules decide.
const QUESTION_TIMEOUT: Duration = Duration::from_secs(3);

/// The policies' view of one request, kept from the first policy phase to
/// the record phase.
pub struct PolicyRun {
    req: PolicyRequest,
}

/// Before routing: runs the `request` hooks. They may change the model to
/// route to (`ctx.request.model`), prefer or pin models, and tag; the
/// conversation moves into the policies' view until [`after_routing`] puts
/// it back. A request no `request` hook acts on (by the models each
/// declares) skips this phase without building the view.
pub async fn before_routing(proxy: &Proxy, ctx: &mut Context) {
    if !ctx.pipeline.requests_for(&ctx.request.model) {
        return;
    }
    let req = view(proxy, ctx);
    let metrics = proxy.metrics();
    ctx.pipeline.on_request(&req, metrics);
    let questions = std::mem::take(&mut req.state().questions);
    if !questions.is_empty() {
        // Ask, then let the policies decide again with the answers.
        let mut answers = Vec::new();
        for (model, prompt) in questions {
            let answer = ask(proxy, &model, &prompt).await.unwrap_or_default();
            answers.push((prompt, answer));
        }
        {
            let mut s = req.state();
            s.answers = answers;
            s.model = s.requested.clone();
            s.prefer.clear();
            s.tags.clear();
        }
        ctx.pipeline.on_request(&req, metrics);
    }
    ctx.request.model.clone_from(&req.state().model);
    ctx.policy = Some(PolicyRun { req });
}

/// The policies' view of the request: the conversation parsed with the
/// body (kept for the log) moves in, or else the body itself, from which
/// the hooks read only as much of the conversation as they ask for.
fn view(proxy: &Proxy, ctx: &mut Context) -> PolicyRequest {
    let (messages, raw) = match ctx.request.messages.take() {
        Some(messages) => (messages, None),
        None => (Vec::new(), Some(ctx.request.raw.clone())),
    };
    let routes = proxy.routes();
    let state = Arc::clone(proxy.state());
    let availability_state = Arc::clone(&state);
    PolicyRequest::new(RequestState {
        model: ctx.request.model.clone(),
        requested: ctx.request.model.clone(),
        stream: ctx.request.stream,
        has_tools: ctx.request.has_tools,
        messages,
        raw,
        session_header: ctx.session.clone(),
        availability: Some(Arc::new(move |name: &str| routes.available(name, &*availability_state))),
        pins: Some(state),
        ..RequestState::default()
    })
}

/// After routing: puts preferred and pinned models first among the
/// candidates, runs the `prepare` hooks against the first candidate's
/// context window, and writes a changed conversation back into the body.
/// A request no hook acts on (no `request` hook ran, and no `prepare` hook
/// acts on its model at its size) builds no view here either.
///
/// A pin only reorders the request's own candidates: a conversation first
/// answered by a paid model is never steered there by a later `free` or
/// `auto` request. A policy's preference may add a model the request would
/// not have tried, but never a paid one to a pool of free models.
pub fn after_routing(proxy: &Proxy, ctx: &mut Context) -> Result<(), ApiError> {
    let window = ctx
        .candidates
        .first()
        .map_or(0, |first| i64::try_from(first.provider.context_window(&first.model).unwrap_or(0)).unwrap_or(i64::MAX));
    if ctx.policy.is_none() {
        // The body's length bounds the estimate: the conversation is read
        // only when a size-bound hook might act (or a hook acts on any size).
        let tokens = || match &ctx.request.messages {
            Some(messages) => i64::try_from(crate::policy::prune::tokens(messages)).unwrap_or(i64::MAX),
            None => crate::policy::conversation::tokens_at_most(&ctx.request.raw),
        };
        if !ctx.pipeline.prepares_for(&ctx.request.model, tokens, window) {
            return Ok(());
        }
        ctx.policy = Some(PolicyRun { req: view(proxy, ctx) });
    }
    let Some(run) = &ctx.policy else { return Ok(()) };
    let prefer = run.req.state().prefer.clone();
    if !prefer.is_empty() {
        put_first(&proxy.routes(), &ctx.request.model, &mut ctx.candidates, &prefer);
    }
    if !ctx.candidates.is_empty() {
        run.req.state().context_window = window;
    }
    ctx.pipeline.on_prepare(&run.req, proxy.metrics());
    let mut state = run.req.state();
    for (tag, value) in &state.tags {
        proxy.metrics().policy_tag(tag, value);
    }
    if !state.tags.is_empty() {
        tracing::debug!(tags = ?state.tags, "policy tags");
    }
    let messages = std::mem::take(&mut state.messages);
    if state.messages_changed {
        ctx.request.replace_messages(&messages)?;
    }
    Ok(())
}

/// Puts the models of `prefer` (the policies' wishes for a request to
/// `model`, in order) first among `candidates`: a pin only reorders, a
/// policy's preference may add a model, but never a paid one to a pool of
/// free models. Shared with `freeway replay`, which must order exactly so.
pub fn put_first(routes: &Router, model: &str, candidates: &mut Vec<Candidate>, prefer: &[Prefer]) {
    let free_pool = routes.is_free_pool(model);
    for wish in prefer.iter().rev() {
        let (name, may_add) = match wish {
            Prefer::Pinned(name) => (name, false),
            Prefer::Policy(name) => (name, true),
        };
        let Some(first) = routes.resolve(name).ok().and_then(|c| c.into_iter().next()) else { continue };
        let same = |c: &Candidate| Arc::ptr_eq(&c.provider, &first.provider) && c.model == first.model;
        match candidates.iter().position(same) {
            Some(at) => {
                let found = candidates.remove(at);
                candidates.insert(0, found);
            }
            None if may_add && (!free_pool || first.provider.models().get(&first.model).is_some_and(|m| m.free)) => {
                candidates.insert(0, first);
            }
            None => {}
        }
    }
}

/// Record: pins the session to whoever answered, when a policy asked for it.
pub fn record(proxy: &Proxy, ctx: &Context, outcome: &Outcome) {
    let Some(run) = &ctx.policy else { return };
    let Some((key, seconds)) = run.req.state().pin.clone() else { return };
    let (Some(via), true) = (&outcome.via, outcome.result.as_ref().is_ok_and(|r| r.status().is_success())) else {
        return;
    };
    let target = format!("{}/{}", via.provider.name, via.model);
    proxy.state().pin(&key, &target, Duration::from_secs(seconds), Instant::now());
}

/// The tags the policies set on this request.
pub fn tags(ctx: &Context) -> Vec<(String, String)> {
    ctx.policy.as_ref().map(|run| run.req.state().tags.clone()).unwrap_or_default()
}

/// Asks `model` one short question (for a classifier); `None` on any failure.
async fn ask(proxy: &Proxy, model: &str, prompt: &str) -> Option<String> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0,
    });
    let raw = Bytes::from(serde_json::to_vec(&body).ok()?);
    let request = ClientRequest::parse(raw, false).ok()?;
    let candidates = proxy.routes().resolve(model).ok()?;
    let call = async {
        let outcome = dispatch::run(proxy, &request, &candidates, &mut None).await;
        let response = outcome.result.ok().filter(|r| r.status().is_success())?;
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        let answer: Value = serde_json::from_slice(&bytes).ok()?;
        answer.pointer("/choices/0/message/content").and_then(Value::as_str).map(str::to_owned)
    };
    let answer = tokio::time::timeout(QUESTION_TIMEOUT, call).await.ok().flatten();
    if answer.is_none() {
        tracing::debug!(model, "a policy's question got no answer; the rules decide");
    }
    answer
}
