//! Admission: how much the gateway takes on at once, whatever clients send.
//! A request holds one of `server.max_in_flight` permits from the moment
//! it is admitted until its response body ends (a stream holds it to its
//! last byte); its body holds permits for its bytes, out of
//! `server.max_in_flight_bytes`, while it is read and routed. Past either
//! bound a request gets 503 with `Retry-After` instead of memory or plugin
//! instances the gateway does not have.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::errors::ApiError;

/// The gateway's in-flight bounds.
pub struct Admission {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_requests: u32,
    max_bytes: u64,
}

/// A request's place among those in flight; dropped when its response ends.
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
}

/// Permits for bytes of request bodies held now.
pub struct Bytes {
    permits: Option<OwnedSemaphorePermit>,
    bytes: Arc<Semaphore>,
}

impl Admission {
    /// Bounds from `server`.
    pub fn new(server: &ServerConfig) -> Self {
        let max_bytes = server.max_in_flight_bytes.min(Semaphore::MAX_PERMITS as u64);
        Self {
            requests: Arc::new(Semaphore::new(server.max_in_flight as usize)),
            bytes: Arc::new(Semaphore::new(usize::try_from(max_bytes).unwrap_or(usize::MAX))),
            max_requests: server.max_in_flight,
            max_bytes,
        }
    }

    /// Admits one more request, or says the gateway is full.
    pub fn request(&self) -> Result<InFlight, ApiError> {
        match self.requests.clone().try_acquire_owned() {
            Ok(permit) => Ok(InFlight { _permit: permit }),
            Err(_) => Err(ApiError::Overloaded {
                message: format!(
                    "freeway is serving {} requests at once (server.max_in_flight); retry in a moment",
                    self.max_requests
                ),
            }),
        }
    }

    /// An empty claim on body bytes, grown as the body arrives.
    pub fn bytes(&self) -> Bytes {
        Bytes { permits: None, bytes: self.bytes.clone() }
    }

    /// The bound on body bytes, for messages.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

impl Bytes {
    /// Claims `n` more bytes, waiting up to `within` for others to finish.
    pub async fn claim(&mut self, n: usize, within: Duration) -> Result<(), ApiError> {
        let Ok(n) = u32::try_from(n) else {
            return Err(ApiError::Internal(format!("a body piece of {n} bytes")));
        };
        if n == 0 {
            return Ok(());
        }
        // Nearly always there is room: no timer, no waiting.
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(n) {
            match &mut self.permits {
                Some(held) => held.merge(permit),
                None => self.permits = Some(permit),
            }
            return Ok(());
        }
        let acquired = tokio::time::timeout(within, self.bytes.clone().acquire_many_owned(n)).await;
        match acquired {
            Ok(Ok(permit)) => {
                match &mut self.permits {
                    Some(held) => held.merge(permit),
                    None => self.permits = Some(permit),
                }
                Ok(())
            }
            _ => Err(ApiError::Overloaded {
                message: "freeway holds as many request bytes as server.max_in_flight_bytes allows; retry in a moment"
                    .to_owned(),
            }),
        }
    }
}
