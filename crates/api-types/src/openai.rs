//! OpenAI Chat Completions, Completions and Embeddings: the request fields
//! the gateway decides on, and the `usage` object of answers.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize, Default, Debug)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields of a request body the gateway decides on, borrowed.
#[derive(Deserialize, Debug)]
pub struct RequestHead<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Responses API.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// OpenRouter-style fallback models, tried in order after `model`.
    #[serde(borrow, default)]
    pub models: Option<Vec<Cow<'a, str>>>,
    /// OpenRouter-style usage accounting: `{"include": true}` asks for the
    /// cost in the answer's `usage`.
    #[serde(default)]
    pub usage: Option<UsageRequest>,
}

#[derive(Deserialize, Default, Clone, Copy, Debug)]
pub struct UsageRequest {
    #[serde(default)]
    pub include: Option<bool>,
}

#[derive(Deserialize, Default, Clone, Copy, Debug)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

/// `usage` of chat, completions and embeddings answers. `prompt_tokens`
/// includes `prompt_tokens_details.cached_tokens`.
#[derive(Deserialize, Default, Clone, Copy, Debug)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// The `usage` of an answer or stream chunk, and its `choices` (an empty
/// list marks the usage-only chunk that ends a stream).
#[derive(Deserialize, Debug)]
pub struct UsageCarrier {
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub choices: Option<Vec<IgnoredAny>>,
}
