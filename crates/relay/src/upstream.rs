//! The HTTP client for upstream calls: pooled, HTTP/2 where offered,
//! rustls with the ring provider and bundled web PKI roots (so a static
//! binary in a bare container still reaches providers).
//!
//! Direct channels go through hyper's pooled client with nothing on top:
//! the request path builds an `http::Request` from a URI parsed once per
//! channel and path, and reads the answer as it comes. Channels that name
//! an HTTP(S) proxy use a reqwest client with that proxy; both answer with
//! the same [`Response`].

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, Request};
use http_body_util::Full;
use hyper::body::Body as _;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::RelayConfig;

type Direct = PooledClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Installs ring as the process's rustls provider. Call once at start (a
/// second call is harmless).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An upstream HTTP client; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Client(Inner);

#[derive(Clone)]
enum Inner {
    Direct(std::sync::Arc<Direct>),
    Proxied(reqwest::Client),
}

/// Why an upstream call failed before or while its answer was read.
#[derive(Debug)]
pub struct Error {
    message: String,
    timeout: bool,
}

impl Error {
    fn from_chain(e: &(dyn std::error::Error + 'static)) -> Error {
        let mut message = e.to_string();
        let mut timeout = false;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cur {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                timeout |= io.kind() == std::io::ErrorKind::TimedOut;
            }
            if let Some(r) = c.downcast_ref::<reqwest::Error>() {
                timeout |= r.is_timeout();
            }
            if !std::ptr::addr_eq(c, e) {
                message.push_str(": ");
                message.push_str(&c.to_string());
            }
            cur = c.source();
        }
        Error { message, timeout }
    }

    /// A connect or read timeout (as opposed to a refusal or reset).
    pub fn is_timeout(&self) -> bool {
        self.timeout
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An upstream answer: status and headers, and the body as a stream of
/// byte chunks.
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Body,
}

impl Response {
    /// The `content-type` header, if it is text.
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }
}

/// The body of a [`Response`]: a stream of non-empty data chunks.
pub enum Body {
    Direct(hyper::body::Incoming),
    Proxied(Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>),
}

impl Stream for Body {
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Body::Direct(b) => loop {
                match ready!(Pin::new(&mut *b).poll_frame(cx)) {
                    None => return Poll::Ready(None),
                    Some(Err(e)) => return Poll::Ready(Some(Err(Error::from_chain(&e)))),
                    Some(Ok(frame)) => {
                        // trailers and empty frames carry nothing to relay
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            return Poll::Ready(Some(Ok(data)));
                        }
                    }
                }
            },
            Body::Proxied(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|o| o.map(|r| r.map_err(|e| Error::from_chain(&e)))),
        }
    }
}

impl Client {
    /// The client for channels without a proxy.
    pub fn new(cfg: &RelayConfig) -> Client {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(cfg.connect_timeout_secs)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = PooledClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(https);
        Client(Inner::Direct(std::sync::Arc::new(client)))
    }

    /// A client whose requests go through an HTTP(S) proxy.
    pub fn with_proxy(cfg: &RelayConfig, proxy: &str) -> Result<Client, reqwest::Error> {
        let mut tls = tls_config();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            // provider APIs do not redirect; following one would resend the key
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_preconfigured(tls)
            .proxy(reqwest::Proxy::all(proxy)?)
            .build()
            .map(|c| Client(Inner::Proxied(c)))
    }

    /// Sends `req` and waits for the answer's head. Redirects are not
    /// followed: provider APIs do not redirect, and following one would
    /// resend the key.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response, Error> {
        match &self.0 {
            Inner::Direct(c) => {
                let resp = c
                    .request(req.map(Full::new))
                    .await
                    .map_err(|e| Error::from_chain(&e))?;
                let (parts, body) = resp.into_parts();
                Ok(Response {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: Body::Direct(body),
                })
            }
            Inner::Proxied(c) => {
                let req = reqwest::Request::try_from(req).map_err(|e| Error::from_chain(&e))?;
                let mut resp = c.execute(req).await.map_err(|e| Error::from_chain(&e))?;
                Ok(Response {
                    status: resp.status().as_u16(),
                    headers: std::mem::take(resp.headers_mut()),
                    body: Body::Proxied(Box::pin(resp.bytes_stream())),
                })
            }
        }
    }
}

fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // ring supports the default versions; this arm is never taken
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    }
}
