//! The Anthropic Messages API (`POST /v1/messages`): auth, validation, planning and
//! rendering (JSON body and the named SSE event sequence).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::errors::{ApiError, Dialect};
use crate::plan::{self, Controls, DEFAULT_TOOL, Reply, THINKING_TEXT, TOOL_ARGS, TextEnd};
use crate::render::{Events, Pieces, Step, push_full_text};
use crate::server::{ConnInfo, Shared, json_response, parse_json, stream_response};
use crate::wire::{ceil4, push_json_opt, push_json_str, push_u64};

pub(crate) const TOOL_USE_ID: &str = "toolu_mock1";
pub(crate) const SIGNATURE: &str = "sig_mock";

const INVALID_REQUEST: &str = "invalid_request_error";

// ---------------------------------------------------------------------------------------
// Errors.

pub(crate) fn error(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, kind, message).dialect(Dialect::Anthropic)
}

fn invalid(message: impl Into<String>) -> ApiError {
    error(400, INVALID_REQUEST, message)
}

fn invalid_key() -> ApiError {
    error(401, "authentication_error", "invalid x-api-key")
}

pub(crate) fn rate_limited() -> ApiError {
    error(
        429,
        "rate_limit_error",
        "Number of requests has exceeded your rate limit \
         (https://docs.anthropic.com/en/api/rate-limits). Please try again later or contact \
         sales at https://www.anthropic.com/contact-sales to discuss your options for a rate \
         limit increase.",
    )
    .with_retry_after()
}

pub(crate) fn insufficient_quota() -> ApiError {
    invalid(
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & \
         Billing to upgrade or purchase credits.",
    )
}

pub(crate) fn not_found() -> ApiError {
    error(404, "not_found_error", "Not Found")
}

/// Anthropic's error for a bare HTTP status.
pub(crate) fn for_status(status: u16) -> ApiError {
    match status {
        400 => invalid("There was an issue with the format or content of your request."),
        401 => invalid_key(),
        403 => error(
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => error(
            404,
            "not_found_error",
            "The requested resource could not be found.",
        ),
        413 => error(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => rate_limited(),
        500 => error(
            500,
            "api_error",
            "An unexpected error has occurred internal to Anthropic's systems.",
        ),
        529 => error(529, "overloaded_error", "Overloaded"),
        s if (400..500).contains(&s) => error(
            s,
            INVALID_REQUEST,
            format!("Request failed with status {s}."),
        ),
        s => error(s, "api_error", format!("Request failed with status {s}.")),
    }
}

/// The error requested by `mock.status` / `mock.error_code`. `error_code` may be an
/// Anthropic error type (`overloaded_error`, ...) or one of the OpenAI codes the mock
/// knows (`rate_limit_exceeded`, `insufficient_quota`, `invalid_api_key`,
/// `context_length_exceeded`, `model_not_found`, `server_error`).
fn for_controls(
    ctl: &Controls,
    model: &str,
    prompt_tokens: impl FnOnce() -> u64,
) -> Option<ApiError> {
    let status = ctl.status;
    let mut err = match ctl.error_code.as_deref() {
        None => for_status(status?),
        Some("invalid_request_error") => for_status(400),
        Some("authentication_error" | "invalid_api_key") => for_status(401),
        Some("permission_error") => for_status(403),
        Some("not_found_error") => for_status(404),
        Some("request_too_large") => for_status(413),
        Some("rate_limit_error" | "rate_limit_exceeded") => rate_limited(),
        Some("api_error" | "server_error") => for_status(500),
        Some("overloaded_error") => for_status(529),
        Some("insufficient_quota") => insufficient_quota(),
        Some("context_length_exceeded") => invalid(format!(
            "prompt is too long: {} tokens > 200000 maximum",
            prompt_tokens()
        )),
        Some("model_not_found") => error(404, "not_found_error", format!("model: {model}")),
        Some(other) => {
            let mut e = for_status(status.unwrap_or(400));
            e.message = format!("Mock error: {other}");
            e
        }
    };
    if let Some(s) = status {
        err.status = s;
    }
    Some(err)
}

/// `x-api-key` (missing or containing `bad` → 401, `noquota` → credit balance error,
/// `ratelimit` → 429), then the required `anthropic-version` header.
fn check_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    let key = headers
        .get("x-api-key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .unwrap_or_default();
    if key.is_empty() || key.contains("bad") {
        return Err(invalid_key());
    }
    if key.contains("noquota") {
        return Err(insufficient_quota());
    }
    if key.contains("ratelimit") {
        return Err(rate_limited());
    }
    if headers.get("anthropic-version").is_none() {
        return Err(invalid("anthropic-version: header is required"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Plan.

/// Everything needed to render a Messages response, streamed or not.
#[derive(Clone, Debug)]
pub(crate) struct MessagesPlan {
    pub model: String,
    pub stream: bool,
    /// `thinking.type == "enabled"`: a thinking block comes first.
    pub thinking: bool,
    pub reply: Reply,
    pub stop_reason: &'static str,
    pub stop_sequence: Option<String>,
    /// All prompt tokens, cache reads included.
    pub prompt_tokens: u64,
    /// `cache_read_input_tokens` (≤ `prompt_tokens`).
    pub cached_tokens: u64,
    /// Thinking included.
    pub output_tokens: u64,
    pub controls: Controls,
}

impl MessagesPlan {
    /// `input_tokens` as Anthropic reports it: cache reads excluded.
    pub fn input_tokens(&self) -> u64 {
        self.prompt_tokens - self.cached_tokens
    }
}

/// Bytes of text in a `content` / `system` value: a string, or blocks of which `text`
/// blocks count their `text` and `tool_result` blocks their `content` (string or blocks).
fn content_bytes(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.len() as u64,
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b.get("text").and_then(Value::as_str).map_or(0, str::len) as u64,
                Some("tool_result") => content_bytes(b.get("content")),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// `max(1, ceil(text bytes of system + messages / 4) + 3 * messages)`; the system prompt
/// adds its bytes but is not a message. Works on invalid bodies too.
pub(crate) fn prompt_tokens(body: &Value) -> u64 {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let bytes = content_bytes(body.get("system"))
        + messages
            .iter()
            .map(|m| content_bytes(m.get("content")))
            .sum::<u64>();
    (ceil4(bytes) + 3 * messages.len() as u64).max(1)
}

fn validate(body: &Value) -> Result<(String, u64), ApiError> {
    if !body.is_object() {
        return Err(invalid("Request body must be a JSON object."));
    }
    let model = match body.get("model") {
        None | Some(Value::Null) => return Err(invalid("model: Field required")),
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => {
            return Err(invalid("model: String should have at least 1 character"));
        }
        Some(_) => return Err(invalid("model: Input should be a valid string")),
    };
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => return Err(invalid("max_tokens: Field required")),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(n), _) if n >= 1 => n,
            (_, Some(_)) => {
                return Err(invalid(
                    "max_tokens: Input should be greater than or equal to 1",
                ));
            }
            _ => return Err(invalid("max_tokens: Input should be a valid integer")),
        },
    };
    let messages = match body.get("messages") {
        None | Some(Value::Null) => return Err(invalid("messages: Field required")),
        Some(Value::Array(m)) => m,
        Some(_) => return Err(invalid("messages: Input should be a valid list")),
    };
    if messages.is_empty() {
        return Err(invalid("messages: at least one message is required"));
    }
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            None if m.get("role").is_none() => {
                return Err(invalid(format!("messages.{i}.role: Field required")));
            }
            _ => {
                return Err(invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )));
            }
        }
        match m.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            None | Some(Value::Null) => {
                return Err(invalid(format!("messages.{i}.content: Field required")));
            }
            Some(_) => {
                return Err(invalid(format!(
                    "messages.{i}.content: Input should be a valid list"
                )));
            }
        }
    }
    Ok((model, max_tokens))
}

/// The tool to call, if any: `tool_choice` `{"type":"tool","name":N}` → N,
/// `{"type":"any"}` → the first tool; `mock.tool_call` forces a call (the forced tool, the
/// first tool, or `get_weather`).
fn tool_to_call(body: &Value, force: bool) -> Option<String> {
    let first = body
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str);
    let choice = body.get("tool_choice");
    let forced = match choice.and_then(|c| c.get("type")).and_then(Value::as_str) {
        Some("tool") => choice
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .or(first),
        Some("any") => first,
        _ => None,
    };
    match forced {
        Some(name) => Some(name.to_owned()),
        None if force => Some(first.unwrap_or(DEFAULT_TOOL).to_owned()),
        None => None,
    }
}

pub(crate) fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Validate a Messages request and decide the answer.
pub(crate) fn build(body: &Value, controls: Controls) -> Result<MessagesPlan, ApiError> {
    let (model, max_tokens) = validate(body)?;
    let prompt_tokens = prompt_tokens(body);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let thinking = body
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        == Some("enabled");
    let (reply, stop_reason, stop_sequence, tokens) = match tool_to_call(body, controls.tool_call) {
        Some(name) => (Reply::Tool { name }, "tool_use", None, plan::tool_tokens()),
        None => {
            let stops = string_list(body.get("stop_sequences"));
            let t = plan::plan_text(&controls, Some(max_tokens), &stops);
            let (reason, seq) = match t.end {
                TextEnd::Complete => ("end_turn", None),
                TextEnd::Stop(s) => ("stop_sequence", Some(s)),
                TextEnd::Length => ("max_tokens", None),
            };
            (Reply::Text(t.source), reason, seq, t.tokens)
        }
    };
    let output_tokens = tokens + if thinking { plan::thinking_tokens() } else { 0 };
    let cached_tokens = controls.cached_tokens.unwrap_or(0).min(prompt_tokens);
    Ok(MessagesPlan {
        model,
        stream,
        thinking,
        reply,
        stop_reason,
        stop_sequence,
        prompt_tokens,
        cached_tokens,
        output_tokens,
        controls,
    })
}

// ---------------------------------------------------------------------------------------
// Rendering.

fn push_usage(b: &mut String, p: &MessagesPlan, output_tokens: u64) {
    b.push_str(r#"{"input_tokens":"#);
    push_u64(b, p.input_tokens());
    b.push_str(r#","output_tokens":"#);
    push_u64(b, output_tokens);
    b.push_str(r#","cache_creation_input_tokens":0,"cache_read_input_tokens":"#);
    push_u64(b, p.cached_tokens);
    b.push('}');
}

fn push_thinking_block(b: &mut String) {
    b.push_str(r#"{"type":"thinking","thinking":"#);
    push_json_str(b, THINKING_TEXT);
    b.push_str(r#","signature":""#);
    b.push_str(SIGNATURE);
    b.push_str(r#""}"#);
}

fn push_message_head(b: &mut String, p: &MessagesPlan, id: u64) {
    b.push_str(r#"{"id":"msg_mock"#);
    push_u64(b, id);
    b.push_str(r#"","type":"message","role":"assistant","model":"#);
    push_json_str(b, &p.model);
    b.push_str(r#","content":["#);
}

/// Non-streaming response body.
pub(crate) fn message_body(p: &MessagesPlan, id: u64) -> String {
    let mut b = String::with_capacity(400 + p.model.len() + text_len_hint(&p.reply));
    push_message_head(&mut b, p, id);
    if p.thinking {
        push_thinking_block(&mut b);
        b.push(',');
    }
    match &p.reply {
        Reply::Text(src) => {
            b.push_str(r#"{"type":"text","text":"#);
            push_full_text(&mut b, src);
            b.push('}');
        }
        Reply::Tool { name } => {
            b.push_str(r#"{"type":"tool_use","id":""#);
            b.push_str(TOOL_USE_ID);
            b.push_str(r#"","name":"#);
            push_json_str(&mut b, name);
            b.push_str(r#","input":"#);
            b.push_str(TOOL_ARGS);
            b.push('}');
        }
    }
    b.push_str(r#"],"stop_reason":""#);
    b.push_str(p.stop_reason);
    b.push_str(r#"","stop_sequence":"#);
    push_json_opt(&mut b, p.stop_sequence.as_deref());
    if !p.controls.omit_usage {
        b.push_str(r#","usage":"#);
        push_usage(&mut b, p, p.output_tokens);
    }
    b.push('}');
    b
}

fn text_len_hint(r: &Reply) -> usize {
    match r {
        Reply::Text(crate::plan::TextSource::Default(len)) => *len,
        Reply::Text(crate::plan::TextSource::Custom(s)) => s.len() + s.len() / 8,
        Reply::Tool { .. } => 160,
    }
}

fn sse_event(name: &str, data: &str) -> Bytes {
    let mut e = String::with_capacity(name.len() + data.len() + 16);
    e.push_str("event: ");
    e.push_str(name);
    e.push_str("\ndata: ");
    e.push_str(data);
    e.push_str("\n\n");
    Bytes::from(e)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    MessageStart,
    Ping,
    ThinkingStart,
    ThinkingDelta,
    SignatureDelta,
    ThinkingStop,
    BlockStart,
    Pieces,
    BlockStop,
    MessageDelta,
    MessageStop,
    End,
}

/// Lazily generates the SSE events of a streamed Messages response:
/// `message_start`, `ping`, per block `content_block_start` / `content_block_delta`... /
/// `content_block_stop`, `message_delta`, `message_stop`.
pub(crate) struct MessagesStream {
    start: String,
    message_delta: String,
    thinking: bool,
    /// Index of the text / tool_use block (1 after a thinking block).
    main_index: u64,
    tool_name: Option<String>,
    pieces: Pieces,
    piece: String,
    pieces_sent: usize,
    drop_after: Option<usize>,
    phase: Phase,
}

impl MessagesStream {
    pub fn new(p: MessagesPlan, id: u64) -> Self {
        let mut start = String::with_capacity(300 + p.model.len());
        start.push_str(r#"{"type":"message_start","message":"#);
        push_message_head(&mut start, &p, id);
        start.push_str(r#"],"stop_reason":null,"stop_sequence":null"#);
        if !p.controls.omit_usage {
            start.push_str(r#","usage":"#);
            push_usage(&mut start, &p, 1);
        }
        start.push_str("}}");

        let mut message_delta = String::with_capacity(120);
        message_delta.push_str(r#"{"type":"message_delta","delta":{"stop_reason":""#);
        message_delta.push_str(p.stop_reason);
        message_delta.push_str(r#"","stop_sequence":"#);
        push_json_opt(&mut message_delta, p.stop_sequence.as_deref());
        message_delta.push('}');
        if !p.controls.omit_usage {
            message_delta.push_str(r#","usage":{"output_tokens":"#);
            push_u64(&mut message_delta, p.output_tokens);
            message_delta.push('}');
        }
        message_delta.push('}');

        let (pieces, tool_name) = Pieces::for_reply(p.reply, p.controls.chunk_size);
        MessagesStream {
            start,
            message_delta,
            thinking: p.thinking,
            main_index: u64::from(p.thinking),
            tool_name,
            pieces,
            piece: String::new(),
            pieces_sent: 0,
            drop_after: p.controls.drop_after,
            phase: Phase::MessageStart,
        }
    }

    fn block_stop(index: u64) -> Bytes {
        let mut d = String::with_capacity(48);
        d.push_str(r#"{"type":"content_block_stop","index":"#);
        push_u64(&mut d, index);
        d.push('}');
        sse_event("content_block_stop", &d)
    }

    fn main_start(&self) -> Bytes {
        let mut d = String::with_capacity(160);
        d.push_str(r#"{"type":"content_block_start","index":"#);
        push_u64(&mut d, self.main_index);
        match &self.tool_name {
            None => d.push_str(r#","content_block":{"type":"text","text":""}}"#),
            Some(name) => {
                d.push_str(r#","content_block":{"type":"tool_use","id":""#);
                d.push_str(TOOL_USE_ID);
                d.push_str(r#"","name":"#);
                push_json_str(&mut d, name);
                d.push_str(r#","input":{}}}"#);
            }
        }
        sse_event("content_block_start", &d)
    }

    fn piece_delta(&self) -> Bytes {
        let mut d = String::with_capacity(self.piece.len() + 96);
        d.push_str(r#"{"type":"content_block_delta","index":"#);
        push_u64(&mut d, self.main_index);
        if self.tool_name.is_some() {
            d.push_str(r#","delta":{"type":"input_json_delta","partial_json":"#);
        } else {
            d.push_str(r#","delta":{"type":"text_delta","text":"#);
        }
        d.push_str(&self.piece);
        d.push_str("}}");
        sse_event("content_block_delta", &d)
    }
}

impl Events for MessagesStream {
    fn next_step(&mut self) -> Step {
        loop {
            let (next, event) = match self.phase {
                Phase::MessageStart => (Phase::Ping, sse_event("message_start", &self.start)),
                Phase::Ping => {
                    let next = if self.thinking {
                        Phase::ThinkingStart
                    } else {
                        Phase::BlockStart
                    };
                    (next, sse_event("ping", r#"{"type":"ping"}"#))
                }
                Phase::ThinkingStart => (
                    Phase::ThinkingDelta,
                    sse_event(
                        "content_block_start",
                        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
                    ),
                ),
                Phase::ThinkingDelta => {
                    let mut d = String::with_capacity(120);
                    d.push_str(
                        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"#,
                    );
                    push_json_str(&mut d, THINKING_TEXT);
                    d.push_str("}}");
                    (Phase::SignatureDelta, sse_event("content_block_delta", &d))
                }
                Phase::SignatureDelta => {
                    let mut d = String::with_capacity(120);
                    d.push_str(
                        r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":""#,
                    );
                    d.push_str(SIGNATURE);
                    d.push_str(r#""}}"#);
                    (Phase::ThinkingStop, sse_event("content_block_delta", &d))
                }
                Phase::ThinkingStop => (Phase::BlockStart, Self::block_stop(0)),
                Phase::BlockStart => (Phase::Pieces, self.main_start()),
                Phase::Pieces => {
                    if self.drop_after.is_some_and(|d| self.pieces_sent >= d) {
                        self.phase = Phase::End;
                        return Step::Drop;
                    }
                    self.piece.clear();
                    if self.pieces.next_into(&mut self.piece) {
                        self.pieces_sent += 1;
                        (Phase::Pieces, self.piece_delta())
                    } else if self.drop_after.is_some() {
                        self.phase = Phase::End;
                        return Step::Drop;
                    } else {
                        self.phase = Phase::BlockStop;
                        continue;
                    }
                }
                Phase::BlockStop => (Phase::MessageDelta, Self::block_stop(self.main_index)),
                Phase::MessageDelta => (
                    Phase::MessageStop,
                    sse_event("message_delta", &self.message_delta),
                ),
                Phase::MessageStop => (
                    Phase::End,
                    sse_event("message_stop", r#"{"type":"message_stop"}"#),
                ),
                Phase::End => return Step::End,
            };
            self.phase = next;
            return Step::Event(event);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handler.

/// `POST /v1/messages`.
pub(crate) async fn messages(
    st: &Shared,
    conn: &ConnInfo,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Err(e) = check_headers(headers) {
        return e.into_response();
    }
    let v = match parse_json(body) {
        Some(v) => v,
        None => {
            return invalid(
                "There was an error parsing the body of your request: the body is not valid JSON.",
            )
            .into_response();
        }
    };
    let ctl = Controls::parse(&v, &st.defaults);
    crate::server::apply_delay(&ctl).await;
    let model = v.get("model").and_then(Value::as_str).unwrap_or("");
    if let Some(e) = for_controls(&ctl, model, || prompt_tokens(&v)) {
        return e.into_response();
    }
    let plan = match build(&v, ctl) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let id = st.next_id();
    let mut resp = if plan.stream {
        let delay = plan.controls.chunk_delay_ms;
        stream_response(MessagesStream::new(plan, id), delay, "text/event-stream")
    } else if plan.controls.drop_after.is_some() {
        // Nothing streamed yet: dropping "after n chunks" means dropping without a response.
        conn.kill();
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    } else {
        json_response(StatusCode::OK, message_body(&plan, id))
    };
    if let Ok(v) = HeaderValue::from_str(&format!("req_mock{id}")) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}
