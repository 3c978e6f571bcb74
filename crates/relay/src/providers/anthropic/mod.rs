//! OpenAI Chat Completions ⇄ Anthropic Messages, both directions, streams
//! included. Everything here is pure: JSON in, JSON out.
//!
//! (a) An OpenAI-SDK client served by an Anthropic channel:
//! [`chat_to_anthropic_request`], [`anthropic_to_chat_response`],
//! [`AnthropicToChatStream`].
//!
//! (b) An Anthropic-SDK client (`POST /v1/messages`) served by an
//! OpenAI-compatible channel: [`anthropic_to_chat_request`],
//! [`chat_to_anthropic_response`], [`ChatToAnthropicStream`].
//!
//! What cannot be expressed on the other side is refused with
//! [`TranslateError::Unsupported`] naming the feature, never silently
//! changed. The deliberate exceptions, all harmless:
//! - chat → Anthropic: OpenAI-only top-level fields (`seed`, `store`,
//!   `frequency_penalty`, `stream_options`, `metadata`, …) are dropped
//!   (`top_k`, not an OpenAI field, is passed);
//!   empty text is dropped (Anthropic rejects empty text blocks) and a
//!   message left without content is dropped; consecutive messages of one
//!   role are merged (Anthropic requires alternation); inside a user turn
//!   the `tool_result` blocks are moved before other content (Anthropic
//!   requires it); `reasoning_content` of earlier assistant messages is
//!   dropped (Anthropic needs signed thinking blocks).
//! - Anthropic → chat: `thinking`/`redacted_thinking` blocks of earlier
//!   assistant turns are dropped (chat has no way to send them back);
//!   `cache_control` is dropped (chat has none); several text blocks of one
//!   message are joined with `"\n"` into one string (many OpenAI-compatible
//!   hosts accept only string content for text); `top_k` is passed through
//!   as is (many OpenAI-compatible hosts accept it). In answers, chat
//!   `reasoning_content` becomes a leading `thinking` block with an empty
//!   `signature` (there is no signature to give).
//! - `temperature` is passed through unchanged in both directions, although
//!   Anthropic accepts only 0..=1 (and only 1 with thinking): the upstream
//!   answers such a request with its own error message.

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

/// A chat feature an Anthropic channel cannot serve.
fn no_anthropic(feature: impl Display) -> TranslateError {
    TranslateError::Unsupported(format!("{feature} is not supported by Anthropic channels"))
}

/// An Anthropic feature an OpenAI-compatible channel cannot serve.
fn no_chat(feature: impl Display) -> TranslateError {
    TranslateError::Unsupported(format!(
        "{feature} is not supported by OpenAI-compatible channels"
    ))
}

// ---------------------------------------------------------------------------
// Small JSON helpers
// ---------------------------------------------------------------------------

fn u64_field(m: &Map<String, Value>, key: &str) -> Option<u64> {
    m.get(key).and_then(Value::as_u64)
}

fn random_id(prefix: &str) -> String {
    use rand::Rng;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

/// Parses tool-call arguments: a JSON object, or empty for "no arguments".
fn parse_arguments(args: Option<&Value>, id: &str) -> Result<Value, TranslateError> {
    let text = match args {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::String(s)) => s.as_str(),
        // Some clients send the arguments as an object already.
        Some(v @ Value::Object(_)) => return Ok(v.clone()),
        Some(_) => {
            return Err(invalid(format!(
                "the arguments of tool call {id:?} must be a JSON string"
            )));
        }
    };
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid(format!(
            "the arguments of tool call {id:?} must be a JSON object"
        ))),
        Err(e) => Err(invalid(format!(
            "the arguments of tool call {id:?} are not valid JSON: {e}"
        ))),
    }
}

// ---------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------

/// Anthropic's usage counters, as last reported.
#[derive(Clone, Copy, Debug, Default)]
struct AnthropicCounts {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    output: u64,
}

impl AnthropicCounts {
    /// Takes the counters present in `usage`; true when there was any.
    fn update(&mut self, usage: &Value) -> bool {
        let Some(m) = usage.as_object() else {
            return false;
        };
        let mut any = false;
        for (key, slot) in [
            ("input_tokens", &mut self.input),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("output_tokens", &mut self.output),
        ] {
            if let Some(n) = u64_field(m, key) {
                *slot = n;
                any = true;
            }
        }
        any
    }

    fn usage(self) -> Usage {
        Usage {
            cache_write: self.cache_creation,
            prompt: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_creation),
            completion: self.output,
            cached: self.cache_read,
        }
    }
}

/// Usage of an Anthropic response/usage object in the gateway's terms:
/// prompt = input_tokens + cache_read_input_tokens +
/// cache_creation_input_tokens, cached = cache_read_input_tokens,
/// completion = output_tokens, cache_write = cache_creation_input_tokens
/// (billed at the cache-write price). `None` when it holds no counter.
pub fn anthropic_usage(usage: &Value) -> Option<Usage> {
    let mut c = AnthropicCounts::default();
    c.update(usage).then(|| c.usage())
}

/// The chat `usage` object.
fn chat_usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt.saturating_add(u.completion),
        "prompt_tokens_details": {"cached_tokens": u.cached},
    })
}

/// Reads a chat `usage` object; `None` when it holds no counter.
fn chat_usage(usage: &Value) -> Option<Usage> {
    let m = usage.as_object()?;
    let prompt = u64_field(m, "prompt_tokens");
    let completion = u64_field(m, "completion_tokens");
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    let cached = m
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let prompt = prompt.unwrap_or(0);
    Some(Usage {
        cache_write: 0,
        prompt,
        completion: completion.unwrap_or(0),
        cached: cached.min(prompt),
    })
}

/// The Anthropic `usage` object for gateway usage.
fn anthropic_usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt.saturating_sub(u.cached),
        "output_tokens": u.completion,
        "cache_read_input_tokens": u.cached,
        "cache_creation_input_tokens": 0,
    })
}

// ---------------------------------------------------------------------------
// Stop reasons
// ---------------------------------------------------------------------------

fn stop_reason_to_finish(reason: &str) -> &'static str {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

fn finish_to_stop_reason(reason: &str) -> &'static str {
    match reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Anthropic error body `{"type":"error","error":{"type":T,"message":M}}`
/// for an HTTP status.
pub fn anthropic_error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

// ===========================================================================
// (a) OpenAI client → Anthropic channel
// ===========================================================================

/// Thinking budgets for `reasoning_effort`.
const BUDGET_LOW: u64 = 1024;
const BUDGET_MEDIUM: u64 = 4096;
const BUDGET_HIGH: u64 = 16384;
const BUDGET_XHIGH: u64 = 32768;

/// One Anthropic message being built.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
    /// Exactly one source message, whose content was a plain string.
    plain: bool,
}

fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>, plain: bool) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => {
            last.blocks.extend(blocks);
            last.plain = false;
        }
        _ => turns.push(Turn {
            role,
            blocks,
            plain,
        }),
    }
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// Text of a system/developer/tool message: a string or text parts.
fn chat_text_parts(content: Option<&Value>, at: &str) -> Result<Vec<String>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let p = as_object(p, &format!("{at}.content[{j}]"))?;
                match (type_of(p), str_field(p, "text")) {
                    ("text", Some(t)) => Ok(t.to_owned()),
                    ("text", None) => Err(invalid(format!("{at}.content[{j}] has no text"))),
                    (other, _) => Err(invalid(format!(
                        "{at}.content[{j}]: only text parts are allowed here, not {other:?}"
                    ))),
                }
            })
            .collect(),
        Some(_) => Err(invalid(format!(
            "{at}.content must be a string or an array of parts"
        ))),
    }
}

/// An `image_url` part as an Anthropic image block.
fn image_block(part: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    let url = match part.get("image_url") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => {
            str_field(o, "url").ok_or_else(|| invalid(format!("{at}.image_url has no url")))?
        }
        _ => return Err(invalid(format!("{at} has no image_url"))),
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| invalid(format!("{at}: the data URL has no data")))?;
        let media_type = meta
            .strip_suffix(";base64")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "{at}: an image data URL must be data:MIME;base64,DATA"
                ))
            })?;
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
    } else {
        Err(invalid(format!(
            "{at}: the image URL must be http(s) or a base64 data URL"
        )))
    }
}

/// Content blocks of a user message.
fn user_blocks(content: Option<&Value>, at: &str) -> Result<(Vec<Value>, bool), TranslateError> {
    match content {
        None | Some(Value::Null) => Ok((Vec::new(), false)),
        Some(Value::String(s)) if s.is_empty() => Ok((Vec::new(), false)),
        Some(Value::String(s)) => Ok((vec![text_block(s)], true)),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let at = format!("{at}.content[{j}]");
                let p = as_object(p, &at)?;
                match type_of(p) {
                    "text" => {
                        let t = str_field(p, "text")
                            .ok_or_else(|| invalid(format!("{at} has no text")))?;
                        if !t.is_empty() {
                            blocks.push(text_block(t));
                        }
                    }
                    "image_url" => blocks.push(image_block(p, &at)?),
                    "input_audio" => return Err(no_anthropic("audio input (input_audio parts)")),
                    "file" => return Err(no_anthropic("file input (file parts)")),
                    other => {
                        return Err(invalid(format!(
                            "{at}: unknown content part type {other:?}"
                        )));
                    }
                }
            }
            Ok((blocks, false))
        }
        Some(_) => Err(invalid(format!(
            "{at}.content must be a string or an array of parts"
        ))),
    }
}

/// Content blocks of an assistant message.
fn assistant_blocks(msg: &Map<String, Value>, at: &str) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    match field(msg, "content") {
        Some(Value::String(s)) if !s.is_empty() => blocks.push(text_block(s)),
        None | Some(Value::String(_)) => {}
        Some(Value::Array(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                let p = as_object(p, &format!("{at}.content[{j}]"))?;
                let key = match type_of(p) {
                    "text" => "text",
                    "refusal" => "refusal",
                    other => {
                        return Err(invalid(format!(
                            "{at}.content[{j}]: unknown assistant content part type {other:?}"
                        )));
                    }
                };
                let t = str_field(p, key)
                    .ok_or_else(|| invalid(format!("{at}.content[{j}] has no {key}")))?;
                if !t.is_empty() {
                    blocks.push(text_block(t));
                }
            }
        }
        Some(_) => {
            return Err(invalid(format!(
                "{at}.content must be a string or an array of parts"
            )));
        }
    }
    if field(msg, "function_call").is_some() {
        return Err(no_anthropic(
            "the legacy assistant function_call (use tool_calls)",
        ));
    }
    if field(msg, "audio").is_some() {
        return Err(no_anthropic("assistant audio"));
    }
    if let Some(calls) = field(msg, "tool_calls") {
        let calls = calls
            .as_array()
            .ok_or_else(|| invalid(format!("{at}.tool_calls must be an array")))?;
        for (j, call) in calls.iter().enumerate() {
            let call = as_object(call, &format!("{at}.tool_calls[{j}]"))?;
            let kind = str_field(call, "type").unwrap_or("function");
            if kind != "function" {
                return Err(no_anthropic(format!("tool calls of type {kind:?}")));
            }
            let id = str_field(call, "id")
                .ok_or_else(|| invalid(format!("{at}.tool_calls[{j}] has no id")))?;
            let func = call
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(format!("tool call {id:?} has no function")))?;
            let name = str_field(func, "name")
                .ok_or_else(|| invalid(format!("tool call {id:?} has no function name")))?;
            let input = parse_arguments(func.get("arguments"), id)?;
            blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok(blocks)
}

fn tool_to_anthropic(tool: &Value, at: &str) -> Result<Value, TranslateError> {
    let tool = as_object(tool, at)?;
    let kind = type_of(tool);
    if kind != "function" {
        return Err(no_anthropic(format!("tools of type {kind:?}")));
    }
    let func = tool
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(format!("{at} has no function")))?;
    let name = str_field(func, "name").ok_or_else(|| invalid(format!("{at} has no name")))?;
    let mut out = Map::new();
    out.insert("name".into(), name.into());
    if let Some(d) = field(func, "description") {
        out.insert("description".into(), d.clone());
    }
    let schema = field(func, "parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}

fn tool_choice_to_anthropic(choice: &Value) -> Result<Map<String, Value>, TranslateError> {
    let kind = match choice {
        Value::String(s) => match s.as_str() {
            "auto" => "auto",
            "required" => "any",
            "none" => "none",
            other => return Err(invalid(format!("tool_choice: unknown value {other:?}"))),
        },
        Value::Object(o) => {
            let kind = type_of(o);
            if kind != "function" {
                return Err(no_anthropic(format!("tool_choice of type {kind:?}")));
            }
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.function has no name"))?;
            let mut m = Map::new();
            m.insert("type".into(), "tool".into());
            m.insert("name".into(), name.into());
            return Ok(m);
        }
        _ => return Err(invalid("tool_choice must be a string or an object")),
    };
    let mut m = Map::new();
    m.insert("type".into(), kind.into());
    Ok(m)
}

/// Chat fields an Anthropic channel cannot serve.
fn reject_chat_only_features(req: &Map<String, Value>) -> Result<(), TranslateError> {
    if let Some(n) = field(req, "n") {
        match n.as_u64() {
            Some(0 | 1) => {}
            Some(_) => return Err(no_anthropic("n > 1")),
            None => return Err(invalid("n must be a positive integer")),
        }
    }
    if matches!(field(req, "logprobs"), Some(v) if v != &Value::Bool(false)) {
        return Err(no_anthropic("logprobs"));
    }
    if field(req, "top_logprobs").is_some() {
        return Err(no_anthropic("top_logprobs"));
    }
    if let Some(rf) = field(req, "response_format") {
        let kind = rf.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "text" {
            return Err(no_anthropic(format!("response_format {kind:?}")));
        }
    }
    if field(req, "audio").is_some()
        || field(req, "modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|x| x.as_str() == Some("audio")))
    {
        return Err(no_anthropic("audio output"));
    }
    if field(req, "functions").is_some() || field(req, "function_call").is_some() {
        return Err(no_anthropic(
            "the legacy functions/function_call (use tools)",
        ));
    }
    Ok(())
}

/// A chat completions request as an Anthropic Messages request for
/// `upstream_model`. `default_max_tokens` is used when the request sets no
/// limit (Anthropic requires one).
pub fn chat_to_anthropic_request(
    chat: &Value,
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Value, TranslateError> {
    let req = as_object(chat, "the request body")?;
    reject_chat_only_features(req)?;
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());

    let mut max_tokens =
        match field(req, "max_completion_tokens").or_else(|| field(req, "max_tokens")) {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| invalid("max_tokens must be a non-negative integer"))?,
            None => default_max_tokens,
        };
    if let Some(effort) = field(req, "reasoning_effort") {
        let budget = match effort.as_str() {
            Some("none") => None,
            Some("minimal" | "low") => Some(BUDGET_LOW),
            Some("medium") => Some(BUDGET_MEDIUM),
            Some("high") => Some(BUDGET_HIGH),
            Some("xhigh") => Some(BUDGET_XHIGH),
            _ => return Err(invalid(format!("reasoning_effort: unknown value {effort}"))),
        };
        if let Some(budget) = budget {
            // Anthropic requires max_tokens > budget_tokens; the thinking
            // comes on top of the answer the client asked room for.
            if max_tokens <= budget {
                max_tokens = budget.saturating_add(max_tokens.max(1));
            }
            out.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": budget}),
            );
        }
    }
    out.insert("max_tokens".into(), max_tokens.into());

    // Messages.
    let messages = field(req, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages must be an array"))?;
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let msg = as_object(m, &at)?;
        match str_field(msg, "role").unwrap_or("") {
            "system" | "developer" => {
                for t in chat_text_parts(msg.get("content"), &at)? {
                    if !t.is_empty() {
                        system.push(text_block(&t));
                    }
                }
            }
            "user" => {
                let (blocks, plain) = user_blocks(msg.get("content"), &at)?;
                push_turn(&mut turns, "user", blocks, plain);
            }
            "assistant" => {
                let blocks = assistant_blocks(msg, &at)?;
                push_turn(&mut turns, "assistant", blocks, false);
            }
            "tool" => {
                let id = str_field(msg, "tool_call_id")
                    .ok_or_else(|| invalid(format!("{at} has no tool_call_id")))?;
                let mut block = Map::new();
                block.insert("type".into(), "tool_result".into());
                block.insert("tool_use_id".into(), id.into());
                match msg.get("content") {
                    Some(Value::String(s)) => {
                        if !s.is_empty() {
                            block.insert("content".into(), s.as_str().into());
                        }
                    }
                    other => {
                        let parts: Vec<Value> = chat_text_parts(other, &at)?
                            .iter()
                            .filter(|t| !t.is_empty())
                            .map(|t| text_block(t))
                            .collect();
                        if !parts.is_empty() {
                            block.insert("content".into(), Value::Array(parts));
                        }
                    }
                }
                push_turn(&mut turns, "user", vec![Value::Object(block)], false);
            }
            "function" => {
                return Err(no_anthropic("legacy function messages (use tools)"));
            }
            other => return Err(invalid(format!("{at}: unknown role {other:?}"))),
        }
    }
    match turns.first() {
        None => return Err(invalid("messages must contain at least one user message")),
        Some(t) if t.role != "user" => {
            return Err(invalid(
                "the first message (after system messages) must be from the user",
            ));
        }
        Some(_) => {}
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|mut t| {
            if t.role == "user" {
                // Anthropic wants tool results first in their user message.
                t.blocks
                    .sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
            }
            let content = match (t.plain, t.blocks.as_slice()) {
                (true, [only]) => only.get("text").cloned().unwrap_or(Value::Null),
                _ => Value::Array(t.blocks),
            };
            json!({"role": t.role, "content": content})
        })
        .collect();
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));

    // `top_k` is no OpenAI field, but hosts (and our Anthropic → chat
    // direction) use it; Anthropic has it.
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = field(req, key) {
            out.insert(key.into(), v.clone());
        }
    }
    match field(req, "stop") {
        None => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && !a.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err(invalid("stop must be a string or an array of strings")),
    }
    if let Some(v) = field(req, "stream") {
        let s = v
            .as_bool()
            .ok_or_else(|| invalid("stream must be a boolean"))?;
        out.insert("stream".into(), s.into());
    }
    if let Some(u) = field(req, "user") {
        let u = u.as_str().ok_or_else(|| invalid("user must be a string"))?;
        out.insert("metadata".into(), json!({"user_id": u}));
    }

    // Tools.
    let tools: Vec<Value> = match field(req, "tools") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, t)| tool_to_anthropic(t, &format!("tools[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("tools must be an array")),
    };
    if !tools.is_empty() {
        let mut choice = field(req, "tool_choice")
            .map(tool_choice_to_anthropic)
            .transpose()?;
        if field(req, "parallel_tool_calls") == Some(&Value::Bool(false)) {
            let c = choice.get_or_insert_with(|| {
                let mut m = Map::new();
                m.insert("type".into(), "auto".into());
                m
            });
            if type_of(c) != "none" {
                c.insert("disable_parallel_tool_use".into(), true.into());
            }
        }
        out.insert("tools".into(), Value::Array(tools));
        if let Some(c) = choice {
            out.insert("tool_choice".into(), Value::Object(c));
        }
    } else if let Some(c) = field(req, "tool_choice") {
        // Without tools only "none"/"auto" make sense, and mean nothing.
        tool_choice_to_anthropic(c)?;
    }
    Ok(Value::Object(out))
}

/// An Anthropic Messages response as a chat completion, `model` set to the
/// model the client asked for.
pub fn anthropic_to_chat_response(
    resp: &Value,
    request_model: &str,
) -> Result<Value, TranslateError> {
    let r = as_object(resp, "the Anthropic response")?;
    if type_of(r) == "error" {
        return Err(invalid(error_message(r.get("error").unwrap_or(resp))));
    }
    let blocks = r
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the Anthropic response has no content array"))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let b = as_object(b, &format!("content[{i}]"))?;
        match type_of(b) {
            "text" => text.push_str(str_field(b, "text").unwrap_or("")),
            "thinking" => reasoning.push_str(str_field(b, "thinking").unwrap_or("")),
            "tool_use" => {
                let id = str_field(b, "id").unwrap_or("");
                let name = str_field(b, "name").unwrap_or("");
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            // redacted_thinking, server tool blocks: nothing to show.
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), reasoning.into());
    }
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let finish = str_field(r, "stop_reason").map(stop_reason_to_finish);
    let mut out = json!({
        "id": str_field(r, "id").map_or_else(|| random_id("chatcmpl-"), str::to_owned),
        "object": "chat.completion",
        "created": now(),
        "model": request_model,
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish,
        }],
    });
    if let (Some(u), Some(o)) = (
        r.get("usage").and_then(anthropic_usage),
        out.as_object_mut(),
    ) {
        o.insert("usage".into(), chat_usage_json(u));
    }
    Ok(out)
}

/// Turns an Anthropic event stream into chat.completion.chunk objects.
pub struct AnthropicToChatStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Anthropic block index → our tool call index.
    tool_blocks: HashMap<u64, usize>,
    tool_count: usize,
    counts: AnthropicCounts,
    saw_usage: bool,
    finished: bool,
}

impl AnthropicToChatStream {
    pub fn new(request_model: &str, include_usage: bool) -> Self {
        Self {
            id: random_id("chatcmpl-"),
            created: now(),
            model: request_model.to_owned(),
            include_usage,
            tool_blocks: HashMap::new(),
            tool_count: 0,
            counts: AnthropicCounts::default(),
            saw_usage: false,
            finished: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage
            && let Some(m) = c.as_object_mut()
        {
            m.insert("usage".into(), Value::Null);
        }
        c
    }

    fn tool_delta(&self, tool_index: usize, call: Value) -> Value {
        let mut call = call;
        if let Some(m) = call.as_object_mut() {
            m.insert("index".into(), tool_index.into());
        }
        self.chunk(json!({"tool_calls": [call]}), None)
    }

    /// One upstream SSE event (its `event:` name and parsed `data`).
    /// Returns the chat.completion.chunk objects to emit (each becomes one
    /// `data: …` line; the caller writes `data: [DONE]` after `finish()`).
    /// An `error` event is returned as `Err` with its message.
    pub fn event(&mut self, name: &str, data: &Value) -> Result<Vec<Value>, TranslateError> {
        // The event name is repeated in data.type; trust either.
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .unwrap_or(name);
        let mut out = Vec::new();
        match kind {
            "message_start" => {
                let msg = data.get("message");
                if let Some(id) = msg.and_then(|m| m.get("id")).and_then(Value::as_str) {
                    self.id = id.to_owned();
                }
                if let Some(u) = msg.and_then(|m| m.get("usage")) {
                    self.saw_usage |= self.counts.update(u);
                }
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            "content_block_start" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = data
                    .get("content_block")
                    .and_then(Value::as_object)
                    .ok_or_else(|| invalid("content_block_start without content_block"))?;
                match type_of(block) {
                    "text" => {
                        if let Some(t) = str_field(block, "text").filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"content": t}), None));
                        }
                    }
                    "thinking" => {
                        if let Some(t) = str_field(block, "thinking").filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"reasoning_content": t}), None));
                        }
                    }
                    "tool_use" => {
                        let n = self.tool_count;
                        self.tool_count += 1;
                        self.tool_blocks.insert(index, n);
                        let arguments = match block.get("input") {
                            Some(Value::Object(m)) if !m.is_empty() => {
                                Value::Object(m.clone()).to_string()
                            }
                            _ => String::new(),
                        };
                        out.push(self.tool_delta(
                            n,
                            json!({
                                "id": str_field(block, "id").unwrap_or(""),
                                "type": "function",
                                "function": {
                                    "name": str_field(block, "name").unwrap_or(""),
                                    "arguments": arguments,
                                },
                            }),
                        ));
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = data
                    .get("delta")
                    .and_then(Value::as_object)
                    .ok_or_else(|| invalid("content_block_delta without delta"))?;
                match type_of(delta) {
                    "text_delta" => {
                        if let Some(t) = str_field(delta, "text").filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"content": t}), None));
                        }
                    }
                    "thinking_delta" => {
                        if let Some(t) = str_field(delta, "thinking").filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"reasoning_content": t}), None));
                        }
                    }
                    "input_json_delta" => {
                        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let n = *self.tool_blocks.get(&index).ok_or_else(|| {
                            invalid(format!(
                                "input_json_delta for content block {index}, which is not a tool_use block"
                            ))
                        })?;
                        if let Some(p) = str_field(delta, "partial_json").filter(|p| !p.is_empty())
                        {
                            out.push(self.tool_delta(n, json!({"function": {"arguments": p}})));
                        }
                    }
                    // signature_delta, citations_delta, …
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = data.get("usage") {
                    self.saw_usage |= self.counts.update(u);
                }
                let finish = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                    .map(stop_reason_to_finish);
                if let Some(f) = finish {
                    out.push(self.chunk(json!({}), Some(f)));
                }
            }
            "error" => {
                return Err(invalid(error_message(data.get("error").unwrap_or(data))));
            }
            // message_stop, content_block_stop, ping, and future events.
            _ => {}
        }
        Ok(out)
    }

    /// End of the upstream stream: the usage chunk
    /// `{"choices":[], "usage":{…}}` when include_usage and the upstream
    /// reported usage. Later calls return nothing.
    pub fn finish(&mut self) -> Vec<Value> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        match self.usage() {
            Some(u) if self.include_usage => vec![json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": chat_usage_json(u),
            })],
            _ => Vec::new(),
        }
    }

    /// From message_start + message_delta; `None` if the upstream sent none.
    pub fn usage(&self) -> Option<Usage> {
        self.saw_usage.then(|| self.counts.usage())
    }
}

// ===========================================================================
// (b) Anthropic client → OpenAI-compatible channel
// ===========================================================================

/// Text of Anthropic content: a string, or text blocks joined with "\n".
/// Other block types are refused, named by `what`.
fn anthropic_text(content: Option<&Value>, at: &str, what: &str) -> Result<String, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                let b = as_object(b, &format!("{at}[{j}]"))?;
                match type_of(b) {
                    "text" => texts.push(str_field(b, "text").unwrap_or("")),
                    "image" => return Err(no_chat(format!("images in {what}"))),
                    "document" => return Err(no_chat("document blocks (PDF)")),
                    other => return Err(no_chat(format!("{other:?} blocks in {what}"))),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(invalid(format!(
            "{at} must be a string or an array of blocks"
        ))),
    }
}

/// An Anthropic image block as a chat `image_url` part.
fn image_part(block: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    let src = block
        .get("source")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(format!("{at} has no source")))?;
    let url = match type_of(src) {
        "base64" => {
            let mt = str_field(src, "media_type")
                .ok_or_else(|| invalid(format!("{at}.source has no media_type")))?;
            let data = str_field(src, "data")
                .ok_or_else(|| invalid(format!("{at}.source has no data")))?;
            format!("data:{mt};base64,{data}")
        }
        "url" => str_field(src, "url")
            .ok_or_else(|| invalid(format!("{at}.source has no url")))?
            .to_owned(),
        other => return Err(no_chat(format!("image sources of type {other:?}"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Appends the chat messages of one Anthropic user message.
fn user_to_chat(content: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(invalid(format!(
                "{at}.content must be a string or an array"
            )));
        }
    };
    let mut parts: Vec<Value> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        let b = as_object(b, &bat)?;
        match type_of(b) {
            "text" => {
                parts.push(json!({"type": "text", "text": str_field(b, "text").unwrap_or("")}))
            }
            "image" => parts.push(image_part(b, &bat)?),
            "tool_result" => {
                let id = str_field(b, "tool_use_id")
                    .ok_or_else(|| invalid(format!("{bat} has no tool_use_id")))?;
                let text =
                    anthropic_text(b.get("content"), &format!("{bat}.content"), "tool results")?;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            "document" => return Err(no_chat("document blocks (PDF)")),
            other => return Err(no_chat(format!("{other:?} blocks in user messages"))),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let all_text = parts
        .iter()
        .all(|p| p.get("type").and_then(Value::as_str) == Some("text"));
    let content = if all_text {
        let texts: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        Value::String(texts.join("\n"))
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

/// The chat message of one Anthropic assistant message (`None` when it
/// holds nothing chat can carry, e.g. only thinking).
fn assistant_to_chat(content: &Value, at: &str) -> Result<Option<Value>, TranslateError> {
    let blocks = match content {
        Value::String(s) => return Ok(Some(json!({"role": "assistant", "content": s}))),
        Value::Array(b) => b,
        _ => {
            return Err(invalid(format!(
                "{at}.content must be a string or an array"
            )));
        }
    };
    let mut texts: Vec<&str> = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        let b = as_object(b, &bat)?;
        match type_of(b) {
            "text" => texts.push(str_field(b, "text").unwrap_or("")),
            "tool_use" => {
                let id = str_field(b, "id").ok_or_else(|| invalid(format!("{bat} has no id")))?;
                let name =
                    str_field(b, "name").ok_or_else(|| invalid(format!("{bat} has no name")))?;
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            // Signed reasoning of earlier turns: chat cannot carry it.
            "thinking" | "redacted_thinking" => {}
            other => return Err(no_chat(format!("{other:?} blocks in assistant messages"))),
        }
    }
    if texts.is_empty() && calls.is_empty() {
        return Ok(None);
    }
    let mut m = Map::new();
    m.insert("role".into(), "assistant".into());
    m.insert(
        "content".into(),
        if texts.is_empty() {
            Value::Null
        } else {
            texts.join("\n").into()
        },
    );
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Some(Value::Object(m)))
}

fn tool_to_chat(tool: &Value, at: &str) -> Result<Value, TranslateError> {
    let t = as_object(tool, at)?;
    match str_field(t, "type") {
        None | Some("custom") => {}
        Some(other) => return Err(no_chat(format!("Anthropic-defined tools ({other:?})"))),
    }
    let name = str_field(t, "name").ok_or_else(|| invalid(format!("{at} has no name")))?;
    let mut f = Map::new();
    f.insert("name".into(), name.into());
    if let Some(d) = field(t, "description") {
        f.insert("description".into(), d.clone());
    }
    f.insert(
        "parameters".into(),
        field(t, "input_schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    );
    Ok(json!({"type": "function", "function": Value::Object(f)}))
}

/// An Anthropic Messages request as a chat completions request for
/// `upstream_model`. For a stream, asks for the usage chunk.
pub fn anthropic_to_chat_request(
    msg: &Value,
    upstream_model: &str,
) -> Result<Value, TranslateError> {
    let req = as_object(msg, "the request body")?;
    if field(req, "mcp_servers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(no_chat("mcp_servers"));
    }
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());

    let mut messages = Vec::new();
    if let Some(system) = field(req, "system") {
        let text = anthropic_text(Some(system), "system", "the system prompt")?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let input = field(req, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages must be an array"))?;
    for (i, m) in input.iter().enumerate() {
        let at = format!("messages[{i}]");
        let m = as_object(m, &at)?;
        let content = m
            .get("content")
            .ok_or_else(|| invalid(format!("{at} has no content")))?;
        match str_field(m, "role").unwrap_or("") {
            "user" => user_to_chat(content, &at, &mut messages)?,
            "assistant" => {
                if let Some(a) = assistant_to_chat(content, &at)? {
                    messages.push(a);
                }
            }
            other => return Err(invalid(format!("{at}: unknown role {other:?}"))),
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(v) = field(req, "max_tokens") {
        out.insert("max_tokens".into(), v.clone());
    }
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = field(req, key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(s) = field(req, "stop_sequences") {
        if !s.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            return Err(invalid("stop_sequences must be an array of strings"));
        }
        if s.as_array().is_some_and(|a| !a.is_empty()) {
            out.insert("stop".into(), s.clone());
        }
    }

    let tools: Vec<Value> = match field(req, "tools") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, t)| tool_to_chat(t, &format!("tools[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("tools must be an array")),
    };
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = field(req, "tool_choice") {
        let tc = as_object(tc, "tool_choice")?;
        let choice = match type_of(tc) {
            "auto" => json!("auto"),
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => {
                let name =
                    str_field(tc, "name").ok_or_else(|| invalid("tool_choice has no name"))?;
                json!({"type": "function", "function": {"name": name}})
            }
            other => return Err(invalid(format!("tool_choice: unknown type {other:?}"))),
        };
        if out.contains_key("tools") {
            out.insert("tool_choice".into(), choice);
            if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                out.insert("parallel_tool_calls".into(), false.into());
            }
        }
    }
    if let Some(th) = field(req, "thinking").and_then(Value::as_object)
        && type_of(th) == "enabled"
    {
        let budget = u64_field(th, "budget_tokens").unwrap_or(0);
        let effort = match budget {
            0..=2048 => "low",
            2049..=8192 => "medium",
            _ => "high",
        };
        out.insert("reasoning_effort".into(), effort.into());
    }
    if let Some(u) = field(req, "metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), u.into());
    }
    if field(req, "stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// `msg_…` for a chat completion id.
fn message_id(chat_id: Option<&str>) -> String {
    match chat_id.filter(|s| !s.is_empty()) {
        Some(id) => format!("msg_{}", id.strip_prefix("chatcmpl-").unwrap_or(id)),
        None => random_id("msg_"),
    }
}

/// A chat completion as an Anthropic Messages response, `model` set to the
/// model the client asked for.
pub fn chat_to_anthropic_response(
    chat: &Value,
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
    let mut content = Vec::new();
    if let Some(r) = chat_reasoning(message) {
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    let mut text = chat_content_text(message.get("content"));
    if text.is_empty()
        && let Some(r) = str_field(message, "refusal")
    {
        text = r.to_owned();
    }
    if !text.is_empty() {
        content.push(text_block(&text));
    }
    if let Some(calls) = field(message, "tool_calls").and_then(Value::as_array) {
        for (j, call) in calls.iter().enumerate() {
            let call = as_object(call, &format!("tool_calls[{j}]"))?;
            let id = str_field(call, "id")
                .filter(|s| !s.is_empty())
                .map_or_else(|| random_id("toolu_"), str::to_owned);
            let func = call
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(format!("tool call {id:?} has no function")))?;
            let name = str_field(func, "name").unwrap_or("");
            let input = parse_arguments(func.get("arguments"), &id)?;
            content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    let stop = match str_field(choice, "finish_reason") {
        Some(f) => finish_to_stop_reason(f),
        None if str_field(message, "refusal").is_some() => "refusal",
        None => "end_turn",
    };
    let usage = c.get("usage").and_then(chat_usage).unwrap_or_default();
    Ok(json!({
        "id": message_id(str_field(c, "id")),
        "type": "message",
        "role": "assistant",
        "model": request_model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": anthropic_usage_json(usage),
    }))
}

/// The kind of the Anthropic content block being streamed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
    /// A tool call, by its chat tool index.
    Tool(u64),
}

/// Turns chat.completion.chunk objects into Anthropic stream events.
pub struct ChatToAnthropicStream {
    id: Option<String>,
    model: String,
    started: bool,
    finished: bool,
    next_block: u64,
    open: Open,
    open_block: u64,
    /// Chat tool index → Anthropic block index.
    tools: HashMap<u64, u64>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

type Event = (&'static str, Value);

impl ChatToAnthropicStream {
    pub fn new(request_model: &str) -> Self {
        Self {
            id: None,
            model: request_model.to_owned(),
            started: false,
            finished: false,
            next_block: 0,
            open: Open::None,
            open_block: 0,
            tools: HashMap::new(),
            finish_reason: None,
            usage: None,
        }
    }

    fn start(&mut self, chat_id: Option<&str>, out: &mut Vec<Event>) {
        self.started = true;
        let id = self.id.get_or_insert_with(|| message_id(chat_id)).clone();
        let input = self.usage.map_or(0, |u| u.prompt.saturating_sub(u.cached));
        let cached = self.usage.map_or(0, |u| u.cached);
        out.push((
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": input,
                        "output_tokens": 0,
                        "cache_read_input_tokens": cached,
                        "cache_creation_input_tokens": 0,
                    },
                },
            }),
        ));
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if self.open != Open::None {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.open_block}),
            ));
            self.open = Open::None;
        }
    }

    /// Opens a new block (closing the open one); returns its index.
    fn open_block(&mut self, kind: Open, block: Value, out: &mut Vec<Event>) -> u64 {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        self.open = kind;
        self.open_block = index;
        index
    }

    fn delta(&mut self, kind: Open, delta: Value, out: &mut Vec<Event>) {
        let index = if self.open == kind {
            self.open_block
        } else {
            let block = match kind {
                Open::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                _ => json!({"type": "text", "text": ""}),
            };
            self.open_block(kind, block, out)
        };
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
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
            None if id.is_some() => self.tools.len() as u64,
            None => match self.open {
                Open::Tool(i) => i,
                _ => position as u64,
            },
        };
        let block = match self.tools.get(&index) {
            Some(&b) => b,
            None => {
                let name = func
                    .and_then(|f| str_field(f, "name"))
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| invalid(format!("tool call {index} starts without a name")))?;
                let id = id.map_or_else(|| random_id("toolu_"), str::to_owned);
                let b = self.open_block(
                    Open::Tool(index),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                self.tools.insert(index, b);
                b
            }
        };
        // A fragment of an earlier, already closed call (hosts that
        // interleave calls) keeps its block index: the Anthropic SDKs
        // accumulate by index.
        if let Some(args) = func
            .and_then(|f| str_field(f, "arguments"))
            .filter(|s| !s.is_empty())
        {
            out.push((
                "content_block_delta",
                json!({
                    "type": "content_block_delta",
                    "index": block,
                    "delta": {"type": "input_json_delta", "partial_json": args},
                }),
            ));
        }
        Ok(())
    }

    /// One upstream chat.completion.chunk (parsed). Returns Anthropic
    /// events as (event name, data) to emit as
    /// `event: NAME\ndata: JSON\n\n`.
    pub fn chunk(&mut self, chunk: &Value) -> Result<Vec<Event>, TranslateError> {
        let c = as_object(chunk, "the stream chunk")?;
        if let Some(err) = field(c, "error") {
            return Err(invalid(error_message(err)));
        }
        let mut out = Vec::new();
        if let Some(u) = c.get("usage").and_then(chat_usage) {
            self.usage = Some(u);
        }
        if !self.started {
            self.start(str_field(c, "id"), &mut out);
        }
        let choices = c.get("choices").and_then(Value::as_array);
        let choice = choices
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .find(|ch| u64_field(ch, "index").unwrap_or(0) == 0);
        let Some(choice) = choice else {
            return Ok(out);
        };
        if let Some(delta) = choice.get("delta").and_then(Value::as_object) {
            if let Some(r) = chat_reasoning(delta) {
                self.delta(
                    Open::Thinking,
                    json!({"type": "thinking_delta", "thinking": r}),
                    &mut out,
                );
            }
            let text = chat_content_text(delta.get("content"));
            if !text.is_empty() {
                self.delta(
                    Open::Text,
                    json!({"type": "text_delta", "text": text}),
                    &mut out,
                );
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

    /// Upstream sent [DONE] or ended: closes the open block, then
    /// `message_delta` (stop_reason, usage) and `message_stop`. Later calls
    /// return nothing.
    pub fn finish(&mut self) -> Vec<Event> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut out = Vec::new();
        if !self.started {
            self.start(None, &mut out);
        }
        self.close(&mut out);
        let stop = match &self.finish_reason {
            Some(f) => finish_to_stop_reason(f),
            None if !self.tools.is_empty() => "tool_use",
            None => "end_turn",
        };
        out.push((
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": anthropic_usage_json(self.usage.unwrap_or_default()),
            }),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
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

    const MODEL: &str = "claude-x";

    fn a_req(v: Value) -> Value {
        chat_to_anthropic_request(&v, MODEL, 1000).unwrap()
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

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    fn chat_with(extra: Value) -> Value {
        let mut v = json!({"model": "gpt-4o", "messages": [user("hi")]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn without_created(mut v: Value) -> Value {
        assert!(v["created"].is_u64(), "created missing in {v}");
        v.as_object_mut().unwrap().remove("created");
        v
    }

    // ---------------------------------------------------------------
    // (a) chat request → Anthropic request
    // ---------------------------------------------------------------

    #[test]
    fn snapshot_chat_request_basic() {
        let chat = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Weather in Paris?", "name": "bob"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": true}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "max_tokens": 256, "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop": "END",
            "user": "u-42", "stream": true, "stream_options": {"include_usage": true},
            "seed": 7, "store": false, "frequency_penalty": 0.5, "metadata": {"a": "b"}
        });
        let expected = json!({
            "model": "claude-x",
            "max_tokens": 256,
            "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in French."}],
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"], "stream": true,
            "metadata": {"user_id": "u-42"},
            "tools": [{"name": "get_weather", "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        });
        assert_eq!(a_req(chat), expected);
    }

    #[test]
    fn snapshot_chat_request_tool_conversation() {
        let chat = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
                {"role": "user", "content": "Thanks! Summarize."}
            ]
        });
        let expected = json!({
            "model": "claude-x",
            "max_tokens": 1000,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
                    {"type": "text", "text": "Thanks! Summarize."}
                ]}
            ]
        });
        assert_eq!(a_req(chat), expected);
    }

    #[test]
    fn max_tokens_precedence_and_default() {
        let r = a_req(chat_with(
            json!({"max_completion_tokens": 50, "max_tokens": 70}),
        ));
        assert_eq!(r["max_tokens"], 50);
        let r = a_req(chat_with(json!({"max_tokens": 70})));
        assert_eq!(r["max_tokens"], 70);
        let r = a_req(chat_with(json!({"max_tokens": null})));
        assert_eq!(r["max_tokens"], 1000);
        let m = invalid_msg(chat_to_anthropic_request(
            &chat_with(json!({"max_tokens": "x"})),
            MODEL,
            1,
        ));
        assert!(m.contains("max_tokens"), "{m}");
    }

    #[test]
    fn stop_variants() {
        let r = a_req(chat_with(json!({"stop": ["a", "b"]})));
        assert_eq!(r["stop_sequences"], json!(["a", "b"]));
        let r = a_req(chat_with(json!({"stop": []})));
        assert!(r.get("stop_sequences").is_none());
        let r = a_req(chat_with(json!({"stop": null})));
        assert!(r.get("stop_sequences").is_none());
        invalid_msg(chat_to_anthropic_request(
            &chat_with(json!({"stop": [1]})),
            MODEL,
            1,
        ));
    }

    #[test]
    fn system_messages_anywhere_are_hoisted_in_order() {
        let r = a_req(json!({"messages": [
            {"role": "system", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
            user("hi"),
            {"role": "developer", "content": "three"},
            {"role": "system", "content": ""}
        ]}));
        assert_eq!(
            r["system"],
            json!([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}, {"type": "text", "text": "three"}])
        );
        assert_eq!(r["messages"], json!([{"role": "user", "content": "hi"}]));
        let m = invalid_msg(chat_to_anthropic_request(
            &json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, user("hi")]}),
            MODEL,
            1,
        ));
        assert!(m.contains("messages[0]"), "{m}");
        // No system message → no system field.
        assert!(a_req(chat_with(json!({}))).get("system").is_none());
    }

    #[test]
    fn consecutive_same_role_messages_merge() {
        let r = a_req(json!({"messages": [
            user("a"),
            user("b"),
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": [{"type": "text", "text": "d"}, {"type": "refusal", "refusal": "e"}]},
            user("f")
        ]}));
        assert_eq!(
            r["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}, {"type": "text", "text": "e"}]},
                {"role": "user", "content": "f"}
            ])
        );
    }

    #[test]
    fn empty_messages_are_dropped_and_alternation_kept() {
        // An assistant message with empty content and no tool calls says nothing.
        let r = a_req(json!({"messages": [
            user("a"),
            {"role": "assistant", "content": ""},
            user("b")
        ]}));
        assert_eq!(
            r["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
        );
    }

    #[test]
    fn tool_results_come_first_in_their_user_message() {
        let r = a_req(json!({"messages": [
            user("go"),
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            user("by the way"),
            {"role": "tool", "tool_call_id": "c1", "content": ""}
        ]}));
        assert_eq!(
            r["messages"][2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1"},
                {"type": "text", "text": "by the way"}
            ]})
        );
        // content null with tool calls → only tool_use blocks.
        assert_eq!(
            r["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "c1", "name": "f", "input": {}}])
        );
    }

    #[test]
    fn first_message_must_be_user() {
        let m = invalid_msg(chat_to_anthropic_request(
            &json!({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "hello"}, user("hi")]}),
            MODEL,
            1,
        ));
        assert!(m.contains("first message"), "{m}");
        let m = invalid_msg(chat_to_anthropic_request(
            &json!({"messages": [{"role": "system", "content": "s"}]}),
            MODEL,
            1,
        ));
        assert!(m.contains("at least one user message"), "{m}");
    }

    #[test]
    fn final_assistant_message_is_kept_as_prefill() {
        let r = a_req(json!({"messages": [user("hi"), {"role": "assistant", "content": "{"}]}));
        assert_eq!(
            r["messages"][1],
            json!({"role": "assistant", "content": [{"type": "text", "text": "{"}]})
        );
    }

    #[test]
    fn unsupported_chat_features() {
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]}),
                "input_audio",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]}),
                "file",
            ),
            (chat_with(json!({"n": 2})), "n > 1"),
            (
                chat_with(
                    json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}),
                ),
                "json_schema",
            ),
            (
                chat_with(json!({"response_format": {"type": "json_object"}})),
                "json_object",
            ),
            (chat_with(json!({"logprobs": true})), "logprobs"),
            (chat_with(json!({"top_logprobs": 3})), "top_logprobs"),
            (
                chat_with(json!({"modalities": ["text", "audio"]})),
                "audio output",
            ),
            (
                chat_with(json!({"functions": [{"name": "f"}]})),
                "functions",
            ),
            (
                json!({"messages": [user("hi"), {"role": "function", "name": "f", "content": "x"}]}),
                "function messages",
            ),
            (
                chat_with(json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]})),
                "\"custom\"",
            ),
            (
                chat_with(
                    json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                    "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}),
                ),
                "allowed_tools",
            ),
        ];
        for (req, needle) in cases {
            let m = unsupported_msg(chat_to_anthropic_request(&req, MODEL, 10));
            assert!(m.contains(needle), "{m:?} should name {needle:?}");
            assert!(m.contains("Anthropic"), "{m}");
        }
        // The harmless values pass.
        a_req(chat_with(
            json!({"n": 1, "logprobs": false, "response_format": {"type": "text"}}),
        ));
    }

    #[test]
    fn invalid_chat_inputs_say_where() {
        let bad_args = json!({"messages": [user("hi"), {"role": "assistant", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]});
        assert!(invalid_msg(chat_to_anthropic_request(&bad_args, MODEL, 1)).contains("call_9"));
        let non_object = json!({"messages": [user("hi"), {"role": "assistant", "tool_calls": [
            {"id": "call_8", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]});
        assert!(invalid_msg(chat_to_anthropic_request(&non_object, MODEL, 1)).contains("call_8"));
        let not_b64 = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]});
        assert!(
            invalid_msg(chat_to_anthropic_request(&not_b64, MODEL, 1))
                .contains("messages[0].content[0]")
        );
        let ftp = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]});
        invalid_msg(chat_to_anthropic_request(&ftp, MODEL, 1));
        let role = json!({"messages": [{"role": "robot", "content": "x"}]});
        assert!(invalid_msg(chat_to_anthropic_request(&role, MODEL, 1)).contains("robot"));
        invalid_msg(chat_to_anthropic_request(&json!([]), MODEL, 1));
        invalid_msg(chat_to_anthropic_request(&json!({"model": "m"}), MODEL, 1));
        let no_id = json!({"messages": [user("hi"), {"role": "tool", "content": "x"}]});
        assert!(invalid_msg(chat_to_anthropic_request(&no_id, MODEL, 1)).contains("tool_call_id"));
    }

    #[test]
    fn tools_without_parameters_get_an_empty_schema() {
        let r = a_req(chat_with(
            json!({"tools": [{"type": "function", "function": {"name": "now"}}]}),
        ));
        assert_eq!(
            r["tools"],
            json!([{"name": "now", "input_schema": {"type": "object", "properties": {}}}])
        );
        assert!(r.get("tool_choice").is_none());
    }

    #[test]
    fn tool_choice_mapping() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let tc = |choice: Value, parallel: Option<bool>| {
            let mut extra = json!({"tools": tools.clone(), "tool_choice": choice});
            if let Some(p) = parallel {
                extra["parallel_tool_calls"] = json!(p);
            }
            a_req(chat_with(extra)).get("tool_choice").cloned()
        };
        assert_eq!(tc(json!("auto"), None), Some(json!({"type": "auto"})));
        assert_eq!(tc(json!("required"), None), Some(json!({"type": "any"})));
        assert_eq!(tc(json!("none"), None), Some(json!({"type": "none"})));
        assert_eq!(
            tc(json!({"type": "function", "function": {"name": "f"}}), None),
            Some(json!({"type": "tool", "name": "f"}))
        );
        assert_eq!(
            tc(
                json!({"type": "function", "function": {"name": "f"}}),
                Some(false)
            ),
            Some(json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            tc(json!("auto"), Some(false)),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            tc(json!("none"), Some(false)),
            Some(json!({"type": "none"}))
        );
        assert_eq!(tc(json!("auto"), Some(true)), Some(json!({"type": "auto"})));
        assert_eq!(tc(Value::Null, None), None);
        // parallel_tool_calls:false alone → auto with the flag.
        let r = a_req(chat_with(
            json!({"tools": tools.clone(), "parallel_tool_calls": false}),
        ));
        assert_eq!(
            r["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        // Without tools, tool_choice is dropped.
        let r = a_req(chat_with(
            json!({"tool_choice": "none", "parallel_tool_calls": false}),
        ));
        assert!(r.get("tool_choice").is_none() && r.get("tools").is_none());
        invalid_msg(chat_to_anthropic_request(
            &chat_with(json!({"tools": tools, "tool_choice": "sometimes"})),
            MODEL,
            1,
        ));
    }

    #[test]
    fn reasoning_effort_to_thinking() {
        for (effort, budget) in [
            ("low", 1024),
            ("medium", 4096),
            ("high", 16384),
            ("minimal", 1024),
        ] {
            let r = a_req(chat_with(
                json!({"reasoning_effort": effort, "max_tokens": 100_000}),
            ));
            assert_eq!(
                r["thinking"],
                json!({"type": "enabled", "budget_tokens": budget})
            );
            assert_eq!(r["max_tokens"], 100_000);
        }
        // max_tokens raised above the budget: budget + the asked answer room.
        let r = a_req(chat_with(
            json!({"reasoning_effort": "high", "max_tokens": 1000}),
        ));
        assert_eq!(r["max_tokens"], 16384 + 1000);
        let r = a_req(chat_with(json!({"reasoning_effort": "low"})));
        assert_eq!(r["max_tokens"], 1024 + 1000, "default 1000 ≤ budget 1024");
        let r = a_req(chat_with(json!({"reasoning_effort": "none"})));
        assert!(r.get("thinking").is_none());
        invalid_msg(chat_to_anthropic_request(
            &chat_with(json!({"reasoning_effort": "max"})),
            MODEL,
            1,
        ));
    }

    // ---------------------------------------------------------------
    // (a) Anthropic response → chat response
    // ---------------------------------------------------------------

    fn anthropic_full_response() -> Value {
        json!({
            "id": "msg_01XYZ", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "Two cities.", "signature": "EqQ"},
                {"type": "text", "text": "Checking "},
                {"type": "text", "text": "both."},
                {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {"city": "Rome"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 100, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 50, "output_tokens": 87}
        })
    }

    #[test]
    fn snapshot_anthropic_response_to_chat() {
        let out = anthropic_to_chat_response(&anthropic_full_response(), "gpt-4o").unwrap();
        let expected = json!({
            "id": "msg_01XYZ",
            "object": "chat.completion",
            "model": "gpt-4o",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking both.",
                    "reasoning_content": "Two cities.",
                    "tool_calls": [
                        {"id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "toolu_B", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                    ]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": 160, "completion_tokens": 87, "total_tokens": 247,
                "prompt_tokens_details": {"cached_tokens": 50}}
        });
        assert_eq!(without_created(out), expected);
    }

    #[test]
    fn anthropic_stop_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            let resp = json!({"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "x"}],
                "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 1}});
            let out = anthropic_to_chat_response(&resp, "m").unwrap();
            assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
        }
    }

    #[test]
    fn anthropic_response_without_text_has_null_content() {
        let resp =
            json!({"id": "msg_1", "type": "message", "content": [], "stop_reason": "end_turn"});
        let out = anthropic_to_chat_response(&resp, "m").unwrap();
        assert_eq!(
            out["choices"][0]["message"],
            json!({"role": "assistant", "content": null})
        );
        assert!(out.get("usage").is_none());
        let err = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert_eq!(
            invalid_msg(anthropic_to_chat_response(&err, "m")),
            "Overloaded"
        );
        invalid_msg(anthropic_to_chat_response(&json!({"id": "x"}), "m"));
    }

    #[test]
    fn anthropic_usage_counts() {
        assert_eq!(
            anthropic_usage(&json!({"input_tokens": 100, "cache_read_input_tokens": 50,
                "cache_creation_input_tokens": 10, "output_tokens": 7})),
            Some(Usage {
                cache_write: 10,
                prompt: 160,
                completion: 7,
                cached: 50
            })
        );
        assert_eq!(
            anthropic_usage(&json!({"input_tokens": 3, "output_tokens": 4})),
            Some(Usage {
                cache_write: 0,
                prompt: 3,
                completion: 4,
                cached: 0
            })
        );
        assert_eq!(anthropic_usage(&json!({})), None);
        assert_eq!(anthropic_usage(&Value::Null), None);
    }

    // ---------------------------------------------------------------
    // (a) Anthropic stream → chat chunks
    // ---------------------------------------------------------------

    fn anthropic_events() -> Vec<(&'static str, Value)> {
        let delta = |i: u64, d: Value| {
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": d}),
            )
        };
        let stop = |i: u64| {
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
            )
        };
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_01ABC", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 100, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 50, "output_tokens": 1}}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            delta(
                0,
                json!({"type": "thinking_delta", "thinking": "Need weather"}),
            ),
            delta(
                0,
                json!({"type": "thinking_delta", "thinking": " for two cities."}),
            ),
            delta(
                0,
                json!({"type": "signature_delta", "signature": "EqQBCkYIBxgCKkB"}),
            ),
            stop(0),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            ),
            delta(1, json!({"type": "text_delta", "text": "Checking both."})),
            stop(1),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2, "content_block":
                {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}}}),
            ),
            delta(2, json!({"type": "input_json_delta", "partial_json": ""})),
            delta(
                2,
                json!({"type": "input_json_delta", "partial_json": "{\"city\": "}),
            ),
            delta(
                2,
                json!({"type": "input_json_delta", "partial_json": "\"Paris\"}"}),
            ),
            stop(2),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 3, "content_block":
                {"type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {}}}),
            ),
            delta(
                3,
                json!({"type": "input_json_delta", "partial_json": "{\"city\":"}),
            ),
            delta(
                3,
                json!({"type": "input_json_delta", "partial_json": "\"Rome\"}"}),
            ),
            stop(3),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 87}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]
    }

    fn run_anthropic_stream(
        include_usage: bool,
    ) -> (Vec<Value>, Vec<Value>, AnthropicToChatStream) {
        let mut s = AnthropicToChatStream::new("gpt-4o", include_usage);
        let mut chunks = Vec::new();
        for (name, data) in anthropic_events() {
            chunks.extend(s.event(name, &data).unwrap());
        }
        let tail = s.finish();
        (chunks, tail, s)
    }

    #[test]
    fn anthropic_stream_to_chat_chunks() {
        let (chunks, tail, s) = run_anthropic_stream(true);
        let deltas: Vec<Value> = chunks
            .iter()
            .map(|c| c["choices"][0]["delta"].clone())
            .collect();
        assert_eq!(
            deltas,
            vec![
                json!({"role": "assistant", "content": ""}),
                json!({"reasoning_content": "Need weather"}),
                json!({"reasoning_content": " for two cities."}),
                json!({"content": "Checking both."}),
                json!({"tool_calls": [{"index": 0, "id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                json!({"tool_calls": [{"index": 1, "id": "toolu_B", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"city\":"}}]}),
                json!({"tool_calls": [{"index": 1, "function": {"arguments": "\"Rome\"}"}}]}),
                json!({}),
            ]
        );
        // Shared envelope; usage:null on every chunk; only the last has a finish_reason.
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c["id"], "msg_01ABC");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "gpt-4o");
            assert_eq!(c["created"], chunks[0]["created"]);
            assert!(c.as_object().unwrap().contains_key("usage") && c["usage"].is_null());
            let finish = &c["choices"][0]["finish_reason"];
            if i + 1 == chunks.len() {
                assert_eq!(finish, "tool_calls");
            } else {
                assert!(finish.is_null());
            }
        }
        // Arguments reassemble to valid JSON, per tool call index.
        let mut args = [String::new(), String::new()];
        for d in &deltas {
            if let Some(calls) = d["tool_calls"].as_array() {
                for c in calls {
                    args[c["index"].as_u64().unwrap() as usize] +=
                        c["function"]["arguments"].as_str().unwrap();
                }
            }
        }
        assert_eq!(
            serde_json::from_str::<Value>(&args[0]).unwrap(),
            json!({"city": "Paris"})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&args[1]).unwrap(),
            json!({"city": "Rome"})
        );
        // The usage chunk.
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0]["choices"], json!([]));
        assert_eq!(tail[0]["id"], "msg_01ABC");
        assert_eq!(
            tail[0]["usage"],
            json!({"prompt_tokens": 160, "completion_tokens": 87, "total_tokens": 247, "prompt_tokens_details": {"cached_tokens": 50}})
        );
        assert_eq!(
            s.usage(),
            Some(Usage {
                cache_write: 10,
                prompt: 160,
                completion: 87,
                cached: 50
            })
        );
    }

    #[test]
    fn anthropic_stream_without_include_usage() {
        let (chunks, tail, mut s) = run_anthropic_stream(false);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(tail.is_empty());
        assert_eq!(
            s.usage(),
            Some(Usage {
                cache_write: 10,
                prompt: 160,
                completion: 87,
                cached: 50
            })
        );
        assert!(s.finish().is_empty());
    }

    #[test]
    fn anthropic_stream_edge_cases() {
        let mut s = AnthropicToChatStream::new("m", true);
        // No usage anywhere → no usage chunk, usage() None.
        s.event(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_2"}}),
        )
        .unwrap();
        let out = s
            .event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": "Hello"}}),
            )
            .unwrap();
        assert_eq!(out[0]["choices"][0]["delta"], json!({"content": "Hello"}));
        let out = s
            .event(
                "message_delta",
                &json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}}),
            )
            .unwrap();
        assert_eq!(out[0]["choices"][0]["finish_reason"], "length");
        assert!(
            s.event("message_stop", &json!({"type": "message_stop"}))
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.usage(), None);
        assert!(s.finish().is_empty());

        // An error event ends the stream with its message.
        let mut s = AnthropicToChatStream::new("m", false);
        let err = s.event("error", &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
        assert_eq!(invalid_msg(err), "Overloaded");
        // input_json_delta for a block that is not a tool_use.
        let bad = s.event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 5,
            "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        );
        assert!(invalid_msg(bad).contains('5'));
        // Unknown events are ignored.
        assert!(
            s.event("future_event", &json!({"type": "future_event"}))
                .unwrap()
                .is_empty()
        );
    }

    // ---------------------------------------------------------------
    // (b) Anthropic request → chat request
    // ---------------------------------------------------------------

    #[test]
    fn snapshot_anthropic_request_to_chat() {
        let msg = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [
                {"type": "text", "text": "You are a helpful agent.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}
            ],
            "messages": [
                {"role": "user", "content": "What's the weather in Paris, and the time?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Use the tools.", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C", "cache_control": {"type": "ephemeral"}},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                        "content": [{"type": "text", "text": "clock unavailable"}, {"type": "text", "text": "retry later"}]},
                    {"type": "text", "text": "And what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}
                ]}
            ],
            "tools": [{"name": "get_weather", "description": "Weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 5000},
            "metadata": {"user_id": "user-7"},
            "stop_sequences": ["\n\nHuman:"],
            "temperature": 0.7, "top_p": 0.95, "top_k": 40,
            "stream": true
        });
        let expected = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a helpful agent.\nBe brief."},
                {"role": "user", "content": "What's the weather in Paris, and the time?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "clock unavailable\nretry later"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
                ]}
            ],
            "max_tokens": 1024, "temperature": 0.7, "top_p": 0.95, "top_k": 40,
            "stop": ["\n\nHuman:"],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "reasoning_effort": "medium",
            "user": "user-7",
            "stream": true,
            "stream_options": {"include_usage": true}
        });
        assert_eq!(
            anthropic_to_chat_request(&msg, "gpt-4o-mini").unwrap(),
            expected
        );
    }

    fn msg_with(extra: Value) -> Value {
        let mut v = json!({"model": "claude", "max_tokens": 10, "messages": [user("hi")]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn b_req(extra: Value) -> Value {
        anthropic_to_chat_request(&msg_with(extra), "up").unwrap()
    }

    #[test]
    fn thinking_budget_to_reasoning_effort() {
        for (budget, effort) in [
            (1024, "low"),
            (2048, "low"),
            (2049, "medium"),
            (8192, "medium"),
            (8193, "high"),
            (32000, "high"),
        ] {
            let r = b_req(json!({"thinking": {"type": "enabled", "budget_tokens": budget}}));
            assert_eq!(r["reasoning_effort"], effort, "{budget}");
        }
        assert!(
            b_req(json!({"thinking": {"type": "disabled"}}))
                .get("reasoning_effort")
                .is_none()
        );
    }

    #[test]
    fn anthropic_tool_choice_mapping() {
        let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
        let tc = |c: Value| b_req(json!({"tools": tools.clone(), "tool_choice": c}));
        assert_eq!(tc(json!({"type": "auto"}))["tool_choice"], "auto");
        assert_eq!(tc(json!({"type": "none"}))["tool_choice"], "none");
        assert_eq!(tc(json!({"type": "any"}))["tool_choice"], "required");
        let r = tc(json!({"type": "tool", "name": "f"}));
        assert_eq!(
            r["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert!(r.get("parallel_tool_calls").is_none());
        let r = tc(json!({"type": "auto", "disable_parallel_tool_use": true}));
        assert_eq!(r["parallel_tool_calls"], false);
        // A tool without a schema gets an empty object schema; custom type is fine.
        let r = b_req(json!({"tools": [{"type": "custom", "name": "g"}]}));
        assert_eq!(
            r["tools"],
            json!([{"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}}])
        );
        // No tools → no tool_choice.
        assert!(
            b_req(json!({"tool_choice": {"type": "auto"}}))
                .get("tool_choice")
                .is_none()
        );
    }

    #[test]
    fn anthropic_request_misc() {
        let r = b_req(json!({"system": "Be nice.", "stream": false}));
        assert_eq!(
            r["messages"][0],
            json!({"role": "system", "content": "Be nice."})
        );
        assert!(r.get("stream").is_none() && r.get("stream_options").is_none());
        assert_eq!(r["max_tokens"], 10);
        // Image by URL; several text blocks are joined; an assistant turn of
        // only thinking is dropped.
        let r = anthropic_to_chat_request(
            &json!({"max_tokens": 5, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xx"}]},
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
                {"role": "assistant", "content": "ok"}
            ]}),
            "up",
        )
        .unwrap();
        assert_eq!(
            r["messages"],
            json!([
                {"role": "user", "content": "a\nb"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                {"role": "assistant", "content": "ok"}
            ])
        );
        // Assistant with only tool_use → content null.
        let r = anthropic_to_chat_request(
            &json!({"messages": [user("x"), {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}]}),
            "up",
        )
        .unwrap();
        assert_eq!(r["messages"][1]["content"], Value::Null);
        assert_eq!(
            r["messages"][1]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        // Empty tool_result content.
        let r = anthropic_to_chat_request(
            &json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}),
            "up",
        )
        .unwrap();
        assert_eq!(
            r["messages"],
            json!([{"role": "tool", "tool_call_id": "t", "content": ""}])
        );
    }

    #[test]
    fn anthropic_request_unsupported_and_invalid() {
        let doc = json!({"messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}]}]});
        let m = unsupported_msg(anthropic_to_chat_request(&doc, "up"));
        assert!(
            m.contains("document blocks (PDF)") && m.contains("OpenAI-compatible"),
            "{m}"
        );
        let img_in_result = json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
            "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}]}]});
        assert!(
            unsupported_msg(anthropic_to_chat_request(&img_in_result, "up"))
                .contains("images in tool results")
        );
        let server_tool =
            msg_with(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}));
        assert!(
            unsupported_msg(anthropic_to_chat_request(&server_tool, "up"))
                .contains("web_search_20250305")
        );
        let file_src = json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]});
        assert!(unsupported_msg(anthropic_to_chat_request(&file_src, "up")).contains("file"));
        let mcp =
            msg_with(json!({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}));
        assert!(unsupported_msg(anthropic_to_chat_request(&mcp, "up")).contains("mcp_servers"));
        let server_block = json!({"messages": [user("x"), {"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]});
        assert!(
            unsupported_msg(anthropic_to_chat_request(&server_block, "up"))
                .contains("server_tool_use")
        );

        invalid_msg(anthropic_to_chat_request(&json!({"max_tokens": 1}), "up"));
        let role = json!({"messages": [{"role": "system", "content": "x"}]});
        assert!(invalid_msg(anthropic_to_chat_request(&role, "up")).contains("messages[0]"));
        let no_id = json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]});
        assert!(invalid_msg(anthropic_to_chat_request(&no_id, "up")).contains("tool_use_id"));
        invalid_msg(anthropic_to_chat_request(
            &msg_with(json!({"stop_sequences": "x"})),
            "up",
        ));
    }

    // ---------------------------------------------------------------
    // (b) chat response → Anthropic response
    // ---------------------------------------------------------------

    #[test]
    fn snapshot_chat_response_to_anthropic() {
        let chat = json!({
            "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "Checking.", "reasoning_content": "User wants weather.",
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
                "prompt_tokens_details": {"cached_tokens": 60}}
        });
        let expected = json!({
            "id": "msg_abc123", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "User wants weather.", "signature": ""},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 40, "output_tokens": 30, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0}
        });
        assert_eq!(chat_to_anthropic_response(&chat, MODEL).unwrap(), expected);
    }

    fn chat_resp(message: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
    }

    #[test]
    fn chat_finish_reasons_and_edge_cases() {
        for (finish, stop) in [
            (json!("stop"), "end_turn"),
            (json!("length"), "max_tokens"),
            (json!("tool_calls"), "tool_use"),
            (json!("content_filter"), "refusal"),
            (Value::Null, "end_turn"),
        ] {
            let r = chat_to_anthropic_response(
                &chat_resp(json!({"role": "assistant", "content": "x"}), finish.clone()),
                "m",
            )
            .unwrap();
            assert_eq!(r["stop_reason"], stop, "{finish}");
        }
        // No content, no usage → empty content array, zero usage.
        let r = chat_to_anthropic_response(
            &chat_resp(json!({"role": "assistant", "content": ""}), json!("stop")),
            "m",
        )
        .unwrap();
        assert_eq!(r["content"], json!([]));
        assert_eq!(r["usage"]["input_tokens"], 0);
        assert_eq!(r["id"], "msg_1");
        // A refusal becomes text.
        let r = chat_to_anthropic_response(
            &chat_resp(
                json!({"role": "assistant", "content": null, "refusal": "I can't."}),
                Value::Null,
            ),
            "m",
        )
        .unwrap();
        assert_eq!(r["content"], json!([{"type": "text", "text": "I can't."}]));
        assert_eq!(r["stop_reason"], "refusal");
        // Unparsable arguments name the call.
        let bad = chat_resp(
            json!({"role": "assistant", "tool_calls": [{"id": "call_7", "type": "function",
                "function": {"name": "f", "arguments": "{oops"}}]}),
            json!("tool_calls"),
        );
        assert!(invalid_msg(chat_to_anthropic_response(&bad, "m")).contains("call_7"));
        invalid_msg(chat_to_anthropic_response(&json!({"choices": []}), "m"));
        let err = json!({"error": {"message": "rate limited", "type": "rate_limit"}});
        assert_eq!(
            invalid_msg(chat_to_anthropic_response(&err, "m")),
            "rate limited"
        );
    }

    // ---------------------------------------------------------------
    // (b) chat stream → Anthropic events
    // ---------------------------------------------------------------

    fn chat_chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-xyz", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    fn run_chat_stream(chunks: &[Value]) -> (Vec<(&'static str, Value)>, ChatToAnthropicStream) {
        let mut s = ChatToAnthropicStream::new(MODEL);
        let mut events = Vec::new();
        for c in chunks {
            events.extend(s.chunk(c).unwrap());
        }
        events.extend(s.finish());
        (events, s)
    }

    fn block_start(i: u64, block: Value) -> (&'static str, Value) {
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": block}),
        )
    }

    fn block_delta(i: u64, delta: Value) -> (&'static str, Value) {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": i, "delta": delta}),
        )
    }

    fn block_stop(i: u64) -> (&'static str, Value) {
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        )
    }

    fn json_delta(s: &str) -> Value {
        json!({"type": "input_json_delta", "partial_json": s})
    }

    #[test]
    fn chat_stream_with_parallel_tool_calls_to_anthropic_events() {
        let chunks = vec![
            chat_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chat_chunk(json!({"content": "Let me check."}), Value::Null),
            chat_chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chat_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                Value::Null,
            ),
            chat_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                Value::Null,
            ),
            chat_chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chat_chunk(
                json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"city\":\"Rome\"}"}}]}),
                Value::Null,
            ),
            chat_chunk(json!({}), json!("tool_calls")),
            json!({"id": "chatcmpl-xyz", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [],
                "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160,
                    "prompt_tokens_details": {"cached_tokens": 20}}}),
        ];
        let (events, s) = run_chat_stream(&chunks);
        let expected = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_xyz", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}}),
            ),
            block_start(0, json!({"type": "text", "text": ""})),
            block_delta(0, json!({"type": "text_delta", "text": "Let me check."})),
            block_stop(0),
            block_start(
                1,
                json!({"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}),
            ),
            block_delta(1, json_delta("{\"city\":")),
            block_delta(1, json_delta("\"Paris\"}")),
            block_stop(1),
            block_start(
                2,
                json!({"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}}),
            ),
            block_delta(2, json_delta("{\"city\":\"Rome\"}")),
            block_stop(2),
            (
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 100, "output_tokens": 40, "cache_read_input_tokens": 20, "cache_creation_input_tokens": 0}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        assert_eq!(events, expected);
        assert_eq!(
            s.usage(),
            Some(Usage {
                cache_write: 0,
                prompt: 120,
                completion: 40,
                cached: 20
            })
        );
    }

    #[test]
    fn chat_stream_reasoning_then_text() {
        let chunks = vec![
            chat_chunk(
                json!({"role": "assistant", "reasoning_content": "Hmm"}),
                Value::Null,
            ),
            chat_chunk(json!({"reasoning": ", fine."}), Value::Null),
            chat_chunk(json!({"content": "Hi"}), Value::Null),
            chat_chunk(json!({"content": "!"}), json!("length")),
        ];
        let (events, s) = run_chat_stream(&chunks);
        let names: Vec<&str> = events.iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "message_start",
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
        assert_eq!(
            events[1],
            block_start(
                0,
                json!({"type": "thinking", "thinking": "", "signature": ""})
            )
        );
        assert_eq!(
            events[3],
            block_delta(0, json!({"type": "thinking_delta", "thinking": ", fine."}))
        );
        assert_eq!(
            events[5],
            block_start(1, json!({"type": "text", "text": ""}))
        );
        assert_eq!(
            events[7],
            block_delta(1, json!({"type": "text_delta", "text": "!"}))
        );
        assert_eq!(events[9].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(events[9].1["usage"]["output_tokens"], 0);
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn chat_stream_edge_cases() {
        // Nothing at all → still a well-formed (empty) message.
        let mut s = ChatToAnthropicStream::new("m");
        let names: Vec<&str> = s.finish().iter().map(|e| e.0).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
        assert!(s.finish().is_empty());

        // An error chunk.
        let mut s = ChatToAnthropicStream::new("m");
        let err = s.chunk(&json!({"error": {"message": "upstream exploded"}}));
        assert_eq!(invalid_msg(err), "upstream exploded");

        // A tool call starting without a name.
        let mut s = ChatToAnthropicStream::new("m");
        let bad = s.chunk(&chat_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            Value::Null,
        ));
        invalid_msg(bad);

        // Interleaved fragments keep their block; a host without `index`
        // (whole calls) gets one block per call; no finish_reason but tools
        // → tool_use.
        let chunks = vec![
            chat_chunk(
                json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{\"x\":"}}]}),
                Value::Null,
            ),
            chat_chunk(
                json!({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
                Value::Null,
            ),
            chat_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                Value::Null,
            ),
        ];
        let (events, _) = run_chat_stream(&chunks);
        assert_eq!(events[5], block_delta(1, json_delta("{}")));
        assert_eq!(events[6], block_delta(0, json_delta("1}")));
        assert_eq!(events[7], block_stop(1));
        assert_eq!(events[8].1["delta"]["stop_reason"], "tool_use");

        let chunks = vec![chat_chunk(
            json!({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
            json!("tool_calls"),
        )];
        let (events, _) = run_chat_stream(&chunks);
        assert_eq!(
            events[1],
            block_start(
                0,
                json!({"type": "tool_use", "id": "a", "name": "f", "input": {}})
            )
        );
        assert_eq!(
            events[4],
            block_start(
                1,
                json!({"type": "tool_use", "id": "b", "name": "g", "input": {}})
            )
        );
    }

    // ---------------------------------------------------------------
    // Round trips and errors
    // ---------------------------------------------------------------

    #[test]
    fn round_trip_chat_request_keeps_semantics() {
        let chat = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "21°C"},
                {"role": "assistant", "content": "Paris 18°C, Rome 21°C."},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "max_tokens": 300, "temperature": 0.5, "top_k": 3, "stop": ["X"], "user": "u1", "stream": true
        });
        let anthropic = chat_to_anthropic_request(&chat, "claude", 1000).unwrap();
        let back = anthropic_to_chat_request(&anthropic, "gpt-4o").unwrap();
        assert_eq!(back["messages"], chat["messages"]);
        assert_eq!(back["tools"], chat["tools"]);
        assert_eq!(back["tool_choice"], chat["tool_choice"]);
        for k in [
            "parallel_tool_calls",
            "max_tokens",
            "temperature",
            "stop",
            "user",
            "stream",
            "model",
        ] {
            assert_eq!(back[k], chat[k], "{k}");
        }
        assert_eq!(back["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn round_trip_responses() {
        let chat = anthropic_to_chat_response(&anthropic_full_response(), "gpt-4o").unwrap();
        let back = chat_to_anthropic_response(&chat, "claude-sonnet-4-5-20250929").unwrap();
        let orig = anthropic_full_response();
        assert_eq!(back["stop_reason"], orig["stop_reason"]);
        assert_eq!(
            back["content"][0]["thinking"],
            orig["content"][0]["thinking"]
        );
        assert_eq!(
            back["content"][1],
            json!({"type": "text", "text": "Checking both."})
        );
        assert_eq!(back["content"][2], orig["content"][3]);
        assert_eq!(back["content"][3], orig["content"][4]);
        // Cache creation folds into plain input tokens (the chat format has
        // no cache-write counter): the totals agree, the cache-write share is gone.
        let orig_usage = orig.get("usage").and_then(anthropic_usage).map(|u| Usage {
            cache_write: 0,
            ..u
        });
        assert_eq!(back.get("usage").and_then(anthropic_usage), orig_usage);
    }

    #[test]
    fn error_bodies() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "api_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(
                anthropic_error_body(status, "boom"),
                json!({"type": "error", "error": {"type": kind, "message": "boom"}}),
                "{status}"
            );
        }
    }
}
