//! Tool-call repair (issue 9): a tool call with damaged but mendable
//! arguments, or a tool name in another case, reaches the client mended
//! (and counted); one that cannot be mended fails its attempt, which falls
//! back to the next candidate. Whole answers, and streams in every dialect:
//! a streamed call is held until it is complete, and what has not reached
//! the client can still fall back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::support::gateway::{Answer, TestGateway, named_events, next_frame, provider, send, start};
use crate::support::mock::{Behavior, Mock, MockBody, Reply};

/// A chat answer calling `name` with `arguments` (as text).
fn calling(name: &str, arguments: &str) -> Behavior {
    let body = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})
    .to_string();
    Behavior::Custom(Arc::new(move |_| Reply::json(200, body.clone())))
}

fn request(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "write a.txt"}],
        "tools": [{"type": "function", "function": {"name": "write_file", "parameters": {"type": "object"}}}]})
    .to_string()
}

#[tokio::test]
async fn a_damaged_tool_call_is_mended_and_counted() {
    let mock = Mock::start().await;
    mock.on_model("m", calling("Write_File", "```json\n{\"path\": \"a.txt\", \"content\": \"hi\",}\n```"));
    let gw = start(&format!("providers:\n{}", provider("a", &mock.base_url(), &["k"], &["m"]))).await;
    let answer = gw.post("/v1/chat/completions", &request("a/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let function = &answer.json()["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(function["name"], "write_file");
    let arguments: Value = serde_json::from_str(function["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"path": "a.txt", "content": "hi"}));
    let metrics = gw.get("/metrics", &[]).await.text();
    for kind in ["fence", "trailing_comma", "name_case"] {
        assert!(
            metrics.contains(&format!("freeway_tool_call_repairs_total{{kind=\"{kind}\"}} 1")),
            "{kind}:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_tool_call_that_cannot_be_mended_falls_back_to_the_next_candidate() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.on_model("m", calling("write_file", "{\"path\": \"a.txt\", \"content\": \"half a fi"));
    b.on_model("n", calling("write_file", "{\"path\": \"a.txt\", \"content\": \"hi\"}"));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    let answer = gw.post("/v1/chat/completions", &request("r"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "b/n", "a call cut inside a string reached the client");
    assert_eq!(answer.fallback_attempts(), 1);
    let only_a = gw.post("/v1/chat/completions", &request("a/m"), &[]).await;
    assert_eq!(only_a.status, 502, "{}", only_a.text());
    assert!(only_a.text().contains("not valid JSON"), "{}", only_a.text());
}

/// A streamed chat answer as an upstream sends it: a role chunk, then
/// `deltas` (each a chunk's delta), the finish, usage and `[DONE]`.
fn streamed(deltas: Vec<Value>) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut pieces = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    pieces.extend(deltas.into_iter().map(|d| chunk(d, Value::Null)));
    pieces.push(chunk(json!({}), json!("tool_calls")));
    let usage = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}});
    pieces.push(format!("data: {usage}\n\n"));
    pieces.push("data: [DONE]\n\n".to_owned());
    pieces
}

/// A delta with a piece of tool call `id` (its first piece carries the id
/// and `name`).
fn call_piece(id: &str, name: Option<&str>, arguments: &str) -> Value {
    let mut piece = json!({"index": 0, "function": {"arguments": arguments}});
    if let Some(name) = name {
        piece["id"] = json!(id);
        piece["type"] = json!("function");
        piece["function"]["name"] = json!(name);
    }
    json!({"tool_calls": [piece]})
}

/// A stream calling `name` (call `id`) with `arguments`, sent in two
/// pieces.
fn streaming_call(id: &str, name: &str, arguments: &str) -> Vec<String> {
    let (a, b) = arguments.split_at(arguments.len() / 2);
    streamed(vec![call_piece(id, Some(name), a), call_piece(id, None, b)])
}

fn sse(pieces: Vec<String>) -> Behavior {
    Behavior::Custom(Arc::new(move |_| Reply::sse(pieces.clone())))
}

fn streamed_request(model: &str) -> String {
    let mut body: Value = serde_json::from_str(&request(model)).unwrap();
    body["stream"] = json!(true);
    body.to_string()
}

/// The tool calls a chat client assembles from a stream's chunks: (id,
/// name, arguments) by index.
fn assembled(events: &[String]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        let pieces = chunk["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default();
        for piece in pieces {
            let index = piece["index"].as_u64().unwrap() as usize;
            if calls.len() <= index {
                calls.resize(index + 1, Default::default());
            }
            let call = &mut calls[index];
            call.0.push_str(piece["id"].as_str().unwrap_or_default());
            call.1.push_str(piece["function"]["name"].as_str().unwrap_or_default());
            call.2.push_str(piece["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    calls
}

fn counted(metrics: &str, kind: &str) -> bool {
    metrics.contains(&format!("freeway_tool_call_repairs_total{{kind=\"{kind}\"}} 1"))
}

/// Two candidates, `a/m` then `b/n`, behind the route `r`.
async fn two(a: &Mock, b: &Mock) -> TestGateway {
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    start(&yaml).await
}

#[tokio::test]
async fn a_streamed_call_with_truncated_arguments_reaches_a_chat_client_mended_and_counted() {
    let mock = Mock::start().await;
    mock.on_model("m", sse(streaming_call("call_1", "write_file", r#"{"path": "a.txt", "content": "hi""#)));
    let gw = start(&format!("providers:\n{}", provider("a", &mock.base_url(), &["k"], &["m"]))).await;
    let answer = gw.post("/v1/chat/completions", &streamed_request("a/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let calls = assembled(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!((calls[0].0.as_str(), calls[0].1.as_str()), ("call_1", "write_file"));
    let arguments: Value = serde_json::from_str(&calls[0].2).unwrap_or_else(|e| panic!("{e}: {events:?}"));
    assert_eq!(arguments, json!({"path": "a.txt", "content": "hi"}));
    let finish = events.iter().filter_map(|e| serde_json::from_str::<Value>(e).ok());
    assert!(finish.clone().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"), "{events:?}");
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(counted(&metrics, "truncated"), "{metrics}");
    assert!(metrics.contains("freeway_tokens_total"), "usage still settles: {metrics}");
}

#[tokio::test]
async fn a_streamed_tool_name_in_the_wrong_case_is_fixed() {
    let mock = Mock::start().await;
    mock.on_model("m", sse(streaming_call("call_1", "WRITE_FILE", r#"{"path": "a.txt"}"#)));
    let gw = start(&format!("providers:\n{}", provider("a", &mock.base_url(), &["k"], &["m"]))).await;
    let answer = gw.post("/v1/chat/completions", &streamed_request("a/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let calls = assembled(&answer.events());
    assert_eq!(calls[0].1, "write_file", "{:?}", answer.events());
    assert_eq!(serde_json::from_str::<Value>(&calls[0].2).unwrap(), json!({"path": "a.txt"}));
    assert!(counted(&gw.get("/metrics", &[]).await.text(), "name_case"));
}

#[tokio::test]
async fn a_streamed_call_that_cannot_be_mended_falls_back_to_the_second_candidate() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.on_model("m", sse(streaming_call("call_a", "write_file", r#"{"path": "a.txt", "content": "half a fi"#)));
    b.on_model("n", sse(streaming_call("call_b", "write_file", r#"{"path": "a.txt", "content": "hi"}"#)));
    let gw = two(&a, &b).await;
    let answer = gw.post("/v1/chat/completions", &streamed_request("r"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "b/n", "a call cut inside a string reached the client: {}", answer.text());
    assert_eq!(answer.fallback_attempts(), 1);
    assert!(!answer.text().contains("call_a"), "nothing of the first candidate's stream: {}", answer.text());
    let calls = assembled(&answer.events());
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "call_b");
    assert_eq!(serde_json::from_str::<Value>(&calls[0].2).unwrap(), json!({"path": "a.txt", "content": "hi"}));
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(metrics.contains("reason=\"bad_tool_call\""), "{metrics}");
}

#[tokio::test]
async fn text_then_a_broken_call_ends_the_stream_with_an_error_event_and_no_call() {
    let mock = Mock::start().await;
    let broken = streamed(vec![
        json!({"content": "Writing it now."}),
        call_piece("call_1", Some("write_file"), r#"{"path": "a.txt", "#),
        call_piece("call_1", None, r#""content": "half a fi"#),
    ]);
    mock.on_model("m", sse(broken));
    let gw = start(&format!("providers:\n{}", provider("a", &mock.base_url(), &["k"], &["m"]))).await;
    let answer = gw.post("/v1/chat/completions", &streamed_request("a/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.events();
    assert!(events.iter().any(|e| e.contains("Writing it now.")), "the text went out first: {events:?}");
    assert!(!answer.text().contains("tool_calls"), "no piece of the broken call: {events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"]["message"].as_str().is_some_and(|m| m.contains("not valid JSON")), "{events:?}");
    assert!(!events.contains(&"[DONE]".to_owned()), "{events:?}");
}

#[tokio::test]
async fn a_valid_streamed_call_is_held_until_complete_then_passes_byte_identical() {
    // The same upstream stream, to a request without tools (relayed as it
    // comes) and to one with tools (held): the client gets the same bytes,
    // but the second only once the call is complete.
    let gate = Arc::new(Semaphore::new(0));
    let whole = streaming_call("call_1", "write_file", r#"{"path": "a.txt", "content": "hi"}"#);
    let (before, after) = whole.split_at(3);
    let upstream = gated(before.to_vec(), gate.clone(), after.to_vec()).await;
    let gw = start(&format!("providers:\n{}", provider("a", &upstream, &["k"], &["m"]))).await;
    let mut plain: Value = serde_json::from_str(&streamed_request("a/m")).unwrap();
    plain.as_object_mut().unwrap().remove("tools");
    gate.add_permits(1);
    let relayed = gw.post("/v1/chat/completions", &plain.to_string(), &[]).await;
    assert_eq!(relayed.status, 200, "{}", relayed.text());
    assert!(relayed.text().contains("tool_calls"), "{}", relayed.text());

    let asked = tokio::spawn({
        let url = gw.url("/v1/chat/completions");
        async move {
            let response = send(&url, "POST", &streamed_request("a/m"), &[]).await;
            let (parts, mut body) = response.into_parts();
            let first = next_frame(&mut body, Duration::from_secs(10)).await;
            (parts.status, first, Instant::now(), body)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opened = Instant::now();
    gate.add_permits(1);
    let (status, first, at, mut body) = asked.await.unwrap();
    assert_eq!(status, 200);
    assert!(at >= opened, "the stream began before its call was complete: {first:?}");
    let mut held = first.unwrap().to_vec();
    while let Some(frame) = body.frame().await {
        held.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(String::from_utf8(held).unwrap(), relayed.text(), "the held stream went out as it came");
    assert!(!gw.get("/metrics", &[]).await.text().contains("freeway_tool_call_repairs_total{"));
}

/// An OpenAI-compatible upstream answering every request with `before`,
/// then, once `gate` gives a permit, `after` (each a piece of SSE); its
/// base URL.
async fn gated(before: Vec<String>, gate: Arc<Semaphore>, after: Vec<String>) -> String {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (before, after, gate) = (before.clone(), after.clone(), gate.clone());
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (before, after, gate) = (before.clone(), after.clone(), gate.clone());
                async move {
                    if request.uri().path().ends_with("/models") {
                        let list = json!({"object": "list", "data": [{"id": "m", "object": "model"}]}).to_string();
                        let mut response = http::Response::new(MockBody::Full(Some(Bytes::from(list))));
                        response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                        return Ok::<_, std::convert::Infallible>(response);
                    }
                    let (tx, rx) = tokio::sync::mpsc::channel(16);
                    tokio::spawn(async move {
                        for piece in before {
                            let _ = tx.send(Ok(Frame::data(Bytes::from(piece)))).await;
                        }
                        let Ok(permit) = gate.acquire().await else { return };
                        permit.forget();
                        for piece in after {
                            let _ = tx.send(Ok(Frame::data(Bytes::from(piece)))).await;
                        }
                    });
                    let mut response = http::Response::new(MockBody::Channel(rx));
                    response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = connection.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_claude_code_stream_gets_mended_input_json_or_the_next_candidates_call() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.on_model("m", sse(streaming_call("call_a", "write_file", "{'path': 'a.txt', 'content': 'hi',}")));
    b.on_model("n", sse(streaming_call("call_b", "write_file", r#"{"path": "b.txt"}"#)));
    a.on_model("cut", sse(streaming_call("call_a", "write_file", r#"{"path": "a.txt", "content": "half"#)));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n  cut:\n    targets: [a/cut, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m", "cut"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    let message = |model: &str| {
        json!({"model": model, "max_tokens": 256, "stream": true,
            "tools": [{"name": "write_file", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "write a.txt"}]})
        .to_string()
    };
    let input = |answer: &Answer| {
        let events = named_events(&answer.text());
        assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("message_stop"), "{events:?}");
        let json: String = events
            .iter()
            .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "input_json_delta")
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap_or_default().to_owned())
            .collect();
        serde_json::from_str::<Value>(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    };
    let headers = [("anthropic-version", "2023-06-01")];
    let mended = gw.post("/v1/messages", &message("r"), &headers).await;
    assert_eq!(mended.routed_via(), "a/m", "{}", mended.text());
    assert_eq!(input(&mended), json!({"path": "a.txt", "content": "hi"}));
    let fell_back = gw.post("/v1/messages", &message("cut"), &headers).await;
    assert_eq!(fell_back.routed_via(), "b/n", "{}", fell_back.text());
    assert_eq!(input(&fell_back), json!({"path": "b.txt"}));
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(counted(&metrics, "single_quotes") && counted(&metrics, "trailing_comma"), "{metrics}");
}

#[tokio::test]
async fn a_codex_stream_gets_mended_arguments_or_the_next_candidates_call() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.on_model("m", sse(streaming_call("call_a", "Write_file", "```json\n{\"path\": \"a.txt\"}\n```")));
    b.on_model("n", sse(streaming_call("call_b", "write_file", r#"{"path": "b.txt"}"#)));
    a.on_model("cut", sse(streaming_call("call_a", "write_file", r#"{"path": "a.txt", "content":"#)));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n  cut:\n    targets: [a/cut, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m", "cut"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    let ask = |model: &str| {
        json!({"model": model, "input": "write a.txt", "stream": true,
            "tools": [{"type": "function", "name": "write_file", "parameters": {"type": "object"}}]})
        .to_string()
    };
    let call = |answer: &Answer| {
        let events: Vec<Value> = answer
            .text()
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data:")))
            .map(|d| serde_json::from_str(d.trim()).unwrap())
            .collect();
        assert_eq!(events.last().unwrap()["type"], "response.completed", "{events:?}");
        let deltas: String = events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .map(|e| e["delta"].as_str().unwrap().to_owned())
            .collect();
        let done = events.iter().find(|e| e["type"] == "response.function_call_arguments.done").unwrap();
        assert_eq!(done["arguments"].as_str(), Some(deltas.as_str()), "{events:?}");
        (done["name"].as_str().unwrap().to_owned(), serde_json::from_str::<Value>(&deltas).unwrap())
    };
    let mended = gw.post("/v1/responses", &ask("r"), &[]).await;
    assert_eq!(mended.routed_via(), "a/m", "{}", mended.text());
    assert_eq!(call(&mended), ("write_file".to_owned(), json!({"path": "a.txt"})));
    let fell_back = gw.post("/v1/responses", &ask("cut"), &[]).await;
    assert_eq!(fell_back.routed_via(), "b/n", "{}", fell_back.text());
    assert_eq!(call(&fell_back), ("write_file".to_owned(), json!({"path": "b.txt"})));
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(counted(&metrics, "fence") && counted(&metrics, "name_case"), "{metrics}");
}
