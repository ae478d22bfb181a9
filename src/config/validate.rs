//! The semantic checks behind `freeway check`: everything serde cannot see.
//! Every check pushes a [`Problem`] and goes on, so one run lists them all.

use super::{Config, Limits, ProviderSpec, RouteSpec, SourceMap, Strategy};
use crate::catalog::Catalog;
use crate::config::Problem;

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
    map: &SourceMap,
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
    if cfg.plugins.call_timeout.get().is_zero() {
        r.error("plugins.call_timeout", "must be more than 0");
    }
    if cfg.plugins.memory_limit < 1024 * 1024 {
        r.error("plugins.memory_limit", "must be at least 1048576 (1 MiB)");
    } else if cfg.plugins.memory_limit > crate::plugin::MAX_MEMORY as u64 {
        r.error("plugins.memory_limit", format!("must be at most {}", crate::plugin::MAX_MEMORY));
    } else if cfg.plugins.memory_limit < crate::plugin::min_memory_limit(cfg.server.max_body_bytes) {
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
    dispatch(cfg, &mut r);
    if cfg.discovery.interval.get() < std::time::Duration::from_secs(60) {
        r.error("discovery.interval", "must be at least 1m (providers rate-limit their model listings too)");
    }
    for (section, what) in [("state", "persistent state")] {
        if map.line(section).is_some() {
            r.warn(section, format!("{what} is accepted but not active in this version of freeway"));
        }
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
    for (i, key) in s.api_keys.iter().enumerate() {
        let path = format!("server.api_keys.{i}");
        if key.is_empty() {
            let why = match r.unset_vars(&path) {
                Some(vars) => format!("is empty because {vars} is not set"),
                None => "is empty".to_owned(),
            };
            r.error(path, format!("{why}; an empty token would let any client in"));
        } else if key.expose().len() < 16 {
            r.warn(path, "is shorter than 16 characters; a guessable token protects little");
        }
    }
    if let Some(addr) = addr
        && let Err(e) = super::check_exposure(addr, s)
    {
        r.error("server.listen", e);
    }
    if s.max_body_bytes == 0 {
        r.error("server.max_body_bytes", "must be more than 0");
    }
    for (key, d) in [("header_read_timeout", s.header_read_timeout), ("body_read_timeout", s.body_read_timeout)] {
        if d.get().is_zero() {
            r.error(format!("server.{key}"), "must be more than 0");
        }
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
        if let Some(limits) = &model.limits {
            check_limits(limits, &format!("{model_path}.limits"), r);
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
        if value == Some(0) {
            r.error(format!("{path}.{key}"), "must be at least 1 (leave it out for no limit)");
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
                let hint = crate::routing::nearest(p, provider_names.iter().copied(), 1)
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
    }
    for (key, value) in [
        ("timeout", d.timeout),
        ("connect_timeout", d.connect_timeout),
        ("first_byte_timeout", d.first_byte_timeout),
        ("stream_idle_timeout", d.stream_idle_timeout),
    ] {
        if value.get().is_zero() {
            r.error(format!("dispatch.{key}"), "must be more than 0");
        }
    }
}
