//! The HTTP surface: authentication, limits, malformed requests, unknown
//! models, the small endpoints, slow clients, HTTP/2 and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use freeway::{Catalog, Env};

use crate::support::gateway::{chat_body, next_frame, provider, sse_events, start, start_on_threads, start_with};
use crate::support::mock::{Behavior, Mock};

async fn one(extra: &str) -> (Mock, crate::support::gateway::TestGateway) {
    let m = Mock::start().await;
    let yaml = format!("{extra}\nproviders:\n{}", provider("p", &m.base_url(), &["upstream-secret-key-123"], &["m"]));
    (m.clone(), start(&yaml).await)
}

#[tokio::test]
async fn tokens_are_required_on_v1_but_not_on_health_or_metrics() {
    let (_m, gw) = one("server: { api_keys: [client-token-0123456789] }").await;
    let none = gw.post("/v1/chat/completions", &chat_body("p/m", false), &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["type"], "authentication_error");
    let wrong = gw.post("/v1/chat/completions", &chat_body("p/m", false), &[("authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status, 401);
    let models = gw.get("/v1/models", &[]).await;
    assert_eq!(models.status, 401);
    let right = gw
        .post("/v1/chat/completions", &chat_body("p/m", false), &[("authorization", "Bearer client-token-0123456789")])
        .await;
    assert_eq!(right.status, 200);
    assert_eq!(gw.get("/health", &[]).await.status, 200);
    assert_eq!(gw.get("/metrics", &[]).await.status, 200);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let (m, gw) = one("server: { max_body_bytes: 1024 }").await;
    let big = chat_body("p/m", false).replace("hello", &"x".repeat(4096));
    let answer = gw.post("/v1/chat/completions", &big, &[]).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["error"]["code"], "request_too_large");
    assert_eq!(m.seen().len(), 0);

    // Without a Content-Length (chunked), the limit holds while reading.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let chunk = "x".repeat(3000);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test]
async fn malformed_requests_say_what_is_wrong() {
    let (m, gw) = one("").await;
    for (body, expect) in [
        ("{not json", "not valid JSON"),
        (r#"{"messages":[{"role":"user","content":"x"}]}"#, "missing `model`"),
        (r#"{"model":"p/m"}"#, "missing `messages`"),
        (r#"{"model":"p/m","messages":[{"content":"x"}]}"#, "no `role`"),
        (r#"{"model":"p/m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "`stream`"),
        // A number no JSON reader can hold: the client's mistake, not a 502
        // from every plugin refusing it.
        (r#"{"model":"p/m","messages":[{"role":"user","content":"x"}],"temperature":1e400}"#, "number out of range"),
        (r#"{"model":"p/m","messages":[{"role":"user","role":1}]}"#, "no `role`"),
    ] {
        let answer = gw.post("/v1/chat/completions", body, &[]).await;
        assert_eq!(answer.status, 400, "{body}");
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["message"].as_str().unwrap().contains(expect), "{body}: {error}");
    }
    assert_eq!(m.seen().len(), 0);
}

#[tokio::test]
async fn an_unknown_model_is_a_404_with_the_nearest_names() {
    let m = Mock::start().await;
    let yaml = format!(
        "providers:\n{}routes:\n  chat-free:\n    targets: [p/llama-3.3-70b]\n",
        provider("p", &m.base_url(), &["k"], &["llama-3.3-70b"])
    );
    let gw = start(&yaml).await;
    let answer = gw.chat("chat-fre").await;
    assert_eq!(answer.status, 404);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "model_not_found");
    assert!(error["message"].as_str().unwrap().contains("`chat-free`"), "{error}");
    let by_suffix = gw.chat("llama-3.3-70").await;
    assert!(by_suffix.json()["error"]["message"].as_str().unwrap().contains("p/llama-3.3-70b"));
}

#[tokio::test]
async fn with_no_provider_every_request_says_which_variables_to_set() {
    let gw =
        start_with("", Catalog::builtin(&Env::default()).unwrap(), Env::from_map(Vec::<(String, String)>::new())).await;
    let answer = gw.chat("chat-free").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    let message = answer.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("GROQ_API_KEY"), "{message}");
    let any = gw.chat("some-model").await;
    assert_eq!(any.status, 503);
    assert!(any.json()["error"]["message"].as_str().unwrap().contains("OPENROUTER_API_KEY"));
    let health = gw.get("/health", &[]).await.json();
    assert!(health["hint"].as_str().unwrap().contains("GEMINI_API_KEY"));
}

#[tokio::test]
async fn free_and_auto_with_no_provider_say_which_variables_to_set() {
    // The built-in policies on, as `serve` runs them.
    let gw = start_with(
        "policies: { settings: {} }",
        Catalog::builtin(&Env::default()).unwrap(),
        Env::from_map(Vec::<(String, String)>::new()),
    )
    .await;
    for model in ["free", "auto", "auto:large"] {
        let answer = gw.chat(model).await;
        assert_eq!(answer.status, 503, "{model}: {}", answer.text());
        let message = answer.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("GROQ_API_KEY") && message.contains("OPENROUTER_API_KEY"), "{model}: {message}");
    }
}

#[tokio::test]
async fn a_catalog_provider_is_enabled_by_its_key_variable() {
    let m = Mock::start().await;
    // Point the catalog's groq at the mock; its key comes from GROQ_API_KEY.
    let yaml = format!("providers:\n  groq:\n    base_url: {}\n", m.base_url());
    let env = Env::from_map([("GROQ_API_KEY", "gsk-one,gsk-two")]);
    let catalog = Catalog::builtin(&env).unwrap();
    let gw = start_with(&yaml, catalog, env).await;
    let answer = gw.chat("chat-free").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.routed_via().starts_with("groq/"));
    gw.chat("chat-free").await;
    let keys: Vec<_> = m.seen().iter().map(|s| s.key.clone().unwrap()).collect();
    assert_eq!(keys, ["gsk-one", "gsk-two"], "comma-separated keys are used in turn");
}

#[tokio::test]
async fn models_lists_routes_and_provider_models() {
    let m = Mock::start().await;
    let yaml = format!(
        "providers:\n{}routes:\n  mine:\n    targets: [p/a]\n",
        provider("p", &m.base_url(), &["k"], &["a", "b"])
    );
    let gw = start(&yaml).await;
    let models = gw.get("/v1/models", &[]).await.json();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["mine", "p/a", "p/b"]);
}

#[tokio::test]
async fn metrics_count_requests_attempts_and_fallbacks() {
    let a = Mock::start().await;
    let yaml = format!(
        "providers:\n{}routes:\n  r:\n    targets: [p/x, p/y]\n",
        provider("p", &a.base_url(), &["k"], &["x", "y"])
    );
    let gw = start(&yaml).await;
    a.on_model("x", Behavior::status(503));
    assert_eq!(gw.chat("r").await.status, 200);
    let text = gw.get("/metrics", &[]).await.text();
    for expected in [
        "freeway_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
        "freeway_upstream_attempts_total{provider=\"p\",model=\"x\",outcome=\"upstream_error\"} 1",
        "freeway_upstream_attempts_total{provider=\"p\",model=\"y\",outcome=\"ok\"} 1",
        "freeway_fallbacks_total{reason=\"upstream_error\"} 1",
        "freeway_tokens_total{provider=\"p\",model=\"y\",kind=\"prompt\"} 7",
        "freeway_cooldowns_active 0",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[tokio::test]
async fn cooldowns_in_force_show_in_metrics() {
    let (m, gw) = one("").await;
    m.on_all(Behavior::rate_limited("60"));
    assert_eq!(gw.chat("p/m").await.status, 429);
    assert!(gw.get("/metrics", &[]).await.text().contains("freeway_cooldowns_active 1"));
}

#[tokio::test]
async fn upstream_keys_never_reach_the_client() {
    let (m, gw) = one("").await;
    // A 5xx, whose reason quotes the upstream's message (a 401's does not).
    m.on_all(Behavior::Status {
        status: 500,
        retry_after: None,
        body: r#"{"error":{"message":"Incorrect API key provided: upstream-secret-key-123"}}"#.into(),
    });
    let answer = gw.chat("p/m").await;
    assert_eq!(answer.status, 502);
    assert!(answer.text().contains("Incorrect API key provided: ***"), "{}", answer.text());
    assert!(!answer.text().contains("upstream-secret-key-123"), "{}", answer.text());
    for (_, v) in answer.headers.iter() {
        assert!(!v.to_str().unwrap_or("").contains("upstream-secret-key-123"));
    }
}

#[tokio::test]
async fn upstream_400_bodies_are_redacted_too() {
    let (m, gw) = one("").await;
    m.on_all(Behavior::Status {
        status: 400,
        retry_after: None,
        body: r#"{"error":{"message":"bad request for key upstream-secret-key-123"}}"#.into(),
    });
    let answer = gw.chat("p/m").await;
    assert_eq!(answer.status, 400);
    assert!(!answer.text().contains("upstream-secret-key-123"), "{}", answer.text());
}

#[tokio::test]
async fn wrong_methods_and_unknown_paths_get_openai_errors() {
    let (_m, gw) = one("").await;
    let get = gw.get("/v1/chat/completions", &[]).await;
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), "POST");
    let unknown = gw.get("/v1/nothing", &[]).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "unknown_endpoint");
}

#[tokio::test]
async fn a_slow_client_cannot_hold_a_connection() {
    let (_m, gw) = one("server: { header_read_timeout: 300ms }").await;
    // Half a request line, then nothing.
    let mut partial = TcpStream::connect(gw.addr).await.unwrap();
    partial.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    for (name, stream) in [("partial", &mut partial), ("silent", &mut silent)] {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(_)) | Ok(Err(_)) => {} // closed (0 bytes, a 408 then close, or reset)
            Err(_) => panic!("{name} connection still open after 3s"),
        }
    }
}

#[tokio::test]
async fn http2_cleartext_is_served_on_the_same_port() {
    let (_m, gw) = one("").await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let request = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body("p/m", false))))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-routed-via"], "p/m");
}

#[tokio::test]
async fn graceful_shutdown_lets_a_stream_in_flight_finish() {
    let (m, mut gw) = one("").await;
    let gate = Arc::new(Semaphore::new(0));
    m.on_all(Behavior::Gated(gate.clone()));
    let response = gw.stream("p/m").await;
    let mut body = response.into_body();
    let first = next_frame(&mut body, Duration::from_secs(5)).await.unwrap();
    assert!(String::from_utf8_lossy(&first).contains("part0"));

    let server = gw.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once shutting down.
    assert!(TcpStream::connect(gw.addr).await.is_err(), "still accepting after shutdown began");
    assert!(!server.is_finished(), "the server stopped with a stream in flight");

    gate.add_permits(1);
    let rest = body.collect().await.expect("the stream was cut by shutdown").to_bytes();
    let events = sse_events(&String::from_utf8_lossy(&rest));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("server did not stop").unwrap().unwrap();
}

#[tokio::test]
async fn on_worker_threads_streams_on_each_run_and_a_shutdown_lets_them_finish() {
    let m = Mock::start().await;
    let yaml = format!("providers:\n{}", provider("p", &m.base_url(), &["k"], &["m"]));
    let mut gw = start_on_threads(&yaml, 2).await;
    let gate = Arc::new(Semaphore::new(0));
    m.on_all(Behavior::Gated(gate.clone()));
    // Two connections at once: one on each thread.
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let mut body = gw.stream("p/m").await.into_body();
        let first = next_frame(&mut body, Duration::from_secs(5)).await.unwrap();
        assert!(String::from_utf8_lossy(&first).contains("part0"));
        bodies.push(body);
    }
    // A third connection, served while the first two are held.
    assert_eq!(gw.get("/health", &[]).await.status, 200);

    let server = gw.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(gw.addr).await.is_err(), "still accepting after shutdown began");
    assert!(!server.is_finished(), "the server stopped with streams in flight");
    gate.add_permits(2);
    for body in bodies {
        let rest = body.collect().await.expect("a stream was cut by shutdown").to_bytes();
        let events = sse_events(&String::from_utf8_lossy(&rest));
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("server did not stop").unwrap().unwrap();
}

#[tokio::test]
async fn on_worker_threads_busy_polling_answers_wakes_for_a_slow_reply_and_shuts_down() {
    let m = Mock::start().await;
    let yaml = format!("server: {{ busy_poll: 2ms }}\nproviders:\n{}", provider("p", &m.base_url(), &["k"], &["m"]));
    let mut gw = start_on_threads(&yaml, 2).await;
    for _ in 0..20 {
        let answer = gw.chat("p/m").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // A reply that comes long after the window closed: the worker went
    // back to sleep, and is woken by it.
    let gate = Arc::new(Semaphore::new(0));
    m.on_all(Behavior::Gated(gate.clone()));
    let mut body = gw.stream("p/m").await.into_body();
    let first = next_frame(&mut body, Duration::from_secs(5)).await.unwrap();
    assert!(String::from_utf8_lossy(&first).contains("part0"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.add_permits(1);
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the rest of the stream never came")
        .expect("the stream broke")
        .to_bytes();
    assert_eq!(sse_events(&String::from_utf8_lossy(&rest)).last().map(String::as_str), Some("[DONE]"));
    let server = gw.shutdown();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("server did not stop").unwrap().unwrap();
}

#[tokio::test]
async fn on_worker_threads_a_shutdown_is_bounded_when_a_stream_never_ends() {
    let m = Mock::start().await;
    let yaml =
        format!("server: {{ shutdown_timeout: 500ms }}\nproviders:\n{}", provider("p", &m.base_url(), &["k"], &["m"]));
    let mut gw = start_on_threads(&yaml, 3).await;
    m.on_all(Behavior::StallAfterFirst);
    let mut body = gw.stream("p/m").await.into_body();
    next_frame(&mut body, Duration::from_secs(5)).await.unwrap();
    let server = gw.shutdown();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("shutdown was not bounded").unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_is_bounded_when_a_stream_never_ends() {
    let (m, mut gw) = one("server: { shutdown_timeout: 500ms }").await;
    m.on_all(Behavior::StallAfterFirst);
    let response = gw.stream("p/m").await;
    let mut body = response.into_body();
    next_frame(&mut body, Duration::from_secs(5)).await.unwrap();
    let server = gw.shutdown();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("shutdown was not bounded").unwrap().unwrap();
}

#[tokio::test]
async fn health_reports_providers() {
    let (_m, gw) = one("").await;
    let health = gw.get("/health", &[]).await;
    assert_eq!(health.status, 200);
    let v = health.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["providers"]["enabled"][0], "p");
}

#[tokio::test]
async fn a_local_provider_is_used_when_it_answers_and_lists_its_models() {
    let local = Mock::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let catalog_yaml = format!(
        "providers:\n  ollama:\n    plugin: openai-compat\n    base_url: {}\n    key_env: []\n    local: true\n    models: []\n  gone:\n    plugin: openai-compat\n    base_url: http://{dead}/v1\n    key_env: []\n    local: true\n    models: []\n",
        local.base_url()
    );
    let env = Env::from_map(Vec::<(String, String)>::new());
    let catalog = Catalog::from_yaml(&catalog_yaml, "test catalog", &env).unwrap();
    let gw = start_with("", catalog, env).await;
    let health = gw.get("/health", &[]).await.json();
    assert_eq!(health["providers"]["enabled"], serde_json::json!(["ollama"]), "{health}");
    // The model its /models listed is routable, by pair and by bare id.
    let answer = gw.chat("listed-model").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "ollama/listed-model");
    assert_eq!(local.seen().last().unwrap().key, None, "a local provider gets no key");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_m, gw) = one("server: { header_read_timeout: 300ms }").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now idle: the connection must not stay open for ever.
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("idle keep-alive connection still open after {:?}", started.elapsed()),
        }
    }
}
