//! Redis going away and coming back, on a private `redis-server` (never the shared one).

use std::sync::{Arc, Mutex};

use guard::{BusEvent, DenyReason, Guard, Limits, PubSub, RedisStore, ScopeLimits, Verdict};

use crate::common::{
    PrivateRedis, eventually, fast_redis_settings, ip, redis_url_or_skip, test_config,
    unique_prefix,
};

#[tokio::test]
async fn redis_outage_fails_open_and_recovers() {
    if redis_url_or_skip("redis_outage_fails_open_and_recovers").is_none() {
        return;
    }
    let mut server = PrivateRedis::start(PrivateRedis::free_port()).await;
    let store = RedisStore::connect(&server.url(), fast_redis_settings())
        .await
        .unwrap();
    let mut cfg = test_config(&unique_prefix("outage"));
    cfg.credential.ban_secs = 60;
    let guard = Guard::with_redis(cfg, store.clone()).unwrap();
    guard.ready().await;

    let events: Arc<Mutex<Vec<BusEvent>>> = Arc::default();
    let bus = PubSub::redis(&store);
    let sink = events.clone();
    let mut sub = bus
        .subscribe(&["outage-test"], move |e| sink.lock().unwrap().push(e))
        .unwrap();
    sub.ready().await;

    let conc = Limits {
        key: ScopeLimits {
            concurrency: Some(1),
            ..ScopeLimits::default()
        },
        ..Limits::default()
    };

    // Working: a ban, a concurrency refusal.
    for _ in 0..3 {
        assert!(
            guard
                .note_credential_attempt(ip("192.0.2.1"))
                .await
                .is_allowed()
        );
    }
    assert!(matches!(
        guard.note_credential_attempt(ip("192.0.2.1")).await,
        Verdict::Banned(_)
    ));
    let p = guard.acquire(1, 1, &conc).await.unwrap();
    assert!(guard.acquire(1, 1, &conc).await.is_err());
    drop(p);
    let m0 = guard.metrics();
    assert_eq!((m0.redis_errors, m0.fail_open), (0, 0));
    assert_eq!(m0.redis_connected, Some(true));

    // Redis dies.
    server.kill().await;
    let b = ip("192.0.2.2");
    assert!(guard.check_ip(b).await.is_none());
    for _ in 0..10 {
        assert_eq!(guard.note_credential_attempt(b).await, Verdict::Allow);
    }
    let p1 = guard.acquire(2, 2, &conc).await.expect("fails open");
    let p2 = guard.acquire(2, 2, &conc).await.expect("fails open");
    assert!(!p1.holds_slot() && !p2.holds_slot());
    let m1 = guard.metrics();
    assert!(m1.redis_errors >= 13, "{m1:?}");
    assert!(m1.fail_open >= 13, "{m1:?}");
    assert_eq!(m1.redis_connected, Some(false));
    assert!(guard.bans().await.is_err(), "admin calls report the outage");
    assert!(bus.publish("outage-test", "lost").await.is_err());

    // Redis comes back (empty: it keeps nothing on disk).
    server.restart().await;
    assert!(
        eventually(10_000, || async { store.is_connected() }).await,
        "the store reconnects by itself"
    );
    let c = ip("192.0.2.3");
    for _ in 0..3 {
        assert!(guard.note_credential_attempt(c).await.is_allowed());
    }
    assert!(matches!(
        guard.note_credential_attempt(c).await,
        Verdict::Banned(_)
    ));
    assert!(guard.check_ip(c).await.is_some());
    let p = guard.acquire(3, 3, &conc).await.unwrap();
    assert!(p.holds_slot());
    assert_eq!(
        guard.acquire(3, 3, &conc).await.unwrap_err().reason,
        DenyReason::KeyConcurrency
    );
    drop(p);
    let m2 = guard.metrics();
    assert!(m2.redis_reconnects >= 1, "{m2:?}");
    assert_eq!(m2.redis_connected, Some(true));
    assert_eq!(m2.fail_open, m1.fail_open, "no fail-open once back");

    // The subscriber came back too, said so, and delivers again.
    assert!(
        eventually(10_000, || async {
            events.lock().unwrap().contains(&BusEvent::Reconnected)
        })
        .await,
        "the subscriber signals its reconnection"
    );
    bus.publish("outage-test", "hello").await.unwrap();
    assert!(
        eventually(2000, || async {
            events.lock().unwrap().contains(&BusEvent::Message {
                channel: "outage-test".into(),
                payload: "hello".into(),
            })
        })
        .await
    );
    drop(sub);
    server.kill().await;
}

#[tokio::test]
async fn lazy_connect_fails_open_until_redis_appears() {
    if redis_url_or_skip("lazy_connect_fails_open_until_redis_appears").is_none() {
        return;
    }
    let port = PrivateRedis::free_port();
    let store =
        RedisStore::connect_lazy(&format!("redis://127.0.0.1:{port}/"), fast_redis_settings())
            .unwrap();
    let guard = Guard::with_redis(test_config(&unique_prefix("lazy")), store.clone()).unwrap();
    let a = ip("192.0.2.50");
    for _ in 0..6 {
        assert!(guard.note_credential_attempt(a).await.is_allowed());
    }
    assert!(guard.metrics().fail_open >= 6);

    let mut server = PrivateRedis::start(port).await;
    assert!(eventually(10_000, || async { store.is_connected() }).await);
    guard.ready().await;
    for _ in 0..3 {
        assert!(guard.note_credential_attempt(a).await.is_allowed());
    }
    assert!(matches!(
        guard.note_credential_attempt(a).await,
        Verdict::Banned(_)
    ));
    server.kill().await;
}
