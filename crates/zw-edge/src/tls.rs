//! TLS termination: the handshake of a connection whose first byte is a TLS record, with
//! the server configuration the running snapshot holds for the client's server name.
//!
//! Every entry point takes both: a connection that opens with a TLS handshake is served
//! over TLS and routed among the routers with `tls`, one that does not among the others,
//! as Traefik's entry points do. Certificates change with the snapshot: a handshake uses
//! the snapshot current when it starts, and connections already open keep theirs.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use zw_tls::rustls::ServerConfig;

use crate::proxy_protocol::Prefixed;

/// A TLS handshake record starts with content type 22 (RFC 8446 §5.1).
pub(crate) const HANDSHAKE: u8 = 0x16;

/// The server configurations of one snapshot, sessions applied.
#[derive(Debug)]
pub struct TlsRuntime {
    default: Arc<ServerConfig>,
    /// By host name (exact, or `*.parent`): the configuration of the TLS options that the
    /// routers for that host name (Traefik: `pkg/server/router/tcp/manager.go`, options
    /// by the domains of the router's `Host` rule).
    by_host: HashMap<String, Arc<ServerConfig>>,
}

impl TlsRuntime {
    /// `routers`: each TLS router's name, its options name and the hosts its rule names.
    pub(crate) fn new<'a>(
        parsed: &zw_config::ParsedTls,
        sessions: &zw_tls::Sessions,
        routers: impl Iterator<Item = (&'a str, &'a str, Option<Vec<String>>)>,
    ) -> TlsRuntime {
        let default = sessions.apply(&parsed.default);
        let mut applied: HashMap<&str, Arc<ServerConfig>> = HashMap::new();
        let mut chosen: HashMap<String, &str> = HashMap::new();
        let mut by_host = HashMap::new();
        for (router, options, hosts) in routers {
            let Some(template) = parsed.named.get(options) else {
                continue; // `default`
            };
            let Some(hosts) = hosts else {
                tracing::warn!(%router, %options, "the router's rule names no Host: its TLS options cannot be chosen before routing, so its clients get the default options");
                continue;
            };
            let cfg = applied
                .entry(options)
                .or_insert_with(|| sessions.apply(template))
                .clone();
            for host in hosts {
                match chosen.get(host.as_str()) {
                    Some(other) if *other != options => {
                        // Two sets of options for one host: neither wins (as in Traefik).
                        tracing::warn!(%host, first = %other, second = %options, "routers for this host name different TLS options; it gets the default options");
                        by_host.insert(host, default.clone());
                    }
                    Some(_) => {}
                    None => {
                        chosen.insert(host.clone(), options);
                        by_host.insert(host, cfg.clone());
                    }
                }
            }
        }
        TlsRuntime { default, by_host }
    }

    /// The configuration for a handshake that names `server_name` (SNI).
    pub(crate) fn config_for(&self, server_name: Option<&str>) -> Arc<ServerConfig> {
        if self.by_host.is_empty() {
            return self.default.clone();
        }
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.by_host
            .get(&name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.by_host.get(&format!("*.{parent}"))
            })
            .unwrap_or(&self.default)
            .clone()
    }
}

pub(crate) type TlsStream = tokio_rustls::server::TlsStream<Prefixed<TcpStream>>;

/// Why a TLS opening did not end in a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("no configuration applied yet")]
    NoConfig,
    /// Not an error: the connection served its purpose in the handshake.
    #[error("ACME TLS-ALPN-01 challenge answered")]
    AcmeChallenge,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads the client's hello, picks the configuration for its server name from the
/// current snapshot, and completes the handshake.
pub(crate) async fn accept(
    shared: &crate::Shared,
    io: Prefixed<TcpStream>,
) -> Result<(TlsStream, bool), HandshakeError> {
    let start =
        tokio_rustls::LazyConfigAcceptor::new(zw_tls::rustls::server::Acceptor::default(), io)
            .await?;
    if let Some(challenges) = &shared.settings.tls_alpn01 {
        if let Some(cert) = tls_alpn01(challenges, &start.client_hello()) {
            let config = acme_config(cert)?;
            let mut stream = start.into_stream(config).await?;
            use tokio::io::AsyncWriteExt;
            let _ = stream.shutdown().await;
            return Err(HandshakeError::AcmeChallenge);
        }
    }
    let config = {
        let snap = shared.config.current.load();
        let Some(snap) = snap.as_ref() else {
            return Err(HandshakeError::NoConfig);
        };
        snap.tls.config_for(start.client_hello().server_name())
    };
    let stream = start.into_stream(config).await?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((stream, h2))
}

/// The TLS-ALPN-01 certificate for this handshake: RFC 8737 §3 has the CA offer
/// `acme-tls/1` alone, for the name being validated.
fn tls_alpn01(
    challenges: &crate::acme::AcmeChallenges,
    hello: &zw_tls::rustls::server::ClientHello<'_>,
) -> Option<Arc<zw_tls::rustls::sign::CertifiedKey>> {
    let mut alpn = hello.alpn()?;
    if alpn.next()? != crate::acme::ACME_TLS_ALPN || alpn.next().is_some() {
        return None;
    }
    challenges.tls_alpn01(hello.server_name()?)
}

/// A configuration that serves `cert` and negotiates `acme-tls/1` (TLS 1.2 or 1.3, as
/// the RFC requires).
fn acme_config(
    cert: Arc<zw_tls::rustls::sign::CertifiedKey>,
) -> Result<Arc<ServerConfig>, HandshakeError> {
    #[derive(Debug)]
    struct One(Arc<zw_tls::rustls::sign::CertifiedKey>);
    impl zw_tls::rustls::server::ResolvesServerCert for One {
        fn resolve(
            &self,
            _: zw_tls::rustls::server::ClientHello<'_>,
        ) -> Option<Arc<zw_tls::rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let mut config = ServerConfig::builder_with_provider(zw_tls::provider())
        .with_protocol_versions(zw_tls::rustls::ALL_VERSIONS)
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(One(cert)));
    config.alpn_protocols = vec![crate::acme::ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client connection, plain or TLS.
pub(crate) enum ClientIo {
    Plain(Prefixed<TcpStream>),
    Tls(Box<TlsStream>),
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
