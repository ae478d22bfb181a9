//! Providers at run time: the catalog merged with the config, the keys
//! found in the environment, and each key's state (cooling models, invalid).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderName, HeaderValue};

use crate::catalog::Catalog;
use crate::config::{Config, Env, Limits, ProviderSpec};
use arc_swap::ArcSwap;

use crate::limits::{self, Charge, LimitHit, Usage};
use crate::models::{ModelInfo, ModelTable};
use crate::plugin::{Plugin, PluginHost};
use crate::secret::Secret;

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
    pub keys: Vec<KeySlot>,
    next_key: AtomicUsize,
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
    /// Whether its models are free unless a listing says otherwise.
    pub free: bool,
}

/// One API key of a provider and what the dispatcher learned about it.
pub struct KeySlot {
    /// Position in the provider's key list, for logs (`key #2`): never the key.
    pub index: usize,
    secret: Option<Secret>,
    invalid: AtomicBool,
    cooldowns: Mutex<HashMap<Arc<str>, Instant>>,
    usage: Mutex<KeyUsage>,
}

#[derive(Default)]
struct KeyUsage {
    all_models: Usage,
    by_model: HashMap<Arc<str>, Usage>,
}

/// What one admitted request was charged against a key's limits.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    model: Option<Charge>,
    key: Option<Charge>,
}

impl KeySlot {
    fn new(index: usize, secret: Option<Secret>) -> Self {
        Self {
            index,
            secret,
            invalid: AtomicBool::new(false),
            cooldowns: Mutex::new(HashMap::new()),
            usage: Mutex::new(KeyUsage::default()),
        }
    }

    /// Admits one request of about `tokens` to `model` under the model's
    /// and the key's limits, and charges it; or says which limit it would
    /// pass and when there is room again.
    pub fn admit(
        &self,
        model: &Arc<str>,
        model_limits: &Limits,
        key_limits: &Limits,
        tokens: u64,
        now: Instant,
    ) -> Result<Admission, LimitHit> {
        let (by_model, by_key) = (limits::any(model_limits), limits::any(key_limits));
        if !by_model && !by_key {
            return Ok(Admission { model: None, key: None });
        }
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if by_key {
            usage.all_models.check(key_limits, tokens, now)?;
        }
        if by_model {
            usage.by_model.entry(model.clone()).or_insert_with(|| Usage::new(now)).check(model_limits, tokens, now)?;
        }
        let key = by_key.then(|| usage.all_models.record(tokens, now));
        let model = by_model.then(|| usage.by_model.entry(model.clone()).or_default().record(tokens, now));
        Ok(Admission { model, key })
    }

    /// Whether a request to `model` could go on this key now (nothing charged).
    pub fn usable(&self, model: &str, model_limits: &Limits, key_limits: &Limits, now: Instant) -> bool {
        if self.is_invalid() || self.cooling_until(model, now).is_some() {
            return false;
        }
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if limits::any(key_limits) && usage.all_models.check(key_limits, 0, now).is_err() {
            return false;
        }
        !(limits::any(model_limits)
            && usage.by_model.get_mut(model).is_some_and(|u| u.check(model_limits, 0, now).is_err()))
    }

    /// Corrects an admitted request's tokens with the usage its answer reported.
    pub fn settle(&self, model: &str, admission: Admission, actual_tokens: u64) {
        if admission.model.is_none() && admission.key.is_none() {
            return;
        }
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(charge) = admission.key {
            usage.all_models.settle(charge, actual_tokens);
        }
        if let (Some(charge), Some(u)) = (admission.model, usage.by_model.get_mut(model)) {
            u.settle(charge, actual_tokens);
        }
    }

    /// The key, for the upstream request.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_ref().map(Secret::expose)
    }

    /// The upstream rejected this key (401/403): it is not used again
    /// until the config changes.
    pub fn mark_invalid(&self) {
        self.invalid.store(true, Ordering::Relaxed);
    }

    /// See [`KeySlot::mark_invalid`].
    pub fn is_invalid(&self) -> bool {
        self.invalid.load(Ordering::Relaxed)
    }

    /// When `model` stops cooling down on this key, if it is cooling now.
    pub fn cooling_until(&self, model: &str, now: Instant) -> Option<Instant> {
        let mut map = self.cooldowns.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return None;
        }
        match map.get(model) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                map.remove(model);
                None
            }
            None => None,
        }
    }

    /// Cools `model` on this key until `until` (never shortens a cooldown).
    pub fn cool(&self, model: &Arc<str>, until: Instant) {
        let mut map = self.cooldowns.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(model.clone()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    /// Model cooldowns in force on this key.
    pub fn active_cooldowns(&self, now: Instant) -> usize {
        let map = self.cooldowns.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|until| **until > now).count()
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
    }

    /// The listed id for `id` (shared, so candidates do not allocate).
    pub fn canonical(&self, id: &str) -> Option<Arc<str>> {
        self.models.load().get(id).map(|m| m.id.clone())
    }

    /// The limits of a model: its own, or the provider's for unlisted ones.
    pub fn limits_for(&self, model: &str) -> Limits {
        self.models.load().get(model).map_or(self.limits, |m| m.limits)
    }

    /// Every key, for redacting upstream text.
    pub fn secrets(&self) -> Vec<&str> {
        self.keys.iter().filter_map(KeySlot::secret).collect()
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
    let mut enabled = Vec::new();
    let mut disabled = Vec::new();
    let names = catalog.providers.keys().chain(config.providers.keys().filter(|n| !catalog.providers.contains_key(*n)));
    for name in names {
        let in_config = config.providers.get(name);
        let spec = merge(in_config, catalog.providers.get(name));
        match enable(name, &spec, in_config.is_some(), env, local, plugins) {
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
    let keys: Vec<Secret> = match &spec.keys {
        Some(keys) => keys.iter().filter(|k| !k.is_empty()).cloned().collect(),
        None => key_vars
            .iter()
            .filter_map(|var| env.get_nonempty(var))
            .flat_map(|value| {
                value.split(',').map(str::trim).filter(|k| !k.is_empty()).map(Secret::new).collect::<Vec<_>>()
            })
            .collect(),
    };
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
    let headers = spec
        .headers
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
        .collect();
    let slots: Vec<KeySlot> = if keys.is_empty() {
        vec![KeySlot::new(0, None)]
    } else {
        keys.into_iter().enumerate().map(|(i, k)| KeySlot::new(i, Some(k))).collect()
    };
    Ok(Provider {
        name: Arc::from(name),
        display_name: spec.display_name.clone().unwrap_or_else(|| name.to_owned()),
        base_url: spec.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned(),
        plugin,
        options: spec.options.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect(),
        keys: slots,
        next_key: AtomicUsize::new(0),
        models: ArcSwap::from_pointee(ModelTable::new(models)),
        headers,
        local: is_local,
        limits: provider_limits,
        key_limits: spec.key_limits.unwrap_or_default(),
        free: provider_free,
    })
}
