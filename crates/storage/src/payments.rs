//! Payment orders, their raw callbacks, and redemption codes.
//!
//! Every change of money here is one transaction that moves the state of
//! the order (or code) with a conditional UPDATE and writes the ledger row
//! and the balance change beside it. The conditional UPDATE decides who
//! wins when two callbacks, two nodes or two users race: the loser's UPDATE
//! matches no row and nothing else happens. The ledger's unique reference
//! (`order_no`, `refund:<order_no>`, `redeem:<code id>`) is the second
//! guard.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, StorageError, Store, now_ms};

/// A top-up order. Money is integer: `amount` in units credited (1/1,000,000
/// USD), `money` in minor units of `currency` (fen, cents) charged.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentOrder {
    pub id: i64,
    pub order_no: String,
    pub user_id: i64,
    /// `epay` or `stripe`.
    pub provider: String,
    /// `alipay`, `wxpay`, `card`, …
    pub method: String,
    pub amount: i64,
    pub money: i64,
    /// Lowercase ISO code, e.g. `cny`, `usd`.
    pub currency: String,
    /// `pending`, `paid`, `failed` or `refunded`.
    pub status: String,
    /// The provider's id of the payment (epay trade_no, Stripe session id).
    pub trade_no: String,
    pub created_at: i64,
    pub paid_at: i64,
    pub refunded_at: i64,
    /// Who completed, failed or refunded the order, and why.
    pub note: String,
}

#[derive(Clone, Debug, Default)]
pub struct NewPaymentOrder {
    pub order_no: String,
    pub user_id: i64,
    pub provider: String,
    pub method: String,
    pub amount: i64,
    pub money: i64,
    pub currency: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct OrderFilter {
    pub user_id: Option<i64>,
    pub status: Option<String>,
    pub provider: Option<String>,
    pub order_no: Option<String>,
    /// From this time on, epoch ms (inclusive).
    pub since: Option<i64>,
    /// Up to this time, epoch ms (inclusive).
    pub until: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: Option<i64>,
}

/// A payment callback as it arrived, with what was made of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentCallback {
    pub id: i64,
    pub provider: String,
    /// The order it names, if any could be read from it.
    pub order_no: String,
    /// `GET` or `POST`.
    pub http_method: String,
    /// Request headers as a JSON object.
    pub headers: String,
    /// The raw query string (GET) or body (POST).
    pub body: String,
    /// `credited`, `duplicate`, `refused` or `ignored`.
    pub verdict: String,
    pub reason: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, Default)]
pub struct NewPaymentCallback {
    pub provider: String,
    pub order_no: String,
    pub http_method: String,
    pub headers: String,
    pub body: String,
    pub verdict: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CallbackFilter {
    pub order_no: Option<String>,
    pub provider: Option<String>,
    pub verdict: Option<String>,
    pub before_id: Option<i64>,
    pub limit: Option<i64>,
}

/// What [`Store::complete_order`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderCompletion {
    /// This call moved the order to `paid` and credited it.
    Credited {
        order: PaymentOrder,
        balance: i64,
    },
    /// The order was paid before (and may since have been refunded):
    /// nothing was done.
    AlreadyDone(PaymentOrder),
    NotFound,
}

/// What [`Store::refund_order`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderRefund {
    /// The order is `refunded` and its amount was taken off the balance.
    Refunded {
        order: PaymentOrder,
        balance: i64,
    },
    /// Only a paid order can be refunded; this one is in another state.
    NotPaid(PaymentOrder),
    /// The balance is lower than the amount to take back; nothing changed.
    InsufficientBalance {
        order: PaymentOrder,
        balance: i64,
    },
    NotFound,
}

/// A batch of redemption codes, with how many of them are used or disabled.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RedemptionBatch {
    pub id: i64,
    pub name: String,
    /// Units each code credits.
    pub quota: i64,
    pub count: i64,
    /// Epoch ms; 0 = never.
    pub expires_at: i64,
    pub created_by: i64,
    pub created_at: i64,
    pub used: i64,
    /// Unused codes that were disabled.
    pub disabled: i64,
}

/// A redemption code as lists show it: never the code itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RedemptionCode {
    pub id: i64,
    pub batch_id: i64,
    /// The first characters of the code, to tell codes apart.
    pub code_hint: String,
    pub quota: i64,
    pub expires_at: i64,
    /// 1 usable, 0 disabled.
    pub status: i64,
    /// The user who redeemed it; 0 = unused.
    pub used_by: i64,
    pub used_at: i64,
    pub created_at: i64,
}

/// What [`Store::redeem_code`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redemption {
    Redeemed {
        code_id: i64,
        quota: i64,
        balance: i64,
    },
    Unknown,
    /// Used before, by `by` (maybe the caller).
    Used {
        by: i64,
    },
    Expired,
    Disabled,
}

const ORDER_COLS: &str = "id, order_no, user_id, provider, method, amount, money, currency, status, \
     trade_no, created_at, paid_at, refunded_at, note";
const CALLBACK_COLS: &str =
    "id, provider, order_no, http_method, headers, body, verdict, reason, created_at";
const CODE_COLS: &str =
    "id, batch_id, code_hint, quota, expires_at, status, used_by, used_at, created_at";

fn order_row(r: &AnyRow) -> Result<PaymentOrder> {
    Ok(PaymentOrder {
        id: r.try_get("id")?,
        order_no: r.try_get("order_no")?,
        user_id: r.try_get("user_id")?,
        provider: r.try_get("provider")?,
        method: r.try_get("method")?,
        amount: r.try_get("amount")?,
        money: r.try_get("money")?,
        currency: r.try_get("currency")?,
        status: r.try_get("status")?,
        trade_no: r.try_get("trade_no")?,
        created_at: r.try_get("created_at")?,
        paid_at: r.try_get("paid_at")?,
        refunded_at: r.try_get("refunded_at")?,
        note: r.try_get("note")?,
    })
}

fn callback_row(r: &AnyRow) -> Result<PaymentCallback> {
    Ok(PaymentCallback {
        id: r.try_get("id")?,
        provider: r.try_get("provider")?,
        order_no: r.try_get("order_no")?,
        http_method: r.try_get("http_method")?,
        headers: r.try_get("headers")?,
        body: r.try_get("body")?,
        verdict: r.try_get("verdict")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
    })
}

fn code_row(r: &AnyRow) -> Result<RedemptionCode> {
    Ok(RedemptionCode {
        id: r.try_get("id")?,
        batch_id: r.try_get("batch_id")?,
        code_hint: r.try_get("code_hint")?,
        quota: r.try_get("quota")?,
        expires_at: r.try_get("expires_at")?,
        status: r.try_get("status")?,
        used_by: r.try_get("used_by")?,
        used_at: r.try_get("used_at")?,
        created_at: r.try_get("created_at")?,
    })
}

/// A ledger INSERT that reports a reused reference as `Conflict`.
async fn insert_ledger(
    conn: &mut sqlx::AnyConnection,
    user_id: i64,
    kind: &str,
    amount: i64,
    reference: &str,
    note: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO ledger (user_id, kind, amount, reference, note, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user_id)
    .bind(kind)
    .bind(amount)
    .bind(reference)
    .bind(note)
    .bind(now_ms())
    .execute(conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StorageError::Conflict(format!("ledger reference `{reference}`"))
        }
        _ => StorageError::Db(e),
    })?;
    Ok(())
}

impl Store {
    // ---- orders ----------------------------------------------------------

    pub async fn create_payment_order(&self, o: &NewPaymentOrder) -> Result<PaymentOrder> {
        let sql = format!(
            "INSERT INTO payment_orders (order_no, user_id, provider, method, amount, money, \
             currency, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {ORDER_COLS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&o.order_no)
            .bind(o.user_id)
            .bind(&o.provider)
            .bind(&o.method)
            .bind(o.amount)
            .bind(o.money)
            .bind(&o.currency)
            .bind(now_ms())
            .fetch_one(&self.write)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                    StorageError::NotFound(format!("user {}", o.user_id))
                }
                _ => crate::store::conflict("order")(e),
            })?;
        order_row(&row)
    }

    /// An order by its number, read through the writing connection (so a
    /// change this process just committed is seen).
    pub async fn payment_order(&self, order_no: &str) -> Result<Option<PaymentOrder>> {
        let sql = format!("SELECT {ORDER_COLS} FROM payment_orders WHERE order_no = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(order_no)
            .fetch_optional(&self.write)
            .await?;
        row.as_ref().map(order_row).transpose()
    }

    /// Orders, newest first, filtered.
    pub async fn payment_orders(&self, f: &OrderFilter) -> Result<Vec<PaymentOrder>> {
        let sql = format!(
            "SELECT {ORDER_COLS} FROM payment_orders WHERE ($1 < 0 OR user_id = $1) \
             AND ($2 = '' OR status = $2) AND ($3 = '' OR provider = $3) \
             AND ($4 = '' OR order_no = $4) AND created_at >= $5 AND created_at <= $6 \
             AND id < $7 ORDER BY id DESC LIMIT $8"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.user_id.unwrap_or(-1))
            .bind(f.status.clone().unwrap_or_default())
            .bind(f.provider.clone().unwrap_or_default())
            .bind(f.order_no.clone().unwrap_or_default())
            .bind(f.since.unwrap_or(0))
            .bind(f.until.unwrap_or(i64::MAX))
            .bind(f.before_id.unwrap_or(i64::MAX))
            .bind(f.limit.unwrap_or(100).clamp(1, 1000))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(order_row).collect()
    }

    /// Records the provider's id of a payment (e.g. the Stripe session).
    pub async fn set_order_trade_no(&self, order_no: &str, trade_no: &str) -> Result<()> {
        let r = sqlx::query("UPDATE payment_orders SET trade_no = $1 WHERE order_no = $2")
            .bind(trade_no)
            .bind(order_no)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("order {order_no}")));
        }
        Ok(())
    }

    /// Moves a pending order to `failed` (the payment cannot happen any
    /// more). Returns whether it was pending.
    pub async fn fail_order(&self, order_no: &str, note: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE payment_orders SET status = 'failed', note = $1 \
             WHERE order_no = $2 AND status = 'pending'",
        )
        .bind(note)
        .bind(order_no)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Marks an order paid and credits its amount, exactly once: the state
    /// change (pending or failed → paid), the ledger row (reference =
    /// order number) and the balance change are one transaction, and the
    /// state change is conditional, so of any number of concurrent calls —
    /// on any number of nodes — one credits and the others find the order
    /// already paid. `trade_no` (if not empty) records the provider's id.
    pub async fn complete_order(
        &self,
        order_no: &str,
        trade_no: &str,
        note: &str,
    ) -> Result<OrderCompletion> {
        let mut tx = self.write.begin().await?;
        let sql = format!(
            "UPDATE payment_orders SET status = 'paid', paid_at = $1, \
             trade_no = CASE WHEN $2 = '' THEN trade_no ELSE $2 END, note = $3 \
             WHERE order_no = $4 AND status IN ('pending', 'failed') RETURNING {ORDER_COLS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(trade_no)
            .bind(note)
            .bind(order_no)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(match order_as_is(tx, order_no).await? {
                Some(o) => OrderCompletion::AlreadyDone(o),
                None => OrderCompletion::NotFound,
            });
        };
        let order = order_row(&row)?;
        insert_ledger(
            &mut tx,
            order.user_id,
            "topup",
            order.amount,
            &order.order_no,
            note,
        )
        .await?;
        let balance: i64 =
            sqlx::query("UPDATE users SET balance = balance + $1 WHERE id = $2 RETURNING balance")
                .bind(order.amount)
                .bind(order.user_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("balance")?;
        tx.commit().await?;
        Ok(OrderCompletion::Credited { order, balance })
    }

    /// Refunds a paid order: status `refunded`, a `refund` ledger row of
    /// minus its amount (reference `refund:<order_no>`), the balance
    /// lowered — all or nothing, and never below zero.
    pub async fn refund_order(&self, order_no: &str, note: &str) -> Result<OrderRefund> {
        let mut tx = self.write.begin().await?;
        let sql = format!(
            "UPDATE payment_orders SET status = 'refunded', refunded_at = $1, note = $2 \
             WHERE order_no = $3 AND status = 'paid' RETURNING {ORDER_COLS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(note)
            .bind(order_no)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(match order_as_is(tx, order_no).await? {
                Some(o) => OrderRefund::NotPaid(o),
                None => OrderRefund::NotFound,
            });
        };
        let order = order_row(&row)?;
        insert_ledger(
            &mut tx,
            order.user_id,
            "refund",
            -order.amount,
            &format!("refund:{}", order.order_no),
            note,
        )
        .await?;
        let updated = sqlx::query(
            "UPDATE users SET balance = balance - $1 WHERE id = $2 AND balance >= $1 \
             RETURNING balance",
        )
        .bind(order.amount)
        .bind(order.user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(updated) = updated else {
            let balance: i64 = sqlx::query("SELECT balance FROM users WHERE id = $1")
                .bind(order.user_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("balance")?;
            tx.rollback().await?;
            // the order as it was before this attempt
            let order = self
                .payment_order(order_no)
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("order {order_no}")))?;
            return Ok(OrderRefund::InsufficientBalance { order, balance });
        };
        let balance: i64 = updated.try_get("balance")?;
        tx.commit().await?;
        Ok(OrderRefund::Refunded { order, balance })
    }

    // ---- callbacks ---------------------------------------------------------

    pub async fn record_payment_callback(&self, c: &NewPaymentCallback) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO payment_callbacks (provider, order_no, http_method, headers, body, \
             verdict, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(&c.provider)
        .bind(&c.order_no)
        .bind(&c.http_method)
        .bind(&c.headers)
        .bind(&c.body)
        .bind(&c.verdict)
        .bind(&c.reason)
        .bind(now_ms())
        .fetch_one(&self.write)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Callbacks, newest first, filtered.
    pub async fn payment_callbacks(&self, f: &CallbackFilter) -> Result<Vec<PaymentCallback>> {
        let sql = format!(
            "SELECT {CALLBACK_COLS} FROM payment_callbacks WHERE ($1 = '' OR order_no = $1) \
             AND ($2 = '' OR provider = $2) AND ($3 = '' OR verdict = $3) AND id < $4 \
             ORDER BY id DESC LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.order_no.clone().unwrap_or_default())
            .bind(f.provider.clone().unwrap_or_default())
            .bind(f.verdict.clone().unwrap_or_default())
            .bind(f.before_id.unwrap_or(i64::MAX))
            .bind(f.limit.unwrap_or(100).clamp(1, 1000))
            .fetch_all(&self.write)
            .await?;
        rows.iter().map(callback_row).collect()
    }

    // ---- redemption codes ------------------------------------------------

    /// Creates a batch with its codes, given as (SHA-256 hex, hint) pairs,
    /// in one transaction.
    pub async fn create_redemption_batch(
        &self,
        name: &str,
        quota: i64,
        expires_at: i64,
        created_by: i64,
        codes: &[(String, String)],
    ) -> Result<(RedemptionBatch, Vec<RedemptionCode>)> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let batch_id: i64 = sqlx::query(
            "INSERT INTO redemption_batches (name, quota, code_count, expires_at, created_by, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(name)
        .bind(quota)
        .bind(codes.len() as i64)
        .bind(expires_at)
        .bind(created_by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let mut out = Vec::with_capacity(codes.len());
        for (hash, hint) in codes {
            let sql = format!(
                "INSERT INTO redemption_codes (batch_id, code_hash, code_hint, quota, expires_at, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CODE_COLS}"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(batch_id)
                .bind(hash)
                .bind(hint)
                .bind(quota)
                .bind(expires_at)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(crate::store::conflict("redemption code"))?;
            out.push(code_row(&row)?);
        }
        tx.commit().await?;
        let batch = self
            .redemption_batch(batch_id)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("batch {batch_id}")))?;
        Ok((batch, out))
    }

    const BATCH_SELECT: &str = "SELECT b.id, b.name, b.quota, b.code_count, b.expires_at, \
         b.created_by, b.created_at, \
         CAST((SELECT COUNT(*) FROM redemption_codes c WHERE c.batch_id = b.id AND c.used_at > 0) AS BIGINT) AS used, \
         CAST((SELECT COUNT(*) FROM redemption_codes c WHERE c.batch_id = b.id AND c.used_at = 0 AND c.status = 0) AS BIGINT) AS disabled \
         FROM redemption_batches b";

    fn batch_row(r: &AnyRow) -> Result<RedemptionBatch> {
        Ok(RedemptionBatch {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            quota: r.try_get("quota")?,
            count: r.try_get("code_count")?,
            expires_at: r.try_get("expires_at")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            used: r.try_get("used")?,
            disabled: r.try_get("disabled")?,
        })
    }

    pub async fn redemption_batch(&self, id: i64) -> Result<Option<RedemptionBatch>> {
        let sql = format!("{} WHERE b.id = $1", Self::BATCH_SELECT);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.write)
            .await?;
        row.as_ref().map(Self::batch_row).transpose()
    }

    /// Batches, newest first.
    pub async fn redemption_batches(&self) -> Result<Vec<RedemptionBatch>> {
        let sql = format!("{} ORDER BY b.id DESC", Self::BATCH_SELECT);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(Self::batch_row).collect()
    }

    pub async fn redemption_codes(&self, batch_id: i64) -> Result<Vec<RedemptionCode>> {
        let sql =
            format!("SELECT {CODE_COLS} FROM redemption_codes WHERE batch_id = $1 ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(batch_id)
            .fetch_all(&self.write)
            .await?;
        rows.iter().map(code_row).collect()
    }

    pub async fn redemption_code(&self, id: i64) -> Result<Option<RedemptionCode>> {
        let sql = format!("SELECT {CODE_COLS} FROM redemption_codes WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.write)
            .await?;
        row.as_ref().map(code_row).transpose()
    }

    /// Disables one code if it is unused and enabled; returns whether it was.
    pub async fn disable_redemption_code(&self, id: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE redemption_codes SET status = 0 WHERE id = $1 AND used_at = 0 AND status = 1",
        )
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Disables every unused code of a batch; returns how many.
    pub async fn disable_redemption_batch(&self, batch_id: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE redemption_codes SET status = 0 WHERE batch_id = $1 AND used_at = 0 \
             AND status = 1",
        )
        .bind(batch_id)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    /// Redeems the code with this SHA-256 hex for `user_id`: one
    /// conditional UPDATE takes the code (unused, enabled, not expired) in
    /// the same transaction as the ledger credit (reference
    /// `redeem:<code id>`), so a code credits once however many try it at
    /// the same moment.
    pub async fn redeem_code(&self, code_hash: &str, user_id: i64) -> Result<Redemption> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "UPDATE redemption_codes SET used_by = $1, used_at = $2 WHERE code_hash = $3 \
             AND used_at = 0 AND status = 1 AND (expires_at = 0 OR expires_at > $2) \
             RETURNING id, quota",
        )
        .bind(user_id)
        .bind(now)
        .bind(code_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let sql = format!("SELECT {CODE_COLS} FROM redemption_codes WHERE code_hash = $1");
            let cur = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(code_hash)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            let Some(code) = cur.as_ref().map(code_row).transpose()? else {
                return Ok(Redemption::Unknown);
            };
            return Ok(if code.used_at > 0 {
                Redemption::Used { by: code.used_by }
            } else if code.status != 1 {
                Redemption::Disabled
            } else {
                Redemption::Expired
            });
        };
        let code_id: i64 = row.try_get("id")?;
        let quota: i64 = row.try_get("quota")?;
        insert_ledger(
            &mut tx,
            user_id,
            "redeem",
            quota,
            &format!("redeem:{code_id}"),
            &format!("redemption code #{code_id}"),
        )
        .await?;
        let balance =
            sqlx::query("UPDATE users SET balance = balance + $1 WHERE id = $2 RETURNING balance")
                .bind(quota)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(balance) = balance else {
            tx.rollback().await?;
            return Err(StorageError::NotFound(format!("user {user_id}")));
        };
        let balance: i64 = balance.try_get("balance")?;
        tx.commit().await?;
        Ok(Redemption::Redeemed {
            code_id,
            quota,
            balance,
        })
    }
}

/// The order as it stands, read in the transaction whose conditional change
/// did not apply; the transaction is then rolled back.
async fn order_as_is(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    order_no: &str,
) -> Result<Option<PaymentOrder>> {
    let sql = format!("SELECT {ORDER_COLS} FROM payment_orders WHERE order_no = $1");
    let cur = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_no)
        .fetch_optional(&mut *tx)
        .await?;
    tx.rollback().await?;
    cur.as_ref().map(order_row).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewUser;

    /// A fresh SQLite database in the temp folder, removed by [`done`].
    async fn store() -> (Store, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "storage-payments-{}-{}-{}.db",
            std::process::id(),
            now_ms(),
            rand_suffix()
        ));
        let s = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        (s, path)
    }

    async fn done(s: Store, path: std::path::PathBuf) {
        s.close().await;
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        h.finish()
    }

    async fn user(s: &Store, name: &str) -> i64 {
        s.create_user(&NewUser {
            username: name.into(),
            role: "user".into(),
            group: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .id
    }

    async fn order(s: &Store, uid: i64, no: &str, amount: i64) -> PaymentOrder {
        s.create_payment_order(&NewPaymentOrder {
            order_no: no.into(),
            user_id: uid,
            provider: "epay".into(),
            method: "alipay".into(),
            amount,
            money: 7300,
            currency: "cny".into(),
        })
        .await
        .unwrap()
    }

    fn consistent(rows: &[crate::LedgerCheckRow]) -> bool {
        rows.iter().all(|r| r.is_consistent())
    }

    #[tokio::test]
    async fn an_order_is_credited_once_and_refunded_within_the_balance() {
        let (s, path) = store().await;
        let uid = user(&s, "u").await;
        order(&s, uid, "E1", 10_000_000).await;
        let results = futures_join_all((0..20).map(|_| s.complete_order("E1", "T1", "test"))).await;
        let credited = results
            .iter()
            .filter(|r| matches!(r, Ok(OrderCompletion::Credited { .. })))
            .count();
        assert_eq!(credited, 1, "{results:?}");
        assert!(results.iter().all(|r| matches!(
            r,
            Ok(OrderCompletion::Credited { .. } | OrderCompletion::AlreadyDone(_))
        )));
        assert_eq!(s.user(uid).await.unwrap().balance, 10_000_000);
        let o = s.payment_order("E1").await.unwrap().unwrap();
        assert_eq!((o.status.as_str(), o.trade_no.as_str()), ("paid", "T1"));
        assert!(consistent(&s.ledger_check().await.unwrap()));
        assert_eq!(
            s.complete_order("nope", "", "x").await.unwrap(),
            OrderCompletion::NotFound
        );

        match s.refund_order("E1", "asked").await.unwrap() {
            OrderRefund::Refunded { balance, order } => {
                assert_eq!(balance, 0);
                assert_eq!(order.status, "refunded");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.refund_order("E1", "again").await.unwrap(),
            OrderRefund::NotPaid(_)
        ));
        assert!(matches!(
            s.complete_order("E1", "", "late").await.unwrap(),
            OrderCompletion::AlreadyDone(_)
        ));
        assert_eq!(s.user(uid).await.unwrap().balance, 0);

        // a refund above the balance changes nothing
        order(&s, uid, "E2", 5_000_000).await;
        s.complete_order("E2", "", "t").await.unwrap();
        s.adjust_balance(uid, -1, "adjust", None, "spend")
            .await
            .unwrap();
        match s.refund_order("E2", "too late").await.unwrap() {
            OrderRefund::InsufficientBalance { balance, order } => {
                assert_eq!(balance, 4_999_999);
                assert_eq!(order.status, "paid");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.payment_order("E2").await.unwrap().unwrap().status, "paid");
        assert!(consistent(&s.ledger_check().await.unwrap()));

        // a failed order can still be completed (the money did arrive)
        order(&s, uid, "E3", 1).await;
        assert!(s.fail_order("E3", "expired").await.unwrap());
        assert!(!s.fail_order("E3", "expired").await.unwrap());
        assert!(matches!(
            s.complete_order("E3", "", "by hand").await.unwrap(),
            OrderCompletion::Credited { .. }
        ));
        let listed = s
            .payment_orders(&OrderFilter {
                user_id: Some(uid),
                status: Some("paid".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|o| o.order_no.as_str())
                .collect::<Vec<_>>(),
            ["E3", "E2"]
        );
        done(s, path).await;
    }

    #[tokio::test]
    async fn a_code_is_redeemed_once() {
        let (s, path) = store().await;
        let mut users = Vec::new();
        for i in 0..10 {
            users.push(user(&s, &format!("u{i}")).await);
        }
        let codes = vec![
            ("h1".to_string(), "AAAA…".to_string()),
            ("h2".to_string(), "BBBB…".to_string()),
        ];
        let (batch, rows) = s
            .create_redemption_batch("b", 3_000_000, 0, 1, &codes)
            .await
            .unwrap();
        assert_eq!((batch.count, rows.len()), (2, 2));
        let results = futures_join_all(users.iter().map(|u| s.redeem_code("h1", *u))).await;
        let won: Vec<_> = results
            .iter()
            .filter(|r| matches!(r, Ok(Redemption::Redeemed { .. })))
            .collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert_eq!(
            results
                .iter()
                .filter(|r| matches!(r, Ok(Redemption::Used { .. })))
                .count(),
            9
        );
        assert!(s.disable_redemption_code(rows[1].id).await.unwrap());
        assert_eq!(
            s.redeem_code("h2", users[0]).await.unwrap(),
            Redemption::Disabled
        );
        assert_eq!(
            s.redeem_code("zz", users[0]).await.unwrap(),
            Redemption::Unknown
        );
        let (_, old) = s
            .create_redemption_batch("old", 1, 1, 1, &[("h3".into(), "C…".into())])
            .await
            .unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(
            s.redeem_code("h3", users[0]).await.unwrap(),
            Redemption::Expired
        );
        let b = s.redemption_batch(batch.id).await.unwrap().unwrap();
        assert_eq!((b.used, b.disabled), (1, 1));
        assert!(consistent(&s.ledger_check().await.unwrap()));
        done(s, path).await;
    }

    /// Polls all futures together (no extra dependency for a join).
    async fn futures_join_all<F: std::future::Future>(
        fs: impl IntoIterator<Item = F>,
    ) -> Vec<F::Output> {
        let handles: Vec<_> = fs.into_iter().map(Box::pin).collect();
        let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
        let mut handles: Vec<Option<_>> = handles.into_iter().map(Some).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, h) in handles.iter_mut().enumerate() {
                if let Some(f) = h {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            out[i] = Some(v);
                            *h = None;
                        }
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter().flatten().collect()
    }
}
