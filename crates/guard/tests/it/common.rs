//! Test harness: one scenario, two backends.
//!
//! `Env::new(Backend::Memory, …)` builds a guard on a `MemoryStore` whose clock jumps forward
//! instantly; `Env::new(Backend::Redis, …)` builds one on the real Redis of `TEST_REDIS_URL` (a
//! unique key prefix per test) where time really passes (`advance` sleeps, Redis TTLs expire).
//! Without `TEST_REDIS_URL` the Redis variants print that they were skipped and pass; with it set
//! and Redis unreachable they fail.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guard::store::{
    AcquireRequest, BanKeys, Denial, GuardStore, Hit, HitOutcome, Lease, RecordRequest, StoreFuture,
};
use guard::{
    AllowanceConfig, Ban, Guard, GuardConfig, ManualClock, MemoryStore, RedisSettings, RedisStore,
    RuleConfig,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
}

/// Runs a scenario as two tests, `NAME::memory` and `NAME::redis`.
macro_rules! both {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$scenario(crate::common::Backend::Memory).await
            }
            #[tokio::test]
            async fn redis() {
                super::$scenario(crate::common::Backend::Redis).await
            }
        }
    };
}
pub(crate) use both;

pub fn redis_url() -> Option<String> {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// `None` (after saying so) when the test needs Redis and `TEST_REDIS_URL` is unset.
pub fn redis_url_or_skip(test: &str) -> Option<String> {
    let url = redis_url();
    if url.is_none() {
        println!("SKIPPED {test}: TEST_REDIS_URL is not set");
    }
    url
}

pub fn unique_prefix(test: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "gtest:{test}:{}:{nanos}:{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Short windows for tests: limits of a few events, bans of seconds.
pub fn test_config(prefix: &str) -> GuardConfig {
    GuardConfig {
        key_prefix: prefix.to_owned(),
        credential: RuleConfig::new(3, 10, 2),
        api: RuleConfig::new(5, 10, 2),
        api_per_user: AllowanceConfig {
            limit: 4,
            window_secs: 3,
        },
        unknown_key: RuleConfig::new(4, 10, 2),
        relay_quota: RuleConfig::new(3, 10, 2),
        tier_window_secs: 1,
        tier_multipliers: vec![1, 2, 3],
        ban_cache_ttl_secs: 1,
        lease_ttl_secs: 2,
        concurrency_retry_after_secs: 1,
        ..GuardConfig::default()
    }
}

pub fn fast_redis_settings() -> RedisSettings {
    RedisSettings {
        connect_timeout_ms: 500,
        response_timeout_ms: 1000,
        reconnect_min_ms: 50,
        reconnect_max_ms: 200,
        pubsub_ping_ms: 500,
    }
}

pub struct Env {
    pub backend: Backend,
    pub guard: Guard,
    pub clock: Arc<ManualClock>,
    pub counting: Arc<CountingStore>,
    pub redis: Option<RedisStore>,
}

impl Env {
    /// `None` when the backend is Redis and `TEST_REDIS_URL` is unset.
    pub async fn new(
        backend: Backend,
        test: &str,
        tweak: impl FnOnce(&mut GuardConfig),
    ) -> Option<Env> {
        let prefix = unique_prefix(test);
        let mut cfg = test_config(&prefix);
        tweak(&mut cfg);
        Self::with_config(backend, test, cfg, Arc::new(ManualClock::new())).await
    }

    pub async fn with_config(
        backend: Backend,
        test: &str,
        cfg: GuardConfig,
        clock: Arc<ManualClock>,
    ) -> Option<Env> {
        let (redis, inner): (Option<RedisStore>, Arc<dyn GuardStore>) = match backend {
            Backend::Memory => (None, Arc::new(MemoryStore::new())),
            Backend::Redis => {
                let url = redis_url_or_skip(test)?;
                let store = RedisStore::connect(&url, fast_redis_settings())
                    .await
                    .unwrap_or_else(|e| panic!("TEST_REDIS_URL={url} is set but unreachable: {e}"));
                (Some(store.clone()), Arc::new(store))
            }
        };
        let counting = Arc::new(CountingStore::new(inner));
        let mut b = Guard::builder(cfg)
            .store(counting.clone())
            .clock(clock.clone());
        if let Some(r) = &redis {
            b = b.redis(r.clone());
        }
        let guard = b.build().unwrap();
        guard.ready().await;
        Some(Env {
            backend,
            guard,
            clock,
            counting,
            redis,
        })
    }

    /// Lets `ms` pass: instantly on the test clock (memory), for real (Redis).
    pub async fn advance_ms(&self, ms: u64) {
        match self.backend {
            Backend::Memory => self.clock.advance_ms(ms),
            Backend::Redis => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    /// Store calls seen by the instrumented wrapper.
    pub fn calls(&self) -> u64 {
        self.counting.calls()
    }

    /// Round trips the Redis connection made (0 for memory).
    pub fn redis_calls(&self) -> u64 {
        self.redis.as_ref().map_or(0, RedisStore::calls)
    }

    /// Notes credential attempts until the IP is banned; returns the ban.
    pub async fn ban_by_credentials(&self, ip: IpAddr) -> Ban {
        let limit = self.guard.config().credential.limit;
        for n in 0..limit {
            let v = self.guard.note_credential_attempt(ip).await;
            assert!(v.is_allowed(), "attempt {n} of {ip}: {v:?}");
        }
        match self.guard.note_credential_attempt(ip).await {
            guard::Verdict::Banned(b) => b,
            other => panic!("expected a ban of {ip}, got {other:?}"),
        }
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Polls `f` every 20 ms until it returns true, for at most `ms`.
pub async fn eventually<F, Fut>(ms: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A store wrapper counting every call — the "instrumented wrapper" of the zero-call tests.
pub struct CountingStore {
    inner: Arc<dyn GuardStore>,
    calls: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn GuardStore>) -> Self {
        Self {
            inner,
            calls: AtomicU64::new(0),
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl GuardStore for CountingStore {
    fn get_ban<'a>(&'a self, keys: &'a BanKeys, now_ms: u64) -> StoreFuture<'a, Option<Ban>> {
        self.count();
        self.inner.get_ban(keys, now_ms)
    }
    fn hit<'a>(&'a self, hit: &'a Hit, now_ms: u64) -> StoreFuture<'a, HitOutcome> {
        self.count();
        self.inner.hit(hit, now_ms)
    }
    fn reset<'a>(&'a self, counter: &'a str) -> StoreFuture<'a, ()> {
        self.count();
        self.inner.reset(counter)
    }
    fn list_bans<'a>(
        &'a self,
        index: &'a str,
        ban_prefix: &'a str,
        now_ms: u64,
        max: usize,
    ) -> StoreFuture<'a, Vec<Ban>> {
        self.count();
        self.inner.list_bans(index, ban_prefix, now_ms, max)
    }
    fn unban<'a>(
        &'a self,
        keys: &'a BanKeys,
        counters: &'a [String],
        now_ms: u64,
    ) -> StoreFuture<'a, bool> {
        self.count();
        self.inner.unban(keys, counters, now_ms)
    }
    fn acquire<'a>(
        &'a self,
        req: &'a AcquireRequest,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<Denial>> {
        self.count();
        self.inner.acquire(req, now_ms)
    }
    fn renew<'a>(&'a self, lease: &'a Lease, expires_ms: u64, now_ms: u64) -> StoreFuture<'a, ()> {
        self.count();
        self.inner.renew(lease, expires_ms, now_ms)
    }
    fn release<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()> {
        self.count();
        self.inner.release(lease)
    }
    fn record<'a>(&'a self, req: &'a RecordRequest, now_ms: u64) -> StoreFuture<'a, ()> {
        self.count();
        self.inner.record(req, now_ms)
    }
    fn read_counter<'a>(&'a self, key: &'a str, now_ms: u64) -> StoreFuture<'a, u64> {
        self.count();
        self.inner.read_counter(key, now_ms)
    }
}

/// A `redis-server` of our own, on a port of our own, that a test may kill and restart. Never the
/// shared one.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    pub async fn start(port: u16) -> PrivateRedis {
        let mut r = PrivateRedis { port, child: None };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed for the outage test");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let up = eventually(5000, || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
        })
        .await;
        assert!(up, "private redis-server did not start on {addr}");
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }
}
