//! Turning a request body into a deterministic plan of what to answer: reply text or tool
//! call, number of choices, finish reason and token usage.

use serde_json::Value;

use crate::Defaults;
use crate::errors::ApiError;
use crate::wire::ceil4;

/// The arguments of the mock tool call.
pub(crate) const TOOL_ARGS: &str = r#"{"location":"Paris","unit":"celsius"}"#;
/// Name used when the request names no tool.
pub(crate) const DEFAULT_TOOL: &str = "get_weather";
/// Tokens charged for a tool call on top of its arguments.
const TOOL_OVERHEAD: u64 = 5;
const MAX_N: u64 = 128;
/// The reasoning text of the Anthropic `thinking` block / Gemini thought part.
pub(crate) const THINKING_TEXT: &str = "Let me think…";

/// Completion tokens of one tool call: `ceil(len(TOOL_ARGS) / 4) + 5`.
pub(crate) fn tool_tokens() -> u64 {
    ceil4(TOOL_ARGS.len() as u64) + TOOL_OVERHEAD
}

/// Completion tokens of the thinking text: `ceil(chars("Let me think…") / 4)` = 4.
pub(crate) fn thinking_tokens() -> u64 {
    ceil4(THINKING_TEXT.chars().count() as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
}

/// Per-request controls from the body's top-level `"mock"` object, merged with the defaults.
#[derive(Clone, Debug, Default)]
pub(crate) struct Controls {
    pub chunks: usize,
    pub chunk_size: usize,
    pub chunk_delay_ms: u64,
    pub status: Option<u16>,
    pub error_code: Option<String>,
    pub omit_usage: bool,
    pub drop_after: Option<usize>,
    pub tool_call: bool,
    pub content: Option<String>,
    pub delay_ms: u64,
    pub cached_tokens: Option<u64>,
}

pub(crate) fn lenient_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

pub(crate) fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Controls {
    pub fn parse(body: &Value, d: &Defaults) -> Self {
        let mut c = Controls {
            chunks: d.chunks,
            chunk_size: d.chunk_size.max(1),
            chunk_delay_ms: d.chunk_delay_ms,
            ..Controls::default()
        };
        let Some(Value::Object(m)) = body.get("mock") else {
            return c;
        };
        let num = |k: &str| m.get(k).and_then(lenient_u64);
        let flag = |k: &str| m.get(k).and_then(lenient_bool).unwrap_or(false);
        if let Some(n) = num("chunks") {
            c.chunks = to_usize(n);
        }
        if let Some(n) = num("chunk_size") {
            c.chunk_size = to_usize(n).max(1);
        }
        if let Some(n) = num("chunk_delay_ms") {
            c.chunk_delay_ms = n;
        }
        c.status = num("status")
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (400..=999).contains(s));
        c.error_code = m
            .get("error_code")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        c.omit_usage = flag("omit_usage");
        c.drop_after = num("drop_after").map(to_usize);
        c.tool_call = flag("tool_call");
        c.content = m.get("content").and_then(Value::as_str).map(str::to_owned);
        c.delay_ms = num("delay_ms").unwrap_or(0);
        c.cached_tokens = num("cached_tokens");
        c
    }
}

/// Where the reply text comes from.
#[derive(Clone, Debug)]
pub(crate) enum TextSource {
    /// The first `len` characters of the repeating default sentence.
    Default(usize),
    /// A given string (`mock.content`), possibly truncated.
    Custom(String),
}

#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Text(TextSource),
    Tool { name: String },
}

/// Why the reply text ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TextEnd {
    /// The whole text was produced.
    Complete,
    /// Cut before this stop sequence (the text contained it).
    Stop(String),
    /// Cut at `max_tokens * 4` characters.
    Length,
}

/// The reply text (one choice / candidate) and its completion tokens.
#[derive(Clone, Debug)]
pub(crate) struct TextPlan {
    pub source: TextSource,
    pub tokens: u64,
    pub end: TextEnd,
}

/// The text `mock.content` or the default sentence (`chunks * chunk_size` characters), cut
/// before the earliest of `stops`, then cut to `max_tokens * 4` characters if its
/// `max(1, ceil(chars / 4))` tokens exceed `max_tokens` (then it counts `max_tokens`).
pub(crate) fn plan_text(
    controls: &Controls,
    max_tokens: Option<u64>,
    stops: &[String],
) -> TextPlan {
    let mut source = match &controls.content {
        Some(s) => TextSource::Custom(s.clone()),
        None => TextSource::Default(controls.chunks.saturating_mul(controls.chunk_size)),
    };
    let mut end = TextEnd::Complete;
    if stops.iter().any(|s| !s.is_empty()) {
        let full = match &source {
            TextSource::Custom(s) => s.clone(),
            TextSource::Default(len) => {
                let mut t = String::with_capacity(*len);
                crate::wire::push_default_text(&mut t, 0, *len);
                t
            }
        };
        let first = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| full.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i);
        if let Some((cut, stop)) = first {
            source = match source {
                // The default sentence is ASCII: bytes are characters.
                TextSource::Default(_) => TextSource::Default(cut),
                TextSource::Custom(mut s) => {
                    s.truncate(cut);
                    TextSource::Custom(s)
                }
            };
            end = TextEnd::Stop(stop.clone());
        }
    }
    let chars = match &source {
        TextSource::Default(len) => *len,
        TextSource::Custom(s) => s.chars().count(),
    };
    let full_tokens = ceil4(chars as u64).max(1);
    match max_tokens {
        Some(max) if max < full_tokens => {
            let keep = to_usize(max.saturating_mul(4));
            let source = match source {
                TextSource::Default(len) => TextSource::Default(len.min(keep)),
                TextSource::Custom(mut s) => {
                    if let Some((cut, _)) = s.char_indices().nth(keep) {
                        s.truncate(cut);
                    }
                    TextSource::Custom(s)
                }
            };
            TextPlan {
                source,
                tokens: max,
                end: TextEnd::Length,
            }
        }
        _ => TextPlan {
            source,
            tokens: full_tokens,
            end,
        },
    }
}

/// Everything needed to render a (chat or legacy) completion, streamed or not.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub kind: Kind,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub choices: usize,
    pub reply: Reply,
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
    /// Summed over all choices.
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub controls: Controls,
}

pub(crate) fn model_of(body: &Value) -> Result<&str, ApiError> {
    match body.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => Ok(m),
        _ => Err(ApiError::invalid("you must provide a model parameter")),
    }
}

/// Byte length of text and count of pre-tokenised ids in a `prompt` / `input` value.
fn text_and_ids(v: &Value) -> (u64, u64) {
    match v {
        Value::String(s) => (s.len() as u64, 0),
        Value::Number(_) => (0, 1),
        Value::Array(items) => items.iter().fold((0, 0), |(b, t), item| {
            let (ib, it) = text_and_ids(item);
            (b + ib, t + it)
        }),
        _ => (0, 0),
    }
}

/// Prompt tokens of a legacy `prompt` or an embeddings `input`.
pub(crate) fn input_tokens(v: Option<&Value>) -> u64 {
    let (bytes, ids) = v.map(text_and_ids).unwrap_or((0, 0));
    (ceil4(bytes) + ids).max(1)
}

/// Number of separate prompts / inputs (`["a","b"]` → 2, `[1,2,3]` → 1).
pub(crate) fn input_count(v: Option<&Value>) -> usize {
    match v {
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_number()) => items.len().max(1),
        _ => 1,
    }
}

/// Prompt tokens of a chat `messages` array.
pub(crate) fn message_tokens(messages: &[Value]) -> u64 {
    let bytes: u64 = messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => s.len() as u64,
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(|t| t.len() as u64)
                .sum(),
            _ => 0,
        })
        .sum();
    (ceil4(bytes) + 3 * messages.len() as u64).max(1)
}

/// Prompt tokens for the endpoint kind, for bodies that may be invalid.
pub(crate) fn prompt_tokens_lenient(kind: Kind, body: &Value) -> u64 {
    match kind {
        Kind::Chat => match body.get("messages") {
            Some(Value::Array(m)) => message_tokens(m),
            _ => 1,
        },
        Kind::Completion => input_tokens(body.get("prompt")),
    }
}

fn positive_int(body: &Value, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(format!(
                "Invalid '{key}': expected an integer between 1 and {max}, but got {v} instead."
            ))
            .param(key)
            .code("invalid_value")),
        },
    }
}

/// The requested tool name if the request forces a tool call.
fn forced_tool(body: &Value) -> Option<String> {
    let tools = body.get("tools").and_then(Value::as_array)?;
    let first = tools.first()?;
    let choice = body.get("tool_choice");
    let named = choice
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    if let Some(name) = named {
        return Some(name.to_owned());
    }
    if choice.and_then(Value::as_str) == Some("required") {
        return Some(tool_name(first).to_owned());
    }
    None
}

fn tool_name(tool: &Value) -> &str {
    tool.get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_TOOL)
}

/// Validate the request and decide the answer.
pub(crate) fn build(kind: Kind, body: &Value, controls: Controls) -> Result<Plan, ApiError> {
    if !body.is_object() {
        return Err(crate::errors::bad_json());
    }
    let model = model_of(body)?.to_owned();

    let (prompt_tokens, prompts) = match kind {
        Kind::Chat => {
            let messages = match body.get("messages") {
                Some(Value::Array(m)) if !m.is_empty() => m,
                Some(Value::Array(_)) => {
                    return Err(ApiError::invalid(
                        "Invalid 'messages': empty array. Expected an array with minimum length \
                         1, but got an empty array instead.",
                    )
                    .param("messages")
                    .code("empty_array"));
                }
                None | Some(Value::Null) => {
                    return Err(ApiError::invalid("Missing required parameter: 'messages'.")
                        .param("messages")
                        .code("missing_required_parameter"));
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        "Invalid type for 'messages': expected an array of objects.",
                    )
                    .param("messages")
                    .code("invalid_type"));
                }
            };
            (message_tokens(messages), 1)
        }
        Kind::Completion => (
            input_tokens(body.get("prompt")),
            input_count(body.get("prompt")),
        ),
    };

    let n = positive_int(body, "n", MAX_N)?.unwrap_or(1);
    let choices = to_usize(n).saturating_mul(prompts);
    let max_key = if body
        .get("max_completion_tokens")
        .is_some_and(|v| !v.is_null())
    {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = positive_int(body, max_key, u64::MAX)?;

    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let stream_options = body.get("stream_options").filter(|v| !v.is_null());
    if stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )
        .param("stream_options"));
    }
    let include_usage = stream_options
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let tool = match kind {
        Kind::Chat if controls.tool_call => Some(forced_tool(body).unwrap_or_else(|| {
            body.get("tools")
                .and_then(Value::as_array)
                .and_then(|t| t.first())
                .map_or(DEFAULT_TOOL, tool_name)
                .to_owned()
        })),
        Kind::Chat => forced_tool(body),
        Kind::Completion => None,
    };

    let (reply, finish_reason, per_choice) = match tool {
        Some(name) => (Reply::Tool { name }, "tool_calls", tool_tokens()),
        None => {
            let t = plan_text(&controls, max_tokens, &[]);
            let finish = if t.end == TextEnd::Length {
                "length"
            } else {
                "stop"
            };
            (Reply::Text(t.source), finish, t.tokens)
        }
    };

    let cached_tokens = controls.cached_tokens.unwrap_or(0).min(prompt_tokens);
    Ok(Plan {
        kind,
        model,
        stream,
        include_usage,
        choices,
        reply,
        finish_reason,
        prompt_tokens,
        completion_tokens: per_choice.saturating_mul(choices as u64),
        cached_tokens,
        controls,
    })
}
