//! HTTP routers of the gateway: the OpenAI-compatible relay endpoints, the
//! JSON management API under `/api`, and health checks. Handlers stay thin:
//! they extract, call the domain crates, and render errors in the format of
//! the API that was called.

mod api;
mod client_ip;
mod openai_routes;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use relay::Relay;
use storage::Store;

pub use client_ip::TrustedProxies;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct WebConfig {
    pub proxies: TrustedProxies,
    /// Lifetime of access tokens issued by `/api/auth/login`, ms.
    pub login_ttl_ms: i64,
}

#[derive(Clone)]
pub struct AppState {
    pub relay: Arc<Relay>,
    pub store: Store,
    pub cfg: Arc<WebConfig>,
}

/// A new request id (UUID v7, hex without dashes).
pub fn request_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(openai_routes::chat_completions),
        )
        .route("/v1/completions", post(openai_routes::completions))
        .route("/v1/embeddings", post(openai_routes::embeddings))
        .route("/v1/models", get(openai_routes::list_models))
        .route("/v1/models/{*id}", get(openai_routes::get_model))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(api::readyz))
        .nest("/api", api::router())
        .fallback(openai_routes::not_found)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}
