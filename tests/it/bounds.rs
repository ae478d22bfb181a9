//! DESIGN.md's Bounds: whatever a client sends, memory stays bounded and
//! the gateway keeps serving. Long names and session ids are refused, names
//! no provider lists share one metric label, requests and request bytes in
//! flight are capped, HTTP/2 streams per connection are capped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::support::gateway::{TestGateway, chat_body, h2_client, provider, start, stream_request};
use crate::support::mock::{Behavior, Mock};

async fn one(extra: &str) -> (Mock, TestGateway) {
    let m = Mock::start().await;
    let yaml = format!("{extra}\nproviders:\n{}", provider("p", &m.base_url(), &["k"], &["m"]));
    (m.clone(), start(&yaml).await)
}

#[tokio::test]
async fn model_names_and_session_ids_over_256_bytes_are_refused() {
    let (m, gw) = one("").await;
    let long = format!("p/{}", "x".repeat(300));
    let answer = gw.post("/v1/chat/completions", &chat_body(&long, false), &[]).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["param"], "model");
    let session = "s".repeat(400);
    let answer = gw.post("/v1/chat/completions", &chat_body("p/m", false), &[("x-session-id", &session)]).await;
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("X-Session-ID"), "{}", answer.text());
    assert!(m.chats().is_empty());
    let fits = "s".repeat(256);
    assert_eq!(gw.post("/v1/chat/completions", &chat_body("p/m", false), &[("x-session-id", &fits)]).await.status, 200);
}

#[tokio::test]
async fn a_megabyte_model_name_is_refused_at_once_without_a_search() {
    let (_m, gw) = one("").await;
    let huge = "y".repeat(4 * 1024 * 1024);
    let started = Instant::now();
    let answer = gw.post("/v1/chat/completions", &chat_body(&huge, false), &[]).await;
    assert_eq!(answer.status, 400);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // Just under the cap: a 404 with no suggestion search.
    let answer = gw.post("/v1/chat/completions", &chat_body(&"z".repeat(250), false), &[]).await;
    assert_eq!(answer.status, 404);
    assert!(!answer.text().contains("did you mean"), "{}", answer.text());
}

#[tokio::test]
async fn names_no_provider_lists_share_one_metric_label() {
    let (_m, gw) = one("").await;
    for i in 0..300 {
        let answer = gw.chat(&format!("p/made-up-{i}")).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(gw.chat("p/m").await.status, 200);
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(!metrics.contains("made-up"), "a client-chosen name became a label");
    assert!(metrics.contains(r#"model="(unlisted)""#), "{metrics}");
    assert!(metrics.contains(r#"model="m""#), "listed models keep their label");
    assert!(metrics.len() < 64 * 1024, "/metrics grew to {} bytes", metrics.len());
}

#[tokio::test]
async fn requests_past_max_in_flight_get_503_with_retry_after() {
    let (m, gw) = one("server: { max_in_flight: 2 }\ndispatch: { timeout: 2s }").await;
    m.on_all(Behavior::Hang);
    let url = gw.url("/v1/chat/completions");
    let hanging: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(
                async move { crate::support::gateway::send(&url, "POST", &chat_body("p/m", false), &[]).await },
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.chats().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = gw.chat("p/m").await;
    assert_eq!(third.status, 503, "{}", third.text());
    assert_eq!(third.header("retry-after"), "1");
    assert_eq!(third.json()["error"]["code"], "overloaded");
    for h in hanging {
        let _ = h.await;
    }
    m.on_all(Behavior::Ok);
    assert_eq!(gw.chat("p/m").await.status, 200, "the places were given back");
}

#[tokio::test]
async fn a_stream_holds_its_place_in_flight_until_it_ends() {
    let (m, gw) = one("server: { max_in_flight: 1 }").await;
    let gate = Arc::new(Semaphore::new(0));
    m.on_all(Behavior::Gated(gate.clone()));
    let response = gw.stream("p/m").await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.chat("p/m").await.status, 503, "the stream in flight holds the only place");
    gate.add_permits(1);
    let _ = crate::support::gateway::Answer::read(response).await;
    m.on_all(Behavior::Ok);
    assert_eq!(gw.chat("p/m").await.status, 200);
}

#[tokio::test]
async fn request_bytes_in_flight_are_bounded() {
    let (m, gw) = one(
        "server: { max_body_bytes: 4096, max_in_flight_bytes: 6000, body_read_timeout: 500ms }\ndispatch: { timeout: 3s }",
    )
    .await;
    m.on_all(Behavior::Hang);
    let big = json!({"model": "p/m", "messages": [{"role": "user", "content": "x".repeat(3500)}]}).to_string();
    let url = gw.url("/v1/chat/completions");
    let body = big.clone();
    let first = tokio::spawn(async move { crate::support::gateway::send(&url, "POST", &body, &[]).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.chats().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first body's bytes are held while it waits on its upstream.
    let second = gw.post("/v1/chat/completions", &big, &[]).await;
    assert_eq!(second.status, 503, "{}", second.text());
    assert!(second.text().contains("max_in_flight_bytes"), "{}", second.text());
    let _ = first.await;
    m.on_all(Behavior::Ok);
    assert_eq!(gw.post("/v1/chat/completions", &big, &[]).await.status, 200);
}

#[tokio::test]
async fn health_and_metrics_can_be_protected() {
    let (_m, gw) =
        one("server: { api_keys: [client-token-0123456789], protect_health: true, protect_metrics: true }").await;
    assert_eq!(gw.get("/health", &[]).await.status, 401);
    assert_eq!(gw.get("/metrics", &[]).await.status, 401);
    let auth = [("authorization", "Bearer client-token-0123456789")];
    assert_eq!(gw.get("/health", &auth).await.status, 200);
    assert_eq!(gw.get("/metrics", &auth).await.status, 200);
}

#[tokio::test]
async fn http2_streams_per_connection_are_capped() {
    let (m, gw) = one("server: { max_streams_per_connection: 2 }").await;
    let gate = Arc::new(Semaphore::new(0));
    m.on_all(Behavior::Gated(gate.clone()));
    let client = h2_client(None);
    let mut pending = Vec::new();
    for _ in 0..3 {
        let request = stream_request(&gw, "p/m");
        let client = client.clone();
        pending.push(tokio::spawn(async move { client.request(request).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(m.chats().len(), 2, "a third stream was opened on the connection");
    gate.add_permits(3);
    let (mut served, mut refused) = (0, 0);
    for p in pending {
        match p.await.unwrap() {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                let _ = crate::support::gateway::Answer::read(response).await;
                served += 1;
            }
            // The server refuses a stream past its cap (REFUSED_STREAM): a
            // client may retry it, the gateway holds nothing for it.
            Err(e) => {
                assert!(format!("{e:?}").contains("REFUSED_STREAM"), "{e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(served + refused, 3);
    assert!(served >= 2, "{served} served");
    assert_eq!(m.chats().len(), served);
}
