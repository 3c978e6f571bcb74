//! The values that cross the [`Guard`](crate::Guard) API.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::calendar::BudgetPeriod;

/// The autoban rule that issued a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Too many requests to credential endpoints.
    Credential,
    /// Too many anonymous `/api/*` requests.
    Api,
    /// Too many unknown API keys on relay endpoints.
    UnknownKey,
    /// Too many consecutive "insufficient quota" answers on relay endpoints.
    RelayQuota,
}

impl Rule {
    /// All rules.
    pub const ALL: [Rule; 4] = [
        Rule::Credential,
        Rule::Api,
        Rule::UnknownKey,
        Rule::RelayQuota,
    ];

    /// The rule's stable name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Credential => "credential",
            Rule::Api => "api",
            Rule::UnknownKey => "unknown_key",
            Rule::RelayQuota => "relay_quota",
        }
    }

    /// A small integer, as stored in Redis.
    pub fn code(self) -> i64 {
        match self {
            Rule::Credential => 1,
            Rule::Api => 2,
            Rule::UnknownKey => 3,
            Rule::RelayQuota => 4,
        }
    }

    /// The inverse of [`Rule::code`].
    pub fn from_code(code: i64) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An active ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The banned client: an IP address, or an IPv6 network such as `2001:db8::/64`.
    pub subject: String,
    /// The rule that issued it.
    pub rule: Rule,
    /// The count that crossed the rule's limit.
    pub count: u64,
    /// When it was issued (ms since the epoch).
    pub since_ms: u64,
    /// When it ends (ms since the epoch).
    pub until_ms: u64,
    /// 1 for a first ban, 2 for a ban within the tier window after the previous one, …
    pub tier: u32,
    /// Seconds until it ends, rounded up, as of the moment this value was returned; use it as
    /// the `retry-after` header.
    pub retry_after_secs: u64,
}

impl Ban {
    pub(crate) fn with_retry(mut self, now_ms: u64) -> Ban {
        self.retry_after_secs = ceil_secs(self.until_ms.saturating_sub(now_ms));
        self
    }
}

/// Why a request was refused. Every deny carries the seconds until it can pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// The API key's requests per minute.
    KeyRpm,
    /// The user's requests per minute.
    UserRpm,
    /// The API key's tokens per minute.
    KeyTpm,
    /// The user's tokens per minute.
    UserTpm,
    /// The API key's concurrent requests.
    KeyConcurrency,
    /// The user's concurrent requests.
    UserConcurrency,
    /// The API key's spending budget for the current period.
    KeyBudget,
    /// The signed-in user's `/api/*` allowance.
    UserAllowance,
}

impl DenyReason {
    const ALL: [DenyReason; 8] = [
        DenyReason::KeyRpm,
        DenyReason::UserRpm,
        DenyReason::KeyTpm,
        DenyReason::UserTpm,
        DenyReason::KeyConcurrency,
        DenyReason::UserConcurrency,
        DenyReason::KeyBudget,
        DenyReason::UserAllowance,
    ];

    /// A small integer, as passed to the Redis scripts.
    pub fn code(self) -> i64 {
        match self {
            DenyReason::KeyRpm => 1,
            DenyReason::UserRpm => 2,
            DenyReason::KeyTpm => 3,
            DenyReason::UserTpm => 4,
            DenyReason::KeyConcurrency => 5,
            DenyReason::UserConcurrency => 6,
            DenyReason::KeyBudget => 7,
            DenyReason::UserAllowance => 8,
        }
    }

    /// The inverse of [`DenyReason::code`].
    pub fn from_code(code: i64) -> Option<DenyReason> {
        DenyReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The stable name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::KeyRpm => "key_rpm",
            DenyReason::UserRpm => "user_rpm",
            DenyReason::KeyTpm => "key_tpm",
            DenyReason::UserTpm => "user_tpm",
            DenyReason::KeyConcurrency => "key_concurrency",
            DenyReason::UserConcurrency => "user_concurrency",
            DenyReason::KeyBudget => "key_budget",
            DenyReason::UserAllowance => "user_allowance",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: answer 429 with `retry-after: {retry_after_secs}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason} exceeded, retry after {retry_after_secs}s")]
pub struct Deny {
    /// Seconds until the request can pass (at least 1), rounded up.
    pub retry_after_secs: u64,
    /// Which limit refused it. When several refuse, the one that lasts longest.
    pub reason: DenyReason,
}

/// The answer of the `note_*` methods of [`Guard`](crate::Guard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Go on. Also the answer when the store is unreachable (fail open).
    Allow,
    /// The IP is banned (maybe by this very request, which crossed the limit): refuse it, with
    /// `retry-after: {ban.retry_after_secs}`.
    Banned(Ban),
    /// A signed-in user went over the per-user allowance: refuse with 429; nobody is banned.
    Limited(Deny),
}

impl Verdict {
    /// `true` for [`Verdict::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allow)
    }

    /// The seconds to put in `retry-after`, if refused.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Verdict::Allow => None,
            Verdict::Banned(b) => Some(b.retry_after_secs),
            Verdict::Limited(d) => Some(d.retry_after_secs),
        }
    }
}

/// How a relay request ended, as far as the autoban is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayStatus {
    /// A 2xx answer: ends the IP's failure run (free unless this node saw a run open).
    Success,
    /// The gateway refused for lack of balance/quota ("insufficient quota"): extends the run.
    InsufficientQuota,
    /// Any other failure (bad request, upstream error, …): neither extends nor ends the run.
    OtherFailure,
}

/// Limits of one scope (an API key or a user). `None` = unlimited, no store work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScopeLimits {
    /// Requests per minute. Enforced as a smooth rate (GCRA) with a burst of the full minute:
    /// `rpm` requests may come at once, then one every `60/rpm` seconds.
    pub rpm: Option<u64>,
    /// Tokens per minute. Checked at `acquire` (refused while the tokens recorded over the last
    /// minute's worth of allowance are used up), recorded after the request with
    /// [`Guard::record_usage`](crate::Guard::record_usage).
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u64>,
}

impl ScopeLimits {
    /// `true` when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.concurrency.is_none()
    }
}

/// A spending budget (money units, as in the billing crate) that starts over every period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Units that may be spent per period.
    pub limit: u64,
    /// Calendar period (UTC).
    pub period: BudgetPeriod,
}

/// The limits of one request, read by the caller from the key's and the user's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Limits of the API key.
    pub key: ScopeLimits,
    /// Limits of the key's owner (all their keys together).
    pub user: ScopeLimits,
    /// The API key's spending budget.
    pub key_budget: Option<Budget>,
    /// Upper bound of what this request may cost, checked against `key_budget` by `acquire`
    /// ("would spending this exceed the budget?"). 0 still refuses once the budget is used up.
    pub spend_estimate: u64,
}

/// What a finished request used, for [`Guard::record_usage`](crate::Guard::record_usage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens (input + output) counted against the key's and the user's TPM.
    pub tokens: u64,
    /// Money units counted against the key's budget.
    pub spend: u64,
}

/// Counters exported for `/metrics`. Counted by this node since its `Guard` was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GuardMetrics {
    /// Calls made to the store (each one Redis round trip with the Redis store).
    pub store_calls: u64,
    /// Store calls that failed (Redis unreachable, timed out, or answered an error).
    pub redis_errors: u64,
    /// Decisions taken as "allow" because the store failed.
    pub fail_open: u64,
    /// Bans issued by this node.
    pub bans_issued: u64,
    /// Requests refused by limits, allowances or budgets (bans not included).
    pub denials: u64,
    /// Successful reconnections of the Redis store (0 without Redis).
    pub redis_reconnects: u64,
    /// Whether the Redis store currently holds a connection (`None` without Redis).
    pub redis_connected: Option<bool>,
}

/// Budget state of one key, for dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetStatus {
    /// Units spent in the current period.
    pub spent: u64,
    /// The budget's limit.
    pub limit: u64,
    /// Start of the current period (ms since the epoch).
    pub period_start_ms: u64,
    /// When the budget starts over (ms since the epoch).
    pub resets_at_ms: u64,
}

/// Milliseconds → whole seconds, rounded up, at least 1.
pub(crate) fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// The unit that is counted and banned: an IPv4 address, or an IPv6 address masked to the
/// configured prefix (a whole /128 prints as the bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Subject {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Subject {
    pub(crate) fn of(ip: IpAddr, v6_prefix: u8) -> Subject {
        match canonical(ip) {
            IpAddr::V4(v4) => Subject {
                addr: IpAddr::V4(v4),
                prefix: 32,
            },
            IpAddr::V6(v6) => {
                let prefix = v6_prefix.min(128);
                let bits = u128::from(v6);
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(prefix))
                };
                Subject {
                    addr: IpAddr::V6(Ipv6Addr::from(bits & mask)),
                    prefix,
                }
            }
        }
    }

    /// Parses what [`Subject`]'s `Display` writes, or any IP address / network, normalizing it the
    /// way the guard counts it.
    pub(crate) fn parse(s: &str, v6_prefix: u8) -> Option<Subject> {
        let s = s.trim();
        if let Ok(ip) = IpAddr::from_str(s) {
            return Some(Subject::of(ip, v6_prefix));
        }
        let net = IpNet::from_str(s).ok()?;
        match net {
            IpNet::V4(n) => Some(Subject::of(IpAddr::V4(n.addr()), 32)),
            IpNet::V6(n) => Some(Subject::of(IpAddr::V6(n.addr()), n.prefix_len())),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) if self.prefix >= 128 => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/{}", self.prefix),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, as a dual-stack listener reports them) are the
/// IPv4 client they stand for.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses an allowlist entry: a CIDR or a bare address.
pub(crate) fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = IpNet::from_str(s) {
        return Some(net.trunc());
    }
    let ip = canonical(IpAddr::from_str(s).ok()?);
    Some(IpNet::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_normalize() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(Subject::of(v4, 64).to_string(), "203.0.113.7");
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(Subject::of(mapped, 64), Subject::of(v4, 64));
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(Subject::of(v6, 64).to_string(), "2001:db8:1:2::/64");
        assert_eq!(Subject::of(v6, 128).to_string(), "2001:db8:1:2:3:4:5:6");
        assert_eq!(
            Subject::parse("2001:db8:1:2::/64", 64),
            Some(Subject::of(v6, 64))
        );
        assert_eq!(
            Subject::parse("2001:db8:1:2:ffff::1", 64),
            Some(Subject::of(v6, 64))
        );
        assert_eq!(Subject::parse("203.0.113.7", 64), Some(Subject::of(v4, 64)));
        assert_eq!(Subject::parse("nonsense", 64), None);
    }

    #[test]
    fn allowlist_entries_parse() {
        assert_eq!(
            parse_net("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8".to_owned()
        );
        assert_eq!(parse_net("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("10.0.0.0/33").is_none());
    }

    #[test]
    fn ceil_secs_rounds_up_to_at_least_one() {
        assert_eq!(ceil_secs(0), 1);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1000), 1);
        assert_eq!(ceil_secs(1001), 2);
    }

    #[test]
    fn codes_round_trip() {
        for r in Rule::ALL {
            assert_eq!(Rule::from_code(r.code()), Some(r));
        }
        for r in DenyReason::ALL {
            assert_eq!(DenyReason::from_code(r.code()), Some(r));
        }
    }
}
