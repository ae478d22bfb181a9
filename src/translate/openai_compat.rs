//! The OpenAI-compatible wire format: most providers speak it, so the
//! request is the client's own with `model` replaced, and answers pass
//! through after a check.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde::de::IgnoredAny;
use sse_parse::SseParser;

use super::{Decoded, ErrorKind, StreamDecoder, StreamEvent, Target, Translator, UpstreamRequest, Usage};
use crate::request::ChatRequest;

/// Upper bound on one buffered SSE event (a runaway upstream cannot make
/// the decoder grow without limit).
const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// The OpenAI-compatible translator.
pub struct OpenAiCompat;

#[derive(Deserialize)]
struct AnswerCheck {
    choices: Option<IgnoredAny>,
    error: Option<serde_json::Value>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChunkCheck {
    error: Option<serde_json::Value>,
    usage: Option<Usage>,
}

impl Translator for OpenAiCompat {
    fn name(&self) -> &'static str {
        "openai-compat"
    }

    fn build_chat(&self, request: &ChatRequest, target: Target<'_>) -> Result<UpstreamRequest, String> {
        let body = request.to_json_with_model(target.model).map_err(|e| e.to_string())?;
        let mut headers = Vec::with_capacity(3);
        headers.push((header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
        let accept = if request.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        headers.push((header::ACCEPT, HeaderValue::from_static(accept)));
        if let Some(key) = target.key {
            headers.push((header::AUTHORIZATION, bearer(key)?));
        }
        Ok(UpstreamRequest {
            url: format!("{}/chat/completions", target.base_url),
            headers,
            body: Bytes::from(body),
        })
    }

    fn decode_chat(&self, body: Bytes) -> Result<Decoded, String> {
        let check: AnswerCheck =
            serde_json::from_slice(&body).map_err(|e| format!("the answer is not a chat completion: {e}"))?;
        if let Some(error) = check.error {
            return Err(format!("the answer is an error: {}", error_message(&error)));
        }
        if check.choices.is_none() {
            return Err("the answer has no `choices`".to_owned());
        }
        Ok(Decoded {
            body,
            usage: check.usage,
        })
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder {
            parser: SseParser::new().max_buffer(MAX_EVENT_BYTES),
        })
    }

    fn build_models(&self, target: Target<'_>) -> Result<UpstreamRequest, String> {
        let mut headers = vec![(header::ACCEPT, HeaderValue::from_static("application/json"))];
        if let Some(key) = target.key {
            headers.push((header::AUTHORIZATION, bearer(key)?));
        }
        Ok(UpstreamRequest {
            url: format!("{}/models", target.base_url),
            headers,
            body: Bytes::new(),
        })
    }

    fn decode_models(&self, body: &[u8]) -> Result<Vec<String>, String> {
        #[derive(Deserialize)]
        struct Listing {
            data: Vec<Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            id: String,
        }
        let listing: Listing = serde_json::from_slice(body).map_err(|e| format!("not a model listing: {e}"))?;
        Ok(listing.data.into_iter().map(|e| e.id).collect())
    }

    fn classify_error(&self, status: StatusCode, _headers: &HeaderMap, _body: &[u8]) -> ErrorKind {
        match status.as_u16() {
            429 => ErrorKind::RateLimited { retry_after: None },
            402 => ErrorKind::QuotaExhausted,
            401 | 403 => ErrorKind::InvalidKey,
            400 | 422 => ErrorKind::ClientError,
            _ => ErrorKind::Transient,
        }
    }
}

fn bearer(key: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| "the API key contains characters a header cannot carry".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// The message of an OpenAI-style error value (`{"message": ...}` or a string).
pub fn error_message(error: &serde_json::Value) -> String {
    match error {
        serde_json::Value::String(s) => s.clone(),
        other => other
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| other.to_string()),
    }
}

struct SseDecoder {
    parser: SseParser,
}

impl SseDecoder {
    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        while let Some(event) = self.parser.next_event() {
            let data = event.data;
            let trimmed = data.trim();
            if trimmed.is_empty() {
                continue;
            }
            if trimmed == "[DONE]" {
                out.push(StreamEvent::Done);
                continue;
            }
            // Only chunks that may carry an error or usage are parsed; the
            // rest pass through as they came.
            let mut usage = None;
            if data.contains("\"error\"") || data.contains("\"usage\"") {
                match serde_json::from_str::<ChunkCheck>(&data) {
                    Ok(ChunkCheck { error: Some(error), .. }) => {
                        out.push(StreamEvent::Error {
                            message: error_message(&error),
                        });
                        continue;
                    }
                    Ok(check) => usage = check.usage,
                    Err(e) => {
                        out.push(StreamEvent::Error {
                            message: format!("undecodable chunk: {e}"),
                        });
                        continue;
                    }
                }
            }
            out.push(StreamEvent::Chunk {
                json: Bytes::from(data),
                usage,
            });
        }
    }
}

impl StreamDecoder for SseDecoder {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        self.parser.feed(bytes);
        self.drain(out);
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.parser.finish();
        self.drain(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> Vec<StreamEvent> {
        let mut d = OpenAiCompat.stream_decoder();
        let mut out = Vec::new();
        for p in pieces {
            d.push(p, &mut out);
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn stream_pieces_split_anywhere_decode_the_same() {
        let stream = b": keep-alive\n\ndata: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"He\"}}]}\r\n\r\ndata: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\ndata: [DONE]\n\n";
        let whole = decode_all(&[stream]);
        assert_eq!(whole.len(), 3);
        assert!(matches!(
            &whole[1],
            StreamEvent::Chunk {
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2
                }),
                ..
            }
        ));
        assert_eq!(whole[2], StreamEvent::Done);
        for split in 1..stream.len() {
            assert_eq!(
                decode_all(&[&stream[..split], &stream[split..]]),
                whole,
                "split at {split}"
            );
        }
    }

    #[test]
    fn error_events_in_a_stream_are_errors() {
        let out = decode_all(&[b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n"]);
        assert_eq!(
            out,
            vec![StreamEvent::Error {
                message: "overloaded".into()
            }]
        );
    }

    #[test]
    fn answers_without_choices_or_with_errors_are_refused() {
        assert!(OpenAiCompat.decode_chat(Bytes::from_static(b"<html>")).is_err());
        assert!(
            OpenAiCompat
                .decode_chat(Bytes::from_static(b"{\"error\":{\"message\":\"x\"}}"))
                .is_err()
        );
        assert!(OpenAiCompat.decode_chat(Bytes::from_static(b"{\"id\":\"x\"}")).is_err());
        let ok = OpenAiCompat
            .decode_chat(Bytes::from_static(
                b"{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
            ))
            .unwrap();
        assert_eq!(
            ok.usage,
            Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2
            })
        );
    }

    #[test]
    fn statuses_map_to_the_fallback_rules() {
        let c = |s: u16| OpenAiCompat.classify_error(StatusCode::from_u16(s).unwrap(), &HeaderMap::new(), b"");
        assert_eq!(c(429), ErrorKind::RateLimited { retry_after: None });
        assert_eq!(c(402), ErrorKind::QuotaExhausted);
        assert_eq!(c(401), ErrorKind::InvalidKey);
        assert_eq!(c(403), ErrorKind::InvalidKey);
        assert_eq!(c(400), ErrorKind::ClientError);
        for s in [404, 408, 500, 502, 503, 504] {
            assert_eq!(c(s), ErrorKind::Transient, "{s}");
        }
    }
}
