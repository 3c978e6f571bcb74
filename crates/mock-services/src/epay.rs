//! A 彩虹易支付-style epay gateway stand-in, started in-process by tests on
//! `127.0.0.1:0`.
//!
//! - `GET|POST /submit.php`: accepts the merchant's signed purchase form
//!   (`pid, type, out_trade_no, notify_url, return_url, name, money[, device,
//!   param, clientip, sitename], sign, sign_type=MD5`), checks the merchant
//!   id, the MD5 signature and the fields, records the order under a new
//!   gateway `trade_no` and answers a cashier page. Errors are answered as
//!   the gateways do, as a page with the message (here with status 400).
//! - [`MockEpay::pay`] "pays" a submitted order and sends the notify callback
//!   to its `notify_url` as a real gateway does: a GET with the query
//!   parameters `pid, trade_no, out_trade_no, type, name, money,
//!   trade_status=TRADE_SUCCESS, sign, sign_type=MD5`. The answer (`success`
//!   or anything else) is returned.
//! - Test controls: [`MockEpay::notify_params`] builds the signed parameters
//!   of an order's callback so a test can change them (and re-sign with
//!   [`sign_params`], with the right or a wrong key) before
//!   [`MockEpay::send_notify`] / [`MockEpay::send_notify_post`] deliver them,
//!   as often and as concurrently as it likes.
//!
//! Signature: parameters without `sign`, `sign_type` and empty values,
//! sorted by key, joined `k=v` with `&`, the merchant key appended directly,
//! MD5, lowercase hex.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use md5::{Digest, Md5};

/// The MD5 signature of `params` with the merchant `key`, lowercase hex.
pub fn sign_params(params: &BTreeMap<String, String>, key: &str) -> String {
    let joined = params
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && k.as_str() != "sign_type" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    hex::encode(Md5::digest(format!("{joined}{key}").as_bytes()))
}

/// `params` with `sign` (made with `key`) and `sign_type=MD5` set.
pub fn signed(mut params: BTreeMap<String, String>, key: &str) -> BTreeMap<String, String> {
    let s = sign_params(&params, key);
    params.insert("sign".into(), s);
    params.insert("sign_type".into(), "MD5".into());
    params
}

/// A purchase the gateway accepted through `submit.php`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmittedOrder {
    /// The gateway's id of the payment.
    pub trade_no: String,
    pub out_trade_no: String,
    /// `alipay`, `wxpay`, …
    pub pay_type: String,
    pub name: String,
    /// Yuan, as submitted (e.g. `73.00`).
    pub money: String,
    pub notify_url: String,
    pub return_url: String,
    /// Every field as submitted, signature included.
    pub params: BTreeMap<String, String>,
    /// Whether [`MockEpay::pay`] was called for it.
    pub paid: bool,
}

/// What a merchant answered to a notify callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub status: u16,
    pub body: String,
}

impl Delivery {
    /// The merchant acknowledged the notification (`success`).
    pub fn acknowledged(&self) -> bool {
        self.status == 200 && self.body.trim() == "success"
    }
}

struct EpayState {
    orders: HashMap<String, SubmittedOrder>,
    submits: u64,
    rejected_submits: u64,
}

struct Shared {
    pid: String,
    key: String,
    counter: AtomicU64,
    state: Mutex<EpayState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, EpayState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running epay stand-in. Dropping it stops the server.
pub struct MockEpay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockEpay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockEpay")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MockEpay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k=v&…`, percent-encoded.
pub fn encode_query(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn decode_component(s: &str) -> String {
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

fn decode_form(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode_component(k), decode_component(v)),
            None => (decode_component(p), String::new()),
        })
        .collect()
}

pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

impl MockEpay {
    /// Starts on `127.0.0.1:0` for the merchant `pid` with the signing `key`.
    pub async fn start(pid: &str, key: &str) -> anyhow::Result<MockEpay> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            pid: pid.to_string(),
            key: key.to_string(),
            counter: AtomicU64::new(0),
            state: Mutex::new(EpayState {
                orders: HashMap::new(),
                submits: 0,
                rejected_submits: 0,
            }),
        });
        let router = Router::new()
            .route("/submit.php", get(submit).post(submit))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(MockEpay {
            addr,
            shared,
            http: client()?,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`: the gateway address a merchant configures.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn submit_url(&self) -> String {
        format!("http://{}/submit.php", self.addr)
    }

    pub fn pid(&self) -> &str {
        &self.shared.pid
    }

    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Accepted `submit.php` calls.
    pub fn submits(&self) -> u64 {
        self.shared.lock().submits
    }

    /// Refused `submit.php` calls.
    pub fn rejected_submits(&self) -> u64 {
        self.shared.lock().rejected_submits
    }

    pub fn order(&self, out_trade_no: &str) -> Option<SubmittedOrder> {
        self.shared.lock().orders.get(out_trade_no).cloned()
    }

    pub fn orders(&self) -> Vec<SubmittedOrder> {
        self.shared.lock().orders.values().cloned().collect()
    }

    /// The signed parameters of the success notification of a submitted
    /// order, exactly as [`MockEpay::pay`] sends them.
    pub fn notify_params(&self, out_trade_no: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let o = self
            .order(out_trade_no)
            .ok_or_else(|| anyhow::anyhow!("order {out_trade_no} was never submitted"))?;
        let mut p = BTreeMap::new();
        p.insert("pid".to_string(), self.shared.pid.clone());
        p.insert("trade_no".into(), o.trade_no);
        p.insert("out_trade_no".into(), o.out_trade_no);
        p.insert("type".into(), o.pay_type);
        p.insert("name".into(), o.name);
        p.insert("money".into(), o.money);
        p.insert("trade_status".into(), "TRADE_SUCCESS".into());
        if let Some(param) = o.params.get("param") {
            p.insert("param".into(), param.clone());
        }
        Ok(signed(p, &self.shared.key))
    }

    /// Pays a submitted order and notifies its `notify_url` (GET).
    pub async fn pay(&self, out_trade_no: &str) -> anyhow::Result<Delivery> {
        let params = self.notify_params(out_trade_no)?;
        let url = {
            let mut st = self.shared.lock();
            let o = st
                .orders
                .get_mut(out_trade_no)
                .ok_or_else(|| anyhow::anyhow!("order {out_trade_no} was never submitted"))?;
            o.paid = true;
            o.notify_url.clone()
        };
        self.send_notify(&url, &params).await
    }

    /// Sends `params` to `url` as a GET notification (what gateways do).
    pub async fn send_notify(
        &self,
        url: &str,
        params: &BTreeMap<String, String>,
    ) -> anyhow::Result<Delivery> {
        let sep = if url.contains('?') { '&' } else { '?' };
        let resp = self
            .http
            .get(format!("{url}{sep}{}", encode_query(params)))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok(Delivery {
            status,
            body: resp.text().await?,
        })
    }

    /// Sends `params` to `url` as a POSTed form (what some forks do).
    pub async fn send_notify_post(
        &self,
        url: &str,
        params: &BTreeMap<String, String>,
    ) -> anyhow::Result<Delivery> {
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_query(params))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok(Delivery {
            status,
            body: resp.text().await?,
        })
    }
}

fn refuse(shared: &Shared, msg: &str) -> Response {
    shared.lock().rejected_submits += 1;
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><html><body><h3>支付失败</h3><p>{msg}</p></body></html>"
        )),
    )
        .into_response()
}

async fn submit(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut params = decode_form(&query);
    if method == Method::POST {
        let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
            return refuse(&shared, "unreadable form");
        };
        params.extend(decode_form(&String::from_utf8_lossy(&body)));
    }
    let field = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if field("pid") != shared.pid {
        return refuse(&shared, "商户不存在 (unknown merchant pid)");
    }
    if field("sign_type") != "MD5" {
        return refuse(&shared, "sign_type must be MD5");
    }
    if !field("sign").eq_ignore_ascii_case(&sign_params(&params, &shared.key)) {
        return refuse(&shared, "签名校验失败 (signature check failed)");
    }
    for k in ["type", "out_trade_no", "notify_url", "name", "money"] {
        if field(k).is_empty() {
            return refuse(&shared, &format!("missing field {k}"));
        }
    }
    let money = field("money");
    let money_ok =
        money
            .split_once('.')
            .map_or(money.bytes().all(|b| b.is_ascii_digit()), |(a, b)| {
                !a.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.len() <= 2
                    && b.bytes().all(|c| c.is_ascii_digit())
            });
    if !money_ok || money.trim_matches(|c| c == '0' || c == '.').is_empty() {
        return refuse(&shared, "money must be a positive amount of yuan");
    }
    if !(field("notify_url").starts_with("http://") || field("notify_url").starts_with("https://"))
    {
        return refuse(&shared, "notify_url must be an http(s) URL");
    }
    let out_trade_no = field("out_trade_no").to_string();
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let trade_no = format!("{ms}{:06}", n % 1_000_000);
    let mut st = shared.lock();
    if let Some(prev) = st.orders.get(&out_trade_no).cloned() {
        if prev.money != money {
            drop(st);
            return refuse(
                &shared,
                "订单号重复 (out_trade_no reused with another amount)",
            );
        }
        st.submits += 1;
        return cashier(&prev);
    }
    let order = SubmittedOrder {
        trade_no,
        out_trade_no: out_trade_no.clone(),
        pay_type: field("type").to_string(),
        name: field("name").to_string(),
        money: money.to_string(),
        notify_url: field("notify_url").to_string(),
        return_url: field("return_url").to_string(),
        params: params.clone(),
        paid: false,
    };
    let page = cashier(&order);
    st.orders.insert(out_trade_no, order);
    st.submits += 1;
    page
}

fn cashier(o: &SubmittedOrder) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><html><body><h3>收银台</h3><p>订单 {} / 交易号 <span id=\"trade_no\">{}</span></p><p>{} ¥{}</p></body></html>",
            esc(&o.out_trade_no),
            esc(&o.trade_no),
            esc(&o.name),
            esc(&o.money)
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_md5_of_sorted_fields_and_key() {
        let p: BTreeMap<String, String> = [
            ("type", "alipay"),
            ("pid", "1001"),
            ("money", "7.30"),
            ("param", ""),
            ("sign_type", "MD5"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            sign_params(&p, "KEY"),
            hex::encode(Md5::digest(b"money=7.30&pid=1001&type=alipayKEY"))
        );
    }

    #[test]
    fn queries_round_trip() {
        let p: BTreeMap<String, String> = [("name", "会员 +1&x=y"), ("a", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(decode_form(&encode_query(&p)), p);
    }

    #[tokio::test]
    async fn submit_checks_the_signature_then_pay_notifies() {
        let gw = MockEpay::start("1001", "merchant-key").await.unwrap();
        // a merchant that records what it is told
        let got = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = got.clone();
        let app = Router::new().route(
            "/notify",
            get(move |req: Request| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(req.uri().query().unwrap_or("").to_string());
                    "success"
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let merchant = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        let mut p = BTreeMap::new();
        for (k, v) in [
            ("pid", "1001"),
            ("type", "alipay"),
            ("out_trade_no", "E1"),
            ("notify_url", &format!("http://{merchant}/notify")),
            ("return_url", "http://x/return"),
            ("name", "TopUp"),
            ("money", "73.00"),
        ] {
            p.insert(k.to_string(), v.to_string());
        }
        let http = client().unwrap();
        let forged = signed(p.clone(), "wrong");
        let r = http
            .get(format!("{}?{}", gw.submit_url(), encode_query(&forged)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let good = signed(p, "merchant-key");
        let r = http
            .post(gw.submit_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_query(&good))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(gw.submits(), 1);
        let d = gw.pay("E1").await.unwrap();
        assert!(d.acknowledged());
        let q = got.lock().unwrap().pop().unwrap();
        let params = decode_form(&q);
        assert_eq!(params["trade_status"], "TRADE_SUCCESS");
        assert_eq!(params["money"], "73.00");
        assert_eq!(params["sign"], sign_params(&params, "merchant-key"));
        assert!(gw.order("E1").unwrap().paid);
    }
}
