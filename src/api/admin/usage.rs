//! `GET /admin/api/usage`: the request log summed per group: requests,
//! success rate, fallbacks, tokens in and out, latency p50/p95. `by`
//! chooses the grouping among `provider` (the one that answered), `model`
//! (as asked), `client`, `day` (UTC) and `hour` (UTC, for a chart over
//! time), comma-separated, the first four by default; `since` and `until` bound the time as for `/requests`.
//!
//! The work is bounded: at most [`query::USAGE_SCAN_CAP`] rows are summed,
//! the newest of the range; past it the answer says `capped: true`.
//!
//! "Saved" (`saved_usd`) is what the tokens would have cost at the paid
//! list price of the model that answered, where the catalog or the config
//! names one (`price`); requests answered by a model without one are
//! counted in `unpriced` instead, as no source backs a price for them.

use bytes::Bytes;
use http::Response;
use serde::Serialize;

use super::params;
use crate::api::json_response;
use crate::body::ResponseBody;
use crate::catalog::prices::prices;
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::state::log::query::{self, Dimension, Filter, UsageGroup};

const PARAMS: &[&str] = &["by", "since", "until"];

/// What `saved_usd` counts.
const SAVED_NOTE: &str = "the tokens of requests answered by a model with a paid list price (`price` in the catalog \
                          or config), at that price; `unpriced` counts the requests whose model has none";

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
    let prices = prices(gateway.config(), gateway.catalog());
    let price = move |target: &str| prices.get(target).copied();
    let read = params::read(path, move |conn| query::usage(conn, &filter, &dims, query::USAGE_SCAN_CAP, &price)).await;
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
