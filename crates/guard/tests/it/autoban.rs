//! Autoban rules, against the in-process store and the real Redis.

use guard::{DenyReason, RelayStatus, Rule, Verdict};

use crate::common::{Backend, Env, both, ip};

async fn credential_threshold_bans(b: Backend) {
    let Some(env) = Env::new(b, "credential_threshold", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let a = ip("198.51.100.10");
    let other = ip("198.51.100.11");
    for _ in 0..3 {
        assert_eq!(g.note_credential_attempt(a).await, Verdict::Allow);
    }
    assert!(g.check_ip(a).await.is_none());
    let Verdict::Banned(ban) = g.note_credential_attempt(a).await else {
        panic!("the 4th attempt (limit 3) must ban");
    };
    assert_eq!(ban.rule, Rule::Credential);
    assert_eq!(ban.count, 4);
    assert_eq!(ban.tier, 1);
    assert_eq!(ban.subject, "198.51.100.10");
    assert_eq!(ban.until_ms - ban.since_ms, 2000);
    assert_eq!(ban.retry_after_secs, 2);
    let seen = g.check_ip(a).await.expect("banned");
    assert!((1..=2).contains(&seen.retry_after_secs), "{seen:?}");
    // Further notes while banned report the same ban.
    assert!(matches!(
        g.note_credential_attempt(a).await,
        Verdict::Banned(_)
    ));
    // Other IPs are untouched.
    assert!(g.check_ip(other).await.is_none());
    assert!(g.note_credential_attempt(other).await.is_allowed());
    assert_eq!(g.metrics().bans_issued, 1);

    // The ban ends, and counting starts over.
    env.advance_ms(2100).await;
    assert!(g.check_ip(a).await.is_none());
    for _ in 0..3 {
        assert!(g.note_credential_attempt(a).await.is_allowed());
    }
}
both!(credential_threshold, credential_threshold_bans);

async fn api_threshold_bans_anonymous(b: Backend) {
    let Some(env) = Env::new(b, "api_threshold", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let a = ip("198.51.100.20");
    for _ in 0..5 {
        assert!(g.note_api_request(a, None).await.is_allowed());
    }
    let v = g.note_api_request(a, None).await;
    let Verdict::Banned(ban) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(ban.rule, Rule::Api);
    assert_eq!(v.retry_after_secs(), Some(2));
    assert!(g.check_ip(a).await.is_some());
}
both!(api_threshold, api_threshold_bans_anonymous);

async fn unknown_key_threshold_bans(b: Backend) {
    let Some(env) = Env::new(b, "unknown_key_threshold", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let a = ip("198.51.100.30");
    for _ in 0..4 {
        assert!(g.note_unknown_key(a).await.is_allowed());
    }
    let Verdict::Banned(ban) = g.note_unknown_key(a).await else {
        panic!("the 5th unknown key (limit 4) must ban");
    };
    assert_eq!(ban.rule, Rule::UnknownKey);
    assert_eq!(ban.count, 5);
    // Rules count separately: credential attempts of another IP do not add up here.
    assert!(g.note_unknown_key(ip("198.51.100.31")).await.is_allowed());
}
both!(unknown_key_threshold, unknown_key_threshold_bans);

async fn counting_window_expires(b: Backend) {
    let Some(env) = Env::new(b, "window_expiry", |c| c.credential.window_secs = 1).await else {
        return;
    };
    let g = &env.guard;
    let a = ip("198.51.100.40");
    for _ in 0..3 {
        assert!(g.note_credential_attempt(a).await.is_allowed());
    }
    env.advance_ms(1100).await;
    for _ in 0..3 {
        assert!(g.note_credential_attempt(a).await.is_allowed());
    }
    assert!(matches!(
        g.note_credential_attempt(a).await,
        Verdict::Banned(_)
    ));
}
both!(window_expiry, counting_window_expires);

async fn session_users_count_per_user(b: Backend) {
    let Some(env) = Env::new(b, "per_user", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let nat = ip("198.51.100.50");
    for _ in 0..4 {
        assert!(g.note_api_request(nat, Some(1)).await.is_allowed());
    }
    let v = g.note_api_request(nat, Some(1)).await;
    let Verdict::Limited(deny) = v else {
        panic!("user 1 over the allowance: {v:?}")
    };
    assert_eq!(deny.reason, DenyReason::UserAllowance);
    assert!((1..=3).contains(&deny.retry_after_secs), "{deny:?}");
    // Another user behind the same IP has an allowance of their own.
    for _ in 0..4 {
        assert!(g.note_api_request(nat, Some(2)).await.is_allowed());
    }
    // The IP was never counted: not banned, and its anonymous allowance is intact.
    assert!(g.check_ip(nat).await.is_none());
    for _ in 0..5 {
        assert!(g.note_api_request(nat, None).await.is_allowed());
    }
    assert_eq!(g.metrics().bans_issued, 0);
    assert!(g.metrics().denials >= 1);
    // The user's window ends.
    env.advance_ms(3100).await;
    assert!(g.note_api_request(nat, Some(1)).await.is_allowed());
}
both!(per_user, session_users_count_per_user);

async fn ban_tiers(b: Backend) {
    let Some(env) = Env::new(b, "tiers", |c| {
        c.credential.ban_secs = 1;
        c.tier_window_secs = 1;
        c.tier_multipliers = vec![1, 2, 3];
    })
    .await
    else {
        return;
    };
    let a = ip("198.51.100.60");
    let first = env.ban_by_credentials(a).await;
    assert_eq!((first.tier, first.until_ms - first.since_ms), (1, 1000));

    // Banned again within the tier window after the first ban ended: tier 2, twice as long.
    env.advance_ms(1100).await;
    let second = env.ban_by_credentials(a).await;
    assert_eq!((second.tier, second.until_ms - second.since_ms), (2, 2000));

    env.advance_ms(2100).await;
    let third = env.ban_by_credentials(a).await;
    assert_eq!((third.tier, third.until_ms - third.since_ms), (3, 3000));

    // Outside the window (ban end + 1 s), the next ban is tier 1 again.
    env.advance_ms(3000 + 1000 + 300).await;
    let fresh = env.ban_by_credentials(a).await;
    assert_eq!((fresh.tier, fresh.until_ms - fresh.since_ms), (1, 1000));
    assert_eq!(env.guard.metrics().bans_issued, 4);
}
both!(tiers, ban_tiers);

async fn allowlist_is_never_banned(b: Backend) {
    let Some(env) = Env::new(b, "allowlist", |c| {
        c.allowlist = vec!["10.0.0.0/8".into(), "2001:db8::1".into()];
    })
    .await
    else {
        return;
    };
    let g = &env.guard;
    let before = env.calls();
    for addr in ["10.1.2.3", "::ffff:10.1.2.3", "2001:db8::1"] {
        let a = ip(addr);
        assert!(g.is_allowlisted(a));
        for _ in 0..20 {
            assert!(g.note_credential_attempt(a).await.is_allowed());
            assert!(g.note_unknown_key(a).await.is_allowed());
            assert!(g.note_api_request(a, None).await.is_allowed());
            assert!(
                g.note_relay_result(a, RelayStatus::InsufficientQuota)
                    .await
                    .is_allowed()
            );
        }
        assert!(g.check_ip(a).await.is_none());
    }
    assert_eq!(env.calls(), before, "allowlisted IPs are not even counted");
    // Outside the allowlist the rules apply.
    assert!(!g.is_allowlisted(ip("11.0.0.1")));
    env.ban_by_credentials(ip("11.0.0.1")).await;
    env.ban_by_credentials(ip("2001:db8::2")).await;
}
both!(allowlist, allowlist_is_never_banned);

async fn ipv6_counts_per_prefix(b: Backend) {
    let Some(env) = Env::new(b, "ipv6_prefix", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    for n in 1..=3 {
        let a = ip(&format!("2001:db8:1:2::{n}"));
        assert!(g.note_credential_attempt(a).await.is_allowed());
    }
    let Verdict::Banned(ban) = g.note_credential_attempt(ip("2001:db8:1:2:ffff::9")).await else {
        panic!("the /64 made 4 attempts");
    };
    assert_eq!(ban.subject, "2001:db8:1:2::/64");
    assert!(g.check_ip(ip("2001:db8:1:2::abcd")).await.is_some());
    assert!(g.check_ip(ip("2001:db8:1:3::1")).await.is_none());
    assert!(g.unban("2001:db8:1:2::/64").await.unwrap());
    assert!(g.check_ip(ip("2001:db8:1:2::abcd")).await.is_none());
}
both!(ipv6_prefix, ipv6_counts_per_prefix);

async fn relay_quota_run_bans(b: Backend) {
    let Some(env) = Env::new(b, "relay_run", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let a = ip("198.51.100.70");
    for _ in 0..3 {
        assert!(
            g.note_relay_result(a, RelayStatus::InsufficientQuota)
                .await
                .is_allowed()
        );
    }
    let Verdict::Banned(ban) = g.note_relay_result(a, RelayStatus::InsufficientQuota).await else {
        panic!("the 4th consecutive failure (limit 3) must ban");
    };
    assert_eq!(ban.rule, Rule::RelayQuota);
    assert_eq!(ban.count, 4);
}
both!(relay_run, relay_quota_run_bans);

async fn relay_success_resets_run(b: Backend) {
    let Some(env) = Env::new(b, "relay_reset", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let a = ip("198.51.100.80");
    let fail = RelayStatus::InsufficientQuota;
    for _ in 0..3 {
        assert!(g.note_relay_result(a, fail).await.is_allowed());
    }
    assert!(
        g.note_relay_result(a, RelayStatus::Success)
            .await
            .is_allowed()
    );
    for _ in 0..3 {
        assert!(g.note_relay_result(a, fail).await.is_allowed());
    }
    // Other failures neither extend nor end the run.
    assert!(
        g.note_relay_result(a, RelayStatus::OtherFailure)
            .await
            .is_allowed()
    );
    assert!(matches!(
        g.note_relay_result(a, fail).await,
        Verdict::Banned(_)
    ));
}
both!(relay_reset, relay_success_resets_run);

async fn success_path_makes_no_store_call(b: Backend) {
    let Some(env) = Env::new(b, "success_path", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let (calls, redis_calls, metric) = (env.calls(), env.redis_calls(), g.metrics().store_calls);
    for n in 0..1000u32 {
        let a = ip(&format!("203.0.113.{}", n % 250));
        assert!(
            g.note_relay_result(a, RelayStatus::Success)
                .await
                .is_allowed()
        );
    }
    assert_eq!(env.calls(), calls, "no store call on the success path");
    assert_eq!(env.redis_calls(), redis_calls, "no Redis round trip");
    assert_eq!(g.metrics().store_calls, metric);

    // A failure opens a run for A: one call.
    let (a, other) = (ip("203.0.113.1"), ip("203.0.113.2"));
    g.note_relay_result(a, RelayStatus::InsufficientQuota).await;
    assert_eq!(env.calls(), calls + 1);
    // Another IP's success costs nothing, even with a run open on this node.
    g.note_relay_result(other, RelayStatus::Success).await;
    assert_eq!(env.calls(), calls + 1);
    // A's next success pays one call to end its run; the one after is free again.
    g.note_relay_result(a, RelayStatus::Success).await;
    assert_eq!(env.calls(), calls + 2);
    g.note_relay_result(a, RelayStatus::Success).await;
    assert_eq!(env.calls(), calls + 2);
    if b == Backend::Redis {
        assert_eq!(env.redis_calls(), redis_calls + 2);
    }
}
both!(success_path, success_path_makes_no_store_call);

async fn bans_list_and_unban(b: Backend) {
    let Some(env) = Env::new(b, "list_unban", |c| c.ban_cache_ttl_secs = 30).await else {
        return;
    };
    let g = &env.guard;
    let (a, c) = (ip("198.51.100.90"), ip("198.51.100.91"));
    let ban_a = env.ban_by_credentials(a).await;
    for _ in 0..5 {
        g.note_unknown_key(c).await;
    }
    let mut bans = g.bans().await.unwrap();
    bans.sort_by(|x, y| x.subject.cmp(&y.subject));
    assert_eq!(bans.len(), 2, "{bans:?}");
    let now = g.now_ms();
    let listed_a = &bans[0];
    assert_eq!(listed_a.subject, "198.51.100.90");
    assert_eq!(listed_a.rule, Rule::Credential);
    assert_eq!(listed_a.count, 4);
    assert_eq!(listed_a.tier, 1);
    assert_eq!(listed_a.since_ms, ban_a.since_ms);
    assert_eq!(listed_a.until_ms, ban_a.until_ms);
    assert!(listed_a.since_ms <= now && listed_a.until_ms > now);
    assert!((1..=2).contains(&listed_a.retry_after_secs));
    assert_eq!(bans[1].subject, "198.51.100.91");
    assert_eq!(bans[1].rule, Rule::UnknownKey);

    assert!(g.check_ip(a).await.is_some());
    assert!(g.unban("198.51.100.90").await.unwrap());
    // The local cache (TTL 30 s here) is invalidated at once.
    assert!(g.check_ip(a).await.is_none());
    assert_eq!(g.bans().await.unwrap().len(), 1);
    assert!(!g.unban("198.51.100.90").await.unwrap());
    assert!(matches!(
        g.unban("not an ip").await,
        Err(guard::GuardError::BadSubject(_))
    ));
    // Unban forgets the tier and the counters: the next ban is tier 1 after a full count.
    let again = env.ban_by_credentials(a).await;
    assert_eq!(again.tier, 1);

    // Expired bans are not listed.
    env.advance_ms(2100).await;
    assert!(g.bans().await.unwrap().is_empty());
}
both!(list_unban, bans_list_and_unban);

async fn ban_checks_are_cached(b: Backend) {
    let Some(env) = Env::new(b, "ban_cache", |_| {}).await else {
        return;
    };
    let g = &env.guard;
    let (clean, banned) = (ip("198.51.100.100"), ip("198.51.100.101"));
    env.ban_by_credentials(banned).await;
    let before = env.calls();
    for _ in 0..100 {
        assert!(g.check_ip(clean).await.is_none());
        assert!(g.check_ip(banned).await.is_some());
    }
    // One read for the clean IP; the ban was cached when it was issued.
    assert_eq!(env.calls(), before + 1);
    env.advance_ms(1100).await;
    assert!(g.check_ip(clean).await.is_none());
    assert_eq!(env.calls(), before + 2);
}
both!(ban_cache, ban_checks_are_cached);
