//! The three API dialects the gateway speaks — OpenAI, Anthropic, Gemini —
//! and how a request in one reaches a channel of another.
//!
//! A channel of the client's own dialect is called natively: the body is
//! forwarded as it came (only the model renamed, and for OpenAI streams the
//! usage chunk requested), and the answer's bytes are relayed as they come,
//! scanned for usage. Between dialects, OpenAI Chat Completions is the hub:
//! `providers::anthropic` and `providers::gemini` map to and from it, and a
//! Gemini request for an Anthropic channel goes through both.

use bytes::Bytes;
use serde_json::Value;

use crate::error::{ErrorKind, RelayError};
use crate::openai::{self, UsageCarrier};
use crate::providers::{TranslateError, anthropic, gemini, responses};
use crate::sse;
use crate::tokens::StreamCounter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
    Gemini,
    /// OpenAI's Responses API (`/v1/responses`).
    Responses,
}

impl Api {
    /// The dialect of a channel kind.
    pub fn of_kind(kind: &str) -> Option<Api> {
        match kind {
            "openai" | "azure" => Some(Api::OpenAi),
            "anthropic" => Some(Api::Anthropic),
            "gemini" => Some(Api::Gemini),
            _ => None,
        }
    }
}

fn translate_err(e: TranslateError) -> RelayError {
    match e {
        TranslateError::Unsupported(m) => RelayError::new(ErrorKind::BadRequest, m),
        TranslateError::Invalid(m) => RelayError::new(ErrorKind::BadRequest, m),
    }
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn parse(body: &[u8]) -> Result<Value, RelayError> {
    serde_json::from_slice(body).map_err(|e| {
        RelayError::new(
            ErrorKind::BadRequest,
            format!("We could not parse the JSON body of your request: {e}."),
        )
    })
}

/// A request as it goes to the upstream.
pub struct UpstreamRequest {
    pub path: String,
    pub body: Bytes,
}

/// What the client asked for, beyond its body.
pub struct RequestShape<'a> {
    pub client: Api,
    /// OpenAI path of the endpoint (`/chat/completions`, …) for OpenAI clients.
    pub openai_path: &'a str,
    pub stream: bool,
    pub client_wants_usage: bool,
    pub default_max_tokens: u64,
    /// The body carries an OpenRouter-style `models` list, which the
    /// gateway consumed and must not forward.
    pub strip_models: bool,
}

/// Builds the upstream body and path for a channel of dialect `target`.
pub fn build_request(
    shape: &RequestShape<'_>,
    target: Api,
    body: &Bytes,
    request_model: &str,
    upstream_model: &str,
) -> Result<UpstreamRequest, RelayError> {
    let rename = (upstream_model != request_model).then_some(upstream_model);
    let gemini_path = |model: &str| {
        if shape.stream {
            format!("/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("/models/{model}:generateContent")
        }
    };
    match (shape.client, target) {
        (Api::OpenAi, Api::OpenAi) => {
            // (a body rewritten anyway may ask again: harmless, and it covers a
            // client that asked for usage with OpenRouter's `usage.include`)
            let inject = shape.stream && (!shape.client_wants_usage || shape.strip_models);
            let body = if rename.is_some() || inject || shape.strip_models {
                Bytes::from(
                    openai::rewrite_body(body, rename, inject, shape.strip_models)
                        .map_err(|e| RelayError::new(ErrorKind::BadRequest, e))?,
                )
            } else {
                body.clone()
            };
            Ok(UpstreamRequest {
                path: shape.openai_path.to_string(),
                body,
            })
        }
        (Api::Anthropic, Api::Anthropic) => {
            let body = if rename.is_some() || shape.strip_models {
                Bytes::from(
                    openai::rewrite_body(body, rename, false, shape.strip_models)
                        .map_err(|e| RelayError::new(ErrorKind::BadRequest, e))?,
                )
            } else {
                body.clone()
            };
            Ok(UpstreamRequest {
                path: "/messages".into(),
                body,
            })
        }
        (Api::Responses, Api::Responses) => {
            let body = if rename.is_some() || shape.strip_models {
                Bytes::from(
                    openai::rewrite_body(body, rename, false, shape.strip_models)
                        .map_err(|e| RelayError::new(ErrorKind::BadRequest, e))?,
                )
            } else {
                body.clone()
            };
            Ok(UpstreamRequest {
                path: "/responses".into(),
                body,
            })
        }
        (Api::Gemini, Api::Gemini) => Ok(UpstreamRequest {
            path: gemini_path(upstream_model),
            body: body.clone(),
        }),
        (client, target) => {
            if shape.openai_path != "/chat/completions" && client == Api::OpenAi {
                return Err(RelayError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "The endpoint {} is served only by OpenAI-compatible channels.",
                        shape.openai_path
                    ),
                ));
            }
            let v = parse(body)?;
            // to the hub …
            let mut chat = match client {
                Api::OpenAi => v,
                Api::Anthropic => anthropic::anthropic_to_chat_request(&v, upstream_model)
                    .map_err(translate_err)?,
                Api::Gemini => gemini::gemini_to_chat_request(&v, upstream_model, shape.stream)
                    .map_err(translate_err)?,
                Api::Responses => responses::responses_to_chat_request(&v, upstream_model)
                    .map_err(translate_err)?,
            };
            if let Some(o) = chat.as_object_mut() {
                o.remove("models");
                o.insert("model".into(), Value::String(upstream_model.to_string()));
                if shape.stream {
                    o.insert("stream".into(), Value::Bool(true));
                }
            }
            // … and out of it
            let (path, out) = match target {
                Api::OpenAi => {
                    if shape.stream
                        && let Some(o) = chat.as_object_mut()
                    {
                        o.insert(
                            "stream_options".into(),
                            serde_json::json!({"include_usage": true}),
                        );
                    }
                    ("/chat/completions".to_string(), chat)
                }
                Api::Anthropic => (
                    "/messages".to_string(),
                    anthropic::chat_to_anthropic_request(
                        &chat,
                        upstream_model,
                        shape.default_max_tokens,
                    )
                    .map_err(translate_err)?,
                ),
                Api::Gemini => (
                    gemini_path(upstream_model),
                    gemini::chat_to_gemini_request(&chat).map_err(translate_err)?,
                ),
                Api::Responses => {
                    return Err(RelayError::new(
                        ErrorKind::Internal,
                        "a Responses channel serves only Responses requests",
                    ));
                }
            };
            Ok(UpstreamRequest {
                path,
                body: to_bytes(&out),
            })
        }
    }
}

/// Usage of a whole (non-streamed) upstream answer in dialect `api`.
fn body_usage(api: Api, v: &Value) -> Option<billing::Usage> {
    match api {
        Api::OpenAi => v
            .get("usage")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
            .map(openai::usage_of),
        Api::Anthropic => v.get("usage").and_then(anthropic::anthropic_usage),
        Api::Gemini => v.get("usageMetadata").and_then(gemini::gemini_usage),
        Api::Responses => v.get("usage").and_then(responses::responses_usage),
    }
}

/// Converts a whole upstream answer for the client; returns its bytes and
/// the usage the upstream reported.
pub fn convert_body(
    client: Api,
    upstream: Api,
    body: Bytes,
    request_model: &str,
    request: &[u8],
) -> Result<(Bytes, Option<billing::Usage>), RelayError> {
    let bad = |e: String| RelayError::new(ErrorKind::UpstreamFailed, e);
    if client == upstream {
        let usage = match client {
            Api::OpenAi => openai::tail_usage(&body).or_else(|| {
                serde_json::from_slice::<UsageCarrier>(&body)
                    .ok()
                    .and_then(|c| c.usage)
                    .map(openai::usage_of)
            }),
            other => serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| body_usage(other, &v)),
        };
        return Ok((body, usage));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("The upstream sent an unreadable answer ({e}).")))?;
    let usage = body_usage(upstream, &v);
    let te = |e: TranslateError| bad(format!("The upstream answer could not be translated: {e}"));
    let chat = match upstream {
        Api::OpenAi => v,
        Api::Anthropic => anthropic::anthropic_to_chat_response(&v, request_model).map_err(te)?,
        Api::Gemini => gemini::gemini_to_chat_response(&v, request_model).map_err(te)?,
        Api::Responses => return Err(bad("a Responses answer for another dialect".into())),
    };
    let out = match client {
        Api::OpenAi => chat,
        Api::Anthropic => {
            anthropic::chat_to_anthropic_response(&chat, request_model).map_err(te)?
        }
        Api::Gemini => gemini::chat_to_gemini_response(&chat, request_model).map_err(te)?,
        Api::Responses => {
            let req: Value = serde_json::from_slice(request).unwrap_or(Value::Null);
            responses::chat_to_responses_response(&chat, &req, request_model).map_err(te)?
        }
    };
    Ok((to_bytes(&out), usage))
}

fn has_object_field(json: &[u8], field: &[u8]) -> bool {
    // `"usage"` is looked for in every event: a quick byte check first
    if memchr::memmem::find(json, field).is_none() {
        return false;
    }
    let finder = memchr::memmem::Finder::new(field);
    let mut pos = 0;
    while let Some(p) = finder.find(&json[pos..]) {
        let mut i = pos + p + field.len();
        while i < json.len() && matches!(json[i], b' ' | b':' | b'\n' | b'\r' | b'\t') {
            i += 1;
        }
        if json.get(i) == Some(&b'{') {
            return true;
        }
        pos = i;
    }
    false
}

/// The `event:` name of an SSE event, if any.
fn event_name(ev: &[u8]) -> &str {
    ev.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"event:"))
        .map(|n| std::str::from_utf8(n).unwrap_or("").trim())
        .unwrap_or("")
}

enum Up {
    OpenAi,
    Anthropic(anthropic::AnthropicToChatStream),
    Gemini(gemini::GeminiToChatStream),
}

enum Down {
    OpenAi,
    Anthropic(anthropic::ChatToAnthropicStream),
    Gemini(gemini::ChatToGeminiStream),
    Responses(Box<responses::ChatToResponsesStream>),
}

/// Turns upstream SSE events into client SSE bytes and keeps the usage.
pub struct StreamConv {
    client: Api,
    upstream: Api,
    native: bool,
    client_wants_usage: bool,
    up: Up,
    down: Down,
    usage: Option<billing::Usage>,
    /// Produced text, for counting tokens when no usage arrives.
    pub counter: StreamCounter,
    /// The upstream signalled the end of its answer.
    pub done: bool,
    /// Some produced content was seen (for time to first token).
    pub content_seen: bool,
    finished: bool,
    /// Hold back an OpenAI client's usage event, and everything after it,
    /// until the cost is known (`usage.cost`).
    pub hold_usage: bool,
    held: Vec<Bytes>,
}

fn sse_data(v: &Value) -> Bytes {
    let mut b = b"data: ".to_vec();
    b.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

impl StreamConv {
    pub fn new(
        client: Api,
        upstream: Api,
        client_wants_usage: bool,
        request_model: &str,
        request: &[u8],
    ) -> Self {
        let native = client == upstream;
        // The hub chunks carry the usage chunk whenever another dialect
        // comes after them (each reports usage in its own way); an OpenAI
        // client gets it only when it asked (filtered in `emit`).
        let hub_usage = client != Api::OpenAi || client_wants_usage;
        let up = match (native, upstream) {
            (false, Api::Anthropic) => Up::Anthropic(anthropic::AnthropicToChatStream::new(
                request_model,
                hub_usage,
            )),
            (false, Api::Gemini) => {
                Up::Gemini(gemini::GeminiToChatStream::new(request_model, hub_usage))
            }
            _ => Up::OpenAi,
        };
        let down = match (native, client) {
            (false, Api::Anthropic) => {
                Down::Anthropic(anthropic::ChatToAnthropicStream::new(request_model))
            }
            (false, Api::Gemini) => Down::Gemini(gemini::ChatToGeminiStream::new(request_model)),
            (false, Api::Responses) => {
                let req: Value = serde_json::from_slice(request).unwrap_or(Value::Null);
                Down::Responses(Box::new(responses::ChatToResponsesStream::new(
                    &req,
                    request_model,
                )))
            }
            _ => Down::OpenAi,
        };
        StreamConv {
            client,
            upstream,
            native,
            client_wants_usage,
            up,
            down,
            usage: None,
            counter: StreamCounter::default(),
            done: false,
            content_seen: false,
            finished: false,
            hold_usage: false,
            held: Vec::new(),
        }
    }

    /// Events held back since the usage event.
    pub fn holds_usage(&self) -> bool {
        !self.held.is_empty()
    }

    /// Releases the held usage event with `"cost"` added to its usage, and
    /// what followed it.
    pub fn release_held(&mut self, cost_usd: &str, out: &mut Vec<Bytes>) {
        let mut held = std::mem::take(&mut self.held).into_iter();
        if let Some(first) = held.next() {
            let data = sse::event_data(&first);
            let patched = serde_json::from_slice::<Value>(&data)
                .ok()
                .and_then(|mut v| {
                    let n = cost_usd.parse::<serde_json::Number>().ok()?;
                    v.get_mut("usage")?
                        .as_object_mut()?
                        .insert("cost".into(), Value::Number(n));
                    Some(sse_data(&v))
                });
            out.push(patched.unwrap_or(first));
        }
        out.extend(held);
    }

    /// Where an event for the client goes: out, or held after a held usage event.
    fn route_out(&mut self, ev: Bytes, out: &mut Vec<Bytes>) {
        if self.held.is_empty() {
            out.push(ev);
        } else {
            self.held.push(ev);
        }
    }

    /// An OpenAI client's usage event: held when the cost is to be added.
    fn usage_out(&mut self, ev: Bytes, out: &mut Vec<Bytes>) {
        if self.hold_usage {
            self.held.push(ev);
        } else {
            out.push(ev);
        }
    }

    pub fn usage(&self) -> Option<billing::Usage> {
        match &self.up {
            Up::Anthropic(a) => a.usage().or(self.usage),
            Up::Gemini(g) => g.usage().or(self.usage),
            Up::OpenAi => self.usage,
        }
    }

    fn collect(&mut self, data: &[u8]) {
        if self.usage.is_some() {
            return;
        }
        let mut raw = Vec::new();
        for f in sse::text_finders() {
            sse::collect_with(f, data, &mut raw);
        }
        if !raw.is_empty() {
            self.content_seen = true;
            self.counter.push(&raw);
        }
    }

    /// Handles one upstream event; client bytes go to `out`.
    pub fn event(&mut self, ev: Bytes, out: &mut Vec<Bytes>) -> Result<(), String> {
        if self.held.is_empty() {
            return self.event_inner(ev, out);
        }
        let mut more = Vec::new();
        let r = self.event_inner(ev, &mut more);
        for b in more {
            self.route_out(b, out);
        }
        r
    }

    fn event_inner(&mut self, ev: Bytes, out: &mut Vec<Bytes>) -> Result<(), String> {
        let data = sse::event_data(&ev);
        if self.native {
            return self.native_event(ev.clone(), &data, out);
        }
        // translated: upstream event → chat chunks → client events
        let chunks: Vec<Value> = match &mut self.up {
            Up::OpenAi => {
                if &*data == b"[DONE]" {
                    self.done = true;
                    return Ok(());
                }
                if data.is_empty() {
                    return Ok(());
                }
                let v: Value = serde_json::from_slice(&data)
                    .map_err(|e| format!("unreadable upstream chunk ({e})"))?;
                if v.get("error").is_some() {
                    return Err(format!("the upstream reported an error: {}", v["error"]));
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage = serde_json::from_value(u.clone()).ok().map(openai::usage_of);
                }
                vec![v]
            }
            Up::Anthropic(a) => {
                if data.is_empty() {
                    return Ok(());
                }
                let name = event_name(&ev).to_string();
                let v: Value = serde_json::from_slice(&data)
                    .map_err(|e| format!("unreadable upstream event ({e})"))?;
                let name = if name.is_empty() {
                    v.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                } else {
                    name
                };
                if name == "message_stop" {
                    self.done = true;
                }
                a.event(&name, &v).map_err(|e| e.to_string())?
            }
            Up::Gemini(g) => {
                if data.is_empty() {
                    return Ok(());
                }
                let v: Value = serde_json::from_slice(&data)
                    .map_err(|e| format!("unreadable upstream chunk ({e})"))?;
                if v.get("error").is_some() {
                    return Err(format!("the upstream reported an error: {}", v["error"]));
                }
                g.chunk(&v).map_err(|e| e.to_string())?
            }
        };
        for c in &chunks {
            let bytes = serde_json::to_vec(c).unwrap_or_default();
            self.collect(&bytes);
        }
        self.emit(chunks, out)
    }

    /// Chat chunks (already in the client's terms for OpenAI) to client bytes.
    fn emit(&mut self, chunks: Vec<Value>, out: &mut Vec<Bytes>) -> Result<(), String> {
        for c in chunks {
            match &mut self.down {
                Down::OpenAi => {
                    // a chat upstream's own usage chunk reaches only a client that asked
                    let usage_only = c
                        .get("choices")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty);
                    if usage_only && !self.client_wants_usage {
                        continue;
                    }
                    if usage_only {
                        self.usage_out(sse_data(&c), out);
                    } else {
                        out.push(sse_data(&c));
                    }
                }
                Down::Anthropic(d) => {
                    for (name, v) in d.chunk(&c).map_err(|e| e.to_string())? {
                        out.push(anthropic_event(name, &v));
                    }
                }
                Down::Gemini(d) => {
                    for v in d.chunk(&c).map_err(|e| e.to_string())? {
                        out.push(gemini_event(&v));
                    }
                }
                Down::Responses(d) => {
                    for (name, v) in d.chunk(&c).map_err(|e| e.to_string())? {
                        out.push(anthropic_event(name, &v));
                    }
                }
            }
        }
        Ok(())
    }

    fn native_event(&mut self, ev: Bytes, data: &[u8], out: &mut Vec<Bytes>) -> Result<(), String> {
        match self.client {
            Api::OpenAi => {
                if data == b"[DONE]" {
                    self.done = true;
                    out.push(ev);
                    return Ok(());
                }
                if data.is_empty() {
                    out.push(ev);
                    return Ok(());
                }
                if has_object_field(data, b"\"usage\"")
                    && let Ok(c) = serde_json::from_slice::<UsageCarrier>(data)
                    && let Some(u) = c.usage
                {
                    self.usage = Some(openai::usage_of(u));
                    let usage_only = c.choices.as_ref().is_some_and(Vec::is_empty);
                    if !self.client_wants_usage && usage_only {
                        return Ok(());
                    }
                    if usage_only {
                        self.usage_out(ev, out);
                    } else {
                        out.push(ev);
                    }
                    return Ok(());
                }
                self.collect(data);
            }
            Api::Anthropic => {
                let name = event_name(&ev);
                if name == "message_stop" {
                    self.done = true;
                }
                if name == "error" {
                    return Err(format!(
                        "the upstream reported an error: {}",
                        String::from_utf8_lossy(data)
                    ));
                }
                if has_object_field(data, b"\"usage\"")
                    && let Ok(v) = serde_json::from_slice::<Value>(data)
                {
                    let u = v
                        .pointer("/message/usage")
                        .or_else(|| v.get("usage"))
                        .and_then(anthropic::anthropic_usage);
                    if let Some(u) = u {
                        // message_start carries the input, message_delta the
                        // cumulative output
                        let prev = self.usage.unwrap_or_default();
                        self.usage = Some(billing::Usage {
                            cache_write: if u.prompt > 0 {
                                u.cache_write
                            } else {
                                prev.cache_write
                            },
                            prompt: if u.prompt > 0 { u.prompt } else { prev.prompt },
                            cached: if u.prompt > 0 { u.cached } else { prev.cached },
                            completion: u.completion.max(prev.completion),
                        });
                    }
                } else {
                    self.collect(data);
                }
            }
            Api::Responses => {
                let name = event_name(&ev);
                if matches!(
                    name,
                    "response.completed" | "response.incomplete" | "response.failed"
                ) {
                    self.done = true;
                }
                if name == "error" {
                    return Err(format!(
                        "the upstream reported an error: {}",
                        String::from_utf8_lossy(data)
                    ));
                }
                if has_object_field(data, b"\"usage\"")
                    && let Ok(v) = serde_json::from_slice::<Value>(data)
                    && let Some(u) = v
                        .pointer("/response/usage")
                        .and_then(responses::responses_usage)
                {
                    self.usage = Some(u);
                } else {
                    self.collect(data);
                }
            }
            Api::Gemini => {
                if has_object_field(data, b"\"usageMetadata\"")
                    && let Ok(v) = serde_json::from_slice::<Value>(data)
                    && let Some(u) = v.get("usageMetadata").and_then(gemini::gemini_usage)
                {
                    self.usage = Some(u);
                }
                if self.usage.is_none() {
                    self.collect(data);
                } else {
                    self.content_seen = true;
                }
                if has_object_field(data, b"\"error\"") {
                    return Err(format!(
                        "the upstream reported an error: {}",
                        String::from_utf8_lossy(data)
                    ));
                }
            }
        }
        out.push(ev);
        Ok(())
    }

    /// Whether the upstream's end of stream is its normal end (Gemini
    /// streams have no end marker).
    pub fn eof_is_normal(&self) -> bool {
        matches!(self.upstream, Api::Gemini | Api::Responses)
    }

    /// The upstream finished: closing events for the client.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.held.is_empty() {
            return self.finish_inner(out);
        }
        let mut more = Vec::new();
        self.finish_inner(&mut more);
        for b in more {
            self.route_out(b, out);
        }
    }

    fn finish_inner(&mut self, out: &mut Vec<Bytes>) {
        if self.finished || self.native {
            return;
        }
        self.finished = true;
        let tail: Vec<Value> = match &mut self.up {
            Up::OpenAi => Vec::new(),
            Up::Anthropic(a) => a.finish(),
            Up::Gemini(g) => g.finish(),
        };
        let _ = self.emit(tail, out);
        match &mut self.down {
            Down::OpenAi => out.push(Bytes::from_static(b"data: [DONE]\n\n")),
            Down::Anthropic(d) => {
                for (name, v) in d.finish() {
                    out.push(anthropic_event(name, &v));
                }
            }
            Down::Gemini(d) => {
                for v in d.finish() {
                    out.push(gemini_event(&v));
                }
            }
            Down::Responses(d) => {
                for (name, v) in d.finish() {
                    out.push(anthropic_event(name, &v));
                }
            }
        }
    }

    /// An error event in the client's dialect, ending a broken stream.
    pub fn error_event(&self, err: &RelayError, request_id: &str) -> Bytes {
        match self.client {
            Api::OpenAi => {
                let mut b = b"data: ".to_vec();
                b.extend_from_slice(&err.openai_body(request_id));
                b.extend_from_slice(b"\n\n");
                Bytes::from(b)
            }
            Api::Responses => {
                let (_, _, code) = err.parts();
                anthropic_event(
                    "error",
                    &serde_json::json!({"type": "error", "code": code,
                        "message": err.message, "param": null}),
                )
            }
            Api::Anthropic => anthropic_event(
                "error",
                &anthropic::anthropic_error_body(err.status(), &err.message),
            ),
            Api::Gemini => gemini_event(&gemini::gemini_error_body(err.status(), &err.message)),
        }
    }
}

pub fn anthropic_event(name: &str, v: &Value) -> Bytes {
    let mut b = format!("event: {name}\ndata: ").into_bytes();
    b.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

pub fn gemini_event(v: &Value) -> Bytes {
    let mut b = b"data: ".to_vec();
    b.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    b.extend_from_slice(b"\r\n\r\n");
    Bytes::from(b)
}

/// An error body in a dialect. An upstream's refusal of the request is
/// passed on as the upstream wrote it when the dialects match.
pub fn error_body(api: Api, err: &RelayError, request_id: &str) -> Bytes {
    if let Some((_, raw)) = &err.upstream
        && err.upstream_api == Some(api)
        && !matches!(api, Api::OpenAi | Api::Responses)
    {
        return raw.clone();
    }
    match api {
        Api::OpenAi | Api::Responses => err.openai_body(request_id),
        Api::Anthropic => {
            let mut v = anthropic::anthropic_error_body(err.status(), &err.message);
            if let Some(o) = v.as_object_mut() {
                o.insert("request_id".into(), Value::String(request_id.into()));
            }
            to_bytes(&v)
        }
        Api::Gemini => to_bytes(&gemini::gemini_error_body(err.status(), &err.message)),
    }
}
