//! Zeitwork's L7 data plane: listeners, routing, middlewares, balancing, upstream pool,
//! health checks, metrics and the admin endpoint.
//!
//! The running configuration is one immutable [`Snapshot`](snapshot::Snapshot) behind an
//! atomic pointer. A request loads it once and keeps it until it ends, so a reload never
//! changes anything under an in-flight request and the request path takes no lock that a
//! reload holds. Applying a configuration builds the whole snapshot first; an error leaves
//! the running one in place.
#![forbid(unsafe_code)]

mod access_log;
pub mod acme;
mod admin;
pub mod balance;
mod body;
mod control_plane;
#[cfg(feature = "database")]
mod database;
mod error;
mod exchange;
pub mod h1;
mod health;
mod lkg;
pub mod metrics;
pub mod middleware;
pub mod pool;
mod provider;
mod proxy;
pub mod proxy_protocol;
mod request_body;
pub mod snapshot;
mod spool;
mod stall;
mod tls;
use zw_proto::time;

pub use access_log::{AccessLog, AccessLogTarget};
pub use control_plane::ControlPlane;
#[cfg(feature = "database")]
pub use database::DatabaseProvider;
pub use error::Error;
pub use lkg::LastKnownGood;
pub use provider::FileProvider;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use zw_config::ValidConfig;

use crate::metrics::EdgeMetrics;
use crate::snapshot::{Registry, Snapshot};

/// Where the running configuration came from (`source` in `/debug/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// A file or directory (`--config`).
    File,
    /// The operator, over the control-plane connection.
    ControlPlane,
    /// The snapshot kept on disk from the operator, served until it answers.
    LastKnownGood,
    /// The operator's database (`--database-url`).
    Database,
}

impl ConfigSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::File => "file",
            ConfigSource::ControlPlane => "control_plane",
            ConfigSource::LastKnownGood => "last_known_good",
            ConfigSource::Database => "database",
        }
    }
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate of the running configuration, as `/debug/config` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    pub names: Vec<String>,
    /// RFC 3339.
    pub not_after: String,
}

/// What a client's request head may hold; past these the edge answers before routing:
/// 431 (Request Header Fields Too Large) for an HTTP/1 head larger than `head_bytes` or
/// with more than `headers` headers, 414 (URI Too Long) for a request target longer than
/// 64 KiB within it; an HTTP/2 client is told the limits in its SETTINGS and refused
/// past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// HTTP/1: request line and headers together, in bytes.
    pub head_bytes: usize,
    /// HTTP/1: headers in one request.
    pub headers: usize,
    /// HTTP/2: streams open at once on one connection.
    pub h2_streams: u32,
    /// HTTP/2: a request's header list, decoded, in bytes.
    pub h2_header_list: u32,
}

impl Default for RequestLimits {
    /// 256 KiB of head, 100 headers (hyper's default, as Go's), 256 streams, 64 KiB of
    /// HTTP/2 header list.
    fn default() -> Self {
        RequestLimits {
            head_bytes: 256 * 1024,
            headers: 100,
            h2_streams: 256,
            h2_header_list: 64 * 1024,
        }
    }
}

/// What `/debug/config` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// Applied configurations are numbered from 1 in each process.
    pub version: u64,
    pub hash: Option<String>,
    /// The operator's version number of the running snapshot (control plane and
    /// last-known-good only).
    pub snapshot_version: Option<u64>,
    pub source: Option<ConfigSource>,
    /// The file, directory, operator URL or database it came from.
    pub origin: Option<String>,
    pub applied_at: Option<String>,
    pub routers: usize,
    pub services: usize,
    pub middlewares: usize,
    pub entry_points: Vec<String>,
    /// The running configuration's certificates (`tls.certificates`): names and expiry.
    pub certificates: Vec<CertificateStatus>,
    /// The last rejected change, if it came after the last applied one.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// The ACME resolvers' work, when the static configuration has resolvers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeStatus>,
}

/// What `/debug/config` shows of the ACME resolvers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AcmeStatus {
    /// Orders placed since the start, and how many failed.
    pub orders: u64,
    pub failures: u64,
    /// The last failure, with the CA's problem document when it sent one.
    pub last_error: Option<String>,
    /// The certificates the resolvers hold.
    pub certificates: Vec<AcmeCertificate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AcmeCertificate {
    pub resolver: String,
    pub names: Vec<String>,
    /// RFC 3339.
    pub not_after: String,
}

pub(crate) struct Shared {
    /// Fixed when the edge is built.
    pub(crate) settings: Settings,
    /// Changes with each applied configuration.
    pub(crate) config: Configured,
    /// The client connections, as they come and go.
    conns: Connections,
    pub(crate) metrics: EdgeMetrics,
}

/// What an edge is for the life of its process: its entry points, whom each trusts with
/// PROXY protocol headers, its limits and timeouts, its access log. Plain values: set by
/// [`EdgeBuilder`] before anything runs, read without synchronization after.
pub(crate) struct Settings {
    pub(crate) entry_points: Vec<String>,
    /// Per entry point: the PROXY protocol senders it trusts, if it expects the protocol.
    proxy_protocol: Vec<Option<proxy_protocol::Trusted>>,
    /// Per entry point: the clients whose `X-Forwarded-*` headers it keeps.
    forwarded_headers: Vec<Option<zw_config::ForwardedTrust>>,
    /// Client connections the entry points hold at most (all together); more are closed at
    /// accept, so the process keeps file descriptors for upstreams and the admin listener.
    max_connections: usize,
    /// How long a request body may go without a byte.
    pub(crate) body_read_timeout: Duration,
    /// What a request's head may hold.
    pub(crate) request_limits: RequestLimits,
    /// How long a response may go without the client taking a byte.
    pub(crate) write_timeout: Duration,
    /// How long a connection may wait for a request's first bytes: a new one, or a
    /// kept-alive one between requests.
    pub(crate) idle_timeout: Duration,
    pub(crate) access_log: Option<AccessLog>,
    /// Per entry point: the ACME HTTP-01 tokens it answers, if it answers them.
    pub(crate) http01: Vec<Option<Arc<acme::AcmeChallenges>>>,
    /// TLS-ALPN-01 certificates, answered on every entry point.
    pub(crate) tls_alpn01: Option<Arc<acme::AcmeChallenges>>,
    /// The ACME resolvers, for `/debug/config` and `/metrics`.
    pub(crate) acme: Option<zw_acme::Acme>,
}

/// The applied configuration: the snapshot requests run on, and what changes with it.
pub(crate) struct Configured {
    pub(crate) current: ArcSwapOption<Snapshot>,
    /// What outlives snapshots; its lock is held by one apply at a time, never by requests.
    pub(crate) registry: Mutex<Registry>,
    status: Mutex<ConfigStatus>,
    next_version: AtomicU64,
    /// Expiry of the platform certificate in `registry.tls` (0: none).
    tls_not_after: std::sync::atomic::AtomicI64,
}

/// The client connections of all entry points.
struct Connections {
    open: AtomicUsize,
    /// Woken when the last connection closes (the drain waits for it).
    done: Notify,
    pub(crate) draining: AtomicBool,
    /// Connections that have not sent their first bytes yet, oldest first (accept path
    /// only; the request path never touches it).
    silent: Mutex<std::collections::VecDeque<std::sync::Weak<Silent>>>,
}

/// A connection still in its opening (no request bytes yet). At the connection limit the
/// oldest of these is closed to admit a newcomer, as nginx closes idle connections when
/// it runs out of them (`ngx_drain_connections`): a flood of silent connections then
/// cannot lock out clients that talk.
#[derive(Default)]
struct Silent {
    evict: Notify,
}

impl Connections {
    fn register_silent(&self, max: usize) -> Arc<Silent> {
        let s = Arc::new(Silent::default());
        let mut q = self.silent.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= max {
            q.retain(|w| w.strong_count() > 0);
        }
        q.push_back(Arc::downgrade(&s));
        s
    }

    /// Closes the oldest silent connection; false when there is none.
    fn evict_silent(&self) -> bool {
        let mut q = self.silent.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = q.pop_front() {
            if let Some(s) = w.upgrade() {
                s.evict.notify_one();
                return true;
            }
        }
        false
    }
}

impl Shared {
    pub(crate) fn status(&self) -> ConfigStatus {
        let mut status = self
            .config
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.acme = self.settings.acme.as_ref().map(|a| AcmeStatus {
            orders: a.orders(),
            failures: a.failures(),
            last_error: a.last_error(),
            certificates: a
                .certificates()
                .iter()
                .map(|c| AcmeCertificate {
                    resolver: c.resolver.clone(),
                    names: c.names.clone(),
                    not_after: time::rfc3339(u64::try_from(c.not_after).unwrap_or(0), 0),
                })
                .collect(),
        });
        status
    }
}

/// An edge proxy. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Edge {
    shared: Arc<Shared>,
}

impl Edge {
    /// An edge with the given entry point names (routers' `entryPoints` refer to them),
    /// an access log or none, and the default limits and timeouts. It has no configuration
    /// yet (it answers 503 until one is applied).
    pub fn new(entry_points: Vec<String>, access_log: Option<AccessLog>) -> Edge {
        Edge::builder(entry_points).access_log(access_log).build()
    }

    /// An edge with the given entry point names, to be given its settings before it is
    /// built.
    pub fn builder(entry_points: Vec<String>) -> EdgeBuilder {
        let n = entry_points.len();
        EdgeBuilder {
            settings: Settings {
                proxy_protocol: vec![None; n],
                forwarded_headers: vec![None; n],
                entry_points,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                body_read_timeout: proxy::BODY_READ_TIMEOUT,
                request_limits: RequestLimits::default(),
                write_timeout: WRITE_TIMEOUT,
                idle_timeout: IDLE_TIMEOUT,
                access_log: None,
                http01: vec![None; n],
                tls_alpn01: None,
                acme: None,
            },
        }
    }

    /// Builds a snapshot from a validated configuration and swaps it in atomically.
    /// Must run inside a Tokio runtime (health checks are tasks).
    pub fn apply(
        &self,
        valid: ValidConfig,
        source: ConfigSource,
        origin: &str,
    ) -> Result<u64, Error> {
        self.apply_snapshot(valid, source, origin, None)
    }

    /// [`Edge::apply`] for a snapshot the operator numbered `snapshot_version`.
    pub fn apply_snapshot(
        &self,
        valid: ValidConfig,
        source: ConfigSource,
        origin: &str,
        snapshot_version: Option<u64>,
    ) -> Result<u64, Error> {
        let s = &self.shared;
        let (routers, services, middlewares) = (
            valid.config.http.routers.len(),
            valid.config.http.services.len(),
            valid.config.http.middlewares.len(),
        );
        let hash = valid.hash.clone();
        let certificates = valid
            .parsed
            .tls
            .certificates
            .iter()
            .map(|c| CertificateStatus {
                names: c.names.clone(),
                not_after: time::rfc3339(u64::try_from(c.not_after).unwrap_or(0), 0),
            })
            .collect();
        // One apply at a time; requests never take this lock.
        let started = std::time::Instant::now();
        let mut reg = s.config.registry.lock().unwrap_or_else(|p| p.into_inner());
        let version = s.config.next_version.fetch_add(1, Relaxed);
        let snap = snapshot::build(valid, &s.settings.entry_points, &mut reg, version);
        s.config.current.store(Some(Arc::new(snap)));
        drop(reg);
        let build_ms = started.elapsed().as_secs_f64() * 1000.0;
        s.metrics.config_applies.fetch_add(1, Relaxed);
        s.metrics.config_version.store(version, Relaxed);
        s.metrics
            .config_applied_unix
            .store(time::unix_now(), Relaxed);
        let mut st = s.config.status.lock().unwrap_or_else(|p| p.into_inner());
        *st = ConfigStatus {
            version,
            hash: Some(hash.clone()),
            snapshot_version,
            source: Some(source),
            origin: Some(origin.to_string()),
            applied_at: Some(time::rfc3339_now()),
            routers,
            services,
            middlewares,
            entry_points: s.settings.entry_points.clone(),
            certificates,
            last_error: None,
            last_error_at: None,
            acme: None,
        };
        tracing::info!(version, ?snapshot_version, %hash, %source, origin, routers, services, build_ms, "configuration applied");
        Ok(version)
    }

    /// Records a rejected configuration (shown at `/debug/config`, counted in metrics).
    pub fn reject(&self, errors: &dyn std::fmt::Display, source: ConfigSource) {
        self.shared.metrics.config_rejections.fetch_add(1, Relaxed);
        let mut st = self
            .shared
            .config
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.last_error = Some(format!("{source}: {errors}"));
        st.last_error_at = Some(time::rfc3339_now());
    }

    /// The platform certificate this edge presents to worker ingresses (`https://`
    /// servers). Replaces the previous one; connections made before keep theirs.
    pub fn set_platform_tls(&self, config: Arc<rustls::ClientConfig>, not_after: i64) {
        let reg = self
            .shared
            .config
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        reg.tls.store(Some(config));
        self.shared.config.tls_not_after.store(not_after, Relaxed);
    }

    /// When the edge's platform certificate expires (seconds since the epoch); `None`
    /// while it has none.
    pub fn platform_tls_expiry(&self) -> Option<i64> {
        Some(self.shared.config.tls_not_after.load(Relaxed)).filter(|t| *t > 0)
    }

    pub fn status(&self) -> ConfigStatus {
        self.shared.status()
    }

    /// Serves the entry points (`listeners[i]` is entry point `i`) and the admin
    /// endpoint until `shutdown` completes; then stops accepting, lets in-flight requests
    /// finish for up to `drain`, and returns.
    pub async fn serve(
        &self,
        listeners: Vec<TcpListener>,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for (ep, listener) in listeners.into_iter().enumerate() {
            tasks.push(tokio::spawn(accept_loop(
                self.shared.clone(),
                ep,
                listener,
                stop_rx.clone(),
            )));
        }
        if let Some(admin) = admin {
            tasks.push(tokio::spawn(admin_loop(
                self.shared.clone(),
                admin,
                stop_rx.clone(),
            )));
        }
        shutdown.await;
        self.shared.conns.draining.store(true, Relaxed);
        // Listeners close when their accept loops end: only then is "no new connections" true.
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let open = self.shared.conns.open.load(Relaxed);
        tracing::info!(open_connections = open, drain_timeout = ?drain, "shutting down: no new connections; finishing in-flight requests");
        let wait = async {
            loop {
                let notified = self.shared.conns.done.notified();
                if self.shared.conns.open.load(Relaxed) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(drain, wait).await.is_err() {
            tracing::warn!(
                open_connections = self.shared.conns.open.load(Relaxed),
                "drain deadline passed; closing the remaining connections"
            );
        }
        self.shared
            .config
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .health
            .stop_all();
    }
}

/// An edge's settings, given before it is built ([`Edge::builder`]); none of them changes
/// while it runs.
pub struct EdgeBuilder {
    settings: Settings,
}

impl EdgeBuilder {
    /// Writes one JSON line per request (none by default).
    pub fn access_log(mut self, log: Option<AccessLog>) -> Self {
        self.settings.access_log = log;
        self
    }

    /// The index of the entry point named `name`.
    fn entry_point(&self, name: &str) -> Result<usize, Error> {
        self.settings
            .entry_points
            .iter()
            .position(|e| e == name)
            .ok_or_else(|| Error::NoEntryPoint(name.to_string()))
    }

    /// Makes `entry_point` answer ACME HTTP-01 challenges (every request under
    /// `/.well-known/acme-challenge/`, ahead of routing) from `tokens`.
    pub fn http01(
        mut self,
        entry_point: &str,
        tokens: Arc<acme::AcmeChallenges>,
    ) -> Result<Self, Error> {
        let idx = self.entry_point(entry_point)?;
        if let Some(slot) = self.settings.http01.get_mut(idx) {
            *slot = Some(tokens);
        }
        Ok(self)
    }

    /// Answers ACME TLS-ALPN-01 handshakes (only `acme-tls/1` offered) on every entry
    /// point with the certificates presented in `challenges`.
    pub fn tls_alpn01(mut self, challenges: Arc<acme::AcmeChallenges>) -> Self {
        self.settings.tls_alpn01 = Some(challenges);
        self
    }

    /// Shows the ACME resolvers' orders and certificates at `/debug/config` and
    /// `/metrics`.
    pub fn acme(mut self, acme: zw_acme::Acme) -> Self {
        self.settings.acme = Some(acme);
        self
    }

    /// Makes `entry_point` expect a PROXY protocol (v1 or v2) header on every connection,
    /// from the `trusted` networks only.
    pub fn proxy_protocol(
        mut self,
        entry_point: &str,
        trusted: Vec<zw_rules::IpNet>,
    ) -> Result<Self, Error> {
        let idx = self.entry_point(entry_point)?;
        if trusted.is_empty() {
            return Err(Error::NoTrustedNetworks(entry_point.to_string()));
        }
        if let Some(slot) = self.settings.proxy_protocol.get_mut(idx) {
            *slot = Some(proxy_protocol::Trusted(trusted));
        }
        Ok(self)
    }

    /// Makes `entry_point` keep the `X-Forwarded-*` headers of the clients `trust` names
    /// (Traefik's `forwardedHeaders`); from anyone else they are replaced.
    pub fn forwarded_headers(
        mut self,
        entry_point: &str,
        trust: zw_config::ForwardedTrust,
    ) -> Result<Self, Error> {
        let idx = self.entry_point(entry_point)?;
        if let Some(slot) = self.settings.forwarded_headers.get_mut(idx) {
            *slot = Some(trust);
        }
        Ok(self)
    }

    /// At most `n` client connections at once over all entry points (default
    /// [`DEFAULT_MAX_CONNECTIONS`]); see [`connection_limit_for_fds`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.settings.max_connections = n.max(1);
        self
    }

    /// A request body that sends nothing for this long ends its request with a 408
    /// (default [`proxy::BODY_READ_TIMEOUT`], 60 s).
    pub fn body_read_timeout(mut self, d: Duration) -> Self {
        self.settings.body_read_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// What a request's head may hold (see [`RequestLimits`]).
    pub fn request_limits(mut self, limits: RequestLimits) -> Self {
        self.settings.request_limits = limits;
        self
    }

    /// A response the client takes nothing of for this long ends: the HTTP/1 connection,
    /// or the HTTP/2 stream (default [`WRITE_TIMEOUT`], 60 s).
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.settings.write_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// How long a connection may wait for a request — its first, or the next on a kept-alive
    /// connection — before it is closed (default [`IDLE_TIMEOUT`], 30 s; Traefik's
    /// `respondingTimeouts.idleTimeout`). While more than half the connection limit is in
    /// use, [`IDLE_TIMEOUT_UNDER_PRESSURE`] applies whenever it is shorter.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.settings.idle_timeout = d.max(Duration::from_millis(1));
        self
    }

    pub fn build(self) -> Edge {
        let status = ConfigStatus {
            entry_points: self.settings.entry_points.clone(),
            ..ConfigStatus::default()
        };
        Edge {
            shared: Arc::new(Shared {
                settings: self.settings,
                config: Configured {
                    current: ArcSwapOption::empty(),
                    registry: Mutex::new(Registry::default()),
                    status: Mutex::new(status),
                    next_version: AtomicU64::new(1),
                    tls_not_after: Default::default(),
                },
                conns: Connections {
                    open: AtomicUsize::new(0),
                    done: Notify::new(),
                    draining: AtomicBool::new(false),
                    silent: Mutex::new(Default::default()),
                },
                metrics: EdgeMetrics::default(),
            }),
        }
    }
}

/// The connection limit when the binary sets none.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// File descriptors kept back from client connections: listeners, the admin endpoint,
/// the control plane, health checks, log and state files.
const RESERVED_FDS: u64 = 256;

/// The client-connection limit that fits in `fds` file descriptors: each client
/// connection may hold one upstream connection too, and some are kept back.
pub fn connection_limit_for_fds(fds: u64) -> usize {
    let n = fds.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(n).unwrap_or(usize::MAX).max(16)
}

/// How long a new connection may stay silent before its first bytes (and, for HTTP/1.1,
/// how long it may idle between requests: hyper's header timeout).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A response write that makes no progress for this long ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// The same while more than half of the connection limit is in use. Silent connections
/// are the cheapest way to exhaust a proxy; under pressure they get less patience, as
/// Envoy's overload manager reduces idle timeouts (`envoy.overload_actions.reduce_timeouts`).
pub const IDLE_TIMEOUT_UNDER_PRESSURE: Duration = Duration::from_secs(2);

fn server_builder(shared: &Arc<Shared>) -> auto::Builder<stall::Exec> {
    let mut b = auto::Builder::new(stall::Exec {
        shared: shared.clone(),
    });
    let limits = shared.settings.request_limits;
    b.http1()
        .timer(TokioTimer::new())
        // slow-loris guard: the whole header block must arrive within this time
        .header_read_timeout(shared.settings.idle_timeout)
        // hyper needs room for at least one read (8 KiB)
        .max_buf_size(limits.head_bytes.max(8192))
        .max_headers(limits.headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_streams)
        .max_header_list_size(limits.h2_header_list)
        // what one stream may buffer towards a client that does not read (a zero window):
        // the upstream body is read no further until the client takes some
        .max_send_buf_size(256 * 1024)
        // rapid reset (CVE-2023-44487): a client that resets streams faster than they
        // are served is sent GOAWAY
        .max_pending_accept_reset_streams(Some(20))
        // an HTTP/2 client that stops answering PINGs is gone: free its connection
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

async fn accept_loop(
    shared: Arc<Shared>,
    ep: usize,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let builders = Arc::new(Builders {
        sniff: server_builder(&shared),
        h1: server_builder(&shared).http1_only(),
        h2: server_builder(&shared).http2_only(),
    });
    let local_port = listener.local_addr().map_or(0, |a| a.port());
    let trusted = shared.settings.proxy_protocol.get(ep).cloned().flatten();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let open = shared.conns.open.load(Relaxed);
        let max = shared.settings.max_connections;
        if open >= max {
            if shared.conns.evict_silent() {
                // The newcomer takes the place of a connection that never said anything
                // (it closes at once; the count dips back under the limit).
                shared.metrics.connections_evicted.fetch_add(1, Relaxed);
            } else {
                // Closed at once rather than left in the backlog: the client learns now,
                // and the descriptors stay free for the connections being served.
                if shared
                    .metrics
                    .connections_refused
                    .fetch_add(1, Relaxed)
                    .is_multiple_of(1000)
                {
                    tracing::warn!(open, max, "connection limit reached; closing new connections (zeitwork_connections_refused_total)");
                }
                drop(stream);
                continue;
            }
        }
        let silent = shared.conns.register_silent(max);
        let idle = if open > max / 2 {
            IDLE_TIMEOUT_UNDER_PRESSURE.min(shared.settings.idle_timeout)
        } else {
            shared.settings.idle_timeout
        };
        let _ = stream.set_nodelay(true);
        shared.conns.open.fetch_add(1, Relaxed);
        shared.metrics.connections_open.fetch_add(1, Relaxed);
        let shared = shared.clone();
        let builders = builders.clone();
        let (stop, trusted) = (stop.clone(), trusted.clone());
        tokio::spawn(async move {
            let at = Accepted {
                ep,
                peer,
                local_port,
                idle,
            };
            serve_connection(
                &shared,
                &builders,
                stream,
                at,
                trusted.as_ref(),
                silent,
                stop,
            )
            .await;
            shared.metrics.connections_open.fetch_sub(1, Relaxed);
            if shared.conns.open.fetch_sub(1, Relaxed) == 1 {
                shared.conns.done.notify_waiters();
            }
        });
    }
}

/// Where a connection came in.
struct Accepted {
    ep: usize,
    peer: SocketAddr,
    local_port: u16,
    /// How long it may stay silent before its first bytes.
    idle: Duration,
}

/// One client connection: the PROXY protocol header where the entry point wants one, then
/// HTTP until the client leaves or the edge stops.
async fn serve_connection(
    shared: &Arc<Shared>,
    builders: &Builders,
    mut stream: tokio::net::TcpStream,
    Accepted {
        ep,
        peer,
        local_port,
        idle,
    }: Accepted,
    trusted: Option<&proxy_protocol::Trusted>,
    silent: Arc<Silent>,
    mut stop: watch::Receiver<bool>,
) {
    // The opening: the PROXY protocol header where the entry point wants one, then the
    // first bytes of HTTP. Until it is over the connection is `silent`, the first to be
    // closed when the connection limit is reached.
    let opening = async {
        let (client, prefix) = match trusted {
            None => (peer, bytes::Bytes::new()),
            Some(t) => {
                let header = if t.admits(peer) {
                    proxy_protocol::read_header(&mut stream, peer).await
                } else {
                    Err(Error::ProxyProtocol(
                        "source is not a trusted PROXY protocol sender".into(),
                    ))
                };
                match header {
                    Ok(x) => x,
                    Err(reason) => {
                        shared
                            .metrics
                            .proxy_protocol_rejections
                            .fetch_add(1, Relaxed);
                        tracing::debug!(%peer, %reason, "connection closed");
                        return None;
                    }
                }
            }
        };
        // hyper-util's protocol detection waits for the first bytes without a deadline,
        // and hyper's header timeout starts only after it: a connection that sends nothing
        // would be kept for ever. Read until the protocol is known, within `idle`.
        let Some(prefix) = first_bytes(&mut stream, prefix, idle).await else {
            shared.metrics.connections_idle_closed.fetch_add(1, Relaxed);
            tracing::debug!(%peer, ?idle, "connection closed: no request");
            return None;
        };
        let tls = prefix.first() == Some(&tls::HANDSHAKE);
        let io = proxy_protocol::Prefixed::new(prefix, stream)
            .with_write_timeout(shared.settings.write_timeout);
        if !tls {
            return Some((client, tls::ClientIo::Plain(io), Proto::Sniff));
        }
        // The handshake is part of the opening: bounded by `idle`, and the connection is
        // still one of the silent ones until it is done.
        match tokio::time::timeout(idle, tls::accept(shared, io)).await {
            Ok(Ok((stream, h2))) => {
                shared.metrics.tls_handshakes.fetch_add(1, Relaxed);
                let proto = if h2 { Proto::H2 } else { Proto::H1 };
                Some((client, tls::ClientIo::Tls(Box::new(stream)), proto))
            }
            Ok(Err(tls::HandshakeError::AcmeChallenge)) => {
                tracing::info!(%peer, "ACME TLS-ALPN-01 challenge answered");
                None
            }
            Ok(Err(e)) => {
                shared.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                shared.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
                tracing::debug!(%peer, ?idle, "TLS handshake not finished in time");
                None
            }
        }
    };
    let opened = tokio::select! {
        o = opening => o,
        _ = silent.evict.notified() => {
            tracing::debug!(%peer, "silent connection closed to make room at the connection limit");
            None
        }
    };
    drop(silent);
    let Some((client, io, proto)) = opened else {
        return;
    };
    let trust_forwarded = shared
        .settings
        .forwarded_headers
        .get(ep)
        .and_then(Option::as_ref)
        .is_some_and(|t| t.trusts(zw_rules::canonical_ip(client.ip())));
    let client_certs = match &io {
        tls::ClientIo::Tls(s) => s.get_ref().1.peer_certificates().unwrap_or_default(),
        tls::ClientIo::Plain(_) => &[],
    };
    let conn_info = Arc::new(proxy::ConnInfo::new(
        client,
        local_port,
        matches!(io, tls::ClientIo::Tls(_)),
        trust_forwarded,
        client_certs,
    ));
    let svc_shared = shared.clone();
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let shared = svc_shared.clone();
        CatchPanic {
            fut: proxy::handle(shared.clone(), ep, conn_info.clone(), req),
            shared,
        }
    });
    let builder = match proto {
        Proto::Sniff => &builders.sniff,
        Proto::H1 => &builders.h1,
        Proto::H2 => &builders.h2,
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// How a connection's HTTP version is known.
enum Proto {
    /// From its first bytes (plain connections: the HTTP/2 preface or not).
    Sniff,
    /// By ALPN: `http/1.1`, or none.
    H1,
    /// By ALPN: `h2`.
    H2,
}

/// The connection builders: one that tells HTTP/1 from HTTP/2 by the first bytes, and one
/// for each, for TLS connections whose ALPN said.
struct Builders {
    sniff: auto::Builder<stall::Exec>,
    h1: auto::Builder<stall::Exec>,
    h2: auto::Builder<stall::Exec>,
}

/// The HTTP/2 connection preface; a connection whose first bytes differ speaks HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `buf` tells HTTP/1 from HTTP/2 (what hyper-util's detection reads).
fn protocol_known(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    !buf.is_empty() && (n == H2_PREFACE.len() || buf.get(..n) != H2_PREFACE.get(..n))
}

/// Reads from `stream` (after `prefix`, bytes already read) until [`protocol_known`], for
/// at most `within`. `None`: the client closed or said too little in time.
async fn first_bytes(
    stream: &mut tokio::net::TcpStream,
    prefix: bytes::Bytes,
    within: Duration,
) -> Option<bytes::Bytes> {
    use tokio::io::AsyncReadExt;
    if protocol_known(&prefix) {
        return Some(prefix);
    }
    let mut buf = bytes::BytesMut::from(&prefix[..]);
    let read = async {
        while !protocol_known(&buf) {
            buf.reserve(1024);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    };
    match tokio::time::timeout(within, read).await {
        Ok(true) => Some(buf.freeze()),
        _ => None,
    }
}

pin_project_lite::pin_project! {
    /// Turns a panic while handling one request into a 500 for that request.
    struct CatchPanic<F> {
        #[pin]
        fut: F,
        shared: Arc<Shared>,
    }
}

impl<F: Future<Output = hyper::Response<body::ProxyBody>>> Future for CatchPanic<F> {
    type Output = Result<hyper::Response<body::ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let fut = this.fut;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(resp)) => Poll::Ready(Ok(resp)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => {
                // Ready now, so hyper never polls the broken future again.
                this.shared.metrics.panics.fetch_add(1, Relaxed);
                tracing::error!("request handler panicked; answered 500");
                Poll::Ready(Ok(proxy::local(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error\n",
                )))
            }
        }
    }
}

async fn admin_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let builder = Arc::new(server_builder(&shared));
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| admin::handle(shared.clone(), req));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_is_known_once_the_preface_can_be_told_apart() {
        assert!(!protocol_known(b""));
        assert!(protocol_known(b"G"));
        assert!(protocol_known(b"GET / HTTP/1.1\r\n"));
        assert!(!protocol_known(b"P"));
        assert!(!protocol_known(b"PRI * HTTP/2.0"));
        assert!(protocol_known(b"PRX"));
        assert!(protocol_known(b"POST / HTTP/1.1"));
        assert!(protocol_known(H2_PREFACE));
        assert!(protocol_known(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"));
    }

    #[test]
    fn the_connection_limit_leaves_room_for_upstreams_and_admin() {
        assert_eq!(connection_limit_for_fds(1024), 384);
        assert_eq!(connection_limit_for_fds(65_536), 32_640);
        assert_eq!(connection_limit_for_fds(100), 16);
        assert!(connection_limit_for_fds(u64::MAX) > 1 << 40);
    }
}
