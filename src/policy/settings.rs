//! Live policy settings: `policies.settings` from the config, with the
//! top-level keys an operator changed through `PUT /admin/api/settings`
//! laid over it. A change is validated, kept in a file beside the state
//! database (`<name>.settings.json`, so it survives a restart; nowhere
//! with `state.path: ""`) and applied like a policy reload: the pipeline
//! is compiled with the new settings and the route tables rebuilt.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The largest settings change read (its JSON).
pub const MAX_BODY: u64 = 64 * 1024;
/// Favorites at most: a ranked list an operator keeps by hand.
const MAX_FAVORITES: usize = 100;
/// The longest favorite (a model name's bound).
const MAX_NAME: usize = 256;
/// The longest sticky-session pin, in seconds: 30 days.
const MAX_STICKY_SECONDS: u64 = 30 * 24 * 3600;

/// The file a state database's settings changes are kept in.
pub fn file_beside(database: &Path) -> PathBuf {
    let stem = database.file_stem().and_then(|s| s.to_str()).unwrap_or("freeway");
    database.with_file_name(format!("{stem}.settings.json"))
}

/// Checks a change (a JSON object of top-level settings; `null` takes a
/// key's change back) and returns it; the error names the key.
pub fn validate(change: &Value) -> Result<&Map<String, Value>, String> {
    let Value::Object(change) = change else {
        return Err("the body must be a JSON object of settings, like {\"favorites\": [...]}".to_owned());
    };
    for (key, value) in change {
        if value.is_null() {
            continue;
        }
        check(key, value).map_err(|problem| format!("{key}: {problem}"))?;
    }
    Ok(change)
}

/// The built-in policies' settings have a shape; other keys (for an
/// operator's own scripts) may hold any JSON.
fn check(key: &str, value: &Value) -> Result<(), String> {
    let object = || value.as_object().ok_or_else(|| "must be an object".to_owned());
    match key {
        "favorites" => {
            let list = value.as_array().ok_or("must be a list of model names")?;
            if list.len() > MAX_FAVORITES {
                return Err(format!("at most {MAX_FAVORITES} favorites"));
            }
            for (i, name) in list.iter().enumerate() {
                match name.as_str() {
                    Some(name) if !name.trim().is_empty() && name.len() <= MAX_NAME => {}
                    _ => return Err(format!("[{i}] must be a model name of 1 to {MAX_NAME} bytes")),
                }
            }
            Ok(())
        }
        "sticky" => {
            let sticky = object()?;
            if let Some(ttl) = sticky.get("ttl_seconds") {
                match ttl.as_u64() {
                    Some(s) if (1..=MAX_STICKY_SECONDS).contains(&s) => {}
                    _ => return Err(format!("ttl_seconds must be a whole number from 1 to {MAX_STICKY_SECONDS}")),
                }
            }
            if sticky.get("enabled").is_some_and(|e| !e.is_boolean()) {
                return Err("enabled must be true or false".to_owned());
            }
            Ok(())
        }
        "context_prune" => {
            let prune = object()?;
            if prune.get("mode").is_some_and(|m| !m.is_string()) {
                return Err("mode must be a string".to_owned());
            }
            if prune.get("reserve").is_some_and(|r| r.as_u64().is_none()) {
                return Err("reserve must be a whole number of tokens".to_owned());
            }
            Ok(())
        }
        "auto_tier" | "free_alias" => object().map(|_| ()),
        _ => Ok(()),
    }
}

/// `base` (the config's settings) with `changes` laid over it, key by key.
pub fn merged(base: &serde_yaml::Mapping, changes: &Map<String, Value>) -> Result<serde_yaml::Mapping, String> {
    let mut merged = base.clone();
    for (key, value) in changes {
        let value = serde_yaml::to_value(value).map_err(|e| format!("{key}: {e}"))?;
        merged.insert(serde_yaml::Value::String(key.clone()), value);
    }
    Ok(merged)
}

/// The changes kept in `file`: none when it does not exist; a file that
/// cannot be read as settings is moved aside (`.corrupt-<unix time>`),
/// said in the log, and none are used.
pub fn load(file: &Path) -> Map<String, Value> {
    let text = match std::fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Map::new(),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "policy settings changes not read; the config's are used");
            return Map::new();
        }
    };
    let parsed = serde_json::from_slice::<Value>(&text).map_err(|e| e.to_string()).and_then(|v| {
        validate(&v)?;
        match v {
            Value::Object(changes) => Ok(changes),
            _ => Err("not an object".to_owned()),
        }
    });
    match parsed {
        Ok(changes) => changes,
        Err(problem) => {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let aside = file.with_extension(format!("json.corrupt-{secs}"));
            let moved = std::fs::rename(file, &aside).is_ok();
            tracing::warn!(file = %file.display(), problem = %problem, moved_to = %aside.display(), moved,
                "policy settings changes are damaged; the config's settings are used");
            Map::new()
        }
    }
}

/// Keeps `changes` in `file`, whole or not at all (written beside it, then
/// renamed over it).
pub fn save(file: &Path, changes: &Map<String, Value>) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(changes).map_err(|e| e.to_string())?;
    let partial = file.with_extension("json.partial");
    std::fs::write(&partial, text).map_err(|e| format!("{}: {e}", partial.display()))?;
    std::fs::rename(&partial, file).map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_in_settings_are_checked_and_others_pass() {
        assert!(validate(&json!({"favorites": ["a/b", "c"], "sticky": {"ttl_seconds": 60}})).is_ok());
        assert_eq!(validate(&json!({"favorites": "a"})).unwrap_err(), "favorites: must be a list of model names");
        assert_eq!(
            validate(&json!({"favorites": ["ok", ""]})).unwrap_err(),
            "favorites: [1] must be a model name of 1 to 256 bytes"
        );
        assert!(validate(&json!({"sticky": {"ttl_seconds": 0}})).unwrap_err().starts_with("sticky: ttl_seconds"));
        assert!(validate(&json!({"context_prune": {"reserve": -1}})).is_err());
        assert!(validate(&json!({"my_own": [1, {"x": true}], "favorites": null})).is_ok());
        assert!(validate(&json!([1])).is_err());
    }

    #[test]
    fn changes_lie_over_the_config_key_by_key_and_survive_a_reload() {
        let base: serde_yaml::Mapping = serde_yaml::from_str("favorites: [x]\nsticky: { ttl_seconds: 10 }\n").unwrap();
        let change = json!({"favorites": ["y", "z"]});
        let merged = merged(&base, validate(&change).unwrap()).unwrap();
        let back: Value = serde_json::to_value(&merged).unwrap();
        assert_eq!(back, json!({"favorites": ["y", "z"], "sticky": {"ttl_seconds": 10}}));

        let dir = tempfile::tempdir().unwrap();
        let file = file_beside(&dir.path().join("freeway.db"));
        assert_eq!(file.file_name().unwrap(), "freeway.settings.json");
        assert!(load(&file).is_empty());
        save(&file, change.as_object().unwrap()).unwrap();
        assert_eq!(Value::Object(load(&file)), change);
        std::fs::write(&file, b"{ not json").unwrap();
        assert!(load(&file).is_empty());
        assert!(!file.exists(), "a damaged file is moved aside, not lost");
    }
}
