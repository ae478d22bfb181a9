//! The model set as the `models` hooks see it: the routes as pools and
//! every model of every enabled provider as a map of its metadata.

use rhai::{Array, Dynamic, Map};

use crate::catalog::routes::Router;

/// The routes as pools: name → `#{targets: ["provider/model", ...], free}`.
pub fn pools(router: &Router) -> Map {
    router
        .routes()
        .map(|(name, targets, free)| {
            let targets: Array = targets.map(|c| format!("{}/{}", c.provider.name, c.model).into()).collect();
            let mut pool = Map::new();
            pool.insert("targets".into(), targets.into());
            pool.insert("free".into(), free.into());
            (name.into(), pool.into())
        })
        .collect()
}

/// Every model of every enabled provider: `#{id, provider, model, tier,
/// params, active_params, context, free, reasoning, tags, discovered}`.
pub fn models(router: &Router) -> Array {
    let mut out = Array::new();
    for p in router.providers() {
        for m in p.models().iter() {
            let mut map = Map::new();
            map.insert("id".into(), format!("{}/{}", p.name, m.id).into());
            map.insert("provider".into(), p.name.to_string().into());
            map.insert("model".into(), m.id.to_string().into());
            map.insert("tier".into(), m.tier().to_string().into());
            map.insert("params".into(), m.params_b.map_or(Dynamic::UNIT, Dynamic::from_float));
            map.insert("active_params".into(), m.active_params_b.map_or(Dynamic::UNIT, Dynamic::from_float));
            let context = m.context.and_then(|c| i64::try_from(c).ok());
            map.insert("context".into(), context.map_or(Dynamic::UNIT, Dynamic::from_int));
            map.insert("free".into(), m.free.into());
            map.insert("reasoning".into(), m.reasoning.into());
            map.insert("discovered".into(), m.discovered.into());
            let tags: Array = m.tags.iter().map(|t| t.clone().into()).collect();
            map.insert("tags".into(), tags.into());
            out.push(map.into());
        }
    }
    out
}
