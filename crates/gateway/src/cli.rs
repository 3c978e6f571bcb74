//! Command-line interface. Every management command goes through the same
//! domain functions as the management API; it opens the database itself,
//! so it works whether or not the service is running (a running service
//! picks the change up within `relay.refresh_secs`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use storage::{ChannelPatch, NewChannel, StorageError, Store};

#[derive(Parser, Debug)]
#[command(
    name = "gpt-api-proxy",
    version,
    about = "A self-hosted LLM API gateway with exact prepaid billing."
)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./gpt-api-proxy.toml if present.
    #[arg(long, short, global = true, env = "GAP_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Users and balances.
    #[command(subcommand)]
    User(UserCmd),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Upstream channels.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Model prices (USD per million tokens).
    #[command(subcommand)]
    Price(PriceCmd),
    /// Group price multipliers.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Management API access tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Balance bookkeeping.
    #[command(subcommand)]
    Ledger(LedgerCmd),
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a user (prints a generated password if none is given).
    Add {
        username: String,
        #[arg(long)]
        password: Option<String>,
        #[arg(long, default_value = "user")]
        role: String,
        #[arg(long, default_value = "default")]
        group: String,
        /// Initial balance in USD.
        #[arg(long)]
        balance_usd: Option<String>,
    },
    /// List users with their balances.
    List,
    /// Credit a user's balance (USD; negative to deduct).
    Topup {
        /// Username or numeric id.
        user: String,
        #[arg(allow_hyphen_values = true)]
        amount_usd: String,
        #[arg(long, default_value = "")]
        note: String,
        /// Apply at most once per reference.
        #[arg(long)]
        reference: Option<String>,
    },
    /// Disable a user (their keys stop working).
    Disable { user: String },
    /// Enable a user.
    Enable { user: String },
    /// Move a user to a price group.
    SetGroup { user: String, group: String },
    /// Set a user's password.
    SetPassword { user: String, password: String },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Create an API key for a user (shown once).
    Create(KeyCreate),
    /// List keys.
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Disable a key.
    Disable { id: i64 },
    /// Enable a key.
    Enable { id: i64 },
    /// Revoke a key for good.
    Revoke { id: i64 },
}

#[derive(Args, Debug)]
pub struct KeyCreate {
    /// Username or numeric id of the owner.
    #[arg(long)]
    pub user: String,
    #[arg(long, default_value = "")]
    pub name: String,
    /// Spending limit of the key in USD (default unlimited).
    #[arg(long)]
    pub quota_usd: Option<String>,
    /// Allowed models, comma-separated (default all).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Allowed client IPs or CIDRs, comma-separated (default any).
    #[arg(long, value_delimiter = ',')]
    pub ips: Vec<String>,
    /// Days until the key expires (default never).
    #[arg(long)]
    pub expires_days: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum ChannelCmd {
    /// Add an upstream channel.
    Add(Box<ChannelAdd>),
    /// List channels (upstream keys are never shown).
    List,
    /// Disable a channel.
    Disable { id: i64 },
    /// Enable a channel.
    Enable { id: i64 },
    /// Remove a channel.
    Remove { id: i64 },
}

#[derive(Args, Debug)]
pub struct ChannelAdd {
    #[arg(long)]
    pub name: String,
    /// e.g. https://api.openai.com/v1
    #[arg(long)]
    pub base_url: String,
    /// Upstream API key; repeat for several (rotated).
    #[arg(long = "key", required = true)]
    pub keys: Vec<String>,
    /// Models served, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// Model renames, `asked=sent`, comma-separated.
    #[arg(long = "map", value_delimiter = ',')]
    pub mapping: Vec<String>,
    /// User groups served, comma-separated.
    #[arg(long = "groups", value_delimiter = ',', default_value = "default")]
    pub groups: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub priority: i64,
    #[arg(long, default_value_t = 1)]
    pub weight: i64,
    /// openai, azure, anthropic or gemini.
    #[arg(long, default_value = "openai")]
    pub kind: String,
    /// HTTP(S) proxy for this channel's upstream calls.
    #[arg(long, default_value = "")]
    pub proxy_url: String,
    /// Upstream timeout in seconds (default: relay.first_byte_timeout_secs).
    #[arg(long, default_value_t = 0)]
    pub timeout_secs: i64,
    /// Extra header sent upstream, `Name: value`; repeatable.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Azure OpenAI api-version.
    #[arg(long, default_value = "")]
    pub api_version: String,
    /// The channel serves the Responses API itself (else /v1/responses is
    /// translated to chat completions for it).
    #[arg(long)]
    pub native_responses: bool,
}

#[derive(Subcommand, Debug)]
pub enum PriceCmd {
    /// Set a model's price in USD per million tokens.
    Set {
        model: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        /// Cached input price (default: the input price).
        #[arg(long, default_value = "")]
        cached: String,
        /// Cache-write price: USD per million cache-creation input tokens
        /// (default: the input price).
        #[arg(long, default_value = "")]
        cache_write: String,
        /// Price per call in USD (per image for image models; default: none).
        #[arg(long, default_value = "")]
        per_call: String,
    },
    /// List prices.
    List,
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Set a group's price multiplier (e.g. 0.8).
    Set { group: String, ratio: String },
    /// List groups.
    List,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an access token for the management API (shown once).
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum LedgerCmd {
    /// Verify that each balance equals the sum of its ledger; exit 1 if not.
    Check,
}

fn out(s: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout(), "{s}");
}

async fn user_id(store: &Store, user: &str) -> anyhow::Result<i64> {
    if let Ok(id) = user.parse::<i64>() {
        return Ok(store.user(id).await?.id);
    }
    match store.user_by_name(user).await {
        Ok(u) => Ok(u.id),
        Err(StorageError::NotFound(_)) => anyhow::bail!("no user named `{user}`"),
        Err(e) => Err(e.into()),
    }
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Runs a management command; returns the process exit code.
pub async fn run(cmd: Command, cfg: &crate::Config) -> anyhow::Result<i32> {
    let store = crate::open_store(cfg).await?;
    let code = run_with(cmd, &store).await;
    store.close().await;
    code
}

async fn run_with(cmd: Command, store: &Store) -> anyhow::Result<i32> {
    match cmd {
        Command::Serve => anyhow::bail!("serve is not a management command"),
        Command::Migrate => out("migrations applied"),
        Command::User(c) => user_cmd(c, store).await?,
        Command::Key(c) => key_cmd(c, store).await?,
        Command::Channel(c) => channel_cmd(c, store).await?,
        Command::Price(PriceCmd::Set {
            model,
            input,
            output,
            cached,
            cache_write,
            per_call,
        }) => {
            billing::ops::set_price(
                store,
                &model,
                &input,
                &output,
                &cached,
                &cache_write,
                &per_call,
            )
            .await?;
            out(format!("price of {model} set"));
        }
        Command::Price(PriceCmd::List) => {
            for p in store.prices().await? {
                let cached = if p.cached_input.is_empty() {
                    &p.input
                } else {
                    &p.cached_input
                };
                let per_call = if p.per_call.is_empty() {
                    String::new()
                } else {
                    format!("  per call {} USD", p.per_call)
                };
                let per_call = if p.cache_write.is_empty() {
                    per_call
                } else {
                    format!("  cache write {}{per_call}", p.cache_write)
                };
                out(format!(
                    "{:<32} input {:>8}  output {:>8}  cached {:>8}  (USD / 1M tokens){per_call}",
                    p.model, p.input, p.output, cached
                ));
            }
        }
        Command::Group(GroupCmd::Set { group, ratio }) => {
            billing::ops::set_group_ratio(store, &group, &ratio).await?;
            out(format!("group {group} ratio {ratio}"));
        }
        Command::Group(GroupCmd::List) => {
            for g in store.groups().await? {
                out(format!("{:<16} {}", g.name, g.ratio));
            }
        }
        Command::Token(TokenCmd::Create { user, name }) => {
            let id = user_id(store, &user).await?;
            let token = accounts::ops::issue_access_token(store, id, &name, 0).await?;
            out(token);
        }
        Command::Ledger(LedgerCmd::Check) => {
            let r = billing::ops::ledger_check(store).await?;
            for row in &r.inconsistent {
                out(format!(
                    "MISMATCH user {} ({}): balance {} but credits {} - consumption {} = {} (difference {}); used {} vs consumption {}",
                    row.user_id,
                    row.username,
                    row.balance,
                    row.credited,
                    row.consumed,
                    row.credited - row.consumed,
                    row.difference(),
                    row.used,
                    row.consumed
                ));
            }
            for k in &r.keys_inconsistent {
                out(format!(
                    "MISMATCH key {}: used {} but its requests cost {}",
                    k.key_id, k.used, k.consumed
                ));
            }
            if r.ok() {
                out(format!(
                    "ledger ok: {} users, every balance equals its ledger",
                    r.users
                ));
            } else {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

async fn user_cmd(c: UserCmd, store: &Store) -> anyhow::Result<()> {
    match c {
        UserCmd::Add {
            username,
            password,
            role,
            group,
            balance_usd,
        } => {
            let credit = balance_usd
                .map(|b| billing::usd_to_units(&b))
                .transpose()
                .context("--balance-usd")?;
            let (u, generated) =
                accounts::ops::create_user(store, &username, password.as_deref(), &role, &group)
                    .await?;
            if let Some(units) = credit.filter(|u| *u != 0) {
                billing::ops::credit(store, u.id, units, "topup", None, "initial balance").await?;
            }
            out(format!("created user {} (id {})", u.username, u.id));
            if let Some(p) = generated {
                out(format!("password: {p}"));
            }
        }
        UserCmd::List => {
            for u in store.users().await? {
                out(format!(
                    "{:>5}  {:<24} {:<6} {:<8} {:<9} balance ${:>14}  used ${:>12}  requests {}",
                    u.id,
                    u.username,
                    u.role,
                    u.group,
                    if u.status == 1 { "enabled" } else { "disabled" },
                    billing::units_to_usd(u.balance),
                    billing::units_to_usd(u.used),
                    u.request_count
                ));
            }
        }
        UserCmd::Topup {
            user,
            amount_usd,
            note,
            reference,
        } => {
            let id = user_id(store, &user).await?;
            let units = billing::usd_to_units(&amount_usd).context("amount")?;
            let kind = if units > 0 { "topup" } else { "adjust" };
            let note = if note.is_empty() {
                "by the command line".to_string()
            } else {
                note
            };
            let balance =
                billing::ops::credit(store, id, units, kind, reference.as_deref(), &note).await?;
            out(format!(
                "balance of user {id}: ${}",
                billing::units_to_usd(balance)
            ));
        }
        UserCmd::Disable { user } => {
            let id = user_id(store, &user).await?;
            store.set_user_status(id, 0).await?;
            out(format!("user {id} disabled"));
        }
        UserCmd::Enable { user } => {
            let id = user_id(store, &user).await?;
            store.set_user_status(id, 1).await?;
            out(format!("user {id} enabled"));
        }
        UserCmd::SetGroup { user, group } => {
            let id = user_id(store, &user).await?;
            store.set_user_group(id, &group).await?;
            out(format!("user {id} is in group {group}"));
        }
        UserCmd::SetPassword { user, password } => {
            let id = user_id(store, &user).await?;
            accounts::check_password(&password)?;
            store
                .change_password(id, &accounts::hash_password(&password)?)
                .await?;
            out(format!("password of user {id} changed"));
        }
    }
    Ok(())
}

async fn key_cmd(c: KeyCmd, store: &Store) -> anyhow::Result<()> {
    let patch_status = |status| storage::ApiKeyPatch {
        status: Some(status),
        ..Default::default()
    };
    match c {
        KeyCmd::Create(k) => {
            let id = user_id(store, &k.user).await?;
            let quota_limit = k
                .quota_usd
                .map(|q| billing::usd_to_units(&q))
                .transpose()
                .context("--quota-usd")?;
            let expires_at = k
                .expires_days
                .map(|d| storage::now_ms() + d * 86_400_000)
                .unwrap_or(0);
            let (row, secret) = accounts::ops::create_key(
                store,
                id,
                accounts::ops::KeyOptions {
                    name: k.name,
                    expires_at,
                    quota_limit,
                    allowed_models: k.models,
                    allowed_ips: k.ips,
                    limits: Default::default(),
                },
            )
            .await?;
            out(format!(
                "created key {} for user {id} (shown once):",
                row.id
            ));
            out(secret);
        }
        KeyCmd::List { user } => {
            let uid = match user {
                Some(u) => Some(user_id(store, &u).await?),
                None => None,
            };
            for k in store.api_keys(uid).await? {
                out(json(&k));
            }
        }
        KeyCmd::Disable { id } => {
            accounts::ops::update_key(store, id, patch_status(0)).await?;
            out(format!("key {id} disabled"));
        }
        KeyCmd::Enable { id } => {
            accounts::ops::update_key(store, id, patch_status(1)).await?;
            out(format!("key {id} enabled"));
        }
        KeyCmd::Revoke { id } => {
            store.delete_api_key(id).await?;
            out(format!("key {id} revoked"));
        }
    }
    Ok(())
}

async fn channel_cmd(c: ChannelCmd, store: &Store) -> anyhow::Result<()> {
    let set_status = |status| ChannelPatch {
        status: Some(status),
        ..Default::default()
    };
    match c {
        ChannelCmd::Add(a) => {
            let a = *a;
            let mut mapping = std::collections::BTreeMap::new();
            for m in &a.mapping {
                let (from, to) = m
                    .split_once('=')
                    .with_context(|| format!("--map `{m}` must look like asked=sent"))?;
                mapping.insert(from.trim().to_string(), to.trim().to_string());
            }
            let mut headers = std::collections::BTreeMap::new();
            for h in &a.headers {
                let (k, v) = h
                    .split_once(':')
                    .with_context(|| format!("--header `{h}` must look like `Name: value`"))?;
                headers.insert(k.trim().to_string(), v.trim().to_string());
            }
            let row = relay::channels::add(
                store,
                NewChannel {
                    name: a.name,
                    kind: a.kind,
                    base_url: a.base_url,
                    api_keys: a.keys,
                    models: a.models,
                    model_mapping: mapping,
                    groups: a.groups,
                    priority: a.priority,
                    weight: a.weight,
                    proxy_url: a.proxy_url,
                    timeout_secs: a.timeout_secs,
                    headers,
                    api_version: a.api_version,
                    native_responses: a.native_responses,
                },
            )
            .await?;
            out(format!("created channel {} (id {})", row.name, row.id));
        }
        ChannelCmd::List => {
            for c in store.channels().await? {
                let state = match c.status {
                    1 => "enabled".to_string(),
                    2 => format!("auto-disabled ({})", c.disabled_reason),
                    _ => "disabled".to_string(),
                };
                out(format!(
                    "{:>4}  {:<20} {:<9} {:<8} {:<40} priority {:>3} weight {:>3} {} keys ({} disabled)  models: {}",
                    c.id,
                    c.name,
                    c.kind,
                    state,
                    c.base_url,
                    c.priority,
                    c.weight,
                    c.api_keys.len(),
                    c.disabled_keys.len(),
                    c.models.join(",")
                ));
            }
        }
        ChannelCmd::Disable { id } => {
            relay::channels::update(store, id, set_status(0)).await?;
            out(format!("channel {id} disabled"));
        }
        ChannelCmd::Enable { id } => {
            relay::channels::update(store, id, set_status(1)).await?;
            out(format!("channel {id} enabled"));
        }
        ChannelCmd::Remove { id } => {
            store.delete_channel(id).await?;
            out(format!("channel {id} removed"));
        }
    }
    Ok(())
}
