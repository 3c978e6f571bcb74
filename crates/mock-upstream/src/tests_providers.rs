//! Anthropic Messages and Gemini generateContent: shapes, exact stream framing, usage,
//! errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::plan::TOOL_ARGS;
use crate::tests::{Resp, default_text, send_raw};
use crate::{Behavior, Endpoint, MockUpstream, expected_usage, expected_usage_for};

const KEY: &str = "sk-ant-test-good";
const GKEY: &str = "AIza-test-good";
const VERSION: &str = "2023-06-01";

// ---------------------------------------------------------------------------------------
// Helpers.

async fn anthropic(m: &MockUpstream, key: Option<&str>, body: &Value) -> Resp {
    let mut headers = vec![("anthropic-version", VERSION)];
    if let Some(k) = key {
        headers.push(("x-api-key", k));
    }
    send_raw(
        m.addr,
        "POST",
        "/v1/messages",
        &headers,
        Some(&body.to_string()),
    )
    .await
}

async fn gemini(m: &MockUpstream, path: &str, body: &Value) -> Resp {
    send_raw(
        m.addr,
        "POST",
        path,
        &[("x-goog-api-key", GKEY)],
        Some(&body.to_string()),
    )
    .await
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(extra)) = (base.as_object_mut(), extra) {
        b.extend(extra);
    }
    base
}

fn msg_body(extra: Value) -> Value {
    merge(
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You are terse.",
            "messages": [{"role": "user", "content": "Hello there, how are you?"}]
        }),
        extra,
    )
}

fn gem_body(extra: Value) -> Value {
    merge(
        json!({
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "contents": [{"role": "user", "parts": [{"text": "Hello there, how are you?"}]}]
        }),
        extra,
    )
}

/// Anthropic SSE: `(event name, data JSON)` pairs, checking the exact
/// `event: NAME\ndata: JSON\n\n` framing and that `data.type` is the event name.
fn named_events(r: &Resp) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut rest = r.text();
    while !rest.is_empty() {
        let end = rest
            .find("\n\n")
            .unwrap_or_else(|| panic!("unterminated event: {rest:?}"));
        let (head, data) = rest[..end]
            .split_once('\n')
            .unwrap_or_else(|| panic!("bad event: {rest:?}"));
        let name = head.strip_prefix("event: ").expect("event: line");
        let data = data.strip_prefix("data: ").expect("data: line");
        assert!(!data.contains('\n'));
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], name, "{data}");
        out.push((name.to_owned(), v));
        rest = &rest[end + 2..];
    }
    out
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// Gemini SSE: the chunks, checking the exact `data: JSON\r\n\r\n` framing.
fn gemini_chunks(r: &Resp) -> Vec<Value> {
    let mut out = Vec::new();
    let mut rest = r.text();
    while !rest.is_empty() {
        let end = rest
            .find("\r\n\r\n")
            .unwrap_or_else(|| panic!("unterminated event: {rest:?}"));
        let data = rest[..end].strip_prefix("data: ").expect("data: prefix");
        assert!(!data.contains('\n') && !data.contains('\r'));
        out.push(serde_json::from_str(data).unwrap());
        rest = &rest[end + 4..];
    }
    out
}

fn assert_anthropic_error(r: &Resp, status: u16, kind: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(v.as_object().unwrap().len(), 2);
    assert_eq!(v["error"].as_object().unwrap().len(), 2);
    v
}

fn assert_gemini_error(r: &Resp, code: u16, status: &str) -> Value {
    assert_eq!(r.status, code, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 1);
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["status"], status, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    v
}

// ---------------------------------------------------------------------------------------
// Anthropic.

#[tokio::test]
async fn anthropic_non_stream_shape_and_usage() {
    let m = MockUpstream::start().await.unwrap();
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What's the weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "15 degrees"}]},
                {"type": "text", "text": "Thanks"}
            ]}
        ],
        "temperature": 0.5, "top_p": 0.9, "top_k": 5, "metadata": {"user_id": "u1"}
    });
    // 14 (system) + 19 + 10 (tool_result) + 6 = 49 bytes → 13, + 3 messages * 3 = 22.
    assert_eq!(
        expected_usage_for(Endpoint::AnthropicMessages, &body, m.defaults()),
        (22, 12)
    );
    let r = anthropic(&m, Some(KEY), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("request-id").unwrap().starts_with("req_mock"));
    let mut v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msg_mock"), "{id}");
    v["id"] = json!("X");
    assert_eq!(
        v,
        json!({"id":"X","type":"message","role":"assistant","model":"claude-sonnet-4-5",
               "content":[{"type":"text","text":default_text(48)}],
               "stop_reason":"end_turn","stop_sequence":null,
               "usage":{"input_tokens":22,"output_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}})
    );
    assert!(r.text().starts_with(r#"{"id":"msg_mock"#));

    let last = m.last_request().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(last.header("x-api-key"), Some(KEY));
    assert_eq!(last.header("anthropic-version"), Some(VERSION));
    assert_eq!(last.json().unwrap(), body);
    assert_eq!(m.requests(), 1);

    // Thinking + forced tool: [thinking, tool_use], stop_reason tool_use, 15 + 4 tokens.
    let tools = json!([{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}]);
    let body = msg_body(json!({
        "tools": tools, "tool_choice": {"type": "any"},
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 4096
    }));
    let v = anthropic(&m, Some(KEY), &body).await.json();
    assert_eq!(
        v["content"],
        json!([{"type":"thinking","thinking":"Let me think…","signature":"sig_mock"},
               {"type":"tool_use","id":"toolu_mock1","name":"lookup","input":{"location":"Paris","unit":"celsius"}}])
    );
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["usage"]["output_tokens"], 19);
    assert_eq!(
        expected_usage_for(Endpoint::AnthropicMessages, &body, m.defaults()),
        (13, 19)
    );
    // tool_choice "tool" names the tool; "auto" answers with text; mock.tool_call forces.
    let body = msg_body(json!({"tools": tools, "tool_choice": {"type": "tool", "name": "other"}}));
    let v = anthropic(&m, Some(KEY), &body).await.json();
    assert_eq!(v["content"][0]["name"], "other");
    let v = anthropic(&m, Some(KEY), &msg_body(json!({"tools": tools})))
        .await
        .json();
    assert_eq!(v["stop_reason"], "end_turn");
    let v = anthropic(
        &m,
        Some(KEY),
        &msg_body(json!({"mock": {"tool_call": true}})),
    )
    .await
    .json();
    assert_eq!(v["content"][0]["name"], "get_weather");
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["usage"]["output_tokens"], 15);
}

#[tokio::test]
async fn anthropic_cached_max_tokens_stop_sequences_omit_usage() {
    let m = MockUpstream::start().await.unwrap();
    // input_tokens EXCLUDES cache reads: 13 total, 5 cached → 8 + 5.
    let body = msg_body(json!({"mock": {"cached_tokens": 5}}));
    assert_eq!(
        expected_usage_for(Endpoint::AnthropicMessages, &body, m.defaults()),
        (13, 12)
    );
    let v = anthropic(&m, Some(KEY), &body).await.json();
    assert_eq!(
        v["usage"],
        json!({"input_tokens":8,"output_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":5})
    );
    // Cached tokens are capped at the prompt.
    let body = msg_body(json!({"mock": {"cached_tokens": 500}}));
    let v = anthropic(&m, Some(KEY), &body).await.json();
    assert_eq!(v["usage"]["input_tokens"], 0);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 13);

    let body = msg_body(json!({"max_tokens": 5}));
    let v = anthropic(&m, Some(KEY), &body).await.json();
    assert_eq!(v["content"][0]["text"], default_text(20));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert_eq!(
        expected_usage_for(Endpoint::AnthropicMessages, &body, m.defaults()),
        (13, 5)
    );

    let body = msg_body(json!({"stop_sequences": ["lazy", "fox"]}));
    let v = anthropic(&m, Some(KEY), &body).await.json();
    assert_eq!(v["content"][0]["text"], "The quick brown ");
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], "fox");
    assert_eq!(v["usage"]["output_tokens"], 4);
    assert_eq!(
        expected_usage_for(Endpoint::AnthropicMessages, &body, m.defaults()).1,
        4
    );

    let body = msg_body(json!({"mock": {"content": "Héllo \"world\"\n", "omit_usage": true}}));
    let v = anthropic(&m, Some(KEY), &body).await.json();
    assert_eq!(v["content"][0]["text"], "Héllo \"world\"\n");
    assert!(v.get("usage").is_none());

    let body = msg_body(json!({"stream": true, "mock": {"omit_usage": true, "chunks": 2}}));
    let events = named_events(&anthropic(&m, Some(KEY), &body).await);
    assert!(events[0].1["message"].get("usage").is_none());
    let delta = &events[events.len() - 2];
    assert_eq!(delta.0, "message_delta");
    assert!(delta.1.get("usage").is_none());
}

#[tokio::test]
async fn anthropic_stream_text_sequence() {
    let m = MockUpstream::start().await.unwrap();
    let body = msg_body(json!({"stream": true, "mock": {"cached_tokens": 3}}));
    let r = anthropic(&m, Some(KEY), &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.complete);
    assert!(!r.text().contains("[DONE]"));
    let events = named_events(&r);
    let mut expected = vec!["message_start", "ping", "content_block_start"];
    expected.extend(["content_block_delta"; 8]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected);

    let (p, c) = expected_usage_for(Endpoint::AnthropicMessages, &body, m.defaults());
    assert_eq!((p, c), (13, 12));
    let start = &events[0].1;
    let id = start["message"]["id"].as_str().unwrap();
    assert!(id.starts_with("msg_mock"));
    assert_eq!(
        start,
        &json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant",
            "model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,
            "usage":{"input_tokens":10,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":3}}})
    );
    assert_eq!(events[1].1, json!({"type":"ping"}));
    assert_eq!(
        events[2].1,
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})
    );
    let mut text = String::new();
    for (_, e) in &events[3..11] {
        assert_eq!(e["index"], 0);
        assert_eq!(e["delta"]["type"], "text_delta");
        let piece = e["delta"]["text"].as_str().unwrap();
        assert_eq!(piece.chars().count(), 6);
        text.push_str(piece);
    }
    assert_eq!(text, default_text(48));
    assert_eq!(events[11].1, json!({"type":"content_block_stop","index":0}));
    assert_eq!(
        events[12].1,
        json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":c}})
    );
    assert_eq!(events[13].1, json!({"type":"message_stop"}));
}

#[tokio::test]
async fn anthropic_stream_thinking_and_tool_use_sequence() {
    let m = MockUpstream::start().await.unwrap();
    let body = msg_body(json!({
        "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "mock": {"chunk_size": 10}
    }));
    let events = named_events(&anthropic(&m, Some(KEY), &body).await);
    let fragments = TOOL_ARGS.len().div_ceil(10);
    let mut expected = vec![
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
    ];
    expected.extend(vec!["content_block_delta"; fragments]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected);

    assert_eq!(
        events[2].1,
        json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}})
    );
    assert_eq!(
        events[3].1,
        json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think…"}})
    );
    assert_eq!(
        events[4].1,
        json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig_mock"}})
    );
    assert_eq!(events[5].1, json!({"type":"content_block_stop","index":0}));
    assert_eq!(
        events[6].1,
        json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_mock1","name":"get_weather","input":{}}})
    );
    let mut args = String::new();
    for (_, e) in &events[7..7 + fragments] {
        assert_eq!(e["index"], 1);
        assert_eq!(e["delta"]["type"], "input_json_delta");
        args.push_str(e["delta"]["partial_json"].as_str().unwrap());
    }
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location":"Paris","unit":"celsius"})
    );
    assert_eq!(
        events[7 + fragments].1,
        json!({"type":"content_block_stop","index":1})
    );
    let delta = &events[8 + fragments].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 19);
    assert_eq!(
        expected_usage_for(Endpoint::AnthropicMessages, &body, m.defaults()).1,
        19
    );

    // Thinking with a text answer: thinking block 0, text block 1.
    let body = msg_body(
        json!({"stream": true, "thinking": {"type": "enabled", "budget_tokens": 1024}, "mock": {"chunks": 2}}),
    );
    let events = named_events(&anthropic(&m, Some(KEY), &body).await);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[6].1["content_block"]["type"], "text");
    assert_eq!(events[7].1["index"], 1);
    assert_eq!(events[10].1["usage"]["output_tokens"], 3 + 4);
}

#[tokio::test]
async fn anthropic_errors_and_drops() {
    let m = MockUpstream::start().await.unwrap();
    let body = msg_body(json!({}));
    let v = assert_anthropic_error(
        &anthropic(&m, None, &body).await,
        401,
        "authentication_error",
    );
    assert_eq!(
        v,
        json!({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}})
    );
    assert_anthropic_error(
        &anthropic(&m, Some("sk-ant-bad-1"), &body).await,
        401,
        "authentication_error",
    );
    // OpenAI-style auth is not Anthropic auth.
    let r = send_raw(
        m.addr,
        "POST",
        "/v1/messages",
        &[
            ("Authorization", "Bearer sk-ant-test-good"),
            ("anthropic-version", VERSION),
        ],
        Some(&body.to_string()),
    )
    .await;
    assert_anthropic_error(&r, 401, "authentication_error");
    let r = send_raw(
        m.addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", KEY)],
        Some(&body.to_string()),
    )
    .await;
    let v = assert_anthropic_error(&r, 400, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version")
    );

    let mut no_max = body.clone();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let v = assert_anthropic_error(
        &anthropic(&m, Some(KEY), &no_max).await,
        400,
        "invalid_request_error",
    );
    assert_eq!(
        v,
        json!({"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}})
    );
    assert_eq!(
        expected_usage_for(Endpoint::AnthropicMessages, &no_max, m.defaults()),
        (0, 0)
    );
    let bad_role = msg_body(json!({"messages": [{"role": "system", "content": "x"}]}));
    assert_anthropic_error(
        &anthropic(&m, Some(KEY), &bad_role).await,
        400,
        "invalid_request_error",
    );

    let v = assert_anthropic_error(
        &anthropic(&m, Some("sk-noquota-1"), &body).await,
        400,
        "invalid_request_error",
    );
    assert_eq!(
        v,
        json!({"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}})
    );
    let r = anthropic(&m, Some("sk-ratelimit-1"), &body).await;
    assert_anthropic_error(&r, 429, "rate_limit_error");
    assert!(r.header("retry-after").is_some());

    // mock.status, also for stream requests (plain JSON before the stream).
    for (status, kind) in [
        (400, "invalid_request_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ] {
        let b = msg_body(json!({"stream": true, "mock": {"status": status}}));
        assert_anthropic_error(&anthropic(&m, Some(KEY), &b).await, status, kind);
    }
    let b = msg_body(json!({"mock": {"error_code": "overloaded_error"}}));
    assert_anthropic_error(&anthropic(&m, Some(KEY), &b).await, 529, "overloaded_error");

    // Behaviors answer in the Anthropic shape on this endpoint.
    m.set_behavior(Behavior::Status(503));
    assert_anthropic_error(&anthropic(&m, Some(KEY), &body).await, 503, "api_error");
    m.set_behavior(Behavior::Status(529));
    assert_anthropic_error(
        &anthropic(&m, Some(KEY), &body).await,
        529,
        "overloaded_error",
    );
    m.set_behavior(Behavior::RateLimited);
    let r = anthropic(&m, Some(KEY), &body).await;
    assert_anthropic_error(&r, 429, "rate_limit_error");
    assert_eq!(r.header("retry-after"), Some("1"));
    m.set_behavior(Behavior::InsufficientQuota);
    assert_anthropic_error(
        &anthropic(&m, Some(KEY), &body).await,
        400,
        "invalid_request_error",
    );
    m.set_behavior(Behavior::Normal);

    // drop_after: 3 text deltas, then an abrupt close (no block stop / message_stop).
    let b = msg_body(json!({"stream": true, "mock": {"drop_after": 3}}));
    let r = anthropic(&m, Some(KEY), &b).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert_eq!(
        names(&named_events(&r)),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta"
        ]
    );
    let r = anthropic(&m, Some(KEY), &msg_body(json!({"mock": {"drop_after": 1}}))).await;
    assert_eq!((r.status, r.raw_len), (0, 0));

    // Other paths under /v1/messages are Anthropic 404s; /v1/models stays OpenAI's.
    let r = send_raw(m.addr, "GET", "/v1/messages", &[("x-api-key", KEY)], None).await;
    assert_anthropic_error(&r, 404, "not_found_error");
    let r = send_raw(
        m.addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer sk-test")],
        None,
    )
    .await;
    assert_eq!(r.json()["object"], "list");
}

// ---------------------------------------------------------------------------------------
// Gemini.

const FLASH: &str = "/v1beta/models/gemini-2.0-flash";

#[tokio::test]
async fn gemini_non_stream_shape_usage_and_auth() {
    let m = MockUpstream::start().await.unwrap();
    let body = json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello there, how are you?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"x": 1}}}, {"text": "ok"}]}
        ],
        "generationConfig": {"temperature": 0.2, "topP": 0.9, "topK": 3},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    });
    // 14 + 25 + 2 = 41 bytes → 11, + 3 contents * 3 = 20.
    assert_eq!(
        expected_usage_for(Endpoint::GeminiGenerate, &body, m.defaults()),
        (20, 12)
    );
    assert_eq!(expected_usage(&body, m.defaults()), (20, 12));
    let r = gemini(&m, &format!("{FLASH}:generateContent"), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let mut v = r.json();
    assert!(v["responseId"].as_str().unwrap().starts_with("mock"));
    v["responseId"] = json!("X");
    assert_eq!(
        v,
        json!({"candidates":[{"content":{"parts":[{"text":default_text(48)}],"role":"model"},"finishReason":"STOP","index":0}],
               "usageMetadata":{"promptTokenCount":20,"candidatesTokenCount":12,"totalTokenCount":32},
               "modelVersion":"gemini-2.0-flash","responseId":"X"})
    );
    let last = m.last_request().unwrap();
    assert_eq!(last.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(last.query, None);
    assert_eq!(last.header("x-goog-api-key"), Some(GKEY));

    // ?key= auth; the recorded request keeps the query string.
    let path = format!("{FLASH}:generateContent?key={GKEY}");
    let r = send_raw(m.addr, "POST", &path, &[], Some(&body.to_string())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let last = m.last_request().unwrap();
    assert_eq!(last.query.as_deref(), Some(format!("key={GKEY}").as_str()));
    assert_eq!(m.requests(), 2);

    // candidateCount, thoughts, cached tokens (included in promptTokenCount).
    let body = gem_body(json!({
        "generationConfig": {"candidateCount": 2, "thinkingConfig": {"includeThoughts": true, "thinkingBudget": 512}},
        "mock": {"cached_tokens": 4}
    }));
    let v = gemini(&m, &format!("{FLASH}:generateContent"), &body)
        .await
        .json();
    let cands = v["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 2);
    for (i, c) in cands.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(
            c["content"]["parts"],
            json!([{"text":"Let me think…","thought":true},{"text":default_text(48)}])
        );
    }
    // 14 + 25 → 10 + 3 = 13.
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount":13,"candidatesTokenCount":24,"totalTokenCount":45,"cachedContentTokenCount":4,"thoughtsTokenCount":8})
    );
    assert_eq!(
        expected_usage_for(Endpoint::GeminiGenerate, &body, m.defaults()),
        (13, 32)
    );

    // Function calling: mode ANY → first declared function, no id, finishReason STOP.
    let tools = json!([{"functionDeclarations": [{"name": "get_weather", "description": "d", "parameters": {"type": "object"}}, {"name": "other"}]}]);
    let body =
        gem_body(json!({"tools": tools, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}));
    let v = gemini(&m, &format!("{FLASH}:generateContent"), &body)
        .await
        .json();
    assert_eq!(
        v["candidates"][0],
        json!({"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"location":"Paris","unit":"celsius"}}}],"role":"model"},"finishReason":"STOP","index":0})
    );
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 15);
    let body = gem_body(
        json!({"tools": tools, "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["other"]}}}),
    );
    let v = gemini(&m, &format!("{FLASH}:generateContent"), &body)
        .await
        .json();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "other"
    );
    let body = gem_body(json!({"tools": tools}));
    let v = gemini(&m, &format!("{FLASH}:generateContent"), &body)
        .await
        .json();
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());
    let v = gemini(
        &m,
        &format!("{FLASH}:generateContent"),
        &gem_body(json!({"mock": {"tool_call": true}})),
    )
    .await
    .json();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_weather"
    );

    // maxOutputTokens → MAX_TOKENS; stopSequences → STOP; omit_usage.
    let body = gem_body(json!({"generationConfig": {"maxOutputTokens": 3}}));
    let v = gemini(&m, &format!("{FLASH}:generateContent"), &body)
        .await
        .json();
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        default_text(12)
    );
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 3);
    assert_eq!(expected_usage(&body, m.defaults()), (13, 3));
    let body = gem_body(json!({"generationConfig": {"stopSequences": ["brown"]}}));
    let v = gemini(&m, &format!("{FLASH}:generateContent"), &body)
        .await
        .json();
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "The quick "
    );
    let body = gem_body(json!({"mock": {"omit_usage": true}}));
    let v = gemini(&m, &format!("{FLASH}:generateContent"), &body)
        .await
        .json();
    assert!(v.get("usageMetadata").is_none());
}

#[tokio::test]
async fn gemini_stream_sse_and_json_array() {
    let m = MockUpstream::start().await.unwrap();
    let body = gem_body(json!({"mock": {"cached_tokens": 2}}));
    let r = gemini(&m, &format!("{FLASH}:streamGenerateContent?alt=sse"), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.complete);
    assert!(r.text().ends_with("\r\n\r\n") && !r.text().contains("[DONE]"));
    let chunks = gemini_chunks(&r);
    assert_eq!(chunks.len(), 8);
    let id = chunks[0]["responseId"].as_str().unwrap();
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        let last = i == chunks.len() - 1;
        assert_eq!(c["responseId"], id);
        assert_eq!(c["modelVersion"], "gemini-2.0-flash");
        let cand = &c["candidates"][0];
        assert_eq!(cand["content"]["role"], "model");
        assert_eq!(cand["index"], 0);
        text.push_str(cand["content"]["parts"][0]["text"].as_str().unwrap());
        assert_eq!(cand.get("finishReason").is_some(), last);
        assert_eq!(c.get("usageMetadata").is_some(), last);
    }
    assert_eq!(text, default_text(48));
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    let (p, c) = expected_usage_for(Endpoint::GeminiGenerate, &body, m.defaults());
    assert_eq!(
        last["usageMetadata"],
        json!({"promptTokenCount":p,"candidatesTokenCount":c,"totalTokenCount":p + c,"cachedContentTokenCount":2})
    );

    // Thoughts first; a function call is one chunk carrying finishReason + usage.
    let body = gem_body(json!({
        "generationConfig": {"thinkingConfig": {"includeThoughts": true}},
        "tools": [{"functionDeclarations": [{"name": "lookup"}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}
    }));
    let chunks =
        gemini_chunks(&gemini(&m, &format!("{FLASH}:streamGenerateContent?alt=sse"), &body).await);
    assert_eq!(chunks.len(), 2);
    assert_eq!(
        chunks[0]["candidates"],
        json!([{"content":{"parts":[{"text":"Let me think…","thought":true}],"role":"model"},"index":0}])
    );
    assert!(chunks[0].get("usageMetadata").is_none());
    assert_eq!(
        chunks[1]["candidates"],
        json!([{"content":{"parts":[{"functionCall":{"name":"lookup","args":{"location":"Paris","unit":"celsius"}}}],"role":"model"},"finishReason":"STOP","index":0}])
    );
    assert_eq!(
        chunks[1]["usageMetadata"],
        json!({"promptTokenCount":13,"candidatesTokenCount":15,"totalTokenCount":32,"thoughtsTokenCount":4})
    );

    // Without alt=sse: one JSON array of the same chunks (the key may be in the query).
    let body = gem_body(json!({"mock": {"chunks": 3}}));
    let path = format!("{FLASH}:streamGenerateContent?key={GKEY}");
    let r = send_raw(m.addr, "POST", &path, &[], Some(&body.to_string())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let arr = r.json();
    let arr = arr.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(arr[2]["usageMetadata"]["candidatesTokenCount"], 5);
    assert!(arr[0]["candidates"][0].get("finishReason").is_none());

    // maxOutputTokens in a stream: the last chunk says MAX_TOKENS.
    let body = gem_body(json!({"generationConfig": {"maxOutputTokens": 2}}));
    let chunks =
        gemini_chunks(&gemini(&m, &format!("{FLASH}:streamGenerateContent?alt=sse"), &body).await);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1]["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(chunks[1]["usageMetadata"]["candidatesTokenCount"], 2);

    // drop_after: n chunks without finishReason, then an abrupt close.
    let body = gem_body(json!({"mock": {"drop_after": 3}}));
    let r = gemini(&m, &format!("{FLASH}:streamGenerateContent?alt=sse"), &body).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    let chunks = gemini_chunks(&r);
    assert_eq!(chunks.len(), 3);
    assert!(
        chunks
            .iter()
            .all(|c| c["candidates"][0].get("finishReason").is_none()
                && c.get("usageMetadata").is_none())
    );
    // drop_after beyond the end still withholds the finishing chunk.
    let body = gem_body(json!({"mock": {"drop_after": 50, "chunks": 2}}));
    let r = gemini(&m, &format!("{FLASH}:streamGenerateContent?alt=sse"), &body).await;
    assert!(!r.complete);
    let chunks = gemini_chunks(&r);
    assert_eq!(chunks.len(), 2);
    assert!(
        chunks
            .iter()
            .all(|c| c["candidates"][0].get("finishReason").is_none())
    );
}

#[tokio::test]
async fn gemini_errors_and_models() {
    let m = MockUpstream::start().await.unwrap();
    let path = format!("{FLASH}:generateContent");
    let body = gem_body(json!({})).to_string();
    let r = send_raw(m.addr, "POST", &path, &[], Some(&body)).await;
    let v = assert_gemini_error(&r, 403, "PERMISSION_DENIED");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Method doesn't allow unregistered callers")
    );
    let bad = json!({"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}});
    let r = send_raw(
        m.addr,
        "POST",
        &path,
        &[("x-goog-api-key", "AIza-bad")],
        Some(&body),
    )
    .await;
    assert_eq!(assert_gemini_error(&r, 400, "INVALID_ARGUMENT"), bad);
    let r = send_raw(
        m.addr,
        "POST",
        &format!("{path}?key=AIza-bad"),
        &[],
        Some(&body),
    )
    .await;
    assert_eq!(assert_gemini_error(&r, 400, "INVALID_ARGUMENT"), bad);
    assert_eq!(
        m.last_request().unwrap().query.as_deref(),
        Some("key=AIza-bad")
    );
    let r = send_raw(
        m.addr,
        "POST",
        &path,
        &[("x-goog-api-key", "AIza-noquota")],
        Some(&body),
    )
    .await;
    let v = assert_gemini_error(&r, 429, "RESOURCE_EXHAUSTED");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You exceeded your current quota")
    );
    let r = send_raw(
        m.addr,
        "POST",
        &path,
        &[("x-goog-api-key", "AIza-ratelimit")],
        Some(&body),
    )
    .await;
    let v = assert_gemini_error(&r, 429, "RESOURCE_EXHAUSTED");
    assert_eq!(
        v["error"]["message"],
        "Resource has been exhausted (e.g. check quota)."
    );

    for (status, name) in [
        (400, "INVALID_ARGUMENT"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ] {
        let b = gem_body(json!({"mock": {"status": status}}));
        let r = gemini(&m, &format!("{FLASH}:streamGenerateContent?alt=sse"), &b).await;
        assert_gemini_error(&r, status, name);
    }
    let b = gem_body(json!({"mock": {"error_code": "UNAVAILABLE"}}));
    assert_gemini_error(&gemini(&m, &path, &b).await, 503, "UNAVAILABLE");

    m.set_behavior(Behavior::Status(500));
    assert_gemini_error(
        &gemini(&m, &path, &gem_body(json!({}))).await,
        500,
        "INTERNAL",
    );
    m.set_behavior(Behavior::RateLimited);
    assert_gemini_error(
        &gemini(&m, &path, &gem_body(json!({}))).await,
        429,
        "RESOURCE_EXHAUSTED",
    );
    m.set_behavior(Behavior::Normal);

    // Request errors.
    let v = assert_gemini_error(
        &gemini(&m, &path, &json!({"contents": []})).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("contents is not specified")
    );
    assert_eq!(
        expected_usage_for(
            Endpoint::GeminiGenerate,
            &json!({"contents": []}),
            m.defaults()
        ),
        (0, 0)
    );
    let b = json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]});
    assert_gemini_error(&gemini(&m, &path, &b).await, 400, "INVALID_ARGUMENT");
    let r = send_raw(
        m.addr,
        "POST",
        &path,
        &[("x-goog-api-key", GKEY)],
        Some("{nope"),
    )
    .await;
    assert_gemini_error(&r, 400, "INVALID_ARGUMENT");
    let r = gemini(&m, &format!("{FLASH}:embedContent"), &gem_body(json!({}))).await;
    assert_gemini_error(&r, 404, "NOT_FOUND");
    let r = gemini(&m, "/v1beta/nope", &gem_body(json!({}))).await;
    assert_gemini_error(&r, 404, "NOT_FOUND");
    // Non-stream drop_after: the connection closes without a response.
    let r = gemini(&m, &path, &gem_body(json!({"mock": {"drop_after": 1}}))).await;
    assert_eq!((r.status, r.raw_len), (0, 0));
    // The ':' may arrive percent-encoded.
    let r = gemini(
        &m,
        "/v1beta/models/gemini-2.5-pro%3AgenerateContent",
        &gem_body(json!({})),
    )
    .await;
    assert_eq!(r.json()["modelVersion"], "gemini-2.5-pro");

    // Models.
    let r = send_raw(
        m.addr,
        "GET",
        "/v1beta/models",
        &[("x-goog-api-key", GKEY)],
        None,
    )
    .await;
    let v = r.json();
    let models = v["models"].as_array().unwrap();
    assert!(
        models
            .iter()
            .any(|m| m["name"] == "models/gemini-2.0-flash")
    );
    for model in models {
        assert_eq!(
            model["supportedGenerationMethods"],
            json!(["generateContent", "streamGenerateContent"])
        );
        assert!(model["displayName"].is_string());
    }
    let r = send_raw(m.addr, "GET", &format!("{FLASH}?key={GKEY}"), &[], None).await;
    assert_eq!(r.json()["name"], "models/gemini-2.0-flash");
    let r = send_raw(m.addr, "GET", "/v1beta/models", &[], None).await;
    assert_gemini_error(&r, 403, "PERMISSION_DENIED");
}

#[tokio::test]
async fn provider_streams_honour_chunk_delay() {
    let m = MockUpstream::start_on(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        crate::Defaults {
            chunks: 2,
            chunk_delay_ms: 10,
            chunk_size: 4,
        },
    )
    .await
    .unwrap();
    let t = std::time::Instant::now();
    let events = named_events(&anthropic(&m, Some(KEY), &msg_body(json!({"stream": true}))).await);
    // 8 events → 7 gaps.
    assert_eq!(events.len(), 8);
    assert!(t.elapsed() >= std::time::Duration::from_millis(70));
    let t = std::time::Instant::now();
    let chunks = gemini_chunks(
        &gemini(
            &m,
            &format!("{FLASH}:streamGenerateContent?alt=sse"),
            &gem_body(json!({"mock": {"chunk_delay_ms": 25}})),
        )
        .await,
    );
    assert_eq!(chunks.len(), 2);
    assert!(t.elapsed() >= std::time::Duration::from_millis(25));
}
