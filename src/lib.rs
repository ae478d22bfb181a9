//! freeway: a self-hosted, OpenAI-compatible LLM gateway that puts the free
//! tiers of many providers behind one endpoint and keeps an application
//! running when any of them says 429.
//!
//! A request's path through the crate:
//!
//! ```text
//! server (hyper, h1 + h2c) ─▶ api: auth, endpoint, body limit
//!   ─▶ request: parse and check the chat request
//!   ─▶ routing: model name → candidates (route / provider/model / bare id)
//!   ─▶ dispatch: for each candidate and key: skip cooling/invalid
//!        ─▶ plugin (WebAssembly): build the upstream request
//!        ─▶ upstream: pooled hyper client over rustls
//!        ─▶ plugin (WebAssembly): decode the answer / classify the error
//!   ─▶ body / relay: the answer, or the SSE stream relayed as it arrives
//! ```
//!
//! Embedding: build a [`Config`], a [`Catalog`] and an [`Env`], then
//! [`Gateway::new`] and either [`server::serve`] or [`Gateway::handle`]
//! inside your own service.

#![deny(missing_docs)]

pub mod api;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod dispatch;
pub mod errors;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod plugin;
pub mod policy;
pub mod providers;
pub mod relay;
pub mod request;
pub mod routing;
pub mod secret;
pub mod server;
pub mod upstream;

pub use catalog::Catalog;
pub use config::{Config, Env};
pub use gateway::Gateway;
