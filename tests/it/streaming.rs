//! Streaming: SSE relayed as it arrives, fallback only before the first
//! byte, and the error event when a stream fails after it.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use crate::support::gateway::{Answer, TestGateway, next_frame, provider, sse_events, start};
use crate::support::mock::{Behavior, Mock, STREAM_CHUNKS};

async fn two(dispatch: &str) -> (Mock, Mock, TestGateway) {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m1, b/m2]\ndispatch: {dispatch}\n",
        provider("a", &a.base_url(), &["ka"], &["m1"]),
        provider("b", &b.base_url(), &["kb"], &["m2"]),
    );
    (a, b, start(&yaml).await)
}

#[tokio::test]
async fn a_stream_is_relayed_and_ends_with_done() {
    let (a, _b, gw) = two("{}").await;
    let answer = Answer::read(gw.stream("r").await).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), "text/event-stream");
    assert_eq!(answer.routed_via(), "a/m1");
    assert_eq!(answer.fallback_attempts(), 0);
    let events = answer.events();
    assert_eq!(events.len(), STREAM_CHUNKS + 2, "{events:?}");
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["model"], "m1");
    assert_eq!(first["choices"][0]["delta"]["content"], "part0 ");
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(a.seen()[0].stream);
}

#[tokio::test]
async fn the_client_gets_the_first_chunk_before_the_upstream_sends_the_last() {
    let (a, _b, gw) = two("{}").await;
    let gate = Arc::new(Semaphore::new(0));
    a.on_model("m1", Behavior::Gated(gate.clone()));
    let response = gw.stream("r").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // The upstream is holding the rest of the stream until the gate opens.
    let first = next_frame(&mut body, Duration::from_secs(5)).await.expect("first chunk");
    assert!(String::from_utf8_lossy(&first).contains("part0"));
    gate.add_permits(1);
    let rest = body.collect().await.unwrap().to_bytes();
    let events = sse_events(&String::from_utf8_lossy(&rest));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.iter().any(|e| e.contains(&format!("part{}", STREAM_CHUNKS - 1))));
}

#[tokio::test]
async fn a_stream_cut_after_its_first_byte_ends_with_an_error_event_and_no_fallback() {
    let (a, b, gw) = two("{}").await;
    a.on_model("m1", Behavior::CutAfter(2));
    let answer = Answer::read(gw.stream("r").await).await;
    assert_eq!(answer.status, 200);
    let events = answer.events();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[0].contains("part0") && events[1].contains("part1"));
    let error: serde_json::Value = serde_json::from_str(&events[2]).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("broke off"), "{error}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(b.seen().len(), 0, "tokens already sent must never be sent twice");
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_chunk_falls_back() {
    let (a, b, gw) = two("{}").await;
    a.on_model("m1", Behavior::CutAfter(0));
    let answer = Answer::read(gw.stream("r").await).await;
    assert_eq!(answer.routed_via(), "b/m2");
    assert_eq!(answer.fallback_attempts(), 1);
    assert_eq!(answer.events().last().unwrap(), "[DONE]");
    assert_eq!(b.seen().len(), 1);
}

#[tokio::test]
async fn a_stream_rate_limited_before_it_starts_falls_back() {
    let (a, _b, gw) = two("{}").await;
    a.on_model("m1", Behavior::rate_limited("30"));
    let answer = Answer::read(gw.stream("r").await).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.routed_via(), "b/m2");
    assert_eq!(answer.events().last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn a_stream_whose_first_event_is_an_error_falls_back() {
    let (a, _b, gw) = two("{}").await;
    a.on_model("m1", Behavior::Raw("data: {\"error\":{\"message\":\"provider overloaded\"}}\n\n".into()));
    let answer = Answer::read(gw.stream("r").await).await;
    assert_eq!(answer.routed_via(), "b/m2");
    assert_eq!(answer.fallback_attempts(), 1);
}

#[tokio::test]
async fn no_first_byte_in_time_falls_back() {
    let (a, _b, gw) = two("{ first_byte_timeout: 300ms }").await;
    a.on_model("m1", Behavior::Hang);
    let answer = Answer::read(gw.stream("r").await).await;
    assert_eq!(answer.routed_via(), "b/m2");
}

#[tokio::test]
async fn a_stream_that_goes_silent_ends_with_an_error_event() {
    let (a, _b, gw) = two("{ stream_idle_timeout: 400ms }").await;
    a.on_model("m1", Behavior::StallAfterFirst);
    let answer = Answer::read(gw.stream("r").await).await;
    let events = answer.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[1].contains("sent nothing"), "{}", events[1]);
}

#[tokio::test]
async fn stream_usage_is_counted_in_metrics() {
    let (_a, _b, gw) = two("{}").await;
    let _ = Answer::read(gw.stream("r").await).await;
    let metrics = gw.get("/metrics", &[]).await.text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("freeway_tokens_total") && l.contains("kind=\"completion\"") && l.contains("provider=\"a\"")
        })
        .unwrap_or_else(|| panic!("no token line in:\n{metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
}

#[tokio::test]
async fn streams_reuse_the_upstream_connection() {
    let (a, _b, gw) = two("{}").await;
    for _ in 0..5 {
        let answer = Answer::read(gw.stream("r").await).await;
        assert_eq!(answer.events().last().unwrap(), "[DONE]");
    }
    assert_eq!(a.seen().len(), 5);
    assert_eq!(a.connections(), 1, "each stream opened a new upstream connection");
}

#[tokio::test]
async fn a_client_that_goes_away_is_not_counted_as_an_upstream_failure() {
    let (a, _b, gw) = two("{}").await;
    let gate = Arc::new(Semaphore::new(0));
    a.on_all(Behavior::Gated(gate.clone()));
    let mut response = gw.stream("r").await;
    assert!(next_frame(response.body_mut(), Duration::from_secs(5)).await.is_some());
    drop(response);
    gate.add_permits(1);
    let metrics = || async { gw.get("/metrics", &[]).await.text() };
    let started = std::time::Instant::now();
    let mut text = metrics().await;
    while !text.contains("freeway_stream_client_disconnects_total{") && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = metrics().await;
    }
    assert!(text.contains(r#"freeway_stream_client_disconnects_total{provider="a",model="m1"} 1"#), "{text}");
    assert!(!text.contains("freeway_stream_failures_total{"), "{text}");
}
