//! A client that stops reading cannot hold an upstream connection or a
//! plugin instance: the stream is closed after `stream_idle_timeout` of
//! waiting on the client (HTTP/1.1 with a full receive buffer, HTTP/2 with
//! a closed window), and after `stream_max_duration` whatever happens.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::support::gateway::{TestGateway, chat_body, h2_client, provider, start, stream_request};
use crate::support::mock::{Behavior, Mock};

/// A gateway in front of a mock that streams for ever.
async fn endless(dispatch: &str) -> (Mock, TestGateway) {
    let m = Mock::start().await;
    m.on_all(Behavior::Endless(16 * 1024));
    let yaml = format!("dispatch: {dispatch}\nproviders:\n{}", provider("p", &m.base_url(), &["k"], &["m"]));
    (m.clone(), start(&yaml).await)
}

/// Waits until `check` holds, up to `within`.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A metric's value in the `/metrics` text (0 when absent).
async fn metric(gw: &TestGateway, prefix: &str) -> f64 {
    let text = gw.get("/metrics", &[]).await.text();
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_is_cut_and_the_upstream_released() {
    let (m, gw) = endless("{ stream_idle_timeout: 400ms }").await;
    // A client with a tiny receive buffer that reads the head, then nothing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(gw.addr).await.unwrap();
    let body = chat_body("p/m", true);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let n = conn.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));
    assert!(eventually(Duration::from_secs(2), || m.open_streams() == 1).await, "the stream never started");

    assert!(
        eventually(Duration::from_secs(10), || m.open_streams() == 0).await,
        "the upstream stream is still held for a client that stopped reading"
    );
    assert_eq!(metric(&gw, "freeway_streams_cut_total{reason=\"client_stalled\"}").await, 1.0);
    assert_eq!(metric(&gw, "freeway_streams_active").await, 0.0);
    assert_eq!(metric(&gw, "freeway_stream_failures_total").await, 0.0, "a stalled client is not an upstream failure");
    drop(conn);
}

#[tokio::test]
async fn http2_streams_with_a_closed_window_are_cut_and_the_gateway_keeps_serving() {
    let (m, gw) = endless("{ stream_idle_timeout: 400ms }").await;
    // One HTTP/2 connection whose stream windows are tiny and never
    // reopened: the client holds the bodies without reading them.
    let client = h2_client(Some(1024));
    let mut held = Vec::new();
    for _ in 0..8 {
        let response = client.request(stream_request(&gw, "p/m")).await.unwrap();
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    assert_eq!(m.chats().len(), 8, "every stream reached the upstream");
    assert!(
        eventually(Duration::from_secs(10), || m.open_streams() == 0).await,
        "{} upstream streams still held for clients that stopped reading",
        m.open_streams()
    );
    assert_eq!(metric(&gw, "freeway_streams_cut_total{reason=\"client_stalled\"}").await, 8.0);
    // Everything was released: other requests go on as usual.
    m.on_all(Behavior::Ok);
    assert_eq!(gw.chat("p/m").await.status, 200);
    drop(held);
}

#[tokio::test]
async fn a_stream_that_runs_past_its_max_duration_ends_with_an_error_event() {
    let (m, gw) = endless("{ stream_idle_timeout: 400ms, stream_max_duration: 1s }").await;
    let started = Instant::now();
    let response =
        crate::support::gateway::send(&gw.url("/v1/chat/completions"), "POST", &chat_body("p/m", true), &[]).await;
    assert_eq!(response.status(), 200);
    // A client that reads everything, as fast as it comes.
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the stream never ended")
        .unwrap()
        .to_bytes();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    let text = String::from_utf8_lossy(&body);
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("stream_max_duration"), "{last}");
    assert!(!text.contains("[DONE]"));
    assert!(eventually(Duration::from_secs(2), || m.open_streams() == 0).await);
    assert_eq!(metric(&gw, "freeway_streams_cut_total{reason=\"max_duration\"}").await, 1.0);
}

#[tokio::test]
async fn a_cut_stream_gives_back_its_place_in_flight_while_its_client_holds_on() {
    let m = Mock::start().await;
    m.on_all(Behavior::Endless(16 * 1024));
    let yaml = format!(
        "server: {{ max_in_flight: 4 }}\ndispatch: {{ stream_idle_timeout: 400ms }}\nproviders:\n{}",
        provider("p", &m.base_url(), &["k"], &["m"])
    );
    let gw = start(&yaml).await;
    let client = h2_client(Some(1024));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(client.request(stream_request(&gw, "p/m")).await.unwrap());
    }
    assert_eq!(gw.chat("p/m").await.status, 503, "four streams fill the four places");
    assert!(eventually(Duration::from_secs(10), || m.open_streams() == 0).await, "the streams were not cut");
    // The client still holds its four cut streams; their places are free.
    m.on_all(Behavior::Ok);
    assert_eq!(gw.chat("p/m").await.status, 200);
    drop(held);
}
