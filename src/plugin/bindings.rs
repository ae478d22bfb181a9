//! Host bindings generated from the interface versions this build loads:
//! `providers/wit/0.3.0/provider.wit` ([`super::INTERFACE_VERSION`]) and the
//! previous ones, `providers/wit/0.2.0` and `0.1.0`, whose plugins still
//! load (their calls are adapted to 0.3's shapes in `versions.rs`).

#![allow(missing_docs)]

/// Interface 0.3.0, the current one.
pub mod v03 {
    wasmtime::component::bindgen!({
        path: "providers/wit/0.3.0",
        world: "provider",
    });

    pub use exports::freeway::provider::translator as api;
}

/// Interface 0.2.0: 0.3 without `plan-chat`.
pub mod v02 {
    wasmtime::component::bindgen!({
        path: "providers/wit/0.2.0",
        world: "provider",
    });

    pub use exports::freeway::provider::translator as api;
}

/// Interface 0.1.0: no `read-limits`, no window on a 429, a plain string
/// for a build error, and `decode-embeddings` without the request.
pub mod v01 {
    wasmtime::component::bindgen!({
        path: "providers/wit/0.1.0",
        world: "provider",
    });

    pub use exports::freeway::provider::translator as api;
}
