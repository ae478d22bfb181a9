//! The request as a policy sees it: a typed handle with getters, setters
//! and helpers. Heavy work (text extraction, token estimates, keyword
//! matching, pruning) is done here in Rust, once, and cached.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rhai::{Array, Dynamic, ImmutableString};
use serde_json::Value;

use super::{conversation, prune};

/// Whether a model name has a usable candidate right now.
pub type Availability = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The shared state behind a [`PolicyRequest`] handle.
#[derive(Default)]
pub struct RequestState {
    /// The model to route to (policies may change it).
    pub model: String,
    /// The model the client asked for.
    pub requested: String,
    /// `stream: true`.
    pub stream: bool,
    /// The request carries tools.
    pub has_tools: bool,
    /// The conversation, once parsed (see [`RequestState::messages`]).
    pub messages: Vec<Value>,
    /// The request body, while its conversation is not parsed: a hook that
    /// reads the conversation parses it from here, and a fingerprint reads
    /// only its opening.
    pub raw: Option<Bytes>,
    /// The messages were changed (pruned).
    pub messages_changed: bool,
    /// `X-Session-ID`, when sent.
    pub session_header: Option<String>,
    /// Tags for logs and metrics.
    pub tags: Vec<(String, String)>,
    /// Models to try first, in order, before the resolved candidates.
    pub prefer: Vec<Prefer>,
    /// Pin this conversation key to whoever answers, for this many seconds.
    pub pin: Option<(String, u64)>,
    /// Answers `available(name)`.
    pub availability: Option<Availability>,
    /// Where sticky-session pins are kept.
    pub pins: Option<Arc<dyn crate::state::StateStore>>,
    /// The chosen candidate's context window, in tokens (0: unknown).
    pub context_window: i64,
    /// Questions policies asked (model, prompt), to be answered by the host.
    pub questions: Vec<(String, String)>,
    /// Answers to earlier questions, by prompt.
    pub answers: Vec<(String, String)>,
    /// What the helpers worked out, kept for the next call.
    pub derived: Derived,
}

impl RequestState {
    /// The conversation, parsed from the body on first use.
    pub fn messages(&mut self) -> &mut Vec<Value> {
        if let Some(raw) = self.raw.take() {
            self.messages = conversation::parse(&raw);
        }
        &mut self.messages
    }

    /// An upper bound of the token estimate while the conversation is not
    /// parsed (`None` once it is).
    pub fn tokens_at_most(&self) -> Option<i64> {
        self.raw.as_deref().map(conversation::tokens_at_most)
    }

    /// The session fingerprint: from the opening messages alone while the
    /// conversation is not parsed.
    fn fingerprint(&self) -> String {
        match &self.raw {
            Some(raw) => conversation::fingerprint(raw),
            None => fingerprint(&self.messages),
        }
    }
}

/// A model a policy wants tried first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefer {
    /// `req.prefer(name)`: first if it is a candidate; added in front if
    /// not, when it is free.
    Policy(String),
    /// `req.stick(name)`: a session's pin; only reorders the request's own
    /// candidates, never adds one.
    Pinned(String),
}

impl Prefer {
    fn name(&self) -> &str {
        match self {
            Self::Policy(n) | Self::Pinned(n) => n,
        }
    }
}

/// Values the request's helpers compute once and reuse.
#[derive(Default)]
pub struct Derived {
    lower_last_user: Option<String>,
    tokens: Option<i64>,
}

impl Derived {
    /// A request whose messages are not at hand but whose token estimate
    /// is (a logged request replayed without its body): `req.tokens`
    /// answers `tokens` instead of counting an empty conversation.
    pub fn with_tokens(tokens: i64) -> Self {
        Self { lower_last_user: None, tokens: Some(tokens) }
    }
}

/// A request, as a handle scripts hold: every clone shares one state.
#[derive(Clone)]
pub struct PolicyRequest(pub Arc<Mutex<RequestState>>);

impl PolicyRequest {
    /// A handle over `state`.
    pub fn new(state: RequestState) -> Self {
        Self(Arc::new(Mutex::new(state)))
    }

    /// The state, for the host.
    pub fn state(&self) -> MutexGuard<'_, RequestState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn last_user_lower(state: &mut RequestState) -> &str {
        if state.derived.lower_last_user.is_none() {
            let text = state
                .messages()
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .map(prune::text_of)
                .unwrap_or_default();
            state.derived.lower_last_user = Some(text.to_lowercase());
        }
        state.derived.lower_last_user.as_deref().unwrap_or_default()
    }

    /// The token estimate of the conversation, counted once until it changes.
    pub(crate) fn estimate(state: &mut RequestState) -> i64 {
        if state.derived.tokens.is_none() || state.messages_changed {
            state.derived.tokens = Some(prune::tokens(state.messages()) as i64);
        }
        state.derived.tokens.unwrap_or(0)
    }

    fn after_prune(state: &mut RequestState, dropped: usize) -> i64 {
        if dropped > 0 {
            state.messages_changed = true;
            state.derived.tokens = None;
            state.derived.lower_last_user = None;
        }
        dropped as i64
    }
}

fn prefer(r: &mut PolicyRequest, wish: Prefer) {
    let mut s = r.state();
    if !wish.name().is_empty() && !s.prefer.iter().any(|p| p.name() == wish.name()) {
        s.prefer.push(wish);
    }
}

/// True when `text` (lower-case) holds any of `words` as a whole word or phrase.
fn mentions(text: &str, words: &Array) -> bool {
    words.iter().filter_map(|w| w.clone().into_immutable_string().ok()).any(|w| {
        let w = w.to_lowercase();
        if w.is_empty() {
            return false;
        }
        text.match_indices(&w).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + w.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    })
}

/// Registers the `Request` type and its API on `engine`.
pub fn register(engine: &mut rhai::Engine) {
    engine.register_type_with_name::<PolicyRequest>("Request");
    engine.register_get_set(
        "model",
        |r: &mut PolicyRequest| -> ImmutableString { r.state().model.as_str().into() },
        |r: &mut PolicyRequest, model: ImmutableString| r.state().model = model.to_string(),
    );
    engine
        .register_get("requested", |r: &mut PolicyRequest| -> ImmutableString { r.state().requested.as_str().into() });
    engine.register_get("stream", |r: &mut PolicyRequest| r.state().stream);
    engine.register_get("has_tools", |r: &mut PolicyRequest| r.state().has_tools);
    engine.register_get("turns", |r: &mut PolicyRequest| r.state().messages().len() as i64);
    engine.register_get("user_turns", |r: &mut PolicyRequest| {
        r.state().messages().iter().filter(|m| m.get("role").and_then(Value::as_str) == Some("user")).count() as i64
    });
    engine.register_get("tokens", |r: &mut PolicyRequest| PolicyRequest::estimate(&mut r.state()));
    engine.register_get("last_user", |r: &mut PolicyRequest| -> ImmutableString {
        PolicyRequest::last_user_lower(&mut r.state()).into()
    });
    engine.register_get("last_user_length", |r: &mut PolicyRequest| {
        PolicyRequest::last_user_lower(&mut r.state()).chars().count() as i64
    });
    engine.register_get("session", |r: &mut PolicyRequest| -> ImmutableString {
        r.state().session_header.clone().unwrap_or_default().into()
    });
    engine.register_get("fingerprint", |r: &mut PolicyRequest| -> ImmutableString { r.state().fingerprint().into() });
    engine.register_get_set(
        "context_window",
        |r: &mut PolicyRequest| r.state().context_window,
        |r: &mut PolicyRequest, v: i64| r.state().context_window = v,
    );
    // Whether the last user message mentions any of these words or phrases.
    engine.register_fn("mentions", |r: &mut PolicyRequest, words: Array| {
        mentions(PolicyRequest::last_user_lower(&mut r.state()), &words)
    });
    engine.register_fn("tag", |r: &mut PolicyRequest, key: ImmutableString, value: Dynamic| {
        r.state().tags.push((key.to_string(), value.to_string()));
    });
    // Tries `model` first: moved to the front if it is a candidate, added
    // in front if it is not and it is free.
    engine.register_fn("prefer", |r: &mut PolicyRequest, model: ImmutableString| {
        prefer(r, Prefer::Policy(model.to_string()));
    });
    // Tries `model` first only if it is already a candidate (a session pin).
    engine.register_fn("stick", |r: &mut PolicyRequest, model: ImmutableString| {
        prefer(r, Prefer::Pinned(model.to_string()));
    });
    // Pins the conversation `key` to whichever model answers this request,
    // for `seconds` (at most a week).
    engine.register_fn("pin", |r: &mut PolicyRequest, key: ImmutableString, seconds: i64| {
        let most = crate::state::MAX_PIN_TTL.as_secs();
        let seconds = u64::try_from(seconds).unwrap_or(1).clamp(1, most);
        r.state().pin = Some((key.to_string(), seconds));
    });
    // The model `key` is pinned to, or "".
    engine.register_fn("pinned", |r: &mut PolicyRequest, key: ImmutableString| -> ImmutableString {
        let s = r.state();
        let found = s.pins.as_ref().and_then(|pins| pins.pinned(&key, std::time::Instant::now()));
        found.map(|t| ImmutableString::from(&*t)).unwrap_or_default()
    });
    // Whether `name` (a route, pool or provider/model) has a candidate that
    // is not cooling down, at a limit, or out of keys right now.
    engine.register_fn("available", |r: &mut PolicyRequest, name: ImmutableString| {
        let check = r.state().availability.clone();
        check.is_some_and(|f| f(&name))
    });
    // Asks `model` a short question; the answer arrives on the request's next
    // pass through the pipeline (`()` until then).
    engine.register_fn("ask", |r: &mut PolicyRequest, model: ImmutableString, prompt: ImmutableString| {
        let mut s = r.state();
        if let Some((_, answer)) = s.answers.iter().find(|(p, _)| p == prompt.as_str()) {
            return Dynamic::from(ImmutableString::from(answer.as_str()));
        }
        if !s.questions.iter().any(|(_, p)| p == prompt.as_str()) {
            s.questions.push((model.to_string(), prompt.to_string()));
        }
        Dynamic::UNIT
    });
    engine.register_fn("keep_last_turns", |r: &mut PolicyRequest, n: i64| {
        let mut s = r.state();
        let dropped = prune::keep_last_turns(s.messages(), n.max(1) as usize).len();
        PolicyRequest::after_prune(&mut s, dropped)
    });
    engine.register_fn("fit_tokens", |r: &mut PolicyRequest, budget: i64| {
        let mut s = r.state();
        let dropped = prune::fit_tokens(s.messages(), budget.max(1) as usize).len();
        PolicyRequest::after_prune(&mut s, dropped)
    });
    engine.register_fn("reservoir", |r: &mut PolicyRequest, budget: i64, summary_tokens: i64| {
        let mut s = r.state();
        let dropped = prune::reservoir(s.messages(), budget.max(1) as usize, summary_tokens.max(0) as usize).len();
        PolicyRequest::after_prune(&mut s, dropped)
    });
}

/// A conversation's identity without a session header: its system prompt
/// and first user message.
pub fn fingerprint(messages: &[Value]) -> String {
    let mut fingerprint = Fingerprinter::default();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str);
        let text = if Fingerprinter::reads(role) { prune::text_of(m) } else { String::new() };
        if fingerprint.add(role, &text) {
            break;
        }
    }
    fingerprint.finish()
}

/// A session fingerprint, fed one message at a time from the first: the
/// texts of the system (and developer) messages before the first user
/// message, and of that message.
///
/// The hash is XXH3: its output is fixed by its specification, so a pin
/// kept in the state file still matches its conversation after freeway is
/// rebuilt (std's `DefaultHasher` promises no such thing), and it reads a
/// long system prompt several times faster than SipHash.
#[derive(Default)]
pub(crate) struct Fingerprinter {
    hasher: xxhash_rust::xxh3::Xxh3Default,
    complete: bool,
}

impl Fingerprinter {
    /// Whether the text of a message of `role` is part of a fingerprint.
    fn reads(role: Option<&str>) -> bool {
        matches!(role, Some("system" | "developer" | "user"))
    }

    /// Adds the next message, with its text as [`prune::text_of`] makes
    /// it; returns whether the fingerprint is complete (that was the first
    /// user message: nothing after it counts).
    pub(crate) fn add(&mut self, role: Option<&str>, text: &str) -> bool {
        if !self.complete && Self::reads(role) {
            // Each text ends with a byte no UTF-8 text holds, so that
            // moving text from one message to the next changes the hash.
            self.hasher.update(text.as_bytes());
            self.hasher.update(&[0xff]);
            self.complete = role == Some("user");
        }
        self.complete
    }

    /// Whether the first user message is in.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    pub(crate) fn finish(self) -> String {
        format!("fp-{:016x}", self.hasher.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_xxh3_of_the_opening_texts_so_pins_outlive_a_rebuild() {
        // The value XXH3-64 gives for b"be brief\xffhello\xff" (Python's
        // xxhash package): a pin written by one build matches in the next.
        let messages = serde_json::json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "more"}
        ]);
        let messages = messages.as_array().unwrap();
        assert_eq!(fingerprint(messages), "fp-ad1f59c76e94bf0b");
        assert_eq!(
            conversation::fingerprint(serde_json::json!({ "messages": messages }).to_string().as_bytes()),
            "fp-ad1f59c76e94bf0b"
        );
        // The same texts cut differently are another conversation.
        let moved =
            serde_json::json!([{"role": "system", "content": "be"}, {"role": "user", "content": "brief\u{ff}hello"}]);
        assert_ne!(fingerprint(moved.as_array().unwrap()), "fp-ad1f59c76e94bf0b");
    }

    #[test]
    fn mentions_matches_whole_words_and_phrases() {
        let words: Array = vec!["why".into(), "step by step".into(), "debug".into()];
        assert!(mentions("can you explain why it fails", &words));
        assert!(mentions("go step by step please", &words));
        assert!(!mentions("somewhy debugger", &words));
        assert!(!mentions("", &words));
    }

    #[test]
    fn fingerprints_follow_the_opening_messages_only() {
        let a = vec![
            serde_json::json!({"role": "system", "content": "s"}),
            serde_json::json!({"role": "user", "content": "first"}),
        ];
        let mut b = a.clone();
        b.push(serde_json::json!({"role": "assistant", "content": "later turns do not count"}));
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = vec![serde_json::json!({"role": "user", "content": "other"})];
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    fn eval<T: Clone + Send + Sync + 'static>(req: &PolicyRequest, expr: &str) -> T {
        let mut engine = rhai::Engine::new();
        register(&mut engine);
        let Ok(ast) = engine.compile(format!("fn f(req) {{ {expr} }}")) else { panic!("{expr}") };
        match engine.call_fn::<T>(&mut rhai::Scope::new(), &ast, "f", (req.clone(),)) {
            Ok(value) => value,
            Err(e) => panic!("{expr}: {e}"),
        }
    }

    const BODY: &[u8] = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"first"},{"role":"assistant","content":"a"},{"role":"user","content":"next"}]}"#;

    #[test]
    fn a_fingerprint_leaves_the_conversation_unparsed_and_the_first_reader_parses_it() {
        let req = PolicyRequest::new(RequestState { raw: Some(Bytes::from_static(BODY)), ..RequestState::default() });
        let fp: ImmutableString = eval(&req, "req.fingerprint");
        assert!(req.state().raw.is_some() && req.state().messages.is_empty(), "only the opening was read");
        assert_eq!(fp.as_str(), fingerprint(&conversation::parse(BODY)));
        assert_eq!(eval::<i64>(&req, "req.turns"), 4);
        assert!(req.state().raw.is_none(), "parsed once, then kept");
        assert_eq!(eval::<i64>(&req, "req.user_turns"), 2);
        assert_eq!(eval::<ImmutableString>(&req, "req.fingerprint"), fp, "the same from the parsed conversation");
        assert_eq!(eval::<i64>(&req, "req.keep_last_turns(1)"), 2);
        assert!(req.state().messages_changed);
    }

    #[test]
    fn a_size_bound_hook_leaves_a_short_conversation_unparsed() {
        let Ok(pipeline) = crate::policy::Pipeline::compile(&crate::policy::Source::Embedded, &[], &Default::default())
        else {
            panic!("the built-in policies compile")
        };
        let metrics = crate::metrics::Metrics::new();
        let state = |window| RequestState {
            model: "p/m".to_owned(),
            raw: Some(Bytes::from_static(BODY)),
            context_window: window,
            ..RequestState::default()
        };
        let req = PolicyRequest::new(state(8192));
        pipeline.on_prepare(&req, &metrics);
        assert!(req.state().raw.is_some(), "context-prune cannot act on ~100 tokens in 8 K");
        // A window the body's bound may exceed: the conversation is read and counted.
        let req = PolicyRequest::new(state(1100));
        pipeline.on_prepare(&req, &metrics);
        assert!(req.state().raw.is_none() && !req.state().messages_changed, "read, counted, and left alone");
    }
}
