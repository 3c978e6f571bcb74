//! Accounts over HTTP: sign-up, password sign-in with an optional second
//! factor, dashboard sessions (a private cookie + a server-side row, CSRF
//! checked on every state-changing request), e-mail verification and
//! password reset by single-use links, password change, sign-out everywhere,
//! TOTP setup, and the region and language recorded at sign-up.

use accounts::i18n::Locale;
use accounts::mail::{Mailer, SmtpConfig, Template};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use storage::{SessionRow, UserRow};

use crate::AppState;
use crate::api::{ApiError, Body, Caller};

/// The session cookie. `HttpOnly`, `SameSite=Lax`, `Secure` on HTTPS.
pub const SESSION_COOKIE: &str = "gap_session";
/// The header that carries the CSRF token on cookie-authenticated writes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// `[accounts]` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsConfig {
    /// The address users reach the service at, e.g. `https://api.example.com`.
    /// Links in e-mails and the Google redirect URI are built from it (never
    /// from a request's Host header). Empty: `http://` + `server.listen`.
    pub public_url: String,
    /// The name used in e-mails and the TOTP issuer.
    pub site_name: String,
    /// Whether anyone may sign up (`POST /api/auth/register`, Google).
    pub registration: bool,
    /// `off` or `required`: with `required`, sign-up needs an e-mail address
    /// and password sign-in is refused until it is verified.
    pub email_verification: String,
    pub session_ttl_hours: i64,
    pub verify_link_ttl_hours: u32,
    pub reset_link_ttl_hours: u32,
    /// A header set by a trusted proxy with the client's country, e.g.
    /// `CF-IPCountry`. Empty: the region comes from `Accept-Language`.
    pub region_header: String,
    /// Lets managed users point their own channels at private and loopback
    /// addresses (off: such base URLs are refused).
    pub allow_private_upstreams: bool,
    /// Outgoing mail; without it no e-mail is sent (and verification cannot
    /// be required).
    pub smtp: Option<SmtpConfig>,
    /// Google sign-in; off while `client_id` is empty.
    pub google: GoogleConfig,
}

/// `[accounts.google]`: an OAuth client of Google (or of any OpenID provider
/// with the same endpoints, e.g. a local stand-in for tests).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoogleConfig {
    pub client_id: String,
    pub client_secret: String,
    pub issuer: String,
    pub auth_url: String,
    pub token_url: String,
    pub jwks_url: String,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        GoogleConfig {
            client_id: String::new(),
            client_secret: String::new(),
            issuer: "https://accounts.google.com".into(),
            auth_url: accounts::oidc::GOOGLE_AUTH_URL.into(),
            token_url: accounts::oidc::GOOGLE_TOKEN_URL.into(),
            jwks_url: accounts::oidc::GOOGLE_JWKS_URL.into(),
        }
    }
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            public_url: String::new(),
            site_name: "gpt-api-proxy".into(),
            registration: true,
            email_verification: "off".into(),
            session_ttl_hours: 24 * 7,
            verify_link_ttl_hours: 24,
            reset_link_ttl_hours: 1,
            region_header: String::new(),
            allow_private_upstreams: false,
            smtp: None,
            google: GoogleConfig::default(),
        }
    }
}

impl AccountsConfig {
    /// Checks the settings; `listen` fills an empty `public_url`.
    pub fn validate(&mut self, listen: &str) -> Result<(), String> {
        if self.public_url.is_empty() {
            self.public_url = format!("http://{listen}");
        }
        self.public_url = self.public_url.trim_end_matches('/').to_string();
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(format!(
                "accounts.public_url `{}` must start with http:// or https://",
                self.public_url
            ));
        }
        match self.email_verification.as_str() {
            "off" => {}
            "required" if self.smtp.is_some() => {}
            "required" => {
                return Err(
                    "accounts.email_verification = \"required\" needs [accounts.smtp] to send the links"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "accounts.email_verification is `off` or `required`, not `{other}`"
                ));
            }
        }
        if self.session_ttl_hours <= 0 {
            return Err("accounts.session_ttl_hours must be at least 1".into());
        }
        Ok(())
    }

    pub fn verification_required(&self) -> bool {
        self.email_verification == "required"
    }

    /// The redirect URI to register at Google.
    pub fn google_redirect_uri(&self) -> String {
        format!("{}/api/auth/google/callback", self.public_url)
    }

    fn cookie_secure(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

/// What the account routes need at run time, built once at start.
pub struct AccountsRuntime {
    pub cfg: AccountsConfig,
    pub mailer: Option<Mailer>,
    pub google: Option<crate::google::Google>,
    /// For calls to the identity provider.
    pub http: reqwest::Client,
}

impl AccountsRuntime {
    pub fn new(mut cfg: AccountsConfig, listen: &str) -> Result<AccountsRuntime, String> {
        cfg.validate(listen)?;
        let mailer = match &cfg.smtp {
            Some(smtp) => Some(Mailer::new(smtp).map_err(|e| format!("accounts.smtp: {e}"))?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let google = crate::google::Google::from_config(&cfg);
        Ok(AccountsRuntime {
            cfg,
            mailer,
            google,
            http,
        })
    }
}

// ---- session mechanics ----------------------------------------------------

/// The CSRF token of a session: derived from the cookie's secret, so a page
/// that cannot read the cookie cannot compute it, and nothing more is stored.
pub fn csrf_token(session_token: &str) -> String {
    accounts::secret_hash(&format!("csrf:{session_token}"))[..32].to_string()
}

/// The value of a cookie in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn session_cookie(cfg: &AccountsConfig, token: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if cfg.cookie_secure() { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("gap_session=; Path=/; Max-Age=0"))
}

fn clear_cookie(cfg: &AccountsConfig) -> HeaderValue {
    session_cookie(cfg, "", 0)
}

/// Where a request comes from, for the session row.
pub struct ClientInfo {
    pub ip: String,
    pub user_agent: String,
}

impl ClientInfo {
    pub fn from_headers(s: &AppState, peer: Option<std::net::IpAddr>, h: &HeaderMap) -> Self {
        let ip = peer
            .map(|p| s.cfg.proxies.client_ip(p, h).to_string())
            .unwrap_or_default();
        let user_agent = h
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        ClientInfo { ip, user_agent }
    }
}

/// A new session: returns the cookie header and the session's CSRF token.
pub async fn start_session(
    s: &AppState,
    user: &UserRow,
    mfa_pending: bool,
    client: &ClientInfo,
) -> Result<(HeaderValue, String), ApiError> {
    let token = format!(
        "gs-{}",
        accounts::generate_password() + &accounts::generate_password()
    );
    let ttl_ms = if mfa_pending {
        10 * 60_000
    } else {
        s.accounts.cfg.session_ttl_hours * 3_600_000
    };
    s.store
        .create_session(
            user.id,
            &accounts::secret_hash(&token),
            mfa_pending,
            &client.ip,
            &client.user_agent,
            storage::now_ms() + ttl_ms,
        )
        .await?;
    Ok((
        session_cookie(&s.accounts.cfg, &token, ttl_ms / 1000),
        csrf_token(&token),
    ))
}

/// The session behind the request's cookie, checked: live, second factor
/// given, CSRF token and origin right on a state-changing method.
pub async fn session_caller(
    s: &AppState,
    method: &Method,
    headers: &HeaderMap,
    token: &str,
) -> Result<(SessionRow, UserRow), ApiError> {
    let (sess, user) = s
        .store
        .session(&accounts::secret_hash(token))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "session_expired",
                "Your session has ended; sign in again.",
            )
        })?;
    if sess.mfa_pending {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "mfa_required",
            "Finish signing in: send your two-factor code to POST /api/auth/login/totp.",
        ));
    }
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        check_origin(s, headers)?;
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !constant_eq(sent.as_bytes(), csrf_token(token).as_bytes()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "Missing or wrong X-CSRF-Token header: send the csrf_token from sign-in (or GET /api/auth/session) with every change.",
            ));
        }
    }
    // slide the expiry at most once a minute
    let now = storage::now_ms();
    if now - sess.last_seen_at > 60_000 {
        let _ = s
            .store
            .touch_session(sess.id, now + s.accounts.cfg.session_ttl_hours * 3_600_000)
            .await;
    }
    Ok((sess, user))
}

/// A cross-site write is refused even with SameSite=Lax cookies: when the
/// browser says where the request comes from, it must be this service.
fn check_origin(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let public = &s.accounts.cfg.public_url;
    let host_origin = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| (format!("http://{h}"), format!("https://{h}")));
    let ok = origin == public || host_origin.is_some_and(|(a, b)| origin == a || origin == b);
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            format!("Requests from {origin} may not change anything here."),
        ))
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- region and language ------------------------------------------------

/// The region recorded at sign-up: the trusted country header when one is
/// configured and present, else the region of the first `Accept-Language`
/// tag (or the language itself when the tag has no region).
pub fn register_region(cfg: &AccountsConfig, headers: &HeaderMap) -> String {
    if !cfg.region_header.is_empty()
        && let Some(c) = headers
            .get(cfg.region_header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        && c.len() == 2
        && c.chars().all(|ch| ch.is_ascii_alphabetic())
        && !c.eq_ignore_ascii_case("xx")
    {
        return c.to_ascii_uppercase();
    }
    let first = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .unwrap_or("");
    let mut parts = first.split(['-', '_']);
    let lang = parts.next().unwrap_or("");
    match parts.find(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_alphabetic())) {
        Some(region) => region.to_ascii_uppercase(),
        None if !lang.is_empty() && lang != "*" => lang.to_ascii_lowercase(),
        None => String::new(),
    }
}

/// The language of a new account: the one asked for, else the region's,
/// else the browser's, else English.
pub fn initial_language(asked: Option<&str>, region: &str, headers: &HeaderMap) -> Locale {
    if let Some(l) = asked.and_then(Locale::from_tag) {
        return l;
    }
    if region.len() == 2
        && region.chars().all(|c| c.is_ascii_uppercase())
        && let Some(l) = Locale::from_country(region)
    {
        return l;
    }
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .map(Locale::negotiate)
        .unwrap_or_default()
}

fn locale_of(u: &UserRow) -> Locale {
    Locale::from_tag(&u.language).unwrap_or_default()
}

// ---- e-mail ---------------------------------------------------------------

/// Sends an e-mail; failures are logged and reported as `false`.
async fn send_mail(s: &AppState, to: &str, (subject, text): (String, String)) -> bool {
    let Some(m) = &s.accounts.mailer else {
        return false;
    };
    match m.send(to, &subject, &text, None).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "sending e-mail failed");
            false
        }
    }
}

fn new_link_token() -> String {
    accounts::generate_password() + &accounts::generate_password()
}

/// Sends a verification link for the user's current address.
async fn send_verification(s: &AppState, u: &UserRow) -> Result<bool, ApiError> {
    let Some(email) = &u.email else {
        return Ok(false);
    };
    if s.accounts.mailer.is_none() {
        return Ok(false);
    }
    let hours = s.accounts.cfg.verify_link_ttl_hours.max(1);
    let token = new_link_token();
    s.store
        .create_email_token(
            &accounts::secret_hash(&token),
            u.id,
            "verify",
            email,
            storage::now_ms() + i64::from(hours) * 3_600_000,
        )
        .await?;
    let link = format!(
        "{}/auth/verify-email?token={token}",
        s.accounts.cfg.public_url
    );
    Ok(send_mail(
        s,
        email,
        Template::verify_email(locale_of(u), &s.accounts.cfg.site_name, &link, hours),
    )
    .await)
}

// ---- routes ---------------------------------------------------------------

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login/totp", post(login_totp))
        .route("/auth/logout", post(logout))
        .route("/auth/logout-all", post(logout_all))
        .route("/auth/session", get(session_get))
        .route("/auth/verify-email", post(verify_email))
        .route("/auth/resend-verification", post(resend_verification))
        .route("/auth/password-reset", post(password_reset_request))
        .route("/auth/password-reset/confirm", post(password_reset_confirm))
        .route("/self/password", post(change_password))
        .route("/self/profile", axum::routing::patch(profile_patch))
        .route("/self/email", axum::routing::put(email_put))
        .route("/self/sessions", get(sessions_list))
        .route(
            "/self/keys/{id}",
            axum::routing::patch(own_key_patch).delete(own_key_delete),
        )
        .route("/self/tokens", get(tokens_list).post(token_create))
        .route("/self/tokens/{id}", axum::routing::delete(token_delete))
        .route("/self/totp/setup", post(totp_setup))
        .route("/self/totp/enable", post(totp_enable))
        .route("/self/totp/disable", post(totp_disable))
}

/// Pages that e-mail links open.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/auth/verify-email", get(verify_email_page))
        .route(
            "/auth/reset-password",
            get(reset_password_page).post(reset_password_submit),
        )
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

pub fn account_json(u: &UserRow) -> Value {
    json!({
        "id": u.id, "username": u.username, "role": u.role, "status": u.status,
        "group": u.group, "balance": u.balance, "balance_usd": billing::units_to_usd(u.balance),
        "used": u.used, "used_usd": billing::units_to_usd(u.used),
        "request_count": u.request_count, "created_at": u.created_at,
        "email": u.email, "email_verified": u.email_verified, "display_name": u.display_name,
        "google_linked": u.google_id.is_some(), "totp_enabled": u.totp_enabled,
        "register_region": u.register_region, "language": u.language,
        "has_password": !u.password_hash.is_empty(),
        "managed": (u.role == accounts::ROLE_USER_ROOT).then(|| json!({
            "route": u.managed_route, "platform_fee": u.platform_fee,
        })),
    })
}

fn with_cookie(mut r: Response, cookie: HeaderValue) -> Response {
    r.headers_mut().append(header::SET_COOKIE, cookie);
    r
}

fn peer_of(parts: &axum::http::request::Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Headers and the connecting peer, for handlers that record the client.
pub struct Client(pub HeaderMap, pub Option<std::net::IpAddr>);

impl axum::extract::FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client(parts.headers.clone(), peer_of(parts)))
    }
}

fn normalize_email(e: &str) -> Result<String, ApiError> {
    let e = e.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !e.contains(char::is_whitespace)
        });
    if ok {
        Ok(e)
    } else {
        Err(ApiError::bad(format!("`{e}` is not an e-mail address")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    username: String,
    password: String,
    email: Option<String>,
    language: Option<String>,
    display_name: Option<String>,
}

async fn register(
    State(s): State<AppState>,
    Client(headers, peer): Client,
    Body(b): Body<RegisterBody>,
) -> Result<Response, ApiError> {
    let cfg = &s.accounts.cfg;
    if !cfg.registration {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration_closed",
            "Sign-up is closed on this service; ask the operator for an account.",
        ));
    }
    accounts::check_username(&b.username).map_err(|e| ApiError::bad(e.to_string()))?;
    accounts::check_password(&b.password).map_err(|e| ApiError::bad(e.to_string()))?;
    let email = b
        .email
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .map(normalize_email)
        .transpose()?;
    if cfg.verification_required() && email.is_none() {
        return Err(ApiError::bad(
            "an e-mail address is required to sign up here (a verification link is sent to it)",
        ));
    }
    let region = register_region(cfg, &headers);
    let language = initial_language(b.language.as_deref(), &region, &headers);
    let hash = accounts::hash_password_off_thread(&b.password)
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let user = s
        .store
        .create_account(&storage::NewUser {
            username: b.username.trim().to_string(),
            password_hash: hash,
            role: accounts::ROLE_USER.into(),
            group: "default".into(),
            email,
            email_verified: false,
            display_name: b.display_name.unwrap_or_default(),
            google_id: None,
            register_region: region,
            language: language.tag().into(),
        })
        .await?;
    s.relay.reload().await.map_err(ApiError::from)?;
    let sent = send_verification(&s, &user).await?;
    let mut body = json!({
        "data": account_json(&user),
        "verification_sent": sent,
        "verification_required": cfg.verification_required(),
    });
    if cfg.verification_required() {
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    }
    let (cookie, csrf) = start_session(
        &s,
        &user,
        false,
        &ClientInfo::from_headers(&s, peer, &headers),
    )
    .await?;
    body["csrf_token"] = json!(csrf);
    Ok(with_cookie(
        (StatusCode::CREATED, Json(body)).into_response(),
        cookie,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    /// Username or e-mail address.
    username: String,
    password: String,
    /// Also issue a management access token (for scripts).
    #[serde(default = "yes")]
    token: bool,
}
fn yes() -> bool {
    true
}

/// `POST /api/auth/login`: checks the password; signs in (a session cookie,
/// and an access token for API clients) or, with two-factor on, opens a
/// pending session that `POST /api/auth/login/totp` completes.
pub(crate) async fn login(
    State(s): State<AppState>,
    Client(headers, peer): Client,
    Body(b): Body<LoginBody>,
) -> Result<Response, ApiError> {
    let user = check_password_login(&s, &b.username, &b.password).await?;
    let client = ClientInfo::from_headers(&s, peer, &headers);
    if user.totp_enabled {
        let (cookie, _) = start_session(&s, &user, true, &client).await?;
        let body = json!({
            "mfa_required": true,
            "message": "Enter the code from your authenticator app (or a recovery code) at POST /api/auth/login/totp.",
        });
        return Ok(with_cookie(Json(body).into_response(), cookie));
    }
    finish_login(&s, &user, &client, b.token).await
}

async fn finish_login(
    s: &AppState,
    user: &UserRow,
    client: &ClientInfo,
    with_token: bool,
) -> Result<Response, ApiError> {
    let (cookie, csrf) = start_session(s, user, false, client).await?;
    let token = if with_token {
        Some(
            accounts::ops::issue_access_token(&s.store, user.id, "login", s.cfg.login_ttl_ms)
                .await?,
        )
    } else {
        None
    };
    let body = json!({"token": token, "csrf_token": csrf, "user": account_json(user)});
    Ok(with_cookie(Json(body).into_response(), cookie))
}

async fn check_password_login(
    s: &AppState,
    login: &str,
    password: &str,
) -> Result<UserRow, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_credentials",
            "Wrong username or password.",
        )
    };
    let Some(user) = s.store.user_by_login(login).await? else {
        // the same work as a real check, so timing does not tell names apart
        let _ = accounts::verify_password_off_thread(password, accounts::DUMMY_HASH).await;
        return Err(bad());
    };
    if user.password_hash.is_empty()
        || !accounts::verify_password_off_thread(password, &user.password_hash).await
    {
        return Err(bad());
    }
    if user.status != 1 {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "user_disabled",
            "This account is disabled; contact the operator.",
        ));
    }
    if s.accounts.cfg.verification_required()
        && !user.email_verified
        && !accounts::is_admin(&user.role)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "email_not_verified",
            "Verify your e-mail address first: open the link we sent you, or ask for a new one at POST /api/auth/resend-verification.",
        ));
    }
    Ok(user)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TotpLoginBody {
    code: Option<String>,
    recovery_code: Option<String>,
    #[serde(default = "yes")]
    token: bool,
}

async fn login_totp(
    State(s): State<AppState>,
    Client(headers, peer): Client,
    Body(b): Body<TotpLoginBody>,
) -> Result<Response, ApiError> {
    let token = cookie(&headers, SESSION_COOKIE).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Sign in with your password first (POST /api/auth/login).",
        )
    })?;
    let (sess, user) = s
        .store
        .session(&accounts::secret_hash(token))
        .await?
        .filter(|(sess, _)| sess.mfa_pending)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "session_expired",
                "The sign-in has expired; start again with your password.",
            )
        })?;
    // one try per password check: a wrong code ends the pending sign-in, so
    // codes cannot be guessed faster than passwords are checked
    s.store.delete_session(&sess.token_hash).await?;
    if !second_factor_ok(&s, &user, b.code.as_deref(), b.recovery_code.as_deref()).await? {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_code",
            "That code is not valid (codes last 30 seconds and work once). Sign in again with your password.",
        ));
    }
    finish_login(
        &s,
        &user,
        &ClientInfo::from_headers(&s, peer, &headers),
        b.token,
    )
    .await
}

/// Checks a TOTP code (spending its time step) or uses a recovery code.
async fn second_factor_ok(
    s: &AppState,
    user: &UserRow,
    code: Option<&str>,
    recovery: Option<&str>,
) -> Result<bool, ApiError> {
    if let Some(code) = code {
        let Some(secret) = accounts::totp::base32_decode(&user.totp_secret) else {
            return Ok(false);
        };
        let last = (user.totp_last_step > 0).then_some(user.totp_last_step as u64);
        let now = (storage::now_ms() / 1000) as u64;
        return Ok(match accounts::totp::verify(&secret, code, now, last) {
            Some(step) => s.store.use_totp_step(user.id, step as i64).await?,
            None => false,
        });
    }
    if let Some(rc) = recovery {
        let hash = accounts::totp::recovery_code_hash(rc);
        return Ok(s.store.use_recovery_code(user.id, &hash).await?);
    }
    Ok(false)
}

async fn logout(
    State(s): State<AppState>,
    Client(headers, _): Client,
    Caller(_): Caller,
) -> Result<Response, ApiError> {
    if let Some(t) = cookie(&headers, SESSION_COOKIE) {
        s.store.delete_session(&accounts::secret_hash(t)).await?;
    }
    if let Some(t) = bearer(&headers) {
        s.store
            .delete_access_token(&accounts::secret_hash(t))
            .await?;
    }
    Ok(with_cookie(
        Json(json!({"signed_out": true})).into_response(),
        clear_cookie(&s.accounts.cfg),
    ))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

async fn logout_all(State(s): State<AppState>, Caller(u): Caller) -> Result<Response, ApiError> {
    s.store.sign_out_everywhere(u.id).await?;
    Ok(with_cookie(
        Json(json!({"signed_out": true, "everywhere": true})).into_response(),
        clear_cookie(&s.accounts.cfg),
    ))
}

async fn session_get(Client(headers, _): Client, Caller(u): Caller) -> ApiResult {
    let csrf = cookie(&headers, SESSION_COOKIE).map(csrf_token);
    Ok(Json(json!({"user": account_json(&u), "csrf_token": csrf})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

/// Uses a verification link: the address it was sent to becomes verified
/// (if it is still the account's address).
async fn use_verify_token(s: &AppState, token: &str) -> Result<UserRow, ApiError> {
    let row = s
        .store
        .consume_email_token(&accounts::secret_hash(token.trim()), "verify")
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_link",
                "This link is invalid, used or expired; ask for a new one.",
            )
        })?;
    let user = s.store.user_fresh(row.user_id).await?;
    if user.email.as_deref() != Some(row.email.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_link",
            "This link was for an address that is no longer on the account.",
        ));
    }
    s.store.set_email(user.id, Some(&row.email), true).await?;
    Ok(s.store.user_fresh(user.id).await?)
}

async fn verify_email(State(s): State<AppState>, Body(b): Body<TokenBody>) -> ApiResult {
    let u = use_verify_token(&s, &b.token).await?;
    Ok(Json(json!({"verified": true, "user": account_json(&u)})))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    (
        status,
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
             <title>{t}</title></head><body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\">\
             <h1>{t}</h1>{body}</body></html>",
            t = esc(title)
        )),
    )
        .into_response()
}

fn page_text(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    page(status, title, &format!("<p>{esc}</p>"))
}

async fn verify_email_page(State(s): State<AppState>, Query(q): Query<TokenQuery>) -> Response {
    match use_verify_token(&s, q.token.as_deref().unwrap_or("")).await {
        Ok(u) => page_text(
            StatusCode::OK,
            "E-mail verified",
            &format!(
                "{} is verified. You can sign in now.",
                u.email.unwrap_or_default()
            ),
        ),
        Err(e) => page_text(StatusCode::BAD_REQUEST, "Link not valid", e.message()),
    }
}

async fn resend_verification(State(s): State<AppState>, Caller(u): Caller) -> ApiResult {
    if u.email_verified {
        return Ok(Json(json!({"sent": false, "message": "already verified"})));
    }
    if u.email.is_none() {
        return Err(ApiError::bad(
            "the account has no e-mail address; set one with PUT /api/self/email",
        ));
    }
    let sent = send_verification(&s, &u).await?;
    Ok(Json(json!({"sent": sent})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    email: String,
}

/// Always answers the same, so the endpoint does not tell which addresses
/// have accounts.
async fn password_reset_request(
    State(s): State<AppState>,
    Body(b): Body<ResetRequest>,
) -> ApiResult {
    if s.accounts.mailer.is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mail_unavailable",
            "This service sends no e-mail, so passwords cannot be reset by link; ask the operator.",
        ));
    }
    if let Ok(email) = normalize_email(&b.email)
        && let Some(u) = s.store.user_by_email(&email).await?
        && u.status == 1
    {
        let hours = s.accounts.cfg.reset_link_ttl_hours.max(1);
        let token = new_link_token();
        s.store
            .create_email_token(
                &accounts::secret_hash(&token),
                u.id,
                "reset",
                &email,
                storage::now_ms() + i64::from(hours) * 3_600_000,
            )
            .await?;
        let link = format!(
            "{}/auth/reset-password?token={token}",
            s.accounts.cfg.public_url
        );
        let mail = Template::reset_password(locale_of(&u), &s.accounts.cfg.site_name, &link, hours);
        send_mail(&s, &email, mail).await;
    }
    Ok(Json(json!({
        "message": "If an account has this address, a reset link is on its way."
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetConfirm {
    token: String,
    password: String,
}

async fn reset_password(s: &AppState, token: &str, password: &str) -> Result<UserRow, ApiError> {
    accounts::check_password(password).map_err(|e| ApiError::bad(e.to_string()))?;
    let row = s
        .store
        .consume_email_token(&accounts::secret_hash(token.trim()), "reset")
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_link",
                "This reset link is invalid, used or expired; ask for a new one.",
            )
        })?;
    let hash = accounts::hash_password_off_thread(password)
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    s.store.change_password(row.user_id, &hash).await?;
    s.store.sign_out_everywhere(row.user_id).await?;
    // the link proved the address
    s.store
        .set_email(row.user_id, Some(&row.email), true)
        .await?;
    let u = s.store.user_fresh(row.user_id).await?;
    send_mail(
        s,
        &row.email,
        Template::password_changed(locale_of(&u), &s.accounts.cfg.site_name),
    )
    .await;
    Ok(u)
}

async fn password_reset_confirm(
    State(s): State<AppState>,
    Body(b): Body<ResetConfirm>,
) -> ApiResult {
    reset_password(&s, &b.token, &b.password).await?;
    Ok(Json(json!({"reset": true})))
}

async fn reset_password_page(Query(q): Query<TokenQuery>) -> Response {
    let token: String = q
        .token
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    page(
        StatusCode::OK,
        "Choose a new password",
        &format!(
            "<form method=\"post\" action=\"/auth/reset-password\">\
             <input type=\"hidden\" name=\"token\" value=\"{token}\">\
             <p><label>New password <input type=\"password\" name=\"password\" minlength=\"8\" required autocomplete=\"new-password\"></label></p>\
             <p><button type=\"submit\">Save</button></p></form>"
        ),
    )
}

async fn reset_password_submit(
    State(s): State<AppState>,
    axum::Form(f): axum::Form<ResetConfirm>,
) -> Response {
    match reset_password(&s, &f.token, &f.password).await {
        Ok(_) => page_text(
            StatusCode::OK,
            "Password changed",
            "Your password is changed and every other session is signed out. You can sign in now.",
        ),
        Err(e) => page_text(StatusCode::BAD_REQUEST, "Password not changed", e.message()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    /// Not needed when the account has no password yet (Google sign-up).
    current_password: Option<String>,
    new_password: String,
}

/// Changes the password; every other session and access token stops
/// working, and the caller gets a fresh session.
async fn change_password(
    State(s): State<AppState>,
    Client(headers, peer): Client,
    Caller(u): Caller,
    Body(b): Body<ChangePassword>,
) -> Result<Response, ApiError> {
    if !u.password_hash.is_empty()
        && !accounts::verify_password_off_thread(
            b.current_password.as_deref().unwrap_or(""),
            &u.password_hash,
        )
        .await
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_credentials",
            "The current password is wrong.",
        ));
    }
    accounts::check_password(&b.new_password).map_err(|e| ApiError::bad(e.to_string()))?;
    let hash = accounts::hash_password_off_thread(&b.new_password)
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    s.store.change_password(u.id, &hash).await?;
    s.store.sign_out_everywhere(u.id).await?;
    if let Some(email) = u.email.as_deref().filter(|_| u.email_verified) {
        send_mail(
            &s,
            email,
            Template::password_changed(locale_of(&u), &s.accounts.cfg.site_name),
        )
        .await;
    }
    let (cookie, csrf) =
        start_session(&s, &u, false, &ClientInfo::from_headers(&s, peer, &headers)).await?;
    Ok(with_cookie(
        Json(json!({"changed": true, "csrf_token": csrf})).into_response(),
        cookie,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfilePatch {
    display_name: Option<String>,
    language: Option<String>,
}

async fn profile_patch(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(p): Body<ProfilePatch>,
) -> ApiResult {
    let language = match &p.language {
        Some(l) => Locale::from_tag(l)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "unknown language `{l}`; use one of en, zh-CN, ja, pt-BR, hi"
                ))
            })?
            .tag()
            .to_string(),
        None => u.language.clone(),
    };
    let name = p.display_name.unwrap_or(u.display_name.clone());
    if name.chars().count() > 64 {
        return Err(ApiError::bad("display_name is at most 64 characters"));
    }
    s.store.set_profile(u.id, name.trim(), &language).await?;
    Ok(Json(
        json!({"data": account_json(&s.store.user_fresh(u.id).await?)}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    email: String,
}

/// Sets a new address (unverified) and sends a verification link to it.
async fn email_put(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(b): Body<EmailBody>,
) -> ApiResult {
    let email = normalize_email(&b.email)?;
    if u.email.as_deref() == Some(email.as_str()) {
        return Ok(Json(
            json!({"data": account_json(&u), "verification_sent": false}),
        ));
    }
    s.store.set_email(u.id, Some(&email), false).await?;
    let u = s.store.user_fresh(u.id).await?;
    let sent = send_verification(&s, &u).await?;
    Ok(Json(
        json!({"data": account_json(&u), "verification_sent": sent}),
    ))
}

async fn sessions_list(State(s): State<AppState>, Caller(u): Caller) -> ApiResult {
    Ok(Json(json!({"data": s.store.sessions_of(u.id).await?})))
}

// ---- own keys and access tokens -------------------------------------------

/// One of the caller's API keys; another user's key is reported missing.
async fn own_key(s: &AppState, u: &UserRow, id: i64) -> Result<storage::ApiKeyRow, ApiError> {
    match s.store.api_key(id).await {
        Ok(k) if k.user_id == u.id && k.status >= 0 => Ok(k),
        Ok(_) | Err(storage::StorageError::NotFound(_)) => {
            Err(ApiError::not_found(format!("key {id}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Rename, disable, expiry, quota, allowed models and IPs of one's own key.
async fn own_key_patch(
    State(s): State<AppState>,
    Caller(u): Caller,
    axum::extract::Path(id): axum::extract::Path<i64>,
    Body(p): Body<storage::ApiKeyPatch>,
) -> ApiResult {
    own_key(&s, &u, id).await?;
    let row = accounts::ops::update_key(&s.store, id, p).await?;
    s.relay.reload().await.map_err(ApiError::from)?;
    Ok(Json(json!({"data": row})))
}

async fn own_key_delete(
    State(s): State<AppState>,
    Caller(u): Caller,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> ApiResult {
    own_key(&s, &u, id).await?;
    s.store.delete_api_key(id).await?;
    s.relay.reload().await.map_err(ApiError::from)?;
    Ok(Json(json!({"deleted": id})))
}

async fn tokens_list(State(s): State<AppState>, Caller(u): Caller) -> ApiResult {
    Ok(Json(json!({"data": s.store.access_tokens_of(u.id).await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    name: String,
    /// Days until it expires; 0 or absent = never.
    #[serde(default)]
    expires_in_days: i64,
}

/// A management access token for scripts; shown once.
async fn token_create(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(b): Body<NewTokenBody>,
) -> ApiResult {
    if b.name.trim().is_empty() || b.name.chars().count() > 64 {
        return Err(ApiError::bad("a token needs a name of 1 to 64 characters"));
    }
    if b.expires_in_days < 0 {
        return Err(ApiError::bad("expires_in_days is 0 (never) or more"));
    }
    let token = accounts::ops::issue_access_token(
        &s.store,
        u.id,
        b.name.trim(),
        b.expires_in_days.saturating_mul(86_400_000),
    )
    .await?;
    Ok(Json(json!({
        "token": token,
        "message": "Copy the token now: it is not shown again.",
    })))
}

async fn token_delete(
    State(s): State<AppState>,
    Caller(u): Caller,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> ApiResult {
    if !s.store.revoke_access_token(u.id, id).await? {
        return Err(ApiError::not_found(format!("token {id}")));
    }
    Ok(Json(json!({"deleted": id})))
}

// ---- two-factor -----------------------------------------------------------

async fn totp_setup(State(s): State<AppState>, Caller(u): Caller) -> ApiResult {
    if u.totp_enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "totp_enabled",
            "Two-factor sign-in is already on; turn it off first to set up a new authenticator.",
        ));
    }
    let secret = accounts::totp::generate_secret();
    let b32 = accounts::totp::base32_encode(&secret);
    s.store.set_totp_secret(u.id, &b32).await?;
    let account = u.email.clone().unwrap_or(u.username.clone());
    Ok(Json(json!({
        "secret": b32,
        "otpauth_uri": accounts::totp::otpauth_uri(&s.accounts.cfg.site_name, &account, &secret),
        "message": "Add this to your authenticator app, then confirm with a code at POST /api/self/totp/enable.",
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: Option<String>,
    recovery_code: Option<String>,
    password: Option<String>,
}

async fn totp_enable(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(b): Body<CodeBody>,
) -> ApiResult {
    if u.totp_enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "totp_enabled",
            "Two-factor sign-in is already on.",
        ));
    }
    let secret = accounts::totp::base32_decode(&u.totp_secret)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad("start with POST /api/self/totp/setup"))?;
    let now = (storage::now_ms() / 1000) as u64;
    let step = accounts::totp::verify(&secret, b.code.as_deref().unwrap_or(""), now, None)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_code",
                "That code does not match; check the time on your device and try the current code.",
            )
        })?;
    let codes = accounts::totp::generate_recovery_codes();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| accounts::totp::recovery_code_hash(c))
        .collect();
    s.store.enable_totp(u.id, step as i64, &hashes).await?;
    Ok(Json(json!({
        "enabled": true,
        "recovery_codes": codes,
        "message": "Keep these recovery codes somewhere safe: each signs you in once if you lose the authenticator.",
    })))
}

async fn totp_disable(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(b): Body<CodeBody>,
) -> ApiResult {
    if !u.totp_enabled {
        return Ok(Json(json!({"enabled": false})));
    }
    let password_ok = match b.password.as_deref() {
        Some(p) if !u.password_hash.is_empty() => {
            accounts::verify_password_off_thread(p, &u.password_hash).await
        }
        _ => false,
    };
    if !password_ok
        && !second_factor_ok(&s, &u, b.code.as_deref(), b.recovery_code.as_deref()).await?
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_code",
            "Give your password, a current code or a recovery code to turn two-factor sign-in off.",
        ));
    }
    s.store.disable_totp(u.id).await?;
    Ok(Json(json!({"enabled": false})))
}
