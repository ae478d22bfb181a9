//! The Rhai engines policies run in, with every limit of the Rhai book's
//! safety chapter set, `eval` disabled, and imports only from the policies
//! folder.

use std::path::Path;

use rhai::module_resolvers::{DummyModuleResolver, FileModuleResolver};
use rhai::{Dynamic, Engine, Map};

use super::request;

/// Operations one per-request hook may run (an infinite loop stops after
/// about a millisecond of work).
pub const REQUEST_OPERATIONS: u64 = 200_000;
/// Operations one `models` hook may run (it sorts every model, rarely).
pub const BUILD_OPERATIONS: u64 = 20_000_000;

/// One engine for per-request hooks (tight budget), one for model-set hooks.
pub struct Engines {
    pub request: Engine,
    pub build: Engine,
}

impl Engines {
    /// Engines whose `import` resolves under `dir` (none when embedded).
    pub fn new(dir: Option<&Path>) -> Self {
        Self { request: engine(dir, REQUEST_OPERATIONS), build: engine(dir, BUILD_OPERATIONS) }
    }
}

fn engine(dir: Option<&Path>, operations: u64) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(operations)
        .set_max_call_levels(32)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(1 << 20)
        .set_max_array_size(100_000)
        .set_max_map_size(10_000)
        .set_max_modules(16)
        .set_strict_variables(true);
    engine.disable_symbol("eval");
    match dir {
        Some(dir) => engine.set_module_resolver(FileModuleResolver::new_with_path(dir)),
        None => engine.set_module_resolver(DummyModuleResolver::new()),
    };
    engine.on_print(|text| tracing::info!(target: "freeway::policy", "{text}"));
    engine.on_debug(|text, source, position| {
        tracing::debug!(target: "freeway::policy", source = source.unwrap_or(""), line = position.line(), "{text}");
    });
    request::register(&mut engine);
    engine
}

/// A YAML value as a Rhai value (settings).
pub fn to_dynamic(value: &serde_yaml::Value) -> Dynamic {
    use serde_yaml::Value;
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Sequence(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect()),
        Value::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_owned(),
                };
                out.insert(key.into(), to_dynamic(v));
            }
            Dynamic::from_map(out)
        }
        Value::Tagged(tagged) => to_dynamic(&tagged.value),
    }
}
