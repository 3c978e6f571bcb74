//! Tunables of the data path. Durations are whole seconds or milliseconds
//! so tests can shrink them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Extra attempts on other channels after a retryable failure.
    pub retries: u32,
    /// Completion tokens reserved when a request gives no `max_tokens`.
    pub default_max_tokens: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest non-streamed upstream answer, in bytes.
    pub max_response_bytes: usize,
    /// Largest single SSE event, in bytes.
    pub max_event_bytes: usize,
    pub connect_timeout_secs: u64,
    /// Wait for the upstream's response headers and first stream event.
    pub first_byte_timeout_secs: u64,
    /// A stream silent for this long is ended.
    pub stream_idle_timeout_secs: u64,
    /// How long to keep reading an upstream after the client went away, to
    /// bill what it produced.
    pub drain_timeout_secs: u64,
    /// SSE comment sent to the client during silences this long (0 = off).
    pub keepalive_secs: u64,
    /// Chunks buffered between the upstream reader and a slow client.
    pub stream_buffer_chunks: usize,
    /// Settled requests are written together at most this often…
    pub flush_interval_ms: u64,
    /// …or as soon as this many are waiting.
    pub flush_max_batch: usize,
    /// Safety-net reload of keys, users, channels and prices from the
    /// database (changes made through this process apply at once).
    pub refresh_secs: u64,
    /// Consecutive failures (connection errors, timeouts, 5xx) after which
    /// a channel is disabled automatically; 0 = never.
    pub channel_failure_threshold: u32,
    /// How often automatically disabled channels are probed and re-enabled
    /// when they answer again; 0 = never.
    pub probe_interval_secs: u64,
    /// Report each call's cost (USD) in `usage.cost` and the `x-cost-usd`
    /// header for every request; off: only for requests that ask with
    /// `"usage": {"include": true}` (OpenRouter's convention).
    pub report_cost: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            retries: 2,
            default_max_tokens: 4096,
            max_body_bytes: 32 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            max_event_bytes: 8 * 1024 * 1024,
            connect_timeout_secs: 10,
            first_byte_timeout_secs: 300,
            stream_idle_timeout_secs: 300,
            drain_timeout_secs: 120,
            keepalive_secs: 15,
            stream_buffer_chunks: 16,
            flush_interval_ms: 5,
            flush_max_batch: 512,
            refresh_secs: 10,
            channel_failure_threshold: 5,
            probe_interval_secs: 60,
            report_cost: false,
        }
    }
}
