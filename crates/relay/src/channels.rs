//! Channel management shared by the CLI and the management API: checks a
//! channel before it is stored, so a bad one is refused with a message a
//! person can act on instead of failing requests later.

use storage::{ChannelPatch, ChannelRow, NewChannel, StorageError, Store};

/// Channel kinds this version relays to.
pub const KINDS: &[&str] = &["openai", "azure", "anthropic", "gemini"];

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn check_url(url: &str) -> Result<(), ChannelError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && !url.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(ChannelError::Invalid(format!(
            "base_url `{url}` must be an http:// or https:// URL, e.g. https://api.openai.com/v1"
        )))
    }
}

fn check_proxy(url: &str) -> Result<(), ChannelError> {
    if url.is_empty() || url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ChannelError::Invalid(format!(
            "proxy_url `{url}` must be an http:// or https:// proxy URL"
        )))
    }
}

fn check_models(models: &[String]) -> Result<(), ChannelError> {
    if models.is_empty() || models.iter().any(|m| m.trim().is_empty()) {
        return Err(ChannelError::Invalid(
            "a channel needs at least one model, and model names cannot be empty".into(),
        ));
    }
    Ok(())
}

pub async fn add(store: &Store, c: NewChannel) -> Result<ChannelRow, ChannelError> {
    if c.name.trim().is_empty() {
        return Err(ChannelError::Invalid("a channel needs a name".into()));
    }
    if !KINDS.contains(&c.kind.as_str()) {
        return Err(ChannelError::Invalid(format!(
            "unknown channel kind `{}`; known kinds: {}",
            c.kind,
            KINDS.join(", ")
        )));
    }
    check_url(&c.base_url)?;
    check_models(&c.models)?;
    if c.api_keys.is_empty() {
        return Err(ChannelError::Invalid(
            "a channel needs at least one upstream API key".into(),
        ));
    }
    check_proxy(&c.proxy_url)?;
    if c.weight < 0 {
        return Err(ChannelError::Invalid("weight must be 0 or more".into()));
    }
    Ok(store.create_channel(&c).await?)
}

pub async fn update(store: &Store, id: i64, p: ChannelPatch) -> Result<ChannelRow, ChannelError> {
    if let Some(u) = &p.base_url {
        check_url(u)?;
    }
    if let Some(m) = &p.models {
        check_models(m)?;
    }
    if let Some(s) = p.status
        && !(s == 0 || s == 1)
    {
        return Err(ChannelError::Invalid(
            "status must be 1 (enabled) or 0 (disabled)".into(),
        ));
    }
    if let Some(u) = &p.proxy_url {
        check_proxy(u)?;
    }
    Ok(store.update_channel(id, &p).await?)
}

/// The configured fallback chains (`model → models tried after it`).
pub async fn fallbacks(
    store: &Store,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, ChannelError> {
    Ok(store
        .setting(crate::cache::FALLBACKS_SETTING)
        .await?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// Sets (or with an empty list, removes) a model's fallback chain.
pub async fn set_fallbacks(
    store: &Store,
    model: &str,
    chain: Vec<String>,
) -> Result<(), ChannelError> {
    if model.trim().is_empty() || chain.iter().any(|m| m.trim().is_empty() || m == model) {
        return Err(ChannelError::Invalid(
            "fallbacks are other, non-empty model names".into(),
        ));
    }
    let mut all = fallbacks(store).await?;
    if chain.is_empty() {
        all.remove(model);
    } else {
        all.insert(model.to_string(), chain);
    }
    let text = serde_json::to_string(&all).map_err(|e| ChannelError::Invalid(e.to_string()))?;
    store
        .set_setting(crate::cache::FALLBACKS_SETTING, &text)
        .await?;
    Ok(())
}
