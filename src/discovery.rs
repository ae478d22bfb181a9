//! Model discovery: each enabled provider's model list, fetched through its
//! plugin at start-up and every `discovery.interval`.
//!
//! Discovered models register as `provider/model` beside the catalog's and
//! the config's, which are never overwritten. A failed refresh keeps the
//! last good list and says so (log, `/health`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::gateway::Gateway;
use crate::models::{ModelInfo, ModelTable};
use crate::plugin::{ModelRecord, Target};
use crate::providers::Provider;
use crate::upstream::{Upstream, read_body};

/// How long one provider's listing may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest listing accepted (OpenRouter's is a few hundred KB).
const MAX_LISTING: usize = 32 * 1024 * 1024;

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

/// Refreshes every enabled provider that can list its models, at once, then
/// rebuilds the routing tables. Returns each provider's outcome.
pub async fn refresh(gateway: &Gateway) -> Vec<(String, Result<usize, String>)> {
    let providers: Vec<Arc<Provider>> =
        gateway.router().providers().iter().filter(|p| p.plugin.capabilities().models).cloned().collect();
    let mut tasks = tokio::task::JoinSet::new();
    for provider in providers {
        let upstream = gateway.upstream().clone();
        tasks.spawn(async move {
            let result = tokio::time::timeout(FETCH_TIMEOUT, fetch(&upstream, &provider))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
            (provider, result)
        });
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((provider, result)) = joined else { continue };
        let outcome = match result {
            Ok(records) => {
                let table = merge(&provider, records);
                let n = table.len();
                provider.set_models(table);
                tracing::info!(provider = %provider.name, models = n, "model list refreshed");
                gateway.discovery().record(&provider.name, Status { ok: true, models: n, error: None, at: now });
                Ok(n)
            }
            Err(e) => {
                let kept = provider.models().len();
                tracing::warn!(provider = %provider.name, kept, error = %e, "model discovery failed; keeping the last list");
                let status = Status { ok: false, models: kept, error: Some(e.clone()), at: now };
                gateway.discovery().record(&provider.name, status);
                Err(e)
            }
        };
        outcomes.push((provider.name.to_string(), outcome));
    }
    gateway.rebuild_routes();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    outcomes
}

/// Refreshes now and then every `interval`, until the gateway is dropped.
pub fn spawn(gateway: Gateway, interval: Duration) -> tokio::task::JoinHandle<()> {
    let weak = gateway.downgrade();
    drop(gateway);
    tokio::spawn(async move {
        loop {
            let Some(gateway) = weak.upgrade() else { return };
            refresh(&gateway).await;
            drop(gateway);
            tokio::time::sleep(interval).await;
        }
    })
}

/// One provider's listing, with the first key that is not known bad.
async fn fetch(upstream: &Upstream, provider: &Provider) -> Result<Vec<ModelRecord>, String> {
    let key = provider.keys.iter().find(|k| !k.is_invalid()).and_then(|k| k.secret());
    let target = Target { base_url: &provider.base_url, model: "", key, options: &provider.options };
    let mut request = provider.plugin.build_models(&target).map_err(|e| e.to_string())?;
    request.headers.extend(provider.headers.iter().cloned());
    let response = upstream.send(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = read_body(response.into_body(), MAX_LISTING).await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let text = crate::secret::redact(&String::from_utf8_lossy(&body), &provider.secrets());
        return Err(format!("HTTP {}: {}", status.as_u16(), text.chars().take(200).collect::<String>()));
    }
    provider.plugin.decode_models(&body, &target).map_err(|e| e.to_string())
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
