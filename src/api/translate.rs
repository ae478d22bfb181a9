//! The proxy's answers (OpenAI chat completions, whole or streamed, and
//! errors in OpenAI's shape) turned into an inbound dialect's.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::Value;

use crate::body::ResponseBody;
use crate::dialect::{DialectError, StreamTranslator};
use crate::errors::ApiError;

/// A successful answer translated: a whole body by `whole`, a stream by
/// the translator `stream` makes. Errors pass unchanged (each endpoint's
/// error shape is applied in one place, [`super::handle`]).
pub(super) fn answer(
    mut response: Response<ResponseBody>,
    whole: impl FnOnce(&[u8]) -> Result<Bytes, DialectError>,
    stream: impl FnOnce() -> Box<dyn StreamTranslator>,
) -> Response<ResponseBody> {
    if response.status() != StatusCode::OK {
        return response;
    }
    if response.body().is_stream() {
        let (parts, body) = response.into_parts();
        return Response::from_parts(parts, body.translate(stream()));
    }
    let chat = response.body_mut().take_full().unwrap_or_default();
    match whole(&chat) {
        Ok(translated) => {
            *response.body_mut() = ResponseBody::full(translated);
            response.headers_mut().remove(header::CONTENT_LENGTH);
            response
        }
        Err(e) => ApiError::AllFailed {
            message: format!("the upstream's answer could not be translated for this API: {}", e.message),
            attempts: Vec::new(),
        }
        .into_response(),
    }
}

/// The message of an error body: OpenAI's `error.message`, another JSON
/// error's `message`, or the text itself.
pub(super) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => v["error"]["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .or_else(|| v["error"].as_str())
            .map_or_else(|| text.trim().to_owned(), str::to_owned),
        Err(_) => text.trim().to_owned(),
    }
}

/// An error answer re-written by `shape(status, message)`, its headers
/// (`Retry-After`, `x-routed-via`, `Allow`) kept.
pub(super) fn error_shape(
    mut response: Response<ResponseBody>,
    shape: impl FnOnce(u16, &str) -> Vec<u8>,
) -> Response<ResponseBody> {
    if response.status().as_u16() < 400 {
        return response;
    }
    let Some(body) = response.body_mut().take_full() else { return response };
    let message = error_message(&body);
    *response.body_mut() = ResponseBody::full(Bytes::from(shape(response.status().as_u16(), &message)));
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_found_in_every_shape() {
        assert_eq!(error_message(br#"{"error":{"message":"no capacity","type":"rate_limit"}}"#), "no capacity");
        assert_eq!(error_message(br#"{"type":"error","message":"bad"}"#), "bad");
        assert_eq!(error_message(br#"{"error":"plain"}"#), "plain");
        assert_eq!(error_message(b" upstream said no \n"), "upstream said no");
    }
}
