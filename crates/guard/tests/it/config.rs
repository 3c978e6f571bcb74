//! The configuration's serde contract and validation.

use guard::{Guard, GuardConfig, GuardError, RedisSettings, RuleConfig};

#[test]
fn defaults_follow_issue_6() {
    let c = GuardConfig::default();
    assert_eq!(c.credential, RuleConfig::new(30, 3600, 3 * 3600));
    assert_eq!(c.api, RuleConfig::new(300, 3600, 3600));
    assert_eq!(c.unknown_key, RuleConfig::new(50, 3600, 3600));
    assert_eq!(c.relay_quota, RuleConfig::new(99, 3600, 3600));
    assert_eq!(c.tier_multipliers, vec![1, 6, 24]);
    assert_eq!(c.ban_cache_ttl_secs, 30);
}

#[test]
fn config_round_trips_and_rejects_unknown_fields() {
    let c = GuardConfig::default();
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<GuardConfig>(&json).unwrap(), c);

    // Missing fields take the defaults.
    let partial: GuardConfig = serde_json::from_str(
        r#"{"credential": {"limit": 5, "window_secs": 60, "ban_secs": 120}, "allowlist": ["10.0.0.0/8"]}"#,
    )
    .unwrap();
    assert_eq!(partial.credential, RuleConfig::new(5, 60, 120));
    assert_eq!(partial.api, c.api);

    assert!(serde_json::from_str::<GuardConfig>(r#"{"credentials": {}}"#).is_err());
    assert!(
        serde_json::from_str::<GuardConfig>(
            r#"{"api": {"limit": 1, "window_secs": 1, "ban_secs": 1, "extra": 1}}"#
        )
        .is_err()
    );
    assert!(serde_json::from_str::<RedisSettings>(r#"{"timeout": 1}"#).is_err());
    let r: RedisSettings = serde_json::from_str(r#"{"response_timeout_ms": 50}"#).unwrap();
    assert_eq!(r.response_timeout_ms, 50);
}

#[test]
fn invalid_configs_are_refused() {
    let bad_allowlist = GuardConfig {
        allowlist: vec!["10.0.0.0/33".into()],
        ..GuardConfig::default()
    };
    assert!(matches!(
        Guard::memory(bad_allowlist),
        Err(GuardError::Config(_))
    ));
    let no_tiers = GuardConfig {
        tier_multipliers: vec![],
        ..GuardConfig::default()
    };
    assert!(matches!(
        Guard::memory(no_tiers),
        Err(GuardError::Config(_))
    ));
    let zero_window = GuardConfig {
        api: RuleConfig::new(10, 0, 60),
        ..GuardConfig::default()
    };
    assert!(matches!(
        Guard::memory(zero_window),
        Err(GuardError::Config(_))
    ));
    // A rule switched off (limit 0) needs no window.
    let off = GuardConfig {
        api: RuleConfig::new(0, 0, 0),
        ..GuardConfig::default()
    };
    assert!(Guard::memory(off).is_ok());
}
