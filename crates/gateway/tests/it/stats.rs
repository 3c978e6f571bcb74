//! Statistics: a few real requests (one failing upstream, one stream, one
//! through a managed user's own channel), then the usage per user and model,
//! the channel health and the model totals must match them exactly; a user
//! sees only their own usage and the rest is for administrators.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use test_support::{TestApp, backends};

async fn call(
    t: &TestApp,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = t.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        t.url(path),
    );
    if !bearer.is_empty() {
        r = r.bearer_auth(bearer);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get_ok(t: &TestApp, path: &str, bearer: &str) -> Value {
    let (st, v) = call(t, "GET", path, bearer, None).await;
    assert_eq!(st, 200, "GET {path}: {v}");
    v
}

async fn sign_in(t: &TestApp, username: &str) -> String {
    let (st, v) = t
        .post_json(
            "/api/auth/login",
            "",
            &json!({"username": username, "password": "password123"}),
        )
        .await;
    assert_eq!(st, 200, "sign-in of {username}: {v}");
    v["token"].as_str().unwrap().to_string()
}

fn chat(model: &str, text: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// What one user spent on one model, as the stats report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    requests: i64,
    prompt: i64,
    completion: i64,
    cost: i64,
}

impl Totals {
    fn of(v: &Value) -> Totals {
        Totals {
            requests: v["requests"].as_i64().unwrap(),
            prompt: v["prompt_tokens"].as_i64().unwrap(),
            completion: v["completion_tokens"].as_i64().unwrap(),
            cost: v["cost"].as_i64().unwrap(),
        }
    }
    fn add(&mut self, o: Totals) {
        self.requests += o.requests;
        self.prompt += o.prompt;
        self.completion += o.completion;
        self.cost += o.cost;
    }
}

/// The sum of an answer's points, which must equal its totals.
fn sum_points(v: &Value) -> Totals {
    let mut t = Totals::default();
    for p in v["points"].as_array().unwrap() {
        t.add(Totals::of(p));
    }
    t
}

/// Expected usage of a request that succeeded, from the mock's model of
/// its answer and the seeded price.
fn expected(body: &Value, price: (&str, &str, &str)) -> Totals {
    let (p, c) = mock_upstream::expected_usage(body, &mock_upstream::Defaults::default());
    let price = billing::Price::parse(price.0, price.1, price.2).unwrap();
    let cost = billing::cost_units(
        &price,
        billing::Decimal::ONE,
        billing::Usage {
            prompt: p,
            completion: c,
            ..Default::default()
        },
    );
    Totals {
        requests: 1,
        prompt: p as i64,
        completion: c as i64,
        cost,
    }
}

const MINI: (&str, &str, &str) = ("0.15", "0.6", "0.075");
const NANO: (&str, &str, &str) = ("0.1", "0.4", "0.025");

#[tokio::test]
async fn usage_channel_and_model_stats_match_the_requests_exactly() {
    for b in backends() {
        let t = TestApp::spawn_with(b, |c| c.accounts.allow_private_upstreams = true).await;
        let from = storage::now_ms();
        let ch_mini = t.add_mock_channel("mock-mini", &["gpt-4o-mini"], 0).await;
        let ch_nano = t.add_mock_channel("mock-nano", &["gpt-4.1-nano"], 0).await;
        let (alice, alice_key) = t.user_with_key("alice", "5").await;
        let (bob, bob_key) = t.user_with_key("bob", "5").await;
        let (carol, carol_key) = t.user_with_key("carol", "5").await;
        let alice_token = sign_in(&t, "alice").await;
        let bob_token = sign_in(&t, "bob").await;
        let carol_token = sign_in(&t, "carol").await;
        // carol is a managed user whose own channel serves her requests
        t.admin(
            "POST",
            &format!("/api/users/{carol}/managed"),
            Some(json!({"enabled": true, "route": "own_only", "platform_fee": "1"})),
        )
        .await;
        let (st, v) = call(
            &t,
            "POST",
            "/api/self/channels",
            &carol_token,
            Some(json!({"name": "carol-own", "base_url": t.mock.base_url(),
                "api_keys": ["sk-mock-good"], "models": ["gpt-4o-mini"]})),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        let ch_own = -v["data"]["id"].as_i64().unwrap();

        let a1 = chat(
            "gpt-4o-mini",
            "count to three",
            json!({"mock": {"delay_ms": 150}}),
        );
        let a2 = chat("gpt-4o-mini", "tell a story", json!({"stream": true}));
        let a3 = chat("gpt-4.1-nano", "say hello", json!({}));
        let b1 = chat(
            "gpt-4o-mini",
            "name a colour",
            json!({"mock": {"delay_ms": 300}}),
        );
        let b2 = chat(
            "gpt-4o-mini",
            "fail please",
            json!({"mock": {"status": 500}}),
        );
        let c1 = chat("gpt-4o-mini", "hi from carol", json!({}));
        for (key, body, ok) in [
            (&alice_key, &a1, true),
            (&alice_key, &a2, true),
            (&alice_key, &a3, true),
            (&bob_key, &b1, true),
            (&bob_key, &b2, false),
            (&carol_key, &c1, true),
        ] {
            let r = t.chat(key, body).await;
            let st = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(st == 200, ok, "{body} -> {st} {text}");
        }
        let to = storage::now_ms();

        // what each user spent per model
        let mut want: BTreeMap<(i64, &str), Totals> = BTreeMap::new();
        for (uid, model, body, price) in [
            (alice, "gpt-4o-mini", &a1, MINI),
            (alice, "gpt-4o-mini", &a2, MINI),
            (alice, "gpt-4.1-nano", &a3, NANO),
            (bob, "gpt-4o-mini", &b1, MINI),
            (carol, "gpt-4o-mini", &c1, MINI),
        ] {
            want.entry((uid, model))
                .or_default()
                .add(expected(body, price));
        }
        // the failed request counts as a request, without tokens or cost
        want.entry((bob, "gpt-4o-mini")).or_default().requests += 1;
        // ...which is what the request log says too
        for ((uid, model), w) in &want {
            let logs = t.logs_of(*uid).await;
            let mine: Vec<_> = logs.iter().filter(|l| l.model == *model).collect();
            assert_eq!(mine.len() as i64, w.requests);
            assert_eq!(mine.iter().map(|l| l.prompt_tokens).sum::<i64>(), w.prompt);
            assert_eq!(
                mine.iter().map(|l| l.completion_tokens).sum::<i64>(),
                w.completion
            );
            assert_eq!(mine.iter().map(|l| l.cost).sum::<i64>(), w.cost);
        }
        let user_total = |uid: i64| {
            let mut t = Totals::default();
            for ((u, _), w) in &want {
                if *u == uid {
                    t.add(*w);
                }
            }
            t
        };
        let range = format!("from={from}&to={to}");

        // ---- a user's own usage ----
        let v = get_ok(
            &t,
            &format!("/api/self/stats/usage?{range}&group_by=model"),
            &alice_token,
        )
        .await;
        assert_eq!(Totals::of(&v["totals"]), user_total(alice), "{v}");
        assert_eq!(sum_points(&v), user_total(alice));
        assert_eq!(v["bucket"], "hour");
        let series: BTreeMap<String, Totals> = v["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["model"].as_str().unwrap().to_string(),
                    Totals::of(&s["totals"]),
                )
            })
            .collect();
        assert_eq!(series.len(), 2);
        assert_eq!(series["gpt-4o-mini"], want[&(alice, "gpt-4o-mini")]);
        assert_eq!(series["gpt-4.1-nano"], want[&(alice, "gpt-4.1-nano")]);
        // one point per hour of the range, the time of each a bucket start
        let points = v["points"].as_array().unwrap();
        assert!(!points.is_empty() && points.len() <= 2, "{points:?}");
        assert!(
            points
                .iter()
                .all(|p| p["t"].as_i64().unwrap() % 3_600_000 == 0)
        );
        // by day, with RFC 3339 bounds and a time zone
        let day = get_ok(
            &t,
            "/api/self/stats/usage?bucket=day&tz_offset=480&from=2000-01-01&to=2000-01-31T23:59:59Z",
            &alice_token,
        )
        .await;
        assert_eq!(day["points"].as_array().unwrap().len(), 32, "{day}");
        assert_eq!(Totals::of(&day["totals"]), Totals::default());
        let (st, _) = call(
            &t,
            "GET",
            "/api/self/stats/usage?bucket=week",
            &alice_token,
            None,
        )
        .await;
        assert_eq!(st, 400);

        // bob sees his usage only, and cannot ask for anyone else's
        let v = get_ok(&t, &format!("/api/self/stats/usage?{range}"), &bob_token).await;
        assert_eq!(Totals::of(&v["totals"]), user_total(bob));
        assert!(v.get("series").is_none());
        for path in [
            format!("/api/self/stats/usage?{range}&user_id={alice}"),
            format!("/api/self/stats/usage?{range}&group_by=user"),
        ] {
            let (st, v) = call(&t, "GET", &path, &bob_token, None).await;
            assert_eq!(st, 400, "{path}: {v}");
        }
        for path in [
            "/api/stats/usage",
            "/api/stats/channels",
            "/api/stats/models",
        ] {
            let (st, v) = call(&t, "GET", path, &bob_token, None).await;
            assert_eq!(st, 403, "{path}: {v}");
            let (st, _) = call(&t, "GET", path, "", None).await;
            assert_eq!(st, 401, "{path}");
        }
        let (st, _) = call(&t, "GET", "/api/self/stats/usage", "", None).await;
        assert_eq!(st, 401);

        // ---- everyone's usage (admin) ----
        let v = t
            .admin(
                "GET",
                &format!("/api/stats/usage?{range}&group_by=user"),
                None,
            )
            .await;
        let mut all = Totals::default();
        for w in want.values() {
            all.add(*w);
        }
        assert_eq!(Totals::of(&v["totals"]), all, "{v}");
        assert_eq!(sum_points(&v), all);
        let by_user: BTreeMap<i64, (String, Totals)> = v["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["user_id"].as_i64().unwrap(),
                    (
                        s["username"].as_str().unwrap().to_string(),
                        Totals::of(&s["totals"]),
                    ),
                )
            })
            .collect();
        assert_eq!(by_user.len(), 3);
        assert_eq!(by_user[&alice], ("alice".to_string(), user_total(alice)));
        assert_eq!(by_user[&bob], ("bob".to_string(), user_total(bob)));
        assert_eq!(by_user[&carol], ("carol".to_string(), user_total(carol)));
        let v = t
            .admin(
                "GET",
                &format!("/api/stats/usage?{range}&user_id={alice}&model=gpt-4.1-nano"),
                None,
            )
            .await;
        assert_eq!(Totals::of(&v["totals"]), want[&(alice, "gpt-4.1-nano")]);
        let v = t
            .admin(
                "GET",
                &format!("/api/stats/usage?{range}&group_by=model"),
                None,
            )
            .await;
        let mini = v["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["model"] == "gpt-4o-mini")
            .unwrap()
            .clone();
        let mut mini_want = Totals::default();
        for ((_, m), w) in &want {
            if *m == "gpt-4o-mini" {
                mini_want.add(*w);
            }
        }
        assert_eq!(Totals::of(&mini["totals"]), mini_want);

        // ---- per model (admin) ----
        let v = t
            .admin("GET", &format!("/api/stats/models?{range}"), None)
            .await;
        let models: BTreeMap<String, Value> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["model"].as_str().unwrap().to_string(), m.clone()))
            .collect();
        assert_eq!(models.len(), 2, "{v}");
        assert_eq!(Totals::of(&models["gpt-4o-mini"]), mini_want);
        assert_eq!(models["gpt-4o-mini"]["errors"], 1);
        assert_eq!(models["gpt-4o-mini"]["users"], 3);
        assert_eq!(
            Totals::of(&models["gpt-4.1-nano"]),
            want[&(alice, "gpt-4.1-nano")]
        );
        assert_eq!(models["gpt-4.1-nano"]["errors"], 0);
        assert_eq!(models["gpt-4.1-nano"]["users"], 1);
        assert_eq!(Totals::of(&v["totals"]), all);

        // ---- per channel (admin) ----
        let v = t
            .admin("GET", &format!("/api/stats/channels?{range}"), None)
            .await;
        let chans: BTreeMap<i64, Value> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["channel_id"].as_i64().unwrap(), c.clone()))
            .collect();
        assert_eq!(chans.len(), 3, "{v}");
        let mut logs = Vec::new();
        for uid in [alice, bob, carol] {
            logs.extend(t.logs_of(uid).await);
        }
        for (id, requests, successes) in [(ch_mini, 4i64, 3i64), (ch_nano, 1, 1), (ch_own, 1, 1)] {
            let c = &chans[&id];
            assert_eq!(c["requests"], requests, "{c}");
            assert_eq!(c["successes"], successes, "{c}");
            assert_eq!(c["errors"], requests - successes, "{c}");
            let rate = (successes as f64 / requests as f64 * 10_000.0).round() / 10_000.0;
            assert_eq!(c["success_rate"].as_f64().unwrap(), rate, "{c}");
            // latency: median (nearest rank) and mean of successful requests
            let mut lat: Vec<i64> = logs
                .iter()
                .filter(|l| l.channel_id == id && l.status == 200)
                .map(|l| l.latency_ms)
                .collect();
            lat.sort();
            assert_eq!(lat.len() as i64, successes);
            assert_eq!(c["latency_p50_ms"], lat[(lat.len() - 1) / 2], "{c}");
            let n = lat.len() as i64;
            assert_eq!(
                c["latency_avg_ms"],
                (2 * lat.iter().sum::<i64>() + n) / (2 * n),
                "{c}"
            );
            let sum: Totals =
                c["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .fold(Totals::default(), |mut acc, p| {
                        acc.requests += p["requests"].as_i64().unwrap();
                        acc
                    });
            assert_eq!(sum.requests, requests);
        }
        let mini = &chans[&ch_mini];
        assert_eq!(mini["success_rate"].as_f64().unwrap(), 0.75);
        assert_eq!(mini["name"], "mock-mini");
        assert_eq!(mini["managed"], false);
        assert!(mini["latency_p50_ms"].as_i64().unwrap() >= 150, "{mini}");
        // the one stream gives the time to first token
        let stream = logs.iter().find(|l| l.is_stream).unwrap();
        assert_eq!(mini["ttft_avg_ms"], stream.ttft_ms);
        assert_eq!(chans[&ch_nano]["ttft_avg_ms"], Value::Null);
        // a managed user's own channel: negative id, labelled with its owner
        let own = &chans[&ch_own];
        assert!(ch_own < 0);
        assert_eq!(own["managed"], true);
        assert_eq!(own["owner_id"], carol);
        assert_eq!(own["owner"], "carol");
        assert_eq!(own["name"], "carol-own");
        assert!(
            own["label"]
                .as_str()
                .unwrap()
                .contains("own channel of carol"),
            "{own}"
        );
        // a range before the requests has nothing
        let v = t
            .admin(
                "GET",
                &format!(
                    "/api/stats/channels?from={}&to={}",
                    from - 7_200_000,
                    from - 3_600_000
                ),
                None,
            )
            .await;
        assert!(v["data"].as_array().unwrap().is_empty(), "{v}");
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}
