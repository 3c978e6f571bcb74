//! Top-ups end to end against stand-ins that speak the real protocols: an
//! epay gateway (signed `submit.php`, MD5-signed notify callbacks) and
//! Stripe (Checkout Sessions, signed webhooks). Every credit happens once
//! however callbacks are replayed, raced or reordered; refused callbacks are
//! kept with their reason; orders survive a restart; admins complete and
//! refund orders; redemption codes are used once; and a seeded random mix of
//! all of it, with relay usage, keeps every balance equal to its ledger. Each
//! test runs on SQLite and (with `TEST_DATABASE_URL`) on PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use mock_services::epay::{Delivery, MockEpay, sign_params, signed};
use mock_services::stripe::{MockStripe, WebhookOptions, WebhookResponse, unix_now};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use test_support::{Backend, TestApp, backends};

const PID: &str = "1001";
const EPAY_KEY: &str = "epay-merchant-key-for-tests";
const STRIPE_SK: &str = "sk_test_gateway_for_tests";
const STRIPE_WHSEC: &str = "whsec_gateway_for_tests";
const USD: i64 = 1_000_000;

/// The app with both providers configured against the stand-ins; alipay
/// top-ups cost 5% less.
struct Env {
    t: TestApp,
    epay: MockEpay,
    stripe: MockStripe,
}

fn configure(c: &mut gateway::Config, epay: &MockEpay, stripe: &MockStripe) {
    c.payments.epay.gateway_url = epay.base_url();
    c.payments.epay.pid = PID.into();
    c.payments.epay.key = EPAY_KEY.into();
    c.payments
        .method_discounts
        .insert("alipay".into(), "0.95".into());
    c.payments.stripe.secret_key = STRIPE_SK.into();
    c.payments.stripe.webhook_secret = STRIPE_WHSEC.into();
    c.payments.stripe.api_base = stripe.api_base();
}

async fn spawn(backend: Backend) -> Env {
    let epay = MockEpay::start(PID, EPAY_KEY).await.unwrap();
    let stripe = MockStripe::start(STRIPE_SK, STRIPE_WHSEC).await.unwrap();
    let t = TestApp::spawn_with(backend, |c| configure(c, &epay, &stripe)).await;
    Env { t, epay, stripe }
}

impl Env {
    /// Stops the app and starts it again on the same database and address
    /// (so the URLs given to the providers still reach it).
    async fn restart(self) -> Env {
        let Env { t, epay, stripe } = self;
        let TestApp {
            app,
            mock,
            db,
            admin_token,
            http,
        } = t;
        let addr = app.addr;
        app.shutdown().await;
        let mut cfg = test_support::test_config(&db.url);
        cfg.server.listen = addr.to_string();
        configure(&mut cfg, &epay, &stripe);
        let mut started = None;
        for _ in 0..50 {
            match gateway::App::start(cfg.clone()).await {
                Ok(a) => {
                    started = Some(a);
                    break;
                }
                // the port may take a moment to be free again
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let app = started.expect("the app starts again on the same address");
        Env {
            t: TestApp {
                app,
                mock,
                db,
                admin_token,
                http,
            },
            epay,
            stripe,
        }
    }

    /// A user with an API key and a management access token.
    async fn user(&self, name: &str) -> (i64, String, String) {
        let (uid, key) = self.t.user_with_key(name, "0").await;
        let (st, v) = self
            .t
            .post_json(
                "/api/auth/login",
                "",
                &json!({"username": name, "password": "password123"}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        (uid, key, v["token"].as_str().unwrap().to_string())
    }

    /// Opens an epay order and submits it to the gateway as the browser
    /// would; returns the order number.
    async fn epay_order(&self, token: &str, amount_usd: &str, method: &str) -> String {
        let (st, v) = self
            .t
            .post_json(
                "/api/topup/epay",
                token,
                &json!({"amount_usd": amount_usd, "method": method}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let url = v["url"].as_str().unwrap();
        assert!(url.starts_with(&self.epay.submit_url()), "{url}");
        let r = self.t.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        v["order_no"].as_str().unwrap().to_string()
    }

    /// Opens a Stripe order; returns the order number and the session id.
    async fn stripe_order(&self, token: &str, amount_usd: &str) -> (String, String) {
        let (st, v) = self
            .t
            .post_json(
                "/api/topup/stripe",
                token,
                &json!({"amount_usd": amount_usd}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        (
            v["order_no"].as_str().unwrap().to_string(),
            v["session_id"].as_str().unwrap().to_string(),
        )
    }

    fn webhook_url(&self) -> String {
        self.t.url("/api/topup/stripe/webhook")
    }

    fn notify_url(&self) -> String {
        self.t.url("/api/topup/epay/notify")
    }

    /// Delivers an epay notification (GET) to the app.
    async fn notify(&self, params: &BTreeMap<String, String>) -> Delivery {
        self.epay
            .send_notify(&self.notify_url(), params)
            .await
            .unwrap()
    }

    /// Delivers a Stripe event to the app, signed with `opts`.
    async fn webhook(&self, event: &Value, opts: &WebhookOptions) -> WebhookResponse {
        self.stripe
            .deliver(&self.webhook_url(), event, opts)
            .await
            .unwrap()
    }

    async fn order(&self, order_no: &str) -> (Value, Vec<Value>) {
        let v = self
            .t
            .admin("GET", &format!("/api/payments/orders/{order_no}"), None)
            .await;
        (
            v["data"].clone(),
            v["callbacks"].as_array().unwrap().clone(),
        )
    }

    /// Ledger rows of a user with this reference.
    async fn ledger_refs(&self, uid: i64, reference: &str) -> Vec<storage::LedgerRow> {
        self.t
            .app
            .store
            .ledger(uid, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.reference.as_deref() == Some(reference))
            .collect()
    }

    async fn finish(self) {
        self.t.finish().await;
    }
}

/// A GET with an access token: (status, JSON body).
async fn get_json(t: &TestApp, path: &str, bearer: &str) -> (u16, Value) {
    let r = t
        .http
        .get(t.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn verdicts(callbacks: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in callbacks {
        *m.entry(c["verdict"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

#[tokio::test]
async fn epay_callback_credits_exactly_once() {
    for backend in backends() {
        let e = spawn(backend).await;
        let (uid, _, token) = e.user("alice").await;

        let order_no = e.epay_order(&token, "10", "alipay").await;
        // 10 USD × 7.3 CNY × 0.95 (alipay) = 69.35 CNY charged; 10 USD credited
        let submitted = e.epay.order(&order_no).unwrap();
        assert_eq!(submitted.money, "69.35");
        assert_eq!(submitted.pay_type, "alipay");
        assert_eq!(submitted.notify_url, e.notify_url());
        let (o, _) = e.order(&order_no).await;
        assert_eq!(o["status"], "pending");
        assert_eq!(o["money"], 6935);
        assert_eq!(o["currency"], "cny");
        assert_eq!(o["amount"], 10 * USD);

        let d = e.epay.pay(&order_no).await.unwrap();
        assert!(d.acknowledged(), "{d:?}");
        assert_eq!(e.t.balance(uid).await, 10 * USD);
        let (o, cbs) = e.order(&order_no).await;
        assert_eq!(o["status"], "paid");
        assert_eq!(o["trade_no"], submitted.trade_no.as_str());
        assert!(o["paid_at"].as_i64().unwrap() > 0);
        assert_eq!(verdicts(&cbs)["credited"], 1);

        // the same callback again, then ten at once: all acknowledged, no credit
        let params = e.epay.notify_params(&order_no).unwrap();
        assert!(
            e.epay
                .send_notify(&e.notify_url(), &params)
                .await
                .unwrap()
                .acknowledged()
        );
        let answers = join_all((0..10).map(|_| e.notify(&params))).await;
        assert!(answers.iter().all(Delivery::acknowledged));
        // a POSTed form (some gateways) is the same callback
        assert!(
            e.epay
                .send_notify_post(&e.notify_url(), &params)
                .await
                .unwrap()
                .acknowledged()
        );
        assert_eq!(e.t.balance(uid).await, 10 * USD);
        assert_eq!(e.ledger_refs(uid, &order_no).await.len(), 1);
        let (_, cbs) = e.order(&order_no).await;
        let v = verdicts(&cbs);
        assert_eq!(v["credited"], 1);
        assert_eq!(v["duplicate"], 12);
        // raw callbacks are kept as received
        let raw = cbs.iter().find(|c| c["verdict"] == "credited").unwrap();
        assert_eq!(raw["http_method"], "GET");
        assert!(
            raw["body"]
                .as_str()
                .unwrap()
                .contains("trade_status=TRADE_SUCCESS")
        );
        assert!(raw["headers"].as_str().unwrap().contains("host"));

        // ten concurrent first deliveries of a new order: one credit
        let order2 = e.epay_order(&token, "12.34", "wxpay").await;
        assert_eq!(e.epay.order(&order2).unwrap().money, "90.08"); // 12.34 × 7.3 = 90.082
        let params = e.epay.notify_params(&order2).unwrap();
        let answers = join_all((0..10).map(|_| e.notify(&params))).await;
        assert!(answers.iter().all(Delivery::acknowledged));
        assert_eq!(e.t.balance(uid).await, 10 * USD + 12_340_000);
        assert_eq!(e.ledger_refs(uid, &order2).await.len(), 1);
        let (_, cbs) = e.order(&order2).await;
        assert_eq!(verdicts(&cbs)["credited"], 1);
        assert_eq!(verdicts(&cbs)["duplicate"], 9);

        // the user sees both orders, paid
        let (st, v) = get_json(&e.t, "/api/self/orders", &token).await;
        assert_eq!(st, 200, "{v}");
        let orders = v["data"].as_array().unwrap();
        assert_eq!(orders.len(), 2);
        assert!(orders.iter().all(|o| o["status"] == "paid"));
        assert_eq!(orders[0]["order_no"], order2.as_str());
        assert_eq!(orders[0]["amount_usd"], "12.340000");

        // the return page shows the order's state, and credits nothing
        let page =
            e.t.http
                .get(e.t.url(&format!("/api/topup/epay/return?out_trade_no={order2}")))
                .send()
                .await
                .unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("12.340000 USD"));
        assert_eq!(e.t.balance(uid).await, 10 * USD + 12_340_000);
        e.t.assert_ledger_ok().await;
        e.finish().await;
    }
}

#[tokio::test]
async fn epay_bad_callbacks_are_refused_and_logged() {
    for backend in backends() {
        let e = spawn(backend).await;
        let (uid, _, token) = e.user("bob").await;
        let order_no = e.epay_order(&token, "20", "wxpay").await;
        let good = e.epay.notify_params(&order_no).unwrap();
        let url = e.notify_url();
        let resign = |p: BTreeMap<String, String>| signed(p, EPAY_KEY);
        let set = |k: &str, v: &str| {
            let mut p = good.clone();
            p.insert(k.into(), v.into());
            p
        };

        // forged: signed with another key; also a signature that was altered
        let forged = signed(good.clone(), "not-the-merchant-key");
        let mut tampered = good.clone();
        tampered.insert("money".into(), "0.01".into());
        // wrong amount, correctly signed (the gateway's key leaked or a bug)
        let wrong_amount = resign(set("money", "145.99"));
        // unknown order
        let unknown = resign(set("out_trade_no", "E0000000000000nosuchorder"));
        // not paid
        let waiting = resign(set("trade_status", "WAIT_BUYER_PAY"));
        // another merchant's callback
        let other_pid = resign(set("pid", "2002"));
        let cases = [
            (&forged, "bad signature"),
            (&tampered, "bad signature"),
            (&wrong_amount, "differs"),
            (&unknown, "unknown order"),
            (&waiting, "TRADE_SUCCESS"),
            (&other_pid, "pid"),
        ];
        for (params, _) in &cases {
            let d = e.epay.send_notify(&url, params).await.unwrap();
            assert_eq!(d.body, "fail", "{params:?}");
        }
        assert_eq!(e.t.balance(uid).await, 0);
        let (o, _) = e.order(&order_no).await;
        assert_eq!(o["status"], "pending");

        let v =
            e.t.admin("GET", "/api/payments/callbacks?verdict=refused", None)
                .await;
        let refused = v["data"].as_array().unwrap();
        assert_eq!(refused.len(), cases.len());
        for (params, reason) in &cases {
            let query_sign = params["sign"].as_str();
            assert!(
                refused.iter().any(|c| {
                    c["reason"].as_str().unwrap().contains(reason)
                        && c["body"].as_str().unwrap().contains(query_sign)
                }),
                "no refused callback with `{reason}`: {refused:?}"
            );
        }
        assert!(
            refused
                .iter()
                .any(|c| c["order_no"] == "E0000000000000nosuchorder")
        );

        // a signature in upper case is the same signature
        let mut upper = good.clone();
        let s = sign_params(&upper, EPAY_KEY).to_ascii_uppercase();
        upper.insert("sign".into(), s);
        assert!(
            e.epay
                .send_notify(&url, &upper)
                .await
                .unwrap()
                .acknowledged()
        );
        assert_eq!(e.t.balance(uid).await, 20 * USD);
        // and a refused status arriving afterwards still changes nothing
        assert_eq!(
            e.epay.send_notify(&url, &waiting).await.unwrap().body,
            "fail"
        );
        assert_eq!(e.t.balance(uid).await, 20 * USD);

        // callbacks are for the service's gateway only; users cannot list them
        let (st, _) = get_json(&e.t, "/api/payments/callbacks", &token).await;
        assert_eq!(st, 403);
        e.t.assert_ledger_ok().await;
        e.finish().await;
    }
}

#[tokio::test]
async fn stripe_webhook_credits_exactly_once() {
    for backend in backends() {
        let e = spawn(backend).await;
        let (uid, _, token) = e.user("carol").await;
        let no_opts = WebhookOptions::default();
        let (order_no, session_id) = e.stripe_order(&token, "20").await;

        // the session was created as Stripe expects
        let form: BTreeMap<String, String> = e.stripe.last_form().unwrap().into_iter().collect();
        assert_eq!(form["mode"], "payment");
        assert_eq!(form["client_reference_id"], order_no);
        assert_eq!(form["metadata[order_no]"], order_no);
        assert_eq!(form["line_items[0][price_data][currency]"], "usd");
        assert_eq!(form["line_items[0][price_data][unit_amount]"], "2000");
        assert_eq!(form["line_items[0][quantity]"], "1");
        assert!(form["success_url"].contains(&order_no), "{form:?}");
        let (o, _) = e.order(&order_no).await;
        assert_eq!(o["trade_no"], session_id.as_str());
        assert_eq!(o["money"], 2000);
        assert_eq!(o["method"], "card");

        // an event that is not about payment is acknowledged and ignored
        let other = e.stripe.event("customer.created", json!({"id": "cus_1"}));
        let r = e
            .stripe
            .deliver(&e.webhook_url(), &other, &WebhookOptions::default())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");

        let event = e.stripe.completed_event(&session_id).unwrap();
        let r = e
            .stripe
            .deliver(&e.webhook_url(), &event, &WebhookOptions::default())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(e.t.balance(uid).await, 20 * USD);
        let (o, _) = e.order(&order_no).await;
        assert_eq!(o["status"], "paid");

        // Stripe retries and duplicates: ten at once, signed anew each time
        let answers = join_all((0..10).map(|_| e.webhook(&event, &no_opts))).await;
        assert!(answers.iter().all(|a| a.status == 200));
        // async_payment_succeeded for the same session later: still once
        let late = e.stripe.event(
            "checkout.session.async_payment_succeeded",
            event["data"]["object"].clone(),
        );
        let r = e
            .stripe
            .deliver(&e.webhook_url(), &late, &WebhookOptions::default())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(e.t.balance(uid).await, 20 * USD);
        assert_eq!(e.ledger_refs(uid, &order_no).await.len(), 1);
        let (_, cbs) = e.order(&order_no).await;
        let v = verdicts(&cbs);
        assert_eq!(v["credited"], 1);
        assert_eq!(v["duplicate"], 11);

        // a fresh order raced by ten first deliveries: one credit
        let (order2, session2) = e.stripe_order(&token, "7.50").await;
        let event2 = e.stripe.completed_event(&session2).unwrap();
        let answers = join_all((0..10).map(|_| e.webhook(&event2, &no_opts))).await;
        assert!(answers.iter().all(|a| a.status == 200));
        assert_eq!(e.t.balance(uid).await, 27_500_000);
        assert_eq!(e.ledger_refs(uid, &order2).await.len(), 1);

        // an expired session's order is marked failed
        let (order3, session3) = e.stripe_order(&token, "5").await;
        let expired = e.stripe.expired_event(&session3).unwrap();
        let r = e
            .stripe
            .deliver(&e.webhook_url(), &expired, &WebhookOptions::default())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(e.order(&order3).await.0["status"], "failed");
        assert_eq!(e.t.balance(uid).await, 27_500_000);
        e.t.assert_ledger_ok().await;
        e.finish().await;
    }
}

#[tokio::test]
async fn stripe_bad_webhooks_are_refused() {
    for backend in backends() {
        let e = spawn(backend).await;
        let (uid, _, token) = e.user("dave").await;
        let (order_no, session_id) = e.stripe_order(&token, "10").await;
        let event = e.stripe.completed_event(&session_id).unwrap();
        let url = e.webhook_url();
        let cases = [
            (
                WebhookOptions {
                    timestamp: Some(unix_now() - 600),
                    ..Default::default()
                },
                "at most 300 s",
            ),
            (
                WebhookOptions {
                    secret: Some("whsec_someone_else".into()),
                    ..Default::default()
                },
                "no v1 signature matches",
            ),
            (
                WebhookOptions {
                    tamper_after_signing: true,
                    ..Default::default()
                },
                "no v1 signature matches",
            ),
            (
                WebhookOptions {
                    amount_total: Some(1),
                    ..Default::default()
                },
                "differs from the order",
            ),
        ];
        for (opts, _) in &cases {
            let r = e.stripe.deliver(&url, &event, opts).await.unwrap();
            assert_eq!(r.status, 400, "{opts:?}: {r:?}");
        }
        // no signature at all
        let r = e
            .stripe
            .deliver_raw(&url, b"{}".to_vec(), "")
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(e.t.balance(uid).await, 0);
        assert_eq!(e.order(&order_no).await.0["status"], "pending");
        let v =
            e.t.admin(
                "GET",
                "/api/payments/callbacks?provider=stripe&verdict=refused",
                None,
            )
            .await;
        let refused = v["data"].as_array().unwrap();
        assert_eq!(refused.len(), cases.len() + 1);
        for (_, reason) in &cases {
            assert!(
                refused
                    .iter()
                    .any(|c| c["reason"].as_str().unwrap().contains(reason)),
                "no refused webhook with `{reason}`: {refused:?}"
            );
        }
        // then the real one
        let r = e
            .stripe
            .deliver(&url, &event, &WebhookOptions::default())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(e.t.balance(uid).await, 10 * USD);
        e.t.assert_ledger_ok().await;
        e.finish().await;
    }
}

#[tokio::test]
async fn orders_opened_before_a_restart_are_credited_after_it() {
    for backend in backends() {
        let e = spawn(backend).await;
        let (uid, _, token) = e.user("erin").await;
        let epay_no = e.epay_order(&token, "15", "alipay").await;
        let (stripe_no, session_id) = e.stripe_order(&token, "25").await;

        let e = e.restart().await;
        // nothing of the orders lived in memory
        let d = e.epay.pay(&epay_no).await.unwrap();
        assert!(d.acknowledged(), "{d:?}");
        let event = e.stripe.completed_event(&session_id).unwrap();
        let r = e
            .stripe
            .deliver(&e.webhook_url(), &event, &WebhookOptions::default())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(e.t.balance(uid).await, 40 * USD);
        assert_eq!(e.order(&epay_no).await.0["status"], "paid");
        assert_eq!(e.order(&stripe_no).await.0["status"], "paid");
        // the relay sees the new balance at once: a request goes through
        e.t.add_mock_channel("m", &["gpt-4o-mini"], 0).await;
        let (_, key) = {
            let k =
                e.t.admin(
                    "POST",
                    "/api/keys",
                    Some(json!({"user_id": uid, "name": "after-restart"})),
                )
                .await;
            (uid, k["key"].as_str().unwrap().to_string())
        };
        let r = e
            .t
            .chat(
                &key,
                &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}),
            )
            .await;
        assert_eq!(r.status(), 200);
        e.t.assert_ledger_ok().await;
        e.finish().await;
    }
}

#[tokio::test]
async fn admins_complete_and_refund_orders() {
    for backend in backends() {
        let e = spawn(backend).await;
        let (uid, _, token) = e.user("frank").await;
        let order_no = e.epay_order(&token, "10", "wxpay").await;

        // users may not complete orders
        let (st, _) =
            e.t.post_json(
                &format!("/api/payments/orders/{order_no}/complete"),
                &token,
                &json!({}),
            )
            .await;
        assert_eq!(st, 403);

        // the callback never came: an admin completes the order by hand
        let v =
            e.t.admin(
                "POST",
                &format!("/api/payments/orders/{order_no}/complete"),
                Some(json!({"note": "paid, callback lost"})),
            )
            .await;
        assert_eq!(v["result"], "credited");
        assert_eq!(v["balance"], 10 * USD);
        let root_id = e.t.admin("GET", "/api/self", None).await["id"]
            .as_i64()
            .unwrap();
        let rows = e.ledger_refs(uid, &order_no).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "topup");
        assert!(
            rows[0].note.contains(&format!("admin #{root_id}")),
            "{:?}",
            rows[0].note
        );
        // the user sees the order paid, without the operator's note
        let (st, mine) = get_json(&e.t, "/api/self/orders", &token).await;
        assert_eq!(st, 200);
        assert_eq!(mine["data"][0]["status"], "paid");
        assert!(mine["data"][0].get("note").is_none(), "{mine}");
        // again: refused, nothing credited
        let (st, v) =
            e.t.admin_raw(
                "POST",
                &format!("/api/payments/orders/{order_no}/complete"),
                None,
            )
            .await;
        assert_eq!(st, 409, "{v}");
        // the late callback from the gateway is acknowledged and credits nothing
        assert!(e.epay.pay(&order_no).await.unwrap().acknowledged());
        assert_eq!(e.t.balance(uid).await, 10 * USD);

        // refund: a reason is required
        let (st, _) =
            e.t.admin_raw(
                "POST",
                &format!("/api/payments/orders/{order_no}/refund"),
                Some(json!({"reason": " "})),
            )
            .await;
        assert_eq!(st, 400);
        let v =
            e.t.admin(
                "POST",
                &format!("/api/payments/orders/{order_no}/refund"),
                Some(json!({"reason": "customer asked"})),
            )
            .await;
        assert_eq!(v["result"], "refunded");
        assert_eq!(v["balance"], 0);
        assert_eq!(e.order(&order_no).await.0["status"], "refunded");
        let rows = e.ledger_refs(uid, &format!("refund:{order_no}")).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "refund");
        assert_eq!(rows[0].amount, -10 * USD);
        assert!(rows[0].note.contains("customer asked"));
        // twice: refused
        let (st, _) =
            e.t.admin_raw(
                "POST",
                &format!("/api/payments/orders/{order_no}/refund"),
                Some(json!({"reason": "again"})),
            )
            .await;
        assert_eq!(st, 409);
        // a replayed callback after the refund changes nothing either
        assert!(e.epay.pay(&order_no).await.unwrap().acknowledged());
        assert_eq!(e.t.balance(uid).await, 0);

        // a refund larger than the balance is refused, with a clear message
        let (order2, session2) = e.stripe_order(&token, "30").await;
        let ev = e.stripe.completed_event(&session2).unwrap();
        e.stripe
            .deliver(&e.webhook_url(), &ev, &WebhookOptions::default())
            .await
            .unwrap();
        assert_eq!(e.t.balance(uid).await, 30 * USD);
        e.t.admin(
            "POST",
            &format!("/api/users/{uid}/topup"),
            Some(json!({"amount_usd": "-25"})),
        )
        .await;
        let (st, v) =
            e.t.admin_raw(
                "POST",
                &format!("/api/payments/orders/{order2}/refund"),
                Some(json!({"reason": "chargeback"})),
            )
            .await;
        assert_eq!(st, 409, "{v}");
        assert_eq!(v["error"]["code"], "insufficient_balance");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("below zero"),
            "{v}"
        );
        assert_eq!(e.t.balance(uid).await, 5 * USD);
        assert_eq!(e.order(&order2).await.0["status"], "paid");

        // search: by user, status, provider
        let v =
            e.t.admin(
                "GET",
                &format!("/api/payments/orders?user_id={uid}&status=refunded"),
                None,
            )
            .await;
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        let v =
            e.t.admin("GET", "/api/payments/orders?provider=stripe", None)
                .await;
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        assert_eq!(v["data"][0]["order_no"], order2.as_str());
        let v =
            e.t.admin(
                "GET",
                &format!(
                    "/api/payments/orders?order_no={order2}&since=0&until={}",
                    i64::MAX
                ),
                None,
            )
            .await;
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        let v =
            e.t.admin("GET", "/api/payments/orders?since=9999999999999", None)
                .await;
        assert!(v["data"].as_array().unwrap().is_empty());
        e.t.assert_ledger_ok().await;
        e.finish().await;
    }
}

#[tokio::test]
async fn a_redemption_code_credits_once_under_concurrency() {
    for backend in backends() {
        let e = spawn(backend).await;
        let mut users = Vec::new();
        for i in 0..10 {
            users.push(e.user(&format!("redeemer{i}")).await);
        }
        let v =
            e.t.admin(
                "POST",
                "/api/redemptions",
                Some(json!({"count": 3, "quota_usd": "5", "name": "launch", "valid_days": 30})),
            )
            .await;
        let batch_id = v["data"]["id"].as_i64().unwrap();
        let codes: Vec<(i64, String)> = v["codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_i64().unwrap(),
                    c["code"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(codes.len(), 3);

        // ten users race for one code
        let code = codes[0].1.clone();
        let body = json!({"code": code});
        let answers = join_all(
            users
                .iter()
                .map(|(_, _, token)| e.t.post_json("/api/redeem", token, &body)),
        )
        .await;
        let ok: Vec<usize> = (0..answers.len())
            .filter(|i| answers[*i].0 == 200)
            .collect();
        assert_eq!(ok.len(), 1, "{answers:?}");
        assert!(
            answers
                .iter()
                .filter(|a| a.0 != 200)
                .all(|a| a.0 == 400 && a.1["error"]["code"] == "code_used"),
            "{answers:?}"
        );
        let mut total = 0;
        for (uid, _, _) in &users {
            total += e.t.balance(*uid).await;
        }
        assert_eq!(total, 5 * USD);
        let winner = &users[ok[0]];
        assert_eq!(
            e.ledger_refs(winner.0, &format!("redeem:{}", codes[0].0))
                .await
                .len(),
            1
        );
        // the winner again: a message that says so
        let (st, v) =
            e.t.post_json("/api/redeem", &winner.2, &json!({"code": code}))
                .await;
        assert_eq!(st, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("already redeemed")
        );

        // codes are forgiving about case and dashes
        let loose = codes[1].1.to_lowercase().replace('-', " ");
        let (st, v) =
            e.t.post_json("/api/redeem", &users[1].2, &json!({"code": loose}))
                .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["credited_usd"], "5.000000");

        // disabled, unknown, expired
        e.t.admin(
            "POST",
            &format!("/api/redemption-codes/{}/disable", codes[2].0),
            None,
        )
        .await;
        let (st, v) =
            e.t.post_json("/api/redeem", &users[2].2, &json!({"code": codes[2].1}))
                .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("code_disabled"))
        );
        let (st, v) =
            e.t.post_json(
                "/api/redeem",
                &users[2].2,
                &json!({"code": "AAAA-BBBB-CCCC-DDDD"}),
            )
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("code_unknown"))
        );
        // a used code cannot be disabled
        let (st, _) =
            e.t.admin_raw(
                "POST",
                &format!("/api/redemption-codes/{}/disable", codes[0].0),
                None,
            )
            .await;
        assert_eq!(st, 409);
        let v =
            e.t.admin(
                "POST",
                "/api/redemptions",
                Some(json!({"count": 1, "quota_usd": 1, "expires_at": storage::now_ms() + 1500})),
            )
            .await;
        let short = v["codes"][0]["code"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let (st, v) =
            e.t.post_json("/api/redeem", &users[3].2, &json!({"code": short}))
                .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("code_expired"))
        );

        // the admin lists show counts and hints, never the codes
        let v = e.t.admin("GET", "/api/redemptions", None).await;
        let launch = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == batch_id)
            .unwrap()
            .clone();
        assert_eq!(
            (launch["count"].as_i64(), launch["used"].as_i64()),
            (Some(3), Some(2))
        );
        assert_eq!(launch["disabled"], 1);
        let v =
            e.t.admin("GET", &format!("/api/redemptions/{batch_id}/codes"), None)
                .await;
        let text = v.to_string();
        for (_, c) in &codes {
            assert!(!text.contains(c.as_str()));
        }
        assert_eq!(v["codes"][0]["used_by"], winner.0);
        // only admins create codes
        let (st, _) =
            e.t.post_json(
                "/api/redemptions",
                &users[0].2,
                &json!({"count": 1, "quota_usd": 100}),
            )
            .await;
        assert_eq!(st, 403);
        e.t.assert_ledger_ok().await;
        e.finish().await;
    }
}

// ---- property: a seeded random mix keeps every balance equal to its ledger ----

#[derive(Debug, Clone)]
enum Op {
    /// Open an epay order; pay it now (with `replays` extra deliveries at
    /// once), or leave it pending for a later round.
    Epay {
        user: usize,
        cents: i64,
        pay: bool,
        replays: usize,
    },
    Stripe {
        user: usize,
        cents: i64,
        pay: bool,
        replays: usize,
    },
    Redeem {
        user: usize,
        code: usize,
    },
    Chat {
        user: usize,
        n: usize,
    },
    /// Refund the n-th paid order known at the start of the round.
    Refund {
        pick: usize,
    },
    /// Complete the n-th pending order by hand, racing the provider's
    /// callback when `race`.
    Complete {
        pick: usize,
        race: bool,
    },
}

fn random_op(rng: &mut StdRng, users: usize, codes: usize) -> Op {
    let user = rng.random_range(0..users);
    match rng.random_range(0..10) {
        0..=1 => Op::Epay {
            user,
            cents: rng.random_range(500..=5_000),
            pay: rng.random_bool(0.7),
            replays: rng.random_range(0..4),
        },
        2..=3 => Op::Stripe {
            user,
            cents: rng.random_range(500..=5_000),
            pay: rng.random_bool(0.7),
            replays: rng.random_range(0..4),
        },
        4 => Op::Redeem {
            user,
            code: rng.random_range(0..codes),
        },
        5..=6 => Op::Chat {
            user,
            n: rng.random_range(1..4),
        },
        7 => Op::Refund {
            pick: rng.random_range(0..1000),
        },
        _ => Op::Complete {
            pick: rng.random_range(0..1000),
            race: rng.random_bool(0.5),
        },
    }
}

fn usd(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Orders the mix opened: (order_no, provider, gateway reference).
#[derive(Clone, Debug)]
struct Opened {
    order_no: String,
    provider: &'static str,
    session: String,
}

async fn run_op(
    e: &Env,
    op: &Op,
    users: &[(i64, String, String)],
    codes: &[String],
    pending: &[Opened],
    paid: &[String],
) -> Option<Opened> {
    let chat_body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 24});
    match op {
        Op::Epay {
            user,
            cents,
            pay,
            replays,
        } => {
            let order_no = e
                .epay_order(
                    &users[*user].2,
                    &usd(*cents),
                    if cents % 2 == 0 { "alipay" } else { "wxpay" },
                )
                .await;
            if *pay {
                let params = e.epay.notify_params(&order_no).unwrap();
                let answers = join_all((0..=*replays).map(|_| e.notify(&params))).await;
                assert!(answers.iter().all(Delivery::acknowledged));
                None
            } else {
                Some(Opened {
                    order_no,
                    provider: "epay",
                    session: String::new(),
                })
            }
        }
        Op::Stripe {
            user,
            cents,
            pay,
            replays,
        } => {
            let (order_no, session) = e.stripe_order(&users[*user].2, &usd(*cents)).await;
            if *pay {
                let ev = e.stripe.completed_event(&session).unwrap();
                let no_opts = WebhookOptions::default();
                let answers = join_all((0..=*replays).map(|_| e.webhook(&ev, &no_opts))).await;
                assert!(answers.iter().all(|a| a.status == 200));
                None
            } else {
                Some(Opened {
                    order_no,
                    provider: "stripe",
                    session,
                })
            }
        }
        Op::Redeem { user, code } => {
            let (st, v) =
                e.t.post_json(
                    "/api/redeem",
                    &users[*user].2,
                    &json!({"code": codes[*code]}),
                )
                .await;
            assert!(
                st == 200 || (st == 400 && v["error"]["code"] == "code_used"),
                "{st} {v}"
            );
            None
        }
        Op::Chat { user, n } => {
            let answers = join_all((0..*n).map(|_| e.t.chat(&users[*user].1, &chat_body))).await;
            for r in answers {
                let st = r.status().as_u16();
                let _ = r.bytes().await;
                assert!(st == 200 || st == 429, "chat answered {st}");
            }
            None
        }
        Op::Refund { pick } => {
            if paid.is_empty() {
                return None;
            }
            let order_no = &paid[pick % paid.len()];
            let (st, v) =
                e.t.admin_raw(
                    "POST",
                    &format!("/api/payments/orders/{order_no}/refund"),
                    Some(json!({"reason": "property test"})),
                )
                .await;
            assert!(
                st == 200
                    || (st == 409
                        && (v["error"]["code"] == "insufficient_balance"
                            || v["error"]["code"] == "order_not_paid")),
                "{st} {v}"
            );
            None
        }
        Op::Complete { pick, race } => {
            if pending.is_empty() {
                return None;
            }
            let o = &pending[pick % pending.len()];
            let path = format!("/api/payments/orders/{}/complete", o.order_no);
            let by_hand = e.t.admin_raw("POST", &path, None);
            let callback = async {
                if !*race {
                    return;
                }
                if o.provider == "epay" {
                    let params = e.epay.notify_params(&o.order_no).unwrap();
                    let d = e.epay.send_notify(&e.notify_url(), &params).await.unwrap();
                    assert!(d.acknowledged(), "{d:?}");
                } else {
                    let ev = e.stripe.completed_event(&o.session).unwrap();
                    let r = e
                        .stripe
                        .deliver(&e.webhook_url(), &ev, &WebhookOptions::default())
                        .await
                        .unwrap();
                    assert_eq!(r.status, 200, "{r:?}");
                }
            };
            let ((st, v), ()) = tokio::join!(by_hand, callback);
            assert!(
                st == 200 || (st == 409 && v["error"]["code"] == "order_not_pending"),
                "{st} {v}"
            );
            None
        }
    }
}

#[tokio::test]
async fn ledger_invariant_holds_under_a_random_mix() {
    for backend in backends() {
        let e = spawn(backend).await;
        e.t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
        let mut users = Vec::new();
        for i in 0..4 {
            users.push(e.user(&format!("mix{i}")).await);
        }
        let v =
            e.t.admin(
                "POST",
                "/api/redemptions",
                Some(json!({"count": 6, "quota_usd": "3.21"})),
            )
            .await;
        let codes: Vec<String> = v["codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap().to_string())
            .collect();

        let mut rng = StdRng::seed_from_u64(0x0067_6170_2d70_6179);
        let mut pending: Vec<Opened> = Vec::new();
        for round in 0..8 {
            let paid: Vec<String> =
                e.t.admin("GET", "/api/payments/orders?status=paid&limit=1000", None)
                    .await["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["order_no"].as_str().unwrap().to_string())
                    .collect();
            let ops: Vec<Op> = (0..10)
                .map(|_| random_op(&mut rng, users.len(), codes.len()))
                .collect();
            let opened = join_all(
                ops.iter()
                    .map(|op| run_op(&e, op, &users, &codes, &pending, &paid)),
            )
            .await;
            pending.extend(opened.into_iter().flatten());

            // the invariants, after every round
            e.t.assert_ledger_ok().await;
            for (uid, _, _) in &users {
                let balance = e.t.balance(*uid).await;
                let ledger: i64 =
                    e.t.app
                        .store
                        .ledger(*uid, 100_000)
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.amount)
                        .sum();
                let costs: i64 = e.t.logs_of(*uid).await.iter().map(|l| l.cost).sum();
                assert_eq!(
                    balance,
                    ledger - costs,
                    "round {round}, user {uid}: balance vs ledger - costs"
                );
            }
            // each order is credited at most once, and exactly when it was paid
            let all =
                e.t.admin("GET", "/api/payments/orders?limit=1000", None)
                    .await;
            for o in all["data"].as_array().unwrap() {
                let order_no = o["order_no"].as_str().unwrap();
                let uid = o["user_id"].as_i64().unwrap();
                let credits = e.ledger_refs(uid, order_no).await;
                let refunds = e.ledger_refs(uid, &format!("refund:{order_no}")).await;
                match o["status"].as_str().unwrap() {
                    "paid" => assert_eq!((credits.len(), refunds.len()), (1, 0), "{o}"),
                    "refunded" => assert_eq!((credits.len(), refunds.len()), (1, 1), "{o}"),
                    _ => assert_eq!((credits.len(), refunds.len()), (0, 0), "{o}"),
                }
                if let Some(c) = credits.first() {
                    assert_eq!(c.amount, o["amount"].as_i64().unwrap());
                }
            }
            pending.retain(|p| {
                all["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| o["order_no"] == p.order_no.as_str() && o["status"] == "pending")
            });
        }
        // a last, sequential round runs every path once whatever the
        // interleaving of the random rounds was (under load it varies)
        let fresh =
            e.t.admin(
                "POST",
                "/api/redemptions",
                Some(json!({"count": 1, "quota_usd": "1.00"})),
            )
            .await["codes"][0]["code"]
                .as_str()
                .unwrap()
                .to_string();
        let mut all_codes = codes.clone();
        all_codes.push(fresh);
        let none: Vec<String> = Vec::new();
        for op in [
            Op::Epay {
                user: 0,
                cents: 2_000,
                pay: true,
                replays: 1,
            },
            Op::Stripe {
                user: 0,
                cents: 2_000,
                pay: true,
                replays: 1,
            },
            Op::Redeem {
                user: 0,
                code: all_codes.len() - 1,
            },
            Op::Chat { user: 0, n: 1 },
        ] {
            run_op(&e, &op, &users, &all_codes, &pending, &none).await;
        }
        let last_open = run_op(
            &e,
            &Op::Epay {
                user: 0,
                cents: 700,
                pay: false,
                replays: 0,
            },
            &users,
            &all_codes,
            &pending,
            &none,
        )
        .await;
        let newest_paid: Vec<String> =
            e.t.admin("GET", "/api/payments/orders?status=paid&limit=1", None)
                .await["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_no"].as_str().unwrap().to_string())
                .collect();
        run_op(
            &e,
            &Op::Refund { pick: 0 },
            &users,
            &all_codes,
            &pending,
            &newest_paid,
        )
        .await;
        let open: Vec<Opened> = last_open.into_iter().collect();
        run_op(
            &e,
            &Op::Complete {
                pick: 0,
                race: false,
            },
            &users,
            &all_codes,
            &open,
            &none,
        )
        .await;
        e.t.assert_ledger_ok().await;
        let codes = all_codes;
        // every redemption code credited at most once
        let redeemed: usize = {
            let mut n = 0;
            for (uid, _, _) in &users {
                n +=
                    e.t.app
                        .store
                        .ledger(*uid, 100_000)
                        .await
                        .unwrap()
                        .iter()
                        .filter(|r| r.kind == "redeem")
                        .count();
            }
            n
        };
        assert!(redeemed <= codes.len());
        // the mix did exercise every path
        let all =
            e.t.admin("GET", "/api/payments/orders?limit=1000", None)
                .await;
        let orders = all["data"].as_array().unwrap();
        let count = |f: &dyn Fn(&Value) -> bool| orders.iter().filter(|o| f(o)).count();
        let summary = (
            count(&|o| o["provider"] == "epay" && o["status"] != "pending"),
            count(&|o| o["provider"] == "stripe" && o["status"] != "pending"),
            count(&|o| o["status"] == "refunded"),
            count(&|o| o["note"].as_str().unwrap().contains("completed manually")),
            redeemed,
        );
        let mut served = 0;
        for (uid, _, _) in &users {
            served +=
                e.t.logs_of(*uid)
                    .await
                    .iter()
                    .filter(|l| l.status == 200)
                    .count();
        }
        eprintln!(
            "mix on {backend:?}: (epay, stripe, refunded, by hand, redeemed) = {summary:?}, {served} requests served"
        );
        assert!(
            summary.0 > 0
                && summary.1 > 0
                && summary.2 > 0
                && summary.3 > 0
                && summary.4 > 0
                && served > 0,
            "{summary:?} {served}"
        );
        e.t.assert_ledger_ok().await;
        e.finish().await;
    }
}
