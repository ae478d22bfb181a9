//! The `openai-compat` plugin: what it changes in a request on its way
//! upstream, through the real component, then end to end through a gateway
//! in front of a mock that streams usage only when asked, as OpenAI does.

use std::sync::Arc;

use freeway::plugin::{Plugin, Target};
use serde_json::{Value, json};

use crate::support::gateway::{provider, start};
use crate::support::mock::{Behavior, Mock, Reply, Seen, chunk};
use crate::support::plugins;

const BASE: &str = "https://api.example.test/v1";
const MODEL: &str = "upstream-model";

fn plugin() -> Arc<Plugin> {
    plugins::builtin("openai-compat")
}

fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The body the plugin sends upstream for this chat request.
fn chat_body(request: Value, options: &[(String, String)]) -> Value {
    let target = Target { base_url: BASE, model: MODEL, key: Some("sk-test"), options };
    let built = plugin().session().unwrap().build_chat(request.to_string().as_bytes(), &target).unwrap();
    assert_eq!(built.url, format!("{BASE}/chat/completions"));
    serde_json::from_slice(&built.body).unwrap()
}

fn request(stream: bool, stream_options: Option<Value>) -> Value {
    let mut request = json!({"model": "p/alias", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    if let Some(options) = stream_options {
        request["stream_options"] = options;
    }
    request
}

#[test]
fn a_streamed_chat_asks_the_upstream_for_usage() {
    let body = chat_body(request(true, None), &[]);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    // A client's null is no choice: usage is asked for.
    let body = chat_body(request(true, Some(Value::Null)), &[]);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[test]
fn the_clients_own_stream_options_are_kept() {
    let body = chat_body(request(true, Some(json!({"include_obfuscation": false}))), &[]);
    assert_eq!(body["stream_options"], json!({"include_obfuscation": false, "include_usage": true}));
    // The gateway needs the counts to settle its token budgets; a usage
    // chunk is one more chunk with no choices, which every client skips.
    let body = chat_body(request(true, Some(json!({"include_usage": false, "x": 1}))), &[]);
    assert_eq!(body["stream_options"], json!({"include_usage": true, "x": 1}));
    // Other fields of the request pass through.
    let mut with_extras = request(true, None);
    with_extras["temperature"] = json!(0.5);
    with_extras["user"] = json!("u-1");
    let body = chat_body(with_extras, &[]);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["user"], "u-1");
}

#[test]
fn usage_is_not_asked_for_without_a_stream_or_when_the_options_say_so() {
    let body = chat_body(request(false, None), &[]);
    assert!(body.get("stream_options").is_none(), "{body}");

    let off = options(&[("stream_usage", "false")]);
    let body = chat_body(request(true, None), &off);
    assert!(body.get("stream_options").is_none(), "{body}");
    let body = chat_body(request(true, Some(json!({"include_obfuscation": false}))), &off);
    assert_eq!(body["stream_options"], json!({"include_obfuscation": false}), "left as the client sent it");

    let dropped = options(&[("drop_params", "user, stream_options")]);
    let body = chat_body(request(true, None), &dropped);
    assert!(body.get("stream_options").is_none(), "{body}");
    let body = chat_body(request(true, Some(json!({"include_usage": true}))), &dropped);
    assert!(body.get("stream_options").is_none(), "a provider that refuses the field never gets it: {body}");
}

#[test]
fn embeddings_are_left_alone() {
    let target = Target { base_url: BASE, model: MODEL, key: None, options: &[] };
    let built = plugin()
        .session()
        .unwrap()
        .build_embeddings(json!({"model": "e", "input": "hi", "stream": true}).to_string().as_bytes(), &target)
        .unwrap();
    let body: Value = serde_json::from_slice(&built.body).unwrap();
    assert!(body.get("stream_options").is_none(), "{body}");
}

#[test]
fn reasoning_goes_back_only_as_the_provider_takes_it() {
    let request = json!({"model": "x", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": null, "reasoning_content": "plan", "reasoning": "plan",
         "reasoning_details": [{"type": "reasoning.text", "text": "plan", "signature": "s", "format": "anthropic-claude-v1"}],
         "tool_calls": [{"id": "c1", "type": "function", "extra_content": {"google": {"thought_signature": "g"}},
            "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": "hm", "tool_calls": [{"id": "c2", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
    ]});
    // Unset: strict providers refuse fields they do not know.
    let body = chat_body(request.clone(), &[]);
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]})
    );
    let deepseek = chat_body(request.clone(), &options(&[("reasoning_back", "reasoning_content")]));
    assert_eq!(deepseek["messages"][1]["reasoning_content"], "plan");
    assert!(deepseek["messages"][1].get("reasoning_details").is_none());
    assert_eq!(deepseek["messages"][3]["reasoning_content"], "", "a tool turn from another model gets the field");
    let openrouter = chat_body(request, &options(&[("reasoning_back", "reasoning_details, extra_content")]));
    assert_eq!(openrouter["messages"][1]["reasoning_details"][0]["signature"], "s");
    assert_eq!(openrouter["messages"][1]["tool_calls"][0]["extra_content"]["google"]["thought_signature"], "g");
    assert!(openrouter["messages"][1].get("reasoning_content").is_none());
    assert!(openrouter["messages"][3].get("reasoning_content").is_none());
}

/// An upstream that streams as OpenAI does: the usage chunk comes only when
/// `stream_options.include_usage` asks for it.
fn openai_like(seen: &Seen) -> Reply {
    let mut pieces: Vec<String> = (0..2).map(|i| format!("data: {}\n\n", chunk(&seen.model, i))).collect();
    if seen.body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)) {
        let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": seen.model,
            "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}});
        pieces.push(format!("data: {usage}\n\n"));
    }
    pieces.push("data: [DONE]\n\n".to_owned());
    Reply::sse(pieces)
}

/// The completion tokens `/metrics` counted for provider `p`, if any.
async fn completion_tokens(gw: &crate::support::gateway::TestGateway) -> Option<String> {
    let metrics = gw.get("/metrics", &[]).await.text();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("freeway_tokens_total") && l.contains("kind=\"completion\"") && l.contains("provider=\"p\"")
        })
        .map(str::to_owned)
}

/// A streamed request that does not ask for usage.
fn plain_stream(model: &str) -> String {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello"}]}).to_string()
}

#[tokio::test]
async fn a_streamed_answer_through_the_gateway_reports_its_usage() {
    let m = Mock::start().await;
    m.on_all(Behavior::Custom(Arc::new(openai_like)));
    let gw = start(&format!("providers:\n{}", provider("p", &m.base_url(), &["k"], &["m"]))).await;
    // The client does not ask for usage: the gateway does, for its budgets,
    // and keeps the usage-only chunk to itself.
    let answer = gw.post("/v1/chat/completions", &plain_stream("p/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.events().last().map(String::as_str), Some("[DONE]"));
    assert!(!answer.text().contains("\"usage\""), "{}", answer.text());
    assert_eq!(m.chats()[0].body["stream_options"], json!({"include_usage": true}));
    let line = completion_tokens(&gw).await.unwrap_or_else(|| panic!("the stream's usage was never counted"));
    assert!(line.ends_with(" 5"), "{line}");
}

#[tokio::test]
async fn stream_usage_false_sends_the_request_as_the_client_wrote_it() {
    let m = Mock::start().await;
    m.on_all(Behavior::Custom(Arc::new(openai_like)));
    let block = provider("p", &m.base_url(), &["k"], &["m"]) + "    options: { stream_usage: \"false\" }\n";
    let gw = start(&format!("providers:\n{block}")).await;
    let answer = gw.post("/v1/chat/completions", &plain_stream("p/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(m.chats()[0].body.get("stream_options").is_none(), "{}", m.chats()[0].body);
    assert_eq!(completion_tokens(&gw).await, None, "no usage was asked for, none came");
}

/// Reasoning an upstream names `reasoning` (OpenRouter, Groq) or
/// `reasoning_details` reaches chat clients as `reasoning_content`, in the
/// answer and in stream deltas.
#[tokio::test]
async fn reasoning_under_any_name_reaches_chat_clients_as_reasoning_content() {
    let mock = Mock::start().await;
    mock.on_model(
        "m",
        Behavior::Custom(Arc::new(|seen: &Seen| {
            if seen.stream {
                let delta = |d: Value| {
                    format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": d}]}))
                };
                return Reply::sse(vec![
                    delta(json!({"reasoning": "thinking "})),
                    delta(json!({"reasoning_details": [{"type": "reasoning.text", "text": "harder"}]})),
                    delta(json!({"content": "4"})),
                    "data: [DONE]\n\n".to_owned(),
                ]);
            }
            Reply::json(
                200,
                json!({"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "4", "reasoning": "2 + 2"}}]})
                .to_string(),
            )
        })),
    );
    let gw = start(&format!("providers:\n{}", provider("p", &mock.base_url(), &["k"], &["m"]))).await;
    let whole = gw.chat("p/m").await.json();
    assert_eq!(whole["choices"][0]["message"]["reasoning_content"], "2 + 2", "{whole}");
    let body = json!({"model": "p/m", "stream": true, "messages": [{"role": "user", "content": "2+2?"}]}).to_string();
    let streamed = gw.post("/v1/chat/completions", &body, &[]).await;
    let reasoning: String = streamed
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(reasoning, "thinking harder");
}
