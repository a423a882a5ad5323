//! One client connection: optionally read the TLS ClientHello (to route or log by server
//! name, without terminating TLS), pick a backend, connect (trying up to three), send
//! the PROXY protocol header and whatever was read, then copy bytes both ways until both
//! sides are done, the connection idles out, or its backend's drain deadline passes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{ListenerConfig, ProxyProtocol};
use crate::pool::{Backend, Pool};

/// Connect attempts (distinct backends) per client connection.
const ATTEMPTS: usize = 3;
const COPY_BUFFER: usize = 64 * 1024;

/// A listener and its counters.
pub struct Listener {
    pub config: ListenerConfig,
    pub pool: Arc<Pool>,
    pub sni: Vec<(String, Arc<Pool>)>,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub refused: AtomicU64,
    pub no_backend: AtomicU64,
    /// `max_connections`, as configured or derived from the open-file limit.
    pub max_connections: u64,
    /// Open connections per client address (only addresses with one open).
    pub per_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    /// Connections refused because their client had `max_connections_per_client` open.
    pub refused_per_client: AtomicU64,
    /// Failed accepts (EMFILE: out of file descriptors).
    pub accept_errors: AtomicU64,
    /// Connections closed for sending nothing within `silent_timeout`.
    pub silent_closed: AtomicU64,
}

impl Listener {
    /// Counts a connection from `ip`, unless that client is at its limit.
    pub fn admit_client(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ClientSlot> {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n as usize >= self.config.max_connections_per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot(self.clone(), ip))
    }
}

/// One client address's share of a listener, held while its connection lives.
pub struct ClientSlot(Arc<Listener>, std::net::IpAddr);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.0.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Counts a backend connection for as long as it lives.
struct Using(Arc<Backend>);

impl Using {
    fn new(b: Arc<Backend>) -> Using {
        b.active.fetch_add(1, Relaxed);
        b.total.fetch_add(1, Relaxed);
        Using(b)
    }
}

impl Drop for Using {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

pub(crate) async fn handle(
    l: Arc<Listener>,
    mut client: TcpStream,
    peer: SocketAddr,
    drain_timeout: Duration,
    mut cut: watch::Receiver<bool>,
) {
    let _ = client.set_nodelay(true);
    let silent = l.config.silent_timeout.0;
    if !l.config.reads_client_hello() && !silent.is_zero() {
        // `readable` also wakes on a close, which the copy then sees.
        if tokio::time::timeout(silent, client.readable())
            .await
            .is_err()
        {
            l.silent_closed.fetch_add(1, Relaxed);
            tracing::debug!(%peer, ?silent, "connection closed: nothing sent");
            return;
        }
    }
    let mut initial = Vec::new();
    let mut server_name = None;
    if l.config.reads_client_hello() {
        match read_hello(&mut client, &mut initial, l.config.sni_timeout.0).await {
            Ok(name) => server_name = name,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection closed before a backend was chosen");
                return;
            }
        }
    }
    let pool = server_name
        .as_deref()
        .and_then(|n| l.sni.iter().find(|(host, _)| host.eq_ignore_ascii_case(n)))
        .map_or(&l.pool, |(_, p)| p);
    let mut tried = Vec::new();
    let (backend, mut upstream) = loop {
        let Some(b) = pool.pick(peer.ip(), &tried) else {
            l.no_backend.fetch_add(1, Relaxed);
            let all = pool.backends();
            let draining = all.iter().filter(|b| b.draining()).count();
            let down = all.iter().filter(|b| !b.draining() && !b.healthy()).count();
            tracing::warn!(listener = %l.config.name, pool = %pool.name, %peer, backends = all.len(), draining, down, tried = tried.len(), "no backend to send the connection to (every one draining, down or tried); closed without an answer (zeitwork_l4_connections_no_backend_total)");
            return;
        };
        match tokio::time::timeout(l.config.connect_timeout.0, TcpStream::connect(b.addr)).await {
            Ok(Ok(s)) => break (b, s),
            Ok(Err(e)) => {
                tracing::warn!(pool = %pool.name, backend = %b.addr, error = %e, "connect failed; trying another backend")
            }
            Err(_) => {
                tracing::warn!(pool = %pool.name, backend = %b.addr, "connect timed out; trying another backend")
            }
        }
        b.connect_errors.fetch_add(1, Relaxed);
        tried.push(b.addr);
        if tried.len() >= ATTEMPTS {
            l.no_backend.fetch_add(1, Relaxed);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let using = Using::new(backend.clone());
    if l.config.log_sni {
        tracing::info!(%peer, backend = %backend.addr, server_name = server_name.as_deref().unwrap_or("-"), "connected");
    } else {
        tracing::debug!(%peer, backend = %backend.addr, server_name = server_name.as_deref().unwrap_or("-"), "connected");
    }
    let local = || client.local_addr().unwrap_or(peer);
    let mut first = match l.config.proxy_protocol {
        ProxyProtocol::V2 => zw_proxy_protocol::encode_v2(peer, local()),
        ProxyProtocol::V1 => zw_proxy_protocol::encode_v1(peer, local()).into_bytes(),
        ProxyProtocol::Off => Vec::new(),
    };
    first.extend_from_slice(&initial);
    if !first.is_empty() && upstream.write_all(&first).await.is_err() {
        return;
    }
    backend.bytes_to.fetch_add(initial.len() as u64, Relaxed);
    pump(
        client,
        upstream,
        &using.0,
        l.config.idle_timeout.0,
        drain_timeout,
        &mut cut,
    )
    .await;
}

/// Reads until the ClientHello is complete (or is not one). The bytes stay in `buf` for
/// the backend. `Ok(None)`: not TLS or no server name — routed by the default pool.
async fn read_hello(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<Option<String>, String> {
    let work = async {
        let mut chunk = [0u8; 4096];
        loop {
            match crate::client_hello::parse(buf) {
                Ok(h) => return Ok(h.server_name),
                Err(crate::client_hello::Error::Incomplete) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "no server name: routed to the listener's pool");
                    return Ok(None);
                }
            }
            let n = client.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("client closed during the ClientHello".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        // a client that says nothing first (a server-speaks-first protocol) still gets through
        Err(_) if buf.is_empty() => Ok(None),
        Err(_) => Err(format!("ClientHello incomplete after {limit:?}")),
    }
}

/// Copies both ways — with splice(2) on Linux, through buffers where that is not
/// available. Each direction ends with a half-close of the other side, so a client that
/// finished sending still gets the whole answer.
async fn pump(
    client: TcpStream,
    upstream: TcpStream,
    backend: &Backend,
    idle: Duration,
    drain_timeout: Duration,
    cut: &mut watch::Receiver<bool>,
) {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let tick = idle.min(Duration::from_secs(1));
    let watchdog = async {
        loop {
            tokio::time::sleep(tick).await;
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Relaxed)));
            if quiet >= idle {
                return "idle timeout";
            }
            if backend.drain_expired(drain_timeout) {
                return "backend drain deadline passed";
            }
        }
    };
    let both = async {
        #[cfg(target_os = "linux")]
        if let (Ok(p1), Ok(p2)) = (crate::splice::pipes(), crate::splice::pipes()) {
            tokio::join!(
                crate::splice::copy(&client, &upstream, p1, &last, start, &backend.bytes_to),
                crate::splice::copy(&upstream, &client, p2, &last, start, &backend.bytes_from),
            );
            return;
        }
        let (mut cr, mut cw) = client.into_split();
        let (mut ur, mut uw) = upstream.into_split();
        tokio::join!(
            copy(&mut cr, &mut uw, &last, start, &backend.bytes_to),
            copy(&mut ur, &mut cw, &last, start, &backend.bytes_from),
        );
    };
    tokio::select! {
        _ = both => {}
        reason = watchdog => tracing::debug!(backend = %backend.addr, reason, "connection cut"),
        _ = cut.changed() => tracing::debug!(backend = %backend.addr, "connection cut: shutdown deadline"),
    }
}

async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    last: &AtomicU64,
    start: Instant,
    bytes: &AtomicU64,
) {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        bytes.fetch_add(n as u64, Relaxed);
        last.store(start.elapsed().as_millis() as u64, Relaxed);
    }
    let _ = w.shutdown().await;
}
