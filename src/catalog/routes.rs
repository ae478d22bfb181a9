//! Model naming: what the `model` field of a request resolves to.
//!
//! - a route alias (`chat-free`) → its targets, in the route's strategy order;
//! - `provider/model` → that provider only;
//! - a bare model id → every enabled provider that lists it.
//!
//! Everything that does not depend on the request is worked out once, when
//! the router is built; resolving a name is a map lookup and a small copy.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use indexmap::IndexMap;

use bytes::Bytes;
use serde_json::json;

use super::Catalog;
use super::provider::{DisabledProvider, Provider};
use crate::config::{Config, RouteSpec, RouteTarget, Strategy};
use crate::errors::ApiError;
use crate::state::StateStore;

/// The metric label of every model a provider does not list: client-chosen
/// names never become label values of their own (DESIGN.md, Bounds).
pub const UNLISTED: &str = "(unlisted)";

/// Names longer than this get no "did you mean" search (it is quadratic in
/// the name's length, and nobody mistypes 64 characters).
const MAX_SUGGESTED_LEN: usize = 64;

/// One provider/model pair the dispatcher may try.
#[derive(Clone)]
pub struct Candidate {
    /// The provider.
    pub provider: Arc<Provider>,
    /// The upstream model id.
    pub model: Arc<str>,
    /// The provider lists this model (catalog, config or discovery).
    pub listed: bool,
}

impl Candidate {
    /// `model` when the provider lists it: the label for metrics.
    pub fn metric_model(&self) -> Arc<str> {
        if self.listed {
            self.model.clone()
        } else {
            static UNLISTED_ARC: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
            UNLISTED_ARC.get_or_init(|| Arc::from(UNLISTED)).clone()
        }
    }

    /// A candidate for `id` at `provider`: the listed id when there is one.
    pub fn at(provider: &Arc<Provider>, id: &str) -> Self {
        match provider.canonical(id) {
            Some(model) => Self { provider: provider.clone(), model, listed: true },
            None => Self { provider: provider.clone(), model: Arc::from(id), listed: false },
        }
    }
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider.name, self.model)
    }
}

struct Route {
    targets: Vec<(Candidate, u32)>,
    strategy: Strategy,
    free: bool,
    next: AtomicUsize,
    /// Targets whose provider is not enabled, with what would enable it.
    needs: Vec<String>,
}

/// Resolves model names to candidate lists.
pub struct Router {
    providers: Vec<Arc<Provider>>,
    by_name: HashMap<String, usize>,
    by_model: HashMap<String, Vec<Candidate>>,
    routes: IndexMap<String, Route>,
    disabled: Vec<DisabledProvider>,
    no_provider_message: String,
    models_json: Bytes,
}

impl Router {
    /// Builds the tables from the enabled providers and the config's and
    /// catalog's routes (config routes replace catalog routes of the same
    /// name), then `pools` (from the policies) added or replacing routes as
    /// ordered lists of `provider/model`.
    pub fn new(
        providers: Vec<Arc<Provider>>,
        disabled: Vec<DisabledProvider>,
        config: &Config,
        catalog: &Catalog,
        pools: &IndexMap<String, Vec<String>>,
    ) -> Self {
        let by_name: HashMap<String, usize> =
            providers.iter().enumerate().map(|(i, p)| (p.name.to_string(), i)).collect();
        let mut by_model: HashMap<String, Vec<Candidate>> = HashMap::new();
        for p in &providers {
            for m in p.models().iter() {
                by_model.entry(m.id.to_string()).or_default().push(Candidate {
                    provider: p.clone(),
                    model: m.id.clone(),
                    listed: true,
                });
            }
        }
        let mut routes = IndexMap::new();
        let specs = config.routes.iter().chain(catalog.routes.iter().filter(|(n, _)| !config.routes.contains_key(*n)));
        for (name, spec) in specs {
            routes.insert(name.clone(), build_route(spec, &providers, &by_name, &by_model, &disabled));
        }
        for (name, targets) in pools {
            let spec = RouteSpec {
                targets: targets.iter().map(|t| RouteTarget { target: t.clone(), weight: None }).collect(),
                strategy: Strategy::Ordered,
                free: routes.get(name).is_none_or(|r: &Route| r.free),
            };
            routes.insert(name.clone(), build_route(&spec, &providers, &by_name, &by_model, &disabled));
        }
        let no_provider_message = no_provider_message(&disabled);
        let mut router =
            Self { providers, by_name, by_model, routes, disabled, no_provider_message, models_json: Bytes::new() };
        router.models_json = router.build_models_json();
        router
    }

    /// The enabled providers.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// Known providers that are not enabled.
    pub fn disabled(&self) -> &[DisabledProvider] {
        &self.disabled
    }

    /// Route names, in config then catalog order.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// The targets a route would try, in written order.
    pub fn route_targets(&self, name: &str) -> Option<Vec<Candidate>> {
        self.routes.get(name).map(|r| r.targets.iter().map(|(c, _)| c.clone()).collect())
    }

    /// Whether `name` is a pool of free models (`free`, `auto`, a route
    /// marked `free: true`): paid models never enter one.
    pub fn is_free_pool(&self, name: &str) -> bool {
        self.routes.get(name).is_some_and(|r| r.free)
    }

    /// The `/v1/models` body for these tables.
    pub fn models_json(&self) -> Bytes {
        self.models_json.clone()
    }

    /// Routes, then every `provider/model`, as OpenAI's model list.
    fn build_models_json(&self) -> Bytes {
        let mut data: Vec<serde_json::Value> = self
            .route_names()
            .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "freeway"}))
            .collect();
        for p in &self.providers {
            for m in p.models().iter() {
                let mut entry = json!({
                    "id": format!("{}/{}", p.name, m.id),
                    "object": "model",
                    "created": 0,
                    "owned_by": &*p.name,
                    "free": m.free,
                });
                if let Some(context) = m.context {
                    entry["context_length"] = json!(context);
                }
                data.push(entry);
            }
        }
        Bytes::from(json!({"object": "list", "data": data}).to_string())
    }

    /// What to tell a user when nothing is enabled.
    pub fn no_provider_message(&self) -> &str {
        &self.no_provider_message
    }

    /// The strategy of route `name`, when it is a route.
    pub fn strategy(&self, name: &str) -> Option<Strategy> {
        self.routes.get(name).map(|r| r.strategy)
    }

    /// Whether `model` names a route, a `provider/model` of an enabled
    /// provider, or a model some provider serves.
    pub fn knows(&self, model: &str) -> bool {
        self.routes.contains_key(model)
            || self.by_model.contains_key(model)
            || model.split_once('/').is_some_and(|(provider, id)| !id.is_empty() && self.by_name.contains_key(provider))
    }

    /// The candidates for a requested model name, in the order to try them.
    pub fn resolve(&self, model: &str) -> Result<Vec<Candidate>, ApiError> {
        if let Some(route) = self.routes.get(model) {
            if route.targets.is_empty() {
                return Err(self.unavailable(model, &route.needs));
            }
            return Ok(route.order());
        }
        if let Some((provider, id)) = model.split_once('/') {
            if let Some(&i) = self.by_name.get(provider) {
                if id.is_empty() {
                    return Err(ApiError::UnknownModel {
                        message: format!("`{model}` names no model after the provider"),
                    });
                }
                return Ok(vec![Candidate::at(&self.providers[i], id)]);
            }
            if !self.by_model.contains_key(model)
                && let Some(off) = self.disabled.iter().find(|d| d.name == provider)
            {
                return Err(self.unavailable(model, &needs_of(off)));
            }
        }
        if let Some(candidates) = self.by_model.get(model) {
            return Ok(candidates.clone());
        }
        if self.providers.is_empty() {
            return Err(ApiError::Unavailable { message: self.no_provider_message.clone() });
        }
        let suggestions =
            if model.len() > MAX_SUGGESTED_LEN { Vec::new() } else { nearest(model, self.model_names(), 3) };
        let hint = if suggestions.is_empty() {
            "; GET /v1/models lists what is available".to_owned()
        } else {
            format!("; did you mean {}?", suggestions.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "))
        };
        Err(ApiError::UnknownModel { message: format!("unknown model `{model}`{hint}") })
    }

    fn unavailable(&self, model: &str, needs: &[String]) -> ApiError {
        let message = if needs.is_empty() && self.providers.is_empty() {
            self.no_provider_message.clone()
        } else if needs.is_empty() {
            // `free` or `auto` with no free model among the enabled providers.
            let more = self.disabled.iter().filter(|d| !d.switched_off).filter_map(DisabledProvider::what_to_set);
            let more: Vec<String> = more.collect();
            if more.is_empty() {
                format!("no enabled provider serves `{model}`")
            } else {
                format!("no enabled provider serves `{model}`; set {} to enable more providers", more.join(" or "))
            }
        } else {
            format!("no enabled provider serves `{model}`; set {} to enable one", needs.join(" or "))
        };
        ApiError::Unavailable { message }
    }

    /// Every routable name: routes, then `provider/model` pairs.
    pub fn model_names(&self) -> impl Iterator<Item = String> + '_ {
        self.routes.keys().cloned().chain(
            self.providers
                .iter()
                .flat_map(|p| p.models().iter().map(|m| format!("{}/{}", p.name, m.id)).collect::<Vec<_>>()),
        )
    }

    /// Every route: its name, its targets in written order, and whether it
    /// is a pool of free models.
    pub fn routes(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &Candidate>, bool)> {
        self.routes.iter().map(|(name, route)| (name.as_str(), route.targets.iter().map(|(c, _)| c), route.free))
    }

    /// Whether `name` has a candidate that could be tried now: a usable key,
    /// not cooling down, not at a limit.
    pub fn available(&self, name: &str, state: &dyn StateStore) -> bool {
        let Ok(candidates) = self.resolve(name) else { return false };
        let now = std::time::Instant::now();
        candidates.iter().any(|c| {
            let budget = c.provider.budget_for(&c.model, &state.clock(), now);
            c.provider.keys.iter().any(|k| state.usable(&k.id, &c.model, &budget, now))
        })
    }
}

impl Route {
    fn order(&self) -> Vec<Candidate> {
        let n = self.targets.len();
        let pick = |i: usize| self.targets[i].0.clone();
        match self.strategy {
            // Headroom is ordered by the dispatcher, which knows the state.
            Strategy::Ordered | Strategy::Headroom => (0..n).map(pick).collect(),
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                (0..n).map(|k| pick((start + k) % n)).collect()
            }
            Strategy::Random => {
                let mut order: Vec<usize> = (0..n).collect();
                fastrand::shuffle(&mut order);
                order.into_iter().map(pick).collect()
            }
            Strategy::Weighted => {
                // Weighted order without replacement: sort by u^(1/w)
                // (Efraimidis–Spirakis), so each position is drawn by weight.
                let mut keyed: Vec<(f64, usize)> =
                    (0..n).map(|i| (fastrand::f64().powf(1.0 / f64::from(self.targets[i].1.max(1))), i)).collect();
                keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
                keyed.into_iter().map(|(_, i)| pick(i)).collect()
            }
        }
    }
}

fn build_route(
    spec: &RouteSpec,
    providers: &[Arc<Provider>],
    by_name: &HashMap<String, usize>,
    by_model: &HashMap<String, Vec<Candidate>>,
    disabled: &[DisabledProvider],
) -> Route {
    let mut targets = Vec::new();
    let mut needs = Vec::new();
    for t in &spec.targets {
        let weight = t.weight.unwrap_or(1);
        let target = t.target.trim();
        if let Some((p, id)) = target.split_once('/') {
            if let Some(&i) = by_name.get(p) {
                targets.push((Candidate::at(&providers[i], id), weight));
                continue;
            }
            if let Some(off) = disabled.iter().find(|d| d.name == p) {
                for need in needs_of(off) {
                    if !needs.contains(&need) {
                        needs.push(need);
                    }
                }
                continue;
            }
        }
        for c in by_model.get(target).into_iter().flatten() {
            targets.push((c.clone(), weight));
        }
    }
    Route { targets, strategy: spec.strategy, free: spec.free, next: AtomicUsize::new(0), needs }
}

fn needs_of(off: &DisabledProvider) -> Vec<String> {
    if off.switched_off {
        return vec![format!("providers.{}.enabled: true", off.name)];
    }
    match off.what_to_set() {
        Some(vars) => vec![vars],
        None => vec![format!("provider `{}` reachable (it did not answer)", off.name)],
    }
}

fn no_provider_message(disabled: &[DisabledProvider]) -> String {
    let mut options: Vec<String> = disabled
        .iter()
        .filter(|d| !d.switched_off)
        .filter_map(|d| {
            let vars = d.what_to_set()?;
            Some(match &d.signup {
                Some(url) => format!("{vars} [{url}]"),
                None => vars,
            })
        })
        .collect();
    options.push("or run Ollama on 127.0.0.1:11434".to_owned());
    format!("no provider is configured. Set an API key in the environment or in .env: {}", options.join("; "))
}

/// Up to `n` names close to `query`, best first (for "did you mean").
pub fn nearest<'a, S: AsRef<str> + 'a>(query: &str, names: impl Iterator<Item = S>, n: usize) -> Vec<String> {
    let q = query.to_ascii_lowercase();
    let mut scored: Vec<(f64, String)> = names
        .filter_map(|name| {
            let lower = name.as_ref().to_ascii_lowercase();
            let mut score = strsim::jaro_winkler(&q, &lower);
            if lower.contains(&q) || lower.rsplit('/').next() == Some(q.as_str()) {
                score = score.max(0.9);
            }
            (score >= 0.8).then(|| (score, name.as_ref().to_owned()))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_finds_typos_and_suffixes() {
        let names = ["chat-free", "groq/llama-3.3-70b", "code-free"];
        assert_eq!(nearest("chat-fre", names.iter(), 3)[0], "chat-free");
        assert_eq!(nearest("llama-3.3-70b", names.iter(), 3), vec!["groq/llama-3.3-70b".to_owned()]);
        assert!(nearest("zzzz", names.iter(), 3).is_empty());
    }
}
