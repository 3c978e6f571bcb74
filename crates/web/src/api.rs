//! The JSON management API under `/api`, authenticated by an access token
//! (`Authorization: Bearer gap-…`, from `POST /api/auth/login` or the CLI's
//! `token create`). Errors are `{"error":{"message","code"}}` with a status
//! that says who must act.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use storage::{
    ApiKeyPatch, ChannelPatch, ChannelRow, LogFilter, NewChannel, StorageError, UserRow,
};

use crate::AppState;

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let id = crate::request_id();
        if self.status.is_server_error() {
            tracing::error!(request_id = %id, error = %self.message, "management request failed");
        }
        let mut r = (
            self.status,
            Json(json!({"error": {"message": self.message, "code": self.code, "request_id": id}})),
        )
            .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&id) {
            r.headers_mut().insert("x-request-id", v);
        }
        r
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        match e {
            StorageError::NotFound(w) => ApiError::not_found(format!("{w} not found")),
            StorageError::Conflict(w) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{w} already exists"),
            ),
            StorageError::InsufficientBalance => ApiError::new(
                StatusCode::CONFLICT,
                "insufficient_balance",
                "the balance is too low for this deduction",
            ),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("internal error: {other}"),
            ),
        }
    }
}

impl From<accounts::ops::OpsError> for ApiError {
    fn from(e: accounts::ops::OpsError) -> ApiError {
        use accounts::ops::OpsError;
        match e {
            OpsError::Storage(s) => s.into(),
            OpsError::BadCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials", e.to_string())
            }
            other => ApiError::bad(other.to_string()),
        }
    }
}

impl From<billing::ops::BillingError> for ApiError {
    fn from(e: billing::ops::BillingError) -> ApiError {
        match e {
            billing::ops::BillingError::Storage(s) => s.into(),
            other => ApiError::bad(other.to_string()),
        }
    }
}

impl From<relay::channels::ChannelError> for ApiError {
    fn from(e: relay::channels::ChannelError) -> ApiError {
        match e {
            relay::channels::ChannelError::Storage(s) => s.into(),
            other => ApiError::bad(other.to_string()),
        }
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// A signed-in user (any role).
pub struct Caller(pub UserRow);
/// A signed-in admin or root.
pub struct Admin(pub UserRow);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let user = if let Some(token) = bearer {
            s.store
                .user_by_access_token(&accounts::secret_hash(token))
                .await?
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "invalid_token",
                        "The access token is unknown or expired; sign in again.",
                    )
                })?
        } else if let Some(token) = crate::auth::cookie(&parts.headers, crate::auth::SESSION_COOKIE)
        {
            crate::auth::session_caller(s, &parts.method, &parts.headers, token)
                .await?
                .1
        } else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Sign in first: send an access token as `Authorization: Bearer …` (from POST /api/auth/login), or use the session cookie.",
            ));
        };
        if user.status != 1 {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "user_disabled",
                "This account is disabled.",
            ));
        }
        Ok(Caller(user))
    }
}

/// The signed-in user, if the request carries valid credentials.
pub struct MaybeCaller(pub Option<UserRow>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        Ok(MaybeCaller(
            Caller::from_request_parts(parts, s).await.ok().map(|c| c.0),
        ))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let Caller(u) = Caller::from_request_parts(parts, s).await?;
        if !accounts::is_admin(&u.role) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "This needs an administrator's access token.",
            ));
        }
        Ok(Admin(u))
    }
}

/// Reads a JSON body with an error that says what is wrong with it.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, _: &AppState) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), 1024 * 1024)
            .await
            .map_err(|_| ApiError::bad("the request body is unreadable or larger than 1 MiB"))?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error_free(de).map(Body)
    }
}

fn serde_path_to_error_free<T: serde::de::DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> Result<T, ApiError> {
    T::deserialize(de).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(crate::auth::login))
        .route("/self", get(self_get))
        .route("/self/logs", get(self_logs))
        .route("/self/keys", get(self_keys).post(self_key_create))
        .route("/users", get(users_list).post(users_create))
        .route("/users/{id}", get(user_get).patch(user_patch))
        .route("/users/{id}/topup", post(user_topup))
        .route("/users/{id}/ledger", get(user_ledger))
        .route("/keys", get(keys_list).post(keys_create))
        .route(
            "/keys/{id}",
            axum::routing::patch(key_patch).delete(key_delete),
        )
        .route("/channels", get(channels_list).post(channels_create))
        .route(
            "/channels/{id}",
            get(channel_get).patch(channel_patch).delete(channel_delete),
        )
        .route("/channels/{id}/test", post(channel_test))
        .route("/prices", get(prices_list))
        .route("/prices/{*model}", put(price_put).delete(price_delete))
        .route("/fallbacks", get(fallbacks_list))
        .route("/fallbacks/{*model}", put(fallback_put))
        .route("/groups", get(groups_list))
        .route("/groups/{name}", put(group_put))
        .route("/logs", get(logs_list))
        .route("/usage/hourly", get(usage_hourly))
        .route("/ledger/check", get(ledger_check))
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.relay.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if s.store.ping().await {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
    }
}

async fn reload(s: &AppState) -> Result<(), ApiError> {
    s.relay.reload().await.map_err(ApiError::from)
}

// ---- sign-in and self ---------------------------------------------------

fn user_json(u: &UserRow) -> Value {
    json!({
        "id": u.id, "username": u.username, "role": u.role, "status": u.status,
        "group": u.group, "balance": u.balance, "balance_usd": billing::units_to_usd(u.balance),
        "used": u.used, "used_usd": billing::units_to_usd(u.used),
        "request_count": u.request_count, "created_at": u.created_at,
        "limits": u.limits,
    })
}

async fn self_get(State(s): State<AppState>, Caller(u): Caller) -> ApiResult {
    s.relay.flush().await;
    let fresh = s.store.user(u.id).await?;
    Ok(Json(user_json(&fresh)))
}

async fn self_logs(
    State(s): State<AppState>,
    Caller(u): Caller,
    Query(mut f): Query<LogFilter>,
) -> ApiResult {
    f.user_id = Some(u.id);
    Ok(Json(json!({"data": s.store.logs(&f).await?})))
}

async fn self_keys(State(s): State<AppState>, Caller(u): Caller) -> ApiResult {
    Ok(Json(json!({"data": s.store.api_keys(Some(u.id)).await?})))
}

async fn self_key_create(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(opts): Body<accounts::ops::KeyOptions>,
) -> ApiResult {
    let (row, key) = accounts::ops::create_key(&s.store, u.id, opts).await?;
    reload(&s).await?;
    Ok(Json(json!({"key": key, "data": row})))
}

// ---- users --------------------------------------------------------------

async fn users_list(State(s): State<AppState>, _: Admin) -> ApiResult {
    s.relay.flush().await;
    let users: Vec<Value> = s.store.users().await?.iter().map(user_json).collect();
    Ok(Json(json!({"data": users})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    password: Option<String>,
    #[serde(default = "role_user")]
    role: String,
    #[serde(default = "group_default")]
    group: String,
    /// Initial credit in USD (decimal text or number).
    balance_usd: Option<Value>,
}
fn role_user() -> String {
    "user".into()
}
fn group_default() -> String {
    "default".into()
}

fn usd_units(v: &Value) -> Result<i64, ApiError> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(ApiError::bad(
                "amounts are numbers or decimal strings, e.g. \"12.50\"",
            ));
        }
    };
    billing::usd_to_units(&text).map_err(|e| ApiError::bad(e.to_string()))
}

async fn users_create(
    State(s): State<AppState>,
    Admin(me): Admin,
    Body(b): Body<NewUserBody>,
) -> ApiResult {
    if b.role == accounts::ROLE_ROOT
        || (b.role == accounts::ROLE_ADMIN && me.role != accounts::ROLE_ROOT)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only root can create administrators, and there is one root",
        ));
    }
    let credit = b.balance_usd.as_ref().map(usd_units).transpose()?;
    let (user, generated) = accounts::ops::create_user(
        &s.store,
        &b.username,
        b.password.as_deref(),
        &b.role,
        &b.group,
    )
    .await?;
    if let Some(units) = credit.filter(|u| *u != 0) {
        billing::ops::credit(&s.store, user.id, units, "topup", None, "initial balance").await?;
    }
    reload(&s).await?;
    let user = s.store.user(user.id).await?;
    Ok(Json(
        json!({"data": user_json(&user), "password": generated}),
    ))
}

async fn user_get(State(s): State<AppState>, _: Admin, Path(id): Path<i64>) -> ApiResult {
    s.relay.flush().await;
    Ok(Json(json!({"data": user_json(&s.store.user(id).await?)})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    status: Option<i64>,
    group: Option<String>,
    password: Option<String>,
    /// Rate limits over all of the user's keys (`{}` removes them).
    limits: Option<storage::RateLimits>,
}

async fn user_patch(
    State(s): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<i64>,
    Body(p): Body<UserPatch>,
) -> ApiResult {
    let target = s.store.user(id).await?;
    if accounts::is_admin(&target.role) && me.role != accounts::ROLE_ROOT && me.id != target.id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only root can change administrators",
        ));
    }
    if target.id == me.id && p.status == Some(0) {
        return Err(ApiError::bad("you cannot disable your own account"));
    }
    if let Some(st) = p.status {
        if !(st == 0 || st == 1) {
            return Err(ApiError::bad("status must be 1 (enabled) or 0 (disabled)"));
        }
        s.store.set_user_status(id, st).await?;
        if st == 0 {
            // a disabled account's sessions and access tokens end at once
            s.store.sign_out_everywhere(id).await?;
        }
    }
    if let Some(g) = &p.group {
        if g.trim().is_empty() {
            return Err(ApiError::bad("group cannot be empty"));
        }
        s.store.set_user_group(id, g).await?;
    }
    if let Some(pw) = &p.password {
        accounts::check_password(pw).map_err(|e| ApiError::bad(e.to_string()))?;
        let h = accounts::hash_password_off_thread(pw)
            .await
            .map_err(|e| ApiError::bad(e.to_string()))?;
        s.store.change_password(id, &h).await?;
    }
    if let Some(l) = &p.limits {
        if l.budget.is_some() || l.budget_period.is_some() {
            return Err(ApiError::bad(
                "budgets are set per API key; a user's limits are rpm, tpm and concurrency",
            ));
        }
        s.store.set_user_limits(id, l).await?;
    }
    reload(&s).await?;
    Ok(Json(json!({"data": user_json(&s.store.user(id).await?)})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopupBody {
    /// USD, decimal text or number; negative to deduct.
    amount_usd: Option<Value>,
    /// Units, as an alternative to `amount_usd`.
    units: Option<i64>,
    #[serde(default)]
    note: String,
    /// Makes the credit idempotent: a reference is applied once.
    reference: Option<String>,
}

async fn user_topup(
    State(s): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<i64>,
    Body(b): Body<TopupBody>,
) -> ApiResult {
    let units = match (&b.amount_usd, b.units) {
        (Some(v), None) => usd_units(v)?,
        (None, Some(u)) => u,
        _ => return Err(ApiError::bad("give exactly one of amount_usd or units")),
    };
    let kind = if units > 0 { "topup" } else { "adjust" };
    let note = if b.note.is_empty() {
        format!("by {}", me.username)
    } else {
        format!("{} (by {})", b.note, me.username)
    };
    let balance =
        billing::ops::credit(&s.store, id, units, kind, b.reference.as_deref(), &note).await?;
    reload(&s).await?;
    Ok(Json(
        json!({"balance": balance, "balance_usd": billing::units_to_usd(balance)}),
    ))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn user_ledger(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    let rows = s
        .store
        .ledger(id, q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    Ok(Json(json!({"data": rows})))
}

// ---- keys ---------------------------------------------------------------

#[derive(Deserialize)]
struct KeysQuery {
    user_id: Option<i64>,
}

async fn keys_list(State(s): State<AppState>, _: Admin, Query(q): Query<KeysQuery>) -> ApiResult {
    s.relay.flush().await;
    Ok(Json(json!({"data": s.store.api_keys(q.user_id).await?})))
}

#[derive(Deserialize)]
struct NewKeyBody {
    user_id: i64,
    #[serde(flatten)]
    opts: Value,
}

async fn keys_create(State(s): State<AppState>, _: Admin, Body(b): Body<NewKeyBody>) -> ApiResult {
    let opts: accounts::ops::KeyOptions = serde_json::from_value(b.opts)
        .map_err(|e| ApiError::bad(format!("invalid key options: {e}")))?;
    let (row, key) = accounts::ops::create_key(&s.store, b.user_id, opts).await?;
    reload(&s).await?;
    Ok(Json(json!({"key": key, "data": row})))
}

async fn key_patch(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
    Body(p): Body<ApiKeyPatch>,
) -> ApiResult {
    let row = accounts::ops::update_key(&s.store, id, p).await?;
    reload(&s).await?;
    Ok(Json(json!({"data": row})))
}

async fn key_delete(State(s): State<AppState>, _: Admin, Path(id): Path<i64>) -> ApiResult {
    s.store.delete_api_key(id).await?;
    reload(&s).await?;
    Ok(Json(json!({"deleted": id})))
}

// ---- channels -----------------------------------------------------------

/// A channel as the API shows it: keys counted, never returned; its
/// state and the keys that were disabled, with the reasons.
fn channel_json(c: &ChannelRow) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("key_count".into(), json!(c.api_keys.len()));
        let state = match c.status {
            1 => "enabled",
            2 => "auto_disabled",
            _ => "disabled",
        };
        o.insert("state".into(), json!(state));
    }
    v
}

async fn channels_list(State(s): State<AppState>, _: Admin) -> ApiResult {
    let rows: Vec<Value> = s.store.channels().await?.iter().map(channel_json).collect();
    Ok(Json(json!({"data": rows})))
}

async fn channels_create(
    State(s): State<AppState>,
    _: Admin,
    Body(c): Body<NewChannel>,
) -> ApiResult {
    let row = relay::channels::add(&s.store, c).await?;
    reload(&s).await?;
    Ok(Json(json!({"data": channel_json(&row)})))
}

/// The operator's channels have positive ids; managed users' own channels
/// are reached through their own endpoints only.
fn operator_channel(id: i64) -> Result<i64, ApiError> {
    if id > 0 {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("channel {id}")))
    }
}

async fn channel_get(State(s): State<AppState>, _: Admin, Path(id): Path<i64>) -> ApiResult {
    let id = operator_channel(id)?;
    Ok(Json(
        json!({"data": channel_json(&s.store.channel(id).await?)}),
    ))
}

async fn channel_patch(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
    Body(p): Body<ChannelPatch>,
) -> ApiResult {
    let id = operator_channel(id)?;
    let row = relay::channels::update(&s.store, id, p).await?;
    reload(&s).await?;
    Ok(Json(json!({"data": channel_json(&row)})))
}

/// Sends one tiny request through the channel and reports the result.
async fn channel_test(State(s): State<AppState>, _: Admin, Path(id): Path<i64>) -> ApiResult {
    let id = operator_channel(id)?;
    let r = s
        .relay
        .test_channel(id)
        .await
        .map_err(|e| ApiError::not_found(e.message))?;
    Ok(Json(json!({"data": r})))
}

async fn channel_delete(State(s): State<AppState>, _: Admin, Path(id): Path<i64>) -> ApiResult {
    let id = operator_channel(id)?;
    s.store.delete_channel(id).await?;
    reload(&s).await?;
    Ok(Json(json!({"deleted": id})))
}

// ---- prices and groups --------------------------------------------------

async fn prices_list(State(s): State<AppState>, _: Caller) -> ApiResult {
    Ok(Json(json!({"data": s.store.prices().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    input: String,
    output: String,
    #[serde(default)]
    cached_input: String,
    /// USD per million cache-creation input tokens; absent or empty = the
    /// input price.
    #[serde(default)]
    cache_write: String,
    /// USD per call; absent or empty = none.
    #[serde(default)]
    per_call: String,
}

async fn price_put(
    State(s): State<AppState>,
    _: Admin,
    Path(model): Path<String>,
    Body(p): Body<PriceBody>,
) -> ApiResult {
    billing::ops::set_price(
        &s.store,
        &model,
        &p.input,
        &p.output,
        &p.cached_input,
        &p.cache_write,
        &p.per_call,
    )
    .await?;
    reload(&s).await?;
    Ok(Json(
        json!({"model": model, "input": p.input, "output": p.output,
        "cached_input": p.cached_input, "cache_write": p.cache_write, "per_call": p.per_call}),
    ))
}

async fn price_delete(State(s): State<AppState>, _: Admin, Path(model): Path<String>) -> ApiResult {
    s.store.delete_price(&model).await?;
    reload(&s).await?;
    Ok(Json(json!({"deleted": model})))
}

async fn fallbacks_list(State(s): State<AppState>, _: Admin) -> ApiResult {
    Ok(Json(
        json!({"data": relay::channels::fallbacks(&s.store).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackBody {
    fallbacks: Vec<String>,
}

/// Sets the models tried, in order, when every channel of `model` fails
/// (an empty list removes the chain).
async fn fallback_put(
    State(s): State<AppState>,
    _: Admin,
    Path(model): Path<String>,
    Body(b): Body<FallbackBody>,
) -> ApiResult {
    relay::channels::set_fallbacks(&s.store, &model, b.fallbacks.clone()).await?;
    reload(&s).await?;
    Ok(Json(json!({"model": model, "fallbacks": b.fallbacks})))
}

async fn groups_list(State(s): State<AppState>, _: Admin) -> ApiResult {
    Ok(Json(json!({"data": s.store.groups().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    ratio: String,
}

async fn group_put(
    State(s): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    Body(b): Body<GroupBody>,
) -> ApiResult {
    billing::ops::set_group_ratio(&s.store, &name, &b.ratio).await?;
    reload(&s).await?;
    Ok(Json(json!({"name": name, "ratio": b.ratio})))
}

// ---- logs, usage, ledger --------------------------------------------------

async fn logs_list(State(s): State<AppState>, _: Admin, Query(f): Query<LogFilter>) -> ApiResult {
    s.relay.flush().await;
    Ok(Json(json!({"data": s.store.logs(&f).await?})))
}

#[derive(Deserialize)]
struct HourlyQuery {
    user_id: Option<i64>,
    since: Option<i64>,
    until: Option<i64>,
}

async fn usage_hourly(
    State(s): State<AppState>,
    Caller(u): Caller,
    Query(q): Query<HourlyQuery>,
) -> ApiResult {
    s.relay.flush().await;
    // users see their own usage; admins anyone's
    let user = if accounts::is_admin(&u.role) {
        q.user_id
    } else {
        Some(u.id)
    };
    let rows = s
        .store
        .hourly_usage(user, q.since.unwrap_or(0), q.until.unwrap_or(i64::MAX))
        .await?;
    Ok(Json(json!({"data": rows})))
}

async fn ledger_check(State(s): State<AppState>, _: Admin) -> ApiResult {
    s.relay.flush().await;
    let r = billing::ops::ledger_check(&s.store).await?;
    Ok(Json(json!({"ok": r.ok(), "report": r})))
}
