//! `GET /admin/api/requests`: the request log, newest first, each request
//! with its attempt trail. Filters: `since`, `until` (RFC 3339 or a time
//! ago such as `24h`), `client`, `model` (as asked), `provider` (answered
//! or attempted), `status` (a code, `error` or `ok`); `limit` (default 50,
//! at most 500) and `cursor` (the previous page's `next_cursor`).
//!
//! The cursor is the last row's id, and a page is the rows with smaller
//! ids: ids are (time, sequence), so requests logged while an operator
//! pages are newer and never shift the pages after the first.

use bytes::Bytes;
use http::Response;
use serde::Serialize;

use super::params;
use crate::api::json_response;
use crate::body::ResponseBody;
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::state::log::query::{self, Filter, LoggedRequest};

/// Rows per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 50;

/// Most rows a page may ask for: a page of 500 rows with their trails is a
/// few hundred KB of JSON.
const MAX_LIMIT: usize = 500;

const PARAMS: &[&str] = &["since", "until", "client", "model", "provider", "status", "limit", "cursor"];

/// One page of the log.
#[derive(Debug, Serialize)]
struct Page {
    requests: Vec<LoggedRequest>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    next_cursor: Option<String>,
}

/// `GET /admin/api/requests`.
pub async fn list(gateway: &Gateway, query: Option<&str>) -> Response<ResponseBody> {
    let now_ms = gateway.proxy().state().clock().now_ms();
    let (filter, cursor, limit) = match parse(query, now_ms) {
        Ok(asked) => asked,
        Err(e) => return e.into_response(),
    };
    let Some(path) = params::log_file(gateway) else {
        return params::no_log();
    };
    // One row past the page says whether there is a next one.
    let rows = params::read(path, move |conn| query::page(conn, &filter, cursor, limit + 1)).await;
    match rows {
        Ok(mut requests) => {
            let more = requests.len() > limit;
            requests.truncate(limit);
            let next_cursor = more.then(|| requests.last().map(|r| r.id.to_string())).flatten();
            json_response(Bytes::from(serde_json::to_vec(&Page { requests, next_cursor }).unwrap_or_default()))
        }
        Err(e) => e.into_response(),
    }
}

fn parse(query: Option<&str>, now_ms: i64) -> Result<(Filter, Option<i64>, usize), ApiError> {
    let mut filter = Filter::default();
    let (mut cursor, mut limit) = (None, DEFAULT_LIMIT);
    for (name, value) in params::pairs(query, PARAMS)? {
        if params::filter(&mut filter, name, &value, now_ms)? {
            continue;
        }
        match name {
            "limit" => {
                limit = value.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                    ApiError::bad_request(format!("`limit` is `{value}`: expected 1 to {MAX_LIMIT}"), Some("limit"))
                })?;
            }
            "cursor" => {
                cursor = Some(value.parse::<i64>().ok().filter(|c| *c > 0).ok_or_else(|| {
                    ApiError::bad_request(
                        format!("`cursor` is `{value}`: pass a page's `next_cursor` as it is"),
                        Some("cursor"),
                    )
                })?);
            }
            _ => {}
        }
    }
    Ok((filter, cursor, limit))
}
