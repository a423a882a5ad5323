//! `rateLimit`: a token bucket per source, as Traefik's (`pkg/middlewares/ratelimiter`,
//! Go's `x/time/rate` underneath): tokens arrive at `average / period` per second up to
//! `burst`; a request takes one. One that would have to wait for its token up to
//! `max_delay` (half a token's time, at most 500 ms) waits; a longer wait is answered 429
//! with `Retry-After` in whole seconds, rounded up, and the token is not taken.
//!
//! Where Traefik is loose we chose: the per-source table holds at most [`MAX_SOURCES`]
//! buckets (Traefik's 65,536); when full, the bucket idle longest goes (counted in
//! `zeitwork_ratelimit_evictions_total`), and a bucket full again after an idle time
//! carries nothing, so dropping it changes no answer. Buckets live in the registry under
//! the middleware's name and settings: a reload that leaves a limit as it was keeps them.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, StatusCode};
use zw_config::{RateLimitSpec, Source};

use super::redis_bucket::{RedisBuckets, RedisError, Taken};
use super::{Action, Middleware, MiddlewareCtx};

/// Buckets per middleware at most.
pub const MAX_SOURCES: usize = 65_536;
const SHARDS: usize = 16;

/// What a bucket says to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Now,
    /// Admitted once this has passed.
    After(Duration),
    /// Refused; a token is there in this long.
    Refuse(Duration),
}

/// One source's tokens: a pure core, advanced by the caller's clock.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Takes a token for a request at `now`, as `rate.Limiter.Reserve` does.
    pub fn take(&mut self, now: Instant, rate: f64, burst: u32, max_delay: Duration) -> Decision {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        let after = tokens - 1.0;
        let wait = if after >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-after / rate)
        };
        if wait > max_delay {
            // Not taken: the bucket stays as it was (advanced to now).
            self.tokens = tokens;
            self.at = self.at.max(now);
            return Decision::Refuse(wait);
        }
        self.tokens = after;
        self.at = self.at.max(now);
        if wait.is_zero() {
            Decision::Now
        } else {
            Decision::After(wait)
        }
    }

    /// Whether it is full again at `now` (it then carries nothing a new bucket would not).
    fn full_at(&self, now: Instant, rate: f64, burst: u32) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate
            >= f64::from(burst)
    }
}

/// The buckets of one `rateLimit`, by source: sharded, each shard's lock held for one
/// lookup and one update.
#[derive(Debug)]
pub struct Buckets {
    shards: Vec<Mutex<HashMap<Box<[u8]>, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
    pub evictions: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            evictions: AtomicU64::new(0),
        }
    }
}

impl Buckets {
    fn decide(&self, key: &[u8], now: Instant, spec: &RateLimitSpec, rate: f64) -> Decision {
        let shard = (self.hasher.hash_one(key) as usize) % SHARDS;
        let Some(shard) = self.shards.get(shard) else {
            return Decision::Now;
        };
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(key) {
            return b.take(now, rate, spec.burst, spec.max_delay);
        }
        if map.len() >= MAX_SOURCES / SHARDS {
            // Full buckets first (they carry nothing), else the one idle longest.
            let victim = map
                .iter()
                .find(|(_, b)| b.full_at(now, rate, spec.burst))
                .or_else(|| map.iter().min_by_key(|(_, b)| b.at))
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                map.remove(&k);
                self.evictions.fetch_add(1, Relaxed);
            }
        }
        let mut b = Bucket::full(spec.burst, now);
        let d = b.take(now, rate, spec.burst, spec.max_delay);
        map.insert(key.into(), b);
        d
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct RateLimit {
    spec: Arc<RateLimitSpec>,
    buckets: Arc<Buckets>,
    /// With `redis`: the shared buckets, and the middleware's name for their keys.
    shared: Option<(Arc<RedisBuckets>, Arc<str>)>,
}

impl RateLimit {
    pub fn new(spec: &RateLimitSpec, buckets: Arc<Buckets>) -> Self {
        RateLimit {
            spec: Arc::new(spec.clone()),
            buckets,
            shared: None,
        }
    }

    /// Counts in Redis first (`spec.redis`), on `buckets` when Redis cannot be reached.
    pub fn shared(
        spec: &RateLimitSpec,
        buckets: Arc<Buckets>,
        redis: Arc<RedisBuckets>,
        name: &str,
    ) -> Self {
        RateLimit {
            spec: Arc::new(spec.clone()),
            buckets,
            shared: Some((redis, name.into())),
        }
    }
}

/// The answer for a decision.
fn act(d: Decision) -> Action {
    match d {
        Decision::Now => Action::Continue,
        Decision::After(d) => Action::Wait(d),
        Decision::Refuse(d) => {
            let mut parts = super::answer(StatusCode::TOO_MANY_REQUESTS);
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            parts
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            if let Ok(v) = HeaderValue::from_str(&format!("{d:?}")) {
                parts.headers.insert("x-retry-in", v);
            }
            Action::Respond(parts)
        }
    }
}

/// `ip` as a key: an IPv6 address masked to its `/subnet` network.
pub(crate) fn ip_key(ip: IpAddr, subnet: Option<u8>) -> [u8; 17] {
    let mut k = [0u8; 17];
    match ip {
        IpAddr::V4(v4) => {
            k[0] = 4;
            k[1..5].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            let bits = u32::from(subnet.unwrap_or(128).min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            k[0] = 6;
            k[1..].copy_from_slice(&(u128::from(v6) & mask).to_be_bytes());
        }
    }
    k
}

impl Middleware for RateLimit {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let Some(rate) = self.spec.rate else {
            return Action::Continue;
        };
        let (ip, host);
        let key: &[u8] = match &self.spec.source {
            Source::ClientIp(strategy) => match super::strategy_ip(strategy, ctx) {
                Some(addr) => {
                    ip = ip_key(addr, strategy.ipv6_subnet);
                    &ip
                }
                None => b"",
            },
            Source::Header(h) => ctx.parts.headers.get(h).map_or(b"", |v| v.as_bytes()),
            // As routing sees it (lowercase, no port), as inFlightReq counts it.
            Source::Host => {
                host = zw_rules::normalize_host(ctx.host);
                host.as_bytes()
            }
        };
        if let (Some((redis, name)), Some(redis_spec)) = (&self.shared, &self.spec.redis) {
            let (redis, spec, buckets) = (redis.clone(), self.spec.clone(), self.buckets.clone());
            let local_key = key.to_vec();
            let shared_key = format!("rate:{name}:{}", hex::encode(key));
            let (name, fail_closed) = (name.clone(), redis_spec.fail_closed);
            return Action::Defer(Box::pin(async move {
                let Some(redis_spec) = spec.redis.as_ref() else {
                    return Box::new(|_: &mut MiddlewareCtx<'_>| Action::Continue) as super::Then;
                };
                let taken = redis
                    .take(redis_spec, &shared_key, rate, spec.burst, spec.max_delay)
                    .await;
                let decision = match taken {
                    Ok(Taken::After(d)) if d.is_zero() => Ok(Decision::Now),
                    Ok(Taken::After(d)) => Ok(Decision::After(d)),
                    Ok(Taken::Refuse(d)) => Ok(Decision::Refuse(d)),
                    Err(e) => {
                        if !matches!(e, RedisError::Backoff) {
                            tracing::warn!(middleware = %name, error = %e, fail_closed, "rate limit: Redis unreachable; {}", if fail_closed { "answering 500 (failClosed)" } else { "counting on this edge's own buckets until it answers" });
                        }
                        if fail_closed {
                            Err(())
                        } else {
                            Ok(buckets.decide(&local_key, Instant::now(), &spec, rate))
                        }
                    }
                };
                Box::new(move |_: &mut MiddlewareCtx<'_>| match decision {
                    Ok(d) => act(d),
                    Err(()) => {
                        let mut resp = http::Response::new(bytes::Bytes::from_static(
                            b"Could not insert/update bucket\n",
                        ));
                        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        Action::Answer(resp)
                    }
                }) as super::Then
            }));
        }
        act(self.buckets.decide(key, Instant::now(), &self.spec, rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `average: 100, burst: 50`: 50 at once, then one every 10 ms; a request that would
    /// wait more than 5 ms (half a token) is refused with the wait it would have had.
    #[test]
    fn a_bucket_admits_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let (rate, burst, max) = (100.0, 50, 5 * MS);
        let mut b = Bucket::full(burst, t0);
        for _ in 0..50 {
            assert_eq!(b.take(t0, rate, burst, max), Decision::Now);
        }
        assert!(matches!(b.take(t0, rate, burst, max), Decision::Refuse(d) if d == 10 * MS));
        // 6 ms later the next token is 4 ms away: the request waits for it.
        assert!(
            matches!(b.take(t0 + 6 * MS, rate, burst, max), Decision::After(d) if (d.as_secs_f64() - 0.004).abs() < 1e-6)
        );
        // and the one after that would wait 14 ms: refused, nothing taken
        assert!(matches!(
            b.take(t0 + 6 * MS, rate, burst, max),
            Decision::Refuse(_)
        ));
        // one second later: 100 tokens' worth, capped at the burst
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..200)
            .filter(|_| b.take(t1, rate, burst, max) == Decision::Now)
            .count();
        assert_eq!(admitted, 50);
    }

    #[test]
    fn over_a_long_run_the_rate_is_what_is_admitted() {
        let t0 = Instant::now();
        let mut b = Bucket::full(50, t0);
        // 200 requests a second for 10 s, evenly spaced
        let admitted = (0..2000)
            .filter(|i| {
                let now = t0 + Duration::from_millis(5 * i);
                !matches!(b.take(now, 100.0, 50, 5 * MS), Decision::Refuse(_))
            })
            .count();
        // 50 at once plus 100 a second (the last 5 ms of the 10th second not reached)
        assert!((1045..=1050).contains(&admitted), "{admitted}");
    }

    #[test]
    fn the_table_is_capped_and_full_buckets_go_first() {
        let spec = RateLimitSpec {
            rate: Some(1.0),
            burst: 1,
            max_delay: Duration::from_millis(500),
            source: Source::ClientIp(Default::default()),
            redis: None,
        };
        let buckets = Buckets::default();
        let now = Instant::now();
        for i in 0..(MAX_SOURCES + 100) as u32 {
            buckets.decide(&i.to_be_bytes(), now, &spec, 1.0);
        }
        assert!(buckets.len() <= MAX_SOURCES);
        assert!(buckets.evictions.load(Relaxed) >= 100);
    }

    #[test]
    fn ipv6_clients_count_by_their_subnet_when_asked() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_ne!(ip_key(a, None), ip_key(b, None));
        assert_eq!(ip_key(a, Some(64)), ip_key(b, Some(64)));
    }
}
