//! Prices and the model catalog: the cache-write price from the API and the
//! CLI to the exact cost, the seeded catalog, the public listing's filters,
//! sorting and languages, administration (admins only), and import/export
//! as one all-or-nothing transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::{Value, json};
use test_support::{TestApp, TestDb, backends};

// ---- helpers ------------------------------------------------------------------

/// A request with an optional bearer token and extra headers.
async fn call(
    t: &TestApp,
    method: &str,
    path: &str,
    bearer: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = t.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        t.url(path),
    );
    if !bearer.is_empty() {
        r = r.bearer_auth(bearer);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// An anonymous GET that must succeed.
async fn public(t: &TestApp, path: &str, headers: &[(&str, &str)]) -> Value {
    let (st, v) = call(t, "GET", path, "", headers, None).await;
    assert_eq!(st, 200, "GET {path}: {v}");
    v
}

async fn sign_in(t: &TestApp, username: &str) -> String {
    let (st, v) = t
        .post_json(
            "/api/auth/login",
            "",
            &json!({"username": username, "password": "password123"}),
        )
        .await;
    assert_eq!(st, 200, "sign-in of {username}: {v}");
    v["token"].as_str().unwrap().to_string()
}

fn models_of(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap().to_string())
        .collect()
}

fn seed() -> billing::ops::ImportPlan {
    billing::ops::seed_document().unwrap()
}

fn seed_description(model: &str, lang: &str) -> String {
    seed()
        .models
        .into_iter()
        .find(|m| m.model == model)
        .unwrap()
        .descriptions[lang]
        .clone()
}

fn dec(s: &str) -> billing::Decimal {
    billing::parse_decimal(s).unwrap()
}

/// A catalog document as comparable data: entries and prices by model,
/// defaults filled in, timestamps dropped.
type Normalized = (
    BTreeMap<String, storage::CatalogEntry>,
    BTreeMap<String, storage::CatalogPrice>,
);

fn stripped(doc: Value) -> Normalized {
    let doc: storage::CatalogDoc = serde_json::from_value(doc).unwrap();
    let models = doc
        .models
        .into_iter()
        .map(|mut m| {
            m.updated_at = 0;
            (m.model.clone(), m)
        })
        .collect();
    let prices = doc
        .prices
        .into_iter()
        .map(|mut p| {
            p.updated_at = 0;
            (p.model.clone(), p)
        })
        .collect();
    (models, prices)
}

// ---- prices -------------------------------------------------------------------

#[tokio::test]
async fn cache_write_price_is_set_listed_and_billed_exactly() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        let v = t
            .admin(
                "PUT",
                "/api/prices/claude-cw-test",
                Some(json!({"input": "3", "output": "15", "cached_input": "0.3", "cache_write": "3.75"})),
            )
            .await;
        assert_eq!(v["cache_write"], "3.75", "{v}");
        let prices = t.admin("GET", "/api/prices", None).await;
        let row = prices["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["model"] == "claude-cw-test")
            .unwrap()
            .clone();
        assert_eq!(row["cache_write"], "3.75", "{row}");
        // the relay's in-memory price carries it
        let price = t.app.relay.snapshot().prices["claude-cw-test"].clone();
        assert_eq!(price.cache_write, dec("3.75"));
        // 100 uncached + 1000 read + 2000 written, 50 out:
        // 100×3 + 1000×0.3 + 2000×3.75 + 50×15 = 300 + 300 + 7500 + 750 units
        let usage = billing::Usage {
            prompt: 3100,
            completion: 50,
            cached: 1000,
            cache_write: 2000,
        };
        assert_eq!(
            billing::cost_units(&price, billing::Decimal::ONE, usage),
            8850
        );
        // one written token at the vip ratio: 3.75 × 0.8 = 3 units, rounded once
        let one = billing::Usage {
            prompt: 7,
            cache_write: 7,
            ..Default::default()
        };
        // 7 × 3.75 = 26.25 → 26; × 0.8 = 21.0 → 21
        assert_eq!(billing::cost_units(&price, billing::Decimal::ONE, one), 26);
        assert_eq!(billing::cost_units(&price, dec("0.8"), one), 21);
        // an empty cache-write price is the input price
        t.admin(
            "PUT",
            "/api/prices/claude-cw-test",
            Some(json!({"input": "3", "output": "15"})),
        )
        .await;
        let price = t.app.relay.snapshot().prices["claude-cw-test"].clone();
        assert_eq!(price.cache_write, dec("3"));
        let (st, v) = t
            .admin_raw(
                "PUT",
                "/api/prices/claude-cw-test",
                Some(json!({"input": "3", "output": "15", "cache_write": "-1"})),
            )
            .await;
        assert_eq!(st, 400, "{v}");
        // the seed gives Anthropic models their cache-write price
        let seeded = prices["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["model"] == "claude-sonnet-4-5")
            .unwrap()
            .clone();
        assert_eq!(
            (&seeded["input"], &seeded["cache_write"]),
            (&json!("3"), &json!("3.75"))
        );
        t.finish().await;
    }
}

#[tokio::test]
async fn cli_sets_the_cache_write_price() {
    for b in backends() {
        let db = TestDb::new(b).await;
        let run = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_gpt-api-proxy"))
                .args(args)
                .env("GAP__DATABASE__URL", &db.url)
                .env_remove("DATABASE_URL")
                .env_remove("GAP_CONFIG")
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        };
        let (code, out) = run(&[
            "price",
            "set",
            "claude-cli-test",
            "--input",
            "1",
            "--output",
            "5",
            "--cached",
            "0.1",
            "--cache-write",
            "1.25",
        ]);
        assert_eq!(code, 0, "{out}");
        let (code, out) = run(&["price", "list"]);
        assert_eq!(code, 0, "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("claude-cli-test"))
            .unwrap();
        assert!(line.contains("cache write 1.25"), "{line}");
        let (code, out) = run(&[
            "price",
            "set",
            "claude-cli-test",
            "--input",
            "1",
            "--output",
            "5",
            "--cache-write",
            "abc",
        ]);
        assert_ne!(code, 0, "{out}");
        let store = storage::Store::connect(&db.url).await.unwrap();
        let row = store
            .prices()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.model == "claude-cli-test")
            .unwrap();
        assert_eq!(
            (row.cached_input.as_str(), row.cache_write.as_str()),
            ("0.1", "1.25")
        );
        store.close().await;
        db.cleanup().await;
    }
}

// ---- the public catalog -----------------------------------------------------------

#[tokio::test]
async fn the_seeded_catalog_is_public_with_prices_after_the_default_ratio() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        let seed = seed();
        let v = public(&t, "/api/catalog", &[]).await;
        assert_eq!(v["count"], seed.models.len(), "{}", v["count"]);
        assert_eq!(v["lang"], "en");
        let listed: BTreeSet<String> = models_of(&v).into_iter().collect();
        let seeded: BTreeSet<String> = seed.models.iter().map(|m| m.model.clone()).collect();
        assert_eq!(listed, seeded);
        let gpt4o = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "gpt-4o")
            .unwrap()
            .clone();
        assert_eq!(gpt4o["provider"], "openai");
        assert_eq!(gpt4o["type"], "chat");
        assert_eq!(gpt4o["context_window"], 128000);
        assert_eq!(gpt4o["price"]["input"], "2.5");
        assert_eq!(gpt4o["price"]["output"], "10");
        assert_eq!(gpt4o["price"]["cached_input"], "1.25");
        assert_eq!(gpt4o["available"], false);
        // models the seed leaves unpriced are listed without a price
        let glm = public(&t, "/api/catalog/glm-4.5", &[]).await;
        assert_eq!(glm["data"]["price"], Value::Null, "{glm}");
        // prices follow the `default` group's ratio
        t.admin("PUT", "/api/groups/default", Some(json!({"ratio": "0.5"})))
            .await;
        t.add_mock_channel("mock", &["gpt-4o"], 0).await;
        let v = public(&t, "/api/catalog/gpt-4o", &[]).await;
        assert_eq!(v["data"]["price"]["input"], "1.25", "{v}");
        assert_eq!(v["data"]["price"]["output"], "5");
        assert_eq!(v["data"]["price"]["cache_write"], "1.25");
        assert_eq!(v["data"]["available"], true);
        let v = public(&t, "/api/catalog?available=true", &[]).await;
        assert_eq!(models_of(&v), vec!["gpt-4o"]);
        // a restart does not seed again over the operator's changes
        t.admin("DELETE", "/api/catalog/gpt-4o", None).await;
        billing::ops::seed(&t.app.store).await.unwrap();
        let (st, _) = call(&t, "GET", "/api/catalog/gpt-4o", "", &[], None).await;
        assert_eq!(st, 404);
        t.finish().await;
    }
}

#[tokio::test]
async fn catalog_filters_sorting_and_languages() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        let get = |path: &'static str| public(&t, path, &[]);

        let v = get("/api/catalog?provider=anthropic").await;
        assert!(v["count"].as_u64().unwrap() >= 3);
        assert!(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["provider"] == "anthropic")
        );
        let v = get("/api/catalog?provider=anthropic&provider=deepseek").await;
        let providers: BTreeSet<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["provider"].as_str().unwrap())
            .collect();
        assert_eq!(providers, BTreeSet::from(["anthropic", "deepseek"]));

        let v = get("/api/catalog?type=embedding").await;
        let models = models_of(&v);
        assert!(
            models.contains(&"text-embedding-3-small".to_string()),
            "{models:?}"
        );
        assert!(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["type"] == "embedding")
        );
        let v = get("/api/catalog?type=rerank").await;
        assert_eq!(models_of(&v), vec!["rerank-v3.5"]);

        let v = get("/api/catalog?capability=vision&capability=reasoning").await;
        let models = models_of(&v);
        assert!(models.contains(&"o3".to_string()) && !models.contains(&"gpt-4o".to_string()));
        for m in v["data"].as_array().unwrap() {
            let caps = m["capabilities"].as_array().unwrap();
            assert!(
                caps.contains(&json!("vision")) && caps.contains(&json!("reasoning")),
                "{m}"
            );
        }

        let v = get("/api/catalog?max_input_price=0.2&max_output_price=0.6").await;
        let models = models_of(&v);
        assert!(models.contains(&"gpt-4o-mini".to_string()), "{models:?}");
        assert!(!models.contains(&"gpt-4o".to_string()));
        assert!(
            !models.contains(&"glm-4.5".to_string()),
            "unpriced models fail a bound"
        );
        for m in v["data"].as_array().unwrap() {
            assert!(
                dec(m["price"]["input"].as_str().unwrap()) <= dec("0.2"),
                "{m}"
            );
            assert!(
                dec(m["price"]["output"].as_str().unwrap()) <= dec("0.6"),
                "{m}"
            );
        }

        let v = get("/api/catalog?q=EMBEDDING&type=embedding&provider=google").await;
        assert_eq!(models_of(&v), vec!["gemini-embedding-001"]);
        // search reaches the descriptions in every language
        let v = get("/api/catalog?q=%E5%90%91%E9%87%8F%E6%A8%A1%E5%9E%8B").await; // 向量模型
        assert!(models_of(&v).contains(&"text-embedding-3-large".to_string()));

        // sorting
        let v = get("/api/catalog?sort=price").await;
        let inputs: Vec<Option<billing::Decimal>> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["price"]["input"].as_str().map(dec))
            .collect();
        let priced = inputs.iter().take_while(|p| p.is_some()).count();
        assert!(priced > 10 && inputs[priced..].iter().all(Option::is_none));
        assert!(
            inputs[..priced].windows(2).all(|w| w[0] <= w[1]),
            "{inputs:?}"
        );
        let v = get("/api/catalog?sort=context").await;
        let ctx: Vec<i64> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["context_window"].as_i64().unwrap())
            .filter(|c| *c > 0)
            .collect();
        assert!(ctx.windows(2).all(|w| w[0] >= w[1]), "{ctx:?}");
        let v = get("/api/catalog?sort=release").await;
        let dates: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["release_date"].as_str().unwrap().to_string())
            .filter(|d| !d.is_empty())
            .collect();
        assert!(dates.windows(2).all(|w| w[0] >= w[1]), "{dates:?}");
        let v = get("/api/catalog?sort=name&order=desc").await;
        let names = models_of(&v);
        assert!(
            names
                .windows(2)
                .all(|w| w[0].to_lowercase() >= w[1].to_lowercase())
        );
        let (st, _) = call(&t, "GET", "/api/catalog?sort=size", "", &[], None).await;
        assert_eq!(st, 400);

        // languages: lang, then Accept-Language, then English
        let v = get("/api/catalog/gpt-4o?lang=ja").await;
        assert_eq!(v["data"]["description"], seed_description("gpt-4o", "ja"));
        assert_eq!(v["data"]["description_lang"], "ja");
        assert_eq!(v["data"]["descriptions"].as_object().unwrap().len(), 5);
        let v = public(
            &t,
            "/api/catalog?provider=deepseek",
            &[("accept-language", "pt-BR,pt;q=0.9,en;q=0.5")],
        )
        .await;
        assert_eq!(v["lang"], "pt-BR");
        let chat = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "deepseek-chat")
            .unwrap()
            .clone();
        assert_eq!(
            chat["description"],
            seed_description("deepseek-chat", "pt-BR")
        );
        let v = public(
            &t,
            "/api/catalog/deepseek-chat?lang=hi",
            &[("accept-language", "ja")],
        )
        .await;
        assert_eq!(
            v["data"]["description"],
            seed_description("deepseek-chat", "hi")
        );
        let v = get("/api/catalog/deepseek-chat?lang=zh-CN").await;
        assert_eq!(
            v["data"]["description"],
            seed_description("deepseek-chat", "zh-CN")
        );
        // an entry described only in English falls back to it
        t.admin(
            "PUT",
            "/api/catalog/acme/tiny-1",
            Some(json!({"provider": "acme", "type": "chat", "descriptions": {"en": "Tiny test model."}})),
        )
        .await;
        let v = get("/api/catalog/acme/tiny-1?lang=hi").await;
        assert_eq!(v["data"]["description"], "Tiny test model.");
        assert_eq!(v["data"]["description_lang"], "en");
        assert_eq!(v["lang"], "hi");

        // model ids with `/`
        let v = get("/api/catalog/meta-llama/llama-3.3-70b-instruct").await;
        assert_eq!(v["data"]["model"], "meta-llama/llama-3.3-70b-instruct");
        assert_eq!(v["data"]["provider"], "meta");
        let (st, _) = call(&t, "GET", "/api/catalog/no/such/model", "", &[], None).await;
        assert_eq!(st, 404);
        t.finish().await;
    }
}

// ---- administration -----------------------------------------------------------------

#[tokio::test]
async fn catalog_administration_is_for_admins_and_reading_for_everyone() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        t.user_with_key("mallory", "1").await;
        let user = sign_in(&t, "mallory").await;
        let entry = json!({"model": "acme/new-1", "provider": "acme", "type": "chat",
            "capabilities": ["tools"], "descriptions": {"en": "New."}});
        for (method, path, body) in [
            ("POST", "/api/catalog", Some(entry.clone())),
            ("PUT", "/api/catalog/acme/new-1", Some(entry.clone())),
            ("DELETE", "/api/catalog/gpt-4o", None),
            ("GET", "/api/catalog/export", None),
            ("POST", "/api/catalog/import", Some(json!({"models": []}))),
        ] {
            let (st, v) = call(&t, method, path, &user, &[], body.clone()).await;
            assert_eq!(st, 403, "{method} {path} as a user: {v}");
            let (st, v) = call(&t, method, path, "", &[], body).await;
            assert_eq!(st, 401, "{method} {path} anonymously: {v}");
        }
        // reading is public, signed in or not
        for bearer in ["", user.as_str()] {
            let (st, _) = call(&t, "GET", "/api/catalog", bearer, &[], None).await;
            assert_eq!(st, 200);
            let (st, _) = call(&t, "GET", "/api/catalog/gpt-4o", bearer, &[], None).await;
            assert_eq!(st, 200);
        }

        // create, conflict, replace, delete
        let v = t.admin("POST", "/api/catalog", Some(entry.clone())).await;
        assert_eq!(v["data"]["model"], "acme/new-1");
        let (st, _) = t
            .admin_raw("POST", "/api/catalog", Some(entry.clone()))
            .await;
        assert_eq!(st, 409);
        let v = t
            .admin(
                "PUT",
                "/api/catalog/acme/new-1",
                Some(json!({"provider": "ACME", "type": "embedding", "context_window": 8192,
                    "release_date": "2025-06", "descriptions": {"en": "Changed.", "ja": "変更済み。"}})),
            )
            .await;
        assert_eq!(v["data"]["provider"], "acme");
        let v = public(&t, "/api/catalog/acme/new-1?lang=ja", &[]).await;
        assert_eq!(v["data"]["type"], "embedding");
        assert_eq!(v["data"]["description"], "変更済み。");
        assert_eq!(v["data"]["release_date"], "2025-06");
        for (body, why) in [
            (
                json!({"provider": "acme", "type": "video", "descriptions": {"en": "x"}}),
                "type",
            ),
            (
                json!({"provider": "acme", "descriptions": {"fr": "x"}}),
                "language",
            ),
            (
                json!({"provider": "acme", "descriptions": {"en": "x"}, "release_date": "2025-02-30"}),
                "date",
            ),
            (
                json!({"provider": "acme", "model": "other", "descriptions": {"en": "x"}}),
                "model",
            ),
            (
                json!({"provider": "acme", "descriptions": {"en": "x"}, "colour": "red"}),
                "field",
            ),
        ] {
            let (st, v) = t
                .admin_raw("PUT", "/api/catalog/acme/new-1", Some(body))
                .await;
            assert_eq!(st, 400, "{why}: {v}");
        }
        t.admin("DELETE", "/api/catalog/acme/new-1", None).await;
        let (st, _) = call(&t, "GET", "/api/catalog/acme/new-1", "", &[], None).await;
        assert_eq!(st, 404);
        let (st, _) = t.admin_raw("DELETE", "/api/catalog/acme/new-1", None).await;
        assert_eq!(st, 404);
        t.finish().await;
    }
}

#[tokio::test]
async fn export_import_round_trip_and_a_bad_import_changes_nothing() {
    for b in backends() {
        let t = TestApp::spawn(b).await;
        let original = t.admin("GET", "/api/catalog/export", None).await;
        assert_eq!(original["version"], 1);
        assert_eq!(
            original["models"].as_array().unwrap().len(),
            seed().models.len()
        );
        assert!(
            original["prices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["model"] == "gpt-4o")
        );

        // a change: one description edited, one model and its price added
        let mut changed = original.clone();
        for m in changed["models"].as_array_mut().unwrap() {
            if m["model"] == "gpt-4o" {
                m["descriptions"]["en"] = json!("Edited description.");
            }
        }
        changed["models"].as_array_mut().unwrap().push(json!({
            "model": "acme/imported-1", "provider": "acme", "type": "chat",
            "capabilities": ["tools"], "release_date": "2025-01-02", "status": "preview",
            "descriptions": {"en": "Imported.", "pt-BR": "Importado."}
        }));
        changed["prices"].as_array_mut().unwrap().push(json!({
            "model": "acme/imported-1", "input": "1", "output": "2", "cache_write": "1.5"
        }));
        let v = t
            .admin("POST", "/api/catalog/import", Some(changed.clone()))
            .await;
        assert_eq!(v["imported"]["models"], seed().models.len() + 1, "{v}");
        let after = t.admin("GET", "/api/catalog/export", None).await;
        assert_eq!(stripped(after.clone()), stripped(changed.clone()));
        let v = public(&t, "/api/catalog/acme/imported-1?lang=pt-BR", &[]).await;
        assert_eq!(v["data"]["description"], "Importado.");
        assert_eq!(v["data"]["price"]["cache_write"], "1.5");
        let snap = t.app.relay.snapshot();
        assert_eq!(snap.prices["acme/imported-1"].cache_write, dec("1.5"));

        // importing the earlier export restores every entry it holds
        t.admin("POST", "/api/catalog/import", Some(original.clone()))
            .await;
        let restored = t.admin("GET", "/api/catalog/export", None).await;
        let gpt4o = restored["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "gpt-4o")
            .unwrap()
            .clone();
        assert_eq!(
            gpt4o["descriptions"]["en"],
            seed_description("gpt-4o", "en")
        );
        // an import adds and replaces; it does not delete what it omits
        assert!(
            restored["models"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["model"] == "acme/imported-1")
        );
        t.admin("DELETE", "/api/catalog/acme/imported-1", None)
            .await;
        t.admin("DELETE", "/api/prices/acme/imported-1", None).await;
        let restored = t.admin("GET", "/api/catalog/export", None).await;
        assert_eq!(stripped(restored.clone()), stripped(original.clone()));

        // a document with bad entries is refused whole, each error named
        let bad = json!({
            "version": 1,
            "models": [
                {"model": "acme/good-1", "provider": "acme", "descriptions": {"en": "Good."}},
                {"model": "acme/bad-1", "provider": "acme", "type": "video", "descriptions": {"en": "Bad."}},
                {"model": "acme/bad-2", "descriptions": {"en": "No provider."}},
                {"model": "gpt-4o", "provider": "openai", "descriptions": {"en": "Would overwrite."}}
            ],
            "prices": [
                {"model": "acme/good-1", "input": "1", "output": "1"},
                {"model": "gpt-4o", "input": "-2.5", "output": "10"},
                {"model": "gpt-4o-mini", "input": "0.1", "output": "x"}
            ]
        });
        let (st, v) = t.admin_raw("POST", "/api/catalog/import", Some(bad)).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_catalog");
        let errors: Vec<(String, i64, String)> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["section"].as_str().unwrap().to_string(),
                    e["index"].as_i64().unwrap(),
                    e["model"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            errors,
            vec![
                ("models".into(), 1, "acme/bad-1".into()),
                ("models".into(), 2, "acme/bad-2".into()),
                ("prices".into(), 1, "gpt-4o".into()),
                ("prices".into(), 2, "gpt-4o-mini".into()),
            ],
            "{v}"
        );
        let unchanged = t.admin("GET", "/api/catalog/export", None).await;
        assert_eq!(stripped(unchanged), stripped(original.clone()));
        let (st, _) = call(&t, "GET", "/api/catalog/acme/good-1", "", &[], None).await;
        assert_eq!(st, 404, "nothing of a refused import is written");
        // the relay still bills the old price
        assert_eq!(t.app.relay.snapshot().prices["gpt-4o"].input, dec("2.5"));
        // the same model twice, or an unknown field, is refused too
        for doc in [
            json!({"models": [
                {"model": "acme/x", "provider": "acme", "descriptions": {"en": "x"}},
                {"model": "acme/x", "provider": "acme", "descriptions": {"en": "y"}}]}),
            json!({"models": [], "extra": 1}),
            json!({"version": 2}),
        ] {
            let (st, v) = t.admin_raw("POST", "/api/catalog/import", Some(doc)).await;
            assert_eq!(st, 400, "{v}");
        }
        let unchanged = t.admin("GET", "/api/catalog/export", None).await;
        assert_eq!(stripped(unchanged), stripped(original));
        t.finish().await;
    }
}
