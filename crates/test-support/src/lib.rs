//! Test harness: a fresh database per test (SQLite file in a temp dir, or
//! a new PostgreSQL database when `TEST_DATABASE_URL` is set), the mock
//! upstream, and the real app on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use gateway::{App, Config};
use mock_upstream::MockUpstream;
use serde_json::{Value, json};
use sqlx::Executor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server for tests, if configured. When `CI` is set, a
/// missing variable is an error rather than a skip.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "TEST_DATABASE_URL must be set in CI: the PostgreSQL suite may not be skipped there"
            );
            None
        }
    }
}

/// The Redis server for tests, if configured (an error in CI when missing).
pub fn redis_url() -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    assert!(
        url.is_some() || std::env::var("CI").is_err(),
        "TEST_REDIS_URL must be set in CI: the Redis suite may not be skipped there"
    );
    url
}

/// Backends to run a suite on: SQLite always, PostgreSQL when configured.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if postgres_url().is_some() {
        v.push(Backend::Postgres);
    } else {
        eprintln!(
            "note: TEST_DATABASE_URL is not set; the PostgreSQL variant of this test was not run"
        );
    }
    v
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/test.db", dir.path().display());
                TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let admin = postgres_url().expect("TEST_DATABASE_URL");
                let name = format!("gap_t_{}", uuid::Uuid::now_v7().simple());
                sqlx::any::install_default_drivers();
                let pool = sqlx::AnyPool::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin}: {e}"));
                pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .unwrap();
                pool.close().await;
                let url = replace_db_name(&admin, &name);
                TestDb {
                    url,
                    backend,
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// Drops a PostgreSQL test database (best effort; `.ci/run` also
    /// removes leftovers before a run).
    pub async fn cleanup(self) {
        if let (Some(name), Some(admin)) = (&self.pg_name, postgres_url())
            && let Ok(pool) = sqlx::AnyPool::connect(&admin).await
        {
            let _ = pool
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await;
            pool.close().await;
        }
    }
}

fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Configuration for a test app: port 0, quick timeouts, quiet logs.
pub fn test_config(db_url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.shutdown_grace_secs = 20;
    cfg.database.url = db_url.to_string();
    cfg.admin.password = "root-password-for-tests".into();
    cfg.relay.first_byte_timeout_secs = 10;
    cfg.relay.stream_idle_timeout_secs = 10;
    cfg.relay.drain_timeout_secs = 10;
    cfg.relay.refresh_secs = 0;
    // Tests send many requests from loopback; the abuse tests clear this.
    cfg.guard.allowlist = vec!["127.0.0.0/8".into(), "::1/128".into()];
    cfg
}

/// The app, the mock upstream and an admin token.
pub struct TestApp {
    pub app: App,
    pub mock: MockUpstream,
    pub db: TestDb,
    pub admin_token: String,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
        gateway::init_logging(&gateway::config::LogConfig {
            format: "text".into(),
            level: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        });
        let db = TestDb::new(backend).await;
        let mock = MockUpstream::start().await.unwrap();
        let mut cfg = test_config(&db.url);
        tweak(&mut cfg);
        let app = App::start(cfg).await.unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut t = TestApp {
            app,
            mock,
            db,
            admin_token: String::new(),
            http,
        };
        let r = t
            .post_json(
                "/api/auth/login",
                "",
                &json!({"username": "root", "password": "root-password-for-tests"}),
            )
            .await;
        t.admin_token = r.1["token"].as_str().unwrap().to_string();
        t
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.addr, path)
    }

    pub async fn post_json(&self, path: &str, bearer: &str, body: &Value) -> (u16, Value) {
        let mut r = self.http.post(self.url(path)).json(body);
        if !bearer.is_empty() {
            r = r.bearer_auth(bearer);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// An admin call; panics on a non-2xx answer.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.admin_raw(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {v}"
        );
        v
    }

    pub async fn admin_raw(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(m, self.url(path))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// Adds a channel on the mock serving `models` and returns its id.
    pub async fn add_mock_channel(&self, name: &str, models: &[&str], priority: i64) -> i64 {
        self.add_channel(
            name,
            &self.mock.base_url(),
            "sk-mock-good",
            models,
            priority,
        )
        .await
    }

    pub async fn add_channel(
        &self,
        name: &str,
        base_url: &str,
        key: &str,
        models: &[&str],
        priority: i64,
    ) -> i64 {
        let v = self
            .admin(
                "POST",
                "/api/channels",
                Some(json!({
                    "name": name, "base_url": base_url, "api_keys": [key],
                    "models": models, "priority": priority,
                })),
            )
            .await;
        v["data"]["id"].as_i64().unwrap()
    }

    /// Creates a user with `balance_usd` and returns (user id, API key).
    pub async fn user_with_key(&self, name: &str, balance_usd: &str) -> (i64, String) {
        let v = self
            .admin(
                "POST",
                "/api/users",
                Some(json!({"username": name, "password": "password123", "balance_usd": balance_usd})),
            )
            .await;
        let uid = v["data"]["id"].as_i64().unwrap();
        let k = self
            .admin(
                "POST",
                "/api/keys",
                Some(json!({"user_id": uid, "name": "test"})),
            )
            .await;
        (uid, k["key"].as_str().unwrap().to_string())
    }

    /// A user's request log rows, newest first, after everything settled so
    /// far is written.
    pub async fn logs_of(&self, user_id: i64) -> Vec<storage::LogRecord> {
        self.app.relay.flush().await;
        self.app
            .store
            .logs(&storage::LogFilter {
                user_id: Some(user_id),
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// A user's newest log row.
    pub async fn last_log(&self, user_id: i64) -> storage::LogRecord {
        self.logs_of(user_id).await.into_iter().next().unwrap()
    }

    pub async fn balance(&self, user_id: i64) -> i64 {
        self.app.relay.flush().await;
        self.app.store.user(user_id).await.unwrap().balance
    }

    /// Asserts that every balance equals its ledger.
    pub async fn assert_ledger_ok(&self) {
        self.app.relay.flush().await;
        let r = gateway_ledger_check(&self.app.store).await;
        assert!(r.0, "ledger check failed: {}", r.1);
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn finish(self) {
        self.app.shutdown().await;
        self.mock.shutdown();
        self.db.cleanup().await;
    }
}

async fn gateway_ledger_check(store: &storage::Store) -> (bool, String) {
    let rows = store.ledger_check().await.unwrap();
    let bad: Vec<_> = rows.iter().filter(|r| !r.is_consistent()).collect();
    let keys = store.key_check().await.unwrap();
    (
        bad.is_empty() && keys.is_empty(),
        format!("{bad:?} {keys:?}"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn db_name_replacement() {
        assert_eq!(
            super::replace_db_name("postgres://u@127.0.0.1:5432/test", "x"),
            "postgres://u@127.0.0.1:5432/x"
        );
        assert_eq!(
            super::replace_db_name("postgres://127.0.0.1/test?sslmode=disable", "x"),
            "postgres://127.0.0.1/x?sslmode=disable"
        );
        assert_eq!(
            super::replace_db_name("postgres://h", "x"),
            "postgres://h/x"
        );
    }
}
