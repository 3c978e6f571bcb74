//! The model catalog: what the gateway tells the public about a model
//! (provider, type, limits, capabilities, descriptions in five languages),
//! and the import/export document that carries the catalog together with
//! the prices.
//!
//! Rules about what a valid entry is live in `billing::ops`; this module
//! stores and reads. An import is one transaction: every entry lands or
//! none does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::records::PriceRow;
use crate::store::conflict;
use crate::{Result, StorageError, Store, now_ms};

/// One model of the catalog.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// The model id clients send (may contain `/`).
    pub model: String,
    /// e.g. `openai`, `anthropic`, `google`, `deepseek`, `qwen`.
    pub provider: String,
    /// chat, embedding, image, audio, rerank or moderation.
    #[serde(rename = "type", default = "default_type")]
    pub model_type: String,
    /// Tokens of context; 0 = unknown.
    #[serde(default)]
    pub context_window: i64,
    /// Most output tokens per request; 0 = unknown.
    #[serde(default)]
    pub max_output: i64,
    /// e.g. `vision`, `tools`, `reasoning`, `json_mode`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `YYYY-MM-DD`, `YYYY-MM` or empty.
    #[serde(default)]
    pub release_date: String,
    /// active, preview, deprecated or retired.
    #[serde(default = "default_status")]
    pub status: String,
    /// Language tag (`en`, `zh-CN`, `ja`, `pt-BR`, `hi`) → text.
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
    /// Epoch ms of the last change; ignored on import.
    #[serde(default)]
    pub updated_at: i64,
}

fn default_type() -> String {
    "chat".into()
}
fn default_status() -> String {
    "active".into()
}

/// A price as the catalog document carries it (decimal text, USD per
/// million tokens; USD per call).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogPrice {
    pub model: String,
    pub input: String,
    pub output: String,
    /// Empty = the input price.
    #[serde(default)]
    pub cached_input: String,
    /// Empty = the input price.
    #[serde(default)]
    pub cache_write: String,
    /// Empty = none.
    #[serde(default)]
    pub per_call: String,
    /// Ignored on import.
    #[serde(default, skip_serializing)]
    pub updated_at: i64,
}

impl From<PriceRow> for CatalogPrice {
    fn from(p: PriceRow) -> CatalogPrice {
        CatalogPrice {
            model: p.model,
            input: p.input,
            output: p.output,
            cached_input: p.cached_input,
            cache_write: p.cache_write,
            per_call: p.per_call,
            updated_at: p.updated_at,
        }
    }
}

impl From<&CatalogPrice> for PriceRow {
    fn from(p: &CatalogPrice) -> PriceRow {
        PriceRow {
            model: p.model.clone(),
            input: p.input.clone(),
            output: p.output.clone(),
            cached_input: p.cached_input.clone(),
            per_call: p.per_call.clone(),
            cache_write: p.cache_write.clone(),
            updated_at: 0,
        }
    }
}

/// The export/import document (and the format of the seed file).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogDoc {
    #[serde(default = "doc_version")]
    pub version: i64,
    /// Epoch ms; informational.
    #[serde(default)]
    pub exported_at: i64,
    #[serde(default)]
    pub models: Vec<CatalogEntry>,
    #[serde(default)]
    pub prices: Vec<CatalogPrice>,
}

fn doc_version() -> i64 {
    1
}

impl CatalogDoc {
    /// Reads a document from JSON text, strictly (unknown fields refused).
    pub fn from_json(text: &str) -> std::result::Result<CatalogDoc, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

const CATALOG_COLS: &str = "model, provider, model_type, context_window, max_output, capabilities, \
     release_date, status, descriptions, updated_at";

fn catalog_row(r: &AnyRow) -> Result<CatalogEntry> {
    let caps: String = r.try_get("capabilities")?;
    let desc: String = r.try_get("descriptions")?;
    Ok(CatalogEntry {
        model: r.try_get("model")?,
        provider: r.try_get("provider")?,
        model_type: r.try_get("model_type")?,
        context_window: r.try_get("context_window")?,
        max_output: r.try_get("max_output")?,
        capabilities: if caps.is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&caps).unwrap_or_default()
        },
        release_date: r.try_get("release_date")?,
        status: r.try_get("status")?,
        descriptions: if desc.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_str(&desc).unwrap_or_default()
        },
        updated_at: r.try_get("updated_at")?,
    })
}

fn caps_text(e: &CatalogEntry) -> String {
    if e.capabilities.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&e.capabilities).unwrap_or_default()
    }
}

fn desc_text(e: &CatalogEntry) -> String {
    if e.descriptions.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&e.descriptions).unwrap_or_default()
    }
}

/// `INSERT INTO model_catalog …` with `on_conflict` appended.
fn insert_sql(on_conflict: &str) -> String {
    format!(
        "INSERT INTO model_catalog ({CATALOG_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) {on_conflict}"
    )
}

const UPSERT: &str = "ON CONFLICT (model) DO UPDATE SET provider = excluded.provider, \
     model_type = excluded.model_type, context_window = excluded.context_window, \
     max_output = excluded.max_output, capabilities = excluded.capabilities, \
     release_date = excluded.release_date, status = excluded.status, \
     descriptions = excluded.descriptions, updated_at = excluded.updated_at";

const PRICE_UPSERT: &str = "INSERT INTO prices (model, input, output, cached_input, per_call, cache_write, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (model) DO UPDATE SET input = excluded.input, \
     output = excluded.output, cached_input = excluded.cached_input, per_call = excluded.per_call, \
     cache_write = excluded.cache_write, updated_at = excluded.updated_at";

const PRICE_INSERT_MISSING: &str = "INSERT INTO prices (model, input, output, cached_input, per_call, cache_write, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (model) DO NOTHING";

fn bind_entry<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    e: &'q CatalogEntry,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(e.model.as_str())
        .bind(e.provider.as_str())
        .bind(e.model_type.as_str())
        .bind(e.context_window)
        .bind(e.max_output)
        .bind(caps_text(e))
        .bind(e.release_date.as_str())
        .bind(e.status.as_str())
        .bind(desc_text(e))
        .bind(now)
}

fn bind_price<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    p: &'q CatalogPrice,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(p.model.as_str())
        .bind(p.input.as_str())
        .bind(p.output.as_str())
        .bind(p.cached_input.as_str())
        .bind(p.per_call.as_str())
        .bind(p.cache_write.as_str())
        .bind(now)
}

impl Store {
    /// Every catalog entry, by model id.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>> {
        let sql = format!("SELECT {CATALOG_COLS} FROM model_catalog ORDER BY model");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(catalog_row).collect()
    }

    pub async fn catalog_entry(&self, model: &str) -> Result<CatalogEntry> {
        let sql = format!("SELECT {CATALOG_COLS} FROM model_catalog WHERE model = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(model)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("catalog entry `{model}`")))?;
        catalog_row(&row)
    }

    pub async fn catalog_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM model_catalog")
            .fetch_one(&self.read)
            .await?
            .try_get("n")?)
    }

    /// Adds an entry; `Conflict` when the model already has one.
    pub async fn create_catalog_entry(&self, e: &CatalogEntry) -> Result<CatalogEntry> {
        let sql = insert_sql("");
        bind_entry(sqlx::query(sqlx::AssertSqlSafe(sql)), e, now_ms())
            .execute(&self.write)
            .await
            .map_err(conflict("a catalog entry for this model"))?;
        self.catalog_entry_fresh(&e.model).await
    }

    /// Adds or replaces an entry.
    pub async fn upsert_catalog_entry(&self, e: &CatalogEntry) -> Result<CatalogEntry> {
        let sql = insert_sql(UPSERT);
        bind_entry(sqlx::query(sqlx::AssertSqlSafe(sql)), e, now_ms())
            .execute(&self.write)
            .await?;
        self.catalog_entry_fresh(&e.model).await
    }

    async fn catalog_entry_fresh(&self, model: &str) -> Result<CatalogEntry> {
        let sql = format!("SELECT {CATALOG_COLS} FROM model_catalog WHERE model = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(model)
            .fetch_optional(&self.write)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("catalog entry `{model}`")))?;
        catalog_row(&row)
    }

    pub async fn delete_catalog_entry(&self, model: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM model_catalog WHERE model = $1")
            .bind(model)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("catalog entry `{model}`")));
        }
        Ok(())
    }

    /// Writes catalog entries and prices (adding or replacing each) in one
    /// transaction: either all of them land or none does. Entries and
    /// prices not in the lists are left alone.
    pub async fn import_catalog(
        &self,
        models: &[CatalogEntry],
        prices: &[CatalogPrice],
    ) -> Result<()> {
        let now = now_ms();
        let entry_sql = insert_sql(UPSERT);
        let mut tx = self.write.begin().await?;
        for e in models {
            bind_entry(sqlx::query(sqlx::AssertSqlSafe(entry_sql.as_str())), e, now)
                .execute(&mut *tx)
                .await?;
        }
        for p in prices {
            bind_price(sqlx::query(PRICE_UPSERT), p, now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// First-start seed: when the catalog is empty, adds `models` and the
    /// `prices` of models that have no price yet (an operator's prices are
    /// kept), in one transaction. Returns whether it seeded.
    pub async fn seed_catalog(
        &self,
        models: &[CatalogEntry],
        prices: &[CatalogPrice],
    ) -> Result<bool> {
        let now = now_ms();
        let entry_sql = insert_sql("ON CONFLICT (model) DO NOTHING");
        let mut tx = self.write.begin().await?;
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM model_catalog")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if n > 0 {
            return Ok(false);
        }
        for e in models {
            bind_entry(sqlx::query(sqlx::AssertSqlSafe(entry_sql.as_str())), e, now)
                .execute(&mut *tx)
                .await?;
        }
        for p in prices {
            bind_price(sqlx::query(PRICE_INSERT_MISSING), p, now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
