//! Talking to providers: the pooled HTTPS client ([`Upstream`]) and the
//! relay that streams an upstream's answer to the client as it arrives
//! ([`relay::Relay`]), under a [`relay::Watchdog`] that closes streams
//! whose client stopped reading.

mod client;
pub mod relay;

pub use client::{MAX_ANSWER_BYTES, Upstream, UpstreamError, read_body};
