//! Prometheus metrics, one registry per gateway (no global state, so an
//! embedding application or a test can run several gateways side by side).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::plugin::Usage;

mod handles;

use handles::{AttemptKey, Handles, ModelKey, PolicyKey, series};

/// Requests by endpoint and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The endpoint (`/v1/chat/completions`), or `other`.
    pub route: &'static str,
    /// HTTP status answered.
    pub status: u16,
}

/// Upstream attempts by provider, model and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Provider name.
    pub provider: Arc<str>,
    /// Upstream model id.
    pub model: Arc<str>,
    /// `ok`, `rate_limited`, `quota_exhausted`, `invalid_key`,
    /// `client_error`, `upstream_error`, `timeout`, `connect_error`.
    pub outcome: &'static str,
}

/// Requests of a client by status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    /// A `server.api_keys` name, or `default` for bare tokens (names come
    /// from the config only, so the series are bounded).
    pub client: Arc<str>,
    /// HTTP status answered.
    pub status: u16,
}

/// Tokens of a client by kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientTokenLabels {
    /// As in [`ClientLabels`].
    pub client: Arc<str>,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

/// Provider and model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Provider name.
    pub provider: Arc<str>,
    /// Upstream model id.
    pub model: Arc<str>,
}

/// Tokens by provider, model and kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Provider name.
    pub provider: Arc<str>,
    /// Upstream model id.
    pub model: Arc<str>,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

/// Fallbacks by the reason the failed attempt gave.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// The failed attempt's outcome.
    pub reason: &'static str,
}

/// Tool calls mended, by what was mended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepairLabels {
    /// `fence`, `trailing_comma`, `single_quotes`, `truncated`, `empty`, `name_case`.
    pub kind: &'static str,
}

/// Plugin failures by plugin and kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// Plugin name.
    pub plugin: String,
    /// `trap`, `deadline`, `memory`, `unavailable`.
    pub kind: &'static str,
}

/// A provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name.
    pub provider: Arc<str>,
}

/// Why the watchdog closed a stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CutLabels {
    /// `client_stalled` or `max_duration`.
    pub reason: &'static str,
}

/// How a wait in the admission queue ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `served` (capacity came), `timeout`, `full` (no room in line),
    /// `gone` (the client left), `shutdown` (the gateway is stopping).
    pub outcome: &'static str,
}

/// Values read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Model/key pairs cooling down.
    pub cooldowns: usize,
    /// Session pins held.
    pub pins: u64,
    /// Streams being relayed.
    pub streams: usize,
    /// Providers whose circuit is open or probing.
    pub circuits_open: usize,
    /// Redis answers (`state.redis`); `false` also without Redis.
    pub redis_up: bool,
    /// Redis commands that failed since start.
    pub redis_errors: u64,
}

/// Endpoint label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The endpoint.
    pub route: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// All metrics of one gateway.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: HistogramFamily<AttemptLabels>,
    fallbacks: Family<FallbackLabels, Counter>,
    tool_call_repairs: Family<RepairLabels, Counter>,
    cooldowns: Gauge,
    pins: Gauge,
    streams: Gauge,
    tokens: Family<TokenLabels, Counter>,
    client_requests: Family<ClientLabels, Counter>,
    client_tokens: Family<ClientTokenLabels, Counter>,
    stream_failures: Family<ModelLabels, Counter>,
    stream_client_gone: Family<ModelLabels, Counter>,
    streams_cut: Family<CutLabels, Counter>,
    circuit_opens: Family<ProviderLabels, Counter>,
    circuits_open: Gauge,
    queue_waiting: Gauge,
    queue_outcomes: Family<QueueLabels, Counter>,
    redis_up: Gauge,
    redis_errors: Counter,
    trace_spans_dropped: Counter,
    plugin_failures: Family<PluginLabels, Counter>,
    limit_skips: Family<LimitLabels, Counter>,
    policy_duration: HistogramFamily<PolicyLabels>,
    policy_errors: Family<PolicyErrorLabels, Counter>,
    policy_tags: Family<TagLabels, Counter>,
    /// The (tag, value) pairs with a series of their own, capped.
    tag_series: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Each thread's handles on the series counted on every request.
    handles: thread_local::ThreadLocal<RefCell<Handles>>,
}

/// Distinct (tag, value) series policies may create; later ones share the
/// value `(other)`. A script that tags with client text cannot grow
/// `/metrics` without limit.
const MAX_TAG_SERIES: usize = 1000;
/// Longest tag name or value kept in a label.
const MAX_TAG_LEN: usize = 64;

/// A policy hook call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Policy name.
    pub policy: Arc<str>,
    /// `models`, `request` or `prepare`.
    pub hook: &'static str,
}

/// A policy that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyErrorLabels {
    /// Policy name.
    pub policy: Arc<str>,
    /// `error` or `budget` (ran past its operation limit).
    pub kind: &'static str,
}

/// A tag a policy set on a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TagLabels {
    /// Tag name.
    pub tag: String,
    /// Its value.
    pub value: String,
}

/// Candidates skipped at a rate limit, by provider, model and limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// Provider name.
    pub provider: Arc<str>,
    /// Upstream model id.
    pub model: Arc<str>,
    /// `rpm`, `rpd`, `tpm` or `tpd`.
    pub limit: &'static str,
}

fn fast_histogram() -> Histogram {
    // 1 µs … ~65 ms.
    Histogram::new(exponential_buckets(0.000_001, 2.0, 17))
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("freeway");
        let m = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(latency_histogram),
            fallbacks: Family::default(),
            tool_call_repairs: Family::default(),
            cooldowns: Gauge::default(),
            pins: Gauge::default(),
            streams: Gauge::default(),
            tokens: Family::default(),
            client_requests: Family::default(),
            client_tokens: Family::default(),
            stream_failures: Family::default(),
            stream_client_gone: Family::default(),
            streams_cut: Family::default(),
            circuit_opens: Family::default(),
            circuits_open: Gauge::default(),
            queue_waiting: Gauge::default(),
            queue_outcomes: Family::default(),
            redis_up: Gauge::default(),
            redis_errors: Counter::default(),
            trace_spans_dropped: Counter::default(),
            plugin_failures: Family::default(),
            limit_skips: Family::default(),
            policy_duration: Family::new_with_constructor(fast_histogram),
            policy_errors: Family::default(),
            policy_tags: Family::default(),
            tag_series: std::sync::Mutex::new(std::collections::HashSet::new()),
            handles: thread_local::ThreadLocal::new(),
            registry: Registry::default(),
        };
        registry.register("requests", "HTTP requests answered, by endpoint and status", m.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by endpoint",
            m.request_duration.clone(),
        );
        registry.register("upstream_attempts", "Upstream attempts by provider, model and outcome", m.attempts.clone());
        registry.register(
            "upstream_attempt_duration_seconds",
            "Upstream attempt latency (to the answer, or the first event of a stream)",
            m.attempt_duration.clone(),
        );
        registry.register(
            "fallbacks",
            "Times the dispatcher moved on after a failed attempt, by reason",
            m.fallbacks.clone(),
        );
        registry.register(
            "tool_call_repairs",
            "Upstream tool calls mended before they reached the client, by what was mended",
            m.tool_call_repairs.clone(),
        );
        registry.register("cooldowns_active", "Model/key pairs cooling down now", m.cooldowns.clone());
        registry.register("tokens", "Tokens reported by upstreams", m.tokens.clone());
        registry.register(
            "client_requests",
            "Model requests by client (server.api_keys name; default: bare tokens) and status",
            m.client_requests.clone(),
        );
        registry.register("client_tokens", "Tokens reported by upstreams, by client", m.client_tokens.clone());
        registry.register("session_pins", "Sticky-session pins held", m.pins.clone());
        registry.register("redis_up", "1 while Redis (state.redis) answers, else 0", m.redis_up.clone());
        registry.register("redis_errors", "Redis commands that failed (state.redis)", m.redis_errors.clone());
        registry.register(
            "trace_spans_dropped",
            "Trace spans not exported: the queue was full or the collector failed (telemetry)",
            m.trace_spans_dropped.clone(),
        );
        registry.register("streams_active", "Streams being relayed now", m.streams.clone());
        registry.register(
            "stream_failures",
            "Streams that failed after their first byte on the upstream's side",
            m.stream_failures.clone(),
        );
        registry.register(
            "stream_client_disconnects",
            "Streams that ended because their client went away or stopped reading",
            m.stream_client_gone.clone(),
        );
        registry.register(
            "circuit_opens",
            "Times a provider's circuit opened because it failed its recent calls",
            m.circuit_opens.clone(),
        );
        registry.register(
            "circuits_open",
            "Providers skipped or probed because they were failing",
            m.circuits_open.clone(),
        );
        registry.register("queue_waiting", "Requests waiting in line for capacity now", m.queue_waiting.clone());
        registry.register(
            "queue_outcomes",
            "Requests that waited in line for capacity, by how it ended (served, timeout, full, gone, shutdown)",
            m.queue_outcomes.clone(),
        );
        registry.register(
            "streams_cut",
            "Streams the gateway closed: their client stopped reading, or they ran past stream_max_duration",
            m.streams_cut.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that trapped, ran past their deadline, hit their memory limit or found no free instance",
            m.plugin_failures.clone(),
        );
        registry.register(
            "limit_skips",
            "Candidates skipped without a call because the next request would pass a rate limit",
            m.limit_skips.clone(),
        );
        registry.register("policy_duration_seconds", "Time spent in each policy hook", m.policy_duration.clone());
        registry.register(
            "policy_errors",
            "Policy hook calls skipped because the script failed or ran past its budget",
            m.policy_errors.clone(),
        );
        registry.register("policy_tags", "Tags policies set on requests", m.policy_tags.clone());
        Self { registry, ..m }
    }

    /// One answered request.
    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        let mut handles = self.handles();
        let (count, latency) = handles.requests.entry((route, status)).or_insert_with(|| {
            (
                self.requests.get_or_create_owned(&RequestLabels { route, status }),
                self.request_duration.get_or_create_owned(&RouteLabels { route }),
            )
        });
        count.inc();
        latency.observe(elapsed.as_secs_f64());
    }

    /// One upstream attempt.
    pub fn attempt(&self, provider: &Arc<str>, model: &Arc<str>, outcome: &'static str, elapsed: Duration) {
        let mut handles = self.handles();
        let key = AttemptKey { provider, model, outcome };
        let (count, latency) = series(&mut handles.attempts, &key, || {
            let labels = AttemptLabels { provider: provider.clone(), model: model.clone(), outcome };
            let series =
                (self.attempts.get_or_create_owned(&labels), self.attempt_duration.get_or_create_owned(&labels));
            (labels, series)
        });
        count.inc();
        latency.observe(elapsed.as_secs_f64());
    }

    /// The dispatcher moved on after an attempt failed with `reason`.
    pub fn fallback(&self, reason: &'static str) {
        self.fallbacks.get_or_create(&FallbackLabels { reason }).inc();
    }

    /// A tool call was mended (`kind`: what).
    pub fn tool_call_repair(&self, kind: &'static str) {
        self.tool_call_repairs.get_or_create(&RepairLabels { kind }).inc();
    }

    /// Usage an upstream reported.
    pub fn tokens(&self, provider: &Arc<str>, model: &Arc<str>, usage: Usage) {
        let mut handles = self.handles();
        let counters = series(&mut handles.tokens, &ModelKey { provider, model }, || {
            let counter = |kind| {
                self.tokens.get_or_create_owned(&TokenLabels { provider: provider.clone(), model: model.clone(), kind })
            };
            (
                ModelLabels { provider: provider.clone(), model: model.clone() },
                [counter("prompt"), counter("completion")],
            )
        });
        counters[0].inc_by(usage.prompt_tokens);
        counters[1].inc_by(usage.completion_tokens);
    }

    /// A model request of `client` answered with `status`.
    pub fn client_request(&self, client: &Arc<str>, status: u16) {
        self.client_requests.get_or_create(&ClientLabels { client: client.clone(), status }).inc();
    }

    /// Usage an upstream reported for `client`'s request.
    pub fn client_tokens(&self, client: &Arc<str>, usage: Usage) {
        for (kind, n) in [("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)] {
            self.client_tokens.get_or_create(&ClientTokenLabels { client: client.clone(), kind }).inc_by(n);
        }
    }

    /// A stream failed after its first byte.
    pub fn stream_failure(&self, provider: &Arc<str>, model: &Arc<str>) {
        let labels = ModelLabels { provider: provider.clone(), model: model.clone() };
        self.stream_failures.get_or_create(&labels).inc();
    }

    /// A stream ended because its client went away.
    pub fn stream_client_gone(&self, provider: &Arc<str>, model: &Arc<str>) {
        let labels = ModelLabels { provider: provider.clone(), model: model.clone() };
        self.stream_client_gone.get_or_create(&labels).inc();
    }

    /// A request joined (`+1`) or left (`-1`) the line for capacity.
    pub fn queue_waiting(&self, delta: i64) {
        self.queue_waiting.inc_by(delta);
    }

    /// How a wait in line ended.
    pub fn queue_outcome(&self, outcome: &'static str) {
        self.queue_outcomes.get_or_create(&QueueLabels { outcome }).inc();
    }

    /// A provider's circuit opened.
    pub fn circuit_opened(&self, provider: &Arc<str>) {
        self.circuit_opens.get_or_create(&ProviderLabels { provider: provider.clone() }).inc();
    }

    /// Trace spans that will never reach the collector.
    pub fn trace_spans_dropped(&self, n: u64) {
        self.trace_spans_dropped.inc_by(n);
    }

    /// The watchdog closed a stream.
    pub fn stream_cut(&self, reason: &'static str) {
        self.streams_cut.get_or_create(&CutLabels { reason }).inc();
    }

    /// A candidate was skipped at a rate limit.
    pub fn limit_skip(&self, provider: &Arc<str>, model: &Arc<str>, limit: &'static str) {
        let labels = LimitLabels { provider: provider.clone(), model: model.clone(), limit };
        self.limit_skips.get_or_create(&labels).inc();
    }

    /// One policy hook call.
    pub fn policy_call(&self, policy: &Arc<str>, hook: &'static str, elapsed: Duration) {
        let mut handles = self.handles();
        let latency = series(&mut handles.policy_calls, &PolicyKey { policy, hook }, || {
            let labels = PolicyLabels { policy: policy.clone(), hook };
            let latency = self.policy_duration.get_or_create_owned(&labels);
            (labels, latency)
        });
        latency.observe(elapsed.as_secs_f64());
    }

    /// A policy hook failed.
    pub fn policy_error(&self, policy: &Arc<str>, kind: &'static str) {
        self.policy_errors.get_or_create(&PolicyErrorLabels { policy: policy.clone(), kind }).inc();
    }

    /// A tag a policy set.
    pub fn policy_tag(&self, tag: &str, value: &str) {
        let cut = |s: &str| match s.char_indices().nth(MAX_TAG_LEN) {
            Some((i, _)) => s[..i].to_owned(),
            None => s.to_owned(),
        };
        let pair = (cut(tag), cut(value));
        let pair = {
            let mut seen = self.tag_series.lock().unwrap_or_else(|e| e.into_inner());
            if seen.contains(&pair) || seen.len() < MAX_TAG_SERIES {
                seen.insert(pair.clone());
                pair
            } else {
                ("(other)".to_owned(), "(other)".to_owned())
            }
        };
        self.policy_tags.get_or_create(&TagLabels { tag: pair.0, value: pair.1 }).inc();
    }

    /// A plugin call failed (not a plugin's own well-formed error).
    pub fn plugin_failure(&self, plugin: &str, kind: &'static str) {
        if kind != "refused" {
            self.plugin_failures.get_or_create(&PluginLabels { plugin: plugin.to_owned(), kind }).inc();
        }
    }

    /// This thread's handles.
    fn handles(&self) -> std::cell::RefMut<'_, Handles> {
        // No metrics call makes another, so the cell is never borrowed twice.
        self.handles.get_or_default().borrow_mut()
    }

    /// The Prometheus text (OpenMetrics) exposition, with `gauges` read at
    /// scrape time.
    pub fn render(&self, gauges: Gauges) -> String {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.cooldowns.set(gauge(gauges.cooldowns as u64));
        self.pins.set(gauge(gauges.pins));
        self.streams.set(gauge(gauges.streams as u64));
        self.circuits_open.set(gauge(gauges.circuits_open as u64));
        self.redis_up.set(i64::from(gauges.redis_up));
        // The count lives with the Redis link; the counter catches up to it.
        self.redis_errors.inc_by(gauges.redis_errors.saturating_sub(self.redis_errors.get()));
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the rendered series whose line starts with `name{` and
    /// holds every one of `labels`.
    fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .collect();
        assert_eq!(lines.len(), 1, "{name} {labels:?} in:\n{text}");
        lines[0].rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn series_counted_on_many_threads_add_up_in_their_own_gateways_metrics() {
        let (a, b) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
        let (groq, llama, gemma): (Arc<str>, Arc<str>, Arc<str>) = ("groq".into(), "llama".into(), "gemma".into());
        let policy: Arc<str> = "sticky".into();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..100 {
                        let ms = Duration::from_millis(1);
                        a.request("/v1/chat/completions", if i % 4 == 0 { 429 } else { 200 }, ms);
                        a.attempt(&groq, &llama, "ok", ms);
                        a.attempt(&groq, &gemma, if i % 2 == 0 { "ok" } else { "timeout" }, ms);
                        a.tokens(&groq, &llama, Usage { prompt_tokens: 3, completion_tokens: 2 });
                        a.policy_call(&policy, "request", ms);
                        b.attempt(&groq, &llama, "ok", ms);
                    }
                });
            }
        });
        let text = a.render(Gauges::default());
        assert_eq!(value(&text, "freeway_requests_total", &["status=\"200\""]), 300.0);
        assert_eq!(value(&text, "freeway_requests_total", &["status=\"429\""]), 100.0);
        assert_eq!(value(&text, "freeway_request_duration_seconds_count", &["chat"]), 400.0);
        assert_eq!(value(&text, "freeway_upstream_attempts_total", &["\"llama\"", "\"ok\""]), 400.0);
        assert_eq!(value(&text, "freeway_upstream_attempts_total", &["\"gemma\"", "\"ok\""]), 200.0);
        assert_eq!(value(&text, "freeway_upstream_attempts_total", &["\"gemma\"", "\"timeout\""]), 200.0);
        assert_eq!(
            value(&text, "freeway_upstream_attempt_duration_seconds_count", &["\"gemma\"", "\"timeout\""]),
            200.0
        );
        assert_eq!(value(&text, "freeway_tokens_total", &["\"llama\"", "\"prompt\""]), 1200.0);
        assert_eq!(value(&text, "freeway_tokens_total", &["\"llama\"", "\"completion\""]), 800.0);
        assert_eq!(value(&text, "freeway_policy_duration_seconds_count", &["sticky"]), 400.0);
        // The other gateway's counts are its own, though the same threads made both.
        let text = b.render(Gauges::default());
        assert_eq!(value(&text, "freeway_upstream_attempts_total", &["\"llama\"", "\"ok\""]), 400.0);
        assert!(!text.contains("gemma") && !text.contains("freeway_requests_total{"), "{text}");
    }
}
