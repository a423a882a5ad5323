//! The PROXY protocol on entry points behind an L4 balancer.
//!
//! On such an entry point a connection must come from a trusted source and start with a
//! v1 or v2 header; otherwise it is closed before any HTTP is read (a client that could
//! reach the edge directly must not be able to claim any address it likes). The header's
//! source address then stands for the client everywhere: `ClientIP` rules,
//! `X-Forwarded-For` / `X-Real-IP`, the access log, hashing.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use zw_rules::IpNet;

/// How long a connection may take to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Sources allowed to send PROXY protocol headers on an entry point.
#[derive(Debug, Clone)]
pub struct Trusted(pub Vec<IpNet>);

impl Trusted {
    pub fn admits(&self, peer: SocketAddr) -> bool {
        let ip = zw_rules::canonical_ip(peer.ip());
        self.0.iter().any(|n| n.contains(ip))
    }
}

/// Reads the header from `stream`. Returns the client address it names (the peer's own
/// for `LOCAL` / `UNKNOWN` headers) and the bytes read past the header, which belong to
/// the client's stream.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
) -> Result<(SocketAddr, Bytes), crate::Error> {
    use crate::Error::ProxyProtocol as Refused;
    let read = async {
        let mut buf = BytesMut::with_capacity(512);
        loop {
            match zw_proxy_protocol::parse(&buf) {
                Ok(h) => {
                    let client = h.addresses.map_or(peer, |a| a.source);
                    let rest = buf.split_off(h.len).freeze();
                    return Ok((client, rest));
                }
                Err(zw_proxy_protocol::Error::Incomplete) => {}
                Err(e) => return Err(Refused(e.to_string())),
            }
            if buf.len() >= zw_proxy_protocol::V2_MAX {
                return Err(Refused("PROXY protocol header too long".into()));
            }
            buf.reserve(512);
            match stream.read_buf(&mut buf).await {
                Ok(0) => {
                    return Err(Refused(
                        "connection closed before a complete PROXY protocol header".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(Refused(e.to_string())),
            }
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(Refused(format!(
                "no PROXY protocol header within {HEADER_TIMEOUT:?}"
            )))
        })
}

pin_project_lite::pin_project! {
    /// A client connection: first the bytes already read from it, then the socket. Writes
    /// that make no progress for `write_timeout` fail, which ends the connection: a client
    /// that stops reading (a slow reader) cannot hold the edge's buffers and its upstream
    /// connection for ever (Traefik's `respondingTimeouts.writeTimeout`, measured from the
    /// last progress rather than from the request, so long downloads are not cut).
    pub struct Prefixed<S> {
        prefix: Bytes,
        #[pin]
        inner: S,
        write_timeout: Option<std::time::Duration>,
        stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            inner,
            write_timeout: None,
            stalled: None,
        }
    }

    /// Fail writes that make no progress for `t`.
    pub fn with_write_timeout(mut self, t: std::time::Duration) -> Prefixed<S> {
        self.write_timeout = Some(t);
        self
    }
}

/// A write's outcome under the write timeout: progress clears the stall timer, a pending
/// write starts it (once), and a stall that outlives it is an error.
fn progress<T>(
    timeout: Option<std::time::Duration>,
    stalled: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
    r: Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    match (r, timeout) {
        (Poll::Pending, Some(t)) => {
            let timer = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read nothing for {t:?}"),
                )));
            }
            Poll::Pending
        }
        (r, _) => {
            if r.is_ready() {
                *stalled = None;
            }
            r
        }
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, out)
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        progress(*this.write_timeout, this.stalled, cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        progress(*this.write_timeout, this.stalled, cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        progress(*this.write_timeout, this.stalled, cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn header_split_across_reads_then_the_request() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut bytes = zw_proxy_protocol::encode_v2(
            "203.0.113.7:5555".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        );
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(5) {
                a.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            a
        });
        let (client, rest) = read_header(&mut b, peer).await.unwrap();
        assert_eq!(client, "203.0.113.7:5555".parse().unwrap());
        let _a = writer.await.unwrap();
        let mut s = Prefixed::new(rest, b);
        let mut got = vec![0u8; 18];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn plain_http_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let e = read_header(&mut b, "127.0.0.1:9".parse().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PROXY protocol header"), "{e}");
    }

    #[test]
    fn trust_is_by_source_network() {
        let t = Trusted(vec![
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        assert!(t.admits("10.1.2.3:5".parse().unwrap()));
        assert!(t.admits("[::ffff:10.1.2.3]:5".parse().unwrap()));
        assert!(t.admits("[::1]:5".parse().unwrap()));
        assert!(!t.admits("127.0.0.1:5".parse().unwrap()));
    }
}

#[cfg(test)]
mod write_timeout {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that reads nothing: writes stall once the pipe is full, and fail after the
    /// write timeout (paused time: no waiting in the test).
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_timeout() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut s =
            Prefixed::new(Bytes::new(), a).with_write_timeout(std::time::Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let e = s.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(60));
    }

    /// Progress resets the timer: a reader that keeps up, however slowly, is not cut.
    #[tokio::test(start_paused = true)]
    async fn slow_progress_is_not_a_stall() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut n = 0;
            while n < 8192 {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                n += b.read(&mut buf).await.unwrap();
            }
        });
        let mut s =
            Prefixed::new(Bytes::new(), a).with_write_timeout(std::time::Duration::from_secs(60));
        s.write_all(&[0u8; 8192]).await.unwrap();
        reader.await.unwrap();
    }
}
