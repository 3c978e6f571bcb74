//! The [`Guard`] facade.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use ipnet::IpNet;
use tokio::task::JoinHandle;

use crate::calendar::BudgetPeriod;
use crate::clock::{Clock, SystemClock};
use crate::config::{GuardConfig, RuleConfig};
use crate::error::GuardError;
use crate::pubsub::{BusEvent, PubSub, Subscription};
use crate::store::{
    AcquireRequest, BanKeys, BanPlan, BudgetCheck, GuardStore, Hit, HitOutcome, Lease, MemoryStore,
    RateCheck, RecordRequest, RedisStore, SlotCheck, SpendAdd, StoreError, StoreFuture,
    StoreResult,
};
use crate::types::{
    Ban, Budget, BudgetStatus, Deny, DenyReason, GuardMetrics, Limits, RelayStatus, Rule, Subject,
    Usage, Verdict, ceil_secs, parse_net,
};

/// Rates are per minute.
const RATE_PERIOD_MS: u64 = 60_000;
/// Upper bound of the local ban cache and of the open-run set.
const MAX_LOCAL_ENTRIES: usize = 100_000;
/// At most this many bans are listed.
const MAX_LISTED_BANS: usize = 10_000;
/// A spend counter outlives its period by this much.
const SPEND_GRACE_MS: u64 = 60_000;

#[derive(Default)]
struct Counters {
    store_calls: AtomicU64,
    errors: AtomicU64,
    fail_open: AtomicU64,
    bans: AtomicU64,
    denials: AtomicU64,
}

#[derive(Default)]
struct LogLimit {
    next_ms: u64,
    suppressed: u64,
}

struct Inner {
    cfg: GuardConfig,
    allow: Vec<IpNet>,
    store: Arc<dyn GuardStore>,
    clock: Arc<dyn Clock>,
    redis: Option<RedisStore>,
    bus: PubSub,
    subscription: Mutex<Option<Subscription>>,
    ban_cache: Mutex<HashMap<Subject, (Option<Ban>, u64)>>,
    /// Subjects with a relay failure run opened on this node → time of the last failure.
    open_runs: Mutex<HashMap<Subject, u64>>,
    open_count: AtomicUsize,
    node: String,
    lease_seq: AtomicU64,
    m: Counters,
    log: Mutex<LogLimit>,
    prefix: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `ceil(units * period / limit)` in ms: the GCRA emission interval of `units`.
fn interval_ms(units: u64, limit: u64) -> u64 {
    let v = (u128::from(units) * u128::from(RATE_PERIOD_MS)).div_ceil(u128::from(limit.max(1)));
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// `Some(0)` counts as no limit (the usual meaning of 0 in admin forms).
fn limit_of(v: Option<u64>) -> Option<u64> {
    v.filter(|l| *l > 0)
}

impl Inner {
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn allowlisted(&self, ip: IpAddr) -> bool {
        if self.allow.is_empty() {
            return false;
        }
        let ip = crate::types::canonical(ip);
        self.allow.iter().any(|n| n.contains(&ip))
    }

    fn subject(&self, ip: IpAddr) -> Subject {
        Subject::of(ip, self.cfg.ipv6_prefix_len)
    }

    // ---- keys ------------------------------------------------------------------------------

    fn counter_key(&self, rule: Rule, s: &Subject) -> String {
        format!("{}:c:{}:{}", self.prefix, rule.as_str(), s)
    }

    fn ban_keys(&self, s: &Subject) -> BanKeys {
        BanKeys {
            subject: s.to_string(),
            ban: format!("{}:ban:{}", self.prefix, s),
            tier: format!("{}:tier:{}", self.prefix, s),
            index: self.index_key(),
        }
    }

    fn index_key(&self) -> String {
        format!("{}:bans", self.prefix)
    }

    fn ban_prefix(&self) -> String {
        format!("{}:ban:", self.prefix)
    }

    fn scoped_key(&self, kind: &str, scope: char, id: i64) -> String {
        format!("{}:{}:{}:{}", self.prefix, kind, scope, id)
    }

    fn budget_key(&self, key_id: i64, period: BudgetPeriod, start_ms: u64) -> String {
        format!(
            "{}:budget:{}:{}:{}",
            self.prefix,
            key_id,
            period.code(),
            start_ms
        )
    }

    fn unban_channel(&self) -> String {
        format!("{}:unban", self.prefix)
    }

    fn ban_channel(&self) -> String {
        format!("{}:ban", self.prefix)
    }

    // ---- store calls, metrics, logging --------------------------------------------------------

    async fn call<T>(&self, fut: StoreFuture<'_, T>) -> StoreResult<T> {
        self.m.store_calls.fetch_add(1, Ordering::Relaxed);
        let r = fut.await;
        if r.is_err() {
            self.m.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn log_error(&self, err: &StoreError, op: &'static str, fail_open: bool) {
        let now = self.now();
        let mut g = lock(&self.log);
        if now < g.next_ms {
            g.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut g.suppressed);
        g.next_ms = now + self.cfg.error_log_interval_secs.saturating_mul(1000);
        drop(g);
        if fail_open {
            tracing::warn!(error = %err, op, suppressed, "guard: store unavailable, failing open");
        } else {
            tracing::warn!(error = %err, op, suppressed, "guard: store call failed");
        }
    }

    fn fail_open(&self, err: &StoreError, op: &'static str) {
        self.m.fail_open.fetch_add(1, Ordering::Relaxed);
        self.log_error(err, op, true);
    }

    // ---- local ban cache ----------------------------------------------------------------------

    fn cached(&self, s: &Subject, now: u64) -> Option<Option<Ban>> {
        let ttl = self.cfg.ban_cache_ttl_secs.saturating_mul(1000);
        if ttl == 0 {
            return None;
        }
        let g = lock(&self.ban_cache);
        let (ban, at) = g.get(s)?;
        if at + ttl <= now {
            return None;
        }
        Some(
            ban.as_ref()
                .filter(|b| b.until_ms > now)
                .map(|b| b.clone().with_retry(now)),
        )
    }

    fn cache_put(&self, s: Subject, ban: Option<Ban>, now: u64) {
        let ttl = self.cfg.ban_cache_ttl_secs.saturating_mul(1000);
        if ttl == 0 {
            return;
        }
        let mut g = lock(&self.ban_cache);
        if g.len() >= MAX_LOCAL_ENTRIES && !g.contains_key(&s) {
            g.retain(|_, (_, at)| *at + ttl > now);
            if g.len() >= MAX_LOCAL_ENTRIES {
                g.clear();
            }
        }
        g.insert(s, (ban, now));
    }

    fn cache_forget(&self, s: &Subject) {
        lock(&self.ban_cache).remove(s);
    }

    fn cache_clear(&self) {
        lock(&self.ban_cache).clear();
    }

    // ---- relay failure runs -------------------------------------------------------------------

    fn run_opened(&self, s: Subject, now: u64) {
        let window = self.cfg.relay_quota.window_secs.saturating_mul(1000);
        let mut g = lock(&self.open_runs);
        if g.len() >= MAX_LOCAL_ENTRIES && !g.contains_key(&s) {
            g.retain(|_, at| *at + window > now);
        }
        if g.len() < MAX_LOCAL_ENTRIES || g.contains_key(&s) {
            g.insert(s, now);
        }
        self.open_count.store(g.len(), Ordering::Release);
    }

    /// Forgets the subject's run; `true` if it was open (and not yet expired).
    fn run_closed(&self, s: &Subject, now: u64) -> bool {
        let window = self.cfg.relay_quota.window_secs.saturating_mul(1000);
        let mut g = lock(&self.open_runs);
        let was = g.remove(s);
        self.open_count.store(g.len(), Ordering::Release);
        was.is_some_and(|at| at + window > now)
    }

    // ---- autoban ------------------------------------------------------------------------------

    async fn note_rule(&self, ip: IpAddr, rule: Rule, rc: &RuleConfig, sliding: bool) -> Verdict {
        if !self.cfg.autoban || rc.limit == 0 || self.allowlisted(ip) {
            return Verdict::Allow;
        }
        let s = self.subject(ip);
        let now = self.now();
        let hit = Hit {
            counter: self.counter_key(rule, &s),
            limit: rc.limit,
            window_ms: rc.window_secs.saturating_mul(1000),
            sliding,
            ban: Some(BanPlan {
                keys: self.ban_keys(&s),
                rule,
                base_ms: rc.ban_secs.saturating_mul(1000),
                tier_window_ms: self.cfg.tier_window_secs.saturating_mul(1000),
                multipliers: self.cfg.tier_multipliers.clone(),
            }),
        };
        match self.call(self.store.hit(&hit, now)).await {
            Ok(HitOutcome::Counted { .. } | HitOutcome::OverLimit { .. }) => {
                if rule == Rule::RelayQuota {
                    self.run_opened(s, now);
                }
                Verdict::Allow
            }
            Ok(HitOutcome::Banned { ban, new }) => {
                if new {
                    self.m.bans.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        subject = %ban.subject,
                        rule = %ban.rule,
                        count = ban.count,
                        tier = ban.tier,
                        until_ms = ban.until_ms,
                        "guard: banned"
                    );
                }
                if rule == Rule::RelayQuota {
                    self.run_closed(&s, now);
                }
                if new
                    && self.redis.is_some()
                    && let Err(e) = self
                        .bus
                        .publish(&self.ban_channel(), &format!("{s} {}", self.node))
                        .await
                {
                    // the other nodes see it when their cached answer expires
                    tracing::warn!(error = %e, subject = %s, "guard: could not publish the ban");
                }
                let ban = ban.with_retry(now);
                self.cache_put(s, Some(ban.clone()), now);
                Verdict::Banned(ban)
            }
            Err(e) => {
                self.fail_open(&e, "note");
                Verdict::Allow
            }
        }
    }
}

/// Abuse protection for one node: autoban, rate limits, concurrency, budgets. Cheap to clone
/// (an `Arc` inside); build one per process with [`Guard::builder`]. See the
/// [crate docs](crate) for how to wire it in.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("prefix", &self.inner.prefix)
            .field("redis", &self.inner.redis.is_some())
            .finish()
    }
}

/// Builds a [`Guard`]: in-process by default, shared through Redis with [`GuardBuilder::redis`].
#[must_use]
pub struct GuardBuilder {
    cfg: GuardConfig,
    store: Option<Arc<dyn GuardStore>>,
    redis: Option<RedisStore>,
    clock: Option<Arc<dyn Clock>>,
}

impl GuardBuilder {
    /// Share counters and bans through Redis. Also provides the Redis pub/sub (unbans reach every
    /// node's ban cache at once) and the Redis connection metrics.
    pub fn redis(mut self, store: RedisStore) -> Self {
        self.redis = Some(store);
        self
    }

    /// Use this store for the operations instead of the default (a [`MemoryStore`], or the
    /// [`RedisStore`] given to [`GuardBuilder::redis`]) — e.g. an instrumented wrapper.
    pub fn store(mut self, store: Arc<dyn GuardStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The time source (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates the configuration and builds the guard. With Redis it subscribes to the unban
    /// channel, which needs a running Tokio runtime.
    pub fn build(self) -> Result<Guard, GuardError> {
        let cfg = self.cfg;
        validate(&cfg)?;
        let allow = cfg
            .allowlist
            .iter()
            .map(|s| parse_net(s).ok_or_else(|| GuardError::Config(format!("allowlist: {s:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let store: Arc<dyn GuardStore> = match (self.store, &self.redis) {
            (Some(s), _) => s,
            (None, Some(r)) => Arc::new(r.clone()),
            (None, None) => Arc::new(MemoryStore::new()),
        };
        let bus = match &self.redis {
            Some(r) => PubSub::redis(r),
            None => PubSub::local(),
        };
        let node = format!("{:016x}", RandomState::new().hash_one(std::process::id()));
        let inner = Arc::new(Inner {
            prefix: cfg.key_prefix.clone(),
            cfg,
            allow,
            store,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            redis: self.redis,
            bus,
            subscription: Mutex::new(None),
            ban_cache: Mutex::new(HashMap::new()),
            open_runs: Mutex::new(HashMap::new()),
            open_count: AtomicUsize::new(0),
            node,
            lease_seq: AtomicU64::new(0),
            m: Counters::default(),
            log: Mutex::new(LogLimit::default()),
        });
        if inner.redis.is_some() {
            let weak: Weak<Inner> = Arc::downgrade(&inner);
            let v6 = inner.cfg.ipv6_prefix_len;
            // a ban or an unban on another node drops this node's cached answer
            let (unban, ban) = (inner.unban_channel(), inner.ban_channel());
            let sub = inner.bus.subscribe(&[&unban, &ban], move |event| {
                let Some(inner) = weak.upgrade() else { return };
                match event {
                    BusEvent::Message { payload, .. } => {
                        // "<subject>" or "<subject> <node>"; a node's own ban
                        // announcement leaves its freshly cached ban alone
                        let mut parts = payload.split(' ');
                        let subject = parts.next().unwrap_or("");
                        if parts.next() == Some(inner.node.as_str()) {
                            return;
                        }
                        if let Some(s) = Subject::parse(subject, v6) {
                            inner.cache_forget(&s);
                        }
                    }
                    BusEvent::Reconnected => inner.cache_clear(),
                }
            })?;
            *lock(&inner.subscription) = Some(sub);
        }
        Ok(Guard { inner })
    }
}

fn validate(cfg: &GuardConfig) -> Result<(), GuardError> {
    let bad = |m: &str| Err(GuardError::Config(m.to_owned()));
    if cfg.key_prefix.is_empty() {
        return bad("key_prefix is empty");
    }
    if cfg.ipv6_prefix_len > 128 {
        return bad("ipv6_prefix_len is above 128");
    }
    if cfg.tier_multipliers.is_empty() || cfg.tier_multipliers.contains(&0) {
        return bad("tier_multipliers must be non-empty and positive");
    }
    if cfg.lease_ttl_secs == 0 {
        return bad("lease_ttl_secs must be positive");
    }
    for (name, r) in [
        ("credential", &cfg.credential),
        ("api", &cfg.api),
        ("unknown_key", &cfg.unknown_key),
        ("relay_quota", &cfg.relay_quota),
    ] {
        if r.limit > 0 && (r.window_secs == 0 || r.ban_secs == 0) {
            return Err(GuardError::Config(format!(
                "{name}: window_secs and ban_secs must be positive"
            )));
        }
    }
    if cfg.api_per_user.limit > 0 && cfg.api_per_user.window_secs == 0 {
        return bad("api_per_user.window_secs must be positive");
    }
    Ok(())
}

impl Guard {
    /// A builder with `config`.
    pub fn builder(config: GuardConfig) -> GuardBuilder {
        GuardBuilder {
            cfg: config,
            store: None,
            redis: None,
            clock: None,
        }
    }

    /// An in-process guard (single node) on the system clock.
    pub fn memory(config: GuardConfig) -> Result<Guard, GuardError> {
        Guard::builder(config).build()
    }

    /// A guard sharing its state through `redis`, on the system clock.
    pub fn with_redis(config: GuardConfig, redis: RedisStore) -> Result<Guard, GuardError> {
        Guard::builder(config).redis(redis).build()
    }

    /// The configuration in force.
    pub fn config(&self) -> &GuardConfig {
        &self.inner.cfg
    }

    /// The guard's clock reading.
    pub fn now_ms(&self) -> u64 {
        self.inner.now()
    }

    /// The pub/sub the guard uses (Redis when configured, else in-process), free for other
    /// caches to share.
    pub fn pubsub(&self) -> &PubSub {
        &self.inner.bus
    }

    /// Waits until the guard listens to unbans published by other nodes (at once without Redis).
    /// Not needed for correctness (the ban cache TTL bounds staleness anyway); useful in tests
    /// and readiness probes.
    pub async fn ready(&self) {
        let rx = lock(&self.inner.subscription)
            .as_ref()
            .map(Subscription::ready_signal);
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|r| *r).await;
        }
    }

    /// Whether `ip` is on the allowlist (never counted nor banned).
    pub fn is_allowlisted(&self, ip: IpAddr) -> bool {
        self.inner.allowlisted(ip)
    }

    // ---- autoban ------------------------------------------------------------------------------

    /// Is this client banned, and for how long? Call it first on every request; refuse with
    /// `retry-after: ban.retry_after_secs` when `Some`.
    ///
    /// Answered from a local cache for `ban_cache_ttl_secs` (one store call per IP per TTL at
    /// most); fails open (`None`) when the store is unreachable.
    pub async fn check_ip(&self, ip: IpAddr) -> Option<Ban> {
        let i = &self.inner;
        if !i.cfg.autoban || i.allowlisted(ip) {
            return None;
        }
        let s = i.subject(ip);
        let now = i.now();
        if let Some(hit) = i.cached(&s, now) {
            return hit;
        }
        let keys = i.ban_keys(&s);
        match i.call(i.store.get_ban(&keys, now)).await {
            Ok(ban) => {
                let ban = ban.map(|b| b.with_retry(now));
                i.cache_put(s, ban.clone(), now);
                ban
            }
            Err(e) => {
                i.fail_open(&e, "check_ip");
                i.cache_put(s, None, now);
                None
            }
        }
    }

    /// Counts a request to a credential endpoint (sign-in, registration, password reset, …).
    pub async fn note_credential_attempt(&self, ip: IpAddr) -> Verdict {
        let rc = self.inner.cfg.credential.clone();
        self.inner.note_rule(ip, Rule::Credential, &rc, false).await
    }

    /// Counts a request to the rest of `/api/*`: per IP when anonymous (ban over the limit), per
    /// user when `user` is a signed-in session's user id ([`Verdict::Limited`] over the
    /// allowance; the IP is not counted, so many users behind one NAT do not ban each other).
    pub async fn note_api_request(&self, ip: IpAddr, user: Option<i64>) -> Verdict {
        let i = &self.inner;
        let Some(uid) = user else {
            let rc = i.cfg.api.clone();
            return i.note_rule(ip, Rule::Api, &rc, false).await;
        };
        let a = &i.cfg.api_per_user;
        if !i.cfg.autoban || a.limit == 0 {
            return Verdict::Allow;
        }
        let now = i.now();
        let hit = Hit {
            counter: format!("{}:c:user:{}", i.prefix, uid),
            limit: a.limit,
            window_ms: a.window_secs.saturating_mul(1000),
            sliding: false,
            ban: None,
        };
        match i.call(i.store.hit(&hit, now)).await {
            Ok(HitOutcome::OverLimit { reset_in_ms, .. }) => {
                i.m.denials.fetch_add(1, Ordering::Relaxed);
                Verdict::Limited(Deny {
                    retry_after_secs: ceil_secs(reset_in_ms),
                    reason: DenyReason::UserAllowance,
                })
            }
            Ok(_) => Verdict::Allow,
            Err(e) => {
                i.fail_open(&e, "note_api_request");
                Verdict::Allow
            }
        }
    }

    /// Counts an unknown API key presented on a relay endpoint (key guessing).
    pub async fn note_unknown_key(&self, ip: IpAddr) -> Verdict {
        let rc = self.inner.cfg.unknown_key.clone();
        self.inner.note_rule(ip, Rule::UnknownKey, &rc, false).await
    }

    /// Reports how a relay request ended. `InsufficientQuota` extends the IP's failure run (one
    /// store call) and bans past the limit; `Success` ends it — at no cost at all unless this node
    /// saw a run open for this IP, in which case it costs one store call, once.
    pub async fn note_relay_result(&self, ip: IpAddr, status: RelayStatus) -> Verdict {
        let i = &self.inner;
        match status {
            RelayStatus::OtherFailure => Verdict::Allow,
            RelayStatus::Success => {
                // The hot path: one atomic load when no run is open on this node.
                if i.open_count.load(Ordering::Acquire) == 0 {
                    return Verdict::Allow;
                }
                let s = i.subject(ip);
                let now = i.now();
                if i.run_closed(&s, now) {
                    let key = i.counter_key(Rule::RelayQuota, &s);
                    if let Err(e) = i.call(i.store.reset(&key)).await {
                        i.log_error(&e, "relay_reset", false);
                    }
                }
                Verdict::Allow
            }
            RelayStatus::InsufficientQuota => {
                let rc = i.cfg.relay_quota.clone();
                i.note_rule(ip, Rule::RelayQuota, &rc, true).await
            }
        }
    }

    /// The active bans (at most 10 000), soonest to end first. Errors are reported, not hidden.
    pub async fn bans(&self) -> Result<Vec<Ban>, GuardError> {
        let i = &self.inner;
        let now = i.now();
        let index = i.index_key();
        let prefix = i.ban_prefix();
        let bans = i
            .call(i.store.list_bans(&index, &prefix, now, MAX_LISTED_BANS))
            .await?;
        Ok(bans.into_iter().map(|b| b.with_retry(now)).collect())
    }

    /// Lifts the ban of `subject` (an IP address, or a network as listed by [`Guard::bans`]),
    /// forgets its tier and its counters, and tells the other nodes. `Ok(false)` when it was not
    /// banned.
    pub async fn unban(&self, subject: &str) -> Result<bool, GuardError> {
        let i = &self.inner;
        let s = Subject::parse(subject, i.cfg.ipv6_prefix_len)
            .ok_or_else(|| GuardError::BadSubject(subject.to_owned()))?;
        let keys = i.ban_keys(&s);
        let counters: Vec<String> = Rule::ALL.iter().map(|r| i.counter_key(*r, &s)).collect();
        let now = i.now();
        let existed = i.call(i.store.unban(&keys, &counters, now)).await?;
        i.cache_forget(&s);
        i.run_closed(&s, now);
        if i.redis.is_some()
            && let Err(e) = i.bus.publish(&i.unban_channel(), &s.to_string()).await
        {
            tracing::warn!(error = %e, subject = %s, "guard: could not publish unban");
        }
        Ok(existed)
    }

    // ---- limits and budgets -------------------------------------------------------------------

    /// Checks and takes every limit of one request at once (one store call; none when `limits`
    /// limit nothing): RPM (consumed), TPM headroom, a concurrency slot, and the key's budget
    /// against `limits.spend_estimate`. All or nothing: a refusal takes nothing.
    ///
    /// Keep the [`Permit`] for the whole request (stream included): dropping it frees the
    /// concurrency slot. Fails open (a permit without a slot) when the store is unreachable.
    pub async fn acquire(
        &self,
        key_id: i64,
        user_id: i64,
        limits: &Limits,
    ) -> Result<Permit, Deny> {
        let i = &self.inner;
        let now = i.now();
        let mut rates = Vec::new();
        let mut slots = Vec::new();
        for (scope, id, l, rpm_r, tpm_r, conc_r) in [
            (
                'k',
                key_id,
                &limits.key,
                DenyReason::KeyRpm,
                DenyReason::KeyTpm,
                DenyReason::KeyConcurrency,
            ),
            (
                'u',
                user_id,
                &limits.user,
                DenyReason::UserRpm,
                DenyReason::UserTpm,
                DenyReason::UserConcurrency,
            ),
        ] {
            if let Some(rpm) = limit_of(l.rpm) {
                rates.push(RateCheck {
                    key: i.scoped_key("rpm", scope, id),
                    reason: rpm_r,
                    consume_ms: interval_ms(1, rpm),
                });
            }
            if limit_of(l.tpm).is_some() {
                rates.push(RateCheck {
                    key: i.scoped_key("tpm", scope, id),
                    reason: tpm_r,
                    consume_ms: 0,
                });
            }
            if let Some(c) = limit_of(l.concurrency) {
                slots.push(SlotCheck {
                    key: i.scoped_key("conc", scope, id),
                    reason: conc_r,
                    limit: c,
                });
            }
        }
        let budget = limits.key_budget.map(|b| {
            let (start, end) = b.period.bounds(now);
            BudgetCheck {
                key: i.budget_key(key_id, b.period, start),
                limit: b.limit,
                amount: limits.spend_estimate,
                period_end_ms: end,
            }
        });
        if rates.is_empty() && slots.is_empty() && budget.is_none() {
            return Ok(Permit::free());
        }
        let lease_id = format!("{}-{}", i.node, i.lease_seq.fetch_add(1, Ordering::Relaxed));
        let ttl_ms = i.cfg.lease_ttl_secs.saturating_mul(1000);
        let req = AcquireRequest {
            period_ms: RATE_PERIOD_MS,
            rates,
            slots,
            lease_id,
            lease_expires_ms: now + ttl_ms,
            slot_retry_ms: i.cfg.concurrency_retry_after_secs.saturating_mul(1000),
            budget,
        };
        match i.call(i.store.acquire(&req, now)).await {
            Ok(None) if req.slots.is_empty() => Ok(Permit::free()),
            Ok(None) => {
                let lease = Lease {
                    id: req.lease_id,
                    keys: req.slots.into_iter().map(|s| s.key).collect(),
                };
                Ok(Permit::held(self.inner.clone(), lease))
            }
            Ok(Some(d)) => {
                i.m.denials.fetch_add(1, Ordering::Relaxed);
                Err(Deny {
                    retry_after_secs: ceil_secs(d.retry_after_ms),
                    reason: d.reason,
                })
            }
            Err(e) => {
                i.fail_open(&e, "acquire");
                Ok(Permit::free())
            }
        }
    }

    /// Records what a finished request used: its tokens against the key's and the user's TPM,
    /// its cost against the key's budget (of the period containing now). One store call, none
    /// when nothing applies. Errors are counted and logged.
    pub async fn record_usage(&self, key_id: i64, user_id: i64, limits: &Limits, usage: Usage) {
        let i = &self.inner;
        let now = i.now();
        let Some(req) = self.record_request(key_id, user_id, limits, usage, now) else {
            return;
        };
        if let Err(e) = i.call(i.store.record(&req, now)).await {
            i.log_error(&e, "record_usage", false);
        }
    }

    /// Ends a request: frees its permit's concurrency slot and records what
    /// it used ([`Guard::record_usage`]), in one store call when both apply
    /// (one Redis script instead of two). Errors are counted and logged.
    pub async fn finish(
        &self,
        permit: Permit,
        key_id: i64,
        user_id: i64,
        limits: &Limits,
        usage: Usage,
    ) {
        let i = &self.inner;
        let now = i.now();
        let req = self.record_request(key_id, user_id, limits, usage, now);
        let r = match (permit.into_lease(), &req) {
            (Some(lease), Some(req)) => i.call(i.store.finish(&lease, req, now)).await,
            (Some(lease), None) => i.call(i.store.release(&lease)).await,
            (None, Some(req)) => i.call(i.store.record(req, now)).await,
            (None, None) => return,
        };
        if let Err(e) = r {
            i.log_error(&e, "finish", false);
        }
    }

    /// What [`Guard::record_usage`] writes; `None` when nothing applies.
    fn record_request(
        &self,
        key_id: i64,
        user_id: i64,
        limits: &Limits,
        usage: Usage,
        now: u64,
    ) -> Option<RecordRequest> {
        let i = &self.inner;
        let mut rates = Vec::new();
        if usage.tokens > 0 {
            if let Some(tpm) = limit_of(limits.key.tpm) {
                rates.push((
                    i.scoped_key("tpm", 'k', key_id),
                    interval_ms(usage.tokens, tpm),
                ));
            }
            if let Some(tpm) = limit_of(limits.user.tpm) {
                rates.push((
                    i.scoped_key("tpm", 'u', user_id),
                    interval_ms(usage.tokens, tpm),
                ));
            }
        }
        let spend = match limits.key_budget {
            Some(b) if usage.spend > 0 => Some(self.spend_add(key_id, &b, usage.spend, now)),
            _ => None,
        };
        if rates.is_empty() && spend.is_none() {
            return None;
        }
        Some(RecordRequest { rates, spend })
    }

    /// [`Guard::record_usage`] with tokens only.
    pub async fn record_tokens(&self, key_id: i64, user_id: i64, limits: &Limits, tokens: u64) {
        self.record_usage(key_id, user_id, limits, Usage { tokens, spend: 0 })
            .await;
    }

    fn spend_add(&self, key_id: i64, b: &Budget, amount: u64, now: u64) -> SpendAdd {
        let (start, end) = b.period.bounds(now);
        SpendAdd {
            key: self.inner.budget_key(key_id, b.period, start),
            amount,
            ttl_ms: end.saturating_sub(now) + SPEND_GRACE_MS,
        }
    }

    /// Would spending `amount` exceed the key's budget for the current period? `Err` carries the
    /// seconds until the period starts over. Fails open.
    pub async fn check_budget(
        &self,
        key_id: i64,
        budget: &Budget,
        amount: u64,
    ) -> Result<(), Deny> {
        let limits = Limits {
            key_budget: Some(*budget),
            spend_estimate: amount,
            ..Limits::default()
        };
        self.acquire(key_id, 0, &limits).await.map(drop)
    }

    /// Adds `amount` to the key's spend in the current period.
    pub async fn record_spend(&self, key_id: i64, budget: &Budget, amount: u64) {
        let limits = Limits {
            key_budget: Some(*budget),
            ..Limits::default()
        };
        self.record_usage(
            key_id,
            0,
            &limits,
            Usage {
                tokens: 0,
                spend: amount,
            },
        )
        .await;
    }

    /// The key's spend in the current period.
    pub async fn budget_status(
        &self,
        key_id: i64,
        budget: &Budget,
    ) -> Result<BudgetStatus, GuardError> {
        let i = &self.inner;
        let now = i.now();
        let (start, end) = budget.period.bounds(now);
        let key = i.budget_key(key_id, budget.period, start);
        let spent = i.call(i.store.read_counter(&key, now)).await?;
        Ok(BudgetStatus {
            spent,
            limit: budget.limit,
            period_start_ms: start,
            resets_at_ms: end,
        })
    }

    // ---- metrics ------------------------------------------------------------------------------

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> GuardMetrics {
        let m = &self.inner.m;
        GuardMetrics {
            store_calls: m.store_calls.load(Ordering::Relaxed),
            redis_errors: m.errors.load(Ordering::Relaxed),
            fail_open: m.fail_open.load(Ordering::Relaxed),
            bans_issued: m.bans.load(Ordering::Relaxed),
            denials: m.denials.load(Ordering::Relaxed),
            redis_reconnects: self.inner.redis.as_ref().map_or(0, RedisStore::reconnects),
            redis_connected: self.inner.redis.as_ref().map(RedisStore::is_connected),
        }
    }
}

/// Proof that [`Guard::acquire`] let a request through. Hold it until the request (or its
/// stream) ends: dropping it releases the concurrency slot in the background. While held, the
/// lease is renewed every third of `lease_ttl_secs`; if the node dies, the slot frees itself
/// when the lease expires.
#[must_use = "dropping the permit releases its concurrency slot"]
pub struct Permit {
    held: Option<Held>,
}

struct Held {
    inner: Arc<Inner>,
    lease: Arc<Lease>,
    renew: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("lease", &self.held.as_ref().map(|h| h.lease.id.as_str()))
            .finish()
    }
}

impl Permit {
    fn free() -> Permit {
        Permit { held: None }
    }

    fn held(inner: Arc<Inner>, lease: Lease) -> Permit {
        let lease = Arc::new(lease);
        let ttl_ms = inner.cfg.lease_ttl_secs.saturating_mul(1000);
        let every = Duration::from_millis((ttl_ms / 3).max(50));
        let renew = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let weak = Arc::downgrade(&inner);
            let lease = lease.clone();
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let now = inner.now();
                    if let Err(e) = inner
                        .call(inner.store.renew(&lease, now + ttl_ms, now))
                        .await
                    {
                        inner.log_error(&e, "renew_lease", false);
                    }
                }
            })
        });
        Permit {
            held: Some(Held {
                inner,
                lease,
                renew,
            }),
        }
    }

    /// The lease, no longer renewed nor released on drop: the caller gives
    /// it back ([`Guard::finish`]).
    fn into_lease(mut self) -> Option<Arc<Lease>> {
        let h = self.held.take()?;
        if let Some(r) = h.renew {
            r.abort();
        }
        Some(h.lease)
    }

    /// Whether this permit holds a concurrency slot.
    pub fn holds_slot(&self) -> bool {
        self.held.is_some()
    }

    /// Walks away from the slot without releasing it, as a crashed node would: it stops being
    /// renewed and frees itself when its lease expires. (For tests and for shutdown paths that
    /// cannot wait.)
    pub fn abandon(mut self) {
        if let Some(h) = self.held.take()
            && let Some(r) = h.renew
        {
            r.abort();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(h) = self.held.take() else { return };
        if let Some(r) = &h.renew {
            r.abort();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let inner = h.inner;
                if let Err(e) = inner.call(inner.store.release(&h.lease)).await {
                    inner.log_error(&e, "release_lease", false);
                }
            });
        }
    }
}
