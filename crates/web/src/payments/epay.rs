//! epay (彩虹易支付-style) top-ups: the signed `submit.php` redirect and the
//! notify callback.
//!
//! Signature: drop `sign`, `sign_type` and empty values, sort by key (byte
//! order), join as `k=v` with `&` using the raw values, append the merchant
//! key (or `&key=KEY` on forks that want it), MD5, lowercase hex.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use billing::Decimal;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{Value, json};
use storage::{NewPaymentCallback, NewPaymentOrder, OrderCompletion};

use super::{
    ApiResult, CALLBACK_BODY_LIMIT, SignStyle, balance_changed, constant_eq, headers_json,
    minor_text, new_order_no, order_json, parse_form, record_callback, to_minor,
};
use crate::AppState;
use crate::api::{ApiError, Body, Caller};

/// The string that is signed: sorted non-empty parameters without `sign`
/// and `sign_type`, as `k=v` joined by `&`.
pub(crate) fn signing_string(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && k.as_str() != "sign_type" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The MD5 signature of `params`, lowercase hex.
pub(crate) fn sign(params: &BTreeMap<String, String>, key: &str, style: SignStyle) -> String {
    let mut s = signing_string(params);
    match style {
        SignStyle::Plain => s.push_str(key),
        SignStyle::KeyParam => {
            s.push_str("&key=");
            s.push_str(key);
        }
    }
    hex::encode(Md5::digest(s.as_bytes()))
}

/// Whether `params` carry a correct `sign` (compared case-insensitively, in
/// constant time).
pub(crate) fn verify(params: &BTreeMap<String, String>, key: &str, style: SignStyle) -> bool {
    let Some(sent) = params.get("sign") else {
        return false;
    };
    let expected = sign(params, key, style);
    constant_eq(
        sent.trim().to_ascii_lowercase().as_bytes(),
        expected.as_bytes(),
    )
}

/// `"73.00"` → 7300 fen; refuses more than two decimals and negatives.
fn money_fen(text: &str) -> Option<i64> {
    use rust_decimal::prelude::ToPrimitive;
    let d: Decimal = text.trim().parse().ok()?;
    if d.is_sign_negative() || d.normalize().scale() > 2 {
        return None;
    }
    (d * Decimal::from(100)).to_i64()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EpayTopup {
    amount_usd: Value,
    method: String,
}

/// `POST /api/topup/epay`: opens an order and answers where to send the
/// browser (the gateway's `submit.php` with the signed parameters).
pub(crate) async fn create(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(b): Body<EpayTopup>,
) -> ApiResult {
    let p = &s.payments;
    let Some(ep) = p.epay.as_ref() else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "payments_disabled",
            "Top-ups through epay are not set up on this service.",
        ));
    };
    let method = b.method.trim();
    if !ep.methods.iter().any(|m| m == method) {
        return Err(ApiError::bad(format!(
            "method `{method}` is not offered; choose one of: {}",
            ep.methods.join(", ")
        )));
    }
    let (usd, units) = p.amount(&b.amount_usd)?;
    let fen = to_minor(usd * ep.rate * p.discount(method, usd), 2)?;
    let order = s
        .store
        .create_payment_order(&NewPaymentOrder {
            order_no: new_order_no("E"),
            user_id: u.id,
            provider: "epay".into(),
            method: method.to_string(),
            amount: units,
            money: fen,
            currency: "cny".into(),
        })
        .await?;
    let mut params = BTreeMap::new();
    params.insert("pid".to_string(), ep.pid.clone());
    params.insert("type".into(), method.to_string());
    params.insert("out_trade_no".into(), order.order_no.clone());
    params.insert("notify_url".into(), ep.notify_url.clone());
    params.insert("return_url".into(), ep.return_url.clone());
    params.insert("name".into(), format!("TopUp-{usd:.2}USD"));
    params.insert("money".into(), minor_text(fen, "cny"));
    params.insert("device".into(), "pc".into());
    let signature = sign(&params, &ep.key, ep.style);
    params.insert("sign".into(), signature);
    params.insert("sign_type".into(), "MD5".into());
    let pairs: Vec<(&String, &String)> = params.iter().collect();
    let url = format!("{}?{}", ep.submit_url, accounts::oidc::form_body(&pairs));
    Ok(Json(json!({
        "order_no": order.order_no,
        "url": url,
        "action": ep.submit_url,
        "params": params,
        "data": order_json(&order),
    })))
}

/// The outcome of one notify callback.
struct Verdict {
    verdict: &'static str,
    reason: String,
    order_no: String,
}

impl Verdict {
    fn refused(order_no: &str, reason: impl Into<String>) -> Verdict {
        Verdict {
            verdict: "refused",
            reason: reason.into(),
            order_no: order_no.to_string(),
        }
    }
}

/// `GET|POST /api/topup/epay/notify`: the gateway's payment notification.
/// Answers `success` when the payment is (or already was) credited, `fail`
/// when the callback is refused; every callback is kept with its verdict.
pub(crate) async fn notify(State(s): State<AppState>, req: Request) -> Response {
    let method = req.method().clone();
    let headers: HeaderMap = req.headers().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match axum::body::to_bytes(req.into_body(), CALLBACK_BODY_LIMIT).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let mut params: BTreeMap<String, String> = parse_form(&query).into_iter().collect();
    if method == Method::POST {
        params.extend(parse_form(&body));
    }
    let raw = match (query.is_empty(), body.is_empty()) {
        (false, true) => query.clone(),
        (true, _) => body.clone(),
        (false, false) => format!("{query}\n{body}"),
    };
    let v = judge(&s, &params).await;
    let ok = v.verdict != "refused";
    record_callback(
        &s,
        NewPaymentCallback {
            provider: "epay".into(),
            order_no: v.order_no,
            http_method: method.to_string(),
            headers: headers_json(&headers),
            body: raw,
            verdict: v.verdict.into(),
            reason: v.reason,
        },
    )
    .await;
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        if ok { "success" } else { "fail" },
    )
        .into_response()
}

async fn judge(s: &AppState, params: &BTreeMap<String, String>) -> Verdict {
    let order_no = params.get("out_trade_no").cloned().unwrap_or_default();
    let Some(ep) = s.payments.epay.as_ref() else {
        return Verdict::refused(&order_no, "epay is not configured");
    };
    if !verify(params, &ep.key, ep.style) {
        return Verdict::refused(&order_no, "bad signature");
    }
    let status = params.get("trade_status").map(String::as_str).unwrap_or("");
    if status != "TRADE_SUCCESS" {
        return Verdict::refused(
            &order_no,
            format!("trade_status `{status}` is not TRADE_SUCCESS"),
        );
    }
    let pid = params.get("pid").map(String::as_str).unwrap_or("");
    if pid != ep.pid {
        return Verdict::refused(&order_no, format!("pid `{pid}` is not this merchant's"));
    }
    let order = match s.store.payment_order(&order_no).await {
        Ok(Some(o)) => o,
        Ok(None) => return Verdict::refused(&order_no, "unknown order"),
        Err(e) => return Verdict::refused(&order_no, format!("database error: {e}")),
    };
    if order.provider != "epay" {
        return Verdict::refused(
            &order_no,
            format!("the order belongs to {}", order.provider),
        );
    }
    let money = params.get("money").map(String::as_str).unwrap_or("");
    if money_fen(money) != Some(order.money) || order.currency != "cny" {
        return Verdict::refused(
            &order_no,
            format!(
                "paid money `{money}` differs from the order's {}",
                minor_text(order.money, &order.currency)
            ),
        );
    }
    let trade_no = params.get("trade_no").cloned().unwrap_or_default();
    let note = format!(
        "epay {} trade {}",
        params.get("type").map(String::as_str).unwrap_or(""),
        trade_no
    );
    match s.store.complete_order(&order_no, &trade_no, &note).await {
        Ok(OrderCompletion::Credited { order, .. }) => {
            balance_changed(s).await;
            Verdict {
                verdict: "credited",
                reason: format!("credited {} USD", billing::units_to_usd(order.amount)),
                order_no,
            }
        }
        Ok(OrderCompletion::AlreadyDone(o)) => Verdict {
            verdict: "duplicate",
            reason: format!("order already {}", o.status),
            order_no,
        },
        Ok(OrderCompletion::NotFound) => Verdict::refused(&order_no, "unknown order"),
        Err(e) => Verdict::refused(&order_no, format!("crediting failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn signing_string_sorts_and_drops() {
        let p = map(&[
            ("type", "alipay"),
            ("sign", "x"),
            ("sign_type", "MD5"),
            ("param", ""),
            ("money", "7.30"),
            ("pid", "1001"),
            ("name", "VIP 会员"),
        ]);
        assert_eq!(
            signing_string(&p),
            "money=7.30&name=VIP 会员&pid=1001&type=alipay"
        );
    }

    #[test]
    fn md5_signature_matches_a_hand_computed_one() {
        // md5("money=1.00&pid=1&type=alipaykey") computed independently
        let p = map(&[("pid", "1"), ("type", "alipay"), ("money", "1.00")]);
        let expected = hex::encode(Md5::digest(b"money=1.00&pid=1&type=alipaykey"));
        assert_eq!(sign(&p, "key", SignStyle::Plain), expected);
        let expected = hex::encode(Md5::digest(b"money=1.00&pid=1&type=alipay&key=key"));
        assert_eq!(sign(&p, "key", SignStyle::KeyParam), expected);
        // RFC 1321 test vector, to be sure the digest is MD5
        assert_eq!(
            hex::encode(Md5::digest(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn verification_is_case_insensitive_and_rejects_tampering() {
        let mut p = map(&[
            ("pid", "1001"),
            ("out_trade_no", "E1"),
            ("money", "73.00"),
            ("trade_status", "TRADE_SUCCESS"),
        ]);
        let sig = sign(&p, "secret", SignStyle::Plain);
        p.insert("sign".into(), sig.to_ascii_uppercase());
        p.insert("sign_type".into(), "MD5".into());
        assert!(verify(&p, "secret", SignStyle::Plain));
        assert!(!verify(&p, "other", SignStyle::Plain));
        assert!(!verify(&p, "secret", SignStyle::KeyParam));
        p.insert("money".into(), "0.01".into());
        assert!(!verify(&p, "secret", SignStyle::Plain));
        p.remove("sign");
        assert!(!verify(&p, "secret", SignStyle::Plain));
    }

    #[test]
    fn money_is_read_exactly() {
        assert_eq!(money_fen("73.00"), Some(7300));
        assert_eq!(money_fen("73"), Some(7300));
        assert_eq!(money_fen("0.01"), Some(1));
        assert_eq!(money_fen("73.001"), None);
        assert_eq!(money_fen("-1"), None);
        assert_eq!(money_fen("abc"), None);
    }
}
