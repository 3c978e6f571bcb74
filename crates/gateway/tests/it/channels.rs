//! Channel health: refused keys are disabled while the channel serves with
//! the others, failing channels are disabled after a run of failures and
//! re-enabled by a probe, and an operator can test a channel on demand.

use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};
use test_support::{Backend, TestApp};

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_refused_key_is_disabled_and_the_channel_keeps_serving() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    let v = t
        .admin(
            "POST",
            "/api/channels",
            Some(json!({"name": "two-keys", "base_url": t.mock.base_url(),
                        "api_keys": ["sk-bad-one", "sk-good-two"], "models": ["gpt-4o-mini"]})),
        )
        .await;
    let id = v["data"]["id"].as_i64().unwrap();
    let (_, key) = t.user_with_key("kay", "1").await;
    for _ in 0..4 {
        let r = t.chat(&key, &chat()).await;
        assert_eq!(r.status(), 200, "the channel serves with its good key");
    }
    // the bad key was recorded, with its reason, and is no longer used
    let mut disabled = Value::Null;
    for _ in 0..50 {
        let v = t.admin("GET", &format!("/api/channels/{id}"), None).await;
        disabled = v["data"]["disabled_keys"].clone();
        if disabled.as_object().is_some_and(|o| !o.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let o = disabled.as_object().unwrap();
    assert_eq!(o.len(), 1);
    assert!(o.values().next().unwrap().as_str().unwrap().contains("401"));
    assert!(
        !serde_json::to_string(&disabled).unwrap().contains("sk-bad"),
        "keys are never shown"
    );
    let before = t.mock.requests();
    for _ in 0..4 {
        assert_eq!(t.chat(&key, &chat()).await.status(), 200);
        assert_eq!(
            t.mock.last_request().unwrap().header("authorization"),
            Some("Bearer sk-good-two")
        );
    }
    assert_eq!(
        t.mock.requests(),
        before + 4,
        "no request spent on the disabled key"
    );
    t.finish().await;
}

#[tokio::test]
async fn a_channel_with_no_working_key_is_disabled() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    let id = t
        .add_channel(
            "broke",
            &t.mock.base_url(),
            "sk-noquota",
            &["gpt-4o-mini"],
            0,
        )
        .await;
    let (_, key) = t.user_with_key("lou", "1").await;
    let r = t.chat(&key, &chat()).await;
    assert_eq!(r.status(), 502);
    let mut v = Value::Null;
    for _ in 0..50 {
        v = t.admin("GET", &format!("/api/channels/{id}"), None).await;
        if v["data"]["state"] == "auto_disabled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(v["data"]["state"], "auto_disabled", "{v}");
    assert!(
        v["data"]["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("no working key")
    );
    // with no channel left the model is unavailable for now, said plainly
    let r = t.chat(&key, &chat()).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_channel_available");
    t.finish().await;
}

#[tokio::test]
async fn failing_channels_are_disabled_then_probed_back() {
    let t = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.relay.channel_failure_threshold = 3;
        c.relay.retries = 1;
    })
    .await;
    let flaky = MockUpstream::start().await.unwrap();
    flaky.set_behavior(Behavior::Status(500));
    let flaky_id = t
        .add_channel("flaky", &flaky.base_url(), "sk-f", &["gpt-4o-mini"], 10)
        .await;
    t.add_mock_channel("steady", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("max", "1").await;
    for _ in 0..3 {
        assert_eq!(t.chat(&key, &chat()).await.status(), 200);
    }
    let mut v = Value::Null;
    for _ in 0..50 {
        v = t
            .admin("GET", &format!("/api/channels/{flaky_id}"), None)
            .await;
        if v["data"]["state"] == "auto_disabled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(v["data"]["state"], "auto_disabled");
    assert_eq!(v["data"]["disabled_reason"], "3 consecutive failures");
    let seen = flaky.requests();
    for _ in 0..3 {
        assert_eq!(t.chat(&key, &chat()).await.status(), 200);
    }
    assert_eq!(flaky.requests(), seen, "a disabled channel is not chosen");
    // the on-demand test reports the failure with its status and latency
    let r = t
        .admin("POST", &format!("/api/channels/{flaky_id}/test"), None)
        .await;
    assert_eq!(r["data"]["ok"], false);
    assert_eq!(r["data"]["status"], 500);
    // it recovers; the probe brings it back
    flaky.set_behavior(Behavior::Normal);
    let r = t
        .admin("POST", &format!("/api/channels/{flaky_id}/test"), None)
        .await;
    assert_eq!(r["data"]["ok"], true);
    assert!(r["data"]["latency_ms"].is_u64());
    t.app.relay.probe_disabled_channels().await;
    let v = t
        .admin("GET", &format!("/api/channels/{flaky_id}"), None)
        .await;
    assert_eq!(v["data"]["state"], "enabled");
    assert_eq!(v["data"]["disabled_reason"], "");
    let seen = flaky.requests();
    assert_eq!(t.chat(&key, &chat()).await.status(), 200);
    assert_eq!(
        flaky.requests(),
        seen + 1,
        "the re-enabled channel serves again"
    );
    // every served request was billed once; failed attempts cost nothing
    let logs = t.logs_of(uid).await;
    assert_eq!(logs.len(), 7);
    assert!(logs.iter().all(|l| l.status == 200 && l.cost > 0));
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn azure_channels_use_deployment_urls_and_api_key() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    // the mock stands in for the Azure host; the request path shows the shape
    let base = t.mock.base_url().trim_end_matches("/v1").to_string();
    t.admin(
        "POST",
        "/api/channels",
        Some(
            json!({"name": "azure", "kind": "azure", "base_url": base, "api_keys": ["az-key"],
                    "models": ["gpt-4o-mini"], "model_mapping": {"gpt-4o-mini": "my-deployment"},
                    "api_version": "2024-10-21",
                    "headers": {"x-extra": "1", "host": "my-resource.openai.azure.com"}}),
        ),
    )
    .await;
    let (_, key) = t.user_with_key("azu", "1").await;
    let _ = t.chat(&key, &chat()).await;
    let req = t.mock.last_request().unwrap();
    assert_eq!(
        req.path,
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(req.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(req.header("api-key"), Some("az-key"));
    assert_eq!(req.header("x-extra"), Some("1"));
    // the channel's own Host replaces the one from the URL; it is sent once
    let hosts: Vec<&str> = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(hosts, ["my-resource.openai.azure.com"]);
    assert!(req.header("authorization").is_none());
    t.finish().await;
}

#[tokio::test]
async fn fallback_models_serve_when_every_channel_of_the_first_fails() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    let down = MockUpstream::start().await.unwrap();
    down.set_behavior(Behavior::Status(503));
    t.add_channel("down", &down.base_url(), "sk-d", &["gpt-4o"], 0)
        .await;
    t.add_mock_channel("up", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("fal", "1").await;
    // OpenRouter-style list in the request
    let body = json!({"model": "gpt-4o", "models": ["gpt-4o-mini"], "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = t.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let sent = t.mock.last_request().unwrap().json().unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert!(
        sent.get("models").is_none(),
        "the list is consumed, not forwarded"
    );
    // billed at the price of the model that served
    let p = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let c = v["usage"]["completion_tokens"].as_u64().unwrap();
    let mini = billing::Price::parse("0.15", "0.6", "0.075").unwrap();
    let expected = billing::cost_units(
        &mini,
        billing::Decimal::ONE,
        billing::Usage {
            cache_write: 0,
            prompt: p,
            completion: c,
            cached: 0,
        },
    );
    let log = t.last_log(uid).await;
    assert_eq!(log.model, "gpt-4o-mini");
    assert_eq!(log.cost, expected);
    // an operator-configured chain does the same without the client asking
    t.admin(
        "PUT",
        "/api/fallbacks/gpt-4o",
        Some(json!({"fallbacks": ["gpt-4o-mini"]})),
    )
    .await;
    let r = t
        .chat(
            &key,
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v = t.admin("GET", "/api/fallbacks", None).await;
    assert_eq!(v["data"]["gpt-4o"][0], "gpt-4o-mini");
    let (s, _) = t
        .admin_raw(
            "PUT",
            "/api/fallbacks/gpt-4o",
            Some(json!({"fallbacks": ["gpt-4o"]})),
        )
        .await;
    assert_eq!(s, 400, "a model cannot fall back to itself");
    t.assert_ledger_ok().await;
    t.finish().await;
}
