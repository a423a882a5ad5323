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
        // Each skipped server costs a turn of the counter, so the servers that are up share
        // the traffic evenly (giving a down server's turn to its neighbour would not).
        (0..n)
            .map(|_| self.next.fetch_add(1, Relaxed) % n)
            .find(|&i| servers[i].is_up())
    }
}
