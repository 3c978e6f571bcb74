//! Errors of the data path, each with its HTTP status and OpenAI error type
//! and code decided in one place. The web layer renders them in the wire
//! format of the API that was called.

/// What went wrong, at the granularity clients and metrics care about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidKey,
    /// No key has this secret (counted against the client's address).
    UnknownKey,
    /// The client's address is banned for a while.
    IpBanned,
    /// A rate limit, concurrency limit or budget of the key or user.
    RateLimited,
    IpNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    ModelNotPriced,
    BadRequest,
    BodyTooLarge,
    InsufficientBalance,
    KeyQuotaExceeded,
    /// The upstream refused the request itself (a 4xx passed on).
    UpstreamClient,
    UpstreamRateLimited,
    UpstreamFailed,
    UpstreamTimeout,
    NoChannel,
    Draining,
    Internal,
}

#[derive(Clone, Debug)]
pub struct RelayError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    /// For `UpstreamClient`: the upstream's status and raw body, passed on.
    pub upstream: Option<(u16, bytes::Bytes)>,
    /// The dialect of that body.
    pub upstream_api: Option<crate::formats::Api>,
    /// Seconds until the request may pass (`retry-after`).
    pub retry_after: Option<u64>,
}

impl RelayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RelayError {
        RelayError {
            kind,
            message: message.into(),
            param: None,
            upstream: None,
            upstream_api: None,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> RelayError {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn with_param(mut self, p: &str) -> RelayError {
        self.param = Some(p.to_string());
        self
    }

    /// HTTP status, OpenAI `type`, OpenAI `code`.
    pub fn parts(&self) -> (u16, &'static str, &'static str) {
        use ErrorKind::*;
        match self.kind {
            InvalidKey | UnknownKey => (401, "invalid_request_error", "invalid_api_key"),
            IpBanned => (403, "permission_error", "ip_banned"),
            RateLimited => (429, "requests", "rate_limit_exceeded"),
            IpNotAllowed => (403, "permission_error", "ip_not_allowed"),
            ModelNotAllowed => (403, "permission_error", "model_not_allowed"),
            ModelNotFound => (404, "invalid_request_error", "model_not_found"),
            ModelNotPriced => (400, "invalid_request_error", "model_not_priced"),
            BadRequest => (400, "invalid_request_error", "invalid_request"),
            BodyTooLarge => (413, "invalid_request_error", "request_too_large"),
            InsufficientBalance => (429, "insufficient_quota", "insufficient_quota"),
            KeyQuotaExceeded => (429, "insufficient_quota", "key_quota_exceeded"),
            UpstreamClient => (
                self.upstream.as_ref().map(|u| u.0).unwrap_or(400),
                "invalid_request_error",
                "upstream_error",
            ),
            UpstreamRateLimited => (429, "requests", "rate_limit_exceeded"),
            UpstreamFailed => (502, "upstream_error", "bad_gateway"),
            UpstreamTimeout => (504, "upstream_error", "upstream_timeout"),
            NoChannel => (503, "upstream_error", "no_channel_available"),
            Draining => (503, "server_error", "shutting_down"),
            Internal => (500, "server_error", "internal_error"),
        }
    }

    pub fn status(&self) -> u16 {
        self.parts().0
    }

    /// Whether an official SDK should retry this answer by itself.
    pub fn should_retry(&self) -> bool {
        !matches!(
            self.kind,
            ErrorKind::InsufficientBalance | ErrorKind::KeyQuotaExceeded
        )
    }

    /// The OpenAI-shaped body: `{"error":{"message","type","param","code","request_id"}}`.
    pub fn openai_body(&self, request_id: &str) -> bytes::Bytes {
        if let Some((_, raw)) = &self.upstream
            && matches!(
                self.upstream_api,
                Some(crate::formats::Api::OpenAi | crate::formats::Api::Responses)
            )
            && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(raw)
            && let Some(e) = v.get_mut("error").and_then(|e| e.as_object_mut())
        {
            e.insert("request_id".into(), request_id.into());
            return bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
        }
        let (_, ty, code) = self.parts();
        let v = serde_json::json!({
            "error": {
                "message": self.message,
                "type": ty,
                "param": self.param,
                "code": code,
                "request_id": request_id,
            }
        });
        bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }
}
