//! The gemini plugin: OpenAI requests → Gemini's native API and back, tested
//! through the real component (translation) and through a gateway in front
//! of a mock that speaks Gemini (end to end). The Gemini samples follow the
//! shapes in Google's API reference (generateContent, streamGenerateContent
//! with alt=sse, batchEmbedContents, models.list, google.rpc error bodies).

use std::sync::Arc;
use std::time::Duration;

use freeway::plugin::{ErrorKind, Plugin, QuotaWindow, StreamEvent, Target, UpstreamRequest};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::support::gateway::{Answer, provider, start};
use crate::support::mock::{Behavior, Mock, Reply, Seen};
use crate::support::plugins;

const BASE: &str = "https://example.test/v1beta";
const NO_OPTIONS: &[(String, String)] = &[];

fn plugin() -> Arc<Plugin> {
    plugins::builtin("gemini")
}

fn target(model: &str) -> Target<'_> {
    Target { base_url: BASE, model, key: Some("gk-123"), options: NO_OPTIONS }
}

fn build_for(model: &str, request: &Value) -> (UpstreamRequest, Value) {
    let mut s = plugin().session().unwrap();
    let built = s.build_chat(request.to_string().as_bytes(), &target(model)).unwrap();
    let body: Value = serde_json::from_slice(&built.body).unwrap();
    (built, body)
}

fn build(request: &Value) -> (UpstreamRequest, Value) {
    build_for("gemini-2.5-flash", request)
}

fn build_error(request: &Value) -> String {
    let mut s = plugin().session().unwrap();
    s.build_chat(request.to_string().as_bytes(), &target("gemini-2.5-flash")).unwrap_err().to_string()
}

fn header<'a>(request: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
    request.headers.iter().find(|(n, _)| n.as_str() == name).map(|(_, v)| v.to_str().unwrap())
}

fn decode(answer: &Value) -> (Value, Option<freeway::plugin::Usage>) {
    let mut s = plugin().session().unwrap();
    let decoded = s.decode_chat(answer.to_string().as_bytes(), &target("gemini-2.5-flash")).unwrap();
    (serde_json::from_slice(&decoded.body).unwrap(), decoded.usage)
}

fn classify(status: u16, body: &Value) -> ErrorKind {
    let mut s = plugin().session().unwrap();
    s.classify_error(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), body.to_string().as_bytes()).unwrap()
}

/// Feeds `pieces` to a fresh stream decoder, then ends the body.
fn decode_stream(plugin: &Arc<Plugin>, pieces: &[&[u8]]) -> Vec<StreamEvent> {
    plugins::stream_events(plugin, &target("gemini-2.5-flash"), pieces)
}

fn chunk_json(event: &StreamEvent) -> Value {
    match event {
        StreamEvent::Chunk { json, .. } => serde_json::from_slice(json).unwrap(),
        other => panic!("not a chunk: {other:?}"),
    }
}

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("data: {e}\r\n\r\n")).collect()
}

fn usage_metadata() -> Value {
    json!({"promptTokenCount": 12, "candidatesTokenCount": 7, "thoughtsTokenCount": 5, "totalTokenCount": 24})
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[test]
fn gemini_request_maps_system_prompt_roles_and_parameters() {
    let (request, body) = build(&json!({
        "model": "client-alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "Who are you?"}]},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "assistant", "content": "Je suis Gemini."},
            {"role": "user", "content": "Merci"}
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 50,
        "max_completion_tokens": 64,
        "stop": "END",
        "n": 2,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "response_format": {"type": "json_object"},
        "stream_options": null
    }));
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.url, format!("{BASE}/models/gemini-2.5-flash:generateContent"));
    assert_eq!(header(&request, "x-goog-api-key"), Some("gk-123"));
    assert_eq!(header(&request, "authorization"), None, "the key goes in x-goog-api-key only");
    assert_eq!(header(&request, "content-type"), Some("application/json"));
    assert_eq!(body["systemInstruction"], json!({"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]}));
    assert_eq!(
        body["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Hi"}, {"text": "Who are you?"}]},
            {"role": "model", "parts": [{"text": "Bonjour."}, {"text": "Je suis Gemini."}]},
            {"role": "user", "parts": [{"text": "Merci"}]}
        ]),
        "roles map to user/model and consecutive turns of one role merge"
    );
    assert_eq!(
        body["generationConfig"],
        json!({
            "temperature": 0.3,
            "topP": 0.9,
            "maxOutputTokens": 64,
            "stopSequences": ["END"],
            "candidateCount": 2,
            "seed": 7,
            "presencePenalty": 0.5,
            "frequencyPenalty": 0.25,
            "responseMimeType": "application/json"
        })
    );
    assert!(body.get("model").is_none() && body.get("messages").is_none(), "no OpenAI fields leak: {body}");
    assert!(body.get("tools").is_none() && body.get("toolConfig").is_none());
}

#[test]
fn gemini_request_uses_the_sse_endpoint_for_streams() {
    let (request, body) =
        build(&json!({"stream": true, "messages": [{"role": "user", "content": "Hi"}], "stop": ["a", "b"]}));
    assert_eq!(request.url, format!("{BASE}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"));
    assert_eq!(header(&request, "accept"), Some("text/event-stream"));
    assert_eq!(body["generationConfig"]["stopSequences"], json!(["a", "b"]));
    assert!(body.get("stream").is_none());
}

#[test]
fn gemini_request_maps_tools_and_tool_choice() {
    let tools = json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "strict": true,
            "parameters": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "city": {"type": "string", "description": "City name", "format": "uri"},
                    "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
                    "when": {"type": "string", "format": "date-time"},
                    "place": {"$ref": "#/$defs/place"}
                },
                "required": ["city", "ghost"],
                "$defs": {"place": {"type": "object", "additionalProperties": false,
                    "properties": {"lat": {"type": "number"}, "kind": {"const": "point"}}}}
            }
        }},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    ]);
    let (_, body) = build(&json!({"messages": [{"role": "user", "content": "Weather?"}], "tools": tools}));
    assert_eq!(
        body["tools"],
        json!([{"functionDeclarations": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "City name"},
                        "unit": {"type": "string", "nullable": true, "enum": ["c", "f"]},
                        "when": {"type": "string", "format": "date-time"},
                        "place": {"type": "object", "properties": {
                            "lat": {"type": "number"},
                            "kind": {"type": "string", "enum": ["point"]}
                        }}
                    },
                    "required": ["city"]
                }
            },
            {"name": "now"}
        ]}]),
        "JSON-schema keywords Gemini refuses are dropped or rewritten"
    );
    assert!(body.get("toolConfig").is_none(), "no tool_choice, no toolConfig");

    let cases = [
        (json!("none"), json!({"mode": "NONE"})),
        (json!("auto"), json!({"mode": "AUTO"})),
        (json!("required"), json!({"mode": "ANY"})),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
        ),
    ];
    for (choice, expected) in cases {
        let (_, body) = build(&json!({
            "messages": [{"role": "user", "content": "Weather?"}],
            "tools": tools,
            "tool_choice": choice
        }));
        assert_eq!(body["toolConfig"], json!({"functionCallingConfig": expected}), "tool_choice {choice}");
    }
}

#[test]
fn gemini_request_maps_tool_calls_and_tool_results() {
    let messages = json!([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 21}"},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks"}
    ]);
    let (_, body) = build(&json!({"messages": messages}));
    assert_eq!(
        body["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}}
            ]},
            {"role": "model", "parts": [{"text": "Done."}]},
            {"role": "user", "parts": [{"text": "Thanks"}]}
        ]),
        "function names come from the earlier tool calls; non-object results are wrapped"
    );

    // Gemini 3 validates thought signatures: a signature the client kept
    // (in extra_content, as Google's OpenAI API returns it) goes back; a
    // turn without one gets the documented skip sentinel on its first call.
    let signed = json!([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"},
            "extra_content": {"google": {"thought_signature": "c2lnbmF0dXJl"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            {"id": "c3", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "tool", "tool_call_id": "c3", "content": "snow"}
    ]);
    let (_, body) = build_for("gemini-3-flash-preview", &json!({"messages": signed}));
    assert_eq!(body["contents"][1]["parts"][0]["thoughtSignature"], "c2lnbmF0dXJl");
    assert_eq!(body["contents"][3]["parts"][0]["thoughtSignature"], "skip_thought_signature_validator");
    assert!(body["contents"][3]["parts"][1].get("thoughtSignature").is_none(), "only the first parallel call");
    let (_, old) = build_for("gemini-2.5-flash", &json!({"messages": signed}));
    assert!(old["contents"][3]["parts"][0].get("thoughtSignature").is_none(), "no sentinel before Gemini 3");

    let error = build_error(&json!({"messages": [
        {"role": "user", "content": "x"},
        {"role": "tool", "tool_call_id": "unknown", "content": "y"}
    ]}));
    assert!(error.contains("unknown"), "{error}");
}

#[test]
fn gemini_request_maps_images_and_json_schema() {
    let (_, body) = build(&json!({
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.test/cat.JPG?size=large"}}
        ]}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": {
            "type": "object", "additionalProperties": false,
            "properties": {"animal": {"type": "string"}}, "required": ["animal"]
        }}}
    }));
    assert_eq!(
        body["contents"][0]["parts"],
        json!([
            {"text": "What is in these?"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.test/cat.JPG?size=large"}}
        ])
    );
    assert_eq!(body["generationConfig"]["responseMimeType"], "application/json");
    assert_eq!(
        body["generationConfig"]["responseSchema"],
        json!({"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"]})
    );
    let error = build_error(&json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.test/image"}}
    ]}]}));
    assert!(error.contains("data: URL"), "an unknown media type fails clearly: {error}");
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

#[test]
fn gemini_answer_with_text_becomes_a_chat_completion() {
    let (answer, usage) = decode(&json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "Thinking about greetings", "thought": true},
                {"text": "Hello"},
                {"text": ", world"}
            ]},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": usage_metadata(),
        "modelVersion": "gemini-2.5-flash-001",
        "responseId": "resp-42"
    }));
    assert_eq!(answer["id"], "chatcmpl-resp-42");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["created"], 0);
    assert_eq!(answer["model"], "gemini-2.5-flash");
    let choice = &answer["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello, world", "thought parts are not content");
    assert_eq!(choice["message"]["reasoning_content"], "Thinking about greetings");
    assert!(choice["message"].get("tool_calls").is_none());
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 12);
    assert_eq!(answer["usage"]["completion_tokens"], 12, "thoughts count as completion");
    assert_eq!(answer["usage"]["total_tokens"], 24);
    let usage = usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (12, 12));
}

#[test]
fn gemini_answer_with_function_calls_becomes_tool_calls() {
    let (answer, _) = decode(&json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": 2}}, "thoughtSignature": "sig=="},
                {"functionCall": {"id": "gem-7", "name": "get_time"}}
            ]},
            "finishReason": "STOP"
        }],
        "responseId": "r1"
    }));
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "call_r1_0", "derived from the response id");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris", "days": 2}));
    assert_eq!(calls[0]["extra_content"]["google"]["thought_signature"], "sig==");
    assert_eq!(calls[1]["id"], "gem-7", "Gemini's own id is kept");
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert!(answer.get("usage").is_none());
}

#[test]
fn gemini_finish_reasons_map_to_openai() {
    let cases = [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("LANGUAGE", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
    ];
    for (gemini, openai) in cases {
        let (answer, _) = decode(&json!({"candidates": [{
            "content": {"role": "model", "parts": [{"text": "partial"}]},
            "finishReason": gemini
        }]}));
        assert_eq!(answer["choices"][0]["finish_reason"], openai, "{gemini}");
        assert_eq!(answer["choices"][0]["message"]["content"], "partial");
    }
    // A safety stop may come with no content at all.
    let (answer, _) = decode(&json!({"candidates": [{"finishReason": "SAFETY", "index": 0}]}));
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(answer["choices"][0]["message"]["content"], "");
}

#[test]
fn gemini_blocked_prompt_and_several_candidates() {
    let (answer, usage) = decode(&json!({
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}
    }));
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(usage.unwrap().prompt_tokens, 9);

    let (answer, _) = decode(&json!({"candidates": [
        {"content": {"role": "model", "parts": [{"text": "one"}]}, "finishReason": "STOP", "index": 0},
        {"content": {"role": "model", "parts": [{"text": "two"}]}, "finishReason": "MAX_TOKENS", "index": 1}
    ]}));
    assert_eq!(answer["choices"][1]["index"], 1);
    assert_eq!(answer["choices"][1]["message"]["content"], "two");
    assert_eq!(answer["choices"][1]["finish_reason"], "length");

    let mut s = plugin().session().unwrap();
    let error = s.decode_chat(br#"{"candidates": []}"#, &target("gemini-2.5-flash")).unwrap_err();
    assert!(error.to_string().contains("no candidates"), "{error}");
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

fn sample_stream() -> String {
    sse(&[
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "planning", "thought": true}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}, "modelVersion": "gemini-2.5-flash", "responseId": "s-1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Checking Zürich ☀ "}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 15}, "responseId": "s-1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Zürich"}}, "thoughtSignature": "c2ln"}
            ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage_metadata(), "responseId": "s-1"}),
    ])
}

#[test]
fn gemini_stream_becomes_openai_chunks() {
    let plugin = plugin();
    let events = decode_stream(&plugin, &[sample_stream().as_bytes()]);
    assert_eq!(events.len(), 6, "{events:#?}");
    let chunks: Vec<Value> = events[..5].iter().map(chunk_json).collect();
    for chunk in &chunks {
        assert_eq!(chunk["id"], "chatcmpl-s-1");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gemini-2.5-flash");
        assert_eq!(chunk["created"], 0);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "reasoning_content": "planning"}));
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Checking Zürich ☀ "}));
    assert_eq!(
        chunks[2]["choices"][0]["delta"]["tool_calls"],
        json!([{
            "index": 0,
            "id": "call_s-1_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Zürich\"}"},
            "extra_content": {"google": {"thought_signature": "c2ln"}}
        }])
    );
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(
        chunks[4]["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 12, "total_tokens": 24,
        "completion_tokens_details": {"reasoning_tokens": 5}})
    );
    match &events[4] {
        StreamEvent::Chunk { usage: Some(u), .. } => assert_eq!((u.prompt_tokens, u.completion_tokens), (12, 12)),
        other => panic!("the usage chunk carries usage: {other:?}"),
    }
    for event in &events[..4] {
        assert!(matches!(event, StreamEvent::Chunk { usage: None, .. }), "{event:?}");
    }
    assert_eq!(events[5], StreamEvent::Done);
}

#[test]
fn gemini_stream_is_decoded_the_same_at_every_split_point() {
    let plugin = plugin();
    let sample = sample_stream();
    let bytes = sample.as_bytes();
    let whole = decode_stream(&plugin, &[bytes]);
    assert_eq!(whole.last(), Some(&StreamEvent::Done));
    for split in 1..bytes.len() {
        let (a, b) = bytes.split_at(split);
        assert_eq!(decode_stream(&plugin, &[a, b]), whole, "split at byte {split}");
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(decode_stream(&plugin, &singles), whole, "one byte at a time");
    // LF-only event separators decode the same.
    let lf = sample.replace("\r\n", "\n");
    assert_eq!(decode_stream(&plugin, &[lf.as_bytes()]), whole);
}

#[test]
fn gemini_stream_errors_and_truncation_are_reported() {
    let plugin = plugin();
    let text = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]});
    let error = json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}});
    let events = decode_stream(&plugin, &[sse(&[text.clone(), error]).as_bytes()]);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1], StreamEvent::Error { message: "The model is overloaded.".to_owned() });

    let events = decode_stream(&plugin, &[sse(std::slice::from_ref(&text)).as_bytes()]);
    assert!(
        matches!(events.last(), Some(StreamEvent::Error { message }) if message.contains("finish reason")),
        "a stream cut before its finish reason is an error, not Done: {events:?}"
    );
    assert!(!events.contains(&StreamEvent::Done));

    let blocked = json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}});
    let events = decode_stream(&plugin, &[sse(&[blocked]).as_bytes()]);
    assert!(
        matches!(events.as_slice(), [StreamEvent::Error { message }] if message.contains("PROHIBITED_CONTENT")),
        "{events:?}"
    );

    let limited = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]},
        "finishReason": "MAX_TOKENS", "index": 0}]});
    let events = decode_stream(&plugin, &[sse(&[limited]).as_bytes()]);
    assert_eq!(chunk_json(&events[1])["choices"][0]["finish_reason"], "length");
    assert_eq!(events.last(), Some(&StreamEvent::Done), "no usage known: no usage chunk");
    assert_eq!(events.len(), 3);
}

// ---------------------------------------------------------------------------
// Errors, models, embeddings
// ---------------------------------------------------------------------------

fn rate_limited(delay: &str) -> Value {
    json!({"error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "quotas", "url": "https://ai.google.dev"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
        ]
    }})
}

#[test]
fn gemini_errors_are_classified() {
    assert_eq!(
        classify(429, &rate_limited("30s")),
        ErrorKind::RateLimited { retry_after: Some(Duration::from_secs(30)), window: QuotaWindow::Minute }
    );
    assert_eq!(
        classify(429, &rate_limited("1.5s")),
        ErrorKind::RateLimited { retry_after: Some(Duration::from_millis(1500)), window: QuotaWindow::Minute }
    );
    assert_eq!(
        classify(429, &json!({"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}})),
        ErrorKind::RateLimited { retry_after: None, window: QuotaWindow::Unknown }
    );
    let invalid_key = json!({"error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
            "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]
    }});
    assert_eq!(classify(400, &invalid_key), ErrorKind::InvalidKey);
    let bad_request = json!({"error": {
        "code": 400,
        "message": "* GenerateContentRequest.contents: contents is not specified",
        "status": "INVALID_ARGUMENT"
    }});
    assert_eq!(classify(400, &bad_request), ErrorKind::ClientError);
    let denied = json!({"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}});
    assert_eq!(classify(403, &denied), ErrorKind::InvalidKey);
    assert_eq!(classify(401, &json!({})), ErrorKind::InvalidKey);
    let missing = json!({"error": {"code": 404, "message": "models/nope is not found", "status": "NOT_FOUND"}});
    assert_eq!(classify(404, &missing), ErrorKind::Transient);
    let overloaded = json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}});
    assert_eq!(classify(503, &overloaded), ErrorKind::Transient);
    assert_eq!(classify(500, &json!("not even an object")), ErrorKind::Transient);
}

#[test]
fn gemini_models_are_listed() {
    let p = plugin();
    let built = p.build_models(&target("")).unwrap();
    assert_eq!(built.method, http::Method::GET);
    assert_eq!(built.url, format!("{BASE}/models?pageSize=1000"));
    assert_eq!(header(&built, "x-goog-api-key"), Some("gk-123"));
    let listing = json!({"models": [
        {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash", "inputTokenLimit": 1048576,
         "outputTokenLimit": 65536, "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent"],
         "thinking": true},
        {"name": "models/gemini-embedding-001", "inputTokenLimit": 2048,
         "supportedGenerationMethods": ["embedContent", "countTextTokens", "countTokens"]},
        {"name": "models/imagen-4.0-generate-001", "supportedGenerationMethods": ["predict"]}
    ], "nextPageToken": "abc"});
    let models = p.decode_models(listing.to_string().as_bytes(), &target("")).unwrap();
    assert_eq!(models.len(), 3);
    assert_eq!(models[0].id, "gemini-2.5-flash");
    assert_eq!(models[0].context_length, Some(1048576));
    assert_eq!(models[0].capabilities, ["chat", "tools", "reasoning"]);
    assert_eq!(models[0].free, None, "the catalog decides what is free");
    assert_eq!(models[1].id, "gemini-embedding-001");
    assert_eq!(models[1].capabilities, ["embeddings"]);
    assert!(models[2].capabilities.is_empty());
    assert!(p.decode_models(br#"{"data": []}"#, &target("")).is_err());
}

#[test]
fn gemini_embeddings_are_mapped() {
    let mut s = plugin().session().unwrap();
    let t = target("gemini-embedding-001");
    let request = json!({"model": "emb", "input": ["first", "second"], "dimensions": 3});
    let built = s.build_embeddings(request.to_string().as_bytes(), &t).unwrap();
    assert_eq!(built.url, format!("{BASE}/models/gemini-embedding-001:batchEmbedContents"));
    assert_eq!(header(&built, "x-goog-api-key"), Some("gk-123"));
    let body: Value = serde_json::from_slice(&built.body).unwrap();
    assert_eq!(
        body,
        json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "first"}]}, "outputDimensionality": 3},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "second"}]}, "outputDimensionality": 3}
        ]})
    );
    let one = s.build_embeddings(br#"{"input": "solo"}"#, &t).unwrap();
    let body: Value = serde_json::from_slice(&one.body).unwrap();
    assert_eq!(body["requests"].as_array().unwrap().len(), 1);
    assert!(s.build_embeddings(br#"{"input": [[1, 2, 3]]}"#, &t).is_err(), "token arrays are refused");

    let answer = json!({"embeddings": [{"values": [0.1, 0.2, 0.3]}, {"values": [0.4, 0.5, 0.6]}]});
    let request = br#"{"input": ["first", "second"]}"#;
    let decoded = s.decode_embeddings(request, answer.to_string().as_bytes(), &t).unwrap();
    let out: Value = serde_json::from_slice(&decoded.body).unwrap();
    assert_eq!(
        out,
        json!({
            "object": "list",
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]},
                {"object": "embedding", "index": 1, "embedding": [0.4, 0.5, 0.6]}
            ],
            "model": "gemini-embedding-001",
            "usage": {"prompt_tokens": 0, "total_tokens": 0}
        })
    );
}

// ---------------------------------------------------------------------------
// Model ids in URLs
// ---------------------------------------------------------------------------

/// Model ids a client can send (as `g/<id>`) that try to leave their path
/// segment, and the one segment each must become.
/// Hostile ids and the one path segment each becomes; `None`: the URL
/// would hold a dot segment once a server decodes its `%2F`, and the host
/// refuses it (the plugin encodes, the host checks: two layers).
const HOSTILE_IDS: [(&str, Option<&str>); 3] = [
    ("../../secret-admin?x=1", None),
    ("x?alt=json&foo=bar", Some("x%3Falt%3Djson%26foo%3Dbar")),
    ("%2e%2e/%2e%2e/secret-admin", Some("%252e%252e%2F%252e%252e%2Fsecret-admin")),
];

/// `url` is `{BASE}/{collection}/{segment}:{method}` and nothing else: no
/// dot segment (`..`, `%2e%2e`), no query but `query`.
fn assert_one_segment(url: &str, collection: &str, segment: &str, method: &str, query: Option<&str>) {
    let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(uri.host(), Some("example.test"), "{url}");
    assert_eq!(uri.path(), format!("/v1beta/{collection}/{segment}:{method}"), "{url}");
    assert_eq!(uri.query(), query, "{url}");
    for part in uri.path().split('/') {
        let dots = part.to_ascii_lowercase().replace("%2e", ".");
        assert!(dots != "." && dots != "..", "a dot segment in {url}");
    }
}

#[test]
fn gemini_model_ids_from_clients_stay_inside_one_path_segment() {
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let streamed = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
    for (id, segment) in HOSTILE_IDS {
        let Some(segment) = segment else {
            for (request, model) in
                [(&chat, id.to_owned()), (&streamed, id.to_owned()), (&chat, format!("tunedModels/{id}"))]
            {
                let mut s = plugin().session().unwrap();
                let error = s.build_chat(request.to_string().as_bytes(), &target(&model)).unwrap_err().to_string();
                assert!(error.contains("outside its base URL"), "{model}: {error}");
            }
            continue;
        };
        let (built, _) = build_for(id, &chat);
        assert_one_segment(&built.url, "models", segment, "generateContent", None);
        let (built, _) = build_for(id, &streamed);
        assert_one_segment(&built.url, "models", segment, "streamGenerateContent", Some("alt=sse"));
        let mut s = plugin().session().unwrap();
        let built = s.build_embeddings(br#"{"input": "hi"}"#, &target(id)).unwrap();
        assert_one_segment(&built.url, "models", segment, "batchEmbedContents", None);
        // After a collection the id is one segment too.
        let (built, _) = build_for(&format!("tunedModels/{id}"), &chat);
        assert_one_segment(&built.url, "tunedModels", segment, "generateContent", None);
    }
    // No encoding keeps a dot segment from meaning one: refused.
    for id in ["..", ".", "models/..", ""] {
        let mut s = plugin().session().unwrap();
        let error = s.build_chat(chat.to_string().as_bytes(), &target(id)).unwrap_err().to_string();
        assert!(error.contains("URL path"), "{id:?}: {error}");
    }
}

#[test]
fn gemini_models_given_with_their_collection_keep_it() {
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (built, _) = build_for("models/gemini-2.5-flash", &chat);
    assert_eq!(built.url, format!("{BASE}/models/gemini-2.5-flash:generateContent"));
    let (built, _) = build_for("tunedModels/my-tuned-model-7", &chat);
    assert_eq!(built.url, format!("{BASE}/tunedModels/my-tuned-model-7:generateContent"));
    let mut s = plugin().session().unwrap();
    let built = s.build_embeddings(br#"{"input": "hi"}"#, &target("tunedModels/my-embedder")).unwrap();
    assert_eq!(built.url, format!("{BASE}/tunedModels/my-embedder:batchEmbedContents"));
    let body: Value = serde_json::from_slice(&built.body).unwrap();
    assert_eq!(body["requests"][0]["model"], "tunedModels/my-embedder");
}

// ---------------------------------------------------------------------------
// End to end: a gateway in front of a mock that speaks Gemini
// ---------------------------------------------------------------------------

fn gemini_block(name: &str, mock: &Mock, models: &[&str]) -> String {
    format!(
        "  {name}:\n    plugin: gemini\n    base_url: http://{}/v1beta\n    keys: [gk-1]\n    models: [{}]\n",
        mock.addr,
        models.join(", ")
    )
}

fn last_parts(seen: &Seen) -> Vec<Value> {
    seen.body["contents"].as_array().unwrap().last().unwrap()["parts"].as_array().unwrap().clone()
}

#[tokio::test]
async fn gemini_tool_call_round_trip_through_the_gateway() {
    let g = Mock::start().await;
    g.on_all(Behavior::Custom(Arc::new(|seen: &Seen| {
        let answered = last_parts(seen).iter().any(|p| p.get("functionResponse").is_some());
        let parts = if answered {
            json!([{"text": "It is 21°C in Paris."}])
        } else {
            json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}])
        };
        Reply::json(
            200,
            json!({
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 5, "totalTokenCount": 25},
                "responseId": if answered { "turn-2" } else { "turn-1" }
            })
            .to_string(),
        )
    })));
    let gw = start(&format!("providers:\n{}", gemini_block("g", &g, &["gemini-2.5-flash"]))).await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": false}
    }}]);
    let mut messages = vec![json!({"role": "user", "content": "Weather in Paris?"})];
    let request = json!({"model": "g/gemini-2.5-flash", "messages": messages, "tools": tools});
    let first = gw.post("/v1/chat/completions", &request.to_string(), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.routed_via(), "g/gemini-2.5-flash");
    let first = first.json();
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    let message = first["choices"][0]["message"].clone();
    let call = &message["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
    let call_id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(call_id, "call_turn-1_0");

    let seen = g.chats();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen[0].key.as_deref(), Some("gk-1"));
    assert_eq!(seen[0].body["tools"][0]["functionDeclarations"][0]["name"], "get_weather");
    assert!(seen[0].body["tools"][0]["functionDeclarations"][0]["parameters"].get("additionalProperties").is_none());

    // The SDK appends the assistant message as it came, then the tool result.
    messages.push(message);
    messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": "{\"temp_c\": 21}"}));
    let request = json!({"model": "g/gemini-2.5-flash", "messages": messages, "tools": tools});
    let second = gw.post("/v1/chat/completions", &request.to_string(), &[]).await;
    assert_eq!(second.status, 200, "{}", second.text());
    let second = second.json();
    assert_eq!(second["choices"][0]["message"]["content"], "It is 21°C in Paris.");
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert_eq!(second["usage"]["total_tokens"], 25);

    let seen = g.chats();
    assert_eq!(seen.len(), 2);
    let contents = seen[1].body["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 3, "{contents:?}");
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(contents[1]["parts"][0]["functionCall"], json!({"name": "get_weather", "args": {"city": "Paris"}}));
    assert_eq!(
        last_parts(&seen[1]),
        vec![json!({"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}})]
    );
}

#[tokio::test]
async fn gemini_stream_through_the_gateway_ends_with_done() {
    let g = Mock::start().await;
    let body = sse(&[
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Bonjour "}]}, "index": 0}],
            "responseId": "st"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "à tous"}]}, "finishReason": "STOP",
            "index": 0}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7},
            "responseId": "st"}),
    ]);
    // Pieces cut inside a field name, inside the first event's separator and
    // just before a non-ASCII character (pieces are strings, so a cut inside
    // one cannot be sent; the split-point test above covers those).
    let cut_a = body.find("parts").unwrap() + 2;
    let cut_b = body.find("\r\n\r\n").unwrap() + 3;
    let cut_c = body.find('à').unwrap();
    let pieces = vec![
        body[..cut_a].to_owned(),
        body[cut_a..cut_b].to_owned(),
        body[cut_b..cut_c].to_owned(),
        body[cut_c..].to_owned(),
    ];
    let reply = Reply::sse(pieces);
    g.on_all(Behavior::Custom(Arc::new(move |_| reply.clone())));
    let gw = start(&format!("providers:\n{}", gemini_block("g", &g, &["gemini-2.5-flash"]))).await;
    let answer = Answer::read(gw.stream("g/gemini-2.5-flash").await).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().join("");
    assert_eq!(text, "Bonjour à tous");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 7);
    let seen = g.chats();
    assert_eq!(seen[0].path, "/v1beta/models/gemini-2.5-flash:streamGenerateContent");
    assert_eq!(seen[0].query.as_deref(), Some("alt=sse"));
    assert_eq!(seen[0].body["systemInstruction"], json!({"parts": [{"text": "be brief"}]}));
}

#[tokio::test]
async fn gemini_429_falls_back_and_the_model_cools() {
    let g = Mock::start().await;
    let b = Mock::start().await;
    g.on_all(Behavior::Custom(Arc::new(|_| Reply::json(429, rate_limited("30s").to_string()))));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [g/gemini-2.5-flash, b/m2]\n",
        gemini_block("g", &g, &["gemini-2.5-flash"]),
        provider("b", &b.base_url(), &["kb"], &["m2"]),
    );
    let gw = start(&yaml).await;
    let first = gw.chat("r").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.routed_via(), "b/m2");
    assert_eq!(first.fallback_attempts(), 1);
    let next = gw.chat("r").await;
    assert_eq!(next.routed_via(), "b/m2");
    assert_eq!(next.fallback_attempts(), 0, "the cooling model is skipped, not tried");
    assert_eq!(g.calls_to("gemini-2.5-flash"), 1, "the 429'd model was called again");
    assert_eq!(b.calls_to("m2"), 2);
}

#[tokio::test]
async fn gemini_retry_delay_sets_the_cooldown() {
    let g = Mock::start().await;
    let b = Mock::start().await;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    g.on_all(Behavior::Custom(Arc::new(move |_| {
        if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::json(429, rate_limited("1.5s").to_string())
        } else {
            Reply::json(
                200,
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "back"}]},
                    "finishReason": "STOP"}]})
                .to_string(),
            )
        }
    })));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [g/gemini-2.5-flash, b/m2]\n",
        gemini_block("g", &g, &["gemini-2.5-flash"]),
        provider("b", &b.base_url(), &["kb"], &["m2"]),
    );
    let gw = start(&yaml).await;
    let started = std::time::Instant::now();
    assert_eq!(gw.chat("r").await.routed_via(), "b/m2");
    tokio::time::sleep(Duration::from_millis(700).saturating_sub(started.elapsed())).await;
    assert_eq!(gw.chat("r").await.routed_via(), "b/m2", "still cooling 0.7s into a 1.5s retryDelay");
    tokio::time::sleep(Duration::from_millis(1800).saturating_sub(started.elapsed())).await;
    let back = gw.chat("r").await;
    assert_eq!(back.routed_via(), "g/gemini-2.5-flash", "the 1.5s retryDelay ended the cooldown");
    assert_eq!(back.json()["choices"][0]["message"]["content"], "back");
}

#[tokio::test]
async fn gemini_client_model_ids_cannot_leave_the_model_path_through_the_gateway() {
    let g = Mock::start().await;
    g.on_all(Behavior::Custom(Arc::new(|_| {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
            "finishReason": "STOP", "index": 0}]});
        Reply::json(200, answer.to_string())
    })));
    let gw = start(&format!("providers:\n{}", gemini_block("g", &g, &["gemini-2.5-flash"]))).await;
    for (id, segment) in HOSTILE_IDS {
        let request = json!({"model": format!("g/{id}"), "messages": [{"role": "user", "content": "hi"}]});
        let before = g.chats().len();
        let answer = gw.post("/v1/chat/completions", &request.to_string(), &[]).await;
        let Some(segment) = segment else {
            assert_eq!(answer.status, 502, "{id}: {}", answer.text());
            assert!(answer.text().contains("outside its base URL"), "{id}: {}", answer.text());
            assert_eq!(g.chats().len(), before, "{id}: the request reached the upstream");
            continue;
        };
        assert_eq!(answer.status, 200, "{id}: {}", answer.text());
        let seen = g.chats().pop().unwrap();
        assert_eq!(seen.path, format!("/v1beta/models/{segment}:generateContent"), "{id}");
        assert_eq!(seen.query, None, "{id}");
        assert_eq!(seen.key.as_deref(), Some("gk-1"));
    }
    // Nothing ever reached a path outside the model's.
    assert!(g.chats().iter().all(|s| s.path.starts_with("/v1beta/models/")));
}

// ---------------------------------------------------------------------------
// Reasoning: thinking controls, thoughts and thought signatures
// ---------------------------------------------------------------------------

/// A Gemini answer with these parts.
fn gemini_answer(parts: Value) -> Reply {
    Reply::json(
        200,
        json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "thoughtsTokenCount": 3},
            "responseId": "think-1"
        })
        .to_string(),
    )
}

#[tokio::test]
async fn gemini_reasoning_effort_becomes_the_thinking_config_each_model_takes() {
    let g = Mock::start().await;
    g.on_all(Behavior::Custom(Arc::new(|_| gemini_answer(json!([{"text": "ok"}])))));
    let models = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-3.1-pro-preview", "gemini-3-pro-preview"];
    let gw = start(&format!("providers:\n{}", gemini_block("g", &g, &models))).await;
    let cases = [
        ("gemini-2.5-flash", Some("medium"), json!({"thinkingBudget": 8192, "includeThoughts": true})),
        ("gemini-2.5-flash", Some("none"), json!({"thinkingBudget": 0})),
        // 2.5 Pro cannot stop thinking: its least budget.
        ("gemini-2.5-pro", Some("none"), json!({"thinkingBudget": 128})),
        // 3.1 Pro refuses MINIMAL, 3 Pro MEDIUM.
        ("gemini-3.1-pro-preview", Some("minimal"), json!({"thinkingLevel": "LOW", "includeThoughts": true})),
        ("gemini-3.1-pro-preview", Some("medium"), json!({"thinkingLevel": "MEDIUM", "includeThoughts": true})),
        ("gemini-3-pro-preview", Some("medium"), json!({"thinkingLevel": "HIGH", "includeThoughts": true})),
        ("gemini-3-pro-preview", None, Value::Null),
    ];
    for (model, effort, expected) in cases {
        let mut request = json!({"model": format!("g/{model}"), "messages": [{"role": "user", "content": "2+2?"}]});
        if let Some(effort) = effort {
            request["reasoning_effort"] = json!(effort);
        }
        let answer = gw.post("/v1/chat/completions", &request.to_string(), &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let seen = g.chats().pop().unwrap();
        assert_eq!(seen.path, format!("/v1beta/models/{model}:generateContent"));
        assert_eq!(
            seen.body.pointer("/generationConfig/thinkingConfig").unwrap_or(&Value::Null),
            &expected,
            "{model} {effort:?}"
        );
    }

    // The other inbound APIs reach the same controls: an Anthropic thinking
    // budget of 20000 tokens is a high effort, a Responses effort is kept.
    let messages = json!({"model": "g/gemini-3.1-pro-preview", "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 20000},
        "messages": [{"role": "user", "content": "2+2?"}]});
    let answer = gw.post("/v1/messages", &messages.to_string(), &[("anthropic-version", "2023-06-01")]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = g.chats().pop().unwrap();
    assert_eq!(
        seen.body["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "HIGH", "includeThoughts": true})
    );
    let responses = json!({"model": "g/gemini-2.5-flash", "input": "2+2?", "reasoning": {"effort": "low"}});
    let answer = gw.post("/v1/responses", &responses.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = g.chats().pop().unwrap();
    assert_eq!(
        seen.body["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
}

/// The mock's model turn in the last request it received.
fn model_turns(seen: &Seen) -> Vec<Value> {
    seen.body["contents"].as_array().unwrap().iter().filter(|c| c["role"] == "model").cloned().collect()
}

#[tokio::test]
async fn gemini_thoughts_and_a_text_signature_go_to_the_client_and_back() {
    let g = Mock::start().await;
    g.on_all(Behavior::Custom(Arc::new(|seen: &Seen| {
        if model_turns(seen).is_empty() {
            gemini_answer(json!([
                {"text": "Two and two make four.", "thought": true},
                {"text": "2+2 is "},
                {"text": "4.", "thoughtSignature": "dGV4dC1zaWc="}
            ]))
        } else {
            gemini_answer(json!([{"text": "You're welcome."}]))
        }
    })));
    let gw = start(&format!("providers:\n{}", gemini_block("g", &g, &["gemini-3-flash-preview"]))).await;
    let mut messages = vec![json!({"role": "user", "content": "2+2?"})];
    let request = json!({"model": "g/gemini-3-flash-preview", "messages": messages, "reasoning_effort": "low"});
    let first = gw.post("/v1/chat/completions", &request.to_string(), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let message = first.json()["choices"][0]["message"].clone();
    assert_eq!(message["content"], "2+2 is 4.");
    assert_eq!(message["reasoning_content"], "Two and two make four.");
    assert_eq!(
        message["reasoning_details"],
        json!([{"type": "reasoning.encrypted", "data": "dGV4dC1zaWc=", "format": "google-gemini-v1", "index": 0}])
    );

    // The client sends the assistant message back as it came.
    messages.push(message);
    messages.push(json!({"role": "user", "content": "Thanks!"}));
    let request = json!({"model": "g/gemini-3-flash-preview", "messages": messages});
    let second = gw.post("/v1/chat/completions", &request.to_string(), &[]).await;
    assert_eq!(second.status, 200, "{}", second.text());
    let seen = g.chats();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        model_turns(&seen[1]),
        vec![json!({"role": "model", "parts": [{"text": "2+2 is 4.", "thoughtSignature": "dGV4dC1zaWc="}]})],
        "the signature is back on the text it signed, the thoughts are not sent"
    );
}

#[tokio::test]
async fn gemini_stream_signature_on_an_empty_text_chunk_reaches_the_client_and_goes_back() {
    let g = Mock::start().await;
    let body = sse(&[
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Counting.", "thought": true}]},
            "index": 0}], "responseId": "st"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Four."}]}, "index": 0}]}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "", "thoughtSignature": "c3RyZWFt"}]},
            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1, "thoughtsTokenCount": 2}}),
    ]);
    let reply = Reply::sse(vec![body]);
    g.on_all(Behavior::Custom(Arc::new(move |seen: &Seen| {
        if seen.stream { reply.clone() } else { gemini_answer(json!([{"text": "ok"}])) }
    })));
    let gw = start(&format!("providers:\n{}", gemini_block("g", &g, &["gemini-3-flash-preview"]))).await;
    let question = json!({"role": "user", "content": "2+2?"});
    let request = json!({"model": "g/gemini-3-flash-preview", "stream": true, "messages": [question],
        "reasoning_effort": "high"});
    let answer = gw.post("/v1/chat/completions", &request.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let events = answer.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let deltas: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"].get(0).map(|choice| choice["delta"].clone()))
        .collect();
    // What a chat client accumulates from the deltas.
    let text = |key: &str| deltas.iter().filter_map(|d| d[key].as_str()).collect::<String>();
    let details: Vec<Value> =
        deltas.iter().filter_map(|d| d["reasoning_details"].as_array()).flatten().cloned().collect();
    assert_eq!(text("reasoning_content"), "Counting.");
    assert_eq!(text("content"), "Four.");
    assert_eq!(
        details,
        vec![json!({"type": "reasoning.encrypted", "data": "c3RyZWFt", "format": "google-gemini-v1", "index": 0})]
    );
    assert_eq!(
        g.chats()[0].body["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "HIGH", "includeThoughts": true})
    );

    let message = json!({"role": "assistant", "content": "Four.", "reasoning_content": "Counting.",
        "reasoning_details": details});
    let request = json!({"model": "g/gemini-3-flash-preview",
        "messages": [question, message, {"role": "user", "content": "And 3+3?"}]});
    let second = gw.post("/v1/chat/completions", &request.to_string(), &[]).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        model_turns(&g.chats()[1]),
        vec![json!({"role": "model", "parts": [{"text": "Four.", "thoughtSignature": "c3RyZWFt"}]})]
    );
}
