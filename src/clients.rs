//! Named clients of `server.api_keys` and their budgets: requests per
//! minute (`rpm`) and per rolling 24 hours (`rpd`), tokens per rolling 24
//! hours (`tpd`, settled from the usage each answer reports), and the
//! models they may use (`models`, globs of freeway model names).
//!
//! A client's counts are kept by the state store, as a provider key's
//! are: under the pseudo-provider [`COUNTERS`] (a name no provider can
//! have) and the fingerprint of the client's name. So they persist with
//! `state.path` (a restart does not hand a client a fresh day) and are
//! shared through `state.redis` (two gateways hold a client to one
//! budget), and they are bounded like any counter: one per configured
//! client, in fixed-size windows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::body::ResponseBody;
use crate::config::{ClientKey, Limits};
use crate::errors::ApiError;
use crate::metrics::Metrics;
use crate::plugin::Usage;
use crate::state::usage::{Admission, Limit, LimitHit};
use crate::state::{Budget, KeyId, StateStore};

/// The name metrics give every bare-token client: bare tokens are not
/// named, and labelling each by its hash would let config edits grow the
/// series without bound.
pub const PLAIN: &str = "default";

/// The provider name clients' counters are kept under in the state store:
/// `@` is in no provider name (config validation refuses it), so a
/// client's counters never meet a provider's.
pub const COUNTERS: &str = "@clients";

/// Whether `name` may name a client: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// One client: its name, its budgets, and where the state store counts
/// what it spent.
#[derive(Debug)]
pub struct Client {
    name: Arc<str>,
    models: Option<Vec<WildMatch>>,
    /// Its counters' key in the state store.
    id: KeyId,
    /// `rpm`, `rpd` and `tpd` as a model's limits on that key.
    budget: Budget,
}

impl Client {
    /// The client every bare token shares: no budget, every model.
    pub fn plain() -> Self {
        Self::build(PLAIN, Limits::default(), None)
    }

    /// From its config entry (validated: limits positive, name set).
    pub fn from_config(key: &ClientKey) -> Self {
        let limit = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        let models = key.models.as_ref().map(|globs| globs.iter().map(|g| WildMatch::new(g)).collect());
        let limits = Limits { rpm: limit(key.rpm), rpd: limit(key.rpd), tpm: None, tpd: limit(key.tpd) };
        Self::build(key.name.as_deref().unwrap_or(PLAIN), limits, models)
    }

    fn build(name: &str, limits: Limits, models: Option<Vec<WildMatch>>) -> Self {
        let id = KeyId::new(&Arc::from(COUNTERS), Some(name));
        let budget = Budget { model: limits, key: Limits::default(), period: None };
        Self { name: name.into(), models, id, budget }
    }

    /// Its name (metrics label: config names, or [`PLAIN`]).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Whether it checks the model of a request (parsing the body for it
    /// is skipped otherwise).
    pub fn checks_models(&self) -> bool {
        self.models.is_some()
    }

    /// Whether `model` (a freeway model name) is one of its globs.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|globs| globs.iter().any(|g| g.matches(model)))
    }

    fn limited(&self) -> bool {
        let l = &self.budget.model;
        l.rpm.is_some() || l.rpd.is_some() || l.tpd.is_some()
    }

    /// Counts one request against `rpm` and `rpd` in `state` (and the
    /// instances it shares counters with), or says how long until one of
    /// them (or `tpd`) leaves room, counting nothing.
    pub async fn admit(self: &Arc<Self>, state: &dyn StateStore) -> Result<Spender, Refusal> {
        // Bare tokens (one shared client) and clients without limits are
        // not counted: there is nothing to hold them to.
        if !self.limited() {
            return Ok(Spender { client: Arc::clone(self), admission: None });
        }
        let now = Instant::now();
        // One token booked up front makes a client whose day holds exactly
        // `tpd` tokens wait, not send one more; the answer's usage replaces it.
        let booked = u64::from(self.budget.model.tpd.is_some());
        let refused = |hit: LimitHit| self.refusal(hit.limit, hit.until.saturating_duration_since(now));
        let admission = state.admit(&self.id, &self.name, &self.budget, booked, now).map_err(refused)?;
        if let Some(shared) = state.shared() {
            shared.admit(&admission, &self.budget, now).await.map_err(refused)?;
        }
        Ok(Spender { client: Arc::clone(self), admission: Some(admission) })
    }

    fn refusal(&self, limit: Limit, wait: Duration) -> Refusal {
        let l = &self.budget.model;
        let (value, what) = match limit {
            Limit::Rpm => (l.rpm, "requests a minute"),
            Limit::Rpd => (l.rpd, "requests a day"),
            Limit::Tpm => (l.tpm, "tokens a minute"),
            Limit::Tpd => (l.tpd, "tokens a day"),
        };
        Refusal { limit: value.unwrap_or_default(), what, wait }
    }
}

/// A client's admitted request: what its answer's tokens are charged to.
#[derive(Debug, Clone)]
pub struct Spender {
    client: Arc<Client>,
    /// Its charge in the state store (`None` for a client without limits).
    admission: Option<Admission>,
}

impl Spender {
    /// The client.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Settles the answer's usage: its tokens replace what was booked
    /// against `tpd`, and count in the client's token metric.
    pub fn spend(&self, metrics: &Metrics, state: &dyn StateStore, usage: Usage) {
        metrics.client_tokens(&self.client.name, usage);
        if let Some(admission) = &self.admission
            && self.client.budget.model.tpd.is_some()
        {
            state.settle(admission, usage.total());
        }
    }
}

/// A request over one of the client's budgets.
#[derive(Debug, Clone)]
pub struct Refusal {
    limit: u64,
    what: &'static str,
    wait: Duration,
}

impl Refusal {
    /// 429 with `Retry-After` (whole seconds until room frees), in
    /// OpenAI's shape (`api::handle` reshapes it for the Messages API).
    pub fn into_response(self, client: &str) -> Response<ResponseBody> {
        let secs = self.wait.as_millis().div_ceil(1000).max(1);
        let body = serde_json::json!({"error": {
            "message": format!(
                "client `{client}` is over its budget of {} {}; retry in {secs} s", self.limit, self.what
            ),
            "type": "rate_limit_error",
            "code": "client_budget_exceeded",
        }});
        let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::RETRY_AFTER, HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)));
        response
    }
}

/// 403 for a model outside the client's globs.
pub fn model_refused(client: &str, model: &str) -> ApiError {
    ApiError::Forbidden { message: format!("client `{client}` may not use model `{model}` (server.api_keys models)") }
}

/// The `model` of a request body, when it has one as a string.
pub fn model_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        model: Option<String>,
    }
    serde_json::from_slice::<Head>(body).ok()?.model
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryState;

    fn client(rpm: Option<u64>, rpd: Option<u64>, tpd: Option<u64>) -> Arc<Client> {
        Arc::new(Client::build("c", Limits { rpm, rpd, tpm: None, tpd }, None))
    }

    #[tokio::test]
    async fn a_client_is_held_to_its_minute_and_only_admitted_requests_count() {
        let state = MemoryState::default();
        let c = client(Some(2), Some(1000), None);
        assert!(c.admit(&state).await.is_ok() && c.admit(&state).await.is_ok());
        for _ in 0..5 {
            let refused = c.admit(&state).await.err().map(|r| (r.limit, r.what, r.wait.as_secs()));
            assert!(matches!(refused, Some((2, "requests a minute", 59..=60))), "{refused:?}");
        }
        let used = state.used(&c.id, Some(&c.name), None, Instant::now()).map(|u| u.requests_day);
        assert_eq!(used, Some(2), "refused requests count against nothing");
    }

    #[tokio::test]
    async fn tokens_settle_from_the_answer_and_a_full_day_refuses() {
        let (state, metrics) = (MemoryState::default(), Metrics::new());
        let c = client(None, None, Some(25));
        for _ in 0..2 {
            let spender = c.admit(&state).await.unwrap_or_else(|r| panic!("refused: {r:?}"));
            spender.spend(&metrics, &state, Usage { prompt_tokens: 7, completion_tokens: 5 });
        }
        // 24 of 25: one more may go, and settles past the budget.
        let spender = c.admit(&state).await.unwrap_or_else(|r| panic!("refused: {r:?}"));
        spender.spend(&metrics, &state, Usage { prompt_tokens: 1, completion_tokens: 0 });
        let refused = c.admit(&state).await.err().map(|r| (r.limit, r.what));
        assert_eq!(refused, Some((25, "tokens a day")));
    }

    #[tokio::test]
    async fn a_client_without_limits_counts_nothing() {
        let state = MemoryState::default();
        let c = Arc::new(Client::plain());
        for _ in 0..3 {
            assert!(c.admit(&state).await.is_ok_and(|s| s.admission.is_none()));
        }
        assert!(state.used(&c.id, Some(&c.name), None, Instant::now()).is_none());
    }

    #[test]
    fn names_and_globs() {
        assert!(valid_name("team-a.bot_1"));
        assert!(!valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(65)));
        let c = Client::build("c", Limits::default(), Some(vec![WildMatch::new("cheap/*")]));
        assert!(c.may_use("cheap/llama") && !c.may_use("big/gpt"));
    }
}
