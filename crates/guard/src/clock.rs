//! The time source of a [`Guard`](crate::Guard).
//!
//! Every decision (window starts, ban ends, lease expiries, budget periods) is taken at
//! `clock.now_ms()`. With Redis the value is passed to the Lua scripts as an argument, so the
//! in-process store and the Redis store compute the same thing from the same instant; key TTLs in
//! Redis are relative (`PX`), so they run on real time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        system_now_ms()
    }
}

pub(crate) fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A clock for tests: the system clock plus an offset that [`ManualClock::advance`] moves.
///
/// Time keeps flowing with the system clock (so real TTLs and real sleeps stay meaningful), and a
/// test can jump forward instantly ("an hour later") or start at a chosen instant
/// ([`ManualClock::starting_at`], e.g. three seconds before midnight UTC).
#[derive(Debug, Default)]
pub struct ManualClock {
    offset_ms: AtomicI64,
}

impl ManualClock {
    /// A clock that reads the system time until advanced.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock whose current reading is `now_ms` (and that then keeps flowing).
    pub fn starting_at(now_ms: u64) -> Self {
        let clock = Self::new();
        clock.set(now_ms);
        clock
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: u64) {
        self.offset_ms
            .fetch_add(i64::try_from(ms).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Moves the clock forward by `secs` seconds.
    pub fn advance(&self, secs: u64) {
        self.advance_ms(secs.saturating_mul(1000));
    }

    /// Makes the clock read `now_ms` at this instant.
    pub fn set(&self, now_ms: u64) {
        let sys = i128::from(system_now_ms());
        let offset = i128::from(now_ms) - sys;
        let offset = i64::try_from(offset).unwrap_or(0);
        self.offset_ms.store(offset, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        let sys = i128::from(system_now_ms());
        let v = sys + i128::from(self.offset_ms.load(Ordering::SeqCst));
        u64::try_from(v.max(0)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_advances_and_sets() {
        let c = ManualClock::new();
        let a = c.now_ms();
        c.advance(3600);
        let b = c.now_ms();
        assert!(b >= a + 3_600_000 && b < a + 3_600_000 + 1000);
        c.set(1_000_000);
        let d = c.now_ms();
        assert!((1_000_000..1_001_000).contains(&d));
    }
}
