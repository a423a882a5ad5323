//! A `rateLimit`'s buckets in Redis (Traefik v3.4's `redis` option), so that every edge
//! behind the balancer draws on one bucket per source: N edges admit the configured rate
//! in total, not N times it.
//!
//! One Lua script takes a token atomically, as the local bucket does (same rate, burst
//! and longest wait; a refused request takes nothing). It reads the time from Redis
//! (`TIME`), not from the edge, so edges whose clocks disagree still share one bucket
//! fairly — Traefik passes each edge's own clock instead. Keys are
//! `rate:<middleware>:<source>` and expire once a bucket would be full again.
//!
//! With `tls` the connection is TLS (`rediss`), verified against `tls.ca` (else the
//! system's roots) unless `insecureSkipVerify`, with a client certificate when given.
//!
//! When Redis cannot be reached (or answers late) the request is counted on the edge's
//! own bucket instead, and counted (`zeitwork_ratelimit_redis_errors_total`,
//! `zeitwork_ratelimit_redis_fallbacks_total`);
//! for a second after a failure Redis is not asked at all, so an outage costs each
//! request nothing. `failClosed` answers 500 instead.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use zw_config::RedisSpec;

/// How long Redis is left alone after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

/// Takes a token. KEYS[1]: the bucket. ARGV: tokens per microsecond, burst, the longest
/// wait (µs), the key's time to live (s). Returns {1, wait µs} when the token is taken,
/// {0, wait µs} when the wait would be longer than allowed (nothing taken).
const TAKE: &str = r#"
local rate, burst, max_wait, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000000 + tonumber(now[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or t
if at > t then at = t end
tokens = math.min(burst, tokens + (t - at) * rate)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
if wait > max_wait then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(t))
  redis.call('EXPIRE', KEYS[1], ttl)
  return {0, math.ceil(wait)}
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', tostring(t))
redis.call('EXPIRE', KEYS[1], ttl)
return {1, math.ceil(wait)}
"#;

/// What Redis said of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Admitted after this wait (zero: now).
    After(Duration),
    /// Refused; a token is there in this long.
    Refuse(Duration),
}

/// One `rateLimit`'s connection to Redis and its failure count, kept across
/// configuration reloads that leave the Redis settings as they were.
#[derive(Default)]
pub struct RedisBuckets {
    conn: OnceLock<redis::aio::ConnectionManager>,
    script: OnceLock<redis::Script>,
    /// Milliseconds since `epoch` before which Redis is not asked.
    down_until: AtomicU64,
    epoch: OnceLock<std::time::Instant>,
    /// Calls to Redis that failed.
    pub errors: AtomicU64,
    /// Requests counted on the edge's own buckets (or refused, `failClosed`) because
    /// Redis could not be asked.
    pub fallbacks: AtomicU64,
}

impl std::fmt::Debug for RedisBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBuckets")
            .field("errors", &self.errors.load(Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis was unreachable a moment ago; not asked again yet")]
    Backoff,
    #[error("Redis at {host}:{port}: {source}")]
    Redis {
        host: String,
        port: u16,
        source: redis::RedisError,
    },
    #[error("Redis at {host}:{port} answered the rate-limit script with something unexpected")]
    Answer { host: String, port: u16 },
}

impl RedisError {
    fn at(spec: &RedisSpec) -> impl Fn(redis::RedisError) -> RedisError + Copy + '_ {
        |source| RedisError::Redis {
            host: spec.host.clone(),
            port: spec.port,
            source,
        }
    }
}

impl RedisBuckets {
    fn now_ms(&self) -> u64 {
        self.epoch
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    }

    fn connection(&self, spec: &RedisSpec) -> Result<redis::aio::ConnectionManager, RedisError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let err = RedisError::at(spec);
        let mut settings = redis::RedisConnectionInfo::default().set_db(spec.db);
        if let Some(u) = &spec.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &spec.password {
            settings = settings.set_password(p);
        }
        let addr = match &spec.tls {
            None => redis::ConnectionAddr::Tcp(spec.host.clone(), spec.port),
            Some(tls) => {
                // The Redis client builds its rustls configuration on the process' default
                // provider: the one the rest of the edge uses.
                let _ =
                    rustls::crypto::CryptoProvider::install_default((*zw_tls::provider()).clone());
                redis::ConnectionAddr::TcpTls {
                    host: spec.host.clone(),
                    port: spec.port,
                    insecure: tls.insecure,
                    tls_params: None,
                }
            }
        };
        let info = redis::IntoConnectionInfo::into_connection_info(addr)
            .map_err(err)?
            .set_redis_settings(settings);
        let client = match &spec.tls {
            None => redis::Client::open(info),
            Some(tls) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: tls
                        .client
                        .as_ref()
                        .map(|(cert, key)| redis::ClientTlsConfig {
                            client_cert: cert.clone(),
                            client_key: key.clone(),
                        }),
                    root_cert: tls.ca.clone(),
                },
            ),
        }
        .map_err(err)?;
        // Reconnects by itself; a request never waits for more than one try.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(spec.dial_timeout))
            .set_response_timeout(Some(spec.response_timeout))
            .set_number_of_retries(1);
        let conn =
            redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(err)?;
        Ok(self.conn.get_or_init(|| conn).clone())
    }

    /// Takes a token for `key`, or says why Redis could not be asked.
    pub async fn take(
        &self,
        spec: &RedisSpec,
        key: &str,
        rate_per_sec: f64,
        burst: u32,
        max_wait: Duration,
    ) -> Result<Taken, RedisError> {
        if self.now_ms() < self.down_until.load(Relaxed) {
            self.fallbacks.fetch_add(1, Relaxed);
            return Err(RedisError::Backoff);
        }
        let result = self.ask(spec, key, rate_per_sec, burst, max_wait).await;
        if result.is_err() {
            self.errors.fetch_add(1, Relaxed);
            self.fallbacks.fetch_add(1, Relaxed);
            self.down_until
                .store(self.now_ms() + BACKOFF.as_millis() as u64, Relaxed);
        }
        result
    }

    async fn ask(
        &self,
        spec: &RedisSpec,
        key: &str,
        rate_per_sec: f64,
        burst: u32,
        max_wait: Duration,
    ) -> Result<Taken, RedisError> {
        let mut conn = self.connection(spec)?;
        let script = self.script.get_or_init(|| redis::Script::new(TAKE));
        // A bucket left alone this long is full again: its key can go.
        let ttl = (f64::from(burst) / rate_per_sec).ceil().max(1.0) as u64 + 1;
        let (taken, wait_us): (i64, i64) = script
            .key(key)
            .arg(rate_per_sec / 1e6)
            .arg(burst)
            .arg(max_wait.as_micros() as u64)
            .arg(ttl)
            .invoke_async(&mut conn)
            .await
            .map_err(RedisError::at(spec))?;
        let wait =
            Duration::from_micros(u64::try_from(wait_us).map_err(|_| RedisError::Answer {
                host: spec.host.clone(),
                port: spec.port,
            })?);
        Ok(if taken == 1 {
            Taken::After(wait)
        } else {
            Taken::Refuse(wait)
        })
    }
}
