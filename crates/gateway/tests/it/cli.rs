//! The command line, run as the operator runs it: the real binary against
//! a database file, while the service may or may not be running.

use std::process::Command;

fn run(db: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpt-api-proxy"))
        .args(args)
        .env("GAP__DATABASE__URL", db)
        .env_remove("DATABASE_URL")
        .env_remove("GAP_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn operator_sets_up_channel_user_key_and_topup_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/data/cli.db", dir.path().display());
    let (code, out, err) = run(
        &db,
        &[
            "channel",
            "add",
            "--name",
            "openai",
            "--base-url",
            "https://api.openai.com/v1",
            "--key",
            "sk-up-1",
            "--key",
            "sk-up-2",
            "--models",
            "gpt-4o,gpt-4o-mini",
            "--map",
            "gpt-4o=gpt-4o-2024-08-06",
            "--priority",
            "5",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created channel openai"));
    let (code, out, _) = run(&db, &["channel", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("2 keys") && !out.contains("sk-up-1"),
        "channel keys are never printed: {out}"
    );
    let (code, out, err) = run(&db, &["user", "add", "alice", "--balance-usd", "2.50"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("password: "));
    let (code, out, _) = run(
        &db,
        &["user", "topup", "alice", "1.25", "--note", "bank transfer"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("$3.750000"), "{out}");
    let (code, out, _) = run(&db, &["user", "topup", "alice", "-10"]);
    assert_ne!(code, 0, "a deduction below zero is refused: {out}");
    let (code, out, _) = run(
        &db,
        &[
            "key",
            "create",
            "--user",
            "alice",
            "--name",
            "laptop",
            "--quota-usd",
            "1",
            "--models",
            "gpt-4o-mini",
        ],
    );
    assert_eq!(code, 0);
    let key = out.lines().last().unwrap().trim().to_string();
    assert!(key.starts_with("sk-") && key.len() == 51, "{out}");
    let (code, out, _) = run(
        &db,
        &[
            "price", "set", "my-model", "--input", "1.5", "--output", "3",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(
        &db,
        &[
            "price", "set", "my-model", "--input", "cheap", "--output", "3",
        ],
    );
    assert_ne!(code, 0, "{out}");
    let (code, out, _) = run(&db, &["ledger", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ledger ok"));
    let (code, _, err) = run(&db, &["user", "topup", "nobody", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("no user named `nobody`"), "{err}");

    // the key works against the service started on the same database
    let store = storage::Store::connect(&db).await.unwrap();
    let users = store.users().await.unwrap();
    let alice = users.iter().find(|u| u.username == "alice").unwrap();
    assert_eq!(alice.balance, 3_750_000);
    let keys = store.api_keys(Some(alice.id)).await.unwrap();
    assert_eq!(keys[0].quota_limit, 1_000_000);
    assert_eq!(keys[0].key_hash, accounts::secret_hash(&key));
    // tamper, and ledger check says so with a non-zero exit
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db).await.unwrap();
    pool.execute("UPDATE users SET balance = balance + 1")
        .await
        .unwrap();
    pool.close().await;
    store.close().await;
    let (code, out, _) = run(&db, &["ledger", "check"]);
    assert_eq!(code, 1);
    assert!(out.contains("MISMATCH user"), "{out}");
}
