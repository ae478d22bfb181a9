//! The respond phase: an [`Outcome`] becomes the HTTP response. The routing
//! headers are written here and nowhere else.

use std::time::Instant;

use http::{HeaderValue, Response};

use super::dispatch::Outcome;
use super::quota::Capacity;
use crate::body::ResponseBody;
use crate::errors::ceil_secs;

/// Header naming the provider/model that answered.
pub const ROUTED_VIA: &str = "x-routed-via";
/// Header counting the failed upstream attempts before the answer.
pub const FALLBACK_ATTEMPTS: &str = "x-fallback-attempts";
/// Header with the daily requests left across the request's candidates.
pub const REMAINING_REQUESTS_DAY: &str = "x-freeway-remaining-requests-day";
/// Header with the seconds until the soonest of their daily counts drops.
pub const REMAINING_RESET: &str = "x-freeway-remaining-reset";

/// The response for the client: the answer (or the upstream's own 400), or
/// the error, with `x-routed-via` (when a candidate answered) and
/// `x-fallback-attempts`, and for chat the capacity left
/// (`x-freeway-remaining-requests-day`, `x-freeway-remaining-reset`) when
/// a candidate's daily limit is known.
pub fn respond(outcome: Outcome, capacity: Option<Capacity>) -> Response<ResponseBody> {
    let mut response = match outcome.result {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let headers = response.headers_mut();
    if let Some(via) = &outcome.via
        && let Ok(value) = HeaderValue::from_str(&format!("{}/{}", via.provider.name, via.model))
    {
        headers.insert(ROUTED_VIA, value);
    }
    headers.insert(FALLBACK_ATTEMPTS, HeaderValue::from(outcome.attempts.len()));
    if let Some(capacity) = capacity {
        headers.insert(REMAINING_REQUESTS_DAY, HeaderValue::from(capacity.remaining));
        if let Some(reset) = capacity.reset {
            headers
                .insert(REMAINING_RESET, HeaderValue::from(ceil_secs(reset.saturating_duration_since(Instant::now()))));
        }
    }
    response
}
