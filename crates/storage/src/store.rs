//! The `Store`: connection pools and every query of the gateway.
//!
//! SQLite runs in WAL mode with one writing connection (so writers queue in
//! the pool instead of failing with "database is locked") and a few reading
//! connections; PostgreSQL uses one pool for both.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::records::*;
use crate::{Result, StorageError, migrate, now_ms};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    pub(crate) read: AnyPool,
    pub(crate) write: AnyPool,
}

fn list_to_text(v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else {
        serde_json::to_string(v).unwrap_or_default()
    }
}

fn text_to_list(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(s).unwrap_or_default()
    }
}

fn map_to_text(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        String::new()
    } else {
        serde_json::to_string(m).unwrap_or_default()
    }
}

fn text_to_map(s: &str) -> BTreeMap<String, String> {
    if s.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_str(s).unwrap_or_default()
    }
}

/// Tells a unique-constraint violation apart from other failures.
pub(crate) fn conflict(what: &str) -> impl FnOnce(sqlx::Error) -> StorageError + '_ {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StorageError::Conflict(what.into()),
        _ => StorageError::Db(e),
    }
}

pub(crate) const USER_COLS: &str = "id, username, password_hash, role, status, user_group, balance, used, request_count, created_at, \
     email, email_verified, display_name, google_id, totp_secret, totp_enabled, totp_last_step, register_region, language, \
     managed_route, platform_fee, auth_epoch, limits";
const KEY_COLS: &str = "id, user_id, name, key_hash, key_hint, status, expires_at, quota_limit, used, allowed_models, allowed_ips, created_at, limits";
pub(crate) const CHANNEL_COLS: &str = "id, name, kind, base_url, api_keys, models, model_mapping, groups, priority, weight, status, created_at, disabled_reason, disabled_at, disabled_keys, proxy_url, timeout_secs, headers, api_version, native_responses";
const LOG_COLS: &str = "id, request_id, user_id, key_id, channel_id, endpoint, model, upstream_model, prompt_tokens, completion_tokens, cached_tokens, cost, latency_ms, ttft_ms, is_stream, status, estimated, client_ip, error, created_at";

pub(crate) fn user_row(r: &AnyRow) -> Result<UserRow> {
    Ok(UserRow {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        role: r.try_get("role")?,
        status: r.try_get("status")?,
        group: r.try_get("user_group")?,
        balance: r.try_get("balance")?,
        used: r.try_get("used")?,
        request_count: r.try_get("request_count")?,
        created_at: r.try_get("created_at")?,
        email: r.try_get("email")?,
        email_verified: r.try_get::<i64, _>("email_verified")? != 0,
        display_name: r.try_get("display_name")?,
        google_id: r.try_get("google_id")?,
        totp_secret: r.try_get("totp_secret")?,
        totp_enabled: r.try_get::<i64, _>("totp_enabled")? != 0,
        totp_last_step: r.try_get("totp_last_step")?,
        register_region: r.try_get("register_region")?,
        language: r.try_get("language")?,
        managed_route: r.try_get("managed_route")?,
        platform_fee: r.try_get("platform_fee")?,
        auth_epoch: r.try_get("auth_epoch")?,
        limits: RateLimits::from_text(&r.try_get::<String, _>("limits")?),
    })
}

fn key_row(r: &AnyRow) -> Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        key_hash: r.try_get("key_hash")?,
        key_hint: r.try_get("key_hint")?,
        status: r.try_get("status")?,
        expires_at: r.try_get("expires_at")?,
        quota_limit: r.try_get("quota_limit")?,
        used: r.try_get("used")?,
        allowed_models: text_to_list(&r.try_get::<String, _>("allowed_models")?),
        allowed_ips: text_to_list(&r.try_get::<String, _>("allowed_ips")?),
        created_at: r.try_get("created_at")?,
        limits: RateLimits::from_text(&r.try_get::<String, _>("limits")?),
    })
}

/// A channel row; own channels of managed users (rows read with their
/// `owner_id`) get the negated id the relay knows them by.
pub(crate) fn channel_row(r: &AnyRow) -> Result<ChannelRow> {
    let owner_id = r.try_get::<i64, _>("owner_id").unwrap_or(0);
    let id: i64 = r.try_get("id")?;
    Ok(ChannelRow {
        id: if owner_id > 0 { -id } else { id },
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        base_url: r.try_get("base_url")?,
        api_keys: text_to_list(&r.try_get::<String, _>("api_keys")?),
        models: text_to_list(&r.try_get::<String, _>("models")?),
        model_mapping: text_to_map(&r.try_get::<String, _>("model_mapping")?),
        groups: text_to_list(&r.try_get::<String, _>("groups")?),
        priority: r.try_get("priority")?,
        weight: r.try_get("weight")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        disabled_reason: r.try_get("disabled_reason")?,
        disabled_at: r.try_get("disabled_at")?,
        disabled_keys: text_to_map(&r.try_get::<String, _>("disabled_keys")?),
        proxy_url: r.try_get("proxy_url")?,
        timeout_secs: r.try_get("timeout_secs")?,
        headers: text_to_map(&r.try_get::<String, _>("headers")?),
        api_version: r.try_get("api_version")?,
        native_responses: r.try_get::<i64, _>("native_responses")? != 0,
        owner_id,
    })
}

/// The table of a channel id as the relay sees it: operator channels have
/// positive ids, a managed user's own channels the negated id of their
/// `user_channels` row.
fn channel_table(id: i64) -> (&'static str, i64) {
    if id < 0 {
        ("user_channels", -id)
    } else {
        ("channels", id)
    }
}

fn log_row(r: &AnyRow) -> Result<LogRecord> {
    Ok(LogRecord {
        id: r.try_get("id")?,
        request_id: r.try_get("request_id")?,
        user_id: r.try_get("user_id")?,
        key_id: r.try_get("key_id")?,
        channel_id: r.try_get("channel_id")?,
        endpoint: r.try_get("endpoint")?,
        model: r.try_get("model")?,
        upstream_model: r.try_get("upstream_model")?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        cached_tokens: r.try_get("cached_tokens")?,
        cost: r.try_get("cost")?,
        latency_ms: r.try_get("latency_ms")?,
        ttft_ms: r.try_get("ttft_ms")?,
        is_stream: r.try_get::<i64, _>("is_stream")? != 0,
        status: r.try_get("status")?,
        estimated: r.try_get::<i64, _>("estimated")? != 0,
        client_ip: r.try_get("client_ip")?,
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Rows per multi-row log INSERT (19 parameters each, well under both
/// backends' parameter limits).
const LOG_ROWS_PER_INSERT: usize = 32;

/// Rows of a batch that SQLite settles in one round trip (see
/// `Store::settle_batch_sqlite`); 19 × 64 parameters.
const ONE_TRIP_ROWS: usize = 64;
/// The VALUES lists the one-round-trip texts are prepared with.
const ONE_TRIP_SIZES: [usize; 3] = [4, 16, ONE_TRIP_ROWS];

/// `INSERT INTO logs … VALUES (…), (…)` for `rows` rows. At most
/// LOG_ROWS_PER_INSERT distinct texts exist, so prepared statements are reused.
fn log_insert_sql(rows: usize, backend: Backend) -> &'static str {
    static SQL: std::sync::OnceLock<[Vec<String>; 2]> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        [Backend::Sqlite, Backend::Postgres].map(|b| {
            (0..=LOG_ROWS_PER_INSERT)
                .map(|n| build_log_insert_sql(n, b))
                .collect()
        })
    });
    let set = match backend {
        Backend::Sqlite => &all[0],
        Backend::Postgres => &all[1],
    };
    set.get(rows).map(String::as_str).unwrap_or("")
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds one row's values in the column order of [`log_insert_sql`].
fn bind_log<'q>(q: AnyQuery<'q>, l: &LogRecord) -> AnyQuery<'q> {
    q.bind(l.request_id.clone())
        .bind(l.user_id)
        .bind(l.key_id)
        .bind(l.channel_id)
        .bind(l.endpoint.clone())
        .bind(l.model.clone())
        .bind(l.upstream_model.clone())
        .bind(l.prompt_tokens)
        .bind(l.completion_tokens)
        .bind(l.cached_tokens)
        .bind(l.cost)
        .bind(l.latency_ms)
        .bind(l.ttft_ms)
        .bind(i64::from(l.is_stream))
        .bind(l.status)
        .bind(i64::from(l.estimated))
        .bind(l.client_ip.clone())
        .bind(l.error.clone())
        .bind(l.created_at)
}

/// SQLite gets anonymous `?` placeholders: with numbered ones the driver
/// looks each name up in SQLite's list, which grows costly with hundreds of
/// parameters. PostgreSQL needs `$N`.
fn build_log_insert_sql(rows: usize, backend: Backend) -> String {
    const COLS: usize = 19;
    let mut sql = String::from(
        "INSERT INTO logs (request_id, user_id, key_id, channel_id, endpoint, model, \
         upstream_model, prompt_tokens, completion_tokens, cached_tokens, cost, latency_ms, \
         ttft_ms, is_stream, status, estimated, client_ip, error, created_at) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..COLS {
            if c > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(r * COLS + c + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing) or `postgres://…`
    /// and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let store = if url.starts_with("sqlite:") {
            let url = if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            let opts = || {
                AnyPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(30))
                    // the database is a file in this process: there is no
                    // connection to lose, and a ping per acquire would be
                    // one more round trip to SQLite's worker thread
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                                 PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
            };
            let write = opts().max_connections(1).connect(&url).await?;
            let read = opts().max_connections(4).connect(&url).await?;
            Store {
                backend: Backend::Sqlite,
                read,
                write,
            }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            Store {
                backend: Backend::Postgres,
                read: pool.clone(),
                write: pool,
            }
        } else {
            return Err(StorageError::BadUrl(url.to_string()));
        };
        migrate::run(&store.write, store.backend).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    // ---- users -------------------------------------------------------

    pub async fn create_user(&self, u: &NewUser) -> Result<UserRow> {
        let row = sqlx::query(
            "INSERT INTO users (username, password_hash, role, user_group, created_at, email, \
             email_verified, display_name, google_id, register_region, language) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(&u.role)
        .bind(&u.group)
        .bind(now_ms())
        .bind(&u.email)
        .bind(i64::from(u.email_verified))
        .bind(&u.display_name)
        .bind(&u.google_id)
        .bind(&u.register_region)
        .bind(if u.language.is_empty() {
            "en"
        } else {
            u.language.as_str()
        })
        .fetch_one(&self.write)
        .await
        .map_err(conflict("user"))?;
        let id: i64 = row.try_get("id")?;
        self.user(id).await
    }

    pub async fn user(&self, id: i64) -> Result<UserRow> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("user {id}")))?;
        user_row(&row)
    }

    /// Reads a user's row through the writing connection, so the result
    /// includes every write this process committed before the call.
    pub async fn user_fresh(&self, id: i64) -> Result<UserRow> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.write)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("user {id}")))?;
        user_row(&row)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<UserRow> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE username = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(username)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("user `{username}`")))?;
        user_row(&row)
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        let sql = format!("SELECT {USER_COLS} FROM users ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(user_row).collect()
    }

    pub async fn count_users(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.read)
            .await?
            .try_get("n")?)
    }

    pub async fn set_user_status(&self, id: i64, status: i64) -> Result<()> {
        let r = sqlx::query("UPDATE users SET status = $1 WHERE id = $2")
            .bind(status)
            .bind(id)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    pub async fn set_user_group(&self, id: i64, group: &str) -> Result<()> {
        let r = sqlx::query("UPDATE users SET user_group = $1 WHERE id = $2")
            .bind(group)
            .bind(id)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    pub async fn set_password_hash(&self, id: i64, hash: &str) -> Result<()> {
        let r = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    /// Adds `amount` units (negative to take away) to a user's balance and
    /// writes the ledger entry, in one transaction. A negative change that
    /// would take the balance below zero is refused. A `reference` that was
    /// used before makes the call a no-op that reports `Conflict`, so a
    /// repeated credit (a payment callback, say) is applied once.
    pub async fn adjust_balance(
        &self,
        user_id: i64,
        amount: i64,
        kind: &str,
        reference: Option<&str>,
        note: &str,
    ) -> Result<i64> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO ledger (user_id, kind, amount, reference, note, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user_id)
        .bind(kind)
        .bind(amount)
        .bind(reference.map(str::to_string))
        .bind(note)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StorageError::Conflict(format!("ledger reference `{}`", reference.unwrap_or("")))
            }
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StorageError::NotFound(format!("user {user_id}"))
            }
            _ => StorageError::Db(e),
        })?;
        let row = sqlx::query(
            "UPDATE users SET balance = balance + $1 WHERE id = $2 AND balance + $1 >= 0 \
             RETURNING balance",
        )
        .bind(amount)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return match self.user(user_id).await {
                Ok(_) => Err(StorageError::InsufficientBalance),
                Err(e) => Err(e),
            };
        };
        let balance: i64 = row.try_get("balance")?;
        tx.commit().await?;
        Ok(balance)
    }

    pub async fn ledger(&self, user_id: i64, limit: i64) -> Result<Vec<LedgerRow>> {
        let rows = sqlx::query(
            "SELECT id, user_id, kind, amount, reference, note, created_at FROM ledger \
             WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LedgerRow {
                    id: r.try_get("id")?,
                    user_id: r.try_get("user_id")?,
                    kind: r.try_get("kind")?,
                    amount: r.try_get("amount")?,
                    reference: r.try_get("reference")?,
                    note: r.try_get("note")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Each user's balance beside the sum of their ledger credits and their
    /// logged consumption.
    pub async fn ledger_check(&self) -> Result<Vec<LedgerCheckRow>> {
        let rows = sqlx::query(
            "SELECT u.id, u.username, u.balance, u.used, \
             CAST(COALESCE((SELECT SUM(l.amount) FROM ledger l WHERE l.user_id = u.id), 0) AS BIGINT) AS credited, \
             CAST(COALESCE((SELECT SUM(g.cost) FROM logs g WHERE g.user_id = u.id), 0) AS BIGINT) AS consumed \
             FROM users u ORDER BY u.id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LedgerCheckRow {
                    user_id: r.try_get("id")?,
                    username: r.try_get("username")?,
                    balance: r.try_get("balance")?,
                    used: r.try_get("used")?,
                    credited: r.try_get("credited")?,
                    consumed: r.try_get("consumed")?,
                })
            })
            .collect()
    }

    /// Keys whose `used` differs from the sum of their logged costs.
    pub async fn key_check(&self) -> Result<Vec<KeyCheckRow>> {
        let rows = sqlx::query(
            "SELECT k.id, k.used, \
             CAST(COALESCE((SELECT SUM(g.cost) FROM logs g WHERE g.key_id = k.id), 0) AS BIGINT) AS consumed \
             FROM api_keys k ORDER BY k.id",
        )
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let row = KeyCheckRow {
                key_id: r.try_get("id")?,
                used: r.try_get("used")?,
                consumed: r.try_get("consumed")?,
            };
            if row.used != row.consumed {
                out.push(row);
            }
        }
        Ok(out)
    }

    // ---- access tokens -------------------------------------------------

    pub async fn create_access_token(
        &self,
        user_id: i64,
        token_hash: &str,
        name: &str,
        expires_at: i64,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO access_tokens (user_id, token_hash, name, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(user_id)
        .bind(token_hash)
        .bind(name)
        .bind(now_ms())
        .bind(expires_at)
        .fetch_one(&self.write)
        .await
        .map_err(conflict("access token"))?;
        Ok(row.try_get("id")?)
    }

    /// The user who owns a live access token with this hash.
    pub async fn user_by_access_token(&self, token_hash: &str) -> Result<Option<UserRow>> {
        let sql = format!(
            "SELECT {} FROM users u JOIN access_tokens t ON t.user_id = u.id \
             WHERE t.token_hash = $1 AND (t.expires_at = 0 OR t.expires_at > $2) \
             AND t.created_at >= u.auth_epoch",
            USER_COLS
                .split(", ")
                .map(|c| format!("u.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .bind(now_ms())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    // ---- API keys ------------------------------------------------------

    pub async fn create_api_key(&self, k: &NewApiKey) -> Result<ApiKeyRow> {
        let row = sqlx::query(
            "INSERT INTO api_keys (user_id, name, key_hash, key_hint, expires_at, quota_limit, \
             allowed_models, allowed_ips, created_at, limits) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             RETURNING id",
        )
        .bind(k.user_id)
        .bind(&k.name)
        .bind(&k.key_hash)
        .bind(&k.key_hint)
        .bind(k.expires_at)
        .bind(k.quota_limit)
        .bind(list_to_text(&k.allowed_models))
        .bind(list_to_text(&k.allowed_ips))
        .bind(now_ms())
        .bind(k.limits.to_text())
        .fetch_one(&self.write)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StorageError::NotFound(format!("user {}", k.user_id))
            }
            _ => conflict("API key")(e),
        })?;
        self.api_key(row.try_get("id")?).await
    }

    pub async fn api_key(&self, id: i64) -> Result<ApiKeyRow> {
        let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.write)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("API key {id}")))?;
        key_row(&row)
    }

    /// All keys, or one user's.
    pub async fn api_keys(&self, user_id: Option<i64>) -> Result<Vec<ApiKeyRow>> {
        let rows = match user_id {
            Some(uid) => {
                let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE user_id = $1 ORDER BY id");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(uid)
                    .fetch_all(&self.read)
                    .await?
            }
            None => {
                let sql = format!("SELECT {KEY_COLS} FROM api_keys ORDER BY id");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.read)
                    .await?
            }
        };
        rows.iter().map(key_row).collect()
    }

    /// Changes a key; a deleted key (status -1) is not found.
    pub async fn update_api_key(&self, id: i64, p: &ApiKeyPatch) -> Result<ApiKeyRow> {
        let cur = self.api_key(id).await?;
        if cur.status < 0 {
            return Err(StorageError::NotFound(format!("key {id}")));
        }
        sqlx::query(
            "UPDATE api_keys SET name = $1, status = $2, expires_at = $3, quota_limit = $4, \
             allowed_models = $5, allowed_ips = $6, limits = $8 WHERE id = $7 AND status >= 0",
        )
        .bind(p.name.clone().unwrap_or(cur.name))
        .bind(p.status.unwrap_or(cur.status))
        .bind(p.expires_at.unwrap_or(cur.expires_at))
        .bind(p.quota_limit.unwrap_or(cur.quota_limit))
        .bind(list_to_text(
            p.allowed_models.as_ref().unwrap_or(&cur.allowed_models),
        ))
        .bind(list_to_text(
            p.allowed_ips.as_ref().unwrap_or(&cur.allowed_ips),
        ))
        .bind(id)
        .bind(p.limits.as_ref().unwrap_or(&cur.limits).to_text())
        .execute(&self.write)
        .await?;
        self.api_key(id).await
    }

    /// Disables a key for good; its row stays for the logs that name it.
    pub async fn delete_api_key(&self, id: i64) -> Result<()> {
        let r = sqlx::query("UPDATE api_keys SET status = -1 WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("API key {id}")));
        }
        Ok(())
    }

    // ---- channels ------------------------------------------------------

    pub async fn create_channel(&self, c: &NewChannel) -> Result<ChannelRow> {
        self.insert_channel(c, 0).await
    }

    /// Inserts into `channels` (owner 0) or a managed user's `user_channels`.
    pub(crate) async fn insert_channel(&self, c: &NewChannel, owner: i64) -> Result<ChannelRow> {
        let (table, owner_col, owner_val) = if owner > 0 {
            ("user_channels", ", owner_id", ", $16")
        } else {
            ("channels", "", "")
        };
        let sql = format!(
            "INSERT INTO {table} (name, kind, base_url, api_keys, models, model_mapping, groups, \
             priority, weight, created_at, proxy_url, timeout_secs, headers, api_version, native_responses{owner_col}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15{owner_val}) RETURNING id"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&c.name)
            .bind(&c.kind)
            .bind(&c.base_url)
            .bind(list_to_text(&c.api_keys))
            .bind(list_to_text(&c.models))
            .bind(map_to_text(&c.model_mapping))
            .bind(list_to_text(&c.groups))
            .bind(c.priority)
            .bind(c.weight)
            .bind(now_ms())
            .bind(&c.proxy_url)
            .bind(c.timeout_secs)
            .bind(map_to_text(&c.headers))
            .bind(&c.api_version)
            .bind(i64::from(c.native_responses));
        if owner > 0 {
            q = q.bind(owner);
        }
        let row = q.fetch_one(&self.write).await?;
        let id: i64 = row.try_get("id")?;
        self.channel(if owner > 0 { -id } else { id }).await
    }

    /// A channel by relay id (negative: a managed user's own channel).
    pub async fn channel(&self, id: i64) -> Result<ChannelRow> {
        let (table, row_id) = channel_table(id);
        let owner = if id < 0 { ", owner_id" } else { "" };
        let sql = format!("SELECT {CHANNEL_COLS}{owner} FROM {table} WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(row_id)
            .fetch_optional(&self.write)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("channel {row_id}")))?;
        channel_row(&row)
    }

    pub async fn channels(&self) -> Result<Vec<ChannelRow>> {
        let sql = format!("SELECT {CHANNEL_COLS} FROM channels ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(channel_row).collect()
    }

    /// Updates a channel by relay id (negative: a managed user's own channel).
    pub async fn update_channel(&self, id: i64, p: &ChannelPatch) -> Result<ChannelRow> {
        let cur = self.channel(id).await?;
        let (table, row_id) = channel_table(id);
        let sql = format!(
            "UPDATE {table} SET name = $1, base_url = $2, api_keys = $3, models = $4, \
             model_mapping = $5, groups = $6, priority = $7, weight = $8, status = $9, \
             proxy_url = $11, timeout_secs = $12, headers = $13, api_version = $14, \
             native_responses = $16, \
             disabled_reason = CASE WHEN $9 = 1 THEN '' ELSE disabled_reason END, \
             disabled_keys = CASE WHEN $15 = 1 THEN '' ELSE disabled_keys END \
             WHERE id = $10"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(p.name.clone().unwrap_or(cur.name))
            .bind(p.base_url.clone().unwrap_or(cur.base_url))
            .bind(list_to_text(p.api_keys.as_ref().unwrap_or(&cur.api_keys)))
            .bind(list_to_text(p.models.as_ref().unwrap_or(&cur.models)))
            .bind(map_to_text(
                p.model_mapping.as_ref().unwrap_or(&cur.model_mapping),
            ))
            .bind(list_to_text(p.groups.as_ref().unwrap_or(&cur.groups)))
            .bind(p.priority.unwrap_or(cur.priority))
            .bind(p.weight.unwrap_or(cur.weight))
            .bind(p.status.unwrap_or(cur.status))
            .bind(row_id)
            .bind(p.proxy_url.clone().unwrap_or(cur.proxy_url))
            .bind(p.timeout_secs.unwrap_or(cur.timeout_secs))
            .bind(map_to_text(p.headers.as_ref().unwrap_or(&cur.headers)))
            .bind(p.api_version.clone().unwrap_or(cur.api_version))
            // new keys: the old keys' disabled states no longer apply
            .bind(i64::from(p.api_keys.is_some()))
            .bind(i64::from(
                p.native_responses.unwrap_or(cur.native_responses),
            ))
            .execute(&self.write)
            .await?;
        self.channel(id).await
    }

    /// Disables a channel automatically (status 2) with a reason, unless an
    /// operator disabled it. Returns whether the state changed.
    pub async fn auto_disable_channel(&self, id: i64, reason: &str) -> Result<bool> {
        let (table, row_id) = channel_table(id);
        let sql = format!(
            "UPDATE {table} SET status = 2, disabled_reason = $1, disabled_at = $2 \
             WHERE id = $3 AND status = 1"
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(reason)
            .bind(now_ms())
            .bind(row_id)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Re-enables an automatically disabled channel after a good probe.
    pub async fn auto_enable_channel(&self, id: i64) -> Result<bool> {
        let (table, row_id) = channel_table(id);
        let sql = format!(
            "UPDATE {table} SET status = 1, disabled_reason = '', disabled_at = 0, \
             disabled_keys = '' WHERE id = $1 AND status = 2"
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(row_id)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Records that one upstream key of a channel stopped working.
    pub async fn disable_channel_key(&self, id: i64, key_tag: &str, reason: &str) -> Result<()> {
        let (table, row_id) = channel_table(id);
        let mut tx = self.write.begin().await?;
        let sql = format!("SELECT disabled_keys FROM {table} WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(row_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("channel {row_id}")))?;
        let mut keys = text_to_map(&row.try_get::<String, _>("disabled_keys")?);
        keys.insert(key_tag.to_string(), reason.to_string());
        let sql = format!("UPDATE {table} SET disabled_keys = $1 WHERE id = $2");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(map_to_text(&keys))
            .bind(row_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_channel(&self, id: i64) -> Result<()> {
        let (table, row_id) = channel_table(id);
        let sql = format!("DELETE FROM {table} WHERE id = $1");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(row_id)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("channel {id}")));
        }
        Ok(())
    }

    // ---- prices and groups ---------------------------------------------

    pub async fn prices(&self) -> Result<Vec<PriceRow>> {
        let rows = sqlx::query(
            "SELECT model, input, output, cached_input, per_call, cache_write, updated_at FROM prices ORDER BY model",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PriceRow {
                    model: r.try_get("model")?,
                    input: r.try_get("input")?,
                    output: r.try_get("output")?,
                    cached_input: r.try_get("cached_input")?,
                    per_call: r.try_get("per_call")?,
                    cache_write: r.try_get("cache_write")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    pub async fn upsert_price(&self, p: &PriceRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO prices (model, input, output, cached_input, per_call, updated_at, cache_write) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (model) DO UPDATE SET input = excluded.input, output = excluded.output, \
             cached_input = excluded.cached_input, per_call = excluded.per_call, updated_at = excluded.updated_at, \
             cache_write = excluded.cache_write",
        )
        .bind(&p.model)
        .bind(&p.input)
        .bind(&p.output)
        .bind(&p.cached_input)
        .bind(&p.per_call)
        .bind(now_ms())
        .bind(&p.cache_write)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Inserts prices only for models that have none yet (first-start seed).
    pub async fn seed_prices(&self, seed: &[PriceRow]) -> Result<()> {
        for p in seed {
            sqlx::query(
                "INSERT INTO prices (model, input, output, cached_input, per_call, updated_at, cache_write) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (model) DO NOTHING",
            )
            .bind(&p.model)
            .bind(&p.input)
            .bind(&p.output)
            .bind(&p.cached_input)
            .bind(&p.per_call)
            .bind(now_ms())
            .bind(&p.cache_write)
            .execute(&self.write)
            .await?;
        }
        Ok(())
    }

    pub async fn delete_price(&self, model: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM prices WHERE model = $1")
            .bind(model)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("price of `{model}`")));
        }
        Ok(())
    }

    pub async fn groups(&self) -> Result<Vec<GroupRow>> {
        let rows = sqlx::query("SELECT name, ratio FROM user_groups ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(GroupRow {
                    name: r.try_get("name")?,
                    ratio: r.try_get("ratio")?,
                })
            })
            .collect()
    }

    pub async fn upsert_group(&self, name: &str, ratio: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO user_groups (name, ratio) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET ratio = excluded.ratio",
        )
        .bind(name)
        .bind(ratio)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    // ---- settings ------------------------------------------------------

    pub async fn setting(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    pub async fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    // ---- request logs and settlement -------------------------------------

    /// Writes a group of settled requests in one transaction: their log
    /// rows, the balance and usage of each user, the `used` of each key and
    /// the hourly aggregates. Either all of it lands or none of it does.
    pub async fn settle_batch(&self, logs: &[LogRecord]) -> Result<()> {
        if logs.is_empty() {
            return Ok(());
        }
        let mut users: HashMap<i64, (i64, i64)> = HashMap::new();
        let mut keys: HashMap<i64, i64> = HashMap::new();
        let mut hourly: HashMap<(i64, &str, i64), HourlyUsage> = HashMap::new();
        for l in logs {
            let u = users.entry(l.user_id).or_default();
            u.0 += l.cost;
            u.1 += 1;
            if l.cost != 0 {
                *keys.entry(l.key_id).or_default() += l.cost;
            }
            let hour = l.created_at - l.created_at.rem_euclid(3_600_000);
            let h = hourly
                .entry((l.user_id, l.model.as_str(), hour))
                .or_insert_with(|| HourlyUsage {
                    user_id: l.user_id,
                    model: l.model.clone(),
                    hour,
                    requests: 0,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    cost: 0,
                });
            h.requests += 1;
            h.prompt_tokens += l.prompt_tokens;
            h.completion_tokens += l.completion_tokens;
            h.cost += l.cost;
        }
        // The common batch on SQLite (one user, at most one key, one model
        // and hour, at most ONE_TRIP_ROWS rows) goes in one round trip; any
        // other batch takes the statement-per-step transaction below, whose
        // round trips are then shared by more rows.
        if self.backend == Backend::Sqlite
            && logs.len() <= ONE_TRIP_ROWS
            && users.len() == 1
            && keys.len() <= 1
            && let (Some(user), Some(h)) = (users.iter().next(), hourly.values().next())
            && hourly.len() == 1
        {
            return self
                .settle_batch_sqlite(logs, user, keys.iter().next(), h)
                .await;
        }
        let mut tx = self.write.begin().await?;
        // Log rows go in multi-row INSERTs of at most LOG_ROWS_PER_INSERT
        // rows: one round trip to the database per group instead of per row.
        for group in logs.chunks(LOG_ROWS_PER_INSERT) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(log_insert_sql(
                group.len(),
                self.backend,
            )));
            for l in group {
                q = bind_log(q, l);
            }
            q.execute(&mut *tx).await?;
        }
        for (uid, (cost, n)) in &users {
            sqlx::query(
                "UPDATE users SET balance = balance - $1, used = used + $1, \
                 request_count = request_count + $2 WHERE id = $3",
            )
            .bind(*cost)
            .bind(*n)
            .bind(*uid)
            .execute(&mut *tx)
            .await?;
        }
        for (kid, cost) in &keys {
            sqlx::query("UPDATE api_keys SET used = used + $1 WHERE id = $2")
                .bind(*cost)
                .bind(*kid)
                .execute(&mut *tx)
                .await?;
        }
        for h in hourly.values() {
            sqlx::query(
                "INSERT INTO quota_data (user_id, model, hour, requests, prompt_tokens, \
                 completion_tokens, cost) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (user_id, model, hour) DO UPDATE SET \
                 requests = quota_data.requests + excluded.requests, \
                 prompt_tokens = quota_data.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = quota_data.completion_tokens + excluded.completion_tokens, \
                 cost = quota_data.cost + excluded.cost",
            )
            .bind(h.user_id)
            .bind(&h.model)
            .bind(h.hour)
            .bind(h.requests)
            .bind(h.prompt_tokens)
            .bind(h.completion_tokens)
            .bind(h.cost)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::settle_batch`] on SQLite for a batch of one user, at most
    /// one key and one (model, hour): the whole transaction, from `BEGIN
    /// IMMEDIATE` to `COMMIT`, is one multi-statement query, so the batch
    /// costs one round trip to SQLite's worker thread instead of one per
    /// statement. Rows come from a VALUES list of 4, 16 or ONE_TRIP_ROWS
    /// rows whose unbound rows are NULL and filtered out, so three texts,
    /// prepared once, serve every batch size. A failure part-way rolls back
    /// before returning.
    async fn settle_batch_sqlite(
        &self,
        logs: &[LogRecord],
        (uid, (cost, n)): (&i64, &(i64, i64)),
        key: Option<(&i64, &i64)>,
        h: &HourlyUsage,
    ) -> Result<()> {
        static SQL: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
        let texts = SQL.get_or_init(|| {
            ONE_TRIP_SIZES
                .iter()
                .map(|&rows| (rows, one_trip_sql(rows)))
                .collect()
        });
        // the smallest text that takes the batch: fewer NULL rows to skip
        let Some((_, sql)) = texts.iter().find(|(rows, _)| *rows >= logs.len()) else {
            return Err(StorageError::Db(sqlx::Error::Protocol(format!(
                "a one-round-trip batch holds at most {ONE_TRIP_ROWS} rows"
            ))));
        };
        fn one_trip_sql(rows: usize) -> String {
            let values = build_log_insert_sql(rows, Backend::Sqlite);
            let (columns, values) = values.split_once(" VALUES ").unwrap_or_default();
            // the row values come last, so the ones left unbound are NULL
            format!(
                "BEGIN IMMEDIATE;\n\
                 UPDATE users SET balance = balance - ?, used = used + ?, \
                 request_count = request_count + ? WHERE id = ?;\n\
                 UPDATE api_keys SET used = used + ? WHERE id = ?;\n\
                 INSERT INTO quota_data (user_id, model, hour, requests, prompt_tokens, \
                 completion_tokens, cost) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (user_id, model, hour) DO UPDATE SET \
                 requests = quota_data.requests + excluded.requests, \
                 prompt_tokens = quota_data.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = quota_data.completion_tokens + excluded.completion_tokens, \
                 cost = quota_data.cost + excluded.cost;\n\
                 {columns} SELECT * FROM (VALUES {values}) WHERE column1 IS NOT NULL;\n\
                 COMMIT;"
            )
        }
        // no key entry (nothing was charged to one): the key UPDATE matches
        // no row
        let (kid, kcost) = key.map_or((0, 0), |(k, c)| (*k, *c));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(*cost)
            .bind(*cost)
            .bind(*n)
            .bind(*uid)
            .bind(kcost)
            .bind(kid)
            .bind(h.user_id)
            .bind(h.model.clone())
            .bind(h.hour)
            .bind(h.requests)
            .bind(h.prompt_tokens)
            .bind(h.completion_tokens)
            .bind(h.cost);
        for l in logs {
            q = bind_log(q, l);
        }
        let mut conn = self.write.acquire().await?;
        match q.execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // whatever ran before the failure is undone; "no
                // transaction is active" (BEGIN itself failed) is fine
                let _ = conn.execute("ROLLBACK").await;
                Err(e.into())
            }
        }
    }

    /// Request logs, newest first, filtered.
    pub async fn logs(&self, f: &LogFilter) -> Result<Vec<LogRecord>> {
        let sql = format!(
            "SELECT {LOG_COLS} FROM logs WHERE ($1 < 0 OR user_id = $1) AND ($2 < 0 OR key_id = $2) \
             AND ($3 = '' OR model = $3) AND created_at >= $4 AND created_at <= $5 AND id < $6 \
             ORDER BY id DESC LIMIT $7"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.user_id.unwrap_or(-1))
            .bind(f.key_id.unwrap_or(-1))
            .bind(f.model.clone().unwrap_or_default())
            .bind(f.since.unwrap_or(0))
            .bind(f.until.unwrap_or(i64::MAX))
            .bind(f.before_id.unwrap_or(i64::MAX))
            .bind(f.limit.unwrap_or(100).clamp(1, 1000))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(log_row).collect()
    }

    pub async fn log_by_request_id(&self, request_id: &str) -> Result<Option<LogRecord>> {
        let sql = format!("SELECT {LOG_COLS} FROM logs WHERE request_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(request_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(log_row).transpose()
    }

    /// Hourly usage rows, filtered by user and a time range (epoch ms).
    pub async fn hourly_usage(
        &self,
        user_id: Option<i64>,
        since: i64,
        until: i64,
    ) -> Result<Vec<HourlyUsage>> {
        let rows = sqlx::query(
            "SELECT user_id, model, hour, requests, prompt_tokens, completion_tokens, cost \
             FROM quota_data WHERE ($1 < 0 OR user_id = $1) AND hour >= $2 AND hour <= $3 \
             ORDER BY hour, user_id, model",
        )
        .bind(user_id.unwrap_or(-1))
        .bind(since)
        .bind(until)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HourlyUsage {
                    user_id: r.try_get("user_id")?,
                    model: r.try_get("model")?,
                    hour: r.try_get("hour")?,
                    requests: r.try_get("requests")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    cost: r.try_get("cost")?,
                })
            })
            .collect()
    }
}
