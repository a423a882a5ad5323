//! Highest random weight (rendezvous) hashing (`hrw`): each server scores the request key
//! and the highest score wins. Adding or removing a server moves only the keys that it
//! wins or won — about 1/n of them — which makes it a consistent hash without a ring.
//! The key is the client IP (Traefik's `hrw`), or a header or cookie (`hashKey`); a
//! request without the header or cookie hashes on its client IP.
//!
//! Weights use the logarithmic method (score = −w / ln(u), u uniform in (0,1)), which
//! gives each server a share proportional to its weight.

use http::HeaderMap;

use super::{Balance, PickCtx, Server};

/// What the hash is of, as validation parsed it from `hashKey`.
pub use zw_config::HashSource;

#[derive(Debug)]
pub struct Hrw {
    source: HashSource,
    /// Hash of each server's URL, computed once.
    server_hashes: Box<[u64]>,
}

/// FNV-1a, 64 bit: stable across processes and versions, unlike std's SipHash keys.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finalizer: spreads the bits of a combined hash.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The rendezvous score of `server_hash` for `key_hash` at `weight`.
pub fn score(key_hash: u64, server_hash: u64, weight: u32) -> f64 {
    let h = mix(key_hash ^ server_hash);
    // u in (0, 1), never 0 or 1
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

impl Hrw {
    pub fn new(source: HashSource, server_urls: &[&str]) -> Self {
        Hrw {
            source,
            server_hashes: server_urls.iter().map(|u| fnv1a(u.as_bytes())).collect(),
        }
    }

    fn key_hash(&self, ctx: &PickCtx<'_>) -> u64 {
        let from_request = match &self.source {
            HashSource::ClientIp => None,
            HashSource::Header(name) => ctx.headers.get(name).map(|v| fnv1a(v.as_bytes())),
            HashSource::Cookie(name) => cookie(ctx.headers, name).map(|v| fnv1a(v.as_bytes())),
        };
        from_request.unwrap_or_else(|| match ctx.client_ip {
            Some(std::net::IpAddr::V4(ip)) => fnv1a(&ip.octets()),
            Some(std::net::IpAddr::V6(ip)) => fnv1a(&ip.octets()),
            None => 0,
        })
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|line| {
            line.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(v)
            })
        })
}

impl Hrw {
    /// The highest-scoring server among those `keep` lets through.
    fn best(
        &self,
        servers: &[Server],
        ctx: &PickCtx<'_>,
        keep: impl Fn(usize, &Server) -> bool,
    ) -> Option<usize> {
        let key = self.key_hash(ctx);
        servers
            .iter()
            .enumerate()
            .filter(|(i, s)| s.is_up() && keep(*i, s))
            .map(|(i, s)| {
                (
                    i,
                    score(
                        key,
                        self.server_hashes.get(i).copied().unwrap_or(0),
                        s.weight,
                    ),
                )
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }
}

impl Balance for Hrw {
    fn pick(&self, servers: &[Server], ctx: &PickCtx<'_>) -> Option<usize> {
        self.best(servers, ctx, |_, _| true)
    }

    /// The key's next-highest score: a key whose server cannot be reached goes to the
    /// same second server every time, as it would if the first were removed.
    fn next_candidate(
        &self,
        servers: &[Server],
        ctx: &PickCtx<'_>,
        tried: usize,
        accept: &dyn Fn(&Server) -> bool,
    ) -> Option<usize> {
        self.best(servers, ctx, |i, s| i != tried && accept(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn winner(key: u64, servers: &[(u64, u32)]) -> usize {
        servers
            .iter()
            .enumerate()
            .map(|(i, (h, w))| (i, score(key, *h, *w)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
            .unwrap()
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let servers: Vec<(u64, u32)> = (0..5)
            .map(|i| (fnv1a(format!("http://s{i}").as_bytes()), 1))
            .collect();
        let fewer: Vec<(u64, u32)> = servers[..4].to_vec();
        let mut moved = 0;
        for k in 0..10_000u64 {
            let key = fnv1a(&k.to_le_bytes());
            let before = winner(key, &servers);
            let after = winner(key, &fewer);
            if before != 4 {
                assert_eq!(before, after, "a key not on the removed server moved");
            } else {
                moved += 1;
            }
        }
        // about a fifth of the keys lived on the removed server
        assert!((1500..2500).contains(&moved), "{moved}");
    }

    #[test]
    fn weights_shift_share() {
        let servers = [(fnv1a(b"a"), 3), (fnv1a(b"b"), 1)];
        let a = (0..20_000u64)
            .filter(|k| winner(fnv1a(&k.to_le_bytes()), &servers) == 0)
            .count();
        let share = a as f64 / 20_000.0;
        assert!((0.70..0.80).contains(&share), "{share}");
    }

    #[test]
    fn cookie_lookup() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; session=xyz".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some("xyz"));
        assert_eq!(cookie(&h, "none"), None);
    }
}
