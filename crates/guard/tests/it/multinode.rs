//! Two `Guard`s sharing one Redis, as two gateway nodes would.

use std::sync::Arc;

use guard::{DenyReason, Limits, ManualClock, ScopeLimits, Verdict};

use crate::common::{Backend, Env, eventually, ip, test_config, unique_prefix};

#[tokio::test]
async fn two_nodes_share_counters_and_bans() {
    let mut cfg = test_config(&unique_prefix("two_nodes"));
    // A long ban cache: only the pub/sub invalidation can make node B see the unban quickly.
    cfg.ban_cache_ttl_secs = 30;
    let clock = Arc::new(ManualClock::new());
    let Some(a) = Env::with_config(Backend::Redis, "two_nodes", cfg.clone(), clock.clone()).await
    else {
        return;
    };
    let Some(b) = Env::with_config(Backend::Redis, "two_nodes", cfg, clock).await else {
        return;
    };
    let (ga, gb) = (&a.guard, &b.guard);
    let x = ip("192.0.2.10");

    // B has cached "not banned" for x (for 30 s) before A bans it.
    assert!(gb.check_ip(x).await.is_none());
    // One counter: 2 attempts on A + 1 on B + 1 on A = the 4th, over the limit of 3.
    assert!(ga.note_credential_attempt(x).await.is_allowed());
    assert!(ga.note_credential_attempt(x).await.is_allowed());
    assert!(gb.note_credential_attempt(x).await.is_allowed());
    let Verdict::Banned(ban) = ga.note_credential_attempt(x).await else {
        panic!("the shared count crossed the limit");
    };
    assert_eq!(ban.count, 4);
    // B sees A's ban at once (announced through pub/sub), and lists it.
    let seen = eventually(2000, || async { gb.check_ip(x).await.is_some() }).await;
    assert!(seen, "node B sees the ban despite its cached answer");
    let seen = gb.check_ip(x).await.expect("node B sees the ban");
    assert_eq!((seen.since_ms, seen.until_ms), (ban.since_ms, ban.until_ms));
    assert_eq!(gb.bans().await.unwrap().len(), 1);
    assert!(matches!(
        gb.note_credential_attempt(x).await,
        Verdict::Banned(_)
    ));
    assert_eq!(ga.metrics().bans_issued + gb.metrics().bans_issued, 1);

    // An unban on A reaches B's cache through pub/sub (its TTL is 30 s).
    assert!(ga.unban("192.0.2.10").await.unwrap());
    assert!(
        eventually(2000, || async { gb.check_ip(x).await.is_none() }).await,
        "node B still sees the lifted ban"
    );

    // Shared RPM.
    let rpm = Limits {
        key: ScopeLimits {
            rpm: Some(2),
            ..ScopeLimits::default()
        },
        ..Limits::default()
    };
    drop(ga.acquire(7, 70, &rpm).await.unwrap());
    drop(gb.acquire(7, 70, &rpm).await.unwrap());
    assert_eq!(
        ga.acquire(7, 70, &rpm).await.unwrap_err().reason,
        DenyReason::KeyRpm
    );

    // Shared concurrency slots.
    let conc = Limits {
        key: ScopeLimits {
            concurrency: Some(1),
            ..ScopeLimits::default()
        },
        ..Limits::default()
    };
    let held = ga.acquire(8, 80, &conc).await.unwrap();
    assert_eq!(
        gb.acquire(8, 80, &conc).await.unwrap_err().reason,
        DenyReason::KeyConcurrency
    );
    drop(held);
    assert!(
        eventually(2000, || async {
            gb.acquire(8, 80, &conc).await.map(|p| p.abandon()).is_ok()
        })
        .await
    );
}
