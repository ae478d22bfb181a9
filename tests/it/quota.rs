//! Quotas the upstream announces: a daily-quota 429 cools a model on a key
//! until the provider's reset (on an injected clock, so the test does not
//! wait for midnight), a per-minute one for its wait; the rate-limit
//! headers teach the gateway a key's limits and when nothing is left.

use std::sync::Arc;
use std::time::Duration;

use freeway::state::Clock;
use freeway::{Catalog, Env};
use serde_json::json;

use crate::support::gateway::{provider, start, start_at};
use crate::support::mock::{Behavior, Mock, Reply, completion};

/// OpenRouter's answer when a free model's daily allowance is spent.
fn daily_429() -> Behavior {
    Behavior::Status {
        status: 429,
        retry_after: None,
        body: json!({"error": {"message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day", "code": 429}}).to_string(),
    }
}

/// 2026-01-16 07:59:57 UTC: three seconds before midnight in Los Angeles
/// (PST, UTC-8).
const BEFORE_LA_MIDNIGHT_MS: i64 = 1_768_550_397_000;

#[tokio::test]
async fn a_daily_quota_429_cools_until_the_providers_midnight_not_for_the_cooldown() {
    let mock = Mock::start().await;
    mock.once_model("m", daily_429());
    let yaml = format!(
        "providers:\n{}    quota_reset: \"00:00 America/Los_Angeles\"\ndispatch:\n  cooldown: 60s\n  queue_timeout: 0s\n",
        provider("a", &mock.base_url(), &["ka"], &["m"])
    );
    let env = Env::from_map(Vec::<(String, String)>::new());
    let gw = start_at(&yaml, Catalog::empty(), env, Clock::starting_at(BEFORE_LA_MIDNIGHT_MS)).await;
    let first = gw.chat("a/m").await;
    assert_eq!(first.status, 429, "{}", first.text());
    let retry: u64 = first.header("retry-after").parse().unwrap();
    assert!(retry <= 3, "the pool has capacity again at midnight Pacific, in {retry}s, not dispatch.cooldown");
    let cooling = gw.chat("a/m").await;
    assert_eq!(cooling.status, 429);
    assert_eq!(mock.chats().len(), 1, "an exhausted model was called again before its reset");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(gw.chat("a/m").await.status, 200, "the new day did not free the model");
}

#[tokio::test]
async fn a_daily_quota_429_without_a_calendar_is_retried_hourly_then_less_often() {
    let mock = Mock::start().await;
    mock.on_model("m", daily_429());
    let yaml = format!("providers:\n{}dispatch:\n  cooldown: 60s\n", provider("a", &mock.base_url(), &["ka"], &["m"]));
    let gw = start(&yaml).await;
    // Each probe that finds the day still spent doubles the wait (the
    // operator's reset stands in for the hours between them).
    for (probe, hours) in [1u64, 2, 4, 4].into_iter().enumerate() {
        let answer = gw.chat("a/m").await;
        assert_eq!(answer.status, 429);
        let retry: u64 = answer.header("retry-after").parse().unwrap();
        assert!((hours * 3600 - 10..=hours * 3600).contains(&retry), "probe {probe}: retry-after {retry}");
        let reset = gw.post("/admin/api/cooldowns/reset", r#"{"provider": "a"}"#, &[]).await;
        assert_eq!(reset.status, 200, "{}", reset.text());
    }
    assert_eq!(mock.calls_to("m"), 4);
}

#[tokio::test]
async fn a_per_minute_429_keeps_its_retry_after() {
    let mock = Mock::start().await;
    mock.on_model("m", Behavior::rate_limited("7"));
    let gw = start(&format!("providers:\n{}", provider("a", &mock.base_url(), &["ka"], &["m"]))).await;
    let answer = gw.chat("a/m").await;
    assert_eq!(answer.status, 429);
    let retry: u64 = answer.header("retry-after").parse().unwrap();
    assert!((6..=7).contains(&retry), "retry-after {retry}");
}

/// Answers every chat with a completion and Groq's rate-limit headers:
/// `remaining` requests left of `limit` today, reset in `reset`.
fn groq_headers(limit: &'static str, remaining: &'static str, reset: &'static str) -> Behavior {
    Behavior::Custom(Arc::new(move |seen| Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-ratelimit-limit-requests".into(), limit.into()),
            ("x-ratelimit-remaining-requests".into(), remaining.into()),
            ("x-ratelimit-reset-requests".into(), reset.into()),
        ],
        pieces: vec![completion(&seen.model)],
    }))
}

#[tokio::test]
async fn headers_saying_nothing_is_left_skip_the_candidate_without_a_call() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    a.on_all(groq_headers("1000", "0", "2h0m0s"));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("r").await.routed_via(), "a/m", "the answer that says 0 left is still the answer");
    for _ in 0..3 {
        let answer = gw.chat("r").await;
        assert_eq!(answer.routed_via(), "b/n");
        assert_eq!(answer.fallback_attempts(), 0, "a spent candidate is skipped, not attempted");
    }
    assert_eq!(a.chats().len(), 1, "the upstream said 0 left and was called anyway");
    let only_a = gw.chat("a/m").await;
    assert_eq!(only_a.status, 429);
    let retry: u64 = only_a.header("retry-after").parse().unwrap();
    assert!((7190..=7201).contains(&retry), "retry-after {retry}: the reset the headers named (and half a second)");
}

#[tokio::test]
async fn a_limit_the_headers_state_replaces_the_configured_guess_for_that_key() {
    let a = Mock::start().await;
    // The config guesses 100 a day; the upstream says this key has 2.
    a.on_all(groq_headers("2", "1", "10h"));
    let yaml = format!("providers:\n{}    limits: {{ rpd: 100 }}\n", provider("a", &a.base_url(), &["ka"], &["m"]));
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("a/m").await.status, 200);
    assert_eq!(gw.chat("a/m").await.status, 200);
    let third = gw.chat("a/m").await;
    assert_eq!(third.status, 429, "{}", third.text());
    assert_eq!(a.chats().len(), 2, "the learned daily limit of 2 was passed");
}

#[tokio::test]
async fn capacity_headers_add_up_across_candidates_and_keys() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let c = Mock::start().await;
    let yaml = format!(
        "providers:\n{}    limits: {{ rpd: 5 }}\n{}    limits: {{ rpd: 3 }}\n{}routes:\n  r:\n    targets: [a/m, b/n, c/x]\n",
        provider("a", &a.base_url(), &["k1", "k2"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
        provider("c", &c.base_url(), &["kc"], &["x"]),
    );
    let gw = start(&yaml).await;
    let first = gw.chat("r").await;
    assert_eq!(first.routed_via(), "a/m");
    // a: two keys of 5 with one spent, b: 3, c: no known limit.
    assert_eq!(first.header("x-freeway-remaining-requests-day"), "12");
    let reset: u64 = first.header("x-freeway-remaining-reset").parse().unwrap();
    assert!((86_000..=86_400).contains(&reset), "a rolling day frees the first request in ~24 h, not {reset}");
    assert_eq!(gw.chat("r").await.header("x-freeway-remaining-requests-day"), "11");
    // A candidate with no known limit says nothing.
    assert!(gw.chat("c/x").await.headers.get("x-freeway-remaining-requests-day").is_none());
}

#[tokio::test]
async fn a_keys_shared_daily_limit_is_counted_once_across_its_models() {
    let a = Mock::start().await;
    let yaml = format!(
        "providers:\n{}    limits: {{ rpd: 10 }}\n    key_limits: {{ rpd: 4 }}\nroutes:\n  r:\n    targets: [a/m1, a/m2]\n",
        provider("a", &a.base_url(), &["k"], &["m1", "m2"]),
    );
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("r").await.header("x-freeway-remaining-requests-day"), "3", "min(4 - 1, 9 + 10)");
}

#[tokio::test]
async fn the_headroom_strategy_sends_each_request_where_most_is_left() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let yaml = format!(
        "providers:\n{}    limits: {{ rpd: 2 }}\n{}    limits: {{ rpd: 5 }}\nroutes:\n  h:\n    targets: [a/m, b/n]\n    strategy: headroom\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    let mut via = Vec::new();
    for _ in 0..7 {
        via.push(gw.chat("h").await.routed_via().to_owned());
    }
    // b (5 left) until it has no more than a (2), then the written order on ties.
    assert_eq!(via, ["b/n", "b/n", "b/n", "a/m", "b/n", "a/m", "b/n"]);
}

/// Gemini's 429 for a spent daily quota: a `QuotaFailure` whose quota id
/// names `PerDay`, with a `retryDelay` that is not when the day ends.
fn gemini_per_day() -> Behavior {
    Behavior::Status {
        status: 429,
        retry_after: None,
        body: json!({"error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                     "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45s"}
            ]
        }})
        .to_string(),
    }
}

#[tokio::test]
async fn a_gemini_per_day_429_cools_until_midnight_pacific_through_the_gemini_plugin() {
    let mock = Mock::start().await;
    mock.on_model("gemini-x", gemini_per_day());
    let yaml = format!(
        "providers:\n  g:\n    plugin: gemini\n    base_url: {}\n    keys: [gk]\n    models: [gemini-x]\n    quota_reset: \"00:00 America/Los_Angeles\"\ndispatch:\n  cooldown: 60s\n  queue_timeout: 0s\n",
        mock.base_url().replace("/v1", "/v1beta"),
    );
    let env = Env::from_map(Vec::<(String, String)>::new());
    let gw = start_at(&yaml, Catalog::empty(), env, Clock::starting_at(BEFORE_LA_MIDNIGHT_MS)).await;
    let first = gw.chat("g/gemini-x").await;
    assert_eq!(first.status, 429, "{}", first.text());
    let retry: u64 = first.header("retry-after").parse().unwrap();
    assert!(
        retry <= 3,
        "cooled for {retry}s: the day ends at midnight Pacific, not in retryDelay or dispatch.cooldown"
    );
    assert_eq!(gw.chat("g/gemini-x").await.status, 429);
    assert_eq!(mock.calls_to("gemini-x"), 1, "called again before the reset");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    gw.chat("g/gemini-x").await;
    assert_eq!(mock.calls_to("gemini-x"), 2, "not tried again once the new day began");
}

#[tokio::test]
async fn the_day_daylight_saving_begins_is_23_hours_long() {
    // 2026-03-08 00:00:01 in Los Angeles (still PST, UTC-8); clocks jump
    // from 02:00 to 03:00 that night, so the next midnight is 23 h away.
    let mock = Mock::start().await;
    let yaml = format!(
        "providers:\n{}    quota_reset: \"00:00 America/Los_Angeles\"\n    limits: {{ rpd: 10 }}\n",
        provider("a", &mock.base_url(), &["ka"], &["m"])
    );
    let env = Env::from_map(Vec::<(String, String)>::new());
    let gw = start_at(&yaml, Catalog::empty(), env, Clock::starting_at(1_772_956_801_000)).await;
    let answer = gw.chat("a/m").await;
    assert_eq!(answer.header("x-freeway-remaining-requests-day"), "9");
    let reset: i64 = answer.header("x-freeway-remaining-reset").parse().unwrap();
    assert!((23 * 3600 - 5..=23 * 3600).contains(&reset), "{reset}s to the reset, not 24 h less a second");
}
