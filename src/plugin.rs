//! Provider plugins: WebAssembly components, run by wasmtime, that
//! translate between OpenAI's API and a provider's wire format.
//!
//! The host side of `providers/wit/0.3.0/provider.wit` (and of 0.2.0 and
//! 0.1.0, whose plugins still load, their calls adapted to 0.3's shapes):
//!
//! - one process-wide [`wasmtime::Engine`] with the pooling allocator and
//!   epoch interruption (a ticker thread holding only a weak handle);
//! - each component compiled once: a content-keyed artifact cache on disk
//!   (across restarts) and in memory (across gateways in one process);
//! - each plugin pre-instantiated once (`InstancePre`); an attempt takes an
//!   instance (with its store) from a small per-plugin pool of idle ones, or
//!   a new one, and every call in it runs under the instance's memory limit
//!   and a deadline of CPU time, so a plugin that traps, loops or allocates
//!   without bound fails that one call and nothing else; an instance goes
//!   back to the pool only after a clean attempt (never after a fault, nor
//!   once its memory grew large), and `plugins.fresh_instances: true` gives
//!   every attempt a new one;
//! - a stream decoder keeps its instance for the life of its stream.
//!
//! The built-in plugins are built from `providers/` by `build.rs` and
//! embedded in the binary; a `plugins.dir` in the config adds or replaces
//! components at start-up.

mod bindings;
mod cache;
mod engine;
mod host;
mod plan;
mod types;
mod versions;

pub use engine::{DEFAULT_MEMORY_LIMIT, MAX_INSTANCES, MAX_MEMORY, min_memory_limit};
pub use host::{
    Plugin, PluginError, PluginErrorKind, PluginHost, PluginSession, PluginSettings, PluginStream, available_names,
};
pub use plan::{ChatPlan, PlanCache, Planned, PlannedStream, check_answer, error_message};
pub use types::{
    Capabilities, Decoded, ErrorKind, ModelRecord, QuotaWindow, RateReport, RateUnit, StreamEvent, Target,
    UpstreamRequest, Usage,
};

/// The interface version this build implements: the WIT package version,
/// read from `providers/wit/0.3.0/` (each version keeps its own folder
/// there). The guest SDK, `providers/sdk`, has the same constant.
pub const INTERFACE_VERSION: &str = "0.3.0";

/// Every interface version this build loads, newest first: plugins built
/// against 0.2.0 keep working (without plans), and so do those built
/// against 0.1.0 (without the `limits` capability either).
pub const LOADED_VERSIONS: &[&str] = &[INTERFACE_VERSION, "0.2.0", "0.1.0"];

/// The name under which a plugin exports the translator.
pub const TRANSLATOR_EXPORT: &str = "freeway:provider/translator@0.3.0";

/// The same export in interface 0.2.0.
pub const TRANSLATOR_EXPORT_0_2: &str = "freeway:provider/translator@0.2.0";

/// The same export in interface 0.1.0.
pub const TRANSLATOR_EXPORT_0_1: &str = "freeway:provider/translator@0.1.0";

/// The plugins built into this binary: name and component bytes.
pub const BUILTIN: &[(&str, &[u8])] = &[
    ("openai-compat", include_bytes!(concat!(env!("OUT_DIR"), "/plugins/openai_compat.wasm"))),
    ("gemini", include_bytes!(concat!(env!("OUT_DIR"), "/plugins/gemini.wasm"))),
    ("cohere", include_bytes!(concat!(env!("OUT_DIR"), "/plugins/cohere.wasm"))),
    ("anthropic", include_bytes!(concat!(env!("OUT_DIR"), "/plugins/anthropic.wasm"))),
];
