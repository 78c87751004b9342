//! Exponential backoff after failed passes.
//!
//! Why its own type: every controller backs off the same way unless it says otherwise, and the
//! schedule is tested once here.

use std::time::Duration;

/// Doubles from `base` with each failure in a row, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// 200 ms, 400 ms, 800 ms ... up to 30 s.
    pub const DEFAULT: Backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(30) };

    /// The delay after `consecutive_failures` failed passes in a row (1 for the first).
    pub fn delay(&self, consecutive_failures: u32) -> Duration {
        let doublings = consecutive_failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_from_the_base_and_stops_at_the_max() {
        let b = Backoff::DEFAULT;
        let ms: Vec<u128> = (1..=10).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        assert_eq!(b.delay(0), b.base, "zero failures is treated as the first");
        assert_eq!(b.delay(u32::MAX), b.max, "no overflow however long it fails");
    }
}
