//! The storage layer on each backend.

use storage::{NewUser, StorageError, Store};
use test_support::{TestDb, backends};

#[tokio::test]
async fn storage_rules_hold_on_every_backend() {
    for b in backends() {
        let db = TestDb::new(b).await;
        let s = Store::connect(&db.url).await.unwrap();
        // migrations are idempotent
        let s2 = Store::connect(&db.url).await.unwrap();
        s2.close().await;
        let u = s
            .create_user(&NewUser {
                username: "u1".into(),
                password_hash: String::new(),
                role: "user".into(),
                group: "default".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(matches!(
            s.create_user(&NewUser {
                username: "u1".into(),
                password_hash: String::new(),
                role: "user".into(),
                group: "default".into(),
                ..Default::default()
            })
            .await,
            Err(StorageError::Conflict(_))
        ));
        assert_eq!(
            s.adjust_balance(u.id, 500, "topup", Some("r1"), "")
                .await
                .unwrap(),
            500
        );
        assert!(matches!(
            s.adjust_balance(u.id, 500, "topup", Some("r1"), "").await,
            Err(StorageError::Conflict(_))
        ));
        assert!(matches!(
            s.adjust_balance(u.id, -600, "adjust", None, "").await,
            Err(StorageError::InsufficientBalance)
        ));
        assert_eq!(
            s.adjust_balance(u.id, -200, "adjust", None, "")
                .await
                .unwrap(),
            300
        );
        assert!(matches!(
            s.adjust_balance(999, 1, "topup", None, "").await,
            Err(StorageError::NotFound(_))
        ));
        // settle batches aggregate per user, key and hour
        let k = s
            .create_api_key(&storage::NewApiKey {
                user_id: u.id,
                key_hash: "ab".repeat(32),
                quota_limit: -1,
                ..Default::default()
            })
            .await
            .unwrap();
        let hour = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;
        let logs: Vec<storage::LogRecord> = (0..5)
            .map(|i| storage::LogRecord {
                request_id: format!("r{i}"),
                user_id: u.id,
                key_id: k.id,
                model: "m".into(),
                prompt_tokens: 10,
                completion_tokens: 2,
                cost: 7,
                status: 200,
                created_at: hour + i * 1000,
                ..Default::default()
            })
            .collect();
        s.settle_batch(&logs).await.unwrap();
        let u2 = s.user(u.id).await.unwrap();
        assert_eq!((u2.balance, u2.used, u2.request_count), (300 - 35, 35, 5));
        assert_eq!(s.api_key(k.id).await.unwrap().used, 35);
        let h = s.hourly_usage(Some(u.id), 0, i64::MAX).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].hour, h[0].requests, h[0].prompt_tokens, h[0].cost),
            (hour, 5, 50, 35)
        );
        let check = s.ledger_check().await.unwrap();
        assert!(check.iter().all(|r| r.is_consistent()), "{check:?}");
        // a batch larger than one multi-row INSERT lands whole
        let many: Vec<storage::LogRecord> = (0..70)
            .map(|i| storage::LogRecord {
                request_id: format!("m{i}"),
                user_id: u.id,
                key_id: k.id,
                model: "m".into(),
                cost: 1,
                status: 200,
                created_at: hour + 10_000 + i,
                ..Default::default()
            })
            .collect();
        s.settle_batch(&many).await.unwrap();
        let all = s
            .logs(&storage::LogFilter {
                user_id: Some(u.id),
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 75);
        assert!(
            all.iter().any(|l| l.request_id == "m69") && all.iter().any(|l| l.request_id == "m0")
        );
        assert_eq!(s.user(u.id).await.unwrap().balance, 300 - 35 - 70);
        let check = s.ledger_check().await.unwrap();
        assert!(check.iter().all(|r| r.is_consistent()), "{check:?}");
        // a batch that fails part-way (a trigger refuses the balance update
        // that follows the log INSERT) is undone whole, and the next batch
        // lands on the same connection
        let (refuse, allow) = if db.url.starts_with("sqlite") {
            (
                "CREATE TRIGGER refuse_settle BEFORE UPDATE ON users \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
                "DROP TRIGGER refuse_settle",
            )
        } else {
            (
                "CREATE FUNCTION refuse_settle() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER refuse_settle BEFORE UPDATE ON users \
                 FOR EACH ROW EXECUTE FUNCTION refuse_settle()",
                "DROP TRIGGER refuse_settle ON users; DROP FUNCTION refuse_settle()",
            )
        };
        let doomed = vec![storage::LogRecord {
            request_id: "doomed".into(),
            user_id: u.id,
            key_id: k.id,
            model: "m".into(),
            cost: 3,
            status: 200,
            created_at: hour + 20_000,
            ..Default::default()
        }];
        let logs_of = |s: &Store| {
            let s = s.clone();
            async move {
                s.logs(&storage::LogFilter {
                    user_id: Some(u.id),
                    limit: Some(1000),
                    ..Default::default()
                })
                .await
                .unwrap()
            }
        };
        exec_sql(&db.url, refuse).await;
        // (one row: the one-statement path on SQLite; forty: the
        // statement-per-step transaction)
        let many_doomed: Vec<storage::LogRecord> = (0..40)
            .map(|i| storage::LogRecord {
                request_id: format!("doomed{i}"),
                ..doomed[0].clone()
            })
            .collect();
        for batch in [&doomed, &many_doomed] {
            let err = s.settle_batch(batch).await.unwrap_err();
            assert!(err.to_string().contains("refused by the test"), "{err}");
            assert_eq!(s.user(u.id).await.unwrap().balance, 300 - 35 - 70);
            let kept = logs_of(&s).await;
            assert_eq!(kept.len(), 75);
            assert!(kept.iter().all(|l| !l.request_id.starts_with("doomed")));
        }
        exec_sql(&db.url, allow).await;
        s.settle_batch(&doomed).await.unwrap();
        assert_eq!(s.user(u.id).await.unwrap().balance, 300 - 35 - 70 - 3);
        assert_eq!(logs_of(&s).await.len(), 76);
        // rows that cost nothing change no key, and still count as requests
        let free = vec![storage::LogRecord {
            request_id: "free".into(),
            cost: 0,
            ..doomed[0].clone()
        }];
        let (key_used, requests) = (
            s.api_key(k.id).await.unwrap().used,
            s.user(u.id).await.unwrap().request_count,
        );
        s.settle_batch(&free).await.unwrap();
        assert_eq!(s.api_key(k.id).await.unwrap().used, key_used);
        assert_eq!(s.user(u.id).await.unwrap().request_count, requests + 1);
        assert_eq!(s.user(u.id).await.unwrap().balance, 300 - 35 - 70 - 3);
        let check = s.ledger_check().await.unwrap();
        assert!(check.iter().all(|r| r.is_consistent()), "{check:?}");
        // a direct tamper is detected
        s.adjust_balance(u.id, 1, "topup", None, "").await.unwrap();
        sqlx_tamper(&db.url, u.id).await;
        let check = s.ledger_check().await.unwrap();
        assert!(check.iter().any(|r| r.difference() == 5), "{check:?}");
        s.close().await;
        db.cleanup().await;
    }
}

async fn sqlx_tamper(url: &str, uid: i64) {
    exec_sql(
        url,
        &format!("UPDATE users SET balance = balance + 5 WHERE id = {uid}"),
    )
    .await;
}

/// Runs `sql` on a connection of its own, behind the store's back.
async fn exec_sql(url: &str, sql: &str) {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    pool.execute(sqlx::AssertSqlSafe(sql.to_string()))
        .await
        .unwrap();
    pool.close().await;
}
