//! The in-process store: the same operations as the Redis scripts, on hash maps under one mutex,
//! with expiry computed from the `now_ms` each call carries (so a test clock drives it).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{
    AcquireRequest, BanKeys, Denial, GuardStore, Hit, HitOutcome, Lease, RecordRequest,
    StoreFuture, ban_duration_ms,
};
use crate::types::{Ban, DenyReason};

/// Prune expired entries every this many operations.
const PRUNE_EVERY: u64 = 4096;

#[derive(Debug, Clone, Copy)]
struct Counter {
    value: u64,
    expires_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    counters: HashMap<String, Counter>,
    bans: HashMap<String, Ban>,
    tiers: HashMap<String, Counter>,
    /// Theoretical arrival times; an entry at or before `now` is the same as none.
    tats: HashMap<String, u64>,
    /// Slot set → lease id → expiry.
    slots: HashMap<String, HashMap<String, u64>>,
    sums: HashMap<String, Counter>,
    ops: u64,
}

impl State {
    fn tick(&mut self, now: u64) {
        self.ops = self.ops.wrapping_add(1);
        if !self.ops.is_multiple_of(PRUNE_EVERY) {
            return;
        }
        self.counters.retain(|_, c| c.expires_ms > now);
        self.bans.retain(|_, b| b.until_ms > now);
        self.tiers.retain(|_, c| c.expires_ms > now);
        self.tats.retain(|_, t| *t > now);
        self.slots.retain(|_, set| {
            set.retain(|_, e| *e > now);
            !set.is_empty()
        });
        self.sums.retain(|_, c| c.expires_ms > now);
    }

    fn active_ban(&self, key: &str, now: u64) -> Option<&Ban> {
        self.bans.get(key).filter(|b| b.until_ms > now)
    }
}

/// Single-node storage in this process. Cheap to clone? No: share it in an `Arc` (the
/// [`Guard`](crate::Guard) does).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hit_sync(&self, hit: &Hit, now: u64) -> HitOutcome {
        let mut st = self.lock();
        st.tick(now);
        if let Some(plan) = &hit.ban
            && let Some(b) = st.active_ban(&plan.keys.ban, now)
        {
            return HitOutcome::Banned {
                ban: b.clone(),
                new: false,
            };
        }
        let c = st.counters.entry(hit.counter.clone()).or_insert(Counter {
            value: 0,
            expires_ms: 0,
        });
        if c.expires_ms <= now {
            c.value = 0;
            c.expires_ms = now + hit.window_ms;
        }
        c.value += 1;
        if hit.sliding {
            c.expires_ms = now + hit.window_ms;
        }
        let count = c.value;
        let reset_in_ms = c.expires_ms.saturating_sub(now);
        if count <= hit.limit {
            return HitOutcome::Counted { count };
        }
        let Some(plan) = &hit.ban else {
            return HitOutcome::OverLimit { count, reset_in_ms };
        };
        st.counters.remove(&hit.counter);
        let prev_tier = st
            .tiers
            .get(&plan.keys.tier)
            .filter(|t| t.expires_ms > now)
            .map_or(0, |t| t.value);
        let tier = u32::try_from(prev_tier + 1).unwrap_or(u32::MAX);
        let dur = ban_duration_ms(plan.base_ms, &plan.multipliers, tier);
        let ban = Ban {
            subject: plan.keys.subject.clone(),
            rule: plan.rule,
            count,
            since_ms: now,
            until_ms: now + dur,
            tier,
            retry_after_secs: 0,
        };
        st.bans.insert(plan.keys.ban.clone(), ban.clone());
        st.tiers.insert(
            plan.keys.tier.clone(),
            Counter {
                value: u64::from(tier),
                expires_ms: now + dur + plan.tier_window_ms,
            },
        );
        HitOutcome::Banned { ban, new: true }
    }

    fn acquire_sync(&self, req: &AcquireRequest, now: u64) -> Option<Denial> {
        let mut st = self.lock();
        st.tick(now);
        let period = req.period_ms;
        let mut worst: Option<Denial> = None;
        let mut deny = |reason: DenyReason, ms: u64| {
            let ms = ms.max(1);
            if worst.is_none_or(|w| ms > w.retry_after_ms) {
                worst = Some(Denial {
                    reason,
                    retry_after_ms: ms,
                });
            }
        };
        let mut new_tats = Vec::with_capacity(req.rates.len());
        for r in &req.rates {
            let tat = st.tats.get(&r.key).copied().unwrap_or(0).max(now);
            if r.consume_ms > 0 {
                let nt = tat + r.consume_ms;
                if nt - now > period {
                    deny(r.reason, nt - now - period);
                }
                new_tats.push((r.key.clone(), nt));
            } else if tat - now >= period {
                deny(r.reason, tat - now - period + 1);
            }
        }
        for s in &req.slots {
            let set = st.slots.entry(s.key.clone()).or_default();
            set.retain(|_, e| *e > now);
            if u64::try_from(set.len()).unwrap_or(u64::MAX) >= s.limit {
                let oldest = set.values().min().map_or(u64::MAX, |e| e - now);
                deny(s.reason, req.slot_retry_ms.min(oldest));
            }
        }
        if let Some(b) = &req.budget {
            let spent = st
                .sums
                .get(&b.key)
                .filter(|c| c.expires_ms > now)
                .map_or(0, |c| c.value);
            if spent >= b.limit || spent.saturating_add(b.amount) > b.limit {
                deny(DenyReason::KeyBudget, b.period_end_ms.saturating_sub(now));
            }
        }
        if worst.is_some() {
            return worst;
        }
        for (k, nt) in new_tats {
            st.tats.insert(k, nt);
        }
        for s in &req.slots {
            st.slots
                .entry(s.key.clone())
                .or_default()
                .insert(req.lease_id.clone(), req.lease_expires_ms);
        }
        None
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl GuardStore for MemoryStore {
    fn get_ban<'a>(&'a self, keys: &'a BanKeys, now_ms: u64) -> StoreFuture<'a, Option<Ban>> {
        let st = self.lock();
        ready(st.active_ban(&keys.ban, now_ms).cloned())
    }

    fn hit<'a>(&'a self, hit: &'a Hit, now_ms: u64) -> StoreFuture<'a, HitOutcome> {
        ready(self.hit_sync(hit, now_ms))
    }

    fn reset<'a>(&'a self, counter: &'a str) -> StoreFuture<'a, ()> {
        self.lock().counters.remove(counter);
        ready(())
    }

    fn list_bans<'a>(
        &'a self,
        _index: &'a str,
        ban_prefix: &'a str,
        now_ms: u64,
        max: usize,
    ) -> StoreFuture<'a, Vec<Ban>> {
        let st = self.lock();
        let mut bans: Vec<Ban> = st
            .bans
            .iter()
            .filter(|(k, b)| k.starts_with(ban_prefix) && b.until_ms > now_ms)
            .map(|(_, b)| b.clone())
            .collect();
        bans.sort_by(|a, b| a.until_ms.cmp(&b.until_ms).then(a.subject.cmp(&b.subject)));
        bans.truncate(max);
        ready(bans)
    }

    fn unban<'a>(
        &'a self,
        keys: &'a BanKeys,
        counters: &'a [String],
        now_ms: u64,
    ) -> StoreFuture<'a, bool> {
        let mut st = self.lock();
        let existed = st
            .bans
            .remove(&keys.ban)
            .is_some_and(|b| b.until_ms > now_ms);
        st.tiers.remove(&keys.tier);
        for c in counters {
            st.counters.remove(c);
        }
        ready(existed)
    }

    fn acquire<'a>(
        &'a self,
        req: &'a AcquireRequest,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<Denial>> {
        ready(self.acquire_sync(req, now_ms))
    }

    fn renew<'a>(&'a self, lease: &'a Lease, expires_ms: u64, now_ms: u64) -> StoreFuture<'a, ()> {
        let mut st = self.lock();
        for k in &lease.keys {
            if let Some(set) = st.slots.get_mut(k)
                && let Some(e) = set.get_mut(&lease.id)
                && *e > now_ms
            {
                *e = expires_ms;
            }
        }
        ready(())
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()> {
        let mut st = self.lock();
        for k in &lease.keys {
            if let Some(set) = st.slots.get_mut(k) {
                set.remove(&lease.id);
                if set.is_empty() {
                    st.slots.remove(k);
                }
            }
        }
        ready(())
    }

    fn record<'a>(&'a self, req: &'a RecordRequest, now_ms: u64) -> StoreFuture<'a, ()> {
        let mut st = self.lock();
        st.tick(now_ms);
        for (k, add) in &req.rates {
            let tat = st.tats.get(k).copied().unwrap_or(0).max(now_ms);
            st.tats.insert(k.clone(), tat.saturating_add(*add));
        }
        if let Some(s) = &req.spend {
            let c = st.sums.entry(s.key.clone()).or_insert(Counter {
                value: 0,
                expires_ms: 0,
            });
            if c.expires_ms <= now_ms {
                c.value = 0;
            }
            c.value = c.value.saturating_add(s.amount);
            c.expires_ms = now_ms + s.ttl_ms;
        }
        ready(())
    }

    fn read_counter<'a>(&'a self, key: &'a str, now_ms: u64) -> StoreFuture<'a, u64> {
        let st = self.lock();
        ready(
            st.sums
                .get(key)
                .filter(|c| c.expires_ms > now_ms)
                .map_or(0, |c| c.value),
        )
    }
}
