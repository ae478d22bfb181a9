//! The request path: one per-request [`Context`] passes through named
//! phases, each a function with a doc comment saying what it may change.
//! The order, drawn once:
//!
//! ```text
//!  parse            request.rs   body → ClientRequest (400 on what is wrong)
//!    │
//!  before_routing   policies.rs  `request` hooks: may change the model, prefer
//!    │                           a model, pin the session, tag (classifier
//!    │                           questions answered between two passes)
//!  resolve          proxy.rs     model name → candidates (404, 503); a
//!    │                           request that fits no candidate is a 400
//!  after_routing    policies.rs  preferred and pinned models first; `prepare`
//!    │                           hooks against the first candidate (pruning)
//!  dispatch         queue.rs     no capacity now, some soon: wait in line for it
//!    │              dispatch.rs  for each candidate, each of its keys in turn:
//!    │                 attempt.rs   admit   — skip invalid / cooling / at a limit
//!    │                              build   — the plugin builds the request
//!    │                              send    — the pooled client, under timeouts
//!    │                              decode  — the plugin decodes (or primes a stream)
//!    │                 classify.rs  classify — a failure carries its decision:
//!    │                                next key, next candidate, or answer now
//!  record           policies.rs  pin the session to whoever answered
//!    │
//!  respond          respond.rs   the Outcome → HTTP: routing headers written
//!                                here and only here
//! ```
//!
//! Failover is not a special path: a failed attempt's classification sends
//! the loop back to admit the next key or candidate, until one answers or
//! `dispatch.max_attempts` is reached.

mod attempt;
mod classify;
mod dispatch;
mod policies;
mod queue;
pub mod quota;
mod repair;
pub mod request;
mod respond;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Response;

pub use classify::{MAX_COOLDOWN, retry_after};
pub use dispatch::Outcome;
pub use policies::put_first;
pub use request::{ClientRequest, MAX_NAME_BYTES, Operation};
pub use respond::{FALLBACK_ATTEMPTS, ROUTED_VIA};

use crate::body::ResponseBody;
use crate::catalog::aliases::Aliases;
use crate::catalog::routes::{Candidate, Router};
use crate::config::{DispatchConfig, Strategy};
use crate::errors::ApiError;
use crate::metrics::Metrics;
use crate::policy::{Pipeline, Policies};
use crate::state::{CircuitPolicy, Clock, StateStore};
use crate::telemetry::Trace;
use crate::upstream::Upstream;
use crate::upstream::relay::Watchdog;

/// Everything the request path shares across requests.
pub struct Proxy {
    routes: ArcSwap<Router>,
    /// Held while a new routing table is built and stored, so that two
    /// rebuilds (discovery, a policy reload) never interleave and the last
    /// one stored is built from the pipeline in force.
    rebuilding: Mutex<()>,
    state: Arc<dyn StateStore>,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    settings: DispatchConfig,
    policies: Policies,
    watchdog: Watchdog,
    circuit: CircuitPolicy,
    /// The state store's clock (wall-clock times of cooldowns and resets).
    clock: Clock,
    /// Served requests go to the request log.
    logging: bool,
    /// The log keeps each request's messages (`state.log_bodies`).
    log_bodies: bool,
    /// Makes log ids unique within a millisecond.
    log_sequence: AtomicI64,
    /// Requests waiting for capacity.
    queue: queue::Queue,
    /// Keys being probed after refusals that named no time.
    probes: quota::Probes,
    /// Model names clients hard-code, mapped to freeway's.
    aliases: Aliases,
}

/// One request on its way through the phases.
pub struct Context {
    /// The parsed request; policies may change its model and conversation.
    pub request: ClientRequest,
    /// `X-Session-ID`, when sent.
    pub session: Option<String>,
    /// The pipeline this request started on: it serves the request to the
    /// end, whatever reloads meanwhile.
    pub pipeline: Arc<Pipeline>,
    /// The candidates, once resolved, in the order they will be tried.
    pub candidates: Vec<Candidate>,
    /// The policies' view of the request, when a hook runs on it.
    policy: Option<policies::PolicyRun>,
    /// When the request arrived.
    pub started: Instant,
}

impl Proxy {
    /// The request path over `routes`, sending through `upstream`.
    pub fn new(
        routes: Router,
        state: Arc<dyn StateStore>,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        settings: DispatchConfig,
        policies: Policies,
    ) -> Self {
        let watchdog =
            Watchdog::new(settings.stream_idle_timeout.get(), settings.stream_max_duration.get(), metrics.clone());
        let circuit = CircuitPolicy {
            failures: settings.circuit_failures,
            open_for: settings.circuit_open.get(),
            // A probe that has not reported back by the time its attempt
            // must have ended lets another request probe.
            probe_for: settings.timeout.get().max(settings.first_byte_timeout.get()),
        };
        Self {
            routes: ArcSwap::from_pointee(routes),
            rebuilding: Mutex::new(()),
            clock: state.clock(),
            logging: state.logs_requests(),
            log_bodies: false,
            log_sequence: AtomicI64::new(0),
            queue: queue::Queue::new(settings.queue_timeout.get(), settings.queue_max),
            probes: quota::Probes::default(),
            aliases: Aliases::default(),
            state,
            upstream,
            metrics,
            settings,
            policies,
            watchdog,
            circuit,
        }
    }

    /// Maps the model names clients hard-code through `aliases`.
    pub fn with_aliases(mut self, aliases: Aliases) -> Self {
        self.aliases = aliases;
        self
    }

    /// Keeps each logged request's messages in the log (`state.log_bodies`).
    pub fn with_log_bodies(mut self, log_bodies: bool) -> Self {
        self.log_bodies = log_bodies;
        self
    }

    /// The freeway model name a client's `model` stands for: itself when
    /// something routes it, else the first alias that matches it.
    pub fn unalias<'a>(&'a self, model: &'a str) -> &'a str {
        // The globs first: most names match none, and the routing tables
        // are looked up only for the few that do.
        match self.aliases.target(model) {
            Some(target) if !self.routes.load().knows(model) => target,
            _ => model,
        }
    }

    /// Serves one parsed-or-not request body through every phase.
    pub async fn serve(
        &self,
        operation: Operation,
        body: Bytes,
        session: Option<String>,
        client: Option<String>,
        budget: Option<crate::clients::Spender>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let pipeline = self.policies.current();
        let trace = Trace::current();
        // parse; the conversation is kept only for a log that keeps it
        // (`state.log_bodies`). Otherwise the log's token estimate comes
        // from the body's length, and the policies read from the body as
        // much of the conversation as their hooks ask for.
        let parse = trace.phase("parse");
        let keep_messages = self.logging && self.log_bodies;
        let parsed = match operation {
            Operation::Chat => ClientRequest::parse(body, keep_messages),
            Operation::Embeddings => ClientRequest::parse_embeddings(body),
        };
        let mut request = match parsed {
            Ok(request) => request,
            Err(e) => return e.into_response(),
        };
        request.client = budget;
        trace.asked(&request.model, client.as_deref(), request.stream);
        drop(parse);
        let asked = self.logging.then(|| {
            request.log_id = self.log_id();
            let shape = match operation {
                Operation::Chat => crate::state::log::RequestShape::chat(
                    request.messages.as_deref(),
                    request.raw.len(),
                    request.has_tools,
                    session.is_some(),
                    self.log_bodies,
                ),
                Operation::Embeddings => crate::state::log::RequestShape::embeddings(session.is_some()),
            };
            (request.model.clone(), shape)
        });
        let unaliased = self.unalias(&request.model);
        if unaliased != request.model {
            request.model = unaliased.to_owned();
        }
        let mut ctx = Context { request, session, pipeline, candidates: Vec::new(), policy: None, started };
        trace.within("policies.before_routing", policies::before_routing(self, &mut ctx)).await;
        if let Err(e) = trace.within("resolve", async { self.resolve(&mut ctx) }).await {
            return e.into_response();
        }
        if let Err(e) = trace.within("policies.after_routing", async { policies::after_routing(self, &mut ctx) }).await
        {
            return e.into_response();
        }
        let mut outcome = trace.within("dispatch", queue::dispatch(self, &ctx)).await;
        trace.routed(outcome.via.as_ref().map(|c| (&*c.provider.name, &*c.model)), outcome.attempts.len());
        policies::record(self, &ctx, &outcome);
        if let Some((asked, shape)) = asked {
            self.log(&ctx, &mut outcome, asked, shape, client);
        }
        let capacity = match ctx.request.operation {
            Operation::Chat => quota::capacity(self, &ctx.candidates, Instant::now()),
            Operation::Embeddings => None,
        };
        respond::respond(outcome, capacity)
    }

    /// A new request log id: wall-clock microseconds, unique in this process.
    fn log_id(&self) -> i64 {
        let n = self.log_sequence.fetch_add(1, Ordering::Relaxed).rem_euclid(1000);
        self.clock.now_ms().saturating_mul(1000).saturating_add(n)
    }

    /// The record phase's log entry: who asked for what, every attempt,
    /// who answered (tokens follow when the answer ends).
    fn log(
        &self,
        ctx: &Context,
        outcome: &mut Outcome,
        asked: String,
        shape: crate::state::log::RequestShape,
        client: Option<String>,
    ) {
        let status = match &outcome.result {
            Ok(response) => response.status().as_u16(),
            Err(e) => e.classify().0.as_u16(),
        };
        let route = (ctx.request.model != asked).then(|| ctx.request.model.clone());
        self.state.log_request(crate::state::RequestRecord {
            id: ctx.request.log_id,
            at_ms: self.clock.wall_ms(ctx.started),
            client,
            model: asked,
            route,
            answered_by: outcome.via.as_ref().map(|c| format!("{}/{}", c.provider.name, c.model)),
            status,
            attempts: std::mem::take(&mut outcome.trail),
            tokens_in: None,
            tokens_out: None,
            stream: ctx.request.stream,
            tags: policies::tags(ctx),
            latency_ms: u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            shape,
        });
    }

    /// The resolve phase: the model name becomes the candidates to try, in
    /// order. It may change `ctx.candidates` only. A request whose
    /// `max_tokens` exceeds the context window of every candidate can never
    /// be answered: 400, before any upstream is asked.
    fn resolve(&self, ctx: &mut Context) -> Result<(), ApiError> {
        let routes = self.routes();
        ctx.candidates = routes.resolve(&ctx.request.model)?;
        if routes.strategy(&ctx.request.model) == Some(Strategy::Headroom) {
            quota::by_headroom(self, &mut ctx.candidates);
        }
        if let Some(asked) = ctx.request.max_tokens {
            let windows: Option<Vec<u64>> =
                ctx.candidates.iter().map(|c| c.provider.context_window(&c.model)).collect();
            if let Some(largest) = windows.and_then(|w| w.into_iter().max())
                && asked > largest
            {
                return Err(ApiError::bad_request(
                    format!(
                        "`max_tokens` is {asked}, more than the context window of any candidate for `{}` \
                         (the largest is {largest} tokens)",
                        ctx.request.model
                    ),
                    Some("max_tokens"),
                ));
            }
        }
        Ok(())
    }

    /// The routing tables in force.
    pub fn routes(&self) -> Arc<Router> {
        self.routes.load_full()
    }

    /// Builds new routing tables with `build` (from the pipeline in force)
    /// and installs them; rebuilds never interleave.
    pub fn rebuild_routes(&self, build: impl FnOnce(&Router, &Pipeline) -> Router) {
        let _one_at_a_time = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.routes();
        let next = build(&current, &self.policies.current());
        self.routes.store(Arc::new(next));
    }

    /// The gateway is stopping: requests waiting for capacity are answered
    /// with their 429 now, and none waits from here on.
    pub fn close_queue(&self) {
        self.queue.close();
    }

    /// The gateway's state (cooldowns, limits, keys, pins).
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.state
    }

    /// The routing policies in force.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The upstream client.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The dispatch settings.
    pub fn settings(&self) -> &DispatchConfig {
        &self.settings
    }

    /// The stream watchdog.
    pub fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }
}
