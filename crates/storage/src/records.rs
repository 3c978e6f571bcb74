//! Rows as the rest of the gateway sees them. List-valued columns (models,
//! groups, IPs, keys) are stored as newline- or comma-free JSON text so both
//! backends read them the same way.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: String,
    pub status: i64,
    pub group: String,
    pub balance: i64,
    pub used: i64,
    pub request_count: i64,
    pub created_at: i64,
    /// Lowercased; `None` for accounts without an e-mail address.
    pub email: Option<String>,
    pub email_verified: bool,
    pub display_name: String,
    /// Google's stable subject identifier of the linked Google account.
    pub google_id: Option<String>,
    #[serde(skip)]
    pub totp_secret: String,
    pub totp_enabled: bool,
    #[serde(skip)]
    pub totp_last_step: i64,
    /// ISO country code (or language region) recorded at sign-up.
    pub register_region: String,
    /// UI and e-mail language tag.
    pub language: String,
    /// Managed mode: `own_only` or `own_then_shared`.
    pub managed_route: String,
    /// Managed mode: multiplier (decimal text) on requests served by own channels.
    pub platform_fee: String,
    /// Epoch ms; sessions and access tokens created before it are void
    /// (password change or reset, sign-out everywhere).
    #[serde(skip)]
    pub auth_epoch: i64,
    /// Rate limits over all of the user's keys.
    pub limits: RateLimits,
}

#[derive(Clone, Debug, Default)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub group: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub display_name: String,
    pub google_id: Option<String>,
    pub register_region: String,
    pub language: String,
}

/// A management access token as lists show it (the secret is never kept).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AccessTokenRow {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    /// Epoch ms; 0 = never.
    pub expires_at: i64,
}

/// A dashboard session. Only the SHA-256 of the cookie value is stored.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SessionRow {
    pub id: i64,
    pub user_id: i64,
    #[serde(skip)]
    pub token_hash: String,
    /// The password was accepted; the second factor is still owed.
    pub mfa_pending: bool,
    pub ip: String,
    pub user_agent: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

/// A single-use e-mail link (`verify` or `reset`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailTokenRow {
    pub id: i64,
    pub user_id: i64,
    pub purpose: String,
    pub email: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: i64,
}

/// An OAuth sign-in in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthStateRow {
    pub state_hash: String,
    pub provider: String,
    /// `login` or `link`.
    pub purpose: String,
    /// The signed-in user for `link`; 0 for `login`.
    pub user_id: i64,
    pub nonce: String,
    pub pkce_verifier: String,
    pub region: String,
    pub language: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Rate limits of an API key or a user (`None` = unlimited); the budget
/// (units per calendar period: `daily`, `weekly`, `monthly`) is for keys.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<String>,
}

impl RateLimits {
    pub fn is_empty(&self) -> bool {
        *self == RateLimits::default()
    }
    pub fn to_text(&self) -> String {
        if self.is_empty() {
            String::new()
        } else {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
    pub fn from_text(s: &str) -> RateLimits {
        if s.is_empty() {
            RateLimits::default()
        } else {
            serde_json::from_str(s).unwrap_or_default()
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    #[serde(skip)]
    pub key_hash: String,
    /// The first and last characters of the key, for recognising it in lists.
    pub key_hint: String,
    pub status: i64,
    /// Epoch ms; 0 = never expires.
    pub expires_at: i64,
    /// Units the key may spend in total; -1 = unlimited.
    pub quota_limit: i64,
    pub used: i64,
    pub allowed_models: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub created_at: i64,
    #[serde(default)]
    pub limits: RateLimits,
}

#[derive(Clone, Debug, Default)]
pub struct NewApiKey {
    pub user_id: i64,
    pub name: String,
    pub key_hash: String,
    pub key_hint: String,
    pub expires_at: i64,
    pub quota_limit: i64,
    pub allowed_models: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub limits: RateLimits,
}

/// Fields of a key that can be changed after creation; `None` keeps a field.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyPatch {
    pub name: Option<String>,
    pub status: Option<i64>,
    pub expires_at: Option<i64>,
    pub quota_limit: Option<i64>,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub limits: Option<RateLimits>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    /// Upstream keys. Never returned by any API: see `ChannelView`.
    #[serde(skip_serializing)]
    pub api_keys: Vec<String>,
    pub models: Vec<String>,
    pub model_mapping: std::collections::BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub priority: i64,
    pub weight: i64,
    /// 1 enabled, 0 disabled by an operator, 2 disabled automatically.
    pub status: i64,
    pub created_at: i64,
    pub disabled_reason: String,
    pub disabled_at: i64,
    /// SHA-256 prefix (16 hex) of a disabled upstream key → the reason.
    pub disabled_keys: std::collections::BTreeMap<String, String>,
    /// e.g. `http://proxy:3128` or `socks5://…`; empty = direct.
    pub proxy_url: String,
    /// Upstream request timeout; 0 = the relay's default.
    pub timeout_secs: i64,
    /// Extra headers sent upstream.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Azure OpenAI `api-version`.
    pub api_version: String,
    /// The channel serves `/v1/responses` itself.
    pub native_responses: bool,
    /// 0 for the operator's channels; the managed user's id for their own.
    #[serde(default)]
    pub owner_id: i64,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    pub base_url: String,
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub model_mapping: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default = "default_weight")]
    pub weight: i64,
    #[serde(default)]
    pub proxy_url: String,
    #[serde(default)]
    pub timeout_secs: i64,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub native_responses: bool,
}

fn default_kind() -> String {
    "openai".into()
}
fn default_groups() -> Vec<String> {
    vec!["default".into()]
}
fn default_weight() -> i64 {
    1
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub api_keys: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub model_mapping: Option<std::collections::BTreeMap<String, String>>,
    pub groups: Option<Vec<String>>,
    pub priority: Option<i64>,
    pub weight: Option<i64>,
    pub status: Option<i64>,
    pub proxy_url: Option<String>,
    pub timeout_secs: Option<i64>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub api_version: Option<String>,
    pub native_responses: Option<bool>,
}

/// A model's price: decimal USD per million tokens, kept as text so no
/// binary float ever touches money.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PriceRow {
    pub model: String,
    pub input: String,
    pub output: String,
    /// Empty = same as `input`.
    pub cached_input: String,
    /// USD per call (decimal text); empty = none.
    #[serde(default)]
    pub per_call: String,
    /// USD per million cache-creation input tokens; empty = same as `input`.
    #[serde(default)]
    pub cache_write: String,
    pub updated_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupRow {
    pub name: String,
    pub ratio: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerRow {
    pub id: i64,
    pub user_id: i64,
    pub kind: String,
    pub amount: i64,
    pub reference: Option<String>,
    pub note: String,
    pub created_at: i64,
}

/// One relayed request, as logged. Its `cost` is the consumption entry of
/// the user's ledger.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogRecord {
    #[serde(default)]
    pub id: i64,
    pub request_id: String,
    pub user_id: i64,
    pub key_id: i64,
    pub channel_id: i64,
    pub endpoint: String,
    pub model: String,
    pub upstream_model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub cost: i64,
    pub latency_ms: i64,
    pub ttft_ms: i64,
    pub is_stream: bool,
    pub status: i64,
    pub estimated: bool,
    pub client_ip: String,
    pub error: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogFilter {
    pub user_id: Option<i64>,
    pub key_id: Option<i64>,
    pub model: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HourlyUsage {
    pub user_id: i64,
    pub model: String,
    /// Epoch ms of the start of the hour.
    pub hour: i64,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost: i64,
}

/// One user's line of `ledger check`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerCheckRow {
    pub user_id: i64,
    pub username: String,
    pub balance: i64,
    pub credited: i64,
    pub consumed: i64,
    pub used: i64,
}

impl LedgerCheckRow {
    /// Balance minus what the ledger says it should be; 0 when consistent.
    pub fn difference(&self) -> i64 {
        self.balance - (self.credited - self.consumed)
    }
    pub fn is_consistent(&self) -> bool {
        self.difference() == 0 && self.used == self.consumed
    }
}

/// A key whose `used` does not equal the sum of its logged costs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyCheckRow {
    pub key_id: i64,
    pub used: i64,
    pub consumed: i64,
}
