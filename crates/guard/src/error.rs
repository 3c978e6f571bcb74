//! Errors of the guard's constructors and admin calls. The request-path methods never fail: they
//! fail open.

use crate::store::StoreError;

/// What can go wrong outside the request path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The configuration is invalid.
    #[error("invalid guard configuration: {0}")]
    Config(String),
    /// Redis could not be reached or the URL is malformed.
    #[error("redis: {0}")]
    Redis(String),
    /// A store call failed (admin calls report it instead of failing open).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Background tasks need a Tokio runtime and none is running.
    #[error("a tokio runtime is required")]
    NoRuntime,
    /// Not an IP address nor a network.
    #[error("not an IP address or network: {0}")]
    BadSubject(String),
}
