//! What the inbound dialects add per request, without the network: a ~1 KB
//! Anthropic Messages / OpenAI Responses request translated into a chat
//! completion request, the chat answer translated back, and a 20-chunk
//! chat stream translated into each dialect's events. Run with
//! `cargo bench --bench dialects`; compare with `hot_path`'s
//! `parse_request_1kb` (what a chat request costs to read).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use freeway::dialect::StreamTranslator;
use freeway::dialect::anthropic::{self, MessagesStream};
use freeway::dialect::responses::{self, ResponsesStream};
use serde_json::json;

fn filler() -> String {
    "The quick brown fox jumps over the lazy dog. ".repeat(18)
}

fn messages_request() -> Vec<u8> {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "temperature": 0.2,
        "system": "You are a concise assistant.",
        "messages": [{"role": "user", "content": filler()}]})
    .to_string()
    .into_bytes()
}

fn responses_request() -> Vec<u8> {
    json!({"model": "p/m", "max_output_tokens": 256, "temperature": 0.2,
        "instructions": "You are a concise assistant.", "input": filler()})
    .to_string()
    .into_bytes()
}

fn chat_answer() -> Vec<u8> {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short answer of a few words, as most are."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 250, "completion_tokens": 12, "total_tokens": 262}})
    .to_string()
    .into_bytes()
}

/// A chat stream of 20 content chunks, a finish and usage, as freeway relays it.
fn chat_stream() -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let c = json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": {"content": format!("token{i} ")}, "finish_reason": null}]});
            format!("data: {c}\n\n").into_bytes()
        })
        .collect();
    chunks
        .push(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".to_vec());
    chunks.push(b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":250,\"completion_tokens\":20}}\n\ndata: [DONE]\n\n".to_vec());
    chunks
}

fn translate_stream(mut translator: impl StreamTranslator, chunks: &[Vec<u8>]) -> usize {
    let mut bytes = 0;
    for chunk in chunks {
        bytes += translator.feed(chunk).len();
    }
    bytes + translator.finish().len()
}

fn dialects(c: &mut Criterion) {
    let (messages, responses_body, answer, stream) =
        (messages_request(), responses_request(), chat_answer(), chat_stream());
    c.bench_function("anthropic_to_chat_1kb", |b| b.iter(|| anthropic::to_chat(black_box(&messages))));
    c.bench_function("anthropic_from_chat", |b| {
        b.iter(|| anthropic::from_chat(black_box(&answer), "claude-sonnet-4-5"))
    });
    c.bench_function("anthropic_stream_20_chunks", |b| {
        b.iter(|| translate_stream(MessagesStream::new("claude-sonnet-4-5"), black_box(&stream)))
    });
    // The request is parsed once per request (the endpoint reads its
    // thread from the same parse): counted in `to_chat`.
    c.bench_function("responses_to_chat_1kb", |b| {
        b.iter(|| {
            let request = responses::Request::parse(black_box(&responses_body))?;
            responses::to_chat(&request, &[])
        })
    });
    let Ok(parsed) = responses::Request::parse(&responses_body) else { return };
    c.bench_function("responses_from_chat", |b| {
        b.iter(|| responses::from_chat(black_box(&answer), "resp_1", "p/m", &parsed))
    });
    c.bench_function("responses_stream_20_chunks", |b| {
        b.iter(|| translate_stream(ResponsesStream::new("resp_1", "p/m", &parsed), black_box(&stream)))
    });
}

criterion_group!(benches, dialects);
criterion_main!(benches);
