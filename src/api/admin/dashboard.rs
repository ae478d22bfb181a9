//! `/admin/`: the dashboard, plain HTML, CSS and JavaScript modules from the
//! repository's `dashboard/` folder, embedded in the binary (no separate
//! server, nothing fetched from elsewhere at run time).
//!
//! The assets hold no data, so they are served without a token: the page
//! asks for the admin token and sends it to `/admin/api/*`, which alone
//! checks it. Every answer carries a strict Content-Security-Policy (only
//! this origin's scripts, no inline script or style, no framing), and an
//! ETag so a browser revalidates instead of downloading again: the file
//! names do not change between versions, so `immutable` would pin a stale
//! script after an upgrade.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::body::ResponseBody;

/// One embedded file: its name under `/admin/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Includes `dashboard/<name>`.
macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the dashboard is made of.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("overview.js", JS),
    asset!("providers.js", JS),
    asset!("routes.js", JS),
    asset!("log.js", JS),
    asset!("policies.js", JS),
    asset!("playground.js", JS),
];

/// Each asset's ETag, in [`ASSETS`]' order: a quoted prefix of its
/// SHA-256, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.bytes);
            let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// The page's policy: scripts, styles, images and API calls from this
/// origin only; no inline script, no plugins, no framing, forms post here.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// `GET /admin` (a redirect to `/admin/`, so the page's relative URLs
/// resolve under it), `/admin/` and `/admin/<asset>`.
pub fn serve(path: &str, request_headers: &HeaderMap) -> Response<ResponseBody> {
    if path == "/admin" {
        let mut r = secured(Response::new(ResponseBody::empty()));
        *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
        r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/admin/"));
        return r;
    }
    let name = match path.strip_prefix("/admin/") {
        Some("") | None => "index.html",
        Some(name) => name,
    };
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        let mut r = secured(Response::new(ResponseBody::full(Bytes::from_static(b"not found\n"))));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        return r;
    };
    let (asset, etag) = (&ASSETS[index], ETAGS.get(index).cloned().unwrap_or(HeaderValue::from_static("\"0\"")));
    let unchanged = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag.to_str().unwrap_or_default() || t.trim() == "*"));
    let mut r = if unchanged {
        let mut r = Response::new(ResponseBody::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(ResponseBody::full(Bytes::from_static(asset.bytes)));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        r
    };
    let headers = r.headers_mut();
    headers.insert(header::ETAG, etag);
    // Revalidate every time (a 304 costs a round trip, no bytes): a new
    // binary's page is seen at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secured(r)
}

/// Adds the headers every dashboard answer carries.
fn secured(mut r: Response<ResponseBody>) -> Response<ResponseBody> {
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_with_its_type_and_an_etag() {
        for asset in ASSETS {
            let r = serve(&format!("/admin/{}", asset.name), &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::OK, "{}", asset.name);
            assert_eq!(r.headers()[header::CONTENT_TYPE], asset.content_type);
            assert!(r.headers().contains_key(header::ETAG));
            assert!(!asset.bytes.is_empty(), "{}", asset.name);
        }
        assert_eq!(serve("/admin/nope.js", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("/admin/../Cargo.toml", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
    }
}
