//! The in-memory view of keys, users, channels and prices that the request
//! path reads instead of the database. A `Snapshot` is immutable and
//! swapped whole on change; the wallets that hold balances outlive
//! snapshots, so a reload never loses an in-flight hold.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use accounts::IpAllowList;
use billing::{Decimal, Price, Wallet};
use storage::{ChannelRow, Store};

pub struct KeyEntry {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub enabled: bool,
    /// Epoch ms; 0 = never.
    pub expires_at: i64,
    pub allowed_models: Option<HashSet<String>>,
    pub ips: IpAllowList,
    /// The key's remaining quota; `None` = unlimited.
    pub budget: Option<Arc<Wallet>>,
    /// Rate limits, concurrency and spending budget of the key.
    pub limits: storage::RateLimits,
}

pub struct UserEntry {
    pub id: i64,
    pub username: String,
    pub enabled: bool,
    pub group: String,
    pub ratio: Decimal,
    pub wallet: Arc<Wallet>,
    /// Set for a user in managed mode (role `user_root`).
    pub managed: Option<Managed>,
    /// Rate limits over all of the user's keys.
    pub limits: storage::RateLimits,
}

/// How a managed user's requests are routed and billed.
#[derive(Clone, Copy, Debug)]
pub struct Managed {
    /// Only the user's own channels serve them (else: own first, then shared).
    pub own_only: bool,
    /// Multiplier on the price of requests their own channels serve.
    pub fee: Decimal,
}

/// The channels that may serve one user's request for one model: the
/// user's own (managed mode) first, then the shared ones.
pub struct Route<'a> {
    pub own: Option<&'a [Tier]>,
    pub shared: Option<&'a [Tier]>,
}

impl Route<'_> {
    pub fn exists(&self) -> bool {
        self.own.is_some() || self.shared.is_some()
    }
    /// Every tier, own first.
    pub fn tiers(&self) -> impl Iterator<Item = &Tier> {
        self.own
            .into_iter()
            .flatten()
            .chain(self.shared.into_iter().flatten())
    }
}

pub struct ChannelEntry {
    pub id: i64,
    pub name: String,
    pub kind: String,
    /// Without a trailing `/`, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Keys in use (the ones not disabled).
    pub keys: Vec<String>,
    /// Every configured key, for probing a channel that has none left.
    pub all_keys: Vec<String>,
    /// Turns taken so far, kept across snapshots so that reloads do not
    /// send every request back to the first key.
    next_key: Arc<AtomicUsize>,
    pub mapping: HashMap<String, String>,
    pub models: Vec<String>,
    pub priority: i64,
    pub weight: u32,
    /// 1 enabled, 2 disabled automatically (probed).
    pub status: i64,
    /// Set when the channel was just disabled, so no request picks it in the
    /// moment before the snapshot is rebuilt.
    pub tripped: std::sync::atomic::AtomicBool,
    /// Consecutive failures since the last success (kept across reloads).
    pub failures: Arc<std::sync::atomic::AtomicU32>,
    /// A client with this channel's proxy, when it has one.
    pub client: Option<crate::upstream::Client>,
    /// Seconds; 0 = the relay's default.
    pub timeout_secs: u64,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub api_version: String,
    /// Serves `/v1/responses` itself.
    pub native_responses: bool,
    /// Keys found refused since this entry was built (bit i = `keys[i]`),
    /// skipped at once, before the snapshot reloads.
    refused: std::sync::atomic::AtomicU64,
    /// Parsed upstream URLs by path, so a URL is parsed once per channel
    /// and path rather than once per request.
    urls: Mutex<HashMap<String, Target>>,
}

/// Where a channel's request for one path goes: the URI and its `Host`
/// header (the port only when it is not the scheme's default).
#[derive(Clone, Debug)]
pub struct Target {
    pub uri: http::Uri,
    pub host: http::HeaderValue,
}

/// The tag under which a disabled upstream key is recorded: the first 16
/// hex digits of its SHA-256 (the key itself is never stored twice).
pub fn key_tag(key: &str) -> String {
    accounts::secret_hash(key)[..16].to_string()
}

impl ChannelEntry {
    /// The next upstream key, round-robin, skipping keys just refused.
    pub fn next_key(&self) -> &str {
        let n = self.keys.len();
        if n == 0 {
            return "";
        }
        let refused = self.refused.load(Ordering::Relaxed);
        let start = self.next_key.fetch_add(1, Ordering::Relaxed);
        for step in 0..n {
            let i = (start + step) % n;
            if i >= 64 || refused & (1 << i) == 0 {
                return &self.keys[i];
            }
        }
        &self.keys[start % n]
    }

    /// Stops using `key` in this process right away.
    pub fn disable_key_now(&self, key: &str) {
        if let Some(i) = self.keys.iter().position(|k| k == key)
            && i < 64
        {
            self.refused.fetch_or(1 << i, Ordering::Relaxed);
        }
    }

    /// Keys not refused so far.
    pub fn usable_keys(&self) -> usize {
        let refused = self.refused.load(Ordering::Relaxed);
        (0..self.keys.len())
            .filter(|&i| i >= 64 || refused & (1 << i) == 0)
            .count()
    }

    /// The upstream URL for `path` (which may carry a query).
    pub fn url(&self, path: &str) -> Result<Target, String> {
        let mut urls = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = urls.get(path) {
            return Ok(u.clone());
        }
        // the URL parser normalizes (percent-encodes, IDNA hosts); the
        // request takes its serialization
        let u = reqwest::Url::parse(&format!("{}{}", self.base_url, path))
            .map_err(|e| e.to_string())?;
        let host = match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(format!("`{u}` names no host")),
        };
        let u = Target {
            uri: http::Uri::try_from(u.as_str()).map_err(|e| e.to_string())?,
            host: http::HeaderValue::try_from(host).map_err(|e| e.to_string())?,
        };
        if urls.len() < 64 {
            urls.insert(path.to_string(), u.clone());
        }
        Ok(u)
    }

    /// The first model a probe can ask for, as sent upstream.
    pub fn probe_model(&self) -> Option<&str> {
        self.models.first().map(|m| self.upstream_model(m))
    }

    /// The model name to send upstream.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.mapping.get(model).map(String::as_str).unwrap_or(model)
    }
}

/// Channels that serve one (group, model), best priority first.
pub struct Tier {
    pub priority: i64,
    pub channels: Vec<Arc<ChannelEntry>>,
}

#[derive(Default)]
pub struct Snapshot {
    /// Every channel not disabled by an operator, by id.
    pub channels: HashMap<i64, Arc<ChannelEntry>>,
    pub keys: HashMap<[u8; 32], Arc<KeyEntry>>,
    pub users: HashMap<i64, Arc<UserEntry>>,
    /// group → model → tiers.
    pub routes: HashMap<String, HashMap<String, Vec<Tier>>>,
    pub prices: HashMap<String, Price>,
    /// (group, model) pairs whose every channel is disabled automatically:
    /// known, but unavailable for now.
    pub unavailable: std::collections::HashSet<(String, String)>,
    /// Configured fallback chains: model → models tried after it.
    pub fallbacks: HashMap<String, Vec<String>>,
    /// Managed users' own channels: owner → model → tiers.
    pub own_routes: HashMap<i64, HashMap<String, Vec<Tier>>>,
    /// (owner, model) pairs whose every own channel is disabled automatically.
    pub own_unavailable: HashSet<(i64, String)>,
}

impl Snapshot {
    pub fn tiers(&self, group: &str, model: &str) -> Option<&[Tier]> {
        self.routes
            .get(group)
            .and_then(|m| m.get(model))
            .map(Vec::as_slice)
    }

    /// Where a user's request for `model` may go.
    pub fn route(&self, user: &UserEntry, model: &str) -> Route<'_> {
        let own = user.managed.and_then(|_| {
            self.own_routes
                .get(&user.id)
                .and_then(|m| m.get(model))
                .map(Vec::as_slice)
        });
        let shared = if user.managed.is_some_and(|m| m.own_only) {
            None
        } else {
            self.tiers(&user.group, model)
        };
        Route { own, shared }
    }

    /// Models a user can reach (their group's, and their own channels'), sorted.
    pub fn models_for_user(&self, user: &UserEntry) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        if user.managed.is_none_or(|m| !m.own_only) {
            v = self.models_for_group(&user.group);
        }
        if user.managed.is_some()
            && let Some(own) = self.own_routes.get(&user.id)
        {
            v.extend(own.keys().map(String::as_str));
            v.sort_unstable();
            v.dedup();
        }
        v
    }

    /// Models a group can reach, sorted.
    pub fn models_for_group(&self, group: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .routes
            .get(group)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

/// The setting that holds the fallback chains, as JSON `{model: [models]}`.
pub const FALLBACKS_SETTING: &str = "model_fallbacks";

/// Wallets by id, and channels' failure runs and key turns, kept across
/// snapshots.
#[derive(Default)]
pub struct Wallets {
    users: Mutex<HashMap<i64, Arc<Wallet>>>,
    keys: Mutex<HashMap<i64, Arc<Wallet>>>,
    channel_failures: Mutex<HashMap<i64, Arc<std::sync::atomic::AtomicU32>>>,
    channel_turns: Mutex<HashMap<i64, Arc<AtomicUsize>>>,
}

fn wallet_for(map: &Mutex<HashMap<i64, Arc<Wallet>>>, id: i64, committed: i64) -> Arc<Wallet> {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    let w = m
        .entry(id)
        .or_insert_with(|| Arc::new(Wallet::new(committed)))
        .clone();
    w.refresh(committed);
    w
}

impl Wallets {
    pub fn user(&self, id: i64) -> Option<Arc<Wallet>> {
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}

fn decimal_or_one(s: &str) -> Decimal {
    billing::parse_decimal(s).unwrap_or(Decimal::ONE)
}

fn channel_entry(
    c: &ChannelRow,
    cfg: &crate::RelayConfig,
    failures: Arc<std::sync::atomic::AtomicU32>,
    next_key: Arc<AtomicUsize>,
) -> ChannelEntry {
    let client = if c.proxy_url.is_empty() {
        None
    } else {
        match crate::upstream::Client::with_proxy(cfg, &c.proxy_url) {
            Ok(cl) => Some(cl),
            Err(e) => {
                tracing::error!(channel = c.id, error = %e, "the channel's proxy is unusable; calling directly");
                None
            }
        }
    };
    ChannelEntry {
        id: c.id,
        name: c.name.clone(),
        kind: c.kind.clone(),
        base_url: c.base_url.trim_end_matches('/').to_string(),
        keys: c
            .api_keys
            .iter()
            .filter(|k| !c.disabled_keys.contains_key(&key_tag(k)))
            .cloned()
            .collect(),
        all_keys: c.api_keys.clone(),
        next_key,
        mapping: c
            .model_mapping
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect(),
        models: c.models.clone(),
        priority: c.priority,
        weight: c.weight.clamp(0, u32::MAX as i64) as u32,
        status: c.status,
        tripped: std::sync::atomic::AtomicBool::new(false),
        failures,
        client,
        timeout_secs: c.timeout_secs.max(0) as u64,
        headers: c
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                    http::HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect(),
        api_version: c.api_version.clone(),
        native_responses: c.native_responses,
        refused: std::sync::atomic::AtomicU64::new(0),
        urls: Mutex::default(),
    }
}

/// A channel entry outside any snapshot (to test a disabled channel).
pub fn entry_for_test(c: &ChannelRow, cfg: &crate::RelayConfig) -> ChannelEntry {
    channel_entry(c, cfg, Arc::default(), Arc::default())
}

/// The key turn counter of a channel, kept across snapshots.
fn turns_of(wallets: &Wallets, c: &ChannelRow) -> Arc<AtomicUsize> {
    wallets
        .channel_turns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(c.id)
        .or_default()
        .clone()
}

/// The failure run of a channel, kept across snapshots; a channel that is
/// not enabled starts a fresh run when it comes back.
fn failures_of(wallets: &Wallets, c: &ChannelRow) -> Arc<std::sync::atomic::AtomicU32> {
    let failures = wallets
        .channel_failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(c.id)
        .or_default()
        .clone();
    if c.status != 1 {
        failures.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    failures
}

/// Files a channel under each of its models, in the tier of its priority.
fn add_to_tiers(
    by_model: &mut HashMap<String, Vec<Tier>>,
    entry: &Arc<ChannelEntry>,
    models: &[String],
) {
    for m in models {
        let ts = by_model.entry(m.clone()).or_default();
        match ts.iter_mut().find(|t| t.priority == entry.priority) {
            Some(t) => t.channels.push(entry.clone()),
            None => ts.push(Tier {
                priority: entry.priority,
                channels: vec![entry.clone()],
            }),
        }
    }
}

/// Builds a snapshot from the database. Must run on the storage writer
/// (it refreshes wallets from committed values).
pub async fn load(
    store: &Store,
    wallets: &Wallets,
    cfg: &crate::RelayConfig,
) -> storage::Result<Snapshot> {
    let groups: HashMap<String, Decimal> = store
        .groups()
        .await?
        .into_iter()
        .map(|g| (g.name, decimal_or_one(&g.ratio)))
        .collect();
    let mut snap = Snapshot::default();
    for u in store.users().await? {
        let wallet = wallet_for(&wallets.users, u.id, u.balance);
        let ratio = groups.get(&u.group).copied().unwrap_or(Decimal::ONE);
        let managed = (u.role == accounts::ROLE_USER_ROOT).then(|| Managed {
            own_only: u.managed_route == "own_only",
            fee: billing::parse_decimal(&u.platform_fee).unwrap_or(Decimal::ZERO),
        });
        snap.users.insert(
            u.id,
            Arc::new(UserEntry {
                id: u.id,
                username: u.username,
                enabled: u.status == 1,
                group: u.group,
                ratio,
                wallet,
                managed,
                limits: u.limits,
            }),
        );
    }
    for k in store.api_keys(None).await? {
        if k.status < 0 {
            continue;
        }
        let Ok(raw) = hex::decode(&k.key_hash) else {
            continue;
        };
        let Ok(digest) = <[u8; 32]>::try_from(raw.as_slice()) else {
            continue;
        };
        let budget = if k.quota_limit >= 0 {
            Some(wallet_for(&wallets.keys, k.id, k.quota_limit - k.used))
        } else {
            None
        };
        let ips = IpAllowList::parse(&k.allowed_ips).unwrap_or_default();
        snap.keys.insert(
            digest,
            Arc::new(KeyEntry {
                id: k.id,
                user_id: k.user_id,
                name: k.name,
                enabled: k.status == 1,
                expires_at: k.expires_at,
                allowed_models: if k.allowed_models.is_empty() {
                    None
                } else {
                    Some(k.allowed_models.into_iter().collect())
                },
                ips,
                budget,
                limits: k.limits,
            }),
        );
    }
    let mut tiers: HashMap<String, HashMap<String, Vec<Tier>>> = HashMap::new();
    for c in store.channels().await? {
        if c.status == 0 {
            continue;
        }
        let entry = Arc::new(channel_entry(
            &c,
            cfg,
            failures_of(wallets, &c),
            turns_of(wallets, &c),
        ));
        snap.channels.insert(c.id, entry.clone());
        if c.status != 1 || entry.keys.is_empty() {
            for g in &c.groups {
                for m in &c.models {
                    snap.unavailable.insert((g.clone(), m.clone()));
                }
            }
            continue;
        }
        for g in &c.groups {
            add_to_tiers(tiers.entry(g.clone()).or_default(), &entry, &c.models);
        }
    }
    // managed users' own channels: routed by owner, not by group
    let mut own: HashMap<i64, HashMap<String, Vec<Tier>>> = HashMap::new();
    for c in store.user_channels(None).await? {
        let owner_managed = snap
            .users
            .get(&c.owner_id)
            .is_some_and(|u| u.managed.is_some());
        if !owner_managed || !(c.status == 1 || c.status == 2) {
            continue;
        }
        let entry = Arc::new(channel_entry(
            &c,
            cfg,
            failures_of(wallets, &c),
            turns_of(wallets, &c),
        ));
        snap.channels.insert(c.id, entry.clone());
        if c.status != 1 || entry.keys.is_empty() {
            for m in &c.models {
                snap.own_unavailable.insert((c.owner_id, m.clone()));
            }
            continue;
        }
        add_to_tiers(own.entry(c.owner_id).or_default(), &entry, &c.models);
    }
    for by_model in tiers.values_mut().chain(own.values_mut()) {
        for ts in by_model.values_mut() {
            ts.sort_by_key(|t| std::cmp::Reverse(t.priority));
        }
    }
    snap.own_unavailable
        .retain(|(o, m)| own.get(o).is_none_or(|ms| !ms.contains_key(m)));
    snap.own_routes = own;
    snap.unavailable
        .retain(|(g, m)| tiers.get(g).is_none_or(|ms| !ms.contains_key(m)));
    snap.routes = tiers;
    if let Some(text) = store.setting(FALLBACKS_SETTING).await? {
        match serde_json::from_str(&text) {
            Ok(f) => snap.fallbacks = f,
            Err(e) => tracing::warn!(error = %e, "ignoring unreadable model fallbacks"),
        }
    }
    for p in store.prices().await? {
        match Price::parse(&p.input, &p.output, &p.cached_input)
            .and_then(|price| price.with_per_call(&p.per_call))
            .and_then(|price| price.with_cache_write(&p.cache_write))
        {
            Ok(price) => {
                snap.prices.insert(p.model, price);
            }
            Err(e) => tracing::warn!(model = %p.model, error = %e, "ignoring unreadable price"),
        }
    }
    Ok(snap)
}

/// Picks the order in which to try channels: tiers best first; inside a
/// tier, a weighted random order without replacement.
pub fn candidate_order(tiers: &[Tier], limit: usize) -> Vec<Arc<ChannelEntry>> {
    use rand::Rng;
    let mut out = Vec::with_capacity(limit.min(8));
    let mut rng = rand::rng();
    for t in tiers {
        let mut pool: Vec<&Arc<ChannelEntry>> = t
            .channels
            .iter()
            .filter(|c| !c.tripped.load(Ordering::Relaxed))
            .collect();
        while !pool.is_empty() && out.len() < limit {
            let total: u64 = pool.iter().map(|c| u64::from(c.weight.max(1))).sum();
            let mut r = rng.random_range(0..total);
            let mut idx = 0;
            for (i, c) in pool.iter().enumerate() {
                let w = u64::from(c.weight.max(1));
                if r < w {
                    idx = i;
                    break;
                }
                r -= w;
            }
            out.push(pool.swap_remove(idx).clone());
        }
        if out.len() >= limit {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(id: i64, priority: i64, weight: u32) -> Arc<ChannelEntry> {
        Arc::new(ChannelEntry {
            id,
            name: format!("c{id}"),
            kind: "openai".into(),
            base_url: String::new(),
            keys: vec!["a".into(), "b".into()],
            all_keys: vec!["a".into(), "b".into()],
            next_key: Arc::default(),
            mapping: HashMap::new(),
            models: vec![],
            priority,
            weight,
            status: 1,
            tripped: std::sync::atomic::AtomicBool::new(false),
            failures: Arc::default(),
            client: None,
            timeout_secs: 0,
            headers: vec![],
            api_version: String::new(),
            native_responses: false,
            refused: std::sync::atomic::AtomicU64::new(0),
            urls: Mutex::default(),
        })
    }

    #[test]
    fn targets_carry_the_host_header_and_are_reused() {
        let cases = [
            (
                "http://127.0.0.1:8080/v1",
                "/chat/completions",
                "127.0.0.1:8080",
            ),
            (
                "https://api.openai.com/v1",
                "/chat/completions",
                "api.openai.com",
            ),
            (
                "https://api.example.com:443/v1",
                "/embeddings",
                "api.example.com",
            ),
            (
                "http://[::1]:9000/v1",
                "/models/gemini-2.0-flash:generateContent",
                "[::1]:9000",
            ),
            (
                "https://Bücher.example/v1",
                "/x?api-version=1",
                "xn--bcher-kva.example",
            ),
        ];
        for (base, path, host) in cases {
            let mut c = Arc::into_inner(ch(1, 0, 1)).unwrap();
            c.base_url = base.into();
            let t = c.url(path).unwrap();
            assert_eq!(t.host, host, "{base}{path}");
            assert!(t.uri.to_string().ends_with(path), "{}", t.uri);
            // the second call is answered from the cache, identically
            let again = c.url(path).unwrap();
            assert_eq!((again.uri, again.host), (t.uri, t.host));
        }
        let mut c = Arc::into_inner(ch(1, 0, 1)).unwrap();
        c.base_url = "not a url".into();
        assert!(c.url("/chat/completions").is_err());
    }

    #[test]
    fn order_tries_best_tier_first_then_the_rest() {
        let tiers = vec![
            Tier {
                priority: 10,
                channels: vec![ch(1, 10, 1), ch(2, 10, 1)],
            },
            Tier {
                priority: 0,
                channels: vec![ch(3, 0, 1)],
            },
        ];
        for _ in 0..20 {
            let o = candidate_order(&tiers, 10);
            let ids: Vec<i64> = o.iter().map(|c| c.id).collect();
            assert_eq!(ids.len(), 3);
            assert!(ids[..2].contains(&1) && ids[..2].contains(&2));
            assert_eq!(ids[2], 3);
        }
        assert_eq!(candidate_order(&tiers, 1).len(), 1);
    }

    #[test]
    fn weights_bias_the_first_pick() {
        let tiers = vec![Tier {
            priority: 0,
            channels: vec![ch(1, 0, 9), ch(2, 0, 1)],
        }];
        let firsts = (0..2000)
            .filter(|_| candidate_order(&tiers, 2)[0].id == 1)
            .count();
        // expected 1800; a uniform pick would give ~1000
        assert!(firsts > 1600 && firsts < 1950, "{firsts}");
    }

    #[test]
    fn keys_rotate() {
        let c = ch(1, 0, 1);
        assert_eq!(c.next_key(), "a");
        assert_eq!(c.next_key(), "b");
        assert_eq!(c.next_key(), "a");
    }
}
