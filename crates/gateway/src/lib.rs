//! The gpt-api-proxy service: configuration, wiring of storage, relay and
//! routers, and graceful shutdown. `main.rs` and the CLI sit on top; tests
//! start the same `App` on port 0.

pub mod cli;
pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::serve::ListenerExt;
use relay::Relay;
use storage::Store;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Opens the database (creating the SQLite file's folder), applies
/// migrations and seeds prices on first start.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let url = &cfg.database.url;
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the database folder {}", dir.display()))?;
        }
    }
    let store = Store::connect(url)
        .await
        .with_context(|| format!("opening the database at {}", redact(url)))?;
    billing::ops::seed(&store).await?;
    Ok(store)
}

/// A URL with its password hidden, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A running service.
pub struct App {
    pub addr: SocketAddr,
    pub relay: Arc<Relay>,
    pub store: Store,
    /// The root password generated on this start, if any (shown once).
    pub root_password: Option<String>,
    pub guard: guard::Guard,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
    /// Reload announcements from the other nodes.
    _reloads: Option<guard::Subscription>,
}

/// The guard: Redis-backed when `redis.url` is set (every node sees the same
/// counters and bans), else in this process. An unreachable Redis does not
/// stop the start: limits fail open until it answers.
async fn start_guard(cfg: &Config) -> anyhow::Result<guard::Guard> {
    let mut gcfg = cfg.guard.clone();
    if !cfg.redis.key_prefix.is_empty() {
        gcfg.key_prefix = cfg.redis.key_prefix.clone();
    }
    if cfg.redis.url.is_empty() {
        return guard::Guard::memory(gcfg).map_err(|e| anyhow::anyhow!("guard: {e}"));
    }
    let store = guard::RedisStore::connect_lazy(&cfg.redis.url, guard::RedisSettings::default())
        .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
    let g = guard::Guard::with_redis(gcfg, store).map_err(|e| anyhow::anyhow!("guard: {e}"))?;
    if tokio::time::timeout(Duration::from_secs(3), g.ready())
        .await
        .is_err()
    {
        tracing::warn!(url = %cfg.redis.url, "Redis is not reachable yet; limits and bans fail open until it is");
    }
    Ok(g)
}

/// Reloads this node's caches when another node announces a change, and
/// after Redis comes back (messages may have been missed meanwhile).
fn subscribe_reloads(g: &guard::Guard, relay: &Arc<Relay>) -> Option<guard::Subscription> {
    let weak = Arc::downgrade(relay);
    let sub = g.pubsub().subscribe(&[relay::RELOAD_CHANNEL], move |ev| {
        let Some(relay) = weak.upgrade() else { return };
        let from_peer = match &ev {
            guard::BusEvent::Message { payload, .. } => *payload != relay.node,
            guard::BusEvent::Reconnected => true,
        };
        if from_peer {
            tokio::spawn(async move {
                if let Err(e) = relay.reload_local().await {
                    tracing::error!(error = %e, "reload after another node's change failed");
                }
            });
        }
    });
    match sub {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to reload announcements; relying on the periodic refresh");
            None
        }
    }
}

impl App {
    /// Starts serving on `cfg.server.listen` (port 0 picks a free port).
    pub async fn start(cfg: Config) -> anyhow::Result<App> {
        relay::install_crypto_provider();
        let store = open_store(&cfg).await?;
        let admin_pw = (!cfg.admin.password.is_empty()).then_some(cfg.admin.password.as_str());
        let root_password = accounts::ops::ensure_root(&store, &cfg.admin.username, admin_pw)
            .await
            .context("creating the root administrator")?
            .and_then(|(_, pw)| pw);
        let relay = Relay::start(store.clone(), cfg.relay.clone())
            .await
            .map_err(|e| anyhow::anyhow!("starting the relay: {}", e.message))?;
        let guard = start_guard(&cfg).await?;
        relay.set_guard(guard.clone());
        let reloads = subscribe_reloads(&guard, &relay);
        let proxies = web::TrustedProxies::new(
            &cfg.server.trusted_proxies,
            Some(cfg.server.client_ip_header.as_str()),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.server.listen))?;
        let addr = listener.local_addr()?;
        let accounts_runtime = web::AccountsRuntime::new(cfg.accounts.clone(), &addr.to_string())
            .map_err(|e| anyhow::anyhow!(e))?;
        let payments_runtime =
            web::PaymentsRuntime::new(cfg.payments.clone(), &accounts_runtime.cfg.public_url)
                .map_err(|e| anyhow::anyhow!(e))?;
        let state = web::AppState {
            relay: relay.clone(),
            store: store.clone(),
            cfg: Arc::new(web::WebConfig {
                proxies,
                login_ttl_ms: cfg.server.login_ttl_hours.max(1) * 3_600_000,
            }),
            accounts: Arc::new(accounts_runtime),
            payments: Arc::new(payments_runtime),
            guard: guard.clone(),
        };
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = web::service(state);
        let shutdown = CancellationToken::new();
        let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
        let done = {
            let shutdown = shutdown.clone();
            let relay = relay.clone();
            let store = store.clone();
            tokio::spawn(async move {
                let signal = shutdown.clone();
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    signal.cancelled().await;
                });
                let mut serve = std::pin::pin!(serve.into_future());
                let started_drain;
                tokio::select! {
                    r = &mut serve => {
                        if let Err(e) = r { tracing::error!(error = %e, "server stopped"); }
                        started_drain = Instant::now();
                    }
                    _ = shutdown.cancelled() => {
                        relay.begin_drain();
                        started_drain = Instant::now();
                        tracing::info!(grace_secs = grace.as_secs(), "draining: finishing in-flight requests");
                        if tokio::time::timeout(grace, &mut serve).await.is_err() {
                            tracing::warn!("grace period over; closing remaining connections");
                        }
                    }
                }
                relay.begin_drain();
                let left = grace.saturating_sub(started_drain.elapsed());
                if !relay.wait_streams(left).await {
                    tracing::warn!("some streams were still running at exit");
                }
                relay.flush().await;
                store.close().await;
                tracing::info!("stopped");
            })
        };
        Ok(App {
            addr,
            relay,
            store,
            root_password,
            guard,
            shutdown,
            done,
            _reloads: reloads,
        })
    }

    /// Base URL of the OpenAI-compatible API, e.g. `http://127.0.0.1:3000/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Begins a graceful shutdown without waiting for it.
    pub fn trigger_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down gracefully and waits until everything is settled.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until the service has stopped (after a signal or `trigger_shutdown`).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Sets up JSON (or text) logs on stderr.
pub fn init_logging(cfg: &config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.format == "json" {
        let _ = builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init();
    } else {
        let _ = builder.try_init();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
