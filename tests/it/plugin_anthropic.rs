//! The anthropic plugin: translation tests through the real component
//! (requests, answers, streams at every split point, errors, model listing),
//! then end to end through the gateway against a mock that speaks
//! Anthropic's Messages API.

use std::sync::Arc;

use freeway::plugin::{ErrorKind, Plugin, QuotaWindow, StreamEvent, Target, Usage};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::support::gateway::{Answer, chat_body, provider, send, sse_events, start};
use crate::support::mock::{Behavior, Mock, Reply, Seen};
use crate::support::plugins;

const BASE: &str = "https://api.anthropic.com/v1";
const MODEL: &str = "claude-sonnet-4-5";

fn plugin() -> Arc<Plugin> {
    plugins::builtin("anthropic")
}

fn owned(options: &[(&str, &str)]) -> Vec<(String, String)> {
    options.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The built request: (url, headers, body as JSON).
fn build_with(request: &Value, options: &[(&str, &str)]) -> (String, Vec<(String, String)>, Value) {
    let options = owned(options);
    let target = Target { base_url: BASE, model: MODEL, key: Some("sk-ant-k"), options: &options };
    let built = plugin().session().unwrap().build_chat(request.to_string().as_bytes(), &target).unwrap();
    assert_eq!(built.method, http::Method::POST);
    let headers = built.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
    (built.url, headers, serde_json::from_slice(&built.body).unwrap())
}

fn build(request: &Value) -> Value {
    build_with(request, &[]).2
}

fn build_error(request: &Value) -> String {
    let options = Vec::new();
    let target = Target { base_url: BASE, model: MODEL, key: Some("k"), options: &options };
    let err = plugin().session().unwrap().build_chat(request.to_string().as_bytes(), &target).unwrap_err();
    err.message
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Decodes a non-stream answer: (OpenAI body, usage).
fn decode(body: &Value) -> (Value, Option<Usage>) {
    let options = Vec::new();
    let target = Target { base_url: BASE, model: MODEL, key: None, options: &options };
    let decoded = plugin().session().unwrap().decode_chat(body.to_string().as_bytes(), &target).unwrap();
    (serde_json::from_slice(&decoded.body).unwrap(), decoded.usage)
}

/// Feeds a stream in these pieces and returns every event.
fn decode_stream(pieces: &[&[u8]]) -> Vec<StreamEvent> {
    let options = Vec::new();
    plugins::stream_events(&plugin(), &Target { base_url: BASE, model: MODEL, key: None, options: &options }, pieces)
}

fn chunks(events: &[StreamEvent]) -> Vec<Value> {
    plugins::chunk_jsons(events)
}

fn classify(status: u16, body: &str) -> ErrorKind {
    plugin()
        .session()
        .unwrap()
        .classify_error(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), body.as_bytes())
        .unwrap()
}

fn anthropic_error(kind: &str, message: &str) -> String {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011"}).to_string()
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[test]
fn the_request_goes_to_messages_with_anthropic_headers() {
    let request = json!({"model": "whatever", "messages": [{"role": "user", "content": "hi"}]});
    let (url, headers, body) = build_with(&request, &[]);
    assert_eq!(url, "https://api.anthropic.com/v1/messages");
    assert_eq!(header(&headers, "x-api-key"), Some("sk-ant-k"));
    assert_eq!(header(&headers, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "authorization"), None, "the key is not sent as a bearer token");
    assert_eq!(body["model"], MODEL, "the upstream model is the target's");
    assert_eq!(body["max_tokens"], 4096, "max_tokens is required: 4096 by default");
    assert!(body.get("stream").is_none());
    assert_eq!(body["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]));

    let (_, headers, body) = build_with(
        &json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
        &[("anthropic_version", "2099-01-01"), ("default_max_tokens", "1000"), ("anthropic_beta", "b1,b2")],
    );
    assert_eq!(header(&headers, "anthropic-version"), Some("2099-01-01"));
    assert_eq!(header(&headers, "anthropic-beta"), Some("b1,b2"));
    assert_eq!(header(&headers, "accept"), Some("text/event-stream"));
    assert_eq!(body["max_tokens"], 1000, "option default_max_tokens");
    assert_eq!(body["stream"], true);
}

#[test]
fn system_prompts_turns_and_parameters_are_mapped() {
    let request = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
            {"role": "assistant", "content": "answer"},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "more"}]},
            {"role": "user", "content": "third"}
        ],
        "temperature": 1.7,
        "top_p": 0.9,
        "stop": "END",
        "max_tokens": 300,
        "user": "u-42",
        "frequency_penalty": 0.5
    });
    let body = build(&request);
    assert_eq!(body["system"], "You are terse.\n\nUse metric units.", "every system message, concatenated");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "answer"}, {"type": "text", "text": "more"}]},
            {"role": "user", "content": [{"type": "text", "text": "third"}]}
        ]),
        "consecutive turns of one role are merged"
    );
    assert_eq!(body["temperature"], 1.0, "temperature is clamped to anthropic's 0..1");
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["max_tokens"], 300);
    assert_eq!(body["metadata"], json!({"user_id": "u-42"}));
    assert!(body.get("frequency_penalty").is_none(), "parameters anthropic lacks are not sent");

    let body = build(&json!({
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "stop": ["a", "b"]
    }));
    assert_eq!(body["max_tokens"], 20, "max_completion_tokens wins");
    assert_eq!(body["stop_sequences"], json!(["a", "b"]));
    assert!(body.get("system").is_none());
    assert!(body.get("temperature").is_none());

    assert!(build_error(&json!({"messages": [{"role": "system", "content": "only"}]})).contains("no user"));
    assert!(build_error(&json!({"messages": [{"role": "user", "content": "x"}], "n": 2})).contains("n > 1"));
}

#[test]
fn tools_tool_choice_and_tool_results_are_mapped() {
    let weather = json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }});
    let clock = json!({"type": "function", "function": {"name": "now"}});
    let request = json!({
        "messages": [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "3C"}]},
            {"role": "user", "content": "Thanks, and now?"}
        ],
        "tools": [weather, clock],
        "tool_choice": "required",
        "parallel_tool_calls": false
    });
    let body = build(&request);
    assert_eq!(
        body["tools"],
        json!([
            {"name": "get_weather", "description": "Weather for a city",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "now", "input_schema": {"type": "object", "properties": {}}}
        ])
    );
    assert_eq!(body["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}}
        ]})
    );
    assert_eq!(
        body["messages"][2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "3C"}]},
            {"type": "text", "text": "Thanks, and now?"}
        ]}),
        "tool results and the next user message make one user turn"
    );
    assert_eq!(body["messages"].as_array().unwrap().len(), 3);

    let choice = |choice: Value| {
        let mut request = json!({"messages": [{"role": "user", "content": "x"}], "tools": [clock]});
        request["tool_choice"] = choice;
        build(&request).get("tool_choice").cloned()
    };
    assert_eq!(choice(json!("auto")), Some(json!({"type": "auto"})));
    assert_eq!(choice(json!("none")), Some(json!({"type": "none"})));
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "now"}})),
        Some(json!({"type": "tool", "name": "now"}))
    );
    assert_eq!(choice(Value::Null), None);
    let body =
        build(&json!({"messages": [{"role": "user", "content": "x"}], "tools": [clock], "parallel_tool_calls": false}));
    assert_eq!(body["tool_choice"], json!({"type": "auto", "disable_parallel_tool_use": true}));
    let body = build(&json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}));
    assert!(body.get("tool_choice").is_none() && body.get("tools").is_none(), "no tools, no tool_choice");

    let bad = json!({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "toolu_9", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}
    ]});
    let message = build_error(&bad);
    assert!(message.contains("toolu_9") && message.contains("not valid JSON"), "{message}");
}

#[test]
fn images_and_documents_become_content_blocks() {
    let request = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
    ]}]});
    let body = build(&request);
    assert_eq!(
        body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is in these?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "document", "title": "a.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}
        ])
    );
    let bad = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]});
    assert!(build_error(&bad).contains("image_url"));
    let audio = json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]});
    assert!(build_error(&audio).contains("input_audio"));
}

#[test]
fn reasoning_effort_turns_on_thinking_within_max_tokens() {
    let body = build(&json!({
        "messages": [{"role": "user", "content": "x"}],
        "reasoning_effort": "medium",
        "max_tokens": 8000,
        "temperature": 0.2,
        "top_p": 0.5
    }));
    assert_eq!(body["thinking"], json!({"type": "enabled", "budget_tokens": 4096}));
    assert!(body.get("temperature").is_none(), "thinking takes no temperature");
    assert!(body.get("top_p").is_none(), "thinking takes no top_p under 0.95");

    let body = build(&json!({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "medium"}));
    assert_eq!(body["max_tokens"], 4096);
    assert_eq!(body["thinking"]["budget_tokens"], 4095, "the budget stays under max_tokens");

    let body = build(
        &json!({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high", "max_tokens": 64000}),
    );
    assert_eq!(body["thinking"], json!({"type": "enabled", "budget_tokens": 16384}));
    let body =
        build(&json!({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "low", "max_tokens": 500}));
    assert!(body.get("thinking").is_none(), "no room for anthropic's smallest budget");
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

fn message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 7}
    })
}

#[test]
fn a_text_answer_decodes_to_a_chat_completion() {
    let (body, usage) =
        decode(&message(json!([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]), "end_turn"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(body["created"], 0);
    assert_eq!(body["model"], "claude-sonnet-4-5-20250929", "the model the upstream reports");
    assert_eq!(body["choices"][0]["message"], json!({"role": "assistant", "content": "Hello there"}));
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 20, "input plus cache writes and reads");
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["usage"]["total_tokens"], 27);
    assert_eq!(usage, Some(Usage { prompt_tokens: 20, completion_tokens: 7 }));
}

#[test]
fn a_tool_use_answer_decodes_to_tool_calls() {
    let content = json!([
        {"type": "thinking", "thinking": "They want weather.", "signature": "sig"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris", "days": 2}}
    ]);
    let (body, _) = decode(&message(content, "tool_use"));
    let reply = &body["choices"][0]["message"];
    assert_eq!(reply["content"], "Checking.");
    assert_eq!(reply["reasoning_content"], "They want weather.");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &reply["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris", "days": 2}));

    let only_tool = json!([{"type": "tool_use", "id": "t", "name": "f", "input": {}}]);
    let (body, _) = decode(&message(only_tool, "tool_use"));
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");
}

#[test]
fn every_stop_reason_maps_to_a_finish_reason() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ] {
        let (body, _) = decode(&message(json!([{"type": "text", "text": "x"}]), stop));
        assert_eq!(body["choices"][0]["finish_reason"], finish, "{stop}");
    }
}

#[test]
fn an_error_body_is_not_an_answer() {
    let options = Vec::new();
    let target = Target { base_url: BASE, model: MODEL, key: None, options: &options };
    let body = anthropic_error("overloaded_error", "Overloaded");
    let err = plugin().session().unwrap().decode_chat(body.as_bytes(), &target).unwrap_err();
    assert!(err.message.contains("Overloaded"), "{}", err.message);
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect()
}

/// A stream with text (multi-byte characters included) and a tool call
/// whose input arrives in pieces.
fn sample_stream() -> String {
    sse(&[
        json!({"type": "message_start", "message": {"id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
            "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 472, "cache_read_input_tokens": 100, "output_tokens": 2}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check "}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "the café ☕ weather."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"location\": \"San Fra"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ncisco, CA\", \"unit\": \"cel"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "sius\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
        json!({"type": "message_stop"}),
    ])
}

#[test]
fn a_stream_decodes_to_openai_chunks() {
    let stream = sample_stream();
    let events = decode_stream(&[stream.as_bytes()]);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let chunks = chunks(&events);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
        assert_eq!(chunk["model"], "claude-sonnet-4-5-20250929");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "the first chunk names the role");
    let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| &c["delta"]).collect();
    let text: String = deltas.iter().filter_map(|d| d["content"].as_str()).collect();
    assert_eq!(text, "Let me check the café ☕ weather.");
    let calls: Vec<&Value> = deltas.iter().filter_map(|d| d["tool_calls"].get(0)).collect();
    assert_eq!(
        calls[0],
        &json!({"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}})
    );
    let arguments: String = calls[1..].iter().map(|c| c["function"]["arguments"].as_str().unwrap()).collect();
    assert_eq!(arguments, r#"{"location": "San Francisco, CA", "unit": "celsius"}"#);
    assert!(calls[1..].iter().all(|c| c["index"] == 0 && c.get("id").is_none()));
    // The finish chunk, then usage alone.
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 572);
    assert_eq!(last["usage"]["completion_tokens"], 89);
    assert_eq!(last["usage"]["total_tokens"], 661);
    let StreamEvent::Chunk { usage, .. } = &events[events.len() - 2] else { panic!("{events:?}") };
    assert_eq!(*usage, Some(Usage { prompt_tokens: 572, completion_tokens: 89 }));
}

#[test]
fn a_stream_decodes_identically_whatever_the_split_points() {
    let stream = sample_stream();
    let bytes = stream.as_bytes();
    let whole = decode_stream(&[bytes]);
    assert_eq!(whole.len(), 10, "role, two texts, a tool call in four pieces, finish, usage, done");
    for split in 0..=bytes.len() {
        let (a, b) = bytes.split_at(split);
        assert_eq!(decode_stream(&[a, b]), whole, "split at byte {split}");
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(decode_stream(&bytewise), whole, "one byte at a time");
    let odd: Vec<&[u8]> = bytes.chunks(7).collect();
    assert_eq!(decode_stream(&odd), whole, "seven bytes at a time");
}

#[test]
fn an_error_event_or_a_cut_stream_is_an_error() {
    let stream = sse(&[
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]);
    let events = decode_stream(&[stream.as_bytes()]);
    let errors: Vec<&StreamEvent> = events.iter().filter(|e| matches!(e, StreamEvent::Error { .. })).collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    let StreamEvent::Error { message } = errors[0] else { unreachable!() };
    assert!(message.contains("Overloaded"), "{message}");
    assert!(!events.contains(&StreamEvent::Done));

    let sample = sample_stream();
    let cut = &sample[..sample.find("event: message_stop").unwrap()];
    let events = decode_stream(&[cut.as_bytes()]);
    assert!(matches!(events.last(), Some(StreamEvent::Error { .. })), "{events:?}");
    assert!(!events.contains(&StreamEvent::Done));
}

// ---------------------------------------------------------------------------
// Errors, models, embeddings
// ---------------------------------------------------------------------------

#[test]
fn upstream_errors_are_classified() {
    assert_eq!(
        classify(
            429,
            &anthropic_error("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit")
        ),
        ErrorKind::RateLimited { retry_after: None, window: QuotaWindow::Minute }
    );
    assert_eq!(classify(529, &anthropic_error("overloaded_error", "Overloaded")), ErrorKind::Transient);
    assert_eq!(classify(500, &anthropic_error("api_error", "Internal server error")), ErrorKind::Transient);
    assert_eq!(classify(401, &anthropic_error("authentication_error", "invalid x-api-key")), ErrorKind::InvalidKey);
    assert_eq!(classify(403, &anthropic_error("permission_error", "no access")), ErrorKind::InvalidKey);
    assert_eq!(
        classify(
            400,
            &anthropic_error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."
            )
        ),
        ErrorKind::QuotaExhausted
    );
    assert_eq!(classify(402, &anthropic_error("billing_error", "pay up")), ErrorKind::QuotaExhausted);
    assert_eq!(
        classify(400, &anthropic_error("invalid_request_error", "messages: roles must alternate")),
        ErrorKind::ClientError
    );
    assert_eq!(classify(400, "not json at all"), ErrorKind::ClientError);
    assert_eq!(
        classify(413, &anthropic_error("request_too_large", "Request exceeds the maximum size")),
        ErrorKind::Transient
    );
    assert_eq!(classify(404, &anthropic_error("not_found_error", "model: claude-x")), ErrorKind::Transient);
}

#[test]
fn models_are_listed() {
    let options = Vec::new();
    let target = Target { base_url: BASE, model: "", key: Some("sk-ant-k"), options: &options };
    let request = plugin().build_models(&target).unwrap();
    assert_eq!(request.method, http::Method::GET);
    assert_eq!(request.url, "https://api.anthropic.com/v1/models?limit=1000");
    let find =
        |name: &str| request.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_str().unwrap().to_owned());
    assert_eq!(find("x-api-key").as_deref(), Some("sk-ant-k"));
    assert_eq!(find("anthropic-version").as_deref(), Some("2023-06-01"));

    let listing = json!({
        "data": [
            {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5",
             "created_at": "2025-09-29T00:00:00Z", "max_input_tokens": 200000, "max_tokens": 64000,
             "capabilities": {"image_input": {"supported": true}, "thinking": {"supported": true}}},
            {"type": "model", "id": "claude-3-haiku-20240307", "display_name": "Claude Haiku 3", "created_at": "2024-03-07T00:00:00Z"},
            {"type": "model", "id": "claude-2.0", "display_name": "Claude 2", "created_at": "2023-07-11T00:00:00Z", "lifecycle": "retired"}
        ],
        "has_more": false, "first_id": "claude-sonnet-4-5-20250929", "last_id": "claude-2.0"
    });
    let models = plugin().decode_models(listing.to_string().as_bytes(), &target).unwrap();
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["claude-sonnet-4-5-20250929", "claude-3-haiku-20240307"], "retired models are left out");
    assert_eq!(models[0].context_length, Some(200000));
    assert_eq!(models[0].capabilities, ["tools", "reasoning", "vision"]);
    assert_eq!(models[1].context_length, None);
    assert_eq!(models[1].free, None);
    assert_eq!(models[1].capabilities, ["tools"]);
    assert!(plugin().decode_models(b"{\"nope\": 1}", &target).is_err());
}

#[test]
fn there_is_no_embeddings_api() {
    let caps = plugin().capabilities();
    assert!(caps.chat && caps.stream && caps.tools && caps.models);
    assert!(!caps.embeddings);
    let options = Vec::new();
    let target = Target { base_url: BASE, model: MODEL, key: None, options: &options };
    let err = plugin().session().unwrap().build_embeddings(br#"{"input": "x"}"#, &target).unwrap_err();
    assert!(err.message.contains("anthropic has no embeddings API"), "{}", err.message);
}

// ---------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------

fn anthropic_provider(name: &str, mock: &Mock, models: &[&str]) -> String {
    format!(
        "  {name}:\n    plugin: anthropic\n    base_url: {}\n    keys: [sk-ant-e2e]\n    models: [{}]\n",
        mock.base_url(),
        models.join(", ")
    )
}

fn listing_reply() -> Reply {
    Reply::json(200, json!({"data": [{"type": "model", "id": "claude-e2e"}], "has_more": false}).to_string())
}

/// A Messages API mock: asks for the weather tool until it gets a tool
/// result, then answers in text.
fn weather_responder(seen: &Seen) -> Reply {
    if seen.path.ends_with("/models") {
        return listing_reply();
    }
    let messages = seen.body["messages"].as_array().cloned().unwrap_or_default();
    let has_result = messages
        .iter()
        .any(|m| m["content"].as_array().is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result")));
    let answer = if has_result {
        message(json!([{"type": "text", "text": "It is 18°C in Paris."}]), "end_turn")
    } else {
        message(
            json!([{"type": "tool_use", "id": "toolu_01e2e", "name": "get_weather", "input": {"city": "Paris"}}]),
            "tool_use",
        )
    };
    Reply::json(200, answer.to_string())
}

#[tokio::test]
async fn a_tool_call_round_trip_through_the_gateway() {
    let mock = Mock::start().await;
    mock.on_all(Behavior::Custom(Arc::new(weather_responder)));
    let gw = start(&format!("providers:\n{}", anthropic_provider("ant", &mock, &["claude-e2e"]))).await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut messages = vec![json!({"role": "user", "content": "What's the weather in Paris?"})];

    let first = json!({"model": "ant/claude-e2e", "messages": messages, "tools": tools});
    let answer = gw.post("/v1/chat/completions", &first.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let reply = body["choices"][0]["message"].clone();
    let call = &reply["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01e2e");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));

    // The client runs the tool and sends the result back, as the SDK does.
    messages.push(reply.clone());
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "18°C, sunny"}));
    let second = json!({"model": "ant/claude-e2e", "messages": messages, "tools": tools});
    let answer = gw.post("/v1/chat/completions", &second.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "It is 18°C in Paris.");
    assert_eq!(answer.json()["choices"][0]["finish_reason"], "stop");

    let chats = mock.chats();
    assert_eq!(chats.len(), 2);
    for seen in &chats {
        assert_eq!(seen.path, "/v1/messages");
        assert_eq!(seen.key.as_deref(), Some("sk-ant-e2e"));
        let version = seen.headers.iter().find(|(k, _)| k == "anthropic-version").map(|(_, v)| v.as_str());
        assert_eq!(version, Some("2023-06-01"));
        assert_eq!(seen.body["model"], "claude-e2e");
        assert_eq!(seen.body["tools"][0]["name"], "get_weather");
    }
    let sent = &chats[1].body["messages"];
    assert_eq!(
        sent[1],
        json!({"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01e2e", "name": "get_weather", "input": {"city": "Paris"}}]})
    );
    assert_eq!(
        sent[2],
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01e2e", "content": "18°C, sunny"}]})
    );
}

#[tokio::test]
async fn a_streamed_answer_through_the_gateway() {
    let mock = Mock::start().await;
    mock.on_all(Behavior::Custom(Arc::new(|seen: &Seen| {
        if seen.path.ends_with("/models") {
            return listing_reply();
        }
        let stream = sse(&[
            json!({"type": "message_start", "message": {"id": "msg_stream", "type": "message", "role": "assistant",
                "content": [], "model": "claude-e2e", "usage": {"input_tokens": 9, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ", wörld"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
            json!({"type": "message_stop"}),
        ]);
        // Awkward pieces: inside a field name, inside a delta, around a
        // multi-byte character.
        let mut cuts = vec![5, 17, stream.find("text_delta").unwrap() + 4, stream.find('ö').unwrap(), stream.len() - 3];
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for cut in cuts {
            pieces.push(stream[from..cut].to_owned());
            from = cut;
        }
        pieces.push(stream[from..].to_owned());
        Reply::sse(pieces)
    })));
    let gw = start(&format!("providers:\n{}", anthropic_provider("ant", &mock, &["claude-e2e"]))).await;
    let answer = Answer::read(gw.stream("ant/claude-e2e").await).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Hello, wörld");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 13);
    let sent = &mock.chats()[0];
    assert!(sent.stream);
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["system"], "be brief");
    assert_eq!(sent.body["temperature"], 0.1);
    assert_eq!(sse_events(&answer.text()).len(), events.len());
}

#[tokio::test]
async fn a_429_from_anthropic_falls_back_and_cools_the_model() {
    let ant = Mock::start().await;
    ant.on_all(Behavior::Custom(Arc::new(|seen: &Seen| {
        if seen.path.ends_with("/models") {
            return listing_reply();
        }
        let mut reply =
            Reply::json(429, anthropic_error("rate_limit_error", "Number of requests has exceeded your rate limit"));
        reply.headers.push(("retry-after".into(), "120".into()));
        reply
    })));
    let other = Mock::start().await;
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [ant/claude-e2e, b/m2]\n",
        anthropic_provider("ant", &ant, &["claude-e2e"]),
        provider("b", &other.base_url(), &["kb"], &["m2"]),
    );
    let gw = start(&yaml).await;
    let first = gw.post("/v1/chat/completions", &chat_body("r", false), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.routed_via(), "b/m2");
    assert_eq!(first.fallback_attempts(), 1);
    assert_eq!(first.json()["model"], "m2");
    let next = gw.chat("r").await;
    assert_eq!(next.status, 200);
    assert_eq!(next.routed_via(), "b/m2");
    assert_eq!(next.fallback_attempts(), 0, "a cooling model is skipped, not tried");
    assert_eq!(ant.calls_to("claude-e2e"), 1, "the rate-limited model was called again");
    assert_eq!(other.calls_to("m2"), 2);
}

// ---------------------------------------------------------------------------
// Signed thinking across a tool loop, end to end
// ---------------------------------------------------------------------------

const THOUGHT: &str = "They want the weather in Paris: call get_weather.";
const THOUGHT_SIGNATURE: &str =
    "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds/ErSz4D4XVk0EaZ8Tg9pIBBiDtmMuNcA==";
const REDACTED_DATA: &str =
    "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj2pL==";

fn thought_block() -> Value {
    json!({"type": "thinking", "thinking": THOUGHT, "signature": THOUGHT_SIGNATURE})
}

fn redacted_block() -> Value {
    json!({"type": "redacted_thinking", "data": REDACTED_DATA})
}

fn paris_call() -> Value {
    json!({"type": "tool_use", "id": "toolu_01think", "name": "get_weather", "input": {"city": "Paris"}})
}

/// Anthropic's checks of thinking in a request, as its API makes them: every
/// thinking block carries the signature issued for its text, redacted
/// blocks come back unchanged, and with thinking on, the last assistant
/// turn that calls tools starts with thinking.
fn thinking_refusal(body: &Value) -> Option<String> {
    let messages = body["messages"].as_array()?;
    for block in messages.iter().flat_map(|m| m["content"].as_array().into_iter().flatten()) {
        if block["type"] == "thinking" && (block["thinking"] != THOUGHT || block["signature"] != THOUGHT_SIGNATURE) {
            return Some("messages: Invalid `signature` in `thinking` block".to_owned());
        }
        if block["type"] == "redacted_thinking" && block["data"] != REDACTED_DATA {
            return Some("messages: Invalid `data` in `redacted_thinking` block".to_owned());
        }
    }
    let thinking_on = body["thinking"]["type"].as_str().is_some_and(|t| t != "disabled");
    let last = messages.iter().rev().find(|m| m["role"] == "assistant")?;
    let blocks = last["content"].as_array()?;
    let calls_tools = blocks.iter().any(|b| b["type"] == "tool_use");
    let first = blocks.first().map(|b| b["type"].as_str().unwrap_or_default()).unwrap_or_default();
    (thinking_on && calls_tools && first != "thinking" && first != "redacted_thinking").then(|| {
        format!(
            "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. When \
             `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the \
             lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from \
             previous turns. To avoid this requirement, disable `thinking`."
        )
    })
}

/// A Messages API mock that thinks: it checks thinking as Anthropic does,
/// answers a tool result in text, and otherwise thinks (`blocks`, or the
/// stream of them) and calls the weather tool.
fn thinking_responder(blocks: Vec<Value>) -> impl Fn(&Seen) -> Reply + Send + Sync {
    move |seen: &Seen| {
        if seen.path.ends_with("/models") {
            return listing_reply();
        }
        if let Some(message) = thinking_refusal(&seen.body) {
            return Reply::json(400, anthropic_error("invalid_request_error", &message));
        }
        let has_result =
            seen.body["messages"].as_array().into_iter().flatten().any(|m| {
                m["content"].as_array().is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
            });
        if has_result {
            return Reply::json(
                200,
                message(json!([{"type": "text", "text": "It is 18°C in Paris."}]), "end_turn").to_string(),
            );
        }
        if !seen.stream {
            return Reply::json(200, message(Value::Array(blocks.clone()), "tool_use").to_string());
        }
        // The same blocks streamed as Anthropic does: thinking in deltas,
        // its signature at the end, a redacted block whole.
        let mut events = vec![json!({"type": "message_start", "message": {"id": "msg_think", "type": "message",
            "role": "assistant", "content": [], "model": "claude-e2e", "usage": {"input_tokens": 30, "output_tokens": 1}}})];
        for (index, block) in blocks.iter().enumerate() {
            let delta = |delta: Value| json!({"type": "content_block_delta", "index": index, "delta": delta});
            match block["type"].as_str() {
                Some("thinking") => {
                    let text = block["thinking"].as_str().unwrap();
                    let (a, b) = text.split_at(text.len() / 2);
                    events.push(json!({"type": "content_block_start", "index": index,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""}}));
                    events.push(delta(json!({"type": "thinking_delta", "thinking": a})));
                    events.push(delta(json!({"type": "thinking_delta", "thinking": b})));
                    events.push(delta(json!({"type": "signature_delta", "signature": block["signature"]})));
                }
                Some("tool_use") => {
                    let mut start = block.clone();
                    start["input"] = json!({});
                    events.push(json!({"type": "content_block_start", "index": index, "content_block": start}));
                    events.push(delta(json!({"type": "input_json_delta", "partial_json": block["input"].to_string()})));
                }
                _ => events.push(json!({"type": "content_block_start", "index": index, "content_block": block})),
            }
            events.push(json!({"type": "content_block_stop", "index": index}));
        }
        events.push(
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 40}}),
        );
        events.push(json!({"type": "message_stop"}));
        // One piece per event, the signature's cut in two.
        let text = sse(&events);
        let cut = text.find(THOUGHT_SIGNATURE).map_or(0, |at| at + 10);
        let mut pieces: Vec<String> = text[..cut].split_inclusive("\n\n").map(str::to_owned).collect();
        pieces.extend(text[cut..].split_inclusive("\n\n").map(str::to_owned));
        Reply::sse(pieces)
    }
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// The next turn after `reply`: the tool's result, with thinking still asked for.
fn next_turn(reply: Value) -> Value {
    let call_id = reply["tool_calls"][0]["id"].clone();
    json!({
        "model": "ant/claude-e2e",
        "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            reply,
            {"role": "tool", "tool_call_id": call_id, "content": "18°C, sunny"}
        ],
        "tools": weather_tools(),
        "reasoning_effort": "medium",
        "max_tokens": 8000
    })
}

#[tokio::test]
async fn signed_thinking_goes_back_first_in_the_next_turn_of_a_tool_loop() {
    let mock = Mock::start().await;
    mock.on_all(Behavior::Custom(Arc::new(thinking_responder(vec![thought_block(), paris_call()]))));
    let gw = start(&format!("providers:\n{}", anthropic_provider("ant", &mock, &["claude-e2e"]))).await;

    let first = json!({"model": "ant/claude-e2e", "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": weather_tools(), "reasoning_effort": "medium", "max_tokens": 8000});
    let answer = gw.post("/v1/chat/completions", &first.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let reply = answer.json()["choices"][0]["message"].clone();
    assert_eq!(reply["reasoning_content"], THOUGHT);
    assert_eq!(
        reply["reasoning_details"],
        json!([{"type": "reasoning.text", "text": THOUGHT, "signature": THOUGHT_SIGNATURE, "format": "anthropic-claude-v1", "index": 0}])
    );

    // The client sends the assistant message back as it got it.
    let answer = gw.post("/v1/chat/completions", &next_turn(reply).to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "It is 18°C in Paris.");
    let sent = &mock.chats()[1].body;
    assert_eq!(sent["thinking"], json!({"type": "enabled", "budget_tokens": 4096}), "thinking stays on");
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": [thought_block(), paris_call()]}),
        "the thinking block, signature and all, first"
    );
}

#[tokio::test]
async fn a_streamed_redacted_and_signed_thinking_go_back_in_order() {
    let mock = Mock::start().await;
    mock.on_all(Behavior::Custom(Arc::new(thinking_responder(vec![redacted_block(), thought_block(), paris_call()]))));
    let gw = start(&format!("providers:\n{}", anthropic_provider("ant", &mock, &["claude-e2e"]))).await;

    let mut first = json!({"model": "ant/claude-e2e", "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": weather_tools(), "reasoning_effort": "medium", "max_tokens": 8000, "stream": true});
    first["stream_options"] = json!({"include_usage": true});
    let answer = Answer::read(send(&gw.url("/v1/chat/completions"), "POST", &first.to_string(), &[]).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");

    // Accumulate the stream as a chat client does: texts concatenated,
    // reasoning_details entries collected, tool calls merged by index.
    let mut reasoning = String::new();
    let mut details = Vec::new();
    let mut call = json!({"type": "function", "function": {"arguments": ""}});
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        let Some(delta) = chunk["choices"].get(0).map(|c| &c["delta"]) else { continue };
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
        details.extend(delta["reasoning_details"].as_array().cloned().unwrap_or_default());
        if let Some(piece) = delta["tool_calls"].get(0) {
            if let Some(id) = piece.get("id") {
                call["id"] = id.clone();
            }
            if let Some(name) = piece["function"].get("name") {
                call["function"]["name"] = name.clone();
            }
            let arguments = call["function"]["arguments"].as_str().unwrap().to_owned();
            call["function"]["arguments"] =
                json!(arguments + piece["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(reasoning, THOUGHT);
    assert_eq!(
        details,
        [
            json!({"type": "reasoning.encrypted", "data": REDACTED_DATA, "format": "anthropic-claude-v1", "index": 0}),
            json!({"type": "reasoning.text", "signature": THOUGHT_SIGNATURE, "format": "anthropic-claude-v1", "index": 1}),
        ]
    );
    let reply = json!({"role": "assistant", "content": null, "reasoning_content": reasoning,
        "reasoning_details": details, "tool_calls": [call]});

    let answer = gw.post("/v1/chat/completions", &next_turn(reply).to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "It is 18°C in Paris.");
    let sent = &mock.chats()[1].body;
    assert_eq!(sent["thinking"]["type"], "enabled");
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": [redacted_block(), thought_block(), paris_call()]}),
        "the redacted block and the thinking rebuilt from the stream, in their order, first"
    );
}

#[tokio::test]
async fn thinking_goes_off_for_a_tool_turn_another_model_made() {
    let mock = Mock::start().await;
    mock.on_all(Behavior::Custom(Arc::new(thinking_responder(vec![thought_block(), paris_call()]))));
    let gw = start(&format!("providers:\n{}", anthropic_provider("ant", &mock, &["claude-e2e"]))).await;

    // The tool call came from another model (its reasoning unsigned), and
    // the agent now asks Claude, thinking, to go on.
    let reply = json!({"role": "assistant", "content": null, "reasoning_content": "Paris, so get_weather.",
        "tool_calls": [{"id": "call_other_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]});
    let answer = gw.post("/v1/chat/completions", &next_turn(reply).to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "It is 18°C in Paris.");
    let sent = &mock.chats()[0].body;
    assert_eq!(sent["thinking"], json!({"type": "disabled"}), "thinking off for this request");
    assert_eq!(
        sent["messages"][1]["content"],
        json!([{"type": "tool_use", "id": "call_other_1", "name": "get_weather", "input": {"city": "Paris"}}]),
        "another model's reasoning is not sent as thinking"
    );
}
