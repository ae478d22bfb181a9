//! Rate limits known before the 429: a candidate at its limit is skipped
//! without an upstream call; counters are per (provider, model, key), or
//! per key across models; token budgets settle with the reported usage.

use crate::support::gateway::{provider, start};
use crate::support::mock::Mock;

/// An openai-compat provider block with limits.
fn limited(name: &str, mock: &Mock, keys: &[&str], models: &[&str], extra: &str) -> String {
    format!("{}{extra}", provider(name, &mock.base_url(), keys, models))
}

#[tokio::test]
async fn a_candidate_at_its_rpm_is_skipped_without_a_call() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m1, b/m2]\n",
        limited("a", &a, &["ka"], &["m1"], "    limits: { rpm: 2 }\n"),
        provider("b", &b.base_url(), &["kb"], &["m2"]),
    );
    let gw = start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(gw.chat("r").await.routed_via(), "a/m1");
    }
    let third = gw.chat("r").await;
    assert_eq!(third.routed_via(), "b/m2");
    assert_eq!(third.fallback_attempts(), 0, "a skip at a limit is not an attempt");
    assert_eq!(a.chats().len(), 2, "the limited candidate was called past its limit");
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(metrics.contains("freeway_limit_skips_total{provider=\"a\",model=\"m1\",limit=\"rpm\"} 1"), "{metrics}");
}

#[tokio::test]
async fn each_key_has_its_own_counters_and_all_limited_is_a_429() {
    let a = Mock::start().await;
    let yaml = format!("providers:\n{}", limited("a", &a, &["k1", "k2"], &["m"], "    limits: { rpm: 1 }\n"));
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("a/m").await.status, 200);
    assert_eq!(gw.chat("a/m").await.status, 200);
    let keys: Vec<_> = a.chats().iter().map(|s| s.key.clone().unwrap()).collect();
    assert_eq!(keys, ["k1", "k2"]);
    let third = gw.chat("a/m").await;
    assert_eq!(third.status, 429, "{}", third.text());
    let retry: u64 = third.header("retry-after").parse().unwrap();
    assert!((55..=60).contains(&retry), "retry-after {retry}: when the minute window frees up");
    assert_eq!(a.chats().len(), 2);
}

#[tokio::test]
async fn token_budgets_settle_with_the_usage_the_answer_reports() {
    // The mock reports 10 tokens per answer; each request is estimated at
    // ~60 (its size / 4). Charged at the estimate, the third request would
    // pass 150; settled at 10 each, a dozen fit.
    let a = Mock::start().await;
    let b = Mock::start().await;
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m1, b/m2]\n",
        limited("a", &a, &["ka"], &["m1"], "    limits: { tpm: 150 }\n"),
        provider("b", &b.base_url(), &["kb"], &["m2"]),
    );
    let gw = start(&yaml).await;
    for i in 0..8 {
        assert_eq!(gw.chat("r").await.routed_via(), "a/m1", "request {i}");
    }
    assert_eq!(b.chats().len(), 0);
}

#[tokio::test]
async fn key_limits_are_shared_by_every_model_of_a_key() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/x, a/y, b/z]\n",
        limited("a", &a, &["ka"], &["x", "y"], "    key_limits: { rpd: 2 }\n"),
        provider("b", &b.base_url(), &["kb"], &["z"]),
    );
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("a/x").await.routed_via(), "a/x");
    assert_eq!(gw.chat("a/y").await.routed_via(), "a/y");
    // The key's daily pool is spent: neither model of `a` is tried.
    let third = gw.chat("r").await;
    assert_eq!(third.routed_via(), "b/z");
    assert_eq!(a.chats().len(), 2);
}

#[tokio::test]
async fn streams_count_against_limits_too() {
    let a = Mock::start().await;
    let yaml = format!("providers:\n{}", limited("a", &a, &["ka"], &["m"], "    limits: { rpm: 1 }\n"));
    let gw = start(&yaml).await;
    let first = crate::support::gateway::Answer::read(gw.stream("a/m").await).await;
    assert_eq!(first.events().last().unwrap(), "[DONE]");
    assert_eq!(gw.chat("a/m").await.status, 429);
}

/// A chat body asking for `max_tokens`.
fn asking(model: &str, max_tokens: u64) -> String {
    serde_json::json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello"}]})
        .to_string()
}

#[tokio::test]
async fn a_rejected_request_gives_its_tokens_back() {
    use crate::support::mock::Behavior;
    let a = Mock::start().await;
    // One request the upstream refuses (400), with an absurd max_tokens.
    a.once_model("m", Behavior::status(400));
    let block = "    models:\n      - { id: m, context: 8192, limits: { tpd: 12000, tpm: 12000 } }\n";
    let yaml =
        format!("providers:\n  a:\n    plugin: openai-compat\n    base_url: {}\n    keys: [k]\n{block}", a.base_url());
    let gw = start(&yaml).await;
    let rejected = gw.post("/v1/chat/completions", &asking("a/m", 8000), &[]).await;
    assert_eq!(rejected.status, 400, "{}", rejected.text());
    // Its charge was given back: the next request is not held to a day's wait.
    let next = gw.post("/v1/chat/completions", &asking("a/m", 8000), &[]).await;
    assert_eq!(next.status, 200, "{} {}", next.text(), next.header("retry-after"));
}

#[tokio::test]
async fn an_absurd_max_tokens_books_no_more_than_the_model_could_answer() {
    let a = Mock::start().await;
    let yaml = format!(
        "providers:\n  a:\n    plugin: openai-compat\n    base_url: {}\n    keys: [k]\n    limits: {{ tpd: 300000 }}\n    models: [m]\n",
        a.base_url()
    );
    let gw = start(&yaml).await;
    // The context window is unknown; 10^12 is booked as at most 262144
    // tokens, and then settled with what the answer reported (10).
    for _ in 0..3 {
        let answer = gw.post("/v1/chat/completions", &asking("a/m", 1_000_000_000_000), &[]).await;
        assert_eq!(answer.status, 200, "{} retry-after {}", answer.text(), answer.header("retry-after"));
    }
}

#[tokio::test]
async fn max_tokens_beyond_every_candidates_window_is_a_400() {
    let a = Mock::start().await;
    let yaml = format!(
        "providers:\n  a:\n    plugin: openai-compat\n    base_url: {}\n    keys: [k]\n    models:\n      - {{ id: small, context: 8192 }}\n      - {{ id: large, context: 131072 }}\nroutes:\n  r: {{ targets: [a/small, a/large] }}\n",
        a.base_url()
    );
    let gw = start(&yaml).await;
    let too_big = gw.post("/v1/chat/completions", &asking("r", 200_000), &[]).await;
    assert_eq!(too_big.status, 400);
    assert!(too_big.text().contains("131072"), "{}", too_big.text());
    assert_eq!(too_big.json()["error"]["param"], "max_tokens");
    assert!(a.chats().is_empty(), "no upstream was asked");
    assert_eq!(gw.post("/v1/chat/completions", &asking("r", 100_000), &[]).await.status, 200);
}

#[tokio::test]
async fn absurd_usage_and_retry_after_values_saturate_instead_of_panicking() {
    use std::sync::Arc;

    use crate::support::mock::{Behavior, Reply};
    let a = Mock::start().await;
    let huge = u64::MAX;
    a.on_model(
        "m",
        Behavior::Custom(Arc::new(move |seen| {
            let usage = serde_json::json!({"prompt_tokens": huge, "completion_tokens": huge});
            if seen.stream {
                let chunk = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage});
                return Reply::sse(vec![format!("data: {chunk}\n\n"), "data: [DONE]\n\n".to_owned()]);
            }
            let completion = serde_json::json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": usage});
            Reply::json(200, completion.to_string())
        })),
    );
    a.on_model(
        "slow-down",
        Behavior::Status { status: 429, retry_after: Some("18446744073709551615".into()), body: "{}".into() },
    );
    let yaml = format!(
        "providers:\n  a:\n    plugin: openai-compat\n    base_url: {}\n    keys: [k]\n    limits: {{ tpd: 1000000 }}\n    models: [m, slow-down]\n",
        a.base_url()
    );
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("a/m").await.status, 200);
    // The day's budget is spent (saturated, not wrapped round to nothing).
    let spent = gw.chat("a/m").await;
    assert_eq!(spent.status, 429, "{}", spent.text());
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(metrics.contains("freeway_tokens_total{"), "{metrics}");
    // A Retry-After past any clock is held to a day.
    let limited = gw.chat("a/slow-down").await;
    assert_eq!(limited.status, 429);
    let wait: u64 = limited.header("retry-after").parse().unwrap();
    assert!(wait <= 24 * 3600, "{wait}");
}

#[tokio::test]
async fn a_request_the_upstream_refused_with_429_does_not_count_against_the_day() {
    let a = Mock::start().await;
    a.once_model("m", crate::support::mock::Behavior::rate_limited("1"));
    let yaml = format!("providers:\n{}", limited("a", &a, &["k"], &["m"], "    limits: { rpd: 2 }\n"));
    let gw = start(&yaml).await;
    // Refused once, then served after the cooldown (the queue waits for it).
    assert_eq!(gw.chat("a/m").await.status, 200);
    assert_eq!(gw.chat("a/m").await.status, 200, "the refused call was counted as one of the day's 2");
    assert_eq!(gw.chat("a/m").await.status, 429);
    assert_eq!(a.chats().len(), 3);
}
