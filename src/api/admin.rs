//! `/admin/api/...`: what an operator needs to see, undo and change. This
//! file holds who may call it; each endpoint has its file: [`status`]
//! (quota state per provider, key and model), [`cooldowns`] (ending
//! cooldowns), [`keys`] (provider keys: listed, added, turned off,
//! deleted), [`routes`] (each route and pool in its current order, each
//! candidate ready or why not), [`settings`] (the policy settings, read
//! and changed live), [`requests`] (the request log with each attempt
//! trail), [`usage`] (the log summed per provider, model, client and
//! day), [`policies`] (the scripts in force and their errors) and
//! [`playground`] (a chat sent from the dashboard, with how it routed).
//! [`dashboard`] serves the page at `/admin/` that uses them.
//!
//! Keys never appear: a key is named by its position and fingerprint (the
//! first 64 bits of its SHA-256, as state stores it).
//!
//! Access to `/admin/api/`: `server.admin_keys` when set (client tokens do not open it);
//! without them only a gateway that is open anyway (loopback, no
//! `api_keys`) serves it.

mod cooldowns;
pub mod dashboard;
pub mod keys;
mod params;
pub mod playground;
pub mod policies;
pub mod requests;
pub mod routes;
pub mod settings;
pub mod status;
pub mod usage;

use http::HeaderMap;

pub use cooldowns::reset_cooldowns;
pub use status::{
    CoolingStatus, Figures, KeyStatus, LimitStatus, ModelStatus, ProviderStatus, Quota, Reset, Status, UsedStatus,
    status, status_of,
};

use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::errors::ApiError;

/// Whether a request may use `/admin/`: `Ok`, or the error to answer.
pub fn authorize(server: &ServerConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let admins = Auth::new(&server.admin_keys);
    if admins.enabled() {
        return if admins.allows(headers) { Ok(()) } else { Err(ApiError::Unauthorized) };
    }
    // The same rule as for client tokens: without admin tokens, only a
    // gateway nobody else can reach and that asks clients for nothing
    // shows its state; anywhere else a client token must not be enough.
    let loopback = server.listen_addr().is_ok_and(|a| a.ip().is_loopback());
    if loopback && server.api_keys.is_empty() {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        message: "/admin/ needs an admin token and server.admin_keys is empty: set server.admin_keys \
                  (tokens distinct from server.api_keys) and send one as `Authorization: Bearer …`"
            .to_owned(),
    })
}
