//! Upstream connections: a keep-alive pool per backend for HTTP/1.1 (spoken by
//! [`crate::h1`] on the request's own task), one shared multiplexed connection per
//! backend for h2c.
//!
//! Checkout and checkin are lock-free (`crossbeam_queue::SegQueue` for idle HTTP/1
//! connections, `ArcSwapOption` for the h2c connection): the request path never waits on
//! another request's bookkeeping. The idle queue grows in small blocks as connections are
//! returned, so a backend that never sees concurrency costs almost nothing however high
//! the idle cap is.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use std::sync::atomic::AtomicUsize;

use crossbeam_queue::SegQueue;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use zw_config::{UpstreamScheme, UpstreamUrl};

use crate::h1::H1Conn;
use crate::metrics::BackendMetrics;
use crate::request_body::{RequestBody, RequestBodyError};

/// Per-transport settings (Traefik's `serversTransports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub dial_timeout: Duration,
    pub response_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            dial_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            // Higher than Traefik's 200: an idle socket costs a few KiB, a reconnect costs a
            // handshake per request once concurrency passes the cap.
            max_idle: 512,
        }
    }
}

/// Why talking to an upstream failed; each maps to a status code.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, String),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(String, hyper::Error),
    #[error("upstream {0}: {1}")]
    Request(String, hyper::Error),
    #[error("upstream {0}: {1}")]
    Exchange(String, crate::h1::H1Error),
    #[error("upstream {0} sent no response headers within {1:?}")]
    ResponseTimeout(String, Duration),
    /// The client's request body broke while it was forwarded (a malformed chunk, a
    /// connection closed mid-body): the client's error, not the upstream's.
    #[error("the client's request body: {0}")]
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
    /// The client stopped sending its request body part way.
    #[error("the client's request body stalled for {0:?}")]
    ClientBodyStalled(std::time::Duration),
}

impl UpstreamError {
    /// `Request`, unless the error came from the request body the client sent: hyper's
    /// client reports a body stream's error as a user error whose source is the
    /// [`RequestBody`]'s error.
    pub fn request(authority: &str, e: hyper::Error) -> UpstreamError {
        let source = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<RequestBodyError>())
            .filter(|_| e.is_user());
        match source {
            Some(RequestBodyError::Stalled(d)) => UpstreamError::ClientBodyStalled(*d),
            Some(RequestBodyError::Client(_)) => UpstreamError::ClientBody(Box::new(e)),
            Some(RequestBodyError::Spool(_)) | None => {
                UpstreamError::Request(authority.to_string(), e)
            }
        }
    }

    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::ResponseTimeout(..) => http::StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::ClientBody(_) => http::StatusCode::BAD_REQUEST,
            UpstreamError::ClientBodyStalled(_) => http::StatusCode::REQUEST_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

struct Idle {
    conn: H1Conn,
    since: Instant,
}

enum Addr {
    Ip(SocketAddr),
    Name(String),
}

/// The edge's platform TLS client configuration (its certificate from the operator's CA),
/// shared by every `https://` backend; swapped when the certificate is renewed.
pub type PlatformTls = Arc<ArcSwapOption<rustls::ClientConfig>>;

/// A connection to an upstream: plain TCP, or TLS to a worker ingress.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One upstream address (`scheme://host:port`) and its connections.
pub struct Backend {
    pub label: String,
    pub scheme: UpstreamScheme,
    pub authority: String,
    host: String,
    tls: PlatformTls,
    /// For an `https://` server that is not a worker ingress: TLS as its transport says,
    /// instead of the platform's mutual TLS.
    public_tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    addr: Addr,
    idle: SegQueue<Idle>,
    idle_len: AtomicUsize,
    max_idle: usize,
    h2: ArcSwapOption<http2::SendRequest<RequestBody>>,
    pub metrics: BackendMetrics,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("label", &self.label)
            .field("idle", &self.idle.len())
            .finish()
    }
}

/// A connection ready to take one request.
pub enum Conn {
    H1(H1Conn),
    H2(http2::SendRequest<RequestBody>),
}

impl Backend {
    pub fn new(url: &UpstreamUrl, max_idle: usize, tls: PlatformTls) -> Backend {
        Backend::with_tls(url, max_idle, tls, None)
    }

    /// A backend whose `https://` connections use `public_tls` (a client configuration and
    /// the server name to ask for; `None` in the name: the URL's host).
    pub fn with_tls(
        url: &UpstreamUrl,
        max_idle: usize,
        tls: PlatformTls,
        public_tls: Option<(Arc<rustls::ClientConfig>, Option<&str>)>,
    ) -> Backend {
        let public_tls = public_tls.and_then(|(config, name)| {
            let name = name.unwrap_or(url.host.as_str());
            rustls::pki_types::ServerName::try_from(name.to_string())
                .ok()
                .map(|n| (config, n))
        });
        let addr = match url.host.parse::<std::net::IpAddr>() {
            Ok(ip) => Addr::Ip(SocketAddr::new(ip, url.port)),
            Err(_) => Addr::Name(url.authority.clone()),
        };
        let scheme = match url.scheme {
            UpstreamScheme::Http => "http",
            UpstreamScheme::H2c => "h2c",
            UpstreamScheme::Https => "https",
        };
        Backend {
            label: format!("{scheme}://{}", url.authority),
            scheme: url.scheme,
            authority: url.authority.clone(),
            host: url.host.clone(),
            tls,
            public_tls,
            addr,
            idle: SegQueue::new(),
            idle_len: AtomicUsize::new(0),
            max_idle: max_idle.max(1),
            h2: ArcSwapOption::empty(),
            metrics: BackendMetrics::default(),
        }
    }

    /// Number of idle HTTP/1 connections.
    pub fn idle_count(&self) -> usize {
        self.idle_len.load(Relaxed)
    }

    pub(crate) async fn connect_tcp(
        &self,
        dial_timeout: Duration,
    ) -> Result<TcpStream, UpstreamError> {
        let connect = async {
            match &self.addr {
                Addr::Ip(sa) => TcpStream::connect(*sa).await,
                Addr::Name(name) => TcpStream::connect(name.as_str()).await,
            }
        };
        let stream = match tokio::time::timeout(dial_timeout, connect).await {
            Err(_) => {
                self.metrics.connect_errors.fetch_add(1, Relaxed);
                return Err(UpstreamError::ConnectTimeout(self.authority.clone()));
            }
            Ok(Err(e)) => {
                self.metrics.connect_errors.fetch_add(1, Relaxed);
                return Err(UpstreamError::Connect(self.authority.clone(), e));
            }
            Ok(Ok(s)) => s,
        };
        // Requests are small writes followed by a wait for the answer: Nagle only adds delay.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A connection to this backend: TCP, with TLS on top for `https://` (mutual TLS
    /// with the edge's platform certificate, the server checked against the platform CA).
    pub(crate) async fn connect(&self, dial_timeout: Duration) -> Result<Stream, UpstreamError> {
        let tcp = self.connect_tcp(dial_timeout).await?;
        if self.scheme != UpstreamScheme::Https {
            return Ok(Stream::Tcp(tcp));
        }
        let tls_err = |e: String| {
            self.metrics.connect_errors.fetch_add(1, Relaxed);
            UpstreamError::Tls(self.authority.clone(), e)
        };
        if let Some((config, name)) = &self.public_tls {
            let handshake =
                tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), tcp);
            return match tokio::time::timeout(dial_timeout, handshake).await {
                Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
                Ok(Err(e)) => Err(tls_err(e.to_string())),
                Err(_) => Err(tls_err(format!("no handshake within {dial_timeout:?}"))),
            };
        }
        let Some(config) = self.tls.load_full() else {
            return Err(tls_err(
                "this edge has no platform certificate (it gets one from the operator with --control-plane and a join token)".into(),
            ));
        };
        let name = zw_pki::server_name(&self.host).map_err(|e| tls_err(e.to_string()))?;
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(dial_timeout, handshake).await {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(tls_err(e.to_string())),
            Err(_) => Err(tls_err(format!("no handshake within {dial_timeout:?}"))),
        }
    }

    /// A fresh HTTP/1 connection for a protocol switch (WebSocket), outside the pool:
    /// hyper's client, which hands over the upgraded stream.
    pub(crate) async fn connect_upgrade(
        &self,
        t: &Transport,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let stream = self.connect(t.dial_timeout).await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Handshake(self.authority.clone(), e))?;
        self.metrics.connects.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(tx)
    }

    /// A new HTTP/1.1 connection, bypassing the idle ones.
    pub(crate) async fn connect_h1(&self, t: &Transport) -> Result<H1Conn, UpstreamError> {
        let stream = self.connect(t.dial_timeout).await?;
        self.metrics.connects.fetch_add(1, Relaxed);
        Ok(H1Conn::new(stream))
    }

    /// A connection for one request: a pooled idle one when there is one, else a new one.
    pub async fn checkout(&self, t: &Transport) -> Result<Conn, UpstreamError> {
        match self.scheme {
            UpstreamScheme::H2c => self.checkout_h2(t).await.map(Conn::H2),
            UpstreamScheme::Http | UpstreamScheme::Https => {
                while let Some(mut idle) = self.idle.pop() {
                    self.idle_len.fetch_sub(1, Relaxed);
                    // Closed by the upstream while idle, or idle for too long: dropped.
                    if idle.since.elapsed() > t.idle_timeout || !idle.conn.is_usable() {
                        continue;
                    }
                    self.metrics.reuses.fetch_add(1, Relaxed);
                    return Ok(Conn::H1(idle.conn));
                }
                self.connect_h1(t).await.map(Conn::H1)
            }
        }
    }

    /// Returns a connection whose exchange completed cleanly. Dropped when the pool is
    /// full.
    pub fn checkin(&self, conn: H1Conn) {
        // The cap is approximate under races (two checkins may both see room); that is
        // harmless: it bounds memory, not correctness.
        if self.idle_len.load(Relaxed) < self.max_idle {
            self.idle_len.fetch_add(1, Relaxed);
            self.idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn checkout_h2(
        &self,
        t: &Transport,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        if let Some(shared) = self.h2.load_full() {
            if !shared.is_closed() {
                let mut tx = (*shared).clone();
                if tx.ready().await.is_ok() {
                    self.metrics.reuses.fetch_add(1, Relaxed);
                    return Ok(tx);
                }
            }
        }
        let stream = self.connect(t.dial_timeout).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Handshake(self.authority.clone(), e))?;
        self.metrics.connects.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // Concurrent first requests may each connect; the last one stored is kept.
        self.h2.store(Some(Arc::new(tx.clone())));
        Ok(tx)
    }
}
