//! What can be routed to: the built-in catalog of free providers
//! (`providers/catalog.yaml`, embedded in the binary: base URLs, key
//! variables, free models, limits and preset routes), the providers enabled
//! at run time, their models (and discovery, which refreshes them), and the
//! routing tables that turn a model name into candidates.
//!
//! The catalog is what `serve` runs on without a config file; a config
//! entry with a catalog name overrides any of its fields.

pub mod aliases;
pub mod discovery;
pub mod models;
pub mod prices;
pub mod provider;
pub mod routes;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::config::{ConfigError, Env, ProviderSpec, RouteSpec, parse_document, validate_catalog};

/// The catalog file, as embedded.
pub const CATALOG_YAML: &str = include_str!("../providers/catalog.yaml");

/// Providers and preset routes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Catalog {
    /// Providers by name.
    pub providers: IndexMap<String, ProviderSpec>,
    /// Preset routes.
    pub routes: IndexMap<String, RouteSpec>,
}

impl Catalog {
    /// The embedded catalog, with `${VAR}` in it expanded from `env`.
    pub fn builtin(env: &Env) -> Result<Self, ConfigError> {
        Self::from_yaml(CATALOG_YAML, "<embedded catalog>", env)
    }

    /// A catalog from YAML text, checked as strictly as a config file.
    pub fn from_yaml(text: &str, origin: &str, env: &Env) -> Result<Self, ConfigError> {
        let doc = parse_document::<Catalog>(text, origin, env)?;
        let mut problems = doc.problems;
        let mut warnings = Vec::new();
        validate_catalog(&doc.value, &mut problems, &mut warnings);
        problems.extend(warnings);
        for p in &mut problems {
            if p.line.is_none() {
                p.line = doc.map.line(&p.path);
            }
        }
        if problems.is_empty() { Ok(doc.value) } else { Err(ConfigError { origin: origin.to_owned(), problems }) }
    }

    /// An empty catalog (embedders that configure every provider).
    pub fn empty() -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalog_is_valid_and_complete() {
        let catalog = Catalog::builtin(&Env::from_map([("CLOUDFLARE_ACCOUNT_ID", "acc")])).unwrap();
        for name in [
            "openrouter",
            "groq",
            "cerebras",
            "sambanova",
            "nvidia",
            "mistral",
            "github",
            "huggingface",
            "cloudflare",
            "gemini",
            "cohere",
            "zhipu",
            "moonshot",
            "minimax",
            "siliconflow",
            "modelscope",
            "longcat",
            "volcengine",
            "dashscope",
            "deepseek",
            "ollama",
        ] {
            let p = catalog.providers.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(p.base_url.is_some(), "{name} has no base_url");
            assert!(p.key_env.is_some() || p.local == Some(true), "{name} has no key variable");
        }
        assert!(catalog.routes.contains_key("chat-free"));
        assert!(catalog.routes["chat-free"].targets.len() >= 3);
    }

    #[test]
    fn every_catalog_quota_reset_parses_and_the_documented_ones_are_there() {
        let catalog = Catalog::builtin(&Env::from_map([("CLOUDFLARE_ACCOUNT_ID", "acc")])).unwrap();
        let mut resets: Vec<(String, String)> = Vec::new();
        for (name, spec) in &catalog.providers {
            if let Some(text) = &spec.quota_reset {
                let reset = crate::state::QuotaReset::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
                // Written canonically, so the file reads as freeway prints it.
                assert_eq!(&reset.to_string(), text, "{name}");
                resets.push((name.clone(), text.clone()));
            }
        }
        let expected =
            [("openrouter", "00:00 UTC"), ("gemini", "00:00 America/Los_Angeles"), ("cloudflare", "00:00 UTC")];
        assert_eq!(resets, expected.map(|(n, r)| (n.to_owned(), r.to_owned())));
    }

    #[test]
    fn a_catalog_with_a_bad_quota_reset_is_refused_with_its_path() {
        let yaml = "providers:\n  p:\n    plugin: openai-compat\n    base_url: http://127.0.0.1:9/v1\n    quota_reset: midnight\n";
        let err =
            Catalog::from_yaml(yaml, "test", &Env::from_map(Vec::<(String, String)>::new())).unwrap_err().to_string();
        assert!(err.contains("providers.p.quota_reset") && err.contains("`midnight` is not a reset time"), "{err}");
    }
}
