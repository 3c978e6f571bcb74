//! OpenAI Chat Completions (the gateway's hub format) ⇄ Gemini
//! `generateContent`, both ways, streams included.
//!
//! (a) An OpenAI-SDK client served by a Gemini channel:
//!     [`chat_to_gemini_request`], [`gemini_to_chat_response`],
//!     [`GeminiToChatStream`].
//! (b) A Gemini-SDK client (`:generateContent`, `:streamGenerateContent`)
//!     served by an OpenAI-compatible channel: [`gemini_to_chat_request`],
//!     [`chat_to_gemini_response`], [`ChatToGeminiStream`].
//!
//! Everything is pure over `serde_json::Value`; the caller frames SSE.
//! Gemini field names are read in lowerCamelCase or snake_case (the REST API
//! accepts both) and always written in lowerCamelCase.
//!
//! Dropped on purpose, having no equivalent on the other side:
//! - chat → Gemini: `model` (it goes in the URL), `user`, `stream`,
//!   `stream_options`, `parallel_tool_calls`, `store`, `metadata`,
//!   `service_tier`, a tool's `strict`, an assistant's `reasoning_content`;
//! - Gemini → chat: `safetySettings`, `topK`, `thinkingConfig.includeThoughts`,
//!   `thought` parts of earlier turns and thought signatures.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::{Map, Value, json};

pub use super::TranslateError;
use super::now;

type Result<T> = std::result::Result<T, TranslateError>;

const IMAGE_URL_UNSUPPORTED: &str =
    "image URLs for Gemini channels: send the image inline as a data: URL";

/// Schema keys Gemini rejects in `responseSchema`.
const RESPONSE_SCHEMA_DROP: &[&str] = &["additionalProperties", "$schema", "title"];
/// Schema keys Gemini rejects in function declaration parameters.
const TOOL_SCHEMA_DROP: &[&str] = &[
    "additionalProperties",
    "$schema",
    "default",
    "exclusiveMinimum",
    "exclusiveMaximum",
];

fn invalid(m: impl Into<String>) -> TranslateError {
    TranslateError::Invalid(m.into())
}

fn unsupported(m: impl Into<String>) -> TranslateError {
    TranslateError::Unsupported(m.into())
}

/// `v[key]` with `key` in lowerCamelCase, or else its snake_case spelling.
fn g<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(x) = v.get(key) {
        return Some(x);
    }
    if !key.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut snake = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    v.get(snake.as_str())
}

fn non_null(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    g(v, key).and_then(Value::as_str)
}

fn count(v: &Value, key: &str) -> u64 {
    g(v, key).and_then(Value::as_u64).unwrap_or(0)
}

fn random_hex() -> String {
    format!(
        "{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// The message of an `{"error": …}` body, or the body itself.
fn error_message(err: &Value) -> String {
    err.get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| err.to_string())
}

/// Copies a JSON schema without the keys in `drop`, at every level. Property
/// names (under `properties`, `$defs`…) are not keys of a schema and are kept;
/// `enum`/`const`/`example(s)` values are copied verbatim.
fn clean_schema(v: &Value, drop: &[&str]) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                if drop.contains(&k.as_str()) {
                    continue;
                }
                let val = match (k.as_str(), val) {
                    (
                        "properties" | "patternProperties" | "$defs" | "definitions",
                        Value::Object(props),
                    ) => Value::Object(
                        props
                            .iter()
                            .map(|(name, s)| (name.clone(), clean_schema(s, drop)))
                            .collect(),
                    ),
                    ("enum" | "const" | "example" | "examples" | "required", _) => val.clone(),
                    _ => clean_schema(val, drop),
                };
                out.insert(k.clone(), val);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|s| clean_schema(s, drop)).collect()),
        other => other.clone(),
    }
}

/// Copies a Gemini (OpenAPI-style) schema with its `type` names lowercased
/// (`"OBJECT"` → `"object"`), as JSON Schema wants them.
fn lower_types(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let val = match (k.as_str(), val) {
                    ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                    ("type", Value::Array(ts)) => Value::Array(
                        ts.iter()
                            .map(|t| match t {
                                Value::String(t) => Value::String(t.to_ascii_lowercase()),
                                other => other.clone(),
                            })
                            .collect(),
                    ),
                    (
                        "properties" | "patternProperties" | "$defs" | "definitions",
                        Value::Object(props),
                    ) => Value::Object(
                        props
                            .iter()
                            .map(|(name, s)| (name.clone(), lower_types(s)))
                            .collect(),
                    ),
                    ("enum" | "const" | "example" | "examples" | "required", _) => val.clone(),
                    _ => lower_types(val),
                };
                out.insert(k.clone(), val);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(lower_types).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------
// Usage and errors
// ---------------------------------------------------------------------------

/// usageMetadata → gateway usage: prompt = promptTokenCount (includes
/// cachedContentTokenCount) + toolUsePromptTokenCount, cached =
/// cachedContentTokenCount, completion = candidatesTokenCount +
/// thoughtsTokenCount. `None` when `usage_metadata` holds no count.
pub fn gemini_usage(usage_metadata: &Value) -> Option<billing::Usage> {
    const KEYS: [&str; 5] = [
        "promptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "toolUsePromptTokenCount",
        "totalTokenCount",
    ];
    if !KEYS
        .iter()
        .any(|k| g(usage_metadata, k).is_some_and(Value::is_u64))
    {
        return None;
    }
    Some(billing::Usage {
        cache_write: 0,
        prompt: count(usage_metadata, "promptTokenCount")
            + count(usage_metadata, "toolUsePromptTokenCount"),
        completion: count(usage_metadata, "candidatesTokenCount")
            + count(usage_metadata, "thoughtsTokenCount"),
        cached: count(usage_metadata, "cachedContentTokenCount"),
    })
}

/// usageMetadata → the Chat Completions `usage` object.
fn chat_usage_from_gemini(meta: &Value) -> Option<Value> {
    let u = gemini_usage(meta)?;
    Some(json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
        "completion_tokens_details": {"reasoning_tokens": count(meta, "thoughtsTokenCount")},
    }))
}

/// A Chat Completions `usage` object → gateway usage.
fn billing_from_chat_usage(u: &Value) -> Option<billing::Usage> {
    let prompt = u.get("prompt_tokens").and_then(Value::as_u64);
    let completion = u.get("completion_tokens").and_then(Value::as_u64);
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    Some(billing::Usage {
        cache_write: 0,
        prompt: prompt.unwrap_or(0),
        completion: completion.unwrap_or(0),
        cached: u
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// A Chat Completions `usage` object → Gemini `usageMetadata`.
fn usage_metadata_from_chat(u: &Value) -> Option<Value> {
    let b = billing_from_chat_usage(u)?;
    let total = u
        .get("total_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(b.prompt + b.completion);
    let mut m = Map::new();
    m.insert("promptTokenCount".into(), b.prompt.into());
    m.insert("candidatesTokenCount".into(), b.completion.into());
    m.insert("totalTokenCount".into(), total.into());
    if b.cached > 0 {
        m.insert("cachedContentTokenCount".into(), b.cached.into());
    }
    Some(Value::Object(m))
}

/// Gemini error body `{"error":{"code":S,"message":M,"status":STATUS}}` for
/// an HTTP status.
pub fn gemini_error_body(status: u16, message: &str) -> Value {
    let name = match status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        s if s < 500 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status, "message": message, "status": name}})
}

// ---------------------------------------------------------------------------
// Finish reasons
// ---------------------------------------------------------------------------

/// Gemini finishReason → chat finish_reason.
fn chat_finish(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// chat finish_reason → Gemini finishReason.
fn gemini_finish(reason: Option<&str>) -> &'static str {
    match reason {
        None | Some("stop" | "tool_calls" | "function_call") => "STOP",
        Some("length") => "MAX_TOKENS",
        Some("content_filter") => "SAFETY",
        Some(_) => "OTHER",
    }
}

// ---------------------------------------------------------------------------
// (a) OpenAI client → Gemini channel
// ---------------------------------------------------------------------------

/// The texts of a message's content: a string, or `text` (and `refusal`)
/// parts. Empty texts are skipped.
fn content_texts(content: Option<&Value>, i: usize) -> Result<Vec<String>> {
    match non_null(content) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(if s.is_empty() {
            Vec::new()
        } else {
            vec![s.clone()]
        }),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for p in parts {
                let text = match p.get("type").and_then(Value::as_str) {
                    Some("text") => p.get("text").and_then(Value::as_str),
                    Some("refusal") => p.get("refusal").and_then(Value::as_str),
                    _ => None,
                }
                .ok_or_else(|| {
                    invalid(format!("messages[{i}]: only text parts are allowed here"))
                })?;
                if !text.is_empty() {
                    out.push(text.to_owned());
                }
            }
            Ok(out)
        }
        Some(_) => Err(invalid(format!(
            "messages[{i}].content must be a string or an array of parts"
        ))),
    }
}

/// Splits `data:MIME;base64,DATA` into (MIME, DATA).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    let mut segments = header.split(';');
    let mime = segments.next().unwrap_or("");
    if !segments.any(|s| s.eq_ignore_ascii_case("base64")) {
        return None;
    }
    let mime = if mime.is_empty() {
        "application/octet-stream"
    } else {
        mime
    };
    Some((mime, data))
}

fn inline_data(mime: &str, data: &str) -> Value {
    json!({"inlineData": {"mimeType": mime, "data": data}})
}

fn user_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>> {
    let parts = match non_null(content) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![json!({"text": s})]),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(invalid(format!(
                "messages[{i}].content must be a string or an array of parts"
            )));
        }
    };
    let mut out = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "text" => {
                let text = p.get("text").and_then(Value::as_str).ok_or_else(|| {
                    invalid(format!("messages[{i}].content[{j}].text must be a string"))
                })?;
                if !text.is_empty() {
                    out.push(json!({"text": text}));
                }
            }
            "image_url" => {
                let url = p
                    .get("image_url")
                    .and_then(|u| u.get("url").or(Some(u)))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(format!(
                            "messages[{i}].content[{j}].image_url.url must be a string"
                        ))
                    })?;
                if url.starts_with("http://") || url.starts_with("https://") {
                    return Err(unsupported(IMAGE_URL_UNSUPPORTED));
                }
                let (mime, data) = parse_data_url(url).ok_or_else(|| {
                    invalid(format!(
                        "messages[{i}].content[{j}].image_url.url must be a data:MIME;base64,DATA URL"
                    ))
                })?;
                out.push(inline_data(mime, data));
            }
            "input_audio" => {
                let audio = p.get("input_audio");
                let data = audio
                    .and_then(|a| a.get("data"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(format!(
                            "messages[{i}].content[{j}].input_audio.data must be a string"
                        ))
                    })?;
                let mime = match audio.and_then(|a| a.get("format")).and_then(Value::as_str) {
                    Some("wav") => "audio/wav",
                    Some("mp3") => "audio/mp3",
                    other => {
                        return Err(unsupported(format!(
                            "input_audio format {:?}: only wav and mp3 are supported",
                            other.unwrap_or("")
                        )));
                    }
                };
                out.push(inline_data(mime, data));
            }
            "file" => {
                let file = p.get("file");
                if let Some(url) = file
                    .and_then(|f| f.get("file_data"))
                    .and_then(Value::as_str)
                {
                    let (mime, data) = parse_data_url(url).ok_or_else(|| {
                        invalid(format!(
                            "messages[{i}].content[{j}].file.file_data must be a data:MIME;base64,DATA URL"
                        ))
                    })?;
                    out.push(inline_data(mime, data));
                } else if file.and_then(|f| f.get("file_id")).is_some() {
                    return Err(unsupported(
                        "file_id (uploaded files) for Gemini channels: send the file inline as file_data",
                    ));
                } else {
                    return Err(invalid(format!(
                        "messages[{i}].content[{j}].file needs file_data"
                    )));
                }
            }
            other => {
                return Err(unsupported(format!(
                    "content part type `{other}` for Gemini channels"
                )));
            }
        }
    }
    Ok(out)
}

/// `arguments` (a JSON string) → the args object of a functionCall.
fn parse_args(arguments: Option<&Value>, call_id: &str) -> Result<Value> {
    let raw = match non_null(arguments) {
        None => return Ok(json!({})),
        Some(Value::Object(o)) => return Ok(Value::Object(o.clone())),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(invalid(format!(
                "tool call {call_id}: arguments must be a JSON string"
            )));
        }
    };
    if raw.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(invalid(format!(
            "tool call {call_id}: arguments are not a JSON object"
        ))),
    }
}

fn assistant_parts(m: &Value, i: usize, names: &mut HashMap<String, String>) -> Result<Vec<Value>> {
    let mut parts: Vec<Value> = content_texts(m.get("content"), i)?
        .into_iter()
        .map(|t| json!({"text": t}))
        .collect();
    if let Some(calls) = non_null(m.get("tool_calls")) {
        let calls = calls
            .as_array()
            .ok_or_else(|| invalid(format!("messages[{i}].tool_calls must be an array")))?;
        for (j, c) in calls.iter().enumerate() {
            let id = c.get("id").and_then(Value::as_str).unwrap_or("");
            let f = c.get("function");
            let name = f
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid(format!(
                        "messages[{i}].tool_calls[{j}].function.name must be a string"
                    ))
                })?;
            let args = parse_args(f.and_then(|f| f.get("arguments")), id)?;
            if !id.is_empty() {
                names.insert(id.to_owned(), name.to_owned());
            }
            parts.push(json!({"functionCall": {"name": name, "args": args}}));
        }
    }
    if let Some(f) = non_null(m.get("function_call")) {
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].function_call.name must be a string")))?;
        let args = parse_args(f.get("arguments"), name)?;
        parts.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    Ok(parts)
}

fn tool_result_part(m: &Value, i: usize, names: &HashMap<String, String>) -> Result<Value> {
    let id = m.get("tool_call_id").and_then(Value::as_str);
    let name = id
        .and_then(|id| names.get(id))
        .map(String::as_str)
        .or_else(|| m.get("name").and_then(Value::as_str))
        .ok_or_else(|| {
            invalid(format!(
                "messages[{i}]: tool_call_id {:?} matches no earlier assistant tool call",
                id.unwrap_or("")
            ))
        })?;
    let text = content_texts(m.get("content"), i)?.concat();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"content": text}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// Appends `parts` as a `role` turn, merged into the previous turn when it
/// has the same role; no parts, no turn.
fn push_turn(
    contents: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    parts: Vec<Value>,
) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some((r, p)) if *r == role => p.extend(parts),
        _ => contents.push((role, parts)),
    }
}

fn copy_number(from: &Value, key: &str, to: &mut Map<String, Value>, as_key: &str) -> Result<()> {
    if let Some(v) = non_null(from.get(key)) {
        if !v.is_number() {
            return Err(invalid(format!("`{key}` must be a number")));
        }
        to.insert(as_key.to_owned(), v.clone());
    }
    Ok(())
}

/// Chat Completions request → Gemini `generateContent` body. The model goes
/// in the URL, not the body.
pub fn chat_to_gemini_request(chat: &Value) -> Result<Value> {
    if !chat.is_object() {
        return Err(invalid("the request body must be a JSON object"));
    }
    let messages = chat
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    if chat.get("logprobs").and_then(Value::as_bool) == Some(true)
        || non_null(chat.get("top_logprobs")).is_some()
    {
        return Err(unsupported("logprobs are not available on Gemini channels"));
    }

    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("messages[{i}].role must be a string")))?;
        match role {
            "system" | "developer" => system.extend(content_texts(m.get("content"), i)?),
            "user" => push_turn(&mut contents, "user", user_parts(m.get("content"), i)?),
            "assistant" => push_turn(&mut contents, "model", assistant_parts(m, i, &mut names)?),
            "tool" | "function" => {
                push_turn(&mut contents, "user", vec![tool_result_part(m, i, &names)?]);
            }
            other => {
                return Err(invalid(format!(
                    "messages[{i}].role `{other}` is not supported"
                )));
            }
        }
    }
    if contents.is_empty() {
        return Err(invalid(
            "`messages` must hold at least one user or assistant message with content",
        ));
    }

    let mut out = Map::new();
    out.insert(
        "contents".into(),
        contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect(),
    );
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n")}]}),
        );
    }

    let mut gc = Map::new();
    match non_null(chat.get("max_completion_tokens")) {
        Some(_) => copy_number(chat, "max_completion_tokens", &mut gc, "maxOutputTokens")?,
        None => copy_number(chat, "max_tokens", &mut gc, "maxOutputTokens")?,
    }
    copy_number(chat, "temperature", &mut gc, "temperature")?;
    copy_number(chat, "top_p", &mut gc, "topP")?;
    copy_number(chat, "n", &mut gc, "candidateCount")?;
    copy_number(chat, "seed", &mut gc, "seed")?;
    copy_number(chat, "presence_penalty", &mut gc, "presencePenalty")?;
    copy_number(chat, "frequency_penalty", &mut gc, "frequencyPenalty")?;
    match non_null(chat.get("stop")) {
        None => {}
        Some(Value::String(s)) => {
            gc.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            let stops: Vec<&str> = a.iter().filter_map(Value::as_str).take(5).collect();
            if !stops.is_empty() {
                gc.insert("stopSequences".into(), json!(stops));
            }
        }
        Some(_) => return Err(invalid("`stop` must be a string or an array of strings")),
    }
    if let Some(rf) = non_null(chat.get("response_format")) {
        match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                gc.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                gc.insert("responseMimeType".into(), "application/json".into());
                if let Some(schema) = rf
                    .get("json_schema")
                    .and_then(|j| non_null(j.get("schema")))
                {
                    gc.insert(
                        "responseSchema".into(),
                        clean_schema(schema, RESPONSE_SCHEMA_DROP),
                    );
                }
            }
            other => {
                return Err(invalid(format!(
                    "response_format type {:?} is not supported",
                    other.unwrap_or("")
                )));
            }
        }
    }
    if let Some(effort) = non_null(chat.get("reasoning_effort")) {
        let budget = match effort.as_str() {
            Some("minimal" | "none") => 0,
            Some("low") => 1024,
            Some("medium") => 8192,
            Some("high") => 24576,
            _ => {
                return Err(invalid(format!(
                    "reasoning_effort {effort} is not supported"
                )));
            }
        };
        gc.insert("thinkingConfig".into(), json!({"thinkingBudget": budget}));
    }
    if !gc.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gc));
    }

    let mut decls = Vec::new();
    if let Some(tools) = non_null(chat.get("tools")) {
        let tools = tools
            .as_array()
            .ok_or_else(|| invalid("`tools` must be an array"))?;
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                Some("function") | None => {}
                Some(other) => {
                    return Err(unsupported(format!(
                        "tool type `{other}` for Gemini channels"
                    )));
                }
            }
            let f = t
                .get("function")
                .ok_or_else(|| invalid(format!("tools[{i}].function is missing")))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("tools[{i}].function.name must be a string")))?;
            let mut d = Map::new();
            d.insert("name".into(), name.into());
            if let Some(desc) = f.get("description").and_then(Value::as_str) {
                d.insert("description".into(), desc.into());
            }
            if let Some(p) = non_null(f.get("parameters")) {
                let no_properties = p
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_none_or(Map::is_empty)
                    && p.get("type").is_none_or(|t| t == "object");
                if !no_properties {
                    d.insert("parameters".into(), clean_schema(p, TOOL_SCHEMA_DROP));
                }
            }
            decls.push(Value::Object(d));
        }
    }
    if !decls.is_empty() {
        out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        let config = match non_null(chat.get("tool_choice")) {
            None => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "auto" => json!({"mode": "AUTO"}),
                "none" => json!({"mode": "NONE"}),
                "required" => json!({"mode": "ANY"}),
                other => return Err(invalid(format!("tool_choice `{other}` is not supported"))),
            }),
            Some(obj) => {
                let name = obj
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        unsupported("tool_choice: only auto, none, required or a named function")
                    })?;
                Some(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
            }
        };
        if let Some(c) = config {
            out.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
        }
    }
    Ok(Value::Object(out))
}

/// The parts of a Gemini candidate, sorted out.
#[derive(Default)]
struct CandidateParts {
    text: String,
    has_text: bool,
    reasoning: String,
    /// (name, args)
    calls: Vec<(String, Value)>,
}

fn read_parts(candidate: &Value) -> CandidateParts {
    let mut out = CandidateParts::default();
    let parts = g(candidate, "content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    for p in parts.into_iter().flatten() {
        if let Some(fc) = g(p, "functionCall") {
            let name = fc.get("name").and_then(Value::as_str).unwrap_or("");
            let args = non_null(fc.get("args"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            out.calls.push((name.to_owned(), args));
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                out.reasoning.push_str(t);
            } else {
                out.has_text = true;
                out.text.push_str(t);
            }
        }
    }
    out
}

fn tool_call_json(name: &str, args: &Value) -> Value {
    json!({
        "id": format!("call_{}", random_hex()),
        "type": "function",
        "function": {"name": name, "arguments": args.to_string()},
    })
}

fn block_reason(resp: &Value) -> Option<&str> {
    g(resp, "promptFeedback").and_then(|f| str_of(f, "blockReason"))
}

fn candidate_index(c: &Value, pos: usize) -> u64 {
    c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64)
}

/// Gemini `GenerateContentResponse` → `chat.completion`.
pub fn gemini_to_chat_response(resp: &Value, request_model: &str) -> Result<Value> {
    if let Some(err) = resp.get("error") {
        return Err(invalid(format!("Gemini error: {}", error_message(err))));
    }
    let mut choices = Vec::new();
    let candidates = g(resp, "candidates").and_then(Value::as_array);
    for (pos, c) in candidates.into_iter().flatten().enumerate() {
        let parts = read_parts(c);
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        message.insert(
            "content".into(),
            if parts.has_text {
                Value::String(parts.text)
            } else {
                Value::Null
            },
        );
        if !parts.reasoning.is_empty() {
            message.insert("reasoning_content".into(), Value::String(parts.reasoning));
        }
        if !parts.calls.is_empty() {
            message.insert(
                "tool_calls".into(),
                parts
                    .calls
                    .iter()
                    .map(|(name, args)| tool_call_json(name, args))
                    .collect(),
            );
        }
        let finish = chat_finish(
            str_of(c, "finishReason").unwrap_or("STOP"),
            !parts.calls.is_empty(),
        );
        choices.push(json!({
            "index": candidate_index(c, pos),
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }));
    }
    if choices.is_empty() {
        if block_reason(resp).is_none() {
            return Err(invalid("the Gemini response holds no candidates"));
        }
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": null},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let id = match str_of(resp, "responseId") {
        Some(r) => format!("chatcmpl-{r}"),
        None => format!("chatcmpl-{}", random_hex()),
    };
    let mut out = Map::new();
    out.insert("id".into(), id.into());
    out.insert("object".into(), "chat.completion".into());
    out.insert("created".into(), now().into());
    out.insert("model".into(), request_model.into());
    out.insert("choices".into(), Value::Array(choices));
    if let Some(u) = g(resp, "usageMetadata").and_then(chat_usage_from_gemini) {
        out.insert("usage".into(), u);
    }
    Ok(Value::Object(out))
}

/// Gemini SSE stream → `chat.completion.chunk` objects.
pub struct GeminiToChatStream {
    id: Option<String>,
    model: String,
    created: u64,
    include_usage: bool,
    /// Choices that got their `role` delta.
    started: BTreeSet<u64>,
    /// Tool calls emitted so far, per choice.
    calls: HashMap<u64, usize>,
    /// The latest usageMetadata (its counts are cumulative).
    usage: Option<Value>,
    done: bool,
}

impl GeminiToChatStream {
    pub fn new(request_model: &str, include_usage: bool) -> Self {
        GeminiToChatStream {
            id: None,
            model: request_model.to_owned(),
            created: now(),
            include_usage,
            started: BTreeSet::new(),
            calls: HashMap::new(),
            usage: None,
            done: false,
        }
    }

    fn id(&mut self) -> String {
        self.id
            .get_or_insert_with(|| format!("chatcmpl-{}", random_hex()))
            .clone()
    }

    fn frame(&mut self, choices: Value, usage: Option<Value>) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), self.id().into());
        m.insert("object".into(), "chat.completion.chunk".into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("choices".into(), choices);
        if self.include_usage {
            m.insert("usage".into(), usage.unwrap_or(Value::Null));
        }
        Value::Object(m)
    }

    fn delta(&mut self, index: u64, delta: Value, finish: Option<&str>) -> Value {
        let choice =
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        self.frame(choice, None)
    }

    fn start(&mut self, index: u64, out: &mut Vec<Value>) {
        if self.started.insert(index) {
            out.push(self.delta(index, json!({"role": "assistant", "content": ""}), None));
        }
    }

    /// One upstream SSE `data:` JSON (a GenerateContentResponse chunk).
    /// Returns chat.completion.chunk objects to emit. An `{"error":…}` chunk
    /// is an `Invalid` error.
    pub fn chunk(&mut self, data: &Value) -> Result<Vec<Value>> {
        if let Some(err) = data.get("error") {
            return Err(invalid(format!("Gemini error: {}", error_message(err))));
        }
        if self.id.is_none()
            && let Some(r) = str_of(data, "responseId")
        {
            self.id = Some(format!("chatcmpl-{r}"));
        }
        if let Some(m) = g(data, "usageMetadata").filter(|m| m.is_object()) {
            self.usage = Some(m.clone());
        }
        let mut out = Vec::new();
        let candidates = g(data, "candidates").and_then(Value::as_array);
        let mut any = false;
        for (pos, c) in candidates.into_iter().flatten().enumerate() {
            any = true;
            let index = candidate_index(c, pos);
            self.start(index, &mut out);
            let parts = read_parts(c);
            if !parts.reasoning.is_empty() {
                out.push(self.delta(index, json!({"reasoning_content": parts.reasoning}), None));
            }
            if !parts.text.is_empty() {
                out.push(self.delta(index, json!({"content": parts.text}), None));
            }
            if !parts.calls.is_empty() {
                let first = self.calls.get(&index).copied().unwrap_or(0);
                let calls: Vec<Value> = parts
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(k, (name, args))| {
                        let mut c = tool_call_json(name, args);
                        if let Some(o) = c.as_object_mut() {
                            o.insert("index".into(), (first + k).into());
                        }
                        c
                    })
                    .collect();
                self.calls.insert(index, first + calls.len());
                out.push(self.delta(index, json!({"tool_calls": calls}), None));
            }
            if let Some(reason) = str_of(c, "finishReason") {
                let has_calls = self.calls.get(&index).is_some_and(|n| *n > 0);
                out.push(self.delta(index, json!({}), Some(chat_finish(reason, has_calls))));
            }
        }
        if !any && block_reason(data).is_some() {
            self.start(0, &mut out);
            out.push(self.delta(0, json!({}), Some("content_filter")));
        }
        Ok(out)
    }

    /// The usage chunk (`choices: []`) when `include_usage` and the upstream
    /// reported usage. Gemini has no `[DONE]`: the caller writes it.
    pub fn finish(&mut self) -> Vec<Value> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        if !self.include_usage {
            return Vec::new();
        }
        match self.usage.as_ref().and_then(chat_usage_from_gemini) {
            Some(u) => vec![self.frame(json!([]), Some(u))],
            None => Vec::new(),
        }
    }

    pub fn usage(&self) -> Option<billing::Usage> {
        self.usage.as_ref().and_then(gemini_usage)
    }
}

// ---------------------------------------------------------------------------
// (b) Gemini client → OpenAI-compatible channel
// ---------------------------------------------------------------------------

fn is_thought(p: &Value) -> bool {
    p.get("thought").and_then(Value::as_bool) == Some(true)
}

/// The first key of a part, to name it in errors.
fn part_kind(p: &Value) -> String {
    p.as_object()
        .and_then(|o| {
            o.keys()
                .find(|k| *k != "thought" && *k != "thoughtSignature")
        })
        .cloned()
        .unwrap_or_else(|| "empty part".to_owned())
}

fn inline_to_chat(d: &Value) -> Result<Value> {
    let mime =
        str_of(d, "mimeType").ok_or_else(|| invalid("inlineData.mimeType must be a string"))?;
    let data = d
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("inlineData.data must be a string"))?;
    let mime_lc = mime.to_ascii_lowercase();
    if mime_lc.starts_with("image/") {
        return Ok(
            json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{data}")}}),
        );
    }
    let format = match mime_lc.as_str() {
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "wav",
        "audio/mp3" | "audio/mpeg" => "mp3",
        _ if mime_lc.starts_with("audio/") => {
            return Err(unsupported(format!(
                "inlineData of type {mime}: only audio/wav and audio/mp3 audio is supported"
            )));
        }
        _ => return Err(unsupported(format!("inlineData of type {mime}"))),
    };
    Ok(json!({"type": "input_audio", "input_audio": {"data": data, "format": format}}))
}

/// Chat content from parts: a string when they are all text, else the parts.
fn chat_content(parts: Vec<Value>) -> Value {
    if parts
        .iter()
        .all(|p| p.get("type").and_then(Value::as_str) == Some("text"))
    {
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        Value::String(text)
    } else {
        Value::Array(parts)
    }
}

/// Tool call ids handed out for a Gemini conversation, so that each
/// functionResponse gets the id of its functionCall.
#[derive(Default)]
struct CallIds {
    next: usize,
    pending: HashMap<String, VecDeque<String>>,
}

fn user_turn(
    parts: &[Value],
    i: usize,
    ids: &mut CallIds,
    messages: &mut Vec<Value>,
) -> Result<()> {
    let mut content = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        if let Some(fr) = g(p, "functionResponse") {
            let name = fr.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid(format!(
                    "contents[{i}].parts[{j}].functionResponse.name must be a string"
                ))
            })?;
            let queue = ids.pending.get_mut(name);
            let id = match fr.get("id").and_then(Value::as_str) {
                Some(id) => {
                    if let Some(q) = queue {
                        q.retain(|x| x != id);
                    }
                    id.to_owned()
                }
                None => queue.and_then(VecDeque::pop_front).ok_or_else(|| {
                    invalid(format!(
                        "contents[{i}].parts[{j}]: functionResponse `{name}` has no matching functionCall"
                    ))
                })?,
            };
            let response = non_null(fr.get("response"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            messages
                .push(json!({"role": "tool", "tool_call_id": id, "content": response.to_string()}));
        } else if is_thought(p) {
            continue;
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            content.push(json!({"type": "text", "text": t}));
        } else if let Some(d) = g(p, "inlineData") {
            content.push(inline_to_chat(d)?);
        } else if g(p, "fileData").is_some() {
            return Err(unsupported(
                "fileData (uploaded files) on this channel: send the file inline as inlineData",
            ));
        } else if g(p, "functionCall").is_some() {
            return Err(invalid(format!(
                "contents[{i}].parts[{j}]: functionCall parts belong in model turns"
            )));
        } else {
            return Err(unsupported(format!(
                "part `{}` in user turns",
                part_kind(p)
            )));
        }
    }
    if !content.is_empty() {
        messages.push(json!({"role": "user", "content": chat_content(content)}));
    }
    Ok(())
}

fn model_turn(
    parts: &[Value],
    i: usize,
    ids: &mut CallIds,
    messages: &mut Vec<Value>,
) -> Result<()> {
    let mut text = String::new();
    let mut has_text = false;
    let mut calls = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        if let Some(fc) = g(p, "functionCall") {
            let name = fc.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid(format!(
                    "contents[{i}].parts[{j}].functionCall.name must be a string"
                ))
            })?;
            let args = non_null(fc.get("args"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            let id = match fc.get("id").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => {
                    let id = format!("call_{}", ids.next);
                    ids.next += 1;
                    id
                }
            };
            ids.pending
                .entry(name.to_owned())
                .or_default()
                .push_back(id.clone());
            calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": args.to_string()},
            }));
        } else if is_thought(p) {
            continue;
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            has_text = true;
            text.push_str(t);
        } else if g(p, "functionResponse").is_some() {
            return Err(invalid(format!(
                "contents[{i}].parts[{j}]: functionResponse parts belong in user turns"
            )));
        } else {
            return Err(unsupported(format!(
                "part `{}` in model turns",
                part_kind(p)
            )));
        }
    }
    if !has_text && calls.is_empty() {
        return Ok(());
    }
    let mut m = Map::new();
    m.insert("role".into(), "assistant".into());
    m.insert(
        "content".into(),
        if has_text {
            Value::String(text)
        } else {
            Value::Null
        },
    );
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    messages.push(Value::Object(m));
    Ok(())
}

fn system_text(si: &Value) -> Result<String> {
    if let Value::String(s) = si {
        return Ok(s.clone());
    }
    let parts = si
        .get("parts")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("systemInstruction.parts must be an array"))?;
    let texts: Vec<&str> = parts
        .iter()
        .map(|p| {
            p.get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| unsupported(format!("part `{}` in systemInstruction", part_kind(p))))
        })
        .collect::<Result<_>>()?;
    Ok(texts.join("\n"))
}

fn copy_gemini_number(
    gc: &Value,
    key: &str,
    to: &mut Map<String, Value>,
    as_key: &str,
) -> Result<()> {
    if let Some(v) = non_null(g(gc, key)) {
        if !v.is_number() {
            return Err(invalid(format!("generationConfig.{key} must be a number")));
        }
        to.insert(as_key.to_owned(), v.clone());
    }
    Ok(())
}

fn generation_config_to_chat(gc: &Value, out: &mut Map<String, Value>) -> Result<()> {
    copy_gemini_number(gc, "maxOutputTokens", out, "max_tokens")?;
    copy_gemini_number(gc, "temperature", out, "temperature")?;
    copy_gemini_number(gc, "topP", out, "top_p")?;
    copy_gemini_number(gc, "candidateCount", out, "n")?;
    copy_gemini_number(gc, "seed", out, "seed")?;
    copy_gemini_number(gc, "presencePenalty", out, "presence_penalty")?;
    copy_gemini_number(gc, "frequencyPenalty", out, "frequency_penalty")?;
    if let Some(stops) = non_null(g(gc, "stopSequences")) {
        let stops = stops
            .as_array()
            .ok_or_else(|| invalid("generationConfig.stopSequences must be an array"))?;
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
    }
    match str_of(gc, "responseMimeType") {
        None | Some("text/plain") => {}
        Some("application/json") => {
            let schema =
                non_null(g(gc, "responseSchema")).or_else(|| non_null(g(gc, "responseJsonSchema")));
            let rf = match schema {
                Some(s) => {
                    json!({"type": "json_schema", "json_schema": {"name": "response", "schema": lower_types(s)}})
                }
                None => json!({"type": "json_object"}),
            };
            out.insert("response_format".into(), rf);
        }
        Some(other) => return Err(unsupported(format!("responseMimeType {other}"))),
    }
    if let Some(budget) = g(gc, "thinkingConfig")
        .and_then(|t| g(t, "thinkingBudget"))
        .and_then(Value::as_i64)
        && budget > 0
    {
        let effort = match budget {
            1..=1024 => "low",
            1025..=8192 => "medium",
            _ => "high",
        };
        out.insert("reasoning_effort".into(), effort.into());
    }
    if g(gc, "responseLogprobs").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("responseLogprobs"));
    }
    if let Some(mods) = g(gc, "responseModalities").and_then(Value::as_array)
        && mods
            .iter()
            .any(|m| m.as_str().is_none_or(|m| !m.eq_ignore_ascii_case("text")))
    {
        return Err(unsupported("responseModalities other than TEXT"));
    }
    Ok(())
}

fn tools_to_chat(tools: &Value) -> Result<Vec<Value>> {
    let tools = tools
        .as_array()
        .ok_or_else(|| invalid("`tools` must be an array"))?;
    let mut out = Vec::new();
    for t in tools {
        let obj = t
            .as_object()
            .ok_or_else(|| invalid("each tool must be an object"))?;
        for (key, v) in obj {
            if key != "functionDeclarations" && key != "function_declarations" {
                return Err(unsupported(format!("Gemini tool `{key}`")));
            }
            let decls = v
                .as_array()
                .ok_or_else(|| invalid("functionDeclarations must be an array"))?;
            for d in decls {
                let name = d
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("functionDeclarations[].name must be a string"))?;
                let mut f = Map::new();
                f.insert("name".into(), name.into());
                if let Some(desc) = d.get("description").and_then(Value::as_str) {
                    f.insert("description".into(), desc.into());
                }
                let params = non_null(d.get("parameters"))
                    .or_else(|| non_null(g(d, "parametersJsonSchema")))
                    .map(lower_types)
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                f.insert("parameters".into(), params);
                out.push(json!({"type": "function", "function": f}));
            }
        }
    }
    Ok(out)
}

/// Gemini `generateContent` body → Chat Completions request. `model` comes
/// from the URL, `stream` from the method (`:streamGenerateContent`); a
/// stream asks for the usage chunk.
pub fn gemini_to_chat_request(req: &Value, model: &str, stream: bool) -> Result<Value> {
    if !req.is_object() {
        return Err(invalid("the request body must be a JSON object"));
    }
    if non_null(g(req, "cachedContent")).is_some() {
        return Err(unsupported("cachedContent"));
    }
    let mut messages = Vec::new();
    if let Some(si) = non_null(g(req, "systemInstruction")) {
        let text = system_text(si)?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let contents = g(req, "contents")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`contents` must be an array"))?;
    let mut ids = CallIds::default();
    for (i, turn) in contents.iter().enumerate() {
        let parts = turn
            .get("parts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match turn.get("role").and_then(Value::as_str).unwrap_or("user") {
            "user" | "function" | "tool" => user_turn(parts, i, &mut ids, &mut messages)?,
            "model" => model_turn(parts, i, &mut ids, &mut messages)?,
            other => {
                return Err(invalid(format!(
                    "contents[{i}].role `{other}` is not supported"
                )));
            }
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), model.into());
    out.insert("messages".into(), Value::Array(messages));
    if let Some(gc) = non_null(g(req, "generationConfig")) {
        generation_config_to_chat(gc, &mut out)?;
    }
    let mut tools = match non_null(g(req, "tools")) {
        Some(t) => tools_to_chat(t)?,
        None => Vec::new(),
    };
    if let Some(fcc) = g(req, "toolConfig").and_then(|t| g(t, "functionCallingConfig")) {
        let allowed: Vec<&str> = g(fcc, "allowedFunctionNames")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let choice = match str_of(fcc, "mode") {
            None | Some("MODE_UNSPECIFIED") => None,
            Some("AUTO") => Some(json!("auto")),
            Some("NONE") => Some(json!("none")),
            Some("ANY") if allowed.len() == 1 => {
                Some(json!({"type": "function", "function": {"name": allowed[0]}}))
            }
            Some("ANY") => {
                if !allowed.is_empty() {
                    // Several allowed names: offer only those, and require one.
                    tools.retain(|t| {
                        t.get("function")
                            .and_then(|f| f.get("name"))
                            .and_then(Value::as_str)
                            .is_some_and(|n| allowed.contains(&n))
                    });
                }
                Some(json!("required"))
            }
            Some(other) => return Err(unsupported(format!("functionCallingConfig mode {other}"))),
        };
        if let Some(c) = choice
            && !tools.is_empty()
        {
            out.insert("tool_choice".into(), c);
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if stream {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// The reasoning text of a chat message or delta.
fn reasoning_of(m: &Value) -> Option<&str> {
    m.get("reasoning_content")
        .and_then(Value::as_str)
        .or_else(|| m.get("reasoning").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// A chat completion id as a Gemini responseId (without `chatcmpl-`, which
/// [`gemini_to_chat_response`] adds back).
fn response_id(chat_id: &str) -> String {
    chat_id
        .strip_prefix("chatcmpl-")
        .unwrap_or(chat_id)
        .to_owned()
}

/// Chat Completions response → Gemini `GenerateContentResponse`.
pub fn chat_to_gemini_response(chat: &Value, model: &str) -> Result<Value> {
    if let Some(err) = non_null(chat.get("error")) {
        return Err(invalid(format!("upstream error: {}", error_message(err))));
    }
    let choices = chat
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the chat completion has no `choices`"))?;
    let mut candidates = Vec::new();
    for (pos, c) in choices.iter().enumerate() {
        let msg = c.get("message").unwrap_or(&Value::Null);
        let mut parts = Vec::new();
        if let Some(r) = reasoning_of(msg) {
            parts.push(json!({"text": r, "thought": true}));
        }
        let text = match non_null(msg.get("content")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
            _ => msg
                .get("refusal")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        };
        if !text.is_empty() {
            parts.push(json!({"text": text}));
        }
        for tc in msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = tc.get("id").and_then(Value::as_str).unwrap_or("");
            let f = tc.get("function");
            let name = f
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let args = parse_args(f.and_then(|f| f.get("arguments")), id)?;
            parts.push(json!({"functionCall": {"name": name, "args": args}}));
        }
        if let Some(f) = non_null(msg.get("function_call")) {
            let name = f.get("name").and_then(Value::as_str).unwrap_or("");
            let args = parse_args(f.get("arguments"), name)?;
            parts.push(json!({"functionCall": {"name": name, "args": args}}));
        }
        candidates.push(json!({
            "content": {"role": "model", "parts": parts},
            "finishReason": gemini_finish(c.get("finish_reason").and_then(Value::as_str)),
            "index": c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64),
        }));
    }
    let mut out = Map::new();
    out.insert("candidates".into(), Value::Array(candidates));
    if let Some(u) = chat.get("usage").and_then(usage_metadata_from_chat) {
        out.insert("usageMetadata".into(), u);
    }
    out.insert("modelVersion".into(), model.into());
    let id = chat
        .get("id")
        .and_then(Value::as_str)
        .map(response_id)
        .unwrap_or_else(random_hex);
    out.insert("responseId".into(), id.into());
    Ok(Value::Object(out))
}

#[derive(Default)]
struct PendingCall {
    id: String,
    name: String,
    args: String,
}

/// Chat Completions stream → Gemini `GenerateContentResponse` chunks.
pub struct ChatToGeminiStream {
    model: String,
    response_id: Option<String>,
    /// Tool call fragments, by (choice index, tool call index).
    calls: BTreeMap<(u64, u64), PendingCall>,
    /// Gemini finishReason per choice, held for the last chunk.
    finish: BTreeMap<u64, &'static str>,
    seen: BTreeSet<u64>,
    /// The upstream's `usage` object.
    usage: Option<Value>,
    done: bool,
}

impl ChatToGeminiStream {
    pub fn new(model: &str) -> Self {
        ChatToGeminiStream {
            model: model.to_owned(),
            response_id: None,
            calls: BTreeMap::new(),
            finish: BTreeMap::new(),
            seen: BTreeSet::new(),
            usage: None,
            done: false,
        }
    }

    fn frame(&mut self, candidates: Vec<Value>, usage: Option<Value>) -> Value {
        let id = self.response_id.get_or_insert_with(random_hex).clone();
        let mut m = Map::new();
        m.insert("candidates".into(), Value::Array(candidates));
        if let Some(u) = usage {
            m.insert("usageMetadata".into(), u);
        }
        m.insert("modelVersion".into(), self.model.clone().into());
        m.insert("responseId".into(), id.into());
        Value::Object(m)
    }

    /// The completed function calls of choice `index`, as functionCall parts.
    /// Unparsable arguments are an error when `strict`, else `{}`.
    fn take_calls(&mut self, index: u64, strict: bool) -> Result<Vec<Value>> {
        let keys: Vec<(u64, u64)> = self
            .calls
            .range((index, 0)..=(index, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        let mut parts = Vec::new();
        for k in keys {
            let Some(c) = self.calls.remove(&k) else {
                continue;
            };
            let args = match parse_args(Some(&Value::String(c.args)), &c.id) {
                Ok(a) => a,
                Err(e) if strict => return Err(e),
                Err(_) => json!({}),
            };
            parts.push(json!({"functionCall": {"name": c.name, "args": args}}));
        }
        Ok(parts)
    }

    /// One upstream chat chunk → zero or more GenerateContentResponse chunks
    /// to emit as `data: JSON\r\n\r\n`.
    pub fn chunk(&mut self, chunk: &Value) -> Result<Vec<Value>> {
        if let Some(err) = non_null(chunk.get("error")) {
            return Err(invalid(format!("upstream error: {}", error_message(err))));
        }
        if self.response_id.is_none()
            && let Some(id) = chunk.get("id").and_then(Value::as_str)
        {
            self.response_id = Some(response_id(id));
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let mut out = Vec::new();
        let choices = chunk.get("choices").and_then(Value::as_array);
        for (pos, c) in choices.into_iter().flatten().enumerate() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
            self.seen.insert(index);
            let delta = c.get("delta").unwrap_or(&Value::Null);
            let mut parts = Vec::new();
            if let Some(r) = reasoning_of(delta) {
                parts.push(json!({"text": r, "thought": true}));
            }
            if let Some(t) = delta
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                parts.push(json!({"text": t}));
            }
            if !parts.is_empty() {
                let cand = json!({"content": {"role": "model", "parts": parts}, "index": index});
                out.push(self.frame(vec![cand], None));
            }
            let fragments = delta.get("tool_calls").and_then(Value::as_array);
            for (k, tc) in fragments.into_iter().flatten().enumerate() {
                let ti = tc.get("index").and_then(Value::as_u64).unwrap_or(k as u64);
                let pending = self.calls.entry((index, ti)).or_default();
                if let Some(id) = tc.get("id").and_then(Value::as_str)
                    && pending.id.is_empty()
                {
                    pending.id = id.to_owned();
                }
                let f = tc.get("function");
                if let Some(name) = f.and_then(|f| f.get("name")).and_then(Value::as_str)
                    && pending.name.is_empty()
                {
                    pending.name = name.to_owned();
                }
                if let Some(a) = f.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
                    pending.args.push_str(a);
                }
            }
            if let Some(reason) = c.get("finish_reason").and_then(Value::as_str) {
                self.finish.insert(index, gemini_finish(Some(reason)));
                let parts = self.take_calls(index, true)?;
                if !parts.is_empty() {
                    let cand =
                        json!({"content": {"role": "model", "parts": parts}, "index": index});
                    out.push(self.frame(vec![cand], None));
                }
            }
        }
        Ok(out)
    }

    /// Upstream ended: the last chunk with finishReason and usageMetadata
    /// (and any function calls still pending, their unparsable arguments
    /// as `{}`). Later calls return nothing.
    pub fn finish(&mut self) -> Vec<Value> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut indexes: BTreeSet<u64> = self.seen.clone();
        indexes.extend(self.calls.keys().map(|k| k.0));
        if indexes.is_empty() {
            indexes.insert(0);
        }
        let mut candidates = Vec::new();
        for index in indexes {
            let mut parts = self.take_calls(index, false).unwrap_or_default();
            if parts.is_empty() {
                parts.push(json!({"text": ""}));
            }
            candidates.push(json!({
                "content": {"role": "model", "parts": parts},
                "finishReason": self.finish.get(&index).copied().unwrap_or("STOP"),
                "index": index,
            }));
        }
        let usage = self.usage.as_ref().and_then(usage_metadata_from_chat);
        vec![self.frame(candidates, usage)]
    }

    pub fn usage(&self) -> Option<billing::Usage> {
        self.usage.as_ref().and_then(billing_from_chat_usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsupported_msg(r: Result<Value>) -> String {
        match r {
            Err(TranslateError::Unsupported(m)) => m,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    fn invalid_msg(r: Result<Value>) -> String {
        match r {
            Err(TranslateError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Replaces `created` with 0 and every generated `call_<hex>` id with
    /// `call_N` (N in order of appearance), checking their shape.
    fn normalize(v: &mut Value) {
        fn walk(v: &mut Value, n: &mut usize) {
            match v {
                Value::Object(m) => {
                    if m.contains_key("created") {
                        m.insert("created".into(), 0.into());
                    }
                    if let Some(Value::String(id)) = m.get("id")
                        && let Some(hex) = id.strip_prefix("call_")
                        && hex.len() == 24
                    {
                        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
                        m.insert("id".into(), format!("call_N{n}").into());
                        *n += 1;
                    }
                    for (_, x) in m.iter_mut() {
                        walk(x, n);
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(|x| walk(x, n)),
                _ => {}
            }
        }
        walk(v, &mut 0);
    }

    // ----- (a) chat → Gemini request -----

    #[test]
    fn snapshot_chat_request_with_system_image_and_tool_round() {
        let chat = json!({
            "model": "gemini-2.5-flash",
            "user": "u-1",
            "stream": true,
            "stream_options": {"include_usage": true},
            "parallel_tool_calls": false,
            "max_tokens": 256,
            "temperature": 0.2,
            "stop": "END",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and what is the weather there?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp_c\":18}"},
                {"role": "tool", "tool_call_id": "call_b", "content": "14:02"},
                {"role": "assistant", "content": "Il fait 18 °C à Paris."},
                {"role": "user", "content": "Merci"}
            ],
            "tools": [
                {"type": "function", "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "strict": true,
                    "parameters": {
                        "$schema": "http://json-schema.org/draft-07/schema#",
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "city": {"type": "string", "default": "Paris"},
                            "days": {"type": "integer", "exclusiveMinimum": 0},
                            "default": {"type": "boolean"}
                        },
                        "required": ["city"]
                    }
                }},
                {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
        });
        let got = chat_to_gemini_request(&chat).unwrap();
        let want = json!({
            "systemInstruction": {"parts": [{"text": "You are terse.\nAnswer in French."}]},
            "contents": [
                {"role": "user", "parts": [
                    {"text": "What is in this picture, and what is the weather there?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "get_time", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
                    {"functionResponse": {"name": "get_time", "response": {"content": "14:02"}}}
                ]},
                {"role": "model", "parts": [{"text": "Il fait 18 °C à Paris."}]},
                {"role": "user", "parts": [{"text": "Merci"}]}
            ],
            "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2, "stopSequences": ["END"]},
            "tools": [{"functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string"},
                            "days": {"type": "integer"},
                            "default": {"type": "boolean"}
                        },
                        "required": ["city"]
                    }
                },
                {"name": "get_time"}
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
        });
        assert_eq!(got, want);
    }

    #[test]
    fn snapshot_chat_request_with_json_schema_and_thinking() {
        let chat = json!({
            "model": "gemini-2.5-pro",
            "messages": [{"role": "user", "content": "List two colours."}],
            "max_tokens": 10,
            "max_completion_tokens": 2000,
            "top_p": 0.9,
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "stop": ["a", "b", "c", "d", "e", "f"],
            "reasoning_effort": "medium",
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "colours",
                "strict": true,
                "schema": {
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "title": "Colours",
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "title": {"type": "string", "title": "Heading"},
                        "colours": {"type": "array", "items": {"type": "object", "title": "C", "additionalProperties": false, "properties": {"name": {"type": "string"}}}}
                    },
                    "required": ["title", "colours"]
                }
            }}
        });
        let got = chat_to_gemini_request(&chat).unwrap();
        let want = json!({
            "contents": [{"role": "user", "parts": [{"text": "List two colours."}]}],
            "generationConfig": {
                "maxOutputTokens": 2000,
                "topP": 0.9,
                "candidateCount": 2,
                "seed": 7,
                "presencePenalty": 0.5,
                "frequencyPenalty": -0.5,
                "stopSequences": ["a", "b", "c", "d", "e"],
                "thinkingConfig": {"thinkingBudget": 8192},
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string"},
                        "colours": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}
                    },
                    "required": ["title", "colours"]
                }
            }
        });
        assert_eq!(got, want);
    }

    #[test]
    fn http_image_urls_are_unsupported() {
        let chat = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        ]}]});
        assert_eq!(
            unsupported_msg(chat_to_gemini_request(&chat)),
            "image URLs for Gemini channels: send the image inline as a data: URL"
        );
        let bad = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}
        ]}]});
        invalid_msg(chat_to_gemini_request(&bad));
    }

    #[test]
    fn audio_and_file_parts_become_inline_data() {
        let chat = json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}},
            {"type": "input_audio", "input_audio": {"data": "BBB", "format": "mp3"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}}
        ]}]});
        let got = chat_to_gemini_request(&chat).unwrap();
        assert_eq!(
            got["contents"][0]["parts"],
            json!([
                {"inlineData": {"mimeType": "audio/wav", "data": "AAA"}},
                {"inlineData": {"mimeType": "audio/mp3", "data": "BBB"}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}}
            ])
        );
        let flac = json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAA", "format": "flac"}}
        ]}]});
        unsupported_msg(chat_to_gemini_request(&flac));
        let file_id = json!({"messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-1"}}
        ]}]});
        unsupported_msg(chat_to_gemini_request(&file_id));
    }

    #[test]
    fn unparsable_tool_arguments_name_the_call() {
        let chat = json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "call_x1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
        ]});
        assert!(invalid_msg(chat_to_gemini_request(&chat)).contains("call_x1"));
    }

    #[test]
    fn tool_results_find_their_name() {
        let unknown = json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "nope", "content": "x"}
        ]});
        assert!(invalid_msg(chat_to_gemini_request(&unknown)).contains("nope"));
        let named = json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "nope", "name": "lookup", "content": [{"type": "text", "text": "[1,2]"}]}
        ]});
        let got = chat_to_gemini_request(&named).unwrap();
        // A tool result merges into the preceding user turn; a JSON array is
        // not an object, so it is wrapped.
        assert_eq!(
            got["contents"],
            json!([{"role": "user", "parts": [
                {"text": "hi"},
                {"functionResponse": {"name": "lookup", "response": {"content": "[1,2]"}}}
            ]}])
        );
    }

    #[test]
    fn empty_turns_are_dropped_and_neighbours_merged() {
        let chat = json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "b"},
            {"role": "system", "content": "late system"}
        ]});
        let got = chat_to_gemini_request(&chat).unwrap();
        assert_eq!(
            got["contents"],
            json!([{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}])
        );
        assert_eq!(
            got["systemInstruction"],
            json!({"parts": [{"text": "late system"}]})
        );
        let only_system = json!({"messages": [{"role": "system", "content": "x"}]});
        invalid_msg(chat_to_gemini_request(&only_system));
    }

    #[test]
    fn tool_choice_modes_and_reasoning_budgets() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}]);
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let chat = json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": choice});
            let got = chat_to_gemini_request(&chat).unwrap();
            assert_eq!(
                got["toolConfig"],
                json!({"functionCallingConfig": {"mode": mode}})
            );
        }
        // No tools, no toolConfig.
        let chat =
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"});
        assert!(
            chat_to_gemini_request(&chat)
                .unwrap()
                .get("toolConfig")
                .is_none()
        );
        for (effort, budget) in [("low", 1024), ("medium", 8192), ("high", 24576)] {
            let chat =
                json!({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort});
            let got = chat_to_gemini_request(&chat).unwrap();
            assert_eq!(
                got["generationConfig"]["thinkingConfig"]["thinkingBudget"],
                budget
            );
        }
        let chat = json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]});
        unsupported_msg(chat_to_gemini_request(&chat));
    }

    #[test]
    fn logprobs_are_unsupported_and_json_object_sets_the_mime_type() {
        let chat = json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true});
        unsupported_msg(chat_to_gemini_request(&chat));
        let chat = json!({"messages": [{"role": "user", "content": "x"}], "logprobs": false, "response_format": {"type": "json_object"}});
        let got = chat_to_gemini_request(&chat).unwrap();
        assert_eq!(
            got["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
    }

    // ----- (a) Gemini response → chat -----

    #[test]
    fn snapshot_gemini_response_with_thinking_and_calls() {
        let resp = json!({
            "candidates": [
                {
                    "content": {"role": "model", "parts": [
                        {"text": "Let me think. ", "thought": true},
                        {"text": "Checking.", "thought": true},
                        {"text": "The weather "},
                        {"text": "is fetched."},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "abc"}
                    ]},
                    "finishReason": "STOP",
                    "index": 0
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 100,
                "cachedContentTokenCount": 40,
                "toolUsePromptTokenCount": 5,
                "candidatesTokenCount": 20,
                "thoughtsTokenCount": 30,
                "totalTokenCount": 155
            },
            "modelVersion": "gemini-2.5-flash-001",
            "responseId": "abc123"
        });
        let mut got = gemini_to_chat_response(&resp, "gemini-2.5-flash").unwrap();
        normalize(&mut got);
        let want = json!({
            "id": "chatcmpl-abc123",
            "object": "chat.completion",
            "created": 0,
            "model": "gemini-2.5-flash",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The weather is fetched.",
                    "reasoning_content": "Let me think. Checking.",
                    "tool_calls": [{"id": "call_N0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {
                "prompt_tokens": 105,
                "completion_tokens": 50,
                "total_tokens": 155,
                "prompt_tokens_details": {"cached_tokens": 40},
                "completion_tokens_details": {"reasoning_tokens": 30}
            }
        });
        assert_eq!(got, want);
    }

    #[test]
    fn finish_reasons_map() {
        for (reason, calls, want) in [
            ("STOP", false, "stop"),
            ("STOP", true, "tool_calls"),
            ("MAX_TOKENS", false, "length"),
            ("MAX_TOKENS", true, "length"),
            ("SAFETY", false, "content_filter"),
            ("RECITATION", false, "content_filter"),
            ("BLOCKLIST", false, "content_filter"),
            ("PROHIBITED_CONTENT", false, "content_filter"),
            ("SPII", false, "content_filter"),
            ("MALFORMED_FUNCTION_CALL", false, "stop"),
            ("OTHER", false, "stop"),
        ] {
            assert_eq!(chat_finish(reason, calls), want, "{reason}");
        }
        let resp = json!({"candidates": [{"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS"}]});
        let got = gemini_to_chat_response(&resp, "m").unwrap();
        assert_eq!(got["choices"][0]["finish_reason"], "length");
        assert!(got["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(got.get("usage").is_none());
    }

    #[test]
    fn blocked_prompts_and_empty_answers() {
        let resp = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}});
        let got = gemini_to_chat_response(&resp, "m").unwrap();
        assert_eq!(
            got["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": null}, "logprobs": null, "finish_reason": "content_filter"}])
        );
        assert_eq!(got["usage"]["prompt_tokens"], 9);
        assert_eq!(got["usage"]["completion_tokens"], 0);
        invalid_msg(gemini_to_chat_response(&json!({}), "m"));
        invalid_msg(gemini_to_chat_response(
            &json!({"error": {"code": 400, "message": "bad"}}),
            "m",
        ));
        // A candidate with no parts has null content.
        let resp = json!({"candidates": [{"finishReason": "SAFETY", "index": 0}]});
        let got = gemini_to_chat_response(&resp, "m").unwrap();
        assert_eq!(got["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(got["choices"][0]["finish_reason"], "content_filter");
    }

    #[test]
    fn gemini_usage_sums() {
        let u = gemini_usage(&json!({
            "promptTokenCount": 10, "cachedContentTokenCount": 4, "toolUsePromptTokenCount": 2,
            "candidatesTokenCount": 7, "thoughtsTokenCount": 3
        }))
        .unwrap();
        assert_eq!(
            u,
            billing::Usage {
                cache_write: 0,
                prompt: 12,
                completion: 10,
                cached: 4
            }
        );
        let snake =
            gemini_usage(&json!({"prompt_token_count": 1, "candidates_token_count": 2})).unwrap();
        assert_eq!(
            snake,
            billing::Usage {
                cache_write: 0,
                prompt: 1,
                completion: 2,
                cached: 0
            }
        );
        assert_eq!(gemini_usage(&json!({})), None);
        assert_eq!(gemini_usage(&Value::Null), None);
    }

    #[test]
    fn error_bodies() {
        for (status, name) in [
            (400, "INVALID_ARGUMENT"),
            (401, "UNAUTHENTICATED"),
            (403, "PERMISSION_DENIED"),
            (404, "NOT_FOUND"),
            (413, "INVALID_ARGUMENT"),
            (429, "RESOURCE_EXHAUSTED"),
            (500, "INTERNAL"),
            (502, "UNAVAILABLE"),
            (503, "UNAVAILABLE"),
            (504, "DEADLINE_EXCEEDED"),
        ] {
            assert_eq!(
                gemini_error_body(status, "boom"),
                json!({"error": {"code": status, "message": "boom", "status": name}})
            );
        }
    }

    // ----- (a) Gemini stream → chat chunks -----

    fn gemini_stream_fixture() -> Vec<Value> {
        vec![
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hmm.", "thought": true}]}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10}, "responseId": "r1"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12}, "responseId": "r1"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                       {"text": " world"},
                       {"functionCall": {"name": "lookup", "args": {"q": "x"}}},
                       {"functionCall": {"name": "lookup", "args": {"q": "y"}}}
                   ]}, "finishReason": "STOP", "index": 0}],
                   "usageMetadata": {"promptTokenCount": 10, "cachedContentTokenCount": 3, "candidatesTokenCount": 8, "thoughtsTokenCount": 4, "totalTokenCount": 22},
                   "responseId": "r1"}),
        ]
    }

    #[test]
    fn gemini_stream_with_usage() {
        let mut s = GeminiToChatStream::new("gm", true);
        let mut got = Vec::new();
        for c in gemini_stream_fixture() {
            got.extend(s.chunk(&c).unwrap());
        }
        got.extend(s.finish());
        assert!(s.finish().is_empty());
        for c in &mut got {
            normalize(c);
        }
        let head = |choices: Value, usage: Value| json!({"id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 0, "model": "gm", "choices": choices, "usage": usage});
        let d = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        let want = vec![
            head(
                d(json!({"role": "assistant", "content": ""}), Value::Null),
                Value::Null,
            ),
            head(
                d(json!({"reasoning_content": "Hmm."}), Value::Null),
                Value::Null,
            ),
            head(d(json!({"content": "Hello"}), Value::Null), Value::Null),
            head(d(json!({"content": " world"}), Value::Null), Value::Null),
            head(
                d(
                    json!({"tool_calls": [
                        {"index": 0, "id": "call_N0", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}},
                        {"index": 1, "id": "call_N1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"y\"}"}}
                    ]}),
                    Value::Null,
                ),
                Value::Null,
            ),
            head(d(json!({}), json!("tool_calls")), Value::Null),
            head(
                json!([]),
                json!({"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22,
                       "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 4}}),
            ),
        ];
        assert_eq!(got, want);
        assert_eq!(
            s.usage(),
            Some(billing::Usage {
                cache_write: 0,
                prompt: 10,
                completion: 12,
                cached: 3
            })
        );
    }

    #[test]
    fn gemini_stream_without_usage() {
        let mut s = GeminiToChatStream::new("gm", false);
        let mut got = Vec::new();
        for c in gemini_stream_fixture() {
            got.extend(s.chunk(&c).unwrap());
        }
        assert!(s.finish().is_empty());
        assert_eq!(got.len(), 6);
        assert!(got.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(got[5]["choices"][0]["finish_reason"], "tool_calls");
        // Usage is still metered.
        assert_eq!(
            s.usage(),
            Some(billing::Usage {
                cache_write: 0,
                prompt: 10,
                completion: 12,
                cached: 3
            })
        );
    }

    #[test]
    fn gemini_stream_tool_indexes_continue_and_blocks_filter() {
        let mut s = GeminiToChatStream::new("gm", false);
        let call = |q: &str| json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"q": q}}}]}, "index": 0}]});
        let first = s.chunk(&call("a")).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[1]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        let second = s.chunk(&call("b")).unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(
            second[0]["choices"][0]["delta"]["tool_calls"][0]["index"],
            1
        );
        assert_eq!(first[0]["id"], second[0]["id"]);

        let mut s = GeminiToChatStream::new("gm", true);
        let got = s
            .chunk(&json!({"promptFeedback": {"blockReason": "OTHER"}}))
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["choices"][0]["finish_reason"], "content_filter");
        assert!(s.finish().is_empty(), "no usage reported, no usage chunk");
        let mut s = GeminiToChatStream::new("gm", true);
        assert!(matches!(
            s.chunk(&json!({"error": {"code": 500, "message": "x"}})),
            Err(TranslateError::Invalid(_))
        ));
    }

    // ----- (b) Gemini request → chat -----

    #[test]
    fn snapshot_gemini_request_to_chat() {
        let req = json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use metric."}]},
            "contents": [
                {"role": "user", "parts": [
                    {"text": "Weather here?"},
                    {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}}
                ]},
                {"role": "model", "parts": [
                    {"text": "thinking…", "thought": true},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Bergen"}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp_c": 3}}},
                    {"functionResponse": {"name": "get_weather", "response": {"temp_c": 7}}}
                ]},
                {"role": "model", "parts": [{"text": "Oslo 3 °C, "}, {"text": "Bergen 7 °C."}]},
                {"role": "user", "parts": [{"text": "Thanks"}]}
            ],
            "generationConfig": {
                "maxOutputTokens": 512,
                "temperature": 0.3,
                "topP": 0.8,
                "topK": 40,
                "candidateCount": 1,
                "stopSequences": ["STOP"],
                "seed": 1,
                "presencePenalty": 0.1,
                "frequencyPenalty": 0.2,
                "responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT", "properties": {"type": {"type": "STRING", "enum": ["A", "B"]}}},
                "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true}
            },
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "tools": [{"functionDeclarations": [
                {"name": "get_weather", "description": "Weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}},
                {"name": "ping"}
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
        });
        let got = gemini_to_chat_request(&req, "gpt-4o", true).unwrap();
        let want = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief.\nUse metric."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Bergen\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp_c\":3}"},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":7}"},
                {"role": "assistant", "content": "Oslo 3 °C, Bergen 7 °C."},
                {"role": "user", "content": "Thanks"}
            ],
            "max_tokens": 512,
            "temperature": 0.3,
            "top_p": 0.8,
            "n": 1,
            "stop": ["STOP"],
            "seed": 1,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": {
                "type": "object", "properties": {"type": {"type": "string", "enum": ["A", "B"]}}
            }}},
            "reasoning_effort": "medium",
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "stream": true,
            "stream_options": {"include_usage": true}
        });
        assert_eq!(got, want);
    }

    #[test]
    fn gemini_request_snake_case_and_plain_options() {
        let req = json!({
            "system_instruction": {"parts": [{"text": "sys"}]},
            "contents": [{"parts": [
                {"text": "Hear this"},
                {"inline_data": {"mime_type": "audio/mpeg", "data": "SUQz"}}
            ]}],
            "generation_config": {"max_output_tokens": 5, "response_mime_type": "application/json",
                                  "thinking_config": {"thinking_budget": 0}}
        });
        let got = gemini_to_chat_request(&req, "m", false).unwrap();
        assert_eq!(
            got,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Hear this"},
                        {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}}
                    ]}
                ],
                "max_tokens": 5,
                "response_format": {"type": "json_object"}
            })
        );
    }

    #[test]
    fn gemini_request_unsupported_parts_and_tools() {
        let with = |part: Value| json!({"contents": [{"role": "user", "parts": [part]}]});
        assert!(
            unsupported_msg(gemini_to_chat_request(
                &with(json!({"fileData": {"mimeType": "application/pdf", "fileUri": "gs://x"}})),
                "m",
                false
            ))
            .contains("fileData (uploaded files)")
        );
        assert!(
            unsupported_msg(gemini_to_chat_request(
                &with(json!({"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}})),
                "m",
                false
            ))
            .contains("application/pdf")
        );
        assert!(
            unsupported_msg(gemini_to_chat_request(
                &with(json!({"inlineData": {"mimeType": "audio/ogg", "data": "T2dn"}})),
                "m",
                false
            ))
            .contains("audio/ogg")
        );
        let wav = gemini_to_chat_request(
            &with(json!({"inlineData": {"mimeType": "audio/wav", "data": "UklG"}})),
            "m",
            false,
        )
        .unwrap();
        assert_eq!(
            wav["messages"][0]["content"],
            json!([{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}])
        );
        let mut search = with(json!({"text": "hi"}));
        search["tools"] = json!([{"googleSearch": {}}]);
        assert!(
            unsupported_msg(gemini_to_chat_request(&search, "m", false)).contains("googleSearch")
        );
        let mut code = with(json!({"text": "hi"}));
        code["tools"] = json!([{"codeExecution": {}}]);
        assert!(
            unsupported_msg(gemini_to_chat_request(&code, "m", false)).contains("codeExecution")
        );
        // A functionResponse with no functionCall before it.
        invalid_msg(gemini_to_chat_request(
            &with(json!({"functionResponse": {"name": "f", "response": {}}})),
            "m",
            false,
        ));
    }

    #[test]
    fn gemini_thinking_budget_and_tool_config_map() {
        for (budget, want) in [
            (json!(0), None),
            (json!(-1), None),
            (json!(512), Some("low")),
            (json!(1024), Some("low")),
            (json!(5000), Some("medium")),
            (json!(8192), Some("medium")),
            (json!(30000), Some("high")),
        ] {
            let req = json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                             "generationConfig": {"thinkingConfig": {"thinkingBudget": budget}}});
            let got = gemini_to_chat_request(&req, "m", false).unwrap();
            assert_eq!(
                got.get("reasoning_effort").and_then(Value::as_str),
                want,
                "{budget}"
            );
        }
        let tools =
            json!([{"functionDeclarations": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}]);
        for (config, choice, names) in [
            (json!({"mode": "AUTO"}), json!("auto"), vec!["a", "b", "c"]),
            (json!({"mode": "NONE"}), json!("none"), vec!["a", "b", "c"]),
            (
                json!({"mode": "ANY"}),
                json!("required"),
                vec!["a", "b", "c"],
            ),
            (
                json!({"mode": "ANY", "allowedFunctionNames": ["a", "c"]}),
                json!("required"),
                vec!["a", "c"],
            ),
        ] {
            let req = json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "tools": tools,
                             "toolConfig": {"functionCallingConfig": config}});
            let got = gemini_to_chat_request(&req, "m", false).unwrap();
            assert_eq!(got["tool_choice"], choice);
            let got_names: Vec<&str> = got["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["function"]["name"].as_str().unwrap())
                .collect();
            assert_eq!(got_names, names);
        }
    }

    #[test]
    fn gemini_request_ids_and_thoughts() {
        let req = json!({"contents": [
            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
            {"role": "model", "parts": [{"text": "secret", "thought": true}]},
            {"role": "model", "parts": [{"functionCall": {"id": "g-1", "name": "f", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"id": "g-1", "name": "f", "response": {"ok": true}}}, {"text": "and?"}]}
        ]});
        let got = gemini_to_chat_request(&req, "m", false).unwrap();
        assert_eq!(
            got["messages"],
            json!([
                {"role": "user", "content": "ab"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "g-1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "g-1", "content": "{\"ok\":true}"},
                {"role": "user", "content": "and?"}
            ])
        );
    }

    // ----- (b) chat response → Gemini -----

    #[test]
    fn snapshot_chat_response_to_gemini() {
        let chat = json!({
            "id": "chatcmpl-9",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {
                    "role": "assistant",
                    "content": "Calling.",
                    "reasoning_content": "User wants weather.",
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]
                }, "finish_reason": "tool_calls"},
                {"index": 1, "message": {"role": "assistant", "content": "Cut"}, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60, "prompt_tokens_details": {"cached_tokens": 20}}
        });
        let got = chat_to_gemini_response(&chat, "gpt-4o").unwrap();
        let want = json!({
            "candidates": [
                {"content": {"role": "model", "parts": [
                    {"text": "User wants weather.", "thought": true},
                    {"text": "Calling."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
                ]}, "finishReason": "STOP", "index": 0},
                {"content": {"role": "model", "parts": [{"text": "Cut"}]}, "finishReason": "MAX_TOKENS", "index": 1}
            ],
            "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 10, "totalTokenCount": 60, "cachedContentTokenCount": 20},
            "modelVersion": "gpt-4o",
            "responseId": "9"
        });
        assert_eq!(got, want);
    }

    #[test]
    fn chat_response_finish_and_errors() {
        for (reason, want) in [
            (json!("stop"), "STOP"),
            (json!("length"), "MAX_TOKENS"),
            (json!("tool_calls"), "STOP"),
            (json!("content_filter"), "SAFETY"),
            (Value::Null, "STOP"),
        ] {
            let chat = json!({"choices": [{"message": {"content": "x"}, "finish_reason": reason}]});
            let got = chat_to_gemini_response(&chat, "m").unwrap();
            assert_eq!(got["candidates"][0]["finishReason"], want);
            assert!(got.get("usageMetadata").is_none());
        }
        let bad = json!({"choices": [{"message": {"tool_calls": [{"id": "call_z", "function": {"name": "f", "arguments": "[1"}}]}}]});
        assert!(invalid_msg(chat_to_gemini_response(&bad, "m")).contains("call_z"));
        invalid_msg(chat_to_gemini_response(
            &json!({"error": {"message": "x"}}),
            "m",
        ));
    }

    // ----- (b) chat stream → Gemini chunks -----

    #[test]
    fn chat_stream_to_gemini_reassembles_tool_calls() {
        let chunk = |delta: Value, finish: Value| json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        let upstream = vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"reasoning_content": "Plan."}), Value::Null),
            chunk(json!({"content": "Hi"}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
            json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42, "prompt_tokens_details": {"cached_tokens": 0}}}),
        ];
        let mut s = ChatToGeminiStream::new("gpt-4o");
        let mut got = Vec::new();
        for c in &upstream {
            got.extend(s.chunk(c).unwrap());
        }
        got.extend(s.finish());
        assert!(s.finish().is_empty());
        let frame = |cand: Value| json!({"candidates": [cand], "modelVersion": "gpt-4o", "responseId": "s"});
        let want = vec![
            frame(
                json!({"content": {"role": "model", "parts": [{"text": "Plan.", "thought": true}]}, "index": 0}),
            ),
            frame(json!({"content": {"role": "model", "parts": [{"text": "Hi"}]}, "index": 0})),
            frame(json!({"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]}, "index": 0})),
            json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 12, "totalTokenCount": 42},
                "modelVersion": "gpt-4o",
                "responseId": "s"
            }),
        ];
        assert_eq!(got, want);
        assert_eq!(
            s.usage(),
            Some(billing::Usage {
                cache_write: 0,
                prompt: 30,
                completion: 12,
                cached: 0
            })
        );
    }

    #[test]
    fn chat_stream_pending_calls_flush_at_finish() {
        let mut s = ChatToGeminiStream::new("m");
        let c = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{\"a\":1"}}]}, "finish_reason": null}]});
        assert!(s.chunk(&c).unwrap().is_empty());
        let c2 = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}, "finish_reason": null}]});
        assert!(s.chunk(&c2).unwrap().is_empty());
        let end = s.finish();
        assert_eq!(end.len(), 1);
        assert_eq!(
            end[0]["candidates"],
            json!([{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP", "index": 0}])
        );
        assert!(end[0].get("usageMetadata").is_none());
        assert!(end[0]["responseId"].as_str().is_some_and(|r| !r.is_empty()));
        assert_eq!(s.usage(), None);

        // Broken arguments at finish_reason are an error.
        let mut s = ChatToGeminiStream::new("m");
        let c = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_bad", "function": {"name": "f", "arguments": "{"}}]}, "finish_reason": "tool_calls"}]});
        assert!(matches!(s.chunk(&c), Err(TranslateError::Invalid(m)) if m.contains("call_bad")));

        // An empty upstream still ends with one candidate.
        let mut s = ChatToGeminiStream::new("m");
        let end = s.finish();
        assert_eq!(end[0]["candidates"][0]["finishReason"], "STOP");
    }

    // ----- round trips -----

    #[test]
    fn round_trip_chat_request_keeps_semantics() {
        let chat = json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR"}}
                ]},
                {"role": "assistant", "content": "ok", "tool_calls": [
                    {"id": "orig_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":[1,2]}"}},
                    {"id": "orig_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "orig_2", "content": "{\"r\":2}"},
                {"role": "tool", "tool_call_id": "orig_1", "content": "{\"r\":1}"},
                {"role": "user", "content": "next"}
            ],
            "max_tokens": 99,
            "temperature": 0.5,
            "stop": ["x"],
            "response_format": {"type": "json_object"},
            "reasoning_effort": "high",
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}}}],
            "tool_choice": "required"
        });
        let gemini = chat_to_gemini_request(&chat).unwrap();
        let back = gemini_to_chat_request(&gemini, "x", false).unwrap();
        let want = json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR"}}
                ]},
                {"role": "assistant", "content": "ok", "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{\"a\":[1,2]}"}},
                    {"id": "call_1", "type": "function", "function": {"name": "g", "arguments": "{}"}}
                ]},
                // Gemini matches results by name: g's result keeps g's id.
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"r\":2}"},
                {"role": "tool", "tool_call_id": "call_0", "content": "{\"r\":1}"},
                {"role": "user", "content": "next"}
            ],
            "max_tokens": 99,
            "temperature": 0.5,
            "stop": ["x"],
            "response_format": {"type": "json_object"},
            "reasoning_effort": "high",
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}}}],
            "tool_choice": "required"
        });
        assert_eq!(back, want);
    }

    #[test]
    fn round_trip_chat_response_keeps_semantics() {
        let chat = json!({
            "id": "chatcmpl-rt",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "Answer", "reasoning_content": "why",
                "tool_calls": [{"id": "call_q", "type": "function", "function": {"name": "f", "arguments": "{\"k\":\"v\"}"}}]
            }, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 2}}
        });
        let gemini = chat_to_gemini_response(&chat, "m").unwrap();
        let back = gemini_to_chat_response(&gemini, "m").unwrap();
        let choice = &back["choices"][0];
        assert_eq!(choice["message"]["content"], "Answer");
        assert_eq!(choice["message"]["reasoning_content"], "why");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"],
            json!({"name": "f", "arguments": "{\"k\":\"v\"}"})
        );
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(back["usage"]["prompt_tokens"], 8);
        assert_eq!(back["usage"]["completion_tokens"], 4);
        assert_eq!(back["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(back["id"], "chatcmpl-rt");
    }
}
