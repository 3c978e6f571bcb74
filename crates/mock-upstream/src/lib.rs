//! A local stand-in for LLM provider HTTP APIs that speaks their documented wire formats:
//!
//! - OpenAI (`Authorization: Bearer KEY`): `POST /v1/chat/completions`,
//!   `POST /v1/completions`, `POST /v1/embeddings`, `GET /v1/models[/{id}]`, and
//!   minimal `POST /v1/images/generations`, `/v1/audio/speech` (100 bytes of
//!   `audio/mpeg`), `/v1/audio/transcriptions` (`{"text":"hello world"}`),
//!   `/v1/moderations` and `/v1/rerank` (no `mock` controls on these).
//! - Anthropic Messages (`x-api-key: KEY` + `anthropic-version`): `POST /v1/messages`,
//!   JSON or named SSE events (`message_start`, `ping`, `content_block_*`,
//!   `message_delta`, `message_stop`).
//! - Gemini (`x-goog-api-key: KEY` or `?key=KEY`):
//!   `POST /v1beta/models/{model}:generateContent`,
//!   `POST /v1beta/models/{model}:streamGenerateContent[?alt=sse]` (SSE with `\r\n\r\n`
//!   separators, or a streamed JSON array without `alt=sse`), `GET /v1beta/models[/{id}]`.
//!
//! Used in-process by integration tests ([`MockUpstream::start`]) and as a binary by the
//! benchmark. Every request body may carry a top-level `"mock": {...}` object with
//! per-request controls: `chunks`, `chunk_size`, `chunk_delay_ms`, `status`, `error_code`,
//! `omit_usage`, `drop_after`, `tool_call`, `content`, `delay_ms`, `cached_tokens`. They
//! behave alike on every endpoint; errors (from `mock.status`, special keys or
//! [`Behavior`]) take the shape of the endpoint's provider. Keys containing `bad`,
//! `noquota` or `ratelimit` trigger the provider's invalid-key, out-of-credit and
//! rate-limit errors.
//!
//! [`expected_usage`] / [`expected_usage_for`] predict the usage the mock will report.

mod anthropic;
mod errors;
mod extras;
mod gemini;
mod plan;
mod render;
mod server;
mod wire;

pub use extras::{RESPONSES_TEXT, SPEECH_BYTES, responses_input_tokens};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_providers;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

/// Defaults used when a request does not override them with `mock.*` controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Number of content chunks in a stream (and `chunks * chunk_size` = reply length).
    pub chunks: usize,
    /// Delay between stream events, in milliseconds.
    pub chunk_delay_ms: u64,
    /// Characters of content per chunk.
    pub chunk_size: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            chunks: 8,
            chunk_delay_ms: 0,
            chunk_size: 6,
        }
    }
}

/// Server-wide failure behaviour, switchable at run time with [`MockUpstream::set_behavior`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Behavior {
    /// Answer normally.
    #[default]
    Normal,
    /// Answer every request with this HTTP status and the provider's error body for it
    /// (OpenAI, Anthropic or Gemini shape, depending on the endpoint).
    Status(u16),
    /// 429 `rate_limit_exceeded` with `retry-after: 1` (Anthropic: `rate_limit_error`
    /// with `retry-after`; Gemini: `RESOURCE_EXHAUSTED`).
    RateLimited,
    /// 429 `insufficient_quota` (Anthropic: 400 "credit balance is too low"; Gemini: 429
    /// `RESOURCE_EXHAUSTED` "You exceeded your current quota…").
    InsufficientQuota,
    /// Close the TCP connection without sending any response.
    DropConnection,
    /// Sleep this many milliseconds, then answer normally.
    Delay(u64),
}

/// The endpoint kinds the mock serves with a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    AnthropicMessages,
    /// Gemini `:generateContent` / `:streamGenerateContent`.
    GeminiGenerate,
}

/// One request received on `/v1/*` or `/v1beta/*`.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    pub query: Option<String>,
    /// Header names are lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A running mock server. Dropping it (or calling [`MockUpstream::shutdown`]) stops it and
/// closes every open connection.
pub struct MockUpstream {
    pub addr: SocketAddr,
    shared: Arc<server::Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Start on `127.0.0.1:0` with [`Defaults::default`].
    pub async fn start() -> anyhow::Result<MockUpstream> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), Defaults::default()).await
    }

    /// Start on `addr` (port 0 picks a free port).
    pub async fn start_on(addr: SocketAddr, defaults: Defaults) -> anyhow::Result<MockUpstream> {
        let (addr, shared, task) = server::spawn(addr, defaults).await?;
        Ok(MockUpstream { addr, shared, task })
    }

    /// `http://ADDR/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The defaults this server was started with.
    pub fn defaults(&self) -> &Defaults {
        &self.shared.defaults
    }

    /// Total requests received on `/v1/*` and `/v1beta/*` (all endpoints and providers,
    /// including failed ones).
    pub fn requests(&self) -> u64 {
        self.shared.request_count()
    }

    /// The most recent `/v1/*` or `/v1beta/*` request (with its query string).
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.last_request()
    }

    /// Change the failure behaviour for all subsequent requests.
    pub fn set_behavior(&self, b: Behavior) {
        self.shared.set_behavior(b);
    }

    /// The current failure behaviour.
    pub fn behavior(&self) -> Behavior {
        self.shared.behavior()
    }

    /// Stop the server and close all its connections.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.kill.kill();
        self.task.abort();
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// `(prompt_tokens, completion_tokens)` the mock will report for this request body.
///
/// The endpoint is inferred: a body with `messages` is a chat completion (an Anthropic
/// Messages body looks the same: use [`expected_usage_for`]), one with `contents` a Gemini
/// request, one with `input` an embeddings request, anything else a legacy completion.
/// Completion tokens already include the `n` multiplier, `max_tokens` truncation and tool
/// calls. Invalid bodies (that the mock would reject) give `(0, 0)`.
pub fn expected_usage(body: &serde_json::Value, defaults: &Defaults) -> (u64, u64) {
    let endpoint = if body.get("messages").is_some() {
        Endpoint::ChatCompletions
    } else if body.get("contents").is_some() {
        Endpoint::GeminiGenerate
    } else if body.get("input").is_some() {
        Endpoint::Embeddings
    } else {
        Endpoint::Completions
    };
    expected_usage_for(endpoint, body, defaults)
}

/// Like [`expected_usage`], for an explicit endpoint. Returns
/// `(prompt tokens including cached ones, completion tokens including thinking)`.
///
/// The rules (the same for every endpoint; "reply" is `mock.content` or the first
/// `chunks * chunk_size` characters of the repeating default sentence):
///
/// - **prompt** = `max(1, ceil(B / 4) + 3 * M)` where, for chat, `B` counts the bytes of
///   every message's string content or content parts' `text` and `M` the messages (a
///   system message is a message). For Anthropic, `B` is the bytes of `system` (a string or
///   its `text` blocks) plus every message's string content, its `type:"text"` blocks'
///   `text` and its `type:"tool_result"` blocks' `content` (a string or its `text` blocks);
///   `M` is `messages.len()` (`system` adds no 3). For Gemini, `B` is the bytes of every
///   part's `text` in `systemInstruction` and `contents`, `M` is `contents.len()`.
///   Legacy completions and embeddings: `ceil(bytes / 4)` + one per pre-tokenised id.
/// - **completion** per choice / candidate: a text reply counts `max(1, ceil(chars / 4))`;
///   a tool call `ceil(len({"location":"Paris","unit":"celsius"}) / 4) + 5`
///   = `ceil(37 / 4) + 5` = 15.
///   For Anthropic and Gemini the reply is first cut before the earliest
///   `stop_sequences` / `generationConfig.stopSequences` match (Anthropic
///   `stop_reason:"stop_sequence"`, Gemini `STOP`). If the text's tokens exceed
///   `max_tokens` (chat: `max_completion_tokens` or `max_tokens`; Gemini:
///   `generationConfig.maxOutputTokens`), the text is cut to `max_tokens * 4` characters
///   and counts exactly `max_tokens` (`finish_reason:"length"`, Anthropic
///   `stop_reason:"max_tokens"`, Gemini `finishReason:"MAX_TOKENS"`); tool calls are never
///   cut. Thinking (Anthropic `thinking.type:"enabled"`, Gemini
///   `thinkingConfig.includeThoughts:true`) then adds `ceil(chars("Let me think…") / 4)`
///   = `ceil(13 / 4)` = 4, outside the `max_tokens` cut. Chat multiplies by `n`, Gemini by
///   `candidateCount`.
///
/// How the providers report it: OpenAI `prompt_tokens` includes
/// `prompt_tokens_details.cached_tokens`; Anthropic `input_tokens` EXCLUDES
/// `cache_read_input_tokens` (= `min(mock.cached_tokens, prompt)`), so
/// `input_tokens + cache_read_input_tokens` = prompt and `output_tokens` = completion;
/// Gemini `promptTokenCount` = prompt (includes `cachedContentTokenCount`),
/// `candidatesTokenCount` = completion without thoughts, `thoughtsTokenCount` = the
/// thinking part, `totalTokenCount` = prompt + completion.
pub fn expected_usage_for(
    endpoint: Endpoint,
    body: &serde_json::Value,
    defaults: &Defaults,
) -> (u64, u64) {
    let kind = match endpoint {
        Endpoint::Embeddings => return (plan::input_tokens(body.get("input")), 0),
        Endpoint::ChatCompletions => plan::Kind::Chat,
        Endpoint::Completions => plan::Kind::Completion,
        Endpoint::AnthropicMessages => {
            let controls = plan::Controls::parse(body, defaults);
            return match anthropic::build(body, controls) {
                Ok(p) => (p.prompt_tokens, p.output_tokens),
                Err(_) => (0, 0),
            };
        }
        Endpoint::GeminiGenerate => {
            let controls = plan::Controls::parse(body, defaults);
            return match gemini::build("", body, controls) {
                Ok(p) => (p.prompt_tokens, p.candidates_tokens + p.thoughts_tokens),
                Err(_) => (0, 0),
            };
        }
    };
    let controls = plan::Controls::parse(body, defaults);
    match plan::build(kind, body, controls) {
        Ok(p) => (p.prompt_tokens, p.completion_tokens),
        Err(_) => (0, 0),
    }
}
