//! Streams: SSE parsing with a bound, and the decoder of an upstream that
//! already streams OpenAI chunks.

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::Value;
use sse_parse::SseParser;

use crate::openai::error_message;
use crate::{GuestStreamDecoder, StreamEvent, Target, Usage};

/// Upper bound on one buffered SSE event (a runaway upstream cannot make a
/// decoder grow without limit).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// A fresh SSE parser with the event size bound.
pub fn sse_parser() -> SseParser {
    SseParser::new().max_buffer(MAX_EVENT_BYTES)
}

/// The stream decoder for an upstream that streams OpenAI chunks as SSE:
/// `data:` events pass through as chunks (with the usage they report),
/// `[DONE]` ends the stream, and an `{"error": ...}` event is an error.
/// A plugin uses it as its `type StreamDecoder = PassThrough;`.
pub struct PassThrough {
    parser: RefCell<SseParser>,
}

/// The fields of a chunk that matter to freeway.
#[derive(Deserialize)]
struct ChunkCheck {
    error: Option<Value>,
    usage: Option<Usage>,
}

impl PassThrough {
    fn drain(parser: &mut SseParser) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        while let Some(event) = parser.next_event() {
            let data = event.data;
            let trimmed = data.trim();
            if trimmed.is_empty() {
                continue;
            }
            if trimmed == "[DONE]" {
                out.push(StreamEvent::Done);
                continue;
            }
            // Only chunks that may carry an error or usage are parsed: the
            // others pass through untouched, which keeps streams cheap.
            let mut usage = None;
            if data.contains("\"error\"") || data.contains("\"usage\"") {
                match serde_json::from_str::<ChunkCheck>(&data) {
                    Ok(ChunkCheck { error: Some(error), .. }) => {
                        out.push(StreamEvent::Error(error_message(&error)));
                        continue;
                    }
                    Ok(check) => usage = check.usage,
                    Err(e) => {
                        out.push(StreamEvent::Error(format!("undecodable chunk: {e}")));
                        continue;
                    }
                }
            }
            // Reasoning under another name becomes `reasoning_content`.
            let data = crate::reasoning::normalised(data.as_bytes()).unwrap_or_else(|| data.into_bytes());
            out.push(StreamEvent::chunk(data, usage));
        }
        out
    }
}

impl GuestStreamDecoder for PassThrough {
    fn new(_target: Target) -> Self {
        Self { parser: RefCell::new(sse_parser()) }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        let mut parser = self.parser.borrow_mut();
        parser.feed(&bytes);
        Self::drain(&mut parser)
    }

    fn finish(&self) -> Vec<StreamEvent> {
        let mut parser = self.parser.borrow_mut();
        parser.finish();
        Self::drain(&mut parser)
    }
}
