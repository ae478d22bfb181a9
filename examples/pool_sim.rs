//! A simulated pool of free-tier providers, for the pool benchmark
//! (`benches/pool.sh`).
//!
//! One process, one loopback port, eight providers behind per-provider
//! path prefixes (`/p/<provider>/v1/chat/completions` for the
//! OpenAI-compatible ones, `/p/<provider>/v1beta/models/<model>:generateContent`
//! for the Gemini-speaking ones). Each provider has 2-3 keys; each key has
//! its own budget: at most `rpm` requests served in any sliding 60 s, and
//! `rpd` per "day", a day being `--day` seconds (the whole counters reset
//! every day, counted from the sim's start). Every key of one provider has
//! the same `rpm`/`rpd`, as with real free tiers (and as freeway's config
//! can declare them: limits per provider, counted per key).
//!
//! Providers refuse the way real free tiers do, one style each:
//! - `retry-after`: 429 with `Retry-After` (whole seconds until the key's
//!   window frees, rounded up);
//! - `gemini`: Gemini's wire format, a 429 with only a JSON body: a
//!   `google.rpc.QuotaFailure` naming `...PerDay...` or `...PerMinute...`
//!   and a `google.rpc.RetryInfo` `retryDelay`;
//! - `groq`: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` on
//!   every answer (requests per day, reset written like `1m26.4s`), and a
//!   429 with `Retry-After` when over;
//! - `bare`: a 429 with nothing that says when.
//!
//! A request that passes the limits fails with a 503 one time in 100
//! (`--fault`, not charged to the key) and takes 1-2 s two times in 100
//! (`--slow`); others take `--latency` (a range in ms).
//!
//! Every refusal is counted with the reason the gateway could have avoided
//! it, as the sim sees it (first match wins, then `after_restart`):
//! - `early_reprobe`: the request arrived after this key had announced when
//!   its exhausted window frees (`Retry-After`, `retryDelay`, a 429's
//!   reset header) and before that time;
//! - `header_zero`: the request arrived after an answer from this key had
//!   said `x-ratelimit-remaining-requests: 0` and before the reset it named;
//! - `blind_reprobe`: the key had already refused in this exhausted window
//!   without saying until when (bare 429s), and is asked again;
//! - `race`: the window was not full with the answers already sent, but
//!   requests still in flight on the same key filled it: the gateway sent
//!   more at once than the window had room for;
//! - `first_contact`: none of the above: nothing told the gateway (unless
//!   it counts against declared limits);
//! - `after_restart`: within `--restart-window` seconds after the gateway
//!   restarted (`POST /restarted` marks it), an `early_reprobe`,
//!   `header_zero` or `blind_reprobe`, or a refusal by a window that was
//!   already full before the restart: the gateway had been told, or could
//!   have counted, before the restart, and asked anyway.
//!
//! Endpoints besides the chat ones:
//! - `GET /pool`: the providers as JSON (name, style, plugin, model, keys,
//!   rpm, rpd, path) and the day length, for the script to write freeway's
//!   config and compute the pool's capacity;
//! - `GET /stats`: per provider, served, 5xx faults, slow answers and
//!   refusals by cause, as JSON;
//! - `POST /start`: the load starts now (day 0 starts here);
//! - `POST /restarted`: the gateway has just been restarted.
//!
//! Usage: `pool_sim [--port N] [--day SECS] [--fault P] [--slow P]
//! [--latency MIN-MAX] [--restart-window SECS] [--seed N]`. Once bound it
//! prints one line, `listening on 127.0.0.1:PORT`, then serves until killed.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const MINUTE: Duration = Duration::from_secs(60);
/// Groq-style token budget per minute reported in the headers (never the
/// limit that bites: the benchmark's requests are small).
const TOKENS_PER_MINUTE: u64 = 6000;
/// Tokens one benchmark request is counted as (prompt + completion).
const TOKENS_PER_REQUEST: u64 = 40;

/// How a provider says "too many".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    RetryAfter,
    Gemini,
    Groq,
    Bare,
}

impl Style {
    fn name(self) -> &'static str {
        match self {
            Self::RetryAfter => "retry-after",
            Self::Gemini => "gemini",
            Self::Groq => "groq",
            Self::Bare => "bare",
        }
    }
}

/// One simulated provider: (name, style, keys, rpm, rpd). A mix of keys
/// bound by their minute (rpm × minutes < rpd) and by their day.
const PROVIDERS: [(&str, Style, usize, u64, u64); 8] = [
    ("ra-a", Style::RetryAfter, 3, 6, 10),
    ("ra-b", Style::RetryAfter, 2, 10, 30),
    ("gem-a", Style::Gemini, 3, 5, 8),
    ("gem-b", Style::Gemini, 2, 8, 25),
    ("groq-a", Style::Groq, 3, 6, 9),
    ("groq-b", Style::Groq, 2, 12, 40),
    ("bare-a", Style::Bare, 2, 4, 6),
    ("bare-b", Style::Bare, 3, 5, 20),
];

/// Why a request was refused (see the module doc).
#[derive(Debug, Clone, Copy)]
enum Cause {
    AfterRestart,
    EarlyReprobe,
    HeaderZero,
    BlindReprobe,
    Race,
    FirstContact,
}

impl Cause {
    const ALL: [Cause; 6] =
        [Self::FirstContact, Self::HeaderZero, Self::Race, Self::EarlyReprobe, Self::BlindReprobe, Self::AfterRestart];

    fn name(self) -> &'static str {
        match self {
            Self::AfterRestart => "after_restart",
            Self::EarlyReprobe => "early_reprobe",
            Self::HeaderZero => "header_zero",
            Self::BlindReprobe => "blind_reprobe",
            Self::Race => "race",
            Self::FirstContact => "first_contact",
        }
    }
}

/// Which window refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Minute,
    Day,
}

/// One key's budget and what it has told the gateway.
#[derive(Default)]
struct Key {
    /// Admissions in the last minute: (arrival, request id).
    minute: VecDeque<(Instant, u64)>,
    /// The day these counters are for, and requests served in it.
    day: u64,
    day_served: u64,
    /// Admitted requests whose answer has not been sent yet.
    in_flight: HashSet<u64>,
    /// Until when a 429 from this key said to wait, and when it said so.
    retry_until: Option<(Instant, Instant)>,
    /// Until when an answer said `remaining-requests: 0`, and when.
    zero_until: Option<(Instant, Instant)>,
    /// A refusal without a time was sent in the current exhausted window
    /// (the window's end).
    blind_until: Option<Instant>,
    /// Today's requests were all spent when the gateway last restarted.
    day_full_at_restart: bool,
}

/// Per provider counts, for `/stats`.
#[derive(Default)]
struct Counts {
    served: u64,
    faults: u64,
    slow: u64,
    refused: BTreeMap<&'static str, u64>,
}

struct Provider {
    name: &'static str,
    style: Style,
    rpm: u64,
    rpd: u64,
    keys: Vec<String>,
    state: Vec<Key>,
    counts: Counts,
}

struct Sim {
    /// Day 0 starts here (`POST /start` moves it to the start of the load).
    started: Mutex<Instant>,
    day: Duration,
    fault: f64,
    slow: f64,
    latency_ms: (u64, u64),
    restart_window: Duration,
    restarted: Mutex<Option<Instant>>,
    providers: Mutex<Vec<Provider>>,
    next_id: Mutex<(u64, fastrand::Rng)>,
}

/// What to answer a chat request with, decided under the lock.
enum Verdict {
    Refused { style: Style, window: Window, wait: Duration, groq: Option<GroqHeaders> },
    Fault,
    Served { key: (usize, usize), id: u64, delay: Duration, groq: Option<GroqHeaders> },
}

#[derive(Clone, Copy)]
struct GroqHeaders {
    rpd: u64,
    remaining: u64,
    reset: Duration,
    tokens_remaining: u64,
    tokens_reset: Duration,
}

struct Args {
    port: u16,
    day: Duration,
    fault: f64,
    slow: f64,
    latency_ms: (u64, u64),
    restart_window: Duration,
    seed: u64,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        port: 0,
        day: Duration::from_secs(180),
        fault: 0.01,
        slow: 0.02,
        latency_ms: (150, 450),
        restart_window: Duration::from_secs(10),
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => args.port = value.parse()?,
            "--day" => args.day = Duration::from_secs_f64(value.parse()?),
            "--fault" => args.fault = value.parse()?,
            "--slow" => args.slow = value.parse()?,
            "--latency" => {
                let (a, b) = value.split_once('-').ok_or("--latency MIN-MAX (ms)")?;
                args.latency_ms = (a.parse()?, b.parse()?);
            }
            "--restart-window" => args.restart_window = Duration::from_secs_f64(value.parse()?),
            "--seed" => args.seed = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    Ok(args)
}

/// Seconds written like Groq's resets: `1m26.4s`, `7.66s`.
fn groq_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    let minutes = (secs / 60.0).floor();
    if minutes >= 1.0 { format!("{}m{:.1}s", minutes as u64, secs - minutes * 60.0) } else { format!("{secs:.2}s") }
}

/// Whole seconds, rounded up, so that waiting that long is always enough.
fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

impl Sim {
    fn origin(&self) -> Instant {
        self.started.lock().map(|s| *s).unwrap_or_else(|_| Instant::now())
    }

    fn day_index(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin()).as_secs_f64() / self.day.as_secs_f64()) as u64
    }

    fn day_end(&self, index: u64) -> Instant {
        self.origin() + self.day.mul_f64((index + 1) as f64)
    }

    /// Admits or refuses one request for `provider` with `key`.
    fn decide(&self, provider: &str, key: &str) -> Option<Verdict> {
        let now = Instant::now();
        let restarted = self.restarted.lock().ok().and_then(|r| *r);
        let mut ids = self.next_id.lock().ok()?;
        let mut providers = self.providers.lock().ok()?;
        let p_index = providers.iter().position(|p| p.name == provider)?;
        let p = &mut providers[p_index];
        let k_index = p.keys.iter().position(|k| k == key)?;
        let (rpm, rpd, style) = (p.rpm, p.rpd, p.style);
        let today = self.day_index(now);
        let day_end = self.day_end(today);
        let k = &mut p.state[k_index];
        if k.day != today {
            k.day = today;
            k.day_served = 0;
        }
        while k.minute.front().is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE) {
            k.minute.pop_front();
        }
        let minute_done = k.minute.iter().filter(|(_, id)| !k.in_flight.contains(id)).count() as u64;
        let minute_all = k.minute.len() as u64;
        let day_in_flight = k.in_flight.len() as u64;
        let day_done = k.day_served.saturating_sub(day_in_flight);
        let refusal = if k.day_served >= rpd {
            Some((Window::Day, day_end.saturating_duration_since(now), day_done < rpd))
        } else if minute_all >= rpm {
            let oldest = k.minute.front().map_or(now, |(t, _)| *t);
            Some((Window::Minute, (oldest + MINUTE).saturating_duration_since(now), minute_done < rpm))
        } else {
            None
        };
        let groq = |k: &Key, served: u64| GroqHeaders {
            rpd,
            remaining: rpd.saturating_sub(served),
            reset: day_end.saturating_duration_since(now),
            tokens_remaining: TOKENS_PER_MINUTE.saturating_sub(k.minute.len() as u64 * TOKENS_PER_REQUEST),
            tokens_reset: k
                .minute
                .front()
                .map_or(Duration::ZERO, |(t, _)| (*t + MINUTE).saturating_duration_since(now)),
        };
        if let Some((window, wait, raced)) = refusal {
            let live = |w: Option<(Instant, Instant)>| w.is_some_and(|(until, said)| said <= now && now < until);
            let cause = if live(k.retry_until) {
                Cause::EarlyReprobe
            } else if live(k.zero_until) {
                Cause::HeaderZero
            } else if k.blind_until.is_some_and(|until| now < until) {
                Cause::BlindReprobe
            } else if raced {
                Cause::Race
            } else {
                Cause::FirstContact
            };
            // What the key had told the gateway before a restart, and the
            // restarted gateway asked again anyway: it forgot.
            // Or the window was already full before the restart: a gateway
            // counting against declared limits knew, and forgot.
            let told = matches!(cause, Cause::EarlyReprobe | Cause::HeaderZero | Cause::BlindReprobe);
            let full_before = |r: Instant| match window {
                Window::Day => k.day_full_at_restart,
                Window::Minute => k.minute.iter().filter(|(t, _)| *t < r).count() as u64 >= rpm,
            };
            let forgot = restarted
                .is_some_and(|r| now.saturating_duration_since(r) < self.restart_window && (told || full_before(r)));
            let cause = if forgot { Cause::AfterRestart } else { cause };
            *p.counts.refused.entry(cause.name()).or_default() += 1;
            let until = now + Duration::from_secs(ceil_secs(wait));
            if style == Style::Bare {
                k.blind_until = Some(now + wait);
            } else {
                k.retry_until = Some((until, now));
            }
            let groq = (style == Style::Groq).then(|| groq(k, k.day_served));
            return Some(Verdict::Refused { style, window, wait, groq });
        }
        let (next_id, rng) = &mut *ids;
        if rng.f64() < self.fault {
            p.counts.faults += 1;
            return Some(Verdict::Fault);
        }
        *next_id += 1;
        let id = *next_id;
        k.minute.push_back((now, id));
        k.day_served += 1;
        k.in_flight.insert(id);
        let slow = rng.f64() < self.slow;
        let delay = if slow {
            p.counts.slow += 1;
            Duration::from_millis(rng.u64(1000..=2000))
        } else {
            Duration::from_millis(rng.u64(self.latency_ms.0..=self.latency_ms.1.max(self.latency_ms.0)))
        };
        p.counts.served += 1;
        let groq = (style == Style::Groq).then(|| groq(k, k.day_served));
        Some(Verdict::Served { key: (p_index, k_index), id, delay, groq })
    }

    /// The answer to a served request is leaving: it is no longer in
    /// flight, and what its headers say is now known to the gateway.
    fn answered(&self, key: (usize, usize), id: u64, groq: Option<GroqHeaders>) {
        let Ok(mut providers) = self.providers.lock() else { return };
        let Some(k) = providers.get_mut(key.0).and_then(|p| p.state.get_mut(key.1)) else { return };
        k.in_flight.remove(&id);
        if let Some(g) = groq.filter(|g| g.remaining == 0) {
            let now = Instant::now();
            k.zero_until = Some((now + g.reset, now));
        }
    }

    fn pool(&self) -> Value {
        let providers = self.providers.lock().map(|ps| {
            ps.iter()
                .map(|p| {
                    let gemini = p.style == Style::Gemini;
                    json!({
                        "name": p.name,
                        "style": p.style.name(),
                        "plugin": if gemini { "gemini" } else { "openai-compat" },
                        "path": format!("/p/{}/{}", p.name, if gemini { "v1beta" } else { "v1" }),
                        "model": format!("{}-model", p.name),
                        "keys": p.keys,
                        "rpm": p.rpm,
                        "rpd": p.rpd,
                    })
                })
                .collect::<Vec<_>>()
        });
        json!({"day_secs": self.day.as_secs_f64(), "providers": providers.unwrap_or_default()})
    }

    fn stats(&self) -> Value {
        let providers = self.providers.lock().map(|ps| {
            ps.iter()
                .map(|p| {
                    let refused: serde_json::Map<String, Value> = Cause::ALL
                        .iter()
                        .map(|c| (c.name().to_owned(), json!(p.counts.refused.get(c.name()).copied().unwrap_or(0))))
                        .collect();
                    json!({
                        "name": p.name,
                        "style": p.style.name(),
                        "served": p.counts.served,
                        "faults": p.counts.faults,
                        "slow": p.counts.slow,
                        "refused": refused,
                    })
                })
                .collect::<Vec<_>>()
        });
        json!({
            "elapsed_secs": self.origin().elapsed().as_secs_f64(),
            "providers": providers.unwrap_or_default(),
        })
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn add_groq_headers(response: &mut Response<Full<Bytes>>, g: GroqHeaders) {
    let pairs = [
        ("x-ratelimit-limit-requests", g.rpd.to_string()),
        ("x-ratelimit-remaining-requests", g.remaining.to_string()),
        ("x-ratelimit-reset-requests", groq_duration(g.reset)),
        ("x-ratelimit-limit-tokens", TOKENS_PER_MINUTE.to_string()),
        ("x-ratelimit-remaining-tokens", g.tokens_remaining.to_string()),
        ("x-ratelimit-reset-tokens", groq_duration(g.tokens_reset)),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
}

fn refusal(style: Style, window: Window, wait: Duration, groq: Option<GroqHeaders>) -> Response<Full<Bytes>> {
    let secs = ceil_secs(wait);
    let per = if window == Window::Day { "day" } else { "minute" };
    let mut response = match style {
        Style::Gemini => {
            let quota = if window == Window::Day {
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
            } else {
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
            };
            respond(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {
                    "code": 429,
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": quota}]},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}
                    ]
                }}),
            )
        }
        Style::Bare => respond(StatusCode::TOO_MANY_REQUESTS, json!({"error": {"message": "Too many requests"}})),
        Style::RetryAfter | Style::Groq => {
            let mut r = respond(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"message": format!("Rate limit reached: requests per {per}"), "type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}}),
            );
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            r
        }
    };
    if let Some(g) = groq {
        add_groq_headers(&mut response, g);
    }
    response
}

fn completion(gemini: bool, model: &str) -> Value {
    if gemini {
        json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Sure: the answer is short."}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 10, "totalTokenCount": 40},
            "modelVersion": model,
            "responseId": "sim",
        })
    } else {
        json!({
            "id": "chatcmpl-sim",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sure: the answer is short."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 40},
        })
    }
}

async fn handle(sim: Arc<Sim>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if method == Method::GET && path == "/pool" {
        return Ok(respond(StatusCode::OK, sim.pool()));
    }
    if method == Method::GET && path == "/stats" {
        return Ok(respond(StatusCode::OK, sim.stats()));
    }
    if method == Method::POST && path == "/start" {
        if let Ok(mut s) = sim.started.lock() {
            *s = Instant::now();
        }
        return Ok(respond(StatusCode::OK, json!({"ok": true})));
    }
    if method == Method::POST && path == "/restarted" {
        let now = Instant::now();
        let today = sim.day_index(now);
        if let Ok(mut providers) = sim.providers.lock() {
            for p in providers.iter_mut() {
                let rpd = p.rpd;
                for k in &mut p.state {
                    k.day_full_at_restart = k.day == today && k.day_served >= rpd;
                }
            }
        }
        if let Ok(mut r) = sim.restarted.lock() {
            *r = Some(now);
        }
        return Ok(respond(StatusCode::OK, json!({"ok": true})));
    }
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let key = header("x-goog-api-key")
        .or_else(|| header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned)))
        .unwrap_or_default();
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (Some("p"), Some(provider), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(respond(StatusCode::NOT_FOUND, json!({"error": {"message": "no such path"}})));
    };
    let gemini = rest.contains(":generateContent");
    if method != Method::POST || !(gemini || rest.ends_with("/chat/completions")) {
        return Ok(respond(StatusCode::NOT_FOUND, json!({"error": {"message": "no such endpoint"}})));
    }
    // Read the body as a real upstream would (and so that keep-alive works).
    let _ = request.into_body().collect().await;
    let provider = provider.to_owned();
    let Some(verdict) = sim.decide(&provider, &key) else {
        return Ok(respond(StatusCode::UNAUTHORIZED, json!({"error": {"message": "unknown provider or key"}})));
    };
    Ok(match verdict {
        Verdict::Refused { style, window, wait, groq } => refusal(style, window, wait, groq),
        Verdict::Fault => {
            respond(StatusCode::SERVICE_UNAVAILABLE, json!({"error": {"message": "overloaded, try again"}}))
        }
        Verdict::Served { key, id, delay, groq } => {
            tokio::time::sleep(delay).await;
            let mut response = respond(StatusCode::OK, completion(gemini, &format!("{provider}-model")));
            sim.answered(key, id, groq);
            if let Some(g) = groq {
                add_groq_headers(&mut response, g);
            }
            response
        }
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let providers = PROVIDERS
        .iter()
        .map(|&(name, style, keys, rpm, rpd)| Provider {
            name,
            style,
            rpm,
            rpd,
            keys: (1..=keys).map(|i| format!("sk-sim-{name}-{i}")).collect(),
            state: (0..keys).map(|_| Key::default()).collect(),
            counts: Counts::default(),
        })
        .collect();
    let sim = Arc::new(Sim {
        started: Mutex::new(Instant::now()),
        day: args.day,
        fault: args.fault,
        slow: args.slow,
        latency_ms: args.latency_ms,
        restart_window: args.restart_window,
        restarted: Mutex::new(None),
        providers: Mutex::new(providers),
        next_id: Mutex::new((0, fastrand::Rng::with_seed(args.seed))),
    });
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", listener.local_addr()?)?;
        stdout.flush()?;
    }
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let sim = sim.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(sim.clone(), request));
            // A gateway killed with -9 drops its connections: nothing to report.
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
