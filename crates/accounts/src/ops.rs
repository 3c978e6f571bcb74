//! Account operations shared by the CLI and the management API.

use storage::{ApiKeyRow, NewApiKey, NewUser, StorageError, Store, UserRow};

use crate::*;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Invalid(String),
    #[error("wrong username or password")]
    BadCredentials,
}

/// Creates a user. Without a password, one is generated and returned.
pub async fn create_user(
    store: &Store,
    username: &str,
    password: Option<&str>,
    role: &str,
    group: &str,
) -> Result<(UserRow, Option<String>), OpsError> {
    check_username(username)?;
    if !valid_role(role) {
        return Err(OpsError::Invalid(format!(
            "unknown role `{role}`; use user, admin or root"
        )));
    }
    if group.trim().is_empty() {
        return Err(OpsError::Invalid("group cannot be empty".into()));
    }
    let (password, generated) = match password {
        Some(p) => {
            check_password(p)?;
            (p.to_string(), None)
        }
        None => {
            let p = generate_password();
            (p.clone(), Some(p))
        }
    };
    let user = store
        .create_user(&NewUser {
            username: username.to_string(),
            password_hash: crate::hash_password_off_thread(&password).await?,
            role: role.to_string(),
            group: group.to_string(),
            ..Default::default()
        })
        .await?;
    Ok((user, generated))
}

/// Creates the root administrator on first start. Returns the password
/// when one was generated (to be shown once), `None` if users exist.
pub async fn ensure_root(
    store: &Store,
    username: &str,
    password: Option<&str>,
) -> Result<Option<(UserRow, Option<String>)>, OpsError> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    create_user(store, username, password, ROLE_ROOT, "default")
        .await
        .map(Some)
}

/// Options of a new API key.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyOptions {
    #[serde(default)]
    pub name: String,
    /// Epoch ms; 0 or absent = never.
    #[serde(default)]
    pub expires_at: i64,
    /// Units; absent or negative = unlimited.
    #[serde(default)]
    pub quota_limit: Option<i64>,
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Requests/tokens per minute, requests at once, spending budget.
    #[serde(default)]
    pub limits: storage::RateLimits,
}

/// Checks a key's limits: a budget needs a period and the other way round.
pub fn check_limits(l: storage::RateLimits) -> Result<storage::RateLimits, OpsError> {
    match (&l.budget, l.budget_period.as_deref()) {
        (None, None) | (Some(_), Some("daily" | "weekly" | "monthly")) => Ok(l),
        (Some(_), None) | (None, Some(_)) => Err(OpsError::Invalid(
            "a budget needs both `budget` (units) and `budget_period`".into(),
        )),
        (Some(_), Some(p)) => Err(OpsError::Invalid(format!(
            "budget_period is daily, weekly or monthly, not `{p}`"
        ))),
    }
}

/// Creates an API key; the full key is returned once and never stored.
pub async fn create_key(
    store: &Store,
    user_id: i64,
    opts: KeyOptions,
) -> Result<(ApiKeyRow, String), OpsError> {
    IpAllowList::parse(&opts.allowed_ips)?;
    let secret = generate_api_key();
    let row = store
        .create_api_key(&NewApiKey {
            user_id,
            name: opts.name,
            key_hash: secret_hash(&secret),
            key_hint: key_hint(&secret),
            expires_at: opts.expires_at.max(0),
            quota_limit: opts.quota_limit.filter(|q| *q >= 0).unwrap_or(-1),
            allowed_models: opts.allowed_models,
            allowed_ips: opts.allowed_ips,
            limits: check_limits(opts.limits)?,
        })
        .await?;
    Ok((row, secret))
}

pub async fn update_key(
    store: &Store,
    id: i64,
    patch: storage::ApiKeyPatch,
) -> Result<ApiKeyRow, OpsError> {
    if let Some(ips) = &patch.allowed_ips {
        IpAllowList::parse(ips)?;
    }
    if let Some(s) = patch.status
        && !(s == 0 || s == 1)
    {
        return Err(OpsError::Invalid(
            "status must be 1 (enabled) or 0 (disabled)".into(),
        ));
    }
    let mut patch = patch;
    if let Some(l) = patch.limits.take() {
        patch.limits = Some(check_limits(l)?);
    }
    Ok(store.update_api_key(id, &patch).await?)
}

/// Issues a management access token for a user; returned once.
pub async fn issue_access_token(
    store: &Store,
    user_id: i64,
    name: &str,
    ttl_ms: i64,
) -> Result<String, OpsError> {
    let token = generate_access_token();
    let expires = if ttl_ms > 0 {
        storage::now_ms() + ttl_ms
    } else {
        0
    };
    store
        .create_access_token(user_id, &secret_hash(&token), name, expires)
        .await?;
    Ok(token)
}

/// Checks a password and issues a token valid for `ttl_ms`.
pub async fn login(
    store: &Store,
    username: &str,
    password: &str,
    ttl_ms: i64,
) -> Result<(UserRow, String), OpsError> {
    let user = match store.user_by_name(username).await {
        Ok(u) => u,
        Err(StorageError::NotFound(_)) => {
            // same work as a real check, so timing does not tell names apart
            let _ = crate::verify_password_off_thread(password, crate::DUMMY_HASH).await;
            return Err(OpsError::BadCredentials);
        }
        Err(e) => return Err(e.into()),
    };
    if user.status != 1 || !crate::verify_password_off_thread(password, &user.password_hash).await {
        return Err(OpsError::BadCredentials);
    }
    let token = issue_access_token(store, user.id, "login", ttl_ms).await?;
    Ok((user, token))
}
