//! What the upstream taught the gateway about one key's limits on one
//! model: the limits its rate-limit headers stated, a requests-per-minute
//! limit read from its 429s, and how many refusals in a row said nothing
//! of when they end. The rules that fill it in live in `proxy::quota`;
//! the state only keeps it.

use std::time::Instant;

use crate::config::Limits;

/// One key's lessons on one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Learned {
    /// Limits the rate-limit headers stated: they replace the configured
    /// ones for this key.
    pub stated: Limits,
    /// Requests per minute read from a 429: how many the key had let
    /// through in the minute before it refused.
    pub refused_rpm: Option<Inferred>,
    /// Refusals in a row that named no time (a bare 429, a daily quota
    /// with no calendar): each doubles the wait before the next probe.
    pub strikes: u32,
}

/// A limit inferred rather than stated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inferred {
    /// The limit.
    pub value: u64,
    /// When it was last read.
    pub at: Instant,
    /// Read from this key's own 429 (`false`: assumed from another key of
    /// the same provider, until this one says its own).
    pub own: bool,
}
