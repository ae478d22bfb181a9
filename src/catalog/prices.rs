//! Paid list prices of models, where the catalog or the config names one
//! (`price: {input, output}`, US dollars per million tokens): what the
//! usage API's "saved" weighs the tokens a free tier served with.

use std::collections::HashMap;

use super::Catalog;
use super::provider::merge;
use crate::config::{Config, Price};

/// Every priced model as `provider/model` → its price. A config entry's
/// models replace the catalog's for that provider, as they do for routing.
pub fn prices(config: &Config, catalog: &Catalog) -> HashMap<String, Price> {
    let names = catalog.providers.keys().chain(config.providers.keys());
    let mut out = HashMap::new();
    for name in names {
        let spec = merge(config.providers.get(name), catalog.providers.get(name));
        for model in spec.models.iter().flatten() {
            if let Some(price) = model.price {
                out.insert(format!("{name}/{}", model.id), price);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    #[test]
    fn the_catalog_prices_some_models_and_a_config_overrides_them() {
        let catalog = Catalog::builtin(&Env::default()).unwrap_or_default();
        let config = Config::default();
        let known = prices(&config, &catalog);
        let flash = known.get("gemini/gemini-2.5-flash").copied();
        assert_eq!(flash, Some(Price { input: 0.30, output: 2.50 }));
        assert!(!known.contains_key("gemini/gemini-3.6-flash"), "no price was found for it");
        let yaml =
            "providers:\n  gemini:\n    models:\n      - { id: gemini-2.5-flash, price: { input: 1, output: 2 } }\n";
        let config = Config::from_yaml(yaml, "t.yaml", &Env::default(), &catalog).map(|l| l.config);
        let known = prices(&config.unwrap_or_default(), &catalog);
        assert_eq!(known.get("gemini/gemini-2.5-flash").copied(), Some(Price { input: 1.0, output: 2.0 }));
        // 1 M in and 0.5 M out at that price.
        assert!((Price { input: 1.0, output: 2.0 }.cost(1_000_000, 500_000) - 2.0).abs() < 1e-9);
    }
}
