//! The respond phase: an [`Outcome`] becomes the HTTP response. The routing
//! headers are written here and nowhere else.

use http::{HeaderValue, Response};

use super::dispatch::Outcome;
use crate::body::ResponseBody;

/// Header naming the provider/model that answered.
pub const ROUTED_VIA: &str = "x-routed-via";
/// Header counting the failed upstream attempts before the answer.
pub const FALLBACK_ATTEMPTS: &str = "x-fallback-attempts";

/// The response for the client: the answer (or the upstream's own 400), or
/// the error, with `x-routed-via` (when a candidate answered) and
/// `x-fallback-attempts`.
pub fn respond(outcome: Outcome) -> Response<ResponseBody> {
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
    response
}
