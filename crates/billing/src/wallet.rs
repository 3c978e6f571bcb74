//! In-memory holds on a balance.
//!
//! A `Wallet` mirrors one balance (a user's balance, or a key's remaining
//! quota) as three numbers: `committed`, what the database held when this
//! process last wrote or read it; `pending`, costs settled here but not yet
//! written; and `held`, the reservations of requests in flight. The amount a
//! new request may reserve is `committed - pending - held`.
//!
//! Only the process's single storage writer changes `committed` (after a
//! commit, or from a fresh read), so a read never races a write of its own
//! process. The database stays the one authority: the writer applies costs
//! as deltas, never as absolute values.

use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    committed: i64,
    pending: i64,
    held: i64,
}

#[derive(Debug, Default)]
pub struct Wallet {
    state: Mutex<State>,
}

impl Wallet {
    pub fn new(committed: i64) -> Wallet {
        Wallet {
            state: Mutex::new(State {
                committed,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // numbers themselves are always consistent (each update is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a new request may reserve now.
    pub fn available(&self) -> i64 {
        let s = self.lock();
        s.committed - s.pending - s.held
    }

    /// Sum of reservations of requests in flight.
    pub fn held(&self) -> i64 {
        self.lock().held
    }

    /// Costs settled but not yet written.
    pub fn pending(&self) -> i64 {
        self.lock().pending
    }

    /// The writer committed `cost` to the database.
    pub fn committed(&self, cost: i64) {
        let mut s = self.lock();
        s.committed -= cost;
        s.pending -= cost;
    }

    /// The writer read the database value afresh (nothing of this process is
    /// in flight to the database at that moment except `pending`).
    pub fn refresh(&self, committed: i64) {
        self.lock().committed = committed;
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("insufficient balance: this request needs up to {needed} units, {available} available")]
    Balance { needed: i64, available: i64 },
    #[error(
        "API key quota exhausted: this request needs up to {needed} units, {available} left on the key"
    )]
    KeyQuota { needed: i64, available: i64 },
}

/// Alias kept for readability where a key's remaining quota is meant.
pub type KeyBudget = Wallet;

/// A reservation on a user's wallet and, for a key with a quota, the key's.
/// Dropping a hold without settling it releases it (a failed request is
/// refunded in full, whatever path it leaves by).
#[derive(Debug)]
pub struct Hold {
    user: Arc<Wallet>,
    key: Option<Arc<Wallet>>,
    amount: i64,
    open: bool,
}

impl Hold {
    /// Reserves `amount` on both wallets, or neither.
    pub fn reserve(
        user: &Arc<Wallet>,
        key: Option<&Arc<Wallet>>,
        amount: i64,
    ) -> Result<Hold, HoldError> {
        let amount = amount.max(0);
        let mut u = user.lock();
        let available = u.committed - u.pending - u.held;
        // a call that costs nothing (a free model, a managed user's own
        // channel at fee 0) needs no balance
        if available < amount || (available <= 0 && amount > 0) {
            return Err(HoldError::Balance {
                needed: amount,
                available,
            });
        }
        if let Some(k) = key {
            let mut ks = k.lock();
            let left = ks.committed - ks.pending - ks.held;
            if left < amount || (left <= 0 && amount > 0) {
                return Err(HoldError::KeyQuota {
                    needed: amount,
                    available: left,
                });
            }
            ks.held += amount;
        }
        u.held += amount;
        Ok(Hold {
            user: user.clone(),
            key: key.cloned(),
            amount,
            open: true,
        })
    }

    /// A hold of nothing, already closed (a stand-in after the real one
    /// moved on).
    pub fn empty(user: &Arc<Wallet>) -> Hold {
        Hold {
            user: user.clone(),
            key: None,
            amount: 0,
            open: false,
        }
    }

    pub fn amount(&self) -> i64 {
        self.amount
    }

    /// Ends the hold and records `cost` as pending on both wallets; the
    /// storage writer commits it later and calls `Wallet::committed`.
    pub fn settle(mut self, cost: i64) {
        self.open = false;
        {
            let mut u = self.user.lock();
            u.held -= self.amount;
            u.pending += cost;
        }
        if let Some(k) = &self.key {
            let mut ks = k.lock();
            ks.held -= self.amount;
            ks.pending += cost;
        }
    }

    pub fn user_wallet(&self) -> &Arc<Wallet> {
        &self.user
    }

    pub fn key_wallet(&self) -> Option<&Arc<Wallet>> {
        self.key.as_ref()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.open {
            self.user.lock().held -= self.amount;
            if let Some(k) = &self.key {
                k.lock().held -= self.amount;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_settle_commit() {
        let u = Arc::new(Wallet::new(100));
        let h = Hold::reserve(&u, None, 60).unwrap();
        assert_eq!(u.available(), 40);
        assert!(matches!(
            Hold::reserve(&u, None, 50),
            Err(HoldError::Balance {
                needed: 50,
                available: 40
            })
        ));
        h.settle(30);
        assert_eq!(u.available(), 70);
        assert_eq!(u.pending(), 30);
        u.committed(30);
        assert_eq!(u.available(), 70);
        assert_eq!(u.pending(), 0);
    }

    #[test]
    fn drop_releases_and_key_limits() {
        let u = Arc::new(Wallet::new(1000));
        let k = Arc::new(Wallet::new(10));
        {
            let _h = Hold::reserve(&u, Some(&k), 10).unwrap();
            assert_eq!(k.available(), 0);
            assert!(matches!(
                Hold::reserve(&u, Some(&k), 1),
                Err(HoldError::KeyQuota { .. })
            ));
            // the failed reservation left the user's wallet untouched
            assert_eq!(u.held(), 10);
        }
        assert_eq!(u.available(), 1000);
        assert_eq!(k.available(), 10);
    }

    #[test]
    fn empty_wallet_refuses_any_cost_but_allows_a_free_call() {
        let u = Arc::new(Wallet::new(0));
        assert!(Hold::reserve(&u, None, 1).is_err());
        // a call that costs nothing (free model, own channel at fee 0)
        assert!(Hold::reserve(&u, None, 0).is_ok());
        let k = Arc::new(Wallet::new(0));
        let rich = Arc::new(Wallet::new(100));
        assert!(Hold::reserve(&rich, Some(&k), 1).is_err());
        assert!(Hold::reserve(&rich, Some(&k), 0).is_ok());
    }

    #[test]
    fn concurrent_holds_never_exceed_balance() {
        let u = Arc::new(Wallet::new(1000));
        let ok = std::sync::atomic::AtomicI64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let Ok(h) = Hold::reserve(&u, None, 7) {
                            ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            h.settle(7);
                        }
                    }
                });
            }
        });
        let n = ok.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(n, 1000 / 7);
        assert!(u.available() >= 0);
    }
}
