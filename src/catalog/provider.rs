//! Providers at run time: the catalog merged with the config, and the keys
//! found in the environment. What the gateway learns about each key while
//! it runs (cooldowns, usage, rejection) is kept apart, in [`crate::state`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};

use super::models::{ModelInfo, ModelTable};
use crate::catalog::Catalog;
use crate::config::{Config, Env, Limits, ProviderSpec};
use crate::plugin::{PlanCache, Plugin, PluginHost};
use crate::secret::{Redactor, Secret};
use crate::state::{Budget, Clock, KeyId, QuotaReset, Schedule};

/// An enabled provider.
pub struct Provider {
    /// Config/catalog name (`groq`).
    pub name: Arc<str>,
    /// Human name.
    pub display_name: String,
    /// API root without a trailing slash.
    pub base_url: String,
    /// Its wire format.
    pub plugin: Arc<Plugin>,
    /// Options handed to the plugin with every call.
    pub options: Vec<(String, String)>,
    /// Its keys, used in turn; one keyless slot for providers without keys.
    pub keys: Vec<Key>,
    next_key: AtomicUsize,
    /// Models it said are gone (410, or `model_not_found` twice in a row),
    /// with their strikes: out of routing until the next discovery.
    retired: Retired,
    /// Models it is known to serve (replaced whole by discovery).
    models: ArcSwap<ModelTable>,
    /// Extra headers for every request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Runs on this machine.
    pub local: bool,
    /// Limits for models it does not list.
    pub limits: Limits,
    /// Limits shared by all models of one key.
    pub key_limits: Limits,
    /// When its daily quota resets (its calendar day), if it says; `None`
    /// means daily counters roll over 24 hours.
    pub quota_reset: Option<Arc<Schedule>>,
    /// Whether its models are free unless a listing says otherwise.
    pub free: bool,
    /// Removes this provider's keys and configured header values from any
    /// text that came back from its upstream or plugin.
    pub redactor: Redactor,
    /// Its plugin's chat plans, by model and key.
    pub plans: PlanCache,
}

/// One API key of a provider.
pub struct Key {
    /// Position in the provider's key list, for logs (`key #2`): never the key.
    pub index: usize,
    /// How state knows this key.
    pub id: KeyId,
    /// Where it came from.
    pub source: KeySource,
    secret: Option<Secret>,
}

/// Where a provider key came from: what an operator must edit to change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A variable of the environment (or `.env`), named.
    Environment(String),
    /// The config's `keys` list (the keyless slot of a provider without
    /// keys is counted here too).
    Config,
    /// Added through the admin API (kept in the state database).
    Api,
}

impl KeySource {
    /// `environment`, `config` or `api`, as the admin API shows it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Environment(_) => "environment",
            Self::Config => "config",
            Self::Api => "api",
        }
    }
}

/// Keys added through the admin API (in use: not turned off, readable),
/// by provider, in the order they were added.
pub type AddedKeys = HashMap<String, Vec<Secret>>;

impl Key {
    /// The key, for the upstream request.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_ref().map(Secret::expose)
    }
}

impl Provider {
    /// Where to start in the key list for the next request: keys are used
    /// in turn so that each key's quota is spent evenly.
    pub fn next_key_start(&self) -> usize {
        self.next_key.fetch_add(1, Ordering::Relaxed) % self.keys.len().max(1)
    }

    /// The models it serves now.
    pub fn models(&self) -> Arc<ModelTable> {
        self.models.load_full()
    }

    /// Replaces its model list (discovery).
    pub fn set_models(&self, table: ModelTable) {
        self.models.store(Arc::new(table));
        // A fresh listing is the provider's word on what it serves now.
        self.retired.clear();
    }

    /// Whether `model` was dropped from routing (it answered 410, or
    /// `model_not_found` twice in a row) since the last discovery.
    pub fn is_retired(&self, model: &str) -> bool {
        self.retired.is_retired(model)
    }

    /// Counts a sign that `model` is gone: `gone` (a 410) retires it at
    /// once, a `model_not_found` at the second in a row. Whether it is
    /// retired now (and was not before).
    pub fn strike(&self, model: &Arc<str>, gone: bool) -> bool {
        self.retired.strike(model, if gone { RETIRE_AT } else { 1 })
    }

    /// `model` answered: its `model_not_found` strikes are forgiven.
    pub fn answered(&self, model: &str) {
        self.retired.forgive(model);
    }

    /// The listed id for `id` (shared, so candidates do not allocate).
    pub fn canonical(&self, id: &str) -> Option<Arc<str>> {
        self.models.load().get(id).map(|m| m.id.clone())
    }

    /// The limits a request to `model` is checked against on each key at
    /// `now`: the model's own (or the provider's, for models it does not
    /// list), the key's shared ones, and the quota period of the provider's
    /// calendar (on `clock`) when a daily limit counts over it.
    pub fn budget_for(&self, model: &str, clock: &Clock, now: Instant) -> Budget {
        self.budget_and_window(model, clock, now).0
    }

    /// [`Provider::budget_for`] and [`Provider::context_window`] in one
    /// lookup (the dispatcher needs both for every candidate).
    pub fn budget_and_window(&self, model: &str, clock: &Clock, now: Instant) -> (Budget, Option<u64>) {
        let models = self.models.load();
        let listed = models.get(model);
        let mut budget = Budget { model: listed.map_or(self.limits, |m| m.limits), key: self.key_limits, period: None };
        // Always, not only with a daily limit configured: a daily limit
        // learned from the upstream's headers counts over the same period.
        if let Some(schedule) = &self.quota_reset {
            budget.period = schedule.period(clock, now);
        }
        (budget, listed.and_then(|m| m.context))
    }

    /// When this provider's quota next resets after `now`, if it has a
    /// calendar.
    pub fn next_reset(&self, clock: &Clock, now: Instant) -> Option<Instant> {
        self.quota_reset.as_ref()?.next_reset(clock, now)
    }

    /// The context window of `model`, when known.
    pub fn context_window(&self, model: &str) -> Option<u64> {
        self.models.load().get(model).and_then(|m| m.context)
    }

    /// Takes over what `earlier` (the same provider before its keys
    /// changed) learned while it ran: its model table (discovered lists
    /// included), its retired models and its place in the key rotation.
    pub fn carry_over(&self, earlier: &Provider) {
        self.models.store(earlier.models());
        let strikes = earlier.retired.lock().clone();
        self.retired.any.store(!strikes.is_empty(), Ordering::Relaxed);
        *self.retired.lock() = strikes;
        self.next_key.store(earlier.next_key.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Strikes at which a model is retired.
const RETIRE_AT: u8 = 2;
/// Models with strikes kept per provider, at most: names come from
/// requests (`provider/anything`), so the map is capped.
const MAX_STRUCK: usize = 1024;

/// Strikes per model, and a flag that spares the lookup while there are none.
#[derive(Default)]
struct Retired {
    any: std::sync::atomic::AtomicBool,
    strikes: std::sync::Mutex<HashMap<Arc<str>, u8>>,
}

impl Retired {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u8>> {
        self.strikes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_retired(&self, model: &str) -> bool {
        self.any.load(Ordering::Relaxed) && self.lock().get(model).is_some_and(|s| *s >= RETIRE_AT)
    }

    fn strike(&self, model: &Arc<str>, by: u8) -> bool {
        let mut strikes = self.lock();
        if strikes.len() >= MAX_STRUCK && !strikes.contains_key(model) {
            return false;
        }
        self.any.store(true, Ordering::Relaxed);
        let s = strikes.entry(model.clone()).or_insert(0);
        let before = *s;
        *s = s.saturating_add(by);
        before < RETIRE_AT && *s >= RETIRE_AT
    }

    fn forgive(&self, model: &str) {
        if self.any.load(Ordering::Relaxed) {
            let mut strikes = self.lock();
            if strikes.get(model).is_some_and(|s| *s < RETIRE_AT) {
                strikes.remove(model);
            }
        }
    }

    fn clear(&self) {
        self.lock().clear();
        self.any.store(false, Ordering::Relaxed);
    }
}

/// A known provider that is not enabled, and what would enable it.
#[derive(Debug, Clone)]
pub struct DisabledProvider {
    /// Name.
    pub name: String,
    /// Key variables, any one of which would do (empty when a key is set).
    pub key_vars: Vec<String>,
    /// Other variables that must all be set.
    pub missing: Vec<String>,
    /// Where to get a key.
    pub signup: Option<String>,
    /// Turned off in the config (not a missing key).
    pub switched_off: bool,
}

impl DisabledProvider {
    /// What to set to enable it, e.g. `CLOUDFLARE_API_TOKEN + CLOUDFLARE_ACCOUNT_ID`
    /// or `GEMINI_API_KEY (or GOOGLE_API_KEY)`; `None` when no variable would.
    pub fn what_to_set(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some((first, rest)) = self.key_vars.split_first() {
            if rest.is_empty() {
                parts.push(first.clone());
            } else {
                parts.push(format!("{first} (or {})", rest.join(" or ")));
            }
        }
        parts.extend(self.missing.iter().cloned());
        (!parts.is_empty()).then(|| parts.join(" + "))
    }
}

/// Local providers that answered the start-up probe, with the models they
/// listed.
pub type LocalModels = HashMap<String, Vec<String>>;

/// A provider's `options` as the plugin takes them.
pub fn options_of(spec: &ProviderSpec) -> Vec<(String, String)> {
    spec.options.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A provider's configured `headers` (those that are valid HTTP; the
/// config check reports the others).
pub fn headers_of(spec: &ProviderSpec) -> Vec<(HeaderName, HeaderValue)> {
    spec.headers
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
        .collect()
}

/// Merges a config entry over its catalog entry, field by field.
pub fn merge(config: Option<&ProviderSpec>, catalog: Option<&ProviderSpec>) -> ProviderSpec {
    let c = config.cloned().unwrap_or_default();
    let Some(base) = catalog else { return c };
    let base = base.clone();
    ProviderSpec {
        display_name: c.display_name.or(base.display_name),
        plugin: c.plugin.or(base.plugin),
        base_url: c.base_url.or(base.base_url),
        keys: c.keys.or(base.keys),
        key_env: c.key_env.or(base.key_env),
        requires_env: c.requires_env.or(base.requires_env),
        signup: c.signup.or(base.signup),
        free: c.free.or(base.free),
        local: c.local.or(base.local),
        enabled: c.enabled.or(base.enabled),
        limits: merge_limits(c.limits, base.limits),
        key_limits: merge_limits(c.key_limits, base.key_limits),
        quota_reset: c.quota_reset.or(base.quota_reset),
        models: c.models.or(base.models),
        headers: c.headers.or(base.headers),
        options: match (c.options, base.options) {
            (Some(over), Some(mut merged)) => {
                merged.extend(over);
                Some(merged)
            }
            (over, base) => over.or(base),
        },
    }
}

fn merge_limits(over: Option<Limits>, base: Option<Limits>) -> Option<Limits> {
    match (over, base) {
        (Some(o), Some(b)) => {
            Some(Limits { rpm: o.rpm.or(b.rpm), rpd: o.rpd.or(b.rpd), tpm: o.tpm.or(b.tpm), tpd: o.tpd.or(b.tpd) })
        }
        (o, b) => o.or(b),
    }
}

/// Every provider of the catalog and the config, enabled or not. Catalog
/// providers come first, in catalog order, then custom ones in config order.
pub fn build(
    config: &Config,
    catalog: &Catalog,
    env: &Env,
    local: &LocalModels,
    plugins: &PluginHost,
) -> (Vec<Arc<Provider>>, Vec<DisabledProvider>) {
    build_with(config, catalog, env, local, plugins, &AddedKeys::new())
}

/// The names of every provider of the catalog and the config, in the order
/// [`build`] lists them.
pub fn names<'a>(config: &'a Config, catalog: &'a Catalog) -> impl Iterator<Item = &'a String> {
    catalog.providers.keys().chain(config.providers.keys().filter(|n| !catalog.providers.contains_key(*n)))
}

/// [`build`], with the keys `added` through the admin API after each
/// provider's environment or config keys: a provider that lacked a key is
/// enabled by one.
pub fn build_with(
    config: &Config,
    catalog: &Catalog,
    env: &Env,
    local: &LocalModels,
    plugins: &PluginHost,
    added: &AddedKeys,
) -> (Vec<Arc<Provider>>, Vec<DisabledProvider>) {
    let mut enabled = Vec::new();
    let mut disabled = Vec::new();
    for name in names(config, catalog) {
        let in_config = config.providers.get(name);
        let spec = merge(in_config, catalog.providers.get(name));
        let extra = added.get(name).map_or(&[][..], Vec::as_slice);
        match enable(name, &spec, in_config.is_some(), env, local, plugins, extra) {
            Ok(provider) => enabled.push(Arc::new(provider)),
            Err(off) => disabled.push(off),
        }
    }
    (enabled, disabled)
}

fn enable(
    name: &str,
    spec: &ProviderSpec,
    configured: bool,
    env: &Env,
    local: &LocalModels,
    plugins: &PluginHost,
    added: &[Secret],
) -> Result<Provider, DisabledProvider> {
    let off = |key_vars: Vec<String>, missing: Vec<String>, switched_off: bool| DisabledProvider {
        name: name.to_owned(),
        key_vars,
        missing,
        signup: spec.signup.clone(),
        switched_off,
    };
    if spec.enabled == Some(false) {
        return Err(off(Vec::new(), Vec::new(), true));
    }
    let missing: Vec<String> =
        spec.requires_env.iter().flatten().filter(|v| env.get_nonempty(v).is_none()).cloned().collect();
    let key_vars = spec.key_env.clone().unwrap_or_default();
    let is_local = spec.local == Some(true);
    let mut keys: Vec<(Secret, KeySource)> = match &spec.keys {
        Some(keys) => keys.iter().filter(|k| !k.is_empty()).map(|k| (k.clone(), KeySource::Config)).collect(),
        None => key_vars
            .iter()
            .filter_map(|var| Some((var, env.get_nonempty(var)?)))
            .flat_map(|(var, value)| {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(|k| (Secret::new(k), KeySource::Environment(var.clone())))
                    .collect::<Vec<_>>()
            })
            .collect(),
    };
    // Added keys come after the operator's files' keys; one that is
    // already there (added before it was also exported) is not doubled.
    for key in added.iter().filter(|k| !k.is_empty()) {
        if !keys.iter().any(|(k, _)| k == key) {
            keys.push((key.clone(), KeySource::Api));
        }
    }
    let needs_key = !is_local && (spec.keys.is_some() || !key_vars.is_empty());
    if !missing.is_empty() || (needs_key && keys.is_empty()) {
        let key_vars = if needs_key && keys.is_empty() { key_vars } else { Vec::new() };
        return Err(off(key_vars, missing, false));
    }
    // A local provider from the catalog is used only when it answered; one
    // named in the config is used as the config says.
    let probed = local.get(name);
    if is_local && !configured && probed.is_none() {
        return Err(off(Vec::new(), Vec::new(), false));
    }
    let Some(plugin) = plugins.get(spec.plugin.as_deref().unwrap_or("openai-compat")) else {
        return Err(off(Vec::new(), Vec::new(), true));
    };
    let provider_free = spec.free.unwrap_or(is_local);
    let provider_limits = spec.limits.unwrap_or_default();
    let mut models: Vec<ModelInfo> = spec
        .models
        .iter()
        .flatten()
        .map(|m| {
            let limits = merge_limits(m.limits, Some(provider_limits)).unwrap_or_default();
            ModelInfo::new(&m.id, m.context, m.free.unwrap_or(provider_free), limits, m.tags.clone())
        })
        .collect();
    for id in probed.into_iter().flatten() {
        let mut found = ModelInfo::new(id, None, provider_free, provider_limits, Vec::new());
        found.discovered = true;
        models.push(found);
    }
    let headers = headers_of(spec);
    let name: Arc<str> = Arc::from(name);
    // Configured header values (`HTTP-Referer`, an account id in a header)
    // are secrets too: an upstream that echoes its request leaks them.
    let redactor = Redactor::new(
        keys.iter().map(|(k, _)| k.expose()).chain(spec.headers.iter().flatten().map(|(_, v)| v.as_str())),
    );
    let slots: Vec<Key> = if keys.is_empty() {
        vec![Key { index: 0, id: KeyId::new(&name, None), source: KeySource::Config, secret: None }]
    } else {
        keys.into_iter()
            .enumerate()
            .map(|(index, (k, source))| Key { index, id: KeyId::new(&name, Some(k.expose())), source, secret: Some(k) })
            .collect()
    };
    Ok(Provider {
        display_name: spec.display_name.clone().unwrap_or_else(|| name.to_string()),
        name,
        base_url: spec.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned(),
        plugin,
        options: options_of(spec),
        keys: slots,
        next_key: AtomicUsize::new(0),
        retired: Retired::default(),
        models: ArcSwap::from_pointee(ModelTable::new(models)),
        headers,
        local: is_local,
        limits: provider_limits,
        key_limits: spec.key_limits.unwrap_or_default(),
        // Checked at load (config::validate), so a bad one never gets here.
        quota_reset: spec
            .quota_reset
            .as_deref()
            .and_then(|text| QuotaReset::parse(text).ok())
            .map(|r| Arc::new(Schedule::new(r))),
        free: provider_free,
        redactor,
        plans: PlanCache::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_quota_reset_overrides_the_catalogs() {
        let catalog = ProviderSpec { quota_reset: Some("00:00 America/Los_Angeles".into()), ..Default::default() };
        let config = ProviderSpec { quota_reset: Some("00:00 UTC".into()), ..Default::default() };
        assert_eq!(merge(Some(&config), Some(&catalog)).quota_reset.as_deref(), Some("00:00 UTC"));
        // A config entry that does not name one keeps the catalog's.
        let config = ProviderSpec { display_name: Some("G".into()), ..Default::default() };
        assert_eq!(merge(Some(&config), Some(&catalog)).quota_reset.as_deref(), Some("00:00 America/Los_Angeles"));
    }
}
