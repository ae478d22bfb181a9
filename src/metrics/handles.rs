//! Each thread's own handles on the series the request path counts on every
//! request: requests by route and status, attempts and tokens by provider
//! and model, policy calls by policy and hook.
//!
//! A family's `get_or_create` takes the family's shared lock, hashes the
//! labels with SipHash and (for provider and model labels) clones two
//! shared `Arc`s: six times a request, on a cache line that every worker
//! thread writes. A handle is the series itself (a counter or a histogram
//! shares its value with the family's copy), so a thread that looked one up
//! once keeps it and finds it again by its labels, borrowed, in a map no
//! other thread touches. The family stays the one that renders.
//!
//! Bounded as the families are: a thread holds at most the series its
//! families hold (their labels come from the config and the catalog).

use std::hash::Hash;

use hashbrown::{Equivalent, HashMap};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{AttemptLabels, ModelLabels, PolicyLabels};

/// One thread's handles.
#[derive(Default)]
pub(super) struct Handles {
    /// Requests by (route, status), and the route's latency.
    pub requests: HashMap<(&'static str, u16), (Counter, Histogram)>,
    /// Attempts and their latency.
    pub attempts: HashMap<AttemptLabels, (Counter, Histogram)>,
    /// Prompt and completion tokens.
    pub tokens: HashMap<ModelLabels, [Counter; 2]>,
    /// Policy hook calls' latency.
    pub policy_calls: HashMap<PolicyLabels, Histogram>,
}

/// The series of `map` under `key`, made (with its owned labels) by
/// `make` the first time.
pub(super) fn series<'m, K: Hash, Q: Hash + Equivalent<K>, V>(
    map: &'m mut HashMap<K, V>,
    key: &Q,
    make: impl FnOnce() -> (K, V),
) -> &'m V {
    map.raw_entry_mut().from_key(key).or_insert_with(make).1
}

/// [`AttemptLabels`] borrowed: hashes as they do (the derived `Hash` of
/// each hashes its fields in order, an `Arc<str>` as its `str`).
#[derive(Hash)]
pub(super) struct AttemptKey<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub outcome: &'static str,
}

impl Equivalent<AttemptLabels> for AttemptKey<'_> {
    fn equivalent(&self, key: &AttemptLabels) -> bool {
        self.outcome == key.outcome && *self.provider == *key.provider && *self.model == *key.model
    }
}

/// [`ModelLabels`] borrowed.
#[derive(Hash)]
pub(super) struct ModelKey<'a> {
    pub provider: &'a str,
    pub model: &'a str,
}

impl Equivalent<ModelLabels> for ModelKey<'_> {
    fn equivalent(&self, key: &ModelLabels) -> bool {
        *self.provider == *key.provider && *self.model == *key.model
    }
}

/// [`PolicyLabels`] borrowed.
#[derive(Hash)]
pub(super) struct PolicyKey<'a> {
    pub policy: &'a str,
    pub hook: &'static str,
}

impl Equivalent<PolicyLabels> for PolicyKey<'_> {
    fn equivalent(&self, key: &PolicyLabels) -> bool {
        self.hook == key.hook && *self.policy == *key.policy
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_borrowed_key_hashes_as_its_labels() {
        let hasher = hashbrown::DefaultHashBuilder::default();
        let (provider, model): (Arc<str>, Arc<str>) = ("groq".into(), "llama".into());
        let labels = AttemptLabels { provider: provider.clone(), model: model.clone(), outcome: "ok" };
        let key = AttemptKey { provider: "groq", model: "llama", outcome: "ok" };
        assert_eq!(hasher.hash_one(&labels), hasher.hash_one(&key));
        assert!(key.equivalent(&labels));
        assert!(!AttemptKey { outcome: "timeout", ..key }.equivalent(&labels));
        let labels = ModelLabels { provider: provider.clone(), model: model.clone() };
        assert_eq!(hasher.hash_one(&labels), hasher.hash_one(ModelKey { provider: "groq", model: "llama" }));
        // The boundary between the fields counts: "gr"+"oqllama" is another series.
        assert!(!ModelKey { provider: "gr", model: "oqllama" }.equivalent(&labels));
        let labels = PolicyLabels { policy: provider, hook: "request" };
        assert_eq!(hasher.hash_one(&labels), hasher.hash_one(PolicyKey { policy: "groq", hook: "request" }));
    }
}
