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
