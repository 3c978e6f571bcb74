//! Stripe Checkout top-ups: a Checkout Session per order, and the webhook
//! that credits it.
//!
//! Webhook signature: `Stripe-Signature: t=…,v1=…[,v1=…]`; the expected
//! `v1` is lowercase hex HMAC-SHA256 of `"{t}.{raw body}"` keyed with the
//! endpoint's secret (`whsec_…`, used as text, prefix included). Any `v1`
//! may match (secret rolling); `t` must be within the tolerance of now.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use storage::{NewPaymentCallback, NewPaymentOrder, OrderCompletion};

use super::{
    ApiResult, CALLBACK_BODY_LIMIT, StripeSettings, balance_changed, constant_eq,
    currency_exponent, headers_json, minor_text, new_order_no, order_json, record_callback,
    to_minor,
};
use crate::AppState;
use crate::api::{ApiError, Body, Caller};

type HmacSha256 = hmac::Hmac<hmac_sha2::Sha256>;

/// Lowercase hex HMAC-SHA256 of `{t}.{body}` with `secret`: the `v1` value
/// Stripe sends.
pub(crate) fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a `Stripe-Signature` header against the raw body at time `now`
/// (Unix seconds). The error says what is wrong.
pub(crate) fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), String> {
    let mut t: Option<i64> = None;
    let mut v1: Vec<&str> = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k.trim() {
            "t" if t.is_none() => {
                t = Some(
                    v.trim()
                        .parse()
                        .map_err(|_| "the Stripe-Signature timestamp is not a number")?,
                )
            }
            "v1" => v1.push(v.trim()),
            _ => {}
        }
    }
    let Some(t) = t else {
        return Err("the Stripe-Signature header has no timestamp".into());
    };
    if v1.is_empty() {
        return Err("the Stripe-Signature header has no v1 signature".into());
    }
    let expected = signature(secret, t, body);
    if !v1
        .iter()
        .any(|s| constant_eq(s.to_ascii_lowercase().as_bytes(), expected.as_bytes()))
    {
        return Err("no v1 signature matches (wrong webhook secret, or an altered body)".into());
    }
    let age = now - t;
    if age.abs() > tolerance_secs {
        return Err(format!(
            "the signature's timestamp is {age} s from now; at most {tolerance_secs} s are accepted"
        ));
    }
    Ok(())
}

fn unix_now() -> i64 {
    storage::now_ms() / 1000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StripeTopup {
    amount_usd: Value,
}

fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "payments_disabled",
        "Top-ups through Stripe are not set up on this service.",
    )
}

/// `POST /api/topup/stripe`: opens an order, creates its Checkout Session
/// and answers the session's URL to send the browser to.
pub(crate) async fn create(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(b): Body<StripeTopup>,
) -> ApiResult {
    let p = &s.payments;
    let Some(st) = p.stripe.as_ref() else {
        return Err(disabled());
    };
    let (usd, units) = p.amount(&b.amount_usd)?;
    let method = "card";
    let money = to_minor(
        usd * st.rate * p.discount(method, usd),
        currency_exponent(&st.currency),
    )?;
    let order = s
        .store
        .create_payment_order(&NewPaymentOrder {
            order_no: new_order_no("S"),
            user_id: u.id,
            provider: "stripe".into(),
            method: method.into(),
            amount: units,
            money,
            currency: st.currency.clone(),
        })
        .await?;
    let session = match create_session(&s, st, &order, usd, u.email.as_deref()).await {
        Ok(v) => v,
        Err(msg) => {
            let _ = s
                .store
                .fail_order(
                    &order.order_no,
                    &format!("Stripe session not created: {msg}"),
                )
                .await;
            tracing::error!(order_no = %order.order_no, error = %msg, "creating a Stripe Checkout Session failed");
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "payment_provider_error",
                format!("Stripe did not open the payment page: {msg}"),
            ));
        }
    };
    let id = session["id"].as_str().unwrap_or("").to_string();
    let url = session["url"].as_str().unwrap_or("").to_string();
    if id.is_empty() || url.is_empty() {
        let _ = s
            .store
            .fail_order(
                &order.order_no,
                "Stripe answered without a session id or URL",
            )
            .await;
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "payment_provider_error",
            "Stripe answered without a session id or URL",
        ));
    }
    s.store.set_order_trade_no(&order.order_no, &id).await?;
    let order = s
        .store
        .payment_order(&order.order_no)
        .await?
        .unwrap_or(order);
    Ok(Json(json!({
        "order_no": order.order_no,
        "url": url,
        "session_id": id,
        "data": order_json(&order),
    })))
}

async fn create_session(
    s: &AppState,
    st: &StripeSettings,
    order: &storage::PaymentOrder,
    usd: billing::Decimal,
    email: Option<&str>,
) -> Result<Value, String> {
    let fill = |u: &str| u.replace("{ORDER_NO}", &order.order_no);
    let mut form: Vec<(&str, String)> = vec![
        ("mode", "payment".into()),
        ("client_reference_id", order.order_no.clone()),
        (
            "line_items[0][price_data][currency]",
            order.currency.clone(),
        ),
        (
            "line_items[0][price_data][unit_amount]",
            order.money.to_string(),
        ),
        (
            "line_items[0][price_data][product_data][name]",
            format!("{} ({usd:.2} USD)", st.product_name),
        ),
        ("line_items[0][quantity]", "1".into()),
        ("success_url", fill(&st.success_url)),
        ("cancel_url", fill(&st.cancel_url)),
        ("metadata[order_no]", order.order_no.clone()),
        ("metadata[user_id]", order.user_id.to_string()),
    ];
    if let Some(e) = email.filter(|e| !e.is_empty()) {
        form.push(("customer_email", e.to_string()));
    }
    let resp = s
        .payments
        .http
        .post(format!("{}/v1/checkout/sessions", st.api_base))
        .bearer_auth(&st.secret_key)
        .header("content-type", "application/x-www-form-urlencoded")
        // a retried request must not open a second session for the order
        .header("idempotency-key", order.order_no.as_str())
        .body(accounts::oidc::form_body(&form))
        .send()
        .await
        .map_err(|e| format!("cannot reach the Stripe API: {e}"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("unreadable answer from Stripe ({status}): {e}"))?;
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        return Err(format!("HTTP {status}: {msg}"));
    }
    Ok(v)
}

struct Outcome {
    verdict: &'static str,
    reason: String,
    order_no: String,
}

impl Outcome {
    fn new(verdict: &'static str, order_no: &str, reason: impl Into<String>) -> Outcome {
        Outcome {
            verdict,
            reason: reason.into(),
            order_no: order_no.to_string(),
        }
    }
}

/// `POST /api/topup/stripe/webhook`: Stripe's events. A bad or too-old
/// signature, or a completed session that does not match its order, is
/// answered 400; every other event 200 (credited, a duplicate, or ignored).
pub(crate) async fn webhook(State(s): State<AppState>, req: Request) -> Response {
    let Some(st) = s.payments.stripe.as_ref() else {
        return disabled().into_response();
    };
    let headers: HeaderMap = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), CALLBACK_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::bad("the webhook body is unreadable or too large").into_response();
        }
    };
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let outcome = match verify(
        sig,
        &body,
        &st.webhook_secret,
        unix_now(),
        st.tolerance_secs,
    ) {
        Err(reason) => Outcome::new("refused", "", format!("signature: {reason}")),
        Ok(()) => match serde_json::from_slice::<Value>(&body) {
            Err(e) => Outcome::new("refused", "", format!("the body is not JSON: {e}")),
            Ok(event) => handle_event(&s, &event).await,
        },
    };
    let refused = outcome.verdict == "refused";
    let reason = outcome.reason.clone();
    record_callback(
        &s,
        NewPaymentCallback {
            provider: "stripe".into(),
            order_no: outcome.order_no,
            http_method: "POST".into(),
            headers: headers_json(&headers),
            body: String::from_utf8_lossy(&body).into_owned(),
            verdict: outcome.verdict.into(),
            reason: outcome.reason,
        },
    )
    .await;
    if refused {
        ApiError::bad(reason).into_response()
    } else {
        Json(json!({"received": true})).into_response()
    }
}

async fn handle_event(s: &AppState, event: &Value) -> Outcome {
    let kind = event["type"].as_str().unwrap_or("");
    let event_id = event["id"].as_str().unwrap_or("");
    let obj = &event["data"]["object"];
    let order_no = obj["client_reference_id"]
        .as_str()
        .or_else(|| obj["metadata"]["order_no"].as_str())
        .unwrap_or("")
        .to_string();
    match kind {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let paid = obj["payment_status"].as_str().unwrap_or("");
            if paid != "paid" {
                return Outcome::new(
                    "ignored",
                    &order_no,
                    format!(
                        "{kind} {event_id} with payment_status `{paid}`: waiting for the payment"
                    ),
                );
            }
            credit(s, obj, &order_no, event_id).await
        }
        "checkout.session.expired" | "checkout.session.async_payment_failed" => {
            let failed = s
                .store
                .fail_order(&order_no, &format!("Stripe {kind} ({event_id})"))
                .await
                .unwrap_or(false);
            Outcome::new(
                "ignored",
                &order_no,
                if failed {
                    format!("{kind}: the order is marked failed")
                } else {
                    format!("{kind}: the order was not pending")
                },
            )
        }
        other => Outcome::new(
            "ignored",
            &order_no,
            format!("event type `{other}` ({event_id}) is not used"),
        ),
    }
}

async fn credit(s: &AppState, obj: &Value, order_no: &str, event_id: &str) -> Outcome {
    let refused = |reason: String| Outcome::new("refused", order_no, reason);
    let order = match s.store.payment_order(order_no).await {
        Ok(Some(o)) => o,
        Ok(None) => return refused(format!("unknown order `{order_no}`")),
        Err(e) => return refused(format!("database error: {e}")),
    };
    if order.provider != "stripe" {
        return refused(format!("the order belongs to {}", order.provider));
    }
    let amount_total = obj["amount_total"].as_i64();
    let currency = obj["currency"].as_str().unwrap_or("").to_ascii_lowercase();
    if amount_total != Some(order.money) || currency != order.currency {
        return refused(format!(
            "paid {} {currency} differs from the order's {} {}",
            amount_total.map_or_else(|| "?".to_string(), |m| minor_text(m, &currency)),
            minor_text(order.money, &order.currency),
            order.currency
        ));
    }
    let session_id = obj["id"].as_str().unwrap_or("");
    let note = format!("stripe session {session_id} event {event_id}");
    match s.store.complete_order(order_no, session_id, &note).await {
        Ok(OrderCompletion::Credited { order, .. }) => {
            balance_changed(s).await;
            Outcome::new(
                "credited",
                order_no,
                format!("credited {} USD", billing::units_to_usd(order.amount)),
            )
        }
        Ok(OrderCompletion::AlreadyDone(o)) => {
            Outcome::new("duplicate", order_no, format!("order already {}", o.status))
        }
        Ok(OrderCompletion::NotFound) => refused(format!("unknown order `{order_no}`")),
        Err(e) => refused(format!("crediting failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn accepts_a_good_signature_within_tolerance() {
        let body = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;
        let t = 1_700_000_000;
        let h = format!("t={t},v1={}", signature(SECRET, t, body));
        assert_eq!(verify(&h, body, SECRET, t, 300), Ok(()));
        assert_eq!(verify(&h, body, SECRET, t + 300, 300), Ok(()));
        assert_eq!(verify(&h, body, SECRET, t - 300, 300), Ok(()));
        // secret rolling: any v1 may match; v0 is ignored
        let h2 = format!(
            "t={t},v1={},v1={},v0=abc",
            signature("whsec_old", t, body),
            signature(SECRET, t, body)
        );
        assert_eq!(verify(&h2, body, SECRET, t, 300), Ok(()));
    }

    #[test]
    fn refuses_old_wrong_and_tampered() {
        let body = br#"{"amount_total":1000}"#;
        let t = 1_700_000_000;
        let h = format!("t={t},v1={}", signature(SECRET, t, body));
        let e = verify(&h, body, SECRET, t + 301, 300).unwrap_err();
        assert!(e.contains("301"), "{e}");
        assert!(verify(&h, body, "whsec_other", t, 300).is_err());
        assert!(verify(&h, br#"{"amount_total":1}"#, SECRET, t, 300).is_err());
        // the timestamp is part of what is signed
        let moved = format!("t={},v1={}", t + 1, signature(SECRET, t, body));
        assert!(verify(&moved, body, SECRET, t, 300).is_err());
        assert!(verify("", body, SECRET, t, 300).is_err());
        assert!(verify(&format!("t={t}"), body, SECRET, t, 300).is_err());
        assert!(verify("v1=00", body, SECRET, t, 300).is_err());
        assert!(verify("t=abc,v1=00", body, SECRET, t, 300).is_err());
    }
}
