//! Provider dialects: one folder per provider, each translating between
//! the gateway's hub format (OpenAI Chat Completions) and that provider's
//! wire format, requests, answers and streams. Pure functions over JSON: no
//! I/O. Adding a provider is a folder here, an `Api` arm in `formats.rs`,
//! a channel kind, and the dialect tests and SDK matrix run against it.

pub mod anthropic;
pub mod gemini;
pub mod responses;

/// Why a translation failed.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// A feature the target format cannot express; the message names it.
    #[error("{0}")]
    Unsupported(String),
    /// Malformed input; the message says where.
    #[error("{0}")]
    Invalid(String),
}
