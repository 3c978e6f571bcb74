//! Top-ups and redemption codes over HTTP.
//!
//! - epay (彩虹易支付-style gateways): [`epay`] builds the signed `submit.php`
//!   redirect and verifies the MD5-signed notify callback.
//! - Stripe Checkout: [`stripe`] creates a Checkout Session through the API
//!   and verifies the `Stripe-Signature` of webhooks.
//! - Administration of orders (search, raw callbacks, manual completion,
//!   refund) and of redemption codes: [`admin`].
//!
//! Money: an order is opened for an amount in USD, credited as units
//! (1 unit = 1/1,000,000 USD), and charged as integer minor units (fen,
//! cents) of the provider's currency: `amount × rate × discount`, rounded
//! half up to the minor unit. The credited units are always the USD amount
//! asked; discounts change only what is charged.
//!
//! Everything an order needs to be credited later lives in its database row,
//! so an order opened before a restart (or on another node) and paid after
//! it is credited the same way. A credit is one transaction with the order's
//! state change (see `Store::complete_order`), so replayed, concurrent and
//! out-of-order callbacks credit once. Every callback is kept raw with its
//! verdict for the operators.

mod admin;
mod epay;
mod stripe;

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use billing::Decimal;
use rand::Rng;
use rust_decimal::RoundingStrategy;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use storage::{NewPaymentCallback, PaymentOrder};

use crate::AppState;
use crate::api::{ApiError, Caller};

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

// ---- configuration ---------------------------------------------------------

/// Text that may be written as a TOML string or number (`"7.3"` or `7.3`),
/// as environment variables arrive as numbers when they look like one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(s.to_string())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[payments]` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Smallest top-up, USD.
    pub min_topup_usd: Text,
    /// Largest top-up, USD.
    pub max_topup_usd: Text,
    /// Multiplier on the money charged per payment method, e.g.
    /// `{ alipay = "0.95" }` (a lower fee for domestic top-ups). Methods
    /// not listed pay 1×. Stripe orders have the method `card`.
    pub method_discounts: BTreeMap<String, Text>,
    /// Multipliers by amount: of the tiers whose `min_usd` is at most the
    /// amount, the one with the highest `min_usd` applies (on top of the
    /// method's).
    pub amount_discounts: Vec<AmountDiscount>,
    pub epay: EpayConfig,
    pub stripe: StripeConfig,
}

/// One amount tier of `[[payments.amount_discounts]]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountDiscount {
    pub min_usd: Text,
    pub discount: Text,
}

/// `[payments.epay]`: a 彩虹易支付-style gateway. Off while `gateway_url`
/// is empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpayConfig {
    /// The gateway's address; `/submit.php` is appended unless it ends so.
    pub gateway_url: String,
    /// Merchant id.
    pub pid: Text,
    /// Merchant key (the MD5 signing secret).
    pub key: Text,
    /// Yuan charged per USD before discounts.
    pub cny_per_usd: Text,
    /// Payment types offered (`type` of the gateway), e.g. alipay, wxpay.
    pub methods: Vec<String>,
    /// `plain`: md5(params + key) as 彩虹易支付 does; `key_param`:
    /// md5(params + "&key=" + key) as some forks do.
    pub sign_style: String,
    /// Where the gateway sends payment notifications. Empty:
    /// `{accounts.public_url}/api/topup/epay/notify`.
    pub notify_url: String,
    /// Where the gateway sends the browser back. Empty:
    /// `{accounts.public_url}/api/topup/epay/return`.
    pub return_url: String,
}

/// `[payments.stripe]`: Stripe Checkout. Off while `secret_key` is empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// `sk_live_…`/`sk_test_…` (or a restricted `rk_…` key).
    pub secret_key: String,
    /// The webhook endpoint's signing secret, `whsec_…`.
    pub webhook_secret: String,
    /// The API's address; a stand-in's in tests.
    pub api_base: String,
    /// Lowercase ISO currency code charged.
    pub currency: String,
    /// Units of `currency` per USD before discounts (1 for usd).
    pub rate_per_usd: Text,
    /// Where Stripe sends the browser after paying. `{ORDER_NO}` is
    /// replaced by the order number (Stripe itself replaces
    /// `{CHECKOUT_SESSION_ID}`). Empty: our own return page.
    pub success_url: String,
    /// Where Stripe sends the browser when the payment is abandoned.
    pub cancel_url: String,
    /// The product name on Stripe's payment page.
    pub product_name: String,
    /// Accepted age of a webhook signature, seconds.
    pub tolerance_secs: i64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            min_topup_usd: "5".into(),
            max_topup_usd: "25000".into(),
            method_discounts: BTreeMap::new(),
            amount_discounts: Vec::new(),
            epay: EpayConfig::default(),
            stripe: StripeConfig::default(),
        }
    }
}

impl Default for EpayConfig {
    fn default() -> Self {
        EpayConfig {
            gateway_url: String::new(),
            pid: Text::default(),
            key: Text::default(),
            cny_per_usd: "7.3".into(),
            methods: vec!["alipay".into(), "wxpay".into()],
            sign_style: "plain".into(),
            notify_url: String::new(),
            return_url: String::new(),
        }
    }
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            secret_key: String::new(),
            webhook_secret: String::new(),
            api_base: "https://api.stripe.com".into(),
            currency: "usd".into(),
            rate_per_usd: "1".into(),
            success_url: String::new(),
            cancel_url: String::new(),
            product_name: "Account top-up".into(),
            tolerance_secs: 300,
        }
    }
}

/// How epay parameters are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignStyle {
    Plain,
    KeyParam,
}

pub(crate) struct EpaySettings {
    pub submit_url: String,
    pub pid: String,
    pub key: String,
    pub rate: Decimal,
    pub methods: Vec<String>,
    pub style: SignStyle,
    pub notify_url: String,
    pub return_url: String,
}

pub(crate) struct StripeSettings {
    pub secret_key: String,
    pub webhook_secret: String,
    pub api_base: String,
    pub currency: String,
    pub rate: Decimal,
    pub success_url: String,
    pub cancel_url: String,
    pub product_name: String,
    pub tolerance_secs: i64,
}

/// What the payment routes need at run time, built once at start from
/// checked settings.
pub struct PaymentsRuntime {
    pub cfg: PaymentsConfig,
    min_usd: Decimal,
    max_usd: Decimal,
    method_discounts: BTreeMap<String, Decimal>,
    /// (min_usd, discount), ascending by min_usd.
    amount_discounts: Vec<(Decimal, Decimal)>,
    pub(crate) epay: Option<EpaySettings>,
    pub(crate) stripe: Option<StripeSettings>,
    /// For calls to the Stripe API.
    pub(crate) http: reqwest::Client,
}

fn positive(what: &str, t: &Text) -> Result<Decimal, String> {
    let d: Decimal = t
        .as_str()
        .trim()
        .parse()
        .map_err(|_| format!("{what} `{}` is not a decimal number", t.as_str()))?;
    if d <= Decimal::ZERO {
        return Err(format!("{what} must be more than 0, not `{}`", t.as_str()));
    }
    Ok(d)
}

fn http_url(what: &str, url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "{what} `{url}` must start with http:// or https://"
        ));
    }
    Ok(url.to_string())
}

impl PaymentsRuntime {
    /// Checks the settings; `public_url` (accounts.public_url, checked)
    /// fills the callback and return addresses left empty.
    pub fn new(cfg: PaymentsConfig, public_url: &str) -> Result<PaymentsRuntime, String> {
        let public_url = public_url.trim_end_matches('/').to_string();
        let min_usd = positive("payments.min_topup_usd", &cfg.min_topup_usd)?;
        let max_usd = positive("payments.max_topup_usd", &cfg.max_topup_usd)?;
        if max_usd < min_usd {
            return Err("payments.max_topup_usd is below payments.min_topup_usd".into());
        }
        let mut method_discounts = BTreeMap::new();
        for (m, d) in &cfg.method_discounts {
            method_discounts.insert(
                m.clone(),
                positive(&format!("payments.method_discounts.{m}"), d)?,
            );
        }
        let mut amount_discounts = Vec::new();
        for t in &cfg.amount_discounts {
            let min: Decimal = t.min_usd.as_str().trim().parse().map_err(|_| {
                format!(
                    "payments.amount_discounts: min_usd `{}` is not a decimal number",
                    t.min_usd.as_str()
                )
            })?;
            amount_discounts.push((
                min,
                positive("payments.amount_discounts.discount", &t.discount)?,
            ));
        }
        amount_discounts.sort_by_key(|a| a.0);
        let epay = if cfg.epay.gateway_url.trim().is_empty() {
            None
        } else {
            let e = &cfg.epay;
            let base = http_url("payments.epay.gateway_url", &e.gateway_url)?;
            let submit_url = if base.ends_with(".php") {
                base
            } else {
                format!("{base}/submit.php")
            };
            if e.pid.as_str().trim().is_empty() || e.key.as_str().trim().is_empty() {
                return Err("payments.epay needs pid and key with gateway_url".into());
            }
            if e.methods.is_empty() || e.methods.iter().any(|m| m.trim().is_empty()) {
                return Err("payments.epay.methods must list at least one payment type".into());
            }
            let style = match e.sign_style.as_str() {
                "plain" => SignStyle::Plain,
                "key_param" => SignStyle::KeyParam,
                other => {
                    return Err(format!(
                        "payments.epay.sign_style is `plain` or `key_param`, not `{other}`"
                    ));
                }
            };
            let notify_url = if e.notify_url.is_empty() {
                format!("{public_url}/api/topup/epay/notify")
            } else {
                http_url("payments.epay.notify_url", &e.notify_url)?
            };
            let return_url = if e.return_url.is_empty() {
                format!("{public_url}/api/topup/epay/return")
            } else {
                http_url("payments.epay.return_url", &e.return_url)?
            };
            Some(EpaySettings {
                submit_url,
                pid: e.pid.as_str().trim().to_string(),
                key: e.key.as_str().trim().to_string(),
                rate: positive("payments.epay.cny_per_usd", &e.cny_per_usd)?,
                methods: e.methods.iter().map(|m| m.trim().to_string()).collect(),
                style,
                notify_url,
                return_url,
            })
        };
        let stripe = if cfg.stripe.secret_key.trim().is_empty() {
            None
        } else {
            let s = &cfg.stripe;
            if s.webhook_secret.trim().is_empty() {
                return Err("payments.stripe needs webhook_secret with secret_key".into());
            }
            let currency = s.currency.trim().to_ascii_lowercase();
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(format!(
                    "payments.stripe.currency `{}` is not a three-letter ISO code",
                    s.currency
                ));
            }
            if s.tolerance_secs <= 0 {
                return Err("payments.stripe.tolerance_secs must be at least 1".into());
            }
            let success_url = if s.success_url.is_empty() {
                format!("{public_url}/api/topup/stripe/return?order_no={{ORDER_NO}}")
            } else {
                http_url("payments.stripe.success_url", &s.success_url)?
            };
            let cancel_url = if s.cancel_url.is_empty() {
                format!("{public_url}/api/topup/stripe/return?order_no={{ORDER_NO}}&canceled=1")
            } else {
                http_url("payments.stripe.cancel_url", &s.cancel_url)?
            };
            Some(StripeSettings {
                secret_key: s.secret_key.trim().to_string(),
                webhook_secret: s.webhook_secret.trim().to_string(),
                api_base: http_url("payments.stripe.api_base", &s.api_base)?,
                currency,
                rate: positive("payments.stripe.rate_per_usd", &s.rate_per_usd)?,
                success_url,
                cancel_url,
                product_name: s.product_name.clone(),
                tolerance_secs: s.tolerance_secs,
            })
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(PaymentsRuntime {
            cfg,
            min_usd,
            max_usd,
            method_discounts,
            amount_discounts,
            epay,
            stripe,
            http,
        })
    }

    /// The multiplier on the money charged for `method` and `amount_usd`.
    pub(crate) fn discount(&self, method: &str, amount_usd: Decimal) -> Decimal {
        let by_method = self
            .method_discounts
            .get(method)
            .copied()
            .unwrap_or(Decimal::ONE);
        let by_amount = self
            .amount_discounts
            .iter()
            .rev()
            .find(|(min, _)| *min <= amount_usd)
            .map(|(_, d)| *d)
            .unwrap_or(Decimal::ONE);
        by_method * by_amount
    }

    /// Reads a top-up amount in USD (a number or decimal text, at most two
    /// decimals, within the configured range) and returns it with its units.
    pub(crate) fn amount(&self, v: &Value) -> Result<(Decimal, i64), ApiError> {
        let text = match v {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(ApiError::bad(
                    "amount_usd is a number or decimal text, e.g. 10 or \"12.50\"",
                ));
            }
        };
        let d: Decimal = text
            .parse()
            .map_err(|_| ApiError::bad(format!("amount_usd `{text}` is not a decimal number")))?;
        if d.normalize().scale() > 2 {
            return Err(ApiError::bad("amount_usd has at most two decimals (cents)"));
        }
        if d < self.min_usd || d > self.max_usd {
            return Err(ApiError::bad(format!(
                "a top-up is between {} and {} USD",
                self.min_usd.normalize(),
                self.max_usd.normalize()
            )));
        }
        let units = (d * Decimal::from(1_000_000))
            .to_i64()
            .ok_or_else(|| ApiError::bad("amount_usd is too large"))?;
        Ok((d.normalize(), units))
    }
}

/// Digits after the decimal point of a currency's minor unit (Stripe's list
/// of zero-decimal currencies; two for all others used here).
pub(crate) fn currency_exponent(currency: &str) -> u32 {
    const ZERO_DECIMAL: &[&str] = &[
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    if ZERO_DECIMAL.contains(&currency) {
        0
    } else {
        2
    }
}

/// `major` in minor units, rounded half up; at least 1.
pub(crate) fn to_minor(major: Decimal, exponent: u32) -> Result<i64, ApiError> {
    let minor = (major * Decimal::from(10i64.pow(exponent)))
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
        .ok_or_else(|| ApiError::bad("the amount is too large"))?;
    if minor < 1 {
        return Err(ApiError::bad("the amount to charge rounds to nothing"));
    }
    Ok(minor)
}

/// Minor units as text with the currency's decimals, e.g. 7300 → `73.00`.
pub(crate) fn minor_text(minor: i64, currency: &str) -> String {
    let exp = currency_exponent(currency);
    format!("{:.*}", exp as usize, Decimal::new(minor, exp))
}

/// A new order number: a letter for the provider, the time in ms and 14
/// random characters (≈83 bits), so numbers are unique and unguessable.
pub(crate) fn new_order_no(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..14)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{}{tail}", storage::now_ms())
}

/// Compares in time independent of where the inputs differ.
pub(crate) fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An order as the API shows it: the row plus readable amounts.
pub(crate) fn order_json(o: &PaymentOrder) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("amount_usd".into(), json!(billing::units_to_usd(o.amount)));
        m.insert("money_text".into(), json!(minor_text(o.money, &o.currency)));
    }
    v
}

/// The largest part of a callback body kept in the raw-callback table.
const RAW_KEEP: usize = 64 * 1024;
/// The largest callback body read.
pub(crate) const CALLBACK_BODY_LIMIT: usize = 256 * 1024;

/// Request headers as a JSON object (for the raw-callback table).
pub(crate) fn headers_json(h: &HeaderMap) -> String {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match m.get_mut(k.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                m.insert(k.as_str().to_string(), Value::String(v));
            }
        }
    }
    Value::Object(m).to_string()
}

/// Keeps a callback in the raw-callback table; a failure to do so is logged
/// and does not change the answer.
pub(crate) async fn record_callback(s: &AppState, mut c: NewPaymentCallback) {
    if c.body.len() > RAW_KEEP {
        let mut end = RAW_KEEP;
        while !c.body.is_char_boundary(end) {
            end -= 1;
        }
        c.body.truncate(end);
    }
    if c.verdict == "refused" {
        tracing::warn!(provider = %c.provider, order_no = %c.order_no, reason = %c.reason, "payment callback refused");
    } else {
        tracing::info!(provider = %c.provider, order_no = %c.order_no, verdict = %c.verdict, reason = %c.reason, "payment callback");
    }
    if let Err(e) = s.store.record_payment_callback(&c).await {
        tracing::error!(error = %e, "recording a payment callback failed");
    }
}

/// After a balance changed in the database: the relay's in-memory wallets
/// pick up the new balance.
pub(crate) async fn balance_changed(s: &AppState) {
    if let Err(e) = s.relay.reload().await {
        tracing::error!(error = %e, "reloading after a balance change failed");
    }
}

/// `a=1&b=x%20y` → pairs, decoding `+` and percent escapes (invalid UTF-8
/// is replaced). Later duplicates win where a map is built from it.
pub(crate) fn parse_form(s: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    fn hex_val(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

// ---- routes ---------------------------------------------------------------

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/topup/options", get(options))
        .route("/topup/epay", post(epay::create))
        .route("/topup/epay/notify", get(epay::notify).post(epay::notify))
        .route("/topup/epay/return", get(return_page))
        .route("/topup/stripe", post(stripe::create))
        .route("/topup/stripe/webhook", post(stripe::webhook))
        .route("/topup/stripe/return", get(return_page))
        .route("/self/orders", get(self_orders))
        .route("/redeem", post(admin::redeem))
        .route("/payments/orders", get(admin::orders))
        .route("/payments/orders/{order_no}", get(admin::order_get))
        .route(
            "/payments/orders/{order_no}/complete",
            post(admin::order_complete),
        )
        .route(
            "/payments/orders/{order_no}/refund",
            post(admin::order_refund),
        )
        .route("/payments/callbacks", get(admin::callbacks))
        .route(
            "/redemptions",
            get(admin::batches).post(admin::batch_create),
        )
        .route("/redemptions/{id}/codes", get(admin::batch_codes))
        .route("/redemptions/{id}/disable", post(admin::batch_disable))
        .route("/redemption-codes/{id}/disable", post(admin::code_disable))
}

/// What a user may pay with, the limits and the discounts.
async fn options(State(s): State<AppState>, _: Caller) -> ApiResult {
    let p = &s.payments;
    let discounts: Vec<Value> = p
        .amount_discounts
        .iter()
        .map(|(min, d)| json!({"min_usd": min.normalize().to_string(), "discount": d.normalize().to_string()}))
        .collect();
    let methods: BTreeMap<&String, String> = p
        .method_discounts
        .iter()
        .map(|(m, d)| (m, d.normalize().to_string()))
        .collect();
    Ok(Json(json!({
        "min_usd": p.min_usd.normalize().to_string(),
        "max_usd": p.max_usd.normalize().to_string(),
        "method_discounts": methods,
        "amount_discounts": discounts,
        "epay": p.epay.as_ref().map(|e| json!({
            "methods": e.methods, "currency": "cny", "rate": e.rate.normalize().to_string(),
        })),
        "stripe": p.stripe.as_ref().map(|st| json!({
            "methods": ["card"], "currency": st.currency, "rate": st.rate.normalize().to_string(),
        })),
    })))
}

#[derive(Deserialize)]
struct SelfOrdersQuery {
    status: Option<String>,
    before_id: Option<i64>,
    limit: Option<i64>,
}

/// The caller's own orders, newest first.
async fn self_orders(
    State(s): State<AppState>,
    Caller(u): Caller,
    Query(q): Query<SelfOrdersQuery>,
) -> ApiResult {
    let rows = s
        .store
        .payment_orders(&storage::OrderFilter {
            user_id: Some(u.id),
            status: q.status,
            before_id: q.before_id,
            limit: q.limit,
            ..Default::default()
        })
        .await?;
    // the operator's note may name the admin who acted: not shown to users
    let data: Vec<Value> = rows
        .iter()
        .map(|o| {
            let mut v = order_json(o);
            if let Value::Object(m) = &mut v {
                m.remove("note");
            }
            v
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

#[derive(Deserialize)]
struct ReturnQuery {
    out_trade_no: Option<String>,
    order_no: Option<String>,
    canceled: Option<String>,
}

/// The page a payment provider sends the browser back to. It only shows
/// the order's state: crediting happens on the provider's callback.
async fn return_page(State(s): State<AppState>, Query(q): Query<ReturnQuery>) -> Response {
    let order_no = q.out_trade_no.or(q.order_no).unwrap_or_default();
    let order = if order_no.is_empty() {
        None
    } else {
        s.store.payment_order(&order_no).await.ok().flatten()
    };
    let (title, text) = match &order {
        None => (
            "Payment",
            "This order is unknown. If you paid, your balance is updated as soon as the payment provider confirms it.".to_string(),
        ),
        Some(o) if o.status == "paid" => (
            "Payment received",
            format!(
                "Order {} is paid: {} USD were added to your balance.",
                o.order_no,
                billing::units_to_usd(o.amount)
            ),
        ),
        Some(o) if q.canceled.is_some() && o.status == "pending" => (
            "Payment canceled",
            format!(
                "Order {} was not paid. You can start a new top-up at any time.",
                o.order_no
            ),
        ),
        Some(o) if o.status == "pending" => (
            "Waiting for the payment",
            format!(
                "Order {} is waiting for the payment provider's confirmation; your balance is updated as soon as it arrives. This page does not need to stay open.",
                o.order_no
            ),
        ),
        Some(o) => (
            "Payment",
            format!("Order {} is {}.", o.order_no, o.status),
        ),
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title></head><body style=\"font-family:sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem\">\
         <h1>{t}</h1><p>{x}</p><p><a href=\"/\">Back</a></p></body></html>",
        t = html_escape(title),
        x = html_escape(&text),
    );
    (StatusCode::OK, Html(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(cfg: PaymentsConfig) -> PaymentsRuntime {
        relay::install_crypto_provider();
        PaymentsRuntime::new(cfg, "http://127.0.0.1:3000").expect("valid settings")
    }

    #[test]
    fn defaults_are_valid_and_providers_off() {
        let r = runtime(PaymentsConfig::default());
        assert!(r.epay.is_none() && r.stripe.is_none());
        assert_eq!(r.min_usd, Decimal::from(5));
        assert_eq!(r.max_usd, Decimal::from(25_000));
    }

    #[test]
    fn amounts_are_checked_and_exact() {
        let r = runtime(PaymentsConfig::default());
        assert_eq!(r.amount(&json!(10)).map(|a| a.1).ok(), Some(10_000_000));
        assert_eq!(
            r.amount(&json!("12.34")).map(|a| a.1).ok(),
            Some(12_340_000)
        );
        assert!(r.amount(&json!("4.99")).is_err());
        assert!(r.amount(&json!("25000.01")).is_err());
        assert!(r.amount(&json!("10.001")).is_err());
        assert!(r.amount(&json!("ten")).is_err());
        assert!(r.amount(&json!(null)).is_err());
        assert!(r.amount(&json!("25000")).is_ok());
    }

    #[test]
    fn discounts_by_method_and_tier() {
        let mut cfg = PaymentsConfig::default();
        cfg.method_discounts.insert("alipay".into(), "0.95".into());
        cfg.amount_discounts = vec![
            AmountDiscount {
                min_usd: "1000".into(),
                discount: "0.9".into(),
            },
            AmountDiscount {
                min_usd: "100".into(),
                discount: "0.98".into(),
            },
        ];
        let r = runtime(cfg);
        let d = |m: &str, a: i64| r.discount(m, Decimal::from(a));
        assert_eq!(d("wxpay", 10), Decimal::ONE);
        assert_eq!(
            d("alipay", 10),
            "0.95".parse::<Decimal>().unwrap_or_default()
        );
        assert_eq!(
            d("wxpay", 100),
            "0.98".parse::<Decimal>().unwrap_or_default()
        );
        assert_eq!(
            d("wxpay", 5000),
            "0.9".parse::<Decimal>().unwrap_or_default()
        );
        assert_eq!(
            d("alipay", 1000),
            "0.855".parse::<Decimal>().unwrap_or_default()
        );
    }

    #[test]
    fn minor_units_round_half_up() {
        let dec = |s: &str| s.parse::<Decimal>().unwrap_or_default();
        assert_eq!(to_minor(dec("73"), 2).ok(), Some(7300));
        assert_eq!(to_minor(dec("0.005"), 2).ok(), Some(1));
        assert_eq!(to_minor(dec("69.355"), 2).ok(), Some(6936));
        assert_eq!(to_minor(dec("1500.4"), 0).ok(), Some(1500));
        assert!(to_minor(dec("0.004"), 2).is_err());
        assert_eq!(minor_text(7300, "cny"), "73.00");
        assert_eq!(minor_text(5, "usd"), "0.05");
        assert_eq!(minor_text(1500, "jpy"), "1500");
    }

    #[test]
    fn bad_settings_are_refused_with_the_key_named() {
        relay::install_crypto_provider();
        let mut cfg = PaymentsConfig::default();
        cfg.epay.gateway_url = "https://pay.example.com".into();
        let e = PaymentsRuntime::new(cfg.clone(), "http://x")
            .err()
            .unwrap_or_default();
        assert!(e.contains("pid"), "{e}");
        cfg.epay.pid = "1001".into();
        cfg.epay.key = "k".into();
        cfg.epay.sign_style = "sha".into();
        let e = PaymentsRuntime::new(cfg.clone(), "http://x")
            .err()
            .unwrap_or_default();
        assert!(e.contains("sign_style"), "{e}");
        cfg.epay.sign_style = "plain".into();
        let r = PaymentsRuntime::new(cfg, "http://x/").expect("valid");
        let ep = r.epay.as_ref().expect("epay on");
        assert_eq!(ep.submit_url, "https://pay.example.com/submit.php");
        assert_eq!(ep.notify_url, "http://x/api/topup/epay/notify");
        let mut cfg = PaymentsConfig::default();
        cfg.stripe.secret_key = "sk_test_1".into();
        let e = PaymentsRuntime::new(cfg.clone(), "http://x")
            .err()
            .unwrap_or_default();
        assert!(e.contains("webhook_secret"), "{e}");
        cfg.min_topup_usd = "0".into();
        let e = PaymentsRuntime::new(cfg, "http://x")
            .err()
            .unwrap_or_default();
        assert!(e.contains("min_topup_usd"), "{e}");
    }

    #[test]
    fn settings_accept_numbers_where_text_is_expected() {
        let cfg: PaymentsConfig = serde_json::from_value(json!({
            "min_topup_usd": 1, "epay": {"pid": 1001, "cny_per_usd": 7.1},
            "method_discounts": {"alipay": 0.95}
        }))
        .expect("parses");
        assert_eq!(cfg.min_topup_usd.as_str(), "1");
        assert_eq!(cfg.epay.pid.as_str(), "1001");
        assert_eq!(cfg.epay.cny_per_usd.as_str(), "7.1");
        assert_eq!(cfg.method_discounts["alipay"].as_str(), "0.95");
    }

    #[test]
    fn forms_decode() {
        assert_eq!(
            parse_form("a=1&b=x%20y+z&c=&d&e=%E6%94%AF%zz"),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".into(), "x y z".into()),
                ("c".into(), "".into()),
                ("d".into(), "".into()),
                ("e".into(), "支%zz".into()),
            ]
        );
        assert_eq!(
            parse_form("x=%4"),
            vec![("x".to_string(), "%4".to_string())]
        );
    }

    #[test]
    fn order_numbers_are_unique() {
        let set: std::collections::HashSet<String> = (0..1000).map(|_| new_order_no("E")).collect();
        assert_eq!(set.len(), 1000);
        assert!(set.iter().all(|o| o.starts_with('E') && o.len() == 28));
    }
}
