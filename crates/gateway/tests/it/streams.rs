//! Streaming: SSE relayed chunk by chunk, the injected usage chunk hidden
//! from clients that did not ask for it, bounded buffers, billing after a
//! client disconnect, and streams that survive a graceful shutdown.

use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::{Backend, TestApp, backends};

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn stream_with_and_without_include_usage() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
        let (uid, key) = t.user_with_key("sam", "1").await;
        for include in [false, true] {
            let mut body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "stream please"}]});
            if include {
                body["stream_options"] = json!({"include_usage": true});
            }
            let r = t.chat(&key, &body).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], "text/event-stream");
            assert_eq!(r.headers()["x-accel-buffering"], "no");
            let text = r.text().await.unwrap();
            let ev = events(&text);
            assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
            let chunks: Vec<Value> = ev[..ev.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            let usage_chunks: Vec<&Value> =
                chunks.iter().filter(|c| c["usage"].is_object()).collect();
            // the upstream was always asked for usage…
            let sent: Value = serde_json::from_slice(&t.mock.last_request().unwrap().body).unwrap();
            assert_eq!(sent["stream_options"]["include_usage"], true);
            // …but only a client that asked sees it
            assert_eq!(
                usage_chunks.len(),
                usize::from(include),
                "include_usage={include}"
            );
            let content: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            assert!(content.len() >= 20);
        }
        let logs = t.logs_of(uid).await;
        assert_eq!(logs.len(), 2);
        assert!(
            logs.iter()
                .all(|l| l.is_stream && !l.estimated && l.cost > 0 && l.completion_tokens > 0)
        );
        assert_eq!(
            logs[0].cost, logs[1].cost,
            "both streams are billed from the upstream usage"
        );
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn tool_call_fragments_pass_through() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (_, key) = t.user_with_key("tess", "1").await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let r = t
        .chat(&key, &json!({"model": "gpt-4o-mini", "stream": true, "tools": tools, "tool_choice": "required", "messages": [{"role": "user", "content": "weather?"}]}))
        .await;
    let text = r.text().await.unwrap();
    let mut args = String::new();
    let mut finish = None;
    for e in events(&text) {
        if e == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&e).unwrap();
        if let Some(tc) = v["choices"][0]["delta"]["tool_calls"].as_array() {
            args.push_str(tc[0]["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    let parsed: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(parsed["location"], "Paris");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    t.finish().await;
}

#[tokio::test]
async fn multi_megabyte_stream_uses_bounded_buffers() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("max", "100").await;
    let r = t
        .chat(&key, &json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 10_000_000, "messages": [{"role": "user", "content": "long"}], "mock": {"chunks": 20000, "chunk_size": 200}}))
        .await;
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let mut total = 0usize;
    let mut content_events = 0usize;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        total += c.len();
        content_events += c.windows(10).filter(|w| w == b"\"content\":").count();
    }
    assert!(total > 5_000_000, "relayed {total} bytes");
    assert!(content_events >= 20_000);
    let peak = t
        .app
        .relay
        .stats
        .peak_stream_buffer
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak < 64 * 1024,
        "stream buffer peaked at {peak} bytes for a {total}-byte stream"
    );
    let logs = t.logs_of(uid).await;
    assert_eq!(logs[0].completion_tokens, 20000 * 200 / 4);
    t.finish().await;
}

#[tokio::test]
async fn client_disconnect_mid_stream_still_bills_what_the_upstream_produced() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("nina", "1").await;
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "go"}], "mock": {"chunks": 40, "chunk_delay_ms": 20}});
    let r = t.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let _ = s.next().await; // read a little, then hang up
    drop(s);
    // the gateway keeps reading the upstream to its end, then settles
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
    let mut charged = 0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        charged = 1_000_000 - t.balance(uid).await;
        if charged > 0 {
            break;
        }
    }
    assert_eq!(charged, cost);
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn upstream_drop_mid_stream_bills_the_part_produced() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("omar", "1").await;
    let r = t
        .chat(&key, &json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "go"}], "mock": {"chunks": 50, "chunk_size": 40, "drop_after": 20}}))
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap_or_default();
    assert!(!text.contains("[DONE]"));
    assert!(
        text.contains("\"error\""),
        "the client is told the stream broke"
    );
    let logs = t.logs_of(uid).await;
    let l = &logs[0];
    assert!(
        l.estimated && l.completion_tokens > 50 && l.cost > 0,
        "{l:?}"
    );
    assert!(!l.error.is_empty());
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_streams_finish_and_settles_them() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.add_mock_channel("mock", &["gpt-4o-mini"], 0).await;
    let (uid, key) = t.user_with_key("pia", "1").await;
    let r = t
        .chat(&key, &json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "go"}], "mock": {"chunks": 30, "chunk_delay_ms": 30}}))
        .await;
    assert_eq!(r.status(), 200);
    t.app.trigger_shutdown();
    // new requests are refused while draining…
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(t.app.relay.is_draining());
    // …while the stream in flight runs to its end
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let store = t.app.store.clone();
    let db = t.db;
    t.app.wait().await;
    // after exit, the stream is settled in the database
    let reopened = storage::Store::connect(&db.url).await.unwrap();
    let u = reopened.user(uid).await.unwrap();
    assert!(u.balance < 1_000_000 && u.request_count == 1, "{u:?}");
    drop(store);
    reopened.close().await;
    db.cleanup().await;
}
