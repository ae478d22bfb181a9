//! Keys the upstream rejected (401/403): never used again until the config
//! changes. Bounded by the number of configured keys.

use std::collections::HashSet;
use std::sync::RwLock;

use super::KeyId;

/// The set of rejected keys, by id (never the key itself).
#[derive(Default)]
pub struct KeyHealth {
    invalid: RwLock<HashSet<KeyId>>,
}

impl KeyHealth {
    /// Whether `key` was rejected.
    pub fn is_invalid(&self, key: &KeyId) -> bool {
        let set = self.invalid.read().unwrap_or_else(|e| e.into_inner());
        !set.is_empty() && set.contains(key)
    }

    /// Marks `key` rejected; whether it was not already.
    pub fn mark_invalid(&self, key: &KeyId) -> bool {
        self.invalid.write().unwrap_or_else(|e| e.into_inner()).insert(key.clone())
    }

    /// Every rejected key.
    pub fn list(&self) -> Vec<KeyId> {
        self.invalid.read().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}
