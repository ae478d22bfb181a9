//! Streamed tool calls, checked before they reach the client. The relay of
//! a request with tools holds a stream's chunks from a tool call's first
//! delta until the calls are complete (their choice's finish chunk, or the
//! end of the stream), then checks each call by the rules of whole answers
//! ([`super::arguments`], the request's tool names). Valid calls are let go
//! as they came, byte for byte; mended ones as the same chunks, the call's
//! first delta carrying its whole mended arguments (and name) and its later
//! pieces dropped; a call that cannot be mended is refused, so the stream
//! fails (before its first chunk, the attempt falls back) instead of
//! handing the agent a call it cannot run.
//!
//! Chunks that arrive between held ones are held with them: the order
//! stays. Until the first chunk goes out, chunks that show nothing yet (a
//! role, empty content) are held too, since an upstream often sends one
//! before its tool call and a refused call can fall back only while the
//! client has been sent nothing.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{Mend, arguments, offered_name, tool_names};
use crate::metrics::Metrics;
use crate::upstream::MAX_ANSWER_BYTES;
use crate::upstream::relay::{Hold, Step};

/// One streamed tool call, as its pieces add up.
struct Call {
    /// Its choice's index.
    choice: u64,
    /// Its index among the choice's calls.
    index: u64,
    name: String,
    arguments: String,
}

/// What a mended call carries instead of its pieces.
struct Fix {
    choice: u64,
    index: u64,
    name: Option<String>,
    arguments: Option<String>,
}

/// A chunk held back.
struct Held {
    json: Bytes,
    /// It carries tool-call pieces (only these are rewritten).
    calls: bool,
}

/// The tool-call check of one stream (see the module doc).
pub struct ToolCalls {
    /// The client's chat request: its tools' names are read only when a
    /// call's name needs checking.
    request: Bytes,
    offered: Option<Vec<String>>,
    metrics: Arc<Metrics>,
    held: Vec<Held>,
    /// The held chunks' size, bounded like a whole answer's.
    bytes: usize,
    /// The calls being held, not yet checked.
    calls: Vec<Call>,
    /// Choices with held calls whose finish chunk arrived.
    finished: Vec<u64>,
    /// A chunk has gone out: blank chunks need no holding any more.
    started: bool,
}

impl ToolCalls {
    /// The check for a stream answering `request` (the client's chat
    /// request), counting what it mends in `metrics`.
    pub fn new(request: Bytes, metrics: Arc<Metrics>) -> Self {
        Self {
            request,
            offered: None,
            metrics,
            held: Vec::new(),
            bytes: 0,
            calls: Vec::new(),
            finished: Vec::new(),
            started: false,
        }
    }

    /// Adds the tool-call pieces and finish reasons of `chunk` to the calls
    /// held; whether it had any pieces.
    fn read(&mut self, chunk: &Value) -> bool {
        let mut pieces = false;
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let at = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let deltas = choice.pointer("/delta/tool_calls").and_then(Value::as_array);
            for delta in deltas.into_iter().flatten() {
                pieces = true;
                let index = delta.get("index").and_then(Value::as_u64).unwrap_or(0);
                let position = match self.calls.iter().position(|c| c.choice == at && c.index == index) {
                    Some(position) => position,
                    None => {
                        let call = Call { choice: at, index, name: String::new(), arguments: String::new() };
                        self.calls.push(call);
                        self.calls.len() - 1
                    }
                };
                let call = &mut self.calls[position];
                let Some(function) = delta.get("function") else { continue };
                if let Some(name) = function.get("name").and_then(Value::as_str) {
                    call.name.push_str(name);
                }
                match function.get("arguments") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(more)) => call.arguments.push_str(more),
                    // Not the wire format, but then it is checked as JSON.
                    Some(other) => call.arguments.push_str(&other.to_string()),
                }
            }
            let finished = choice.get("finish_reason").is_some_and(|r| !r.is_null());
            if finished && !self.finished.contains(&at) && self.calls.iter().any(|c| c.choice == at) {
                self.finished.push(at);
            }
        }
        pieces
    }

    /// Every choice with calls held has finished.
    fn complete(&self) -> bool {
        !self.calls.is_empty() && self.calls.iter().all(|c| self.finished.contains(&c.choice))
    }

    fn hold(&mut self, json: Bytes, calls: bool) -> Result<(), String> {
        self.bytes += json.len();
        if self.bytes > MAX_ANSWER_BYTES {
            return Err(format!("the tool calls passed {MAX_ANSWER_BYTES} bytes before they ended"));
        }
        self.held.push(Held { json, calls });
        Ok(())
    }

    /// Everything held, then `json` if any, unchanged.
    fn release(&mut self, json: Option<Bytes>) -> Step {
        self.started = true;
        self.bytes = 0;
        if self.held.is_empty() {
            return json.map_or(Step::Held, Step::Pass);
        }
        let mut chunks: Vec<Bytes> = self.held.drain(..).map(|h| h.json).collect();
        chunks.extend(json);
        Step::Release(chunks)
    }

    /// The held calls are complete: check them, and let go of what is held
    /// (mended if need be), or refuse.
    fn resolve(&mut self) -> Step {
        let calls = std::mem::take(&mut self.calls);
        self.finished.clear();
        let mut fixes = Vec::new();
        let mut mends = Vec::new();
        for call in &calls {
            let fixed_arguments = match arguments(&call.arguments) {
                Ok(None) => None,
                Ok(Some((fixed, how))) => {
                    mends.extend(how);
                    Some(fixed)
                }
                Err(reason) => return Step::Refuse(reason),
            };
            let offered = self.offered.get_or_insert_with(|| tool_names(&self.request));
            let fixed_name = match offered_name(&call.name, offered) {
                Ok(None) => None,
                Ok(Some(right)) => {
                    mends.push(Mend::NameCase);
                    Some(right.to_owned())
                }
                Err(reason) => return Step::Refuse(reason),
            };
            if fixed_arguments.is_some() || fixed_name.is_some() {
                fixes.push(Fix {
                    choice: call.choice,
                    index: call.index,
                    name: fixed_name,
                    arguments: fixed_arguments,
                });
            }
        }
        if fixes.is_empty() {
            return self.release(None);
        }
        for mend in mends {
            self.metrics.tool_call_repair(mend.label());
        }
        self.started = true;
        self.bytes = 0;
        Step::Release(rewrite(std::mem::take(&mut self.held), &fixes))
    }
}

impl Hold for ToolCalls {
    fn push(&mut self, json: Bytes) -> Step {
        let holding = !self.held.is_empty();
        // Past the start, a chunk with no tool call in it and nothing held
        // before it goes at once, unparsed.
        if self.started && !holding && memchr::memmem::find(&json, b"\"tool_calls\"").is_none() {
            return Step::Pass(json);
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(&json) else {
            // Not a chunk this can read: it keeps its place.
            if !holding {
                return self.release(Some(json));
            }
            return match self.hold(json, false) {
                Ok(()) => Step::Held,
                Err(reason) => Step::Refuse(reason),
            };
        };
        let pieces = self.read(&chunk);
        if self.calls.is_empty() && (self.started || !blank(&chunk)) {
            return self.release(Some(json));
        }
        if let Err(reason) = self.hold(json, pieces) {
            return Step::Refuse(reason);
        }
        if self.complete() { self.resolve() } else { Step::Held }
    }

    fn end(&mut self) -> Step {
        if self.calls.is_empty() { self.release(None) } else { self.resolve() }
    }
}

/// A chunk that shows the client nothing: each choice's delta has at most
/// a role and empty values, and no choice finished.
fn blank(chunk: &Value) -> bool {
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else { return false };
    !choices.is_empty()
        && choices.iter().all(|choice| {
            choice.get("finish_reason").is_none_or(Value::is_null)
                && choice
                    .get("delta")
                    .and_then(Value::as_object)
                    .is_none_or(|delta| delta.iter().all(|(key, value)| key == "role" || empty(value)))
        })
}

fn empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// `held` with the mended calls' pieces replaced: a call's first piece
/// carries its whole mended arguments (and name), its later pieces lose
/// them; a chunk left with nothing to show is dropped. Chunks without a
/// mended call's piece stay as they came.
fn rewrite(held: Vec<Held>, fixes: &[Fix]) -> Vec<Bytes> {
    let mut begun: Vec<(u64, u64)> = Vec::new();
    let mut out = Vec::with_capacity(held.len());
    for chunk in held {
        if !chunk.calls {
            out.push(chunk.json);
            continue;
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(&chunk.json) else {
            out.push(chunk.json);
            continue;
        };
        let mut changed = false;
        let choices = value.get_mut("choices").and_then(Value::as_array_mut);
        for choice in choices.into_iter().flatten() {
            let at = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else { continue };
            let Some(deltas) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) else { continue };
            deltas.retain_mut(|piece| {
                let index = piece.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(fix) = fixes.iter().find(|f| f.choice == at && f.index == index) else { return true };
                let Some(piece) = piece.as_object_mut() else { return true };
                changed = true;
                let first = !begun.contains(&(at, index));
                if first {
                    begun.push((at, index));
                }
                let function = piece.entry("function").or_insert_with(|| Value::Object(Map::new()));
                if let Some(function) = function.as_object_mut() {
                    for (key, fixed) in [("name", &fix.name), ("arguments", &fix.arguments)] {
                        let Some(fixed) = fixed else { continue };
                        if first {
                            function.insert(key.to_owned(), Value::String(fixed.clone()));
                        } else {
                            function.remove(key);
                        }
                    }
                }
                first
                    || piece.get("id").is_some_and(|id| !id.is_null())
                    || piece.get("function").and_then(Value::as_object).is_some_and(|f| !f.is_empty())
            });
            if deltas.is_empty() {
                delta.remove("tool_calls");
            }
        }
        if !changed {
            out.push(chunk.json);
        } else if blank(&value) && value.get("usage").is_none_or(Value::is_null) {
            // Only pieces of mended calls: nothing is left to show.
        } else if let Ok(json) = serde_json::to_vec(&value) {
            out.push(Bytes::from(json));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(delta: Value, finish: Option<&str>) -> Bytes {
        let c = json!({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(c.to_string())
    }

    fn piece(index: u64, name: Option<&str>, arguments: &str) -> Value {
        let mut function = json!({"arguments": arguments});
        if let Some(name) = name {
            function["name"] = json!(name);
        }
        let mut piece = json!({"index": index, "function": function});
        if name.is_some() {
            piece["id"] = json!(format!("call_{index}"));
        }
        json!({"tool_calls": [piece]})
    }

    fn check() -> ToolCalls {
        let request = json!({"tools": [{"type": "function", "function": {"name": "write_file"}},
            {"type": "function", "function": {"name": "read_file"}}]});
        ToolCalls::new(Bytes::from(request.to_string()), Arc::new(Metrics::new()))
    }

    /// Feeds `chunks` then the end; what went out, in order, or the refusal.
    fn run(chunks: &[Bytes]) -> Result<Vec<Bytes>, String> {
        let mut check = check();
        let mut out = Vec::new();
        let mut steps: Vec<Step> = chunks.iter().map(|c| check.push(c.clone())).collect();
        steps.push(check.end());
        for step in steps {
            match step {
                Step::Pass(json) => out.push(json),
                Step::Held => {}
                Step::Release(chunks) => out.extend(chunks),
                Step::Refuse(reason) => return Err(reason),
            }
        }
        Ok(out)
    }

    /// The calls a client assembles from `chunks`: (name, arguments).
    fn assembled(chunks: &[Bytes]) -> Vec<(String, String)> {
        let mut calls: Vec<(String, String)> = Vec::new();
        for c in chunks {
            let v: Value = serde_json::from_slice(c).unwrap();
            for p in v["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = p["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, Default::default());
                }
                calls[i].0.push_str(p["function"]["name"].as_str().unwrap_or_default());
                calls[i].1.push_str(p["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
        calls
    }

    #[test]
    fn valid_calls_and_everything_around_them_go_out_unchanged_and_in_order() {
        let chunks = [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(piece(0, Some("write_file"), "{\"path\":"), None),
            chunk(json!({"content": "between"}), None),
            chunk(piece(0, None, " \"a\"}"), None),
            chunk(piece(1, Some("read_file"), "{}"), None),
            chunk(json!({}), Some("tool_calls")),
        ];
        assert_eq!(run(&chunks).unwrap(), chunks);
    }

    #[test]
    fn blank_chunks_wait_for_the_first_that_shows_something() {
        let mut check = check();
        assert!(matches!(check.push(chunk(json!({"role": "assistant", "content": ""}), None)), Step::Held));
        let Step::Release(out) = check.push(chunk(json!({"content": "hi"}), None)) else { panic!() };
        assert_eq!(out.len(), 2);
        let blank_later = chunk(json!({"content": ""}), None);
        assert!(matches!(check.push(blank_later), Step::Pass(_)), "after the start, nothing blank waits");
    }

    #[test]
    fn a_call_is_held_until_its_choice_finishes() {
        let mut check = check();
        assert!(matches!(check.push(chunk(piece(0, Some("write_file"), "{}"), None)), Step::Held));
        assert!(matches!(check.push(chunk(json!({"content": "x"}), None)), Step::Held));
        assert!(matches!(check.push(chunk(json!({}), Some("tool_calls"))), Step::Release(c) if c.len() == 3));
    }

    #[test]
    fn mended_calls_carry_their_whole_arguments_in_their_first_piece() {
        let chunks = [
            chunk(piece(0, Some("Write_File"), "{\"path\": "), None),
            chunk(piece(0, None, "\"a\","), None),
            chunk(json!({"content": "kept"}), None),
            chunk(piece(0, None, "}"), None),
            chunk(piece(1, Some("read_file"), "{\"p\": 1}"), Some("tool_calls")),
        ];
        let out = run(&chunks).unwrap();
        assert_eq!(out.len(), 3, "the later pieces of the mended call are dropped");
        assert_eq!(out[1], chunks[2], "other chunks stay as they came");
        assert_eq!(out[2], chunks[4], "so does the valid call");
        let calls = assembled(&out);
        assert_eq!(calls[0].0, "write_file");
        assert_eq!(serde_json::from_str::<Value>(&calls[0].1).unwrap(), json!({"path": "a"}));
        let first: Value = serde_json::from_slice(&out[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["tool_calls"][0]["id"], "call_0");
    }

    #[test]
    fn a_call_cut_at_the_end_of_the_stream_is_mended_or_refused() {
        let truncated = [chunk(piece(0, Some("write_file"), "{\"path\": \"a\""), None)];
        let calls = assembled(&run(&truncated).unwrap());
        assert_eq!(serde_json::from_str::<Value>(&calls[0].1).unwrap(), json!({"path": "a"}));
        let cut = [chunk(piece(0, Some("write_file"), "{\"path\": \"a"), Some("tool_calls"))];
        assert!(run(&cut).unwrap_err().contains("not valid JSON"));
        let unknown = [chunk(piece(0, Some("delete_all"), "{}"), Some("tool_calls"))];
        assert!(run(&unknown).unwrap_err().contains("delete_all"));
    }
}
