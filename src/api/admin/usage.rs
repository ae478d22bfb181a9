//! `GET /admin/api/usage`: the request log summed per group: requests,
//! success rate, fallbacks, tokens in and out, latency p50/p95. `by`
//! chooses the grouping among `provider` (the one that answered), `model`
//! (as asked), `client`, `day` (UTC) and `hour` (UTC, for a chart over
//! time), comma-separated, the first four by default; `since` and `until` bound the time as for `/requests`.
//!
//! The work is bounded: at most [`query::USAGE_SCAN_CAP`] rows are summed,
//! the newest of the range; past it the answer says `capped: true`.
//!
//! "Saved" (what the tokens would have cost at paid list prices) is
//! `null`: the catalog records free-tier limits, not prices, and a price
//! that no source backs would be a made-up figure. `saved_note` says so.

use bytes::Bytes;
use http::Response;
use serde::Serialize;

use super::params;
use crate::api::json_response;
use crate::body::ResponseBody;
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::state::log::query::{self, Dimension, Filter, UsageGroup};

const PARAMS: &[&str] = &["by", "since", "until"];

/// Why `saved_usd` is `null`.
const SAVED_NOTE: &str = "not computed: the catalog lists no paid list prices for its models";

/// The answer.
#[derive(Debug, Serialize)]
struct Summary {
    by: Vec<&'static str>,
    groups: Vec<UsageGroup>,
    /// Rows summed.
    scanned: usize,
    /// Whether more rows matched than were summed (the oldest were not).
    capped: bool,
    /// Most rows summed.
    scan_cap: usize,
    saved_note: &'static str,
}

/// `GET /admin/api/usage`.
pub async fn summary(gateway: &Gateway, query: Option<&str>) -> Response<ResponseBody> {
    let now_ms = gateway.proxy().state().clock().now_ms();
    let (filter, by) = match parse(query, now_ms) {
        Ok(asked) => asked,
        Err(e) => return e.into_response(),
    };
    let Some(path) = params::log_file(gateway) else {
        return params::no_log();
    };
    let dims = by.clone();
    let read = params::read(path, move |conn| query::usage(conn, &filter, &dims, query::USAGE_SCAN_CAP)).await;
    match read {
        Ok(usage) => {
            let summary = Summary {
                by: by.iter().map(|d| d.name()).collect(),
                groups: usage.groups,
                scanned: usage.scanned,
                capped: usage.capped,
                scan_cap: query::USAGE_SCAN_CAP,
                saved_note: SAVED_NOTE,
            };
            json_response(Bytes::from(serde_json::to_vec(&summary).unwrap_or_default()))
        }
        Err(e) => e.into_response(),
    }
}

fn parse(query: Option<&str>, now_ms: i64) -> Result<(Filter, Vec<Dimension>), ApiError> {
    let mut filter = Filter::default();
    let mut by = vec![Dimension::Provider, Dimension::Model, Dimension::Client, Dimension::Day];
    for (name, value) in params::pairs(query, PARAMS)? {
        if name == "by" {
            by = dimensions(&value)?;
        } else {
            params::filter(&mut filter, name, &value, now_ms)?;
        }
    }
    Ok((filter, by))
}

/// `provider,model,client,day,hour` in any order and subset (not empty, no
/// repeats).
fn dimensions(value: &str) -> Result<Vec<Dimension>, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("`by` is `{value}`: {why}"), Some("by"));
    let mut by = Vec::new();
    for name in value.split(',').map(str::trim) {
        let d = Dimension::from_name(name)
            .ok_or_else(|| bad(format!("`{name}` is not one of provider, model, client, day, hour")))?;
        if by.contains(&d) {
            return Err(bad(format!("`{name}` is given twice")));
        }
        by.push(d);
    }
    Ok(by)
}
