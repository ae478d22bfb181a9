//! The gateway as a value: everything a running instance shares across
//! requests. Build one with [`Gateway::new`], then serve it
//! ([`crate::server::serve`]) or call [`Gateway::handle`] from your own
//! hyper service.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

use crate::api;
use crate::auth::Auth;
use crate::body::ResponseBody;
use crate::catalog::Catalog;
use crate::catalog::discovery::{self, Discovery};
use crate::catalog::provider::{self, AddedKeys, DisabledProvider, KeySource, LocalModels, Provider, merge};
use crate::catalog::routes::Router;
use crate::config::{Config, Env, ProviderSpec};
use crate::metrics::Metrics;
use crate::plugin::{PluginHost, Target};
use crate::policy::watch::PolicyWatcher;
use crate::policy::{Pipeline, Policies, Source as PolicySource, settings};
use crate::proxy::Proxy;
use crate::secret::{Redactor, Secret};
use crate::state::vault::{self, StoredKey, Vault, VaultError};
use crate::state::{Clock, MemoryState, PersistentState, SharedState, StateBounds, StateStore};
use crate::upstream::Upstream;

/// Where the policies come from: `policies.dir` when it exists, else the
/// embedded ones.
pub fn policy_source(config: &Config) -> PolicySource {
    match config.policies.dir.as_deref().map(|d| config.resolve_path(d)) {
        Some(dir) if dir.is_dir() => PolicySource::Dir(dir),
        Some(dir) => {
            tracing::warn!(dir = %dir.display(), "policies.dir does not exist; using the built-in policies");
            PolicySource::Embedded
        }
        None => PolicySource::Embedded,
    }
}

/// The routing tables: the config's and catalog's routes, then what the
/// policies' `models` hooks add or reorder (`free`, `auto:*`...).
fn route_tables(
    providers: Vec<Arc<Provider>>,
    disabled: Vec<DisabledProvider>,
    config: &Config,
    catalog: &Catalog,
    pipeline: &Pipeline,
    metrics: &Metrics,
) -> Router {
    let base = Router::new(providers.clone(), disabled.clone(), config, catalog, &indexmap::IndexMap::new());
    if !pipeline.has_models_hooks() {
        return base;
    }
    let overrides = pipeline.build_pools(&base, metrics);
    Router::new(providers, disabled, config, catalog, &overrides)
}

/// The state store `config` asks for: the database file (loaded), or
/// memory only; shared with other instances through Redis when
/// `state.redis` is set.
fn open_state(config: &Config, env: &Env, clock: Clock) -> Result<Arc<dyn StateStore>, Vec<String>> {
    let local: Arc<dyn StateStore> = match config.state_path(env) {
        None => Arc::new(MemoryState::with_clock(StateBounds::default(), clock)),
        Some(path) => {
            let retention = config.state.log_retention.get();
            match PersistentState::open(&path, retention, StateBounds::default(), clock) {
                Ok(state) => Arc::new(state),
                Err(e) => return Err(vec![format!("state.path: {e}")]),
            }
        }
    };
    match config.state.redis.as_deref() {
        None => Ok(local),
        Some(url) => match SharedState::start(url, local) {
            Ok(shared) => Ok(Arc::new(shared)),
            Err(e) => Err(vec![format!("state.redis: {e}")]),
        },
    }
}

/// The key store beside the state database, with what it holds; `None`
/// with memory-only state (a malformed `FREEWAY_MASTER_KEY` is refused
/// all the same). Keys that do not open are reported here, once.
fn open_vault(config: &Config, env: &Env) -> Result<ApiKeys, Vec<String>> {
    let Some(path) = config.state_path(env) else {
        vault::master_from_env(env).map_err(|e| vec![e])?;
        return Ok(ApiKeys::new(None, Vec::new()));
    };
    let store = Vault::open(&path, env).map_err(|e| vec![e])?;
    let stored = store.load().map_err(|e| vec![format!("{}: {e}", path.display())])?;
    for key in stored.iter().filter(|k| k.secret.is_none()) {
        tracing::warn!(
            provider = %key.provider,
            fingerprint = %format!("{:016x}", key.fingerprint),
            master_key = %store.master_source(),
            "a provider key added through the admin API cannot be decrypted with this master key; it is not \
             used (restore the master key it was stored under, or delete it in /admin/api/keys)"
        );
    }
    Ok(ApiKeys::new(Some(Arc::new(store)), stored))
}

/// The stored keys in use: not turned off, and readable.
fn keys_in_use(stored: &[StoredKey]) -> AddedKeys {
    let mut added = AddedKeys::new();
    for key in stored.iter().filter(|k| !k.disabled) {
        if let Some(secret) = &key.secret {
            added.entry(key.provider.clone()).or_default().push(secret.clone());
        }
    }
    added
}

/// Why a provider key could not be added, changed or removed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Memory-only state: there is nowhere to keep the key.
    #[error(
        "keys added through the admin API are kept in the state database, and state.path is \"\" (memory \
         only): set state.path so that they survive a restart"
    )]
    NoStorage,
    /// The provider already has this key.
    #[error("{0} already has this key")]
    Duplicate(String),
    /// No key of the provider has this fingerprint.
    #[error("{provider} has no key with fingerprint {fingerprint:016x}")]
    NotFound {
        /// Provider.
        provider: String,
        /// The fingerprint asked for.
        fingerprint: u64,
    },
    /// The key comes from the environment or the config, which the API
    /// does not edit.
    #[error("{}", not_editable(provider, from))]
    NotEditable {
        /// Provider.
        provider: String,
        /// Where the key comes from.
        from: KeySource,
    },
    /// The database or the key file failed.
    #[error("{0}")]
    Storage(String),
}

fn not_editable(provider: &str, source: &KeySource) -> String {
    match source {
        KeySource::Environment(var) => format!(
            "this {provider} key comes from the environment variable {var}: change it there and restart (only keys \
             added through this API can be changed here)"
        ),
        _ => format!(
            "this {provider} key comes from the config (providers.{provider}.keys): change it there and restart \
             (only keys added through this API can be changed here)"
        ),
    }
}

/// Keys added through the admin API: where they are kept, and what is kept.
struct ApiKeys {
    vault: Option<Arc<Vault>>,
    /// The rows of the vault, as last read or written (with their keys).
    stored: Mutex<Vec<StoredKey>>,
    /// Key changes one at a time: each is stored, then the providers rebuilt.
    changing: tokio::sync::Mutex<()>,
}

impl ApiKeys {
    fn new(vault: Option<Arc<Vault>>, stored: Vec<StoredKey>) -> Self {
        Self { vault, stored: Mutex::new(stored), changing: tokio::sync::Mutex::new(()) }
    }
}

/// How long the listing that validates or tests a key may take.
const KEY_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// A weak handle on a gateway.
pub struct WeakGateway(std::sync::Weak<Inner>);

impl WeakGateway {
    /// The gateway, if it is still alive.
    pub fn upgrade(&self) -> Option<Gateway> {
        self.0.upgrade().map(|inner| Gateway { inner })
    }
}

/// How long the start-up probe waits for a local provider (Ollama).
const LOCAL_PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// A configured gateway. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    catalog: Catalog,
    discovery: Discovery,
    proxy: Proxy,
    metrics: Arc<Metrics>,
    auth: Auth,
    admission: crate::api::admission::Admission,
    /// Recent Responses-API conversations, for `previous_response_id`.
    conversations: crate::api::responses::Conversations,
    /// The watch on the policies folder; it stops with the gateway.
    watcher: Mutex<Option<PolicyWatcher>>,
    /// Policy settings changed through the admin API, and where they are
    /// kept (`policy::settings`).
    settings: Mutex<LiveSettings>,
    /// What [`provider::build_with`] needs to rebuild the providers when a
    /// key is added or removed: the environment, the local providers that
    /// answered at start-up, the plugins.
    env: Env,
    local: LocalModels,
    plugins: PluginHost,
    /// Provider keys added through the admin API.
    keys: ApiKeys,
    /// The trace export, when `telemetry.otlp_endpoint` is set.
    telemetry: Option<crate::telemetry::Telemetry>,
}

/// The policy settings an operator changed, over the config's.
struct LiveSettings {
    changes: serde_json::Map<String, serde_json::Value>,
    file: Option<PathBuf>,
}

impl Gateway {
    /// Builds a gateway from a validated config and the catalog: loads the
    /// plugins and enables every provider whose keys are in `env` (and local
    /// ones that answer). Fails, listing every problem, when a plugin cannot
    /// be loaded.
    pub async fn new(config: Config, catalog: Catalog, env: &Env) -> Result<Self, Vec<String>> {
        Self::with_clock(config, catalog, env, Clock::system()).await
    }

    /// [`Gateway::new`] on `clock`: tests start it just before a
    /// provider's quota reset instead of waiting for one.
    pub async fn with_clock(
        mut config: Config,
        catalog: Catalog,
        env: &Env,
        clock: Clock,
    ) -> Result<Self, Vec<String>> {
        let metrics = Arc::new(Metrics::new());
        let plugin_dir = config.plugins_dir();
        let plugins = PluginHost::load(&config.plugin_settings(), plugin_dir.as_deref(), metrics.clone())?;
        let extra_roots = config.extra_roots().unwrap_or_else(|e| {
            tracing::warn!("dispatch.ca_file: {e}");
            Vec::new()
        });
        let upstream = Upstream::new(config.dispatch.connect_timeout.get(), &extra_roots);
        let telemetry = crate::telemetry::Telemetry::new(&config.telemetry, upstream.clone(), metrics.clone())
            .map_err(|e| vec![e])?;
        let local = probe_local(&upstream, &plugins, &config, &catalog).await;
        let state = open_state(&config, env, clock)?;
        // After the state: the database is migrated by then.
        let keys = open_vault(&config, env)?;
        let in_use = keys_in_use(&keys.stored.lock().unwrap_or_else(|e| e.into_inner()));
        let (enabled, disabled) = provider::build_with(&config, &catalog, env, &local, &plugins, &in_use);
        let restored = discovery::restore(&enabled, &state);
        if restored > 0 {
            tracing::info!(providers = restored, "model lists from the last run restored; discovery refreshes them");
        }
        let settings_file = config.state_path(env).map(|db| settings::file_beside(&db));
        let changes = settings_file.as_deref().map(settings::load).unwrap_or_default();
        let effective = settings::merged(&config.policies.settings, &changes).map_err(|e| vec![e])?;
        if !changes.is_empty() {
            let keys: Vec<&str> = changes.keys().map(String::as_str).collect();
            tracing::info!(changed = %keys.join(", "), "policy settings changed through the admin API are in force");
        }
        let pipeline = Pipeline::compile(&policy_source(&config), &config.policies.disabled, &effective)
            .map_err(|errors| errors.iter().map(|e| format!("policy {e}")).collect::<Vec<_>>())?;
        let router = route_tables(enabled, disabled, &config, &catalog, &pipeline, &metrics);
        let proxy =
            Proxy::new(router, state, upstream, metrics.clone(), config.dispatch.clone(), Policies::new(pipeline))
                .with_aliases(crate::catalog::aliases::Aliases::new(config.aliases.as_ref()))
                .with_log_bodies(config.state.log_bodies);
        let auth = Auth::with_clients(&config.server.api_keys);
        // The digests are all the gateway needs from now on.
        config.server.api_keys.iter_mut().for_each(crate::config::ApiKey::forget_token);
        let admission = crate::api::admission::Admission::new(&config.server);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                catalog,
                discovery: Discovery::default(),
                proxy,
                metrics,
                auth,
                admission,
                conversations: crate::api::responses::Conversations::default(),
                watcher: Mutex::new(None),
                settings: Mutex::new(LiveSettings { changes, file: settings_file }),
                env: env.clone(),
                local,
                plugins,
                keys,
                telemetry,
            }),
        })
    }

    /// Answers one HTTP request (any body type), as the server does.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match &self.inner.telemetry {
            Some(telemetry) => telemetry.traced(request, |request| api::handle(self, request)).await,
            None => api::handle(self, request).await,
        }
    }

    /// Sends the trace spans still waiting (graceful shutdown).
    pub async fn flush_telemetry(&self) {
        if let Some(telemetry) = &self.inner.telemetry {
            telemetry.shutdown().await;
        }
    }

    /// The config it runs on.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The catalog it was built from.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The request path: routes, state, policies, the upstream client.
    pub fn proxy(&self) -> &Proxy {
        &self.inner.proxy
    }

    /// Model resolution and the enabled providers.
    pub fn router(&self) -> Arc<Router> {
        self.inner.proxy.routes()
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Client authentication.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// The in-flight bounds.
    pub fn admission(&self) -> &crate::api::admission::Admission {
        &self.inner.admission
    }

    /// Recent Responses-API conversations.
    pub fn conversations(&self) -> &crate::api::responses::Conversations {
        &self.inner.conversations
    }

    /// The upstream client.
    pub fn upstream(&self) -> &Upstream {
        self.inner.proxy.upstream()
    }

    /// Model discovery's status.
    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// The routing policies in force.
    pub fn policies(&self) -> &Policies {
        self.inner.proxy.policies()
    }

    /// Rebuilds the routing tables from the providers' current model lists
    /// and the pipeline in force; requests in flight keep the tables they
    /// started with. Rebuilds never interleave.
    pub fn rebuild_routes(&self) {
        let (config, catalog, metrics) = (&self.inner.config, &self.inner.catalog, &self.inner.metrics);
        self.inner.proxy.rebuild_routes(|current, pipeline| {
            route_tables(current.providers().to_vec(), current.disabled().to_vec(), config, catalog, pipeline, metrics)
        });
    }

    /// Recompiles the policies from their folder; installs them and
    /// rebuilds the routes, or keeps the last good pipeline and reports why.
    pub fn reload_policies(&self) -> bool {
        let config = &self.inner.config;
        let live = self.inner.settings.lock().unwrap_or_else(|e| e.into_inner());
        let effective = settings::merged(&config.policies.settings, &live.changes)
            .unwrap_or_else(|_| config.policies.settings.clone());
        let compiled = Pipeline::compile(&policy_source(config), &config.policies.disabled, &effective);
        let installed = self.policies().install(compiled);
        drop(live);
        if installed {
            self.rebuild_routes();
        }
        installed
    }

    /// The policy settings in force (the config's with the admin API's
    /// changes over them), the keys changed, and the file keeping them.
    pub fn policy_settings(&self) -> (serde_json::Value, Vec<String>, Option<PathBuf>) {
        let live = self.inner.settings.lock().unwrap_or_else(|e| e.into_inner());
        let base = &self.inner.config.policies.settings;
        let effective = settings::merged(base, &live.changes).unwrap_or_else(|_| base.clone());
        let json = serde_json::to_value(&effective).unwrap_or_default();
        (json, live.changes.keys().cloned().collect(), live.file.clone())
    }

    /// Changes policy settings (top-level keys; `null` takes a change
    /// back): validated, kept in the settings file, then applied like a
    /// policy reload. Nothing changes when any step fails; the error says
    /// why (and is the client's fault when `.0` is true).
    pub fn change_policy_settings(&self, change: &serde_json::Value) -> Result<(), (bool, String)> {
        let change = settings::validate(change).map_err(|e| (true, e))?;
        let config = &self.inner.config;
        let mut live = self.inner.settings.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes = live.changes.clone();
        for (key, value) in change {
            if value.is_null() {
                changes.remove(key);
            } else {
                changes.insert(key.clone(), value.clone());
            }
        }
        let effective = settings::merged(&config.policies.settings, &changes).map_err(|e| (true, e))?;
        let compiled = Pipeline::compile(&policy_source(config), &config.policies.disabled, &effective)
            .map_err(|errors| (false, errors.iter().map(|e| format!("policy {e}")).collect::<Vec<_>>().join("; ")))?;
        if let Some(file) = &live.file {
            settings::save(file, &changes).map_err(|e| (false, format!("the settings could not be kept: {e}")))?;
        }
        live.changes = changes;
        self.policies().install(Ok(compiled));
        drop(live);
        self.rebuild_routes();
        Ok(())
    }

    /// Watches the policies folder (when there is one) and reloads on
    /// change, until the gateway is dropped.
    pub fn watch_policies(&self) -> Result<(), String> {
        let PolicySource::Dir(dir) = policy_source(&self.inner.config) else { return Ok(()) };
        let weak = self.downgrade();
        let watcher = crate::policy::watch::spawn(dir, move || match weak.upgrade() {
            Some(gateway) => {
                gateway.reload_policies();
                true
            }
            None => false,
        })?;
        *self.inner.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
        Ok(())
    }

    /// The name of the policy watcher's thread, while it runs.
    pub fn policy_watcher_thread(&self) -> Option<String> {
        let watcher = self.inner.watcher.lock().unwrap_or_else(|e| e.into_inner());
        watcher.as_ref().filter(|w| w.is_running()).and_then(|w| w.thread_name().map(str::to_owned))
    }

    /// Refreshes every provider's model list now, then the routing tables.
    /// Returns each provider's outcome.
    pub async fn refresh_models(&self) -> Vec<(String, Result<usize, String>)> {
        let providers = self.router().providers().to_vec();
        let outcomes =
            discovery::refresh(&providers, self.upstream(), &self.inner.discovery, self.inner.proxy.state()).await;
        self.rebuild_routes();
        outcomes
    }

    /// Refreshes the model lists now and then every `interval`, until the
    /// gateway is dropped.
    pub fn spawn_discovery(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = self.downgrade();
        tokio::spawn(async move {
            loop {
                let Some(gateway) = weak.upgrade() else { return };
                gateway.refresh_models().await;
                drop(gateway);
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// A handle that does not keep the gateway alive (background tasks).
    pub fn downgrade(&self) -> WeakGateway {
        WeakGateway(Arc::downgrade(&self.inner))
    }

    /// Every provider the catalog and the config know, in their order.
    pub fn provider_names(&self) -> Vec<String> {
        provider::names(&self.inner.config, &self.inner.catalog).cloned().collect()
    }

    /// A provider's catalog entry with the config's over it; `None` when
    /// neither knows it.
    pub fn provider_spec(&self, name: &str) -> Option<ProviderSpec> {
        let (config, catalog) = (self.inner.config.providers.get(name), self.inner.catalog.providers.get(name));
        (config.is_some() || catalog.is_some()).then(|| merge(config, catalog))
    }

    /// Whether keys can be added through the admin API (there is a state
    /// database to keep them in).
    pub fn stores_keys(&self) -> bool {
        self.inner.keys.vault.is_some()
    }

    /// The keys added through the admin API, as the database holds them
    /// (a key that does not open has no secret). Never show a secret.
    pub fn stored_keys(&self) -> Vec<StoredKey> {
        self.inner.keys.stored.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One model listing of `provider` with `key` (its plugin, base URL,
    /// options and headers, whether the provider is enabled or not): how
    /// many models it listed, `None` when its plugin cannot list models.
    /// The cheap call that tells whether a key works; its error is
    /// redacted of the key.
    pub async fn list_models_with(&self, provider: &str, key: &str) -> Result<Option<usize>, discovery::ListingError> {
        let missing = |what: &str| discovery::ListingError { kind: what.to_owned(), detail: what.to_owned() };
        let spec = self.provider_spec(provider).ok_or_else(|| missing("unknown provider"))?;
        let plugin_name = spec.plugin.as_deref().unwrap_or("openai-compat");
        let plugin = self.inner.plugins.get(plugin_name).ok_or_else(|| missing("its plugin is not loaded"))?;
        if !plugin.capabilities().models {
            return Ok(None);
        }
        let options: Vec<(String, String)> =
            spec.options.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        let headers: Vec<(http::HeaderName, http::HeaderValue)> = spec
            .headers
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                Some((http::HeaderName::from_bytes(k.as_bytes()).ok()?, http::HeaderValue::from_str(v).ok()?))
            })
            .collect();
        let redactor =
            Redactor::new(std::iter::once(key).chain(spec.headers.iter().flatten().map(|(_, v)| v.as_str())));
        let base_url = spec.base_url.as_deref().unwrap_or_default().trim_end_matches('/');
        let target = Target { base_url, model: "", key: Some(key), options: &options };
        discovery::list_models(self.upstream(), &plugin, &target, &headers, &redactor, KEY_CHECK_TIMEOUT)
            .await
            .map(|records| Some(records.len()))
    }

    /// Whether `provider` has the key `fingerprint` already: from the
    /// environment or the config, or stored (even turned off or unreadable).
    pub fn has_key(&self, provider: &str, fingerprint: u64) -> bool {
        let router = self.router();
        let mut live = router.providers().iter().filter(|p| *p.name == *provider).flat_map(|p| p.keys.iter());
        live.any(|k| k.secret().is_some() && k.id.fingerprint == fingerprint)
            || self.stored_keys().iter().any(|k| k.provider == provider && k.fingerprint == fingerprint)
    }

    /// Stores `key` for `provider` (encrypted, on disk before this
    /// returns) and puts it to use at once: the providers and the route
    /// tables are rebuilt, a provider it enables has its models
    /// discovered. Its fingerprint. The caller validated the key.
    pub async fn add_key(&self, provider: &str, key: Secret) -> Result<u64, KeyError> {
        let vault = self.inner.keys.vault.clone().ok_or(KeyError::NoStorage)?;
        let _one_at_a_time = self.inner.keys.changing.lock().await;
        if self.has_key(provider, crate::state::fingerprint(key.expose())) {
            return Err(KeyError::Duplicate(provider.to_owned()));
        }
        let added_ms = wall_ms();
        let (name, secret) = (provider.to_owned(), key.clone());
        let stored = blocking(move || vault.add(&name, secret.expose(), added_ms)).await?.map_err(|e| match e {
            VaultError::Duplicate(p) => KeyError::Duplicate(p),
            VaultError::Storage(e) => KeyError::Storage(e),
        })?;
        self.inner.keys.stored.lock().unwrap_or_else(|e| e.into_inner()).push(StoredKey {
            provider: provider.to_owned(),
            fingerprint: stored,
            secret: Some(key),
            disabled: false,
            added_ms,
        });
        tracing::info!(provider, fingerprint = %format!("{stored:016x}"), "provider key added through the admin API");
        self.apply_keys().await;
        Ok(stored)
    }

    /// Turns a key added through the admin API off (kept, not used) or
    /// back on; takes effect at once.
    pub async fn set_key_disabled(&self, provider: &str, fingerprint: u64, disabled: bool) -> Result<(), KeyError> {
        let vault = self.editable(provider, fingerprint)?;
        let _one_at_a_time = self.inner.keys.changing.lock().await;
        let name = provider.to_owned();
        let found =
            blocking(move || vault.set_disabled(&name, fingerprint, disabled)).await?.map_err(KeyError::Storage)?;
        if !found {
            return Err(KeyError::NotFound { provider: provider.to_owned(), fingerprint });
        }
        for key in self.inner.keys.stored.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            if key.provider == provider && key.fingerprint == fingerprint {
                key.disabled = disabled;
            }
        }
        tracing::info!(provider, fingerprint = %format!("{fingerprint:016x}"), disabled, "provider key changed through the admin API");
        self.apply_keys().await;
        Ok(())
    }

    /// Deletes a key added through the admin API (one that cannot be
    /// decrypted too); takes effect at once.
    pub async fn remove_key(&self, provider: &str, fingerprint: u64) -> Result<(), KeyError> {
        let vault = self.editable(provider, fingerprint)?;
        let _one_at_a_time = self.inner.keys.changing.lock().await;
        let name = provider.to_owned();
        let found = blocking(move || vault.remove(&name, fingerprint)).await?.map_err(KeyError::Storage)?;
        if !found {
            return Err(KeyError::NotFound { provider: provider.to_owned(), fingerprint });
        }
        self.inner
            .keys
            .stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k| !(k.provider == provider && k.fingerprint == fingerprint));
        tracing::info!(provider, fingerprint = %format!("{fingerprint:016x}"), "provider key deleted through the admin API");
        self.apply_keys().await;
        Ok(())
    }

    /// The vault, when the key `fingerprint` of `provider` may be changed
    /// through the API: not one from the environment or the config.
    fn editable(&self, provider: &str, fingerprint: u64) -> Result<Arc<Vault>, KeyError> {
        let router = self.router();
        let from_files = router
            .providers()
            .iter()
            .filter(|p| *p.name == *provider)
            .flat_map(|p| p.keys.iter())
            .find(|k| k.secret().is_some() && k.id.fingerprint == fingerprint && k.source != KeySource::Api);
        if let Some(key) = from_files {
            return Err(KeyError::NotEditable { provider: provider.to_owned(), from: key.source.clone() });
        }
        self.inner.keys.vault.clone().ok_or_else(|| KeyError::NotFound { provider: provider.to_owned(), fingerprint })
    }

    /// Rebuilds the providers with the stored keys in use, then the route
    /// tables; requests in flight keep the tables they started with.
    /// Providers that were enabled keep their model tables; one a key
    /// enabled gets the list an earlier run saved, then is discovered.
    async fn apply_keys(&self) {
        let added = keys_in_use(&self.stored_keys());
        let inner = &self.inner;
        let mut fresh = Vec::new();
        inner.proxy.rebuild_routes(|current, pipeline| {
            let (enabled, disabled) =
                provider::build_with(&inner.config, &inner.catalog, &inner.env, &inner.local, &inner.plugins, &added);
            for provider in &enabled {
                match current.providers().iter().find(|p| p.name == provider.name) {
                    Some(earlier) => provider.carry_over(earlier),
                    None => fresh.push(provider.clone()),
                }
            }
            route_tables(enabled, disabled, &inner.config, &inner.catalog, pipeline, &inner.metrics)
        });
        if fresh.is_empty() {
            return;
        }
        let state = inner.proxy.state();
        discovery::restore(&fresh, state);
        discovery::refresh(&fresh, self.upstream(), &inner.discovery, state).await;
        self.rebuild_routes();
    }
}

/// Now, in wall-clock milliseconds since the Unix epoch.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs a vault call on tokio's blocking pool: it may wait for the
/// journal's transaction, and must not hold an async thread meanwhile.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, KeyError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| KeyError::Storage(format!("the key store failed: {e}")))
}

/// Asks each local provider (Ollama) for its models, briefly: one that
/// does not answer stays off.
async fn probe_local(upstream: &Upstream, plugins: &PluginHost, config: &Config, catalog: &Catalog) -> LocalModels {
    let mut found = LocalModels::new();
    let names = catalog.providers.keys().chain(config.providers.keys()).collect::<std::collections::BTreeSet<_>>();
    for name in names {
        let spec = merge(config.providers.get(name), catalog.providers.get(name));
        if spec.local != Some(true) || spec.enabled == Some(false) {
            continue;
        }
        let (Some(base_url), Some(plugin)) =
            (spec.base_url.as_deref(), plugins.get(spec.plugin.as_deref().unwrap_or("openai-compat")))
        else {
            continue;
        };
        let options: Vec<(String, String)> =
            spec.options.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        let target = Target { base_url: base_url.trim_end_matches('/'), model: "", key: None, options: &options };
        let listed =
            discovery::list_models(upstream, &plugin, &target, &[], &Redactor::default(), LOCAL_PROBE_TIMEOUT).await;
        match listed {
            Ok(records) => {
                tracing::info!(provider = %name, models = records.len(), "local provider answered");
                found.insert(name.clone(), records.into_iter().map(|r| r.id).collect());
            }
            Err(e) => tracing::debug!(provider = %name, reason = %e.kind, "local provider did not answer"),
        }
    }
    found
}
