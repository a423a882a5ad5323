//! Reconnect delays: exponential backoff with full jitter.
//!
//! Attempt `n` (from 0) waits a uniformly random time in `[0, min(max, base·2ⁿ)]`, the
//! "full jitter" schedule: a fleet of edges that lost the operator at the same moment
//! spreads its reconnects over the whole window instead of arriving in waves. A successful
//! connection resets the schedule.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// DESIGN.md's schedule is 1 s → 60 s.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, given a uniform random number in `[0, 1)`; advances the schedule.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// How many delays were taken since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceilings_double_up_to_the_max_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (0..9)
            .map(|_| {
                let c = b.ceiling().as_secs();
                b.next_delay(0.5);
                c
            })
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn delays_stay_within_the_ceiling(unit in 0.0f64..1.0, attempts in 0u32..200) {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            for _ in 0..attempts { b.next_delay(unit); }
            let ceiling = b.ceiling();
            let d = b.next_delay(unit);
            prop_assert!(d <= ceiling && ceiling <= Duration::from_secs(60));
        }
    }
}
