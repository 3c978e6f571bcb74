//! Provider dialects: one folder per provider, each translating between
//! the gateway's hub format (OpenAI Chat Completions) and that provider's
//! wire format, requests, answers and streams. Pure functions over JSON: no
//! I/O. Adding a provider is a folder here, an `Api` arm in `formats.rs`,
//! a channel kind, and the dialect tests and SDK matrix run against it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

pub mod anthropic;
pub mod gemini;
pub mod responses;

/// Why a translation failed.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// A feature the target format cannot express; the message names it.
    #[error("{0}")]
    Unsupported(String),
    /// Malformed input; the message says where.
    #[error("{0}")]
    Invalid(String),
}

// ---- helpers shared by the dialects -------------------------------------

pub(crate) fn as_object<'a>(
    v: &'a Value,
    what: &str,
) -> Result<&'a Map<String, Value>, TranslateError> {
    v.as_object()
        .ok_or_else(|| invalid(format!("{what} must be a JSON object")))
}

/// Text of a chat message `content` (a string or text parts).
pub(crate) fn chat_content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Reasoning text of a chat message or delta (`reasoning_content`, or the
/// `reasoning` some hosts use).
pub(crate) fn chat_reasoning(m: &Map<String, Value>) -> Option<&str> {
    str_field(m, "reasoning_content")
        .or_else(|| str_field(m, "reasoning"))
        .filter(|s| !s.is_empty())
}

/// The message of an error object (`{"message": …}`), or its JSON.
pub(crate) fn error_message(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        Value::Object(m) => match str_field(m, "message") {
            Some(s) => s.to_owned(),
            None => err.to_string(),
        },
        _ => err.to_string(),
    }
}

/// The field, unless absent or `null`.
pub(crate) fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

pub(crate) fn invalid(msg: impl Into<String>) -> TranslateError {
    TranslateError::Invalid(msg.into())
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

pub(crate) fn type_of(m: &Map<String, Value>) -> &str {
    str_field(m, "type").unwrap_or("")
}
