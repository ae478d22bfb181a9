//! Calling the built-in plugins directly, through the real host: what the
//! per-plugin translation tests share.

use std::sync::{Arc, OnceLock};

use freeway::metrics::Metrics;
use freeway::plugin::{Plugin, PluginHost, PluginSettings, StreamEvent, Target};
use serde_json::Value;

/// A built-in plugin, from one host shared by the whole test binary.
pub fn builtin(name: &str) -> Arc<Plugin> {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    let host =
        HOST.get_or_init(|| PluginHost::load(&PluginSettings::default(), None, Arc::new(Metrics::new())).unwrap());
    host.get(name).unwrap_or_else(|| panic!("no built-in plugin `{name}`"))
}

/// Feeds a stream to a fresh decoder in these pieces; every event, `finish` included.
pub fn stream_events(plugin: &Arc<Plugin>, target: &Target<'_>, pieces: &[&[u8]]) -> Vec<StreamEvent> {
    let mut stream = plugin.session().unwrap().into_stream(target).unwrap();
    let mut out = Vec::new();
    for piece in pieces {
        stream.push(piece, &mut out).unwrap();
    }
    stream.finish(&mut out).unwrap();
    out
}

/// The JSON of each chunk event, skipping the others.
pub fn chunk_jsons(events: &[StreamEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Chunk { json, .. } => Some(serde_json::from_slice(json).unwrap()),
            _ => None,
        })
        .collect()
}
