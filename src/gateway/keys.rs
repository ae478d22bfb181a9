//! Provider keys added through the admin API, as the gateway holds them:
//! the vault beside the state database ([`crate::state::vault`]), the keys
//! in use, and the changes (add, turn off, delete), each stored first and
//! then put to use by rebuilding the providers and the route tables.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Gateway;
use crate::catalog::discovery;
use crate::catalog::provider::{self, AddedKeys, KeySource, merge};
use crate::config::{Config, Env, ProviderSpec};
use crate::plugin::Target;
use crate::secret::{Redactor, Secret};
use crate::state::vault::{self, StoredKey, Vault, VaultError};

/// The key store beside the state database, with what it holds; `None`
/// with memory-only state (a malformed `FREEWAY_MASTER_KEY` is refused
/// all the same). Keys that do not open are reported here, once.
pub(super) fn open_vault(config: &Config, env: &Env) -> Result<ApiKeys, Vec<String>> {
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
pub(super) struct ApiKeys {
    vault: Option<Arc<Vault>>,
    /// The rows of the vault, as last read or written (with their keys).
    stored: Mutex<Vec<StoredKey>>,
    /// Key changes one at a time: each is stored, then the providers rebuilt.
    changing: tokio::sync::Mutex<()>,
}

impl ApiKeys {
    /// The stored keys in use now.
    pub(super) fn in_use(&self) -> AddedKeys {
        keys_in_use(&self.stored.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn new(vault: Option<Arc<Vault>>, stored: Vec<StoredKey>) -> Self {
        Self { vault, stored: Mutex::new(stored), changing: tokio::sync::Mutex::new(()) }
    }
}

/// How long the listing that validates or tests a key may take.
const KEY_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

impl Gateway {
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
        let (options, headers) = (provider::options_of(&spec), provider::headers_of(&spec));
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
            pipeline.route_tables(enabled, disabled, &inner.config, &inner.catalog, &inner.metrics)
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
