//! The relay endpoints of the three dialects (OpenAI, Anthropic, Gemini):
//! handlers extract the key, client address and body, call the relay, and
//! render its answer, or its error in the caller's dialect with the request
//! id.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use relay::formats::Api;
use relay::{Endpoint, ErrorKind, Inbound, OutBody, RelayError};

use crate::{AppState, request_id};

/// The API key from `Authorization: Bearer …`, `x-api-key` (Anthropic),
/// `x-goog-api-key` or `?key=` (Gemini).
fn api_key_any(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(k) = api_key(headers) {
        return Some(k);
    }
    if let Some(v) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))
        .map(|k| k.to_string())
}

fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The API key from `Authorization: Bearer …` (or `x-api-key`).
fn api_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let key = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v);
        return Some(key.trim().to_string());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Renders a relay error as OpenAI does.
pub fn error_response(e: &RelayError, id: &str) -> Response {
    error_response_in(Api::OpenAi, e, id)
}

/// Renders a relay error in the caller's dialect.
pub fn error_response_in(api: Api, e: &RelayError, id: &str) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        relay::formats::error_body(api, e, id),
    )
        .into_response();
    if !e.should_retry() {
        resp.headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if matches!(e.kind, ErrorKind::InvalidKey | ErrorKind::UnknownKey) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if e.status() >= 500 {
        tracing::warn!(request_id = id, status = e.status(), error = %e.message, "request failed");
    }
    with_request_id(resp, id)
}

pub(crate) async fn relay_endpoint(
    state: AppState,
    endpoint: Endpoint,
    peer: SocketAddr,
    req: Request,
) -> Response {
    relay_call(state, endpoint, peer, req, None, None).await
}

async fn relay_call(
    state: AppState,
    endpoint: Endpoint,
    peer: SocketAddr,
    req: Request,
    model: Option<String>,
    stream: Option<bool>,
) -> Response {
    let api = endpoint.api();
    let id = request_id();
    let ip = state.cfg.proxies.client_ip(peer.ip(), req.headers());
    if let Some(ban) = state.guard.check_ip(ip).await {
        let e = RelayError::new(ErrorKind::IpBanned, crate::guard_layer::ban_message(&ban))
            .with_retry_after(ban.retry_after_secs);
        return error_response_in(api, &e, &id);
    }
    let resp = relay_inner(&state, endpoint, peer, req, model, stream, api, &id).await;
    // abuse accounting: unknown keys and runs of out-of-balance answers per
    // address; a success costs nothing unless this node saw a run open
    let guard = &state.guard;
    let verdict = match resp.1 {
        Some(ErrorKind::UnknownKey) => guard.note_unknown_key(ip).await,
        Some(ErrorKind::InsufficientBalance | ErrorKind::KeyQuotaExceeded) => {
            guard
                .note_relay_result(ip, guard::RelayStatus::InsufficientQuota)
                .await
        }
        Some(_) => guard::Verdict::Allow,
        None => {
            guard
                .note_relay_result(ip, guard::RelayStatus::Success)
                .await
        }
    };
    match verdict {
        // the request that crosses the limit is the first one refused
        guard::Verdict::Banned(ban) if resp.1.is_some() => {
            let e = RelayError::new(ErrorKind::IpBanned, crate::guard_layer::ban_message(&ban))
                .with_retry_after(ban.retry_after_secs);
            error_response_in(api, &e, &id)
        }
        _ => resp.0,
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_inner(
    state: &AppState,
    endpoint: Endpoint,
    peer: SocketAddr,
    req: Request,
    model: Option<String>,
    stream: Option<bool>,
    api: relay::formats::Api,
    id: &str,
) -> (Response, Option<ErrorKind>) {
    let id = id.to_string();
    let (parts, body) = req.into_parts();
    let limit = state.relay.cfg.max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            let e = RelayError::new(
                ErrorKind::BodyTooLarge,
                format!(
                    "The request body is larger than this service accepts ({limit} bytes), or it could not be read."
                ),
            );
            return (error_response_in(api, &e, &id), Some(e.kind));
        }
    };
    let inb = Inbound {
        endpoint,
        model,
        stream,
        anthropic_version: header_string(&parts.headers, "anthropic-version"),
        anthropic_beta: header_string(&parts.headers, "anthropic-beta"),
        api_key: api_key_any(&parts.headers, parts.uri.query()),
        client_ip: state.cfg.proxies.client_ip(peer.ip(), &parts.headers),
        content_type: header_string(&parts.headers, "content-type"),
        body,
        request_id: id.clone(),
    };
    match state.relay.handle(inb).await {
        Ok(out) => {
            let status = StatusCode::from_u16(out.status).unwrap_or(StatusCode::OK);
            let resp = match out.body {
                OutBody::Full(b) => {
                    let ct = out
                        .content_type
                        .as_deref()
                        .and_then(|c| HeaderValue::from_str(c).ok())
                        .unwrap_or(HeaderValue::from_static("application/json"));
                    (status, [(header::CONTENT_TYPE, ct)], b).into_response()
                }
                OutBody::Stream(rx) => {
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
                    });
                    (
                        status,
                        [
                            (header::CONTENT_TYPE, "text/event-stream"),
                            (header::CACHE_CONTROL, "no-cache"),
                            (header::HeaderName::from_static("x-accel-buffering"), "no"),
                        ],
                        Body::from_stream(stream),
                    )
                        .into_response()
                }
            };
            let mut resp = with_request_id(resp, &id);
            if let Some(v) = out.cost_usd.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut()
                    .insert(header::HeaderName::from_static("x-cost-usd"), v);
            }
            (resp, None)
        }
        Err(e) => (error_response_in(api, &e, &id), Some(e.kind)),
    }
}

pub async fn chat_completions(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::ChatCompletions, peer, req).await
}

pub async fn completions(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::Completions, peer, req).await
}

pub async fn embeddings(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::Embeddings, peer, req).await
}

pub async fn responses(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::Responses, peer, req).await
}

pub async fn images_generations(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::ImagesGenerations, peer, req).await
}

pub async fn audio_speech(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::AudioSpeech, peer, req).await
}

pub async fn audio_transcriptions(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::AudioTranscriptions, peer, req).await
}

pub async fn moderations(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::Moderations, peer, req).await
}

pub async fn rerank(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::Rerank, peer, req).await
}

pub async fn anthropic_messages(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    relay_endpoint(s, Endpoint::AnthropicMessages, peer, req).await
}

/// `POST /v1beta/models/{model}:generateContent` and
/// `:streamGenerateContent?alt=sse`.
pub async fn gemini_generate(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(rest): Path<String>,
    req: Request,
) -> Response {
    let (model, action) = match rest.rsplit_once(':') {
        Some((m, a)) => (m.to_string(), a.to_string()),
        None => (rest.clone(), String::new()),
    };
    let stream = match action.as_str() {
        "generateContent" => false,
        "streamGenerateContent" => {
            let sse = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
            if !sse {
                let e = RelayError::new(
                    ErrorKind::BadRequest,
                    "Streaming is served as server-sent events: add ?alt=sse to the URL (the official SDKs do).",
                );
                return error_response_in(Api::Gemini, &e, &request_id());
            }
            true
        }
        other => {
            let e = RelayError::new(
                ErrorKind::BadRequest,
                format!("Unknown method `{other}`: use generateContent or streamGenerateContent."),
            );
            let mut r = error_response_in(Api::Gemini, &e, &request_id());
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    relay_call(
        s,
        Endpoint::GeminiGenerate,
        peer,
        req,
        Some(model),
        Some(stream),
    )
    .await
}

fn gemini_model(m: &str) -> serde_json::Value {
    serde_json::json!({
        "name": format!("models/{m}"), "displayName": m,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
    })
}

/// `GET /v1beta/models/{model}`.
pub async fn gemini_model_get(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(model): Path<String>,
    req: Request,
) -> Response {
    let id = request_id();
    let snap = s.relay.snapshot();
    let headers = req.headers();
    let ip = s.cfg.proxies.client_ip(peer.ip(), headers);
    let model = model.strip_prefix("models/").unwrap_or(&model).to_string();
    match s.relay.authenticate(
        &snap,
        api_key_any(headers, req.uri().query()).as_deref(),
        ip,
    ) {
        Ok((key, user)) if s.relay.models_for(&key, &user).contains(&model) => {
            with_request_id(axum::Json(gemini_model(&model)).into_response(), &id)
        }
        Ok(_) => {
            let e = RelayError::new(
                ErrorKind::ModelNotFound,
                format!("The model `{model}` does not exist or you do not have access to it."),
            );
            error_response_in(Api::Gemini, &e, &id)
        }
        Err(e) => error_response_in(Api::Gemini, &e, &id),
    }
}

/// Whether a request comes from a Gemini client (its key header or `?key=`).
fn is_gemini_client(headers: &HeaderMap, query: Option<&str>) -> bool {
    headers.contains_key("x-goog-api-key")
        || query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("key=")))
}

/// `GET /v1beta/models`: the models the key may use, in Gemini's shape.
pub async fn gemini_models(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let id = request_id();
    let snap = s.relay.snapshot();
    let headers = req.headers();
    let ip = s.cfg.proxies.client_ip(peer.ip(), headers);
    match s.relay.authenticate(
        &snap,
        api_key_any(headers, req.uri().query()).as_deref(),
        ip,
    ) {
        Ok((key, user)) => {
            let models: Vec<_> = s
                .relay
                .models_for(&key, &user)
                .iter()
                .map(|m| gemini_model(m))
                .collect();
            with_request_id(
                axum::Json(serde_json::json!({ "models": models })).into_response(),
                &id,
            )
        }
        Err(e) => error_response_in(Api::Gemini, &e, &id),
    }
}

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "gpt-api-proxy"})
}

pub async fn list_models(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    if is_gemini_client(req.headers(), req.uri().query()) {
        return gemini_models(State(s), ConnectInfo(peer), req).await;
    }
    let headers = req.headers().clone();
    let id = request_id();
    let snap = s.relay.snapshot();
    let ip = s.cfg.proxies.client_ip(peer.ip(), &headers);
    match s
        .relay
        .authenticate(&snap, api_key(&headers).as_deref(), ip)
    {
        Ok((key, user)) if headers.contains_key("anthropic-version") => {
            let models = s.relay.models_for(&key, &user);
            let data: Vec<_> = models
                .iter()
                .map(|m| {
                    serde_json::json!({"type": "model", "id": m, "display_name": m,
                        "created_at": "2025-01-01T00:00:00Z"})
                })
                .collect();
            with_request_id(
                axum::Json(serde_json::json!({
                    "data": data, "has_more": false,
                    "first_id": models.first(), "last_id": models.last(),
                }))
                .into_response(),
                &id,
            )
        }
        Ok((key, user)) => {
            let data: Vec<_> = s
                .relay
                .models_for(&key, &user)
                .iter()
                .map(|m| model_object(m))
                .collect();
            with_request_id(
                axum::Json(serde_json::json!({"object": "list", "data": data})).into_response(),
                &id,
            )
        }
        Err(e) => error_response(&e, &id),
    }
}

pub async fn get_model(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(model): Path<String>,
    req: Request,
) -> Response {
    if is_gemini_client(req.headers(), req.uri().query()) {
        return gemini_model_get(State(s), ConnectInfo(peer), Path(model), req).await;
    }
    let headers = req.headers().clone();
    let id = request_id();
    let snap = s.relay.snapshot();
    let ip = s.cfg.proxies.client_ip(peer.ip(), &headers);
    match s
        .relay
        .authenticate(&snap, api_key(&headers).as_deref(), ip)
    {
        Ok((key, user)) => {
            if s.relay.models_for(&key, &user).contains(&model) {
                let body = if headers.contains_key("anthropic-version") {
                    serde_json::json!({"type": "model", "id": model, "display_name": model,
                        "created_at": "2025-01-01T00:00:00Z"})
                } else {
                    model_object(&model)
                };
                with_request_id(axum::Json(body).into_response(), &id)
            } else {
                let e = RelayError::new(
                    ErrorKind::ModelNotFound,
                    format!("The model `{model}` does not exist or you do not have access to it."),
                )
                .with_param("model");
                error_response(&e, &id)
            }
        }
        Err(e) => error_response(&e, &id),
    }
}

pub async fn not_found(req: Request) -> Response {
    let id = request_id();
    let path = req.uri().path().to_string();
    if path.starts_with("/api/") {
        return crate::api::ApiError::not_found(format!("No management endpoint at {path}."))
            .into_response();
    }
    let e = RelayError::new(
        ErrorKind::BadRequest,
        format!(
            "Invalid URL ({} {path}). See the user guide for the supported endpoints.",
            req.method()
        ),
    );
    let mut r = error_response(&e, &id);
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}
