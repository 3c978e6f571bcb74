//! Money: holds never let a balance go below zero under concurrency, the
//! requests that succeeded are exactly the ones charged, failures are
//! refunded, and every balance equals its ledger.

use futures_util::future::join_all;
use serde_json::{Value, json};
use test_support::{Backend, TestApp, backends};

/// Cost of the fixed request below at gpt-4o-mini's seeded price, and the
/// reservation the gateway makes for it (body bytes + max_tokens).
fn request() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 20})
}

#[tokio::test]
async fn concurrent_requests_never_overdraw() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
        let body = request();
        let (p, c) = mock_upstream::expected_usage(&body, &mock_upstream::Defaults::default());
        let price = billing::Price::parse("0.15", "0.6", "0.075").unwrap();
        let cost = billing::cost_units(
            &price,
            billing::Decimal::ONE,
            billing::Usage {
                cache_write: 0,
                prompt: p,
                completion: c,
                cached: 0,
            },
        );
        let reserve = billing::cost_units(
            &price,
            billing::Decimal::ONE,
            billing::Usage {
                cache_write: 0,
                prompt: serde_json::to_vec(&body).unwrap().len() as u64,
                completion: 20,
                cached: 0,
            },
        );
        assert!(cost > 0 && reserve >= cost);
        // a balance that covers about 100 of these requests
        let balance = cost * 100 + cost / 2;
        let (uid, key) = t.user_with_key("zed", "0").await;
        t.admin(
            "POST",
            &format!("/api/users/{uid}/topup"),
            Some(json!({"units": balance})),
        )
        .await;
        let results = join_all((0..200).map(|_| {
            let t = &t;
            let key = key.clone();
            let body = body.clone();
            async move {
                let r = t.chat(&key, &body).await;
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                s
            }
        }))
        .await;
        let ok = results.iter().filter(|s| **s == 200).count() as i64;
        let refused = results.iter().filter(|s| **s == 429).count() as i64;
        assert_eq!(ok + refused, 200, "{results:?}");
        assert!(
            ok > 0 && ok <= 100,
            "a balance covering 100 requests served {ok}"
        );
        assert!(refused >= 100);
        let after = t.balance(uid).await;
        assert!(after >= 0);
        assert_eq!(
            after,
            balance - ok * cost,
            "exactly the served requests are charged"
        );
        let logs = t.logs_of(uid).await;
        assert_eq!(logs.iter().filter(|l| l.status == 200).count() as i64, ok);
        assert_eq!(logs.iter().map(|l| l.cost).sum::<i64>(), ok * cost);
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn missing_usage_is_counted_with_the_tokenizer_and_marked() {
    for stream in [false, true] {
        let t = TestApp::spawn(Backend::Sqlite).await;
        t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
        let (uid, key) = t.user_with_key("yan", "1").await;
        let r = t
            .chat(
                &key,
                &json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "Tell me a story about a fox."}], "mock": {"omit_usage": true}}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        let logs = t.logs_of(uid).await;
        assert_eq!(logs.len(), 1);
        let l = &logs[0];
        assert!(l.estimated, "stream={stream}");
        assert!(l.prompt_tokens >= 7 && l.completion_tokens >= 5, "{l:?}");
        assert!(
            l.cost > 0,
            "never bill zero for tokens the upstream produced"
        );
        assert_eq!(t.balance(uid).await, 1_000_000 - l.cost);
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn key_quota_accumulates_and_topups_from_another_process_apply() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
        let (uid, _) = t.user_with_key("kim", "0").await;
        let k = t
            .admin(
                "POST",
                "/api/keys",
                Some(json!({"user_id": uid, "quota_limit": 1_000_000})),
            )
            .await;
        let key = k["key"].as_str().unwrap().to_string();
        let kid = k["data"]["id"].as_i64().unwrap();
        // no balance yet
        let r = t.chat(&key, &request()).await;
        assert_eq!(r.status(), 429);
        // credit through the store directly, as the CLI in another process does
        t.app
            .store
            .adjust_balance(uid, 2_000_000, "topup", Some("ext-1"), "external")
            .await
            .unwrap();
        // the same reference again is refused, credited once
        assert!(
            t.app
                .store
                .adjust_balance(uid, 2_000_000, "topup", Some("ext-1"), "again")
                .await
                .is_err()
        );
        let r = t.chat(&key, &request()).await;
        assert_eq!(
            r.status(),
            200,
            "the gateway re-reads the balance before refusing"
        );
        let _ = r.bytes().await;
        t.app.relay.flush().await;
        let row = t.app.store.api_key(kid).await.unwrap();
        let logs = t.logs_of(uid).await;
        assert_eq!(row.used, logs.iter().map(|l| l.cost).sum::<i64>());
        assert!(row.used > 0);
        assert_eq!(t.balance(uid).await, 2_000_000 - row.used);
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn failed_upstream_calls_are_refunded_in_full() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("lee", "1").await;
    t.mock.set_behavior(mock_upstream::Behavior::Status(503));
    for stream in [false, true] {
        let r = t
            .chat(
                &key,
                &json!({"model": "gpt-4o-mini", "stream": stream, "messages": []}),
            )
            .await;
        assert_eq!(r.status(), 502);
    }
    t.mock.set_behavior(mock_upstream::Behavior::DropConnection);
    let r = t.chat(&key, &request()).await;
    assert_eq!(r.status(), 502);
    assert_eq!(t.balance(uid).await, 1_000_000);
    // the holds were released: the whole balance is available again
    let w = t.app.relay.snapshot().users[&uid].wallet.clone();
    assert_eq!(w.held(), 0);
    assert_eq!(w.available(), 1_000_000);
    t.assert_ledger_ok().await;
    t.finish().await;
}

/// `usage.cost` (OpenRouter's convention) and `x-cost-usd`: present when the
/// client asks with `"usage": {"include": true}` or the operator turns it on
/// for everyone, and equal to what was charged.
#[tokio::test]
async fn cost_is_reported_when_asked() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
        let (uid, key) = t.user_with_key("payer", "5").await;
        let usd = |units: i64| billing::units_to_usd(units).parse::<f64>().unwrap();

        // not asked: nothing extra
        let r = t.chat(&key, &request()).await;
        assert!(r.headers().get("x-cost-usd").is_none());
        let v: Value = r.json().await.unwrap();
        assert!(v["usage"].get("cost").is_none(), "{v}");

        // asked, not streamed: body and header carry the charged cost
        let mut body = request();
        body["usage"] = json!({"include": true});
        let r = t.chat(&key, &body).await;
        assert_eq!(r.status(), 200);
        let header = r.headers()["x-cost-usd"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        let charged = t.last_log(uid).await.cost;
        assert!(charged > 0);
        assert_eq!(header, billing::units_to_usd(charged));
        assert_eq!(v["usage"]["cost"].as_f64().unwrap(), usd(charged), "{v}");

        // asked, streamed, without stream_options: the final usage event has it
        let mut body = request();
        body["stream"] = json!(true);
        body["usage"] = json!({"include": true});
        let text = t.chat(&key, &body).await.text().await.unwrap();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        let last = events.last().unwrap();
        assert_eq!(
            last["choices"],
            json!([]),
            "the usage event comes last: {text}"
        );
        let charged = t.last_log(uid).await.cost;
        assert_eq!(
            last["usage"]["cost"].as_f64().unwrap(),
            usd(charged),
            "{text}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| e.get("usage").is_some_and(|u| !u.is_null()))
                .count(),
            1
        );
        t.assert_ledger_ok().await;
        t.finish().await;
    }
    // the operator reports cost on every answer
    let t = TestApp::spawn_with(Backend::Sqlite, |c| c.relay.report_cost = true).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("payer", "5").await;
    let r = t.chat(&key, &request()).await;
    let header = r.headers()["x-cost-usd"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(header, billing::units_to_usd(t.last_log(uid).await.cost));
    assert!(v["usage"]["cost"].as_f64().unwrap() > 0.0);
    t.finish().await;
}
