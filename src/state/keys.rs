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

    /// Marks `key` rejected.
    pub fn mark_invalid(&self, key: &KeyId) {
        self.invalid.write().unwrap_or_else(|e| e.into_inner()).insert(key.clone());
    }
}
