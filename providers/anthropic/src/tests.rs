//! Thinking through the plugin's own entry points, natively: answers,
//! streams at every split point, and requests (tests/it/plugin_anthropic.rs
//! covers the rest through the real component and the gateway).

use serde_json::{Value, json};

use super::*;

fn target() -> Target {
    Target {
        base_url: "https://api.anthropic.com/v1".to_owned(),
        model: "claude-sonnet-4-5".to_owned(),
        key: Some("sk-ant-k".to_owned()),
        options: Vec::new(),
    }
}

fn build(request: Value) -> Value {
    let built = match <Plugin as Guest>::build_chat(request.to_string().into_bytes(), target()) {
        Ok(built) => built,
        Err(BuildError::Failed(e) | BuildError::ClientError(e)) => panic!("{e}"),
    };
    serde_json::from_slice(&built.body).unwrap()
}

fn decode(content: Value) -> Value {
    let body = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": content, "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 20}
    });
    let answer = <Plugin as Guest>::decode_chat(body.to_string().into_bytes(), target()).unwrap();
    serde_json::from_slice(&answer.body).unwrap()
}

/// Every event of a stream fed in these pieces, as comparable text.
fn stream(pieces: &[&[u8]]) -> Vec<String> {
    let decoder = <Decoder as GuestStreamDecoder>::new(target());
    let mut events: Vec<StreamEvent> = Vec::new();
    for piece in pieces {
        events.extend(decoder.push(piece.to_vec()));
    }
    events.extend(decoder.finish());
    events
        .into_iter()
        .map(|event| match event {
            StreamEvent::Chunk(chunk) => {
                format!("{} {:?}", String::from_utf8(chunk.json).unwrap(), chunk.usage.map(|u| u.completion_tokens))
            }
            StreamEvent::Done => "[DONE]".to_owned(),
            StreamEvent::Error(message) => format!("error: {message}"),
        })
        .collect()
}

/// The `delta` of each chunk that has one.
fn deltas(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.starts_with('{'))
        .map(|e| serde_json::from_str::<Value>(e.rsplit_once(' ').unwrap().0).unwrap())
        .filter_map(|chunk| chunk["choices"].get(0).map(|c| c["delta"].clone()))
        .collect()
}

const SIGNATURE: &str = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds/ErSz4D4XVk0EaZ8Tg9pIBBiDtmMuNcA==";
const REDACTED: &str =
    "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj2pLmN3kF8=";

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

#[test]
fn thinking_and_redacted_blocks_become_reasoning_details() {
    let body = decode(json!([
        {"type": "thinking", "thinking": "They want the weather. ", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": REDACTED},
        {"type": "thinking", "thinking": "Paris it is.", "signature": SIGNATURE},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]));
    let reply = &body["choices"][0]["message"];
    assert_eq!(reply["reasoning_content"], "They want the weather. Paris it is.", "the texts, concatenated");
    assert_eq!(
        reply["reasoning_details"],
        json!([
            {"type": "reasoning.text", "text": "They want the weather. ", "signature": "sig-1", "format": "anthropic-claude-v1", "index": 0},
            {"type": "reasoning.encrypted", "data": REDACTED, "format": "anthropic-claude-v1", "index": 1},
            {"type": "reasoning.text", "text": "Paris it is.", "signature": SIGNATURE, "format": "anthropic-claude-v1", "index": 2}
        ])
    );
    assert_eq!(reply["content"], "Checking.");
    assert_eq!(reply["tool_calls"][0]["id"], "toolu_1");

    let body = decode(json!([{"type": "text", "text": "plain"}]));
    let reply = &body["choices"][0]["message"];
    assert!(reply.get("reasoning_details").is_none() && reply.get("reasoning_content").is_none(), "{reply}");
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// Anthropic's stream of a thinking block (signed at its end), a redacted
/// block, text and a tool call, as the bytes arrive.
fn thinking_stream() -> String {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_01Th", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 472, "output_tokens": 2}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "The café ☕ question: "}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "call the weather tool."}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": SIGNATURE}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": REDACTED}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Checking the café."}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
        json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
        json!({"type": "content_block_stop", "index": 3}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 91}}),
        json!({"type": "message_stop"}),
    ];
    events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect()
}

#[test]
fn a_thinking_stream_gives_reasoning_text_then_its_signature_then_the_redacted_block() {
    let stream_text = thinking_stream();
    let events = stream(&[stream_text.as_bytes()]);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    assert_eq!(
        deltas(&events),
        [
            json!({"role": "assistant", "content": ""}),
            json!({"reasoning_content": "The café ☕ question: "}),
            json!({"reasoning_content": "call the weather tool."}),
            json!({"reasoning_details": [{"type": "reasoning.text", "signature": SIGNATURE, "format": "anthropic-claude-v1", "index": 0}]}),
            json!({"reasoning_details": [{"type": "reasoning.encrypted", "data": REDACTED, "format": "anthropic-claude-v1", "index": 1}]}),
            json!({"content": "Checking the café."}),
            json!({"tool_calls": [{"index": 0, "id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Pa"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "ris\"}"}}]}),
            json!({}),
        ]
    );
}

#[test]
fn a_thinking_stream_decodes_identically_at_every_split_point() {
    let stream_text = thinking_stream();
    let bytes = stream_text.as_bytes();
    let whole = stream(&[bytes]);
    assert_eq!(whole.len(), 12, "ten deltas, usage, done: {whole:?}");
    for split in 0..=bytes.len() {
        let (a, b) = bytes.split_at(split);
        assert_eq!(stream(&[a, b]), whole, "split at byte {split}");
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(stream(&bytewise), whole, "one byte at a time");
}

#[test]
fn a_whole_signed_block_or_one_never_ended_still_gives_its_signature() {
    let sse = |events: &[Value]| -> String {
        events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect()
    };
    let start = json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}});
    // A proxy that sends the block whole, signature included, and no stop.
    let text = sse(&[
        start.clone(),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "Whole.", "signature": "sig-whole"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        json!({"type": "message_stop"}),
    ]);
    let whole = deltas(&stream(&[text.as_bytes()]));
    assert_eq!(whole[1], json!({"reasoning_content": "Whole."}));
    assert_eq!(
        whole[2],
        json!({"reasoning_details": [{"type": "reasoning.text", "signature": "sig-whole", "format": "anthropic-claude-v1", "index": 0}]})
    );
    // Unsigned thinking: text only, no entry.
    let text = sse(&[
        start,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hm."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_stop"}),
    ]);
    let unsigned = deltas(&stream(&[text.as_bytes()]));
    assert_eq!(unsigned[1], json!({"reasoning_content": "Hm."}));
    assert!(unsigned.iter().all(|d| d.get("reasoning_details").is_none()), "{unsigned:?}");
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

fn tool_call() -> Value {
    json!({"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}})
}

fn tool_use_block() -> Value {
    json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}})
}

/// A tool loop in progress whose assistant turn is `assistant`.
fn tool_loop(assistant: Value, extra: Value) -> Value {
    let mut request = json!({
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            assistant,
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}
        ],
        "reasoning_effort": "medium",
        "max_tokens": 8000
    });
    if let (Some(request), Value::Object(extra)) = (request.as_object_mut(), extra) {
        request.extend(extra);
    }
    request
}

#[test]
fn only_anthropic_signed_entries_go_back_as_blocks_first_and_in_order() {
    let body = build(tool_loop(
        json!({"role": "assistant", "content": "Checking.", "tool_calls": [tool_call()],
        "reasoning_content": "Paris.",
        "reasoning_details": [
            {"type": "reasoning.encrypted", "data": REDACTED, "format": "anthropic-claude-v1", "index": 0},
            {"type": "reasoning.summary", "summary": "a summary", "format": "anthropic-claude-v1", "index": 1},
            {"type": "reasoning.encrypted", "data": "gemini-sig", "format": "google-gemini-v1", "index": 0},
            {"type": "reasoning.text", "text": "Paris.", "signature": SIGNATURE, "format": "anthropic-claude-v1", "index": 2},
            {"type": "reasoning.text", "text": "unknown", "signature": "s"}
        ]}),
        json!({}),
    ));
    assert_eq!(
        body["messages"][1]["content"],
        json!([
            {"type": "redacted_thinking", "data": REDACTED},
            {"type": "thinking", "thinking": "Paris.", "signature": SIGNATURE},
            {"type": "text", "text": "Checking."},
            tool_use_block()
        ]),
        "anthropic's own entries, in order, before the text and the tool call; the others dropped"
    );
    assert_eq!(body["thinking"], json!({"type": "enabled", "budget_tokens": 4096}), "thinking stays on");

    // Unsigned, foreign or plain reasoning: not thinking Anthropic can verify.
    for assistant in [
        json!({"role": "assistant", "content": "Sure.", "reasoning_content": "plain reasoning from another model"}),
        json!({"role": "assistant", "content": "Sure.", "reasoning_content": "x",
            "reasoning_details": [{"type": "reasoning.text", "text": "x", "format": "anthropic-claude-v1", "index": 0}]}),
        json!({"role": "assistant", "content": "Sure.", "reasoning_content": "x",
            "reasoning_details": [{"type": "reasoning.text", "text": "x", "signature": "s", "format": "google-gemini-v1", "index": 0}]}),
    ] {
        let body = build(
            json!({"messages": [{"role": "user", "content": "hi"}, assistant, {"role": "user", "content": "and?"}]}),
        );
        assert_eq!(body["messages"][1]["content"], json!([{"type": "text", "text": "Sure."}]), "{assistant}");
    }
}

#[test]
fn a_signature_without_text_takes_the_streamed_reasoning() {
    let entry = json!({"type": "reasoning.text", "signature": SIGNATURE, "format": "anthropic-claude-v1", "index": 0});
    let body = build(tool_loop(
        json!({"role": "assistant", "content": null, "tool_calls": [tool_call()],
            "reasoning_content": "The café ☕ question: call the weather tool.",
            "reasoning_details": [entry, {"type": "reasoning.encrypted", "data": REDACTED, "format": "anthropic-claude-v1", "index": 1}]}),
        json!({}),
    ));
    assert_eq!(
        body["messages"][1]["content"],
        json!([
            {"type": "thinking", "thinking": "The café ☕ question: call the weather tool.", "signature": SIGNATURE},
            {"type": "redacted_thinking", "data": REDACTED},
            tool_use_block()
        ])
    );

    // Two text entries: the streamed text belongs to neither alone.
    let second = json!({"type": "reasoning.text", "text": "Second.", "signature": "sig-2", "format": "anthropic-claude-v1", "index": 1});
    let body = build(tool_loop(
        json!({"role": "assistant", "tool_calls": [tool_call()], "reasoning_content": "First.Second.",
            "reasoning_details": [entry, second]}),
        json!({}),
    ));
    assert_eq!(body["messages"][1]["content"][0], json!({"type": "thinking", "thinking": "", "signature": SIGNATURE}));
    assert_eq!(
        body["messages"][1]["content"][1],
        json!({"type": "thinking", "thinking": "Second.", "signature": "sig-2"})
    );
}

#[test]
fn thinking_is_turned_off_for_a_tool_turn_without_thinking() {
    // The tool call came from another model: no thinking Anthropic can verify.
    let foreign =
        json!({"role": "assistant", "content": null, "tool_calls": [tool_call()], "reasoning_content": "mine"});
    let body = build(tool_loop(foreign.clone(), json!({"temperature": 0.3})));
    assert_eq!(body["thinking"], json!({"type": "disabled"}));
    assert_eq!(body["temperature"], 0.3, "without thinking, sampling parameters go");
    assert_eq!(body["messages"][1]["content"], json!([tool_use_block()]));

    let own = json!({"thinking": {"type": "enabled", "budget_tokens": 2048}});
    assert_eq!(build(tool_loop(foreign.clone(), own))["thinking"], json!({"type": "disabled"}));

    // No thinking asked for: nothing to turn off.
    let mut plain = tool_loop(foreign, json!({}));
    plain.as_object_mut().unwrap().remove("reasoning_effort");
    assert!(build(plain).get("thinking").is_none());

    // The tool loop is over (a text answer came after it): thinking stays.
    let body = build(json!({
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [tool_call()]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "assistant", "content": "18C in Paris."},
            {"role": "user", "content": "Thanks. And Oslo?"}
        ],
        "reasoning_effort": "medium",
        "max_tokens": 8000
    }));
    assert_eq!(body["thinking"]["type"], "enabled");
}

#[test]
fn a_forced_tool_call_turns_thinking_off() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let ask = |choice: Value| {
        build(json!({"messages": [{"role": "user", "content": "Weather?"}], "reasoning_effort": "medium",
            "max_tokens": 8000, "tools": tools, "tool_choice": choice}))
    };
    for forced in [json!("required"), json!({"type": "function", "function": {"name": "get_weather"}})] {
        let body = ask(forced.clone());
        assert_eq!(body["thinking"], json!({"type": "disabled"}), "{forced}");
        assert!(matches!(body["tool_choice"]["type"].as_str(), Some("any" | "tool")), "{body}");
    }
    assert_eq!(ask(json!("auto"))["thinking"]["type"], "enabled");
}
