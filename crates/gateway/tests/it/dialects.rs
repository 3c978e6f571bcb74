//! The Anthropic and Gemini endpoints, and translation between all three
//! dialects: each client dialect against each channel kind, streamed and
//! not, billed from the usage the upstream reported.

use futures_util::StreamExt;
use mock_upstream::Endpoint as MockEndpoint;
use serde_json::{Value, json};
use test_support::{Backend, TestApp};

const MODEL: &str = "test-model";

/// An app whose only channel for MODEL is the mock, speaking `kind`.
async fn app_with(kind: &str) -> (TestApp, i64, String) {
    let t = TestApp::spawn(Backend::Sqlite).await;
    let base = match kind {
        "gemini" => t.mock.base_url().replace("/v1", "/v1beta"),
        _ => t.mock.base_url(),
    };
    t.admin(
        "POST",
        "/api/channels",
        Some(json!({"name": kind, "kind": kind, "base_url": base, "api_keys": ["sk-up"], "models": [MODEL]})),
    )
    .await;
    t.admin(
        "PUT",
        &format!("/api/prices/{MODEL}"),
        Some(json!({"input": "3", "output": "15", "cached_input": "0.3"})),
    )
    .await;
    let (uid, key) = t.user_with_key("dia", "10").await;
    (t, uid, key)
}

fn cost(prompt: u64, completion: u64, cached: u64) -> i64 {
    let p = billing::Price::parse("3", "15", "0.3").unwrap();
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

/// Named SSE events (name, data) of a body.
fn sse(body: &str) -> Vec<(String, String)> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_string();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or("")
                .to_string();
            (name, data)
        })
        .collect()
}

async fn post(
    t: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    let mut r = t.http.post(t.url(path)).json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn anthropic_body(stream: bool) -> Value {
    json!({"model": MODEL, "max_tokens": 200, "stream": stream,
           "system": "Be brief.",
           "messages": [{"role": "user", "content": "Say hello in French."}]})
}

#[tokio::test]
async fn anthropic_client_on_anthropic_channel_is_relayed_natively() {
    let (t, uid, key) = app_with("anthropic").await;
    let hdr = [
        ("x-api-key", key.as_str()),
        ("anthropic-version", "2023-06-01"),
    ];
    let mut body = anthropic_body(false);
    body["mock"] = json!({"cached_tokens": 4});
    let r = post(&t, "/v1/messages", &hdr, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "text");
    let sent = t.mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(
        sent.header("x-api-key"),
        Some("sk-up"),
        "the channel's key goes upstream, never the user's"
    );
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        sent.json().unwrap(),
        body,
        "a native request is forwarded untouched"
    );
    let (p, c) = mock_upstream::expected_usage_for(
        MockEndpoint::AnthropicMessages,
        &body,
        t.mock.defaults(),
    );
    // Anthropic's input_tokens excludes cache reads; billing counts them at the cached price
    assert_eq!(v["usage"]["cache_read_input_tokens"], 4);
    let log = t.last_log(uid).await;
    assert_eq!(
        (
            log.prompt_tokens as u64,
            log.completion_tokens as u64,
            log.cached_tokens
        ),
        (p, c, 4)
    );
    assert_eq!(log.cost, cost(p, c, 4));

    // streamed: the upstream's events reach the client in order
    let body = anthropic_body(true);
    let r = post(&t, "/v1/messages", &hdr, &body).await;
    assert_eq!(r.status(), 200);
    let events = sse(&r.text().await.unwrap());
    let names: Vec<&str> = events
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "ping")
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta") && names.contains(&"message_delta"));
    let (p, c) = mock_upstream::expected_usage_for(
        MockEndpoint::AnthropicMessages,
        &body,
        t.mock.defaults(),
    );
    let log = t.last_log(uid).await;
    assert!(log.is_stream && !log.estimated);
    assert_eq!(
        (log.prompt_tokens as u64, log.completion_tokens as u64),
        (p, c)
    );
    assert_eq!(log.cost, cost(p, c, 0));
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn anthropic_errors_have_anthropic_shape() {
    let (t, _, key) = app_with("anthropic").await;
    let r = post(
        &t,
        "/v1/messages",
        &[
            ("x-api-key", "sk-wrong"),
            ("anthropic-version", "2023-06-01"),
        ],
        &anthropic_body(false),
    )
    .await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    let mut no_max = anthropic_body(false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let r = post(
        &t,
        "/v1/messages",
        &[("x-api-key", &key), ("anthropic-version", "2023-06-01")],
        &no_max,
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    // an upstream refusal of the request is passed on as the upstream wrote it
    let mut bad = anthropic_body(false);
    bad["mock"] = json!({"status": 400});
    let r = post(
        &t,
        "/v1/messages",
        &[("x-api-key", &key), ("anthropic-version", "2023-06-01")],
        &bad,
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    t.finish().await;
}

#[tokio::test]
async fn openai_client_on_anthropic_channel_is_translated() {
    let (t, uid, key) = app_with("anthropic").await;
    let body = json!({"model": MODEL, "max_tokens": 100,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]});
    let r = t.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 3
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let sent = t.mock.last_request().unwrap().json().unwrap();
    assert_eq!(sent["system"][0]["text"], "Be brief.");
    assert_eq!(sent["max_tokens"], 100);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(t.last_log(uid).await.cost, cost(prompt, completion, 0));

    // streamed, with tools: OpenAI chunks, tool call index from 0, [DONE] at the end
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let body = json!({"model": MODEL, "stream": true, "tools": tools, "tool_choice": "required",
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let r = t.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let events = sse(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let mut args = String::new();
    let mut usage = None;
    for (_, d) in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(d).unwrap();
        if let Some(tc) = c["choices"][0]["delta"]["tool_calls"].as_array() {
            assert_eq!(tc[0]["index"], 0);
            args.push_str(tc[0]["function"]["arguments"].as_str().unwrap_or(""));
        }
        if c["usage"].is_object() {
            usage = Some(c["usage"].clone());
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap()["location"],
        "Paris"
    );
    let u = usage.expect("the client asked for usage");
    let log = t.last_log(uid).await;
    assert_eq!(
        log.prompt_tokens as u64,
        u["prompt_tokens"].as_u64().unwrap()
    );
    assert!(!log.estimated && log.cost > 0);
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn anthropic_client_on_openai_channel_is_translated() {
    let (t, uid, key) = app_with("openai").await;
    let hdr = [
        ("x-api-key", key.as_str()),
        ("anthropic-version", "2023-06-01"),
    ];
    let r = post(&t, "/v1/messages", &hdr, &anthropic_body(false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["stop_reason"], "end_turn");
    let sent = t.mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    let sent = sent.json().unwrap();
    assert_eq!(sent["messages"][0]["role"], "system");
    let r = post(&t, "/v1/messages", &hdr, &anthropic_body(true)).await;
    assert_eq!(r.status(), 200);
    let events = sse(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["delta"]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(text.len() > 10);
    let log = t.last_log(uid).await;
    assert!(log.is_stream && !log.estimated && log.cost > 0, "{log:?}");
    t.assert_ledger_ok().await;
    t.finish().await;
}

fn gemini_body() -> Value {
    json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
           "contents": [{"role": "user", "parts": [{"text": "Say hello in Japanese."}]}],
           "generationConfig": {"maxOutputTokens": 200}})
}

#[tokio::test]
async fn gemini_client_on_gemini_channel_is_relayed_natively() {
    let (t, uid, key) = app_with("gemini").await;
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let r = post(&t, &path, &[("x-goog-api-key", &key)], &gemini_body()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());
    let sent = t.mock.last_request().unwrap();
    assert_eq!(sent.path, format!("/v1beta/models/{MODEL}:generateContent"));
    assert_eq!(sent.header("x-goog-api-key"), Some("sk-up"));
    let (p, c) = mock_upstream::expected_usage_for(
        MockEndpoint::GeminiGenerate,
        &gemini_body(),
        t.mock.defaults(),
    );
    let log = t.last_log(uid).await;
    assert_eq!(
        (log.prompt_tokens as u64, log.completion_tokens as u64),
        (p, c)
    );
    // streamed, with the key in the query as the Gemini SDKs may send it
    let path = format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse&key={key}");
    let r = post(&t, &path, &[], &gemini_body()).await;
    assert_eq!(r.status(), 200);
    let events = sse(&r.text().await.unwrap());
    assert!(events.len() >= 2);
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(
        !t.mock
            .last_request()
            .unwrap()
            .query
            .unwrap_or_default()
            .contains(&key),
        "the user's key never goes upstream"
    );
    let log = t.last_log(uid).await;
    assert!(log.is_stream && !log.estimated);
    assert_eq!(
        (log.prompt_tokens as u64, log.completion_tokens as u64),
        (p, c)
    );
    // errors in Gemini's shape
    let r = post(
        &t,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &[("x-goog-api-key", "wrong")],
        &gemini_body(),
    )
    .await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 401);
    assert!(v["error"]["status"].is_string());
    let r = t
        .http
        .get(t.url("/v1beta/models"))
        .header("x-goog-api-key", &key)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["models"][0]["name"], format!("models/{MODEL}"));
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn gemini_and_openai_translate_both_ways() {
    // a Gemini client on an OpenAI channel
    let (t, uid, key) = app_with("openai").await;
    let r = post(
        &t,
        &format!("/v1beta/models/{MODEL}:generateContent"),
        &[("x-goog-api-key", &key)],
        &gemini_body(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .len()
            > 3
    );
    assert!(v["usageMetadata"]["promptTokenCount"].as_u64().unwrap() > 0);
    let r = post(
        &t,
        &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
        &[("x-goog-api-key", &key)],
        &gemini_body(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let mut raw = Vec::new();
    while let Some(c) = s.next().await {
        raw.extend_from_slice(&c.unwrap());
    }
    let events = sse(&String::from_utf8(raw).unwrap());
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert!(
        last["usageMetadata"]["totalTokenCount"].as_u64().unwrap() > 0,
        "{last}"
    );
    let log = t.last_log(uid).await;
    assert!(log.is_stream && !log.estimated && log.cost > 0);
    t.finish().await;

    // an OpenAI client on a Gemini channel
    let (t, uid, key) = app_with("gemini").await;
    let body = json!({"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    let r = t.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let sent = t.mock.last_request().unwrap();
    assert!(sent.path.ends_with(":generateContent"));
    assert_eq!(
        sent.json().unwrap()["systemInstruction"]["parts"][0]["text"],
        "Be brief."
    );
    let mut body = body;
    body["stream"] = json!(true);
    let r = t.chat(&key, &body).await;
    let events = sse(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(
        events.iter().all(|(_, d)| !d.contains("\"choices\":[]")),
        "no usage chunk unless asked"
    );
    let log = t.last_log(uid).await;
    assert!(log.is_stream && !log.estimated && log.cost > 0, "{log:?}");
    t.assert_ledger_ok().await;
    t.finish().await;
}

#[tokio::test]
async fn responses_api_is_served_through_chat_channels() {
    for kind in ["openai", "anthropic"] {
        let (t, uid, key) = app_with(kind).await;
        let body = json!({"model": MODEL, "instructions": "Be brief.", "input": "Say hi", "max_output_tokens": 100});
        let r = t
            .http
            .post(t.url("/v1/responses"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{kind}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        let text = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "message")
            .map(|i| i["content"][0]["text"].as_str().unwrap().to_string())
            .unwrap();
        assert!(text.len() > 3);
        let input = v["usage"]["input_tokens"].as_u64().unwrap();
        let output = v["usage"]["output_tokens"].as_u64().unwrap();
        let log = t.last_log(uid).await;
        assert_eq!(log.endpoint, "responses");
        assert_eq!(
            (log.prompt_tokens as u64, log.completion_tokens as u64),
            (input, output)
        );
        assert_eq!(log.cost, cost(input, output, 0));

        // streamed: typed events, ending with response.completed carrying usage
        let mut body = body;
        body["stream"] = json!(true);
        let r = t
            .http
            .post(t.url("/v1/responses"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let events = sse(&r.text().await.unwrap());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names.first(),
            Some(&"response.created"),
            "{kind}: {names:?}"
        );
        assert_eq!(names.last(), Some(&"response.completed"));
        assert!(names.contains(&"response.output_text.delta"));
        assert!(
            !events.iter().any(|(_, d)| d == "[DONE]"),
            "the Responses stream has no [DONE]"
        );
        let done: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
        assert!(done["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0);
        let log = t.last_log(uid).await;
        assert!(log.is_stream && !log.estimated && log.cost > 0, "{log:?}");
        // a built-in tool the chat channel cannot run is refused by name
        let r = t
            .http
            .post(t.url("/v1/responses"))
            .bearer_auth(&key)
            .json(&json!({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("web_search"),
            "{v}"
        );
        t.assert_ledger_ok().await;
        t.finish().await;
    }
}

#[tokio::test]
async fn responses_api_is_relayed_natively_to_channels_that_speak_it() {
    let t = TestApp::spawn(Backend::Sqlite).await;
    t.admin(
        "POST",
        "/api/channels",
        Some(
            json!({"name": "native", "base_url": t.mock.base_url(), "api_keys": ["sk-up"],
                    "models": [MODEL], "native_responses": true}),
        ),
    )
    .await;
    t.admin(
        "PUT",
        &format!("/api/prices/{MODEL}"),
        Some(json!({"input": "3", "output": "15", "cached_input": "0.3"})),
    )
    .await;
    let (uid, key) = t.user_with_key("nat", "10").await;
    let body =
        json!({"model": MODEL, "instructions": "Be brief.", "input": "Say hi", "store": false});
    let r = t
        .http
        .post(t.url("/v1/responses"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        mock_upstream::RESPONSES_TEXT
    );
    let sent = t.mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(
        sent.json().unwrap(),
        body,
        "a native request is forwarded untouched"
    );
    let input = mock_upstream::responses_input_tokens(&body);
    let output = (mock_upstream::RESPONSES_TEXT.len() as u64).div_ceil(4);
    let log = t.last_log(uid).await;
    assert_eq!(
        (log.prompt_tokens as u64, log.completion_tokens as u64),
        (input, output)
    );
    assert_eq!(log.cost, cost(input, output, 0));
    // streamed: the upstream's typed events reach the client; usage from response.completed
    let mut body = body;
    body["stream"] = json!(true);
    let r = t
        .http
        .post(t.url("/v1/responses"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = sse(&r.text().await.unwrap());
    assert_eq!(events.first().unwrap().0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");
    let log = t.last_log(uid).await;
    assert!(log.is_stream && !log.estimated);
    assert_eq!(
        (log.prompt_tokens as u64, log.completion_tokens as u64),
        (input, output)
    );
    t.assert_ledger_ok().await;
    t.finish().await;
}
