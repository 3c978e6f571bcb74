//! Applies the embedded migrations of the connected backend, in order, each
//! once. A migration file is never edited after it has shipped; a change to
//! the schema is a new file.

use sqlx::{AnyPool, Executor, Row};

use crate::{Backend, Result, StorageError, now_ms};

struct Migration {
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_core",
        sqlite: include_str!("../migrations/sqlite/0001_core.sql"),
        postgres: include_str!("../migrations/postgres/0001_core.sql"),
    },
    Migration {
        name: "0002_channel_health",
        sqlite: include_str!("../migrations/sqlite/0002_channel_health.sql"),
        postgres: include_str!("../migrations/postgres/0002_channel_health.sql"),
    },
    Migration {
        name: "0003_per_call_price",
        sqlite: include_str!("../migrations/sqlite/0003_per_call_price.sql"),
        postgres: include_str!("../migrations/postgres/0003_per_call_price.sql"),
    },
    Migration {
        name: "0004_accounts",
        sqlite: include_str!("../migrations/sqlite/0004_accounts.sql"),
        postgres: include_str!("../migrations/postgres/0004_accounts.sql"),
    },
    Migration {
        name: "0005_payments",
        sqlite: include_str!("../migrations/sqlite/0005_payments.sql"),
        postgres: include_str!("../migrations/postgres/0005_payments.sql"),
    },
    Migration {
        name: "0006_catalog",
        sqlite: include_str!("../migrations/sqlite/0006_catalog.sql"),
        postgres: include_str!("../migrations/postgres/0006_catalog.sql"),
    },
    Migration {
        name: "0007_limits",
        sqlite: include_str!("../migrations/sqlite/0007_limits.sql"),
        postgres: include_str!("../migrations/postgres/0007_limits.sql"),
    },
];

pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<()> {
    pool.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await?;
    for m in MIGRATIONS {
        let done = sqlx::query("SELECT COUNT(*) AS n FROM schema_migrations WHERE name = $1")
            .bind(m.name)
            .fetch_one(pool)
            .await?
            .try_get::<i64, _>("n")?;
        if done > 0 {
            continue;
        }
        let sql = match backend {
            Backend::Sqlite => m.sqlite,
            Backend::Postgres => m.postgres,
        };
        let wrap = |source| StorageError::Migration {
            name: m.name.to_string(),
            source,
        };
        let mut tx = pool.begin().await.map_err(wrap)?;
        for stmt in split_statements(sql) {
            tx.execute(sqlx::AssertSqlSafe(stmt)).await.map_err(wrap)?;
        }
        sqlx::query("INSERT INTO schema_migrations (name, applied_at) VALUES ($1, $2)")
            .bind(m.name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(wrap)?;
        tx.commit().await.map_err(wrap)?;
        tracing::info!(migration = m.name, "applied migration");
    }
    Ok(())
}

/// Splits a migration file into statements on `;` at line ends, dropping
/// comment-only pieces. The migrations contain no `;` inside literals.
fn split_statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(";\n").map(str::trim).filter(|s| {
        s.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
    })
}
