//! `GET /admin/api/routes`: every route and pool as it stands now (the
//! config's routes, the free pool, the auto tiers and favorites the
//! policies built, in their current order), each candidate with whether a
//! request could try it now and, when not, why — what an operator looks at
//! after reordering favorites or when a pool seems to stall.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use serde::Serialize;

use super::super::json_response;
use crate::body::ResponseBody;
use crate::catalog::routes::Candidate;
use crate::config::Strategy;
use crate::gateway::Gateway;
use crate::state::{Cooling, KeyId, StateStore};

/// The answer.
#[derive(Debug, Serialize)]
pub struct Routes {
    /// Every route, by name.
    pub routes: Vec<RouteView>,
}

/// One route or pool.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Its name (`free`, `auto:standard`, a config route...).
    pub name: String,
    /// Whether it is a pool of free models.
    pub free: bool,
    /// How it orders its targets for each request.
    pub strategy: &'static str,
    /// Its targets, in its current order.
    pub candidates: Vec<CandidateView>,
}

/// One target of a route, now.
#[derive(Debug, Serialize)]
pub struct CandidateView {
    /// `provider/model`.
    pub target: String,
    /// `ready` (a key could take a request now), `cooling` (every usable
    /// key is cooling down), `at_limit` (every usable key is at a limit),
    /// `circuit_open`, `invalid_keys` (the upstream rejected every key) or
    /// `no_keys`.
    pub state: &'static str,
    /// Keys that could take a request now, of all the provider's keys.
    pub keys_ready: usize,
    /// The provider's keys.
    pub keys: usize,
    /// When `cooling`: seconds until the first key is free again, and why
    /// it cools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_in_seconds: Option<u64>,
    /// When `cooling`: `rate_limited`, `daily_quota`, `quota_exhausted`,
    /// `none_left`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// `GET /admin/api/routes`.
pub fn routes(gateway: &Gateway) -> Response<ResponseBody> {
    let body = serde_json::to_vec(&routes_of(gateway)).unwrap_or_default();
    json_response(Bytes::from(body))
}

/// The routes as of now.
pub fn routes_of(gateway: &Gateway) -> Routes {
    let router = gateway.router();
    let state = gateway.proxy().state();
    let now = Instant::now();
    let facts = Facts::read(state.as_ref(), now);
    let mut routes: Vec<RouteView> = router
        .routes()
        .map(|(name, _, free)| {
            // The order a request would see now (round robin and random
            // orders change per request: this is one of them).
            let candidates = router.route_targets(name).unwrap_or_default();
            RouteView {
                name: name.to_owned(),
                free,
                strategy: strategy_name(router.strategy(name).unwrap_or_default()),
                candidates: candidates.iter().map(|c| facts.candidate(state.as_ref(), c, now)).collect(),
            }
        })
        .collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    Routes { routes }
}

fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Ordered => "ordered",
        Strategy::RoundRobin => "round-robin",
        Strategy::Random => "random",
        Strategy::Weighted => "weighted",
        Strategy::Headroom => "headroom",
    }
}

/// What one answer reads of the state once.
struct Facts {
    cooling: HashMap<(KeyId, Arc<str>), (Instant, Cooling)>,
    invalid: HashSet<KeyId>,
    open: HashSet<Arc<str>>,
}

impl Facts {
    fn read(state: &dyn StateStore, now: Instant) -> Self {
        Self {
            cooling: state.cooldowns(now).into_iter().map(|(k, m, until, why)| ((k, m), (until, why))).collect(),
            invalid: state.invalid_keys().into_iter().collect(),
            open: state.open_circuits().into_iter().collect(),
        }
    }

    fn candidate(&self, state: &dyn StateStore, c: &Candidate, now: Instant) -> CandidateView {
        let provider = &c.provider;
        let budget = provider.budget_for(&c.model, &state.clock(), now);
        let valid: Vec<&KeyId> = provider.keys.iter().map(|k| &k.id).filter(|id| !self.invalid.contains(*id)).collect();
        let ready = valid.iter().filter(|id| state.usable(id, &c.model, &budget, now)).count();
        let soonest = valid
            .iter()
            .filter_map(|id| self.cooling.get(&((*id).clone(), c.model.clone())))
            .min_by_key(|(until, _)| *until);
        let state_name = if self.open.contains(&provider.name) {
            "circuit_open"
        } else if provider.keys.is_empty() {
            "no_keys"
        } else if valid.is_empty() {
            "invalid_keys"
        } else if ready > 0 {
            "ready"
        } else if soonest.is_some() {
            "cooling"
        } else {
            "at_limit"
        };
        let cooling = soonest.filter(|_| state_name == "cooling");
        CandidateView {
            target: format!("{}/{}", provider.name, c.model),
            state: state_name,
            keys_ready: ready,
            keys: provider.keys.len(),
            free_in_seconds: cooling.map(|(until, _)| until.saturating_duration_since(now).as_secs_f64().ceil() as u64),
            reason: cooling.map(|(_, why)| why.label()),
        }
    }
}
