//! Model discovery: each enabled provider's model list, fetched through its
//! plugin at start-up and every `discovery.interval`.
//!
//! Discovered models register as `provider/model` beside the catalog's and
//! the config's, which are never overwritten. A failed refresh keeps the
//! last good list and says so: the log gets the reason (redacted), `/health`
//! only its kind (an HTTP status, a timeout), never text from the upstream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::models::{ModelInfo, ModelTable};
use super::provider::Provider;
use crate::plugin::{ModelRecord, Plugin, Target};
use crate::secret::Redactor;
use crate::state::StateStore;
use crate::upstream::{Upstream, read_body};

/// How long one provider's listing may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest listing accepted (OpenRouter's is a few hundred KB).
pub const MAX_LISTING: usize = 32 * 1024 * 1024;

/// The last refresh of one provider.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The last refresh worked.
    pub ok: bool,
    /// Models the provider serves now (listed and discovered).
    pub models: usize,
    /// Why the last refresh failed.
    pub error: Option<String>,
    /// When it ran (seconds since the Unix epoch).
    pub at: u64,
}

/// Discovery status by provider.
#[derive(Debug, Default)]
pub struct Discovery {
    status: Mutex<BTreeMap<String, Status>>,
}

impl Discovery {
    /// Each provider's last refresh.
    pub fn status(&self) -> BTreeMap<String, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, provider: &str, status: Status) {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).insert(provider.to_owned(), status);
    }
}

/// Why a listing failed: the kind, for `/health`, and the detail (already
/// redacted), for the log and `freeway check --probe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingError {
    /// What kind of failure (`HTTP 401`, `no answer within 30s`...): never
    /// text from the upstream.
    pub kind: String,
    /// The kind and what the upstream or plugin said, redacted.
    pub detail: String,
}

/// One model listing through a provider's plugin: build the request (plus
/// `headers`), send it, read at most [`MAX_LISTING`] bytes within
/// `within`, decode it. The one place freeway lists models: discovery,
/// the start-up probe of local providers and `freeway check --probe`.
pub async fn list_models(
    upstream: &Upstream,
    plugin: &Arc<Plugin>,
    target: &Target<'_>,
    headers: &[(http::HeaderName, http::HeaderValue)],
    redactor: &Redactor,
    within: Duration,
) -> Result<Vec<ModelRecord>, ListingError> {
    let failed = |kind: &str, detail: String| ListingError {
        kind: kind.to_owned(),
        detail: format!("{kind}: {}", redactor.redact(&detail)),
    };
    let call = async {
        let mut request = plugin
            .build_models(target)
            .map_err(|e| failed("the plugin could not build the listing request", e.to_string()))?;
        request.headers.extend(headers.iter().cloned());
        let response = upstream.send(request).await.map_err(|e| failed("the listing request failed", e.to_string()))?;
        let status = response.status();
        let body = read_body(response.into_body(), MAX_LISTING)
            .await
            .map_err(|e| failed("the listing could not be read", e.to_string()))?;
        if !status.is_success() {
            // Redacted whole, then cut: a cut key is harder to recognise.
            let text: String = redactor.redact(&String::from_utf8_lossy(&body)).chars().take(200).collect();
            return Err(failed(&format!("HTTP {}", status.as_u16()), text));
        }
        plugin.decode_models(&body, target).map_err(|e| failed("the plugin could not read the listing", e.to_string()))
    };
    tokio::time::timeout(within, call).await.unwrap_or_else(|_| {
        let kind = format!("no answer within {within:?}");
        Err(ListingError { detail: kind.clone(), kind })
    })
}

/// Refreshes every provider of `providers` that can list its models, at
/// once, and records each outcome in `discovery`. The caller rebuilds the
/// routing tables. Returns each provider's outcome (`Err` is the reason
/// shown in `/health`).
pub async fn refresh(
    providers: &[Arc<Provider>],
    upstream: &Upstream,
    discovery: &Discovery,
    state: &Arc<dyn StateStore>,
) -> Vec<(String, Result<usize, String>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for provider in providers.iter().filter(|p| p.plugin.capabilities().models).cloned() {
        let upstream = upstream.clone();
        let state = state.clone();
        tasks.spawn(async move {
            // The first key that is not known bad.
            let key = provider.keys.iter().find(|k| !state.is_invalid(&k.id)).and_then(|k| k.secret());
            let target = Target { base_url: &provider.base_url, model: "", key, options: &provider.options };
            let result =
                list_models(&upstream, &provider.plugin, &target, &provider.headers, &provider.redactor, FETCH_TIMEOUT)
                    .await;
            (provider, result)
        });
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((provider, result)) = joined else { continue };
        let outcome = match result {
            Ok(records) => {
                if let Ok(json) = serde_json::to_string(&records) {
                    state.save_models(&provider.name, json);
                }
                let table = merge(&provider, records);
                let n = table.len();
                provider.set_models(table);
                tracing::info!(provider = %provider.name, models = n, "model list refreshed");
                discovery.record(&provider.name, Status { ok: true, models: n, error: None, at: now });
                Ok(n)
            }
            Err(failure) => {
                let kept = provider.models().len();
                tracing::warn!(provider = %provider.name, kept, error = %failure.detail, "model discovery failed; keeping the last list");
                let status = Status { ok: false, models: kept, error: Some(failure.kind.clone()), at: now };
                discovery.record(&provider.name, status);
                Err(failure.kind)
            }
        };
        outcomes.push((provider.name.to_string(), outcome));
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    outcomes
}

/// Gives each provider the model list an earlier run discovered and kept in
/// the state database, so that a restart routes to discovered models before
/// the first refresh has answered. Returns how many providers got one.
pub fn restore(providers: &[Arc<Provider>], state: &Arc<dyn StateStore>) -> usize {
    restore_from(providers, |name| state.saved_models(name))
}

/// [`restore`] from any source of saved lists (`freeway replay` reads them
/// from a database it opens read-only).
pub fn restore_from(providers: &[Arc<Provider>], saved: impl Fn(&str) -> Option<String>) -> usize {
    let mut restored = 0;
    for provider in providers {
        let Some(json) = saved(&provider.name) else { continue };
        match serde_json::from_str::<Vec<ModelRecord>>(&json) {
            Ok(records) => {
                provider.set_models(merge(provider, records));
                restored += 1;
            }
            Err(e) => {
                tracing::warn!(provider = %provider.name, "the saved model list is unreadable ({e}); waiting for discovery")
            }
        }
    }
    restored
}

/// The provider's static models (catalog and config, untouched) followed by
/// what the listing adds.
fn merge(provider: &Provider, records: Vec<ModelRecord>) -> ModelTable {
    let current = provider.models();
    let mut models: Vec<ModelInfo> = current.iter().filter(|m| !m.discovered).cloned().collect();
    for record in records {
        if current.get(&record.id).is_some_and(|m| !m.discovered) {
            continue;
        }
        let mut tags = record.capabilities;
        if tags.is_empty() {
            tags.push("chat".to_owned());
        }
        let mut model = ModelInfo::new(
            &record.id,
            record.context_length,
            record.free.unwrap_or(provider.free),
            provider.limits,
            tags,
        );
        if let Some(p) = record.parameters {
            model.params_b = Some(p as f64 / 1e9);
        }
        if let Some(p) = record.active_parameters {
            model.active_params_b = Some(p as f64 / 1e9);
        }
        model.discovered = true;
        models.push(model);
    }
    ModelTable::new(models)
}
