//! Money operations shared by the CLI and the management API. Each one is a
//! single database transaction with its ledger entry.

use storage::{LedgerCheckRow, PriceRow, StorageError, Store};

use crate::{Price, PriceError};

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Price(#[from] PriceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Invalid(String),
}

/// Credits (or with a negative amount, debits) a user's balance by
/// `units`, with a ledger entry of `kind` (`topup` or `adjust`).
pub async fn credit(
    store: &Store,
    user_id: i64,
    units: i64,
    kind: &str,
    reference: Option<&str>,
    note: &str,
) -> Result<i64, BillingError> {
    if units == 0 {
        return Err(BillingError::Invalid("the amount cannot be zero".into()));
    }
    if !matches!(kind, "topup" | "adjust" | "refund" | "redeem") {
        return Err(BillingError::Invalid(format!(
            "unknown ledger kind `{kind}`"
        )));
    }
    Ok(store
        .adjust_balance(user_id, units, kind, reference, note)
        .await?)
}

/// Sets a model's price (USD per million tokens, decimal text) and its
/// optional price per call (USD; empty = none).
pub async fn set_price(
    store: &Store,
    model: &str,
    input: &str,
    output: &str,
    cached_input: &str,
    per_call: &str,
) -> Result<(), BillingError> {
    if model.trim().is_empty() {
        return Err(BillingError::Invalid("model cannot be empty".into()));
    }
    Price::parse(input, output, cached_input)?.with_per_call(per_call)?;
    store
        .upsert_price(&PriceRow {
            model: model.to_string(),
            input: input.trim().to_string(),
            output: output.trim().to_string(),
            cached_input: cached_input.trim().to_string(),
            per_call: per_call.trim().to_string(),
            updated_at: 0,
        })
        .await?;
    Ok(())
}

pub async fn set_group_ratio(store: &Store, group: &str, ratio: &str) -> Result<(), BillingError> {
    if group.trim().is_empty() {
        return Err(BillingError::Invalid("group cannot be empty".into()));
    }
    crate::parse_decimal(ratio)?;
    store.upsert_group(group, ratio.trim()).await?;
    Ok(())
}

/// Seeds the default price table and the `default` group on first start.
pub async fn seed(store: &Store) -> Result<(), BillingError> {
    let rows: Vec<PriceRow> = crate::seed_prices()
        .iter()
        .map(|(m, i, o, c)| PriceRow {
            model: m.to_string(),
            input: i.to_string(),
            output: o.to_string(),
            cached_input: c.to_string(),
            per_call: crate::seed_per_call()
                .iter()
                .find(|(pm, _)| pm == m)
                .map(|(_, pc)| pc.to_string())
                .unwrap_or_default(),
            updated_at: 0,
        })
        .collect();
    store.seed_prices(&rows).await?;
    if store.groups().await?.is_empty() {
        store.upsert_group("default", "1").await?;
        store.upsert_group("vip", "0.8").await?;
    }
    Ok(())
}

/// The result of `ledger check`.
#[derive(Debug, serde::Serialize)]
pub struct LedgerReport {
    pub users: usize,
    pub inconsistent: Vec<LedgerCheckRow>,
    pub keys_inconsistent: Vec<storage::KeyCheckRow>,
}

impl LedgerReport {
    pub fn ok(&self) -> bool {
        self.inconsistent.is_empty() && self.keys_inconsistent.is_empty()
    }
}

pub async fn ledger_check(store: &Store) -> Result<LedgerReport, BillingError> {
    let rows = store.ledger_check().await?;
    let users = rows.len();
    let inconsistent = rows.into_iter().filter(|r| !r.is_consistent()).collect();
    Ok(LedgerReport {
        users,
        inconsistent,
        keys_inconsistent: store.key_check().await?,
    })
}
