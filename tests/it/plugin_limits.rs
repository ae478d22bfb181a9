//! Plugin interface 0.2: what upstreams say about their limits (read by the
//! real plugins from real header families), the window of a 429, a build
//! error that is the client's, and plugins built against 0.1.0 that still
//! load and serve.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use freeway::metrics::Metrics;
use freeway::plugin::{
    ErrorKind, PluginErrorKind, PluginHost, PluginSettings, QuotaWindow, RateReport, RateUnit, Target,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use crate::support::gateway::{Answer, provider, start};
use crate::support::mock::{Behavior, Mock, Reply, chunk, completion};
use crate::support::plugins;

fn test_plugins(name: &str) -> PathBuf {
    PathBuf::from(env!("FREEWAY_TEST_PLUGINS")).join(name)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

fn report(unit: RateUnit, window: QuotaWindow, limit: u64, remaining: u64, reset_ms: u64) -> RateReport {
    RateReport {
        unit,
        window,
        limit: Some(limit),
        remaining: Some(remaining),
        reset_after: Some(Duration::from_millis(reset_ms)),
    }
}

#[test]
fn openai_compat_reads_groq_headers_as_requests_per_day_and_tokens_per_minute() {
    let plugin = plugins::builtin("openai-compat");
    assert!(plugin.capabilities().limits);
    assert_eq!(plugin.interface_version(), "0.3.0");
    // Groq's documented example (console.groq.com/docs/rate-limits).
    let groq = headers(&[
        ("retry-after", "2"),
        ("x-ratelimit-limit-requests", "14400"),
        ("x-ratelimit-limit-tokens", "18000"),
        ("x-ratelimit-remaining-requests", "14370"),
        ("x-ratelimit-remaining-tokens", "17997"),
        ("x-ratelimit-reset-requests", "2m59.56s"),
        ("x-ratelimit-reset-tokens", "7.66s"),
        ("authorization", "Bearer must-not-matter"),
    ]);
    assert_eq!(
        plugin.read_limits(200, &groq),
        [
            report(RateUnit::Requests, QuotaWindow::Day, 14400, 14370, 179_560),
            report(RateUnit::Tokens, QuotaWindow::Minute, 18000, 17997, 7660),
        ]
    );
}

#[test]
fn openai_compat_reads_cerebras_and_mistral_windows_from_their_suffixes() {
    let plugin = plugins::builtin("openai-compat");
    let cerebras = headers(&[
        ("x-ratelimit-limit-requests-day", "14400"),
        ("x-ratelimit-remaining-requests-day", "0"),
        ("x-ratelimit-reset-requests-day", "33011.382867097855"),
        ("x-ratelimit-limit-tokens-minute", "60000"),
        ("x-ratelimit-remaining-tokens-minute", "59000"),
        ("x-ratelimit-reset-tokens-minute", "11.38"),
    ]);
    assert_eq!(
        plugin.read_limits(200, &cerebras),
        [
            report(RateUnit::Requests, QuotaWindow::Day, 14400, 0, 33_011_382),
            report(RateUnit::Tokens, QuotaWindow::Minute, 60000, 59000, 11_380),
        ]
    );
    let mistral = headers(&[
        ("x-ratelimit-limit-tokens-month", "1000000000"),
        ("x-ratelimit-remaining-tokens-month", "999999000"),
        ("x-ratelimit-limit-tokens-minute", "500000"),
        ("x-ratelimit-remaining-tokens-minute", "499000"),
    ]);
    let windows: Vec<_> = plugin.read_limits(200, &mistral).iter().map(|r| (r.unit, r.window, r.remaining)).collect();
    assert_eq!(
        windows,
        [
            (RateUnit::Tokens, QuotaWindow::Month, Some(999_999_000)),
            (RateUnit::Tokens, QuotaWindow::Minute, Some(499_000))
        ]
    );
}

#[test]
fn openrouter_resets_at_an_epoch_become_a_wait_from_now() {
    let plugin = plugins::builtin("openai-compat");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let soon = (now_ms + 90_000).to_string();
    let reports = plugin.read_limits(
        429,
        &headers(&[("X-RateLimit-Limit", "50"), ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", &soon)]),
    );
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = reports[0];
    assert_eq!((r.unit, r.window, r.limit, r.remaining), (RateUnit::Requests, QuotaWindow::Unknown, Some(50), Some(0)));
    let wait = r.reset_after.unwrap();
    assert!(wait <= Duration::from_secs(90) && wait > Duration::from_secs(80), "{wait:?}");
    // A reset already past is no wait at all.
    let past =
        plugin.read_limits(429, &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1000000000000")]));
    assert_eq!(past[0].reset_after, Some(Duration::ZERO));
}

#[test]
fn anthropic_reads_its_own_headers() {
    let plugin = plugins::builtin("anthropic");
    let reports = plugin.read_limits(
        200,
        &headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2001-01-01T00:00:00Z"),
            ("anthropic-ratelimit-tokens-limit", "40000"),
            ("anthropic-ratelimit-tokens-remaining", "39000"),
        ]),
    );
    assert_eq!(
        reports,
        [
            RateReport {
                unit: RateUnit::Requests,
                window: QuotaWindow::Minute,
                limit: Some(50),
                remaining: Some(0),
                reset_after: Some(Duration::ZERO)
            },
            RateReport {
                unit: RateUnit::Tokens,
                window: QuotaWindow::Minute,
                limit: Some(40000),
                remaining: Some(39000),
                reset_after: None
            },
        ]
    );
}

#[test]
fn nothing_is_read_without_the_capability_or_a_ratelimit_header() {
    let groq = headers(&[("x-ratelimit-remaining-requests", "3"), ("x-ratelimit-limit-requests", "10")]);
    // Gemini and Cohere send no such headers and do not claim `limits`.
    for name in ["gemini", "cohere"] {
        let plugin = plugins::builtin(name);
        assert!(!plugin.capabilities().limits, "{name}");
        assert!(plugin.read_limits(200, &groq).is_empty(), "{name}");
    }
    let plugin = plugins::builtin("openai-compat");
    assert!(plugin.read_limits(200, &headers(&[("retry-after", "3"), ("content-type", "x")])).is_empty());
}

fn classify(name: &str, status: u16, body: &serde_json::Value) -> ErrorKind {
    let mut session = plugins::builtin(name).session().unwrap();
    session
        .classify_error(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), body.to_string().as_bytes())
        .unwrap()
}

#[test]
fn openai_compat_tells_daily_429s_from_per_minute_ones() {
    // OpenRouter's free-model daily limit.
    let openrouter = json!({"error": {"message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day", "code": 429,
        "metadata": {"headers": {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1741305600000"}}}});
    assert_eq!(
        classify("openai-compat", 429, &openrouter),
        ErrorKind::RateLimited { retry_after: None, window: QuotaWindow::Day }
    );
    let per_minute = json!({"error": {"message": "Rate limit exceeded: free-models-per-min.", "code": 429}});
    assert_eq!(
        classify("openai-compat", 429, &per_minute),
        ErrorKind::RateLimited { retry_after: None, window: QuotaWindow::Minute }
    );
    // Groq's `rate_limit_exceeded`, with the wait in its message.
    let groq_day = json!({"error": {"message": "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_x` service tier `on_demand` on tokens per day (TPD): Limit 100000, Used 99914, Requested 1527. Please try again in 20m6.432s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
        "type": "tokens", "code": "rate_limit_exceeded"}});
    assert_eq!(
        classify("openai-compat", 429, &groq_day),
        ErrorKind::RateLimited { retry_after: Some(Duration::from_millis(1_206_432)), window: QuotaWindow::Day }
    );
    let groq_minute = json!({"error": {"message": "Rate limit reached for model `x` in organization `org_x` on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in 2s.",
        "type": "requests", "code": "rate_limit_exceeded"}});
    assert_eq!(
        classify("openai-compat", 429, &groq_minute),
        ErrorKind::RateLimited { retry_after: Some(Duration::from_secs(2)), window: QuotaWindow::Minute }
    );
    assert_eq!(
        classify("openai-compat", 429, &json!({"error": {"message": "slow down"}})),
        ErrorKind::RateLimited { retry_after: None, window: QuotaWindow::Unknown }
    );
}

#[test]
fn gemini_tells_per_day_quota_failures_from_per_minute_ones() {
    let quota = |id: &str| {
        json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": id}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "41s"}]}})
    };
    assert_eq!(
        classify("gemini", 429, &quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier")),
        ErrorKind::RateLimited { retry_after: Some(Duration::from_secs(41)), window: QuotaWindow::Day }
    );
    assert_eq!(
        classify("gemini", 429, &quota("GenerateContentInputTokensPerModelPerMinute-FreeTier")),
        ErrorKind::RateLimited { retry_after: Some(Duration::from_secs(41)), window: QuotaWindow::Minute }
    );
}

#[tokio::test]
async fn a_build_client_error_answers_400_with_its_message_and_tries_nothing_else() {
    let bad = Mock::start().await;
    let good = Mock::start().await;
    let yaml = format!(
        "plugins:\n  dir: {}\nproviders:\n  bad:\n    plugin: misbehave\n    base_url: {}\n    keys: [k]\n    models: [unexpressible]\n{}routes:\n  r: {{ targets: [bad/unexpressible, good/m] }}\n",
        test_plugins("misbehave").display(),
        bad.base_url(),
        provider("good", &good.base_url(), &["kg"], &["m"]),
    );
    let gw = start(&yaml).await;
    let answer = gw.chat("r").await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    let message = answer.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("cannot take that request") && message.contains("bad"), "{message}");
    assert_eq!(bad.seen().len() + good.seen().len(), 0, "nothing is sent upstream");
}

#[tokio::test]
async fn every_response_head_is_read_for_limits_and_a_fault_there_costs_the_attempt_nothing() {
    let m = Mock::start().await;
    // Every answer carries a header that makes the plugin trap in read-limits.
    m.on_all(Behavior::Custom(Arc::new(|seen| {
        let mut reply = if seen.stream {
            Reply::sse(vec![format!("data: {}\n\n", chunk(&seen.model, 0)), "data: [DONE]\n\n".to_owned()])
        } else if seen.model == "limited" {
            Reply::json(429, r#"{"error":{"message":"slow down"}}"#)
        } else {
            Reply::json(200, completion(&seen.model))
        };
        reply.headers.push(("x-ratelimit-trap".to_owned(), "1".to_owned()));
        reply
    })));
    let yaml = format!(
        "plugins:\n  dir: {}\nproviders:\n  p:\n    plugin: misbehave\n    base_url: {}\n    keys: [k]\n    models: [fine, limited]\n",
        test_plugins("misbehave").display(),
        m.base_url(),
    );
    let gw = start(&yaml).await;
    let answer = gw.chat("p/fine").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let stream = Answer::read(gw.stream("p/fine").await).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.events().last().unwrap(), "[DONE]");
    let limited = gw.chat("p/limited").await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    let metrics = gw.get("/metrics", &[]).await.text();
    let line = "freeway_plugin_failures_total{plugin=\"misbehave\",kind=\"trap\"} 3";
    assert!(
        metrics.contains(line),
        "read-limits ran once per response head (answer, stream, 429): missing `{line}` in:\n{metrics}"
    );
}

#[tokio::test]
async fn a_plugin_built_against_interface_0_2_still_loads_and_serves_without_a_plan() {
    let dir = test_plugins("interface-0-2");
    let host = PluginHost::load(&PluginSettings::default(), Some(&dir), Arc::new(Metrics::new())).unwrap();
    let plugin = host.get("interface-0-2").unwrap();
    assert_eq!(plugin.interface_version(), "0.2.0");
    let caps = plugin.capabilities();
    assert!(caps.chat && caps.stream && caps.embeddings && caps.limits && !caps.plan, "{caps:?}");
    let reports = plugin.read_limits(200, &headers(&[("x-ratelimit-remaining-requests", "7")]));
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!((reports[0].remaining, reports[0].window), (Some(7), QuotaWindow::Day));
    let options = Vec::new();
    let target = Target { base_url: "http://x/v1", model: "refuse", key: None, options: &options };
    assert!(plugin.plan_chat(&target).unwrap().is_none(), "0.2 has no plans");
    let mut session = plugin.session().unwrap();
    // 0.2's client error stays one.
    let error = session.build_chat(br#"{"model":"a","messages":[]}"#, &target).unwrap_err();
    assert_eq!(error.kind, PluginErrorKind::ClientRequest, "{error}");
    let kind = session.classify_error(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), b"{}").unwrap();
    assert_eq!(kind, ErrorKind::RateLimited { retry_after: Some(Duration::from_secs(2)), window: QuotaWindow::Minute });

    // Through a gateway: chat, stream and embeddings.
    serves_through_a_gateway("interface-0-2").await;
}

/// Provider `old` runs plugin `name` in front of a mock: chat, a stream
/// and embeddings are served; the gateway and mock are handed back for
/// more (model `refuse` is listed, and `other/m` beside it).
async fn serves_through_a_gateway(name: &str) -> (Mock, crate::support::gateway::TestGateway) {
    let m = Mock::start().await;
    m.on_model("e", Behavior::Custom(Arc::new(|seen| {
        Reply::json(200, json!({"object": "list", "model": seen.model, "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]}).to_string())
    })));
    let yaml = format!(
        "plugins:\n  dir: {}\nproviders:\n  old:\n    plugin: {name}\n    base_url: {}\n    keys: [k]\n    models: [m, e, refuse]\n{}routes:\n  r: {{ targets: [old/refuse, other/m] }}\n",
        test_plugins(name).display(),
        m.base_url(),
        provider("other", &m.base_url(), &["k2"], &["m"]),
    );
    let gw = start(&yaml).await;
    let answer = gw.chat("old/m").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "old/m");
    let stream = Answer::read(gw.stream("old/m").await).await;
    assert_eq!(stream.events().last().unwrap(), "[DONE]", "{:?}", stream.events());
    let embedded = gw.post("/v1/embeddings", &json!({"model": "old/e", "input": "hi"}).to_string(), &[]).await;
    assert_eq!(embedded.status, 200, "{}", embedded.text());
    assert_eq!(embedded.json()["data"][0]["embedding"], json!([0.5]));
    (m, gw)
}

#[tokio::test]
async fn a_plugin_built_against_interface_0_1_still_loads_and_serves() {
    let dir = test_plugins("interface-0-1");
    let host = PluginHost::load(&PluginSettings::default(), Some(&dir), Arc::new(Metrics::new())).unwrap();
    let plugin = host.get("interface-0-1").unwrap();
    assert_eq!(plugin.interface_version(), "0.1.0");
    let caps = plugin.capabilities();
    assert!(caps.chat && caps.stream && caps.embeddings && !caps.limits, "{caps:?}");
    assert!(plugin.read_limits(200, &headers(&[("x-ratelimit-remaining-requests", "0")])).is_empty());
    let options = Vec::new();
    let target = Target { base_url: "http://x/v1", model: "refuse", key: None, options: &options };
    let mut session = plugin.session().unwrap();
    // 0.1's build error is a plain failure (the next candidate is tried).
    let error = session.build_chat(br#"{"model":"a","messages":[]}"#, &target).unwrap_err();
    assert_eq!(error.kind, PluginErrorKind::Refused, "{error}");
    // 0.1's 429 is about an unknown window.
    let kind = session.classify_error(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), b"{}").unwrap();
    assert_eq!(
        kind,
        ErrorKind::RateLimited { retry_after: Some(Duration::from_secs(2)), window: QuotaWindow::Unknown }
    );

    // Through a gateway: chat, stream, embeddings, and fallback from a refusal.
    let (_mock, gw) = serves_through_a_gateway("interface-0-1").await;
    let fell_back = gw.chat("r").await;
    assert_eq!(fell_back.status, 200, "{}", fell_back.text());
    assert_eq!(fell_back.routed_via(), "other/m");
}
