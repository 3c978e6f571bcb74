//! Configuration of a [`Guard`](crate::Guard). Every duration is in seconds.

use serde::{Deserialize, Serialize};

/// One autoban rule: more than `limit` events from one IP within `window_secs` bans the IP for
/// `ban_secs` (times the tier multiplier, see [`GuardConfig::tier_multipliers`]).
///
/// `limit = 0` switches the rule off (nothing is counted, no store call is made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Events allowed per window; the next one bans.
    pub limit: u64,
    /// Length of the counting window. For the fixed-window rules the window starts at the first
    /// event; for the relay failure run it is an idle timeout, renewed by every failure.
    pub window_secs: u64,
    /// Ban length at tier 1.
    pub ban_secs: u64,
}

impl RuleConfig {
    /// A rule.
    pub const fn new(limit: u64, window_secs: u64, ban_secs: u64) -> Self {
        Self {
            limit,
            window_secs,
            ban_secs,
        }
    }
}

/// A per-user allowance: more than `limit` requests within `window_secs` are refused (429 with
/// `retry-after` until the window ends); nobody is banned. `limit = 0` switches it off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowanceConfig {
    /// Requests allowed per window.
    pub limit: u64,
    /// Window length, starting at the first request.
    pub window_secs: u64,
}

/// Everything a [`Guard`](crate::Guard) needs to know. `Default` gives the production defaults of
/// issue #6; tests shrink the durations to seconds.
///
/// Deserializes from any serde format (TOML through figment in the gateway), with unknown fields
/// rejected and missing fields taken from the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Master switch of the autoban rules (`check_ip` and `note_*`). Limits and budgets
    /// (`acquire`, `record_usage`) are governed by the limits passed with each call.
    pub autoban: bool,
    /// Prefix of every Redis key and pub/sub channel (`{prefix}:ban:1.2.3.4`, …). Nodes that must
    /// see the same counters use the same prefix; tests use a unique one each.
    pub key_prefix: String,
    /// Networks that are never counted nor banned (CIDRs such as `10.0.0.0/8`, or bare addresses).
    pub allowlist: Vec<String>,
    /// IPv6 clients are counted and banned per network of this prefix length (a single subscriber
    /// usually holds a whole /64). 128 counts every address on its own.
    pub ipv6_prefix_len: u8,
    /// Sign-in, registration, password reset, e-mail code: default more than 30 per hour → 3 h.
    pub credential: RuleConfig,
    /// The rest of `/api/*` from clients without a session: default more than 300 per hour → 1 h.
    pub api: RuleConfig,
    /// `/api/*` requests of a signed-in session count here, per user, instead of per IP.
    pub api_per_user: AllowanceConfig,
    /// Unknown API keys presented on relay endpoints: default more than 50 per hour → 1 h.
    pub unknown_key: RuleConfig,
    /// Consecutive "insufficient quota" answers on relay endpoints: default the 100th in a row
    /// (limit 99) → 1 h. A success ends the run; the run also ends after `window_secs` without a
    /// failure.
    pub relay_quota: RuleConfig,
    /// A ban issued within this many seconds after the end of the previous ban of the same IP
    /// moves one tier up.
    pub tier_window_secs: u64,
    /// Ban length multipliers per tier: tier *n* bans for `ban_secs * tier_multipliers[n-1]`; the
    /// last entry repeats. Default `[1, 6, 24]`: 1 h → 6 h → 24 h for a 1 h rule.
    pub tier_multipliers: Vec<u32>,
    /// How long a node trusts its local answer to "is this IP banned" before asking the store
    /// again (default 30 s). With Redis, new bans and unbans reach the other nodes at once
    /// through pub/sub, and the cache is flushed after a reconnection; the TTL is the safety net.
    /// 0 = no cache.
    pub ban_cache_ttl_secs: u64,
    /// Concurrency leases expire this long after the last renewal, so the slots of a crashed node
    /// free themselves. Held permits renew every third of it.
    pub lease_ttl_secs: u64,
    /// The `retry-after` of a concurrency denial (no one knows when a slot frees; this is a hint),
    /// lowered when the oldest lease expires sooner.
    pub concurrency_retry_after_secs: u64,
    /// At most one "store unavailable, failing open" warning per this many seconds.
    pub error_log_interval_secs: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            autoban: true,
            key_prefix: "gap:guard".to_owned(),
            allowlist: Vec::new(),
            ipv6_prefix_len: 64,
            credential: RuleConfig::new(30, 3600, 3 * 3600),
            api: RuleConfig::new(300, 3600, 3600),
            api_per_user: AllowanceConfig {
                limit: 3000,
                window_secs: 3600,
            },
            unknown_key: RuleConfig::new(50, 3600, 3600),
            relay_quota: RuleConfig::new(99, 3600, 3600),
            tier_window_secs: 24 * 3600,
            tier_multipliers: vec![1, 6, 24],
            ban_cache_ttl_secs: 30,
            lease_ttl_secs: 60,
            concurrency_retry_after_secs: 1,
            error_log_interval_secs: 10,
        }
    }
}

/// How the Redis store connects and reconnects. Sub-second values matter here (a request must not
/// wait long on an unreachable Redis before failing open), so these are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Time allowed for one TCP connect + handshake.
    pub connect_timeout_ms: u64,
    /// Time allowed for one command or script; past it the call fails open.
    pub response_timeout_ms: u64,
    /// First delay between reconnect attempts; it doubles up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnect attempts.
    pub reconnect_max_ms: u64,
    /// The pub/sub subscriber pings this often to notice a silent dead connection.
    pub pubsub_ping_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 1000,
            response_timeout_ms: 500,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5000,
            pubsub_ping_ms: 15_000,
        }
    }
}
