//! The semantic checks behind `freeway check`: everything serde cannot see.
//! Every check pushes a [`Problem`] and goes on, so one run lists them all.

use std::time::Duration;

use super::{ApiKey, Config, ConfigDuration, Limits, ProviderSpec, RouteSpec, SourceMap, Strategy};
use crate::catalog::Catalog;
use crate::config::Problem;

const MS: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The largest `rpm`, `rpd`, `tpm` or `tpd`: a thousand times any published
/// free tier, and small enough that a day of counters summed against it
/// stays far from `u64::MAX`.
const MAX_LIMIT: u64 = 1_000_000_000_000;
/// The highest price a model may list, in US dollars per million tokens:
/// ten times the dearest model's today, so a misplaced decimal is caught.
const MAX_PRICE: f64 = 2000.0;

/// The largest context window: a hundred times the largest model's today,
/// and exact as a Rhai integer and a JSON number (below 2^53).
const MAX_CONTEXT: u64 = 1_000_000_000;
/// The most upstream attempts per request: each may last `dispatch.timeout`,
/// and no route has this many distinct candidate/key pairs worth trying.
const MAX_ATTEMPTS: u32 = 100;
/// The largest request body: far past any chat request (a few images in
/// base64 are tens of MB), and a `usize` on every platform.
const MAX_BODY_BYTES: u64 = 1 << 30;
/// The most request-body bytes held at once: more than a gateway host
/// should spend on uploads.
const MAX_IN_FLIGHT_BYTES: u64 = 64 << 30;
/// HTTP/2 streams per connection: enough for any client multiplexing real
/// work; past it one connection could hold a large share of
/// `server.max_in_flight`.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

struct Report<'a> {
    problems: &'a mut Vec<Problem>,
    warnings: &'a mut Vec<Problem>,
    unset: &'a [(String, Vec<String>)],
}

impl Report<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), line: None, message: message.into() });
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem { path: path.into(), line: None, message: message.into() });
    }

    /// The unset variables a string at `path` referred to.
    fn unset_vars(&self, path: &str) -> Option<String> {
        self.unset.iter().find(|(p, _)| p == path).map(|(_, vars)| vars.join(", "))
    }
}

pub(super) fn config(
    cfg: &Config,
    unset: &[(String, Vec<String>)],
    catalog: &Catalog,
    _map: &SourceMap,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    let mut r = Report { problems, warnings, unset };
    server(cfg, &mut r);
    let plugins = match crate::plugin::available_names(cfg.plugins_dir().as_deref()) {
        Ok(names) => names,
        Err(e) => {
            r.error("plugins.dir", e);
            crate::plugin::available_names(None).unwrap_or_default()
        }
    };
    for (name, spec) in &cfg.providers {
        let base = catalog.providers.get(name);
        provider(name, spec, base, &format!("providers.{name}"), &plugins, &mut r);
    }
    if cfg.plugins.memory_limit < 1024 * 1024 {
        r.error("plugins.memory_limit", "must be at least 1048576 (1 MiB)");
    } else if cfg.plugins.memory_limit > crate::plugin::MAX_MEMORY as u64 {
        r.error("plugins.memory_limit", format!("must be at most {}", crate::plugin::MAX_MEMORY));
    } else if cfg.server.max_body_bytes <= MAX_BODY_BYTES
        && cfg.plugins.memory_limit < crate::plugin::min_memory_limit(cfg.server.max_body_bytes)
    {
        let (body, least) = (cfg.server.max_body_bytes, crate::plugin::min_memory_limit(cfg.server.max_body_bytes));
        let fix = if least > crate::plugin::MAX_MEMORY as u64 {
            " (more than the most allowed: lower server.max_body_bytes)"
        } else {
            ""
        };
        r.error(
            "plugins.memory_limit",
            format!(
                "must be at least {least} for a plugin to translate a request of server.max_body_bytes ({body}){fix}"
            ),
        );
    }
    let known_provider = |p: &str| cfg.providers.contains_key(p) || catalog.providers.contains_key(p);
    let lists_model = |m: &str| {
        cfg.providers
            .values()
            .chain(catalog.providers.values())
            .any(|spec| spec.models.iter().flatten().any(|model| model.id == m))
    };
    let names: Vec<&str> = cfg.providers.keys().chain(catalog.providers.keys()).map(String::as_str).collect();
    for (name, spec) in &cfg.routes {
        route(name, spec, &known_provider, &lists_model, &names, &mut r);
    }
    aliases(cfg, &mut r);
    dispatch(cfg, &mut r);
    // At least a minute: providers rate-limit their model listings too. At
    // most a month: a model list older than that is mostly wrong.
    within(&mut r, "discovery.interval", cfg.discovery.interval, MINUTE, 30 * DAY);
    // A plugin call is a translation with no I/O, done in microseconds to
    // milliseconds; 10s is a runaway holding a worker thread.
    within(&mut r, "plugins.call_timeout", cfg.plugins.call_timeout, MS, 10 * Duration::from_secs(1));
    state(cfg, &mut r);
    telemetry(cfg, &mut r);
}

/// `telemetry:`: an endpoint freeway can post to, a ratio, headers an
/// HTTP request can carry. A header's value is never repeated (it is
/// usually a token).
fn telemetry(cfg: &Config, r: &mut Report<'_>) {
    let t = &cfg.telemetry;
    if let Some(endpoint) = t.endpoint() {
        match endpoint.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => r.error(
                "telemetry.otlp_endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL (e.g. http://127.0.0.1:4318)"),
            ),
        }
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        r.error("telemetry.sample_ratio", format!("{} is out of range: must be between 0 and 1", t.sample_ratio));
    }
    if t.service_name.trim().is_empty() {
        r.error("telemetry.service_name", "must not be empty");
    }
    for (name, value) in &t.headers {
        let path = format!("telemetry.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            r.error(&path, "not a valid HTTP header name");
        } else if http::HeaderValue::from_str(value.expose()).is_err() {
            r.error(&path, "the value is not valid in an HTTP header (visible ASCII only)");
        }
    }
    within(r, "telemetry.timeout", t.timeout, 100 * MS, MINUTE);
    within(r, "telemetry.export_interval", t.export_interval, 10 * MS, MINUTE);
    count_within(r, "telemetry.max_queue", u64::from(t.max_queue), 64, 1_000_000);
}

/// `aliases:`: globs and names within the name bound, a target that is
/// not itself an alias pattern.
fn aliases(cfg: &Config, r: &mut Report<'_>) {
    for (glob, target) in cfg.aliases.iter().flatten() {
        let path = format!("aliases.{glob}");
        if glob.is_empty() || glob.len() > crate::proxy::MAX_NAME_BYTES {
            r.error(&path, format!("a glob is 1 to {} bytes long", crate::proxy::MAX_NAME_BYTES));
        }
        if target.trim().is_empty() || target.len() > crate::proxy::MAX_NAME_BYTES {
            r.error(&path, format!("the target is a model name of 1 to {} bytes", crate::proxy::MAX_NAME_BYTES));
        } else if target.contains(['*', '?']) {
            r.error(&path, format!("the target `{target}` is a glob; it must be a freeway model name"));
        }
    }
}

/// `state:`: the database path is a file, not a URL; the log is kept at
/// least an hour (shorter loses what the analytics read) and at most 400
/// days.
fn state(cfg: &Config, r: &mut Report<'_>) {
    if let Some(path) = cfg.state.path.as_deref()
        && path.contains("://")
    {
        r.error("state.path", format!("`{path}` is a URL; state.path is a file (put a Redis URL in state.redis)"));
    }
    if cfg.state.log_bodies && cfg.state.path.as_deref() == Some("") {
        r.error("state.log_bodies", "needs a state database; state.path is \"\" (memory only)".to_owned());
    }
    if let Some(url) = cfg.state.redis.as_deref() {
        if url.starts_with("rediss://") {
            // The redis client is built without TLS (it would bring a second
            // certificate stack): say so now rather than at start-up.
            r.error(
                "state.redis",
                "rediss:// (TLS) is not built into freeway; use redis:// on a private network or through a TLS tunnel"
                    .to_owned(),
            );
        } else if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            // Not repeated in the message: a Redis URL may hold a password.
            r.error("state.redis", "not a redis:// (or redis+unix://) URL".to_owned());
        }
    }
    within(r, "state.log_retention", cfg.state.log_retention, 3600 * Duration::from_secs(1), 400 * DAY);
    if !cfg.state.responses_retention.get().is_zero() {
        within(r, "state.responses_retention", cfg.state.responses_retention, 3600 * Duration::from_secs(1), 400 * DAY);
    }
}

/// Checks a catalog file: the same provider and route rules as a config,
/// with the catalog as its own base.
pub(crate) fn catalog(catalog: &Catalog, problems: &mut Vec<Problem>, warnings: &mut Vec<Problem>) {
    let mut r = Report { problems, warnings, unset: &[] };
    let plugins = crate::plugin::available_names(None).unwrap_or_default();
    for (name, spec) in &catalog.providers {
        provider(name, spec, None, &format!("providers.{name}"), &plugins, &mut r);
    }
    let known_provider = |p: &str| catalog.providers.contains_key(p);
    let lists_model = |m: &str| catalog.providers.values().any(|s| s.models.iter().flatten().any(|x| x.id == m));
    let names: Vec<&str> = catalog.providers.keys().map(String::as_str).collect();
    for (name, spec) in &catalog.routes {
        route(name, spec, &known_provider, &lists_model, &names, &mut r);
        for (i, t) in spec.targets.iter().enumerate() {
            let listed = t.target.split_once('/').is_some_and(|(p, m)| {
                catalog.providers.get(p).is_some_and(|s| s.models.iter().flatten().any(|x| x.id == m))
            });
            if !listed {
                r.error(
                    format!("routes.{name}.targets.{i}"),
                    format!("`{}` is not a provider/model listed in the catalog", t.target),
                );
            }
        }
    }
}

fn server(cfg: &Config, r: &mut Report<'_>) {
    let s = &cfg.server;
    let addr = match s.listen_addr() {
        Ok(addr) => Some(addr),
        Err(e) => {
            r.error("server.listen", e);
            None
        }
    };
    let admin: Vec<&str> = s.admin_keys.iter().map(|k| k.expose()).collect();
    let client: Vec<&str> = s.api_keys.iter().map(|k| k.token()).collect();
    for (list, keys) in [("api_keys", &client), ("admin_keys", &admin)] {
        for (i, key) in keys.iter().enumerate() {
            let path = match s.api_keys.get(i) {
                Some(ApiKey::Client(_)) if list == "api_keys" => format!("server.{list}.{i}.token"),
                _ => format!("server.{list}.{i}"),
            };
            if key.trim().is_empty() {
                let why = match r.unset_vars(&path) {
                    Some(vars) => format!("is empty because {vars} is not set"),
                    None if path.ends_with(".token") => "is required".to_owned(),
                    None => "is empty".to_owned(),
                };
                r.error(path, format!("{why}; an empty token would let any client in"));
            } else if key.len() < 16 {
                r.warn(path, "is shorter than 16 characters; a guessable token protects little");
            } else if let Some(first) = keys[..i].iter().position(|k| k == key) {
                r.error(path, format!("is the same token as server.{list}.{first}: each token names one client"));
            }
        }
    }
    // One token in both lists would make every client an administrator.
    for (i, key) in admin.iter().enumerate() {
        if !key.trim().is_empty() && client.contains(key) {
            r.error(
                format!("server.admin_keys.{i}"),
                "is also in server.api_keys: an admin token must differ from every client token",
            );
        }
    }
    clients(&s.api_keys, r);
    if let Some(addr) = addr
        && let Err(e) = super::check_exposure(addr, s)
    {
        r.error("server.listen", e);
    }
    if addr.is_some_and(|a| !a.ip().is_loopback()) && !s.api_keys.is_empty() {
        for (key, on, what) in [
            ("protect_metrics", s.protect_metrics, "/metrics (provider names, models, traffic)"),
            ("protect_health", s.protect_health, "/health (providers and what would enable the others)"),
        ] {
            if !on {
                r.warn(
                    format!("server.{key}"),
                    format!("is false on an address other machines reach: anyone can read {what}"),
                );
            }
        }
    }
    count_within(r, "server.max_body_bytes", s.max_body_bytes, 1, MAX_BODY_BYTES);
    count_within(r, "server.max_in_flight", u64::from(s.max_in_flight), 1, u64::from(super::MAX_IN_FLIGHT));
    if s.max_in_flight_bytes < s.max_body_bytes {
        r.error(
            "server.max_in_flight_bytes",
            format!(
                "must be at least server.max_body_bytes ({}): a body the gateway accepts must fit",
                s.max_body_bytes
            ),
        );
    } else {
        count_within(r, "server.max_in_flight_bytes", s.max_in_flight_bytes, 1, MAX_IN_FLIGHT_BYTES);
    }
    count_within(
        r,
        "server.max_streams_per_connection",
        u64::from(s.max_streams_per_connection),
        1,
        u64::from(MAX_STREAMS_PER_CONNECTION),
    );
    if let Some(workers) = s.workers {
        count_within(r, "server.workers", u64::from(workers), 1, u64::from(super::MAX_WORKERS));
    }
    for (key, on, what) in
        [("protect_health", s.protect_health, "/health"), ("protect_metrics", s.protect_metrics, "/metrics")]
    {
        if on && s.api_keys.is_empty() {
            r.error(
                format!("server.{key}"),
                format!(
                    "is true but server.api_keys is empty: {what} would ask for a client token no client can have. \
                     Set server.api_keys, or leave {key} false"
                ),
            );
        }
    }
    // Below 100ms even a client on the same machine can miss the deadline;
    // past an hour a slow-loris client holds its connection for nothing.
    within(r, "server.header_read_timeout", s.header_read_timeout, 100 * MS, HOUR);
    within(r, "server.body_read_timeout", s.body_read_timeout, 100 * MS, HOUR);
    // 0 drops in-flight work at once; an hour is longer than any supervisor
    // waits before it kills the process anyway.
    within(r, "server.shutdown_timeout", s.shutdown_timeout, Duration::ZERO, HOUR);
    within(r, "server.busy_poll", s.busy_poll, Duration::ZERO, super::MAX_BUSY_POLL);
}

/// The object entries of `server.api_keys`: a unique, well-formed name,
/// positive limits, non-empty model globs.
fn clients(keys: &[ApiKey], r: &mut Report<'_>) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let Some(c) = key.client() else { continue };
        let at = format!("server.api_keys.{i}");
        match c.name.as_deref() {
            None => r.error(format!("{at}.name"), "is required: logs, metrics and errors name the client by it"),
            Some(name) if !crate::clients::valid_name(name) => r.error(
                format!("{at}.name"),
                format!("`{name}` must be 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.` and `-`"),
            ),
            Some(crate::clients::PLAIN) => r.error(
                format!("{at}.name"),
                format!("`{}` is the name metrics give bare tokens; choose another", crate::clients::PLAIN),
            ),
            Some(name) if seen.contains(&name) => {
                r.error(format!("{at}.name"), format!("`{name}` names another client too; names must be unique"))
            }
            Some(name) => seen.push(name),
        }
        for (field, value) in [("rpm", c.rpm), ("rpd", c.rpd), ("tpd", c.tpd)] {
            if let Some(v) = value
                && !(1..=MAX_LIMIT as i64).contains(&v)
            {
                r.error(format!("{at}.{field}"), format!("`{v}` must be a whole number from 1 to {MAX_LIMIT}"));
            }
        }
        if let Some(models) = &c.models {
            if models.is_empty() {
                r.error(format!("{at}.models"), "is empty: the client could use no model; leave it out to allow all");
            }
            for (j, glob) in models.iter().enumerate() {
                if glob.trim().is_empty() {
                    r.error(format!("{at}.models.{j}"), "is empty; a glob names models, `*` all of them");
                }
            }
        }
    }
}

/// Refuses a duration outside `min..=max`, naming the range.
fn within(r: &mut Report<'_>, path: &str, value: ConfigDuration, min: Duration, max: Duration) {
    let d = value.get();
    if d >= min && d <= max {
        return;
    }
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let range = if min.is_zero() {
        format!("at most {}", show(max))
    } else {
        format!("between {} and {}", show(min), show(max))
    };
    r.error(path, format!("`{}` is out of range: must be {range}", show(d)));
}

/// Refuses a number outside `min..=max`, naming the range.
fn count_within(r: &mut Report<'_>, path: &str, value: u64, min: u64, max: u64) {
    if value < min || value > max {
        r.error(path, format!("`{value}` is out of range: must be between {min} and {max}"));
    }
}

fn provider(
    name: &str,
    spec: &ProviderSpec,
    base: Option<&ProviderSpec>,
    path: &str,
    plugins: &[String],
    r: &mut Report<'_>,
) {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        r.error(path, format!("`{name}` is not a provider name: use letters, digits, `-`, `_` and `.` (no `/`)"));
    }
    match spec.plugin.as_deref().or(base.and_then(|b| b.plugin.as_deref())) {
        None => r.error(
            path,
            format!("`{name}` is not a catalog provider, so it needs `plugin` (one of: {})", plugins.join(", ")),
        ),
        Some(plugin) if !plugins.iter().any(|p| p == plugin) => r.error(
            format!("{path}.plugin"),
            format!("unknown plugin `{plugin}`; this build has: {}", plugins.join(", ")),
        ),
        Some(_) => {}
    }
    match spec.base_url.as_deref().or(base.and_then(|b| b.base_url.as_deref())) {
        None => r.error(path, format!("`{name}` is not a catalog provider, so it needs `base_url`")),
        Some(url) => {
            // An unset ${VAR} inside a catalog URL disables the provider instead.
            if let Err(e) = check_base_url(url)
                && r.unset_vars(&format!("{path}.base_url")).is_none()
            {
                r.error(format!("{path}.base_url"), e);
            }
        }
    }
    if let Some(keys) = &spec.keys {
        for (i, key) in keys.iter().enumerate() {
            let key_path = format!("{path}.keys.{i}");
            if key.is_empty() {
                match r.unset_vars(&key_path) {
                    Some(vars) => r.warn(key_path, format!("{vars} is not set; this key is skipped")),
                    None => r.error(key_path, "is empty"),
                }
            }
        }
        if !keys.is_empty() && keys.iter().all(|k| k.is_empty()) {
            r.warn(format!("{path}.keys"), "no key is set; the provider stays disabled");
        }
    }
    for (i, var) in spec.key_env.iter().flatten().chain(spec.requires_env.iter().flatten()).enumerate() {
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            r.error(format!("{path}.key_env.{i}"), format!("`{var}` is not an environment variable name"));
        }
    }
    if let Some(limits) = &spec.limits {
        check_limits(limits, &format!("{path}.limits"), r);
    }
    if let Some(limits) = &spec.key_limits {
        check_limits(limits, &format!("{path}.key_limits"), r);
    }
    if let Some(text) = &spec.quota_reset
        && let Err(e) = crate::state::QuotaReset::parse(text)
    {
        r.error(format!("{path}.quota_reset"), e);
    }
    let mut seen = std::collections::HashSet::new();
    for (i, model) in spec.models.iter().flatten().enumerate() {
        let model_path = format!("{path}.models.{i}");
        if model.id.trim().is_empty() {
            r.error(model_path, "a model needs an `id`");
            continue;
        }
        if !seen.insert(model.id.as_str()) {
            r.error(model_path.clone(), format!("model `{}` is listed twice", model.id));
        }
        if let Some(context) = model.context {
            count_within(r, &format!("{model_path}.context"), context, 1, MAX_CONTEXT);
        }
        if let Some(limits) = &model.limits {
            check_limits(limits, &format!("{model_path}.limits"), r);
        }
        if let Some(price) = &model.price {
            for (key, value) in [("input", price.input), ("output", price.output)] {
                if !(0.0..=MAX_PRICE).contains(&value) {
                    r.error(
                        format!("{model_path}.price.{key}"),
                        format!("`{value}` is out of range: US dollars per million tokens, 0 to {MAX_PRICE}"),
                    );
                }
            }
        }
    }
    for (header, value) in spec.headers.iter().flatten() {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            r.error(format!("{path}.headers.{header}"), "not a valid header name");
        } else if http::HeaderValue::from_str(value).is_err() {
            r.error(format!("{path}.headers.{header}"), "not a valid header value");
        }
    }
}

fn check_limits(limits: &Limits, path: &str, r: &mut Report<'_>) {
    for (key, value) in [("rpm", limits.rpm), ("rpd", limits.rpd), ("tpm", limits.tpm), ("tpd", limits.tpd)] {
        match value {
            Some(0) => r.error(format!("{path}.{key}"), "must be at least 1 (leave it out for no limit)"),
            Some(n) if n > MAX_LIMIT => r.error(
                format!("{path}.{key}"),
                format!("`{n}` is out of range: must be between 1 and {MAX_LIMIT} (leave it out for no limit)"),
            ),
            _ => {}
        }
    }
}

/// A provider's API root: http or https, a host, no query.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query string"));
    }
    Ok(())
}

fn route(
    name: &str,
    spec: &RouteSpec,
    known_provider: &dyn Fn(&str) -> bool,
    lists_model: &dyn Fn(&str) -> bool,
    provider_names: &[&str],
    r: &mut Report<'_>,
) {
    let path = format!("routes.{name}");
    if spec.targets.is_empty() {
        r.error(path.clone(), "a route needs at least one target");
    }
    for (i, t) in spec.targets.iter().enumerate() {
        let tpath = format!("{path}.targets.{i}");
        let target = t.target.trim();
        if target.is_empty() {
            r.error(tpath, "empty target");
            continue;
        }
        match target.split_once('/') {
            Some((p, "")) if known_provider(p) => {
                r.error(tpath.clone(), format!("`{target}` names no model after the provider"));
            }
            Some((p, _)) if known_provider(p) => {}
            Some((p, _)) if !lists_model(target) => {
                let hint = crate::catalog::routes::nearest(p, provider_names.iter().copied(), 1)
                    .first()
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                r.error(tpath.clone(), format!("unknown provider `{p}` in `{target}`{hint}"));
            }
            _ if !lists_model(target) => {
                r.warn(tpath.clone(), format!("no provider lists model `{target}`; it resolves only if one serves it"));
            }
            _ => {}
        }
        match (t.weight, spec.strategy) {
            (Some(0), _) => r.error(format!("{tpath}.weight"), "must be at least 1"),
            (Some(_), s) if s != Strategy::Weighted => {
                r.warn(format!("{tpath}.weight"), "ignored unless the route's strategy is `weighted`")
            }
            _ => {}
        }
    }
}

fn dispatch(cfg: &Config, r: &mut Report<'_>) {
    let d = &cfg.dispatch;
    if let Err(e) = cfg.extra_roots() {
        r.error("dispatch.ca_file", e);
    }
    if d.max_attempts == 0 {
        r.error("dispatch.max_attempts", "must be at least 1");
    } else {
        count_within(r, "dispatch.max_attempts", u64::from(d.max_attempts), 1, u64::from(MAX_ATTEMPTS));
    }
    // A cooldown of 0 turns the default off (a `Retry-After` still counts);
    // past a week the model is as good as removed, which `enabled` says
    // better.
    within(r, "dispatch.cooldown", d.cooldown, Duration::ZERO, 7 * DAY);
    // Upstream timeouts: 0 would fail every attempt; a day is past any
    // answer worth waiting for. A TCP/TLS handshake that has not finished in
    // an hour never will (the kernel gives up on SYNs in about two minutes).
    within(r, "dispatch.timeout", d.timeout, MS, DAY);
    within(r, "dispatch.connect_timeout", d.connect_timeout, MS, HOUR);
    within(r, "dispatch.first_byte_timeout", d.first_byte_timeout, MS, DAY);
    within(r, "dispatch.stream_idle_timeout", d.stream_idle_timeout, MS, DAY);
    if d.stream_max_duration < d.stream_idle_timeout {
        r.error(
            "dispatch.stream_max_duration",
            format!(
                "`{:?}` is shorter than dispatch.stream_idle_timeout ({:?}): a stream may stay silent that long, so it must be let live at least as long",
                d.stream_max_duration, d.stream_idle_timeout
            ),
        );
    } else {
        within(r, "dispatch.stream_max_duration", d.stream_max_duration, MS, DAY);
    }
    // More consecutive failures than this is not a circuit breaker any more.
    count_within(r, "dispatch.circuit_failures", u64::from(d.circuit_failures), 0, 1000);
    within(r, "dispatch.circuit_open", d.circuit_open, Duration::from_secs(1), HOUR);
    // Longer than a few minutes is a client's own retry loop, better done
    // by the client with the Retry-After it gets.
    within(r, "dispatch.queue_timeout", d.queue_timeout, Duration::ZERO, 5 * MINUTE);
    count_within(r, "dispatch.queue_max", u64::from(d.queue_max), 1, 1_000_000);
}

#[cfg(test)]
mod tests {
    use crate::catalog::Catalog;
    use crate::config::{Config, ConfigError, Env};

    fn problems(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml, "t", &Env::from_map([("K", "a-client-token-of-some-length")]), &Catalog::empty())
        {
            Ok(_) => Vec::new(),
            Err(ConfigError { problems, .. }) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    fn has(problems: &[String], expected: &str) -> bool {
        problems.iter().any(|p| p.contains(expected))
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(problems(""), Vec::<String>::new());
        let d = Config::default();
        assert_eq!(d.server.max_in_flight, 1000);
        assert_eq!(d.server.max_in_flight_bytes, 256 << 20);
        assert_eq!(d.server.max_streams_per_connection, 128);
        assert!(!d.server.protect_health && !d.server.protect_metrics);
        assert_eq!(d.dispatch.stream_max_duration.get(), std::time::Duration::from_secs(3600));
    }

    #[test]
    fn every_duration_has_a_range_and_the_message_names_it() {
        let p = problems(
            "server:\n  header_read_timeout: 10ms\n  body_read_timeout: 2h\n  shutdown_timeout: 2h\n\
             dispatch:\n  cooldown: 8days\n  timeout: 2days\n  connect_timeout: 0s\n  first_byte_timeout: 25h\n  stream_idle_timeout: 0s\n\
             discovery:\n  interval: 30s\nplugins:\n  call_timeout: 11s\n",
        );
        for expected in [
            "line 2: server.header_read_timeout: `10ms` is out of range: must be between 100ms and 1h",
            "line 3: server.body_read_timeout: `2h` is out of range: must be between 100ms and 1h",
            "line 4: server.shutdown_timeout: `2h` is out of range: must be at most 1h",
            "line 6: dispatch.cooldown: `8days` is out of range: must be at most 7days",
            "line 7: dispatch.timeout: `2days` is out of range: must be between 1ms and 1day",
            "line 8: dispatch.connect_timeout: `0s` is out of range: must be between 1ms and 1h",
            "line 9: dispatch.first_byte_timeout: `1day 1h` is out of range: must be between 1ms and 1day",
            "line 10: dispatch.stream_idle_timeout: `0s` is out of range: must be between 1ms and 1day",
            "line 12: discovery.interval: `30s` is out of range: must be between 1m and 30days",
            "line 14: plugins.call_timeout: `11s` is out of range: must be between 1ms and 10s",
        ] {
            assert!(has(&p, expected), "missing `{expected}` in {p:#?}");
        }
        assert_eq!(p.len(), 10, "{p:#?}");
        assert!(problems("dispatch: { cooldown: 0s }\nserver: { shutdown_timeout: 0s }\n").is_empty());
    }

    #[test]
    fn responses_are_kept_an_hour_to_400_days_or_not_written() {
        let p = problems("state:\n  responses_retention: 5m\n");
        assert!(has(&p, "state.responses_retention: `5m` is out of range: must be between 1h and"), "{p:?}");
        assert!(problems("state: { responses_retention: 0s }\n").is_empty());
        assert!(problems("state: { responses_retention: 7d }\n").is_empty());
        assert_eq!(Config::default().state.responses_retention.get().as_secs(), 30 * 24 * 3600);
    }

    #[test]
    fn a_stream_lives_at_least_its_idle_timeout_and_at_most_a_day() {
        let p = problems("dispatch:\n  stream_idle_timeout: 2m\n  stream_max_duration: 1m\n");
        assert!(
            has(&p, "line 3: dispatch.stream_max_duration: `1m` is shorter than dispatch.stream_idle_timeout (2m)"),
            "{p:?}"
        );
        let p = problems("dispatch: { stream_max_duration: 2days }\n");
        assert!(has(&p, "must be between 1ms and 1day"), "{p:?}");
        assert!(problems("dispatch: { stream_idle_timeout: 2h, stream_max_duration: 2h }\n").is_empty());
    }

    #[test]
    fn numbers_that_would_overflow_are_refused() {
        let p = problems(
            "providers:\n  p:\n    plugin: openai-compat\n    base_url: http://127.0.0.1:9/v1\n\
             \x20   limits: { rpm: 1000000000001, tpd: 18446744073709551615 }\n\
             \x20   key_limits: { tpm: 0 }\n\
             \x20   models: [{ id: m, context: 18446744073709551615 }]\n\
             dispatch: { max_attempts: 4294967295 }\nserver: { max_body_bytes: 2147483648, max_in_flight_bytes: 2147483648 }\n",
        );
        for expected in [
            "line 5: providers.p.limits.rpm: `1000000000001` is out of range: must be between 1 and 1000000000000",
            "line 5: providers.p.limits.tpd: `18446744073709551615` is out of range",
            "line 6: providers.p.key_limits.tpm: must be at least 1",
            "line 7: providers.p.models.0.context: `18446744073709551615` is out of range: must be between 1 and 1000000000",
            "line 8: dispatch.max_attempts: `4294967295` is out of range: must be between 1 and 100",
            "line 9: server.max_body_bytes: `2147483648` is out of range: must be between 1 and 1073741824",
        ] {
            assert!(has(&p, expected), "missing `{expected}` in {p:#?}");
        }
        assert_eq!(p.len(), 6, "{p:#?}");
    }

    #[test]
    fn the_new_server_settings_are_bounded() {
        let p = problems(
            "server:\n  max_in_flight: 1001\n  max_streams_per_connection: 0\n  max_body_bytes: 1048576\n  max_in_flight_bytes: 1000\n",
        );
        for expected in [
            "line 2: server.max_in_flight: `1001` is out of range: must be between 1 and 1000",
            "line 3: server.max_streams_per_connection: `0` is out of range: must be between 1 and 1024",
            "line 5: server.max_in_flight_bytes: must be at least server.max_body_bytes (1048576)",
        ] {
            assert!(has(&p, expected), "missing `{expected}` in {p:#?}");
        }
        assert!(has(&problems("server: { max_in_flight: 0 }\n"), "server.max_in_flight: `0` is out of range"));
        assert!(has(&problems("server: { max_in_flight_bytes: 68719476737 }\n"), "must be between 1 and 68719476736"));
        assert!(problems("server: { max_in_flight: 1000, max_streams_per_connection: 1024 }\n").is_empty());
    }

    #[test]
    fn busy_polling_is_a_tenth_of_a_millisecond_unless_set_and_at_most_ten_milliseconds() {
        assert_eq!(Config::default().server.busy_poll.get(), std::time::Duration::from_micros(100));
        assert!(problems("server: { busy_poll: 0s }\n").is_empty());
        assert!(problems("server: { busy_poll: 200us }\n").is_empty());
        assert!(problems("server: { busy_poll: 10ms }\n").is_empty());
        for (yaml, expected) in [
            ("server:\n  busy_poll: 11ms\n", "line 2: server.busy_poll: `11ms` is out of range: must be at most 10ms"),
            ("server: { busy_poll: fast }\n", "server.busy_poll: `fast` is not a duration"),
        ] {
            assert!(has(&problems(yaml), expected), "missing `{expected}` in {:#?}", problems(yaml));
        }
    }

    #[test]
    fn workers_are_one_per_core_unless_set_within_bounds() {
        for (yaml, expected) in [
            ("server: { workers: 0 }\n", "line 1: server.workers: `0` is out of range: must be between 1 and 1024"),
            (
                "server:\n  workers: 1025\n",
                "line 2: server.workers: `1025` is out of range: must be between 1 and 1024",
            ),
            ("server: { workers: two }\n", "server.workers: invalid type: string \"two\""),
        ] {
            assert!(has(&problems(yaml), expected), "missing `{expected}` in {:#?}", problems(yaml));
        }
        assert!(problems("server: { workers: 3 }\n").is_empty());
        let d = Config::default();
        assert_eq!(d.server.workers, None);
        assert_eq!(d.server.worker_threads(), std::thread::available_parallelism().unwrap().get());
        let mut three = d.server.clone();
        three.workers = Some(3);
        assert_eq!(three.worker_threads(), 3);
    }

    #[test]
    fn protecting_health_or_metrics_needs_client_tokens() {
        let p = problems("server:\n  protect_health: true\n  protect_metrics: true\n");
        assert!(
            has(&p, "line 2: server.protect_health: is true but server.api_keys is empty: /health would ask"),
            "{p:?}"
        );
        assert!(has(&p, "line 3: server.protect_metrics: is true but server.api_keys is empty: /metrics"), "{p:?}");
        assert!(
            problems("server:\n  api_keys: [\"${K}\"]\n  protect_health: true\n  protect_metrics: true\n").is_empty()
        );
    }

    #[test]
    fn open_health_and_metrics_off_loopback_are_warned_about() {
        let yaml = "server:\n  listen: 0.0.0.0:8080\n  api_keys: [\"${K}\"]\n";
        let loaded =
            Config::from_yaml(yaml, "t", &Env::from_map([("K", "a-client-token-of-some-length")]), &Catalog::empty())
                .unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert!(has(&warnings, "server.protect_metrics: is false on an address other machines reach"), "{warnings:?}");
        assert!(has(&warnings, "server.protect_health: is false"), "{warnings:?}");
        let protected = format!("{yaml}  protect_health: true\n  protect_metrics: true\n");
        let loaded = Config::from_yaml(
            &protected,
            "t",
            &Env::from_map([("K", "a-client-token-of-some-length")]),
            &Catalog::empty(),
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn a_value_refused_for_its_type_is_not_judged_again() {
        // The refused stream_max_duration falls back to its 1h default, which
        // is shorter than the idle timeout: that is not the file's mistake.
        let p = problems("dispatch:\n  stream_idle_timeout: 2h\n  stream_max_duration: long\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].starts_with("line 3: dispatch.stream_max_duration: `long` is not a duration"), "{p:?}");
    }

    #[test]
    fn admin_keys_must_be_set_and_differ_from_client_tokens() {
        let p = problems("server:\n  admin_keys: [\"${UNSET_ADMIN}\"]\n");
        assert!(has(&p, "line 2: server.admin_keys.0: is empty because UNSET_ADMIN is not set"), "{p:?}");
        let p = problems("server:\n  api_keys: [\"${K}\"]\n  admin_keys: [\"${K}\"]\n");
        assert!(has(&p, "server.admin_keys.0: is also in server.api_keys"), "{p:?}");
        assert!(problems("server:\n  api_keys: [\"${K}\"]\n  admin_keys: [an-admin-token-0123456789]\n").is_empty());
    }

    #[test]
    fn telemetry_is_off_by_default_and_each_bad_value_names_its_field() {
        let d = Config::default();
        assert_eq!(d.telemetry.endpoint(), None, "no export unless the config asks");
        assert_eq!(d.telemetry.sample_ratio, 1.0);
        assert!(problems("telemetry:\n  otlp_endpoint: \"\"\n").is_empty(), "empty is off, not an error");
        assert!(problems("telemetry:\n  otlp_endpoint: https://otel.example:4318\n  sample_ratio: 0\n").is_empty());
        let p = problems(
            "telemetry:\n  otlp_endpoint: otel.example:4318\n  sample_ratio: 1.5\n  service_name: \" \"\n  \
             timeout: 2m\n  export_interval: 1ms\n  max_queue: 10\n  headers:\n    \"bad header\": x\n    \
             authorization: \"Bearer s\\ncret\"\n",
        );
        for expected in [
            "line 2: telemetry.otlp_endpoint: `otel.example:4318` is not an http:// or https:// URL",
            "line 3: telemetry.sample_ratio: 1.5 is out of range: must be between 0 and 1",
            "line 4: telemetry.service_name: must not be empty",
            "line 5: telemetry.timeout: `2m` is out of range: must be between 100ms and 1m",
            "line 6: telemetry.export_interval: `1ms` is out of range: must be between 10ms and 1m",
            "line 7: telemetry.max_queue:",
            "line 9: telemetry.headers.bad header: not a valid HTTP header name",
            "line 10: telemetry.headers.authorization: the value is not valid in an HTTP header",
        ] {
            assert!(has(&p, expected), "missing `{expected}` in {p:#?}");
        }
        assert!(!p.iter().any(|m| m.contains("cret")), "a header's value is never repeated: {p:?}");
    }
}
