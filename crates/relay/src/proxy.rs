//! One relayed request from start to settle.
//!
//! Order of work: authenticate from the in-memory snapshot, read the few
//! body fields that matter, reserve the upper-bound cost, try channels in
//! order until one answers, then relay the answer and settle the real cost.
//! No database read happens on this path; writes go to the storage writer.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use billing::{Hold, HoldError, Price, Usage, cost_units_calls, units_to_usd};
use bytes::Bytes;
use futures_util::StreamExt;
use storage::{LogRecord, Store};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::cache::{self, ChannelEntry, KeyEntry, Snapshot, UserEntry, Wallets};
use crate::error::{ErrorKind, RelayError};
use crate::formats::{self, Api, RequestShape, StreamConv};
use crate::openai;
use crate::passthrough;
use crate::sse::SseSplitter;
use crate::tokens::{self, StreamCounter};
use crate::writer::{Settled, WriteMsg, Writer};
use crate::{RelayConfig, upstream};

/// The endpoints relayed, in the dialect the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    AnthropicMessages,
    /// Gemini `:generateContent` / `:streamGenerateContent`.
    GeminiGenerate,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// OpenAI `POST /v1/images/generations`, billed per image.
    ImagesGenerations,
    /// OpenAI `POST /v1/audio/speech`: JSON in, audio bytes out.
    AudioSpeech,
    /// OpenAI `POST /v1/audio/transcriptions`: multipart form in.
    AudioTranscriptions,
    /// OpenAI `POST /v1/moderations`.
    Moderations,
    /// `POST /v1/rerank` (Cohere / Jina style).
    Rerank,
}

impl Endpoint {
    fn openai_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::ImagesGenerations => "/images/generations",
            Endpoint::AudioSpeech => "/audio/speech",
            Endpoint::AudioTranscriptions => "/audio/transcriptions",
            Endpoint::Moderations => "/moderations",
            Endpoint::Rerank => "/rerank",
            Endpoint::AnthropicMessages | Endpoint::GeminiGenerate => "",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::AnthropicMessages => "messages",
            Endpoint::GeminiGenerate => "generateContent",
            Endpoint::Responses => "responses",
            Endpoint::ImagesGenerations => "images.generations",
            Endpoint::AudioSpeech => "audio.speech",
            Endpoint::AudioTranscriptions => "audio.transcriptions",
            Endpoint::Moderations => "moderations",
            Endpoint::Rerank => "rerank",
        }
    }

    /// Endpoints relayed as they are to OpenAI-compatible channels only,
    /// billed per call or per token (see `passthrough`).
    pub fn is_passthrough(self) -> bool {
        matches!(
            self,
            Endpoint::ImagesGenerations
                | Endpoint::AudioSpeech
                | Endpoint::AudioTranscriptions
                | Endpoint::Moderations
                | Endpoint::Rerank
        )
    }

    pub fn api(self) -> Api {
        match self {
            Endpoint::AnthropicMessages => Api::Anthropic,
            Endpoint::GeminiGenerate => Api::Gemini,
            Endpoint::Responses => Api::Responses,
            _ => Api::OpenAi,
        }
    }

    fn can_stream(self) -> bool {
        !matches!(self, Endpoint::Embeddings) && !self.is_passthrough()
    }
}

pub struct Inbound {
    pub endpoint: Endpoint,
    /// The model when the URL names it (Gemini).
    pub model: Option<String>,
    /// Streaming asked by the URL (Gemini's `:streamGenerateContent`).
    pub stream: Option<bool>,
    /// `anthropic-version` / `anthropic-beta` sent by an Anthropic client.
    pub anthropic_version: Option<String>,
    pub anthropic_beta: Option<String>,
    /// The API key as the client sent it, without `Bearer `.
    pub api_key: Option<String>,
    pub client_ip: IpAddr,
    /// The request's `content-type` (forwarded for multipart bodies).
    pub content_type: Option<String>,
    pub body: Bytes,
    pub request_id: String,
}

pub enum OutBody {
    Full(Bytes),
    /// SSE bytes, produced by a task that keeps reading the upstream even
    /// if this receiver is dropped.
    Stream(mpsc::Receiver<Bytes>),
}

pub struct Outbound {
    pub status: u16,
    pub body: OutBody,
    /// The answer's content type when it is not JSON or SSE (pass-through
    /// endpoints relay the upstream's, e.g. `audio/mpeg`).
    pub content_type: Option<String>,
    /// The call's cost in USD, when it is to be reported (a header; streams
    /// carry it in their usage event instead).
    pub cost_usd: Option<String>,
}

/// The result of a channel test or probe.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChannelTest {
    pub ok: bool,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub model: String,
    pub message: String,
}

impl ChannelTest {
    fn failed(message: &str, latency_ms: u64, status: Option<u16>) -> ChannelTest {
        ChannelTest {
            ok: false,
            status,
            latency_ms,
            model: String::new(),
            message: message.to_string(),
        }
    }
}

#[derive(Default)]
pub struct RelayStats {
    /// Largest SSE buffer any stream held (bytes).
    pub peak_stream_buffer: AtomicUsize,
    pub streams_in_flight: AtomicUsize,
}

pub struct Relay {
    pub cfg: RelayConfig,
    store: Store,
    snapshot: Arc<ArcSwap<Snapshot>>,
    writer: mpsc::Sender<WriteMsg>,
    client: upstream::Client,
    tasks: TaskTracker,
    draining: AtomicBool,
    pub stats: RelayStats,
    /// Rate limits and budgets (shared through Redis when configured).
    guard: std::sync::OnceLock<guard::Guard>,
    /// This node's name on the reload channel (to skip its own messages).
    pub node: String,
}

/// What is known of a request once it is authorised, for logging and
/// settling it.
struct Meter {
    request_id: String,
    endpoint: Endpoint,
    user: Arc<UserEntry>,
    key: Arc<KeyEntry>,
    model: String,
    price: Price,
    hold: Hold,
    body: Bytes,
    client_ip: IpAddr,
    started: Instant,
    stream: bool,
    client_wants_usage: bool,
    /// The model named in the request body (the served `model` may be a
    /// fallback).
    body_model: String,
    strip_models: bool,
    /// Report the cost in the answer (`usage.cost`, `x-cost-usd`).
    report_cost: bool,
    anthropic_version: Option<String>,
    anthropic_beta: Option<String>,
    /// The request's content type, forwarded for pass-through endpoints.
    content_type: Option<String>,
    /// Images asked for (pass-through image generation).
    n: u64,
    /// Calls billed at the per-call price (pass-through endpoints).
    calls: u64,
    /// The tokens of a pass-through answer were counted here.
    estimated: bool,
    /// The request's slot under the key's and user's limits: given back
    /// with the usage record when the request is settled, or by its drop
    /// (a request that failed before any answer).
    permit: Option<guard::Permit>,
}

/// The guard's view of a key's and its user's limits, `None` when neither
/// has any (no work at all on the request path then).
fn limits_of(key: &KeyEntry, user: &UserEntry, spend_estimate: i64) -> Option<guard::Limits> {
    if key.limits.is_empty() && user.limits.is_empty() {
        return None;
    }
    let scope = |l: &storage::RateLimits| guard::ScopeLimits {
        rpm: l.rpm,
        tpm: l.tpm,
        concurrency: l.concurrency,
    };
    let period = match key.limits.budget_period.as_deref() {
        Some("daily") => Some(guard::BudgetPeriod::Daily),
        Some("weekly") => Some(guard::BudgetPeriod::Weekly),
        Some("monthly") => Some(guard::BudgetPeriod::Monthly),
        _ => None,
    };
    Some(guard::Limits {
        key: scope(&key.limits),
        user: scope(&user.limits),
        key_budget: match (key.limits.budget, period) {
            (Some(limit), Some(period)) => Some(guard::Budget { limit, period }),
            _ => None,
        },
        spend_estimate: spend_estimate.max(0) as u64,
    })
}

fn openai_compatible(ch: &ChannelEntry) -> bool {
    matches!(ch.kind.as_str(), "openai" | "azure")
}

/// The tiers without the channels that cannot serve a pass-through
/// endpoint.
/// The price multiplier of a request served by `channel_id`: the user's
/// group ratio, times the platform fee when a managed user's own channel
/// (negative id) served it.
fn ratio_for(user: &UserEntry, channel_id: i64) -> billing::Decimal {
    match user.managed {
        Some(m) if channel_id < 0 => user.ratio * m.fee,
        _ => user.ratio,
    }
}

fn compatible_tiers(tiers: &[cache::Tier]) -> Vec<cache::Tier> {
    tiers
        .iter()
        .map(|t| cache::Tier {
            priority: t.priority,
            channels: t
                .channels
                .iter()
                .filter(|c| openai_compatible(c))
                .cloned()
                .collect(),
        })
        .filter(|t| !t.channels.is_empty())
        .collect()
}

/// What an attempt says about the channel's health.
enum Blame {
    None,
    /// An outage: connection error, timeout, 5xx. Counts towards disabling.
    Outage,
    /// The key used was refused (credentials, no credit): disable that key.
    Key(String),
}

/// Azure OpenAI `api-version` used when a channel names none.
const AZURE_API_VERSION: &str = "2024-10-21";

enum Attempt {
    Done(Outbound),
    /// Try the next channel.
    Retry(RelayError),
    /// Give this answer to the client.
    Fatal(RelayError),
}

/// A POST to `uri` with the channel's own headers and `key` where the
/// target dialect expects it (`anthropic` = the version and beta headers
/// an Anthropic upstream gets).
fn upstream_request(
    ch: &ChannelEntry,
    target: Api,
    key: &str,
    target_url: cache::Target,
    content_type: http::HeaderValue,
    anthropic: (&str, Option<&str>),
    body: Bytes,
) -> Result<http::Request<Bytes>, RelayError> {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
    let header = |v: &str| {
        HeaderValue::from_str(v).map_err(|_| {
            RelayError::new(
                ErrorKind::UpstreamFailed,
                "The channel's key or a header value holds characters HTTP headers cannot carry.",
            )
        })
    };
    let secret = |v: &str| {
        header(v).map(|mut h| {
            h.set_sensitive(true);
            h
        })
    };
    let mut req = http::Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = target_url.uri;
    let h = req.headers_mut();
    h.insert(CONTENT_TYPE, content_type);
    for (k, v) in &ch.headers {
        h.append(k.clone(), v.clone());
    }
    // a channel may name its own Host (a provider behind a gateway)
    h.entry(HOST).or_insert(target_url.host);
    match target {
        Api::OpenAi | Api::Responses if ch.kind == "azure" => {
            h.insert(HeaderName::from_static("api-key"), secret(key)?);
        }
        Api::OpenAi | Api::Responses => {
            let mut bearer = String::with_capacity(7 + key.len());
            bearer.push_str("Bearer ");
            bearer.push_str(key);
            h.insert(AUTHORIZATION, secret(&bearer)?);
        }
        Api::Anthropic => {
            h.insert(HeaderName::from_static("x-api-key"), secret(key)?);
            h.insert(
                HeaderName::from_static("anthropic-version"),
                header(anthropic.0)?,
            );
            if let Some(beta) = anthropic.1 {
                h.insert(HeaderName::from_static("anthropic-beta"), header(beta)?);
            }
        }
        Api::Gemini => {
            h.insert(HeaderName::from_static("x-goog-api-key"), secret(key)?);
        }
    }
    Ok(req)
}

fn hold_error(e: HoldError) -> RelayError {
    match e {
        HoldError::Balance { needed, available } => RelayError::new(
            ErrorKind::InsufficientBalance,
            format!(
                "Insufficient balance: this request may cost up to ${} and your available balance is ${}. \
                 Top up your account, or send a smaller max_tokens.",
                units_to_usd(needed),
                units_to_usd(available.max(0))
            ),
        ),
        HoldError::KeyQuota { needed, available } => RelayError::new(
            ErrorKind::KeyQuotaExceeded,
            format!(
                "This API key's quota is used up: the request may cost up to ${} and the key has ${} left. \
                 Raise the key's quota or use another key.",
                units_to_usd(needed),
                units_to_usd(available.max(0))
            ),
        ),
    }
}

impl Relay {
    /// Loads the snapshot, starts the storage writer and the periodic
    /// refresh. The writer stops when the relay is dropped.
    pub async fn start(store: Store, cfg: RelayConfig) -> Result<Arc<Relay>, RelayError> {
        let wallets = Arc::new(Wallets::default());
        let snap = cache::load(&store, &wallets, &cfg)
            .await
            .map_err(|e| RelayError::new(ErrorKind::Internal, e.to_string()))?;
        let snapshot = Arc::new(ArcSwap::from_pointee(snap));
        let (tx, rx) = mpsc::channel(65_536);
        let writer = Writer {
            store: store.clone(),
            snapshot: snapshot.clone(),
            wallets,
            flush_interval: Duration::from_millis(cfg.flush_interval_ms.max(1)),
            max_batch: cfg.flush_max_batch.max(1),
            cfg: cfg.clone(),
        };
        tokio::spawn(writer.run(rx));
        let client = upstream::Client::new(&cfg);
        let relay = Arc::new(Relay {
            cfg,
            store,
            snapshot,
            writer: tx,
            client,
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
            stats: RelayStats::default(),
            guard: std::sync::OnceLock::new(),
            node: format!("{}-{}", std::process::id(), accounts::generate_password()),
        });
        if relay.cfg.refresh_secs > 0 {
            let weak = Arc::downgrade(&relay);
            let every = Duration::from_secs(relay.cfg.refresh_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(r) = weak.upgrade() else { break };
                    let _ = r.writer.send(WriteMsg::Reload(None)).await;
                }
            });
        }
        if relay.cfg.probe_interval_secs > 0 {
            let weak = Arc::downgrade(&relay);
            let every = Duration::from_secs(relay.cfg.probe_interval_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(r) = weak.upgrade() else { break };
                    r.probe_disabled_channels().await;
                }
            });
        }
        Ok(relay)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Rebuilds the in-memory snapshot after a change; returns once the new
    /// one is in place.
    /// Puts rate limits and budgets in force (once, at start).
    pub fn set_guard(&self, g: guard::Guard) {
        let _ = self.guard.set(g);
    }

    /// Rebuilds the in-memory view after a change made through this node,
    /// and tells the other nodes (through Redis) to do the same.
    pub async fn reload(&self) -> storage::Result<()> {
        self.reload_local().await?;
        if let Some(g) = self.guard.get()
            && let Err(e) = g.pubsub().publish(RELOAD_CHANNEL, &self.node).await
        {
            tracing::warn!(error = %e, "could not tell the other nodes to reload; they catch up at their next periodic refresh");
        }
        Ok(())
    }

    /// Rebuilds this node's in-memory view from the database.
    pub async fn reload_local(&self) -> storage::Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriteMsg::Reload(Some(tx))).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Returns once every request settled so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriteMsg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Refuses new requests from now on; in-flight ones finish.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.tasks.close();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Waits for running stream tasks, at most `grace`.
    pub async fn wait_streams(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// The key and user behind an API key, or the reason to refuse it.
    pub fn authenticate(
        &self,
        snap: &Snapshot,
        api_key: Option<&str>,
        ip: IpAddr,
    ) -> Result<(Arc<KeyEntry>, Arc<UserEntry>), RelayError> {
        let Some(api_key) = api_key.filter(|k| !k.is_empty()) else {
            return Err(RelayError::new(
                ErrorKind::InvalidKey,
                "You didn't provide an API key. Send it in the Authorization header as `Bearer sk-…`.",
            ));
        };
        let invalid = || {
            RelayError::new(
                ErrorKind::InvalidKey,
                "Incorrect API key provided. Check the key, or create a new one in the dashboard.",
            )
        };
        let digest = accounts::secret_digest(api_key);
        let key = snap.keys.get(&digest).ok_or_else(|| {
            let mut e = invalid();
            e.kind = ErrorKind::UnknownKey;
            e
        })?;
        if !key.enabled {
            return Err(RelayError::new(
                ErrorKind::InvalidKey,
                "This API key is disabled. Enable it or create a new one in the dashboard.",
            ));
        }
        if key.expires_at > 0 && key.expires_at <= storage::now_ms() {
            return Err(RelayError::new(
                ErrorKind::InvalidKey,
                "This API key has expired. Extend its expiry or create a new one.",
            ));
        }
        let user = snap.users.get(&key.user_id).ok_or_else(invalid)?;
        if !user.enabled {
            return Err(RelayError::new(
                ErrorKind::InvalidKey,
                "The account that owns this API key is disabled. Contact the operator.",
            ));
        }
        if !key.ips.allows(ip) {
            return Err(RelayError::new(
                ErrorKind::IpNotAllowed,
                format!(
                    "This API key may not be used from {ip}. Add the address to the key's allowed IPs."
                ),
            ));
        }
        Ok((key.clone(), user.clone()))
    }

    /// Models this key may call, sorted.
    pub fn models_for(&self, key: &KeyEntry, user: &UserEntry) -> Vec<String> {
        let snap = self.snapshot.load();
        snap.models_for_user(user)
            .into_iter()
            .filter(|m| key.allowed_models.as_ref().is_none_or(|a| a.contains(*m)))
            .map(str::to_string)
            .collect()
    }

    /// Relays one request.
    pub async fn handle(self: &Arc<Self>, inb: Inbound) -> Result<Outbound, RelayError> {
        let started = Instant::now();
        if self.is_draining() {
            return Err(RelayError::new(
                ErrorKind::Draining,
                "The service is restarting; retry the request.",
            ));
        }
        let snap = self.snapshot.load_full();
        let (key, user) = self.authenticate(&snap, inb.api_key.as_deref(), inb.client_ip)?;
        if inb.body.len() > self.cfg.max_body_bytes {
            return Err(RelayError::new(
                ErrorKind::BodyTooLarge,
                format!(
                    "The request body is {} bytes; this service accepts at most {}.",
                    inb.body.len(),
                    self.cfg.max_body_bytes
                ),
            ));
        }
        let api = inb.endpoint.api();
        let multipart = inb.endpoint == Endpoint::AudioTranscriptions;
        let form_model = if multipart {
            let ct = inb.content_type.as_deref().unwrap_or("");
            if !ct.starts_with("multipart/form-data") {
                return Err(RelayError::new(
                    ErrorKind::BadRequest,
                    "This endpoint takes a multipart/form-data body (fields `file`, `model`, …).",
                ));
            }
            passthrough::multipart_field(&inb.body, ct, "model")
        } else {
            None
        };
        let head = if multipart {
            openai::parse_head(b"{}")
        } else {
            openai::parse_head(&inb.body)
        }
        .map_err(|m| RelayError::new(ErrorKind::BadRequest, m))?;
        let model: String = match inb
            .model
            .as_deref()
            .or(form_model.as_deref())
            .or(head.model.as_deref())
        {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => {
                return Err(RelayError::new(
                    ErrorKind::BadRequest,
                    "You must provide a model parameter.",
                )
                .with_param("model"));
            }
        };
        if api == Api::Anthropic && head.max_tokens.is_none() {
            return Err(
                RelayError::new(ErrorKind::BadRequest, "max_tokens: Field required")
                    .with_param("max_tokens"),
            );
        }
        // The models to try: the one asked for, then the request's
        // OpenRouter-style `models` list or the operator's fallback chain.
        // gateway-level fields never go upstream
        let strip_models = head.models.is_some() || head.usage.is_some();
        let report_cost =
            self.cfg.report_cost || head.usage.and_then(|u| u.include).unwrap_or(false);
        let mut wanted: Vec<String> = vec![model.clone()];
        match &head.models {
            Some(list) => wanted.extend(list.iter().map(|m| m.to_string())),
            None => {
                if let Some(chain) = snap.fallbacks.get(&model) {
                    wanted.extend(chain.iter().cloned());
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        wanted.retain(|m| !m.is_empty() && seen.insert(m.clone()));
        let mut plan: Vec<(String, Price)> = Vec::new();
        let mut first_error: Option<RelayError> = None;
        for m in &wanted {
            match self.check_model(&snap, &key, &user, m) {
                Ok(price) => plan.push((m.clone(), price)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if plan.is_empty() {
            return Err(first_error.unwrap_or_else(|| {
                RelayError::new(ErrorKind::ModelNotFound, "No model to serve.")
            }));
        }
        if inb.endpoint.is_passthrough() {
            plan.retain(|(m, _)| {
                snap.route(&user, m)
                    .tiers()
                    .any(|t| t.channels.iter().any(|c| openai_compatible(c)))
            });
            if plan.is_empty() {
                return Err(RelayError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "The endpoint /v1{} is served only by OpenAI-compatible channels, and `{model}` has none.",
                        inb.endpoint.openai_path()
                    ),
                )
                .with_param("model"));
            }
        }
        let stream = inb.endpoint.can_stream() && inb.stream.or(head.stream).unwrap_or(false);
        let client_wants_usage = head
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
            || head.usage.and_then(|u| u.include).unwrap_or(false);
        let (max_out, n) = match api {
            Api::Gemini => openai::gemini_limits(&inb.body),
            _ => (
                head.max_completion_tokens
                    .or(head.max_tokens)
                    .or(head.max_output_tokens),
                head.n.unwrap_or(1),
            ),
        };
        let n = n.clamp(1, 128);
        let completion_bound = match inb.endpoint {
            Endpoint::Embeddings
            | Endpoint::ImagesGenerations
            | Endpoint::AudioSpeech
            | Endpoint::Moderations
            | Endpoint::Rerank => 0,
            Endpoint::Completions => head.max_tokens.unwrap_or(16),
            _ => max_out.unwrap_or(self.cfg.default_max_tokens),
        }
        .saturating_mul(n);
        drop(head);
        // Every token is at least one byte, so the body length bounds the
        // prompt; the hold covers the dearest model that may serve.
        // Pass-through endpoints: n images, else one call, at the per-call
        // price; a multipart body (audio) bounds no token count.
        let calls = match inb.endpoint {
            Endpoint::ImagesGenerations => n,
            e if e.is_passthrough() => 1,
            _ => 0,
        };
        let prompt_bound = if multipart { 0 } else { inb.body.len() as u64 };
        let estimate = plan
            .iter()
            .map(|(_, price)| {
                cost_units_calls(
                    price,
                    // the dearer of what may serve it: own channels only, or
                    // either own or shared ones
                    match user.managed {
                        Some(m) if m.own_only => ratio_for(&user, -1),
                        _ => user.ratio.max(ratio_for(&user, -1)),
                    },
                    Usage {
                        cache_write: 0,
                        prompt: prompt_bound,
                        completion: completion_bound,
                        cached: 0,
                    },
                    calls,
                )
            })
            .max()
            .unwrap_or(0);
        let permit = match (self.guard.get(), limits_of(&key, &user, estimate)) {
            (Some(g), Some(limits)) => match g.acquire(key.id, user.id, &limits).await {
                Ok(p) => Some(p),
                Err(d) => {
                    return Err(RelayError::new(
                        ErrorKind::RateLimited,
                        format!(
                            "Rate limit reached: {}. Retry in {} s.",
                            deny_text(d.reason),
                            d.retry_after_secs
                        ),
                    )
                    .with_retry_after(d.retry_after_secs));
                }
            },
            _ => None,
        };
        let hold = self.reserve(&user, &key, estimate).await?;
        let mut meter = Meter {
            request_id: inb.request_id,
            endpoint: inb.endpoint,
            user,
            key,
            body_model: model.clone(),
            model,
            price: plan[0].1.clone(),
            hold,
            body: inb.body,
            client_ip: inb.client_ip,
            started,
            stream,
            client_wants_usage,
            strip_models,
            report_cost,
            anthropic_version: inb.anthropic_version,
            anthropic_beta: inb.anthropic_beta,
            content_type: inb.content_type,
            n,
            calls: 0,
            estimated: false,
            permit,
        };
        let mut last: Option<RelayError> = None;
        let mut last_channel = 0;
        'models: for (m, price) in plan {
            let route = snap.route(&meter.user, &m);
            let limit = self.cfg.retries as usize + 1;
            let order = |tiers: Option<&[cache::Tier]>| match tiers {
                None => Vec::new(),
                Some(t) if meter.endpoint.is_passthrough() => {
                    cache::candidate_order(&compatible_tiers(t), limit)
                }
                Some(t) => cache::candidate_order(t, limit),
            };
            // a managed user's own channels first, then the shared ones;
            // a model the operator does not price is served by own channels only
            let mut candidates = order(route.own);
            if route.own.is_none() || snap.prices.contains_key(&m) {
                candidates.extend(order(route.shared));
            }
            meter.model = m;
            meter.price = price;
            let mut attempts_left = self.cfg.retries as usize + 1;
            'channels: for ch in candidates {
                // a refused key is retried on the same channel with its next key
                let mut keys_tried: Vec<String> = Vec::new();
                while attempts_left > 0 {
                    attempts_left -= 1;
                    last_channel = ch.id;
                    let key = ch.next_key().to_string();
                    if keys_tried.contains(&key) {
                        break;
                    }
                    let (result, blame) = self.attempt(&ch, &key, &mut meter).await;
                    let key_refused = matches!(blame, Blame::Key(_));
                    self.record_health(&ch, &key, blame);
                    match result {
                        Attempt::Done(out) => return Ok(out),
                        Attempt::Retry(e) => {
                            tracing::warn!(request_id = %meter.request_id, channel = ch.id, error = %e.message, "upstream attempt failed");
                            last = Some(e);
                        }
                        Attempt::Fatal(e) => {
                            last = Some(e);
                            break 'models;
                        }
                    }
                    if !(key_refused && ch.keys.len() > 1) {
                        break;
                    }
                    keys_tried.push(key);
                }
                if attempts_left == 0 {
                    break 'channels;
                }
            }
        }
        drop(snap);
        let err = last.unwrap_or_else(|| {
            RelayError::new(
                ErrorKind::NoChannel,
                "No upstream channel is available for this model.",
            )
        });
        self.log_failure(meter, last_channel, &err).await;
        Err(err)
    }

    /// Applies what an attempt said about a channel: success resets its
    /// failure run; an outage extends it and disables the channel at the
    /// threshold; a refused key is disabled (and the channel with it when it
    /// was the last one). The writes happen off the request path.
    fn record_health(self: &Arc<Self>, ch: &Arc<ChannelEntry>, key: &str, blame: Blame) {
        use std::sync::atomic::Ordering::Relaxed;
        match blame {
            Blame::None => {
                if ch.failures.load(Relaxed) != 0 {
                    ch.failures.store(0, Relaxed);
                }
            }
            Blame::Outage => {
                let n = ch.failures.fetch_add(1, Relaxed) + 1;
                let limit = self.cfg.channel_failure_threshold;
                if limit > 0 && n == limit {
                    ch.tripped.store(true, Relaxed);
                    let reason = format!("{n} consecutive failures");
                    self.disable_channel_later(ch.id, reason);
                }
            }
            Blame::Key(reason) => {
                let relay = self.clone();
                let tag = cache::key_tag(key);
                let id = ch.id;
                ch.disable_key_now(key);
                let last_key = ch.keys.len() <= 1 || ch.usable_keys() == 0;
                if last_key {
                    ch.tripped.store(true, Relaxed);
                }
                tokio::spawn(async move {
                    tracing::error!(channel = id, key = %tag, reason = %reason, "upstream key disabled");
                    if let Err(e) = relay.store.disable_channel_key(id, &tag, &reason).await {
                        tracing::error!(channel = id, error = %e, "recording a disabled key failed");
                    }
                    if last_key {
                        let why = format!("no working key left (last: {reason})");
                        let _ = relay.store.auto_disable_channel(id, &why).await;
                    }
                    let _ = relay.reload().await;
                });
            }
        }
    }

    fn disable_channel_later(self: &Arc<Self>, id: i64, reason: String) {
        let relay = self.clone();
        tokio::spawn(async move {
            match relay.store.auto_disable_channel(id, &reason).await {
                Ok(true) => {
                    tracing::error!(channel = id, reason = %reason, "channel disabled automatically; it is probed and re-enabled when it recovers");
                    let _ = relay.reload().await;
                }
                Ok(false) => {}
                Err(e) => tracing::error!(channel = id, error = %e, "disabling a channel failed"),
            }
        });
    }

    /// Probes every automatically disabled channel once and re-enables the
    /// ones that answer.
    pub async fn probe_disabled_channels(self: &Arc<Self>) {
        // read from the database: the snapshot may not have caught up yet
        let rows = match self.store.channels().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "listing channels to probe failed");
                return;
            }
        };
        let disabled: Vec<ChannelEntry> = rows
            .iter()
            .filter(|c| c.status == 2)
            .map(|c| cache::entry_for_test(c, &self.cfg))
            .collect();
        for ch in disabled {
            let r = self.probe(&ch).await;
            if r.ok {
                match self.store.auto_enable_channel(ch.id).await {
                    Ok(true) => {
                        tracing::info!(
                            channel = ch.id,
                            latency_ms = r.latency_ms,
                            "channel answered its probe; re-enabled"
                        );
                        let _ = self.reload().await;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(channel = ch.id, error = %e, "re-enabling a channel failed")
                    }
                }
            }
        }
    }

    /// Sends one tiny request to a channel (any state but operator-disabled
    /// ones are in the snapshot; others are loaded) and reports the result.
    pub async fn test_channel(self: &Arc<Self>, id: i64) -> Result<ChannelTest, RelayError> {
        let ch = match self.snapshot().channels.get(&id) {
            Some(c) => c.clone(),
            None => {
                let row = self
                    .store
                    .channel(id)
                    .await
                    .map_err(|e| RelayError::new(ErrorKind::ModelNotFound, e.to_string()))?;
                let mut row = row;
                row.status = 1;
                Arc::new(cache::entry_for_test(&row, &self.cfg))
            }
        };
        Ok(self.probe(&ch).await)
    }

    async fn probe(&self, ch: &ChannelEntry) -> ChannelTest {
        let started = Instant::now();
        let Some(model) = ch.probe_model() else {
            return ChannelTest::failed("the channel lists no model", 0, None);
        };
        let key = ch
            .keys
            .first()
            .or(ch.all_keys.first())
            .map(String::as_str)
            .unwrap_or("");
        let Some(api) = Api::of_kind(&ch.kind) else {
            return ChannelTest::failed(&format!("unknown kind `{}`", ch.kind), 0, None);
        };
        let (path, body) = match api {
            Api::OpenAi | Api::Responses => (
                "/chat/completions".to_string(),
                serde_json::json!({"model": model, "max_tokens": 1,
                    "messages": [{"role": "user", "content": "ping"}]}),
            ),
            Api::Anthropic => (
                "/messages".to_string(),
                serde_json::json!({"model": model, "max_tokens": 1,
                    "messages": [{"role": "user", "content": "ping"}]}),
            ),
            Api::Gemini => (
                format!("/models/{model}:generateContent"),
                serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "ping"}]}],
                    "generationConfig": {"maxOutputTokens": 1}}),
            ),
        };
        let url = if ch.kind == "azure" {
            let v = if ch.api_version.is_empty() {
                AZURE_API_VERSION
            } else {
                &ch.api_version
            };
            ch.url(&format!(
                "/openai/deployments/{model}{path}?api-version={v}"
            ))
        } else {
            ch.url(&path)
        };
        let request = url
            .map_err(|e| RelayError::new(ErrorKind::UpstreamFailed, e))
            .and_then(|url| {
                upstream_request(
                    ch,
                    api,
                    key,
                    url,
                    http::HeaderValue::from_static("application/json"),
                    ("2023-06-01", None),
                    Bytes::from(body.to_string()),
                )
            });
        let request = match request {
            Ok(r) => r,
            Err(e) => return ChannelTest::failed(&e.message, 0, None),
        };
        let timeout = Duration::from_secs(if ch.timeout_secs > 0 {
            ch.timeout_secs
        } else {
            30
        });
        let send = ch.client.as_ref().unwrap_or(&self.client).send(request);
        match tokio::time::timeout(timeout, send).await {
            Err(_) => ChannelTest::failed(
                "no answer in time",
                started.elapsed().as_millis() as u64,
                None,
            ),
            Ok(Err(e)) => {
                ChannelTest::failed(&e.to_string(), started.elapsed().as_millis() as u64, None)
            }
            Ok(Ok(resp)) => {
                let status = resp.status;
                let text = read_capped(resp.body, 64 * 1024).await.unwrap_or_default();
                let latency = started.elapsed().as_millis() as u64;
                if (200..300).contains(&status) {
                    ChannelTest {
                        ok: true,
                        status: Some(status),
                        latency_ms: latency,
                        model: model.to_string(),
                        message: "ok".into(),
                    }
                } else {
                    let mut t = ChannelTest::failed(
                        &String::from_utf8_lossy(&text)
                            .chars()
                            .take(300)
                            .collect::<String>(),
                        latency,
                        Some(status),
                    );
                    t.model = model.to_string();
                    t
                }
            }
        }
    }

    /// Whether this key may use `model` and the service can serve and
    /// bill it; its price if so.
    fn check_model(
        &self,
        snap: &Snapshot,
        key: &KeyEntry,
        user: &UserEntry,
        model: &str,
    ) -> Result<Price, RelayError> {
        if let Some(allowed) = &key.allowed_models
            && !allowed.contains(model)
        {
            return Err(RelayError::new(
                ErrorKind::ModelNotAllowed,
                format!("This API key may not use the model `{model}`."),
            )
            .with_param("model"));
        }
        let route = snap.route(user, model);
        if !route.exists() {
            let shared_down = user.managed.is_none_or(|m| !m.own_only)
                && snap
                    .unavailable
                    .contains(&(user.group.clone(), model.to_string()));
            let own_down = user.managed.is_some()
                && snap.own_unavailable.contains(&(user.id, model.to_string()));
            if shared_down || own_down {
                return Err(RelayError::new(
                    ErrorKind::NoChannel,
                    format!(
                        "Every channel serving `{model}` is disabled after failures; it is retried \
                         automatically. Try again later."
                    ),
                ));
            }
            return Err(RelayError::new(
                ErrorKind::ModelNotFound,
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
            .with_param("model"));
        }
        if route.own.is_some() && !snap.prices.contains_key(model) {
            // served by the user's own channels: the platform fee applies to
            // the operator's price, and a model the operator does not price
            // costs nothing
            return Price::parse("0", "0", "")
                .map_err(|e| RelayError::new(ErrorKind::Internal, format!("zero price: {e}")));
        }
        snap.prices.get(model).cloned().ok_or_else(|| {
            RelayError::new(
                ErrorKind::ModelNotPriced,
                format!(
                    "The model `{model}` has no price on this service yet, so it cannot be billed. \
                     Ask the operator to set its price."
                ),
            )
            .with_param("model")
        })
    }

    async fn reserve(
        &self,
        user: &Arc<UserEntry>,
        key: &Arc<KeyEntry>,
        estimate: i64,
    ) -> Result<Hold, RelayError> {
        match Hold::reserve(&user.wallet, key.budget.as_ref(), estimate) {
            Ok(h) => Ok(h),
            Err(HoldError::Balance { .. }) => {
                // Another process (the CLI, a payment) may have credited the
                // balance: read it once before refusing.
                let (tx, rx) = oneshot::channel();
                if self
                    .writer
                    .send(WriteMsg::RefreshUser(user.id, tx))
                    .await
                    .is_ok()
                {
                    let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
                }
                Hold::reserve(&user.wallet, key.budget.as_ref(), estimate).map_err(hold_error)
            }
            Err(e) => Err(hold_error(e)),
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        ch: &Arc<ChannelEntry>,
        key: &str,
        meter: &mut Meter,
    ) -> (Attempt, Blame) {
        let native_responses = meter.endpoint == Endpoint::Responses
            && ch.native_responses
            && Api::of_kind(&ch.kind) == Some(Api::OpenAi);
        let Some(target) = (if native_responses {
            Some(Api::Responses)
        } else {
            Api::of_kind(&ch.kind)
        }) else {
            return (
                Attempt::Retry(RelayError::new(
                    ErrorKind::NoChannel,
                    format!(
                        "Channel kind `{}` is not supported by this version.",
                        ch.kind
                    ),
                )),
                Blame::None,
            );
        };
        let client = meter.endpoint.api();
        let upstream_model = ch.upstream_model(&meter.model).to_string();
        let shape = RequestShape {
            client,
            openai_path: meter.endpoint.openai_path(),
            stream: meter.stream,
            client_wants_usage: meter.client_wants_usage,
            default_max_tokens: self.cfg.default_max_tokens,
            strip_models: meter.strip_models,
        };
        let passthrough = meter.endpoint.is_passthrough();
        let req = if passthrough && meter.endpoint == Endpoint::AudioTranscriptions {
            // the multipart body goes as it came, boundary and all
            formats::UpstreamRequest {
                path: meter.endpoint.openai_path().to_string(),
                body: meter.body.clone(),
            }
        } else {
            match formats::build_request(
                &shape,
                target,
                &meter.body,
                &meter.body_model,
                &upstream_model,
            ) {
                Ok(r) => r,
                Err(e) => return (Attempt::Fatal(e), Blame::None),
            }
        };
        let url = if ch.kind == "azure" {
            let version = if ch.api_version.is_empty() {
                AZURE_API_VERSION
            } else {
                &ch.api_version
            };
            ch.url(&format!(
                "/openai/deployments/{}{}?api-version={}",
                upstream_model, req.path, version
            ))
        } else {
            ch.url(&req.path)
        };
        let url = match url {
            Ok(u) => u,
            Err(e) => {
                return (
                    Attempt::Retry(RelayError::new(
                        ErrorKind::UpstreamFailed,
                        format!("The channel's base URL is invalid ({e})."),
                    )),
                    Blame::None,
                );
            }
        };
        let first_byte = Duration::from_secs(if ch.timeout_secs > 0 {
            ch.timeout_secs
        } else {
            self.cfg.first_byte_timeout_secs
        });
        let content_type = match (&meter.content_type, meter.endpoint) {
            (Some(ct), Endpoint::AudioTranscriptions) => http::HeaderValue::from_str(ct)
                .unwrap_or(http::HeaderValue::from_static("application/json")),
            _ => http::HeaderValue::from_static("application/json"),
        };
        let anthropic = (
            meter.anthropic_version.as_deref().unwrap_or("2023-06-01"),
            meter.anthropic_beta.as_deref(),
        );
        let request =
            match upstream_request(ch, target, key, url, content_type, anthropic, req.body) {
                Ok(r) => r,
                Err(e) => return (Attempt::Retry(e), Blame::None),
            };
        let send = ch.client.as_ref().unwrap_or(&self.client).send(request);
        let resp = match tokio::time::timeout(first_byte, send).await {
            Err(_) => {
                return (
                    Attempt::Retry(RelayError::new(
                        ErrorKind::UpstreamTimeout,
                        format!(
                            "The upstream did not answer within {}s.",
                            first_byte.as_secs()
                        ),
                    )),
                    Blame::Outage,
                );
            }
            Ok(Err(e)) => {
                return (
                    Attempt::Retry(RelayError::new(
                        if e.is_timeout() {
                            ErrorKind::UpstreamTimeout
                        } else {
                            ErrorKind::UpstreamFailed
                        },
                        format!("The upstream could not be reached ({e})."),
                    )),
                    Blame::Outage,
                );
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status;
        if !(200..300).contains(&status) {
            let body = read_capped(resp.body, 64 * 1024).await.unwrap_or_default();
            return classify_upstream_error(status, body, target);
        }
        let is_sse = resp
            .content_type()
            .is_some_and(|v| v.contains("text/event-stream"));
        if meter.stream && is_sse {
            return self
                .start_stream(ch, meter, resp, upstream_model, target)
                .await;
        }
        let content_type = passthrough
            .then(|| resp.content_type().map(str::to_string))
            .flatten();
        let body = match tokio::time::timeout(
            first_byte,
            read_capped(resp.body, self.cfg.max_response_bytes),
        )
        .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return (Attempt::Retry(e), Blame::Outage),
            Err(_) => {
                return (
                    Attempt::Retry(RelayError::new(
                        ErrorKind::UpstreamTimeout,
                        "The upstream stopped sending its answer.",
                    )),
                    Blame::Outage,
                );
            }
        };
        if passthrough {
            return self
                .finish_passthrough(ch, meter, upstream_model, status, content_type, body)
                .await;
        }
        let (body, usage) =
            match formats::convert_body(client, target, body, &meter.model, &meter.body) {
                Ok(x) => x,
                Err(e) => return (Attempt::Retry(e), Blame::Outage),
            };
        let mut counter = None;
        if usage.is_none() {
            let mut c = StreamCounter::default();
            let mut raw = Vec::new();
            for key in [&b"\"content\""[..], b"\"text\"", b"\"arguments\""] {
                crate::sse::collect_strings(&body, key, &mut raw);
            }
            c.push(&raw);
            counter = Some(c);
        }
        let meter = take_meter(meter);
        let ttft = meter.started.elapsed();
        let report = meter.report_cost;
        let cost = self
            .settle(
                meter,
                ch.id,
                upstream_model,
                usage,
                counter,
                status,
                String::new(),
                ttft,
            )
            .await;
        let cost_usd = report.then(|| units_to_usd(cost));
        let body = match &cost_usd {
            Some(usd) if matches!(client, Api::OpenAi | Api::Responses) => {
                with_usage_cost(body, usd)
            }
            _ => body,
        };
        (
            Attempt::Done(Outbound {
                status,
                body: OutBody::Full(body),
                content_type: None,
                cost_usd,
            }),
            Blame::None,
        )
    }

    /// Settles a pass-through answer and relays its bytes and content type
    /// as they came.
    async fn finish_passthrough(
        &self,
        ch: &Arc<ChannelEntry>,
        meter: &mut Meter,
        upstream_model: String,
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    ) -> (Attempt, Blame) {
        let bill = passthrough::bill(meter.endpoint, &meter.price, &meter.body, meter.n, &body);
        let mut meter = take_meter(meter);
        meter.calls = bill.calls;
        meter.estimated = bill.estimated;
        let ttft = meter.started.elapsed();
        let report = meter.report_cost;
        let cost = self
            .settle(
                meter,
                ch.id,
                upstream_model,
                Some(bill.usage),
                None,
                status,
                String::new(),
                ttft,
            )
            .await;
        let cost_usd = report.then(|| units_to_usd(cost));
        (
            Attempt::Done(Outbound {
                status,
                body: OutBody::Full(body),
                content_type: Some(content_type.unwrap_or_else(|| "application/json".into())),
                cost_usd,
            }),
            Blame::None,
        )
    }

    async fn start_stream(
        self: &Arc<Self>,
        ch: &Arc<ChannelEntry>,
        meter: &mut Meter,
        resp: upstream::Response,
        upstream_model: String,
        target: Api,
    ) -> (Attempt, Blame) {
        let status = resp.status;
        let mut upstream = resp.body;
        let mut split = SseSplitter::new(self.cfg.max_event_bytes);
        let first_byte = Duration::from_secs(self.cfg.first_byte_timeout_secs);
        let deadline = tokio::time::Instant::now() + first_byte;
        // Read up to the first complete event before answering, so that an
        // upstream failure is still a real HTTP error and another channel
        // can be tried.
        let first = loop {
            match split.next_event() {
                Ok(Some(ev)) => break ev,
                Ok(None) => {}
                Err(_) => {
                    return (
                        Attempt::Retry(RelayError::new(
                            ErrorKind::UpstreamFailed,
                            "The upstream sent an oversized stream event.",
                        )),
                        Blame::Outage,
                    );
                }
            }
            match tokio::time::timeout_at(deadline, upstream.next()).await {
                Err(_) => {
                    return (
                        Attempt::Retry(RelayError::new(
                            ErrorKind::UpstreamTimeout,
                            "The upstream stream sent nothing in time.",
                        )),
                        Blame::Outage,
                    );
                }
                Ok(None) => {
                    return (
                        Attempt::Retry(RelayError::new(
                            ErrorKind::UpstreamFailed,
                            "The upstream closed the stream before its first event.",
                        )),
                        Blame::Outage,
                    );
                }
                Ok(Some(Err(e))) => {
                    return (
                        Attempt::Retry(RelayError::new(
                            ErrorKind::UpstreamFailed,
                            format!("The upstream stream failed ({e})."),
                        )),
                        Blame::Outage,
                    );
                }
                Ok(Some(Ok(chunk))) => split.push(&chunk),
            }
        };
        let client = meter.endpoint.api();
        let mut conv = StreamConv::new(
            client,
            target,
            meter.client_wants_usage,
            &meter.model,
            &meter.body,
        );
        conv.hold_usage = meter.report_cost && client == Api::OpenAi;
        let mut out = Vec::new();
        if let Err(e) = conv.event(first, &mut out) {
            return (
                Attempt::Retry(RelayError::new(ErrorKind::UpstreamFailed, e)),
                Blame::Outage,
            );
        }
        let (tx, rx) = mpsc::channel(self.cfg.stream_buffer_chunks.max(1));
        let meter = take_meter(meter);
        let relay = self.clone();
        let channel_id = ch.id;
        self.stats.streams_in_flight.fetch_add(1, Ordering::Relaxed);
        let pump = StreamPump {
            relay: relay.clone(),
            tx,
            client_gone: false,
            conv,
            ttft: None,
        };
        self.tasks.spawn(async move {
            pump.run(
                meter,
                channel_id,
                upstream_model,
                out,
                split,
                upstream,
                status,
            )
            .await;
            relay
                .stats
                .streams_in_flight
                .fetch_sub(1, Ordering::Relaxed);
        });
        (
            Attempt::Done(Outbound {
                status,
                body: OutBody::Stream(rx),
                content_type: None,
                cost_usd: None,
            }),
            Blame::None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        meter: Meter,
        channel_id: i64,
        upstream_model: String,
        usage: Option<Usage>,
        counter: Option<StreamCounter>,
        status: u16,
        error: String,
        ttft: Duration,
    ) -> i64 {
        let (usage, estimated) = match usage {
            Some(u) => (u, meter.estimated),
            None => {
                let (text, messages) = openai::prompt_text(&meter.body);
                let prompt = tokens::count(&text) + 3 * messages + if messages > 0 { 3 } else { 0 };
                let completion = counter.map(StreamCounter::finish).unwrap_or(0);
                (
                    Usage {
                        cache_write: 0,
                        prompt,
                        completion,
                        cached: 0,
                    },
                    true,
                )
            }
        };
        let cost = cost_units_calls(
            &meter.price,
            ratio_for(&meter.user, channel_id),
            usage,
            meter.calls,
        );
        let log = LogRecord {
            id: 0,
            request_id: meter.request_id,
            user_id: meter.user.id,
            key_id: meter.key.id,
            channel_id,
            endpoint: meter.endpoint.name().to_string(),
            model: meter.model,
            upstream_model,
            prompt_tokens: usage.prompt as i64,
            completion_tokens: usage.completion as i64,
            cached_tokens: usage.cached as i64,
            cost,
            latency_ms: meter.started.elapsed().as_millis() as i64,
            ttft_ms: ttft.as_millis() as i64,
            is_stream: meter.stream,
            status: i64::from(status),
            estimated,
            client_ip: meter.client_ip.to_string(),
            error,
            created_at: storage::now_ms(),
        };
        if let (Some(g), Some(limits)) = (self.guard.get(), limits_of(&meter.key, &meter.user, 0)) {
            let (g, key_id, user_id) = (g.clone(), meter.key.id, meter.user.id);
            let used = guard::Usage {
                tokens: usage.prompt + usage.completion,
                spend: cost.max(0) as u64,
            };
            // the slot and the usage record go back in one store call
            let permit = meter.permit;
            tokio::spawn(async move {
                match permit {
                    Some(p) => g.finish(p, key_id, user_id, &limits, used).await,
                    None => g.record_usage(key_id, user_id, &limits, used).await,
                }
            });
        }
        let user = meter.hold.user_wallet().clone();
        let key = meter.hold.key_wallet().cloned();
        meter.hold.settle(cost);
        let _ = self
            .writer
            .send(WriteMsg::Settled(Box::new(Settled { log, user, key })))
            .await;
        cost
    }

    /// A request that reached no upstream answer: refunded (the hold is
    /// dropped) and logged with its error.
    async fn log_failure(&self, meter: Meter, channel_id: i64, err: &RelayError) {
        let log = LogRecord {
            request_id: meter.request_id,
            user_id: meter.user.id,
            key_id: meter.key.id,
            channel_id,
            endpoint: meter.endpoint.name().to_string(),
            model: meter.model,
            latency_ms: meter.started.elapsed().as_millis() as i64,
            is_stream: meter.stream,
            status: i64::from(err.status()),
            client_ip: meter.client_ip.to_string(),
            error: err.message.clone(),
            created_at: storage::now_ms(),
            ..LogRecord::default()
        };
        let user = meter.hold.user_wallet().clone();
        let key = meter.hold.key_wallet().cloned();
        drop(meter.hold);
        let _ = self
            .writer
            .send(WriteMsg::Settled(Box::new(Settled { log, user, key })))
            .await;
    }
}

/// Moves the meter out of an attempt that succeeded (the caller returns at
/// once), leaving an inert one behind.
fn take_meter(m: &mut Meter) -> Meter {
    let placeholder = Meter {
        request_id: String::new(),
        endpoint: m.endpoint,
        user: m.user.clone(),
        key: m.key.clone(),
        model: String::new(),
        price: m.price.clone(),
        hold: Hold::empty(&m.user.wallet),
        body: Bytes::new(),
        client_ip: m.client_ip,
        started: m.started,
        stream: m.stream,
        client_wants_usage: m.client_wants_usage,
        body_model: String::new(),
        strip_models: m.strip_models,
        report_cost: m.report_cost,
        anthropic_version: None,
        anthropic_beta: None,
        content_type: None,
        n: m.n,
        calls: 0,
        estimated: false,
        permit: None,
    };
    std::mem::replace(m, placeholder)
}

/// The pub/sub channel on which nodes announce changes to keys, users,
/// channels, prices and settings.
pub const RELOAD_CHANNEL: &str = "gap:reload";

/// What a limit refusal is about, in words.
pub fn deny_text(r: guard::DenyReason) -> &'static str {
    use guard::DenyReason::*;
    match r {
        KeyRpm => "requests per minute of this API key",
        UserRpm => "requests per minute of your account",
        KeyTpm => "tokens per minute of this API key",
        UserTpm => "tokens per minute of your account",
        KeyConcurrency => "requests at once with this API key",
        UserConcurrency => "requests at once for your account",
        KeyBudget => "the spending budget of this API key for the period",
        UserAllowance => "requests per hour of your account",
    }
}

/// Adds `"cost": "<usd>"`-as-number to the `usage` object of a JSON answer
/// (OpenRouter's `usage.cost`); an answer without one is left as it is.
fn with_usage_cost(body: Bytes, usd: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let Some(u) = v
        .get_mut("usage")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return body;
    };
    let Ok(n) = usd.parse::<serde_json::Number>() else {
        return body;
    };
    u.insert("cost".into(), serde_json::Value::Number(n));
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

async fn read_capped(mut body: upstream::Body, cap: usize) -> Result<Bytes, RelayError> {
    let failed = |e: upstream::Error| {
        RelayError::new(
            ErrorKind::UpstreamFailed,
            format!("Reading the upstream answer failed ({e})."),
        )
    };
    let too_large = || {
        RelayError::new(
            ErrorKind::UpstreamFailed,
            format!("The upstream answer is larger than {cap} bytes."),
        )
    };
    let Some(first) = body.next().await.transpose().map_err(failed)? else {
        return Ok(Bytes::new());
    };
    if first.len() > cap {
        return Err(too_large());
    }
    // an answer that came in one chunk is passed on without a copy
    let Some(mut next) = body.next().await.transpose().map_err(failed)? else {
        return Ok(first);
    };
    let mut out = bytes::BytesMut::from(&first[..]);
    loop {
        if out.len() + next.len() > cap {
            return Err(too_large());
        }
        out.extend_from_slice(&next);
        match body.next().await.transpose().map_err(failed)? {
            Some(n) => next = n,
            None => return Ok(out.freeze()),
        }
    }
}

/// Decides what an upstream error means for the client: the channel's own
/// trouble (authentication, quota, rate limits, outages) is retried on
/// another channel and never shown as if the client's key were bad; a
/// refusal of the request itself is passed on.
fn classify_upstream_error(status: u16, body: Bytes, api: Api) -> (Attempt, Blame) {
    let text = String::from_utf8_lossy(&body);
    let summary: String = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.chars().take(200).collect());
    // Providers that report a channel's credentials or credit as a 4xx.
    let key_trouble = text.contains("insufficient_quota")
        || text.contains("credit balance is too low")
        || text.contains("API_KEY_INVALID")
        || text.contains("API key not valid");
    match status {
        _ if key_trouble && (400..500).contains(&status) => (
            Attempt::Retry(RelayError::new(
                ErrorKind::UpstreamFailed,
                "The upstream channel has run out of credit or refused its key.",
            )),
            Blame::Key(format!("HTTP {status}: {summary}")),
        ),
        429 => (
            Attempt::Retry(RelayError::new(
                ErrorKind::UpstreamRateLimited,
                "The upstream is rate limiting requests; retry shortly.",
            )),
            Blame::None,
        ),
        401 | 403 => (
            Attempt::Retry(RelayError::new(
                ErrorKind::UpstreamFailed,
                format!("The upstream channel refused its credentials (HTTP {status})."),
            )),
            Blame::Key(format!("HTTP {status}: {summary}")),
        ),
        404 | 408 | 409 => (
            Attempt::Retry(RelayError::new(
                ErrorKind::UpstreamFailed,
                format!("The upstream answered HTTP {status}: {summary}"),
            )),
            Blame::Outage,
        ),
        400..=499 => {
            let mut e = RelayError::new(ErrorKind::UpstreamClient, summary);
            e.upstream = Some((status, body));
            e.upstream_api = Some(api);
            (Attempt::Fatal(e), Blame::None)
        }
        _ => (
            Attempt::Retry(RelayError::new(
                ErrorKind::UpstreamFailed,
                format!("The upstream failed with HTTP {status}: {summary}"),
            )),
            Blame::Outage,
        ),
    }
}

/// Relays one stream after its first event, and settles it.
struct StreamPump {
    relay: Arc<Relay>,
    tx: mpsc::Sender<Bytes>,
    client_gone: bool,
    conv: StreamConv,
    ttft: Option<Duration>,
}

impl StreamPump {
    async fn send(&mut self, b: Bytes, idle: Duration) {
        if self.client_gone {
            return;
        }
        match tokio::time::timeout(idle, self.tx.send(b)).await {
            Ok(Ok(())) => {}
            _ => self.client_gone = true,
        }
    }

    /// Sends what is pending as one write: the events of one upstream read
    /// leave in one chunk (one system call), not one each.
    async fn send_all(&mut self, out: &mut Vec<Bytes>, idle: Duration, started: Instant) {
        if self.ttft.is_none() && self.conv.content_seen {
            self.ttft = Some(started.elapsed());
        }
        match out.len() {
            0 => {}
            1 => {
                if let Some(b) = out.pop() {
                    self.send(b, idle).await;
                }
            }
            _ => {
                let mut joined = bytes::BytesMut::with_capacity(out.iter().map(Bytes::len).sum());
                for b in out.drain(..) {
                    joined.extend_from_slice(&b);
                }
                self.send(joined.freeze(), idle).await;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        meter: Meter,
        channel_id: i64,
        upstream_model: String,
        mut out: Vec<Bytes>,
        mut split: SseSplitter,
        mut upstream: upstream::Body,
        status: u16,
    ) {
        let cfg = &self.relay.cfg;
        let idle = Duration::from_secs(cfg.stream_idle_timeout_secs.max(1));
        let keepalive = Duration::from_secs(cfg.keepalive_secs);
        let drain = Duration::from_secs(cfg.drain_timeout_secs);
        let started = meter.started;
        let mut error = String::new();
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        self.send_all(&mut out, idle, started).await;
        'outer: loop {
            loop {
                match split.next_event() {
                    Ok(Some(ev)) => {
                        if let Err(e) = self.conv.event(ev, &mut out) {
                            error = format!("The upstream stream failed: {e}");
                            break 'outer;
                        }
                    }
                    Ok(None) => {
                        self.send_all(&mut out, idle, started).await;
                        break;
                    }
                    Err(_) => {
                        error = "The upstream sent an oversized stream event.".into();
                        break 'outer;
                    }
                }
            }
            if self.conv.done {
                break;
            }
            if self.client_gone && drain_deadline.is_none() {
                drain_deadline = Some(tokio::time::Instant::now() + drain);
                tracing::info!(request_id = %meter.request_id, "client went away; reading the upstream to the end to bill it");
            }
            let silence_start = tokio::time::Instant::now();
            let next = loop {
                let mut wait = idle.saturating_sub(silence_start.elapsed());
                if !keepalive.is_zero() && !self.client_gone {
                    wait = wait.min(keepalive);
                }
                if let Some(d) = drain_deadline {
                    wait = wait.min(d.saturating_duration_since(tokio::time::Instant::now()));
                }
                match tokio::time::timeout(wait, upstream.next()).await {
                    Ok(n) => break n,
                    Err(_) => {
                        if drain_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                            error = "Stopped reading the upstream after the client left.".into();
                            break 'outer;
                        }
                        if silence_start.elapsed() >= idle {
                            error = "The upstream stream went silent.".into();
                            break 'outer;
                        }
                        self.send(Bytes::from_static(b": keep-alive\n\n"), idle)
                            .await;
                    }
                }
            };
            match next {
                None => {
                    if !self.conv.eof_is_normal() {
                        error = "The upstream closed the stream before it finished.".into();
                    }
                    break;
                }
                Some(Err(e)) => {
                    error = format!("The upstream stream failed ({e}).");
                    break;
                }
                Some(Ok(chunk)) => {
                    split.push(&chunk);
                    self.relay
                        .stats
                        .peak_stream_buffer
                        .fetch_max(split.buffered(), Ordering::Relaxed);
                }
            }
        }
        if error.is_empty() {
            self.conv.finish(&mut out);
            if self.conv.holds_usage() {
                // the same amount `settle` charges below
                let usage = self.conv.usage().unwrap_or_default();
                let cost = cost_units_calls(
                    &meter.price,
                    ratio_for(&meter.user, channel_id),
                    usage,
                    meter.calls,
                );
                self.conv.release_held(&units_to_usd(cost), &mut out);
            }
            self.send_all(&mut out, idle, started).await;
        } else if !self.client_gone {
            let e = RelayError::new(ErrorKind::UpstreamFailed, error.clone());
            let b = self.conv.error_event(&e, &meter.request_id);
            self.send(b, idle).await;
        }
        drop(upstream);
        let ttft = self.ttft.unwrap_or_else(|| started.elapsed());
        let counter = std::mem::take(&mut self.conv.counter);
        let usage = self.conv.usage();
        let relay = self.relay.clone();
        drop(self);
        relay
            .settle(
                meter,
                channel_id,
                upstream_model,
                usage,
                Some(counter),
                status,
                error,
                ttft,
            )
            .await;
    }
}
