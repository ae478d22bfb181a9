//! The request log: one record per served request, with the trail of
//! attempts that led to its answer. Kept in the state database for
//! `state.log_retention`, for the operator's analytics and for replaying
//! traffic through other policies. [`query`] reads it back for the admin
//! API.

pub mod query;

use std::sync::Arc;

use serde::{Serialize, Serializer};

/// One served request.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Unique within the database: wall-clock microseconds, made unique.
    pub id: i64,
    /// When it arrived, wall-clock ms.
    pub at_ms: i64,
    /// The client's name (its token's name), when it has one.
    pub client: Option<String>,
    /// The model the client asked for.
    pub model: String,
    /// What the policies resolved it to, when they changed it.
    pub route: Option<String>,
    /// `provider/model` that answered.
    pub answered_by: Option<String>,
    /// The HTTP status the client got.
    pub status: u16,
    /// Every upstream attempt, in order (the answering one last).
    pub attempts: Vec<AttemptRecord>,
    /// Prompt tokens, once known.
    pub tokens_in: Option<u64>,
    /// Completion tokens, once known.
    pub tokens_out: Option<u64>,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Tags the policies set.
    pub tags: Vec<(String, String)>,
    /// Until the answer's head was ready, in ms.
    pub latency_ms: u64,
    /// What the policies looked at, for `freeway replay`.
    pub shape: RequestShape,
}

/// Largest messages kept in the log with `state.log_bodies`, as JSON: a
/// long conversation is still whole, and a day of traffic stays a few GB
/// at most rather than whatever clients send (up to the 16 MiB body limit).
pub const MAX_LOGGED_BODY: usize = 256 * 1024;

/// What a request looked like to the policies, logged so that `freeway
/// replay` can run it through other policies without its body.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestShape {
    /// `chat` or `embeddings`.
    pub operation: &'static str,
    /// The prompt's token estimate (the policies' `req.tokens`), when its
    /// messages were read.
    pub prompt_estimate: Option<u64>,
    /// Tools were offered.
    pub has_tools: bool,
    /// An `X-Session-ID` was sent (its value is not kept).
    pub has_session: bool,
    /// The messages as JSON, with `state.log_bodies` and when no larger
    /// than [`MAX_LOGGED_BODY`].
    #[serde(skip)]
    pub messages: Option<String>,
    /// `state.log_bodies` was on but the messages were too large to keep.
    pub messages_dropped: bool,
}

impl RequestShape {
    /// The shape of a chat request over `messages`; with `keep_body`, the
    /// messages too when they fit in [`MAX_LOGGED_BODY`].
    pub fn chat(
        messages: Option<&[serde_json::Value]>,
        body_len: usize,
        has_tools: bool,
        has_session: bool,
        keep_body: bool,
    ) -> Self {
        // The policies' own estimate when the conversation was read; else
        // the dispatcher's (a token per four bytes of the body).
        let prompt_estimate =
            Some(messages.map_or((body_len as u64).div_ceil(4), |m| crate::policy::prune::tokens(m) as u64));
        let (messages, messages_dropped) = match messages.filter(|_| keep_body) {
            Some(m) => match bounded_json(m, MAX_LOGGED_BODY) {
                Some(json) => (Some(json), false),
                None => (None, true),
            },
            None => (None, false),
        };
        Self { operation: "chat", prompt_estimate, has_tools, has_session, messages, messages_dropped }
    }

    /// The shape of an embeddings request.
    pub fn embeddings(has_session: bool) -> Self {
        Self { operation: "embeddings", has_session, ..Self::default() }
    }
}

/// `value` as JSON when it takes at most `cap` bytes. Serialization stops
/// at the cap: a 16 MiB conversation costs 256 KB of work, not 16 MiB.
fn bounded_json(value: &[serde_json::Value], cap: usize) -> Option<String> {
    struct Capped(Vec<u8>, usize);
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() + buf.len() > self.1 {
                return Err(std::io::Error::other("over the cap"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped(Vec::new(), cap);
    serde_json::to_writer(&mut out, value).ok()?;
    String::from_utf8(out.0).ok()
}

/// One upstream attempt of a logged request. Shared names, and the key's
/// fingerprint as a number: building one on the request path allocates
/// only its reason.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    /// Provider.
    pub provider: Arc<str>,
    /// The provider's model id.
    pub model: Arc<str>,
    /// The key's fingerprint (written as 16 hex digits), never the key.
    #[serde(serialize_with = "hex16")]
    pub key: u64,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed (`ok` when it answered).
    pub reason: String,
    /// How long it took, in ms.
    pub latency_ms: u64,
}

/// A fingerprint as the 16 hex digits the status API shows.
fn hex16<S: Serializer>(fingerprint: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{fingerprint:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_kept_up_to_the_cap_and_marked_past_it() {
        let small = vec![serde_json::json!({"role": "user", "content": "hello there"})];
        let shape = RequestShape::chat(Some(&small), 0, true, false, true);
        assert_eq!(shape.prompt_estimate, Some(3 + 4));
        assert_eq!(shape.messages.as_deref(), Some(r#"[{"content":"hello there","role":"user"}]"#));
        assert!(!shape.messages_dropped && shape.has_tools && !shape.has_session);
        let big = vec![serde_json::json!({"role": "user", "content": "x".repeat(MAX_LOGGED_BODY)})];
        let shape = RequestShape::chat(Some(&big), 0, false, true, true);
        assert!(shape.messages.is_none() && shape.messages_dropped);
        assert_eq!(shape.prompt_estimate, Some((MAX_LOGGED_BODY / 4 + 4) as u64), "the estimate is kept");
        let shape = RequestShape::chat(Some(&small), 0, false, false, false);
        assert!(shape.messages.is_none() && !shape.messages_dropped, "no body unless asked");
        // Not read (no policy hook, no body kept): a token per four bytes.
        assert_eq!(RequestShape::chat(None, 1001, false, false, false).prompt_estimate, Some(251));
    }
}
