//! freeway's integration tests, one binary: real HTTP over loopback between
//! a test client, the gateway, and mock upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support {
    pub mod clients;
    pub mod gateway;
    pub mod mock;
    pub mod plugins;
}

mod admin;
mod admin_keys;
mod admin_log;
mod agents;
mod api;
mod bounds;
mod cli;
mod clients;
mod dashboard;
mod discovery;
mod embeddings;
mod fallback;
mod limits;
mod messages;
mod plugin_anthropic;
mod plugin_cohere;
mod plugin_faults;
mod plugin_gemini;
#[cfg(unix)]
mod plugin_host;
mod plugin_limits;
mod plugin_openai;
mod policies;
mod props;
mod queue;
mod quota;
mod reasoning;
mod redaction;
mod redis;
mod replay;
mod responses;
mod responses_store;
mod sdk;
mod stalls;
mod state;
mod streaming;
mod telemetry;
mod tool_calls;
mod walls;
