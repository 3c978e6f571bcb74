//! HTTP routers of the gateway: the OpenAI-compatible relay endpoints, the
//! JSON management API under `/api`, and health checks. Handlers stay thin:
//! they extract, call the domain crates, and render errors in the format of
//! the API that was called.

mod api;
pub mod auth;
mod catalog;
mod client_ip;
mod google;
pub mod guard_layer;
mod managed;
mod openai_routes;
mod openapi;
mod payments;
mod serve;
mod stats;

pub use serve::{Connection, MakeService, service};

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use relay::Relay;
use storage::Store;

pub use auth::{AccountsConfig, AccountsRuntime, GoogleConfig};
pub use client_ip::TrustedProxies;
pub use payments::{
    AmountDiscount, EpayConfig, PaymentsConfig, PaymentsRuntime, StripeConfig, Text as ConfigText,
};

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
    pub accounts: Arc<AccountsRuntime>,
    /// Autoban, rate limits and budgets.
    pub guard: guard::Guard,
    /// Top-up providers and limits (`[payments]`).
    pub payments: Arc<PaymentsRuntime>,
}

/// A new request id: 32 hex digits, the time in ms, then a per-process
/// random base plus a counter. Time-ordered like a UUID v7 and unique
/// across restarts, without a syscall or a lock per request.
pub fn request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static BASE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ms = storage::now_ms() as u64 & 0xffff_ffff_ffff;
    // 12 hex digits of milliseconds, 4 of the process's base, 16 of the
    // counter (written by hand: `format!` costs more than the rest of it)
    let mut id = String::with_capacity(32);
    push_hex(&mut id, ms, 12);
    push_hex(&mut id, base >> 48, 4);
    push_hex(&mut id, base.wrapping_add(n), 16);
    id
}

/// The low `digits` hex digits of `v`, most significant first.
fn push_hex(out: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (4 * i)) & 0xf) as usize] as char);
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(openai_routes::chat_completions),
        )
        .route("/v1/completions", post(openai_routes::completions))
        .route("/v1/embeddings", post(openai_routes::embeddings))
        .route("/v1/messages", post(openai_routes::anthropic_messages))
        .route("/v1/responses", post(openai_routes::responses))
        .route(
            "/v1/images/generations",
            post(openai_routes::images_generations),
        )
        .route("/v1/audio/speech", post(openai_routes::audio_speech))
        .route(
            "/v1/audio/transcriptions",
            post(openai_routes::audio_transcriptions),
        )
        .route("/v1/moderations", post(openai_routes::moderations))
        .route("/v1/rerank", post(openai_routes::rerank))
        .route("/v1beta/models", get(openai_routes::gemini_models))
        .route(
            "/v1beta/models/{*rest}",
            post(openai_routes::gemini_generate).get(openai_routes::gemini_model_get),
        )
        .route("/v1/models", get(openai_routes::list_models))
        // POST: Gemini clients whose SDK defaults to the `v1` path
        .route(
            "/v1/models/{*id}",
            get(openai_routes::get_model).post(openai_routes::gemini_generate),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(api::readyz))
        .route("/api/openapi.json", get(openapi::document))
        .nest(
            "/api",
            api::router()
                .merge(auth::router())
                .merge(google::router())
                .merge(managed::router())
                .merge(payments::router())
                .merge(catalog::router())
                .merge(stats::router())
                .merge(guard_layer::router())
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    guard_layer::api_layer,
                )),
        )
        .merge(auth::pages().layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_layer::api_layer,
        )))
        .fallback(openai_routes::not_found)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_unique_and_fixed_length() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| super::request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn hex_digits_match_the_formatter() {
        for v in [0u64, 1, 0xabc, 0x0123_4567_89ab_cdef, u64::MAX, 1 << 47] {
            for digits in [4u32, 12, 16] {
                let mut s = String::new();
                super::push_hex(&mut s, v, digits);
                let full = format!("{v:016x}");
                assert_eq!(
                    s,
                    full[full.len() - digits as usize..],
                    "{v:x} in {digits} digits"
                );
            }
        }
    }
}
