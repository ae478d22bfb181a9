//! Host bindings generated from `providers/wit/provider.wit`.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "providers/wit",
    world: "provider",
});

pub use exports::freeway::provider::translator as api;
