//! Building the HTTP requests freeway sends for a plugin: target options,
//! the key header, URLs.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::{ErrorKind, HttpRequest, QuotaWindow, Target};

/// The header that carries the key unless the `auth_header` option says
/// otherwise (sent as `Bearer <key>`).
pub const DEFAULT_AUTH_HEADER: &str = "authorization";

/// Everything but RFC 3986's unreserved characters is encoded: `/`, `?`,
/// `#`, `%`, `:` and `&` cannot leave the segment they were put in.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `text` as one URL path segment, percent-encoded: a model id such as
/// `../../admin?x=1` stays inside the segment it is put in. Refuses an empty
/// text and the dot segments `.` and `..`, which no encoding keeps from
/// meaning "this folder" and "the parent" (URL parsers decode `%2e`).
pub fn path_segment(text: &str) -> Result<String, String> {
    match text {
        "" => Err("an empty name cannot go into a URL path".to_owned()),
        "." | ".." => Err(format!("`{text}` cannot go into a URL path")),
        _ => Ok(utf8_percent_encode(text, SEGMENT).to_string()),
    }
}

impl Target {
    /// The value of option `name` (the config's `options` map).
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A comma-separated option as a list of trimmed, non-empty items.
    pub fn option_list(&self, name: &str) -> Vec<&str> {
        self.option(name).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
    }

    /// `{base_url}{path}`; `path` starts with `/` and may carry a query.
    /// Anything in it that comes from a request goes through
    /// [`path_segment`] first.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }

    /// The header that carries the key, if there is one: named by the option
    /// `auth_header` (default `default_header`), its value prefixed with the
    /// option `auth_scheme` (default `Bearer` for `authorization`, nothing
    /// for other headers; set to empty, the bare key).
    pub fn auth(&self, default_header: &str) -> Option<(String, String)> {
        let key = self.key.as_deref()?;
        let name = self.option("auth_header").unwrap_or(default_header).to_ascii_lowercase();
        let value = match self.option("auth_scheme") {
            Some("") => key.to_owned(),
            Some(scheme) => format!("{scheme} {key}"),
            None if name == "authorization" => format!("Bearer {key}"),
            None => key.to_owned(),
        };
        Some((name, value))
    }
}

impl HttpRequest {
    /// A POST of a JSON body to `url`, accepting JSON, or an SSE stream when
    /// `stream`. No key yet: see [`HttpRequest::with_key`].
    pub fn post_json(url: String, body: Vec<u8>, stream: bool) -> Self {
        let accept = if stream { "text/event-stream" } else { "application/json" };
        let headers =
            vec![("content-type".to_owned(), "application/json".to_owned()), ("accept".to_owned(), accept.to_owned())];
        Self { method: "POST".to_owned(), url, headers, body }
    }

    /// A GET of `url` that accepts JSON. No key yet.
    pub fn get_json(url: String) -> Self {
        let headers = vec![("accept".to_owned(), "application/json".to_owned())];
        Self { method: "GET".to_owned(), url, headers, body: Vec::new() }
    }

    /// The request with one more header (`name` in lower case).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The request with the target's key, as [`Target::auth`] says.
    pub fn with_key(mut self, target: &Target, default_header: &str) -> Self {
        self.headers.extend(target.auth(default_header));
        self
    }
}

/// The usual request: POST a JSON `body` to `{base_url}{path}` with the key
/// in `authorization: Bearer` (or where the options `auth_header` and
/// `auth_scheme` say).
pub fn post(target: &Target, path: &str, body: Vec<u8>, stream: bool) -> HttpRequest {
    HttpRequest::post_json(target.url(path), body, stream).with_key(target, DEFAULT_AUTH_HEADER)
}

/// GET `{base_url}{path}`, with the key as [`post`] sends it.
pub fn get(target: &Target, path: &str) -> HttpRequest {
    HttpRequest::get_json(target.url(path)).with_key(target, DEFAULT_AUTH_HEADER)
}

/// What an error status means, for the many APIs that say it with the
/// status alone: 429 rate limited (window unknown), 402 quota spent, 401 and 403 a bad key,
/// 400 and 422 the request itself; anything else may work elsewhere.
pub fn classify_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::rate_limited(None, QuotaWindow::Unknown),
        402 => ErrorKind::QuotaExhausted,
        401 | 403 => ErrorKind::InvalidKey,
        400 | 422 => ErrorKind::ClientError,
        _ => ErrorKind::Transient,
    }
}
