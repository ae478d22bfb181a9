//! `freeway replay`: the request log run through another policies folder
//! (and optionally another config), to see what would have routed
//! differently before the change goes live.
//!
//! Nothing here calls an upstream or writes the state database. Both sides
//! of the comparison are built the same way, from the same logged model
//! state (the `models` table: discovery's last lists; a provider with a
//! list, or tried by a logged request, was enabled and is enabled here):
//!
//! ```text
//!  baseline: the config in force + its policies ─┐
//!                                                 ├─ routes (models hooks) over the logged model lists
//!  replay:   --config (or the same) + --policies ─┘
//!
//!  for each logged request, on both sides:
//!    unalias → `request` hooks (on the logged shape, or the logged body)
//!            → resolve → preferences first → the candidate order
//!  compare the orders: first choice changed / order only / same
//! ```
//!
//! What the live request path knows and replay does not is left out the
//! same way on both sides, so the comparison shows the policies' change
//! only: every candidate counts as available (no cooldowns, limits or
//! circuits), no session is pinned, a classifier model's answer is never
//! there (the rules decide), and routes with a random or rotating strategy
//! are compared in their written order. A request logged without its
//! messages is seen by the policies as its token estimate, whether it had
//! tools and a session, with an empty conversation (`mentions`, `turns`,
//! `last_user_length` see nothing). The `prepare` hooks are not run: they
//! shape the conversation for the chosen model after routing and cannot
//! change the order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::catalog::Catalog;
use crate::catalog::aliases::Aliases;
use crate::catalog::discovery;
use crate::catalog::provider::{self, DisabledProvider, LocalModels, Provider};
use crate::catalog::routes::{Candidate, Router};
use crate::config::{Config, Env, Strategy};
use crate::metrics::Metrics;
use crate::plugin::{ModelRecord, PluginHost};
use crate::policy::{CompileError, Derived, Pipeline, PolicyRequest, RequestState, Source, settings};
use crate::state::StateStore;
use crate::state::log::query::ReplayRow;

/// Why a side of the comparison could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    /// A policy does not compile (each with its file and line).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Policies(Vec<CompileError>),
    /// A plugin could not be loaded, or the settings are invalid.
    #[error("{0}")]
    Setup(String),
}

/// The model lists discovery saved, by provider (the `models` table), and
/// the providers the log shows were tried: what the gateway had enabled.
#[derive(Debug, Default, Clone)]
pub struct SavedModels {
    lists: HashMap<String, String>,
    tried: Vec<String>,
}

impl SavedModels {
    /// Reads every saved list from `conn`.
    pub fn read(conn: &rusqlite::Connection) -> rusqlite::Result<Self> {
        let mut stmt = conn.prepare("SELECT provider, models FROM models")?;
        let lists = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(Self { lists, tried: Vec::new() })
    }

    /// Also enables `providers` (those the log shows were tried), with
    /// their configured models when no list of theirs was saved.
    pub fn with_tried(mut self, providers: Vec<String>) -> Self {
        self.tried = providers;
        self
    }

    fn get(&self, provider: &str) -> Option<String> {
        self.lists.get(provider).cloned()
    }

    /// The model ids of each saved list.
    fn ids(&self) -> LocalModels {
        self.lists
            .iter()
            .filter_map(|(name, json)| {
                let records: Vec<ModelRecord> = serde_json::from_str(json).ok()?;
                Some((name.clone(), records.into_iter().map(|r| r.id).collect()))
            })
            .collect()
    }
}

/// One side of the comparison: routes and policies as a config and a
/// policies folder would build them over the logged model state.
pub struct Side {
    router: Arc<Router>,
    pipeline: Pipeline,
    aliases: Aliases,
    metrics: Metrics,
}

impl Side {
    /// Builds the side of `config` with the policies of `source`; the
    /// policy settings are the config's with `changes` (the admin API's)
    /// over them. A provider is enabled when `env` enables it or when it
    /// has a saved model list (its keys need not be in this shell: nothing
    /// is sent to it).
    pub fn build(
        config: &Config,
        catalog: &Catalog,
        env: &Env,
        source: &Source,
        changes: &serde_json::Map<String, Value>,
        saved: &SavedModels,
    ) -> Result<Self, SideError> {
        let metrics = Metrics::new();
        let effective = settings::merged(&config.policies.settings, changes).map_err(SideError::Setup)?;
        let pipeline = Pipeline::compile(source, &config.policies.disabled, &effective).map_err(SideError::Policies)?;
        let plugins =
            PluginHost::load(&config.plugin_settings(), config.plugins_dir().as_deref(), Arc::new(Metrics::new()))
                .map_err(|problems| SideError::Setup(problems.join("\n")))?;
        let (providers, disabled) = providers(config, catalog, env, &plugins, saved);
        discovery::restore_from(&providers, |name| saved.get(name));
        let router = pipeline.route_tables(providers, disabled, config, catalog, &metrics);
        Ok(Self { router: Arc::new(router), pipeline, aliases: Aliases::new(config.aliases.as_ref()), metrics })
    }

    /// The routing tables this side built.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Routes one logged request as the live request path would, up to the
    /// candidate order (see the module doc for what is left out).
    pub fn route(&self, row: &ReplayRow, state: &Arc<dyn StateStore>) -> Routed {
        let mut model = row.model.clone();
        if let Some(target) = self.aliases.target(&model)
            && !self.router.knows(&model)
        {
            model = target.to_owned();
        }
        let mut prefer = Vec::new();
        let mut tier = None;
        let chat = row.operation.as_deref() != Some("embeddings");
        if chat && self.pipeline.has_request_hooks() {
            let messages: Option<Vec<Value>> = row.messages.as_deref().and_then(|m| serde_json::from_str(m).ok());
            let derived = match (&messages, row.prompt_estimate) {
                (None, Some(tokens)) => Derived::with_tokens(i64::try_from(tokens).unwrap_or(i64::MAX)),
                _ => Derived::default(),
            };
            let (routes, availability_state) = (Arc::clone(&self.router), Arc::clone(state));
            let view = RequestState {
                model: model.clone(),
                requested: model.clone(),
                stream: row.stream,
                has_tools: row.has_tools.unwrap_or(false),
                messages: messages.unwrap_or_default(),
                // Only its presence was logged; any value stands for it
                // (a session's pins are not replayed).
                session_header: row.has_session.unwrap_or(false).then(|| format!("replay-{}", row.id)),
                availability: Some(Arc::new(move |name: &str| routes.available(name, &*availability_state))),
                pins: None,
                derived,
                ..RequestState::default()
            };
            let req = PolicyRequest::new(view);
            self.pipeline.on_request(&req, &self.metrics);
            let state = req.state();
            model.clone_from(&state.model);
            prefer.clone_from(&state.prefer);
            tier = state.tags.iter().rev().find(|(k, _)| k == "tier").map(|(_, v)| v.clone());
        }
        let resolved = match self.router.strategy(&model) {
            // A shuffled or rotating order differs on every call: compared
            // in its written order, so only the policies' change shows.
            Some(Strategy::RoundRobin | Strategy::Random | Strategy::Weighted) => {
                self.router.route_targets(&model).ok_or_else(|| self.router.resolve(&model).err())
            }
            _ => self.router.resolve(&model).map_err(Some),
        };
        let mut candidates = match resolved {
            Ok(candidates) => candidates,
            Err(e) => {
                let status = e.map_or(503, |e| e.classify().0.as_u16());
                return Routed { first: format!("(none: {status})"), provider: None, order: Vec::new(), tier };
            }
        };
        crate::proxy::put_first(&self.router, &model, &mut candidates, &prefer);
        let order: Vec<String> = candidates.iter().map(target).collect();
        match candidates.first() {
            Some(first) => Routed { first: target(first), provider: Some(first.provider.name.clone()), order, tier },
            None => Routed { first: "(none: 503)".to_owned(), provider: None, order, tier },
        }
    }

    /// Each enabled provider's known daily request limit: per key (its
    /// key-wide `rpd`, else its per-model default), times its keys.
    fn daily_limits(&self) -> HashMap<Arc<str>, u64> {
        self.router
            .providers()
            .iter()
            .filter_map(|p| {
                let per_key = p.key_limits.rpd.or(p.limits.rpd)?;
                Some((p.name.clone(), per_key.saturating_mul(p.keys.len().max(1) as u64)))
            })
            .collect()
    }
}

/// `provider/model`.
fn target(c: &Candidate) -> String {
    format!("{}/{}", c.provider.name, c.model)
}

/// The providers of `config` and `catalog`, in the gateway's order:
/// enabled when `env` enables them, or when they have a saved model list.
fn providers(
    config: &Config,
    catalog: &Catalog,
    env: &Env,
    plugins: &PluginHost,
    saved: &SavedModels,
) -> (Vec<Arc<Provider>>, Vec<DisabledProvider>) {
    let listed = saved.ids();
    let (enabled, disabled) = provider::build(config, catalog, env, &listed, plugins);
    // The providers with a saved list or tried in the log, enabled with
    // stand-in keys: the variables they need are set to a placeholder no
    // request ever carries.
    let wanted: std::collections::BTreeSet<&str> =
        listed.keys().map(String::as_str).chain(saved.tried.iter().map(String::as_str)).collect();
    let mut stand_ins = Vec::new();
    for name in &wanted {
        let spec = provider::merge(config.providers.get(*name), catalog.providers.get(*name));
        for var in spec.key_env.iter().flatten().chain(spec.requires_env.iter().flatten()) {
            stand_ins.push((var.clone(), "freeway-replay-sends-nothing".to_owned()));
        }
    }
    let (more, _) = provider::build(config, catalog, &Env::from_map(stand_ins), &listed, plugins);
    let mut by_name: HashMap<Arc<str>, Arc<Provider>> = enabled.into_iter().map(|p| (p.name.clone(), p)).collect();
    for p in more {
        if wanted.contains(&*p.name) && !by_name.contains_key(&p.name) {
            by_name.insert(p.name.clone(), p);
        }
    }
    let order = catalog.providers.keys().chain(config.providers.keys().filter(|n| !catalog.providers.contains_key(*n)));
    let mut providers = Vec::new();
    for name in order {
        if let Some(p) = by_name.remove(name.as_str()) {
            providers.push(p);
        }
    }
    let disabled = disabled.into_iter().filter(|d| !providers.iter().any(|p| *p.name == d.name)).collect();
    (providers, disabled)
}

/// Where a request would go first, and the whole order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// `provider/model` tried first, or `(none: STATUS)` when the request
    /// would be refused.
    pub first: String,
    /// The provider tried first.
    pub provider: Option<Arc<str>>,
    /// Every candidate, in order.
    pub order: Vec<String>,
    /// The tier the policies tagged (`auto:lite`...), if any.
    pub tier: Option<String>,
}

/// How one request's routing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Same candidates in the same order.
    Same,
    /// Same first choice, other order (or other fallbacks).
    Order,
    /// Another first choice.
    First,
}

/// Compares the baseline's routing with the replay's.
pub fn compare(before: &Routed, after: &Routed) -> Change {
    if before.first != after.first {
        Change::First
    } else if before.order != after.order {
        Change::Order
    } else {
        Change::Same
    }
}

/// The requests of one requested model and tier.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Group {
    /// The model the clients asked for.
    pub model: String,
    /// The tier the baseline's policies tagged, if any.
    pub tier: Option<String>,
    /// Requests.
    pub requests: u64,
    /// Requests whose first choice changes.
    pub first_changed: u64,
    /// Requests whose first choice stays and whose order changes.
    pub order_only: u64,
    /// The new first choices of the requests whose first choice changes,
    /// with their counts.
    pub to: BTreeMap<String, u64>,
    /// The tiers the replay's policies tag instead, with their counts.
    pub new_tiers: BTreeMap<String, u64>,
}

/// Requests a day going first to one provider, before and after.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProviderUse {
    /// The provider.
    pub provider: String,
    /// Requests that go to it first on the baseline.
    pub baseline_first: u64,
    /// Requests that go to it first on the replay.
    pub replay_first: u64,
    /// `baseline_first`, projected to a day over the replayed range.
    pub baseline_per_day: f64,
    /// `replay_first`, projected to a day.
    pub replay_per_day: f64,
    /// Its known daily request limit (see [`Side`]), when it has one.
    pub daily_limit: Option<u64>,
    /// `baseline_per_day / daily_limit`.
    pub baseline_share: Option<f64>,
    /// `replay_per_day / daily_limit`.
    pub replay_share: Option<f64>,
}

/// What `freeway replay` found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// Start of the range, RFC 3339.
    pub since: String,
    /// End of the range (when replay ran), RFC 3339.
    pub until: String,
    /// Requests replayed.
    pub requests: u64,
    /// Requests whose first choice changes.
    pub first_changed: u64,
    /// Requests whose order only changes.
    pub order_only: u64,
    /// Requests replayed on their logged messages (`state.log_bodies`).
    pub with_messages: u64,
    /// Requests the baseline tags with another tier than the one logged:
    /// the live request had what replay lacks (its messages, a
    /// classifier's answer, cooldowns), so their comparison is approximate.
    pub baseline_off_log: u64,
    /// Per requested model and baseline tier, ordered by them.
    pub groups: Vec<Group>,
    /// Per provider that any request goes to first, by name.
    pub providers: Vec<ProviderUse>,
}

/// Groups a report keeps at most: model names come from clients, and past
/// this many the rest are summed as one `(other models)` group.
pub const MAX_GROUPS: usize = 1000;

/// Sums comparisons into a [`Report`].
#[derive(Default)]
pub struct Tally {
    report: Report,
    groups: BTreeMap<(String, Option<String>), Group>,
    first: BTreeMap<Arc<str>, (u64, u64)>,
}

impl Tally {
    /// Counts one request (asked as `model`, tagged `logged_tier` live)
    /// routed `before` and `after`.
    pub fn add(
        &mut self,
        model: &str,
        with_messages: bool,
        logged_tier: Option<&str>,
        before: &Routed,
        after: &Routed,
    ) {
        let r = &mut self.report;
        r.requests += 1;
        r.with_messages += u64::from(with_messages);
        r.baseline_off_log += u64::from(logged_tier.is_some() && logged_tier != before.tier.as_deref());
        let mut key = (model.to_owned(), before.tier.clone());
        if self.groups.len() >= MAX_GROUPS && !self.groups.contains_key(&key) {
            key = ("(other models)".to_owned(), None);
        }
        let group = self.groups.entry(key).or_insert_with_key(|(model, tier)| Group {
            model: model.clone(),
            tier: tier.clone(),
            ..Group::default()
        });
        group.requests += 1;
        match compare(before, after) {
            Change::First => {
                r.first_changed += 1;
                group.first_changed += 1;
                *group.to.entry(after.first.clone()).or_default() += 1;
            }
            Change::Order => {
                r.order_only += 1;
                group.order_only += 1;
            }
            Change::Same => {}
        }
        if after.tier != before.tier {
            let tier = after.tier.clone().unwrap_or_else(|| "(none)".to_owned());
            *group.new_tiers.entry(tier).or_default() += 1;
        }
        if let Some(p) = &before.provider {
            self.first.entry(p.clone()).or_default().0 += 1;
        }
        if let Some(p) = &after.provider {
            self.first.entry(p.clone()).or_default().1 += 1;
        }
    }

    /// The report over a range of `days`, with each provider's daily
    /// limit as `limits` knows it.
    pub fn finish(self, since: String, until: String, days: f64, limits: &HashMap<Arc<str>, u64>) -> Report {
        let days = days.max(f64::MIN_POSITIVE);
        let providers = self
            .first
            .into_iter()
            .map(|(provider, (before, after))| {
                let (baseline_per_day, replay_per_day) = (before as f64 / days, after as f64 / days);
                let daily_limit = limits.get(&provider).copied();
                let share = |per_day: f64| daily_limit.filter(|l| *l > 0).map(|l| per_day / l as f64);
                ProviderUse {
                    provider: provider.to_string(),
                    baseline_first: before,
                    replay_first: after,
                    baseline_per_day,
                    replay_per_day,
                    daily_limit,
                    baseline_share: share(baseline_per_day),
                    replay_share: share(replay_per_day),
                }
            })
            .collect();
        Report { since, until, groups: self.groups.into_values().collect(), providers, ..self.report }
    }
}

/// Replays every row `rows` yields through `baseline` and `replay`.
pub fn run(
    baseline: &Side,
    replay: &Side,
    rows: impl FnOnce(&mut dyn FnMut(ReplayRow) -> bool) -> rusqlite::Result<()>,
) -> rusqlite::Result<Tally> {
    // An empty store: every candidate counts as available, on both sides.
    let state: Arc<dyn StateStore> = Arc::new(crate::state::MemoryState::new(crate::state::StateBounds::default()));
    let mut tally = Tally::default();
    rows(&mut |row: ReplayRow| {
        let (before, after) = (baseline.route(&row, &state), replay.route(&row, &state));
        let logged_tier = row.tags.iter().rev().find(|(k, _)| k == "tier").map(|(_, v)| v.as_str());
        tally.add(&row.model, row.messages.is_some(), logged_tier, &before, &after);
        true
    })?;
    Ok(tally)
}

/// The daily limits the replay side knows, for [`Tally::finish`].
pub fn daily_limits(side: &Side) -> HashMap<Arc<str>, u64> {
    side.daily_limits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(order: &[&str], tier: Option<&str>) -> Routed {
        Routed {
            first: order.first().map_or("(none: 503)".to_owned(), |s| (*s).to_owned()),
            provider: order.first().map(|s| Arc::from(s.split_once('/').map_or(*s, |(p, _)| p))),
            order: order.iter().map(|s| (*s).to_owned()).collect(),
            tier: tier.map(str::to_owned),
        }
    }

    #[test]
    fn a_change_is_of_the_first_choice_of_the_order_only_or_none() {
        let base = routed(&["a/x", "b/y"], None);
        assert_eq!(compare(&base, &routed(&["a/x", "b/y"], None)), Change::Same);
        assert_eq!(compare(&base, &routed(&["b/y", "a/x"], None)), Change::First);
        assert_eq!(compare(&base, &routed(&["a/x"], None)), Change::Order, "a fallback less is an order change");
        assert_eq!(compare(&base, &routed(&[], None)), Change::First, "refused now");
    }

    #[test]
    fn the_tally_groups_by_model_and_tier_and_projects_a_day() {
        let mut tally = Tally::default();
        let lite = routed(&["a/small", "b/big"], Some("auto:lite"));
        let standard = routed(&["b/big", "a/small"], Some("auto:standard"));
        tally.add("auto", false, Some("auto:lite"), &lite, &standard);
        tally.add("auto", true, Some("auto:large"), &lite, &standard);
        tally.add("auto", false, None, &lite, &routed(&["a/small"], Some("auto:lite")));
        tally.add("free", false, None, &lite, &lite);
        let limits = HashMap::from([(Arc::from("a"), 100)]);
        let report = tally.finish("s".into(), "u".into(), 0.5, &limits);
        assert_eq!((report.requests, report.first_changed, report.order_only, report.with_messages), (4, 2, 1, 1));
        assert_eq!(report.baseline_off_log, 1, "logged large, replayed lite");
        assert_eq!(report.groups.len(), 2);
        let auto = &report.groups[0];
        assert_eq!((auto.model.as_str(), auto.tier.as_deref()), ("auto", Some("auto:lite")));
        assert_eq!((auto.requests, auto.first_changed, auto.order_only), (3, 2, 1));
        assert_eq!(auto.to, BTreeMap::from([("b/big".to_owned(), 2)]));
        assert_eq!(auto.new_tiers, BTreeMap::from([("auto:standard".to_owned(), 2)]));
        let a = report.providers.iter().find(|p| p.provider == "a").unwrap();
        assert_eq!((a.baseline_first, a.replay_first), (4, 2));
        assert_eq!((a.baseline_per_day, a.replay_per_day), (8.0, 4.0), "half a day's requests, twice over");
        assert_eq!((a.baseline_share, a.replay_share), (Some(0.08), Some(0.04)));
        let b = report.providers.iter().find(|p| p.provider == "b").unwrap();
        assert_eq!((b.baseline_first, b.replay_first, b.daily_limit, b.replay_share), (0, 2, None, None));
    }

    #[test]
    fn groups_past_the_cap_are_summed_as_one() {
        let mut tally = Tally::default();
        let same = routed(&["a/x"], None);
        for i in 0..MAX_GROUPS + 5 {
            tally.add(&format!("made-up-{i}"), false, None, &same, &same);
        }
        let report = tally.finish(String::new(), String::new(), 1.0, &HashMap::new());
        assert_eq!(report.groups.len(), MAX_GROUPS + 1);
        let other = report.groups.iter().find(|g| g.model == "(other models)").unwrap();
        assert_eq!(other.requests, 5);
    }
}
