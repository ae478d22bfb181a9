//! `freeway status`: asks a running gateway for `/admin/api/status` and
//! prints it as a table, one row per provider, key and model. Models with
//! nothing used and nothing cooling are folded into one line per key
//! (`--all` shows them), so a provider listing hundreds of models stays
//! readable.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};

use crate::api::admin::{KeyStatus, ModelStatus, ProviderStatus, Quota, Status};
use crate::plugin::UpstreamRequest;
use crate::upstream::{Upstream, read_body};

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The most of an answer read: a status of many providers and models is
/// a few megabytes at most.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Fetches the status and prints it; an error says what to do about it.
pub async fn run(url: &str, admin_key: Option<&str>, all: bool, json: bool) -> Result<ExitCode, String> {
    let body = fetch(url, admin_key).await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(ExitCode::SUCCESS);
    }
    let status: Status = serde_json::from_slice(&body).map_err(|e| {
        format!("{url} answered something that is not a freeway status ({e}); is it a freeway gateway?")
    })?;
    print!("{}", table(&status, all));
    Ok(ExitCode::SUCCESS)
}

async fn fetch(url: &str, admin_key: Option<&str>) -> Result<Bytes, String> {
    let endpoint = format!("{}/admin/api/status", url.trim_end_matches('/'));
    let mut headers = Vec::new();
    if let Some(key) = admin_key.filter(|k| !k.is_empty()) {
        let value = HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| "the admin key holds characters a header cannot carry".to_owned())?;
        headers.push((header::AUTHORIZATION, value));
    }
    let request = UpstreamRequest { method: Method::GET, url: endpoint.clone(), headers, body: Bytes::new() };
    let upstream = Upstream::new(TIMEOUT, &[]);
    let exchange = async {
        let response = upstream.send(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = read_body(response.into_body(), MAX_ANSWER).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body))
    };
    let (status, body) = match tokio::time::timeout(TIMEOUT, exchange).await {
        Err(_) => return Err(format!("{endpoint} did not answer within {TIMEOUT:?}")),
        Ok(Err(e)) => {
            return Err(format!("cannot reach the gateway at {url}: {e} (is `freeway serve` running there?)"));
        }
        Ok(Ok(answer)) => answer,
    };
    if status.is_success() {
        return Ok(body);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
            "the gateway refused the admin token ({status}): {message}. Pass one of server.admin_keys \
             with --admin-key or FREEWAY_ADMIN_KEY"
        ),
        _ => format!("{endpoint} answered {status}: {message}"),
    })
}

/// The table, with its header; idle rows folded unless `all`.
fn table(status: &Status, all: bool) -> String {
    let mut rows: Vec<[String; 9]> = Vec::new();
    for p in &status.providers {
        let reset = reset_text(p);
        for k in &p.keys {
            let mut idle = 0;
            let fingerprint = k.fingerprint.as_deref().map_or_else(|| "(no key)".to_owned(), |f| f.to_owned());
            let key = format!("{} {fingerprint}", k.key);
            if k.shared.limit.in_force != Default::default() || busy_quota(&k.shared) {
                rows.push(row(p, k, &key, "(all models, shared)", &k.shared, None, &reset));
            }
            for m in &k.models {
                if all || busy(m) {
                    rows.push(row(p, k, &key, &m.model, &m.quota, Some(m), &reset));
                } else {
                    idle += 1;
                }
            }
            if idle > 0 || k.models.is_empty() {
                let what = format!("… {idle} more model{} idle", if idle == 1 { "" } else { "s" });
                let mut folded = row(p, k, &key, &what, &k.shared, None, &reset);
                folded[3] = String::new();
                folded[4] = String::new();
                rows.push(folded);
            }
        }
    }
    let head = [
        "PROVIDER",
        "KEY",
        "MODEL",
        "USED TODAY",
        "REMAINING",
        "RESET (LOCAL / PROVIDER)",
        "COOLING UNTIL",
        "INVALID",
        "CIRCUIT",
    ];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = w.saturating_sub(cell.chars().count());
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&head.map(str::to_owned));
    for r in &rows {
        line(r);
    }
    let _ = writeln!(out, "\nstate: {}; times in {} (now {})", state_text(&status.state), status.zone, status.now);
    if status.providers.is_empty() {
        out.push_str("no provider is enabled\n");
    }
    out
}

fn busy(m: &ModelStatus) -> bool {
    m.cooling.is_some() || busy_quota(&m.quota)
}

fn busy_quota(q: &Quota) -> bool {
    let u = &q.used;
    u.requests_minute + u.tokens_minute + u.requests_day + u.tokens_day > 0
}

fn row(
    p: &ProviderStatus,
    k: &KeyStatus,
    key: &str,
    model: &str,
    q: &Quota,
    m: Option<&ModelStatus>,
    reset: &str,
) -> [String; 9] {
    let of = |used: u64, limit: Option<u64>| limit.map_or_else(|| used.to_string(), |l| format!("{used}/{l}"));
    let mut used = format!("{} req", of(q.used.requests_day, q.limit.in_force.rpd));
    if q.used.tokens_day > 0 || q.limit.in_force.tpd.is_some() {
        let _ = write!(used, ", {} tok", of(q.used.tokens_day, q.limit.in_force.tpd));
    }
    let learned = if q.limit.learned.is_some() { " (learned)" } else { "" };
    let r = &q.remaining;
    let remaining: Vec<String> = [(r.rpd, "req/day"), (r.tpd, "tok/day"), (r.rpm, "req/min"), (r.tpm, "tok/min")]
        .into_iter()
        .filter_map(|(n, what)| n.map(|n| format!("{n} {what}")))
        .collect();
    let cooling = m
        .and_then(|m| m.cooling.as_ref())
        .map_or_else(|| "-".to_owned(), |c| format!("{} ({}, {}s)", short_time(&c.until), c.reason, c.in_seconds));
    [
        p.name.clone(),
        key.to_owned(),
        model.to_owned(),
        format!("{used}{learned}"),
        if remaining.is_empty() { "-".to_owned() } else { remaining.join(", ") },
        reset.to_owned(),
        cooling,
        if k.invalid { "INVALID" } else { "no" }.to_owned(),
        p.circuit.clone(),
    ]
}

fn reset_text(p: &ProviderStatus) -> String {
    match &p.reset {
        None => "rolling 24h".to_owned(),
        Some(r) => {
            format!("{} / {} {} (in {})", short_time(&r.local), clock_of(&r.provider), r.zone, span(r.in_seconds))
        }
    }
}

/// `2026-12-03T01:00:00+01:00` → `12-03 01:00`.
fn short_time(rfc3339: &str) -> String {
    match (rfc3339.get(5..10), rfc3339.get(11..16)) {
        (Some(date), Some(time)) => format!("{date} {time}"),
        _ => rfc3339.to_owned(),
    }
}

/// `2026-12-02T16:00:00-08:00` → `16:00`.
fn clock_of(rfc3339: &str) -> String {
    rfc3339.get(11..16).unwrap_or(rfc3339).to_owned()
}

/// Seconds as `5h03m`, `4m10s`, `12s`.
fn span(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn state_text(state: &serde_json::Value) -> String {
    let backend = state["backend"].as_str().unwrap_or("unknown");
    let mut text = match state["path"].as_str() {
        Some(path) => format!("{backend} ({path})"),
        None => backend.to_owned(),
    };
    if state["failing"].as_bool() == Some(true) {
        text.push_str(", WRITES FAILING");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_spans_are_short() {
        assert_eq!(short_time("2026-12-03T01:00:00+01:00"), "12-03 01:00");
        assert_eq!(clock_of("2026-12-02T16:00:00-08:00"), "16:00");
        assert_eq!(span(5 * 3600 + 3 * 60 + 9), "5h03m");
        assert_eq!(span(250), "4m10s");
        assert_eq!(span(12), "12s");
        assert_eq!(span(2 * 86_400 + 3600), "2d01h");
    }
}
