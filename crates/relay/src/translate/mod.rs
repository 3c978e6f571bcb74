//! Translation between the gateway's hub format (OpenAI Chat Completions)
//! and other providers' wire formats. Pure functions over JSON: no I/O.

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
