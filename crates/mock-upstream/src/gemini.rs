//! The Gemini API (`/v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent[?alt=sse]`, `GET /v1beta/models[/{model}]`): auth, validation,
//! planning and rendering.

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::errors::{ApiError, Dialect};
use crate::plan::{
    self, Controls, DEFAULT_TOOL, Reply, THINKING_TEXT, TOOL_ARGS, TextEnd, TextSource,
};
use crate::render::{Events, Pieces, Step};
use crate::server::{ConnInfo, Shared, json_response, parse_json, stream_response};
use crate::wire::{ceil4, push_json_str, push_u64};

const MAX_CANDIDATES: u64 = 8;

// ---------------------------------------------------------------------------------------
// Errors.

/// The canonical Google status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if (400..500).contains(&s) => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

pub(crate) fn error(status: u16, message: impl Into<String>) -> ApiError {
    ApiError::new(status, status_name(status), message).dialect(Dialect::Gemini)
}

fn invalid(message: impl Into<String>) -> ApiError {
    error(400, message)
}

fn bad_json() -> ApiError {
    invalid("Invalid JSON payload received. Unexpected token.")
}

fn missing_key() -> ApiError {
    error(
        403,
        "Method doesn't allow unregistered callers (callers without established identity). \
         Please use API Key or other form of API consumer identity to call this API.",
    )
}

fn invalid_key() -> ApiError {
    let mut e = invalid("API key not valid. Please pass a valid API key.");
    e.code = Some("API_KEY_INVALID".to_owned());
    e
}

pub(crate) fn rate_limited() -> ApiError {
    error(429, "Resource has been exhausted (e.g. check quota).")
}

pub(crate) fn insufficient_quota() -> ApiError {
    error(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    )
}

pub(crate) fn not_found(method: &str, path: &str) -> ApiError {
    error(404, format!("Method not found: {method} {path}"))
}

/// Gemini's error for a bare HTTP status.
pub(crate) fn for_status(status: u16) -> ApiError {
    let message = match status {
        400 => "Request contains an invalid argument.",
        401 => "Request had invalid authentication credentials.",
        403 => "The caller does not have permission",
        404 => "Requested entity was not found.",
        429 => return rate_limited(),
        500 => {
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting"
        }
        503 => "The model is overloaded. Please try again later.",
        504 => "The request timed out. Please try again.",
        _ => return error(status, format!("Request failed with status {status}.")),
    };
    error(status, message)
}

/// The error requested by `mock.status` / `mock.error_code`. `error_code` may be a Google
/// status name (`UNAVAILABLE`, ...) or one of the OpenAI codes the mock knows.
fn for_controls(
    ctl: &Controls,
    model: &str,
    prompt_tokens: impl FnOnce() -> u64,
) -> Option<ApiError> {
    let status = ctl.status;
    let mut err = match ctl.error_code.as_deref() {
        None => for_status(status?),
        Some("INVALID_ARGUMENT") => for_status(400),
        Some("UNAUTHENTICATED") => for_status(401),
        Some("PERMISSION_DENIED") => for_status(403),
        Some("NOT_FOUND") => for_status(404),
        Some("RESOURCE_EXHAUSTED" | "rate_limit_exceeded") => rate_limited(),
        Some("INTERNAL" | "server_error") => for_status(500),
        Some("UNAVAILABLE") => for_status(503),
        Some("DEADLINE_EXCEEDED") => for_status(504),
        Some("insufficient_quota") => insufficient_quota(),
        Some("invalid_api_key" | "API_KEY_INVALID") => invalid_key(),
        Some("context_length_exceeded") => invalid(format!(
            "The input token count ({}) exceeds the maximum number of tokens allowed (1048576).",
            prompt_tokens()
        )),
        Some("model_not_found") => error(
            404,
            format!(
                "models/{model} is not found for API version v1beta, or is not supported for \
                 generateContent. Call ListModels to see the list of available models and their \
                 supported methods."
            ),
        ),
        Some(other) => {
            let mut e = for_status(status.unwrap_or(400));
            e.message = format!("Mock error: {other}");
            e
        }
    };
    if let Some(s) = status {
        err.status = s;
        err.kind = status_name(s);
    }
    Some(err)
}

/// The value of query parameter `name` (not percent-decoded).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The key from `x-goog-api-key` or `?key=`: missing → 403, containing `bad` → 400
/// `API_KEY_INVALID`, `noquota` / `ratelimit` → 429 `RESOURCE_EXHAUSTED`.
fn check_auth(headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    let header_key = headers
        .get("x-goog-api-key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .filter(|k| !k.is_empty());
    let key = header_key.or_else(|| {
        query_param(query, "key")
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
    });
    match key {
        None => Err(missing_key()),
        Some(k) if k.contains("bad") => Err(invalid_key()),
        Some(k) if k.contains("noquota") => Err(insufficient_quota()),
        Some(k) if k.contains("ratelimit") => Err(rate_limited()),
        Some(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Plan.

/// Everything needed to render a GenerateContentResponse, streamed or not.
#[derive(Clone, Debug)]
pub(crate) struct GeneratePlan {
    pub model: String,
    pub candidates: usize,
    /// `thinkingConfig.includeThoughts`: a thought part comes first.
    pub thoughts: bool,
    pub reply: Reply,
    pub finish_reason: &'static str,
    /// Cached tokens included.
    pub prompt_tokens: u64,
    /// `cachedContentTokenCount` (≤ `prompt_tokens`).
    pub cached_tokens: u64,
    /// Summed over all candidates, thoughts excluded.
    pub candidates_tokens: u64,
    /// Summed over all candidates.
    pub thoughts_tokens: u64,
    pub controls: Controls,
}

fn parts_bytes(content: &Value) -> u64 {
    content
        .get("parts")
        .and_then(Value::as_array)
        .map_or(0, |parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(|t| t.len() as u64)
                .sum()
        })
}

/// `max(1, ceil(bytes of every part's text in systemInstruction + contents / 4)
/// + 3 * contents)`; the system instruction is not a content. Works on invalid bodies too.
pub(crate) fn prompt_tokens(body: &Value) -> u64 {
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let bytes = body.get("systemInstruction").map_or(0, parts_bytes)
        + contents.iter().map(parts_bytes).sum::<u64>();
    (ceil4(bytes) + 3 * contents.len() as u64).max(1)
}

fn validate(body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(bad_json());
    }
    let contents = match body.get("contents") {
        None | Some(Value::Null) => None,
        Some(Value::Array(c)) => Some(c),
        Some(other) => {
            return Err(invalid(format!(
                "Invalid value at 'contents' ({other}), expected a list of Content objects."
            )));
        }
    };
    let Some(contents) = contents.filter(|c| !c.is_empty()) else {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified\n",
        ));
    };
    for (i, c) in contents.iter().enumerate() {
        match c.get("role") {
            None | Some(Value::Null) => {}
            Some(Value::String(r)) if r == "user" || r == "model" => {}
            Some(_) => return Err(invalid("Please use a valid role: user, model.")),
        }
        if c.get("parts")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(invalid(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            )));
        }
    }
    Ok(())
}

/// The function to call, if any: mode `ANY` calls the first allowed function (or the first
/// declared one); `mock.tool_call` forces a call (`get_weather` when none is declared).
fn function_to_call(body: &Value, force: bool) -> Option<String> {
    let first_declared = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
        .flatten()
        .find_map(|d| d.get("name").and_then(Value::as_str));
    let config = body
        .get("toolConfig")
        .and_then(|t| t.get("functionCallingConfig"));
    let mode = config.and_then(|c| c.get("mode")).and_then(Value::as_str);
    let allowed = config
        .and_then(|c| c.get("allowedFunctionNames"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let name = allowed.or(first_declared);
    let any = mode.is_some_and(|m| m.eq_ignore_ascii_case("ANY"));
    if any && name.is_some() || force {
        Some(name.unwrap_or(DEFAULT_TOOL).to_owned())
    } else {
        None
    }
}

/// Validate a generateContent request for `model` and decide the answer.
pub(crate) fn build(
    model: &str,
    body: &Value,
    controls: Controls,
) -> Result<GeneratePlan, ApiError> {
    validate(body)?;
    let config = body.get("generationConfig");
    let get = |k: &str| config.and_then(|c| c.get(k)).filter(|v| !v.is_null());
    let candidates = match get("candidateCount") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_CANDIDATES).contains(&n) => plan::to_usize(n),
            _ => {
                return Err(invalid(format!(
                    "* GenerateContentRequest.generation_config.candidate_count: must be in \
                     range [1, {MAX_CANDIDATES}], got {v}.\n"
                )));
            }
        },
    };
    let max_tokens = get("maxOutputTokens")
        .and_then(plan::lenient_u64)
        .filter(|n| *n > 0);
    let thoughts = get("thinkingConfig")
        .and_then(|t| t.get("includeThoughts"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let prompt_tokens = prompt_tokens(body);
    let (reply, finish_reason, per_candidate) = match function_to_call(body, controls.tool_call) {
        Some(name) => (Reply::Tool { name }, "STOP", plan::tool_tokens()),
        None => {
            let stops = crate::anthropic::string_list(get("stopSequences"));
            let t = plan::plan_text(&controls, max_tokens, &stops);
            let finish = if t.end == TextEnd::Length {
                "MAX_TOKENS"
            } else {
                "STOP"
            };
            (Reply::Text(t.source), finish, t.tokens)
        }
    };
    let n = candidates as u64;
    let thoughts_tokens = if thoughts {
        plan::thinking_tokens().saturating_mul(n)
    } else {
        0
    };
    let cached_tokens = controls.cached_tokens.unwrap_or(0).min(prompt_tokens);
    Ok(GeneratePlan {
        model: model.to_owned(),
        candidates,
        thoughts,
        reply,
        finish_reason,
        prompt_tokens,
        cached_tokens,
        candidates_tokens: per_candidate.saturating_mul(n),
        thoughts_tokens,
        controls,
    })
}

// ---------------------------------------------------------------------------------------
// Rendering.

/// `,"usageMetadata":{...}`
fn push_usage(b: &mut String, p: &GeneratePlan) {
    b.push_str(r#","usageMetadata":{"promptTokenCount":"#);
    push_u64(b, p.prompt_tokens);
    b.push_str(r#","candidatesTokenCount":"#);
    push_u64(b, p.candidates_tokens);
    b.push_str(r#","totalTokenCount":"#);
    push_u64(b, p.prompt_tokens + p.candidates_tokens + p.thoughts_tokens);
    if p.cached_tokens > 0 {
        b.push_str(r#","cachedContentTokenCount":"#);
        push_u64(b, p.cached_tokens);
    }
    if p.thoughts {
        b.push_str(r#","thoughtsTokenCount":"#);
        push_u64(b, p.thoughts_tokens);
    }
    b.push('}');
}

/// `,"modelVersion":"m","responseId":"mock1"}`
fn tail(p: &GeneratePlan, id: u64) -> String {
    let mut t = String::with_capacity(48 + p.model.len());
    t.push_str(r#","modelVersion":"#);
    push_json_str(&mut t, &p.model);
    t.push_str(r#","responseId":"mock"#);
    push_u64(&mut t, id);
    t.push_str(r#""}"#);
    t
}

fn thought_part() -> String {
    let mut s = String::with_capacity(48);
    s.push_str(r#"{"text":"#);
    push_json_str(&mut s, THINKING_TEXT);
    s.push_str(r#","thought":true}"#);
    s
}

fn function_call_part(name: &str) -> String {
    let mut s = String::with_capacity(64 + name.len());
    s.push_str(r#"{"functionCall":{"name":"#);
    push_json_str(&mut s, name);
    s.push_str(r#","args":"#);
    s.push_str(TOOL_ARGS);
    s.push_str("}}");
    s
}

/// `{"candidates":[...]` with `parts` (comma-separated part objects) in every candidate.
fn push_candidates(b: &mut String, n: usize, parts: &str, finish: Option<&str>) {
    b.push_str(r#"{"candidates":["#);
    for i in 0..n {
        if i > 0 {
            b.push(',');
        }
        b.push_str(r#"{"content":{"parts":["#);
        b.push_str(parts);
        b.push_str(r#"],"role":"model"}"#);
        if let Some(f) = finish {
            b.push_str(r#","finishReason":""#);
            b.push_str(f);
            b.push('"');
        }
        b.push_str(r#","index":"#);
        push_u64(b, i as u64);
        b.push('}');
    }
    b.push(']');
}

/// Non-streaming GenerateContentResponse.
pub(crate) fn generate_body(p: &GeneratePlan, id: u64) -> String {
    let mut parts = String::new();
    if p.thoughts {
        parts.push_str(&thought_part());
        parts.push(',');
    }
    match &p.reply {
        Reply::Text(src) => {
            parts.push_str(r#"{"text":"#);
            crate::render::push_full_text(&mut parts, src);
            parts.push('}');
        }
        Reply::Tool { name } => parts.push_str(&function_call_part(name)),
    }
    let mut b = String::with_capacity(400 + (parts.len() + 80) * p.candidates);
    push_candidates(&mut b, p.candidates, &parts, Some(p.finish_reason));
    if !p.controls.omit_usage {
        push_usage(&mut b, p);
    }
    b.push_str(&tail(p, id));
    b
}

/// How stream chunks are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `alt=sse`: `data: {chunk}\r\n\r\n` per chunk.
    Sse,
    /// No `alt`: one JSON array `[{chunk},\r\n{chunk}]`, streamed.
    JsonArray,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Thought,
    Parts,
    Close,
    End,
}

/// Lazily generates the chunks of a streamGenerateContent response: an optional thought
/// chunk, then one chunk per text piece (or one functionCall chunk); the last carries
/// `finishReason` and `usageMetadata`.
pub(crate) struct GenerateStream {
    framing: Framing,
    candidates: usize,
    finish_reason: &'static str,
    usage: Option<String>,
    tail: String,
    pieces: Pieces,
    /// The next part object to send.
    pending: Option<String>,
    sent: usize,
    emitted: usize,
    drop_after: Option<usize>,
    phase: Phase,
}

impl GenerateStream {
    pub fn new(p: GeneratePlan, id: u64, framing: Framing) -> Self {
        let usage = (!p.controls.omit_usage).then(|| {
            let mut u = String::with_capacity(160);
            push_usage(&mut u, &p);
            u
        });
        let tail = tail(&p, id);
        let (reply, tool) = match p.reply {
            Reply::Tool { name } => (Reply::Text(TextSource::Custom(String::new())), Some(name)),
            r => (r, None),
        };
        let (mut pieces, _) = Pieces::for_reply(reply, p.controls.chunk_size);
        let pending = match tool {
            Some(name) => Some(function_call_part(&name)),
            None => {
                Some(Self::next_text(&mut pieces).unwrap_or_else(|| r#"{"text":""}"#.to_owned()))
            }
        };
        GenerateStream {
            framing,
            candidates: p.candidates,
            finish_reason: p.finish_reason,
            usage,
            tail,
            pieces,
            pending,
            sent: 0,
            emitted: 0,
            drop_after: p.controls.drop_after,
            phase: if p.thoughts {
                Phase::Thought
            } else {
                Phase::Parts
            },
        }
    }

    fn next_text(pieces: &mut Pieces) -> Option<String> {
        let mut s = String::from(r#"{"text":"#);
        pieces.next_into(&mut s).then(|| {
            s.push('}');
            s
        })
    }

    fn chunk(&mut self, part: &str, last: bool) -> Bytes {
        let mut c = String::with_capacity(160 + part.len() * self.candidates);
        c.push_str(match (self.framing, self.emitted) {
            (Framing::Sse, _) => "data: ",
            (Framing::JsonArray, 0) => "[",
            (Framing::JsonArray, _) => ",\r\n",
        });
        push_candidates(
            &mut c,
            self.candidates,
            part,
            last.then_some(self.finish_reason),
        );
        if last && let Some(u) = &self.usage {
            c.push_str(u);
        }
        c.push_str(&self.tail);
        if self.framing == Framing::Sse {
            c.push_str("\r\n\r\n");
        }
        self.emitted += 1;
        Bytes::from(c)
    }
}

impl Events for GenerateStream {
    fn next_step(&mut self) -> Step {
        match self.phase {
            Phase::Thought => {
                self.phase = Phase::Parts;
                Step::Event(self.chunk(&thought_part(), false))
            }
            Phase::Parts => {
                if self.drop_after.is_some_and(|d| self.sent >= d) {
                    self.phase = Phase::End;
                    return Step::Drop;
                }
                let Some(part) = self.pending.take() else {
                    // Only reachable with drop_after: the finishing chunk is withheld.
                    self.phase = Phase::End;
                    return Step::Drop;
                };
                self.pending = Self::next_text(&mut self.pieces);
                let last = self.pending.is_none() && self.drop_after.is_none();
                self.sent += 1;
                if last {
                    self.phase = Phase::Close;
                }
                Step::Event(self.chunk(&part, last))
            }
            Phase::Close => {
                self.phase = Phase::End;
                match self.framing {
                    Framing::JsonArray => Step::Event(Bytes::from_static(b"]")),
                    Framing::Sse => Step::End,
                }
            }
            Phase::End => Step::End,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Models.

const MODELS: [(&str, &str); 3] = [
    ("gemini-2.0-flash", "Gemini 2.0 Flash"),
    ("gemini-2.5-flash", "Gemini 2.5 Flash"),
    ("gemini-2.5-pro", "Gemini 2.5 Pro"),
];

fn push_model(b: &mut String, id: &str, display: &str) {
    b.push_str(r#"{"name":"#);
    push_json_str(b, &format!("models/{id}"));
    b.push_str(r#","version":"001","displayName":"#);
    push_json_str(b, display);
    b.push_str(r#","description":"A mock Gemini model.","inputTokenLimit":1048576,"outputTokenLimit":8192,"supportedGenerationMethods":["generateContent","streamGenerateContent"],"temperature":1,"topP":0.95,"topK":40,"maxTemperature":2}"#);
}

fn models_list() -> Response {
    let mut b = String::with_capacity(1200);
    b.push_str(r#"{"models":["#);
    for (i, (id, display)) in MODELS.iter().enumerate() {
        if i > 0 {
            b.push(',');
        }
        push_model(&mut b, id, display);
    }
    b.push_str("]}");
    json_response(StatusCode::OK, b)
}

fn model_object(id: &str) -> Response {
    let display = MODELS
        .iter()
        .find(|(m, _)| *m == id)
        .map_or(id, |(_, d)| *d);
    let mut b = String::with_capacity(400);
    push_model(&mut b, id, display);
    json_response(StatusCode::OK, b)
}

// ---------------------------------------------------------------------------------------
// Handlers.

/// Everything under `/v1beta/`.
pub(crate) async fn handle(
    st: &Shared,
    conn: &ConnInfo,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Err(e) = check_auth(headers, query) {
        return e.into_response();
    }
    let not_found = || not_found(method.as_str(), path).into_response();
    if path == "/v1beta/models" || path == "/v1beta/models/" {
        return if method == Method::GET {
            models_list()
        } else {
            not_found()
        };
    }
    let Some(rest) = path.strip_prefix("/v1beta/models/") else {
        return not_found();
    };
    let rest = rest.replace("%3A", ":").replace("%3a", ":");
    if rest.contains('/') {
        return not_found();
    }
    match rest.rsplit_once(':') {
        None if method == Method::GET => model_object(&rest),
        Some((model, action)) if method == Method::POST && !model.is_empty() => match action {
            "generateContent" => generate(st, conn, model, None, body).await,
            "streamGenerateContent" => {
                let framing = if query_param(query, "alt") == Some("sse") {
                    Framing::Sse
                } else {
                    Framing::JsonArray
                };
                generate(st, conn, model, Some(framing), body).await
            }
            _ => not_found(),
        },
        _ => not_found(),
    }
}

async fn generate(
    st: &Shared,
    conn: &ConnInfo,
    model: &str,
    stream: Option<Framing>,
    body: &[u8],
) -> Response {
    let Some(v) = parse_json(body) else {
        return bad_json().into_response();
    };
    let ctl = Controls::parse(&v, &st.defaults);
    crate::server::apply_delay(&ctl).await;
    if let Some(e) = for_controls(&ctl, model, || prompt_tokens(&v)) {
        return e.into_response();
    }
    let plan = match build(model, &v, ctl) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let id = st.next_id();
    match stream {
        Some(framing) => {
            let delay = plan.controls.chunk_delay_ms;
            let content_type = match framing {
                Framing::Sse => "text/event-stream",
                Framing::JsonArray => "application/json",
            };
            stream_response(GenerateStream::new(plan, id, framing), delay, content_type)
        }
        None if plan.controls.drop_after.is_some() => {
            conn.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        None => json_response(StatusCode::OK, generate_body(&plan, id)),
    }
}
