//! Abuse protection at the HTTP edge: banned IPs are refused first; the
//! management API counts requests per IP (credential endpoints on their own,
//! stricter rule; signed-in requests per user instead); the relay endpoints
//! report unknown keys and their failing answers (see `openai_routes`).
//! The counting and the bans live in the `guard` crate, in Redis when one is
//! configured, so every node sees the same.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use guard::{Ban, Deny, Verdict};
use serde_json::json;

use crate::AppState;
use crate::api::{Admin, ApiError};

/// Endpoints that take credentials: the stricter per-IP rule. (Inside the
/// nested `/api` router the path arrives without its prefix.)
fn is_credential_path(path: &str) -> bool {
    let p = path.strip_prefix("/api").unwrap_or(path);
    matches!(
        p,
        "/auth/register"
            | "/auth/login"
            | "/auth/login/totp"
            | "/auth/password-reset"
            | "/auth/password-reset/confirm"
            | "/auth/verify-email"
            | "/auth/resend-verification"
            | "/auth/reset-password"
    ) || p.starts_with("/auth/google/")
}

/// Payment providers' callbacks: authenticated by their signatures, never
/// counted nor banned (a gateway retrying callbacks from one address must
/// not lose a payment to a ban).
fn is_provider_callback(path: &str) -> bool {
    let p = path.strip_prefix("/api").unwrap_or(path);
    matches!(p, "/topup/epay/notify" | "/topup/stripe/webhook")
}

/// How long, in words, for messages.
pub fn human_secs(secs: u64) -> String {
    match secs {
        0..=90 => format!("{secs} seconds"),
        91..=5400 => format!("{} minutes", secs.div_ceil(60)),
        _ => format!("{:.1} hours", secs as f64 / 3600.0),
    }
}

pub fn ban_message(ban: &Ban) -> String {
    format!(
        "Too many requests from your address ({}); it is blocked for another {}.",
        ban.subject,
        human_secs(ban.retry_after_secs)
    )
}

pub fn deny_message(d: &Deny) -> String {
    format!(
        "Limit reached: {}; retry in {}.",
        relay::deny_text(d.reason),
        human_secs(d.retry_after_secs)
    )
}

fn retry_after(mut r: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn banned_response(ban: &Ban) -> Response {
    let body = json!({"error": {
        "message": ban_message(ban), "code": "ip_banned",
        "retry_after": ban.retry_after_secs, "request_id": crate::request_id(),
    }});
    retry_after(
        (StatusCode::FORBIDDEN, Json(body)).into_response(),
        ban.retry_after_secs,
    )
}

fn limited_response(d: &Deny) -> Response {
    let body = json!({"error": {
        "message": deny_message(d), "code": "rate_limited",
        "retry_after": d.retry_after_secs, "request_id": crate::request_id(),
    }});
    retry_after(
        (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response(),
        d.retry_after_secs,
    )
}

/// The client address of a request, by the trusted-proxy rule.
pub fn client_ip(s: &AppState, req: &Request) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(s.cfg.proxies.client_ip(peer, req.headers()))
}

/// The user behind a request's credentials, if they are valid.
async fn signed_in_user(
    s: &AppState,
    bearer: Option<String>,
    cookie: Option<String>,
) -> Option<i64> {
    if let Some(t) = bearer {
        return s
            .store
            .user_by_access_token(&accounts::secret_hash(t.trim()))
            .await
            .ok()
            .flatten()
            .map(|u| u.id);
    }
    s.store
        .session(&accounts::secret_hash(&cookie?))
        .await
        .ok()
        .flatten()
        .map(|(_, u)| u.id)
}

/// The management API and the account pages: bans first, then counting.
pub async fn api_layer(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(ip) = client_ip(&s, &req) else {
        return next.run(req).await;
    };
    if is_provider_callback(req.uri().path()) {
        return next.run(req).await;
    }
    let credential = is_credential_path(req.uri().path());
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let cookie =
        crate::auth::cookie(req.headers(), crate::auth::SESSION_COOKIE).map(str::to_string);
    if let Some(ban) = s.guard.check_ip(ip).await {
        return banned_response(&ban);
    }
    let verdict = if credential {
        s.guard.note_credential_attempt(ip).await
    } else {
        let user = signed_in_user(&s, bearer, cookie).await;
        s.guard.note_api_request(ip, user).await
    };
    match verdict {
        Verdict::Allow => next.run(req).await,
        Verdict::Banned(ban) => banned_response(&ban),
        Verdict::Limited(d) => limited_response(&d),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/bans", axum::routing::get(bans_list))
        .route("/bans/{*subject}", axum::routing::delete(ban_delete))
        .route("/guard/metrics", axum::routing::get(guard_metrics))
}

/// Admin: the bans in force, with the rule and count that issued them.
async fn bans_list(
    State(s): State<AppState>,
    _: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bans = s.guard.bans().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "guard_unavailable",
            format!("the ban list cannot be read: {e}"),
        )
    })?;
    let rows: Vec<serde_json::Value> = bans
        .iter()
        .map(|b| {
            json!({
                "subject": b.subject, "rule": b.rule.as_str(), "count": b.count,
                "since": b.since_ms, "until": b.until_ms, "tier": b.tier,
                "remaining_secs": b.retry_after_secs,
                "why": format!("{} requests under the `{}` rule", b.count, b.rule.as_str()),
            })
        })
        .collect();
    Ok(Json(json!({"data": rows})))
}

async fn ban_delete(
    State(s): State<AppState>,
    _: Admin,
    axum::extract::Path(subject): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let removed = s.guard.unban(&subject).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "guard_unavailable",
            format!("the ban could not be lifted: {e}"),
        )
    })?;
    if !removed {
        return Err(ApiError::not_found(format!("ban of {subject}")));
    }
    Ok(Json(json!({"unbanned": subject})))
}

async fn guard_metrics(State(s): State<AppState>, _: Admin) -> Json<serde_json::Value> {
    Json(json!({"data": s.guard.metrics()}))
}

#[cfg(test)]
mod tests {
    use super::{is_credential_path, is_provider_callback};

    #[test]
    fn paths_are_classified_with_or_without_the_api_prefix() {
        for p in [
            "/api/auth/login",
            "/auth/login",
            "/auth/reset-password",
            "/auth/google/callback",
        ] {
            assert!(is_credential_path(p), "{p}");
        }
        for p in ["/api/self", "/self/keys", "/auth/session"] {
            assert!(!is_credential_path(p), "{p}");
        }
        assert!(is_provider_callback("/topup/epay/notify"));
        assert!(is_provider_callback("/api/topup/stripe/webhook"));
        assert!(!is_provider_callback("/topup/epay"));
    }
}
