//! The HTTP client for upstream calls: pooled, HTTP/2 where offered,
//! rustls with the ring provider and bundled web PKI roots (so a static
//! binary in a bare container still reaches providers).

use std::time::Duration;

use crate::RelayConfig;

/// Installs ring as the process's rustls provider. Call once at start (a
/// second call is harmless).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client(cfg: &RelayConfig) -> Result<reqwest::Client, reqwest::Error> {
    builder(cfg).build()
}

/// A client whose requests go through an HTTP(S) proxy.
pub fn client_with_proxy(
    cfg: &RelayConfig,
    proxy: &str,
) -> Result<reqwest::Client, reqwest::Error> {
    builder(cfg).proxy(reqwest::Proxy::all(proxy)?).build()
}

fn builder(cfg: &RelayConfig) -> reqwest::ClientBuilder {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        // provider APIs do not redirect; following one would resend the key
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Ok(mut tls) = tls {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder
}
