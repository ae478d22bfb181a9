//! A plugin for tests of the host's limits. Its behaviour follows the
//! target model: `trap` panics, `loop` never returns, `hog` allocates until
//! it is stopped; `trap-stream` builds fine but its stream decoder traps on
//! the second piece; `count` adds `?calls=N` to the URL, N counting the
//! calls this instance has served (to see whether instances are reused);
//! `escape` builds a URL outside the provider's base URL; `trap-plan`
//! panics in `plan-chat` only (it builds fine).
//! Any other model gets a minimal OpenAI-compatible pass-through, so a
//! well-behaved candidate can share the plugin.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

static CALLS: AtomicU32 = AtomicU32::new(0);

use freeway_plugin_sdk::{
    self as sdk, Answer, BuildError, Capabilities, Chunk, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers,
    HttpRequest, INTERFACE_VERSION, ModelRecord, QuotaWindow, RateReport, StreamEvent, Target,
};

struct Plugin;

fn misbehave(model: &str) {
    match model {
        "trap" => panic!("misbehaving on purpose"),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "hog" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        _ => {}
    }
}

impl Guest for Plugin {
    type StreamDecoder = Decoder;

    fn describe() -> Descriptor {
        Descriptor {
            name: "misbehave".to_owned(),
            interface_version: INTERFACE_VERSION.to_owned(),
            capabilities: Capabilities::CHAT | Capabilities::STREAM | Capabilities::LIMITS | Capabilities::PLAN,
        }
    }

    fn build_chat(request: Vec<u8>, target: Target) -> Result<HttpRequest, BuildError> {
        misbehave(&target.model);
        if target.model == "unexpressible" {
            return Err(BuildError::ClientError("this provider cannot take that request".to_owned()));
        }
        // Pass the request on with the model swapped, textually: enough for tests.
        let body = String::from_utf8(request).map_err(|e| e.to_string())?;
        let body = match body.find("\"model\"") {
            Some(at) => {
                let rest = &body[at + 7..];
                let open = rest.find('"').ok_or("no model value")? + 1;
                let close = rest[open..].find('"').ok_or("no model end")? + open;
                format!("{}\"model\"{}{}{}", &body[..at], &rest[..open], target.model, &rest[close..])
            }
            None => return Err(BuildError::Failed("no model".to_owned())),
        };
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(key) = target.key {
            headers.push(("authorization".to_owned(), format!("Bearer {key}")));
        }
        if target.model == "escape" {
            // A URL that leaves the base URL, which the host must refuse.
            let url = format!("{}/../admin/chat/completions", target.base_url);
            return Ok(HttpRequest { method: "POST".to_owned(), url, headers, body: body.into_bytes() });
        }
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let query = if target.model == "count" { format!("?calls={calls}") } else { String::new() };
        Ok(HttpRequest {
            method: "POST".to_owned(),
            url: format!("{}/chat/completions{query}", target.base_url),
            headers,
            body: body.into_bytes(),
        })
    }

    /// No plan (the misbehaviours live in `build-chat` and the decoders),
    /// except a trap for `trap-plan`.
    fn plan_chat(target: Target) -> Option<sdk::ChatPlan> {
        if target.model == "trap-plan" {
            panic!("misbehaving in plan-chat on purpose");
        }
        None
    }

    fn decode_chat(body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        Ok(Answer { body, usage: None })
    }

    fn build_embeddings(_request: Vec<u8>, _target: Target) -> Result<HttpRequest, BuildError> {
        Err(BuildError::Failed("no embeddings".to_owned()))
    }

    fn decode_embeddings(_request: Vec<u8>, _body: Vec<u8>, _target: Target) -> Result<Answer, String> {
        Err("no embeddings".to_owned())
    }

    fn build_models(_target: Target) -> Result<HttpRequest, String> {
        Err("no listing".to_owned())
    }

    fn decode_models(_body: Vec<u8>, _target: Target) -> Result<Vec<ModelRecord>, String> {
        Err("no listing".to_owned())
    }

    fn classify_error(status: u16, _headers: Headers, _body: Vec<u8>) -> ErrorKind {
        if status == 429 { ErrorKind::rate_limited(None, QuotaWindow::Unknown) } else { ErrorKind::Transient }
    }

    /// Traps when the upstream sends `x-ratelimit-trap` (a fault there must
    /// cost the attempt nothing); otherwise the SDK's usual reading.
    fn read_limits(_status: u16, headers: Headers) -> Vec<RateReport> {
        if sdk::header(&headers, "x-ratelimit-trap").is_some() {
            panic!("misbehave: trapping in read-limits");
        }
        sdk::suffixed_reports(&headers, QuotaWindow::Day, QuotaWindow::Minute)
    }
}

/// Passes `data:` lines through as chunks; traps on the second push when
/// built for `trap-stream`.
struct Decoder {
    trap: bool,
    pushes: Cell<u32>,
}

impl GuestStreamDecoder for Decoder {
    fn new(target: Target) -> Self {
        Self { trap: target.model == "trap-stream", pushes: Cell::new(0) }
    }

    fn push(&self, bytes: Vec<u8>) -> Vec<StreamEvent> {
        self.pushes.set(self.pushes.get() + 1);
        if self.trap && self.pushes.get() > 1 {
            panic!("the stream decoder misbehaves on purpose");
        }
        let text = String::from_utf8_lossy(&bytes);
        text.split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data:").map(str::trim))
            .map(|data| {
                if data == "[DONE]" {
                    StreamEvent::Done
                } else {
                    StreamEvent::Chunk(Chunk { json: data.as_bytes().to_vec(), usage: None })
                }
            })
            .collect()
    }

    fn finish(&self) -> Vec<StreamEvent> {
        Vec::new()
    }
}

freeway_plugin_sdk::export_plugin!(Plugin);
