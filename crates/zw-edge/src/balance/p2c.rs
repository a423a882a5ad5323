//! Power of two random choices (`p2c`): of two distinct random servers, the one with fewer
//! requests in flight. Close to least-requests in effect, without scanning every server or
//! herding onto the single least-loaded one.

use super::{Balance, PickCtx, Server};

#[derive(Debug, Default)]
pub struct P2c;

/// Two distinct indexes below `n` (n ≥ 2), uniformly.
pub fn gen_pair(n: usize, mut rand: impl FnMut(usize) -> usize) -> (usize, usize) {
    let a = rand(n);
    let mut b = rand(n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

impl Balance for P2c {
    fn pick(&self, servers: &[Server], _: &PickCtx<'_>) -> Option<usize> {
        let up = servers.iter().filter(|s| s.is_up()).count();
        match up {
            0 => None,
            1 => servers.iter().position(Server::is_up),
            _ if up == servers.len() => {
                let (a, b) = gen_pair(servers.len(), |n| fastrand::usize(..n));
                Some(
                    if servers[b].state.in_flight() < servers[a].state.in_flight() {
                        b
                    } else {
                        a
                    },
                )
            }
            _ => {
                // Some servers are down: pick among the up ones by rank.
                let (a, b) = gen_pair(up, |n| fastrand::usize(..n));
                let nth = |k: usize| {
                    servers
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_up())
                        .nth(k)
                        .map(|(i, _)| i)
                };
                let (a, b) = (nth(a)?, nth(b)?);
                Some(
                    if servers[b].state.in_flight() < servers[a].state.in_flight() {
                        b
                    } else {
                        a
                    },
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gen_pair;

    #[test]
    fn pairs_are_distinct_and_cover_all() {
        let mut seen = [[false; 4]; 4];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let (a, b) = gen_pair(4, |n| rng.usize(..n));
            assert_ne!(a, b);
            assert!(a < 4 && b < 4);
            seen[a][b] = true;
        }
        for (a, row) in seen.iter().enumerate() {
            for (b, hit) in row.iter().enumerate() {
                assert_eq!(*hit, a != b, "pair ({a},{b})");
            }
        }
    }
}
