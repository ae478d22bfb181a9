//! The environment a config is read in: process variables plus a `.env`
//! file, and `${VAR}` / `${VAR:-default}` expansion of config strings.

use std::collections::HashMap;
use std::path::Path;

/// Where `${VAR}` references are looked up.
///
/// Process variables win over the `.env` file, as with most tools that read
/// one, so a deployment can override a checked-in `.env`. Tests build an
/// `Env` from a map instead of touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    process: bool,
    vars: HashMap<String, String>,
}

impl Env {
    /// Process variables only.
    pub fn process() -> Self {
        Self { process: true, vars: HashMap::new() }
    }

    /// Process variables, then the `.env` file at `path` if it exists.
    /// A `.env` that exists but cannot be parsed is an error naming its line.
    pub fn process_with_dotenv(path: &Path) -> Result<Self, String> {
        let mut env = Self::process();
        if path.is_file() {
            let iter = dotenvy::from_path_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for item in iter {
                let (key, value) = item.map_err(|e| format!("{}: {e}", path.display()))?;
                env.vars.insert(key, value);
            }
        }
        Ok(env)
    }

    /// Exactly these variables and nothing from the process (for tests and
    /// embedders).
    pub fn from_map<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Self { process: false, vars: vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        if self.process
            && let Ok(value) = std::env::var(name)
        {
            return Some(value);
        }
        self.vars.get(name).cloned()
    }

    /// The value of `name` when it is set and not blank.
    pub fn get_nonempty(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }
}

/// The result of expanding one string.
#[derive(Debug, PartialEq, Eq)]
pub struct Expanded {
    /// The string with every reference replaced.
    pub value: String,
    /// Variables that were referenced without a default and are not set;
    /// each expanded to "".
    pub unset: Vec<String>,
}

/// Expands `${VAR}`, `${VAR:-default}` (default when unset or empty) and
/// `${VAR-default}` (default when unset). `$${` is a literal `${`.
/// A `$` not followed by `{` is kept as it is, so ordinary text with dollar
/// signs needs no escaping.
pub fn expand(input: &str, env: &Env) -> Result<Expanded, String> {
    let mut value = String::with_capacity(input.len());
    let mut unset = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        value.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            value.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body_and_tail) = after.strip_prefix('{') else {
            value.push('$');
            rest = after;
            continue;
        };
        let end = body_and_tail.find('}').ok_or_else(|| format!("unclosed `${{` in {input:?}"))?;
        let body = &body_and_tail[..end];
        rest = &body_and_tail[end + 1..];
        let (name, default, empty_counts_as_unset) = match body.find([':', '-']) {
            Some(i) if body[i..].starts_with(":-") => (&body[..i], Some(&body[i + 2..]), true),
            Some(i) if body[i..].starts_with('-') => (&body[..i], Some(&body[i + 1..]), false),
            Some(_) => return Err(format!("`${{{body}}}`: expected `${{VAR}}` or `${{VAR:-default}}`")),
            None => (body, None, false),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{body}}}`: `{name}` is not a variable name"));
        }
        let found = env.get(name).filter(|v| !(empty_counts_as_unset && v.is_empty()));
        match (found, default) {
            (Some(v), _) => value.push_str(&v),
            (None, Some(d)) => value.push_str(d),
            (None, None) => unset.push(name.to_owned()),
        }
    }
    value.push_str(rest);
    Ok(Expanded { value, unset })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::from_map([("A", "alpha"), ("EMPTY", "")])
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        let e = env();
        assert_eq!(expand("x${A}y", &e).unwrap().value, "xalphay");
        let unset = expand("${NOPE}", &e).unwrap();
        assert_eq!(unset.value, "");
        assert_eq!(unset.unset, vec!["NOPE".to_owned()]);
        assert_eq!(expand("${NOPE:-d}", &e).unwrap().value, "d");
        assert_eq!(expand("${EMPTY:-d}", &e).unwrap().value, "d");
        assert_eq!(expand("${EMPTY-d}", &e).unwrap().value, "");
        assert_eq!(expand("${NOPE-d}", &e).unwrap().value, "d");
    }

    #[test]
    fn dollar_without_brace_and_escapes_are_literal() {
        let e = env();
        assert_eq!(expand("cost $5", &e).unwrap().value, "cost $5");
        assert_eq!(expand("$${A}", &e).unwrap().value, "${A}");
    }

    #[test]
    fn malformed_references_are_errors() {
        let e = env();
        assert!(expand("${A", &e).unwrap_err().contains("unclosed"));
        assert!(expand("${A B}", &e).unwrap_err().contains("not a variable name"));
        assert!(expand("${A:x}", &e).is_err());
    }
}
