//! The Anthropic Messages API inbound (`POST /v1/messages`): translated
//! into a chat completion at the edge and back, through real HTTP, real
//! plugins and a mock upstream that speaks OpenAI; and the official
//! Anthropic Python SDK against it.

use serde_json::{Value, json};

use crate::support::gateway::{Answer, TestGateway, named_events, provider, start};
use crate::support::mock::{Behavior, Mock, agent};

const TOKEN: &str = "sdk-test-token-0123456789";

async fn gateway(mock: &Mock) -> TestGateway {
    mock.on_model("agent", agent("write_file", json!({"path": "hello.txt", "content": "hi"})));
    mock.on_model("limited", Behavior::rate_limited("30"));
    mock.on_model("cut", Behavior::CutAfter(1));
    let yaml = format!(
        "server:\n  api_keys: [{TOKEN}]\nproviders:\n{}aliases:\n  \"claude-*\": p/agent\n",
        provider("p", &mock.base_url(), &["k"], &["agent", "limited", "cut", "claude-local"])
    );
    start(&yaml).await
}

async fn post(gw: &TestGateway, body: &Value) -> Answer {
    gw.post("/v1/messages", &body.to_string(), &[("x-api-key", TOKEN), ("anthropic-version", "2023-06-01")]).await
}

fn ask(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 256,
        "stream": stream,
        "system": [{"type": "text", "text": "be brief"}],
        "tools": [{"name": "write_file", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "write hello.txt"}],
    })
}

#[tokio::test]
async fn a_message_goes_out_as_a_chat_completion_and_comes_back_as_a_message() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let answer = post(&gw, &ask("claude-sonnet-4-5", false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-routed-via"), "p/agent", "claude-* is aliased to p/agent");
    let sent = &mock.chats()[0].body;
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "be brief"}), "{sent}");
    assert_eq!(sent["tools"][0]["function"]["name"], "write_file", "{sent}");
    assert_eq!(sent["max_tokens"], 256);
    let message = answer.json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-sonnet-4-5", "the model the client asked for is echoed");
    assert_eq!(message["stop_reason"], "tool_use");
    let call = &message["content"][0];
    assert_eq!((call["type"].as_str(), call["name"].as_str()), (Some("tool_use"), Some("write_file")), "{message}");
    assert_eq!(call["input"], json!({"path": "hello.txt", "content": "hi"}));
    assert_eq!(message["usage"], json!({"input_tokens": 11, "output_tokens": 5}));
}

#[tokio::test]
async fn a_name_a_provider_serves_is_not_aliased() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let answer = post(&gw, &ask("claude-local", false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-routed-via"), "p/claude-local");
}

#[tokio::test]
async fn a_streamed_message_follows_anthropics_event_sequence() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let answer = post(&gw, &ask("claude-sonnet-4-5", true)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.header("content-type").starts_with("text/event-stream"));
    let events = named_events(&answer.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"], "{names:?}");
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "each event's data names its type");
    }
    let json: String = events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), json!({"path": "hello.txt", "content": "hi"}));
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(events[0].1["message"]["model"], "claude-sonnet-4-5");
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_event_ends_with_anthropics_error_event() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let answer = post(&gw, &ask("p/cut", true)).await;
    assert_eq!(answer.status, 200);
    let events = named_events(&answer.text());
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["type"], "error");
    assert!(data["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{data}");
}

#[tokio::test]
async fn every_error_takes_anthropics_shape() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let shape = |answer: &Answer, status: u16, kind: &str| {
        assert_eq!(answer.status.as_u16(), status, "{}", answer.text());
        let body = answer.json();
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        body["error"]["message"].as_str().unwrap_or_default().to_owned()
    };
    let wrong = gw.post("/v1/messages", &ask("p/agent", false).to_string(), &[("x-api-key", "wrong")]).await;
    shape(&wrong, 401, "authentication_error");
    let unknown = post(&gw, &ask("no-such-model", false)).await;
    assert!(shape(&unknown, 404, "not_found_error").contains("unknown model"));
    let limited = post(&gw, &ask("p/limited", false)).await;
    shape(&limited, 429, "rate_limit_error");
    assert!(!limited.header("retry-after").is_empty());
    let mut bad = ask("p/agent", false);
    bad["messages"][0]["content"] = json!([{"type": "nope"}]);
    let bad = post(&gw, &bad).await;
    assert!(shape(&bad, 400, "invalid_request_error").contains("messages[0].content[0]"));
    let get = gw.get("/v1/messages", &[("x-api-key", TOKEN)]).await;
    shape(&get, 405, "invalid_request_error");
    assert_eq!(mock.calls_to("agent"), 0, "nothing malformed reached the upstream");
}

#[tokio::test]
async fn tokens_are_counted_and_models_listed_in_anthropics_shape() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let headers = [("x-api-key", TOKEN), ("anthropic-version", "2023-06-01")];
    let counted = gw.post("/v1/messages/count_tokens", &ask("claude-x", false).to_string(), &headers).await;
    assert_eq!(counted.status, 200, "{}", counted.text());
    assert!(counted.json()["input_tokens"].as_u64().is_some_and(|n| n > 0));
    let models = gw.get("/v1/models", &headers).await.json();
    assert!(
        models["data"].as_array().unwrap().iter().any(|m| m["id"] == "p/agent" && m["type"] == "model"),
        "{models}"
    );
    assert_eq!(models["has_more"], false);
    let openai = gw.get("/v1/models", &[("x-api-key", TOKEN)]).await.json();
    assert_eq!(openai["object"], "list", "without anthropic-version: OpenAI's shape");
    assert_eq!(mock.seen().len(), 0, "neither asked an upstream");
}

#[tokio::test]
async fn the_anthropic_python_sdk_works_through_freeway() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    crate::support::clients::python_sdk("anthropic", "anthropic_sdk.py", gw.url(""), "anthropic sdk ok").await;
}
