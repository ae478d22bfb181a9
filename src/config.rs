//! The YAML configuration: its schema, how a file is read (environment
//! expansion, unknown keys, line numbers) and the validation `freeway check`
//! runs. The schema is a superset of the sketch in DESIGN.md; every field has
//! a default, so an empty file is a valid config.

mod document;
mod duration;
mod env;
mod source_map;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};

pub(crate) use document::parse_document;
pub use duration::ConfigDuration;
pub use env::{Env, Expanded, expand};
pub use source_map::SourceMap;
pub(crate) use validate::catalog as validate_catalog;
pub use validate::check_base_url;

use crate::catalog::Catalog;
use crate::secret::Secret;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The listening side: address, client tokens, limits, timeouts.
    pub server: ServerConfig,
    /// Providers by name: catalog names override catalog fields; other
    /// names are custom providers and need `plugin` and `base_url`.
    pub providers: IndexMap<String, ProviderSpec>,
    /// Route aliases: a model name that expands to several targets.
    pub routes: IndexMap<String, RouteSpec>,
    /// Model names clients hard-code, by glob (`claude-*`), mapped to a
    /// freeway model name; `None`: the default, `claude-*` → `auto`.
    pub aliases: Option<IndexMap<String, String>>,
    /// How the dispatcher tries candidates.
    pub dispatch: DispatchConfig,
    /// Model discovery: each provider's model list, fetched at start-up and
    /// refreshed every `discovery.interval`.
    pub discovery: DiscoveryConfig,
    /// Routing policies: Rhai scripts that shape the routes and each request
    /// before and after routing, hot-reloaded from `policies.dir` (the
    /// built-in ones run without it).
    pub policies: PoliciesConfig,
    /// Persistent state (the database file) and state shared through Redis.
    pub state: StateConfig,
    /// Provider plugins: an extra folder, and the limits every call runs under.
    pub plugins: PluginsConfig,
    /// OpenTelemetry trace export (OTLP over HTTP); off unless
    /// `telemetry.otlp_endpoint` is set.
    pub telemetry: TelemetryConfig,
    /// The folder of the file this config was read from; relative paths in
    /// the config are relative to it.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// `server:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: String,
    /// Bearer tokens clients must send on `/v1/` (and on
    /// `/health` and `/metrics` when protected). Empty: no
    /// authentication (allowed on loopback only, unless
    /// `allow_unauthenticated` says otherwise). Each a bare token or a
    /// named client with budgets ([`ApiKey`]).
    pub api_keys: Vec<ApiKey>,
    /// Bearer tokens for `/admin/` (the status API), distinct from
    /// `api_keys`: a client token does not open `/admin/` and an admin
    /// token does not open `/v1/`. Empty: `/admin/` is served only on a
    /// loopback address with no `api_keys` either (anyone there can already
    /// spend the quota), and refused with a hint otherwise.
    pub admin_keys: Vec<Secret>,
    /// Listen on a non-loopback address without `api_keys`: anyone who
    /// can reach the port spends your provider quota.
    pub allow_unauthenticated: bool,
    /// Largest request body accepted (413 above it). 1 byte to 1 GiB.
    pub max_body_bytes: u64,
    /// Requests served at once; more are answered 503 with `Retry-After`.
    /// 1 to [`MAX_IN_FLIGHT`].
    pub max_in_flight: u32,
    /// Bytes of request bodies held at once across all requests: what
    /// concurrent uploads may cost in memory. At least `max_body_bytes`, at
    /// most 64 GiB.
    pub max_in_flight_bytes: u64,
    /// HTTP/2 streams one client connection may have open at once
    /// (advertised as SETTINGS_MAX_CONCURRENT_STREAMS). 1 to 1024.
    pub max_streams_per_connection: u32,
    /// `/health` asks for a client token, like `/v1/`. Needs `api_keys`.
    pub protect_health: bool,
    /// `/metrics` asks for a client token, like `/v1/`. Needs `api_keys`.
    pub protect_metrics: bool,
    /// A client must send a request's headers within this time (slow-loris
    /// protection; also closes idle keep-alive connections). 100ms to 1h.
    pub header_read_timeout: ConfigDuration,
    /// A client must send a request's body within this time. 100ms to 1h.
    pub body_read_timeout: ConfigDuration,
    /// On SIGINT/SIGTERM, in-flight requests and streams get this long.
    /// 0 to 1h.
    pub shutdown_timeout: ConfigDuration,
    /// Threads serving client connections (`freeway serve`), each with its
    /// own single-threaded runtime and upstream connection pool; a
    /// connection stays on the thread it was handed to. Unset: one per CPU
    /// core. 1 to [`MAX_WORKERS`].
    pub workers: Option<u32>,
    /// At low concurrency (a worker serving one request on at most two
    /// connections), after a request arrives and again when its answer is
    /// ready, its worker thread keeps polling its connections for this
    /// long instead of sleeping, so that what comes next (the upstream's
    /// reply, the client's next request) is read at once rather than after
    /// the thread is woken. Trades CPU for latency. 100µs by default; 0:
    /// off. 0 to [`MAX_BUSY_POLL`].
    pub busy_poll: ConfigDuration,
}

/// The most `server.workers`.
pub const MAX_WORKERS: u32 = 1024;

/// The longest `server.busy_poll`: past it a worker only burns CPU between
/// requests that are far apart anyway.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// One entry of `server.api_keys`: a bare token (no name, no budget), or a
/// named client with its token, budgets and the models it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ApiKey {
    /// A bare token.
    Token(Secret),
    /// A named client.
    Client(ClientKey),
}

impl ApiKey {
    /// The token the client sends (empty when the object form has none,
    /// which validation refuses).
    pub fn token(&self) -> &str {
        match self {
            Self::Token(t) => t.expose(),
            Self::Client(c) => c.token.as_ref().map_or("", Secret::expose),
        }
    }

    /// Drops the token once the authenticator holds its digest, so the
    /// running gateway keeps no client token in plain text.
    pub fn forget_token(&mut self) {
        match self {
            Self::Token(t) => *t = Secret::new(""),
            Self::Client(c) => c.token = None,
        }
    }

    /// The named client, for the object form.
    pub fn client(&self) -> Option<&ClientKey> {
        match self {
            Self::Token(_) => None,
            Self::Client(c) => Some(c),
        }
    }
}

/// A named client of `server.api_keys`. Fields are optional to serde so
/// that validation can say which is missing, with its line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKey {
    /// How logs, metrics and errors name the client: unique, 1 to 64 of
    /// `[A-Za-z0-9_.-]`.
    pub name: Option<String>,
    /// The bearer token (`${VAR}` expands as anywhere else).
    pub token: Option<Secret>,
    /// Requests per sliding minute.
    pub rpm: Option<i64>,
    /// Requests per rolling 24 hours.
    pub rpd: Option<i64>,
    /// Tokens (prompt + completion, as answers report them) per rolling 24 hours.
    pub tpd: Option<i64>,
    /// Globs of the freeway model names (after `aliases`) the client may
    /// use; absent: every model.
    pub models: Option<Vec<String>>,
}

/// The most requests `server.max_in_flight` may allow at once: half the
/// plugin instances the engine can hold, because a request in flight holds
/// at most one instance, plus one while a policy asks a classifier model.
pub const MAX_IN_FLIGHT: u32 = crate::plugin::MAX_INSTANCES / 2;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            api_keys: Vec::new(),
            admin_keys: Vec::new(),
            allow_unauthenticated: false,
            max_body_bytes: 16 * 1024 * 1024,
            max_in_flight: MAX_IN_FLIGHT,
            max_in_flight_bytes: 256 * 1024 * 1024,
            max_streams_per_connection: 128,
            protect_health: false,
            protect_metrics: false,
            header_read_timeout: ConfigDuration::secs(10),
            body_read_timeout: ConfigDuration::secs(30),
            shutdown_timeout: ConfigDuration::secs(30),
            workers: None,
            busy_poll: ConfigDuration(Duration::from_micros(100)),
        }
    }
}

impl ServerConfig {
    /// `workers`, or one per CPU core the process may use.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        }
    }

    /// The listen address, once validated.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        parse_listen(&self.listen)
    }
}

/// Refuses a non-loopback listen address without client tokens, unless the
/// config accepts that explicitly.
pub fn check_exposure(addr: SocketAddr, server: &ServerConfig) -> Result<(), String> {
    if addr.ip().is_loopback() || !server.api_keys.is_empty() || server.allow_unauthenticated {
        return Ok(());
    }
    Err(format!(
        "{addr} is reachable from other machines and server.api_keys is empty: anyone who can reach it \
         would spend your provider quota. Set server.api_keys, or set server.allow_unauthenticated: true"
    ))
}

/// Parses a listen address, with a hint for host names.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an address:port such as 127.0.0.1:8080 or 0.0.0.0:8080 (host names are not resolved)")
    })
}

/// One provider, as the catalog describes it or the config overrides it.
/// Every field is optional so that a config entry for a catalog provider
/// can name only what it changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProviderSpec {
    /// Human name for tables and messages.
    pub display_name: Option<String>,
    /// The translator plugin: `openai-compat`.
    pub plugin: Option<String>,
    /// API root including its version (`https://api.groq.com/openai/v1`).
    pub base_url: Option<String>,
    /// API keys, used in turn. Overrides `key_env`.
    pub keys: Option<Vec<Secret>>,
    /// Environment variables holding keys; a value may hold several keys
    /// separated by commas.
    pub key_env: Option<Vec<String>>,
    /// Other variables the provider needs (`CLOUDFLARE_ACCOUNT_ID`).
    pub requires_env: Option<Vec<String>>,
    /// Where a user gets a key.
    pub signup: Option<String>,
    /// Every model of this provider is free.
    pub free: Option<bool>,
    /// Runs on this machine (Ollama): enabled when it answers, no key.
    pub local: Option<bool>,
    /// `false` turns a catalog provider off even when its key is set.
    pub enabled: Option<bool>,
    /// Default limits per model per key.
    pub limits: Option<Limits>,
    /// Limits per key shared by all its models (an account-wide free pool).
    pub key_limits: Option<Limits>,
    /// When its daily (or monthly) quota resets, in its own time zone:
    /// `"00:00 America/Los_Angeles"`, `"monthly 00:00 UTC"`
    /// ([`crate::state::QuotaReset`]). Without one, daily counters roll
    /// over 24 hours.
    pub quota_reset: Option<String>,
    /// Known models. A config list replaces the catalog's.
    #[serde(deserialize_with = "opt_seq_of_string_or_map")]
    pub models: Option<Vec<ModelSpec>>,
    /// Extra headers sent on every upstream request (`HTTP-Referer`...).
    pub headers: Option<IndexMap<String, String>>,
    /// Provider quirks handed to the plugin (`auth_header`, `drop_params`...);
    /// config entries are merged over the catalog's.
    #[serde(deserialize_with = "opt_scalar_map")]
    pub options: Option<IndexMap<String, String>>,
}

/// Request and token limits of a free tier, per model per key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Requests per minute. Each of the four is 1 to 10^12 when set.
    pub rpm: Option<u64>,
    /// Requests per day.
    pub rpd: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Tokens per day.
    pub tpd: Option<u64>,
}

/// A model entry: a bare id string, or a map with metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ModelSpec {
    /// The id the upstream API expects.
    pub id: String,
    /// Context window in tokens: 1 to 10^9.
    pub context: Option<u64>,
    /// Free on the provider's free tier.
    pub free: Option<bool>,
    /// Limits for this model, overriding the provider's.
    pub limits: Option<Limits>,
    /// Capabilities and traits: chat, tools, reasoning, code, vision, fast.
    pub tags: Vec<String>,
    /// The provider's paid list price, for the usage API's "saved".
    pub price: Option<Price>,
}

/// A paid list price, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million prompt tokens.
    pub input: f64,
    /// Per million completion tokens (thinking included, as providers bill it).
    pub output: f64,
}

impl Price {
    /// What `tokens_in` and `tokens_out` cost at this price.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> f64 {
        (tokens_in as f64 * self.input + tokens_out as f64 * self.output) / 1e6
    }
}

/// A route alias.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RouteSpec {
    /// `provider/model` pairs or bare model ids.
    #[serde(deserialize_with = "seq_of_string_or_map")]
    pub targets: Vec<RouteTarget>,
    /// The order in which targets are tried.
    pub strategy: Strategy,
    /// A pool of free models: policies (favorites) may reorder it.
    pub free: bool,
}

/// One target of a route: `provider/model`, or a map with a weight.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RouteTarget {
    /// `provider/model` or a bare model id.
    pub target: String,
    /// Relative weight for the `weighted` strategy.
    pub weight: Option<u32>,
}

/// How a route orders its targets for each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// As written: the first target first, the rest as fallbacks.
    #[default]
    Ordered,
    /// Each request starts one target further along.
    RoundRobin,
    /// A fresh random order for each request.
    Random,
    /// Random order drawn by weight (higher weight, earlier more often).
    Weighted,
    /// Most daily requests left first (known limits only; the others after
    /// them, as written): spreads load across the free tiers.
    Headroom,
}

/// `dispatch:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DispatchConfig {
    /// Upstream attempts per request, across all candidates and keys.
    /// 1 to 100.
    pub max_attempts: u32,
    /// How long a rate-limited model cools down on a key when the upstream
    /// does not say (`Retry-After`). 0 to 7 days.
    pub cooldown: ConfigDuration,
    /// Whole non-stream attempt: connect, send, read the answer. 1ms to
    /// 1 day.
    pub timeout: ConfigDuration,
    /// TCP and TLS connect. 1ms to 1h.
    pub connect_timeout: ConfigDuration,
    /// Streams: from sending the request to the first event. 1ms to 1 day.
    pub first_byte_timeout: ConfigDuration,
    /// Streams: longest silence between two events once streaming, from
    /// the upstream, and longest wait for the client to read what is
    /// ready. 1ms to 1 day.
    pub stream_idle_timeout: ConfigDuration,
    /// Streams: a stream is closed this long after it started, whatever
    /// happens. At least `stream_idle_timeout`, at most 1 day.
    pub stream_max_duration: ConfigDuration,
    /// Consecutive failed attempts (5xx, timeouts, connect errors) after
    /// which a provider's circuit opens: it is skipped for
    /// `circuit_open`, then one request probes it. 0 turns it off.
    pub circuit_failures: u32,
    /// How long an open circuit skips its provider before a probe.
    pub circuit_open: ConfigDuration,
    /// How long a request may wait in line for capacity that frees within
    /// that time, instead of a 429 at once. 0 turns the queue off.
    pub queue_timeout: ConfigDuration,
    /// Requests waiting in line, at most (beyond: 429 at once).
    pub queue_max: u32,
    /// A PEM file of extra root certificates trusted for upstream TLS, on
    /// top of the public (webpki) roots: for self-hosted upstreams behind a
    /// private CA.
    pub ca_file: Option<String>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            cooldown: ConfigDuration::secs(60),
            timeout: ConfigDuration::secs(60),
            connect_timeout: ConfigDuration::secs(10),
            first_byte_timeout: ConfigDuration::secs(30),
            stream_idle_timeout: ConfigDuration::secs(60),
            stream_max_duration: ConfigDuration::secs(3600),
            circuit_failures: 5,
            circuit_open: ConfigDuration::secs(30),
            queue_timeout: ConfigDuration::secs(5),
            queue_max: 1000,
            ca_file: None,
        }
    }
}

/// `discovery:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DiscoveryConfig {
    /// Fetch model lists from providers at start-up and every `interval`.
    pub enabled: bool,
    /// How often. 1m to 30 days.
    pub interval: ConfigDuration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self { enabled: true, interval: ConfigDuration::secs(24 * 3600) }
    }
}

/// `policies:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PoliciesConfig {
    /// Folder of Rhai scripts.
    pub dir: Option<String>,
    /// Policies turned off by name.
    pub disabled: Vec<String>,
    /// Free-form settings handed to the scripts.
    pub settings: serde_yaml::Mapping,
}

/// `plugins:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PluginsConfig {
    /// A folder of `NAME.wasm` components; each adds a plugin, or replaces
    /// the built-in one of the same name.
    pub dir: Option<String>,
    /// CPU time a single plugin call may use (waiting for a CPU on a busy
    /// machine does not count, up to a wall-clock backstop of ten times this).
    /// 1ms to 10s.
    pub call_timeout: ConfigDuration,
    /// Most memory one plugin instance may use, in bytes; enough to
    /// translate a body of `server.max_body_bytes`.
    pub memory_limit: u64,
    /// Where compiled plugins are cached across restarts (default
    /// `~/.cache/freeway/plugins`; `""` turns the disk cache off).
    pub cache_dir: Option<String>,
    /// A new plugin instance for every attempt, instead of reusing instances
    /// that finished cleanly (strict isolation, about three times the CPU).
    pub fresh_instances: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            call_timeout: ConfigDuration::millis(250),
            memory_limit: crate::plugin::DEFAULT_MEMORY_LIMIT as u64,
            cache_dir: None,
            fresh_instances: false,
        }
    }
}

impl Config {
    /// The plugin folder, resolved against the config's folder.
    pub fn plugins_dir(&self) -> Option<PathBuf> {
        self.plugins.dir.as_deref().map(|d| self.resolve_path(d))
    }

    /// The limits and cache location plugin calls run under.
    pub fn plugin_settings(&self) -> crate::plugin::PluginSettings {
        let defaults = crate::plugin::PluginSettings::default();
        crate::plugin::PluginSettings {
            call_timeout: self.plugins.call_timeout.get(),
            memory_limit: usize::try_from(self.plugins.memory_limit).unwrap_or(usize::MAX),
            cache_dir: match self.plugins.cache_dir.as_deref() {
                None => defaults.cache_dir,
                Some("") => None,
                Some(dir) => Some(self.resolve_path(dir)),
            },
            fresh_instances: self.plugins.fresh_instances,
        }
    }
}

/// `telemetry:`: each request's trace (its phases and upstream attempts)
/// sent to an OpenTelemetry collector over OTLP/HTTP (protobuf). Off by
/// default: with no `otlp_endpoint` nothing is built. The standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` does not turn it on by itself (a variable
/// meant for another program must not start sending traces); write
/// `otlp_endpoint: ${OTEL_EXPORTER_OTLP_ENDPOINT:-}` to follow it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`): traces go to
    /// its `/v1/traces`, unless the URL already ends with that path.
    /// Unset or empty: no export.
    pub otlp_endpoint: Option<String>,
    /// Headers sent with every export (a collector's auth token): kept
    /// as secrets, never logged.
    pub headers: IndexMap<String, Secret>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of requests traced, 0 to 1; a request that arrives with a
    /// W3C `traceparent` follows its caller's sampling decision instead.
    pub sample_ratio: f64,
    /// How long one export to the collector may take. 100ms to 1m.
    pub timeout: ConfigDuration,
    /// How often the spans waiting are sent (sooner when a batch of 512
    /// is ready). 10ms to 1m.
    pub export_interval: ConfigDuration,
    /// Spans waiting for export, at most: past it new spans are dropped
    /// (a slow collector never holds memory or a request). 64 to 1000000.
    pub max_queue: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            headers: IndexMap::new(),
            service_name: "freeway".to_owned(),
            sample_ratio: 1.0,
            timeout: ConfigDuration::secs(10),
            export_interval: ConfigDuration::secs(5),
            max_queue: 2048,
        }
    }
}

impl TelemetryConfig {
    /// The collector's base URL when export is on.
    pub fn endpoint(&self) -> Option<&str> {
        self.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty())
    }
}

/// `state:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StateConfig {
    /// The embedded database file (default `$XDG_STATE_HOME/freeway/freeway.db`,
    /// else `~/.local/state/freeway/freeway.db`); `""` keeps state in memory only.
    pub path: Option<String>,
    /// A `redis://` URL: several instances share their state through it.
    pub redis: Option<String>,
    /// How long the request log is kept (1h to 400 days).
    pub log_retention: ConfigDuration,
    /// How long a Responses-API response stored with `store` can be named
    /// by `previous_response_id`, kept in the database (and Redis) after
    /// its turn (1h to 400 days; `0`: never written there, kept an hour in
    /// memory only).
    pub responses_retention: ConfigDuration,
    /// Keep each request's messages in the request log, for `freeway
    /// replay` to run content-based policies on (default false: prompts
    /// are private and large). Only chat requests whose messages serialize
    /// to at most [`crate::state::log::MAX_LOGGED_BODY`] bytes are kept;
    /// larger ones are logged without them and marked so. Needs a state
    /// database (a memory-only `state.path: ""` with it is refused).
    pub log_bodies: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            path: None,
            redis: None,
            log_retention: ConfigDuration::secs(30 * 24 * 3600),
            // OpenAI's own: a client written against it finds a response
            // for as long as it expects. The disk is bounded apart
            // (`state::responses::KEPT_BYTES`).
            responses_retention: ConfigDuration::secs(30 * 24 * 3600),
            log_bodies: false,
        }
    }
}

impl Config {
    /// The state database's file, resolved against the config's folder;
    /// the default lives under `$XDG_STATE_HOME` (or `~/.local/state`) of
    /// `env`; `None` when state is kept in memory only.
    pub fn state_path(&self, env: &Env) -> Option<PathBuf> {
        match self.state.path.as_deref() {
            Some("") => None,
            Some(path) => Some(self.resolve_path(path)),
            None => {
                let base = match env.get_nonempty("XDG_STATE_HOME") {
                    Some(dir) => PathBuf::from(dir),
                    None => PathBuf::from(env.get_nonempty("HOME")?).join(".local/state"),
                };
                Some(base.join("freeway/freeway.db"))
            }
        }
    }
}

/// A `T` written either as a plain string (its main field) or as a map.
/// Map entries deserialize through `T`'s derived impl, so unknown keys
/// inside them are still reported.
struct StringOr<T>(T);

impl<'de, T: Deserialize<'de> + From<String>> Deserialize<'de> for StringOr<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + From<String>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = StringOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a map")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOr(T::from(v.to_owned())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(StringOr)
            }
        }
        deserializer.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

fn seq_of_string_or_map<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + From<String>,
{
    let items = Vec::<StringOr<T>>::deserialize(deserializer)?;
    Ok(items.into_iter().map(|s| s.0).collect())
}

/// A map whose values may be written as any YAML scalar, kept as strings.
fn opt_scalar_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<IndexMap<String, String>>, D::Error> {
    struct Scalar(String);
    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Scalar;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, number or boolean")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_owned()))
                }
                fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
            }
            deserializer.deserialize_any(Visitor)
        }
    }
    let map = IndexMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(Some(map.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

fn opt_seq_of_string_or_map<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + From<String>,
{
    seq_of_string_or_map(deserializer).map(Some)
}

impl From<String> for ModelSpec {
    fn from(id: String) -> Self {
        Self { id, ..Default::default() }
    }
}

impl From<String> for RouteTarget {
    fn from(target: String) -> Self {
        Self { target, weight: None }
    }
}

/// A problem found in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key (`providers.groq.keys.1`).
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.path, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// Every problem of a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<embedded catalog>`).
    pub origin: String,
    /// All problems found, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{}: {n} problem{}", self.origin, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// A config that passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Things that are allowed but probably not what was meant.
    pub warnings: Vec<Problem>,
}

impl Config {
    /// A path from the config, made relative to the config file's folder.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        match &self.base_dir {
            Some(dir) if Path::new(path).is_relative() => dir.join(path),
            _ => PathBuf::from(path),
        }
    }

    /// The certificates of `dispatch.ca_file`, if set.
    pub fn extra_roots(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
        use rustls::pki_types::pem::PemObject;
        let Some(file) = &self.dispatch.ca_file else {
            return Ok(Vec::new());
        };
        let path = self.resolve_path(file);
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not a PEM certificate file ({e})", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", path.display()));
        }
        Ok(certs)
    }

    /// Reads, expands and validates the file at `path` against `catalog`.
    pub fn load(path: &Path, env: &Env, catalog: &Catalog) -> Result<Loaded, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            problems: vec![Problem { path: String::new(), line: None, message: format!("cannot read: {e}") }],
        })?;
        Self::parse(&text, &origin, path.parent(), env, catalog)
    }

    /// Reads, expands and validates YAML text; `origin` names it in messages.
    /// Relative paths in it are relative to the working folder.
    pub fn from_yaml(text: &str, origin: &str, env: &Env, catalog: &Catalog) -> Result<Loaded, ConfigError> {
        Self::parse(text, origin, None, env, catalog)
    }

    fn parse(
        text: &str,
        origin: &str,
        base_dir: Option<&Path>,
        env: &Env,
        catalog: &Catalog,
    ) -> Result<Loaded, ConfigError> {
        let mut doc = parse_document::<Config>(text, origin, env)?;
        doc.value.base_dir = base_dir.map(Path::to_path_buf);
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        validate::config(&doc.value, &doc.unset, catalog, &doc.map, &mut problems, &mut warnings);
        // Where a value was refused for its type, the config holds a default
        // the file never asked for: judging it would only add noise.
        problems.retain(|p| !doc.is_rejected(&p.path));
        warnings.retain(|p| !doc.is_rejected(&p.path));
        problems.append(&mut doc.problems);
        locate(&mut problems, &doc.map);
        locate(&mut warnings, &doc.map);
        if problems.is_empty() {
            Ok(Loaded { config: doc.value, warnings })
        } else {
            problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(ConfigError { origin: origin.to_owned(), problems })
        }
    }
}

fn locate(problems: &mut [Problem], map: &SourceMap) {
    for p in problems {
        if p.line.is_none() {
            p.line = map.line(&p.path);
        }
    }
}
