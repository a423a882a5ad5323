//! When to order: renewal ahead of expiry, backoff after failures, and a cap on orders per
//! certificate per hour. Plain functions of the time given, tested without a clock, so that
//! a broken DNS record never turns into a CA rate-limit lockout (Let's Encrypt allows 5
//! failed validations per name per hour; Traefik retries on every configuration change).

use std::collections::VecDeque;
use std::time::Duration;

/// At most this many orders for one certificate in any hour, whatever fails.
pub const ORDERS_PER_HOUR: usize = 3;
/// The first wait after a failed order; it doubles per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(60);
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);
const THIRTY_DAYS: i64 = 30 * 24 * 3600;

/// When a certificate valid from `not_before` to `not_after` (seconds since the epoch) is
/// renewed: 30 days before it expires, or when a third of its lifetime is left for
/// certificates that live less than 90 days (Let's Encrypt's short-lived profiles).
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    not_after.saturating_sub(THIRTY_DAYS.min(lifetime / 3))
}

/// How long until a certificate valid from `not_before` to `not_after` is renewed, at
/// `now` (all seconds since the epoch); `None` when it is due now.
pub fn until_renewal(now: i64, not_before: i64, not_after: i64) -> Option<Duration> {
    let at = renew_at(not_before, not_after);
    (now < at).then(|| Duration::from_secs((at - now) as u64))
}

/// The orders placed for one certificate, on a monotonic clock of the caller's (any
/// `Duration` since a fixed origin).
#[derive(Debug, Clone, Default)]
pub struct Attempts {
    /// Failures since the last success.
    failures: u32,
    /// When the last order ended in failure.
    last_failure: Option<Duration>,
    /// When each order of the last hour started.
    recent: VecDeque<Duration>,
}

impl Attempts {
    /// The earliest time the next order may start (`now` or later).
    pub fn next_allowed(&self, now: Duration) -> Duration {
        let mut at = now;
        if let Some(failed) = self.last_failure {
            at = at.max(failed + self.backoff());
        }
        let in_hour: Vec<&Duration> = self.recent.iter().filter(|t| **t + HOUR > now).collect();
        if in_hour.len() >= ORDERS_PER_HOUR {
            // The oldest of the last ORDERS_PER_HOUR leaves the window first.
            if let Some(oldest) = in_hour.get(in_hour.len() - ORDERS_PER_HOUR) {
                at = at.max(**oldest + HOUR);
            }
        }
        at
    }

    /// How long the next order must wait at `now`; `None` when it may start now.
    pub fn wait(&self, now: Duration) -> Option<Duration> {
        let allowed = self.next_allowed(now);
        (allowed > now).then(|| allowed - now)
    }

    /// The wait after the failures so far: 1 min, 2 min, 4 min … 24 h.
    pub fn backoff(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (self.failures - 1).min(20);
        FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
    }

    /// An order starts at `now`.
    pub fn started(&mut self, now: Duration) {
        while self.recent.front().is_some_and(|t| *t + HOUR <= now) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
    }

    pub fn failed(&mut self, now: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(now);
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.last_failure = None;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600;
    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_90_day_certificate_renews_30_days_before_expiry() {
        assert_eq!(renew_at(0, 90 * DAY), 60 * DAY);
    }

    #[test]
    fn the_wait_until_renewal_ends_when_it_is_due() {
        assert_eq!(
            until_renewal(0, 0, 90 * DAY),
            Some(Duration::from_secs(60 * DAY as u64))
        );
        assert_eq!(until_renewal(60 * DAY, 0, 90 * DAY), None);
    }

    #[test]
    fn a_short_lived_certificate_renews_at_two_thirds() {
        // Let's Encrypt's 6-day profile: renewed with 2 days left.
        assert_eq!(renew_at(0, 6 * DAY), 4 * DAY);
        assert_eq!(renew_at(100, 100 + 300), 100 + 200);
        // Nonsense validity (not_after before not_before) renews at once.
        assert_eq!(renew_at(10, 5), 5);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_day() {
        let mut a = Attempts::default();
        assert_eq!(a.next_allowed(s(0)), s(0));
        a.started(s(0));
        a.failed(s(10));
        assert_eq!(a.next_allowed(s(10)), s(70));
        a.started(s(70));
        a.failed(s(70));
        assert_eq!(a.next_allowed(s(70)), s(190));
        for _ in 0..40 {
            a.failed(s(1000));
        }
        assert_eq!(a.backoff(), MAX_BACKOFF);
        a.succeeded();
        assert_eq!(a.next_allowed(s(2000)), s(2000));
    }

    #[test]
    fn no_more_than_three_orders_an_hour_even_when_each_succeeds() {
        let mut a = Attempts::default();
        for t in [0, 100, 200] {
            assert_eq!(a.next_allowed(s(t)), s(t));
            a.started(s(t));
            a.succeeded();
        }
        // The fourth waits until the first leaves the hour.
        assert_eq!(a.next_allowed(s(300)), s(3600));
        a.started(s(3600));
        assert_eq!(a.next_allowed(s(3601)), s(3700));
    }

    proptest::proptest! {
        /// Whatever happens, never more than ORDERS_PER_HOUR orders start in an hour
        /// when the caller waits for next_allowed.
        #[test]
        fn the_cap_holds(outcomes in proptest::collection::vec(0u8..3, 1..60), gap in 0u64..2000) {
            let mut a = Attempts::default();
            let mut now = s(0);
            let mut starts = Vec::new();
            for o in outcomes {
                now = a.next_allowed(now);
                a.started(now);
                starts.push(now);
                now += s(gap);
                match o { 0 => a.failed(now), _ => a.succeeded() }
            }
            for (i, t) in starts.iter().enumerate() {
                let within = starts[i..].iter().filter(|u| **u < *t + HOUR).count();
                proptest::prop_assert!(within <= ORDERS_PER_HOUR);
            }
        }
    }
}
