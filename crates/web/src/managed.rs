//! Managed mode: root puts a user into it (role `user_root`); the user then
//! keeps their own upstream channels, which serve their own requests first
//! (or only), billed at the platform-fee multiplier. Revoking managed mode
//! disables the user's channels (status 3) without deleting them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use storage::{ChannelPatch, ChannelRow, NewChannel, UserRow};

use crate::AppState;
use crate::api::{Admin, ApiError, Body, Caller};

type ApiResult = Result<Json<Value>, ApiError>;

/// Status of an own channel while its owner is not in managed mode.
const REVOKED: i64 = 3;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users/{id}/managed", post(set_managed))
        .route("/users/{id}/channels", get(owner_channels))
        .route("/self/channels", get(own_list).post(own_create))
        .route(
            "/self/channels/{id}",
            get(own_get).patch(own_patch).delete(own_delete),
        )
}

/// A channel as its owner sees it: the row id (positive), never the keys.
fn own_json(c: &ChannelRow) -> Value {
    json!({
        "id": c.id.abs(), "name": c.name, "kind": c.kind, "base_url": c.base_url,
        "models": c.models, "model_mapping": c.model_mapping, "priority": c.priority,
        "weight": c.weight, "status": c.status, "disabled_reason": c.disabled_reason,
        "keys": c.api_keys.len(), "disabled_keys": c.disabled_keys.len(),
        "proxy_url": c.proxy_url, "timeout_secs": c.timeout_secs,
        "headers": c.headers.keys().collect::<Vec<_>>(), "api_version": c.api_version,
        "native_responses": c.native_responses, "created_at": c.created_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagedBody {
    enabled: bool,
    /// `own_only` or `own_then_shared`.
    route: Option<String>,
    /// Multiplier (decimal) on the price of requests served by own channels.
    platform_fee: Option<Value>,
}

/// Root only: turns managed mode on or off for a user.
async fn set_managed(
    State(s): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<i64>,
    Body(b): Body<ManagedBody>,
) -> ApiResult {
    if me.role != accounts::ROLE_ROOT {
        return Err(ApiError::forbidden("only root can change managed mode"));
    }
    let target = s.store.user_fresh(id).await?;
    if !matches!(
        target.role.as_str(),
        accounts::ROLE_USER | accounts::ROLE_USER_ROOT
    ) {
        return Err(ApiError::bad(
            "managed mode is for users, not administrators",
        ));
    }
    let route = b.route.unwrap_or(target.managed_route.clone());
    if !matches!(route.as_str(), "own_only" | "own_then_shared") {
        return Err(ApiError::bad("route is `own_only` or `own_then_shared`"));
    }
    let fee = match &b.platform_fee {
        None => target.platform_fee.clone(),
        Some(v) => {
            let text = match v {
                Value::String(t) => t.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(ApiError::bad("platform_fee is a decimal, e.g. 0.1")),
            };
            match billing::parse_decimal(&text) {
                Ok(d) if !d.is_sign_negative() => text,
                _ => {
                    return Err(ApiError::bad(
                        "platform_fee is a decimal of 0 or more, e.g. 0.1",
                    ));
                }
            }
        }
    };
    s.store.set_managed_options(id, &route, &fee).await?;
    if b.enabled {
        s.store.set_role(id, accounts::ROLE_USER_ROOT).await?;
        s.store.set_user_channels_status(id, REVOKED, 1).await?;
    } else {
        s.store.set_role(id, accounts::ROLE_USER).await?;
        s.store.set_user_channels_status(id, 1, REVOKED).await?;
        s.store.set_user_channels_status(id, 2, REVOKED).await?;
    }
    s.relay.reload().await.map_err(ApiError::from)?;
    let u = s.store.user_fresh(id).await?;
    Ok(Json(json!({"data": crate::auth::account_json(&u)})))
}

/// Admin: a user's own channels.
async fn owner_channels(State(s): State<AppState>, _: Admin, Path(id): Path<i64>) -> ApiResult {
    s.store.user(id).await?;
    let rows = s.store.user_channels(Some(id)).await?;
    Ok(Json(
        json!({"data": rows.iter().map(own_json).collect::<Vec<_>>()}),
    ))
}

fn managed(u: &UserRow) -> Result<(), ApiError> {
    if u.role == accounts::ROLE_USER_ROOT {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "Own channels are for accounts in managed mode; ask the operator to enable it.",
        ))
    }
}

/// One of the caller's own channels, by its row id.
async fn own(s: &AppState, u: &UserRow, id: i64) -> Result<ChannelRow, ApiError> {
    managed(u)?;
    if id <= 0 {
        return Err(ApiError::not_found(format!("channel {id}")));
    }
    match s.store.channel(-id).await {
        Ok(c) if c.owner_id == u.id => Ok(c),
        // another owner's channel is reported like a missing one
        Ok(_) | Err(storage::StorageError::NotFound(_)) => {
            Err(ApiError::not_found(format!("channel {id}")))
        }
        Err(e) => Err(e.into()),
    }
}

async fn own_list(State(s): State<AppState>, Caller(u): Caller) -> ApiResult {
    managed(&u)?;
    let rows = s.store.user_channels(Some(u.id)).await?;
    Ok(Json(
        json!({"data": rows.iter().map(own_json).collect::<Vec<_>>()}),
    ))
}

async fn own_create(
    State(s): State<AppState>,
    Caller(u): Caller,
    Body(c): Body<NewChannel>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    managed(&u)?;
    let row = relay::channels::add_owned(&s.store, u.id, c, s.accounts.cfg.allow_private_upstreams)
        .await?;
    s.relay.reload().await.map_err(ApiError::from)?;
    Ok((StatusCode::CREATED, Json(json!({"data": own_json(&row)}))))
}

async fn own_get(State(s): State<AppState>, Caller(u): Caller, Path(id): Path<i64>) -> ApiResult {
    let c = own(&s, &u, id).await?;
    Ok(Json(json!({"data": own_json(&c)})))
}

async fn own_patch(
    State(s): State<AppState>,
    Caller(u): Caller,
    Path(id): Path<i64>,
    Body(p): Body<ChannelPatch>,
) -> ApiResult {
    let c = own(&s, &u, id).await?;
    let row =
        relay::channels::update_owned(&s.store, c.id, p, s.accounts.cfg.allow_private_upstreams)
            .await?;
    s.relay.reload().await.map_err(ApiError::from)?;
    Ok(Json(json!({"data": own_json(&row)})))
}

async fn own_delete(
    State(s): State<AppState>,
    Caller(u): Caller,
    Path(id): Path<i64>,
) -> ApiResult {
    let c = own(&s, &u, id).await?;
    s.store.delete_channel(c.id).await?;
    s.relay.reload().await.map_err(ApiError::from)?;
    Ok(Json(json!({"deleted": true})))
}
