//! RPM, TPM, concurrency and budgets, against the in-process store and the real Redis.

use std::sync::Arc;
use std::time::Duration;

use guard::{Budget, BudgetPeriod, Clock, DenyReason, Limits, ManualClock, ScopeLimits, Usage};

use crate::common::{Backend, Env, both, eventually, test_config, unique_prefix};

fn key_limits(rpm: Option<u64>, tpm: Option<u64>, concurrency: Option<u64>) -> Limits {
    Limits {
        key: ScopeLimits {
            rpm,
            tpm,
            concurrency,
        },
        ..Limits::default()
    }
}

async fn rpm_denies_with_retry_after(b: Backend) {
    let Some(env) = Env::new(b, "rpm", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    // 3 per minute: three at once, then one every 20 s.
    let l = key_limits(Some(3), None, None);
    for _ in 0..3 {
        drop(g.acquire(1, 100, &l).await.unwrap());
    }
    let d = g.acquire(1, 100, &l).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::KeyRpm);
    assert!((19..=20).contains(&d.retry_after_secs), "{d:?}");
    // A refusal takes nothing: the wait does not grow.
    let d2 = g.acquire(1, 100, &l).await.unwrap_err();
    assert!((19..=20).contains(&d2.retry_after_secs), "{d2:?}");

    // The user's RPM covers all their keys.
    let lu = Limits {
        user: ScopeLimits {
            rpm: Some(2),
            ..ScopeLimits::default()
        },
        ..Limits::default()
    };
    drop(g.acquire(2, 200, &lu).await.unwrap());
    drop(g.acquire(3, 200, &lu).await.unwrap());
    let d = g.acquire(4, 200, &lu).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::UserRpm);
    assert!((29..=30).contains(&d.retry_after_secs), "{d:?}");

    // 60 per minute: a burst of 60, then the next one passes after 1 s, as announced.
    let l60 = key_limits(Some(60), None, None);
    for _ in 0..60 {
        drop(g.acquire(5, 300, &l60).await.unwrap());
    }
    let d = g.acquire(5, 300, &l60).await.unwrap_err();
    assert_eq!((d.reason, d.retry_after_secs), (DenyReason::KeyRpm, 1));
    env.advance_ms(1050).await;
    drop(g.acquire(5, 300, &l60).await.unwrap());
    assert!(g.acquire(5, 300, &l60).await.is_err());
}
both!(rpm, rpm_denies_with_retry_after);

async fn tpm_denies_after_recorded_tokens(b: Backend) {
    let Some(env) = Env::new(b, "tpm", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    // 6000 tokens per minute: 10 ms of allowance per token.
    let l = key_limits(None, Some(6000), None);
    drop(g.acquire(1, 100, &l).await.unwrap());
    g.record_tokens(1, 100, &l, 6150).await;
    // 61.5 s of allowance used: refused until 1.5 s have passed.
    let d = g.acquire(1, 100, &l).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::KeyTpm);
    assert!((1..=2).contains(&d.retry_after_secs), "{d:?}");
    env.advance_ms(1600).await;
    drop(g.acquire(1, 100, &l).await.unwrap());

    // The user's TPM: 700 tokens at 600/min = 70 s of allowance → 10 s to wait.
    let lu = Limits {
        user: ScopeLimits {
            tpm: Some(600),
            ..ScopeLimits::default()
        },
        ..Limits::default()
    };
    drop(g.acquire(2, 200, &lu).await.unwrap());
    g.record_usage(
        2,
        200,
        &lu,
        Usage {
            tokens: 700,
            spend: 0,
        },
    )
    .await;
    let d = g.acquire(3, 200, &lu).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::UserTpm);
    assert!((10..=11).contains(&d.retry_after_secs), "{d:?}");
}
both!(tpm, tpm_denies_after_recorded_tokens);

async fn concurrency_denies_and_releases(b: Backend) {
    let Some(env) = Env::new(b, "concurrency", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let l = key_limits(None, None, Some(2));
    let p1 = g.acquire(1, 100, &l).await.unwrap();
    let p2 = g.acquire(1, 100, &l).await.unwrap();
    assert!(p1.holds_slot() && p2.holds_slot());
    let d = g.acquire(1, 100, &l).await.unwrap_err();
    assert_eq!(
        (d.reason, d.retry_after_secs),
        (DenyReason::KeyConcurrency, 1)
    );
    drop(p1);
    assert!(
        eventually(2000, || async {
            g.acquire(1, 100, &l).await.map(|p| p.abandon()).is_ok()
        })
        .await,
        "the dropped permit's slot is released"
    );
    drop(p2);

    // The user's concurrency spans their keys.
    let lu = Limits {
        user: ScopeLimits {
            concurrency: Some(1),
            ..ScopeLimits::default()
        },
        ..Limits::default()
    };
    let p = g.acquire(10, 500, &lu).await.unwrap();
    let d = g.acquire(11, 500, &lu).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::UserConcurrency);
    drop(p);
    assert!(eventually(2000, || async { g.acquire(11, 500, &lu).await.is_ok() }).await);
}
both!(concurrency, concurrency_denies_and_releases);

async fn finish_releases_the_slot_and_records_usage(b: Backend) {
    let Some(env) = Env::new(b, "finish", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    // one request at a time, 6000 tokens per minute
    let l = key_limits(None, Some(6000), Some(1));
    let slot_only = key_limits(None, None, Some(1));
    let tpm_only = key_limits(None, Some(6000), None);
    let p = g.acquire(1, 100, &l).await.unwrap();
    assert!(p.holds_slot());
    let d = g.acquire(1, 100, &slot_only).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::KeyConcurrency);
    let used = Usage {
        tokens: 6150,
        spend: 0,
    };
    g.finish(p, 1, 100, &l, used).await;
    // both at once, when the call returns: the slot is free …
    g.acquire(1, 100, &slot_only).await.unwrap().abandon();
    // … and the tokens count (61.5 s of allowance: refused for another 1.5 s)
    let d = g.acquire(1, 100, &tpm_only).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::KeyTpm);
    // a request that used nothing still gives its slot back
    let l2 = key_limits(None, None, Some(1));
    let p = g.acquire(2, 100, &l2).await.unwrap();
    g.finish(p, 2, 100, &l2, Usage::default()).await;
    let p = g.acquire(2, 100, &l2).await.unwrap();
    // and one without a slot still records
    g.finish(p, 2, 100, &tpm_only, used).await;
    let d = g.acquire(2, 100, &tpm_only).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::KeyTpm);
}
both!(finish, finish_releases_the_slot_and_records_usage);

async fn concurrency_leases_expire(b: Backend) {
    let Some(env) = Env::new(b, "lease_expiry", |c| c.lease_ttl_secs = 2).await else {
        return;
    };
    let g = &env.guard;
    let l = key_limits(None, None, Some(1));
    // A node that dies while holding a slot: no release, no renewal.
    g.acquire(1, 100, &l).await.unwrap().abandon();
    let d = g.acquire(1, 100, &l).await.unwrap_err();
    assert_eq!(
        (d.reason, d.retry_after_secs),
        (DenyReason::KeyConcurrency, 1)
    );
    env.advance_ms(1000).await;
    assert!(g.acquire(1, 100, &l).await.is_err(), "lease still valid");
    env.advance_ms(1100).await;
    let p = g.acquire(1, 100, &l).await.expect("the lease expired");
    drop(p);
}
both!(lease_expiry, concurrency_leases_expire);

async fn held_permits_renew_their_lease(b: Backend) {
    let Some(env) = Env::new(b, "lease_renewal", |c| c.lease_ttl_secs = 1).await else {
        return;
    };
    let g = &env.guard;
    let l = key_limits(None, None, Some(1));
    let p = g.acquire(1, 100, &l).await.unwrap();
    // Real time, on both backends: the permit renews every ~333 ms.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        g.acquire(1, 100, &l).await.is_err(),
        "still held after 2.5 lease TTLs"
    );
    drop(p);
    assert!(eventually(2000, || async { g.acquire(1, 100, &l).await.is_ok() }).await);
}
both!(lease_renewal, held_permits_renew_their_lease);

async fn budget_denies_until_period_end(b: Backend) {
    // Three seconds before midnight UTC.
    let now = guard::SystemClock.now_ms();
    let midnight = (now / 86_400_000 + 1) * 86_400_000;
    let clock = Arc::new(ManualClock::starting_at(midnight - 3000));
    let cfg = test_config(&unique_prefix("budget"));
    let Some(env) = Env::with_config(b, "budget", cfg, clock).await else {
        return;
    };
    let g = &env.guard;
    let budget = Budget {
        limit: 100,
        period: BudgetPeriod::Daily,
    };
    let mut l = Limits {
        key_budget: Some(budget),
        spend_estimate: 60,
        ..Limits::default()
    };
    drop(g.acquire(1, 100, &l).await.unwrap());
    g.record_usage(
        1,
        100,
        &l,
        Usage {
            tokens: 0,
            spend: 60,
        },
    )
    .await;
    l.spend_estimate = 50;
    let d = g.acquire(1, 100, &l).await.unwrap_err();
    assert_eq!(d.reason, DenyReason::KeyBudget);
    assert!((2..=3).contains(&d.retry_after_secs), "{d:?}");
    assert!(g.check_budget(1, &budget, 40).await.is_ok());
    assert_eq!(
        g.check_budget(1, &budget, 41).await.unwrap_err().reason,
        DenyReason::KeyBudget
    );
    let st = g.budget_status(1, &budget).await.unwrap();
    assert_eq!((st.spent, st.limit, st.resets_at_ms), (60, 100, midnight));
    g.record_spend(1, &budget, 40).await;
    // Used up: even an estimate of 0 is refused.
    assert!(g.check_budget(1, &budget, 0).await.is_err());
    // Another key has its own budget.
    assert!(g.check_budget(2, &budget, 100).await.is_ok());

    // A new day, a new budget.
    env.advance_ms(3100).await;
    drop(g.acquire(1, 100, &l).await.unwrap());
    assert_eq!(g.budget_status(1, &budget).await.unwrap().spent, 0);
}
both!(budget, budget_denies_until_period_end);

async fn no_limits_no_store_call(b: Backend) {
    let Some(env) = Env::new(b, "no_limits", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let before = env.calls();
    let zero = key_limits(Some(0), Some(0), Some(0));
    for l in [Limits::default(), zero] {
        let p = g.acquire(1, 100, &l).await.unwrap();
        assert!(!p.holds_slot());
        g.record_usage(
            1,
            100,
            &l,
            Usage {
                tokens: 1000,
                spend: 0,
            },
        )
        .await;
    }
    assert_eq!(env.calls(), before);
}
both!(no_limits, no_limits_no_store_call);
