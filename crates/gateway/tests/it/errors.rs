//! Refusals: each in OpenAI's error shape, with the right status, the
//! request id, and no upstream call.

use serde_json::{Value, json};
use test_support::{Backend, TestApp};

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "expected {status} {code}");
    let rid = resp
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().len() > 10);
    assert!(v["error"]["type"].is_string());
    assert_eq!(v["error"]["request_id"], rid.as_str());
    v
}

#[tokio::test]
async fn refusals_have_openai_shape_and_status() {
    let t = TestApp::spawn_with(Backend::Sqlite, |c| c.relay.max_body_bytes = 64 * 1024).await;
    t.add_mock_channel("mock", &["gpt-4o-mini", "gpt-4o", "unpriced-model"], 0)
        .await;
    let (uid, key) = t.user_with_key("frank", "1").await;
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});

    // 401: missing, unknown
    let r = t
        .http
        .post(t.url("/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_api_key").await;
    let r = t.chat("sk-not-a-key", &chat).await;
    expect_error(r, 401, "invalid_api_key").await;

    // 400: malformed JSON says where
    let r = t
        .http
        .post(t.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .body("{\"model\": \"gpt-4o-mini\",\n \"messages\": [}")
        .send()
        .await
        .unwrap();
    let v = expect_error(r, 400, "invalid_request").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 2"),
        "{v}"
    );
    // 400: no model
    let r = t.chat(&key, &json!({"messages": []})).await;
    let v = expect_error(r, 400, "invalid_request").await;
    assert_eq!(v["error"]["param"], "model");

    // 404: unknown model; 400: a model with no price
    let r = t
        .chat(&key, &json!({"model": "no-such-model", "messages": []}))
        .await;
    expect_error(r, 404, "model_not_found").await;
    let r = t
        .chat(&key, &json!({"model": "unpriced-model", "messages": []}))
        .await;
    expect_error(r, 400, "model_not_priced").await;

    // 413: body over the limit
    let big = "x".repeat(70 * 1024);
    let r = t
        .chat(
            &key,
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]}),
        )
        .await;
    expect_error(r, 413, "request_too_large").await;

    // 403: model not allowed for the key, IP not allowed
    let k = t
        .admin(
            "POST",
            "/api/keys",
            Some(json!({"user_id": uid, "allowed_models": ["gpt-4o"]})),
        )
        .await;
    let r = t.chat(k["key"].as_str().unwrap(), &chat).await;
    expect_error(r, 403, "model_not_allowed").await;
    let k = t
        .admin(
            "POST",
            "/api/keys",
            Some(json!({"user_id": uid, "allowed_ips": ["203.0.113.0/24"]})),
        )
        .await;
    let r = t.chat(k["key"].as_str().unwrap(), &chat).await;
    expect_error(r, 403, "ip_not_allowed").await;

    // 401: disabled and expired keys, disabled user
    let k = t
        .admin("POST", "/api/keys", Some(json!({"user_id": uid})))
        .await;
    let kid = k["data"]["id"].as_i64().unwrap();
    t.admin(
        "PATCH",
        &format!("/api/keys/{kid}"),
        Some(json!({"status": 0})),
    )
    .await;
    let r = t.chat(k["key"].as_str().unwrap(), &chat).await;
    let v = expect_error(r, 401, "invalid_api_key").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("disabled"));
    let k = t
        .admin(
            "POST",
            "/api/keys",
            Some(json!({"user_id": uid, "expires_at": 1000})),
        )
        .await;
    let r = t.chat(k["key"].as_str().unwrap(), &chat).await;
    let v = expect_error(r, 401, "invalid_api_key").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));

    // none of that reached the upstream
    assert_eq!(t.mock.requests(), 0);

    t.admin(
        "PATCH",
        &format!("/api/users/{uid}"),
        Some(json!({"status": 0})),
    )
    .await;
    let r = t.chat(&key, &chat).await;
    expect_error(r, 401, "invalid_api_key").await;

    // unknown route
    let r = t
        .http
        .post(t.url("/v1/nothing"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    t.finish().await;
}

#[tokio::test]
async fn insufficient_balance_is_429_without_retry_and_no_upstream_call() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o"], 0).await;
    let (uid, key) = t.user_with_key("gina", "0.000010").await;
    let r = t
        .chat(&key, &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1000}))
        .await;
    assert_eq!(r.headers()["x-should-retry"], "false");
    let v = expect_error(r, 429, "insufficient_quota").await;
    assert_eq!(v["error"]["type"], "insufficient_quota");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("$0.000010") && msg.contains("up to $"),
        "{msg}"
    );
    assert_eq!(t.mock.requests(), 0);
    assert_eq!(t.balance(uid).await, 10);

    // a key quota refuses the same way, with its own code
    let (uid2, _) = t.user_with_key("hank", "5").await;
    let k = t
        .admin(
            "POST",
            "/api/keys",
            Some(json!({"user_id": uid2, "quota_limit": 5})),
        )
        .await;
    let r = t
        .chat(
            k["key"].as_str().unwrap(),
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
    expect_error(r, 429, "key_quota_exceeded").await;
    t.finish().await;
}

#[tokio::test]
async fn management_errors_are_actionable_json() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    let r = t.http.get(t.url("/api/users")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/auth/login")
    );
    // a user's token is not an admin's
    t.user_with_key("ivan", "0").await;
    let (s, v) = t
        .post_json(
            "/api/auth/login",
            "",
            &json!({"username": "ivan", "password": "password123"}),
        )
        .await;
    assert_eq!(s, 200);
    let user_token = v["token"].as_str().unwrap();
    let r = t
        .http
        .get(t.url("/api/users"))
        .bearer_auth(user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // but they can see themselves
    let r = t
        .http
        .get(t.url("/api/self"))
        .bearer_auth(user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["username"], "ivan");
    let (s, _) = t
        .post_json(
            "/api/auth/login",
            "",
            &json!({"username": "ivan", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(s, 401);
    // bad input names the problem
    let (s, v) = t
        .admin_raw(
            "POST",
            "/api/channels",
            Some(
                json!({"name": "x", "base_url": "ftp://nope", "api_keys": ["k"], "models": ["m"]}),
            ),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("base_url"));
    let (s, v) = t
        .admin_raw("POST", "/api/users", Some(json!({"username": "ivan"})))
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = t
        .admin_raw(
            "PUT",
            "/api/prices/m",
            Some(json!({"input": "abc", "output": "1"})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("decimal"));
    let (s, _) = t
        .admin_raw(
            "POST",
            "/api/users/999/topup",
            Some(json!({"amount_usd": "1"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = t
        .admin_raw("POST", "/api/users", Some(json!({"usernam": "typo"})))
        .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("usernam"));
    t.finish().await;
}
