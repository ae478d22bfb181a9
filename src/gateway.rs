//! The gateway as a value: everything a running instance shares across
//! requests. Build one with [`Gateway::new`], then serve it
//! ([`crate::server::serve`]) or call [`Gateway::handle`] from your own
//! hyper service. [`keys`] holds the provider keys added through the
//! admin API and how a change to them is put to use.

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
use crate::catalog::provider::{self, LocalModels, merge};
use crate::catalog::routes::Router;
use crate::config::{Config, Env};
use crate::metrics::Metrics;
use crate::plugin::{PluginHost, Target};
use crate::policy::watch::PolicyWatcher;
use crate::policy::{Pipeline, Policies, Source as PolicySource, settings};
use crate::proxy::Proxy;
use crate::secret::Redactor;
use crate::state::{Clock, MemoryState, PersistentState, SharedState, StateBounds, StateStore};
use crate::upstream::Upstream;

mod keys;

pub use keys::KeyError;
use keys::{ApiKeys, open_vault};

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
        let in_use = keys.in_use();
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
        let router = pipeline.route_tables(enabled, disabled, &config, &catalog, &metrics);
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
            pipeline.route_tables(current.providers().to_vec(), current.disabled().to_vec(), config, catalog, metrics)
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
        let options = provider::options_of(&spec);
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
