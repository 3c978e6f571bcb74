//! Google sign-in: the OAuth 2.0 authorization-code flow with PKCE, state
//! and nonce. The sign-in in progress lives in the database (any node can
//! finish it); the id_token is verified against the provider's published
//! keys (cached, fetched again when an unknown key id shows up); Google's
//! `sub` is the identity kept on the account.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use accounts::oidc::{self, IdClaims, Jwks, OidcProvider};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use storage::{OAuthStateRow, UserRow};

use crate::AppState;
use crate::api::{ApiError, Caller, MaybeCaller};
use crate::auth::{self, AccountsConfig, Client, ClientInfo};

/// How long a started sign-in may take.
const STATE_TTL_MS: i64 = 10 * 60_000;
/// How long fetched signing keys are trusted before they are fetched again.
const JWKS_TTL: Duration = Duration::from_secs(3600);

pub struct Google {
    pub provider: OidcProvider,
    jwks: Mutex<Option<(Instant, Jwks)>>,
}

impl Google {
    pub fn from_config(cfg: &AccountsConfig) -> Option<Google> {
        let g = &cfg.google;
        if g.client_id.is_empty() {
            return None;
        }
        let mut issuers = vec![g.issuer.clone()];
        if g.issuer == "https://accounts.google.com" {
            issuers.push("accounts.google.com".into());
        }
        Some(Google {
            provider: OidcProvider {
                issuers,
                client_id: g.client_id.clone(),
                client_secret: g.client_secret.clone(),
                auth_url: g.auth_url.clone(),
                token_url: g.token_url.clone(),
                jwks_url: g.jwks_url.clone(),
                redirect_uri: cfg.google_redirect_uri(),
            },
            jwks: Mutex::new(None),
        })
    }

    async fn fetch_jwks(&self, http: &reqwest::Client) -> Result<Jwks, String> {
        let r = http
            .get(&self.provider.jwks_url)
            .send()
            .await
            .map_err(|e| format!("fetching Google's signing keys failed: {e}"))?;
        let text = r
            .text()
            .await
            .map_err(|e| format!("reading Google's signing keys failed: {e}"))?;
        let jwks = Jwks::from_json(&text).map_err(|e| e.to_string())?;
        *self.jwks.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), jwks.clone()));
        Ok(jwks)
    }

    async fn keys(&self, http: &reqwest::Client, kid: Option<&str>) -> Result<Jwks, String> {
        let cached = self
            .jwks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(at, jwks)| {
                at.elapsed() < JWKS_TTL && kid.is_none_or(|k| jwks.find(k).is_some())
            })
            .map(|(_, j)| j.clone());
        match cached {
            Some(j) => Ok(j),
            None => self.fetch_jwks(http).await,
        }
    }

    /// Exchanges the code and verifies the id_token it brings.
    async fn redeem(
        &self,
        http: &reqwest::Client,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<IdClaims, Failure> {
        let form = oidc::token_request_form(&self.provider, code, verifier);
        let r = http
            .post(&self.provider.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(oidc::form_body(&form))
            .send()
            .await
            .map_err(|e| {
                Failure::provider(format!("the token endpoint could not be reached: {e}"))
            })?;
        let status = r.status().as_u16();
        let body = r
            .text()
            .await
            .map_err(|e| Failure::provider(format!("reading the token answer failed: {e}")))?;
        if status != 200 {
            let message = oidc::token_error_message(&self.provider, status, &body);
            return Err(if body.contains("redirect_uri_mismatch") {
                Failure::redirect_mismatch(&self.provider.redirect_uri, message)
            } else {
                Failure::provider(message)
            });
        }
        let tokens =
            oidc::parse_token_response(&body).map_err(|e| Failure::provider(e.to_string()))?;
        let id_token = tokens.id_token.ok_or_else(|| {
            Failure::provider(
                "the token answer has no id_token (is `openid` in the scopes?)".into(),
            )
        })?;
        let kid = jwt_kid(&id_token);
        let now = (storage::now_ms() / 1000) as u64;
        let jwks = self
            .keys(http, kid.as_deref())
            .await
            .map_err(Failure::provider)?;
        oidc::verify_id_token(
            &id_token,
            &jwks,
            &self.provider,
            nonce,
            now,
            oidc::DEFAULT_LEEWAY_SECS,
        )
        .map_err(|e| Failure::refused(format!("the Google sign-in token was refused: {e}")))
    }
}

/// The `kid` of a compact JWT's header, if readable.
fn jwt_kid(token: &str) -> Option<String> {
    use base64::Engine;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("kid")?.as_str().map(str::to_string)
}

/// Why a sign-in failed, as the page the browser lands on says it.
struct Failure {
    status: StatusCode,
    title: &'static str,
    message: String,
}

impl Failure {
    fn provider(message: String) -> Failure {
        Failure {
            status: StatusCode::BAD_GATEWAY,
            title: "Google sign-in failed",
            message,
        }
    }
    fn refused(message: String) -> Failure {
        Failure {
            status: StatusCode::UNAUTHORIZED,
            title: "Google sign-in refused",
            message,
        }
    }
    fn bad(message: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            title: "Google sign-in failed",
            message: message.into(),
        }
    }
    fn redirect_mismatch(uri: &str, detail: String) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            title: "Redirect URI not registered",
            message: format!(
                "Google refused the redirect URI. In Google Cloud Console → APIs & Services → Credentials → \
                 this OAuth client → Authorized redirect URIs, add exactly:\n\n{uri}\n\n(scheme, host, port \
                 and path must match; it is built from accounts.public_url). Provider said: {detail}"
            ),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let esc = self
            .message
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let html = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family:sans-serif;max-width:44em;margin:3em auto\"><h1>{t}</h1>\
             <pre style=\"white-space:pre-wrap\">{esc}</pre><p><a href=\"/\">Back</a></p></body></html>",
            t = self.title
        );
        (self.status, axum::response::Html(html)).into_response()
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/google/start", get(start))
        .route("/auth/google/callback", get(callback))
        .route("/auth/google/config", get(config_info))
        .route("/self/google", axum::routing::delete(unlink))
}

fn google(s: &AppState) -> Result<&Google, ApiError> {
    s.accounts.google.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "Google sign-in is not configured on this service (accounts.google.client_id)",
        )
    })
}

#[derive(Deserialize)]
struct StartQuery {
    /// `login` (default) or `link` (needs a signed-in session).
    purpose: Option<String>,
    /// `json`: answer `{"url": …}` instead of redirecting.
    format: Option<String>,
}

/// Starts a sign-in: remembers state, nonce and PKCE verifier, and sends the
/// browser to Google.
async fn start(
    State(s): State<AppState>,
    Query(q): Query<StartQuery>,
    Client(headers, _): Client,
    MaybeCaller(caller): MaybeCaller,
) -> Result<Response, ApiError> {
    let g = google(&s)?;
    let purpose = q.purpose.as_deref().unwrap_or("login");
    let user_id = match (purpose, caller) {
        ("login", _) => 0,
        ("link", Some(u)) => u.id,
        ("link", None) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Sign in first to link a Google account.",
            ));
        }
        _ => return Err(ApiError::bad("purpose is `login` or `link`")),
    };
    let start = oidc::new_login();
    let region = auth::register_region(&s.accounts.cfg, &headers);
    let language = auth::initial_language(None, &region, &headers);
    let now = storage::now_ms();
    s.store
        .create_oauth_state(&OAuthStateRow {
            state_hash: accounts::secret_hash(&start.state),
            provider: "google".into(),
            purpose: purpose.into(),
            user_id,
            nonce: start.nonce.clone(),
            pkce_verifier: start.pkce_verifier.clone(),
            region,
            language: language.tag().into(),
            created_at: now,
            expires_at: now + STATE_TTL_MS,
        })
        .await?;
    let url = oidc::authorization_url(&g.provider, &start, oidc::DEFAULT_SCOPES, &[]);
    if q.format.as_deref() == Some("json") {
        return Ok(Json(json!({"url": url})).into_response());
    }
    Ok(Redirect::to(&url).into_response())
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(s): State<AppState>,
    Query(q): Query<CallbackQuery>,
    Client(headers, peer): Client,
) -> Response {
    match finish(&s, q, &headers, peer).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

async fn finish(
    s: &AppState,
    q: CallbackQuery,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Result<Response, Failure> {
    let g = s
        .accounts
        .google
        .as_ref()
        .ok_or_else(|| Failure::bad("Google sign-in is not configured on this service."))?;
    if let Some(err) = &q.error {
        return Err(Failure::bad(oidc::callback_error_message(
            err,
            q.error_description.as_deref(),
        )));
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return Err(Failure::bad(
            "The answer from Google has no code or state; start again.",
        ));
    };
    let st = s
        .store
        .take_oauth_state(&accounts::secret_hash(&state))
        .await
        .map_err(|e| Failure::provider(e.to_string()))?
        .ok_or_else(|| {
            Failure::bad("This sign-in has expired or was already used; start again.")
        })?;
    let claims = g
        .redeem(&s.accounts.http, &code, &st.pkce_verifier, &st.nonce)
        .await?;
    let client = ClientInfo::from_headers(s, peer, headers);
    let store_err = |e: storage::StorageError| Failure::provider(e.to_string());
    if st.purpose == "link" {
        if let Some(other) = s
            .store
            .user_by_google_id(&claims.sub)
            .await
            .map_err(store_err)?
        {
            if other.id != st.user_id {
                return Err(Failure::bad(
                    "This Google account is already linked to another account here.",
                ));
            }
        } else {
            s.store
                .set_google_id(st.user_id, Some(&claims.sub))
                .await
                .map_err(store_err)?;
        }
        return Ok(Redirect::to("/?google=linked").into_response());
    }
    let user = match s
        .store
        .user_by_google_id(&claims.sub)
        .await
        .map_err(store_err)?
    {
        Some(u) => u,
        None => sign_up_or_link(s, &claims, &st).await?,
    };
    if user.status != 1 {
        return Err(Failure::refused(
            "This account is disabled; contact the operator.".into(),
        ));
    }
    let (cookie, _) = auth::start_session(s, &user, user.totp_enabled, &client)
        .await
        .map_err(|e| Failure::provider(e.message().to_string()))?;
    let target = if user.totp_enabled {
        "/?mfa=required"
    } else {
        "/"
    };
    let mut r = Redirect::to(target).into_response();
    r.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(r)
}

/// A Google identity seen for the first time: an existing account with the
/// same verified address gets it linked (both sides must have verified the
/// address); otherwise a new account is made, if sign-up is open.
async fn sign_up_or_link(
    s: &AppState,
    claims: &IdClaims,
    st: &OAuthStateRow,
) -> Result<UserRow, Failure> {
    let store_err = |e: storage::StorageError| Failure::provider(e.to_string());
    let verified_email = claims
        .email
        .as_deref()
        .filter(|_| claims.email_verified)
        .map(|e| e.trim().to_lowercase());
    if let Some(email) = &verified_email
        && let Some(u) = s.store.user_by_email(email).await.map_err(store_err)?
    {
        if u.email_verified && u.google_id.is_none() {
            s.store
                .set_google_id(u.id, Some(&claims.sub))
                .await
                .map_err(store_err)?;
            return s.store.user_fresh(u.id).await.map_err(store_err);
        }
        return Err(Failure::bad(
            "An account with this e-mail address exists. Sign in with its password, then link Google in your settings.",
        ));
    }
    if !s.accounts.cfg.registration {
        return Err(Failure::bad(
            "Sign-up is closed on this service; ask the operator for an account.",
        ));
    }
    let base: String = claims
        .email
        .as_deref()
        .and_then(|e| e.split('@').next())
        .unwrap_or("user")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.')
        .take(24)
        .collect();
    let base = if base.len() < 3 {
        format!("user{base}")
    } else {
        base
    };
    for attempt in 0..5 {
        let username = if attempt == 0 {
            base.clone()
        } else {
            format!(
                "{base}{}",
                &accounts::generate_password()[..4].to_lowercase()
            )
        };
        let r = s
            .store
            .create_account(&storage::NewUser {
                username,
                password_hash: String::new(),
                role: accounts::ROLE_USER.into(),
                group: "default".into(),
                email: verified_email.clone(),
                email_verified: verified_email.is_some(),
                display_name: claims.name.clone().unwrap_or_default(),
                google_id: Some(claims.sub.clone()),
                register_region: st.region.clone(),
                language: st.language.clone(),
            })
            .await;
        match r {
            Ok(u) => {
                let _ = s.relay.reload().await;
                return Ok(u);
            }
            Err(storage::StorageError::Conflict(w)) if w.contains("username") => continue,
            Err(e) => return Err(store_err(e)),
        }
    }
    Err(Failure::provider("could not choose a free username".into()))
}

async fn unlink(
    State(s): State<AppState>,
    Caller(u): Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    if u.google_id.is_none() {
        return Ok(Json(json!({"google_linked": false})));
    }
    if u.password_hash.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_password",
            "Set a password first (POST /api/self/password), or you could not sign in any more.",
        ));
    }
    s.store.set_google_id(u.id, None).await?;
    Ok(Json(json!({"google_linked": false})))
}

/// What the operator must register at Google.
async fn config_info(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "enabled": s.accounts.google.is_some(),
        "redirect_uri": s.accounts.cfg.google_redirect_uri(),
    }))
}
