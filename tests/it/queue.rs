//! The admission queue: a request that finds no capacity, where some frees
//! before `dispatch.queue_timeout`, waits in line and is served, first come
//! first served; past the timeout it gets the 429 with `Retry-After`; a
//! client that leaves, leaves the line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::gateway::{Answer, TestGateway, chat_body, provider, send, sse_events, start};
use crate::support::mock::{Behavior, Mock, Reply, completion};

/// One provider `a` serving model `m`, with `dispatch` settings.
async fn gateway(mock: &Mock, dispatch: &str) -> TestGateway {
    start(&format!("providers:\n{}dispatch:\n{dispatch}", provider("a", &mock.base_url(), &["ka"], &["m"]))).await
}

/// A chat body for `a/m` whose user message is `text` (to tell requests apart upstream).
fn body(text: &str) -> String {
    json!({"model": "a/m", "messages": [{"role": "user", "content": text}]}).to_string()
}

#[tokio::test]
async fn a_request_waits_for_capacity_that_frees_before_its_timeout() {
    let mock = Mock::start().await;
    mock.once_model("m", Behavior::rate_limited("2"));
    let gw = gateway(&mock, "  queue_timeout: 5s\n").await;
    let started = Instant::now();
    let answer = gw.chat("a/m").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(started.elapsed() >= Duration::from_millis(1500), "served before the cooldown ended");
    assert_eq!(mock.chats().len(), 2);
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(metrics.contains("freeway_queue_outcomes_total{outcome=\"served\"} 1"), "{metrics}");
    assert!(metrics.contains("freeway_queue_waiting 0"), "{metrics}");
}

#[tokio::test]
async fn a_stream_waits_in_line_too() {
    let mock = Mock::start().await;
    mock.once_model("m", Behavior::rate_limited("1"));
    let gw = gateway(&mock, "  queue_timeout: 5s\n").await;
    let answer = Answer::read(gw.stream("a/m").await).await;
    assert_eq!(answer.status, 200);
    assert_eq!(sse_events(&answer.text()).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn capacity_further_away_than_the_timeout_is_a_429_at_once() {
    let mock = Mock::start().await;
    mock.on_model("m", Behavior::rate_limited("30"));
    let gw = gateway(&mock, "  queue_timeout: 2s\n").await;
    let started = Instant::now();
    let answer = gw.chat("a/m").await;
    assert_eq!(answer.status, 429);
    assert!(started.elapsed() < Duration::from_secs(1), "waited for capacity it could never get in time");
    let retry: u64 = answer.header("retry-after").parse().unwrap();
    assert!((29..=30).contains(&retry));
}

#[tokio::test]
async fn with_the_queue_off_a_429_comes_at_once() {
    let mock = Mock::start().await;
    mock.once_model("m", Behavior::rate_limited("2"));
    let gw = gateway(&mock, "  queue_timeout: 0s\n").await;
    let answer = gw.chat("a/m").await;
    assert_eq!(answer.status, 429);
    assert_eq!(mock.chats().len(), 1);
}

/// An upstream that serves one request a second and answers the rest
/// 429 `Retry-After: 1`: capacity frees one place at a time.
/// Each served request's user message goes to `served`, in order.
fn one_a_second(served: Arc<Mutex<Vec<String>>>) -> Behavior {
    let last: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    Behavior::Custom(Arc::new(move |seen| {
        let mut last = last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(1000)) {
            return Reply {
                status: 429,
                headers: vec![("content-type".into(), "application/json".into()), ("retry-after".into(), "1".into())],
                pieces: vec![json!({"error": {"message": "one a second"}}).to_string()],
            };
        }
        *last = Some(Instant::now());
        served.lock().unwrap().push(seen.body["messages"][0]["content"].as_str().unwrap_or_default().to_owned());
        Reply::json(200, completion(&seen.model))
    }))
}

#[tokio::test]
async fn waiting_requests_are_served_first_come_first_served() {
    let mock = Mock::start().await;
    let served = Arc::new(Mutex::new(Vec::new()));
    mock.on_model("m", one_a_second(served.clone()));
    let gw = gateway(&mock, "  queue_timeout: 20s\n").await;
    let url = gw.url("/v1/chat/completions");
    // They arrive in order while the upstream has room for one a second.
    let mut waiting = Vec::new();
    for i in 0..5 {
        let (url, text) = (url.clone(), format!("request {i}"));
        waiting.push(tokio::spawn(async move { Answer::read(send(&url, "POST", &body(&text), &[]).await).await }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for w in waiting {
        assert_eq!(w.await.unwrap().status, 200);
    }
    let expected: Vec<String> = (0..5).map(|i| format!("request {i}")).collect();
    assert_eq!(*served.lock().unwrap(), expected, "served out of their arrival order");
}

#[tokio::test]
async fn a_client_that_leaves_leaves_the_line() {
    let mock = Mock::start().await;
    mock.on_model("m", Behavior::rate_limited("3"));
    let gw = gateway(&mock, "  queue_timeout: 10s\n").await;
    let url = gw.url("/v1/chat/completions");
    let gone =
        tokio::time::timeout(Duration::from_millis(500), send(&url, "POST", &chat_body("a/m", false), &[])).await;
    assert!(gone.is_err(), "the request was answered instead of waiting");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = gw.get("/metrics", &[]).await.text();
        if metrics.contains("freeway_queue_outcomes_total{outcome=\"gone\"} 1") {
            assert!(metrics.contains("freeway_queue_waiting 0"), "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "the departed client still holds its place: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_full_line_answers_429_at_once() {
    let mock = Mock::start().await;
    mock.on_model("m", Behavior::rate_limited("3"));
    let gw = gateway(&mock, "  queue_timeout: 10s\n  queue_max: 1\n").await;
    let url = gw.url("/v1/chat/completions");
    let first =
        tokio::spawn(async move { Answer::read(send(&url, "POST", &chat_body("a/m", false), &[]).await).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let second = gw.chat("a/m").await;
    assert_eq!(second.status, 429);
    assert!(started.elapsed() < Duration::from_secs(1), "waited in a full line");
    first.abort();
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(metrics.contains("freeway_queue_outcomes_total{outcome=\"full\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_newcomer_goes_behind_those_already_waiting_even_when_it_could_be_served() {
    let mock = Mock::start().await;
    let served = Arc::new(Mutex::new(Vec::new()));
    let log = served.clone();
    // The first call is refused for 2 s; every later one is served.
    let refused = Arc::new(Mutex::new(false));
    mock.on_model(
        "m",
        Behavior::Custom(Arc::new(move |seen| {
            let mut was = refused.lock().unwrap();
            if !*was {
                *was = true;
                return Reply {
                    status: 429,
                    headers: vec![("retry-after".into(), "2".into())],
                    pieces: vec![json!({"error": {"message": "later"}}).to_string()],
                };
            }
            log.lock().unwrap().push(seen.body["messages"][0]["content"].as_str().unwrap_or_default().to_owned());
            Reply::json(200, completion(&seen.model))
        })),
    );
    let gw = gateway(&mock, "  queue_timeout: 10s\n").await;
    let url = gw.url("/v1/chat/completions");
    let first = tokio::spawn({
        let url = url.clone();
        async move { Answer::read(send(&url, "POST", &body("first"), &[]).await).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The operator ends the cooldown: capacity is there, but `first` still
    // sleeps until the time it was told.
    let reset = gw.post("/admin/api/cooldowns/reset", &json!({"provider": "a"}).to_string(), &[]).await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    let second = Answer::read(send(&url, "POST", &body("second"), &[]).await).await;
    assert_eq!(second.status, 200);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(*served.lock().unwrap(), ["first", "second"], "the newcomer jumped the line");
}

#[tokio::test]
async fn a_stopping_gateway_answers_its_waiting_requests_at_once() {
    let mock = Mock::start().await;
    mock.on_model("m", Behavior::rate_limited("6"));
    let mut gw = gateway(&mock, "  queue_timeout: 10s\n").await;
    let url = gw.url("/v1/chat/completions");
    let waiting =
        tokio::spawn(async move { Answer::read(send(&url, "POST", &chat_body("a/m", false), &[]).await).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    let server = gw.shutdown();
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert!(answer.header("retry-after").parse::<u64>().unwrap() <= 6);
    assert!(stopping.elapsed() < Duration::from_secs(2), "the shutdown waited for the queue: {:?}", stopping.elapsed());
    server.await.unwrap().unwrap();
}
