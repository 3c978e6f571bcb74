//! # guard — autoban, rate limits, concurrency and budgets (issue #6)
//!
//! One [`Guard`] per process answers the abuse questions of the HTTP layer and the relay:
//! *is this IP banned?*, *count this request*, *may this key send one more request?* It keeps its
//! state in-process ([`MemoryStore`], single node) or in Redis ([`RedisStore`], every node sees the
//! same counters and bans). Both run the same logic — the Redis side as atomic Lua scripts — and
//! the same test suite runs against both.
//!
//! ## Building one
//!
//! ```no_run
//! # async fn demo() -> Result<(), guard::GuardError> {
//! use guard::{Guard, GuardConfig, RedisSettings, RedisStore};
//! let config = GuardConfig::default(); // serde: the gateway reads it from its config file
//! let guard = match std::env::var("REDIS_URL") {
//!     // `connect` waits for the first connection; `connect_lazy` starts disconnected (fail open).
//!     Ok(url) => Guard::with_redis(config, RedisStore::connect(&url, RedisSettings::default()).await?)?,
//!     Err(_) => Guard::memory(config)?,
//! };
//! # Ok(()) }
//! ```
//!
//! [`Guard::builder`] also takes an injectable [`Clock`] (tests use [`ManualClock`]) and any
//! [`GuardStore`] (e.g. an instrumented wrapper).
//!
//! ## Wiring it in (for the HTTP layer and the relay)
//!
//! Client IPs must come from the trusted-proxy rule of the core, never from a raw header.
//!
//! | where | call | on refusal |
//! |---|---|---|
//! | every request, first | [`Guard::check_ip`] → `Option<Ban>` | 403 (or 429) with `retry-after: ban.retry_after_secs` |
//! | credential endpoints (sign-in, register, reset, e-mail code) | [`Guard::note_credential_attempt`] | [`Verdict::Banned`] → refuse |
//! | rest of `/api/*` | [`Guard::note_api_request`]`(ip, session_user_id)` | `Banned` (anonymous) or `Limited` (user allowance) → 429 |
//! | relay: API key not found | [`Guard::note_unknown_key`] | `Banned` → refuse |
//! | relay: key found, before the upstream call | [`Guard::acquire`]`(key_id, user_id, &limits)` → [`Permit`] | [`Deny`] → 429 + `retry-after: deny.retry_after_secs` |
//! | relay: after the answer / stream end | [`Guard::finish`]`(permit, …, usage)` (frees the slot, records tokens and cost); a request that ends without an answer just drops the `Permit` | — |
//! | relay: result | [`Guard::note_relay_result`]`(ip, RelayStatus::…)` | `Banned` → (the next request is refused) |
//! | admin | [`Guard::bans`], [`Guard::unban`] | — |
//! | `/metrics` | [`Guard::metrics`] | — |
//!
//! Every [`Verdict`] and [`Deny`] carries the seconds for `retry-after`
//! ([`Verdict::retry_after_secs`]). The request that crosses a ban threshold is the first one
//! refused. [`Limits`] are built per request from the key's and the user's settings (`None` or
//! `Some(0)` = unlimited); a budget check that should not cost an extra round trip rides along in
//! `acquire` (`limits.key_budget` + `limits.spend_estimate`); [`Guard::check_budget`] and
//! [`Guard::record_spend`] do it separately.
//!
//! ## Rules (defaults in [`GuardConfig::default`], every duration configurable in seconds)
//!
//! * **Credential**: more than 30 per IP per hour → banned 3 h.
//! * **API**: more than 300 anonymous `/api/*` requests per IP per hour → 1 h. A signed-in
//!   session's requests count per user instead (3000/h): over it the user gets 429s until the
//!   window ends, and nobody is banned.
//! * **Unknown key**: more than 50 unknown API keys per IP per hour → 1 h.
//! * **Relay quota**: the 100th consecutive "insufficient quota" answer to one IP → 1 h. A success
//!   ends the run; so do `window_secs` without a failure. Other failures are neutral.
//! * **Tiers**: a ban issued within `tier_window_secs` after the previous ban of the same IP ended
//!   is one tier up: `ban_secs × tier_multipliers[tier-1]` (1 h → 6 h → 24 h by default; the last
//!   multiplier repeats). Outside the window it starts again at tier 1.
//! * **Allowlist**: CIDRs (or addresses) that are never counted nor banned.
//! * **IPv6**: counted and banned per /64 by default (`ipv6_prefix_len`); IPv4-mapped addresses
//!   count as IPv4.
//! * Counting windows are fixed windows that start at the first event (one counter, one TTL).
//!
//! ## Limits
//!
//! * **RPM** is a GCRA ("generic cell rate"): up to `rpm` requests at once, then one every
//!   `60/rpm` s; a refusal says exactly when the next one passes. Rates above 60 000/min round to
//!   that (1 ms resolution).
//! * **TPM** uses the same state per key/user: [`Guard::record_usage`] pushes it forward by
//!   `tokens × 60/tpm` s; `acquire` refuses while a full minute's allowance is used, with the exact
//!   wait. A request that used five minutes' worth blocks for about four.
//! * **Concurrency**: a lease per request in a set per key/user, expiring `lease_ttl_secs` after
//!   its last renewal (held permits renew every third of it), so the slots of a crashed node free
//!   themselves. Its `retry-after` is `concurrency_retry_after_secs` (or sooner if the oldest lease
//!   expires sooner).
//! * **Budget** per key: refused when `spent + estimate > limit` (or when it is used up);
//!   `retry-after` = until the period starts over. Periods are calendar-aligned in UTC
//!   ([`BudgetPeriod`]: day, ISO week from Monday, month).
//!
//! ## Cost on the request path
//!
//! *No benchmark here; this is by construction, and a test counts the store calls.*
//!
//! * [`Guard::note_relay_result`] with `Success` — the path of nearly every relay request — is
//!   **one atomic load** when this node has no open failure run: no lock, no allocation, no store
//!   call, no Redis round trip. When some IP has an open run on this node, it is one uncontended
//!   mutex + one hash lookup; only the IP that had the run pays one store call (once) to reset it.
//! * [`Guard::check_ip`] is a hash lookup in the local cache; a miss (at most one per IP per
//!   `ban_cache_ttl_secs`) is one `HMGET`. Allowlisted IPs: a scan of the allowlist only.
//! * [`Guard::acquire`] is one script call when any limit applies, none otherwise;
//!   [`Guard::finish`] one when a slot, TPM or a budget applies (release and record together);
//!   dropping a [`Permit`] with a slot instead spawns one release call.
//! * Each `note_*` that counts is one script call.
//!
//! ## Redis: atomicity, outages, multi-node
//!
//! Every operation is one Lua script (`EVALSHA`; on `NOSCRIPT`, e.g. after a Redis restart, the
//! script is loaded and retried) or one command; keys carry TTLs, so nothing outlives its window.
//! Scripts take the time from the guard's clock (nodes need NTP-synchronized clocks; windows are
//! seconds to hours, so milliseconds of skew do not matter).
//!
//! When Redis is unreachable the guard **fails open**: checks answer "not banned", notes answer
//! `Allow`, `acquire` returns a permit without a slot. Each failure counts in
//! [`GuardMetrics::redis_errors`] and each such decision in [`GuardMetrics::fail_open`]; a warning
//! is logged at most once per `error_log_interval_secs`. The store does not wait on a dead Redis:
//! the first failing call drops the connection and starts one background reconnect task
//! (exponential backoff, [`RedisSettings`]); until it succeeds calls fail at once. Admin calls
//! ([`Guard::bans`], [`Guard::unban`], [`Guard::budget_status`]) return the error instead.
//!
//! With several nodes, new bans and unbans reach the others at once through pub/sub
//! ([`PubSub`]): their cached answer for that address is dropped, and a subscriber that lost its
//! connection flushes the ban cache when it is back; `ban_cache_ttl_secs` is the safety net. The relay failure run is reset by a success only on a node that saw a failure
//! of that run (the local set of open runs is per node), as issue #6 specifies.
//!
//! [`PubSub`] is also meant for the other caches of the gateway (keys, users, channels, prices):
//! `publish(channel, msg)` and a subscriber that calls back on every message and sends
//! [`BusEvent::Reconnected`] after a reconnection ("flush your caches").

mod calendar;
mod clock;
mod config;
mod error;
mod guard;
pub mod pubsub;
pub mod store;
mod types;

pub use calendar::BudgetPeriod;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{AllowanceConfig, GuardConfig, RedisSettings, RuleConfig};
pub use error::GuardError;
pub use guard::{Guard, GuardBuilder, Permit};
pub use pubsub::{BusEvent, PubSub, Subscription};
pub use store::{GuardStore, MemoryStore, RedisStore, StoreError};
pub use types::{
    Ban, Budget, BudgetStatus, Deny, DenyReason, GuardMetrics, Limits, RelayStatus, Rule,
    ScopeLimits, Usage, Verdict,
};
