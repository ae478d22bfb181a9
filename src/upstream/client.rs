//! The HTTP client that talks to providers: hyper-util's pooled client over
//! rustls (webpki roots), keep-alive reuse, HTTP/2 where the upstream offers
//! it through ALPN, and a connect timeout. Per-attempt and first-byte
//! timeouts are the dispatcher's, which knows what kind of attempt it makes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

use crate::plugin::UpstreamRequest;

/// Upstream answers larger than this are refused (memory protection).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

const USER_AGENT: &str = concat!("freeway/", env!("CARGO_PKG_VERSION"));

/// Why an upstream exchange failed below HTTP.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS connect failed.
    #[error("connect error: {0}")]
    Connect(String),
    /// The exchange failed after connecting.
    #[error("{0}")]
    Io(String),
    /// The request could not be built.
    #[error("bad upstream request: {0}")]
    Request(String),
}

type Pooled = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A shared, pooled HTTP client.
#[derive(Clone)]
pub struct Upstream {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    clients: thread_local::ThreadLocal<Pooled>,
}

impl Upstream {
    /// A client with the given connect timeout, trusting the public
    /// (webpki) roots and `extra_roots`.
    pub fn new(connect_timeout: Duration, extra_roots: &[CertificateDer<'static>]) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(extra_roots))
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Self { inner: std::sync::Arc::new(Inner { connector: https, clients: thread_local::ThreadLocal::new() }) }
    }

    fn client(&self) -> &Pooled {
        self.inner.clients.get_or(|| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .timer(TokioTimer::new())
                .build(self.inner.connector.clone())
        })
    }

    /// Sends a request; resolves when the response head has arrived.
    pub async fn send(&self, req: UpstreamRequest) -> Result<Response<Incoming>, UpstreamError> {
        let mut builder = Request::builder().method(req.method).uri(&req.url);
        if let Some(headers) = builder.headers_mut() {
            headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
            for (name, value) in req.headers {
                headers.insert(name, value);
            }
        }
        let request = builder.body(Full::new(req.body)).map_err(|e| UpstreamError::Request(e.to_string()))?;
        self.client().request(request).await.map_err(|e| {
            let detail = error_chain(&e);
            if e.is_connect() { UpstreamError::Connect(detail) } else { UpstreamError::Io(detail) }
        })
    }
}

fn tls_config(extra_roots: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!(error = %e, "an extra root certificate was refused");
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        // Only fails if the provider supports no protocol version; ring's supports both.
        Err(_) => rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
    }
}

/// Reads a whole upstream body, refusing more than `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, UpstreamError> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| UpstreamError::Io(format!("reading the answer failed: {e}")))
}

/// An error with its sources, on one line (hyper's top-level messages are
/// terse: "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
