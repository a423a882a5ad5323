//! Backend pools: the backends, their state, and the choice of one per connection.
//!
//! The set of backends and the Maglev table are immutable snapshots behind atomic
//! pointers: a connection picks without a lock, and a change (health, discovery, drain)
//! builds new ones.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Algorithm, PoolConfig};
use crate::maglev;

/// One backend and what is known of it.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    healthy: AtomicBool,
    draining: AtomicBool,
    /// Gone from discovery: drained, then dropped when its connections end.
    removed: AtomicBool,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_errors: AtomicU64,
    pub bytes_to: AtomicU64,
    pub bytes_from: AtomicU64,
    /// Its run of health check results (made by the first check, with the pool's
    /// thresholds).
    pub(crate) rise_fall: Mutex<Option<zw_proto::health::RiseFall>>,
    /// When draining began (Unix ms), 0 when not draining: open connections are cut
    /// once the drain timeout has passed since.
    drain_started: AtomicU64,
    /// Where HTTP health checks go when the pool names no port (a discovered edge's
    /// admin address).
    health_addr: Mutex<Option<SocketAddr>>,
}

/// A backend as discovery wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub addr: SocketAddr,
    pub draining: bool,
    pub health_addr: Option<SocketAddr>,
}

impl Backend {
    pub fn new(addr: SocketAddr) -> Backend {
        Backend {
            addr,
            // New backends take traffic at once; the first failed checks take them out.
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            bytes_to: AtomicU64::new(0),
            bytes_from: AtomicU64::new(0),
            rise_fall: Mutex::new(None),
            drain_started: AtomicU64::new(0),
            health_addr: Mutex::new(None),
        }
    }

    pub fn health_addr(&self) -> Option<SocketAddr> {
        *self.health_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_draining(&self, draining: bool) -> bool {
        let before = self.draining.swap(draining, Relaxed);
        if draining && !before {
            self.drain_started
                .store(zw_proto::time::unix_millis().max(1) as u64, Relaxed);
        } else if !draining {
            self.drain_started.store(0, Relaxed);
        }
        before != draining
    }

    /// Whether this backend has been draining for longer than `limit`.
    pub fn drain_expired(&self, limit: std::time::Duration) -> bool {
        let started = self.drain_started.load(Relaxed);
        started != 0
            && (zw_proto::time::unix_millis() as u64).saturating_sub(started)
                > limit.as_millis() as u64
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// May take new connections.
    pub fn eligible(&self) -> bool {
        self.healthy() && !self.draining()
    }
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    pub pool: String,
    pub address: SocketAddr,
    pub healthy: bool,
    pub draining: bool,
    pub removed: bool,
    pub active_connections: u64,
    pub total_connections: u64,
    pub connect_errors: u64,
}

/// The backends that may take connections, and the Maglev table over them.
struct Eligible {
    backends: Vec<Arc<Backend>>,
    table: Option<maglev::Table>,
}

pub struct Pool {
    pub name: String,
    pub config: PoolConfig,
    /// A listener sends this pool PROXY protocol headers: TCP health checks then open
    /// with a v2 `LOCAL` header, so backends that require one do not count them as errors.
    pub speaks_proxy_protocol: AtomicBool,
    all: ArcSwap<Vec<Arc<Backend>>>,
    eligible: ArcSwap<Eligible>,
    next: AtomicUsize,
    /// Serialises changes to the backend set (requests never take it).
    changes: Mutex<()>,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Pool {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|a| Arc::new(Backend::new(*a)))
            .collect();
        let pool = Pool {
            name: config.name.clone(),
            config,
            speaks_proxy_protocol: AtomicBool::new(false),
            all: ArcSwap::from_pointee(backends),
            eligible: ArcSwap::from_pointee(Eligible {
                backends: Vec::new(),
                table: None,
            }),
            next: AtomicUsize::new(0),
            changes: Mutex::new(()),
        };
        pool.rebuild();
        pool
    }

    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.all.load_full()
    }

    /// Recomputes the eligible set after a health or drain change.
    pub fn rebuild(&self) {
        let _guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let backends: Vec<Arc<Backend>> = self
            .all
            .load()
            .iter()
            .filter(|b| b.eligible())
            .cloned()
            .collect();
        let table = (self.config.algorithm == Algorithm::Maglev).then(|| {
            let names: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
            maglev::Table::build(&names)
        });
        self.eligible.store(Arc::new(Eligible { backends, table }));
    }

    /// Picks a backend for a client, skipping `tried` ones (after a failed connect).
    pub fn pick(&self, client: IpAddr, tried: &[SocketAddr]) -> Option<Arc<Backend>> {
        let e = self.eligible.load();
        let n = e.backends.len();
        if n == 0 {
            return None;
        }
        let usable = |b: &&Arc<Backend>| !tried.contains(&b.addr) && b.eligible();
        match self.config.algorithm {
            Algorithm::RoundRobin => {
                let start = self.next.fetch_add(1, Relaxed);
                (0..n)
                    .map(|i| &e.backends[(start + i) % n])
                    .find(usable)
                    .cloned()
            }
            Algorithm::LeastConn => {
                // ties go to a random one of the least loaded, not always the first
                let offset = fastrand::usize(..n);
                (0..n)
                    .map(|i| &e.backends[(offset + i) % n])
                    .filter(usable)
                    .min_by_key(|b| b.active.load(Relaxed))
                    .cloned()
            }
            Algorithm::Maglev => {
                let key = match client {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                let first = e.table.as_ref().and_then(|t| t.lookup(&key)).unwrap_or(0);
                // on a failed connect, walk on from the client's backend
                (0..n)
                    .map(|i| &e.backends[(first + i) % n])
                    .find(usable)
                    .cloned()
            }
        }
    }

    /// Replaces the backend set with `wanted` (addresses and whether each is draining).
    /// Backends that left are drained, not cut: they stay listed (removed) until their
    /// connections end.
    pub fn set_backends(&self, wanted: &[Wanted]) {
        {
            let _guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.all.load_full();
            let mut next: Vec<Arc<Backend>> = Vec::new();
            for w in wanted {
                let (addr, draining) = (&w.addr, &w.draining);
                let b = current
                    .iter()
                    .find(|b| b.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        tracing::info!(pool = %self.name, backend = %addr, "backend added");
                        Arc::new(Backend::new(*addr))
                    });
                b.removed.store(false, Relaxed);
                *b.health_addr.lock().unwrap_or_else(|p| p.into_inner()) = w.health_addr;
                if b.mark_draining(*draining) {
                    tracing::info!(pool = %self.name, backend = %addr, draining, "backend drain state changed by discovery");
                }
                next.push(b);
            }
            for b in current.iter() {
                if wanted.iter().any(|w| w.addr == b.addr) {
                    continue;
                }
                if !b.removed.swap(true, Relaxed) {
                    tracing::info!(pool = %self.name, backend = %b.addr, active = b.active.load(Relaxed), "backend gone from discovery; draining");
                }
                b.mark_draining(true);
                if b.active.load(Relaxed) > 0 {
                    next.push(b.clone());
                }
            }
            self.all.store(Arc::new(next));
        }
        self.rebuild();
    }

    /// Marks a backend draining (or not). `false` when the pool has no such backend.
    pub fn set_draining(&self, addr: SocketAddr, draining: bool) -> bool {
        let found = self
            .all
            .load()
            .iter()
            .find(|b| b.addr == addr)
            .map(|b| b.mark_draining(draining))
            .is_some();
        if found {
            tracing::info!(pool = %self.name, backend = %addr, draining, "backend drain state changed by the admin API");
            self.rebuild();
        }
        found
    }

    pub(crate) fn set_healthy(&self, b: &Backend, healthy: bool) {
        if b.healthy.swap(healthy, Relaxed) != healthy {
            if healthy {
                tracing::info!(pool = %self.name, backend = %b.addr, "backend healthy; taking connections");
            } else {
                tracing::warn!(pool = %self.name, backend = %b.addr, "backend unhealthy; no new connections");
            }
            self.rebuild();
        }
    }

    pub fn views(&self) -> Vec<BackendView> {
        self.all
            .load()
            .iter()
            .map(|b| BackendView {
                pool: self.name.clone(),
                address: b.addr,
                healthy: b.healthy(),
                draining: b.draining(),
                removed: b.removed.load(Relaxed),
                active_connections: b.active.load(Relaxed),
                total_connections: b.total.load(Relaxed),
                connect_errors: b.connect_errors.load(Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthConfig;

    fn pool(alg: Algorithm, n: usize) -> Pool {
        Pool::new(PoolConfig {
            name: "p".into(),
            algorithm: alg,
            backends: (0..n)
                .map(|i| SocketAddr::from(([10, 0, 0, i as u8], 80)))
                .collect(),
            discover: None,
            health: HealthConfig::default(),
        })
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    #[test]
    fn round_robin_cycles_and_skips_the_unhealthy() {
        let p = pool(Algorithm::RoundRobin, 3);
        let picks: Vec<u8> = (0..6)
            .map(|_| match p.pick(ip(1), &[]).unwrap().addr.ip() {
                IpAddr::V4(a) => a.octets()[3],
                _ => 9,
            })
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let b1 = p.backends()[1].clone();
        p.set_healthy(&b1, false);
        assert!((0..10).all(|_| p.pick(ip(1), &[]).unwrap().addr != b1.addr));
    }

    #[test]
    fn least_conn_prefers_the_idle() {
        let p = pool(Algorithm::LeastConn, 3);
        let bs = p.backends();
        bs[0].active.store(5, Relaxed);
        bs[2].active.store(1, Relaxed);
        assert_eq!(p.pick(ip(1), &[]).unwrap().addr, bs[1].addr);
    }

    #[test]
    fn maglev_is_sticky_and_falls_over() {
        let p = pool(Algorithm::Maglev, 4);
        let first = p.pick(ip(77), &[]).unwrap().addr;
        assert!((0..10).all(|_| p.pick(ip(77), &[]).unwrap().addr == first));
        // a failed connect walks on to another backend
        let second = p.pick(ip(77), &[first]).unwrap().addr;
        assert_ne!(first, second);
        // draining takes it out of the table; undraining brings the client back
        assert!(p.set_draining(first, true));
        assert_ne!(p.pick(ip(77), &[]).unwrap().addr, first);
        p.set_draining(first, false);
        assert_eq!(p.pick(ip(77), &[]).unwrap().addr, first);
    }

    #[test]
    fn discovery_drains_what_left() {
        let p = pool(Algorithm::RoundRobin, 2);
        let bs = p.backends();
        bs[1].active.store(1, Relaxed);
        p.set_backends(&[Wanted {
            addr: bs[0].addr,
            draining: false,
            health_addr: None,
        }]);
        let views = p.views();
        assert_eq!(
            views.len(),
            2,
            "a backend with open connections stays listed"
        );
        assert!(views[1].removed && views[1].draining);
        assert!((0..5).all(|_| p.pick(ip(1), &[]).unwrap().addr == bs[0].addr));
        bs[1].active.store(0, Relaxed);
        p.set_backends(&[Wanted {
            addr: bs[0].addr,
            draining: false,
            health_addr: None,
        }]);
        assert_eq!(p.views().len(), 1);
        assert!(p.pick(ip(1), &[bs[0].addr]).is_none());
    }
}
