//! No key reaches a client, `/health` or `/metrics`, whatever path the text
//! took: an upstream error body, an answer the plugin refuses, an error
//! event in the middle of a stream, a model listing, a configured header
//! value echoed back. (The log is checked by `cli::no_upstream_key_appears_in_the_log_even_at_trace_level`.)

use std::sync::Arc;

use serde_json::json;

use crate::support::gateway::{Answer, start};
use crate::support::mock::{Behavior, Mock, Reply, Seen};

const KEY: &str = "sk-leaky-upstream-key-0123456789";
const HEADER_VALUE: &str = "acct-private-header-value-42";

/// A provider with the key and a configured header whose value is private.
async fn echoing(behavior: Behavior) -> (Mock, crate::support::gateway::TestGateway) {
    let m = Mock::start().await;
    m.on_all(behavior);
    let yaml = format!(
        "providers:\n  p:\n    plugin: openai-compat\n    base_url: {}\n    keys: [\"{KEY}\"]\n    models: [m]\n    headers: {{ x-account: \"{HEADER_VALUE}\" }}\n",
        m.base_url()
    );
    (m.clone(), start(&yaml).await)
}

/// What the upstream got as its Authorization header and account header.
fn echo(seen: &Seen) -> String {
    let get = |name: &str| seen.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    format!("key problem: {} for account {}", get("authorization"), get("x-account"))
}

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(KEY), "{what} leaked the key: {text}");
    assert!(!text.contains(HEADER_VALUE), "{what} leaked a configured header value: {text}");
}

#[tokio::test]
async fn an_error_inside_a_200_answer_is_redacted_in_the_502() {
    let (_m, gw) = echoing(Behavior::Custom(Arc::new(|seen: &Seen| {
        Reply::json(200, json!({"error": {"message": echo(seen)}}).to_string())
    })))
    .await;
    let answer = gw.chat("p/m").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    let reason = answer.json()["error"]["attempts"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("key problem: Bearer ***"), "the reason is kept, the key is not: {reason}");
    assert_clean("the 502", &answer.text());
}

#[tokio::test]
async fn a_5xx_body_echoing_the_key_is_redacted() {
    let (_m, gw) =
        echoing(Behavior::Custom(Arc::new(|seen: &Seen| Reply::json(500, json!({"error": echo(seen)}).to_string()))))
            .await;
    let answer = gw.chat("p/m").await;
    assert_eq!(answer.status, 502);
    assert!(answer.text().contains("***"), "{}", answer.text());
    assert_clean("the 502", &answer.text());
}

#[tokio::test]
async fn a_successful_answer_echoing_the_key_is_redacted() {
    let (_m, gw) = echoing(Behavior::Custom(Arc::new(|seen: &Seen| {
        let completion = json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": echo(seen)}, "finish_reason": "stop"}],
        });
        Reply::json(200, completion.to_string())
    })))
    .await;
    let answer = gw.chat("p/m").await;
    assert_eq!(answer.status, 200);
    assert_clean("the answer", &answer.text());
}

#[tokio::test]
async fn an_error_event_mid_stream_echoing_the_key_is_redacted() {
    let (_m, gw) = echoing(Behavior::Custom(Arc::new(|seen: &Seen| {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]});
        Reply::sse(vec![
            format!("data: {chunk}\n\n"),
            format!("data: {}\n\n", json!({"error": {"message": echo(seen)}})),
        ])
    })))
    .await;
    let answer = Answer::read(gw.stream("p/m").await).await;
    assert_eq!(answer.status, 200);
    let events = answer.events();
    assert!(events.last().unwrap().contains("key problem: Bearer ***"), "{events:?}");
    assert_clean("the stream", &answer.text());
}

#[tokio::test]
async fn a_model_listing_echoing_the_key_never_reaches_health() {
    let (_m, gw) =
        echoing(Behavior::Custom(Arc::new(|seen: &Seen| Reply::json(401, json!({"error": echo(seen)}).to_string()))))
            .await;
    let outcome = gw.gateway.refresh_models().await;
    assert_eq!(outcome[0].1, Err("HTTP 401".to_owned()));
    let health = gw.get("/health", &[]).await;
    assert_eq!(health.json()["discovery"]["p"]["error"], "HTTP 401", "{}", health.text());
    assert_clean("/health", &health.text());
    assert_clean("/metrics", &gw.get("/metrics", &[]).await.text());
}

#[tokio::test]
async fn a_key_cut_short_by_a_summary_is_redacted_too() {
    // The soak benchmark's mock pads its error message so that the
    // 200-character summary of a reason ends inside the key: the half that
    // was left used to slip past a redactor looking for whole keys.
    let (_m, gw) = echoing(Behavior::Custom(Arc::new(|seen: &Seen| {
        let pad = seen.body["pad"].as_u64().unwrap_or(0) as usize;
        let message = format!("{}{}", "~".repeat(pad), echo(seen));
        Reply::json(500, json!({"error": {"message": message}}).to_string())
    })))
    .await;
    for pad in (150..=200).step_by(7) {
        let body = json!({"model": "p/m", "pad": pad, "messages": [{"role": "user", "content": "hi"}]});
        let answer = gw.post("/v1/chat/completions", &body.to_string(), &[]).await;
        assert_eq!(answer.status, 502);
        assert!(!answer.text().contains(&KEY[..8]), "pad {pad}: {}", answer.text());
        assert!(!answer.text().contains(&HEADER_VALUE[..8]), "pad {pad}: {}", answer.text());
    }
}
