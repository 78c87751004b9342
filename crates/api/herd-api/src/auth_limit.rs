//! Rate-limits failed authentications per source address.
//!
//! Why: the API token is a bearer secret, and a client that guesses tokens must not get to try
//! them at the rate of the network. Each address has a budget of failures that refills
//! steadily; an address whose budget is spent is answered 429 (with `Retry-After`) before its
//! token is even looked at, until the budget refills. Other addresses are not affected, and a
//! success does not refund failures (a guesser with one good token learns nothing more).
//!
//! ```text
//!             failure (budget left)
//!              ┌──────────┐
//!              ▼          │
//!   Fresh ──▶ Spending ───┘ ──(budget spent)──▶ Limited ──(refilled ≥ 1)──▶ Spending
//!     ▲                                                                          │
//!     └────────────────────────(fully refilled: forgotten)───────────────────────┘
//! ```
//!
//! The table is bounded: past [`MAX_ADDRESSES`] entries, the fully refilled ones are dropped
//! first, then the oldest, so a flood of source addresses cannot exhaust memory.

use chrono::{DateTime, Utc};
use herd_model::clock::Clock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many addresses the table remembers at most.
pub const MAX_ADDRESSES: usize = 10_000;

/// The budget: `burst` failures at once, then one more per `refill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureBudget {
    pub burst: u32,
    pub refill: Duration,
}

impl Default for FailureBudget {
    /// 20 failures at once, then one a second.
    fn default() -> Self {
        Self { burst: 20, refill: Duration::from_secs(1) }
    }
}

/// Whether a request from an address may try a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Refused; retry after this long.
    Limited {
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures still allowed, as of `at` (fractional: the budget refills continuously).
    left: f64,
    at: DateTime<Utc>,
}

/// The per-address failure budgets.
#[derive(Debug, Clone)]
pub struct AuthLimiter {
    budget: FailureBudget,
    clock: Arc<dyn Clock>,
    table: Arc<Mutex<HashMap<IpAddr, Entry>>>,
}

impl AuthLimiter {
    pub fn new(budget: FailureBudget, clock: Arc<dyn Clock>) -> Self {
        Self { budget, clock, table: Arc::default() }
    }

    fn refilled(&self, e: Entry, now: DateTime<Utc>) -> f64 {
        let secs = (now - e.at).to_std().unwrap_or_default().as_secs_f64();
        let per = self.budget.refill.as_secs_f64().max(1e-3);
        (e.left + secs / per).min(f64::from(self.budget.burst))
    }

    /// Whether `addr` may try a token now.
    pub fn admit(&self, addr: IpAddr) -> Admission {
        let now = self.clock.now();
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = table.get(&addr) else { return Admission::Allowed };
        let left = self.refilled(*e, now);
        if left >= 1.0 {
            return Admission::Allowed;
        }
        let wait = (1.0 - left) * self.budget.refill.as_secs_f64();
        Admission::Limited { retry_after: Duration::from_secs_f64(wait).max(Duration::from_secs(1)) }
    }

    /// Records a failed authentication from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        let now = self.clock.now();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let left = table.get(&addr).map_or(f64::from(self.budget.burst), |e| self.refilled(*e, now));
        table.insert(addr, Entry { left: (left - 1.0).max(0.0), at: now });
        if table.len() > MAX_ADDRESSES {
            self.shrink(&mut table, now);
        }
    }

    /// Drops the entries whose budget is full again, then (if still too many) the oldest, down
    /// to nine tenths of the bound so that the sort is paid once per thousand new addresses.
    fn shrink(&self, table: &mut HashMap<IpAddr, Entry>, now: DateTime<Utc>) {
        let full = f64::from(self.budget.burst);
        table.retain(|_, e| self.refilled(*e, now) < full);
        let keep = MAX_ADDRESSES / 10 * 9;
        if table.len() > keep {
            let mut ages: Vec<(DateTime<Utc>, IpAddr)> = table.iter().map(|(a, e)| (e.at, *a)).collect();
            ages.sort();
            for (_, a) in ages.iter().take(table.len() - keep) {
                table.remove(a);
            }
        }
    }

    /// How many addresses are remembered (for tests and the status page).
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::clock::ManualClock;

    fn limiter() -> (AuthLimiter, ManualClock) {
        let clock = ManualClock::new(Utc::now());
        (AuthLimiter::new(FailureBudget { burst: 5, refill: Duration::from_secs(2) }, Arc::new(clock.clone())), clock)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_limited_after_its_burst_and_others_are_not() {
        let (l, _) = limiter();
        let bad = ip("127.0.0.9");
        for i in 0..5 {
            assert_eq!(l.admit(bad), Admission::Allowed, "failure {i} should still be admitted");
            l.failed(bad);
        }
        assert!(matches!(l.admit(bad), Admission::Limited { .. }), "the sixth try is admitted");
        assert_eq!(l.admit(ip("127.0.0.10")), Admission::Allowed, "another address is limited too");
        assert_eq!(l.admit(ip("::1")), Admission::Allowed);
    }

    #[test]
    fn the_budget_refills_one_failure_per_period_and_says_when() {
        let (l, clock) = limiter();
        let a = ip("10.1.2.3");
        (0..5).for_each(|_| l.failed(a));
        assert_eq!(l.admit(a), Admission::Limited { retry_after: Duration::from_secs(2) });
        clock.advance(chrono::Duration::milliseconds(1500));
        let Admission::Limited { retry_after } = l.admit(a) else { panic!("admitted before a refill") };
        assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
        clock.advance(chrono::Duration::milliseconds(500));
        assert_eq!(l.admit(a), Admission::Allowed, "one refill in 2 s");
        l.failed(a);
        assert!(matches!(l.admit(a), Admission::Limited { .. }), "the refilled try was not spent");
        clock.advance(chrono::Duration::seconds(60));
        for _ in 0..5 {
            assert_eq!(l.admit(a), Admission::Allowed);
            l.failed(a);
        }
        assert!(matches!(l.admit(a), Admission::Limited { .. }), "the budget refilled beyond its burst");
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_addresses() {
        let (l, clock) = limiter();
        let target = ip("192.0.2.1");
        (0..5).for_each(|_| l.failed(target));
        for i in 0..(MAX_ADDRESSES as u32 + 500) {
            l.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            if i == 100 {
                clock.advance(chrono::Duration::milliseconds(10));
            }
        }
        assert!(l.tracked() <= MAX_ADDRESSES, "{} addresses tracked", l.tracked());
    }
}
