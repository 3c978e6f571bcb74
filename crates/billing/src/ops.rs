//! Money operations shared by the CLI and the management API. Each one is a
//! single database transaction with its ledger entry.

use std::collections::{BTreeMap, HashSet};

use storage::{
    CatalogDoc, CatalogEntry, CatalogPrice, LedgerCheckRow, PriceRow, StorageError, Store,
};

use crate::{Price, PriceError};

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Price(#[from] PriceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Invalid(String),
    /// Catalog entries or prices that failed validation, each named.
    #[error("{}", entries_summary(.0))]
    Entries(Vec<EntryError>),
}

fn entries_summary(errors: &[EntryError]) -> String {
    match errors {
        [] => "no invalid entries".into(),
        [one] => format!("invalid catalog document: {one}"),
        [first, rest @ ..] => format!(
            "invalid catalog document: {first} (and {} more)",
            rest.len()
        ),
    }
}

/// Credits (or with a negative amount, debits) a user's balance by
/// `units`, with a ledger entry of `kind` (`topup` or `adjust`).
pub async fn credit(
    store: &Store,
    user_id: i64,
    units: i64,
    kind: &str,
    reference: Option<&str>,
    note: &str,
) -> Result<i64, BillingError> {
    if units == 0 {
        return Err(BillingError::Invalid("the amount cannot be zero".into()));
    }
    if !matches!(kind, "topup" | "adjust" | "refund" | "redeem") {
        return Err(BillingError::Invalid(format!(
            "unknown ledger kind `{kind}`"
        )));
    }
    Ok(store
        .adjust_balance(user_id, units, kind, reference, note)
        .await?)
}

/// Sets a model's price (USD per million tokens, decimal text: input,
/// output, cached input and cache write, the last two empty = the input
/// price) and its optional price per call (USD; empty = none).
pub async fn set_price(
    store: &Store,
    model: &str,
    input: &str,
    output: &str,
    cached_input: &str,
    cache_write: &str,
    per_call: &str,
) -> Result<(), BillingError> {
    let row = PriceRow {
        model: model.to_string(),
        input: input.trim().to_string(),
        output: output.trim().to_string(),
        cached_input: cached_input.trim().to_string(),
        per_call: per_call.trim().to_string(),
        cache_write: cache_write.trim().to_string(),
        updated_at: 0,
    };
    price_of(&row)?;
    store.upsert_price(&row).await?;
    Ok(())
}

/// The billing price of a stored price row; an error names what is wrong.
pub fn price_of(row: &PriceRow) -> Result<Price, BillingError> {
    if row.model.trim().is_empty() {
        return Err(BillingError::Invalid("model cannot be empty".into()));
    }
    Ok(Price::parse(&row.input, &row.output, &row.cached_input)?
        .with_per_call(&row.per_call)?
        .with_cache_write(&row.cache_write)?)
}

pub async fn set_group_ratio(store: &Store, group: &str, ratio: &str) -> Result<(), BillingError> {
    if group.trim().is_empty() {
        return Err(BillingError::Invalid("group cannot be empty".into()));
    }
    crate::parse_decimal(ratio)?;
    store.upsert_group(group, ratio.trim()).await?;
    Ok(())
}

/// Seeds the default price table and the `default` group on first start.
pub async fn seed(store: &Store) -> Result<(), BillingError> {
    let rows: Vec<PriceRow> = crate::seed_prices()
        .iter()
        .map(|(m, i, o, c)| PriceRow {
            model: m.to_string(),
            input: i.to_string(),
            output: o.to_string(),
            cached_input: c.to_string(),
            per_call: crate::seed_per_call()
                .iter()
                .find(|(pm, _)| pm == m)
                .map(|(_, pc)| pc.to_string())
                .unwrap_or_default(),
            cache_write: String::new(),
            updated_at: 0,
        })
        .collect();
    // the catalog first: its prices carry cache-write figures that the
    // built-in list lacks, and each seed only adds prices that are missing
    seed_catalog(store).await?;
    store.seed_prices(&rows).await?;
    if store.groups().await?.is_empty() {
        store.upsert_group("default", "1").await?;
        store.upsert_group("vip", "0.8").await?;
    }
    Ok(())
}

/// The result of `ledger check`.
#[derive(Debug, serde::Serialize)]
pub struct LedgerReport {
    pub users: usize,
    pub inconsistent: Vec<LedgerCheckRow>,
    pub keys_inconsistent: Vec<storage::KeyCheckRow>,
}

impl LedgerReport {
    pub fn ok(&self) -> bool {
        self.inconsistent.is_empty() && self.keys_inconsistent.is_empty()
    }
}

pub async fn ledger_check(store: &Store) -> Result<LedgerReport, BillingError> {
    let rows = store.ledger_check().await?;
    let users = rows.len();
    let inconsistent = rows.into_iter().filter(|r| !r.is_consistent()).collect();
    Ok(LedgerReport {
        users,
        inconsistent,
        keys_inconsistent: store.key_check().await?,
    })
}

// ---- the model catalog ------------------------------------------------------

/// Model types a catalog entry may have.
pub const MODEL_TYPES: [&str; 6] = [
    "chat",
    "embedding",
    "image",
    "audio",
    "rerank",
    "moderation",
];

/// Lifecycle states of a catalog entry.
pub const MODEL_STATUSES: [&str; 4] = ["active", "preview", "deprecated", "retired"];

/// Languages of catalog descriptions; English, the fallback, first.
pub const CATALOG_LANGUAGES: [&str; 5] = ["en", "zh-CN", "ja", "pt-BR", "hi"];

/// The catalog (and the prices) a new installation starts with; the same
/// format as `GET /api/catalog/export`.
pub const SEED_CATALOG: &str = include_str!("../seed/catalog.json");

const MAX_MODEL_ID: usize = 200;
const MAX_DESCRIPTION: usize = 2000;
const MAX_CAPABILITIES: usize = 32;
const MAX_TOKENS: i64 = 100_000_000;

/// What is wrong with one entry of a catalog document.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EntryError {
    /// `models` or `prices`.
    pub section: &'static str,
    /// The entry's position in its list, from 0.
    pub index: usize,
    /// The entry's model id, when it could be read.
    pub model: String,
    pub message: String,
}

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.section, self.index)?;
        if !self.model.is_empty() {
            write!(f, " `{}`", self.model)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The catalog language for a tag written in any case or with `_`
/// (`zh_cn` → `zh-CN`).
pub fn catalog_language(tag: &str) -> Option<&'static str> {
    let t = tag.trim().replace('_', "-");
    CATALOG_LANGUAGES
        .into_iter()
        .find(|l| l.eq_ignore_ascii_case(&t))
}

fn check_model_id(model: &str) -> Result<(), String> {
    if model.is_empty() {
        return Err("model cannot be empty".into());
    }
    if model.chars().count() > MAX_MODEL_ID {
        return Err(format!("model ids have at most {MAX_MODEL_ID} characters"));
    }
    if model.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("model ids contain no spaces or control characters".into());
    }
    Ok(())
}

fn is_name(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

fn check_date(d: &str) -> bool {
    let parts: Vec<&str> = d.split('-').collect();
    let num = |s: &str, len: usize| -> Option<u32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match parts.as_slice() {
        [y, m] => num(y, 4).is_some() && num(m, 2).is_some_and(|m| (1..=12).contains(&m)),
        [y, m, day] => {
            let (Some(y), Some(m), Some(day)) = (num(y, 4), num(m, 2), num(day, 2)) else {
                return false;
            };
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let days = match m {
                1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
                4 | 6 | 9 | 11 => 30,
                2 if leap => 29,
                2 => 28,
                _ => return false,
            };
            (1..=days).contains(&day)
        }
        _ => false,
    }
}

/// Normalises a catalog entry (trimmed text; lower-case provider, type,
/// status and capabilities without repeats; language tags spelled as in
/// [`CATALOG_LANGUAGES`]; empty descriptions dropped) and checks it. The
/// error lists every problem found.
pub fn check_entry(mut e: CatalogEntry) -> Result<CatalogEntry, String> {
    let mut problems = Vec::new();
    e.model = e.model.trim().to_string();
    if let Err(m) = check_model_id(&e.model) {
        problems.push(m);
    }
    e.provider = e.provider.trim().to_ascii_lowercase();
    if !is_name(&e.provider, &['-', '_', '.']) {
        problems.push(
            "provider must be a short lower-case name such as `openai` (letters, digits, - _ .)"
                .into(),
        );
    }
    e.model_type = e.model_type.trim().to_ascii_lowercase();
    if !MODEL_TYPES.contains(&e.model_type.as_str()) {
        problems.push(format!(
            "type `{}` is not one of {}",
            e.model_type,
            MODEL_TYPES.join(", ")
        ));
    }
    e.status = e.status.trim().to_ascii_lowercase();
    if !MODEL_STATUSES.contains(&e.status.as_str()) {
        problems.push(format!(
            "status `{}` is not one of {}",
            e.status,
            MODEL_STATUSES.join(", ")
        ));
    }
    for (name, v) in [
        ("context_window", e.context_window),
        ("max_output", e.max_output),
    ] {
        if !(0..=MAX_TOKENS).contains(&v) {
            problems.push(format!(
                "{name} is a token count from 0 (unknown) to {MAX_TOKENS}"
            ));
        }
    }
    let mut seen = HashSet::new();
    let mut caps = Vec::new();
    for c in &e.capabilities {
        let c = c.trim().to_ascii_lowercase();
        if !is_name(&c, &['_']) {
            problems.push(format!(
                "capability `{c}` must be a lower-case name such as `vision` or `json_mode`"
            ));
        } else if seen.insert(c.clone()) {
            caps.push(c);
        }
    }
    if caps.len() > MAX_CAPABILITIES {
        problems.push(format!("at most {MAX_CAPABILITIES} capabilities"));
    }
    e.capabilities = caps;
    e.release_date = e.release_date.trim().to_string();
    if !e.release_date.is_empty() && !check_date(&e.release_date) {
        problems.push(format!(
            "release_date `{}` is not a date written YYYY-MM-DD or YYYY-MM",
            e.release_date
        ));
    }
    let mut descriptions = BTreeMap::new();
    for (tag, text) in std::mem::take(&mut e.descriptions) {
        let text = text.trim().to_string();
        match catalog_language(&tag) {
            None => problems.push(format!(
                "description language `{tag}` is not one of {}",
                CATALOG_LANGUAGES.join(", ")
            )),
            Some(_) if text.chars().count() > MAX_DESCRIPTION => problems.push(format!(
                "the `{tag}` description is longer than {MAX_DESCRIPTION} characters"
            )),
            Some(_) if text.is_empty() => {}
            Some(lang) => {
                descriptions.insert(lang.to_string(), text);
            }
        }
    }
    if !descriptions.contains_key("en") {
        problems.push("an English description (`en`) is required: it is the fallback".into());
    }
    e.descriptions = descriptions;
    e.updated_at = 0;
    if problems.is_empty() {
        Ok(e)
    } else {
        Err(problems.join("; "))
    }
}

/// Normalises (trims) and checks a price of a catalog document.
pub fn check_price(mut p: CatalogPrice) -> Result<CatalogPrice, String> {
    p.model = p.model.trim().to_string();
    check_model_id(&p.model)?;
    for f in [
        &mut p.input,
        &mut p.output,
        &mut p.cached_input,
        &mut p.cache_write,
        &mut p.per_call,
    ] {
        *f = f.trim().to_string();
    }
    p.updated_at = 0;
    price_of(&PriceRow::from(&p)).map_err(|e| e.to_string())?;
    Ok(p)
}

/// An entry of a document as read: the entry, or (its model id when
/// known, why it could not be read).
pub type ReadEntry<T> = Result<T, (String, String)>;

/// A checked catalog document: what to write, or why not.
#[derive(Debug, Default)]
pub struct ImportPlan {
    pub models: Vec<CatalogEntry>,
    pub prices: Vec<CatalogPrice>,
    pub errors: Vec<EntryError>,
}

/// Checks every entry of a document. Each input is an entry as read
/// (`Err` = it could not be read, with the reason and, when known, the
/// model id); a model listed twice in one section is an error too.
pub fn plan_import(
    models: Vec<ReadEntry<CatalogEntry>>,
    prices: Vec<ReadEntry<CatalogPrice>>,
) -> ImportPlan {
    let mut plan = ImportPlan::default();
    let mut seen = HashSet::new();
    for (index, m) in models.into_iter().enumerate() {
        let err = |model: String, message: String| EntryError {
            section: "models",
            index,
            model,
            message,
        };
        match m {
            Err((model, message)) => plan.errors.push(err(model, message)),
            Ok(e) => {
                let model = e.model.trim().to_string();
                match check_entry(e) {
                    Err(message) => plan.errors.push(err(model, message)),
                    Ok(e) if !seen.insert(e.model.clone()) => plan
                        .errors
                        .push(err(model, "this model is listed twice".into())),
                    Ok(e) => plan.models.push(e),
                }
            }
        }
    }
    let mut seen = HashSet::new();
    for (index, p) in prices.into_iter().enumerate() {
        let err = |model: String, message: String| EntryError {
            section: "prices",
            index,
            model,
            message,
        };
        match p {
            Err((model, message)) => plan.errors.push(err(model, message)),
            Ok(p) => {
                let model = p.model.trim().to_string();
                match check_price(p) {
                    Err(message) => plan.errors.push(err(model, message)),
                    Ok(p) if !seen.insert(p.model.clone()) => plan
                        .errors
                        .push(err(model, "this model's price is listed twice".into())),
                    Ok(p) => plan.prices.push(p),
                }
            }
        }
    }
    plan
}

/// Writes a checked document in one transaction (entries and prices are
/// added or replaced; others are left alone). Refused, writing nothing,
/// when any entry is invalid. Returns (models, prices) written.
pub async fn import_catalog(
    store: &Store,
    plan: ImportPlan,
) -> Result<(usize, usize), BillingError> {
    if !plan.errors.is_empty() {
        return Err(BillingError::Entries(plan.errors));
    }
    store.import_catalog(&plan.models, &plan.prices).await?;
    Ok((plan.models.len(), plan.prices.len()))
}

/// The catalog and every price, as `GET /api/catalog/export` gives them.
pub async fn export_catalog(store: &Store) -> Result<CatalogDoc, BillingError> {
    Ok(CatalogDoc {
        version: 1,
        exported_at: storage::now_ms(),
        models: store.catalog().await?,
        prices: store
            .prices()
            .await?
            .into_iter()
            .map(CatalogPrice::from)
            .collect(),
    })
}

/// The seed document, checked.
pub fn seed_document() -> Result<ImportPlan, BillingError> {
    let doc = CatalogDoc::from_json(SEED_CATALOG)
        .map_err(|e| BillingError::Invalid(format!("the catalog seed is unreadable: {e}")))?;
    let plan = plan_import(
        doc.models.into_iter().map(Ok).collect(),
        doc.prices.into_iter().map(Ok).collect(),
    );
    if plan.errors.is_empty() {
        Ok(plan)
    } else {
        Err(BillingError::Entries(plan.errors))
    }
}

/// Loads the seed catalog when the catalog is empty (first start), with
/// the prices of seeded models that have none yet. Returns whether it did.
pub async fn seed_catalog(store: &Store) -> Result<bool, BillingError> {
    if store.catalog_count().await? > 0 {
        return Ok(false);
    }
    let plan = seed_document()?;
    Ok(store.seed_catalog(&plan.models, &plan.prices).await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn entry(model: &str) -> CatalogEntry {
        CatalogEntry {
            model: model.into(),
            provider: "openai".into(),
            model_type: "chat".into(),
            status: "active".into(),
            descriptions: [("en".to_string(), "A model.".to_string())].into(),
            ..CatalogEntry::default()
        }
    }

    #[test]
    fn every_seed_entry_is_valid_and_described_in_every_language() {
        let plan = seed_document().unwrap();
        assert!(plan.models.len() >= 30, "{} models", plan.models.len());
        for m in &plan.models {
            for lang in CATALOG_LANGUAGES {
                let d = m.descriptions.get(lang).map(String::as_str).unwrap_or("");
                assert!(
                    !d.trim().is_empty(),
                    "`{}` has no description in {lang}",
                    m.model
                );
                if lang != "en" {
                    assert_ne!(
                        d, m.descriptions["en"],
                        "`{}`: the {lang} description is a copy of the English one",
                        m.model
                    );
                }
            }
            assert!(m.release_date.is_empty() || check_date(&m.release_date));
        }
        // a model id with `/` is part of the seed
        assert!(plan.models.iter().any(|m| m.model.contains('/')));
        // every type appears
        for t in MODEL_TYPES {
            assert!(
                plan.models.iter().any(|m| m.model_type == t),
                "no {t} model"
            );
        }
    }

    #[test]
    fn seed_prices_agree_with_the_built_in_price_list() {
        let plan = seed_document().unwrap();
        for p in &plan.prices {
            assert!(
                plan.models.iter().any(|m| m.model == p.model),
                "price for `{}` without a catalog entry",
                p.model
            );
            if let Some((_, i, o, c)) = crate::seed_prices().iter().find(|(m, ..)| *m == p.model) {
                let built_in = Price::parse(i, o, c).unwrap();
                let seeded = price_of(&PriceRow::from(p)).unwrap();
                assert_eq!(
                    (built_in.input, built_in.output, built_in.cached_input),
                    (seeded.input, seeded.output, seeded.cached_input),
                    "{}",
                    p.model
                );
                let per_call = crate::seed_per_call()
                    .iter()
                    .find(|(m, _)| *m == p.model)
                    .map(|(_, c)| *c)
                    .unwrap_or("");
                assert_eq!(p.per_call, per_call, "{}", p.model);
            }
        }
    }

    #[test]
    fn entries_are_normalised_and_checked() {
        let mut e = entry(" a/b ");
        e.provider = "OpenAI".into();
        e.capabilities = vec!["Vision".into(), "tools".into(), "vision".into()];
        e.descriptions.insert("zh_cn".into(), "模型".into());
        e.descriptions.insert("ja".into(), "  ".into());
        e.release_date = "2024-02-29".into();
        let e = check_entry(e).unwrap();
        assert_eq!(e.model, "a/b");
        assert_eq!(e.provider, "openai");
        assert_eq!(e.capabilities, vec!["vision", "tools"]);
        assert_eq!(
            e.descriptions.keys().collect::<Vec<_>>(),
            vec!["en", "zh-CN"]
        );

        let mut bad = entry("has space");
        bad.model_type = "video".into();
        bad.status = "gone".into();
        bad.context_window = -1;
        bad.capabilities = vec!["json mode".into()];
        bad.release_date = "2023-02-29".into();
        bad.descriptions = [("fr".to_string(), "Un modèle".to_string())].into();
        let msg = check_entry(bad).unwrap_err();
        for needle in [
            "spaces",
            "type `video`",
            "status `gone`",
            "context_window",
            "capability `json mode`",
            "release_date",
            "language `fr`",
            "English description",
        ] {
            assert!(msg.contains(needle), "{needle} missing from: {msg}");
        }
        assert!(check_date("2025-12") && !check_date("2025-13") && !check_date("25-01-01"));
    }

    #[test]
    fn import_plans_report_each_bad_entry() {
        let ok_price = CatalogPrice {
            model: "m1".into(),
            input: "1".into(),
            output: "2".into(),
            cache_write: "1.25".into(),
            ..CatalogPrice::default()
        };
        let bad_price = CatalogPrice {
            model: "m2".into(),
            input: "-1".into(),
            output: "2".into(),
            ..CatalogPrice::default()
        };
        let mut no_provider = entry("m3");
        no_provider.provider = String::new();
        let plan = plan_import(
            vec![
                Ok(entry("m1")),
                Ok(no_provider),
                Ok(entry("m1")),
                Err(("m4".into(), "missing field `provider`".into())),
            ],
            vec![Ok(ok_price), Ok(bad_price)],
        );
        assert_eq!(plan.models.len(), 1);
        assert_eq!(plan.prices.len(), 1);
        let got: Vec<(&str, usize, &str)> = plan
            .errors
            .iter()
            .map(|e| (e.section, e.index, e.model.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("models", 1, "m3"),
                ("models", 2, "m1"),
                ("models", 3, "m4"),
                ("prices", 1, "m2")
            ]
        );
        let text = BillingError::Entries(plan.errors).to_string();
        assert!(
            text.starts_with("invalid catalog document: models[1] `m3`"),
            "{text}"
        );
        assert!(text.ends_with("(and 3 more)"), "{text}");
    }
}
