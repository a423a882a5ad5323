//! Smooth weighted round robin (nginx's algorithm), made lock-free.
//!
//! nginx's smooth WRR keeps a mutable "current weight" per server, which would need a lock
//! per pick. The schedule it produces is periodic with period `sum(weights)`, so we compute
//! one period when the snapshot is built and each pick is one atomic increment into it.
//! Weights are reduced by their GCD and, when the period would exceed 4096 entries,
//! scaled down proportionally (each non-zero weight keeps at least one slot).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Balance, PickCtx, Server};

const MAX_PERIOD: u64 = 4096;

/// One period of nginx's smooth weighted round robin over `weights`.
pub fn smooth_wrr_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0u32, gcd);
    if g == 0 {
        return Vec::new();
    }
    let mut w: Vec<u64> = weights.iter().map(|x| u64::from(x / g)).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_PERIOD {
        for x in &mut w {
            if *x > 0 {
                *x = (*x * MAX_PERIOD / sum).max(1);
            }
        }
    }
    let total: u64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Traefik's default strategy (`wrr`).
#[derive(Debug)]
pub struct SmoothWrr {
    schedule: Box<[u32]>,
    next: AtomicUsize,
}

impl SmoothWrr {
    pub fn new(weights: &[u32]) -> Self {
        // Start at a random point so that many edges with the same configuration do not
        // all send their first requests to the same server.
        let schedule = smooth_wrr_schedule(weights).into_boxed_slice();
        let start = if schedule.is_empty() {
            0
        } else {
            fastrand::usize(..schedule.len())
        };
        SmoothWrr {
            schedule,
            next: AtomicUsize::new(start),
        }
    }

    /// Next index in the schedule for which `up` holds.
    pub fn pick_by(&self, up: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        // Skipping costs a turn, so the servers that are up keep their weights' proportions.
        (0..n)
            .map(|_| self.schedule[self.next.fetch_add(1, Relaxed) % n] as usize)
            .find(|&i| up(i))
    }
}

impl Balance for SmoothWrr {
    fn pick(&self, servers: &[Server], _: &PickCtx<'_>) -> Option<usize> {
        self.pick_by(|i| servers.get(i).is_some_and(Server::is_up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_smooth_sequence() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a
        assert_eq!(smooth_wrr_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr_schedule(&[1, 1, 1]), vec![0, 1, 2]);
    }

    #[test]
    fn gcd_reduction_and_zero_weights() {
        assert_eq!(smooth_wrr_schedule(&[200, 100]), vec![0, 1, 0]);
        assert_eq!(smooth_wrr_schedule(&[0, 3]), vec![1]);
        assert!(smooth_wrr_schedule(&[0, 0]).is_empty());
    }

    #[test]
    fn huge_weights_are_scaled_but_keep_every_server() {
        let s = smooth_wrr_schedule(&[1_000_000, 1, 999_999]);
        assert!(s.len() as u64 <= MAX_PERIOD + 3);
        for i in 0..3 {
            assert!(s.contains(&i), "server {i} lost its slot");
        }
    }

    #[test]
    fn down_servers_do_not_shift_share_to_one_neighbour() {
        // weights 1,1,1 with the middle one down: the other two split evenly
        let w = SmoothWrr::new(&[1, 1, 1]);
        let mut count = [0usize; 3];
        for _ in 0..3000 {
            count[w.pick_by(|i| i != 1).unwrap()] += 1;
        }
        assert_eq!(count[1], 0);
        assert!(count[0].abs_diff(count[2]) <= 2, "{count:?}");
    }

    #[test]
    fn skips_down_servers() {
        let w = SmoothWrr::new(&[1, 1, 1]);
        for _ in 0..10 {
            assert_ne!(w.pick_by(|i| i != 1), Some(1));
        }
        assert_eq!(w.pick_by(|_| false), None);
    }
}
