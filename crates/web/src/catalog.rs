//! The model catalog under `/api/catalog`: a public listing of models with
//! their prices (after the `default` group's ratio) and metadata, filtered,
//! sorted and described in the caller's language; administrators edit it,
//! export it with the prices, and import it back all at once.

use std::cmp::Ordering;
use std::collections::HashMap;

use accounts::i18n::Locale;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use billing::ops::{CATALOG_LANGUAGES, EntryError, MODEL_TYPES, ReadEntry};
use billing::{Decimal, Price};
use serde_json::{Map, Value, json};
use storage::{CatalogEntry, CatalogPrice};

use crate::AppState;
use crate::api::{Admin, ApiError, Body};

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// Largest import document read, in bytes.
const IMPORT_LIMIT: usize = 16 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/catalog", get(list).post(create))
        .route("/catalog/export", get(export))
        .route("/catalog/import", post(import))
        .route("/catalog/{*model}", get(one).put(replace).delete(remove))
}

// ---- the public listing -----------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sort {
    Name,
    Price,
    Release,
    Context,
}

/// The listing's query: `provider`, `type`, `capability` and `status` may
/// repeat (or hold comma-separated values).
#[derive(Debug)]
struct ListQuery {
    providers: Vec<String>,
    types: Vec<String>,
    capabilities: Vec<String>,
    statuses: Vec<String>,
    max_input: Option<Decimal>,
    max_output: Option<Decimal>,
    q: Option<String>,
    lang: Option<String>,
    sort: Sort,
    descending: Option<bool>,
    available: Option<bool>,
}

fn values(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

fn parse_list_query(pairs: Vec<(String, String)>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        providers: Vec::new(),
        types: Vec::new(),
        capabilities: Vec::new(),
        statuses: Vec::new(),
        max_input: None,
        max_output: None,
        q: None,
        lang: None,
        sort: Sort::Name,
        descending: None,
        available: None,
    };
    let price = |name: &str, v: &str| {
        billing::parse_decimal(v).map_err(|e| ApiError::bad(format!("{name}: {e}")))
    };
    for (k, v) in pairs {
        match k.as_str() {
            "provider" => q.providers.extend(values(&v)),
            "type" => {
                for t in values(&v) {
                    if !MODEL_TYPES.contains(&t.as_str()) {
                        return Err(ApiError::bad(format!(
                            "type `{t}` is not one of {}",
                            MODEL_TYPES.join(", ")
                        )));
                    }
                    q.types.push(t);
                }
            }
            "capability" => q.capabilities.extend(values(&v)),
            "status" => q.statuses.extend(values(&v)),
            "max_input_price" => q.max_input = Some(price(&k, &v)?),
            "max_output_price" => q.max_output = Some(price(&k, &v)?),
            "q" => q.q = Some(v.trim().to_lowercase()).filter(|s| !s.is_empty()),
            "lang" => q.lang = Some(v),
            "sort" => {
                q.sort = match v.trim() {
                    "name" => Sort::Name,
                    "price" => Sort::Price,
                    "release" => Sort::Release,
                    "context" => Sort::Context,
                    other => {
                        return Err(ApiError::bad(format!(
                            "sort `{other}` is not one of price, name, release, context"
                        )));
                    }
                }
            }
            "order" => {
                q.descending = match v.trim() {
                    "asc" => Some(false),
                    "desc" => Some(true),
                    _ => return Err(ApiError::bad("order is `asc` or `desc`")),
                }
            }
            "available" => {
                q.available = match v.trim() {
                    "true" | "1" => Some(true),
                    "false" | "0" => Some(false),
                    _ => return Err(ApiError::bad("available is `true` or `false`")),
                }
            }
            other => {
                return Err(ApiError::bad(format!(
                    "unknown parameter `{other}`: use provider, type, capability, status, \
                     max_input_price, max_output_price, q, lang, sort, order, available"
                )));
            }
        }
    }
    Ok(q)
}

/// The description language: `lang` when given (English for a language
/// without descriptions), else the best match of `Accept-Language`.
fn choose_lang(lang: Option<&str>, headers: &HeaderMap) -> &'static str {
    match lang {
        Some(l) => billing::ops::catalog_language(l)
            .or_else(|| Locale::from_tag(l).map(Locale::tag))
            .unwrap_or("en"),
        None => headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| Locale::negotiate(v).tag())
            .unwrap_or("en"),
    }
}

/// The ratio of the `default` group (1 when unset or unreadable).
async fn default_ratio(s: &AppState) -> Result<Decimal, ApiError> {
    Ok(s.store
        .groups()
        .await?
        .into_iter()
        .find(|g| g.name == "default")
        .and_then(|g| billing::parse_decimal(&g.ratio).ok())
        .unwrap_or(Decimal::ONE))
}

/// Every readable price, by model.
async fn prices(s: &AppState) -> Result<HashMap<String, Price>, ApiError> {
    Ok(s.store
        .prices()
        .await?
        .into_iter()
        .filter_map(|row| {
            billing::ops::price_of(&row)
                .ok()
                .map(|p| (row.model.clone(), p))
        })
        .collect())
}

fn decimal_text(d: Decimal) -> String {
    d.normalize().to_string()
}

fn price_json(p: &Price, ratio: Decimal) -> Value {
    let f = |d: Decimal| decimal_text(d * ratio);
    json!({
        "input": f(p.input),
        "output": f(p.output),
        "cached_input": f(p.cached_input),
        "cache_write": f(p.cache_write),
        "per_call": p.per_call.map(f),
        "currency": "USD",
        "unit": "per million tokens; per_call per request",
    })
}

/// A catalog entry as the public sees it.
fn entry_json(
    e: &CatalogEntry,
    lang: &str,
    price: Option<&Price>,
    ratio: Decimal,
    available: bool,
    all_descriptions: bool,
) -> Value {
    let (description, description_lang) = match e.descriptions.get(lang) {
        Some(d) => (d.as_str(), lang),
        None => (
            e.descriptions.get("en").map(String::as_str).unwrap_or(""),
            "en",
        ),
    };
    let mut v = json!({
        "model": e.model,
        "provider": e.provider,
        "type": e.model_type,
        "context_window": e.context_window,
        "max_output": e.max_output,
        "capabilities": e.capabilities,
        "release_date": e.release_date,
        "status": e.status,
        "description": description,
        "description_lang": description_lang,
        "available": available,
        "price": price.map(|p| price_json(p, ratio)),
    });
    if all_descriptions && let Some(o) = v.as_object_mut() {
        o.insert("descriptions".into(), json!(e.descriptions));
    }
    v
}

fn matches(e: &CatalogEntry, q: &ListQuery, price: Option<&Price>, ratio: Decimal) -> bool {
    if !q.providers.is_empty() && !q.providers.contains(&e.provider.to_ascii_lowercase()) {
        return false;
    }
    if !q.types.is_empty() && !q.types.contains(&e.model_type) {
        return false;
    }
    if !q.statuses.is_empty() && !q.statuses.contains(&e.status) {
        return false;
    }
    if !q.capabilities.iter().all(|c| {
        e.capabilities
            .iter()
            .any(|have| have.eq_ignore_ascii_case(c))
    }) {
        return false;
    }
    let within = |bound: Option<Decimal>, pick: fn(&Price) -> Decimal| match bound {
        None => true,
        Some(max) => price.is_some_and(|p| pick(p) * ratio <= max),
    };
    if !within(q.max_input, |p| p.input) || !within(q.max_output, |p| p.output) {
        return false;
    }
    if let Some(needle) = &q.q {
        let hit = e.model.to_lowercase().contains(needle.as_str())
            || e.provider.to_lowercase().contains(needle.as_str())
            || e.descriptions
                .values()
                .any(|d| d.to_lowercase().contains(needle.as_str()));
        if !hit {
            return false;
        }
    }
    true
}

/// Orders two optional keys: present ones first (ascending or descending),
/// missing ones last either way.
fn by_key<T: Ord>(a: Option<T>, b: Option<T>, descending: bool) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) if descending => b.cmp(&a),
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Models whose route table has at least one usable channel.
fn available_models(s: &AppState) -> std::collections::HashSet<String> {
    let snap = s.relay.snapshot();
    snap.routes
        .values()
        .flat_map(|models| models.keys().cloned())
        .collect()
}

async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let q = parse_list_query(pairs)?;
    let lang = choose_lang(q.lang.as_deref(), &headers);
    let ratio = default_ratio(&s).await?;
    let prices = prices(&s).await?;
    let available = available_models(&s);
    let mut rows: Vec<(CatalogEntry, Option<&Price>, bool)> = s
        .store
        .catalog()
        .await?
        .into_iter()
        .map(|e| {
            let p = prices.get(&e.model);
            let a = available.contains(&e.model);
            (e, p, a)
        })
        .filter(|(e, p, a)| matches(e, &q, *p, ratio) && q.available.is_none_or(|want| want == *a))
        .collect();
    let name = |e: &CatalogEntry| e.model.to_lowercase();
    rows.sort_by(|(a, pa, _), (b, pb, _)| {
        let primary = match q.sort {
            Sort::Name => by_key(Some(name(a)), Some(name(b)), q.descending == Some(true)),
            Sort::Price => by_key(
                pa.map(|p| (p.input, p.output)),
                pb.map(|p| (p.input, p.output)),
                q.descending == Some(true),
            ),
            Sort::Release => by_key(
                Some(a.release_date.as_str()).filter(|d| !d.is_empty()),
                Some(b.release_date.as_str()).filter(|d| !d.is_empty()),
                q.descending != Some(false),
            ),
            Sort::Context => by_key(
                Some(a.context_window).filter(|c| *c > 0),
                Some(b.context_window).filter(|c| *c > 0),
                q.descending != Some(false),
            ),
        };
        primary.then_with(|| name(a).cmp(&name(b)))
    });
    let data: Vec<Value> = rows
        .iter()
        .map(|(e, p, a)| entry_json(e, lang, *p, ratio, *a, false))
        .collect();
    Ok(Json(json!({
        "lang": lang,
        "group": "default",
        "group_ratio": decimal_text(ratio),
        "count": data.len(),
        "data": data,
    })))
}

#[derive(serde::Deserialize)]
struct OneQuery {
    lang: Option<String>,
}

async fn one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
    Query(q): Query<OneQuery>,
) -> ApiResult {
    let lang = choose_lang(q.lang.as_deref(), &headers);
    let e = s.store.catalog_entry(&model).await?;
    let ratio = default_ratio(&s).await?;
    let prices = prices(&s).await?;
    let available = available_models(&s).contains(&e.model);
    Ok(Json(json!({
        "lang": lang,
        "data": entry_json(&e, lang, prices.get(&e.model), ratio, available, true),
    })))
}

// ---- administration -----------------------------------------------------------

async fn create(State(s): State<AppState>, _: Admin, Body(e): Body<CatalogEntry>) -> ApiResult {
    let e = billing::ops::check_entry(e).map_err(ApiError::bad)?;
    let row = s.store.create_catalog_entry(&e).await?;
    Ok(Json(json!({"data": row})))
}

/// Adds or replaces the entry of the model in the path; the body is an
/// entry whose `model`, if present, must be the same.
async fn replace(
    State(s): State<AppState>,
    _: Admin,
    Path(model): Path<String>,
    Body(mut body): Body<Map<String, Value>>,
) -> ApiResult {
    match body.get("model") {
        None => {
            body.insert("model".into(), Value::String(model.clone()));
        }
        Some(Value::String(m)) if *m == model => {}
        Some(_) => {
            return Err(ApiError::bad(
                "the body's `model` differs from the one in the path",
            ));
        }
    }
    let e: CatalogEntry = serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::bad(format!("invalid catalog entry: {e}")))?;
    let e = billing::ops::check_entry(e).map_err(ApiError::bad)?;
    let row = s.store.upsert_catalog_entry(&e).await?;
    Ok(Json(json!({"data": row})))
}

async fn remove(State(s): State<AppState>, _: Admin, Path(model): Path<String>) -> ApiResult {
    s.store.delete_catalog_entry(&model).await?;
    Ok(Json(json!({"deleted": model})))
}

async fn export(State(s): State<AppState>, _: Admin) -> ApiResult {
    let doc = billing::ops::export_catalog(&s.store).await?;
    Ok(Json(serde_json::to_value(doc).unwrap_or(Value::Null)))
}

/// Reads one list of the document, entry by entry, so that each unreadable
/// entry is reported with its position.
fn read_entries<T: serde::de::DeserializeOwned>(
    doc: &Map<String, Value>,
    key: &str,
) -> Result<Vec<ReadEntry<T>>, ApiError> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .map(|v| {
                serde_json::from_value::<T>(v.clone()).map_err(|e| {
                    let model = v
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    (model, e.to_string())
                })
            })
            .collect()),
        Some(_) => Err(ApiError::bad(format!("`{key}` must be a list"))),
    }
}

fn invalid_document(errors: Vec<EntryError>) -> Response {
    let id = crate::request_id();
    let message = billing::ops::BillingError::Entries(errors.clone()).to_string();
    let mut r = (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": {"message": message, "code": "invalid_catalog", "request_id": id},
            "errors": errors,
        })),
    )
        .into_response();
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

/// Imports a document in the export format. Every entry is checked first;
/// with any error nothing is written and each bad entry is reported.
async fn import(
    State(s): State<AppState>,
    _: Admin,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), IMPORT_LIMIT)
        .await
        .map_err(|_| ApiError::bad("the document is unreadable or larger than 16 MiB"))?;
    let doc: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("invalid JSON document: {e}")))?;
    for key in doc.keys() {
        if !matches!(
            key.as_str(),
            "version" | "exported_at" | "models" | "prices"
        ) {
            return Err(ApiError::bad(format!(
                "unknown field `{key}`: a catalog document has version, exported_at, models and prices"
            )));
        }
    }
    if let Some(v) = doc.get("version")
        && v.as_i64() != Some(1)
    {
        return Err(ApiError::bad("only version 1 documents can be imported"));
    }
    let models = read_entries::<CatalogEntry>(&doc, "models")?;
    let prices = read_entries::<CatalogPrice>(&doc, "prices")?;
    let plan = billing::ops::plan_import(models, prices);
    if !plan.errors.is_empty() {
        return Ok(invalid_document(plan.errors));
    }
    let (models, prices) = match billing::ops::import_catalog(&s.store, plan).await {
        Ok(n) => n,
        Err(billing::ops::BillingError::Entries(errors)) => return Ok(invalid_document(errors)),
        Err(e) => return Err(e.into()),
    };
    s.relay.reload().await?;
    Ok(Json(json!({
        "imported": {"models": models, "prices": prices},
        "languages": CATALOG_LANGUAGES,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_queries_are_read_and_checked() {
        let q = parse_list_query(pairs(&[
            ("provider", "OpenAI,anthropic"),
            ("capability", "vision"),
            ("capability", "tools"),
            ("max_input_price", "2.5"),
            ("sort", "price"),
            ("order", "desc"),
        ]))
        .ok()
        .unwrap();
        assert_eq!(q.providers, vec!["openai", "anthropic"]);
        assert_eq!(q.capabilities, vec!["vision", "tools"]);
        assert_eq!(q.max_input, Some(Decimal::new(25, 1)));
        assert_eq!(q.sort, Sort::Price);
        assert_eq!(q.descending, Some(true));
        for bad in [
            ("type", "video"),
            ("sort", "size"),
            ("max_output_price", "-1"),
            ("capabilities", "vision"),
        ] {
            assert!(parse_list_query(pairs(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_language_comes_from_lang_then_accept_language() {
        let mut h = HeaderMap::new();
        assert_eq!(choose_lang(None, &h), "en");
        h.insert(
            header::ACCEPT_LANGUAGE,
            "fr-CH, fr;q=0.9, ja;q=0.8".parse().unwrap(),
        );
        assert_eq!(choose_lang(None, &h), "ja");
        assert_eq!(choose_lang(Some("pt-br"), &h), "pt-BR");
        assert_eq!(choose_lang(Some("zh"), &h), "zh-CN");
        assert_eq!(choose_lang(Some("fr"), &h), "en");
    }

    #[test]
    fn missing_keys_sort_last_both_ways() {
        assert_eq!(by_key(Some(1), None, false), Ordering::Less);
        assert_eq!(by_key(Some(1), None, true), Ordering::Less);
        assert_eq!(by_key(Some(1), Some(2), true), Ordering::Greater);
        assert_eq!(by_key::<i32>(None, None, true), Ordering::Equal);
    }
}
