//! Reading a chat completion stream as freeway relays it: SSE events split
//! anywhere, each a chat completion chunk, `[DONE]`, or freeway's error
//! event (`{"error": {"message", "type", "code"}}`).

use serde::Deserialize;
use serde_json::Value;
use sse_parse::SseParser;

/// Upper bound on one buffered event: what an upstream plugin may emit.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One event of a chat completion stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// A chunk.
    Chunk(Chunk),
    /// `data: [DONE]`: the stream ended well.
    Done,
    /// The stream failed after it began (freeway's error event, or an
    /// event that is not a chunk).
    Error {
        /// What went wrong (already free of keys).
        message: String,
    },
}

/// A chat completion chunk: the fields the dialects translate.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Chunk {
    /// The completion's id.
    #[serde(default)]
    pub id: String,
    /// The upstream model.
    #[serde(default)]
    pub model: String,
    /// Usually one choice; its delta.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Token usage (the last chunk, with `stream_options.include_usage`).
    #[serde(default)]
    pub usage: Option<ChunkUsage>,
}

/// One choice of a chunk.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChunkChoice {
    /// Which choice.
    #[serde(default)]
    pub index: u32,
    /// What it adds.
    #[serde(default)]
    pub delta: Delta,
    /// Why it ended, on its last chunk: `stop`, `length`, `tool_calls`,
    /// `content_filter`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// What a chunk adds to its choice.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Delta {
    /// Answer text.
    #[serde(default)]
    pub content: Option<String>,
    /// Reasoning text (freeway's normalised name).
    #[serde(default, alias = "reasoning")]
    pub reasoning_content: Option<String>,
    /// Reasoning entries a target needs back on a later turn (signatures,
    /// encrypted reasoning), as `reasoning_details` (see `reasoning.rs`).
    #[serde(default)]
    pub reasoning_details: Vec<serde_json::Value>,
    /// Tool calls, streamed: the first piece of each has its id and name,
    /// later ones more of its arguments.
    #[serde(default)]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A piece of a streamed tool call.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ToolCallDelta {
    /// Which tool call of the message.
    #[serde(default)]
    pub index: u32,
    /// Its id (first piece).
    #[serde(default)]
    pub id: Option<String>,
    /// Its function: name (first piece) and more of its arguments.
    #[serde(default)]
    pub function: Option<FunctionDelta>,
    /// What the target needs back with this call (Gemini's thought
    /// signature, as `{"google": {"thought_signature": ...}}`).
    #[serde(default)]
    pub extra_content: Option<serde_json::Value>,
}

/// A tool call's function, streamed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FunctionDelta {
    /// The function's name.
    #[serde(default)]
    pub name: Option<String>,
    /// More of its arguments (JSON text, in pieces).
    #[serde(default)]
    pub arguments: Option<String>,
}

/// Token usage of a chat completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct ChunkUsage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// Reads a chat completion stream fed in pieces.
pub struct ChunkReader {
    parser: SseParser,
}

impl Default for ChunkReader {
    fn default() -> Self {
        Self { parser: SseParser::new().max_buffer(MAX_EVENT_BYTES) }
    }
}

impl ChunkReader {
    /// The events that `bytes` complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<ChatEvent> {
        self.parser.feed(bytes);
        self.drain()
    }

    /// The events left when the stream ends (a last event without its
    /// blank line).
    pub fn finish(&mut self) -> Vec<ChatEvent> {
        self.parser.finish();
        self.drain()
    }

    fn drain(&mut self) -> Vec<ChatEvent> {
        let mut out = Vec::new();
        while let Some(event) = self.parser.next_event() {
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                out.push(ChatEvent::Done);
                continue;
            }
            out.push(parse(data));
        }
        out
    }
}

/// One event's data: a chunk, or an error.
fn parse(data: &str) -> ChatEvent {
    #[derive(Deserialize)]
    struct Envelope {
        error: Option<Value>,
    }
    if data.contains("\"error\"")
        && let Ok(Envelope { error: Some(error) }) = serde_json::from_str::<Envelope>(data)
    {
        let message = error.get("message").and_then(Value::as_str).map_or_else(|| error.to_string(), str::to_owned);
        return ChatEvent::Error { message };
    }
    match serde_json::from_str::<Chunk>(data) {
        Ok(chunk) => ChatEvent::Chunk(chunk),
        Err(e) => {
            ChatEvent::Error { message: format!("the upstream sent a chunk that is not a chat completion chunk: {e}") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );

    fn read_split_at(at: usize) -> Vec<ChatEvent> {
        let mut reader = ChunkReader::default();
        let mut events = reader.feed(&STREAM.as_bytes()[..at]);
        events.extend(reader.feed(&STREAM.as_bytes()[at..]));
        events.extend(reader.finish());
        events
    }

    #[test]
    fn a_stream_reads_the_same_whatever_the_split() {
        let whole = read_split_at(STREAM.len());
        assert_eq!(whole.len(), 5);
        let ChatEvent::Chunk(tool) = &whole[2] else { panic!("{whole:?}") };
        let call = &tool.choices[0].delta.tool_calls[0];
        assert_eq!(call.function.as_ref().and_then(|f| f.name.as_deref()), Some("f"));
        let ChatEvent::Chunk(last) = &whole[3] else { panic!() };
        assert_eq!(last.usage, Some(ChunkUsage { prompt_tokens: 5, completion_tokens: 7 }));
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(whole[4], ChatEvent::Done);
        for at in 0..STREAM.len() {
            assert_eq!(read_split_at(at), whole, "split at {at}");
        }
    }

    #[test]
    fn freeways_error_event_and_junk_are_errors() {
        let mut reader = ChunkReader::default();
        let events = reader
            .feed(b"data: {\"error\":{\"message\":\"upstream cut\",\"type\":\"upstream_error\"}}\n\ndata: nope\n\n");
        assert_eq!(events[0], ChatEvent::Error { message: "upstream cut".into() });
        assert!(matches!(&events[1], ChatEvent::Error { message } if message.contains("not a chat completion chunk")));
    }
}
