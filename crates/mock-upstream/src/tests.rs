#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::plan::TOOL_ARGS;
use crate::wire::SENTENCE;
use crate::{Behavior, Defaults, MockUpstream, expected_usage};

const KEY: &str = "sk-test-good";

/// A raw HTTP/1.1 response, read until the server closed the connection.
#[derive(Debug)]
pub(crate) struct Resp {
    /// 0 when no response head arrived at all.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was delimited properly (content-length reached / last chunk seen).
    pub complete: bool,
    pub raw_len: usize,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.text()))
    }

    /// SSE `data:` payloads, checking the exact `data: ...\n\n` framing.
    fn events(&self) -> Vec<String> {
        let text = self.text();
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let end = rest
                .find("\n\n")
                .unwrap_or_else(|| panic!("unterminated event: {rest:?}"));
            let event = &rest[..end];
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event framing: {event:?}"));
            assert!(!data.contains('\n'), "multi-line event: {event:?}");
            out.push(data.to_owned());
            rest = &rest[end + 2..];
        }
        out
    }

    fn json_events(&self) -> (Vec<Value>, bool) {
        let events = self.events();
        let done = events.last().is_some_and(|e| e == "[DONE]");
        let values = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        (values, done)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(raw: Vec<u8>) -> Resp {
    let raw_len = raw.len();
    let Some(head_end) = find(&raw, b"\r\n\r\n") else {
        return Resp {
            status: 0,
            headers: vec![],
            body: raw,
            complete: false,
            raw_len,
        };
    };
    let head = std::str::from_utf8(&raw[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let (body, complete) = if chunked {
        let mut body = Vec::new();
        let mut complete = false;
        while let Some(line_end) = find(rest, b"\r\n") {
            let size_str = std::str::from_utf8(&rest[..line_end]).unwrap();
            let size =
                usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                complete = true;
                break;
            }
            if rest.len() < size + 2 {
                body.extend_from_slice(&rest[..size.min(rest.len())]);
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        (body, complete)
    } else {
        let len: Option<usize> = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap());
        match len {
            Some(len) => (rest[..len.min(rest.len())].to_vec(), rest.len() >= len),
            None => (rest.to_vec(), true),
        }
    };
    Resp {
        status,
        headers,
        body,
        complete,
        raw_len,
    }
}

/// Send one request with `Connection: close` and read everything until EOF (or reset).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    send_raw(addr, method, path, &headers, body).await
}

/// Send one request with these extra headers, `Connection: close`, and read everything
/// until EOF (or reset).
pub(crate) async fn send_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    parse_response(raw)
}

async fn post(m: &MockUpstream, path: &str, body: &Value) -> Resp {
    send(m.addr, "POST", path, Some(KEY), Some(&body.to_string())).await
}

fn chat_body(extra: Value) -> Value {
    let mut b = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hello there, how are you?"}]}
        ]
    });
    if let (Some(b), Value::Object(extra)) = (b.as_object_mut(), extra) {
        b.extend(extra);
    }
    b
}

/// The top-level `keys` appear in this order in the raw JSON text.
fn assert_order(raw: &str, keys: &[&str]) {
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            raw.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} missing in {raw}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "key order {keys:?} in {raw}"
    );
}

pub(crate) fn default_text(len: usize) -> String {
    SENTENCE.chars().cycle().take(len).collect()
}

fn assert_error(r: &Resp, status: u16, kind: &str, code: Option<&str>) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let e = &v["error"];
    assert_eq!(e["type"], kind, "{v}");
    assert_eq!(e["code"].as_str(), code, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(e.get("param").is_some());
    assert_eq!(e.as_object().unwrap().len(), 4);
    v
}

#[tokio::test]
async fn chat_non_stream_shape_and_usage() {
    let m = MockUpstream::start().await.unwrap();
    let body = chat_body(json!({}));
    let r = post(&m, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.complete);
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["system_fingerprint"], "fp_mock");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(
        choices[0],
        json!({"index":0,"message":{"role":"assistant","content":default_text(48),"refusal":null},"logprobs":null,"finish_reason":"stop"})
    );
    // 14 + 25 bytes → ceil(39/4)=10, + 2 messages * 3 = 16; 48 chars → 12.
    let (p, c) = expected_usage(&body, m.defaults());
    assert_eq!((p, c), (16, 12));
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens":16,"completion_tokens":12,"total_tokens":28,
               "prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},
               "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}})
    );
    // Exact key order as OpenAI sends it.
    assert_order(
        r.text(),
        &[
            "id",
            "object",
            "created",
            "model",
            "choices",
            "usage",
            "system_fingerprint",
        ],
    );
    assert!(r.text().starts_with(r#"{"id":"chatcmpl-mock"#));
    assert!(r.text().ends_with(r#","system_fingerprint":"fp_mock"}"#));

    assert_eq!(m.requests(), 1);
    let last = m.last_request().unwrap();
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.header("authorization"), Some("Bearer sk-test-good"));
    assert_eq!(last.json().unwrap(), body);
    assert!(m.base_url().starts_with("http://127.0.0.1:") && m.base_url().ends_with("/v1"));
}

#[tokio::test]
async fn chat_controls_max_tokens_n_content_cached() {
    let m = MockUpstream::start().await.unwrap();
    // max_tokens shorter than the reply → cut to max_tokens*4 chars, finish "length".
    let body = chat_body(json!({"max_tokens": 5, "n": 2, "mock": {"cached_tokens": 4}}));
    let v = post(&m, "/v1/chat/completions", &body).await.json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    for (i, c) in v["choices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["content"], default_text(20));
        assert_eq!(c["finish_reason"], "length");
    }
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    assert_eq!(expected_usage(&body, m.defaults()), (16, 10));

    let body = chat_body(json!({"mock": {"content": "Héllo \"world\"\n", "omit_usage": true}}));
    let v = post(&m, "/v1/chat/completions", &body).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Héllo \"world\"\n");
    assert!(v.get("usage").is_none());
    assert_eq!(expected_usage(&body, m.defaults()), (16, 4));

    let body = chat_body(json!({"mock": {"chunks": 3, "chunk_size": 10}}));
    let v = post(&m, "/v1/chat/completions", &body).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], default_text(30));
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(expected_usage(&body, m.defaults()), (16, 8));
}

#[tokio::test]
async fn chat_stream_without_include_usage() {
    let m = MockUpstream::start().await.unwrap();
    let r = post(
        &m,
        "/v1/chat/completions",
        &chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.complete);
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    let (events, done) = r.json_events();
    assert!(done);
    assert_eq!(events.len(), 1 + 8 + 1);
    let id = events[0]["id"].as_str().unwrap().to_owned();
    for raw in r.events().iter().filter(|e| *e != "[DONE]") {
        assert_order(
            raw,
            &[
                "id",
                "object",
                "created",
                "model",
                "system_fingerprint",
                "choices",
            ],
        );
    }
    for e in &events {
        assert_eq!(e["id"], id.as_str());
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["model"], "gpt-4o-mini");
        assert_eq!(e["system_fingerprint"], "fp_mock");
        assert!(e.get("usage").is_none());
        assert_eq!(e.as_object().unwrap().len(), 6);
    }
    assert_eq!(
        events[0]["choices"],
        json!([{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}])
    );
    let mut text = String::new();
    for e in &events[1..9] {
        let c = &e["choices"][0];
        assert_eq!(c["finish_reason"], Value::Null);
        let piece = c["delta"]["content"].as_str().unwrap();
        assert_eq!(piece.chars().count(), 6);
        text.push_str(piece);
    }
    assert_eq!(text, default_text(48));
    assert_eq!(
        events[9]["choices"],
        json!([{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}])
    );
}

#[tokio::test]
async fn chat_stream_with_include_usage() {
    let m = MockUpstream::start().await.unwrap();
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let r = post(&m, "/v1/chat/completions", &body).await;
    let (events, done) = r.json_events();
    assert!(done);
    assert_eq!(events.len(), 1 + 8 + 1 + 1);
    for e in &events[..10] {
        assert_eq!(e["usage"], Value::Null);
        assert!(e.as_object().unwrap().contains_key("usage"));
    }
    let last = &events[10];
    assert_eq!(last["choices"], json!([]));
    let (p, c) = expected_usage(&body, m.defaults());
    assert_eq!(last["usage"]["prompt_tokens"], p);
    assert_eq!(last["usage"]["completion_tokens"], c);
    assert_eq!(last["usage"]["total_tokens"], p + c);
    assert_eq!(
        last["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );

    // omit_usage: no usage chunk even though it was asked for.
    let body = chat_body(
        json!({"stream": true, "stream_options": {"include_usage": true}, "mock": {"omit_usage": true}}),
    );
    let (events, done) = post(&m, "/v1/chat/completions", &body).await.json_events();
    assert!(done);
    assert_eq!(events.len(), 10);
    assert!(events.iter().all(|e| e["usage"].is_null()));

    // stream_options without stream is rejected, like OpenAI.
    let body = chat_body(json!({"stream_options": {"include_usage": true}}));
    let r = post(&m, "/v1/chat/completions", &body).await;
    assert_error(&r, 400, "invalid_request_error", None);
}

#[tokio::test]
async fn tool_calls_stream_and_non_stream() {
    let m = MockUpstream::start().await.unwrap();
    let tools =
        json!([{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}]);
    let body = chat_body(json!({"tools": tools, "tool_choice": "required"}));
    let v = post(&m, "/v1/chat/completions", &body).await.json();
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(
        c["message"],
        json!({"role":"assistant","content":null,"tool_calls":[{"id":"call_mock1","type":"function","function":{"name":"lookup","arguments":TOOL_ARGS}}],"refusal":null})
    );
    assert_eq!(v["usage"]["completion_tokens"], 15);
    assert_eq!(expected_usage(&body, m.defaults()).1, 15);

    // "auto" with tools answers with text; mock.tool_call forces it (default name).
    let auto = post(
        &m,
        "/v1/chat/completions",
        &chat_body(json!({"tools": tools})),
    )
    .await
    .json();
    assert_eq!(auto["choices"][0]["finish_reason"], "stop");

    let body = chat_body(json!({"stream": true, "mock": {"tool_call": true}}));
    let r = post(&m, "/v1/chat/completions", &body).await;
    let (events, done) = r.json_events();
    assert!(done);
    let first = &events[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert_eq!(
        first["tool_calls"],
        json!([{"index":0,"id":"call_mock1","type":"function","function":{"name":"get_weather","arguments":""}}])
    );
    let mut args = String::new();
    let mut fragments = 0;
    for e in &events[1..events.len() - 1] {
        let tc = &e["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(tc["index"], 0);
        args.push_str(tc["function"]["arguments"].as_str().unwrap());
        fragments += 1;
    }
    assert!(fragments > 3);
    let parsed: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(parsed, json!({"location":"Paris","unit":"celsius"}));
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn auth_and_key_errors() {
    let m = MockUpstream::start().await.unwrap();
    let body = chat_body(json!({})).to_string();
    let r = send(m.addr, "POST", "/v1/chat/completions", None, Some(&body)).await;
    assert_error(&r, 401, "invalid_request_error", Some("invalid_api_key"));
    let r = send(
        m.addr,
        "POST",
        "/v1/chat/completions",
        Some("sk-bad-key-123456"),
        Some(&body),
    )
    .await;
    let v = assert_error(&r, 401, "invalid_request_error", Some("invalid_api_key"));
    assert!(!v.to_string().contains("sk-bad-key-123456"));
    let r = send(
        m.addr,
        "POST",
        "/v1/chat/completions",
        Some("sk-noquota-1"),
        Some(&body),
    )
    .await;
    let v = assert_error(&r, 429, "insufficient_quota", Some("insufficient_quota"));
    assert_eq!(
        v,
        json!({"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}})
    );
    let r = send(
        m.addr,
        "POST",
        "/v1/chat/completions",
        Some("sk-ratelimit-1"),
        Some(&body),
    )
    .await;
    assert_error(&r, 429, "requests", Some("rate_limit_exceeded"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Models need auth too.
    let r = send(m.addr, "GET", "/v1/models", None, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(m.requests(), 5);
}

#[tokio::test]
async fn behaviors_and_request_errors() {
    let m = MockUpstream::start().await.unwrap();
    let body = chat_body(json!({}));
    m.set_behavior(Behavior::Status(500));
    let r = post(&m, "/v1/chat/completions", &body).await;
    assert_error(&r, 500, "server_error", None);
    m.set_behavior(Behavior::Status(503));
    let r = post(&m, "/v1/chat/completions", &body).await;
    let v = assert_error(&r, 503, "server_error", None);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("The server is overloaded")
    );
    m.set_behavior(Behavior::Status(400));
    assert_error(
        &post(&m, "/v1/embeddings", &json!({})).await,
        400,
        "invalid_request_error",
        None,
    );
    m.set_behavior(Behavior::RateLimited);
    let r = post(&m, "/v1/chat/completions", &body).await;
    assert_error(&r, 429, "requests", Some("rate_limit_exceeded"));
    assert_eq!(r.header("retry-after"), Some("1"));
    m.set_behavior(Behavior::InsufficientQuota);
    assert_error(
        &post(&m, "/v1/completions", &body).await,
        429,
        "insufficient_quota",
        Some("insufficient_quota"),
    );
    m.set_behavior(Behavior::Delay(50));
    let t = Instant::now();
    assert_eq!(post(&m, "/v1/chat/completions", &body).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(50));
    m.set_behavior(Behavior::Normal);
    assert_eq!(post(&m, "/v1/chat/completions", &body).await.status, 200);

    // Malformed JSON.
    let r = send(
        m.addr,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        Some("{\"model\":"),
    )
    .await;
    assert_error(&r, 400, "invalid_request_error", None);
    // Missing model.
    let r = post(
        &m,
        "/v1/chat/completions",
        &json!({"messages":[{"role":"user","content":"x"}]}),
    )
    .await;
    assert_error(&r, 400, "invalid_request_error", None);

    // Per-request errors, also for stream requests (plain JSON before the stream starts).
    let r = post(
        &m,
        "/v1/chat/completions",
        &chat_body(json!({"stream": true, "mock": {"status": 500}})),
    )
    .await;
    assert_error(&r, 500, "server_error", None);
    let r = post(
        &m,
        "/v1/chat/completions",
        &chat_body(json!({"mock": {"status": 429}})),
    )
    .await;
    assert_error(&r, 429, "requests", Some("rate_limit_exceeded"));
    let r = post(
        &m,
        "/v1/chat/completions",
        &chat_body(json!({"mock": {"error_code": "insufficient_quota"}})),
    )
    .await;
    assert_error(&r, 429, "insufficient_quota", Some("insufficient_quota"));
    let r = post(
        &m,
        "/v1/chat/completions",
        &chat_body(json!({"mock": {"error_code": "context_length_exceeded"}})),
    )
    .await;
    let v = assert_error(
        &r,
        400,
        "invalid_request_error",
        Some("context_length_exceeded"),
    );
    assert_eq!(v["error"]["param"], "messages");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("This model's maximum context length is 128000 tokens")
    );

    // Unknown URL.
    let r = send(m.addr, "GET", "/v1/nope", Some(KEY), None).await;
    assert_error(&r, 404, "invalid_request_error", None);
}

#[tokio::test]
async fn drop_connection_behaviors() {
    let m = MockUpstream::start().await.unwrap();
    // drop_after: some content, then an abrupt close without [DONE] or the last chunk.
    let body = chat_body(
        json!({"stream": true, "stream_options": {"include_usage": true}, "mock": {"drop_after": 3}}),
    );
    let r = post(&m, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "stream must end abruptly");
    assert!(!r.text().contains("[DONE]"));
    let (events, done) = r.json_events();
    assert!(!done);
    assert_eq!(events.len(), 1 + 3);
    assert!(
        events
            .iter()
            .all(|e| e["choices"][0]["finish_reason"].is_null())
    );

    // DropConnection: no response bytes at all.
    m.set_behavior(Behavior::DropConnection);
    let r = post(&m, "/v1/chat/completions", &chat_body(json!({}))).await;
    assert_eq!(r.status, 0);
    assert_eq!(r.raw_len, 0);
    m.set_behavior(Behavior::Normal);
    assert_eq!(
        post(&m, "/v1/chat/completions", &chat_body(json!({})))
            .await
            .status,
        200
    );
    assert_eq!(m.requests(), 3);
}

#[tokio::test]
async fn legacy_completions() {
    let m = MockUpstream::start().await.unwrap();
    let body = json!({"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test"});
    let r = post(&m, "/v1/completions", &body).await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-mock"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "gpt-3.5-turbo-instruct");
    assert_eq!(
        v["choices"],
        json!([{"text":default_text(48),"index":0,"logprobs":null,"finish_reason":"stop"}])
    );
    // 18 bytes → 5
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens":5,"completion_tokens":12,"total_tokens":17})
    );
    assert_eq!(expected_usage(&body, m.defaults()), (5, 12));

    let body = json!({"model":"m","prompt":["ab","cd"],"stream":true,"stream_options":{"include_usage":true},"mock":{"chunks":2}});
    let r = post(&m, "/v1/completions", &body).await;
    let (events, done) = r.json_events();
    assert!(done);
    // 2 pieces * 2 prompts, 2 finishes, usage.
    assert_eq!(events.len(), 4 + 2 + 1);
    assert_order(
        &r.events()[0],
        &["id", "object", "created", "choices", "model", "usage"],
    );
    assert_eq!(events[0]["object"], "text_completion");
    assert_eq!(
        events[0]["choices"],
        json!([{"text":"The qu","index":0,"logprobs":null,"finish_reason":null}])
    );
    assert_eq!(events[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[5]["choices"][0]["index"], 1);
    assert_eq!(events[6]["choices"], json!([]));
    assert_eq!(
        events[6]["usage"],
        json!({"prompt_tokens":1,"completion_tokens":6,"total_tokens":7})
    );
    assert_eq!(expected_usage(&body, m.defaults()), (1, 6));
}

fn b64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let vals: Vec<u32> = s
        .bytes()
        .filter(|b| *b != b'=')
        .map(|b| A.iter().position(|a| *a == b).unwrap() as u32)
        .collect();
    for c in vals.chunks(4) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, v)| n | (v << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..c.len()]);
    }
    out
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let m = MockUpstream::start().await.unwrap();
    let body = json!({"model":"text-embedding-3-small","input":["hello world","second input!"]});
    let r = post(&m, "/v1/embeddings", &body).await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    // 11 + 12 bytes → 6
    assert_eq!(v["usage"], json!({"prompt_tokens":6,"total_tokens":6}));
    assert_eq!(expected_usage(&body, m.defaults()), (6, 0));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let e = d["embedding"].as_array().unwrap();
        assert_eq!(e.len(), 8);
        let norm: f64 = e.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    // Deterministic.
    assert_eq!(
        post(&m, "/v1/embeddings", &body).await.json()["data"],
        v["data"]
    );

    let body = json!({"model":"e","input":"hello world","dimensions":4,"encoding_format":"base64"});
    let v = post(&m, "/v1/embeddings", &body).await.json();
    let b64 = v["data"][0]["embedding"].as_str().unwrap();
    let bytes = b64_decode(b64);
    assert_eq!(bytes.len(), 16);
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let body = json!({"model":"e","input":"hello world","dimensions":4});
    let v = post(&m, "/v1/embeddings", &body).await.json();
    let expected: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, expected);
}

#[tokio::test]
async fn models_endpoints() {
    let m = MockUpstream::start().await.unwrap();
    let v = send(m.addr, "GET", "/v1/models", Some(KEY), None)
        .await
        .json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4o-mini") && ids.contains(&"text-embedding-3-small"));
    assert_eq!(
        v["data"][0],
        json!({"id":"gpt-4o-mini","object":"model","created":1700000000,"owned_by":"mock"})
    );
    let v = send(m.addr, "GET", "/v1/models/my-model", Some(KEY), None)
        .await
        .json();
    assert_eq!(
        v,
        json!({"id":"my-model","object":"model","created":1700000000,"owned_by":"mock"})
    );
}

#[tokio::test]
async fn big_stream_completes() {
    let m = MockUpstream::start().await.unwrap();
    let body = chat_body(json!({"stream": true, "mock": {"chunks": 20000, "chunk_size": 200}}));
    let r = post(&m, "/v1/chat/completions", &body).await;
    assert!(r.complete);
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    let events = r.events();
    assert_eq!(events.len(), 1 + 20000 + 1 + 1);
    let piece: Value = serde_json::from_str(&events[20000]).unwrap();
    assert_eq!(
        piece["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap()
            .len(),
        200
    );
}

#[tokio::test]
async fn chunk_delay_is_applied() {
    let m = MockUpstream::start_on(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Defaults {
            chunks: 3,
            chunk_delay_ms: 15,
            chunk_size: 4,
        },
    )
    .await
    .unwrap();
    let t = Instant::now();
    let (events, done) = post(
        &m,
        "/v1/chat/completions",
        &chat_body(json!({"stream": true})),
    )
    .await
    .json_events();
    assert!(done);
    assert_eq!(events.len(), 5);
    assert!(t.elapsed() >= Duration::from_millis(60));
    // Non-stream length follows the configured defaults.
    let v = post(&m, "/v1/chat/completions", &chat_body(json!({})))
        .await
        .json();
    assert_eq!(v["choices"][0]["message"]["content"], default_text(12));
}

#[tokio::test]
async fn shutdown_closes_idle_connections() {
    let m = MockUpstream::start().await.unwrap();
    let addr = m.addr;
    // A keep-alive connection, idle after one request.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 0);
    m.shutdown();
    let eof = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "idle connection was not closed");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn other_openai_endpoints() {
    let m = MockUpstream::start().await.unwrap();
    let r = post(
        &m,
        "/v1/images/generations",
        &json!({"model": "dall-e-3", "n": 2}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let r = post(
        &m,
        "/v1/audio/speech",
        &json!({"model": "tts-1", "input": "hi"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("audio/mpeg"));
    assert_eq!(r.body, crate::SPEECH_BYTES.to_vec());
    let r = post(&m, "/v1/audio/transcriptions", &json!({})).await;
    assert_eq!(r.json()["text"], "hello world");
    assert_eq!(m.last_request().unwrap().path, "/v1/audio/transcriptions");
    let r = post(
        &m,
        "/v1/moderations",
        &json!({"model": "omni-moderation-latest", "input": "x"}),
    )
    .await;
    assert_eq!(r.json()["results"][0]["flagged"], false);
    let r = post(
        &m,
        "/v1/rerank",
        &json!({"model": "rerank-1", "query": "a b", "documents": ["c d e", {"text": "f"}]}),
    )
    .await;
    assert_eq!(r.json()["usage"]["total_tokens"], 6);
    assert_eq!(r.json()["results"][0]["relevance_score"], 0.9);
    m.shutdown();
}
