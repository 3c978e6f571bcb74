//! `gap-bench proxy`: the minimal HTTP/1.1 JSON proxy the benchmark measures
//! as a floor next to the gateway.
//!
//! It does what any JSON API proxy has to do and nothing else: accept
//! keep-alive HTTP/1.1 connections (hyper), read each request body whole,
//! forward method, path and query, the end-to-end headers and the body to one
//! upstream over a pooled keep-alive client (hyper-util's legacy client, the
//! one under reqwest), read the upstream's response body whole (as a proxy
//! that inspects it would), and answer with its status, end-to-end headers
//! and body. No authentication, routing, accounting or per-request logging:
//! the gateway's CPU per request minus this one's is the cost of those.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The upstream, split once so a request's URI is only assembled.
struct Upstream {
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
    /// Path of `--upstream` without the trailing slash ("" for none), put in
    /// front of every request's path.
    prefix: String,
}

impl Upstream {
    fn parse(s: &str) -> anyhow::Result<Upstream> {
        let uri: Uri = s.parse().with_context(|| format!("bad --upstream {s}"))?;
        let scheme = uri.scheme().cloned().context("--upstream needs http://")?;
        if scheme != hyper::http::uri::Scheme::HTTP {
            bail!("--upstream: only http:// is supported");
        }
        let authority = uri
            .authority()
            .cloned()
            .context("--upstream needs a host")?;
        if uri.query().is_some() {
            bail!("--upstream must not have a query");
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            scheme,
            authority,
            prefix,
        })
    }

    fn uri_for(&self, incoming: &Uri) -> anyhow::Result<Uri> {
        let pq = incoming.path_and_query().map_or("/", |pq| pq.as_str());
        let builder = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        let uri = if self.prefix.is_empty() {
            builder.path_and_query(pq)
        } else {
            builder.path_and_query(format!("{}{pq}", self.prefix))
        };
        Ok(uri.build()?)
    }
}

struct Proxy {
    upstream: Upstream,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Headers that belong to one connection and are not forwarded (RFC 9110
/// section 7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Drops the hop-by-hop headers, plus `host` and `content-length`, which
/// hyper sets from the upstream URI and the buffered body.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    // usually there are none: one pass over the names, no hashing
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // tokens listed in `Connection` name further per-connection headers
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

fn bad_gateway(e: &anyhow::Error) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": {"message": format!("upstream: {e:#}"), "type": "bad_gateway"}
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl Proxy {
    async fn forward(&self, req: Request<Incoming>) -> anyhow::Result<Response<Full<Bytes>>> {
        let (mut parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .context("reading the request")?
            .to_bytes();
        parts.uri = self.upstream.uri_for(&parts.uri)?;
        parts.version = hyper::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        let resp = self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (mut parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .context("reading the response")?
            .to_bytes();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Full::new(body)))
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(self.forward(req).await.unwrap_or_else(|e| bad_gateway(&e)))
    }
}

/// Runs the proxy until SIGTERM or Ctrl-C. `workers`: Tokio worker threads
/// (None: `TOKIO_WORKER_THREADS`, else one per core, as `#[tokio::main]`).
pub fn run(listen: SocketAddr, upstream: &str, workers: Option<usize>) -> anyhow::Result<()> {
    let upstream = Upstream::parse(upstream)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let proxy = Arc::new(Proxy { upstream, client });
        // the accept loop runs on the worker too, like every connection
        tokio::spawn(accept_loop(listener, proxy));
        {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "gap-bench proxy listening on http://{addr}")?;
            stdout.flush()?;
        }
        shutdown_signal().await
    })
}

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // typically EMFILE; back off instead of spinning
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| proxy.clone().handle(req));
            // keep-alive is on by default; a connection error ends only that connection
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_upstream_uris() {
        let u = Upstream::parse("http://127.0.0.1:9000").unwrap();
        let uri = u
            .uri_for(&"/v1/chat/completions?x=1".parse().unwrap())
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:9000/v1/chat/completions?x=1"
        );
        let u = Upstream::parse("http://127.0.0.1:9000/base/").unwrap();
        let uri = u.uri_for(&"/v1/models".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:9000/base/v1/models");
        assert!(Upstream::parse("https://example.com").is_err());
    }

    #[test]
    fn strips_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "content-type"]);

        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:1"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}
