//! Persistence for the gateway: one portable SQL subset over SQLite and
//! PostgreSQL (sqlx `Any`), the migrations of both backends, and the grouped
//! write of settled requests.
//!
//! Invariants kept here:
//! - every change to `users.balance` happens in one statement or transaction
//!   together with its ledger entry (a `ledger` row, or for consumption the
//!   request's `logs` row), so `balance = sum(ledger) - sum(logs.cost)`;
//! - money and times are BIGINT (units of 1/1,000,000 USD; epoch ms), which
//!   decode the same way on both backends.

mod accounts;
mod catalog;
mod migrate;
mod payments;
mod records;
mod stats;
mod store;

pub use catalog::{CatalogDoc, CatalogEntry, CatalogPrice};
pub use payments::{
    CallbackFilter, NewPaymentCallback, NewPaymentOrder, OrderCompletion, OrderFilter, OrderRefund,
    PaymentCallback, PaymentOrder, Redemption, RedemptionBatch, RedemptionCode,
};
pub use records::*;
pub use stats::{ChannelBucket, ModelExtras, StatsRange, UsageBucket, UsageGrouping};
pub use store::{Backend, Store};

/// Errors of the storage layer. Constraint violations that a person can fix
/// are told apart from other database failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("balance is too low for this change")]
    InsufficientBalance,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration {name} failed: {source}")]
    Migration { name: String, source: sqlx::Error },
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://…")]
    BadUrl(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
