//! The `cohere` plugin: OpenAI requests → Cohere v2 chat/embed requests,
//! Cohere answers, streams, listings and errors → OpenAI shapes. First
//! through the real component, then end to end through the gateway against
//! a mock that speaks Cohere v2. Samples follow Cohere's v2 API reference.

use std::sync::Arc;

use freeway::plugin::{ErrorKind, Plugin, QuotaWindow, StreamEvent, Target, UpstreamRequest};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::support::gateway::{Answer, provider, start};
use crate::support::mock::{Behavior, Mock, Reply, Seen};
use crate::support::plugins;

const BASE: &str = "https://api.cohere.com/v2";
const MODEL: &str = "command-a-03-2025";

fn plugin() -> Arc<Plugin> {
    plugins::builtin("cohere")
}

fn target(options: &[(String, String)]) -> Target<'_> {
    Target { base_url: BASE, model: MODEL, key: Some("co-key"), options }
}

fn header<'a>(req: &'a UpstreamRequest, name: &str) -> &'a str {
    req.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_str().unwrap()).unwrap_or("")
}

/// Builds a chat request; returns it and its body as JSON.
fn build(request: Value) -> (UpstreamRequest, Value) {
    let req = plugin().session().unwrap().build_chat(request.to_string().as_bytes(), &target(&[])).unwrap();
    let body = serde_json::from_slice(&req.body).unwrap();
    (req, body)
}

fn build_error(request: Value) -> String {
    plugin().session().unwrap().build_chat(request.to_string().as_bytes(), &target(&[])).unwrap_err().to_string()
}

/// Decodes a chat answer; returns the OpenAI body and the usage reported.
fn decode(body: &Value) -> (Value, Option<(u64, u64)>) {
    let decoded = plugin().session().unwrap().decode_chat(body.to_string().as_bytes(), &target(&[])).unwrap();
    let usage = decoded.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
    (serde_json::from_slice(&decoded.body).unwrap(), usage)
}

fn classify(status: u16, body: &str) -> ErrorKind {
    let status = StatusCode::from_u16(status).unwrap();
    plugin().session().unwrap().classify_error(status, &HeaderMap::new(), body.as_bytes()).unwrap()
}

/// Feeds a stream in these pieces and returns every event.
fn stream(pieces: &[&[u8]]) -> Vec<StreamEvent> {
    plugins::stream_events(&plugin(), &target(&[]), pieces)
}

/// The JSON of each chunk event (panics on anything else).
fn chunks(events: &[StreamEvent]) -> Vec<Value> {
    plugins::chunk_jsons(events)
}

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect()
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[test]
fn a_request_maps_system_prompt_turns_and_parameters() {
    let (req, body) = build(json!({
        "model": "co/command-a",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi, how can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "2+2?"}]},
        ],
        "temperature": 0.2,
        "max_tokens": 100,
        "stop": "END",
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "top_p": 0.9,
        "user": "dropped",
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
    }));
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.url, "https://api.cohere.com/v2/chat");
    assert_eq!(header(&req, "authorization"), "Bearer co-key");
    assert_eq!(header(&req, "content-type"), "application/json");
    assert_eq!(header(&req, "accept"), "application/json");
    assert_eq!(
        body,
        json!({
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi, how can I help?"},
                {"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "2+2?"}]},
            ],
            "temperature": 0.2,
            "max_tokens": 100,
            "stop_sequences": ["END"],
            "seed": 7,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.25,
            "p": 0.9,
            "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
        })
    );
}

#[test]
fn a_stream_request_says_so_and_other_parameters_map() {
    let (req, body) = build(json!({
        "model": "x",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "developer", "content": "rules"}, {"role": "user", "content": "hi"}],
        "max_completion_tokens": 50,
        "stop": ["a", "b"],
        "response_format": {"type": "json_object"},
    }));
    assert_eq!(header(&req, "accept"), "text/event-stream");
    assert_eq!(body["stream"], true);
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "rules"}));
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["stop_sequences"], json!(["a", "b"]));
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert!(body.get("stream_options").is_none());

    let (_, plain) = build(json!({"messages": [{"role": "user", "content": "hi"}], "stream": false}));
    assert!(plain.get("stream").is_none(), "{plain}");
    assert!(plain.get("tools").is_none());
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    }})
}

#[test]
fn tools_tool_calls_and_tool_results_map_to_v2_messages() {
    let time_tool = json!({"type": "function", "function": {"name": "get_time"}});
    let (_, body) = build(json!({
        "messages": [
            {"role": "user", "content": "weather in Toronto?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        ],
        "tools": [weather_tool(), time_tool],
        "tool_choice": "required",
    }));
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "weather in Toronto?"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        ])
    );
    assert_eq!(
        body["tools"],
        json!([
            weather_tool(),
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
        ])
    );
    assert_eq!(body["tool_choice"], "REQUIRED");
    assert!(body.get("strict_tools").is_none());
}

#[test]
fn tool_choice_none_auto_and_a_named_function() {
    let request = |choice: Value| {
        json!({"messages": [{"role": "user", "content": "hi"}], "tools": [weather_tool(),
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}],
            "tool_choice": choice})
    };
    let (_, none) = build(request(json!("none")));
    assert_eq!(none["tool_choice"], "NONE");
    let (_, auto) = build(request(json!("auto")));
    assert!(auto.get("tool_choice").is_none());
    assert_eq!(auto["tools"].as_array().unwrap().len(), 2);
    // A named function: that tool alone, and a call required.
    let (_, named) = build(request(json!({"type": "function", "function": {"name": "get_time"}})));
    assert_eq!(named["tool_choice"], "REQUIRED");
    assert_eq!(
        named["tools"],
        json!([{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}])
    );
    let missing = build_error(request(json!({"type": "function", "function": {"name": "nope"}})));
    assert!(missing.contains("nope"), "{missing}");
}

#[test]
fn requests_cohere_cannot_serve_are_refused_clearly() {
    let n = build_error(json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}));
    assert!(n.contains("n > 1"), "{n}");
    let role = build_error(json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}));
    assert!(role.contains("function"), "{role}");
    let no_id = build_error(json!({"messages": [{"role": "tool", "content": "x"}]}));
    assert!(no_id.contains("tool_call_id"), "{no_id}");
    let empty = build_error(json!({"messages": []}));
    assert!(empty.contains("no messages"), "{empty}");
    let audio = build_error(json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}));
    assert!(audio.contains("input_audio"), "{audio}");
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

fn usage_sample() -> Value {
    json!({"billed_units": {"input_tokens": 5, "output_tokens": 3}, "tokens": {"input_tokens": 71, "output_tokens": 3}})
}

#[test]
fn a_text_answer_becomes_a_chat_completion() {
    let (body, usage) = decode(&json!({
        "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
        "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}]},
        "usage": usage_sample(),
    }));
    assert_eq!(
        body,
        json!({
            "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"},
                "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 71, "completion_tokens": 3, "total_tokens": 74},
        })
    );
    assert_eq!(usage, Some((71, 3)));
}

#[test]
fn a_tool_call_answer_becomes_openai_tool_calls() {
    let (body, _) = decode(&json!({
        "id": "r1",
        "finish_reason": "TOOL_CALL",
        "message": {
            "role": "assistant",
            "tool_plan": "I will look up the weather in Toronto.",
            "tool_calls": [{"id": "get_weather_1byjy32y4hvq", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}],
        },
        "usage": usage_sample(),
    }));
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["reasoning_content"], "I will look up the weather in Toronto.");
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": "get_weather_1byjy32y4hvq", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}])
    );
}

#[test]
fn each_finish_reason_maps_and_error_is_an_error() {
    for (cohere, openai) in [
        ("COMPLETE", "stop"),
        ("STOP_SEQUENCE", "stop"),
        ("MAX_TOKENS", "length"),
        ("TOOL_CALL", "tool_calls"),
        ("ERROR_TOXIC", "content_filter"),
        ("TIMEOUT", "length"),
    ] {
        let (body, _) = decode(&json!({"id": "x", "finish_reason": cohere,
            "message": {"role": "assistant", "content": [{"type": "text", "text": "t"}]}}));
        assert_eq!(body["choices"][0]["finish_reason"], openai, "{cohere}");
    }
    let failed = json!({"id": "x", "finish_reason": "ERROR", "message": {"role": "assistant", "content": []}});
    let error = plugin().session().unwrap().decode_chat(failed.to_string().as_bytes(), &target(&[])).unwrap_err();
    assert!(error.to_string().contains("ERROR"), "{error}");
    let body = json!({"id": "x", "message": "invalid request: message must not be empty"});
    let error = plugin().session().unwrap().decode_chat(body.to_string().as_bytes(), &target(&[])).unwrap_err();
    assert!(error.to_string().contains("message must not be empty"), "{error}");
}

#[test]
fn usage_falls_back_to_billed_units_and_may_be_absent() {
    let (body, usage) = decode(&json!({"id": "x", "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "t"}]},
        "usage": {"billed_units": {"input_tokens": 9.0, "output_tokens": 4.0}}}));
    assert_eq!(usage, Some((9, 4)));
    assert_eq!(body["usage"]["total_tokens"], 13);
    let (body, usage) = decode(&json!({"id": "x", "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "t"}]}}));
    assert_eq!(usage, None);
    assert!(body.get("usage").is_none());
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// A stream with text (multi-byte characters included), a tool plan, a
/// citation and one tool call whose arguments arrive in fragments.
fn sample_stream() -> String {
    let call = |args: &str| json!({"function": {"arguments": args}});
    sse(&[
        json!({"id": "29f14a5a-0001", "type": "message-start", "delta": {"message":
            {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
        json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
        json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Héllo "}}}}),
        json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "wörld 👋"}}}}),
        json!({"type": "citation-start", "index": 0, "delta": {"message": {"citations": {"start": 0, "end": 5, "text": "Héllo"}}}}),
        json!({"type": "citation-end", "index": 0}),
        json!({"type": "content-end", "index": 0}),
        json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "Checking the weather."}}}),
        json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls":
            {"id": "get_weather_abc123", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}}),
        json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": call("{\"loc")}}}),
        json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": call("ation\": \"Zürich\"}")}}}),
        json!({"type": "tool-call-end", "index": 0}),
        json!({"type": "tool-call-start", "index": 1, "delta": {"message": {"tool_calls":
            {"id": "get_time_def456", "type": "function", "function": {"name": "get_time", "arguments": ""}}}}}),
        json!({"type": "tool-call-delta", "index": 1, "delta": {"message": {"tool_calls": call("{}")}}}),
        json!({"type": "tool-call-end", "index": 1}),
        json!({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": usage_sample()}}),
    ])
}

#[test]
fn a_stream_becomes_openai_chunks() {
    let events = stream(&[sample_stream().as_bytes()]);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let chunks = chunks(&events);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], "29f14a5a-0001");
        assert_eq!(chunk["model"], MODEL);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| &c["delta"]).collect();
    let text: String = deltas.iter().filter_map(|d| d["content"].as_str()).collect();
    assert_eq!(text, "Héllo wörld 👋");
    let reasoning: String = deltas.iter().filter_map(|d| d["reasoning_content"].as_str()).collect();
    assert_eq!(reasoning, "Checking the weather.");

    let calls: Vec<&Value> = deltas.iter().filter_map(|d| d.get("tool_calls")).map(|c| &c[0]).collect();
    assert_eq!(
        calls[0],
        &json!({"index": 0, "id": "get_weather_abc123", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}})
    );
    assert_eq!(calls[1], &json!({"index": 0, "function": {"arguments": "{\"loc"}}));
    let arguments = |index: u64| -> String {
        calls.iter().filter(|c| c["index"] == index).filter_map(|c| c["function"]["arguments"].as_str()).collect()
    };
    assert_eq!(serde_json::from_str::<Value>(&arguments(0)).unwrap(), json!({"location": "Zürich"}));
    // A parallel call gets the next index.
    assert_eq!(calls[3]["id"], "get_time_def456");
    assert_eq!(calls[3]["function"]["name"], "get_time");
    assert_eq!(arguments(1), "{}");
    assert_eq!(calls.len(), 5);

    let finishes: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
    // Then a usage-only chunk, then Done.
    let n = events.len();
    match &events[n - 2] {
        StreamEvent::Chunk { json, usage } => {
            let usage = usage.unwrap();
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (71, 3));
            let chunk: Value = serde_json::from_slice(json).unwrap();
            assert_eq!(chunk["choices"], json!([]));
            assert_eq!(chunk["usage"]["total_tokens"], 74);
        }
        other => panic!("expected the usage chunk, got {other:?}"),
    }
}

#[test]
fn a_stream_decodes_the_same_whatever_the_split_points() {
    let sample = sample_stream();
    let bytes = sample.as_bytes();
    let whole = stream(&[bytes]);
    assert!(whole.len() > 8);
    for i in 0..=bytes.len() {
        assert_eq!(stream(&[&bytes[..i], &bytes[i..]]), whole, "split at byte {i}");
    }
    let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(stream(&one_by_one), whole, "one byte at a time");
    for size in [2, 3, 5, 7, 13, 64] {
        let pieces: Vec<&[u8]> = bytes.chunks(size).collect();
        assert_eq!(stream(&pieces), whole, "pieces of {size}");
    }
}

#[test]
fn stream_errors_and_early_ends_are_errors() {
    let start = json!({"id": "s", "type": "message-start", "delta": {"message": {"role": "assistant"}}});
    let text = json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "hi"}}}});

    let failed = sse(&[start.clone(), json!({"type": "message-end", "delta": {"finish_reason": "ERROR"}})]);
    let events = stream(&[failed.as_bytes()]);
    assert!(matches!(events.last(), Some(StreamEvent::Error { .. })), "{events:?}");
    assert!(!events.contains(&StreamEvent::Done));

    let with_message = sse(&[
        start.clone(),
        json!({"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "the model broke"}}),
    ]);
    let events = stream(&[with_message.as_bytes()]);
    assert_eq!(events.last(), Some(&StreamEvent::Error { message: "the model broke".to_owned() }));

    let cut = sse(&[start.clone(), text.clone()]);
    let events = stream(&[cut.as_bytes()]);
    assert_eq!(chunks(&events).len(), 2, "what arrived is passed on");
    assert!(matches!(events.last(), Some(StreamEvent::Error { message }) if message.contains("message-end")));

    let garbage = format!("{}data: {{not json\n\n", sse(std::slice::from_ref(&start)));
    let events = stream(&[garbage.as_bytes()]);
    assert!(matches!(events.last(), Some(StreamEvent::Error { .. })), "{events:?}");

    // A stream that ends normally without usage: no usage chunk.
    let plain = sse(&[start, text, json!({"type": "message-end", "delta": {"finish_reason": "MAX_TOKENS"}})]);
    let events = stream(&[plain.as_bytes()]);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let chunks = chunks(&events);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    assert!(events.iter().all(|e| !matches!(e, StreamEvent::Chunk { usage: Some(_), .. })));
}

// ---------------------------------------------------------------------------
// Errors, models, embeddings
// ---------------------------------------------------------------------------

#[test]
fn upstream_errors_are_classified() {
    let per_minute = r#"{"message":"You are using a Trial key, which is limited to 20 API calls / minute."}"#;
    let monthly = r#"{"message":"You are using a Trial key, which is limited to 1000 API calls / month."}"#;
    assert_eq!(classify(429, per_minute), ErrorKind::RateLimited { retry_after: None, window: QuotaWindow::Minute });
    // The trial key's monthly allowance lasts until the month's reset.
    assert_eq!(classify(429, monthly), ErrorKind::RateLimited { retry_after: None, window: QuotaWindow::Month });
    assert_eq!(classify(402, r#"{"message":"billing limit reached"}"#), ErrorKind::QuotaExhausted);
    assert_eq!(classify(401, r#"{"message":"invalid api token"}"#), ErrorKind::InvalidKey);
    assert_eq!(classify(403, "{}"), ErrorKind::InvalidKey);
    assert_eq!(classify(400, r#"{"message":"invalid request"}"#), ErrorKind::ClientError);
    assert_eq!(classify(422, "{}"), ErrorKind::ClientError);
    for status in [404, 500, 503, 504] {
        assert_eq!(classify(status, "{}"), ErrorKind::Transient, "{status}");
    }
}

#[test]
fn the_model_listing_is_the_v1_listing() {
    let plugin = plugin();
    let req = plugin.build_models(&target(&[])).unwrap();
    assert_eq!(req.method, http::Method::GET);
    assert_eq!(req.url, "https://api.cohere.com/v1/models?endpoint=chat&page_size=1000");
    assert_eq!(header(&req, "authorization"), "Bearer co-key");
    let options = vec![("models_url".to_owned(), "http://proxy/models".to_owned())];
    assert_eq!(plugin.build_models(&target(&options)).unwrap().url, "http://proxy/models");

    let listing = json!({"models": [
        {"name": "command-a-03-2025", "endpoints": ["generate", "chat", "summarize"], "finetuned": false,
            "context_length": 256000.0, "tokenizer_url": "https://storage.googleapis.com/x.json",
            "default_endpoints": ["chat"], "features": ["tools", "strict_tools", "json_mode", "json_schema"]},
        {"name": "command-a-vision-07-2025", "endpoints": ["chat"], "context_length": 128000,
            "features": ["json_mode"], "supports_vision": true},
        {"name": "embed-v4.0", "endpoints": ["embed"], "context_length": 128000},
    ], "next_page_token": null});
    let models = plugin.decode_models(listing.to_string().as_bytes(), &target(&[])).unwrap();
    let summary: Vec<(&str, Option<u64>, Vec<&str>)> = models
        .iter()
        .map(|m| (m.id.as_str(), m.context_length, m.capabilities.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        summary,
        [
            ("command-a-03-2025", Some(256000), vec!["chat", "tools"]),
            ("command-a-vision-07-2025", Some(128000), vec!["chat", "vision"]),
            ("embed-v4.0", Some(128000), vec!["embeddings"]),
        ]
    );
    assert!(plugin.decode_models(br#"{"data": []}"#, &target(&[])).is_err());
}

#[test]
fn embeddings_map_to_cohere_embed_and_back() {
    let target = Target { model: "embed-v4.0", ..target(&[]) };
    let mut session = plugin().session().unwrap();
    let request = json!({"model": "co/embed", "input": ["first", "second"], "dimensions": 256});
    let req = session.build_embeddings(request.to_string().as_bytes(), &target).unwrap();
    assert_eq!(req.url, "https://api.cohere.com/v2/embed");
    assert_eq!(header(&req, "authorization"), "Bearer co-key");
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({"model": "embed-v4.0", "texts": ["first", "second"], "input_type": "search_document",
            "embedding_types": ["float"], "output_dimension": 256})
    );
    let answer = json!({"id": "e1", "embeddings": {"float": [[0.25, -0.5], [1.0, 2.0]]}, "texts": ["first", "second"],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4}},
        "response_type": "embeddings_by_type"});
    let decoded =
        session.decode_embeddings(request.to_string().as_bytes(), answer.to_string().as_bytes(), &target).unwrap();
    assert_eq!(decoded.usage.map(|u| u.prompt_tokens), Some(4));
    assert_eq!(
        serde_json::from_slice::<Value>(&decoded.body).unwrap(),
        json!({"object": "list", "model": "embed-v4.0",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]},
                     {"object": "embedding", "index": 1, "embedding": [1.0, 2.0]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    );

    // One string in; base64 out (little-endian f32s, as OpenAI's SDKs expect).
    let mut session = plugin().session().unwrap();
    let request = json!({"model": "co/embed", "input": "just one", "encoding_format": "base64"});
    let req = session.build_embeddings(request.to_string().as_bytes(), &target).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&req.body).unwrap()["texts"], json!(["just one"]));
    let answer =
        json!({"id": "e2", "embeddings": {"float": [[1.0, -2.0]]}, "meta": {"billed_units": {"input_tokens": 2}}});
    let decoded =
        session.decode_embeddings(request.to_string().as_bytes(), answer.to_string().as_bytes(), &target).unwrap();
    let body: Value = serde_json::from_slice(&decoded.body).unwrap();
    assert_eq!(body["data"][0]["embedding"], "AACAPwAAAMA=");

    let tokens = json!({"model": "co/embed", "input": [[1, 2, 3]]});
    let error = plugin().session().unwrap().build_embeddings(tokens.to_string().as_bytes(), &target).unwrap_err();
    assert!(error.to_string().contains("token"), "{error}");
}

// ---------------------------------------------------------------------------
// End to end: the gateway against a mock speaking Cohere v2
// ---------------------------------------------------------------------------

fn cohere_block(name: &str, mock: &Mock) -> String {
    format!(
        "  {name}:\n    plugin: cohere\n    base_url: http://{}/v2\n    keys: [co-key]\n    models: [{MODEL}]\n",
        mock.addr
    )
}

/// Cohere's answer: a tool call, or (once a tool result came back) text.
fn cohere_tool_round_trip(seen: &Seen) -> Reply {
    let last = seen.body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
    if last["role"] == "tool" {
        return Reply::json(
            200,
            json!({"id": "answer-2", "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": "It is 21°C in Toronto."}]},
                "usage": {"tokens": {"input_tokens": 120, "output_tokens": 9}}})
            .to_string(),
        );
    }
    Reply::json(
        200,
        json!({"id": "answer-1", "finish_reason": "TOOL_CALL",
            "message": {"role": "assistant", "tool_plan": "I will check the weather.",
                "tool_calls": [{"id": "get_weather_r4nd0m", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}]},
            "usage": {"tokens": {"input_tokens": 100, "output_tokens": 20}}})
        .to_string(),
    )
}

#[tokio::test]
async fn a_tool_call_round_trip_through_the_gateway() {
    let mock = Mock::start().await;
    mock.on_all(Behavior::Custom(Arc::new(cohere_tool_round_trip)));
    let gw = start(&format!("providers:\n{}", cohere_block("co", &mock))).await;
    let model = format!("co/{MODEL}");

    let user = json!({"role": "user", "content": "What's the weather in Toronto?"});
    let first = json!({"model": model, "messages": [user], "tools": [weather_tool()]});
    let answer = gw.post("/v1/chat/completions", &first.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = choice["message"]["tool_calls"][0].clone();
    assert_eq!(call["id"], "get_weather_r4nd0m");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"location": "Toronto"}));

    let sent = &mock.chats()[0];
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v2/chat"));
    assert_eq!(sent.key.as_deref(), Some("co-key"));
    assert_eq!(sent.body["model"], MODEL);
    assert_eq!(sent.body["tools"], json!([weather_tool()]));

    // The client runs the tool and sends the result, as the OpenAI SDK does.
    let assistant = json!({"role": "assistant", "content": null, "tool_calls": [call]});
    let result = json!({"role": "tool", "tool_call_id": "get_weather_r4nd0m", "content": "{\"temp_c\": 21}"});
    let second = json!({"model": model, "messages": [user, assistant, result], "tools": [weather_tool()]});
    let answer = gw.post("/v1/chat/completions", &second.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["choices"][0]["message"]["content"], "It is 21°C in Toronto.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 129);

    let sent = &mock.chats()[1];
    let messages = sent.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["tool_calls"][0]["id"], "get_weather_r4nd0m");
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "get_weather_r4nd0m", "content": "{\"temp_c\": 21}"})
    );
}

#[tokio::test]
async fn a_streamed_answer_through_the_gateway() {
    let mock = Mock::start().await;
    let body = sse(&[
        json!({"id": "stream-1", "type": "message-start", "delta": {"message": {"role": "assistant"}}}),
        json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
        json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hello, "}}}}),
        json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "wörld!"}}}}),
        json!({"type": "content-end", "index": 0}),
        json!({"type": "message-end", "delta": {"finish_reason": "COMPLETE",
            "usage": {"tokens": {"input_tokens": 12, "output_tokens": 4}}}}),
    ]);
    // Pieces cut at awkward places: mid-line and mid-JSON (a piece is a
    // String, so cuts move to the next character boundary).
    let mut pieces = Vec::new();
    let mut rest = body.as_str();
    while !rest.is_empty() {
        let mut at = rest.len().min(37);
        while !rest.is_char_boundary(at) {
            at += 1;
        }
        pieces.push(rest[..at].to_owned());
        rest = &rest[at..];
    }
    assert!(pieces.len() > 10);
    mock.on_all(Behavior::Custom(Arc::new(move |_: &Seen| Reply::sse(pieces.clone()))));
    let gw = start(&format!("providers:\n{}", cohere_block("co", &mock))).await;

    let answer = Answer::read(gw.stream(&format!("co/{MODEL}")).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)).filter_map(|c| c["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Hello, wörld!");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 16);

    let sent = &mock.chats()[0];
    assert!(sent.stream);
    assert_eq!(sent.body["stream"], true);
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}])
    );
    assert_eq!(sent.body["temperature"], 0.1);
}

#[tokio::test]
async fn a_cohere_429_falls_back_and_the_model_cools() {
    let co = Mock::start().await;
    let b = Mock::start().await;
    co.on_all(Behavior::Custom(Arc::new(|_: &Seen| {
        Reply::json(429, r#"{"message":"You are using a Trial key, which is limited to 20 API calls / minute."}"#)
    })));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [co/{MODEL}, b/m2]\n",
        cohere_block("co", &co),
        provider("b", &b.base_url(), &["kb"], &["m2"]),
    );
    let gw = start(&yaml).await;

    let first = gw.chat("r").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.routed_via(), "b/m2");
    assert_eq!(first.fallback_attempts(), 1);
    assert_eq!(co.calls_to(MODEL), 1);

    let next = gw.chat("r").await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.routed_via(), "b/m2");
    assert_eq!(next.fallback_attempts(), 0, "skipping a cooling model is not an attempt");
    assert_eq!(co.calls_to(MODEL), 1, "the rate-limited cohere model was called again");
    assert_eq!(b.calls_to("m2"), 2);
}
