//! Operators' side of payments — order search, raw callbacks, manual
//! completion, refunds, redemption-code batches — and the user's
//! redemption of a code.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use storage::{CallbackFilter, OrderCompletion, OrderFilter, OrderRefund, Redemption};

use super::{ApiResult, balance_changed, order_json};
use crate::AppState;
use crate::api::{Admin, ApiError, Body, Caller};

// ---- orders ----------------------------------------------------------------

/// `GET /api/payments/orders`: search by user, status, provider, order
/// number and time range, newest first.
pub(crate) async fn orders(
    State(s): State<AppState>,
    _: Admin,
    Query(f): Query<OrderFilter>,
) -> ApiResult {
    let rows = s.store.payment_orders(&f).await?;
    Ok(Json(
        json!({"data": rows.iter().map(order_json).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/payments/orders/{order_no}`: the order with its raw callbacks.
pub(crate) async fn order_get(
    State(s): State<AppState>,
    _: Admin,
    Path(order_no): Path<String>,
) -> ApiResult {
    let order = s
        .store
        .payment_order(&order_no)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {order_no} not found")))?;
    let callbacks = s
        .store
        .payment_callbacks(&CallbackFilter {
            order_no: Some(order_no),
            limit: Some(1000),
            ..Default::default()
        })
        .await?;
    Ok(Json(
        json!({"data": order_json(&order), "callbacks": callbacks}),
    ))
}

/// `GET /api/payments/callbacks`: raw callbacks, newest first, including
/// those that named no known order.
pub(crate) async fn callbacks(
    State(s): State<AppState>,
    _: Admin,
    Query(f): Query<CallbackFilter>,
) -> ApiResult {
    Ok(Json(json!({"data": s.store.payment_callbacks(&f).await?})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteBody {
    #[serde(default)]
    note: String,
    /// The provider's id of the payment, if known.
    #[serde(default)]
    trade_no: String,
}

/// `POST /api/payments/orders/{order_no}/complete`: credits a pending (or
/// failed) order by hand — e.g. a payment whose callback never came —
/// through the same exactly-once path as callbacks.
pub(crate) async fn order_complete(
    State(s): State<AppState>,
    Admin(me): Admin,
    Path(order_no): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    // the body is optional
    let b: CompleteBody = if body.iter().all(u8::is_ascii_whitespace) {
        CompleteBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?
    };
    let mut note = format!("completed manually by admin #{} ({})", me.id, me.username);
    if !b.note.trim().is_empty() {
        note.push_str(": ");
        note.push_str(b.note.trim());
    }
    match s
        .store
        .complete_order(&order_no, b.trade_no.trim(), &note)
        .await?
    {
        OrderCompletion::Credited { order, balance } => {
            balance_changed(&s).await;
            Ok(Json(json!({
                "result": "credited", "data": order_json(&order),
                "balance": balance, "balance_usd": billing::units_to_usd(balance),
            })))
        }
        OrderCompletion::AlreadyDone(order) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "order_not_pending",
            format!(
                "order {} is {} already; nothing was credited",
                order.order_no, order.status
            ),
        )),
        OrderCompletion::NotFound => {
            Err(ApiError::not_found(format!("order {order_no} not found")))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefundBody {
    reason: String,
}

/// `POST /api/payments/orders/{order_no}/refund`: takes a paid order's
/// amount back off the balance (ledger kind `refund`), unless that would
/// take the balance below zero. The money itself is returned at the
/// provider.
pub(crate) async fn order_refund(
    State(s): State<AppState>,
    Admin(me): Admin,
    Path(order_no): Path<String>,
    Body(b): Body<RefundBody>,
) -> ApiResult {
    let reason = b.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::bad("give the reason for the refund"));
    }
    // settled usage first, so the balance checked is the real one
    s.relay.flush().await;
    let note = format!("refunded by admin #{} ({}): {reason}", me.id, me.username);
    match s.store.refund_order(&order_no, &note).await? {
        OrderRefund::Refunded { order, balance } => {
            balance_changed(&s).await;
            Ok(Json(json!({
                "result": "refunded", "data": order_json(&order),
                "balance": balance, "balance_usd": billing::units_to_usd(balance),
            })))
        }
        OrderRefund::InsufficientBalance { order, balance } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "insufficient_balance",
            format!(
                "Refund refused: it would take user #{}'s balance below zero (balance {} USD, order {} USD). Nothing was changed.",
                order.user_id,
                billing::units_to_usd(balance),
                billing::units_to_usd(order.amount)
            ),
        )),
        OrderRefund::NotPaid(order) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "order_not_paid",
            format!(
                "only a paid order can be refunded; order {} is {}",
                order.order_no, order.status
            ),
        )),
        OrderRefund::NotFound => Err(ApiError::not_found(format!("order {order_no} not found"))),
    }
}

// ---- redemption codes --------------------------------------------------------

/// Characters of redemption codes: no 0/O, 1/I to misread (32 symbols, so
/// 16 characters carry 80 bits).
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 16;

/// A new code: 16 characters in four dash-separated groups of four.
fn new_code() -> String {
    let mut rng = rand::rng();
    let raw: Vec<char> = (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect();
    raw.chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// What is hashed: upper case, without dashes and spaces.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn code_hash(code: &str) -> String {
    accounts::secret_hash(&format!("redeem:{}", normalize_code(code)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewBatch {
    count: i64,
    /// USD each code credits.
    quota_usd: Value,
    /// Epoch ms after which the codes are refused; 0 or absent = never.
    #[serde(default)]
    expires_at: i64,
    /// Alternative to `expires_at`: days from now.
    valid_days: Option<i64>,
    #[serde(default)]
    name: String,
}

/// `POST /api/redemptions`: a batch of codes. The plain codes are in this
/// answer only; the database keeps their SHA-256.
pub(crate) async fn batch_create(
    State(s): State<AppState>,
    Admin(me): Admin,
    Body(b): Body<NewBatch>,
) -> ApiResult {
    if !(1..=1000).contains(&b.count) {
        return Err(ApiError::bad("count is between 1 and 1000"));
    }
    let quota_text = match &b.quota_usd {
        Value::String(t) => t.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(ApiError::bad("quota_usd is a number or decimal text")),
    };
    let quota = billing::usd_to_units(&quota_text).map_err(|e| ApiError::bad(e.to_string()))?;
    if quota <= 0 {
        return Err(ApiError::bad("quota_usd must be more than 0"));
    }
    let expires_at = match b.valid_days {
        Some(d) if d > 0 => storage::now_ms() + d * 86_400_000,
        Some(_) => return Err(ApiError::bad("valid_days must be at least 1")),
        None => b.expires_at,
    };
    if expires_at < 0 || (expires_at > 0 && expires_at <= storage::now_ms()) {
        return Err(ApiError::bad("expires_at is in the past"));
    }
    let name = b.name.trim();
    if name.chars().count() > 100 {
        return Err(ApiError::bad("name is at most 100 characters"));
    }
    let codes: Vec<String> = (0..b.count).map(|_| new_code()).collect();
    let hashed: Vec<(String, String)> = codes
        .iter()
        .map(|c| (code_hash(c), format!("{}…", &c[..4])))
        .collect();
    let (batch, rows) = s
        .store
        .create_redemption_batch(name, quota, expires_at, me.id, &hashed)
        .await?;
    let listed: Vec<Value> = rows
        .iter()
        .zip(&codes)
        .map(|(r, c)| json!({"id": r.id, "code": c}))
        .collect();
    Ok(Json(json!({
        "data": batch_json(&batch),
        "codes": listed,
        "note": "The codes are shown only now; store them safely.",
    })))
}

fn batch_json(b: &storage::RedemptionBatch) -> Value {
    let mut v = serde_json::to_value(b).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("quota_usd".into(), json!(billing::units_to_usd(b.quota)));
    }
    v
}

/// `GET /api/redemptions`: batches, newest first, with use counts.
pub(crate) async fn batches(State(s): State<AppState>, _: Admin) -> ApiResult {
    let rows = s.store.redemption_batches().await?;
    Ok(Json(
        json!({"data": rows.iter().map(batch_json).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/redemptions/{id}/codes`: a batch's codes (never the codes
/// themselves: a hint, the state, who used it when).
pub(crate) async fn batch_codes(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> ApiResult {
    let batch = s
        .store
        .redemption_batch(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("batch {id} not found")))?;
    Ok(Json(json!({
        "data": batch_json(&batch),
        "codes": s.store.redemption_codes(id).await?,
    })))
}

/// `POST /api/redemptions/{id}/disable`: disables a batch's unused codes.
pub(crate) async fn batch_disable(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> ApiResult {
    if s.store.redemption_batch(id).await?.is_none() {
        return Err(ApiError::not_found(format!("batch {id} not found")));
    }
    let n = s.store.disable_redemption_batch(id).await?;
    Ok(Json(json!({"disabled": n})))
}

/// `POST /api/redemption-codes/{id}/disable`: disables one unused code.
pub(crate) async fn code_disable(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> ApiResult {
    if !s.store.disable_redemption_code(id).await? {
        let code = s
            .store
            .redemption_code(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("code {id} not found")))?;
        if code.used_at > 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "code_used",
                format!("code {id} was already redeemed; it cannot be disabled"),
            ));
        }
    }
    let code = s
        .store
        .redemption_code(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("code {id} not found")))?;
    Ok(Json(json!({"data": code})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedeemBody {
    code: String,
}

/// `POST /api/redeem`: credits a redemption code's value to the caller.
pub(crate) async fn redeem(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(b): Body<RedeemBody>,
) -> ApiResult {
    let normalized = normalize_code(&b.code);
    if normalized.is_empty() {
        return Err(ApiError::bad("enter a redemption code"));
    }
    match s.store.redeem_code(&code_hash(&b.code), u.id).await? {
        Redemption::Redeemed { quota, balance, .. } => {
            balance_changed(&s).await;
            Ok(Json(json!({
                "credited": quota, "credited_usd": billing::units_to_usd(quota),
                "balance": balance, "balance_usd": billing::units_to_usd(balance),
            })))
        }
        Redemption::Unknown => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "code_unknown",
            "This redemption code does not exist; check it for typos.",
        )),
        Redemption::Used { by } if by == u.id => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "code_used",
            "You have already redeemed this code.",
        )),
        Redemption::Used { .. } => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "code_used",
            "This redemption code has already been used.",
        )),
        Redemption::Expired => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "code_expired",
            "This redemption code has expired.",
        )),
        Redemption::Disabled => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "code_disabled",
            "This redemption code has been disabled.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_look_right_and_normalize() {
        let c = new_code();
        assert_eq!(c.len(), 19);
        assert_eq!(c.matches('-').count(), 3);
        assert_eq!(
            code_hash(&c),
            code_hash(&c.to_lowercase().replace('-', " "))
        );
        assert_ne!(code_hash(&c), code_hash(&new_code()));
        assert_eq!(normalize_code(" ab-cd\t"), "ABCD");
    }
}
