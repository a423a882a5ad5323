//! Plain round robin (`roundRobin`, a Zeitwork addition): weights other than 0 are ignored.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Balance, PickCtx, Server};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balance for RoundRobin {
    fn pick(&self, servers: &[Server], _: &PickCtx<'_>) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        (0..n).map(|k| (start + k) % n).find(|&i| servers[i].is_up())
    }
}
