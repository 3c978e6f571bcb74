//! OpenID Connect identity provider stand-in, shaped like Google's, started
//! in-process by tests on `127.0.0.1:0`.
//!
//! Endpoints (issuer = [`MockIdp::base_url`], e.g. `http://127.0.0.1:41234`):
//! - `GET /.well-known/openid-configuration`: discovery document.
//! - `GET /jwks`: the published RSA keys as a JWKS (`Cache-Control: max-age` like Google).
//! - `GET /authorize`: checks `client_id` and that `redirect_uri` is exactly one of the
//!   client's registered URIs (else `Error 400: redirect_uri_mismatch`, like Google), then
//!   "signs in" the test user set with [`MockIdp::set_user`] and redirects to
//!   `redirect_uri?code=…&state=…`.
//! - `POST /token`: exchanges a code (single use, 10 minutes) after checking the client
//!   secret (form fields or HTTP Basic), the `redirect_uri` and PKCE S256; answers with an
//!   RS256 id_token.
//! - `GET /userinfo`: the user of a `Bearer` access token.
//!
//! The signing keys are fixed test keys committed under `src/testdata/` ([`TestKey`]):
//! two for rotation tests and one that is never published (forged tokens).
//! [`MockIdp::mint_id_token`] and friends sign arbitrary claims so a test can craft
//! expired, wrong-audience or forged tokens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// PEM (PKCS#8) of the first published test key.
pub const TEST_KEY_1_PEM: &str = include_str!("testdata/idp-key-1.pem");
/// PEM (PKCS#8) of the second test key (published after [`MockIdp::rotate_keys`]).
pub const TEST_KEY_2_PEM: &str = include_str!("testdata/idp-key-2.pem");
/// PEM (PKCS#8) of a key that is never published (forged tokens).
pub const ROGUE_KEY_PEM: &str = include_str!("testdata/idp-key-rogue.pem");

/// `expires_in` of access tokens, as Google answers.
pub const ACCESS_TOKEN_TTL_SECS: u64 = 3599;
/// Lifetime of id_tokens.
pub const ID_TOKEN_TTL_SECS: u64 = 3600;
/// Lifetime of authorization codes.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// `max-age` of the JWKS answer.
pub const JWKS_MAX_AGE_SECS: u64 = 19_845;

/// The fixed RSA-2048 test keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestKey {
    /// `test-key-1`: published and signing from the start.
    Key1,
    /// `test-key-2`: the rotation key.
    Key2,
    /// `test-key-rogue`: never published unless a test does so explicitly.
    Rogue,
}

impl TestKey {
    pub const ALL: [TestKey; 3] = [TestKey::Key1, TestKey::Key2, TestKey::Rogue];

    /// The `kid` this key is published and signs under.
    pub fn kid(self) -> &'static str {
        match self {
            TestKey::Key1 => "test-key-1",
            TestKey::Key2 => "test-key-2",
            TestKey::Rogue => "test-key-rogue",
        }
    }

    /// The private key, PKCS#8 PEM.
    pub fn pem(self) -> &'static str {
        match self {
            TestKey::Key1 => TEST_KEY_1_PEM,
            TestKey::Key2 => TEST_KEY_2_PEM,
            TestKey::Rogue => ROGUE_KEY_PEM,
        }
    }

    fn index(self) -> usize {
        match self {
            TestKey::Key1 => 0,
            TestKey::Key2 => 1,
            TestKey::Rogue => 2,
        }
    }
}

/// The account the mock provider signs in on the next `/authorize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
}

impl TestUser {
    /// A user with a verified email and a name derived from it.
    pub fn new(sub: &str, email: &str) -> TestUser {
        TestUser {
            sub: sub.to_string(),
            email: email.to_string(),
            email_verified: true,
            name: email.split('@').next().unwrap_or(email).to_string(),
        }
    }
}

struct Client {
    secret: String,
    redirect_uris: Vec<String>,
}

struct PendingCode {
    client_id: String,
    redirect_uri: String,
    scope: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    user: TestUser,
    issued: Instant,
    used: bool,
}

struct IdpState {
    clients: HashMap<String, Client>,
    user: Option<TestUser>,
    deny: bool,
    codes: HashMap<String, PendingCode>,
    access_tokens: HashMap<String, TestUser>,
    published: Vec<TestKey>,
    signing: TestKey,
    /// When set, `/token` labels its id_tokens with this key's kid while
    /// signing with `signing`: a forged signature.
    label: Option<TestKey>,
    claim_overrides: serde_json::Map<String, Value>,
    authorize_requests: u64,
    token_requests: u64,
    jwks_requests: u64,
    last_authorize: Option<Vec<(String, String)>>,
}

struct Shared {
    issuer: String,
    keys: [RsaPrivateKey; 3],
    state: Mutex<IdpState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, IdpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, key: TestKey) -> &RsaPrivateKey {
        &self.keys[key.index()]
    }

    fn jwks(&self, published: &[TestKey]) -> Value {
        let keys: Vec<Value> = published
            .iter()
            .map(|k| {
                let public = self.key(*k).to_public_key();
                json!({
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": k.kid(),
                    "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                    "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
                })
            })
            .collect();
        json!({ "keys": keys })
    }

    fn sign(&self, header: &Value, claims: &Value, key: TestKey) -> String {
        sign_jwt(self.key(key), header, claims)
    }
}

/// Signs `header.claims` with RSASSA-PKCS1-v1_5 SHA-256 and returns the compact JWT.
/// The header is used as given (set `alg` and `kid` yourself).
pub fn sign_jwt(key: &RsaPrivateKey, header: &Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap_or_default());
    let input = format!("{}.{}", part(header), part(claims));
    let digest = Sha256::digest(input.as_bytes());
    // Signing with a 2048-bit key cannot fail; an empty signature would be refused anyway.
    let signature = key
        .sign(Pkcs1v15Sign::new::<rsa::sha2::Sha256>(), &digest)
        .unwrap_or_default();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The standard claims of an id_token for `user`, issued now for one hour
/// (what `/token` signs, before [`MockIdp::set_claim_overrides`]).
pub fn standard_claims(
    issuer: &str,
    client_id: &str,
    user: &TestUser,
    nonce: Option<&str>,
    now_unix: u64,
) -> Value {
    let mut claims = json!({
        "iss": issuer,
        "azp": client_id,
        "aud": client_id,
        "sub": user.sub,
        "email": user.email,
        "email_verified": user.email_verified,
        "name": user.name,
        "iat": now_unix,
        "exp": now_unix + ID_TOKEN_TTL_SECS,
    });
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    claims
}

/// A running mock identity provider. Dropping it stops the server.
pub struct MockIdp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockIdp")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockIdp {
    /// Starts on `127.0.0.1:0`, publishing and signing with [`TestKey::Key1`], with no
    /// client registered and nobody signed in.
    pub async fn start() -> anyhow::Result<MockIdp> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let load = |k: TestKey| {
            RsaPrivateKey::from_pkcs8_pem(k.pem())
                .map_err(|e| anyhow::anyhow!("test key {} does not parse: {e}", k.kid()))
        };
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            keys: [
                load(TestKey::Key1)?,
                load(TestKey::Key2)?,
                load(TestKey::Rogue)?,
            ],
            state: Mutex::new(IdpState {
                clients: HashMap::new(),
                user: None,
                deny: false,
                codes: HashMap::new(),
                access_tokens: HashMap::new(),
                published: vec![TestKey::Key1],
                signing: TestKey::Key1,
                label: None,
                claim_overrides: serde_json::Map::new(),
                authorize_requests: 0,
                token_requests: 0,
                jwks_requests: 0,
                last_authorize: None,
            }),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(MockIdp { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash); also the issuer.
    pub fn base_url(&self) -> String {
        self.shared.issuer.clone()
    }

    /// The `iss` of the id_tokens: the same as [`MockIdp::base_url`].
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.shared.issuer)
    }

    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.shared.issuer)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.shared.issuer)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.shared.issuer)
    }

    pub fn userinfo_url(&self) -> String {
        format!("{}/userinfo", self.shared.issuer)
    }

    /// Registers (or replaces) an OAuth client with its exact authorized redirect URIs.
    pub fn register_client(&self, client_id: &str, secret: &str, redirect_uris: &[&str]) {
        self.shared.lock().clients.insert(
            client_id.to_string(),
            Client {
                secret: secret.to_string(),
                redirect_uris: redirect_uris.iter().map(|s| s.to_string()).collect(),
            },
        );
    }

    /// The user that `/authorize` signs in from now on.
    pub fn set_user(&self, user: TestUser) {
        self.shared.lock().user = Some(user);
    }

    /// Nobody is signed in: `/authorize` answers 401.
    pub fn sign_out(&self) {
        self.shared.lock().user = None;
    }

    /// While set, `/authorize` redirects back with `error=access_denied` (the user
    /// pressed "Cancel").
    pub fn set_access_denied(&self, deny: bool) {
        self.shared.lock().deny = deny;
    }

    /// Claims merged into every id_token `/token` issues from now on (a `null`
    /// value removes the claim), e.g. `{"aud": "someone-else"}` or `{"exp": 0}`.
    pub fn set_claim_overrides(&self, overrides: Value) {
        self.shared.lock().claim_overrides = match overrides {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
    }

    /// The keys `/jwks` publishes.
    pub fn publish_keys(&self, keys: &[TestKey]) {
        self.shared.lock().published = keys.to_vec();
    }

    /// The key `/token` signs id_tokens with (and [`MockIdp::mint_id_token`]).
    pub fn set_signing_key(&self, key: TestKey) {
        self.shared.lock().signing = key;
    }

    /// Makes `/token` sign with `signer` but label the token with `label`'s
    /// kid, so its signature does not verify (`None` restores honest tokens).
    pub fn forge_tokens(&self, forged: Option<(TestKey, TestKey)>) {
        let mut st = self.shared.lock();
        match forged {
            Some((signer, label)) => {
                st.signing = signer;
                st.label = Some(label);
            }
            None => {
                st.signing = TestKey::Key1;
                st.label = None;
            }
        }
    }

    /// Key rotation as Google does it: publish [`TestKey::Key1`] and [`TestKey::Key2`]
    /// and sign with `Key2`. Retire `Key1` afterwards with `publish_keys(&[TestKey::Key2])`.
    pub fn rotate_keys(&self) {
        let mut st = self.shared.lock();
        st.published = vec![TestKey::Key1, TestKey::Key2];
        st.signing = TestKey::Key2;
    }

    /// The JWKS `/jwks` currently serves.
    pub fn jwks(&self) -> Value {
        let published = self.shared.lock().published.clone();
        self.shared.jwks(&published)
    }

    /// [`standard_claims`] with this provider as issuer, issued now.
    pub fn claims_for(&self, client_id: &str, user: &TestUser, nonce: Option<&str>) -> Value {
        standard_claims(&self.shared.issuer, client_id, user, nonce, unix_now())
    }

    /// An RS256 id_token of arbitrary `claims`, signed with the current signing key
    /// under its kid.
    pub fn mint_id_token(&self, claims: &Value) -> String {
        let key = self.shared.lock().signing;
        self.mint_id_token_with(claims, key, key.kid())
    }

    /// An RS256 id_token signed with `key` but labelled `kid`: pass another key's kid
    /// to forge a token the verifier must refuse with a bad signature.
    pub fn mint_id_token_with(&self, claims: &Value, key: TestKey, kid: &str) -> String {
        let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
        self.shared.sign(&header, claims, key)
    }

    /// An id_token signed with a key the provider never published, under that key's own
    /// kid (`test-key-rogue`): verifiers find no such key.
    pub fn sign_with_unknown_key(&self, claims: &Value) -> String {
        self.mint_id_token_with(claims, TestKey::Rogue, TestKey::Rogue.kid())
    }

    /// Requests received at `/authorize`.
    pub fn authorize_requests(&self) -> u64 {
        self.shared.lock().authorize_requests
    }

    /// Requests received at `/token`.
    pub fn token_requests(&self) -> u64 {
        self.shared.lock().token_requests
    }

    /// Requests received at `/jwks` (for JWKS caching tests).
    pub fn jwks_requests(&self) -> u64 {
        self.shared.lock().jwks_requests
    }

    /// The query parameters of the last `/authorize` request, in order.
    pub fn last_authorize_params(&self) -> Option<Vec<(String, String)>> {
        self.shared.lock().last_authorize.clone()
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let iss = &shared.issuer;
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "claims_supported": ["aud", "email", "email_verified", "exp", "iat", "iss", "name", "sub", "nonce"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    let published = {
        let mut st = shared.lock();
        st.jwks_requests += 1;
        st.published.clone()
    };
    let cache = format!("public, max-age={JWKS_MAX_AGE_SECS}, must-revalidate, no-transform");
    (
        [(header::CACHE_CONTROL, cache)],
        Json(shared.jwks(&published)),
    )
        .into_response()
}

fn error_page(status: StatusCode, error: &str, detail: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html><head><title>Error {code}: {error}</title></head><body>\
         <h1>Access blocked: authorization error</h1>\
         <p>Error {code}: {error}</p><p>{detail}</p></body></html>",
        code = status.as_u16(),
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{sep}{query}");
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
        Err(_) => error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri is not a valid URL",
        ),
    }
}

fn first<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut st = shared.lock();
    st.authorize_requests += 1;
    st.last_authorize = Some(params.clone());

    let client_id = first(&params, "client_id").unwrap_or_default();
    let Some(client) = st.clients.get(client_id) else {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!(
                "The OAuth client was not found. client_id={}",
                html_escape(client_id)
            ),
        );
    };
    let redirect_uri = first(&params, "redirect_uri").unwrap_or_default();
    if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri_mismatch",
            &format!(
                "You can't sign in to this app because it doesn't comply with the OAuth 2.0 \
                 policy. If you're the app developer, register the redirect URI in the \
                 console. Request details: redirect_uri={}",
                html_escape(redirect_uri)
            ),
        );
    }
    let state = first(&params, "state");
    let back = |error: &str| {
        let mut p = vec![("error", error)];
        if let Some(s) = state {
            p.push(("state", s));
        }
        redirect(redirect_uri, &p)
    };
    if first(&params, "response_type") != Some("code") {
        return back("unsupported_response_type");
    }
    let scope = first(&params, "scope").unwrap_or_default();
    if scope.is_empty() {
        return back("invalid_request");
    }
    let code_challenge = first(&params, "code_challenge").map(str::to_string);
    if code_challenge.is_some() && first(&params, "code_challenge_method") != Some("S256") {
        return back("invalid_request");
    }
    if st.deny {
        return back("access_denied");
    }
    let Some(user) = st.user.clone() else {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "no_signed_in_user",
            "No test user is signed in at the mock identity provider (call MockIdp::set_user).",
        );
    };
    let code = format!("4/0mock-{}", random_token(40));
    st.codes.insert(
        code.clone(),
        PendingCode {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            scope: scope.to_string(),
            nonce: first(&params, "nonce").map(str::to_string),
            code_challenge,
            user,
            issued: Instant::now(),
            used: false,
        },
    );
    let mut p = vec![("code", code.as_str()), ("scope", scope)];
    if let Some(s) = state {
        p.insert(0, ("state", s));
    }
    redirect(redirect_uri, &p)
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Client credentials from an `Authorization: Basic` header.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut st = shared.lock();
    st.token_requests += 1;

    if first(&form, "grant_type") != Some("authorization_code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type.",
        );
    }
    let (client_id, secret) = match basic_auth(&headers) {
        Some(creds) => creds,
        None => (
            first(&form, "client_id").unwrap_or_default().to_string(),
            first(&form, "client_secret")
                .unwrap_or_default()
                .to_string(),
        ),
    };
    let Some(client) = st.clients.get(&client_id) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        );
    };
    if client.secret != secret {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized");
    }
    let code = first(&form, "code").unwrap_or_default();
    let Some(pending) = st.codes.get_mut(code) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Malformed auth code.",
        );
    };
    if pending.used {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Bad Request: the authorization code was already redeemed.",
        );
    }
    // A code is burnt by the first attempt to redeem it, successful or not.
    pending.used = true;
    if pending.issued.elapsed() > CODE_TTL {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Bad Request: the authorization code expired.",
        );
    }
    if pending.client_id != client_id {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Bad Request: the authorization code was issued to another client.",
        );
    }
    if first(&form, "redirect_uri") != Some(pending.redirect_uri.as_str()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "redirect_uri_mismatch",
            "Bad Request",
        );
    }
    if let Some(challenge) = &pending.code_challenge {
        let Some(verifier) = first(&form, "code_verifier") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Missing code verifier.",
            );
        };
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if !valid_verifier(verifier) || computed != *challenge {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid code verifier.",
            );
        }
    }

    let user = pending.user.clone();
    let scope = pending.scope.clone();
    let nonce = pending.nonce.clone();
    let access_token = format!("ya29.mock-{}", random_token(48));
    st.access_tokens.insert(access_token.clone(), user.clone());

    let mut body = json!({
        "access_token": access_token,
        "expires_in": ACCESS_TOKEN_TTL_SECS,
        "scope": scope,
        "token_type": "Bearer",
    });
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.contains(&"openid") {
        let mut claims = standard_claims(
            &shared.issuer,
            &client_id,
            &user,
            nonce.as_deref(),
            unix_now(),
        );
        if let Value::Object(map) = &mut claims {
            if !scopes.contains(&"email") {
                map.remove("email");
                map.remove("email_verified");
            }
            if !scopes.contains(&"profile") {
                map.remove("name");
            }
            for (k, v) in &st.claim_overrides {
                if v.is_null() {
                    map.remove(k);
                } else {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
        let key = st.signing;
        let kid = st.label.unwrap_or(key).kid();
        let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
        body["id_token"] = json!(shared.sign(&header, &claims, key));
    }
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

async fn userinfo(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let user = shared.lock().access_tokens.get(token).cloned();
    match user {
        Some(u) => Json(json!({
            "sub": u.sub,
            "email": u.email,
            "email_verified": u.email_verified,
            "name": u.name,
        }))
        .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"mock-idp\", error=\"invalid_token\"",
            )],
            Json(json!({
                "error": "invalid_request",
                "error_description": "Invalid Credentials",
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounts::oidc::{
        self, Jwks, OidcError, OidcProvider, authorization_url, form_body, new_login,
        token_request_form, verify_id_token,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CLIENT: &str = "test-client.apps.example";
    const SECRET: &str = "test-secret";
    const CALLBACK: &str = "http://localhost:3000/api/oauth/google";

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    /// A minimal HTTP/1.1 client: one request per connection.
    async fn http(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    fn dechunk(mut s: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&rest[..n]);
            s = &rest[n + 2..];
        }
        out
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn query_param(url: &str, name: &str) -> Option<String> {
        let query = url.split_once('?')?.1;
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    async fn get(idp: &MockIdp, url: &str) -> Resp {
        let path = url.strip_prefix(&idp.base_url()).unwrap();
        http(idp.addr(), "GET", path, &[], "").await
    }

    async fn post_form(idp: &MockIdp, pairs: &[(&str, String)], extra: &[(&str, &str)]) -> Resp {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        headers.extend_from_slice(extra);
        http(idp.addr(), "POST", "/token", &headers, &form_body(pairs)).await
    }

    async fn setup() -> (MockIdp, OidcProvider) {
        let idp = MockIdp::start().await.unwrap();
        idp.register_client(CLIENT, SECRET, &[CALLBACK, "http://localhost:3000/other"]);
        let doc = get(&idp, &idp.discovery_url()).await;
        assert_eq!(doc.status, 200);
        let provider = OidcProvider::from_discovery(&doc.body, CLIENT, SECRET, CALLBACK).unwrap();
        (idp, provider)
    }

    fn alice() -> TestUser {
        TestUser {
            sub: "1001".into(),
            email: "alice@example.com".into(),
            email_verified: true,
            name: "Alice".into(),
        }
    }

    /// Runs `/authorize` and returns the callback URL.
    async fn authorize(idp: &MockIdp, provider: &OidcProvider, start: &oidc::LoginStart) -> String {
        let url = authorization_url(
            provider,
            start,
            oidc::DEFAULT_SCOPES,
            &[("prompt", "select_account")],
        );
        let resp = get(idp, &url).await;
        assert_eq!(resp.status, 302, "{}", resp.body);
        resp.header("location").unwrap().to_string()
    }

    async fn fetch_jwks(idp: &MockIdp) -> Jwks {
        let resp = get(idp, &idp.jwks_url()).await;
        assert_eq!(resp.status, 200);
        Jwks::from_json(&resp.body).unwrap()
    }

    fn now() -> u64 {
        unix_now()
    }

    #[tokio::test]
    async fn full_sign_in_flow() {
        let (idp, provider) = setup().await;
        assert_eq!(provider.issuers, vec![idp.issuer()]);
        assert_eq!(provider.token_url, idp.token_url());
        idp.set_user(alice());
        let start = new_login();

        let callback = authorize(&idp, &provider, &start).await;
        assert!(callback.starts_with(&format!("{CALLBACK}?")), "{callback}");
        assert_eq!(query_param(&callback, "state").unwrap(), start.state);
        let code = query_param(&callback, "code").unwrap();
        let params = idp.last_authorize_params().unwrap();
        assert!(params.contains(&("prompt".into(), "select_account".into())));
        assert!(params.contains(&("scope".into(), "openid email profile".into())));

        let form = token_request_form(&provider, &code, &start.pkce_verifier);
        let resp = post_form(&idp, &form, &[]).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        let tokens = oidc::parse_token_response(&resp.body).unwrap();
        assert_eq!(tokens.expires_in, Some(3599));
        assert_eq!(tokens.token_type.as_deref(), Some("Bearer"));
        assert_eq!(tokens.scope.as_deref(), Some("openid email profile"));

        let jwks = fetch_jwks(&idp).await;
        let id_token = tokens.id_token.unwrap();
        let claims = verify_id_token(&id_token, &jwks, &provider, &start.nonce, now(), 60).unwrap();
        assert_eq!(claims.sub, "1001");
        assert_eq!(claims.email.as_deref(), Some("alice@example.com"));
        assert!(claims.email_verified);
        assert_eq!(claims.name.as_deref(), Some("Alice"));

        // The userinfo endpoint knows the access token.
        let auth = format!("Bearer {}", tokens.access_token);
        let info = http(
            idp.addr(),
            "GET",
            "/userinfo",
            &[("Authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(info.status, 200);
        assert_eq!(info.json()["sub"], "1001");
        let info = http(
            idp.addr(),
            "GET",
            "/userinfo",
            &[("Authorization", "Bearer nope")],
            "",
        )
        .await;
        assert_eq!(info.status, 401);

        // The code is single-use.
        let again = post_form(&idp, &form, &[]).await;
        assert_eq!(again.status, 400);
        assert_eq!(again.json()["error"], "invalid_grant");
        assert_eq!(idp.token_requests(), 2);
        assert_eq!(idp.authorize_requests(), 1);
    }

    #[tokio::test]
    async fn discovery_and_jwks() {
        let (idp, _) = setup().await;
        let doc = get(&idp, &idp.discovery_url()).await.json();
        assert_eq!(doc["issuer"], idp.issuer());
        assert_eq!(doc["authorization_endpoint"], idp.authorize_url());
        assert_eq!(doc["token_endpoint"], idp.token_url());
        assert_eq!(doc["jwks_uri"], idp.jwks_url());
        assert_eq!(doc["userinfo_endpoint"], idp.userinfo_url());
        let resp = get(&idp, &idp.jwks_url()).await;
        assert!(resp.header("cache-control").unwrap().contains("max-age="));
        let jwks = resp.json();
        assert_eq!(jwks, idp.jwks());
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], "test-key-1");
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["alg"], "RS256");
        assert_eq!(key["e"], "AQAB");
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(idp.jwks_requests(), 1);
    }

    #[tokio::test]
    async fn redirect_uri_mismatch_at_authorize_and_token() {
        let (idp, provider) = setup().await;
        idp.set_user(alice());
        let start = new_login();
        for bad in [
            "http://localhost:3000/api/oauth/google/",
            "http://127.0.0.1:3000/api/oauth/google",
            "https://localhost:3000/api/oauth/google",
        ] {
            let mut p = provider.clone();
            p.redirect_uri = bad.to_string();
            let resp = get(&idp, &authorization_url(&p, &start, "openid", &[])).await;
            assert_eq!(resp.status, 400);
            assert!(resp.body.contains("redirect_uri_mismatch"), "{}", resp.body);
            assert!(resp.body.contains(bad), "{}", resp.body);
        }
        // Unknown client.
        let mut p = provider.clone();
        p.client_id = "nobody".into();
        let resp = get(&idp, &authorization_url(&p, &start, "openid", &[])).await;
        assert_eq!(resp.status, 401);
        assert!(resp.body.contains("invalid_client"));

        // Authorized with one registered URI, redeemed with another registered one.
        let callback = authorize(&idp, &provider, &start).await;
        let code = query_param(&callback, "code").unwrap();
        let mut p = provider.clone();
        p.redirect_uri = "http://localhost:3000/other".into();
        let resp = post_form(
            &idp,
            &token_request_form(&p, &code, &start.pkce_verifier),
            &[],
        )
        .await;
        assert_eq!(resp.status, 400);
        assert_eq!(resp.json()["error"], "redirect_uri_mismatch");
        let msg = oidc::token_error_message(&p, resp.status, &resp.body);
        assert!(
            msg.contains("redirect_uri_mismatch") && msg.contains("/other"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn token_endpoint_refusals() {
        let (idp, provider) = setup().await;
        idp.set_user(alice());

        // Wrong client secret.
        let start = new_login();
        let code = query_param(&authorize(&idp, &provider, &start).await, "code").unwrap();
        let mut p = provider.clone();
        p.client_secret = "wrong".into();
        let resp = post_form(
            &idp,
            &token_request_form(&p, &code, &start.pkce_verifier),
            &[],
        )
        .await;
        assert_eq!(resp.status, 401);
        assert_eq!(resp.json()["error"], "invalid_client");

        // Wrong PKCE verifier.
        let start = new_login();
        let code = query_param(&authorize(&idp, &provider, &start).await, "code").unwrap();
        let other = new_login().pkce_verifier;
        let resp = post_form(&idp, &token_request_form(&provider, &code, &other), &[]).await;
        assert_eq!(resp.status, 400);
        assert_eq!(resp.json()["error"], "invalid_grant");
        assert_eq!(resp.json()["error_description"], "Invalid code verifier.");
        // ...which burnt the code.
        let resp = post_form(
            &idp,
            &token_request_form(&provider, &code, &start.pkce_verifier),
            &[],
        )
        .await;
        assert_eq!(resp.json()["error"], "invalid_grant");

        // Unknown code; wrong grant type.
        let resp = post_form(&idp, &token_request_form(&provider, "4/0nope", "x"), &[]).await;
        assert_eq!(resp.json()["error"], "invalid_grant");
        let mut form = token_request_form(&provider, "4/0nope", "x");
        form[0].1 = "password".into();
        let resp = post_form(&idp, &form, &[]).await;
        assert_eq!(resp.json()["error"], "unsupported_grant_type");

        // Client credentials via HTTP Basic work too.
        let start = new_login();
        let code = query_param(&authorize(&idp, &provider, &start).await, "code").unwrap();
        let form: Vec<(&str, String)> = token_request_form(&provider, &code, &start.pkce_verifier)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("client_"))
            .collect();
        let basic = format!("Basic {}", STANDARD.encode(format!("{CLIENT}:{SECRET}")));
        let resp = post_form(&idp, &form, &[("Authorization", &basic)]).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
    }

    #[tokio::test]
    async fn authorize_without_user_or_with_cancel() {
        let (idp, provider) = setup().await;
        let start = new_login();
        let url = authorization_url(&provider, &start, oidc::DEFAULT_SCOPES, &[]);
        let resp = get(&idp, &url).await;
        assert_eq!(resp.status, 401);
        assert!(resp.body.contains("set_user"));

        idp.set_user(alice());
        idp.set_access_denied(true);
        let resp = get(&idp, &url).await;
        assert_eq!(resp.status, 302);
        let location = resp.header("location").unwrap();
        assert_eq!(
            query_param(location, "error").as_deref(),
            Some("access_denied")
        );
        assert_eq!(query_param(location, "state").unwrap(), start.state);
        assert_eq!(query_param(location, "code"), None);

        idp.set_access_denied(false);
        idp.sign_out();
        assert_eq!(get(&idp, &url).await.status, 401);
    }

    #[tokio::test]
    async fn minted_tokens_and_key_rotation() {
        let (idp, provider) = setup().await;
        let user = alice();
        let now = now();
        let claims = idp.claims_for(CLIENT, &user, Some("n1"));
        let jwks = fetch_jwks(&idp).await;
        let check =
            |token: &str, jwks: &Jwks| verify_id_token(token, jwks, &provider, "n1", now, 60);

        assert!(check(&idp.mint_id_token(&claims), &jwks).is_ok());
        // Forged: signed by the unpublished key, under its own kid or a published one.
        assert_eq!(
            check(&idp.sign_with_unknown_key(&claims), &jwks),
            Err(OidcError::UnknownKey("test-key-rogue".into()))
        );
        assert_eq!(
            check(
                &idp.mint_id_token_with(&claims, TestKey::Rogue, "test-key-1"),
                &jwks
            ),
            Err(OidcError::BadSignature)
        );
        let mut expired = claims.clone();
        expired["exp"] = json!(now - 3600);
        expired["iat"] = json!(now - 7200);
        assert!(matches!(
            check(&idp.mint_id_token(&expired), &jwks),
            Err(OidcError::Expired { .. })
        ));
        let mut aud = claims.clone();
        aud["aud"] = json!("someone-else");
        assert!(matches!(
            check(&idp.mint_id_token(&aud), &jwks),
            Err(OidcError::WrongAudience { .. })
        ));

        // Rotation: a token signed with the new key is unknown to the cached JWKS and
        // verifies after a refetch.
        idp.rotate_keys();
        let rotated = idp.mint_id_token(&claims);
        assert_eq!(
            check(&rotated, &jwks),
            Err(OidcError::UnknownKey("test-key-2".into()))
        );
        let fresh = fetch_jwks(&idp).await;
        assert_eq!(fresh.keys.len(), 2);
        assert!(check(&rotated, &fresh).is_ok());
        assert!(
            check(
                &idp.mint_id_token_with(&claims, TestKey::Key1, "test-key-1"),
                &fresh
            )
            .is_ok()
        );
        idp.publish_keys(&[TestKey::Key2]);
        let retired = fetch_jwks(&idp).await;
        assert!(matches!(
            check(
                &idp.mint_id_token_with(&claims, TestKey::Key1, "test-key-1"),
                &retired
            ),
            Err(OidcError::UnknownKey(_))
        ));
    }

    #[tokio::test]
    async fn claim_overrides_apply_to_issued_tokens() {
        let (idp, provider) = setup().await;
        idp.set_user(TestUser {
            email_verified: false,
            ..TestUser::new("2002", "bob@example.com")
        });
        idp.set_claim_overrides(json!({"aud": "someone-else", "name": null}));
        let start = new_login();
        let code = query_param(&authorize(&idp, &provider, &start).await, "code").unwrap();
        let resp = post_form(
            &idp,
            &token_request_form(&provider, &code, &start.pkce_verifier),
            &[],
        )
        .await;
        let id_token = resp.json()["id_token"].as_str().unwrap().to_string();
        let jwks = fetch_jwks(&idp).await;
        assert!(matches!(
            verify_id_token(&id_token, &jwks, &provider, &start.nonce, now(), 60),
            Err(OidcError::WrongAudience { .. })
        ));
        idp.set_claim_overrides(json!({}));
        let start = new_login();
        let code = query_param(&authorize(&idp, &provider, &start).await, "code").unwrap();
        let resp = post_form(
            &idp,
            &token_request_form(&provider, &code, &start.pkce_verifier),
            &[],
        )
        .await;
        let id_token = resp.json()["id_token"].as_str().unwrap().to_string();
        let claims = verify_id_token(&id_token, &jwks, &provider, &start.nonce, now(), 60).unwrap();
        assert_eq!(claims.sub, "2002");
        assert!(!claims.email_verified);
        assert_eq!(claims.name.as_deref(), Some("bob"));
        // A wrong nonce (another sign-in's) is refused.
        assert_eq!(
            verify_id_token(&id_token, &jwks, &provider, &new_login().nonce, now(), 60),
            Err(OidcError::NonceMismatch)
        );
    }
}
