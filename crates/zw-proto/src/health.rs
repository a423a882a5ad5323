//! Rise and fall: when a run of health-check results changes a server's health. One
//! state machine for the edge (servers of a service) and the L4 balancer (edges of a
//! pool), as HAProxy's `rise`/`fall` and Traefik's thresholds define it.
//!
//! A server that is out comes back after `rise` passed checks in a row; one that is in
//! goes out after `fall` failed checks in a row. A result that breaks a run starts the
//! other run from one. The time of the last change is kept for whoever shows the state.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    passed: u32,
    failed: u32,
    last_change: Option<Instant>,
}

impl RiseFall {
    /// Thresholds of 0 count as 1: one result always suffices.
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            passed: 0,
            failed: 0,
            last_change: None,
        }
    }

    /// Records one check result for a server that is `healthy` now; returns its new
    /// health when this result changes it.
    pub fn observe(&mut self, passed: bool, healthy: bool, now: Instant) -> Option<bool> {
        if passed {
            self.passed = self.passed.saturating_add(1);
            self.failed = 0;
        } else {
            self.failed = self.failed.saturating_add(1);
            self.passed = 0;
        }
        let change = match (healthy, passed) {
            (false, true) if self.passed >= self.rise => Some(true),
            (true, false) if self.failed >= self.fall => Some(false),
            _ => None,
        };
        if change.is_some() {
            self.last_change = Some(now);
        }
        change
    }

    /// When a result last changed the server's health.
    pub fn last_change(&self) -> Option<Instant> {
        self.last_change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Drives a server through results, one check every second of supplied time.
    fn run(rf: &mut RiseFall, mut healthy: bool, results: &str, t0: Instant) -> (bool, String) {
        let mut changes = String::new();
        for (i, c) in results.chars().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            if let Some(h) = rf.observe(c == '+', healthy, now) {
                healthy = h;
                changes.push(if h { 'U' } else { 'D' });
            } else {
                changes.push('.');
            }
        }
        (healthy, changes)
    }

    #[test]
    fn fall_then_rise() {
        let t0 = Instant::now();
        let mut rf = RiseFall::new(2, 3);
        // two failures are not enough, a pass breaks the run, three in a row take it out
        let (healthy, changes) = run(&mut rf, true, "--+---", t0);
        assert_eq!((healthy, changes.as_str()), (false, ".....D"));
        assert_eq!(rf.last_change(), Some(t0 + Duration::from_secs(5)));
        // one pass is not enough, a failure breaks it, two in a row bring it back
        let t1 = t0 + Duration::from_secs(10);
        let (healthy, changes) = run(&mut rf, false, "+-++", t1);
        assert_eq!((healthy, changes.as_str()), (true, "...U"));
        assert_eq!(rf.last_change(), Some(t1 + Duration::from_secs(3)));
    }

    #[test]
    fn results_that_agree_with_the_state_change_nothing() {
        let t0 = Instant::now();
        let mut rf = RiseFall::new(1, 1);
        assert_eq!(run(&mut rf, true, "++++", t0), (true, "....".into()));
        assert_eq!(rf.last_change(), None);
        assert_eq!(run(&mut rf, true, "-", t0), (false, "D".into()));
        assert_eq!(run(&mut rf, false, "---+", t0), (true, "...U".into()));
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut rf = RiseFall::new(0, 0);
        assert_eq!(rf.observe(false, true, Instant::now()), Some(false));
        assert_eq!(rf.observe(true, false, Instant::now()), Some(true));
    }

    proptest::proptest! {
        /// Whatever the results, the health changes only at the end of a run of the
        /// threshold's length, and never to what it already is.
        #[test]
        fn changes_only_at_full_runs(
            rise in 1u32..5, fall in 1u32..5, start in proptest::bool::ANY,
            results in proptest::collection::vec(proptest::bool::ANY, 0..64),
        ) {
            let t0 = Instant::now();
            let mut rf = RiseFall::new(rise, fall);
            let mut healthy = start;
            for (i, &ok) in results.iter().enumerate() {
                let run_len = results[..=i].iter().rev().take_while(|&&r| r == ok).count() as u32;
                let threshold = if ok { rise } else { fall };
                match rf.observe(ok, healthy, t0) {
                    Some(h) => {
                        proptest::prop_assert_eq!(h, ok);
                        proptest::prop_assert_ne!(h, healthy);
                        proptest::prop_assert!(run_len >= threshold);
                        healthy = h;
                    }
                    None => proptest::prop_assert!(healthy == ok || run_len < threshold),
                }
            }
        }
    }
}
