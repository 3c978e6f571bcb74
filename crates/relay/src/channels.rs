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
    check_new(&c)?;
    Ok(store.create_channel(&c).await?)
}

/// Adds a managed user's own channel. Unless `allow_private`, its base URL
/// (and proxy) must lead to a public address.
pub async fn add_owned(
    store: &Store,
    owner: i64,
    c: NewChannel,
    allow_private: bool,
) -> Result<ChannelRow, ChannelError> {
    check_new(&c)?;
    if !allow_private {
        check_public(&c.base_url).await?;
        if !c.proxy_url.is_empty() {
            check_public(&c.proxy_url).await?;
        }
    }
    Ok(store.create_user_channel(owner, &c).await?)
}

/// Updates a managed user's own channel (relay id: negative).
pub async fn update_owned(
    store: &Store,
    id: i64,
    p: ChannelPatch,
    allow_private: bool,
) -> Result<ChannelRow, ChannelError> {
    if !allow_private {
        for u in [&p.base_url, &p.proxy_url].into_iter().flatten() {
            if !u.is_empty() {
                check_public(u).await?;
            }
        }
    }
    update(store, id, p).await
}

/// Refuses a URL whose host is, or resolves to, a loopback, private,
/// link-local or otherwise non-public address (so a user's channel cannot
/// reach the operator's internal network).
pub async fn check_public(url: &str) -> Result<(), ChannelError> {
    let refuse = |why: &str| {
        Err(ChannelError::Invalid(format!(
            "`{url}` points at {why}; channels of managed users must use public addresses"
        )))
    };
    // the URL parser the relay connects with decides what the host is
    // (a hand-made split would disagree on `\`, `@` and the like)
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return refuse("no valid URL");
    };
    let port = parsed.port_or_known_default().unwrap_or(443);
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return refuse("no host");
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::IpAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::net::lookup_host((bare, port)).await {
            Ok(it) => it.map(|a| a.ip()).collect(),
            Err(_) => {
                return Err(ChannelError::Invalid(format!(
                    "the host of `{url}` does not resolve"
                )));
            }
        },
    };
    if addrs.is_empty() || addrs.iter().any(|ip| !is_public(*ip)) {
        return refuse("a private, loopback or link-local address");
    }
    Ok(())
}

fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] >= 224)
        }
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(std::net::IpAddr::V4(v4));
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || v6.is_multicast())
        }
    }
}

fn check_new(c: &NewChannel) -> Result<(), ChannelError> {
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
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::check_public;

    #[tokio::test]
    async fn private_and_loopback_upstreams_are_refused() {
        for url in [
            "http://127.0.0.1:8080/v1",
            "http://localhost/v1",
            "https://10.1.2.3/v1",
            "https://192.168.0.10/v1",
            "https://172.16.5.5/v1",
            "http://169.254.169.254/latest",
            "http://[::1]:3000/v1",
            "http://[fd00::1]/v1",
            "http://[::ffff:127.0.0.1]/v1",
            "http://100.64.0.1/v1",
            "http://0.0.0.0/v1",
            "http://user:pw@127.0.0.1/v1",
            "http://127.0.0.1:9\\@1.1.1.1/v1",
        ] {
            let e = check_public(url).await.expect_err(url);
            assert!(e.to_string().contains("public"), "{url}: {e}");
        }
        for url in [
            "https://8.8.8.8/v1",
            "https://[2606:4700::1111]/v1",
            "https://1.1.1.1:443/v1",
        ] {
            assert!(check_public(url).await.is_ok(), "{url}");
        }
    }
}
