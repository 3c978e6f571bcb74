//! The Redis store: every operation is one Lua script (`EVALSHA`, with `SCRIPT LOAD` + retry when
//! Redis answers `NOSCRIPT`, e.g. after a restart) or one plain command, so each
//! [`GuardStore`] call is one round trip and atomic for every node sharing the Redis.
//!
//! Connection handling is our own, and fails fast: the store keeps one multiplexed connection;
//! when a call finds it broken (I/O error, dropped, timed out) it drops it and starts a single
//! background task that reconnects with exponential backoff. Until that task succeeds every call
//! fails at once with [`StoreError::Unavailable`] — no request waits on a dead Redis; the
//! [`Guard`](crate::Guard) turns those failures into "allow".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, RedisError, Script};

use super::{
    AcquireRequest, BanKeys, Denial, GuardStore, Hit, HitOutcome, Lease, RecordRequest, StoreError,
    StoreFuture, StoreResult,
};
use crate::config::RedisSettings;
use crate::error::GuardError;
use crate::types::{Ban, DenyReason, Rule};

/// KEYS: counter, ban, tier, index.
/// ARGV: now, limit, window_ms, sliding, has_ban, rule, subject, base_ms, tier_window_ms, mult…
const HIT_LUA: &str = r#"
local now = tonumber(ARGV[1])
local hasban = ARGV[5] == '1'
if hasban then
  local b = redis.call('HMGET', KEYS[2], 'rule', 'count', 'since', 'until', 'tier')
  if b[4] and tonumber(b[4]) > now then
    return {2, tonumber(b[2]), tonumber(b[1]), tonumber(b[3]), tonumber(b[4]), tonumber(b[5])}
  end
end
local c = redis.call('INCR', KEYS[1])
if c == 1 or ARGV[4] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if c <= tonumber(ARGV[2]) then
  return {0, c}
end
if not hasban then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then ttl = 0 end
  return {1, c, ttl}
end
redis.call('DEL', KEYS[1])
local tier = tonumber(redis.call('GET', KEYS[3]) or '0') + 1
local idx = tier
if idx > #ARGV - 9 then idx = #ARGV - 9 end
local dur = tonumber(ARGV[8]) * tonumber(ARGV[9 + idx])
local untilms = now + dur
redis.call('HSET', KEYS[2], 'rule', ARGV[6], 'count', c, 'since', ARGV[1],
  'until', string.format('%d', untilms), 'tier', tier)
redis.call('PEXPIRE', KEYS[2], string.format('%d', dur))
redis.call('SET', KEYS[3], tier, 'PX', string.format('%d', dur + tonumber(ARGV[9])))
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
redis.call('ZADD', KEYS[4], string.format('%d', untilms), ARGV[7])
if redis.call('PTTL', KEYS[4]) < dur then
  redis.call('PEXPIRE', KEYS[4], string.format('%d', dur))
end
return {3, c, tonumber(ARGV[6]), now, untilms, tier}
"#;

/// KEYS: index. ARGV: now, ban key prefix, max.
const LIST_LUA: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local subs = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local out = {}
for _, s in ipairs(subs) do
  local b = redis.call('HMGET', ARGV[2] .. s, 'rule', 'count', 'since', 'until', 'tier')
  if b[4] and tonumber(b[4]) > tonumber(ARGV[1]) then
    table.insert(out, s)
    for i = 1, 5 do table.insert(out, b[i] or '0') end
  end
end
return out
"#;

/// KEYS: ban, tier, index, counters…. ARGV: subject, now.
const UNBAN_LUA: &str = r#"
local u = redis.call('HGET', KEYS[1], 'until')
local existed = 0
if u and tonumber(u) > tonumber(ARGV[2]) then existed = 1 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return existed
"#;

/// KEYS: rate keys…, slot keys…, [budget key].
/// ARGV: now, period, n_rates, n_slots, has_budget, lease_id, lease_expires, slot_retry_ms,
///       (consume_ms, code)…, (limit, code)…, [limit, amount, period_end].
const ACQUIRE_LUA: &str = r#"
local now = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local nr = tonumber(ARGV[3])
local ns = tonumber(ARGV[4])
local hb = tonumber(ARGV[5])
local lexp = tonumber(ARGV[7])
local sretry = tonumber(ARGV[8])
local a = 9
local denied = false
local worst = 0
local reason = 0
local function deny(code, ms)
  if ms < 1 then ms = 1 end
  if (not denied) or ms > worst then
    worst = ms
    reason = code
  end
  denied = true
end
local newtat = {}
for i = 1, nr do
  local consume = tonumber(ARGV[a])
  local code = tonumber(ARGV[a + 1])
  a = a + 2
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  if consume > 0 then
    local nt = tat + consume
    newtat[i] = nt
    if nt - now > period then deny(code, nt - now - period) end
  elseif tat - now >= period then
    deny(code, tat - now - period + 1)
  end
end
for j = 1, ns do
  local k = KEYS[nr + j]
  local limit = tonumber(ARGV[a])
  local code = tonumber(ARGV[a + 1])
  a = a + 2
  redis.call('ZREMRANGEBYSCORE', k, '-inf', ARGV[1])
  if redis.call('ZCARD', k) >= limit then
    local w = sretry
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if first[2] then
      local e = tonumber(first[2]) - now
      if e < w then w = e end
    end
    deny(code, w)
  end
end
if hb == 1 then
  local k = KEYS[nr + ns + 1]
  local limit = tonumber(ARGV[a])
  local amount = tonumber(ARGV[a + 1])
  local pend = tonumber(ARGV[a + 2])
  local spent = tonumber(redis.call('GET', k) or '0')
  if spent >= limit or spent + amount > limit then deny(7, pend - now) end
end
if denied then return {1, reason, worst} end
for i = 1, nr do
  if newtat[i] then
    redis.call('SET', KEYS[i], string.format('%d', newtat[i]), 'PX',
      string.format('%d', newtat[i] - now + 1000))
  end
end
for j = 1, ns do
  local k = KEYS[nr + j]
  redis.call('ZADD', k, ARGV[7], ARGV[6])
  local want = lexp - now + 1000
  if redis.call('PTTL', k) < want then redis.call('PEXPIRE', k, string.format('%d', want)) end
end
return {0}
"#;

/// KEYS: slot keys…. ARGV: lease_id, expires, now.
const RENEW_LUA: &str = r#"
local want = tonumber(ARGV[2]) - tonumber(ARGV[3]) + 1000
for i = 1, #KEYS do
  local s = redis.call('ZSCORE', KEYS[i], ARGV[1])
  if s and tonumber(s) > tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
    if redis.call('PTTL', KEYS[i]) < want then
      redis.call('PEXPIRE', KEYS[i], string.format('%d', want))
    end
  end
end
return 0
"#;

/// KEYS: slot keys…. ARGV: lease_id.
const RELEASE_LUA: &str = r#"
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 0
"#;

/// The body of RECORD_LUA, shared with FINISH_LUA (sets `nr` and `ns`:
/// how many KEYS it used for rates and for the spend counter).
macro_rules! record_lua_body {
    () => {
        r#"
local now = tonumber(ARGV[1])
local nr = tonumber(ARGV[2])
local ns = 0
for i = 1, nr do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local nt = tat + tonumber(ARGV[3 + i])
  redis.call('SET', KEYS[i], string.format('%d', nt), 'PX', string.format('%d', nt - now + 1000))
end
if ARGV[3] == '1' then
  ns = 1
  local k = KEYS[nr + 1]
  redis.call('INCRBY', k, ARGV[4 + nr])
  redis.call('PEXPIRE', k, ARGV[5 + nr])
end
"#
    };
}

/// KEYS: rate keys…, [spend key]. ARGV: now, n_rates, has_spend, add_ms…, [amount, ttl_ms].
const RECORD_LUA: &str = concat!(record_lua_body!(), "return 0\n");

/// RECORD_LUA, then RELEASE_LUA for the keys after the record's.
/// KEYS: rate keys…, [spend key], slot keys…. ARGV: RECORD_LUA's…, lease_id.
const FINISH_LUA: &str = concat!(
    record_lua_body!(),
    r#"
local lease = ARGV[#ARGV]
for i = nr + ns + 1, #KEYS do redis.call('ZREM', KEYS[i], lease) end
return 0
"#
);

/// KEYS and ARGV of RECORD_LUA, with `more_keys` after the record's keys.
fn record_invocation(
    inv: &mut redis::ScriptInvocation<'_>,
    req: &RecordRequest,
    now_ms: u64,
    more_keys: &[String],
) {
    for (k, _) in &req.rates {
        inv.key(k);
    }
    if let Some(s) = &req.spend {
        inv.key(&s.key);
    }
    for k in more_keys {
        inv.key(k);
    }
    inv.arg(now_ms)
        .arg(req.rates.len())
        .arg(u8::from(req.spend.is_some()));
    for (_, add) in &req.rates {
        inv.arg(*add);
    }
    if let Some(s) = &req.spend {
        inv.arg(s.amount).arg(s.ttl_ms.max(1));
    }
}

struct Scripts {
    hit: Script,
    list: Script,
    unban: Script,
    acquire: Script,
    renew: Script,
    release: Script,
    record: Script,
    finish: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            hit: Script::new(HIT_LUA),
            list: Script::new(LIST_LUA),
            unban: Script::new(UNBAN_LUA),
            acquire: Script::new(ACQUIRE_LUA),
            renew: Script::new(RENEW_LUA),
            release: Script::new(RELEASE_LUA),
            record: Script::new(RECORD_LUA),
            finish: Script::new(FINISH_LUA),
        }
    }
}

pub(crate) struct Link {
    pub(crate) client: Client,
    pub(crate) settings: RedisSettings,
    /// The live connection and its generation.
    conn: RwLock<Option<(u64, MultiplexedConnection)>>,
    next_gen: AtomicU64,
    reconnecting: AtomicBool,
    calls: AtomicU64,
    reconnects: AtomicU64,
    scripts: Scripts,
}

impl Link {
    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, conn: MultiplexedConnection) {
        let generation = self.next_gen.fetch_add(1, Ordering::SeqCst) + 1;
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some((generation, conn));
    }

    fn drop_conn(&self, generation: u64) {
        let mut g = self.conn.write().unwrap_or_else(PoisonError::into_inner);
        if g.as_ref()
            .is_some_and(|(current, _)| *current == generation)
        {
            *g = None;
        }
    }

    async fn open(&self) -> Result<MultiplexedConnection, RedisError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(
                self.settings.connect_timeout_ms.max(1),
            )))
            .set_response_timeout(Some(Duration::from_millis(
                self.settings.response_timeout_ms.max(1),
            )));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }
}

/// Shared storage in Redis. Clone it freely (one connection underneath).
///
/// Build it with [`RedisStore::connect`] (waits for the first connection, errors if Redis cannot
/// be reached) or [`RedisStore::connect_lazy`] (never waits: starts disconnected, connects in the
/// background; calls fail open meanwhile).
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) link: Arc<Link>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connected", &self.is_connected())
            .field("calls", &self.calls())
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

fn backend(e: &RedisError) -> StoreError {
    if is_connection_error(e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

enum Call<'a> {
    Cmd(redis::Cmd),
    Script(redis::ScriptInvocation<'a>),
}

impl RedisStore {
    fn build(url: &str, settings: RedisSettings) -> Result<Self, GuardError> {
        let client = Client::open(url).map_err(|e| GuardError::Redis(e.to_string()))?;
        Ok(Self {
            link: Arc::new(Link {
                client,
                settings,
                conn: RwLock::new(None),
                next_gen: AtomicU64::new(0),
                reconnecting: AtomicBool::new(false),
                calls: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                scripts: Scripts::new(),
            }),
        })
    }

    /// Connects to `url` (`redis://host:port/db`, `redis+unix:///path`), waiting for the first
    /// connection: an unreachable Redis is an error here. Later outages are handled (fail open,
    /// reconnect in the background).
    pub async fn connect(url: &str, settings: RedisSettings) -> Result<Self, GuardError> {
        let store = Self::build(url, settings)?;
        let conn = store
            .link
            .open()
            .await
            .map_err(|e| GuardError::Redis(e.to_string()))?;
        store.link.install(conn);
        Ok(store)
    }

    /// Like [`RedisStore::connect`], without waiting: the first connection is made in the
    /// background (calls fail open until then). Only a malformed URL is an error. Must be called
    /// inside a Tokio runtime.
    pub fn connect_lazy(url: &str, settings: RedisSettings) -> Result<Self, GuardError> {
        let store = Self::build(url, settings)?;
        tokio::runtime::Handle::try_current().map_err(|_| GuardError::NoRuntime)?;
        store.trigger_reconnect();
        Ok(store)
    }

    /// Round trips sent to Redis so far (scripts and commands; a `NOSCRIPT` reload counts once).
    pub fn calls(&self) -> u64 {
        self.link.calls.load(Ordering::Relaxed)
    }

    /// Connections made by the background reconnect task so far.
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects.load(Ordering::Relaxed)
    }

    /// Whether a connection is currently held (it may still turn out broken on the next call).
    pub fn is_connected(&self) -> bool {
        self.link.current().is_some()
    }

    /// The settings this store was built with.
    pub fn settings(&self) -> &RedisSettings {
        &self.link.settings
    }

    fn trigger_reconnect(&self) {
        if self.link.reconnecting.swap(true, Ordering::SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(reconnect_loop(Arc::downgrade(&self.link)));
            }
            Err(_) => self.link.reconnecting.store(false, Ordering::SeqCst),
        }
    }

    async fn exec<T: FromRedisValue>(&self, call: Call<'_>) -> StoreResult<T> {
        let Some((generation, mut conn)) = self.link.current() else {
            self.trigger_reconnect();
            return Err(StoreError::Unavailable("not connected to redis".to_owned()));
        };
        self.link.calls.fetch_add(1, Ordering::Relaxed);
        let res = match call {
            Call::Cmd(cmd) => cmd.query_async::<T>(&mut conn).await,
            Call::Script(inv) => inv.invoke_async::<T>(&mut conn).await,
        };
        res.map_err(|e| {
            if is_connection_error(&e) {
                self.link.drop_conn(generation);
                self.trigger_reconnect();
            }
            backend(&e)
        })
    }

    /// `PUBLISH channel message`; returns how many subscribers received it.
    pub async fn publish(&self, channel: &str, message: &str) -> StoreResult<u64> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        self.exec(Call::Cmd(cmd)).await
    }
}

async fn reconnect_loop(link: Weak<Link>) {
    let mut delay = None::<u64>;
    loop {
        let Some(l) = link.upgrade() else { return };
        let min = l.settings.reconnect_min_ms.max(1);
        let max = l.settings.reconnect_max_ms.max(min);
        match l.open().await {
            Ok(conn) => {
                l.reconnecting.store(false, Ordering::SeqCst);
                l.install(conn);
                l.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!("guard: connected to redis");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "guard: redis reconnect attempt failed"),
        }
        let d = delay.map_or(min, |d| d.saturating_mul(2).min(max));
        delay = Some(d);
        drop(l);
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
}

fn bad_reply(what: &str) -> StoreError {
    StoreError::Reply(what.to_owned())
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ban_from(subject: &str, rule: i64, count: i64, since: i64, until: i64, tier: i64) -> Ban {
    Ban {
        subject: subject.to_owned(),
        rule: Rule::from_code(rule).unwrap_or(Rule::Api),
        count: u(count),
        since_ms: u(since),
        until_ms: u(until),
        tier: u32::try_from(tier).unwrap_or(1),
        retry_after_secs: 0,
    }
}

impl GuardStore for RedisStore {
    fn get_ban<'a>(&'a self, keys: &'a BanKeys, now_ms: u64) -> StoreFuture<'a, Option<Ban>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&keys.ban)
                .arg("rule")
                .arg("count")
                .arg("since")
                .arg("until")
                .arg("tier");
            let v: Vec<Option<i64>> = self.exec(Call::Cmd(cmd)).await?;
            let [
                Some(rule),
                Some(count),
                Some(since),
                Some(until),
                Some(tier),
            ] = v[..]
            else {
                return Ok(None);
            };
            if u(until) <= now_ms {
                return Ok(None);
            }
            Ok(Some(ban_from(
                &keys.subject,
                rule,
                count,
                since,
                until,
                tier,
            )))
        })
    }

    fn hit<'a>(&'a self, hit: &'a Hit, now_ms: u64) -> StoreFuture<'a, HitOutcome> {
        Box::pin(async move {
            let mut inv = self.link.scripts.hit.prepare_invoke();
            inv.key(&hit.counter);
            match &hit.ban {
                Some(plan) => {
                    inv.key(&plan.keys.ban)
                        .key(&plan.keys.tier)
                        .key(&plan.keys.index);
                }
                None => {
                    // Placeholders: the script reads them only when it has a ban plan.
                    inv.key(&hit.counter).key(&hit.counter).key(&hit.counter);
                }
            }
            inv.arg(now_ms)
                .arg(hit.limit)
                .arg(hit.window_ms.max(1))
                .arg(if hit.sliding { "1" } else { "0" });
            match &hit.ban {
                Some(plan) => {
                    inv.arg("1")
                        .arg(plan.rule.code())
                        .arg(&plan.keys.subject)
                        .arg(plan.base_ms)
                        .arg(plan.tier_window_ms);
                    if plan.multipliers.is_empty() {
                        inv.arg(1u32);
                    }
                    for m in &plan.multipliers {
                        inv.arg(*m);
                    }
                }
                None => {
                    inv.arg("0").arg(0).arg("").arg(0).arg(0).arg(1u32);
                }
            }
            let v: Vec<i64> = self.exec(Call::Script(inv)).await?;
            match v[..] {
                [0, count] => Ok(HitOutcome::Counted { count: u(count) }),
                [1, count, ttl] => Ok(HitOutcome::OverLimit {
                    count: u(count),
                    reset_in_ms: u(ttl),
                }),
                [status @ (2 | 3), count, rule, since, until, tier] => {
                    let subject = hit.ban.as_ref().map_or("", |p| p.keys.subject.as_str());
                    Ok(HitOutcome::Banned {
                        ban: ban_from(subject, rule, count, since, until, tier),
                        new: status == 3,
                    })
                }
                _ => Err(bad_reply("hit")),
            }
        })
    }

    fn reset<'a>(&'a self, counter: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(counter);
            let _: i64 = self.exec(Call::Cmd(cmd)).await?;
            Ok(())
        })
    }

    fn list_bans<'a>(
        &'a self,
        index: &'a str,
        ban_prefix: &'a str,
        now_ms: u64,
        max: usize,
    ) -> StoreFuture<'a, Vec<Ban>> {
        Box::pin(async move {
            let mut inv = self.link.scripts.list.prepare_invoke();
            inv.key(index).arg(now_ms).arg(ban_prefix).arg(max.max(1));
            let v: Vec<String> = self.exec(Call::Script(inv)).await?;
            let num = |s: &String| s.parse::<i64>().unwrap_or(0);
            Ok(v.chunks_exact(6)
                .map(|c| {
                    ban_from(
                        &c[0],
                        num(&c[1]),
                        num(&c[2]),
                        num(&c[3]),
                        num(&c[4]),
                        num(&c[5]),
                    )
                })
                .collect())
        })
    }

    fn unban<'a>(
        &'a self,
        keys: &'a BanKeys,
        counters: &'a [String],
        now_ms: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut inv = self.link.scripts.unban.prepare_invoke();
            inv.key(&keys.ban).key(&keys.tier).key(&keys.index);
            for c in counters {
                inv.key(c);
            }
            inv.arg(&keys.subject).arg(now_ms);
            let existed: i64 = self.exec(Call::Script(inv)).await?;
            Ok(existed == 1)
        })
    }

    fn acquire<'a>(
        &'a self,
        req: &'a AcquireRequest,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<Denial>> {
        Box::pin(async move {
            let mut inv = self.link.scripts.acquire.prepare_invoke();
            for r in &req.rates {
                inv.key(&r.key);
            }
            for s in &req.slots {
                inv.key(&s.key);
            }
            if let Some(b) = &req.budget {
                inv.key(&b.key);
            }
            inv.arg(now_ms)
                .arg(req.period_ms)
                .arg(req.rates.len())
                .arg(req.slots.len())
                .arg(u8::from(req.budget.is_some()))
                .arg(&req.lease_id)
                .arg(req.lease_expires_ms)
                .arg(req.slot_retry_ms);
            for r in &req.rates {
                inv.arg(r.consume_ms).arg(r.reason.code());
            }
            for s in &req.slots {
                inv.arg(s.limit).arg(s.reason.code());
            }
            if let Some(b) = &req.budget {
                inv.arg(b.limit).arg(b.amount).arg(b.period_end_ms);
            }
            let v: Vec<i64> = self.exec(Call::Script(inv)).await?;
            match v[..] {
                [0] => Ok(None),
                [1, code, ms] => Ok(Some(Denial {
                    reason: DenyReason::from_code(code).ok_or_else(|| bad_reply("acquire"))?,
                    retry_after_ms: u(ms),
                })),
                _ => Err(bad_reply("acquire")),
            }
        })
    }

    fn renew<'a>(&'a self, lease: &'a Lease, expires_ms: u64, now_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut inv = self.link.scripts.renew.prepare_invoke();
            for k in &lease.keys {
                inv.key(k);
            }
            inv.arg(&lease.id).arg(expires_ms).arg(now_ms);
            let _: i64 = self.exec(Call::Script(inv)).await?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut inv = self.link.scripts.release.prepare_invoke();
            for k in &lease.keys {
                inv.key(k);
            }
            inv.arg(&lease.id);
            let _: i64 = self.exec(Call::Script(inv)).await?;
            Ok(())
        })
    }

    fn record<'a>(&'a self, req: &'a RecordRequest, now_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut inv = self.link.scripts.record.prepare_invoke();
            record_invocation(&mut inv, req, now_ms, &[]);
            let _: i64 = self.exec(Call::Script(inv)).await?;
            Ok(())
        })
    }

    fn finish<'a>(
        &'a self,
        lease: &'a Lease,
        req: &'a RecordRequest,
        now_ms: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut inv = self.link.scripts.finish.prepare_invoke();
            record_invocation(&mut inv, req, now_ms, &lease.keys);
            inv.arg(&lease.id);
            let _: i64 = self.exec(Call::Script(inv)).await?;
            Ok(())
        })
    }

    fn read_counter<'a>(&'a self, key: &'a str, _now_ms: u64) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key);
            let v: Option<u64> = self.exec(Call::Cmd(cmd)).await?;
            Ok(v.unwrap_or(0))
        })
    }
}
