//! Zeitwork's L4 balancer (DESIGN.md, "L4 balancer"): TCP listeners, each with a pool of
//! backends (static, or the operator's edge list), chosen by round robin, least
//! connections or Maglev; active health checks; the PROXY protocol to backends so edges
//! see the client's address; routing by TLS server name without terminating TLS; draining.
#![forbid(unsafe_code)]

pub mod admin;
pub mod client_hello;
pub mod config;
mod conn;
pub mod discovery;
pub mod health;
pub mod maglev;
pub mod pool;
#[cfg(target_os = "linux")]
mod splice;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;
pub use conn::Listener;
use pool::Pool;

pub(crate) struct Shared {
    pub(crate) listeners: Vec<Arc<Listener>>,
    pub(crate) pools: Vec<Arc<Pool>>,
}

/// A balancer built from a validated configuration.
pub struct Balancer {
    config: Config,
    shared: Arc<Shared>,
}

impl Balancer {
    pub fn new(config: Config) -> Result<Balancer, String> {
        config.validate()?;
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| Arc::new(Pool::new(p.clone())))
            .collect();
        let find = |name: &str| {
            pools
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| format!("unknown pool `{name}`"))
        };
        let mut listeners = Vec::new();
        let fds = config::fd_limit();
        for l in &config.listeners {
            let sni = l
                .sni
                .iter()
                .map(|(host, pool)| Ok((host.clone(), find(pool)?)))
                .collect::<Result<Vec<_>, String>>()?;
            if l.proxy_protocol != config::ProxyProtocol::Off {
                find(&l.pool)?.speaks_proxy_protocol.store(true, Relaxed);
                for (_, p) in &sni {
                    p.speaks_proxy_protocol.store(true, Relaxed);
                }
            }
            listeners.push(Arc::new(Listener {
                config: l.clone(),
                pool: find(&l.pool)?,
                sni,
                active: AtomicU64::new(0),
                total: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                no_backend: AtomicU64::new(0),
                max_connections: l.max_connections.unwrap_or_else(|| {
                    config::connection_limit_for_fds(fds, config.listeners.len())
                }) as u64,
                per_client: Default::default(),
                refused_per_client: AtomicU64::new(0),
                accept_errors: AtomicU64::new(0),
                silent_closed: AtomicU64::new(0),
            }));
            tracing::info!(listener = %l.name, max_connections = listeners.last().map_or(0, |x: &Arc<Listener>| x.max_connections), open_file_limit = fds, "connection limit");
        }
        Ok(Balancer {
            config,
            shared: Arc::new(Shared { listeners, pools }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves `bound` (one per configured listener, in order) and `admin` until `shutdown`;
    /// then stops accepting and lets open connections finish for up to the drain timeout.
    pub async fn run(
        self,
        bound: Vec<TcpListener>,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (cut_tx, cut_rx) = watch::channel(false);
        let drain = self.config.drain_timeout.0;
        for p in &self.shared.pools {
            tokio::spawn(health::run(p.clone(), stop_rx.clone()));
            if let Some(d) = &p.config.discover {
                let token = d
                    .token
                    .clone()
                    .or_else(|| std::env::var("ZEITWORK_TOKEN").ok())
                    .unwrap_or_default();
                tokio::spawn(discovery::run(p.clone(), d.clone(), token, stop_rx.clone()));
            }
        }
        let mut accepts = Vec::new();
        for (l, tcp) in self.shared.listeners.iter().zip(bound) {
            accepts.push(tokio::spawn(accept_loop(
                l.clone(),
                tcp,
                drain,
                stop_rx.clone(),
                cut_rx.clone(),
            )));
        }
        if let Some(admin) = admin {
            tokio::spawn(admin_loop(self.shared.clone(), admin, stop_rx.clone()));
        }
        shutdown.await;
        // Listeners close when their accept loops end: only then is "no new connections" true.
        let _ = stop_tx.send(true);
        for a in accepts {
            let _ = a.await;
        }
        let open: u64 = self
            .shared
            .listeners
            .iter()
            .map(|l| l.active.load(Relaxed))
            .sum();
        tracing::info!(open_connections = open, drain_timeout = ?drain, "shutting down: no new connections; open ones may finish");
        let deadline = tokio::time::Instant::now() + drain;
        while self
            .shared
            .listeners
            .iter()
            .any(|l| l.active.load(Relaxed) > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left: u64 = self
            .shared
            .listeners
            .iter()
            .map(|l| l.active.load(Relaxed))
            .sum();
        if left > 0 {
            tracing::warn!(
                open_connections = left,
                "drain deadline passed; closing the remaining connections"
            );
            let _ = cut_tx.send(true);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn accept_loop(
    l: Arc<Listener>,
    tcp: TcpListener,
    drain: Duration,
    mut stop: watch::Receiver<bool>,
    cut: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: counted, and backed off instead of spinning.
                    if l.accept_errors.fetch_add(1, Relaxed).is_multiple_of(100) {
                        tracing::warn!(listener = %l.config.name, error = %e, max_connections = l.max_connections, "accept failed (out of file descriptors? raise `ulimit -n` or lower max_connections)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if l.active.load(Relaxed) >= l.max_connections {
            l.refused.fetch_add(1, Relaxed);
            tracing::debug!(listener = %l.config.name, %peer, "max_connections reached; connection refused");
            continue;
        }
        let Some(slot) = l.admit_client(peer.ip()) else {
            l.refused_per_client.fetch_add(1, Relaxed);
            tracing::debug!(listener = %l.config.name, %peer, "max_connections_per_client reached; connection refused");
            continue;
        };
        l.active.fetch_add(1, Relaxed);
        l.total.fetch_add(1, Relaxed);
        let (l, cut) = (l.clone(), cut.clone());
        tokio::spawn(async move {
            conn::handle(l.clone(), stream, peer, drain, cut).await;
            drop(slot);
            l.active.fetch_sub(1, Relaxed);
        });
    }
}

async fn admin_loop(shared: Arc<Shared>, tcp: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            r = tcp.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| admin::handle(shared.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
