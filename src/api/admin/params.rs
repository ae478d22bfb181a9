//! What the request-log endpoints share: reading their query string
//! (every bad or unknown parameter is a 400 naming it), and reading the
//! log file off the async threads.

use std::path::PathBuf;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use jiff::Timestamp;
use rusqlite::Connection;

use crate::body::ResponseBody;
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::state::log::query::{self, Filter, StatusFilter};

/// The query string's `name=value` pairs, percent-decoded (`+` is a
/// space); a name given twice is refused, as which one counts would be a
/// guess.
pub(super) fn pairs(query: Option<&str>, known: &[&'static str]) -> Result<Vec<(&'static str, String)>, ApiError> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name), decode(value));
        let Some(&known_name) = known.iter().find(|k| **k == name) else {
            return Err(ApiError::bad_request(
                format!("unknown query parameter `{name}`; this endpoint takes {}", known.join(", ")),
                None,
            ));
        };
        if out.iter().any(|(n, _)| *n == known_name) {
            return Err(ApiError::bad_request(format!("`{name}` is given twice"), Some(known_name)));
        }
        out.push((known_name, value));
    }
    Ok(out)
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// Sets the filter field `name` from `value`, when `name` is one;
/// `Ok(false)` when it is not a filter.
pub(super) fn filter(filter: &mut Filter, name: &'static str, value: &str, now_ms: i64) -> Result<bool, ApiError> {
    let text = || (!value.is_empty()).then(|| value.to_owned()).ok_or_else(|| empty(name));
    match name {
        "since" => filter.since_ms = Some(time(name, value, now_ms)?),
        "until" => filter.until_ms = Some(time(name, value, now_ms)?),
        "client" => filter.client = Some(text()?),
        "model" => filter.model = Some(text()?),
        "provider" => filter.provider = Some(text()?),
        "status" => filter.status = Some(status(value)?),
        _ => return Ok(false),
    }
    if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms)
        && since > until
    {
        return Err(ApiError::bad_request("`since` is after `until`", Some("since")));
    }
    Ok(true)
}

fn empty(name: &'static str) -> ApiError {
    ApiError::bad_request(format!("`{name}` is empty"), Some(name))
}

/// RFC 3339 (`2026-12-01T00:00:00Z`), or a time ago (`24h`, `30m`, `7d`).
fn time(name: &'static str, value: &str, now_ms: i64) -> Result<i64, ApiError> {
    if let Ok(t) = value.parse::<Timestamp>() {
        return Ok(t.as_millisecond());
    }
    match humantime::parse_duration(value) {
        Ok(ago) => Ok(now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))),
        Err(_) => Err(ApiError::bad_request(
            format!("`{name}` is `{value}`: expected RFC 3339 (2026-12-01T00:00:00Z) or a time ago (24h, 30m, 7d)"),
            Some(name),
        )),
    }
}

/// A status code (100-599), `error` (400 and up) or `ok` (below 400).
fn status(value: &str) -> Result<StatusFilter, ApiError> {
    match value {
        "error" => Ok(StatusFilter::Error),
        "ok" => Ok(StatusFilter::Ok),
        code => code.parse::<u16>().ok().filter(|c| (100..600).contains(c)).map(StatusFilter::Code).ok_or_else(|| {
            ApiError::bad_request(
                format!("`status` is `{value}`: expected an HTTP status (200, 429...), `error` or `ok`"),
                Some("status"),
            )
        }),
    }
}

/// The database file the log is in; `None` with memory-only state.
pub(super) fn log_file(gateway: &Gateway) -> Option<PathBuf> {
    let state = gateway.proxy().state();
    state.health().path.filter(|_| state.logs_requests()).map(PathBuf::from)
}

/// The answer without a log: 409, as memory-only state keeps no log and
/// the endpoint exists all the same, so it is the gateway's setting in
/// the way, not a missing page.
pub(super) fn no_log() -> Response<ResponseBody> {
    let body = serde_json::json!({"error": {
        "message": "the request log is kept in the state database: set state.path (it is \"\", \
                    memory only) and restart",
        "type": "invalid_request_error",
        "code": "request_log_unavailable",
        "param": null,
    }});
    let mut r = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::CONFLICT;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Runs `read` on a read-only connection to `path` on tokio's blocking
/// pool: a scan of the log never holds an async thread (which serves
/// requests) or the writer's connection.
pub(super) async fn read<T, F>(path: PathBuf, read: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
{
    let work = move || query::open(&path).and_then(|conn| read(&conn));
    let failed = match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!("reading the request log failed: {failed}");
    Err(ApiError::Internal(format!("reading the request log: {failed}")))
}
