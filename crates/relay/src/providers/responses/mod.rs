//! OpenAI Responses API (`POST /v1/responses`) ⇄ Chat Completions, for
//! clients that speak Responses served by channels that speak only chat:
//! [`responses_to_chat_request`], [`chat_to_responses_response`],
//! [`ChatToResponsesStream`] and [`responses_usage`].
//!
//! What chat cannot express is refused with [`TranslateError::Unsupported`]
//! naming the feature: stored state (`previous_response_id`,
//! `conversation`, `item_reference` items, stored `prompt` templates,
//! `background`), built-in tools (web_search, file_search,
//! code_interpreter, computer_use, image_generation, mcp, …) and custom
//! tools, `tool_choice` other than the plain strings or one function,
//! `input_file` parts and images given by `file_id`, and input items other
//! than messages, function calls and their outputs.
//!
//! The deliberate exceptions, all harmless:
//! - `store: true` is ignored (nothing is stored; answers say
//!   `"store": false`), as are `metadata` (echoed back only), `include`,
//!   `truncation`, `text.verbosity`, `reasoning.summary`, `top_logprobs`,
//!   `max_tool_calls`, `service_tier`, `prompt_cache_key`,
//!   `safety_identifier` and `stream_options`.
//! - `reasoning` input items are dropped (chat cannot send them back), and
//!   so are the ids of input items.
//! - `developer` messages become `system` messages (not every
//!   OpenAI-compatible host knows `developer`); the text of system and
//!   assistant messages is joined into one string.
//! - A function call following an assistant message joins it, as do
//!   consecutive function calls: chat wants one assistant message carrying
//!   the text and all the calls of a turn.
//! - `strict` of a function tool is passed only when given (Responses
//!   defaults it to true; many hosts reject strict schemas).
//! - `tool_choice` and `parallel_tool_calls` are dropped when there are no
//!   tools (chat rejects them then).
//! - Answers: chat `reasoning_content` becomes a `reasoning` item with a
//!   summary (no encrypted content); message and function call items are
//!   always `completed`; item ids are derived from the chat completion id.
//! - Streams: a fragment of a tool call that continues after another call
//!   has started is refused with [`TranslateError::Invalid`] (its item is
//!   already done); OpenAI and most hosts send calls one after the other.

use std::collections::HashMap;
use std::fmt::Display;

use billing::Usage;
use serde_json::{Map, Value, json};

/// Shared by all translators: `Unsupported` names a feature the target
/// cannot express, `Invalid` says where the input is malformed.
pub use super::TranslateError;
use super::{
    as_object, chat_content_text, chat_reasoning, error_message, field, invalid, now, str_field,
    type_of,
};

/// A Responses feature a Chat Completions channel cannot serve.
fn unsupported(feature: impl Display) -> TranslateError {
    TranslateError::Unsupported(format!(
        "{feature} is not supported by OpenAI-compatible (Chat Completions) channels"
    ))
}

// ---------------------------------------------------------------------------
// Small JSON helpers
// ---------------------------------------------------------------------------

fn u64_field(m: &Map<String, Value>, key: &str) -> Option<u64> {
    m.get(key).and_then(Value::as_u64)
}

fn random_suffix() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Tool-call arguments as the JSON string both formats carry.
fn arguments_string(args: Option<&Value>) -> String {
    match args {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        // Some hosts send the arguments as an object already.
        Some(v) => v.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------

/// Usage of a Responses `usage` object in the gateway's terms: prompt =
/// input_tokens (cached included), cached = input_tokens_details.
/// cached_tokens, completion = output_tokens. `None` when it holds no
/// counter.
pub fn responses_usage(usage: &Value) -> Option<Usage> {
    let m = usage.as_object()?;
    let prompt = u64_field(m, "input_tokens");
    let completion = u64_field(m, "output_tokens");
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    let prompt = prompt.unwrap_or(0);
    let cached = m
        .get("input_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(Usage {
        cache_write: 0,
        prompt,
        completion: completion.unwrap_or(0),
        cached: cached.min(prompt),
    })
}

/// Reads a chat `usage` object: the usage and the reasoning tokens; `None`
/// when it holds no counter.
fn chat_usage(usage: &Value) -> Option<(Usage, u64)> {
    let m = usage.as_object()?;
    let prompt = u64_field(m, "prompt_tokens");
    let completion = u64_field(m, "completion_tokens");
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    let prompt = prompt.unwrap_or(0);
    let cached = m
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let reasoning = m
        .get("completion_tokens_details")
        .and_then(|d| d.get("reasoning_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let usage = Usage {
        cache_write: 0,
        prompt,
        completion: completion.unwrap_or(0),
        cached: cached.min(prompt),
    };
    Some((usage, reasoning))
}

/// The Responses `usage` object.
fn usage_json(u: Usage, reasoning: u64) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": u.prompt.saturating_add(u.completion),
    })
}

// ---------------------------------------------------------------------------
// Responses request → chat request
// ---------------------------------------------------------------------------

/// Text of a content part that carries text (`input_text`, `output_text`,
/// `text`), `None` for other parts.
fn part_text<'a>(p: &'a Map<String, Value>, at: &str) -> Result<Option<&'a str>, TranslateError> {
    match type_of(p) {
        "input_text" | "output_text" | "text" => str_field(p, "text")
            .map(Some)
            .ok_or_else(|| invalid(format!("{at} has no text"))),
        _ => Ok(None),
    }
}

/// A user content part as a chat content part.
fn user_part(p: &Value, at: &str) -> Result<Value, TranslateError> {
    let p = as_object(p, at)?;
    if let Some(text) = part_text(p, at)? {
        return Ok(json!({"type": "text", "text": text}));
    }
    match type_of(p) {
        "input_image" => {
            let Some(url) = str_field(p, "image_url") else {
                if field(p, "file_id").is_some() {
                    return Err(unsupported("input_image with file_id (uploaded files)"));
                }
                return Err(invalid(format!("{at} has no image_url")));
            };
            let mut image = Map::new();
            image.insert("url".into(), url.into());
            if let Some(d) = field(p, "detail") {
                image.insert("detail".into(), d.clone());
            }
            Ok(json!({"type": "image_url", "image_url": Value::Object(image)}))
        }
        "input_audio" => Ok(json!({
            "type": "input_audio",
            "input_audio": p.get("input_audio").cloned().unwrap_or(Value::Null),
        })),
        "input_file" => Err(unsupported("input_file parts")),
        "" => Err(invalid(format!("{at} has no type"))),
        other => Err(unsupported(format!("{other:?} content parts"))),
    }
}

/// The text (and refusal) of system/assistant content: a string or parts.
fn joined_text(
    content: &Value,
    at: &str,
    role: &str,
) -> Result<(String, Option<String>), TranslateError> {
    match content {
        Value::String(s) => Ok((s.clone(), None)),
        Value::Array(parts) => {
            let mut text = String::new();
            let mut refusal: Option<String> = None;
            for (j, p) in parts.iter().enumerate() {
                let pat = format!("{at}.content[{j}]");
                let p = as_object(p, &pat)?;
                if let Some(t) = part_text(p, &pat)? {
                    text.push_str(t);
                    continue;
                }
                match type_of(p) {
                    "refusal" if role == "assistant" => {
                        let r = str_field(p, "refusal").unwrap_or("");
                        refusal.get_or_insert_with(String::new).push_str(r);
                    }
                    "" => return Err(invalid(format!("{pat} has no type"))),
                    other => {
                        return Err(unsupported(format!("{other:?} parts in {role} messages")));
                    }
                }
            }
            Ok((text, refusal))
        }
        _ => Err(invalid(format!(
            "{at}.content must be a string or an array"
        ))),
    }
}

/// A `message` input item as a chat message.
fn message_to_chat(m: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    let content = m
        .get("content")
        .ok_or_else(|| invalid(format!("{at} has no content")))?;
    match str_field(m, "role").unwrap_or("") {
        "user" => {
            let content = match content {
                Value::String(s) => Value::String(s.clone()),
                Value::Array(parts) => Value::Array(
                    parts
                        .iter()
                        .enumerate()
                        .map(|(j, p)| user_part(p, &format!("{at}.content[{j}]")))
                        .collect::<Result<_, _>>()?,
                ),
                _ => {
                    return Err(invalid(format!(
                        "{at}.content must be a string or an array"
                    )));
                }
            };
            Ok(json!({"role": "user", "content": content}))
        }
        "assistant" => {
            let (text, refusal) = joined_text(content, at, "assistant")?;
            let mut msg = json!({"role": "assistant", "content": text});
            if let Some(r) = refusal {
                msg["refusal"] = r.into();
            }
            Ok(msg)
        }
        role @ ("system" | "developer") => {
            let (text, _) = joined_text(content, at, role)?;
            Ok(json!({"role": "system", "content": text}))
        }
        other => Err(invalid(format!("{at}: unknown role {other:?}"))),
    }
}

/// A `function_call` item: joins the assistant message just before it
/// (text or earlier calls of the same turn) or starts one.
fn function_call_to_chat(
    m: &Map<String, Value>,
    at: &str,
    messages: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let call_id = str_field(m, "call_id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{at} has no call_id")))?;
    let name = str_field(m, "name")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{at} has no name")))?;
    let mut arguments = arguments_string(m.get("arguments"));
    if arguments.is_empty() {
        arguments = "{}".to_owned();
    }
    let call = json!({
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    });
    if let Some(Value::Object(last)) = messages.last_mut()
        && str_field(last, "role") == Some("assistant")
    {
        if last.get("content").and_then(Value::as_str) == Some("") {
            last.insert("content".into(), Value::Null);
        }
        match last.get_mut("tool_calls") {
            Some(Value::Array(calls)) => calls.push(call),
            _ => {
                last.insert("tool_calls".into(), Value::Array(vec![call]));
            }
        }
        return Ok(());
    }
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    Ok(())
}

/// A `function_call_output` item as a chat tool message.
fn function_output_to_chat(m: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    let call_id = str_field(m, "call_id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{at} has no call_id")))?;
    let content = match m.get("output") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let pat = format!("{at}.output[{j}]");
                let p = as_object(p, &pat)?;
                match part_text(p, &pat)? {
                    Some(t) => text.push_str(t),
                    None => {
                        return Err(unsupported(format!(
                            "{:?} parts in function_call_output",
                            type_of(p)
                        )));
                    }
                }
            }
            text
        }
        None | Some(Value::Null) => return Err(invalid(format!("{at} has no output"))),
        Some(v) => v.to_string(),
    };
    Ok(json!({"role": "tool", "tool_call_id": call_id, "content": content}))
}

fn input_item(v: &Value, at: &str, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let m = as_object(v, at)?;
    let ty = match str_field(m, "type") {
        Some(t) => t,
        None if m.contains_key("role") => "message",
        None => "",
    };
    match ty {
        "message" => messages.push(message_to_chat(m, at)?),
        "function_call" => function_call_to_chat(m, at, messages)?,
        "function_call_output" => messages.push(function_output_to_chat(m, at)?),
        "reasoning" => {}
        "item_reference" => return Err(unsupported("item_reference (stored items)")),
        "" => return Err(invalid(format!("{at} has no type"))),
        other => return Err(unsupported(format!("input items of type {other:?}"))),
    }
    Ok(())
}

/// A Responses tool as a chat tool; only function tools exist in chat.
fn tool_to_chat(t: &Value, at: &str) -> Result<Value, TranslateError> {
    let t = as_object(t, at)?;
    match type_of(t) {
        "function" => {}
        "" => return Err(invalid(format!("{at} has no type"))),
        other => return Err(unsupported(format!("the {other:?} tool"))),
    }
    let name = str_field(t, "name")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{at} has no name")))?;
    let mut f = Map::new();
    f.insert("name".into(), name.into());
    for key in ["description", "parameters", "strict"] {
        if let Some(v) = field(t, key) {
            f.insert(key.into(), v.clone());
        }
    }
    Ok(json!({"type": "function", "function": Value::Object(f)}))
}

fn tool_choice_to_chat(tc: &Value) -> Result<Value, TranslateError> {
    match tc {
        Value::String(s) => match s.as_str() {
            "auto" | "none" | "required" => Ok(tc.clone()),
            other => Err(invalid(format!("tool_choice: unknown value {other:?}"))),
        },
        Value::Object(m) => match type_of(m) {
            "function" => {
                let name = str_field(m, "name")
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| invalid("tool_choice has no name"))?;
                Ok(json!({"type": "function", "function": {"name": name}}))
            }
            "" => Err(invalid("tool_choice has no type")),
            other => Err(unsupported(format!("tool_choice of type {other:?}"))),
        },
        _ => Err(invalid("tool_choice must be a string or an object")),
    }
}

/// `text.format` as a chat `response_format`; `None` for plain text.
fn format_to_chat(format: &Value) -> Result<Option<Value>, TranslateError> {
    let f = as_object(format, "text.format")?;
    match type_of(f) {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "json_object"}))),
        "json_schema" => {
            let name = str_field(f, "name")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("text.format has no name"))?;
            let mut schema = Map::new();
            schema.insert("name".into(), name.into());
            for key in ["description", "schema", "strict"] {
                if let Some(v) = field(f, key) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(
                json!({"type": "json_schema", "json_schema": Value::Object(schema)}),
            ))
        }
        "" => Err(invalid("text.format has no type")),
        other => Err(invalid(format!("text.format: unknown type {other:?}"))),
    }
}

/// A Responses request as a chat completions request for
/// `upstream_model`. For a stream, asks for the usage chunk.
pub fn responses_to_chat_request(
    req: &Value,
    upstream_model: &str,
) -> Result<Value, TranslateError> {
    let r = as_object(req, "the request body")?;
    if field(r, "previous_response_id").is_some() {
        return Err(unsupported("previous_response_id (stored conversations)"));
    }
    if field(r, "conversation").is_some() {
        return Err(unsupported("conversation (stored conversations)"));
    }
    if field(r, "prompt").is_some() {
        return Err(unsupported("prompt (stored prompt templates)"));
    }
    if field(r, "background") == Some(&Value::Bool(true)) {
        return Err(unsupported("background mode"));
    }
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());

    let mut messages = Vec::new();
    match field(r, "instructions") {
        Some(Value::String(s)) if !s.is_empty() => {
            messages.push(json!({"role": "system", "content": s}));
        }
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(invalid("instructions must be a string")),
    }
    match field(r, "input") {
        None => {}
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, &format!("input[{i}]"), &mut messages)?;
            }
        }
        Some(_) => return Err(invalid("input must be a string or an array")),
    }
    if messages.is_empty() {
        return Err(invalid("input is missing or empty"));
    }
    out.insert("messages".into(), Value::Array(messages));

    let tools: Vec<Value> = match field(r, "tools") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, t)| tool_to_chat(t, &format!("tools[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("tools must be an array")),
    };
    let choice = field(r, "tool_choice")
        .map(tool_choice_to_chat)
        .transpose()?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(c) = choice {
            out.insert("tool_choice".into(), c);
        }
        if let Some(p) = field(r, "parallel_tool_calls") {
            out.insert("parallel_tool_calls".into(), p.clone());
        }
    }
    if let Some(v) = field(r, "max_output_tokens") {
        out.insert("max_completion_tokens".into(), v.clone());
    }
    for key in ["temperature", "top_p", "user"] {
        if let Some(v) = field(r, key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(effort) = field(r, "reasoning")
        .and_then(|x| x.get("effort"))
        .and_then(Value::as_str)
    {
        out.insert("reasoning_effort".into(), effort.into());
    }
    if let Some(format) = field(r, "text").and_then(|t| t.get("format"))
        && !format.is_null()
        && let Some(rf) = format_to_chat(format)?
    {
        out.insert("response_format".into(), rf);
    }
    if field(r, "stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------
// Chat response → Responses response
// ---------------------------------------------------------------------------

/// The id base of a chat completion id (without `chatcmpl-`), random when
/// there is none.
fn id_base(chat_id: Option<&str>) -> String {
    match chat_id.filter(|s| !s.is_empty()) {
        Some(id) => id.strip_prefix("chatcmpl-").unwrap_or(id).to_owned(),
        None => random_suffix(),
    }
}

fn item_id(prefix: &str, base: &str, output_index: usize) -> String {
    format!("{prefix}_{base}_{output_index}")
}

/// The request fields a response echoes back.
fn echo(request: &Value) -> Map<String, Value> {
    let empty = Map::new();
    let r = request.as_object().unwrap_or(&empty);
    let or = |key: &str, default: Value| field(r, key).cloned().unwrap_or(default);
    let reasoning = field(r, "reasoning").and_then(Value::as_object);
    let pick = |key: &str| {
        reasoning
            .and_then(|x| field(x, key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let format = field(r, "text")
        .and_then(|t| t.get("format"))
        .filter(|f| f.is_object())
        .cloned()
        .unwrap_or_else(|| json!({"type": "text"}));
    let mut m = Map::new();
    m.insert("instructions".into(), or("instructions", Value::Null));
    m.insert(
        "max_output_tokens".into(),
        or("max_output_tokens", Value::Null),
    );
    m.insert("metadata".into(), or("metadata", json!({})));
    m.insert(
        "parallel_tool_calls".into(),
        or("parallel_tool_calls", true.into()),
    );
    m.insert("previous_response_id".into(), Value::Null);
    m.insert(
        "reasoning".into(),
        json!({"effort": pick("effort"), "summary": pick("summary")}),
    );
    m.insert("store".into(), false.into());
    m.insert("temperature".into(), or("temperature", Value::Null));
    m.insert("text".into(), json!({"format": format}));
    m.insert("tool_choice".into(), or("tool_choice", "auto".into()));
    m.insert("tools".into(), or("tools", json!([])));
    m.insert("top_p".into(), or("top_p", Value::Null));
    m.insert("truncation".into(), or("truncation", "disabled".into()));
    m.insert("user".into(), or("user", Value::Null));
    m
}

/// Status and `incomplete_details.reason` for a chat finish reason.
fn status_of(finish: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

struct Shell<'a> {
    echo: &'a Map<String, Value>,
    id: &'a str,
    created_at: u64,
    model: &'a str,
}

impl Shell<'_> {
    fn response(
        &self,
        status: &str,
        incomplete: Option<&str>,
        output: Vec<Value>,
        usage: Value,
    ) -> Value {
        let mut m = self.echo.clone();
        m.insert("id".into(), self.id.into());
        m.insert("object".into(), "response".into());
        m.insert("created_at".into(), self.created_at.into());
        m.insert("status".into(), status.into());
        m.insert("error".into(), Value::Null);
        m.insert(
            "incomplete_details".into(),
            incomplete.map_or(Value::Null, |r| json!({"reason": r})),
        );
        m.insert("model".into(), self.model.into());
        m.insert("output".into(), Value::Array(output));
        m.insert("usage".into(), usage);
        Value::Object(m)
    }
}

fn reasoning_item(id: &str, text: &str) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    json!({"type": "reasoning", "id": id, "summary": summary})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": content,
    })
}

fn call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PartKind {
    Text,
    Refusal,
}

fn part_json(kind: PartKind, text: &str) -> Value {
    match kind {
        PartKind::Text => json!({"type": "output_text", "text": text, "annotations": []}),
        PartKind::Refusal => json!({"type": "refusal", "refusal": text}),
    }
}

/// A chat completion as a Responses response object, `model` set to the
/// model the client asked for and the request's settings echoed.
pub fn chat_to_responses_response(
    chat: &Value,
    request: &Value,
    request_model: &str,
) -> Result<Value, TranslateError> {
    let c = as_object(chat, "the chat completion")?;
    if let Some(err) = field(c, "error") {
        return Err(invalid(error_message(err)));
    }
    let choice = c
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("the chat completion has no choices"))?;
    let message = choice
        .get("message")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("choices[0] has no message"))?;
    let base = id_base(str_field(c, "id"));
    let mut output = Vec::new();
    if let Some(r) = chat_reasoning(message) {
        output.push(reasoning_item(&item_id("rs", &base, output.len()), r));
    }
    let mut parts = Vec::new();
    let text = chat_content_text(message.get("content"));
    if !text.is_empty() {
        parts.push(part_json(PartKind::Text, &text));
    }
    if let Some(r) = str_field(message, "refusal").filter(|s| !s.is_empty()) {
        parts.push(part_json(PartKind::Refusal, r));
    }
    if !parts.is_empty() {
        output.push(message_item(
            &item_id("msg", &base, output.len()),
            "completed",
            parts,
        ));
    }
    if let Some(calls) = field(message, "tool_calls").and_then(Value::as_array) {
        for (j, call) in calls.iter().enumerate() {
            let call = as_object(call, &format!("tool_calls[{j}]"))?;
            let call_id = str_field(call, "id")
                .filter(|s| !s.is_empty())
                .map_or_else(|| format!("call_{}", random_suffix()), str::to_owned);
            let func = call
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(format!("tool call {call_id:?} has no function")))?;
            let name = str_field(func, "name").unwrap_or("");
            let arguments = arguments_string(func.get("arguments"));
            output.push(call_item(
                &item_id("fc", &base, output.len()),
                "completed",
                &call_id,
                name,
                &arguments,
            ));
        }
    }
    let (status, incomplete) = status_of(str_field(choice, "finish_reason"));
    let usage = c
        .get("usage")
        .and_then(chat_usage)
        .map_or(Value::Null, |(u, r)| usage_json(u, r));
    let echo = echo(request);
    let shell = Shell {
        echo: &echo,
        id: &format!("resp_{base}"),
        created_at: u64_field(c, "created").unwrap_or_else(now),
        model: request_model,
    };
    Ok(shell.response(status, incomplete, output, usage))
}

// ---------------------------------------------------------------------------
// Chat stream → Responses stream
// ---------------------------------------------------------------------------

type Event = (&'static str, Value);

enum Kind {
    Reasoning(String),
    Message(Vec<(PartKind, String)>),
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

struct Item {
    id: String,
    kind: Kind,
}

impl Item {
    fn json(&self, status: &str) -> Value {
        match &self.kind {
            Kind::Reasoning(text) => reasoning_item(&self.id, text),
            Kind::Message(parts) => message_item(
                &self.id,
                status,
                parts.iter().map(|(k, t)| part_json(*k, t)).collect(),
            ),
            Kind::Call {
                call_id,
                name,
                arguments,
            } => call_item(&self.id, status, call_id, name, arguments),
        }
    }
}

/// Turns chat.completion.chunk objects into Responses stream events.
pub struct ChatToResponsesStream {
    echo: Map<String, Value>,
    model: String,
    base: String,
    created_at: u64,
    started: bool,
    finished: bool,
    seq: u64,
    /// Output items in order; only the last one can be open.
    items: Vec<Item>,
    open: bool,
    /// Chat tool index → output index.
    tools: HashMap<u64, usize>,
    /// Chat tool index of the call opened last.
    last_tool: Option<u64>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    reasoning_tokens: u64,
}

impl ChatToResponsesStream {
    pub fn new(request: &Value, request_model: &str) -> Self {
        Self {
            echo: echo(request),
            model: request_model.to_owned(),
            base: String::new(),
            created_at: 0,
            started: false,
            finished: false,
            seq: 0,
            items: Vec::new(),
            open: false,
            tools: HashMap::new(),
            last_tool: None,
            finish_reason: None,
            usage: None,
            reasoning_tokens: 0,
        }
    }

    fn emit(&mut self, out: &mut Vec<Event>, ty: &'static str, data: Value) {
        let mut m = match data {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        m.insert("type".into(), ty.into());
        m.insert("sequence_number".into(), self.seq.into());
        self.seq += 1;
        out.push((ty, Value::Object(m)));
    }

    fn response(&self, status: &str, incomplete: Option<&str>, done: bool) -> Value {
        let id = format!("resp_{}", self.base);
        let shell = Shell {
            echo: &self.echo,
            id: &id,
            created_at: self.created_at,
            model: &self.model,
        };
        let (output, usage) = if done {
            (
                self.items.iter().map(|i| i.json("completed")).collect(),
                self.usage
                    .map_or(Value::Null, |u| usage_json(u, self.reasoning_tokens)),
            )
        } else {
            (Vec::new(), Value::Null)
        };
        shell.response(status, incomplete, output, usage)
    }

    fn start(&mut self, chat_id: Option<&str>, created: Option<u64>, out: &mut Vec<Event>) {
        self.started = true;
        self.base = id_base(chat_id);
        self.created_at = created.unwrap_or_else(now);
        let response = self.response("in_progress", None, false);
        self.emit(
            out,
            "response.created",
            json!({"response": response.clone()}),
        );
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    /// Ends the last content part of the last item when it is a message.
    fn close_part(&mut self, out: &mut Vec<Event>) {
        let index = self.items.len().saturating_sub(1);
        let Some(Item {
            id,
            kind: Kind::Message(parts),
        }) = self.items.last()
        else {
            return;
        };
        let Some((kind, text)) = parts.last() else {
            return;
        };
        let (id, kind, text, ci) = (id.clone(), *kind, text.clone(), parts.len() - 1);
        let (ty, key) = match kind {
            PartKind::Text => ("response.output_text.done", "text"),
            PartKind::Refusal => ("response.refusal.done", "refusal"),
        };
        let mut done = json!({"item_id": id, "output_index": index, "content_index": ci});
        done[key] = text.clone().into();
        if kind == PartKind::Text {
            done["logprobs"] = json!([]);
        }
        self.emit(out, ty, done);
        self.emit(
            out,
            "response.content_part.done",
            json!({
                "item_id": id,
                "output_index": index,
                "content_index": ci,
                "part": part_json(kind, &text),
            }),
        );
    }

    /// Closes the open item, if any.
    fn close(&mut self, out: &mut Vec<Event>) {
        if !self.open {
            return;
        }
        self.open = false;
        let index = self.items.len().saturating_sub(1);
        let Some(item) = self.items.last() else {
            return;
        };
        let id = item.id.clone();
        let full = item.json("completed");
        match &item.kind {
            Kind::Reasoning(text) => {
                let text = text.clone();
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}),
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.done",
                    json!({
                        "item_id": id,
                        "output_index": index,
                        "summary_index": 0,
                        "part": {"type": "summary_text", "text": text},
                    }),
                );
            }
            Kind::Message(_) => self.close_part(out),
            Kind::Call {
                name, arguments, ..
            } => {
                let data = json!({
                    "item_id": id,
                    "output_index": index,
                    "name": name,
                    "arguments": arguments,
                });
                self.emit(out, "response.function_call_arguments.done", data);
            }
        }
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": full}),
        );
    }

    /// Opens a new item (closing the open one); returns its output index.
    fn open_item(&mut self, prefix: &str, kind: Kind, out: &mut Vec<Event>) -> usize {
        self.close(out);
        let index = self.items.len();
        let item = Item {
            id: item_id(prefix, &self.base, index),
            kind,
        };
        let added = item.json("in_progress");
        let id = item.id.clone();
        let reasoning = matches!(item.kind, Kind::Reasoning(_));
        self.items.push(item);
        self.open = true;
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        if reasoning {
            self.emit(
                out,
                "response.reasoning_summary_part.added",
                json!({
                    "item_id": id,
                    "output_index": index,
                    "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                }),
            );
        }
        index
    }

    /// The output index of the open item when `want` matches it.
    fn open_index(&self, want: fn(&Kind) -> bool) -> Option<usize> {
        let last = self.items.last()?;
        (self.open && want(&last.kind)).then(|| self.items.len() - 1)
    }

    fn reasoning(&mut self, text: &str, out: &mut Vec<Event>) {
        let index = match self.open_index(|k| matches!(k, Kind::Reasoning(_))) {
            Some(i) => i,
            None => self.open_item("rs", Kind::Reasoning(String::new()), out),
        };
        let Some(item) = self.items.get_mut(index) else {
            return;
        };
        if let Kind::Reasoning(all) = &mut item.kind {
            all.push_str(text);
        }
        let id = item.id.clone();
        self.emit(
            out,
            "response.reasoning_summary_text.delta",
            json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": text}),
        );
    }

    fn text(&mut self, kind: PartKind, text: &str, out: &mut Vec<Event>) {
        let index = match self.open_index(|k| matches!(k, Kind::Message(_))) {
            Some(i) => i,
            None => self.open_item("msg", Kind::Message(Vec::new()), out),
        };
        let last_kind = match self.items.get(index).map(|i| &i.kind) {
            Some(Kind::Message(parts)) => parts.last().map(|p| p.0),
            _ => return,
        };
        if last_kind != Some(kind) {
            self.close_part(out);
            let Some(Item {
                id,
                kind: Kind::Message(parts),
            }) = self.items.get_mut(index)
            else {
                return;
            };
            parts.push((kind, String::new()));
            let data = json!({
                "item_id": id.clone(),
                "output_index": index,
                "content_index": parts.len() - 1,
                "part": part_json(kind, ""),
            });
            self.emit(out, "response.content_part.added", data);
        }
        let Some(Item {
            id,
            kind: Kind::Message(parts),
        }) = self.items.get_mut(index)
        else {
            return;
        };
        let ci = parts.len().saturating_sub(1);
        if let Some(p) = parts.last_mut() {
            p.1.push_str(text);
        }
        let mut data = json!({
            "item_id": id.clone(),
            "output_index": index,
            "content_index": ci,
            "delta": text,
        });
        let ty = match kind {
            PartKind::Text => {
                data["logprobs"] = json!([]);
                "response.output_text.delta"
            }
            PartKind::Refusal => "response.refusal.delta",
        };
        self.emit(out, ty, data);
    }

    fn tool_fragment(
        &mut self,
        call: &Map<String, Value>,
        position: usize,
        out: &mut Vec<Event>,
    ) -> Result<(), TranslateError> {
        let func = call.get("function").and_then(Value::as_object);
        let id = str_field(call, "id").filter(|s| !s.is_empty());
        // Hosts that omit `index` send each call whole: a new id is a new call.
        let index = match u64_field(call, "index") {
            Some(i) => i,
            None => match id {
                Some(id) => self
                    .tools
                    .iter()
                    .find(|&(_, &out_index)| {
                        matches!(
                            self.items.get(out_index).map(|i| &i.kind),
                            Some(Kind::Call { call_id, .. }) if call_id == id
                        )
                    })
                    .map_or(self.tools.len() as u64, |(&chat, _)| chat),
                None => self.last_tool.unwrap_or(position as u64),
            },
        };
        let args = func
            .and_then(|f| str_field(f, "arguments"))
            .filter(|s| !s.is_empty());
        let out_index = match self.tools.get(&index) {
            Some(&i) => {
                if args.is_none() {
                    return Ok(());
                }
                if !(self.open && i + 1 == self.items.len()) {
                    return Err(invalid(format!(
                        "tool call {index} continues after another output item started"
                    )));
                }
                i
            }
            None => {
                let name = func
                    .and_then(|f| str_field(f, "name"))
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| invalid(format!("tool call {index} starts without a name")))?;
                let call_id = id.map_or_else(|| format!("call_{}", random_suffix()), str::to_owned);
                let kind = Kind::Call {
                    call_id,
                    name: name.to_owned(),
                    arguments: String::new(),
                };
                let i = self.open_item("fc", kind, out);
                self.tools.insert(index, i);
                self.last_tool = Some(index);
                i
            }
        };
        let Some(args) = args else {
            return Ok(());
        };
        let Some(item) = self.items.get_mut(out_index) else {
            return Ok(());
        };
        if let Kind::Call { arguments, .. } = &mut item.kind {
            arguments.push_str(args);
        }
        let id = item.id.clone();
        self.emit(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": out_index, "delta": args}),
        );
        Ok(())
    }

    /// One upstream chat.completion.chunk (parsed). Returns Responses
    /// events as (event type, data) to emit as
    /// `event: TYPE\ndata: JSON\n\n`; the first call also emits
    /// `response.created` and `response.in_progress`.
    pub fn chunk(&mut self, chunk: &Value) -> Result<Vec<Event>, TranslateError> {
        let c = as_object(chunk, "the stream chunk")?;
        if let Some(err) = field(c, "error") {
            return Err(invalid(error_message(err)));
        }
        let mut out = Vec::new();
        if let Some((u, r)) = c.get("usage").and_then(chat_usage) {
            self.usage = Some(u);
            self.reasoning_tokens = r;
        }
        if !self.started {
            self.start(str_field(c, "id"), u64_field(c, "created"), &mut out);
        }
        let choice = c
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .find(|ch| u64_field(ch, "index").unwrap_or(0) == 0);
        let Some(choice) = choice else {
            return Ok(out);
        };
        if let Some(delta) = choice.get("delta").and_then(Value::as_object) {
            if let Some(r) = chat_reasoning(delta) {
                self.reasoning(r, &mut out);
            }
            let text = chat_content_text(delta.get("content"));
            if !text.is_empty() {
                self.text(PartKind::Text, &text, &mut out);
            }
            if let Some(r) = str_field(delta, "refusal").filter(|s| !s.is_empty()) {
                self.text(PartKind::Refusal, r, &mut out);
            }
            if let Some(calls) = field(delta, "tool_calls").and_then(Value::as_array) {
                for (pos, call) in calls.iter().enumerate() {
                    let call = as_object(call, "delta.tool_calls[]")?;
                    self.tool_fragment(call, pos, &mut out)?;
                }
            }
        }
        if let Some(f) = str_field(choice, "finish_reason") {
            self.finish_reason = Some(f.to_owned());
        }
        Ok(out)
    }

    /// Upstream sent [DONE] or ended: closes the open item, then
    /// `response.completed` (or `response.incomplete`) with the whole
    /// response. Later calls return nothing.
    pub fn finish(&mut self) -> Vec<Event> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut out = Vec::new();
        if !self.started {
            self.start(None, None, &mut out);
        }
        self.close(&mut out);
        let (status, incomplete) = status_of(self.finish_reason.as_deref());
        let response = self.response(status, incomplete, true);
        let ty = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(&mut out, ty, json!({"response": response}));
        out
    }

    /// From the upstream's usage chunk; `None` if it sent none.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &str = "gpt-up";
    const MODEL: &str = "gpt-client";

    fn req(v: Value) -> Value {
        responses_to_chat_request(&v, UP).unwrap()
    }

    fn unsupported_msg<T: std::fmt::Debug>(r: Result<T, TranslateError>) -> String {
        match r {
            Err(TranslateError::Unsupported(m)) => m,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    fn invalid_msg<T: std::fmt::Debug>(r: Result<T, TranslateError>) -> String {
        match r {
            Err(TranslateError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn with_input(input: Value) -> Value {
        json!({"model": MODEL, "input": input})
    }

    // ---------------------------------------------------------------
    // Request
    // ---------------------------------------------------------------

    #[test]
    fn snapshot_request_text_and_function_round_trip() {
        let r = json!({
            "model": MODEL,
            "instructions": "Be terse.",
            "input": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather",
                 "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "weather",
                 "arguments": "{\"city\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_b", "output": "rain"},
                {"role": "user", "content": [
                    {"type": "input_text", "text": "And this?"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}
                ]}
            ],
            "tools": [{"type": "function", "name": "weather", "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": true}],
            "tool_choice": {"type": "function", "name": "weather"},
            "parallel_tool_calls": false,
            "max_output_tokens": 300, "temperature": 0.3, "top_p": 0.8, "user": "u-1",
            "metadata": {"k": "v"}, "store": true, "stream": true,
            "reasoning": {"effort": "low", "summary": "auto"}
        });
        let expected = json!({
            "model": UP,
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
                ]}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": false,
            "max_completion_tokens": 300, "temperature": 0.3, "top_p": 0.8, "user": "u-1",
            "reasoning_effort": "low",
            "stream": true, "stream_options": {"include_usage": true}
        });
        assert_eq!(req(r), expected);
    }

    #[test]
    fn snapshot_request_json_schema() {
        let r = json!({
            "model": MODEL,
            "input": "List two colors.",
            "text": {"format": {"type": "json_schema", "name": "colors", "strict": true,
                "schema": {"type": "object", "properties": {"c": {"type": "array"}}}},
                "verbosity": "low"}
        });
        let expected = json!({
            "model": UP,
            "messages": [{"role": "user", "content": "List two colors."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "colors", "strict": true,
                "schema": {"type": "object", "properties": {"c": {"type": "array"}}}}}
        });
        assert_eq!(req(r), expected);
    }

    #[test]
    fn string_input_is_one_user_message_without_stream() {
        let out = req(json!({"model": MODEL, "input": "hi", "stream": false}));
        assert_eq!(
            out,
            json!({"model": UP, "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn text_formats() {
        let f = |format: Value| {
            req(json!({"input": "x", "text": {"format": format}}))
                .get("response_format")
                .cloned()
        };
        assert_eq!(
            f(json!({"type": "json_object"})),
            Some(json!({"type": "json_object"}))
        );
        assert_eq!(f(json!({"type": "text"})), None);
        let bad = responses_to_chat_request(
            &json!({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}),
            UP,
        );
        assert!(invalid_msg(bad).contains("name"));
    }

    #[test]
    fn tool_choice_strings_pass_and_need_tools() {
        let tools = json!([{"type": "function", "name": "f"}]);
        for s in ["auto", "none", "required"] {
            let out = req(json!({"input": "x", "tools": tools, "tool_choice": s}));
            assert_eq!(out["tool_choice"], json!(s));
            assert_eq!(
                out["tools"],
                json!([{"type": "function", "function": {"name": "f"}}])
            );
        }
        let out =
            req(json!({"input": "x", "tool_choice": "required", "parallel_tool_calls": true}));
        assert!(out.get("tool_choice").is_none() && out.get("parallel_tool_calls").is_none());
        let bad = responses_to_chat_request(
            &json!({"input": "x", "tools": tools, "tool_choice": "sometimes"}),
            UP,
        );
        assert!(invalid_msg(bad).contains("sometimes"));
    }

    #[test]
    fn tool_choice_objects_other_than_function_are_unsupported() {
        let tools = json!([{"type": "function", "name": "f"}]);
        for ty in ["allowed_tools", "web_search_preview", "mcp"] {
            let r = json!({"input": "x", "tools": tools, "tool_choice": {"type": ty}});
            assert!(unsupported_msg(responses_to_chat_request(&r, UP)).contains(ty));
        }
    }

    #[test]
    fn built_in_tools_are_unsupported_by_type() {
        for ty in [
            "web_search",
            "web_search_preview",
            "file_search",
            "code_interpreter",
            "computer_use_preview",
            "image_generation",
            "mcp",
            "custom",
        ] {
            let r = json!({"input": "x", "tools": [{"type": ty}]});
            let m = unsupported_msg(responses_to_chat_request(&r, UP));
            assert!(m.contains(ty), "{m}");
        }
    }

    #[test]
    fn stored_state_is_unsupported() {
        let m = unsupported_msg(responses_to_chat_request(
            &json!({"input": "x", "previous_response_id": "resp_1"}),
            UP,
        ));
        assert!(
            m.contains("previous_response_id (stored conversations)"),
            "{m}"
        );
        let m = unsupported_msg(responses_to_chat_request(
            &with_input(json!([{"type": "item_reference", "id": "msg_1"}])),
            UP,
        ));
        assert!(m.contains("item_reference"));
        let m = unsupported_msg(responses_to_chat_request(
            &json!({"input": "x", "conversation": "conv_1"}),
            UP,
        ));
        assert!(m.contains("conversation"));
        // store: true alone is fine.
        req(json!({"input": "x", "store": true}));
    }

    #[test]
    fn files_are_unsupported() {
        let m = unsupported_msg(responses_to_chat_request(
            &with_input(json!([{"role": "user", "content": [
                {"type": "input_file", "file_id": "file-1"}]}])),
            UP,
        ));
        assert!(m.contains("input_file"));
        let m = unsupported_msg(responses_to_chat_request(
            &with_input(json!([{"role": "user", "content": [
                {"type": "input_image", "file_id": "file-1"}]}])),
            UP,
        ));
        assert!(m.contains("file_id"));
        let m = unsupported_msg(responses_to_chat_request(
            &with_input(json!([{"type": "web_search_call", "id": "ws_1"}])),
            UP,
        ));
        assert!(m.contains("web_search_call"));
    }

    #[test]
    fn developer_becomes_system_and_outputs_join() {
        let out = req(with_input(json!([
            {"role": "developer", "content": [{"type": "input_text", "text": "a"},
                                              {"type": "input_text", "text": "b"}]},
            {"role": "system", "content": "s"},
            {"type": "function_call", "call_id": "c1", "name": "f"},
            {"type": "function_call_output", "call_id": "c1",
             "output": [{"type": "input_text", "text": "o1"}, {"type": "input_text", "text": "o2"}]}
        ])));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "system", "content": "ab"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "o1o2"}
            ])
        );
    }

    #[test]
    fn function_call_after_user_starts_an_assistant_message() {
        let out = req(with_input(json!([
            {"role": "user", "content": "u"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"}
        ])));
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[1]["tool_calls"][0]["id"], "c1");
        assert_eq!(msgs[3]["role"], "assistant");
        assert_eq!(msgs[3]["tool_calls"][0]["id"], "c2");
    }

    #[test]
    fn assistant_refusal_part_becomes_refusal() {
        let out = req(with_input(json!([
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        ])));
        assert_eq!(
            out["messages"][1],
            json!({"role": "assistant", "content": "", "refusal": "no"})
        );
    }

    #[test]
    fn malformed_requests_are_invalid() {
        let bad = |v: Value| invalid_msg(responses_to_chat_request(&v, UP));
        assert!(bad(json!({"model": MODEL})).contains("input"));
        assert!(bad(json!({"input": 5})).contains("input"));
        assert!(bad(json!({"input": "x", "instructions": 3})).contains("instructions"));
        assert!(
            bad(with_input(json!([{"type": "function_call", "name": "f"}]))).contains("call_id")
        );
        assert!(
            bad(with_input(
                json!([{"type": "function_call_output", "call_id": "c"}])
            ))
            .contains("output")
        );
        assert!(bad(with_input(json!([{"role": "robot", "content": "x"}]))).contains("robot"));
        assert!(bad(with_input(json!([{"content": "x"}]))).contains("type"));
        assert!(bad(json!({"input": "x", "tools": [{"type": "function"}]})).contains("name"));
        assert!(bad(json!([1])).contains("object"));
    }

    // ---------------------------------------------------------------
    // Response
    // ---------------------------------------------------------------

    fn completion(message: Value, finish: &str) -> Value {
        json!({
            "id": "chatcmpl-abc", "object": "chat.completion", "created": 1_700_000_000,
            "model": UP,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30,
                      "prompt_tokens_details": {"cached_tokens": 5},
                      "completion_tokens_details": {"reasoning_tokens": 4}}
        })
    }

    fn usage_snapshot() -> Value {
        json!({"input_tokens": 20, "input_tokens_details": {"cached_tokens": 5},
               "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 4},
               "total_tokens": 30})
    }

    fn default_echo() -> Value {
        json!({
            "instructions": null, "max_output_tokens": null, "metadata": {},
            "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "store": false,
            "temperature": null, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": null, "truncation": "disabled",
            "user": null
        })
    }

    fn merged(base: Value, extra: Value) -> Value {
        let mut v = base;
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn snapshot_response_text_and_function_call() {
        let request = json!({
            "model": MODEL, "input": "x", "instructions": "Be terse.",
            "tools": [{"type": "function", "name": "weather"}], "tool_choice": "required",
            "temperature": 0.3, "max_output_tokens": 300, "metadata": {"k": "v"}
        });
        let chat = completion(
            json!({"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
            "tool_calls",
        );
        let expected = merged(
            default_echo(),
            json!({
                "id": "resp_abc", "object": "response", "created_at": 1_700_000_000,
                "status": "completed", "error": null, "incomplete_details": null, "model": MODEL,
                "output": [
                    {"type": "message", "id": "msg_abc_0", "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
                    {"type": "function_call", "id": "fc_abc_1", "call_id": "call_a", "name": "weather",
                     "arguments": "{\"city\":\"Paris\"}", "status": "completed"}
                ],
                "usage": usage_snapshot(),
                "instructions": "Be terse.", "tools": [{"type": "function", "name": "weather"}],
                "tool_choice": "required", "temperature": 0.3, "max_output_tokens": 300,
                "metadata": {"k": "v"}
            }),
        );
        assert_eq!(
            chat_to_responses_response(&chat, &request, MODEL).unwrap(),
            expected
        );
    }

    #[test]
    fn snapshot_response_reasoning() {
        let request = json!({"model": MODEL, "input": "x", "reasoning": {"effort": "high"},
            "text": {"format": {"type": "json_object"}}});
        let chat = completion(
            json!({"role": "assistant", "content": "{\"a\":1}", "reasoning_content": "Think."}),
            "stop",
        );
        let expected = merged(
            default_echo(),
            json!({
                "id": "resp_abc", "object": "response", "created_at": 1_700_000_000,
                "status": "completed", "error": null, "incomplete_details": null, "model": MODEL,
                "output": [
                    {"type": "reasoning", "id": "rs_abc_0",
                     "summary": [{"type": "summary_text", "text": "Think."}]},
                    {"type": "message", "id": "msg_abc_1", "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": "{\"a\":1}", "annotations": []}]}
                ],
                "usage": usage_snapshot(),
                "reasoning": {"effort": "high", "summary": null},
                "text": {"format": {"type": "json_object"}}
            }),
        );
        assert_eq!(
            chat_to_responses_response(&chat, &request, MODEL).unwrap(),
            expected
        );
    }

    #[test]
    fn response_incomplete_reasons() {
        let msg = json!({"role": "assistant", "content": "cut"});
        let r = chat_to_responses_response(&completion(msg.clone(), "length"), &json!({}), MODEL)
            .unwrap();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(
            r["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        let r = chat_to_responses_response(&completion(msg, "content_filter"), &json!({}), MODEL)
            .unwrap();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"], json!({"reason": "content_filter"}));
    }

    #[test]
    fn response_refusal_and_missing_usage() {
        let mut chat = completion(
            json!({"role": "assistant", "content": null, "refusal": "I can't."}),
            "stop",
        );
        chat.as_object_mut().unwrap().remove("usage");
        chat.as_object_mut().unwrap().remove("id");
        let r = chat_to_responses_response(&chat, &json!({}), MODEL).unwrap();
        assert_eq!(
            r["output"][0]["content"],
            json!([{"type": "refusal", "refusal": "I can't."}])
        );
        assert!(r["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(r["usage"], Value::Null);
    }

    #[test]
    fn response_errors() {
        let e =
            chat_to_responses_response(&json!({"error": {"message": "boom"}}), &json!({}), MODEL);
        assert_eq!(invalid_msg(e), "boom");
        let e = chat_to_responses_response(&json!({"choices": []}), &json!({}), MODEL);
        assert!(invalid_msg(e).contains("choices"));
    }

    #[test]
    fn responses_usage_maps() {
        let u = responses_usage(&usage_snapshot()).unwrap();
        assert_eq!((u.prompt, u.completion, u.cached), (20, 10, 5));
        assert!(responses_usage(&json!({})).is_none());
        assert!(responses_usage(&Value::Null).is_none());
        let u = responses_usage(&json!({"output_tokens": 3})).unwrap();
        assert_eq!((u.prompt, u.completion, u.cached), (0, 3, 0));
    }

    // ---------------------------------------------------------------
    // Stream
    // ---------------------------------------------------------------

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1_700_000_001,
               "model": UP, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    fn usage_chunk() -> Value {
        json!({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1_700_000_001,
               "model": UP, "choices": [],
               "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30,
                         "prompt_tokens_details": {"cached_tokens": 5},
                         "completion_tokens_details": {"reasoning_tokens": 4}}})
    }

    fn run(s: &mut ChatToResponsesStream, chunks: &[Value]) -> Vec<Event> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.chunk(c).unwrap());
        }
        out.extend(s.finish());
        // Every event: type matches the name, sequence numbers count from 0.
        for (i, (name, data)) in out.iter().enumerate() {
            assert_eq!(data["type"], *name);
            assert_eq!(data["sequence_number"], i as u64);
        }
        out
    }

    fn names(events: &[Event]) -> Vec<&'static str> {
        events.iter().map(|e| e.0).collect()
    }

    fn find<'a>(events: &'a [Event], name: &str) -> Vec<&'a Value> {
        events
            .iter()
            .filter(|e| e.0 == name)
            .map(|e| &e.1)
            .collect()
    }

    #[test]
    fn stream_text_only() {
        let mut s = ChatToResponsesStream::new(&json!({"model": MODEL, "input": "x"}), MODEL);
        let events = run(
            &mut s,
            &[
                chunk(json!({"role": "assistant", "content": ""}), None),
                chunk(json!({"content": "Hel"}), None),
                chunk(json!({"content": "lo"}), None),
                chunk(json!({}), Some("stop")),
                usage_chunk(),
            ],
        );
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let created = &events[0].1["response"];
        assert_eq!(created["status"], "in_progress");
        assert_eq!(created["output"], json!([]));
        assert_eq!(created["id"], "resp_s1");
        assert_eq!(created["created_at"], 1_700_000_001);
        assert_eq!(
            events[2].1["item"],
            json!({"type": "message", "id": "msg_s1_0", "status": "in_progress",
                   "role": "assistant", "content": []})
        );
        assert_eq!(
            events[3].1["part"],
            json!({"type": "output_text", "text": "", "annotations": []})
        );
        let d = &events[4].1;
        assert_eq!(
            (
                &d["item_id"],
                &d["output_index"],
                &d["content_index"],
                &d["delta"]
            ),
            (&json!("msg_s1_0"), &json!(0), &json!(0), &json!("Hel"))
        );
        assert_eq!(events[6].1["text"], "Hello");
        assert_eq!(events[7].1["part"]["text"], "Hello");
        assert_eq!(events[8].1["item"]["status"], "completed");
        let done = &events[9].1["response"];
        assert_eq!(
            *done,
            merged(
                default_echo(),
                json!({
                    "id": "resp_s1", "object": "response", "created_at": 1_700_000_001,
                    "status": "completed", "error": null, "incomplete_details": null,
                    "model": MODEL,
                    "output": [{"type": "message", "id": "msg_s1_0", "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}],
                    "usage": usage_snapshot()
                })
            )
        );
        let u = s.usage().unwrap();
        assert_eq!((u.prompt, u.completion, u.cached), (20, 10, 5));
        assert!(s.finish().is_empty());
    }

    #[test]
    fn stream_two_tool_calls() {
        let tc = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
            let mut f = json!({"arguments": args});
            if let Some(n) = name {
                f["name"] = n.into();
            }
            let mut call = json!({"index": index, "type": "function", "function": f});
            if let Some(id) = id {
                call["id"] = id.into();
            }
            chunk(json!({"tool_calls": [call]}), None)
        };
        let mut s = ChatToResponsesStream::new(&json!({}), MODEL);
        let events = run(
            &mut s,
            &[
                chunk(json!({"role": "assistant", "content": null}), None),
                tc(0, Some("call_a"), Some("weather"), ""),
                tc(0, None, None, "{\"city\":"),
                tc(0, None, None, "\"Paris\"}"),
                tc(1, Some("call_b"), Some("time"), "{\"tz\""),
                tc(1, None, None, ":\"CET\"}"),
                chunk(json!({}), Some("tool_calls")),
                usage_chunk(),
            ],
        );
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let added = find(&events, "response.output_item.added");
        assert_eq!(added[0]["output_index"], 0);
        assert_eq!(
            added[0]["item"],
            json!({"type": "function_call", "id": "fc_s1_0", "call_id": "call_a",
                   "name": "weather", "arguments": "", "status": "in_progress"})
        );
        assert_eq!(added[1]["output_index"], 1);
        assert_eq!(added[1]["item"]["call_id"], "call_b");
        let args_done = find(&events, "response.function_call_arguments.done");
        assert_eq!(args_done[0]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(args_done[0]["output_index"], 0);
        assert_eq!(args_done[1]["arguments"], "{\"tz\":\"CET\"}");
        assert_eq!(args_done[1]["item_id"], "fc_s1_1");
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(
            done["output"],
            json!([
                {"type": "function_call", "id": "fc_s1_0", "call_id": "call_a", "name": "weather",
                 "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
                {"type": "function_call", "id": "fc_s1_1", "call_id": "call_b", "name": "time",
                 "arguments": "{\"tz\":\"CET\"}", "status": "completed"}
            ])
        );
    }

    #[test]
    fn stream_length_is_incomplete() {
        let mut s = ChatToResponsesStream::new(&json!({"max_output_tokens": 5}), MODEL);
        let events = run(
            &mut s,
            &[
                chunk(json!({"content": "abc"}), Some("length")),
                usage_chunk(),
            ],
        );
        let (name, data) = events.last().unwrap();
        assert_eq!(*name, "response.incomplete");
        assert_eq!(data["response"]["status"], "incomplete");
        assert_eq!(
            data["response"]["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(data["response"]["max_output_tokens"], 5);
        assert_eq!(data["response"]["usage"], usage_snapshot());
        assert!(find(&events, "response.completed").is_empty());
    }

    #[test]
    fn stream_reasoning_then_text_then_call() {
        let mut s = ChatToResponsesStream::new(&json!({}), MODEL);
        let events = run(
            &mut s,
            &[
                chunk(json!({"reasoning_content": "Th"}), None),
                chunk(json!({"reasoning_content": "ink"}), None),
                chunk(json!({"content": "Ok."}), None),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                        "function": {"name": "f", "arguments": "{}"}}]}),
                    Some("tool_calls"),
                ),
            ],
        );
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(events[6].1["text"], "Think");
        let done = &events.last().unwrap().1["response"];
        let output = done["output"].as_array().unwrap();
        assert_eq!(
            output[0],
            json!({"type": "reasoning", "id": "rs_s1_0",
                   "summary": [{"type": "summary_text", "text": "Think"}]})
        );
        assert_eq!(output[1]["type"], "message");
        assert_eq!(output[2]["type"], "function_call");
        assert_eq!(output[2]["id"], "fc_s1_2");
        assert_eq!(done["usage"], Value::Null);
        assert!(s.usage().is_none());
    }

    #[test]
    fn stream_refusal_part() {
        let mut s = ChatToResponsesStream::new(&json!({}), MODEL);
        let events = run(&mut s, &[chunk(json!({"refusal": "No."}), Some("stop"))]);
        assert!(names(&events).contains(&"response.refusal.delta"));
        assert_eq!(find(&events, "response.refusal.done")[0]["refusal"], "No.");
        let done = &events.last().unwrap().1["response"];
        assert_eq!(
            done["output"][0]["content"],
            json!([{"type": "refusal", "refusal": "No."}])
        );
    }

    #[test]
    fn stream_empty_and_errors() {
        let mut s = ChatToResponsesStream::new(&json!({}), MODEL);
        let events = run(&mut s, &[]);
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.completed"
            ]
        );
        assert_eq!(events[2].1["response"]["output"], json!([]));

        let mut s = ChatToResponsesStream::new(&json!({}), MODEL);
        assert_eq!(
            invalid_msg(s.chunk(&json!({"error": {"message": "overloaded"}}))),
            "overloaded"
        );

        // A fragment of a call after the next call started.
        let mut s = ChatToResponsesStream::new(&json!({}), MODEL);
        let call = |i: u64, name: &str| {
            chunk(
                json!({"tool_calls": [{"index": i, "id": format!("c{i}"), "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                None,
            )
        };
        s.chunk(&call(0, "f")).unwrap();
        s.chunk(&call(1, "g")).unwrap();
        let late = chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            None,
        );
        assert!(invalid_msg(s.chunk(&late)).contains("tool call 0"));
        let nameless = chunk(
            json!({"tool_calls": [{"index": 5, "function": {"arguments": "{}"}}]}),
            None,
        );
        assert!(invalid_msg(s.chunk(&nameless)).contains("without a name"));
    }
}
