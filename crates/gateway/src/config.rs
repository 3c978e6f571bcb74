//! Configuration: defaults, then a TOML file, then environment variables
//! `GAP__SECTION__KEY` (and the `DATABASE_URL` shortcut). Unknown keys are
//! refused, so a typo fails at start instead of being ignored.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub relay: relay::RelayConfig,
    pub accounts: web::AccountsConfig,
    pub payments: web::PaymentsConfig,
    pub redis: RedisConfig,
    /// Autoban and rate-limit rules (`[guard]`).
    pub guard: guard::GuardConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// How long in-flight requests and streams may take to finish on
    /// SIGTERM/SIGINT before the process exits anyway.
    pub shutdown_grace_secs: u64,
    /// Peers (CIDRs) whose `client_ip_header` is believed.
    pub trusted_proxies: Vec<String>,
    /// e.g. `X-Forwarded-For` or `CF-Connecting-IP`; empty = use the peer.
    pub client_ip_header: String,
    /// Lifetime of access tokens from `/api/auth/login`.
    pub login_ttl_hours: i64,
    /// Worker threads (0 = one per core).
    pub workers: usize,
}

/// `[redis]`: shared counters, bans and cache invalidation for several
/// nodes. Empty `url`: everything stays in this process (one node).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379` (or `redis://:password@host:6379/0`).
    pub url: String,
    /// Prefix of every key this deployment writes.
    pub key_prefix: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (created on first start) or `postgres://…`.
    pub url: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Name of the root administrator created on first start.
    pub username: String,
    /// Its password; empty = generate one and print it once.
    pub password: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `text`.
    pub format: String,
    /// A tracing filter such as `info` or `info,relay=debug`.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:3000".into(),
            shutdown_grace_secs: 180,
            trusted_proxies: Vec::new(),
            client_ip_header: String::new(),
            login_ttl_hours: 24 * 7,
            workers: 0,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/gpt-api-proxy.db".into(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            username: "root".into(),
            password: String::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads the configuration. `file` is read if given (it must exist),
    /// else `gpt-api-proxy.toml` in the working directory if present.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) => {
                if !f.exists() {
                    anyhow::bail!("configuration file {} does not exist", f.display());
                }
                fig = fig.merge(Toml::file(f));
            }
            None => {
                if Path::new("gpt-api-proxy.toml").exists() {
                    fig = fig.merge(Toml::file("gpt-api-proxy.toml"));
                }
            }
        }
        fig = fig.merge(Env::prefixed("GAP__").split("__"));
        if let Ok(url) = std::env::var("DATABASE_URL") {
            fig = fig.merge(Serialized::default("database.url", url));
        }
        let cfg: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "server.listen `{}` is not an address such as 127.0.0.1:3000",
                self.server.listen
            );
        }
        web::TrustedProxies::new(
            &self.server.trusted_proxies,
            Some(self.server.client_ip_header.as_str()),
        )
        .map_err(|e| anyhow::anyhow!("server: {e}"))?;
        self.accounts
            .clone()
            .validate(&self.server.listen)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !matches!(self.log.format.as_str(), "json" | "text") {
            anyhow::bail!("log.format must be `json` or `text`");
        }
        Ok(())
    }
}
