//! Reasoning a target needs back on the next turn (a Gemini thought
//! signature on a tool call, a signed reasoning entry) survives each
//! inbound dialect's round trip: the client gets it in its own dialect's
//! fields (a thinking block's signature, a reasoning item's
//! `encrypted_content`, the chat fields themselves), sends it back as
//! agents do, and the upstream gets it again — through real HTTP, the real
//! `openai-compat` plugin and a mock upstream.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::gateway::{Answer, TestGateway, named_events, provider, start};
use crate::support::mock::{Behavior, Mock, Reply};

const TOKEN: &str = "reasoning-test-token-0123";

fn extra() -> Value {
    json!({"google": {"thought_signature": "R2VtaW5pU2ln"}})
}

fn entry() -> Value {
    json!({"type": "reasoning.encrypted", "data": "c2lnbmVk", "format": "google-gemini-v1", "index": 0})
}

/// An upstream that thinks, calls `write` with a signature on the call and
/// an entry on the message, then (once the result is back) answers text.
fn thinker() -> Behavior {
    Behavior::Custom(Arc::new(|seen| {
        let answered = seen.body["messages"].as_array().into_iter().flatten().any(|m| m["role"] == "tool");
        let call = json!({"id": "call_7", "type": "function", "extra_content": extra(),
            "function": {"name": "write", "arguments": "{\"path\":\"a.txt\"}"}});
        if !seen.stream {
            let message = if answered {
                json!({"role": "assistant", "content": "written"})
            } else {
                json!({"role": "assistant", "content": null, "reasoning_content": "plan",
                    "reasoning_details": [entry()], "tool_calls": [call]})
            };
            let finish = if answered { "stop" } else { "tool_calls" };
            let body = json!({"id": "c", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2}});
            return Reply::json(200, body.to_string());
        }
        let chunk = |delta: Value, finish: Option<&str>| {
            let c = json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            format!("data: {c}\n\n")
        };
        let mut pieces = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        if answered {
            pieces.push(chunk(json!({"content": "written"}), Some("stop")));
        } else {
            pieces.push(chunk(json!({"reasoning_content": "pl"}), None));
            pieces.push(chunk(json!({"reasoning_content": "an", "reasoning_details": [entry()]}), None));
            pieces.push(chunk(json!({"tool_calls": [call]}), None));
            pieces.push(chunk(json!({}), Some("tool_calls")));
        }
        pieces.push("data: [DONE]\n\n".to_owned());
        Reply::sse(pieces)
    }))
}

async fn gateway(mock: &Mock) -> TestGateway {
    mock.on_model("thinker", thinker());
    let block = provider("p", &mock.base_url(), &["k"], &["thinker"])
        + "    options: { reasoning_back: \"reasoning_content, reasoning_details, extra_content\" }\n";
    start(&format!("server:\n  api_keys: [{TOKEN}]\nproviders:\n{block}")).await
}

async fn post(gw: &TestGateway, path: &str, body: &Value) -> Answer {
    let answer = gw
        .post(
            path,
            &body.to_string(),
            &[("authorization", &format!("Bearer {TOKEN}")), ("anthropic-version", "2023-06-01")],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer
}

/// The assistant turn the upstream got back on the second call.
fn turn_sent_back(mock: &Mock) -> Value {
    let chats = mock.chats();
    assert_eq!(chats.len(), 2, "two calls upstream");
    let messages = chats[1].body["messages"].as_array().unwrap().clone();
    messages.into_iter().find(|m| m["role"] == "assistant").unwrap()
}

fn assert_carried(turn: &Value) {
    assert_eq!(turn["tool_calls"][0]["id"], "call_7", "{turn}");
    assert_eq!(turn["tool_calls"][0]["extra_content"], extra(), "{turn}");
    assert_eq!(turn["reasoning_details"], json!([entry()]), "{turn}");
    assert_eq!(turn["reasoning_content"], "plan", "{turn}");
}

/// A Messages stream's content blocks, assembled as the Anthropic SDK does.
fn blocks_of_stream(text: &str) -> Vec<Value> {
    let mut blocks: Vec<Value> = Vec::new();
    let mut json_input = String::new();
    for event in named_events(text).into_iter().map(|(_, data)| data) {
        match event["type"].as_str().unwrap_or_default() {
            "content_block_start" => {
                blocks.push(event["content_block"].clone());
                json_input.clear();
            }
            "content_block_delta" => {
                let block = blocks.last_mut().unwrap();
                let delta = &event["delta"];
                match delta["type"].as_str().unwrap() {
                    "thinking_delta" => {
                        block["thinking"] = json!(format!(
                            "{}{}",
                            block["thinking"].as_str().unwrap(),
                            delta["thinking"].as_str().unwrap()
                        ));
                    }
                    "signature_delta" => block["signature"] = delta["signature"].clone(),
                    "input_json_delta" => json_input.push_str(delta["partial_json"].as_str().unwrap()),
                    "text_delta" => {
                        block["text"] =
                            json!(format!("{}{}", block["text"].as_str().unwrap(), delta["text"].as_str().unwrap()));
                    }
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" if !json_input.is_empty() => {
                blocks.last_mut().unwrap()["input"] = serde_json::from_str(&json_input).unwrap();
                json_input.clear();
            }
            _ => {}
        }
    }
    blocks
}

#[tokio::test]
async fn a_messages_client_hands_back_what_the_target_needs_in_a_thinking_signature() {
    for stream in [false, true] {
        let mock = Mock::start().await;
        let gw = gateway(&mock).await;
        let ask = json!({"model": "p/thinker", "max_tokens": 100, "stream": stream,
            "tools": [{"name": "write", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "write a.txt"}]});
        let answer = post(&gw, "/v1/messages", &ask).await;
        let content = if stream {
            blocks_of_stream(&answer.text())
        } else {
            answer.json()["content"].as_array().unwrap().clone()
        };
        let kinds: Vec<&str> = content.iter().map(|b| b["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["thinking", "tool_use"], "stream {stream}: {content:?}");
        assert_eq!(content[0]["thinking"], "plan");
        assert!(content[0]["signature"].as_str().unwrap().starts_with("freeway1."));
        // Claude Code sends the assistant turn back as it got it.
        let mut next = ask.clone();
        next["messages"] = json!([
            {"role": "user", "content": "write a.txt"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_7", "content": "ok"}]},
        ]);
        post(&gw, "/v1/messages", &next).await;
        assert_carried(&turn_sent_back(&mock));
    }
}

#[tokio::test]
async fn a_responses_client_hands_back_what_the_target_needs_in_encrypted_content() {
    for stream in [false, true] {
        let mock = Mock::start().await;
        let gw = gateway(&mock).await;
        let input = json!([{"role": "user", "content": "write a.txt"}]);
        let ask = json!({"model": "p/thinker", "stream": stream, "store": false, "input": input,
            "include": ["reasoning.encrypted_content"],
            "tools": [{"type": "function", "name": "write", "parameters": {"type": "object"}}]});
        let answer = post(&gw, "/v1/responses", &ask).await;
        let output = if stream {
            let done = named_events(&answer.text())
                .into_iter()
                .map(|(_, data)| data)
                .find(|e| e["type"] == "response.completed")
                .unwrap();
            done["response"]["output"].as_array().unwrap().clone()
        } else {
            answer.json()["output"].as_array().unwrap().clone()
        };
        let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["reasoning", "function_call"], "stream {stream}: {output:?}");
        assert!(output[0]["encrypted_content"].as_str().unwrap().starts_with("freeway1."));
        // Codex (store: false) sends the whole conversation back, items as
        // it got them, then the call's output.
        let mut items = input.as_array().unwrap().clone();
        items.extend(output);
        items.push(json!({"type": "function_call_output", "call_id": "call_7", "output": "ok"}));
        let mut next = ask.clone();
        next["input"] = Value::Array(items);
        post(&gw, "/v1/responses", &next).await;
        assert_carried(&turn_sent_back(&mock));
    }
}

#[tokio::test]
async fn a_chat_client_gets_the_fields_themselves_and_a_strict_provider_never_sees_them() {
    let mock = Mock::start().await;
    mock.on_model("thinker", thinker());
    mock.on_model("strict", thinker());
    let yaml = format!(
        "server:\n  api_keys: [{TOKEN}]\nproviders:\n{}{}",
        provider("p", &mock.base_url(), &["k"], &["thinker"])
            + "    options: { reasoning_back: \"reasoning_content, reasoning_details, extra_content\" }\n",
        provider("q", &mock.base_url(), &["k"], &["strict"]),
    );
    let gw = start(&yaml).await;
    let ask = json!({"model": "p/thinker", "messages": [{"role": "user", "content": "write a.txt"}],
        "tools": [{"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}}]});
    let message = post(&gw, "/v1/chat/completions", &ask).await.json()["choices"][0]["message"].clone();
    assert_eq!(message["tool_calls"][0]["extra_content"], extra());
    assert_eq!(message["reasoning_details"], json!([entry()]));
    for model in ["p/thinker", "q/strict"] {
        let mut next = ask.clone();
        next["model"] = json!(model);
        next["messages"] = json!([{"role": "user", "content": "write a.txt"}, message,
            {"role": "tool", "tool_call_id": "call_7", "content": "ok"}]);
        post(&gw, "/v1/chat/completions", &next).await;
    }
    let chats = mock.chats();
    assert_carried(&chats[1].body["messages"][1]);
    let strict = &chats[2].body["messages"][1];
    assert_eq!(strict["tool_calls"][0]["id"], "call_7");
    for field in ["reasoning_content", "reasoning_details"] {
        assert!(strict.get(field).is_none(), "{field} reached a provider that did not ask for it: {strict}");
    }
    assert!(strict["tool_calls"][0].get("extra_content").is_none(), "{strict}");
}
