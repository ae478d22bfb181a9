//! Host bindings generated from `providers/wit/0.1.0/provider.wit`, the
//! interface version this build implements ([`super::INTERFACE_VERSION`]).

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "providers/wit/0.1.0",
    world: "provider",
});

pub use exports::freeway::provider::translator as api;
