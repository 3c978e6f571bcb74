//! Client side of an OpenID Connect authorization-code sign-in with PKCE
//! ("Sign in with Google" and compatible providers), as pure logic: this module
//! builds the URLs and forms and checks what comes back; the caller does the HTTP.
//!
//! Flow (see `PROTOCOLS.md` §3):
//! 1. [`new_login`] makes `state`, `nonce` and a PKCE verifier; keep them in the
//!    browser session and redirect to [`authorization_url`].
//! 2. On the callback compare `state` first ([`state_matches`]).
//! 3. POST [`token_request_form`] (encoded with [`form_body`]) to the token endpoint;
//!    read the answer with [`parse_token_response`] or, on an error status,
//!    [`token_error_message`].
//! 4. Check the `id_token` with [`verify_id_token`] against the provider's
//!    [`Jwks`] (refetch the JWKS once on [`OidcError::UnknownKey`]: keys rotate).
//! 5. Key the account on [`IdClaims::sub`], never on the email.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The issuers Google's id_tokens carry.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
pub const GOOGLE_AUTH_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
pub const GOOGLE_USERINFO_URL: &str = "https://openidconnect.googleapis.com/v1/userinfo";

/// The scopes of a sign-in that wants the user's id, email and name.
pub const DEFAULT_SCOPES: &str = "openid email profile";
/// Clock skew tolerated on `exp` and `iat`.
pub const DEFAULT_LEEWAY_SECS: u64 = 300;
/// Smallest RSA key accepted from a JWKS.
pub const MIN_RSA_BITS: usize = 2048;

/// Why an id_token, a JWKS or a token-endpoint answer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("the id_token is malformed: {0}")]
    BadFormat(String),
    #[error("the id_token is signed with `{0}`, but only RS256 is accepted")]
    UnsupportedAlg(String),
    #[error(
        "the id_token was signed with key `{0}`, which is not in the provider's JWKS \
         (keys rotate: refetch the JWKS and retry once)"
    )]
    UnknownKey(String),
    #[error("the id_token's signature does not verify with the provider's key")]
    BadSignature,
    #[error("the id_token was issued by `{found}`, but only {expected} is accepted")]
    WrongIssuer { found: String, expected: String },
    #[error("the id_token was issued for {found}, not for this client `{expected}`")]
    WrongAudience { found: String, expected: String },
    #[error("the id_token expired at {exp} (now {now}, {leeway}s of clock skew allowed)")]
    Expired { exp: i64, now: i64, leeway: u64 },
    #[error(
        "the id_token claims to be issued at {iat}, in the future (now {now}, \
         {leeway}s of clock skew allowed); check this server's clock"
    )]
    IssuedInFuture { iat: i64, now: i64, leeway: u64 },
    #[error(
        "the id_token's nonce does not match the one of this sign-in (replayed or mixed-up sign-in)"
    )]
    NonceMismatch,
    #[error("the identity provider's JWKS is invalid: {0}")]
    BadJwks(String),
    #[error("the identity provider's answer is invalid: {0}")]
    BadResponse(String),
}

/// One OpenID Connect client registration at a provider.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcProvider {
    /// Accepted values of the id_token's `iss` claim.
    pub issuers: Vec<String>,
    pub client_id: String,
    pub client_secret: String,
    /// Authorization endpoint (browser redirect).
    pub auth_url: String,
    /// Token endpoint (server-side POST).
    pub token_url: String,
    /// Where the signing keys are published.
    pub jwks_url: String,
    /// Our callback, exactly as registered at the provider.
    pub redirect_uri: String,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuers", &self.issuers)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("auth_url", &self.auth_url)
            .field("token_url", &self.token_url)
            .field("jwks_url", &self.jwks_url)
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

impl OidcProvider {
    /// Google's endpoints and issuers.
    pub fn google(client_id: &str, client_secret: &str, redirect_uri: &str) -> OidcProvider {
        OidcProvider {
            issuers: GOOGLE_ISSUERS.iter().map(|s| s.to_string()).collect(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            auth_url: GOOGLE_AUTH_URL.to_string(),
            token_url: GOOGLE_TOKEN_URL.to_string(),
            jwks_url: GOOGLE_JWKS_URL.to_string(),
            redirect_uri: redirect_uri.to_string(),
        }
    }

    /// A provider from its discovery document
    /// (`{issuer}/.well-known/openid-configuration`).
    pub fn from_discovery(
        discovery_json: &str,
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
    ) -> Result<OidcProvider, OidcError> {
        let doc: Value = serde_json::from_str(discovery_json)
            .map_err(|e| OidcError::BadResponse(format!("discovery document is not JSON: {e}")))?;
        let field = |name: &str| -> Result<String, OidcError> {
            doc.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    OidcError::BadResponse(format!("discovery document has no `{name}`"))
                })
        };
        Ok(OidcProvider {
            issuers: vec![field("issuer")?],
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            auth_url: field("authorization_endpoint")?,
            token_url: field("token_endpoint")?,
            jwks_url: field("jwks_uri")?,
            redirect_uri: redirect_uri.to_string(),
        })
    }
}

/// What a sign-in keeps between the redirect and the callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginStart {
    /// Anti-CSRF value echoed on the callback (256 bits, url-safe).
    pub state: String,
    /// Echoed inside the id_token (256 bits, url-safe).
    pub nonce: String,
    /// PKCE `code_verifier` (43 url-safe characters, RFC 7636), sent with the token request.
    pub pkce_verifier: String,
    /// PKCE `code_challenge` = base64url(SHA-256(verifier)), sent with the redirect.
    pub code_challenge: String,
}

fn random_urlsafe() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Fresh `state`, `nonce` and PKCE pair for one sign-in.
pub fn new_login() -> LoginStart {
    let pkce_verifier = random_urlsafe();
    LoginStart {
        state: random_urlsafe(),
        nonce: random_urlsafe(),
        code_challenge: pkce_challenge(&pkce_verifier),
        pkce_verifier,
    }
}

/// The S256 PKCE challenge of a verifier: base64url without padding of its SHA-256.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Compares the `state` of a callback with the stored one, in constant time.
pub fn state_matches(expected: &str, received: &str) -> bool {
    !expected.is_empty()
        && expected.len() == received.len()
        && expected
            .bytes()
            .zip(received.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
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

/// `application/x-www-form-urlencoded` body (or query string) of `pairs`.
pub fn form_body<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encode(k.as_ref()),
                percent_encode(v.as_ref())
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The URL to redirect the browser to. `scopes` is space-separated (usually
/// [`DEFAULT_SCOPES`]); `extra` adds parameters such as `("prompt", "select_account")`,
/// `("access_type", "offline")`, `("login_hint", …)` or `("hd", …)`.
pub fn authorization_url(
    provider: &OidcProvider,
    start: &LoginStart,
    scopes: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut pairs: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", &provider.client_id),
        ("redirect_uri", &provider.redirect_uri),
        ("scope", scopes),
        ("state", &start.state),
        ("nonce", &start.nonce),
        ("code_challenge", &start.code_challenge),
        ("code_challenge_method", "S256"),
    ];
    pairs.extend_from_slice(extra);
    let sep = if provider.auth_url.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}{}", provider.auth_url, form_body(&pairs))
}

/// The form fields of the token request (POST to [`OidcProvider::token_url`],
/// `Content-Type: application/x-www-form-urlencoded`, body from [`form_body`]).
pub fn token_request_form(
    provider: &OidcProvider,
    code: &str,
    pkce_verifier: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", provider.redirect_uri.clone()),
        ("client_id", provider.client_id.clone()),
        ("client_secret", provider.client_secret.clone()),
        ("code_verifier", pkce_verifier.to_string()),
    ]
}

/// The token endpoint's success answer.
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .field("token_type", &self.token_type)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Reads the token endpoint's success answer.
pub fn parse_token_response(body: &str) -> Result<TokenResponse, OidcError> {
    serde_json::from_str(body)
        .map_err(|e| OidcError::BadResponse(format!("token answer is not the expected JSON: {e}")))
}

/// An OAuth error answer: `{"error": "...", "error_description": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEndpointError {
    pub error: String,
    pub description: Option<String>,
}

impl TokenEndpointError {
    /// `None` when `body` is not an OAuth error object.
    pub fn parse(body: &str) -> Option<TokenEndpointError> {
        let v: Value = serde_json::from_str(body).ok()?;
        let error = v.get("error")?.as_str()?.to_string();
        let description = v
            .get("error_description")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        Some(TokenEndpointError { error, description })
    }
}

/// A message for the operator or user explaining a failed token request
/// (`status` is the HTTP status, `body` the answer).
pub fn token_error_message(provider: &OidcProvider, status: u16, body: &str) -> String {
    let Some(err) = TokenEndpointError::parse(body) else {
        let excerpt: String = body.chars().take(200).collect();
        return format!("the identity provider's token endpoint answered HTTP {status}: {excerpt}");
    };
    let detail = match &err.description {
        Some(d) => format!("{}: {d}", err.error),
        None => err.error.clone(),
    };
    match err.error.as_str() {
        "redirect_uri_mismatch" => format!(
            "the identity provider refused the redirect URI `{}` ({detail}); it must be exactly \
             (scheme, host, port, path, trailing slash) one of the authorized redirect URIs \
             of OAuth client `{}`, and the same as in the sign-in redirect",
            provider.redirect_uri, provider.client_id
        ),
        "invalid_client" | "unauthorized_client" => format!(
            "the identity provider refused the client ID `{}` or its secret ({detail}); \
             check the OAuth client settings",
            provider.client_id
        ),
        "invalid_grant" => format!(
            "the identity provider refused the sign-in code ({detail}); codes are single-use \
             and expire within minutes, so start the sign-in again"
        ),
        _ => format!("the identity provider refused the token request ({detail})"),
    }
}

/// A message for an error the provider sent to the callback (`?error=...`).
pub fn callback_error_message(error: &str, description: Option<&str>) -> String {
    match error {
        "access_denied" => "sign-in was cancelled at the identity provider".to_string(),
        _ => match description {
            Some(d) if !d.is_empty() => {
                format!("the identity provider refused the sign-in ({error}: {d})")
            }
            _ => format!("the identity provider refused the sign-in ({error})"),
        },
    }
}

/// A JSON Web Key Set, as served at [`OidcProvider::jwks_url`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One key of a [`Jwks`]; only RSA signing keys are used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    #[serde(default)]
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Modulus, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// Public exponent, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl Jwks {
    /// Parses a JWKS document.
    pub fn from_json(json: &str) -> Result<Jwks, OidcError> {
        serde_json::from_str(json).map_err(|e| OidcError::BadJwks(e.to_string()))
    }

    /// The key with this `kid`.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }
}

impl Jwk {
    /// The JWK of an RSA public key for RS256 signatures.
    pub fn from_rsa(kid: &str, key: &RsaPublicKey) -> Jwk {
        Jwk {
            kty: "RSA".to_string(),
            kid: Some(kid.to_string()),
            n: Some(URL_SAFE_NO_PAD.encode(key.n().to_bytes_be())),
            e: Some(URL_SAFE_NO_PAD.encode(key.e().to_bytes_be())),
            alg: Some("RS256".to_string()),
            use_: Some("sig".to_string()),
        }
    }

    /// The RSA public key, if this is a usable RS256 signing key.
    pub fn rsa_public_key(&self) -> Result<RsaPublicKey, OidcError> {
        let kid = self.kid.as_deref().unwrap_or("(no kid)");
        let bad = |why: &str| OidcError::BadJwks(format!("key `{kid}` {why}"));
        if self.kty != "RSA" {
            return Err(bad(&format!("has kty `{}`, not RSA", self.kty)));
        }
        if self.alg.as_deref().is_some_and(|a| a != "RS256") {
            return Err(bad("is not for RS256"));
        }
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(bad("is not a signing key"));
        }
        let decode = |field: &Option<String>, name: &str| {
            field
                .as_deref()
                .and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok())
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad(&format!("has no valid `{name}`")))
        };
        let n = BigUint::from_bytes_be(&decode(&self.n, "n")?);
        let e = BigUint::from_bytes_be(&decode(&self.e, "e")?);
        let key = RsaPublicKey::new(n, e).map_err(|err| bad(&format!("is unusable: {err}")))?;
        if key.size() * 8 < MIN_RSA_BITS {
            return Err(bad(&format!("is shorter than {MIN_RSA_BITS} bits")));
        }
        Ok(key)
    }
}

/// The identity an id_token vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdClaims {
    /// The stable account id at the provider (key accounts on this).
    pub sub: String,
    pub email: Option<String>,
    /// Whether the provider vouches for `email` (only then link by email).
    pub email_verified: bool,
    pub name: Option<String>,
    pub picture: Option<String>,
    /// Google Workspace domain of the account, if any.
    pub hd: Option<String>,
}

fn decode_json_part(part: &str, what: &str) -> Result<Map<String, Value>, OidcError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| OidcError::BadFormat(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(OidcError::BadFormat(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

fn numeric_claim(claims: &Map<String, Value>, name: &str) -> Result<i64, OidcError> {
    let v = claims
        .get(name)
        .ok_or_else(|| OidcError::BadFormat(format!("the `{name}` claim is missing")))?;
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        .ok_or_else(|| OidcError::BadFormat(format!("the `{name}` claim is not a number")))
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_string)
}

/// Verifies a compact-serialized id_token and returns its identity claims.
///
/// Checks, in order: three base64url parts; header `alg` is RS256; header
/// `kid` is in `jwks`; the RSASSA-PKCS1-v1_5 SHA-256 signature; `iss` is one of
/// `provider.issuers`; `aud` is (or, as an array, contains) `provider.client_id`,
/// and `azp`, required when `aud` has several entries, equals it too;
/// `exp > now - leeway`; `iat <= now + leeway`; `nonce == expected_nonce`.
pub fn verify_id_token(
    token: &str,
    jwks: &Jwks,
    provider: &OidcProvider,
    expected_nonce: &str,
    now_unix: u64,
    leeway_secs: u64,
) -> Result<IdClaims, OidcError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OidcError::BadFormat(
            "it is not three dot-separated parts (header.payload.signature)".to_string(),
        ));
    };

    let header = decode_json_part(header_b64, "header")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| OidcError::BadFormat("the header has no `alg`".to_string()))?;
    if alg != "RS256" {
        return Err(OidcError::UnsupportedAlg(alg.to_string()));
    }
    if header.contains_key("crit") {
        return Err(OidcError::BadFormat(
            "the header has critical extensions (`crit`) this client does not support".to_string(),
        ));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| OidcError::BadFormat("the header has no `kid`".to_string()))?;
    let jwk = jwks
        .find(kid)
        .ok_or_else(|| OidcError::UnknownKey(kid.to_string()))?;
    let key = jwk.rsa_public_key()?;

    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| OidcError::BadFormat("the signature is not base64url".to_string()))?;
    if signature.is_empty() {
        return Err(OidcError::BadSignature);
    }
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    let digest = Sha256::digest(signed.as_bytes());
    key.verify(
        Pkcs1v15Sign::new::<rsa::sha2::Sha256>(),
        &digest,
        &signature,
    )
    .map_err(|_| OidcError::BadSignature)?;

    let claims = decode_json_part(payload_b64, "payload")?;

    let iss = string_claim(&claims, "iss").unwrap_or_default();
    if !provider.issuers.contains(&iss) {
        return Err(OidcError::WrongIssuer {
            found: iss,
            expected: provider
                .issuers
                .iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(" or "),
        });
    }

    let client_id = provider.client_id.as_str();
    let wrong_aud = |found: String| OidcError::WrongAudience {
        found,
        expected: client_id.to_string(),
    };
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => {
            return Err(OidcError::BadFormat(
                "the `aud` claim is missing".to_string(),
            ));
        }
    };
    if !audiences.contains(&client_id) {
        return Err(wrong_aud(format!("audience `{}`", audiences.join("`, `"))));
    }
    match claims.get("azp").and_then(Value::as_str) {
        Some(azp) if azp != client_id => {
            return Err(wrong_aud(format!("authorized party (azp) `{azp}`")));
        }
        None if audiences.len() > 1 => {
            return Err(wrong_aud(
                "several audiences without an authorized party (azp)".to_string(),
            ));
        }
        _ => {}
    }

    let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
    let leeway = i64::try_from(leeway_secs).unwrap_or(i64::MAX);
    let exp = numeric_claim(&claims, "exp")?;
    if exp <= now.saturating_sub(leeway) {
        return Err(OidcError::Expired {
            exp,
            now,
            leeway: leeway_secs,
        });
    }
    let iat = numeric_claim(&claims, "iat")?;
    if iat > now.saturating_add(leeway) {
        return Err(OidcError::IssuedInFuture {
            iat,
            now,
            leeway: leeway_secs,
        });
    }

    let nonce = string_claim(&claims, "nonce").unwrap_or_default();
    if !state_matches(expected_nonce, &nonce) {
        return Err(OidcError::NonceMismatch);
    }

    let sub = string_claim(&claims, "sub").unwrap_or_default();
    if sub.is_empty() || sub.len() > 255 {
        return Err(OidcError::BadFormat(
            "the `sub` claim is missing or longer than 255 characters".to_string(),
        ));
    }
    let email_verified = match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    Ok(IdClaims {
        sub,
        email: string_claim(&claims, "email"),
        email_verified,
        name: string_claim(&claims, "name"),
        picture: string_claim(&claims, "picture"),
        hd: string_claim(&claims, "hd"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use serde_json::json;

    const KEY_1: &str = include_str!("../../mock-services/src/testdata/idp-key-1.pem");
    const KEY_2: &str = include_str!("../../mock-services/src/testdata/idp-key-2.pem");
    const ROGUE: &str = include_str!("../../mock-services/src/testdata/idp-key-rogue.pem");
    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://accounts.google.com";
    const CLIENT: &str = "client-123.apps.googleusercontent.com";

    fn key(pem: &str) -> RsaPrivateKey {
        RsaPrivateKey::from_pkcs8_pem(pem).unwrap()
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn sign(header: &Value, claims: &Value, pem: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let digest = Sha256::digest(input.as_bytes());
        let sig = key(pem)
            .sign(Pkcs1v15Sign::new::<rsa::sha2::Sha256>(), &digest)
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn rs256(kid: &str, claims: &Value, pem: &str) -> String {
        sign(
            &json!({"alg": "RS256", "kid": kid, "typ": "JWT"}),
            claims,
            pem,
        )
    }

    fn jwks() -> Jwks {
        Jwks {
            keys: vec![
                Jwk::from_rsa("key-1", &key(KEY_1).to_public_key()),
                Jwk::from_rsa("key-2", &key(KEY_2).to_public_key()),
            ],
        }
    }

    fn provider() -> OidcProvider {
        OidcProvider::google(
            CLIENT,
            "s3cret",
            "https://proxy.example.com/api/oauth/google",
        )
    }

    fn claims() -> Value {
        json!({
            "iss": ISS,
            "azp": CLIENT,
            "aud": CLIENT,
            "sub": "110169484474386276334",
            "email": "alice@example.com",
            "email_verified": true,
            "name": "Alice Example",
            "picture": "https://lh3.googleusercontent.com/a/x",
            "iat": NOW - 10,
            "exp": NOW + 3590,
            "nonce": "n-0S6_WzA2Mj",
        })
    }

    fn verify(token: &str) -> Result<IdClaims, OidcError> {
        verify_id_token(token, &jwks(), &provider(), "n-0S6_WzA2Mj", NOW, 60)
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    #[test]
    fn valid_token_verifies() {
        let c = verify(&rs256("key-1", &claims(), KEY_1)).unwrap();
        assert_eq!(
            c,
            IdClaims {
                sub: "110169484474386276334".into(),
                email: Some("alice@example.com".into()),
                email_verified: true,
                name: Some("Alice Example".into()),
                picture: Some("https://lh3.googleusercontent.com/a/x".into()),
                hd: None,
            }
        );
        // The rotated-in second key works too; the legacy issuer is accepted.
        let legacy = with(claims(), "iss", json!("accounts.google.com"));
        assert!(verify(&rs256("key-2", &legacy, KEY_2)).is_ok());
        // email_verified as the legacy string, and hd.
        let c = with(claims(), "email_verified", json!("true"));
        let c = with(c, "hd", json!("example.com"));
        let got = verify(&rs256("key-1", &c, KEY_1)).unwrap();
        assert!(got.email_verified);
        assert_eq!(got.hd.as_deref(), Some("example.com"));
        let c = with(claims(), "email_verified", json!("false"));
        assert!(!verify(&rs256("key-1", &c, KEY_1)).unwrap().email_verified);
        let mut c = claims();
        c.as_object_mut().unwrap().remove("email_verified");
        assert!(!verify(&rs256("key-1", &c, KEY_1)).unwrap().email_verified);
        // Audience as an array with azp.
        let c = with(claims(), "aud", json!([CLIENT, "other-client"]));
        assert!(verify(&rs256("key-1", &c, KEY_1)).is_ok());
        // Within the leeway.
        let c = with(claims(), "exp", json!(NOW - 30));
        assert!(verify(&rs256("key-1", &c, KEY_1)).is_ok());
        let c = with(claims(), "iat", json!(NOW + 30));
        assert!(verify(&rs256("key-1", &c, KEY_1)).is_ok());
    }

    #[test]
    fn forged_and_tampered_tokens_are_refused() {
        // Signed by a key the provider never published, under a published kid.
        let forged = rs256("key-1", &claims(), ROGUE);
        assert_eq!(verify(&forged), Err(OidcError::BadSignature));
        // Signed with key 2 but claiming key 1.
        assert_eq!(
            verify(&rs256("key-1", &claims(), KEY_2)),
            Err(OidcError::BadSignature)
        );
        // Payload swapped after signing.
        let good = rs256("key-1", &claims(), KEY_1);
        let parts: Vec<&str> = good.split('.').collect();
        let evil = b64(&with(claims(), "sub", json!("admin")));
        let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
        assert_eq!(verify(&tampered), Err(OidcError::BadSignature));
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(verify(&stripped), Err(OidcError::BadSignature));
    }

    #[test]
    fn unknown_kid_is_refused() {
        let err = verify(&rs256("key-9", &claims(), ROGUE)).unwrap_err();
        assert_eq!(err, OidcError::UnknownKey("key-9".into()));
        assert!(err.to_string().contains("key-9"));
        let empty = Jwks::default();
        let token = rs256("key-1", &claims(), KEY_1);
        assert!(matches!(
            verify_id_token(&token, &empty, &provider(), "n-0S6_WzA2Mj", NOW, 60),
            Err(OidcError::UnknownKey(_))
        ));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let payload = b64(&claims());
        let none = format!(
            "{}.{payload}.",
            b64(&json!({"alg": "none", "kid": "key-1"}))
        );
        assert_eq!(verify(&none), Err(OidcError::UnsupportedAlg("none".into())));
        // HS256: a verifier that accepted it could be fooled with the public key as HMAC secret.
        let hs = format!(
            "{}.{payload}.c2lnbmF0dXJl",
            b64(&json!({"alg": "HS256", "kid": "key-1"}))
        );
        assert_eq!(verify(&hs), Err(OidcError::UnsupportedAlg("HS256".into())));
        let ps = sign(&json!({"alg": "PS256", "kid": "key-1"}), &claims(), KEY_1);
        assert_eq!(verify(&ps), Err(OidcError::UnsupportedAlg("PS256".into())));
        let no_alg = sign(&json!({"kid": "key-1"}), &claims(), KEY_1);
        assert!(matches!(verify(&no_alg), Err(OidcError::BadFormat(_))));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.e30",
            "e30.e30.e30",
            "W10.e30.AAAA",
        ] {
            assert!(matches!(verify(bad), Err(OidcError::BadFormat(_))), "{bad}");
        }
        let no_kid = sign(&json!({"alg": "RS256"}), &claims(), KEY_1);
        assert!(matches!(verify(&no_kid), Err(OidcError::BadFormat(_))));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            verify(&rs256("key-1", &c, KEY_1)),
            Err(OidcError::BadFormat(m)) if m.contains("exp")
        ));
        let c = with(claims(), "sub", json!(""));
        assert!(matches!(
            verify(&rs256("key-1", &c, KEY_1)),
            Err(OidcError::BadFormat(_))
        ));
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let c = with(claims(), "iss", json!("https://evil.example.com"));
        let err = verify(&rs256("key-1", &c, KEY_1)).unwrap_err();
        assert!(matches!(err, OidcError::WrongIssuer { .. }));
        assert!(err.to_string().contains("evil.example.com"));
    }

    #[test]
    fn wrong_audience_is_refused() {
        let c = with(claims(), "aud", json!("someone-else"));
        let err = verify(&rs256("key-1", &c, KEY_1)).unwrap_err();
        assert!(matches!(err, OidcError::WrongAudience { .. }));
        assert!(err.to_string().contains("someone-else"), "{err}");
        // Several audiences need azp to name this client.
        let c = with(claims(), "aud", json!(["other", CLIENT]));
        let c = with(c, "azp", json!("other"));
        assert!(matches!(
            verify(&rs256("key-1", &c, KEY_1)),
            Err(OidcError::WrongAudience { .. })
        ));
        let mut c = with(claims(), "aud", json!(["other", CLIENT]));
        c.as_object_mut().unwrap().remove("azp");
        assert!(matches!(
            verify(&rs256("key-1", &c, KEY_1)),
            Err(OidcError::WrongAudience { .. })
        ));
        let c = with(claims(), "aud", json!([]));
        assert!(matches!(
            verify(&rs256("key-1", &c, KEY_1)),
            Err(OidcError::WrongAudience { .. })
        ));
    }

    #[test]
    fn expired_and_future_tokens_are_refused() {
        let c = with(claims(), "exp", json!(NOW - 61));
        let err = verify(&rs256("key-1", &c, KEY_1)).unwrap_err();
        assert!(matches!(err, OidcError::Expired { .. }));
        assert!(err.to_string().contains("expired"));
        let c = with(claims(), "iat", json!(NOW + 3600));
        assert!(matches!(
            verify(&rs256("key-1", &c, KEY_1)),
            Err(OidcError::IssuedInFuture { .. })
        ));
    }

    #[test]
    fn nonce_must_match() {
        let c = with(claims(), "nonce", json!("another"));
        assert_eq!(
            verify(&rs256("key-1", &c, KEY_1)),
            Err(OidcError::NonceMismatch)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        assert_eq!(
            verify(&rs256("key-1", &c, KEY_1)),
            Err(OidcError::NonceMismatch)
        );
        let token = rs256("key-1", &claims(), KEY_1);
        assert_eq!(
            verify_id_token(&token, &jwks(), &provider(), "", NOW, 60),
            Err(OidcError::NonceMismatch)
        );
    }

    #[test]
    fn jwks_parsing() {
        let json = serde_json::to_string(&jwks()).unwrap();
        assert!(json.contains(r#""use":"sig""#));
        let parsed = Jwks::from_json(&json).unwrap();
        assert_eq!(parsed, jwks());
        assert!(parsed.find("key-2").unwrap().rsa_public_key().is_ok());
        // Unknown key types and extra members are tolerated, and skipped when used.
        let mixed = r#"{"keys":[{"kty":"EC","kid":"ec","crv":"P-256","x":"AA","y":"AA"}]}"#;
        let parsed = Jwks::from_json(mixed).unwrap();
        assert!(matches!(
            parsed.find("ec").unwrap().rsa_public_key(),
            Err(OidcError::BadJwks(_))
        ));
        let token = rs256("ec", &claims(), KEY_1);
        assert!(matches!(
            verify_id_token(&token, &parsed, &provider(), "n-0S6_WzA2Mj", NOW, 60),
            Err(OidcError::BadJwks(_))
        ));
        assert!(matches!(
            Jwks::from_json("not json"),
            Err(OidcError::BadJwks(_))
        ));
        // Small keys are refused.
        let tiny = Jwk {
            kty: "RSA".into(),
            kid: Some("tiny".into()),
            n: Some(URL_SAFE_NO_PAD.encode([0xC5u8; 64])),
            e: Some("AQAB".into()),
            alg: None,
            use_: None,
        };
        assert!(matches!(tiny.rsa_public_key(), Err(OidcError::BadJwks(_))));
    }

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn login_start_is_random_and_well_formed() {
        let a = new_login();
        let b = new_login();
        assert_ne!(a.state, b.state);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.pkce_verifier, b.pkce_verifier);
        for s in [&a.state, &a.nonce, &a.pkce_verifier] {
            assert!(s.len() >= 43 && s.len() <= 128, "{s}");
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-._~".contains(&c))
            );
        }
        assert_eq!(a.code_challenge, pkce_challenge(&a.pkce_verifier));
        assert!(state_matches(&a.state, &a.state.clone()));
        assert!(!state_matches(&a.state, &b.state));
        assert!(!state_matches("", ""));
    }

    #[test]
    fn authorization_url_and_token_form() {
        let p = provider();
        let start = LoginStart {
            state: "st".into(),
            nonce: "nn".into(),
            pkce_verifier: "vv".into(),
            code_challenge: "cc".into(),
        };
        let url = authorization_url(&p, &start, DEFAULT_SCOPES, &[("prompt", "select_account")]);
        assert_eq!(
            url,
            "https://accounts.google.com/o/oauth2/v2/auth?response_type=code\
             &client_id=client-123.apps.googleusercontent.com\
             &redirect_uri=https%3A%2F%2Fproxy.example.com%2Fapi%2Foauth%2Fgoogle\
             &scope=openid%20email%20profile&state=st&nonce=nn&code_challenge=cc\
             &code_challenge_method=S256&prompt=select_account"
        );
        let mut q = p.clone();
        q.auth_url = "https://idp.example/auth?tenant=x".into();
        assert!(
            authorization_url(&q, &start, "openid", &[])
                .starts_with("https://idp.example/auth?tenant=x&response_type=code&")
        );

        let form = token_request_form(&p, "4/0Ab-c", "vv");
        assert_eq!(
            form,
            vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", "4/0Ab-c".to_string()),
                ("redirect_uri", p.redirect_uri.clone()),
                ("client_id", CLIENT.to_string()),
                ("client_secret", "s3cret".to_string()),
                ("code_verifier", "vv".to_string()),
            ]
        );
        assert!(form_body(&form).starts_with("grant_type=authorization_code&code=4%2F0Ab-c&"));
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn token_answers_and_errors() {
        let ok = parse_token_response(
            r#"{"access_token":"ya29.x","expires_in":3599,"scope":"openid","token_type":"Bearer","id_token":"a.b.c"}"#,
        )
        .unwrap();
        assert_eq!(ok.id_token.as_deref(), Some("a.b.c"));
        assert_eq!(ok.expires_in, Some(3599));
        assert!(!format!("{ok:?}").contains("ya29"));
        assert!(matches!(
            parse_token_response(r#"{"error":"invalid_grant"}"#),
            Err(OidcError::BadResponse(_))
        ));

        let p = provider();
        let body = r#"{"error":"redirect_uri_mismatch","error_description":"Bad Request"}"#;
        assert_eq!(
            TokenEndpointError::parse(body),
            Some(TokenEndpointError {
                error: "redirect_uri_mismatch".into(),
                description: Some("Bad Request".into())
            })
        );
        let msg = token_error_message(&p, 400, body);
        assert!(msg.contains("redirect_uri_mismatch: Bad Request"), "{msg}");
        assert!(msg.contains(&p.redirect_uri), "{msg}");
        let msg = token_error_message(
            &p,
            401,
            r#"{"error":"invalid_client","error_description":"Unauthorized"}"#,
        );
        assert!(
            msg.contains("invalid_client") && msg.contains(CLIENT),
            "{msg}"
        );
        let msg = token_error_message(&p, 400, r#"{"error":"invalid_grant"}"#);
        assert!(
            msg.contains("invalid_grant") && msg.contains("single-use"),
            "{msg}"
        );
        let msg = token_error_message(&p, 502, "<html>Bad gateway</html>");
        assert!(msg.contains("502") && msg.contains("Bad gateway"), "{msg}");
        assert_eq!(TokenEndpointError::parse("[]"), None);
        assert!(callback_error_message("access_denied", None).contains("cancelled"));
        assert!(callback_error_message("server_error", Some("x")).contains("server_error: x"));
    }

    #[test]
    fn provider_from_discovery() {
        let doc = r#"{"issuer":"http://127.0.0.1:9","authorization_endpoint":"http://127.0.0.1:9/authorize",
            "token_endpoint":"http://127.0.0.1:9/token","jwks_uri":"http://127.0.0.1:9/jwks"}"#;
        let p = OidcProvider::from_discovery(doc, "c", "s", "http://localhost/cb").unwrap();
        assert_eq!(p.issuers, vec!["http://127.0.0.1:9".to_string()]);
        assert_eq!(p.jwks_url, "http://127.0.0.1:9/jwks");
        assert!(OidcProvider::from_discovery("{}", "c", "s", "r").is_err());
    }
}
