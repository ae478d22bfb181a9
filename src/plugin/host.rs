//! Loading plugins and calling them: each attempt in an instance of its own
//! (a new one, or one reused from a clean earlier attempt; see
//! [`PluginSession`]), each call under the instance's memory limit and a
//! deadline of CPU time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{ResourceLimiter, Store, Trap};

use super::bindings::v03::api;
use super::plan::{ChatPlan, MAX_PLAN_ITEMS, Planned, PlannedStream, SetField};
use super::types::{
    Capabilities, Decoded, ErrorKind, ModelRecord, QuotaWindow, RateReport, RateUnit, StreamEvent, Target,
    UpstreamRequest, Usage,
};
use super::versions::{Instance, Pre, Version};
use super::{BUILTIN, INTERFACE_VERSION, LOADED_VERSIONS, TRANSLATOR_EXPORT, cache, engine};
use crate::metrics::Metrics;

/// Limits every plugin call runs under.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// CPU time a single call may use (a call stopped only by the machine
    /// being busy is given up after ten times this, at least 2 s).
    pub call_timeout: Duration,
    /// Most linear memory one instance may grow to.
    pub memory_limit: usize,
    /// Where compiled components are cached (`None`: compile every start).
    pub cache_dir: Option<PathBuf>,
    /// A new instance for every attempt instead of reusing clean ones.
    pub fresh_instances: bool,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(250),
            memory_limit: engine::DEFAULT_MEMORY_LIMIT,
            cache_dir: cache::default_dir(),
            fresh_instances: false,
        }
    }
}

/// How a plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginErrorKind {
    /// The plugin answered with an error (its own, well-formed).
    Refused,
    /// It trapped (a panic, an invalid operation).
    Trap,
    /// It ran past its deadline.
    Deadline,
    /// It tried to grow past its memory limit.
    Memory,
    /// It could not be instantiated (the instance pool is full).
    Unavailable,
    /// It cannot express the client's request for its provider (a 0.2
    /// `build-error.client-error`): the client gets a 400 with its message.
    ClientRequest,
}

impl PluginErrorKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Trap => "trap",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Unavailable => "unavailable",
            Self::ClientRequest => "client_request",
        }
    }
}

/// A failed plugin call, with the plugin's name in its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}`: {message}")]
pub struct PluginError {
    /// The plugin.
    pub plugin: String,
    /// What happened.
    pub kind: PluginErrorKind,
    /// Details.
    pub message: String,
}

/// Per-store state: the memory limit, whether it was hit, how much linear
/// memory the instance has, and the current call's deadline.
pub(super) struct State {
    memory_limit: usize,
    memory_exceeded: bool,
    /// Bytes of linear memory, all memories of the instance together (wasm
    /// memories only grow, so this is also their peak).
    memory_size: usize,
    deadline: engine::Deadline,
}

impl State {
    /// Readies the store for one call: a new deadline, no fault yet.
    fn arm(store: &mut Store<Self>) {
        let state = store.data_mut();
        state.memory_exceeded = false;
        let ticks = state.deadline.start_call();
        store.set_epoch_deadline(ticks);
    }

    /// [`Self::arm`], and the call counted as running (so that the epoch
    /// advances and its deadline is checked) until the guard is dropped.
    fn start_call(store: &mut Store<Self>) -> engine::Running {
        Self::arm(store);
        engine::Running::start()
    }
}

impl ResourceLimiter for State {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        self.memory_size = self.memory_size.saturating_add(desired.saturating_sub(current));
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A loaded plugin, ready to be called.
pub struct Plugin {
    idle: std::sync::Mutex<Vec<Warm>>,
    engine: &'static wasmtime::Engine,
    name: String,
    source: String,
    capabilities: Capabilities,
    pre: Pre,
    version: Version,
    settings: PluginSettings,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plugin({} from {})", self.name, self.source)
    }
}

/// The plugins of one gateway, by name.
#[derive(Debug, Default)]
pub struct PluginHost {
    plugins: HashMap<String, Arc<Plugin>>,
}

impl PluginHost {
    /// The built-in plugins, then every `*.wasm` in `dir` (which replaces a
    /// built-in of the same name). Every plugin that cannot be loaded is an
    /// error, all of them listed.
    pub fn load(settings: &PluginSettings, dir: Option<&Path>, metrics: Arc<Metrics>) -> Result<Self, Vec<String>> {
        let mut host = Self::default();
        let mut problems = Vec::new();
        for (name, wasm) in BUILTIN {
            match Plugin::load(wasm, &format!("built-in {name}"), settings, metrics.clone()) {
                Ok(plugin) => {
                    host.plugins.insert(plugin.name.clone(), Arc::new(plugin));
                }
                Err(e) => problems.push(e),
            }
        }
        for (stem, path) in plugin_files(dir).map_err(|e| vec![e])? {
            let loaded = std::fs::read(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|wasm| Plugin::load(&wasm, &path.display().to_string(), settings, metrics.clone()));
            match loaded {
                Ok(plugin) if plugin.name != stem => problems.push(format!(
                    "{}: the plugin calls itself `{}`; name the file {}.wasm",
                    path.display(),
                    plugin.name,
                    plugin.name
                )),
                Ok(plugin) => {
                    tracing::info!(plugin = %plugin.name, file = %path.display(), "plugin loaded");
                    host.plugins.insert(plugin.name.clone(), Arc::new(plugin));
                }
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() { Ok(host) } else { Err(problems) }
    }

    /// A plugin by name.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.get(name).cloned()
    }

    /// Every plugin name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The names a config may use: the built-ins and the `*.wasm` files in `dir`.
pub fn available_names(dir: Option<&Path>) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| (*n).to_owned()).collect();
    for (stem, _) in plugin_files(dir)? {
        if !names.contains(&stem) {
            names.push(stem);
        }
    }
    names.sort();
    Ok(names)
}

fn plugin_files(dir: Option<&Path>) -> Result<Vec<(String, PathBuf)>, String> {
    let Some(dir) = dir else { return Ok(Vec::new()) };
    let entries = std::fs::read_dir(dir).map_err(|e| format!("plugins folder {}: {e}", dir.display()))?;
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p)))
        .collect();
    files.sort();
    Ok(files)
}

/// The interface version a component exports the translator for, when this
/// build loads it; otherwise says which version it has.
fn check_interface(engine: &wasmtime::Engine, component: &Component, source: &str) -> Result<Version, String> {
    let other = match Version::of(engine, component) {
        Ok(version) => return Ok(version),
        Err(other) => other,
    };
    if let Some(other) = other {
        return Err(format!(
            "{source}: built against plugin interface {other}; this freeway expects {INTERFACE_VERSION} \
             (and still loads {}). Rebuild the plugin with providers/wit from this version",
            LOADED_VERSIONS[1..].join(", ")
        ));
    }
    let exports: Vec<String> = component.component_type().exports(engine).map(|(name, _)| name.to_owned()).collect();
    Err(format!(
        "{source}: not a freeway provider plugin (it exports {}; expected {TRANSLATOR_EXPORT})",
        if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") }
    ))
}

impl Plugin {
    /// Compiles (or loads from the cache), checks and pre-instantiates a
    /// component; `source` names it in messages.
    pub fn load(wasm: &[u8], source: &str, settings: &PluginSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let engine = engine::engine()?;
        let component =
            cache::load(engine, wasm, settings.cache_dir.as_deref()).map_err(|e| format!("{source}: {e}"))?;
        let version = check_interface(engine, &component, source)?;
        let mut linker = Linker::<State>::new(engine);
        // A wasm32-wasip2 guest imports WASI even when it does no I/O; any
        // such call traps, so a plugin cannot reach files, clocks or sockets.
        linker.define_unknown_imports_as_traps(&component).map_err(|e| format!("{source}: {e:#}"))?;
        let pre =
            Pre::new(&linker, &component, version).map_err(|e| format!("{source}: cannot be instantiated: {e:#}"))?;
        let mut plugin = Self {
            idle: std::sync::Mutex::new(Vec::new()),
            engine,
            name: String::new(),
            source: source.to_owned(),
            capabilities: Capabilities::default(),
            pre,
            version,
            settings: settings.clone(),
            metrics,
        };
        let descriptor = plugin
            .call(|store, p| p.describe(store))
            .map_err(|e| format!("{source}: describe() failed: {}", e.message))?;
        if descriptor.interface_version != version.as_str() {
            return Err(format!(
                "{source}: says it implements plugin interface {} but exports interface {}",
                descriptor.interface_version,
                version.as_str()
            ));
        }
        let c = descriptor.capabilities;
        plugin.capabilities = Capabilities {
            chat: c.contains(api::Capabilities::CHAT),
            stream: c.contains(api::Capabilities::STREAM),
            tools: c.contains(api::Capabilities::TOOLS),
            embeddings: c.contains(api::Capabilities::EMBEDDINGS),
            models: c.contains(api::Capabilities::MODELS),
            limits: c.contains(api::Capabilities::LIMITS),
            plan: c.contains(api::Capabilities::PLAN),
        };
        plugin.name = descriptor.name;
        Ok(plugin)
    }

    /// A fresh instance and one trivial call: the fixed cost of every call.
    #[doc(hidden)]
    pub fn describe_for_bench(&self) -> bool {
        self.call(|s, p| p.describe(s)).is_ok()
    }

    /// The request that lists the provider's models (one-off session).
    pub fn build_models(self: &Arc<Self>, target: &Target<'_>) -> Result<UpstreamRequest, PluginError> {
        self.session()?.build_models(target)
    }

    /// A model listing → records (one-off session).
    pub fn decode_models(self: &Arc<Self>, body: &[u8], target: &Target<'_>) -> Result<Vec<ModelRecord>, PluginError> {
        self.session()?.decode_models(body, target)
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it can do.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// The interface version it was built against (`0.3.0`; `0.2.0` for a
    /// plugin that predates [`Plugin::plan_chat`], `0.1.0` for one that
    /// predates [`Plugin::read_limits`] too).
    pub fn interface_version(&self) -> &'static str {
        self.version.as_str()
    }

    /// What the upstream said about its limits in a response's headers
    /// (an answer's or an error's), as the plugin reads them. Empty, without
    /// entering the plugin, when it lacks the `limits` capability or no
    /// header name contains `ratelimit`; the plugin gets only those headers
    /// and `retry-after`. Runs in an idle instance (or a new one) and gives
    /// it back; a plugin fault reads as nothing (and is counted).
    pub fn read_limits(&self, status: u16, headers: &HeaderMap) -> Vec<RateReport> {
        let Some(headers) = self.limit_headers(headers) else { return Vec::new() };
        let warm = if self.settings.fresh_instances {
            None
        } else {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
        };
        let mut warm = match warm {
            Some(warm) => warm,
            None => {
                let mut store = self.store();
                match self.pre.instantiate(&mut store) {
                    Ok(instance) => Warm { store, instance, uses: 0, idle_since: std::time::Instant::now() },
                    Err(e) => {
                        self.fault(&store, e, PluginErrorKind::Unavailable);
                        return Vec::new();
                    }
                }
            }
        };
        let read = {
            let _running = State::start_call(&mut warm.store);
            warm.instance.read_limits(&mut warm.store, status, &headers)
        };
        match read {
            Ok(reports) => {
                self.put_back(warm);
                rate_reports(reports, std::time::SystemTime::now())
            }
            Err(e) => {
                self.fault(&warm.store, e, PluginErrorKind::Trap);
                Vec::new()
            }
        }
    }

    /// The headers [`Plugin::read_limits`] passes in, or `None` when there
    /// is nothing to read.
    fn limit_headers(&self, headers: &HeaderMap) -> Option<Vec<(String, String)>> {
        if !self.capabilities.limits {
            return None;
        }
        // Header names are lower case in a `HeaderMap`.
        let limit = |name: &HeaderName| name.as_str().contains("ratelimit");
        if !headers.keys().any(limit) {
            return None;
        }
        Some(
            headers
                .iter()
                .filter(|(name, _)| limit(name) || *name == http::header::RETRY_AFTER)
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
        )
    }

    /// Gives a clean instance back to the idle pool (or lets it go: see
    /// [`PluginSession`]).
    fn put_back(&self, mut warm: Warm) {
        if self.settings.fresh_instances || warm.store.data().memory_size > RETIRE_MEMORY {
            return;
        }
        warm.uses += 1;
        let now = std::time::Instant::now();
        warm.idle_since = now;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest idle instances are at the bottom.
        let expired = idle.iter().take_while(|w| now.saturating_duration_since(w.idle_since) > IDLE_TTL).count();
        let dropped: Vec<Warm> = idle.drain(..expired).collect();
        if warm.uses < MAX_USES && idle.len() < MAX_IDLE {
            idle.push(warm);
        }
        drop(idle);
        // Instances are torn down outside the lock.
        drop(dropped);
    }

    fn store(&self) -> Store<State> {
        let state = State {
            memory_limit: self.settings.memory_limit,
            memory_exceeded: false,
            memory_size: 0,
            deadline: engine::Deadline::new(self.settings.call_timeout),
        };
        let mut store = Store::new(self.engine, state);
        store.limiter(|state| state);
        store.epoch_deadline_callback(|mut store| Ok(store.data_mut().deadline.on_tick()));
        State::arm(&mut store);
        store
    }

    /// An instance for one attempt: every call of the attempt (build,
    /// classify, decode, stream) runs in it, each under its own deadline.
    /// It is the most recently used idle instance that finished cleanly, or
    /// a new one (always a new one with `plugins.fresh_instances`).
    pub fn session(self: &Arc<Self>) -> Result<PluginSession, PluginError> {
        if !self.settings.fresh_instances
            && let Some(warm) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
        {
            return Ok(PluginSession { plugin: self.clone(), warm: Some(warm), poisoned: false });
        }
        let mut store = self.store();
        match self.pre.instantiate(&mut store) {
            Ok(instance) => Ok(PluginSession {
                plugin: self.clone(),
                warm: Some(Warm { store, instance, uses: 0, idle_since: std::time::Instant::now() }),
                poisoned: false,
            }),
            Err(e) => Err(self.fault(&store, e, PluginErrorKind::Unavailable)),
        }
    }

    /// Runs `f` on a fresh instance (for one-off calls).
    fn call<T>(&self, f: impl FnOnce(&mut Store<State>, &Instance) -> wasmtime::Result<T>) -> Result<T, PluginError> {
        let mut store = self.store();
        let instance = match self.pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => return Err(self.fault(&store, e, PluginErrorKind::Unavailable)),
        };
        let running = engine::Running::start();
        let result = f(&mut store, &instance);
        drop(running);
        result.map_err(|e| self.fault(&store, e, PluginErrorKind::Trap))
    }

    fn fault(&self, store: &Store<State>, error: wasmtime::Error, default: PluginErrorKind) -> PluginError {
        let kind = if store.data().memory_exceeded {
            PluginErrorKind::Memory
        } else if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            PluginErrorKind::Deadline
        } else {
            default
        };
        let deadline = &store.data().deadline;
        let message = match kind {
            PluginErrorKind::Memory => format!("exceeded its memory limit of {} bytes", self.settings.memory_limit),
            PluginErrorKind::Deadline if deadline.expired() == Some(engine::Expired::Wall) => format!(
                "ran past its deadline: {:?} went by before it used its {:?} of CPU time",
                deadline.backstop(),
                deadline.budget()
            ),
            PluginErrorKind::Deadline => format!("ran past its deadline of {:?} of CPU time", deadline.budget()),
            // The cause alone: the wasm backtrace before it is for the log.
            PluginErrorKind::Trap => format!("trapped: {}", error.root_cause()),
            _ => format!("{error:#}"),
        };
        tracing::debug!(plugin = %self.name, "plugin fault in full: {error:?}");
        self.metrics.plugin_failure(&self.name, kind.label());
        tracing::warn!(plugin = %self.name, kind = kind.label(), "{message}");
        PluginError { plugin: self.name.clone(), kind, message }
    }

    pub(crate) fn refused(&self, message: String) -> PluginError {
        PluginError { plugin: self.name.clone(), kind: PluginErrorKind::Refused, message }
    }

    fn build_error(&self, error: api::BuildError) -> PluginError {
        match error {
            api::BuildError::ClientError(message) => {
                PluginError { plugin: self.name.clone(), kind: PluginErrorKind::ClientRequest, message }
            }
            api::BuildError::Failed(message) => self.refused(message),
        }
    }

    fn upstream_request(
        &self,
        r: api::HttpRequest,
        target: &Target<'_>,
        purpose: Purpose,
    ) -> Result<UpstreamRequest, PluginError> {
        allowed_url(&r.url, target, purpose).map_err(|why| self.refused(format!("built a URL outside {why}")))?;
        let method = self.method(&r.method)?;
        let headers = self.headers(r.headers)?;
        Ok(UpstreamRequest { method, url: r.url, headers, body: Bytes::from(r.body) })
    }

    fn method(&self, method: &str) -> Result<Method, PluginError> {
        Method::from_bytes(method.as_bytes())
            .map_err(|_| self.refused(format!("built a request with method {method:?}")))
    }

    /// A plugin's headers, checked; those that may carry a secret marked
    /// sensitive.
    fn headers(&self, headers: api::Headers) -> Result<Vec<(HeaderName, HeaderValue)>, PluginError> {
        let mut out = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.refused(format!("built a request with header name {name:?}")))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| self.refused(format!("built a request with a bad value for header {name}")))?;
            if name == http::header::AUTHORIZATION || name.as_str().contains("key") || name.as_str().contains("token") {
                value.set_sensitive(true);
            }
            out.push((name, value));
        }
        Ok(out)
    }

    /// The plugin's chat plan for `target` (interface 0.3, the `plan`
    /// capability), checked as a built request is: its URL under the base
    /// URL, its method and headers valid, the values it sets JSON, at most
    /// [`MAX_PLAN_ITEMS`] of each list. `None`: every request is built by
    /// the plugin. Runs on a fresh instance; callers keep the answer
    /// ([`super::PlanCache`]).
    pub fn plan_chat(&self, target: &Target<'_>) -> Result<Option<ChatPlan>, PluginError> {
        if !self.capabilities.plan {
            return Ok(None);
        }
        let t = wit_target(target);
        let Some(p) = self.call(|s, i| i.plan_chat(s, &t))? else { return Ok(None) };
        allowed_url(&p.url, target, Purpose::Request)
            .map_err(|why| self.refused(format!("planned a URL outside {why}")))?;
        let lists = [p.set_fields.len(), p.drop_fields.len(), p.request_unless.len(), p.answer_unless.len()];
        if lists.iter().any(|n| *n > MAX_PLAN_ITEMS) {
            return Err(self.refused(format!("planned more than {MAX_PLAN_ITEMS} fields or texts in a list")));
        }
        let mut set = Vec::with_capacity(p.set_fields.len());
        for (name, json) in p.set_fields {
            // A field also dropped is dropped (the plan's edits are: set, then drop).
            if !p.drop_fields.contains(&name) {
                set.push(SetField::new(name, json).map_err(|e| self.refused(e))?);
            }
        }
        let finders = |texts: Vec<String>| {
            texts.iter().map(|t| memchr::memmem::Finder::new(t.as_bytes()).into_owned()).collect::<Vec<_>>()
        };
        Ok(Some(ChatPlan {
            target: t.clone(),
            method: self.method(&p.method)?,
            url: p.url,
            headers: self.headers(p.headers)?,
            stream_headers: self.headers(p.stream_headers)?,
            set,
            drop: p.drop_fields,
            stream_usage: p.stream_usage,
            request_unless: finders(p.request_unless),
            answer_unless: finders(p.answer_unless),
        }))
    }
}

/// One attempt's instance of a plugin.
///
/// By default an instance that finished its attempt cleanly goes back to a
/// small per-plugin pool and serves a later attempt (one at a time): a
/// fresh instance per attempt costs about three times the CPU under load
/// (pooled memory reset, page faults, TLB shootdowns; measured with
/// benches/load.sh). An instance that trapped, ran past its deadline or hit
/// its memory limit is never reused; one whose memory grew past
/// [`RETIRE_MEMORY`] is retired, and so is one after [`MAX_USES`] attempts. `plugins.fresh_instances: true` gives every attempt
/// a new instance, for plugins that must not keep anything between requests.
pub struct PluginSession {
    plugin: Arc<Plugin>,
    warm: Option<Warm>,
    poisoned: bool,
}

/// An instance with its store, how many attempts it has served, and since
/// when it has been idle.
struct Warm {
    store: Store<State>,
    instance: Instance,
    uses: u32,
    idle_since: std::time::Instant,
}

/// Attempts one instance serves before it is retired.
pub const MAX_USES: u32 = 10_000;
/// Idle instances kept per plugin: about the attempts in flight at once
/// under load (a new instance costs ~22 us more than a warm one). Each
/// keeps up to [`RETIRE_MEMORY`] resident.
const MAX_IDLE: usize = 32;

/// An idle instance unused this long is let go (its memory with it): the
/// pool shrinks back after a burst. The pool is used last in, first out, so
/// the instances that age out are the ones a quieter load does not need.
const IDLE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// An instance whose linear memory grew past this is retired after its
/// attempt instead of going back to the pool: wasm memory never shrinks, so
/// an idle instance that once translated a large body would keep that memory
/// resident (27 idle instances kept 38 MiB each). Measured: an instance
/// serving requests up to 64 KiB stays at 2 MiB; one past 4 MiB has
/// translated a body of a few hundred KiB, a call of 0.3 ms or more
/// (release build), while replacing it costs the next attempt about 22 us
/// of CPU. The soak benchmark showed the pool's memory is what a gateway's
/// RSS is made of after a burst: at most [`MAX_IDLE`] × this per plugin.
pub const RETIRE_MEMORY: usize = 4 << 20;

/// Calls given at least this much input run in
/// [`tokio::task::block_in_place`], so that the worker's other tasks (other
/// requests) move to another thread while the call holds this one.
/// Measured (release build, warm instance): a `build_chat` of 256 KiB takes
/// about 0.3 ms, of 1 MiB 1.3 to 2.2 ms, of 16 MiB 100 to 150 ms; a hand-off
/// costs 5 to 15 us of CPU. From here on a call holds its worker longer than
/// the gateway's whole work on an ordinary request and the hand-off adds at
/// most 5%; below, it would add more to calls that end soon anyway.
pub const BLOCKING_INPUT: usize = 256 << 10;

/// Runs a plugin call, in `block_in_place` when its input is large and this
/// thread is a worker of a multi-thread tokio runtime (a current-thread
/// runtime has no other thread to hand its tasks to, and `block_in_place`
/// panics there; outside a runtime there is nothing to hand off). The
/// worker threads of `freeway serve` ([`crate::server::serve_on_threads`])
/// are current-thread runtimes: there a large call holds its thread's
/// other connections for its length.
fn off_the_workers<R>(input: usize, call: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread = || Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if input >= BLOCKING_INPUT && multi_thread() { tokio::task::block_in_place(call) } else { call() }
}

impl Drop for PluginSession {
    fn drop(&mut self) {
        if self.poisoned {
            return;
        }
        if let Some(warm) = self.warm.take() {
            self.plugin.put_back(warm);
        }
    }
}

impl PluginSession {
    /// Runs one call of the attempt; `input` is the size of what it is
    /// given, for [`off_the_workers`].
    fn call<T>(
        &mut self,
        input: usize,
        f: impl FnOnce(&mut Store<State>, &Instance) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        let Some(Warm { store, instance, .. }) = self.warm.as_mut() else {
            return Err(self.plugin.refused("the instance is gone".to_owned()));
        };
        let running = State::start_call(store);
        let result = off_the_workers(input, || f(store, instance));
        drop(running);
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                self.poisoned = true;
                Err(self.plugin.fault(store, e, PluginErrorKind::Trap))
            }
        }
    }

    /// An OpenAI chat request body → the upstream request.
    pub fn build_chat(&mut self, request: &[u8], target: &Target<'_>) -> Result<UpstreamRequest, PluginError> {
        let t = wit_target(target);
        let built = self.call(request.len(), |s, p| p.build_chat(s, request, &t))?;
        built
            .map_err(|e| self.plugin.build_error(e))
            .and_then(|r| self.plugin.upstream_request(r, target, Purpose::Request))
    }

    /// An upstream answer → an OpenAI chat completion.
    pub fn decode_chat(&mut self, body: &[u8], target: &Target<'_>) -> Result<Decoded, PluginError> {
        let t = wit_target(target);
        let answer = self.call(body.len(), |s, p| p.decode_chat(s, body, &t))?;
        answer.map(decoded).map_err(|e| self.plugin.refused(e))
    }

    /// An OpenAI embeddings request body → the upstream request.
    pub fn build_embeddings(&mut self, request: &[u8], target: &Target<'_>) -> Result<UpstreamRequest, PluginError> {
        let t = wit_target(target);
        let built = self.call(request.len(), |s, p| p.build_embeddings(s, request, &t))?;
        built
            .map_err(|e| self.plugin.build_error(e))
            .and_then(|r| self.plugin.upstream_request(r, target, Purpose::Request))
    }

    /// An upstream embeddings answer → an OpenAI embeddings list; `request`
    /// is the client's request body (a 0.1 plugin is not given it).
    pub fn decode_embeddings(
        &mut self,
        request: &[u8],
        body: &[u8],
        target: &Target<'_>,
    ) -> Result<Decoded, PluginError> {
        let t = wit_target(target);
        let input = request.len().saturating_add(body.len());
        let answer = self.call(input, |s, p| p.decode_embeddings(s, request, body, &t))?;
        answer.map(decoded).map_err(|e| self.plugin.refused(e))
    }

    /// The request that lists the provider's models.
    pub fn build_models(&mut self, target: &Target<'_>) -> Result<UpstreamRequest, PluginError> {
        let t = wit_target(target);
        let built = self.call(0, |s, p| p.build_models(s, &t))?;
        built
            .map_err(|e| self.plugin.refused(e))
            .and_then(|r| self.plugin.upstream_request(r, target, Purpose::Listing))
    }

    /// A model listing → records.
    pub fn decode_models(&mut self, body: &[u8], target: &Target<'_>) -> Result<Vec<ModelRecord>, PluginError> {
        let t = wit_target(target);
        let records = self.call(body.len(), |s, p| p.decode_models(s, body, &t))?;
        let records = records.map_err(|e| self.plugin.refused(e))?;
        Ok(records
            .into_iter()
            .map(|r| ModelRecord {
                id: r.id,
                context_length: r.context_length,
                free: r.free,
                parameters: r.parameters,
                active_parameters: r.active_parameters,
                capabilities: r.capabilities,
            })
            .collect())
    }

    /// What an upstream error means.
    pub fn classify_error(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ErrorKind, PluginError> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| *name != http::header::AUTHORIZATION && *name != http::header::SET_COOKIE)
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let kind = self.call(body.len(), |s, p| p.classify_error(s, status.as_u16(), &headers, body))?;
        Ok(match kind {
            api::ErrorKind::RateLimited(limit) => ErrorKind::RateLimited {
                retry_after: limit.retry_after_ms.map(Duration::from_millis),
                window: window(limit.window),
            },
            api::ErrorKind::QuotaExhausted => ErrorKind::QuotaExhausted,
            api::ErrorKind::InvalidKey => ErrorKind::InvalidKey,
            api::ErrorKind::ClientError => ErrorKind::ClientError,
            api::ErrorKind::Transient => ErrorKind::Transient,
        })
    }

    /// What the upstream said about its limits: [`Plugin::read_limits`],
    /// in an instance of its own (from the idle pool), so that a fault there
    /// costs this attempt's instance nothing.
    pub fn read_limits(&mut self, status: StatusCode, headers: &HeaderMap) -> Vec<RateReport> {
        self.plugin.read_limits(status.as_u16(), headers)
    }

    /// Turns the session into a decoder for one streamed answer.
    pub fn into_stream(self, target: &Target<'_>) -> Result<PluginStream, PluginError> {
        Ok(PluginStream(Decoding::Plugin(Box::new(self.decoder(&wit_target(target))?))))
    }

    fn decoder(mut self, target: &api::Target) -> Result<PluginDecoder, PluginError> {
        let resource = self.call(0, |s, p| p.stream_new(s, target))?;
        Ok(PluginDecoder { session: self, resource })
    }
}

/// What a plugin built a request for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A client's request (chat, embeddings): client input, such as model
    /// ids, may reach the URL.
    Request,
    /// The model listing: built from configuration alone.
    Listing,
}

/// Where a plugin-built URL may go. A client's request stays under the base
/// URL ([`within_base`]). A listing, which no client input reaches, may
/// also sit beside it on the same host (Cohere lists its v2 API's models at
/// `/v1/models`) or under a URL the operator gave in the options (such as
/// Cohere's `models_url`).
fn allowed_url(url: &str, target: &Target<'_>, purpose: Purpose) -> Result<(), String> {
    let refused = match within_base(url, target.base_url) {
        Ok(()) => return Ok(()),
        Err(why) => why,
    };
    if purpose == Purpose::Listing {
        let origin = target.base_url.parse::<http::Uri>().ok().and_then(|base| {
            let parts = base.into_parts();
            Some(format!("{}://{}", parts.scheme?, parts.authority?))
        });
        let beside = origin.is_some_and(|origin| within_base(url, &origin).is_ok());
        let configured = target.options.iter().any(|(_, value)| within_base(url, value).is_ok());
        if beside || configured {
            return Ok(());
        }
    }
    Err(refused)
}

/// Checks that a URL a plugin built stays under the provider's base URL:
/// the same scheme, host, port (and user info), and a path that is the
/// base path or below it, without dot segments (`.`, `..`, plain or
/// percent-encoded) that a server or proxy could resolve to somewhere else.
/// The query is the plugin's to choose. The error names what differs (not
/// the base URL itself, which may hold credentials).
fn within_base(url: &str, base: &str) -> Result<(), String> {
    if plainly_below(url, base) {
        return Ok(());
    }
    let base = absolute(base).ok_or_else(|| "its base URL (which is not an absolute URL)".to_owned())?;
    let Some(uri) = absolute(url) else {
        return Err("its base URL (not an absolute URL)".to_owned());
    };
    let scheme = uri.scheme_str().unwrap_or_default();
    if !scheme.eq_ignore_ascii_case(base.scheme_str().unwrap_or_default()) {
        return Err(format!("its base URL (scheme {scheme})"));
    }
    let host = uri.host().unwrap_or_default();
    if !host.eq_ignore_ascii_case(base.host().unwrap_or_default())
        || port(&uri) != port(&base)
        || userinfo(&uri) != userinfo(&base)
    {
        return Err(format!("its base URL (host {host})"));
    }
    let path = uri.path();
    let prefix = base.path().trim_end_matches('/');
    let below = path.strip_prefix(prefix).filter(|rest| rest.is_empty() || rest.starts_with('/'));
    let Some(rest) = below else {
        return Err(format!("its base URL (path {path})"));
    };
    if rest.split('/').any(is_dot_segment) {
        return Err(format!("its base URL (a dot segment in {path})"));
    }
    Ok(())
}

/// The common case, decided without parsing either URL: `url` is `base`
/// itself followed by a path of plain segments (no `%`, no `\\`, no `.` or
/// `..`) and perhaps a query. Anything else goes through the full check.
fn plainly_below(url: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    let Some(rest) = url.strip_prefix(base) else { return false };
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    base.contains("://")
        && (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
        && !path.contains(['%', '\\'])
        && !path.split('/').any(|segment| segment == "." || segment == "..")
}

/// `text` as a URL with a scheme and a host.
fn absolute(text: &str) -> Option<http::Uri> {
    text.parse::<http::Uri>().ok().filter(|u| u.scheme().is_some() && u.authority().is_some())
}

/// The URL's port, or its scheme's default one.
fn port(uri: &http::Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })
}

/// The `user:password` part of the URL's authority, if it has one.
fn userinfo(uri: &http::Uri) -> Option<&str> {
    uri.authority().and_then(|a| a.as_str().rsplit_once('@')).map(|(info, _)| info)
}

/// Whether a path segment is `.` or `..` once percent-decoded, or would
/// hold one if a server decoded an encoded `/` or `\` in it.
fn is_dot_segment(segment: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    decoded.split(['/', '\\']).any(|piece| piece == "." || piece == "..")
}

fn wit_target(t: &Target<'_>) -> api::Target {
    api::Target {
        base_url: t.base_url.to_owned(),
        model: t.model.to_owned(),
        key: t.key.map(str::to_owned),
        options: t.options.to_vec(),
    }
}

/// Most reports kept from one response: a plugin cannot flood the host.
pub const MAX_RATE_REPORTS: usize = 16;

/// Longest reset kept: a monthly window is at most 31 days, so anything
/// beyond a year is a plugin's or an upstream's mistake.
pub const MAX_RESET: Duration = Duration::from_secs(366 * 24 * 3600);

/// A plugin's reports in the host's shape: at most [`MAX_RATE_REPORTS`],
/// resets as a duration from `now` (a reset at a time already past is
/// zero), at most [`MAX_RESET`].
fn rate_reports(reports: Vec<api::RateReport>, now: std::time::SystemTime) -> Vec<RateReport> {
    reports
        .into_iter()
        .take(MAX_RATE_REPORTS)
        .map(|r| RateReport {
            unit: match r.unit {
                api::RateUnit::Requests => RateUnit::Requests,
                api::RateUnit::Tokens => RateUnit::Tokens,
            },
            window: window(r.window),
            limit: r.limit,
            remaining: r.remaining,
            reset_after: r.reset.map(|reset| reset_after(reset, now).min(MAX_RESET)),
        })
        .collect()
}

/// How long after `now` a reset is.
fn reset_after(reset: api::ResetTime, now: std::time::SystemTime) -> Duration {
    match reset {
        api::ResetTime::AfterMs(ms) => Duration::from_millis(ms),
        api::ResetTime::AtUnixMs(ms) => {
            let since_epoch = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Duration::from_millis(ms).saturating_sub(since_epoch)
        }
    }
}

fn window(w: api::QuotaWindow) -> QuotaWindow {
    match w {
        api::QuotaWindow::Unknown => QuotaWindow::Unknown,
        api::QuotaWindow::Minute => QuotaWindow::Minute,
        api::QuotaWindow::Day => QuotaWindow::Day,
        api::QuotaWindow::Month => QuotaWindow::Month,
    }
}

fn usage(u: api::Usage) -> Usage {
    Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens }
}

fn decoded(a: api::Answer) -> Decoded {
    Decoded { body: Bytes::from(a.body), usage: a.usage.map(usage) }
}

/// A streamed answer's decoder: the plugin's, or the host's under the
/// plugin's plan (which hands the plugin only the events the plan names).
pub struct PluginStream(Decoding);

enum Decoding {
    Plugin(Box<PluginDecoder>),
    Planned(Box<PlannedDecoding>),
}

struct PlannedDecoding {
    reader: PlannedStream,
    plugin: Arc<Plugin>,
    plan: Arc<ChatPlan>,
    /// The plugin's decoder, made for the first event it must translate.
    decoder: Option<PluginDecoder>,
    scratch: Vec<Planned>,
}

impl PluginStream {
    /// A stream read by the host under `plan`, a plan of `plugin`;
    /// `frames`: plain events may leave as [`StreamEvent::Frames`] (for a
    /// relay that needs no chunk on its own).
    pub fn planned(plugin: Arc<Plugin>, plan: Arc<ChatPlan>, frames: bool) -> Self {
        let reader = PlannedStream::new(plan.clone(), frames);
        Self(Decoding::Planned(Box::new(PlannedDecoding { reader, plugin, plan, decoder: None, scratch: Vec::new() })))
    }

    /// Feeds upstream bytes; decoded events are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), PluginError> {
        match &mut self.0 {
            Decoding::Plugin(decoder) => decoder.push(bytes, out),
            Decoding::Planned(planned) => {
                planned.reader.push(bytes, &mut planned.scratch);
                self.deliver(out, false)
            }
        }
    }

    /// The upstream body ended.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), PluginError> {
        match &mut self.0 {
            Decoding::Plugin(decoder) => decoder.finish(out),
            Decoding::Planned(planned) => {
                planned.reader.finish(&mut planned.scratch);
                self.deliver(out, true)
            }
        }
    }

    /// A planned stream's events to `out`, those the plan names translated
    /// by the plugin, each given to its decoder as an event of its own.
    fn deliver(&mut self, out: &mut Vec<StreamEvent>, end: bool) -> Result<(), PluginError> {
        let Decoding::Planned(planned) = &mut self.0 else { return Ok(()) };
        let PlannedDecoding { plugin, plan, decoder, scratch, .. } = &mut **planned;
        for planned in scratch.drain(..) {
            match planned {
                Planned::Event(event) => out.push(event),
                Planned::ToPlugin(data) => {
                    let decoder = match decoder {
                        Some(decoder) => decoder,
                        None => decoder.insert(plugin.session()?.decoder(&plan.target)?),
                    };
                    decoder.push(format!("data: {data}\n\n").as_bytes(), out)?;
                }
            }
        }
        match decoder {
            Some(decoder) if end => decoder.finish(out),
            _ => Ok(()),
        }
    }
}

/// A plugin's stream decoder with the instance it lives in.
struct PluginDecoder {
    session: PluginSession,
    resource: ResourceAny,
}

impl Drop for PluginDecoder {
    /// Drops the decoder inside the instance, so that the instance can serve
    /// another attempt.
    fn drop(&mut self) {
        if self.session.poisoned {
            return;
        }
        let Some(Warm { store, .. }) = self.session.warm.as_mut() else { return };
        let _running = State::start_call(store);
        if self.resource.resource_drop(&mut *store).is_err() {
            self.session.poisoned = true;
        }
    }
}

impl PluginDecoder {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), PluginError> {
        let resource = self.resource;
        let events = self.session.call(bytes.len(), |s, p| p.stream_push(s, resource, bytes))?;
        out.extend(events.into_iter().map(event));
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), PluginError> {
        let resource = self.resource;
        let events = self.session.call(0, |s, p| p.stream_finish(s, resource))?;
        out.extend(events.into_iter().map(event));
        Ok(())
    }
}

fn event(e: api::StreamEvent) -> StreamEvent {
    match e {
        api::StreamEvent::Chunk(c) => StreamEvent::Chunk { json: Bytes::from(c.json), usage: c.usage.map(usage) },
        api::StreamEvent::Done => StreamEvent::Done,
        api::StreamEvent::Error(message) => StreamEvent::Error { message },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::within_base;

    const BASE: &str = "https://generativelanguage.googleapis.com/v1beta";

    #[test]
    fn urls_under_the_base_url_pass() {
        for url in [
            "https://generativelanguage.googleapis.com/v1beta",
            "https://generativelanguage.googleapis.com/v1beta/",
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
            "https://generativelanguage.googleapis.com/v1beta/models/x:streamGenerateContent?alt=sse",
            "https://GenerativeLanguage.googleapis.com:443/v1beta/models",
            "HTTPS://generativelanguage.googleapis.com/v1beta/models/a%2Fb",
            "https://generativelanguage.googleapis.com/v1beta/models/..x/.y/x..",
        ] {
            assert_eq!(within_base(url, BASE), Ok(()), "{url}");
        }
        assert_eq!(within_base("http://127.0.0.1:8080/v1/chat/completions", "http://127.0.0.1:8080/v1/"), Ok(()));
        assert_eq!(within_base("http://localhost/anything", "http://localhost:80"), Ok(()));
    }

    #[test]
    fn urls_that_leave_the_base_url_are_refused_saying_what_differs() {
        for (url, differs) in [
            ("http://generativelanguage.googleapis.com/v1beta/models", "scheme"),
            ("https://evil.example/v1beta/models", "host"),
            ("https://generativelanguage.googleapis.com.evil.example/v1beta/models", "host"),
            ("https://generativelanguage.googleapis.com:8443/v1beta/models", "host"),
            ("https://user@generativelanguage.googleapis.com/v1beta/models", "host"),
            ("https://generativelanguage.googleapis.com/v1betax/models", "path"),
            ("https://generativelanguage.googleapis.com/v1/models", "path"),
            ("https://generativelanguage.googleapis.com/", "path"),
            ("https://generativelanguage.googleapis.com/v1beta/../secret-admin?x=1", "dot segment"),
            ("https://generativelanguage.googleapis.com/v1beta/models/../../secret-admin", "dot segment"),
            ("https://generativelanguage.googleapis.com/v1beta/./models", "dot segment"),
            ("https://generativelanguage.googleapis.com/v1beta/models/%2e%2e/%2E%2E/admin", "dot segment"),
            ("https://generativelanguage.googleapis.com/v1beta/models/.%2E/admin", "dot segment"),
            ("https://generativelanguage.googleapis.com/v1beta/models/%2e", "dot segment"),
            ("https://generativelanguage.googleapis.com/v1beta/models/..%2fadmin", "dot segment"),
            ("https://generativelanguage.googleapis.com/v1beta/models/x%2F..%5Cadmin", "dot segment"),
            ("https://generativelanguage.googleapis.com/v1beta/models/..", "dot segment"),
            ("/v1beta/models", "not an absolute URL"),
            ("not a url at all", "not an absolute URL"),
        ] {
            let error = within_base(url, BASE).expect_err(url);
            assert!(error.contains(differs), "{url}: {error}");
            assert!(error.starts_with("its base URL ("), "{url}: {error}");
        }
    }

    #[test]
    fn a_listing_may_sit_beside_the_base_url_or_at_a_configured_url() {
        use super::{Purpose, Target, allowed_url};
        let options = vec![("models_url".to_owned(), "http://proxy/models".to_owned())];
        let target = Target { base_url: "https://api.cohere.com/v2", model: "", key: None, options: &options };
        for url in ["https://api.cohere.com/v1/models?endpoint=chat", "http://proxy/models?page=2"] {
            assert_eq!(allowed_url(url, &target, Purpose::Listing), Ok(()), "{url}");
            assert!(allowed_url(url, &target, Purpose::Request).is_err(), "{url}");
        }
        for url in ["https://evil.example/v1/models", "https://api.cohere.com/v1/../admin", "http://proxy/admin"] {
            assert!(allowed_url(url, &target, Purpose::Listing).is_err(), "{url}");
        }
    }

    #[test]
    fn rate_reports_are_bounded_and_resets_become_durations() {
        use super::{MAX_RATE_REPORTS, MAX_RESET, api, rate_reports};
        use crate::plugin::{QuotaWindow, RateUnit};
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let report = |reset| api::RateReport {
            unit: api::RateUnit::Tokens,
            window: api::QuotaWindow::Day,
            limit: Some(u64::MAX),
            remaining: Some(0),
            reset,
        };
        let reports = rate_reports(
            vec![
                report(Some(api::ResetTime::AfterMs(1500))),
                report(Some(api::ResetTime::AtUnixMs(1_700_000_090_000))),
                report(Some(api::ResetTime::AtUnixMs(1_000))),
                report(Some(api::ResetTime::AtUnixMs(u64::MAX))),
                report(Some(api::ResetTime::AfterMs(u64::MAX))),
                report(None),
            ],
            now,
        );
        let resets: Vec<_> = reports.iter().map(|r| r.reset_after).collect();
        assert_eq!(
            resets,
            [
                Some(Duration::from_millis(1500)),
                Some(Duration::from_secs(90)),
                Some(Duration::ZERO),
                Some(MAX_RESET),
                Some(MAX_RESET),
                None
            ]
        );
        assert_eq!((reports[0].unit, reports[0].window), (RateUnit::Tokens, QuotaWindow::Day));
        assert_eq!((reports[0].limit, reports[0].remaining), (Some(u64::MAX), Some(0)));
        let flood = rate_reports((0..1000).map(|_| report(None)).collect(), SystemTime::now());
        assert_eq!(flood.len(), MAX_RATE_REPORTS);
    }

    #[test]
    fn a_base_url_at_the_root_allows_any_path_without_dot_segments() {
        assert_eq!(within_base("http://127.0.0.1:9/v1/chat", "http://127.0.0.1:9"), Ok(()));
        assert!(within_base("http://127.0.0.1:9/v1/../chat", "http://127.0.0.1:9").is_err());
    }
}
