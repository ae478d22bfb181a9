//! One request's trip through the pipeline: the `request` hooks before
//! routing (with questions to a classifier answered in between), the
//! `prepare` hooks after, and the session pin once the answer is known.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use serde_json::Value;

use super::{Pipeline, PolicyRequest, RequestState};
use crate::body::ResponseBody;
use crate::dispatch::ROUTED_VIA;
use crate::gateway::Gateway;
use crate::request::ClientRequest;
use crate::routing::Candidate;

/// How long a policy's question to a model may take before the rules decide.
const QUESTION_TIMEOUT: Duration = Duration::from_secs(3);

/// A request on its way through the policies.
pub struct PolicyRun {
    pipeline: Arc<Pipeline>,
    req: PolicyRequest,
}

impl PolicyRun {
    /// Runs the `request` hooks; the conversation moves into the policy's
    /// view until [`PolicyRun::after_routing`] puts it back.
    pub async fn before_routing(
        gateway: &Gateway,
        pipeline: Arc<Pipeline>,
        parsed: &mut ClientRequest,
        session: Option<String>,
    ) -> Self {
        let messages = match parsed.body.remove("messages") {
            Some(Value::Array(messages)) => messages,
            _ => Vec::new(),
        };
        let router = gateway.router();
        let state = RequestState {
            model: parsed.model.clone(),
            requested: parsed.model.clone(),
            stream: parsed.stream,
            has_tools: parsed.body.get("tools").is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty())),
            messages,
            session_header: session,
            availability: Some(Arc::new(move |name: &str| router.available(name))),
            sessions: Some(gateway.policies().sessions.clone()),
            ..RequestState::default()
        };
        let run = Self { pipeline, req: PolicyRequest::new(state) };
        let metrics = gateway.metrics();
        run.pipeline.on_request(&run.req, metrics);
        let questions = std::mem::take(&mut run.req.state().questions);
        if !questions.is_empty() {
            // Ask, then let the policies decide again with the answers.
            let mut answers = Vec::new();
            for (model, prompt) in questions {
                let answer = ask(gateway, &model, &prompt).await.unwrap_or_default();
                answers.push((prompt, answer));
            }
            {
                let mut s = run.req.state();
                s.answers = answers;
                s.model = s.requested.clone();
                s.prefer.clear();
                s.tags.clear();
            }
            run.pipeline.on_request(&run.req, metrics);
        }
        parsed.model.clone_from(&run.req.state().model);
        run
    }

    /// Puts preferred models first, runs the `prepare` hooks against the
    /// first candidate's context window, and writes back the conversation.
    pub fn after_routing(&self, gateway: &Gateway, parsed: &mut ClientRequest, candidates: &mut Vec<Candidate>) {
        let prefer = self.req.state().prefer.clone();
        if !prefer.is_empty() {
            let router = gateway.router();
            for id in prefer.iter().rev() {
                if let Some(first) = router.resolve(id).ok().and_then(|c| c.into_iter().next()) {
                    candidates.retain(|c| !(Arc::ptr_eq(&c.provider, &first.provider) && c.model == first.model));
                    candidates.insert(0, first);
                }
            }
        }
        if let Some(first) = candidates.first() {
            let window = first.provider.models().get(&first.model).and_then(|m| m.context).unwrap_or(0);
            self.req.state().context_window = window as i64;
        }
        self.pipeline.on_prepare(&self.req, gateway.metrics());
        let mut state = self.req.state();
        for (tag, value) in &state.tags {
            gateway.metrics().policy_tag(tag, value);
        }
        let changed = state.messages_changed;
        parsed.body.insert("messages".to_owned(), Value::Array(std::mem::take(&mut state.messages)));
        if changed && let Ok(raw) = serde_json::to_vec(&parsed.body) {
            parsed.raw = Bytes::from(raw);
        }
        if !state.tags.is_empty() {
            tracing::debug!(tags = ?state.tags, "policy tags");
        }
    }

    /// Pins the session to whoever answered, when a policy asked for it.
    pub fn finish(&self, gateway: &Gateway, response: &Response<ResponseBody>) {
        let Some((key, seconds)) = self.req.state().pin.clone() else { return };
        if !response.status().is_success() {
            return;
        }
        if let Some(via) = response.headers().get(ROUTED_VIA).and_then(|v| v.to_str().ok()) {
            gateway.policies().sessions.pin(&key, via, Duration::from_secs(seconds), Instant::now());
        }
    }
}

/// Asks `model` one short question (for a classifier); `None` on any failure.
async fn ask(gateway: &Gateway, model: &str, prompt: &str) -> Option<String> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0,
    });
    let raw = Bytes::from(serde_json::to_vec(&body).ok()?);
    let request = ClientRequest::parse(raw).ok()?;
    let candidates = gateway.router().resolve(model).ok()?;
    let call = async {
        let response = gateway.dispatcher().run(&request, &candidates).await;
        if !response.status().is_success() {
            return None;
        }
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
