//! Routing policies: Rhai scripts from `policies/`, run in file-name order.
//!
//! A script defines any of three hooks (functions). Each runs when its
//! answer can change:
//!
//! | hook | runs | gets | does |
//! |---|---|---|---|
//! | `fn models(pools, models, settings)` | when the set of models changes: start-up, discovery, reload | `pools`: map of route name → `#{targets: ["provider/model", ...], free: bool}`; `models`: array of `#{id, provider, model, tier, params, active_params, context, free, reasoning, tags, discovered}` | returns `pools`, changed: new or reordered routes become plain route tables |
//! | `fn request(req, settings)` | per request, before routing | a `Request` handle | changes `req.model`, prefers a model (`req.prefer(id)`: first if it is a candidate, added if free), sticks to a session's pin (`req.stick(id)`: first only if already a candidate), pins the session (`req.pin(key, seconds)`), tags |
//! | `fn prepare(req, settings)` | per request, after routing | `req.context_window` of the first candidate | prunes messages (`req.fit_tokens(n)`...) |
//!
//! A per-request hook may declare what it acts on, in functions read once
//! when the pipeline compiles (see [`scope`]); a hook without one runs on
//! every request, so scripts written before declarations keep working:
//!
//! | declaration | returns | `request`/`prepare` runs only when |
//! |---|---|---|
//! | `fn request_models()` | array of model globs, `!glob` excludes | `req.model` is in scope |
//! | `fn prepare_models()` | same | `req.model` after routing is in scope |
//! | `fn prepare_tokens(settings)` | `#{above: n, window_less: r}` | the token estimate exceeds `n` or the window less `r` |
//!
//! Model globs, not a predicate in Rhai: a predicate would be a call into
//! Rhai per request, the cost declarations exist to avoid. Globs over the
//! model name cover what the built-ins check (`auto`, not `provider/model`);
//! the size bound covers pruning, the one hook whose trigger is length.
//! When no hook acts, the request's view is never built.
//!
//! `settings` is `policies.settings` from the config. A script that throws
//! or runs past its operation budget is skipped for that call, logged once
//! with its file and line, and counted; the request goes on. Work that needs
//! only the model set runs in `models`, so requests never pay for it.

pub mod conversation;
mod engine;
mod model_set;
pub mod prune;
mod request;
pub mod scope;
pub mod settings;
pub mod watch;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indexmap::IndexMap;
use rhai::{AST, Dynamic, Map};
use serde::Serialize;

pub use request::{Derived, PolicyRequest, Prefer, RequestState, fingerprint};

use crate::metrics::Metrics;

/// The built-in policies, embedded (used when no `policies.dir` exists).
pub const EMBEDDED: &[(&str, &str)] = &[
    ("10-auto-tier.rhai", include_str!("../policies/10-auto-tier.rhai")),
    ("20-free-alias.rhai", include_str!("../policies/20-free-alias.rhai")),
    ("30-favorites.rhai", include_str!("../policies/30-favorites.rhai")),
    ("40-context-prune.rhai", include_str!("../policies/40-context-prune.rhai")),
    ("50-sticky-session.rhai", include_str!("../policies/50-sticky-session.rhai")),
];

/// Where policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in scripts.
    Embedded,
    /// A folder (watched for changes).
    Dir(PathBuf),
}

/// A script that does not compile: where and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CompileError {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// One compiled policy.
pub struct Policy {
    /// Its name: the file name without `.rhai`.
    pub name: Arc<str>,
    file: String,
    ast: AST,
    models: bool,
    request: bool,
    prepare: bool,
    /// What its per-request hooks declare they act on.
    declared: scope::Declared,
    /// Errors already logged (each is logged once).
    logged: Mutex<HashSet<String>>,
}

/// The compiled pipeline: shared by every request that starts while it is
/// current; a reload swaps in a new one.
pub struct Pipeline {
    engines: engine::Engines,
    policies: Vec<Policy>,
    settings: Dynamic,
    /// Where it came from.
    pub source: Source,
}

/// Names of the hooks, and their arities.
const MODELS: (&str, usize) = ("models", 3);
const REQUEST: (&str, usize) = ("request", 2);
const PREPARE: (&str, usize) = ("prepare", 2);

fn defines(ast: &AST, (name, arity): (&str, usize)) -> bool {
    ast.iter_functions().any(|f| f.name == name && f.params.len() == arity)
}

impl Pipeline {
    /// No policies at all.
    pub fn empty() -> Self {
        Self {
            engines: engine::Engines::new(None),
            policies: Vec::new(),
            settings: Dynamic::from_map(Map::new()).into_shared(),
            source: Source::Embedded,
        }
    }

    /// Compiles every `*.rhai` of `source` in file-name order, leaving out
    /// `disabled` names. Every file that does not compile is reported.
    pub fn compile(
        source: &Source,
        disabled: &[String],
        settings: &serde_yaml::Mapping,
    ) -> Result<Self, Vec<CompileError>> {
        let files = match source {
            Source::Embedded => EMBEDDED.iter().map(|(n, text)| ((*n).to_owned(), (*text).to_owned())).collect(),
            Source::Dir(dir) => read_dir(dir).map_err(|e| vec![e])?,
        };
        let engines = engine::Engines::new(match source {
            Source::Dir(dir) => Some(dir.as_path()),
            Source::Embedded => None,
        });
        let settings = engine::to_dynamic(&serde_yaml::Value::Mapping(settings.clone())).into_shared();
        let mut policies = Vec::new();
        let mut errors = Vec::new();
        for (file, text) in files {
            let name: Arc<str> = Arc::from(file.trim_end_matches(".rhai"));
            if disabled.iter().any(|d| d.as_str() == &*name || d == &file || strip_order(&name) == d) {
                continue;
            }
            // The declarations are read here, once: a request only compares.
            let compiled = engines.request.compile(&text).map_err(|e| CompileError {
                file: file.clone(),
                line: e.position().line(),
                message: e.err_type().to_string(),
            });
            match compiled.and_then(|ast| Ok((scope::read(&engines.build, &ast, &file, &text, &settings)?, ast))) {
                Ok((declared, ast)) => policies.push(Policy {
                    models: defines(&ast, MODELS),
                    request: defines(&ast, REQUEST),
                    prepare: defines(&ast, PREPARE),
                    declared,
                    name,
                    file,
                    ast,
                    logged: Mutex::new(HashSet::new()),
                }),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self { engines, policies, settings, source: source.clone() })
    }

    /// The policies, in order.
    pub fn names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| &*p.name).collect()
    }

    /// Whether any policy builds routes from the model set.
    pub fn has_models_hooks(&self) -> bool {
        self.policies.iter().any(|p| p.models)
    }

    /// Whether any policy has per-request hooks (else requests skip the pipeline).
    pub fn has_request_hooks(&self) -> bool {
        self.policies.iter().any(|p| p.request || p.prepare)
    }

    /// Whether a `request` hook acts on requests for `model` (the model
    /// asked for, after aliases). When none does, none runs: a hook only
    /// runs on a model in its scope, so no hook changes the model first.
    pub fn requests_for(&self, model: &str) -> bool {
        self.policies.iter().any(|p| p.request && p.declared.request.as_ref().is_none_or(|m| m.matches(model)))
    }

    /// Whether a `prepare` hook may act on a request for `model` of at most
    /// `tokens` (estimated), `window` the first candidate's context window.
    /// `tokens` is asked only of a hook that declares a size.
    pub fn prepares_for(&self, model: &str, tokens: impl Fn() -> i64, window: i64) -> bool {
        self.policies.iter().any(|p| p.prepares(model, &tokens, window))
    }

    /// The routing tables over `providers`: the config's and catalog's
    /// routes, then what the `models` hooks add or reorder (`free`,
    /// `auto:*`...). The gateway and `freeway replay` build them so.
    pub fn route_tables(
        &self,
        providers: Vec<Arc<crate::catalog::provider::Provider>>,
        disabled: Vec<crate::catalog::provider::DisabledProvider>,
        config: &crate::config::Config,
        catalog: &crate::catalog::Catalog,
        metrics: &Metrics,
    ) -> crate::catalog::routes::Router {
        use crate::catalog::routes::Router;
        let base = Router::new(providers.clone(), disabled.clone(), config, catalog, &IndexMap::new());
        if !self.has_models_hooks() {
            return base;
        }
        let overrides = self.build_pools(&base, metrics);
        Router::new(providers, disabled, config, catalog, &overrides)
    }

    /// Runs every `models` hook in order over `router`'s routes and models.
    /// Returns the pools that changed or were added.
    pub fn build_pools(
        &self,
        router: &crate::catalog::routes::Router,
        metrics: &Metrics,
    ) -> IndexMap<String, Vec<String>> {
        let (pools, models) = (model_set::pools(router), model_set::models(router));
        let before = pools.clone();
        let mut current = Dynamic::from_map(pools);
        for policy in self.policies.iter().filter(|p| p.models) {
            let started = Instant::now();
            let args = (current.clone(), Dynamic::from_array(models.clone()), self.settings.clone());
            let result = self.engines.build.call_fn_with_options::<Dynamic>(
                rhai::CallFnOptions::new().eval_ast(false),
                &mut rhai::Scope::new(),
                &policy.ast,
                MODELS.0,
                args,
            );
            metrics.policy_call(&policy.name, MODELS.0, started.elapsed());
            match result {
                Ok(next) if next.is_map() => current = next,
                Ok(other) => policy.fault(
                    "models",
                    "error",
                    &format!("returned {} instead of the pools map", other.type_name()),
                    metrics,
                ),
                Err(e) => policy.fault("models", kind(&e), &describe(&e), metrics),
            }
        }
        let Some(after) = current.try_cast::<Map>() else { return IndexMap::new() };
        let mut changed = IndexMap::new();
        for (name, pool) in after {
            let targets = targets_of(&pool);
            if before.get(&name).map(targets_of) != Some(targets.clone()) {
                changed.insert(name.to_string(), targets);
            }
        }
        changed
    }

    /// Runs every `request` hook.
    /// Runs every `request` hook whose scope holds the request's model
    /// (as the earlier hooks left it).
    pub fn on_request(&self, req: &PolicyRequest, metrics: &Metrics) {
        self.run(
            REQUEST,
            req,
            |p, s| p.request && p.declared.request.as_ref().is_none_or(|m| m.matches(&s.model)),
            metrics,
        );
    }

    /// Runs every `prepare` hook whose scope holds the request's model and
    /// size (`req.context_window` set first).
    pub fn on_prepare(&self, req: &PolicyRequest, metrics: &Metrics) {
        self.run(
            PREPARE,
            req,
            |p, s| {
                let window = s.context_window;
                let model = s.model.clone();
                // A conversation not parsed yet is bounded by its body's
                // length first: it is parsed only if the bound may act.
                if s.tokens_at_most().is_some_and(|bound| !p.prepares(&model, || bound, window)) {
                    return false;
                }
                p.prepares(&model, || PolicyRequest::estimate(s), window)
            },
            metrics,
        );
    }

    fn run(
        &self,
        hook: (&'static str, usize),
        req: &PolicyRequest,
        acts: impl Fn(&Policy, &mut RequestState) -> bool,
        metrics: &Metrics,
    ) {
        for policy in &self.policies {
            if !acts(policy, &mut req.state()) {
                continue;
            }
            let started = Instant::now();
            let result = self.engines.request.call_fn_with_options::<Dynamic>(
                rhai::CallFnOptions::new().eval_ast(false),
                &mut rhai::Scope::new(),
                &policy.ast,
                hook.0,
                (req.clone(), self.settings.clone()),
            );
            metrics.policy_call(&policy.name, hook.0, started.elapsed());
            if let Err(e) = result {
                policy.fault(hook.0, kind(&e), &describe(&e), metrics);
            }
        }
    }
}

impl Policy {
    /// Whether its `prepare` hook acts on `model` with `tokens()` (asked
    /// only when its size is declared) and `window`.
    fn prepares(&self, model: &str, tokens: impl FnOnce() -> i64, window: i64) -> bool {
        self.prepare
            && self.declared.prepare.as_ref().is_none_or(|m| m.matches(model))
            && self.declared.prepare_size.is_none_or(|size| size.may_act(tokens(), window))
    }

    /// A hook failed: count it, and log it the first time.
    fn fault(&self, hook: &'static str, kind: &'static str, message: &str, metrics: &Metrics) {
        metrics.policy_error(&self.name, kind);
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.insert(format!("{hook}:{message}")) {
            tracing::warn!(policy = %self.name, file = %self.file, hook, "policy skipped: {message}");
        }
    }
}

/// `budget` when a script ran past its operation limit, else `error`.
fn kind(e: &rhai::EvalAltResult) -> &'static str {
    match e.unwrap_inner() {
        rhai::EvalAltResult::ErrorTooManyOperations(_) => "budget",
        _ => "error",
    }
}

/// A script error, with its line.
fn describe(e: &rhai::EvalAltResult) -> String {
    match e.position().line() {
        Some(line) => format!("line {line}: {}", e.unwrap_inner()),
        None => e.to_string(),
    }
}

fn targets_of(pool: &Dynamic) -> Vec<String> {
    let list = if let Some(map) = pool.read_lock::<Map>() {
        map.get("targets").cloned().unwrap_or_default()
    } else {
        pool.clone()
    };
    list.into_array().unwrap_or_default().into_iter().map(|t| t.to_string()).collect()
}

/// `10-auto-tier` → `auto-tier`: config may name a policy without its order.
fn strip_order(name: &str) -> &str {
    match name.split_once('-') {
        Some((order, rest)) if order.chars().all(|c| c.is_ascii_digit()) => rest,
        _ => name,
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, CompileError> {
    let fail = |message: String| CompileError { file: dir.display().to_string(), line: None, message };
    let entries = std::fs::read_dir(dir).map_err(|e| fail(e.to_string()))?;
    let mut files = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        // Editors' temporary and hidden files are not policies.
        if !name.ends_with(".rhai") || name.starts_with('.') || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("{name}: {e}")))?;
        files.push((name.to_owned(), text));
    }
    files.sort();
    Ok(files)
}

/// What `/health` says about the policies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The pipeline in force compiled from the current files.
    pub ok: bool,
    /// `embedded` or the folder.
    pub source: String,
    /// Policies in force, in order.
    pub policies: Vec<String>,
    /// Why the last reload was refused.
    pub errors: Vec<CompileError>,
    /// Reloads since start-up (installed or refused).
    pub reloads: u64,
    /// When the policies were last loaded or reloaded (installed or
    /// refused), RFC 3339 UTC.
    pub last_reload: String,
}

/// The pipeline in force and its status.
pub struct Policies {
    current: arc_swap::ArcSwap<Pipeline>,
    status: Mutex<Status>,
}

impl Policies {
    /// Starts with `pipeline`.
    pub fn new(pipeline: Pipeline) -> Self {
        let status = Status {
            ok: true,
            source: source_name(&pipeline.source),
            policies: pipeline.names().iter().map(|n| (*n).to_owned()).collect(),
            errors: Vec::new(),
            reloads: 0,
            last_reload: jiff::Timestamp::now().to_string(),
        };
        Self { current: arc_swap::ArcSwap::from_pointee(pipeline), status: Mutex::new(status) }
    }

    /// The pipeline a request runs on, start to end.
    pub fn current(&self) -> Arc<Pipeline> {
        self.current.load_full()
    }

    /// Installs a newly compiled pipeline, or records why it was refused
    /// (the last good one stays). Returns whether it was installed.
    pub fn install(&self, compiled: Result<Pipeline, Vec<CompileError>>) -> bool {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let reloads = status.reloads.saturating_add(1);
        match compiled {
            Ok(pipeline) => {
                *status = Status {
                    ok: true,
                    source: source_name(&pipeline.source),
                    policies: pipeline.names().iter().map(|n| (*n).to_owned()).collect(),
                    errors: Vec::new(),
                    reloads,
                    last_reload: jiff::Timestamp::now().to_string(),
                };
                tracing::info!(policies = %status.policies.join(", "), "policies loaded");
                self.current.store(Arc::new(pipeline));
                true
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!("policy does not compile, the last good pipeline stays: {e}");
                }
                status.ok = false;
                status.errors = errors;
                status.reloads = reloads;
                status.last_reload = jiff::Timestamp::now().to_string();
                false
            }
        }
    }

    /// For `/health`.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn source_name(source: &Source) -> String {
    match source {
        Source::Embedded => "embedded".to_owned(),
        Source::Dir(dir) => dir.display().to_string(),
    }
}
