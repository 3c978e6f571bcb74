//! Error responses in each provider's shape ([`Dialect`]). The OpenAI constructors live
//! here; the Anthropic and Gemini ones in their modules.
//!
//! - OpenAI: `{"error":{"message":"...","type":"...","param":null,"code":"..."}}`
//! - Anthropic: `{"type":"error","error":{"type":"...","message":"..."}}`
//! - Gemini: `{"error":{"code":400,"message":"...","status":"INVALID_ARGUMENT"}}`, plus
//!   `details:[ErrorInfo]` when a `reason` (stored in `code`) is set.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::wire::{push_json_opt, push_json_str, push_u64};

/// Which provider's wire format an endpoint speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[default]
    OpenAi,
    Anthropic,
    Gemini,
}

impl Dialect {
    /// The dialect of the endpoint at `path`.
    pub fn of_path(path: &str) -> Dialect {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Dialect::Anthropic
        } else if path == "/v1beta" || path.starts_with("/v1beta/") {
            Dialect::Gemini
        } else {
            Dialect::OpenAi
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI `type`, Anthropic `error.type`, Gemini `status` (e.g. `INVALID_ARGUMENT`).
    pub kind: &'static str,
    pub param: Option<String>,
    /// OpenAI `code`; Gemini `ErrorInfo.reason` (e.g. `API_KEY_INVALID`); unused by Anthropic.
    pub code: Option<String>,
    pub retry_after: bool,
    pub dialect: Dialect,
}

const INVALID_REQUEST: &str = "invalid_request_error";
const SERVER_ERROR: &str = "server_error";

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: false,
            dialect: Dialect::OpenAi,
        }
    }

    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    pub fn with_retry_after(mut self) -> Self {
        self.retry_after = true;
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, INVALID_REQUEST, message)
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    pub fn body(&self) -> String {
        match self.dialect {
            Dialect::OpenAi => self.openai_body(),
            Dialect::Anthropic => self.anthropic_body(),
            Dialect::Gemini => self.gemini_body(),
        }
    }

    fn anthropic_body(&self) -> String {
        let mut b = String::with_capacity(64 + self.message.len());
        b.push_str(r#"{"type":"error","error":{"type":"#);
        push_json_str(&mut b, self.kind);
        b.push_str(r#","message":"#);
        push_json_str(&mut b, &self.message);
        b.push_str("}}");
        b
    }

    fn gemini_body(&self) -> String {
        let mut b = String::with_capacity(200 + self.message.len());
        b.push_str(r#"{"error":{"code":"#);
        push_u64(&mut b, u64::from(self.status));
        b.push_str(r#","message":"#);
        push_json_str(&mut b, &self.message);
        b.push_str(r#","status":"#);
        push_json_str(&mut b, self.kind);
        if let Some(reason) = &self.code {
            b.push_str(
                r#","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"#,
            );
            push_json_str(&mut b, reason);
            b.push_str(r#","domain":"googleapis.com"}]"#);
        }
        b.push_str("}}");
        b
    }

    fn openai_body(&self) -> String {
        let mut b = String::with_capacity(96 + self.message.len());
        b.push_str(r#"{"error":{"message":"#);
        push_json_str(&mut b, &self.message);
        b.push_str(r#","type":"#);
        push_json_str(&mut b, self.kind);
        b.push_str(r#","param":"#);
        push_json_opt(&mut b, self.param.as_deref());
        b.push_str(r#","code":"#);
        push_json_opt(&mut b, self.code.as_deref());
        b.push_str("}}");
        b
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = crate::server::json_response(status, self.body());
        if self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub(crate) fn bad_json() -> ApiError {
    ApiError::invalid(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
         using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
         sent was not valid JSON. If you have trouble figuring out how to fix this, please \
         contact us through our help center at help.openai.com.)",
    )
}

pub(crate) fn missing_key() -> ApiError {
    ApiError::new(
        401,
        INVALID_REQUEST,
        "You didn't provide an API key. You need to provide your API key in an Authorization \
         header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password \
         field (with blank username) if you're accessing the API from your browser and are \
         prompted for a username. You can obtain an API key from \
         https://platform.openai.com/account/api-keys.",
    )
    .code("invalid_api_key")
}

pub(crate) fn invalid_key(key: &str) -> ApiError {
    ApiError::new(
        401,
        INVALID_REQUEST,
        format!(
            "Incorrect API key provided: {}. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            mask_key(key)
        ),
    )
    .code("invalid_api_key")
}

/// `sk-bad-abcdefgh1234` → `sk-b***************1234`, as OpenAI does.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 8))
}

pub(crate) fn rate_limited() -> ApiError {
    let mut e = ApiError::new(429, "requests", "Rate limit reached for requests")
        .code("rate_limit_exceeded");
    e.retry_after = true;
    e
}

pub(crate) fn insufficient_quota() -> ApiError {
    ApiError::new(
        429,
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    )
    .code("insufficient_quota")
}

pub(crate) fn not_found_url(method: &str, path: &str) -> ApiError {
    ApiError::new(
        404,
        INVALID_REQUEST,
        format!("Invalid URL ({method} {path})"),
    )
}

/// OpenAI's error for a bare HTTP status.
pub(crate) fn for_status(status: u16) -> ApiError {
    match status {
        400 => ApiError::invalid("The request was invalid."),
        401 => ApiError::new(401, INVALID_REQUEST, "Incorrect API key provided.")
            .code("invalid_api_key"),
        403 => ApiError::new(
            403,
            "request_forbidden",
            "Country, region, or territory not supported",
        )
        .code("unsupported_country_region_territory"),
        404 => ApiError::new(
            404,
            INVALID_REQUEST,
            "The model does not exist or you do not have access to it.",
        )
        .code("model_not_found"),
        413 => ApiError::new(413, INVALID_REQUEST, "Request too large."),
        429 => rate_limited(),
        500 => ApiError::new(
            500,
            SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
        ),
        502 => ApiError::new(502, SERVER_ERROR, "Bad gateway."),
        503 => ApiError::new(
            503,
            SERVER_ERROR,
            "The server is overloaded or not ready yet.",
        ),
        504 => ApiError::new(504, SERVER_ERROR, "Gateway timeout."),
        s if (400..500).contains(&s) => ApiError::new(
            s,
            INVALID_REQUEST,
            format!("Request failed with status {s}."),
        ),
        s => ApiError::new(s, SERVER_ERROR, format!("Request failed with status {s}.")),
    }
}

/// The error requested by `mock.status` / `mock.error_code`.
///
/// `param` names the prompt field of the endpoint (`messages`, `prompt`, `input`);
/// `prompt_tokens` is only evaluated for `context_length_exceeded`.
pub(crate) fn for_controls(
    status: Option<u16>,
    code: Option<&str>,
    model: &str,
    param: &str,
    prompt_tokens: impl FnOnce() -> u64,
) -> Option<ApiError> {
    let mut err = match code {
        None => for_status(status?),
        Some("rate_limit_exceeded") => rate_limited(),
        Some("insufficient_quota") => insufficient_quota(),
        Some("invalid_api_key") => invalid_key("sk-mock-invalid-key"),
        Some("context_length_exceeded") => ApiError::invalid(format!(
            "This model's maximum context length is 128000 tokens. However, your messages \
             resulted in {} tokens. Please reduce the length of the messages.",
            prompt_tokens()
        ))
        .param(param)
        .code("context_length_exceeded"),
        Some("model_not_found") => ApiError::new(
            404,
            INVALID_REQUEST,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .code("model_not_found"),
        Some("server_error") => for_status(500),
        Some(other) => {
            let s = status.unwrap_or(400);
            let mut e = for_status(s);
            e.message = format!("Mock error: {other}");
            e.code(other)
        }
    };
    if let Some(s) = status {
        err.status = s;
    }
    Some(err)
}
