//! OpenAI's other endpoints, answered minimally: image generation, speech,
//! transcriptions, moderations and rerank.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::errors::ApiError;
use crate::server::json_response;
use crate::wire::unix_now;

/// The bytes `/v1/audio/speech` answers with (100 of them, `audio/mpeg`).
pub const SPEECH_BYTES: [u8; 100] = {
    let mut b = [0u8; 100];
    let mut i = 0;
    while i < 100 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

fn object(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(ApiError::invalid(
            "We could not parse the JSON body of your request.",
        )),
    }
}

fn model(v: &Value) -> Result<String, ApiError> {
    match v.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => Ok(m.to_string()),
        _ => Err(ApiError::invalid("you must provide a model parameter").param("model")),
    }
}

fn ok_json(v: &Value) -> Response {
    json_response(StatusCode::OK, v.to_string())
}

/// `POST /v1/images/generations`: `n` placeholder URLs.
pub(crate) fn images(body: &[u8]) -> Response {
    let v = match object(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = model(&v) {
        return e.into_response();
    }
    let n = v.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 10);
    let data: Vec<Value> = (0..n)
        .map(|_| json!({"url": "https://example.invalid/img.png"}))
        .collect();
    ok_json(&json!({"created": unix_now(), "data": data}))
}

/// `POST /v1/audio/speech`: 100 bytes of "audio".
pub(crate) fn speech(body: &[u8]) -> Response {
    let v = match object(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = model(&v) {
        return e.into_response();
    }
    if v.get("input").and_then(Value::as_str).is_none() {
        return ApiError::invalid("Missing required parameter: 'input'.")
            .param("input")
            .into_response();
    }
    let mut resp = Response::new(Body::from(SPEECH_BYTES.to_vec()));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
    resp
}

/// `POST /v1/audio/transcriptions`: the body is not parsed.
pub(crate) fn transcriptions() -> Response {
    json_response(StatusCode::OK, r#"{"text":"hello world"}"#)
}

/// `POST /v1/moderations`: nothing is flagged.
pub(crate) fn moderations(body: &[u8]) -> Response {
    let v = match object(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("omni-moderation-latest");
    ok_json(&json!({
        "id": "modr-mock", "model": model,
        "results": [{"flagged": false, "categories": {}, "category_scores": {}}],
    }))
}

/// `POST /v1/rerank`: one result; `usage.total_tokens` is the number of
/// whitespace-separated words of `query` and `documents` (strings, or
/// objects with `text`).
pub(crate) fn rerank(body: &[u8]) -> Response {
    let v = match object(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = model(&v) {
        return e.into_response();
    }
    let words = |s: &str| s.split_whitespace().count() as u64;
    let mut n = v.get("query").and_then(Value::as_str).map_or(0, words);
    if let Some(Value::Array(docs)) = v.get("documents") {
        for d in docs {
            let text = d
                .as_str()
                .or_else(|| d.get("text").and_then(Value::as_str))
                .unwrap_or("");
            n += words(text);
        }
    }
    ok_json(&json!({
        "results": [{"index": 0, "relevance_score": 0.9}],
        "usage": {"total_tokens": n},
    }))
}

/// Input tokens of a Responses request, by the mock's usual rule: text
/// bytes / 4 rounded up, plus 3 per input item, at least 1.
pub fn responses_input_tokens(v: &Value) -> u64 {
    fn bytes(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.len() as u64,
            Value::Array(a) => a.iter().map(bytes).sum(),
            Value::Object(o) => ["text", "content"]
                .iter()
                .filter_map(|k| o.get(*k))
                .map(bytes)
                .sum(),
            _ => 0,
        }
    }
    let input = v.get("input").unwrap_or(&Value::Null);
    let items = input.as_array().map(|a| a.len() as u64).unwrap_or(1);
    let instr = v.get("instructions").map(bytes).unwrap_or(0);
    ((bytes(input) + instr).div_ceil(4) + 3 * items).max(1)
}

/// The mock's Responses reply text and its token count.
pub const RESPONSES_TEXT: &str = "Hello from the mock Responses API.";

/// `POST /v1/responses`: a completed response, or its typed event stream
/// (`response.created`, text deltas, `response.completed` with usage).
pub(crate) fn responses(body: &[u8]) -> Response {
    let v = match object(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let model = match model(&v) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let input = responses_input_tokens(&v);
    let output = (RESPONSES_TEXT.len() as u64).div_ceil(4);
    let message = json!({"type": "message", "id": "msg_mock", "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": RESPONSES_TEXT, "annotations": []}]});
    let done = json!({"id": "resp_mock", "object": "response", "created_at": unix_now(),
        "status": "completed", "model": model, "output": [message],
        "usage": {"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": input + output}});
    if v.get("stream").and_then(Value::as_bool) != Some(true) {
        return ok_json(&done);
    }
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut created = done.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    events.push(("response.created".into(), json!({"response": created})));
    for piece in RESPONSES_TEXT.split_inclusive(' ') {
        events.push((
            "response.output_text.delta".into(),
            json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": piece}),
        ));
    }
    events.push(("response.completed".into(), json!({"response": done})));
    let mut out = String::new();
    for (seq, (name, mut data)) in events.into_iter().enumerate() {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}
