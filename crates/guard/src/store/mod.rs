//! The storage interface under a [`Guard`](crate::Guard), and its two implementations.
//!
//! The `Guard` decides *what* to count (keys, limits, ban plans); a store applies one such
//! operation atomically: [`MemoryStore`] under a mutex, [`RedisStore`] as one Lua script (or one
//! plain command) — so every method of [`GuardStore`] is exactly one Redis round trip. The same
//! test suite runs against both.
//!
//! Keys are complete strings built by the `Guard` (prefix included); stores do not interpret them.

use std::future::Future;
use std::pin::Pin;

use crate::types::{Ban, DenyReason, Rule};

pub mod memory;
pub mod redis;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The boxed future every [`GuardStore`] method returns (object-safe async).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// Why a store operation failed. The `Guard` answers every such failure by failing open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No connection (Redis down, reconnecting, or timed out).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error.
    #[error("store error: {0}")]
    Backend(String),
    /// The store answered something the client did not expect.
    #[error("unexpected store reply: {0}")]
    Reply(String),
}

/// The keys of one subject's ban state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanKeys {
    /// The subject as shown to admins (`1.2.3.4`, `2001:db8::/64`).
    pub subject: String,
    /// The ban record.
    pub ban: String,
    /// The subject's tier memory.
    pub tier: String,
    /// The index of all bans (for listing).
    pub index: String,
}

/// What to do when a [`Hit`] crosses its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanPlan {
    /// Where the ban lives.
    pub keys: BanKeys,
    /// The rule issuing it.
    pub rule: Rule,
    /// Ban length at tier 1.
    pub base_ms: u64,
    /// Tier memory after a ban ends.
    pub tier_window_ms: u64,
    /// Multipliers per tier; the last repeats. Never empty.
    pub multipliers: Vec<u32>,
}

/// Count one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The counter.
    pub counter: String,
    /// Events allowed per window.
    pub limit: u64,
    /// Window length.
    pub window_ms: u64,
    /// `false`: the window starts at the first event (fixed). `true`: every event renews it (a
    /// run that ends after `window_ms` of silence).
    pub sliding: bool,
    /// Ban when over the limit (`None`: just report [`HitOutcome::OverLimit`]). When a plan is
    /// given and the subject is already banned, nothing is counted and the ban is returned.
    pub ban: Option<BanPlan>,
}

/// The result of a [`Hit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HitOutcome {
    /// Counted, within the limit.
    Counted {
        /// The count including this event.
        count: u64,
    },
    /// Over the limit, and the hit had no ban plan.
    OverLimit {
        /// The count including this event.
        count: u64,
        /// Until the window ends.
        reset_in_ms: u64,
    },
    /// The subject is banned: by this hit (`new`), or already.
    Banned {
        /// The ban (`retry_after_secs` left at 0; the `Guard` fills it in).
        ban: Ban,
        /// Issued by this hit.
        new: bool,
    },
}

/// A rate (GCRA) checked by [`AcquireRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCheck {
    /// Holds the theoretical arrival time (ms).
    pub key: String,
    /// Reported when this check refuses.
    pub reason: DenyReason,
    /// Emission interval to consume, ms (`ceil(period / limit)` for one request). 0: only check
    /// that some allowance is left (tokens, recorded later by [`RecordRequest`]).
    pub consume_ms: u64,
}

/// A concurrency slot set checked by [`AcquireRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCheck {
    /// The set of leases.
    pub key: String,
    /// Reported when this check refuses.
    pub reason: DenyReason,
    /// Leases allowed at once.
    pub limit: u64,
}

/// A budget checked by [`AcquireRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCheck {
    /// The period's spend counter.
    pub key: String,
    /// Units per period.
    pub limit: u64,
    /// Units this request may spend.
    pub amount: u64,
    /// When the period ends (the retry time of a refusal).
    pub period_end_ms: u64,
}

/// Check every limit of one request and, only if all pass, take them all (atomic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// The rate period (60 000 for per-minute limits).
    pub period_ms: u64,
    /// Rates to check (and consume, when `consume_ms > 0`).
    pub rates: Vec<RateCheck>,
    /// Slot sets to take a lease in.
    pub slots: Vec<SlotCheck>,
    /// The lease id to add to every slot set.
    pub lease_id: String,
    /// When the lease expires unless renewed.
    pub lease_expires_ms: u64,
    /// The `retry-after` of a full slot set, lowered when the oldest lease expires sooner.
    pub slot_retry_ms: u64,
    /// The budget to check.
    pub budget: Option<BudgetCheck>,
}

/// A refusal from [`GuardStore::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// The check that refused (the longest one when several refuse).
    pub reason: DenyReason,
    /// Until it can pass.
    pub retry_after_ms: u64,
}

/// A lease held in one or more slot sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Unique per acquisition.
    pub id: String,
    /// The slot sets holding it.
    pub keys: Vec<String>,
}

/// Add what a finished request used.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordRequest {
    /// `(key, ms)`: push each rate's theoretical arrival time forward.
    pub rates: Vec<(String, u64)>,
    /// Add to a spend counter.
    pub spend: Option<SpendAdd>,
}

/// An addition to a spend counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendAdd {
    /// The period's spend counter.
    pub key: String,
    /// Units to add.
    pub amount: u64,
    /// Keep the counter this long from now (past the period's end).
    pub ttl_ms: u64,
}

/// Atomic operations of the guard. Implemented by [`MemoryStore`] and [`RedisStore`]; wrap one
/// to instrument it (the tests count calls this way).
pub trait GuardStore: Send + Sync + 'static {
    /// The active ban in `keys.ban`, if any.
    fn get_ban<'a>(&'a self, keys: &'a BanKeys, now_ms: u64) -> StoreFuture<'a, Option<Ban>>;
    /// Counts one event; bans according to the hit's plan.
    fn hit<'a>(&'a self, hit: &'a Hit, now_ms: u64) -> StoreFuture<'a, HitOutcome>;
    /// Deletes a counter (ends a failure run).
    fn reset<'a>(&'a self, counter: &'a str) -> StoreFuture<'a, ()>;
    /// Active bans whose record key is `ban_prefix + subject`, at most `max`.
    fn list_bans<'a>(
        &'a self,
        index: &'a str,
        ban_prefix: &'a str,
        now_ms: u64,
        max: usize,
    ) -> StoreFuture<'a, Vec<Ban>>;
    /// Deletes a ban, its tier memory and the given counters. `true` if a ban was active.
    fn unban<'a>(
        &'a self,
        keys: &'a BanKeys,
        counters: &'a [String],
        now_ms: u64,
    ) -> StoreFuture<'a, bool>;
    /// Checks and takes the limits of one request; `Some` when refused (nothing taken).
    fn acquire<'a>(
        &'a self,
        req: &'a AcquireRequest,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<Denial>>;
    /// Moves a held lease's expiry to `expires_ms` (a lease that already expired stays gone).
    fn renew<'a>(&'a self, lease: &'a Lease, expires_ms: u64, now_ms: u64) -> StoreFuture<'a, ()>;
    /// Gives a lease back.
    fn release<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()>;
    /// Records what a request used.
    fn record<'a>(&'a self, req: &'a RecordRequest, now_ms: u64) -> StoreFuture<'a, ()>;
    /// Ends a request: gives its lease back and records what it used. One
    /// call where the store can (Redis: one script); this default does the
    /// two steps in turn.
    fn finish<'a>(
        &'a self,
        lease: &'a Lease,
        req: &'a RecordRequest,
        now_ms: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.release(lease).await?;
            self.record(req, now_ms).await
        })
    }
    /// Reads a spend counter (0 when absent).
    fn read_counter<'a>(&'a self, key: &'a str, now_ms: u64) -> StoreFuture<'a, u64>;
}

/// Ban length of `tier` (1-based).
pub(crate) fn ban_duration_ms(base_ms: u64, multipliers: &[u32], tier: u32) -> u64 {
    let idx = usize::try_from(tier.max(1) - 1)
        .unwrap_or(usize::MAX)
        .min(multipliers.len().saturating_sub(1));
    let m = multipliers.get(idx).copied().unwrap_or(1);
    base_ms.saturating_mul(u64::from(m))
}

#[cfg(test)]
mod tests {
    use super::ban_duration_ms;

    #[test]
    fn tiers_multiply_and_the_last_multiplier_repeats() {
        let m = [1, 6, 24];
        assert_eq!(ban_duration_ms(3_600_000, &m, 1), 3_600_000);
        assert_eq!(ban_duration_ms(3_600_000, &m, 2), 6 * 3_600_000);
        assert_eq!(ban_duration_ms(3_600_000, &m, 3), 24 * 3_600_000);
        assert_eq!(ban_duration_ms(3_600_000, &m, 9), 24 * 3_600_000);
        assert_eq!(ban_duration_ms(1000, &[], 2), 1000);
    }
}
