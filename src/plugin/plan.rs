//! Chat plans (interface 0.3): a plugin's chat translation for one target,
//! given once as edits and checks that the host applies itself, instead of
//! a `build-chat`, a `decode-chat` and a stream decoder per request.
//!
//! The plugin decides: [`super::Plugin::plan_chat`] asks it for the plan
//! of a target, and the plan names the texts ([`ChatPlan::serves`],
//! [`ChatPlan::passes`]) on which a request or an answer must go to the
//! plugin after all. What the host does with a plan is exactly what the
//! interface says (`providers/wit/0.3.0/provider.wit`, `chat-plan`):
//! top-level fields set and dropped with the rest of the request kept byte
//! for byte, answers and stream events passed as they are once checked.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};
use memchr::memmem::Finder;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use sse_parse::SseParser;

use super::types::{Decoded, StreamEvent, Target, UpstreamRequest, Usage};

/// Longest stream event read (as the SDK's pass-through decoder).
const MAX_EVENT_BYTES: usize = 8 << 20;

/// A plugin's plan for chat requests to one target, checked and ready.
pub struct ChatPlan {
    /// The target it was given for, as the plugin is called with it (for
    /// the events and answers that go to the plugin after all).
    pub(super) target: super::bindings::v03::api::Target,
    pub(super) method: Method,
    pub(super) url: String,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) stream_headers: Vec<(HeaderName, HeaderValue)>,
    /// Top-level fields set (none that is also dropped).
    pub(super) set: Vec<SetField>,
    /// Top-level fields taken off.
    pub(super) drop: Vec<String>,
    pub(super) stream_usage: bool,
    pub(super) request_unless: Vec<Finder<'static>>,
    pub(super) answer_unless: Vec<Finder<'static>>,
}

/// A top-level field a plan sets, its name written as JSON once, not per
/// request.
pub(super) struct SetField {
    name: String,
    quoted: String,
    value: Box<RawValue>,
}

impl SetField {
    /// Field `name` set to `json`, which must be JSON.
    pub(super) fn new(name: String, json: String) -> Result<Self, String> {
        let value = RawValue::from_string(json)
            .map_err(|e| format!("planned field `{name}` with a value that is not JSON: {e}"))?;
        let quoted = serde_json::to_string(&name).map_err(|e| e.to_string())?;
        Ok(Self { name, quoted, value })
    }
}

/// Says where a plan sends requests and what it edits, never the key its
/// target and headers hold.
impl std::fmt::Debug for ChatPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatPlan")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("set", &self.set.iter().map(|f| &f.name).collect::<Vec<_>>())
            .field("drop", &self.drop)
            .field("stream_usage", &self.stream_usage)
            .finish_non_exhaustive()
    }
}

/// Longest list of texts or fields a plan may name: a plan is a handful of
/// edits, and every request is searched for each text.
pub const MAX_PLAN_ITEMS: usize = 64;

impl ChatPlan {
    /// Whether the plan serves a request with this body (it holds none of
    /// the texts the plugin named).
    pub fn serves(&self, body: &[u8]) -> bool {
        !self.request_unless.iter().any(|f| f.find(body).is_some())
    }

    /// Whether an answer or a stream event's data passes as it is (it holds
    /// none of the texts the plugin named).
    pub fn passes(&self, body: &[u8]) -> bool {
        !self.answer_unless.iter().any(|f| f.find(body).is_some())
    }

    /// The upstream request for `body`, a client's JSON object (checked by
    /// the parse phase): its top-level fields in order, those set or
    /// dropped left out, then those set, and `stream_options` given
    /// `include_usage` when the plan says so and the request streams.
    ///
    /// `conversation` is where the body's `messages` value lies, when the
    /// parse phase found it: the rest of the body is read around it (a few
    /// hundred bytes), and the conversation is copied through without
    /// being scanned again.
    pub fn build(
        &self,
        body: &[u8],
        conversation: Option<Range<usize>>,
        stream: bool,
    ) -> Result<UpstreamRequest, String> {
        let found = conversation.and_then(|at| {
            let value = body.get(at.clone())?;
            (value.first() == Some(&b'[') && value.last() == Some(&b']')).then_some((at, value))
        });
        match found {
            Some((at, value)) => {
                // The body with its conversation written as `0`.
                let mut rest = Vec::with_capacity(body.len() - at.len() + 1);
                rest.extend_from_slice(&body[..at.start]);
                rest.push(b'0');
                rest.extend_from_slice(&body[at.end..]);
                self.write(&rest, Some((at.start, value)), body.len(), stream)
            }
            None => self.write(body, None, body.len(), stream),
        }
    }

    /// Writes the request for the JSON object `text`, its value at byte
    /// `conversation.0` replaced by `conversation.1`; `size` is about the
    /// body's length.
    fn write<'a>(
        &self,
        text: &'a [u8],
        conversation: Option<(usize, &'a [u8])>,
        size: usize,
        stream: bool,
    ) -> Result<UpstreamRequest, String> {
        let fields: Vec<(&str, &RawValue)> =
            serde_json::from_slice::<TopLevel<'_>>(text).map_err(|e| format!("the request is not valid JSON: {e}"))?.0;
        let value_of = |value: &'a RawValue| -> &'a [u8] {
            match conversation {
                Some((at, messages)) if (value.get().as_ptr() as usize).wrapping_sub(text.as_ptr() as usize) == at => {
                    messages
                }
                _ => value.get().as_bytes(),
            }
        };
        let ask_usage = stream && self.stream_usage;
        let mut out = BytesMut::with_capacity(size + 64);
        out.put_u8(b'{');
        let mut first = true;
        let mut field = |out: &mut BytesMut, name: &[u8], value: &[u8]| {
            if !first {
                out.put_u8(b',');
            }
            first = false;
            out.put_slice(name);
            out.put_u8(b':');
            out.put_slice(value);
        };
        let mut usage_asked = false;
        for (name, value) in &fields {
            let key = unquoted(name);
            if self.dropped(&key) || self.set.iter().any(|f| f.name == key) {
                continue;
            }
            if ask_usage && key == "stream_options" {
                if let Some(merged) = with_usage(value) {
                    field(&mut out, name.as_bytes(), merged.as_bytes());
                    usage_asked = true;
                    continue;
                }
                // Neither an object nor null: the client's mistake, left
                // for the upstream to refuse (as the plugin would).
                usage_asked = true;
            }
            field(&mut out, name.as_bytes(), value_of(value));
        }
        for set in &self.set {
            field(&mut out, set.quoted.as_bytes(), set.value.get().as_bytes());
        }
        if ask_usage && !usage_asked && !self.dropped("stream_options") {
            field(&mut out, b"\"stream_options\"", b"{\"include_usage\":true}");
        }
        out.put_u8(b'}');
        let headers = if stream { &self.stream_headers } else { &self.headers };
        Ok(UpstreamRequest {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: headers.clone(),
            body: out.freeze(),
        })
    }

    fn dropped(&self, name: &str) -> bool {
        self.drop.iter().any(|d| d == name)
    }
}

/// A JSON object's top-level fields, names as written (quoted, escapes
/// kept) and values as raw JSON, in order.
struct TopLevel<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for TopLevel<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Fields<'a> {
            type Value = TopLevel<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::new();
                // The name as raw JSON keeps its quotes and escapes, so it
                // is written back exactly as the client wrote it.
                while let Some(name) = map.next_key::<&'de RawValue>()? {
                    fields.push((name.get(), map.next_value::<&'de RawValue>()?));
                }
                Ok(TopLevel(fields))
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// A field name as raw JSON (with its quotes) → its text.
fn unquoted(name: &str) -> std::borrow::Cow<'_, str> {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(plain) if !plain.contains('\\') => plain.into(),
        _ => serde_json::from_str::<String>(name).map(Into::into).unwrap_or(name.into()),
    }
}

/// `stream_options` with `include_usage: true`, the client's other options
/// kept; `None` when it is neither an object nor null.
fn with_usage(value: &RawValue) -> Option<String> {
    let text = value.get().trim();
    if text == "null" {
        return Some("{\"include_usage\":true}".to_owned());
    }
    let options: TopLevel<'_> = serde_json::from_str(text).ok()?;
    let mut out = String::with_capacity(text.len() + 24);
    out.push('{');
    for (name, value) in options.0.iter().filter(|(name, _)| unquoted(name) != "include_usage") {
        out.push_str(name);
        out.push(':');
        out.push_str(value.get());
        out.push(',');
    }
    out.push_str("\"include_usage\":true}");
    Some(out)
}

/// The fields of an answer or a chunk the host checks.
#[derive(Deserialize)]
struct Check {
    choices: Option<IgnoredAny>,
    error: Option<serde_json::Value>,
    usage: Option<Usage>,
}

/// A chat completion passed as it is: checked to be one (an object with
/// `choices` and no `error`), its usage read.
pub fn check_answer(body: Bytes) -> Result<Decoded, String> {
    let check: Check =
        serde_json::from_slice(&body).map_err(|e| format!("the answer is not a chat completion: {e}"))?;
    if let Some(error) = check.error {
        return Err(format!("the answer is an error: {}", error_message(&error)));
    }
    if check.choices.is_none() {
        return Err("the answer is not a chat completion".to_owned());
    }
    Ok(Decoded { body, usage: check.usage })
}

/// The message of an OpenAI-style error value (`{"message": ...}` or a
/// string; otherwise its JSON).
pub fn error_message(error: &serde_json::Value) -> String {
    match error {
        serde_json::Value::String(s) => s.clone(),
        other => other.get("message").and_then(|m| m.as_str()).map(str::to_owned).unwrap_or_else(|| other.to_string()),
    }
}

/// A stream's event data passed as it is, unless it ends the stream or is
/// an error; the usage read from a chunk that may carry it.
pub fn stream_event(data: &str) -> StreamEvent {
    let usage = if data.contains("\"error\"") || data.contains("\"usage\"") {
        match serde_json::from_str::<Check>(data) {
            Ok(Check { error: Some(error), .. }) => {
                return StreamEvent::Error { message: error_message(&error) };
            }
            Ok(check) => check.usage,
            Err(e) => return StreamEvent::Error { message: format!("undecodable chunk: {e}") },
        }
    } else {
        None
    };
    StreamEvent::Chunk { json: Bytes::copy_from_slice(data.as_bytes()), usage }
}

/// The host's side of a planned stream: SSE events read here, each passed
/// as it is or, when it holds one of the plan's texts, handed on its own
/// to the plugin's decoder (made on first need).
///
/// With `frames`, runs of plain events (one `data:` line each, no usage,
/// no error, none of the plan's texts) leave as the bytes they came in
/// ([`StreamEvent::Frames`]), without being parsed into events and framed
/// again; anything else (comments, other fields, several data lines, CR
/// line ends, an event past the size bound) is read by the SSE parser, from
/// that point on for the rest of the stream.
pub struct PlannedStream {
    plan: Arc<ChatPlan>,
    /// Bytes after the last complete event, while reading by bytes.
    buf: BytesMut,
    /// Reading by bytes (until something calls for the parser).
    frames: bool,
    parser: Option<SseParser>,
}

/// What a planned stream found in the bytes it was given.
pub enum Planned {
    /// An event for the client.
    Event(StreamEvent),
    /// An event's data that the plugin must translate.
    ToPlugin(String),
}

impl PlannedStream {
    /// A reader for one stream under `plan`; `frames`: plain events may
    /// leave as [`StreamEvent::Frames`].
    pub fn new(plan: Arc<ChatPlan>, frames: bool) -> Self {
        let parser = (!frames).then(sse_parser);
        Self { plan, buf: BytesMut::new(), frames, parser }
    }

    /// The events that `bytes` complete.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Planned>) {
        if self.frames && memchr::memchr(b'\r', bytes).is_none() {
            self.buf.extend_from_slice(bytes);
            self.split(out);
            if self.buf.len() <= MAX_EVENT_BYTES {
                return;
            }
            // Longer than an event may be: the parser's bound decides.
            self.parser();
        } else {
            self.parser().feed(bytes);
        }
        self.drain(out);
    }

    /// The events left when the body ends.
    pub fn finish(&mut self, out: &mut Vec<Planned>) {
        self.parser().finish();
        self.drain(out);
    }

    /// The SSE parser, from now on: it is given first what was not read
    /// by bytes.
    fn parser(&mut self) -> &mut SseParser {
        let parser = self.parser.get_or_insert_with(sse_parser);
        if self.frames {
            self.frames = false;
            parser.feed(&self.buf.split());
        }
        parser
    }

    /// Complete events in `buf`: plain ones gathered into frames, the
    /// others handled one by one.
    fn split(&mut self, out: &mut Vec<Planned>) {
        let mut run = BytesMut::new();
        let mut chunks = 0;
        while let Some(end) = memchr::memmem::find(&self.buf, b"\n\n") {
            let event = self.buf.split_to(end + 2);
            let line = &event[..end];
            let data = match line.strip_prefix(b"data:") {
                Some(data) if memchr::memchr(b'\n', line).is_none() => data.strip_prefix(b" ").unwrap_or(data),
                // A comment, another field, several lines: the parser's.
                _ => {
                    flush(&mut run, &mut chunks, out);
                    let parser = self.parser.get_or_insert_with(sse_parser);
                    parser.feed(&event);
                    self.drain(out);
                    continue;
                }
            };
            let plain = !data.is_empty()
                && data != b"[DONE]"
                && memchr::memmem::find(data, b"\"error\"").is_none()
                && memchr::memmem::find(data, b"\"usage\"").is_none()
                && self.plan.passes(data);
            if plain {
                run.extend_from_slice(b"data: ");
                run.extend_from_slice(data);
                run.extend_from_slice(b"\n\n");
                chunks += 1;
                continue;
            }
            flush(&mut run, &mut chunks, out);
            if let Ok(text) = std::str::from_utf8(data) {
                self.one(text.trim(), out);
            }
        }
        flush(&mut run, &mut chunks, out);
    }

    fn drain(&mut self, out: &mut Vec<Planned>) {
        let Some(parser) = self.parser.as_mut() else { return };
        let mut events = Vec::new();
        while let Some(event) = parser.next_event() {
            events.push(event.data);
        }
        for data in events {
            self.one(data.trim(), out);
        }
    }

    /// One event's data.
    fn one(&self, data: &str, out: &mut Vec<Planned>) {
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            out.push(Planned::Event(StreamEvent::Done));
        } else if self.plan.passes(data.as_bytes()) {
            out.push(Planned::Event(stream_event(data)));
        } else {
            out.push(Planned::ToPlugin(data.to_owned()));
        }
    }
}

/// An SSE parser with the event size bound.
fn sse_parser() -> SseParser {
    SseParser::new().max_buffer(MAX_EVENT_BYTES)
}

/// A run of plain events, out as frames.
fn flush(run: &mut BytesMut, chunks: &mut usize, out: &mut Vec<Planned>) {
    if *chunks > 0 {
        out.push(Planned::Event(StreamEvent::Frames { sse: run.split().freeze(), chunks: *chunks }));
        *chunks = 0;
    }
}

/// Most plans one provider keeps (models × keys); past it the cache starts
/// over, so that it never grows without bound.
const MAX_PLANS: usize = 4096;

/// A provider's plans, by model and key: asked of the plugin once each
/// (`None` kept too: the plugin plans nothing for that target).
#[derive(Default)]
pub struct PlanCache {
    plans: RwLock<HashMap<String, KeyPlans>>,
}

/// One model's plans, by key number.
type KeyPlans = Vec<(usize, Option<Arc<ChatPlan>>)>;

impl PlanCache {
    /// The plan for `target` on key number `key`, asked of `plugin` the
    /// first time. A plugin that fails to plan (a trap, a deadline, a plan
    /// the host refuses) is counted once and not asked again for that
    /// target: its requests are built by `build-chat`, as without a plan.
    /// Only a plugin that had no instance free is asked again next time.
    pub fn get(&self, plugin: &Arc<super::Plugin>, target: &Target<'_>, key: usize) -> Option<Arc<ChatPlan>> {
        if !plugin.capabilities().plan {
            return None;
        }
        {
            let plans = self.plans.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, plan)) = plans.get(target.model).and_then(|keys| keys.iter().find(|(k, _)| *k == key)) {
                return plan.clone();
            }
        }
        let plan = match plugin.plan_chat(target) {
            Ok(plan) => plan.map(Arc::new),
            Err(e) if e.kind == super::PluginErrorKind::Unavailable => return None,
            Err(_) => None,
        };
        let mut plans = self.plans.write().unwrap_or_else(|e| e.into_inner());
        if plans.values().map(Vec::len).sum::<usize>() >= MAX_PLANS {
            plans.clear();
        }
        let keys = plans.entry(target.model.to_owned()).or_default();
        if !keys.iter().any(|(k, _)| *k == key) {
            keys.push((key, plan.clone()));
        }
        plan
    }
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlanCache")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::{Value, json};

    fn plan(drop: &[&str], stream_usage: bool) -> ChatPlan {
        ChatPlan {
            target: super::super::bindings::v03::api::Target {
                base_url: "http://x/v1".to_owned(),
                model: "up-model".to_owned(),
                key: None,
                options: Vec::new(),
            },
            method: Method::POST,
            url: "http://x/v1/chat/completions".to_owned(),
            headers: Vec::new(),
            stream_headers: Vec::new(),
            set: vec![SetField::new("model".to_owned(), "\"up-model\"".to_owned()).unwrap()]
                .into_iter()
                .filter(|f| !drop.contains(&f.name.as_str()))
                .collect(),
            drop: drop.iter().map(|d| (*d).to_owned()).collect(),
            stream_usage,
            request_unless: vec![Finder::new("\"reasoning_details\"").into_owned()],
            answer_unless: vec![Finder::new("\"reasoning\"").into_owned()],
        }
    }

    /// Where `messages` lies in `body`, as the parse phase finds it.
    fn conversation(body: &[u8]) -> Option<Range<usize>> {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            messages: &'a RawValue,
        }
        let found = serde_json::from_slice::<Body<'_>>(body).ok()?.messages.get();
        let start = found.as_ptr() as usize - body.as_ptr() as usize;
        Some(start..start + found.len())
    }

    /// The request built with the conversation's place known and without:
    /// the same bytes either way.
    fn build(plan: &ChatPlan, body: &[u8], stream: bool) -> UpstreamRequest {
        let around = plan.build(body, conversation(body), stream).unwrap();
        let scanned = plan.build(body, None, stream).unwrap();
        assert_eq!(around.body, scanned.body, "{}", String::from_utf8_lossy(body));
        around
    }

    #[test]
    fn a_conversation_copied_around_is_the_conversation_scanned() {
        let p = plan(&["seed"], true);
        for body in [
            r#"{"messages":[{"role":"user","content":"a ] , } \"x\""}],"model":"m","stream_options":null}"#,
            r#"{ "model" : "m" , "messages" :  [ {"role":"user","content":"x"} ] , "seed": 1 }"#,
            r#"{"model":"m","mess\u0061ges":[{"role":"user","content":"x"}],"stream":true}"#,
        ] {
            for stream in [false, true] {
                let request = build(&p, body.as_bytes(), stream);
                let sent: Value = serde_json::from_slice(&request.body).unwrap();
                assert_eq!(sent["messages"][0]["role"], "user", "{body}");
            }
        }
        // A place that is not an array is not trusted: the body is scanned.
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#;
        let misplaced = p.build(body, Some(0..5), false).unwrap();
        assert_eq!(misplaced.body, p.build(body, None, false).unwrap().body);
        assert!(p.build(body, Some(40..400), false).is_ok(), "a place past the end is not trusted either");
    }

    fn built(plan: &ChatPlan, body: &Value, stream: bool) -> Value {
        let request = build(plan, body.to_string().as_bytes(), stream);
        serde_json::from_slice(&request.body).unwrap()
    }

    #[test]
    fn fields_are_set_and_dropped_and_the_rest_kept_as_written() {
        let p = plan(&["seed"], true);
        let body =
            br#"{"model":"mine","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"seed":7,"temperature":0.50}"#;
        let request = build(&p, body, false);
        assert_eq!(
            std::str::from_utf8(&request.body).unwrap(),
            r#"{"messages":[{"role":"user","content":"h\u00e9 \"x\""}],"temperature":0.50,"model":"up-model"}"#
        );
    }

    #[test]
    fn a_stream_asks_for_usage_keeping_the_clients_stream_options() {
        let p = plan(&[], true);
        let v = built(&p, &json!({"model": "m", "stream": true}), true);
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        let v =
            built(&p, &json!({"model": "m", "stream": true, "stream_options": {"x": 1, "include_usage": false}}), true);
        assert_eq!(v["stream_options"], json!({"x": 1, "include_usage": true}));
        let v = built(&p, &json!({"model": "m", "stream": true, "stream_options": null}), true);
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        let v = built(&p, &json!({"model": "m", "stream": true, "stream_options": 3}), true);
        assert_eq!(v["stream_options"], json!(3), "the client's mistake is left for the upstream");
        let v = built(&plan(&["stream_options"], true), &json!({"model": "m", "stream": true}), true);
        assert!(v.get("stream_options").is_none());
        let v = built(&plan(&[], false), &json!({"model": "m", "stream": true}), true);
        assert!(v.get("stream_options").is_none());
        let v = built(&p, &json!({"model": "m"}), false);
        assert!(v.get("stream_options").is_none(), "only streams ask");
    }

    #[test]
    fn escaped_names_are_matched_by_their_text() {
        let p = plan(&["seed"], false);
        let v = built(&p, &serde_json::from_str(r#"{"mo\u0064el":"mine","se\u0065d":1}"#).unwrap(), false);
        assert_eq!(v, json!({"model": "up-model"}));
    }

    #[test]
    fn a_plan_printed_shows_no_key() {
        let mut p = plan(&["seed"], false);
        p.target.key = Some("sk-secret-1234".to_owned());
        p.headers.push((http::header::AUTHORIZATION, HeaderValue::from_static("Bearer sk-secret-1234")));
        let shown = format!("{p:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(shown.contains("chat/completions") && shown.contains("seed"), "{shown}");
    }

    #[test]
    fn the_plan_names_what_it_does_not_serve() {
        let p = plan(&[], false);
        assert!(p.serves(br#"{"messages":[{"role":"assistant","content":"x"}]}"#));
        assert!(!p.serves(br#"{"messages":[{"role":"assistant","reasoning_details":[]}]}"#));
        assert!(p.passes(br#"{"choices":[{"message":{"reasoning_content":"x"}}]}"#));
        assert!(!p.passes(br#"{"choices":[{"message":{"reasoning":"x"}}]}"#));
    }

    #[test]
    fn answers_are_checked_and_their_usage_read() {
        let body = Bytes::from_static(br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#);
        let decoded = check_answer(body.clone()).unwrap();
        assert_eq!(decoded.body, body, "passed as it is");
        assert_eq!(decoded.usage, Some(Usage { prompt_tokens: 3, completion_tokens: 4 }));
        assert!(check_answer(Bytes::from_static(br#"{"error":{"message":"no"}}"#)).unwrap_err().contains("no"));
        assert!(check_answer(Bytes::from_static(br#"{"data":[]}"#)).is_err());
        assert!(check_answer(Bytes::from_static(b"<html>")).is_err());
    }

    /// What a planned stream with frames makes of `pieces`, as text.
    fn frames_of(pieces: &[&[u8]]) -> Vec<String> {
        let mut stream = PlannedStream::new(Arc::new(plan(&[], false)), true);
        let mut out = Vec::new();
        for piece in pieces {
            stream.push(piece, &mut out);
        }
        stream.finish(&mut out);
        out.iter()
            .map(|e| match e {
                Planned::Event(StreamEvent::Frames { sse, chunks }) => {
                    format!("{chunks} frames {}", String::from_utf8_lossy(sse))
                }
                Planned::Event(StreamEvent::Chunk { json, usage }) => {
                    format!("chunk {} {:?}", String::from_utf8_lossy(json), usage.map(|u| u.total()))
                }
                Planned::Event(StreamEvent::Done) => "done".to_owned(),
                Planned::Event(StreamEvent::Error { message }) => format!("error {message}"),
                Planned::ToPlugin(data) => format!("plugin {data}"),
            })
            .collect()
    }

    #[test]
    fn plain_events_leave_as_the_bytes_they_came_in() {
        let shown = frames_of(&[
            b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata:{\"b\":2}\n",
            b"\n: ping\n\ndata: {\"c\":3}\n\ndata: {\"reasoning\":\"r\"}\n\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            shown,
            [
                "2 frames data: {\"a\":1}\n\ndata: {\"a\":2}\n\n",
                "1 frames data: {\"b\":2}\n\n",
                "1 frames data: {\"c\":3}\n\n",
                "plugin {\"reasoning\":\"r\"}",
                "chunk {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}} Some(2)",
                "done"
            ]
        );
        // An event of several data lines, or CR line ends from some point
        // on, is the SSE parser's from there.
        let shown = frames_of(&[b"data: {\"a\":\ndata: 1}\n\ndata: {\"b\":2}\n\n", b"data: {\"c\":3}\r\n\r\n"]);
        assert_eq!(shown, ["chunk {\"a\":\n1} None", "1 frames data: {\"b\":2}\n\n", "chunk {\"c\":3} None"]);
        // A last event without its blank line is dropped, as the parser
        // drops it.
        assert_eq!(frames_of(&[b"data: {\"a\":1}\n\ndata: {\"b\":2}\n"]), ["1 frames data: {\"a\":1}\n\n"]);
    }

    #[test]
    fn stream_events_pass_end_fail_or_go_to_the_plugin() {
        let mut stream = PlannedStream::new(Arc::new(plan(&[], false)), false);
        let mut out = Vec::new();
        stream.push(b"data: {\"choices\":[]}\n\ndata: {\"choices\":[{\"delta\":{\"reasoning\":\"r\"}}]}\n", &mut out);
        stream.push(b"\ndata: {\"error\":{\"message\":\"over\"}}\n\ndata: {\"choices\":[],\"usage\":", &mut out);
        stream.push(b"{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n", &mut out);
        stream.push(b"\n", &mut out);
        stream.finish(&mut out);
        let shown: Vec<String> = out
            .iter()
            .map(|e| match e {
                Planned::Event(StreamEvent::Chunk { usage: Some(u), .. }) => format!("usage {}", u.total()),
                Planned::Event(StreamEvent::Chunk { json, .. }) => String::from_utf8_lossy(json).into_owned(),
                Planned::Event(StreamEvent::Done) => "done".to_owned(),
                Planned::Event(StreamEvent::Error { message }) => format!("error {message}"),
                Planned::Event(StreamEvent::Frames { .. }) => "frames (not asked for)".to_owned(),
                Planned::ToPlugin(data) => format!("plugin {data}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "{\"choices\":[]}",
                "plugin {\"choices\":[{\"delta\":{\"reasoning\":\"r\"}}]}",
                "error over",
                "usage 3",
                "done"
            ]
        );
    }
}
