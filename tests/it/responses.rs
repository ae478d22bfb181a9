//! The OpenAI Responses API inbound (`POST /v1/responses`): translated into
//! a chat completion at the edge and back, through real HTTP, real plugins
//! and a mock upstream; and the official OpenAI Python SDK's `responses`.

use serde_json::{Value, json};

use crate::support::gateway::{Answer, TestGateway, provider, start};
use crate::support::mock::{Behavior, Mock, agent};

const TOKEN: &str = "sdk-test-token-0123456789";

async fn gateway(mock: &Mock) -> TestGateway {
    mock.on_model("agent", agent("write_file", json!({"path": "hello.txt", "content": "hi"})));
    mock.on_model("cut", Behavior::CutAfter(1));
    let yaml = format!(
        "server:\n  api_keys: [{TOKEN}]\nproviders:\n{}",
        provider("p", &mock.base_url(), &["k"], &["agent", "cut"])
    );
    start(&yaml).await
}

async fn post(gw: &TestGateway, body: &Value) -> Answer {
    gw.post("/v1/responses", &body.to_string(), &[("authorization", &format!("Bearer {TOKEN}"))]).await
}

/// Each server-sent event's data (events here carry an `event:` line too).
fn data(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

fn tools() -> Value {
    json!([{"type": "function", "name": "write_file", "parameters": {"type": "object"}}])
}

#[tokio::test]
async fn a_response_goes_out_as_a_chat_completion_and_comes_back_as_a_response() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let answer = post(
        &gw,
        &json!({"model": "p/agent", "instructions": "be brief", "input": "write hello.txt", "tools": tools()}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let sent = &mock.chats()[0].body;
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "be brief"}), "{sent}");
    assert_eq!(sent["messages"][1]["role"], "user");
    assert_eq!(sent["tools"][0]["function"]["name"], "write_file");
    let response = answer.json();
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert!(response["id"].as_str().is_some_and(|id| id.starts_with("resp_")));
    let call = response["output"].as_array().unwrap().iter().find(|i| i["type"] == "function_call").unwrap();
    assert_eq!(call["name"], "write_file");
    assert_eq!(serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap()["path"], "hello.txt");
    assert_eq!(response["usage"]["input_tokens"], 11);
}

#[tokio::test]
async fn a_streamed_response_numbers_its_events_and_ends_completed() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let answer =
        post(&gw, &json!({"model": "p/agent", "input": "write hello.txt", "tools": tools(), "stream": true})).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = data(&answer.text());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(&kinds[..2], ["response.created", "response.in_progress"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    assert!(kinds.contains(&"response.function_call_arguments.delta"), "{kinds:?}");
    let numbers: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_broken_stream_ends_failed_and_an_unknown_previous_response_is_a_400() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let cut = post(&gw, &json!({"model": "p/cut", "input": "hi", "stream": true})).await;
    let events = data(&cut.text());
    assert_eq!(events.last().unwrap()["type"], "response.failed", "{events:?}");
    let unknown = post(&gw, &json!({"model": "p/agent", "input": "hi", "previous_response_id": "resp_gone"})).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.json()["error"]["message"].as_str().unwrap().contains("previous_response_id"));
}

#[tokio::test]
async fn the_openai_python_sdks_responses_work_through_freeway() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    crate::support::clients::python_sdk("openai", "openai_responses.py", gw.url("/v1"), "openai responses ok").await;
}

#[tokio::test]
async fn a_response_continues_a_stored_one_but_not_one_sent_with_store_false() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let ask = |store: bool| json!({"model": "p/agent", "input": "write hello.txt", "tools": tools(), "store": store});
    let stored = post(&gw, &ask(true)).await.json();
    let call_id = stored["output"][0]["call_id"].as_str().unwrap().to_owned();
    let next = |previous: &Value| {
        json!({"model": "p/agent", "previous_response_id": previous["id"], "tools": tools(),
            "input": [{"type": "function_call_output", "call_id": call_id, "output": "wrote 2 bytes"}]})
    };
    let continued = post(&gw, &next(&stored)).await;
    assert_eq!(continued.status, 200, "{}", continued.text());
    let sent = mock.chats().last().unwrap().body.clone();
    let roles: Vec<&str> = sent["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "tool"], "the earlier turn came back from the gateway: {sent}");
    let unstored = post(&gw, &ask(false)).await.json();
    let refused = post(&gw, &next(&unstored)).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
}

#[tokio::test]
async fn a_streamed_response_can_be_continued_too() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let streamed =
        post(&gw, &json!({"model": "p/agent", "input": "write hello.txt", "tools": tools(), "stream": true})).await;
    let done = data(&streamed.text()).pop().unwrap();
    assert_eq!(done["type"], "response.completed");
    let (id, call_id) = (done["response"]["id"].clone(), done["response"]["output"][0]["call_id"].clone());
    let next = json!({"model": "p/agent", "previous_response_id": id, "tools": tools(),
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "wrote 2 bytes"}]});
    let continued = post(&gw, &next).await;
    assert_eq!(continued.status, 200, "{}", continued.text());
    assert_eq!(continued.json()["output"][0]["content"][0]["text"], "done: wrote 2 bytes");
}
