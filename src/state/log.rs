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
