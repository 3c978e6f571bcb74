//! OpenAI's other endpoints (images, speech, transcriptions, moderations,
//! rerank): relayed as they are to OpenAI-compatible channels and billed per
//! call or per token.

use serde_json::{Value, json};
use test_support::{Backend, TestApp};

async fn post(t: &TestApp, path: &str, key: &str, body: &Value) -> reqwest::Response {
    t.http
        .post(t.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn images_are_billed_per_image() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["dall-e-3"], 0).await;
    let (uid, key) = t.user_with_key("img", "10").await;
    let before = t.balance(uid).await;
    let r = post(
        &t,
        "/v1/images/generations",
        &key,
        &json!({"model": "dall-e-3", "prompt": "a cat", "n": 3}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    let sent = t.mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/images/generations");
    assert_eq!(sent.json().unwrap()["n"], 3);
    // 3 images × $0.04 = 120 000 units, exactly
    assert_eq!(before - t.balance(uid).await, 120_000);
    let log = t.last_log(uid).await;
    assert_eq!(log.endpoint, "images.generations");
    assert_eq!(log.cost, 120_000);
    assert_eq!(log.status, 200);
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn speech_relays_audio_bytes_and_bills_characters() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["tts-1"], 0).await;
    let (uid, key) = t.user_with_key("tts", "10").await;
    let before = t.balance(uid).await;
    let r = post(
        &t,
        "/v1/audio/speech",
        &key,
        &json!({"model": "tts-1", "input": "hello world", "voice": "alloy"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("content-type").unwrap().to_str().unwrap(),
        "audio/mpeg"
    );
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), &mock_upstream::SPEECH_BYTES[..]);
    // 11 characters × $15 / 1M characters = 165 units
    assert_eq!(before - t.balance(uid).await, 165);
    let log = t.last_log(uid).await;
    assert_eq!(log.endpoint, "audio.speech");
    assert_eq!((log.prompt_tokens, log.cost), (11, 165));
    t.assert_ledger_ok().await;
    t.finish().await;
}

fn multipart(boundary: &str, model: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\
             Content-Type: audio/mpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(&[0xff, 0xfb, 0x90, 0x00, b'\r', b'\n', 1, 2, 3]);
    b.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n\
             --{boundary}--\r\n"
        )
        .as_bytes(),
    );
    b
}

async fn transcribe(t: &TestApp, key: &str, model: &str) -> (reqwest::StatusCode, Value, String) {
    let boundary = "----gapBoundary7MA4YWxkTrZu0gW";
    let ct = format!("multipart/form-data; boundary={boundary}");
    let body = multipart(boundary, model);
    let r = t
        .http
        .post(t.url("/v1/audio/transcriptions"))
        .bearer_auth(key)
        .header("content-type", &ct)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status == 200 {
        let sent = t.mock.last_request().unwrap();
        assert_eq!(sent.path, "/v1/audio/transcriptions");
        assert_eq!(sent.header("content-type"), Some(ct.as_str()));
        assert_eq!(
            sent.body.as_ref(),
            &body[..],
            "multipart body forwarded untouched"
        );
    }
    (status, v, ct)
}

#[tokio::test]
async fn transcription_multipart_is_forwarded_and_billed() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["whisper-1", "stt-tokens"], 0)
        .await;
    let (uid, key) = t.user_with_key("stt", "10").await;
    let before = t.balance(uid).await;
    let (status, v, _) = transcribe(&t, &key, "whisper-1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["text"], "hello world");
    // per call: $0.006
    assert_eq!(before - t.balance(uid).await, 6_000);
    let log = t.last_log(uid).await;
    assert_eq!(log.endpoint, "audio.transcriptions");
    assert_eq!(log.model, "whisper-1");
    assert_eq!(log.cost, 6_000);

    // no per-call price, no usage: the transcript's tokens as completion
    t.admin(
        "PUT",
        "/api/prices/stt-tokens",
        Some(json!({"input": "0", "output": "10"})),
    )
    .await;
    let before = t.balance(uid).await;
    let (status, _, _) = transcribe(&t, &key, "stt-tokens").await;
    assert_eq!(status, 200);
    let log = t.last_log(uid).await;
    assert_eq!(log.model, "stt-tokens");
    assert!(log.estimated);
    assert_eq!(log.completion_tokens, 2);
    assert_eq!(log.cost, 20);
    assert_eq!(before - t.balance(uid).await, 20);

    // a non-multipart body is refused
    let r = post(
        &t,
        "/v1/audio/transcriptions",
        &key,
        &json!({"model": "whisper-1"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn moderations_and_rerank_are_relayed_and_billed() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["omni-moderation-latest", "rerank-x"], 0)
        .await;
    let (uid, key) = t.user_with_key("mod", "10").await;
    let before = t.balance(uid).await;
    let body = json!({"model": "omni-moderation-latest", "input": "hello"});
    let r = post(&t, "/v1/moderations", &key, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["flagged"], false);
    assert_eq!(t.mock.last_request().unwrap().path, "/v1/moderations");
    // seeded at 0: free
    assert_eq!(t.balance(uid).await, before);
    let log = t.last_log(uid).await;
    assert_eq!((log.endpoint.as_str(), log.cost), ("moderations", 0));

    // a per-call price set through the API applies
    let p = t
        .admin(
            "PUT",
            "/api/prices/omni-moderation-latest",
            Some(json!({"input": "0", "output": "0", "per_call": "0.001"})),
        )
        .await;
    assert_eq!(p["per_call"], "0.001");
    let r = post(&t, "/v1/moderations", &key, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(before - t.balance(uid).await, 1_000);

    // rerank: usage.total_tokens × input price
    t.admin(
        "PUT",
        "/api/prices/rerank-x",
        Some(json!({"input": "2", "output": "0"})),
    )
    .await;
    let before = t.balance(uid).await;
    let r = post(
        &t,
        "/v1/rerank",
        &key,
        &json!({"model": "rerank-x", "query": "a b", "documents": ["c d e", "f"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["index"], 0);
    assert_eq!(t.mock.last_request().unwrap().path, "/v1/rerank");
    let log = t.last_log(uid).await;
    assert_eq!(log.endpoint, "rerank");
    assert_eq!((log.prompt_tokens, log.cost), (6, 12));
    assert_eq!(before - t.balance(uid).await, 12);
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn only_openai_compatible_channels_serve_these_endpoints() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.admin(
        "POST",
        "/api/channels",
        Some(
            json!({"name": "claude", "kind": "anthropic", "base_url": t.mock.base_url(),
            "api_keys": ["sk-up"], "models": ["claude-sonnet-4-5", "dall-e-3"], "priority": 10}),
        ),
    )
    .await;
    let (uid, key) = t.user_with_key("ant", "10").await;
    let before = t.balance(uid).await;
    let r = post(
        &t,
        "/v1/images/generations",
        &key,
        &json!({"model": "claude-sonnet-4-5", "prompt": "a cat"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("/v1/images/generations is served only by OpenAI-compatible channels"),
        "{msg}"
    );
    assert_eq!(t.mock.requests(), 0);

    // a model with both kinds: only the OpenAI channel is tried
    t.add_mock_channel("openai", &["dall-e-3"], 0).await;
    let r = post(
        &t,
        "/v1/images/generations",
        &key,
        &json!({"model": "dall-e-3", "prompt": "a cat"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(t.mock.requests(), 1);
    assert_eq!(
        t.mock.last_request().unwrap().path,
        "/v1/images/generations"
    );
    assert_eq!(before - t.balance(uid).await, 40_000);
    t.assert_ledger_ok().await;
    t.finish().await;
}
