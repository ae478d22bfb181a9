//! freeway: a self-hosted, OpenAI-compatible LLM gateway that puts the free
//! tiers of many providers behind one endpoint and keeps an application
//! running when any of them says 429.
//!
//! A request's path through the crate (each phase is described once, in
//! [`proxy`]):
//!
//! ```text
//! server (hyper, h1 + h2c) ─▶ api: endpoint, auth, body under its limits
//!   ─▶ proxy: parse ─▶ policies before routing (Rhai) ─▶ resolve (catalog::routes)
//!        ─▶ policies after routing ─▶ dispatch: for each candidate and key:
//!             admit (state: cooldowns, limits, rejected keys)
//!             ─▶ build (plugin, WebAssembly) ─▶ send (upstream client, rustls)
//!             ─▶ decode / classify (plugin) ─▶ fall back or answer
//!        ─▶ record (state: session pin) ─▶ respond (routing headers)
//!   ─▶ body: the whole answer, or the stream relayed as it arrives
//! ```
//!
//! Modules, top to bottom (none imports one above it): `cli`, `server`,
//! `gateway` and `api` (the HTTP surface), `proxy` (the request's phases),
//! then `policy`, `catalog`, `upstream`, `plugin` and `state`, and the
//! shared `config`, `errors`, `body`, `metrics`, `secret`, `auth`.
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
pub mod clients;
pub mod config;
pub mod dialect;
pub mod errors;
pub mod gateway;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod proxy;
pub mod replay;
pub mod secret;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;

pub use catalog::Catalog;
pub use config::{Config, Env};
pub use gateway::Gateway;
