//! A plugin built against interface 0.0.9, for the test that freeway refuses
//! a plugin of another interface version with a message that says both. It
//! does nothing else: every function refuses.

// The old interface, kept beside the current one in providers/wit/.
wit_bindgen::generate!({ path: "../../wit/0.0.9", world: "provider" });

use exports::freeway::provider::translator::{
    Answer, Capabilities, Descriptor, ErrorKind, Guest, GuestStreamDecoder, Headers, HttpRequest, ModelRecord,
    StreamEvent, Target,
};

struct Old;

const NO: &str = "built against an old interface";

impl Guest for Old {
    type StreamDecoder = Decoder;

    fn describe() -> Descriptor {
        Descriptor {
            name: "old-interface".to_owned(),
            interface_version: "0.0.9".to_owned(),
            capabilities: Capabilities::empty(),
        }
    }

    fn build_chat(_: Vec<u8>, _: Target) -> Result<HttpRequest, String> {
        Err(NO.to_owned())
    }

    fn decode_chat(_: Vec<u8>, _: Target) -> Result<Answer, String> {
        Err(NO.to_owned())
    }

    fn build_embeddings(_: Vec<u8>, _: Target) -> Result<HttpRequest, String> {
        Err(NO.to_owned())
    }

    fn decode_embeddings(_: Vec<u8>, _: Target) -> Result<Answer, String> {
        Err(NO.to_owned())
    }

    fn build_models(_: Target) -> Result<HttpRequest, String> {
        Err(NO.to_owned())
    }

    fn decode_models(_: Vec<u8>, _: Target) -> Result<Vec<ModelRecord>, String> {
        Err(NO.to_owned())
    }

    fn classify_error(_: u16, _: Headers, _: Vec<u8>) -> ErrorKind {
        ErrorKind::Transient
    }
}

struct Decoder;

impl GuestStreamDecoder for Decoder {
    fn new(_: Target) -> Self {
        Self
    }

    fn push(&self, _: Vec<u8>) -> Vec<StreamEvent> {
        vec![StreamEvent::Error(NO.to_owned())]
    }

    fn finish(&self) -> Vec<StreamEvent> {
        Vec::new()
    }
}

export!(Old);
