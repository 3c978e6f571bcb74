//! A Stripe stand-in for Checkout, started in-process by tests on
//! `127.0.0.1:0`: the API side and the webhook side.
//!
//! - `POST /v1/checkout/sessions` (form-encoded, `Authorization: Bearer
//!   sk_…`): checks the secret key (401 `invalid_request_error` otherwise),
//!   `mode=payment`, the first line item's `price_data` (`currency`,
//!   positive integer `unit_amount`, `product_data[name]`) and `quantity`,
//!   `success_url`, and `client_reference_id` (at most 200 characters);
//!   errors are Stripe's `{"error":{"type","code","param","message"}}` with
//!   status 400. It answers a `checkout.session` object (`id: cs_test_…`,
//!   `url`, `amount_total`, `currency`, `client_reference_id`, `metadata`,
//!   `status: open`, `payment_status: unpaid`, …). A repeated
//!   `Idempotency-Key` answers the session created first.
//! - [`MockStripe::completed_event`] marks a session paid and builds its
//!   `checkout.session.completed` event; [`MockStripe::deliver`] signs an
//!   event exactly as Stripe does (`Stripe-Signature: t=…,v1=…`, HMAC-SHA256
//!   of `"{t}.{body}"` with the endpoint secret, hex) and POSTs it. Its
//!   [`WebhookOptions`] send with a wrong secret, an old timestamp, an
//!   altered amount (signed, so only the amount check can catch it), or a
//!   body altered after signing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{KeyInit, Mac};
use rand::Rng;
use serde_json::{Value, json};

type HmacSha256 = hmac::Hmac<hmac_sha2::Sha256>;

/// The `v1` signature of a webhook: lowercase hex HMAC-SHA256 of
/// `"{t}.{body}"` keyed with `secret`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Stripe-Signature` header value for `body` signed at `t`.
pub fn signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", signature(secret, t, body))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random_id(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// How [`MockStripe::deliver`] sends an event.
#[derive(Clone, Debug, Default)]
pub struct WebhookOptions {
    /// Sign with this secret instead of the endpoint's.
    pub secret: Option<String>,
    /// Sign with this timestamp (Unix seconds) instead of now.
    pub timestamp: Option<i64>,
    /// Replace `data.object.amount_total` before signing.
    pub amount_total: Option<i64>,
    /// Change the body after signing it (the signature no longer matches).
    pub tamper_after_signing: bool,
}

/// What the webhook endpoint answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookResponse {
    pub status: u16,
    pub body: String,
}

struct StripeState {
    sessions: HashMap<String, Value>,
    idempotency: HashMap<String, String>,
    create_requests: u64,
    last_form: Option<Vec<(String, String)>>,
}

struct Shared {
    base: String,
    secret_key: String,
    webhook_secret: String,
    state: Mutex<StripeState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, StripeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running Stripe stand-in. Dropping it stops the server.
pub struct MockStripe {
    addr: SocketAddr,
    shared: Arc<Shared>,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockStripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockStripe")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MockStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockStripe {
    /// Starts on `127.0.0.1:0`, accepting API calls with `secret_key` and
    /// signing webhooks with `webhook_secret`.
    pub async fn start(secret_key: &str, webhook_secret: &str) -> anyhow::Result<MockStripe> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            base: format!("http://{addr}"),
            secret_key: secret_key.to_string(),
            webhook_secret: webhook_secret.to_string(),
            state: Mutex::new(StripeState {
                sessions: HashMap::new(),
                idempotency: HashMap::new(),
                create_requests: 0,
                last_form: None,
            }),
        });
        let router = Router::new()
            .route("/v1/checkout/sessions", post(create_session))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(MockStripe {
            addr,
            shared,
            http: crate::epay::client()?,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`: what replaces `https://api.stripe.com`.
    pub fn api_base(&self) -> String {
        self.shared.base.clone()
    }

    pub fn webhook_secret(&self) -> &str {
        &self.shared.webhook_secret
    }

    /// `POST /v1/checkout/sessions` calls, accepted or not.
    pub fn create_requests(&self) -> u64 {
        self.shared.lock().create_requests
    }

    /// The form fields of the last session request.
    pub fn last_form(&self) -> Option<Vec<(String, String)>> {
        self.shared.lock().last_form.clone()
    }

    pub fn session(&self, id: &str) -> Option<Value> {
        self.shared.lock().sessions.get(id).cloned()
    }

    /// The session whose `client_reference_id` is `reference`.
    pub fn session_for(&self, reference: &str) -> Option<Value> {
        self.shared
            .lock()
            .sessions
            .values()
            .find(|s| s["client_reference_id"] == reference)
            .cloned()
    }

    /// An event of `kind` about `object`, shaped as Stripe sends them.
    pub fn event(&self, kind: &str, object: Value) -> Value {
        json!({
            "id": random_id("evt_test_", 24),
            "object": "event",
            "api_version": "2024-06-20",
            "created": unix_now(),
            "data": { "object": object },
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null },
            "type": kind,
        })
    }

    /// Marks a session paid (`status: complete`, `payment_status: paid`) and
    /// returns its `checkout.session.completed` event.
    pub fn completed_event(&self, session_id: &str) -> anyhow::Result<Value> {
        let object = {
            let mut st = self.shared.lock();
            let s = st
                .sessions
                .get_mut(session_id)
                .ok_or_else(|| anyhow::anyhow!("no session {session_id}"))?;
            s["status"] = json!("complete");
            s["payment_status"] = json!("paid");
            s["payment_intent"] = json!(random_id("pi_test_", 24));
            s.clone()
        };
        Ok(self.event("checkout.session.completed", object))
    }

    /// The `checkout.session.expired` event of a session (marked expired).
    pub fn expired_event(&self, session_id: &str) -> anyhow::Result<Value> {
        let object = {
            let mut st = self.shared.lock();
            let s = st
                .sessions
                .get_mut(session_id)
                .ok_or_else(|| anyhow::anyhow!("no session {session_id}"))?;
            s["status"] = json!("expired");
            s.clone()
        };
        Ok(self.event("checkout.session.expired", object))
    }

    /// The body and `Stripe-Signature` header that [`MockStripe::deliver`]
    /// would send.
    pub fn signed_body(&self, event: &Value, opts: &WebhookOptions) -> (Vec<u8>, String) {
        let mut event = event.clone();
        if let Some(a) = opts.amount_total {
            event["data"]["object"]["amount_total"] = json!(a);
            event["data"]["object"]["amount_subtotal"] = json!(a);
        }
        // Stripe sends pretty-printed JSON; the signature covers these bytes
        let mut body = serde_json::to_vec_pretty(&event).unwrap_or_default();
        let t = opts.timestamp.unwrap_or_else(unix_now);
        let secret = opts
            .secret
            .as_deref()
            .unwrap_or(&self.shared.webhook_secret);
        let header = signature_header(secret, t, &body);
        if opts.tamper_after_signing {
            let text = String::from_utf8_lossy(&body).replacen(
                "\"amount_total\": ",
                "\"amount_total\": 1",
                1,
            );
            body = text.into_bytes();
        }
        (body, header)
    }

    /// Signs `event` as Stripe does and POSTs it to `url`.
    pub async fn deliver(
        &self,
        url: &str,
        event: &Value,
        opts: &WebhookOptions,
    ) -> anyhow::Result<WebhookResponse> {
        let (body, header) = self.signed_body(event, opts);
        self.deliver_raw(url, body, &header).await
    }

    /// POSTs `body` with a given `Stripe-Signature` header.
    pub async fn deliver_raw(
        &self,
        url: &str,
        body: Vec<u8>,
        signature_header: &str,
    ) -> anyhow::Result<WebhookResponse> {
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .header("stripe-signature", signature_header)
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok(WebhookResponse {
            status,
            body: resp.text().await?,
        })
    }
}

fn stripe_error(status: StatusCode, code: &str, param: Option<&str>, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {
            "type": "invalid_request_error", "code": code, "param": param, "message": message,
        }})),
    )
        .into_response()
}

fn decode_form(s: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'+' {
                out.push(b' ');
            } else if b[i] == b'%'
                && i + 2 < b.len()
                && let (Some(h), Some(l)) = (
                    (b[i + 1] as char).to_digit(16),
                    (b[i + 2] as char).to_digit(16),
                )
            {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            } else {
                out.push(b[i]);
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

async fn create_session(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    shared.lock().create_requests += 1;
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let idem = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let key = auth.strip_prefix("Bearer ").unwrap_or("");
    if key != shared.secret_key {
        let shown = key.get(..8).unwrap_or(key);
        return stripe_error(
            StatusCode::UNAUTHORIZED,
            "api_key_invalid",
            None,
            &format!("Invalid API Key provided: {shown}***"),
        );
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), 256 * 1024).await else {
        return stripe_error(StatusCode::BAD_REQUEST, "body", None, "unreadable body");
    };
    let form = decode_form(&String::from_utf8_lossy(&body));
    shared.lock().last_form = Some(form.clone());
    let f: BTreeMap<&str, &str> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let get = |k: &str| f.get(k).copied().unwrap_or("");
    let missing = |p: &str| {
        stripe_error(
            StatusCode::BAD_REQUEST,
            "parameter_missing",
            Some(p),
            &format!("Missing required param: {p}."),
        )
    };
    let invalid = |p: &str, msg: &str| {
        stripe_error(StatusCode::BAD_REQUEST, "parameter_invalid", Some(p), msg)
    };
    if let Some(k) = &idem {
        let earlier = {
            let st = shared.lock();
            st.idempotency
                .get(k)
                .and_then(|id| st.sessions.get(id))
                .cloned()
        };
        if let Some(s) = earlier {
            return Json(s).into_response();
        }
    }
    if get("mode") != "payment" {
        return invalid("mode", "This mock accepts only mode=payment.");
    }
    if get("success_url").is_empty() {
        return missing("success_url");
    }
    let currency = get("line_items[0][price_data][currency]");
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return invalid(
            "line_items[0][price_data][currency]",
            "Invalid currency: must be a three-letter lowercase ISO code.",
        );
    }
    let Ok(unit_amount) = get("line_items[0][price_data][unit_amount]").parse::<i64>() else {
        return invalid(
            "line_items[0][price_data][unit_amount]",
            "Invalid integer: unit_amount.",
        );
    };
    if unit_amount < 1 {
        return invalid(
            "line_items[0][price_data][unit_amount]",
            "unit_amount must be at least 1.",
        );
    }
    if get("line_items[0][price_data][product_data][name]").is_empty() {
        return missing("line_items[0][price_data][product_data][name]");
    }
    let Ok(quantity) = get("line_items[0][quantity]").parse::<i64>() else {
        return missing("line_items[0][quantity]");
    };
    if quantity < 1 {
        return invalid("line_items[0][quantity]", "quantity must be at least 1.");
    }
    let reference = get("client_reference_id");
    if reference.chars().count() > 200 {
        return invalid(
            "client_reference_id",
            "client_reference_id must be at most 200 characters.",
        );
    }
    let metadata: serde_json::Map<String, Value> = form
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|r| r.strip_suffix(']'))
                .map(|name| (name.to_string(), json!(v)))
        })
        .collect();
    let id = random_id("cs_test_", 58);
    let now = unix_now();
    let opt = |k: &str| {
        let v = get(k);
        if v.is_empty() { Value::Null } else { json!(v) }
    };
    let session = json!({
        "id": id,
        "object": "checkout.session",
        "amount_subtotal": unit_amount * quantity,
        "amount_total": unit_amount * quantity,
        "cancel_url": opt("cancel_url"),
        "client_reference_id": opt("client_reference_id"),
        "created": now,
        "currency": currency,
        "customer": null,
        "customer_details": null,
        "customer_email": opt("customer_email"),
        "expires_at": now + 86_400,
        "livemode": false,
        "metadata": metadata,
        "mode": "payment",
        "payment_intent": null,
        "payment_status": "unpaid",
        "status": "open",
        "success_url": get("success_url"),
        "url": format!("{}/c/pay/{id}", shared.base),
    });
    let mut st = shared.lock();
    st.sessions.insert(id.clone(), session.clone());
    if let Some(k) = idem {
        st.idempotency.insert(k, id);
    }
    Json(session).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_header_format() {
        let h = signature_header("whsec_x", 1_700_000_000, b"{}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
    }

    #[tokio::test]
    async fn sessions_need_the_key_and_the_fields() {
        let st = MockStripe::start("sk_test_good", "whsec_x").await.unwrap();
        let http = crate::epay::client().unwrap();
        let url = format!("{}/v1/checkout/sessions", st.api_base());
        let form = "mode=payment&client_reference_id=S1&line_items%5B0%5D%5Bprice_data%5D%5Bcurrency%5D=usd\
                    &line_items%5B0%5D%5Bprice_data%5D%5Bunit_amount%5D=1000\
                    &line_items%5B0%5D%5Bprice_data%5D%5Bproduct_data%5D%5Bname%5D=Top-up\
                    &line_items%5B0%5D%5Bquantity%5D=1&success_url=http%3A%2F%2Fx%2Fok\
                    &metadata%5Border_no%5D=S1";
        let r = http
            .post(&url)
            .bearer_auth("sk_test_bad")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .post(&url)
            .bearer_auth("sk_test_good")
            .body(form.replace("mode=payment", "mode=setup"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = http
            .post(&url)
            .bearer_auth("sk_test_good")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let s: Value = r.json().await.unwrap();
        assert!(s["id"].as_str().unwrap().starts_with("cs_test_"));
        assert_eq!(s["amount_total"], 1000);
        assert_eq!(s["metadata"]["order_no"], "S1");
        let ev = st.completed_event(s["id"].as_str().unwrap()).unwrap();
        assert_eq!(ev["type"], "checkout.session.completed");
        assert_eq!(ev["data"]["object"]["payment_status"], "paid");
        let (body, header) = st.signed_body(&ev, &WebhookOptions::default());
        let t: i64 = header[2..12].parse().unwrap();
        assert!(header.ends_with(&signature("whsec_x", t, &body)));
    }
}
