//! Named clients of `server.api_keys` and their budgets: requests per
//! sliding minute (`rpm`) and per rolling 24 hours (`rpd`), tokens per
//! rolling 24 hours (`tpd`, settled from the usage each answer reports), and
//! the models they may use (`models`, globs of freeway model names).
//!
//! Counts live in memory only (a restart forgets them) and are bounded by
//! the config: a client is a config entry, and each window keeps at most
//! one counter per bucket (60 one-second buckets a minute, 1440 one-minute
//! buckets a day), however busy the client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::body::ResponseBody;
use crate::config::ClientKey;
use crate::errors::ApiError;
use crate::metrics::Metrics;
use crate::plugin::Usage;

/// The name metrics give every bare-token client: bare tokens are not
/// named, and labelling each by its hash would let config edits grow the
/// series without bound.
pub const PLAIN: &str = "default";

/// Whether `name` may name a client: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 24 * 60 * MINUTE_MS;

/// One client: its name, its budgets and what it has spent of them.
#[derive(Debug)]
pub struct Client {
    name: Arc<str>,
    rpm: Option<u64>,
    rpd: Option<u64>,
    tpd: Option<u64>,
    models: Option<Vec<WildMatch>>,
    epoch: Instant,
    spent: Mutex<Spent>,
}

#[derive(Debug)]
struct Spent {
    minute: Window,
    day: Window,
    tokens: Window,
}

impl Client {
    /// The client every bare token shares: no budget, every model.
    pub fn plain() -> Self {
        Self::build(PLAIN, None, None, None, None)
    }

    /// From its config entry (validated: limits positive, name set).
    pub fn from_config(key: &ClientKey) -> Self {
        let limit = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        let models = key.models.as_ref().map(|globs| globs.iter().map(|g| WildMatch::new(g)).collect());
        Self::build(key.name.as_deref().unwrap_or(PLAIN), limit(key.rpm), limit(key.rpd), limit(key.tpd), models)
    }

    fn build(name: &str, rpm: Option<u64>, rpd: Option<u64>, tpd: Option<u64>, models: Option<Vec<WildMatch>>) -> Self {
        let spent = Spent {
            minute: Window::new(MINUTE_MS, 1000),
            day: Window::new(DAY_MS, MINUTE_MS),
            tokens: Window::new(DAY_MS, MINUTE_MS),
        };
        Self { name: name.into(), rpm, rpd, tpd, models, epoch: Instant::now(), spent: Mutex::new(spent) }
    }

    /// Its name (metrics label: config names, or [`PLAIN`]).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Whether it checks the model of a request (parsing the body for it
    /// is skipped otherwise).
    pub fn checks_models(&self) -> bool {
        self.models.is_some()
    }

    /// Whether `model` (a freeway model name) is one of its globs.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|globs| globs.iter().any(|g| g.matches(model)))
    }

    /// Counts one request against `rpm` and `rpd`, or says how long until
    /// one of them (or `tpd`) leaves room, counting nothing.
    pub fn admit(&self) -> Result<(), Refusal> {
        self.admit_at(self.now_ms())
    }

    fn admit_at(&self, now: u64) -> Result<(), Refusal> {
        // Bare tokens (one shared client) and clients without limits take
        // no lock: there is nothing to count.
        if self.rpm.is_none() && self.rpd.is_none() && self.tpd.is_none() {
            return Ok(());
        }
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        let Spent { minute, day, tokens } = &mut *spent;
        for (limit, window, what) in
            [(self.rpm, &mut *minute, "requests a minute"), (self.rpd, &mut *day, "requests a day")]
        {
            if let Some(limit) = limit
                && let Some(wait) = window.full(now, limit)
            {
                return Err(Refusal { limit, what, wait });
            }
        }
        if let Some(limit) = self.tpd
            && let Some(wait) = tokens.full(now, limit)
        {
            return Err(Refusal { limit, what: "tokens a day", wait });
        }
        if self.rpm.is_some() {
            minute.add(now, 1);
        }
        if self.rpd.is_some() {
            day.add(now, 1);
        }
        Ok(())
    }

    /// Settles an answer's usage: its tokens count against `tpd`, and the
    /// client's token metric.
    pub fn spend(&self, metrics: &Metrics, usage: Usage) {
        metrics.client_tokens(&self.name, usage);
        if self.tpd.is_some() {
            let now = self.now_ms();
            self.spent.lock().unwrap_or_else(PoisonError::into_inner).tokens.add(now, usage.total());
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A request over one of the client's budgets.
#[derive(Debug, Clone)]
pub struct Refusal {
    limit: u64,
    what: &'static str,
    wait: Duration,
}

impl Refusal {
    /// 429 with `Retry-After` (whole seconds until room frees), in
    /// OpenAI's shape (`api::handle` reshapes it for the Messages API).
    pub fn into_response(self, client: &str) -> Response<ResponseBody> {
        let secs = self.wait.as_millis().div_ceil(1000).max(1);
        let body = serde_json::json!({"error": {
            "message": format!(
                "client `{client}` is over its budget of {} {}; retry in {secs} s", self.limit, self.what
            ),
            "type": "rate_limit_error",
            "code": "client_budget_exceeded",
        }});
        let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::RETRY_AFTER, HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)));
        response
    }
}

/// 403 for a model outside the client's globs.
pub fn model_refused(client: &str, model: &str) -> ApiError {
    ApiError::Forbidden { message: format!("client `{client}` may not use model `{model}` (server.api_keys models)") }
}

/// The `model` of a request body, when it has one as a string.
pub fn model_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        model: Option<String>,
    }
    serde_json::from_slice::<Head>(body).ok()?.model
}

/// A sliding window of `span` ms in buckets of `bucket` ms. A bucket
/// leaves the window once all of it is older than `span`, so the window
/// never lets more than the limit through in any `span`.
#[derive(Debug)]
struct Window {
    span: u64,
    bucket: u64,
    buckets: VecDeque<(u64, u64)>,
    total: u64,
}

impl Window {
    fn new(span: u64, bucket: u64) -> Self {
        Self { span, bucket, buckets: VecDeque::new(), total: 0 }
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(index, count)) = self.buckets.front() {
            if self.leaves(index) > now {
                break;
            }
            self.total -= count;
            self.buckets.pop_front();
        }
    }

    /// When the bucket `index` leaves the window.
    fn leaves(&self, index: u64) -> u64 {
        (index + 1).saturating_mul(self.bucket).saturating_add(self.span)
    }

    /// `None` when below `limit`; else how long until it is.
    fn full(&mut self, now: u64, limit: u64) -> Option<Duration> {
        self.expire(now);
        let mut total = self.total;
        for &(index, count) in &self.buckets {
            if total < limit {
                break;
            }
            total -= count;
            if total < limit {
                return Some(Duration::from_millis(self.leaves(index) - now));
            }
        }
        (total >= limit).then(|| Duration::from_millis(self.span))
    }

    fn add(&mut self, now: u64, n: u64) {
        self.expire(now);
        let index = now / self.bucket;
        match self.buckets.back_mut() {
            Some((last, count)) if *last == index => *count = count.saturating_add(n),
            _ => self.buckets.push_back((index, n)),
        }
        self.total = self.total.saturating_add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(rpm: Option<u64>, rpd: Option<u64>) -> Client {
        Client::build("c", rpm, rpd, None, None)
    }

    #[test]
    fn a_minute_slides() {
        let c = client(Some(2), None);
        assert!(c.admit_at(0).is_ok());
        assert!(c.admit_at(30_500).is_ok());
        let refused = c.admit_at(40_000).err().map(|r| r.wait);
        // The first request's second bucket leaves at 61 s.
        assert_eq!(refused, Some(Duration::from_millis(21_000)));
        assert!(c.admit_at(61_000).is_ok());
        assert!(c.admit_at(61_001).is_err());
    }

    #[test]
    fn a_day_rolls_and_counts_only_admitted_requests() {
        let c = client(Some(1000), Some(1));
        assert!(c.admit_at(5).is_ok());
        for _ in 0..10 {
            assert!(c.admit_at(10).is_err());
        }
        assert_eq!(c.admit_at(DAY_MS).err().map(|r| r.wait), Some(Duration::from_millis(MINUTE_MS)));
        assert!(c.admit_at(DAY_MS + MINUTE_MS).is_ok());
    }

    #[test]
    fn windows_stay_bounded() {
        let mut w = Window::new(MINUTE_MS, 1000);
        for t in 0..1_000_000 {
            w.add(t, 1);
        }
        assert!(w.buckets.len() <= 61);
    }

    #[test]
    fn names_and_globs() {
        assert!(valid_name("team-a.bot_1"));
        assert!(!valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(65)));
        let c = Client::build("c", None, None, None, Some(vec![WildMatch::new("cheap/*")]));
        assert!(c.may_use("cheap/llama") && !c.may_use("big/gpt"));
    }
}
