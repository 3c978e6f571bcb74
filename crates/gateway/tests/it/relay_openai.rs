//! The OpenAI-compatible endpoints as a client sees them.

use mock_upstream::Behavior;
use serde_json::{Value, json};
use test_support::{TestApp, backends};

fn price_units(
    prompt: u64,
    completion: u64,
    cached: u64,
    input: &str,
    output: &str,
    cached_p: &str,
) -> i64 {
    let p = billing::Price::parse(input, output, cached_p).unwrap();
    billing::cost_units(
        &p,
        billing::Decimal::ONE,
        billing::Usage {
            cache_write: 0,
            prompt,
            completion,
            cached,
        },
    )
}

#[tokio::test]
async fn chat_non_stream_is_relayed_billed_and_logged() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
        let (uid, key) = t.user_with_key("alice", "1").await;
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Say hello to the tests, please."}],
            "max_tokens": 100,
            "some_vendor_field": {"kept": [1, 2, 3]},
        });
        let before = t.balance(uid).await;
        let resp = t.chat(&key, &body).await;
        assert_eq!(resp.status(), 200);
        let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .len()
                > 5
        );
        // unknown fields reach the upstream untouched
        let sent: Value = serde_json::from_slice(&t.mock.last_request().unwrap().body).unwrap();
        assert_eq!(sent["some_vendor_field"], json!({"kept": [1, 2, 3]}));
        assert_eq!(sent, body);
        // the charge is exactly the upstream's usage at the seeded price
        let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
        let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
        let (ep, ec) = mock_upstream::expected_usage(&body, &mock_upstream::Defaults::default());
        assert_eq!((prompt, completion), (ep, ec));
        let cost = price_units(prompt, completion, 0, "0.15", "0.6", "0.075");
        assert!(cost > 0);
        assert_eq!(t.balance(uid).await, before - cost);
        let log = t.app.store.log_by_request_id(&rid).await.unwrap().unwrap();
        assert_eq!(log.user_id, uid);
        assert_eq!(log.model, "gpt-4o-mini");
        assert_eq!(log.prompt_tokens as u64, prompt);
        assert_eq!(log.completion_tokens as u64, completion);
        assert_eq!(log.cost, cost);
        assert_eq!(log.status, 200);
        assert!(!log.is_stream && !log.estimated);
        assert_eq!(log.client_ip, "127.0.0.1");
        // hourly aggregate
        let hourly = t
            .app
            .store
            .hourly_usage(Some(uid), 0, i64::MAX)
            .await
            .unwrap();
        assert_eq!(hourly.len(), 1);
        assert_eq!((hourly[0].requests, hourly[0].cost), (1, cost));
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let t = TestApp::spawn(test_support::Backend::Sqlite).await;
    t.add_mock_channel(
        "mock",
        &[
            "gpt-3.5-turbo-instruct",
            "text-embedding-3-small",
            "gpt-4o-mini",
        ],
        0,
    )
    .await;
    let (uid, key) = t.user_with_key("bob", "1").await;
    let r = t
        .http
        .post(t.url("/v1/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "max_tokens": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    let r = t
        .http
        .post(t.url("/v1/embeddings"))
        .bearer_auth(&key)
        .json(&json!({"model": "text-embedding-3-small", "input": ["alpha", "beta"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let p = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let logs = t.logs_of(uid).await;
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].endpoint, "embeddings");
    assert_eq!(logs[0].cost, price_units(p, 0, 0, "0.02", "0", ""));

    // models: all the user's group can reach …
    let v: Value = t
        .http
        .get(t.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "gpt-3.5-turbo-instruct",
            "gpt-4o-mini",
            "text-embedding-3-small"
        ]
    );
    assert_eq!(v["object"], "list");
    // … and only the allowed ones for a restricted key
    let k = t
        .admin(
            "POST",
            "/api/keys",
            Some(json!({"user_id": uid, "allowed_models": ["gpt-4o-mini"]})),
        )
        .await;
    let limited = k["key"].as_str().unwrap();
    let v: Value = t
        .http
        .get(t.url("/v1/models"))
        .bearer_auth(limited)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let r = t
        .http
        .get(t.url("/v1/models/gpt-4o-mini"))
        .bearer_auth(limited)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "gpt-4o-mini");
    let r = t
        .http
        .get(t.url("/v1/models/text-embedding-3-small"))
        .bearer_auth(limited)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    t.finish().await;
}

#[tokio::test]
async fn model_mapping_and_ids_with_slashes() {
    let t = TestApp::spawn(test_support::Backend::Sqlite).await;
    let v = t
        .admin(
            "POST",
            "/api/channels",
            Some(json!({
                "name": "mapped", "base_url": t.mock.base_url(), "api_keys": ["sk-1"],
                "models": ["vendor/model-x"], "model_mapping": {"vendor/model-x": "gpt-4o-mini"},
            })),
        )
        .await;
    assert_eq!(v["data"]["key_count"], 1);
    assert!(
        v["data"].get("api_keys").is_none(),
        "channel keys must never be returned"
    );
    t.admin(
        "PUT",
        "/api/prices/vendor/model-x",
        Some(json!({"input": "1", "output": "2"})),
    )
    .await;
    let (_, key) = t.user_with_key("carol", "1").await;
    let r = t
        .chat(
            &key,
            &json!({"model": "vendor/model-x", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sent: Value = serde_json::from_slice(&t.mock.last_request().unwrap().body).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    let r = t
        .http
        .get(t.url("/v1/models/vendor/model-x"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    t.finish().await;
}

/// A channel on the mock with the keys `sk-one` and `sk-two`.
async fn two_key_channel(t: &TestApp, name: &str) {
    t.admin(
        "POST",
        "/api/channels",
        Some(json!({"name": name, "base_url": t.mock.base_url(), "api_keys": ["sk-one", "sk-two"], "models": ["gpt-4o-mini"]})),
    )
    .await;
}

/// The `Authorization` header of the mock's last request.
fn last_authorization(t: &TestApp) -> String {
    t.mock
        .last_request()
        .unwrap()
        .header("authorization")
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn channel_keys_keep_their_turns_across_reloads() {
    let t = TestApp::spawn(test_support::Backend::Sqlite).await;
    two_key_channel(&t, "two-keys").await;
    let (_, key) = t.user_with_key("turns", "1").await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let mut used = Vec::new();
    for i in 0..4 {
        let r = t.chat(&key, &body).await;
        assert_eq!(r.status(), 200);
        used.push(last_authorization(&t));
        // each change rebuilds the routing snapshot between two requests
        t.add_channel(
            &format!("other{i}"),
            "http://127.0.0.1:9/v1",
            "sk-x",
            &["other"],
            0,
        )
        .await;
    }
    assert_eq!(
        used,
        [
            "Bearer sk-one",
            "Bearer sk-two",
            "Bearer sk-one",
            "Bearer sk-two"
        ]
    );
}

#[tokio::test]
async fn failover_to_the_next_channel_before_any_byte() {
    let t = TestApp::spawn(test_support::Backend::Sqlite).await;
    let bad = mock_upstream::MockUpstream::start().await.unwrap();
    bad.set_behavior(Behavior::Status(500));
    // the failing channel has the better priority, so it is tried first
    t.add_channel("down", &bad.base_url(), "sk-x", &["gpt-4o-mini"], 10)
        .await;
    t.add_mock_channel("up", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("dave", "1").await;
    for stream in [false, true] {
        let r = t
            .chat(&key, &json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    assert!(bad.requests() >= 2);
    // upstream credentials trouble is a channel failure, never the user's 401
    t.admin("PATCH", "/api/channels/1", Some(json!({"status": 0})))
        .await;
    t.admin("PATCH", "/api/channels/2", Some(json!({"status": 0})))
        .await;
    let bad_key = mock_upstream::MockUpstream::start().await.unwrap();
    t.add_channel(
        "badkey",
        &bad_key.base_url(),
        "sk-bad-key",
        &["gpt-4o-mini"],
        20,
    )
    .await;
    let r = t
        .chat(
            &key,
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 502, "upstream 401 must become a gateway error");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_gateway");
    // failed requests cost nothing
    t.assert_ledger_ok().await;
    let logs = t.logs_of(uid).await;
    assert_eq!(logs[0].cost, 0);
    assert_eq!(logs[0].status, 502);
    t.finish().await;
}

#[tokio::test]
async fn upstream_request_errors_are_passed_on() {
    let t = TestApp::spawn(test_support::Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("erin", "1").await;
    let before = t.balance(uid).await;
    let r = t
        .chat(
            &key,
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "mock": {"error_code": "context_length_exceeded"}}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length")
    );
    assert!(v["error"]["request_id"].is_string());
    assert_eq!(t.mock.requests(), 1, "a client error is not retried");
    assert_eq!(t.balance(uid).await, before);
    t.finish().await;
}

#[tokio::test]
async fn rate_limits_timeouts_and_key_rotation() {
    let t = TestApp::spawn_with(test_support::Backend::Sqlite, |c| {
        c.relay.first_byte_timeout_secs = 1
    })
    .await;
    let limited = mock_upstream::MockUpstream::start().await.unwrap();
    limited.set_behavior(Behavior::RateLimited);
    let broke = mock_upstream::MockUpstream::start().await.unwrap();
    broke.set_behavior(Behavior::InsufficientQuota);
    t.add_channel("limited", &limited.base_url(), "sk-a", &["gpt-4o-mini"], 20)
        .await;
    t.add_channel("broke", &broke.base_url(), "sk-b", &["gpt-4o-mini"], 10)
        .await;
    // the working channel has two keys, used in turn
    two_key_channel(&t, "good").await;
    let (_, key) = t.user_with_key("rita", "1").await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let mut used_keys = Vec::new();
    for _ in 0..2 {
        let r = t.chat(&key, &body).await;
        assert_eq!(
            r.status(),
            200,
            "an upstream 429 (rate limit or no credit) fails over"
        );
        used_keys.push(last_authorization(&t));
    }
    used_keys.sort();
    assert_eq!(used_keys, vec!["Bearer sk-one", "Bearer sk-two"]);
    assert_eq!(limited.requests(), 2);
    // a channel whose only key has no credit is disabled after its first refusal
    assert_eq!(broke.requests(), 1);
    // only rate-limited channels left: 429 that the SDK may retry
    t.admin("PATCH", "/api/channels/2", Some(json!({"status": 0})))
        .await;
    t.admin("PATCH", "/api/channels/3", Some(json!({"status": 0})))
        .await;
    let r = t.chat(&key, &body).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("x-should-retry").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    // a slow upstream: 504 after the first-byte timeout
    limited.set_behavior(Behavior::Delay(3000));
    let r = t.chat(&key, &body).await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn odd_inputs_get_clear_errors_and_never_break_the_server() {
    let t = TestApp::spawn(test_support::Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("odd", "1").await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        br#"{"model": 5}"#.to_vec(),
        br#"{"model": "gpt-4o-mini", "stream": "yes"}"#.to_vec(),
        br#"{"model": "gpt-4o-mini", "max_tokens": -1}"#.to_vec(),
        br#"{"model": "gpt-4o-mini", "n": 1e400}"#.to_vec(),
        br#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]"#.to_vec(),
        "{\"model\": \"\u{1F600}\"}".as_bytes().to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
    ];
    for b in bodies {
        let r = t
            .http
            .post(t.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(b.clone())
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        assert!(
            s == 400 || s == 404,
            "{s} for {:?}",
            String::from_utf8_lossy(&b[..b.len().min(40)])
        );
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string());
    }
    // an absurd max_tokens is refused as unaffordable, not overflowed
    let r = t
        .chat(
            &key,
            &json!({"model": "gpt-4o-mini", "messages": [], "max_tokens": u64::MAX, "n": 128}),
        )
        .await;
    assert_eq!(r.status(), 429);
    // and the service still works
    let r = t
        .chat(
            &key,
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(t.mock.requests(), 1);
    assert!(t.balance(uid).await < 1_000_000);
    t.finish().await;
}

#[tokio::test]
async fn a_slow_channel_times_out_and_the_next_one_serves() {
    let t = TestApp::spawn_with(test_support::Backend::Sqlite, |c| {
        c.relay.first_byte_timeout_secs = 1
    })
    .await;
    let slow = mock_upstream::MockUpstream::start().await.unwrap();
    slow.set_behavior(Behavior::Delay(3000));
    t.add_channel("slow", &slow.base_url(), "sk-s", &["gpt-4o-mini"], 10)
        .await;
    t.add_mock_channel("fast", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("sid", "1").await;
    for stream in [false, true] {
        let started = std::time::Instant::now();
        let r = t
            .chat(
                &key,
                &json!({"model": "gpt-4o-mini", "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }
    assert_eq!(slow.requests(), 2);
    // both requests billed once each, at the fast channel
    let logs = t.logs_of(uid).await;
    assert_eq!(logs.len(), 2);
    assert!(
        logs.iter()
            .all(|l| l.status == 200 && l.cost > 0 && l.channel_id == 2)
    );
    t.assert_ledger_ok().await;
    t.finish().await;
}
