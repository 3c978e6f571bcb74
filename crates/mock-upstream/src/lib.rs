//! A local stand-in for the OpenAI HTTP API (Chat Completions, legacy Completions,
//! Embeddings, Models) that speaks the documented wire format byte for byte.
//!
//! Used in-process by integration tests ([`MockUpstream::start`]) and as a binary by the
//! benchmark. Every `/v1` request may carry a top-level `"mock": {...}` object with
//! per-request controls: `chunks`, `chunk_size`, `chunk_delay_ms`, `status`, `error_code`,
//! `omit_usage`, `drop_after`, `tool_call`, `content`, `delay_ms`, `cached_tokens`.
//! [`expected_usage`] predicts the usage the mock will report for a body.

mod errors;
mod plan;
mod render;
mod server;
mod wire;

#[cfg(test)]
mod tests;

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
    /// Answer every request with this HTTP status and OpenAI's error body for it.
    Status(u16),
    /// 429 `rate_limit_exceeded` with `retry-after: 1`.
    RateLimited,
    /// 429 `insufficient_quota`.
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
}

/// One request received on `/v1/*`.
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

    /// Total requests received on `/v1/*` (all endpoints, including failed ones).
    pub fn requests(&self) -> u64 {
        self.shared.request_count()
    }

    /// The most recent `/v1` request.
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
/// The endpoint is inferred: a body with `messages` is a chat completion, one with `input`
/// an embeddings request, anything else a legacy completion. Completion tokens already
/// include the `n` multiplier, `max_tokens` truncation and tool calls. Invalid bodies
/// (that the mock would reject) give `(0, 0)`.
pub fn expected_usage(body: &serde_json::Value, defaults: &Defaults) -> (u64, u64) {
    let endpoint = if body.get("messages").is_some() {
        Endpoint::ChatCompletions
    } else if body.get("input").is_some() {
        Endpoint::Embeddings
    } else {
        Endpoint::Completions
    };
    expected_usage_for(endpoint, body, defaults)
}

/// Like [`expected_usage`], for an explicit endpoint.
pub fn expected_usage_for(
    endpoint: Endpoint,
    body: &serde_json::Value,
    defaults: &Defaults,
) -> (u64, u64) {
    let kind = match endpoint {
        Endpoint::Embeddings => return (plan::input_tokens(body.get("input")), 0),
        Endpoint::ChatCompletions => plan::Kind::Chat,
        Endpoint::Completions => plan::Kind::Completion,
    };
    let controls = plan::Controls::parse(body, defaults);
    match plan::build(kind, body, controls) {
        Ok(p) => (p.prompt_tokens, p.completion_tokens),
        Err(_) => (0, 0),
    }
}
