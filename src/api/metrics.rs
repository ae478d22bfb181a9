//! `GET /metrics`: the Prometheus text exposition.

use std::time::Instant;

use http::{HeaderValue, Response, header};

use crate::body::ResponseBody;
use crate::gateway::Gateway;

/// The scrape.
pub fn scrape(gateway: &Gateway) -> Response<ResponseBody> {
    let proxy = gateway.proxy();
    let redis = proxy.state().health().redis.unwrap_or_default();
    let text = gateway.metrics().render(crate::metrics::Gauges {
        cooldowns: proxy.state().active_cooldowns(Instant::now()),
        pins: proxy.state().pins(),
        streams: proxy.watchdog().live(),
        circuits_open: proxy.state().open_circuits().len(),
        redis_up: redis.connected,
        redis_errors: redis.errors,
    });
    let mut r = Response::new(ResponseBody::full(text));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    r
}
