//! The bodies the edge streams: the response it sends downstream ([`ProxyBody`]) and the
//! client's request body on its way upstream ([`RequestBody`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use crate::exchange::Exchange;
use crate::pool::Backend;
use crate::request_body::RequestBody;

/// Either a body made here (errors, redirects) or the upstream's, streamed through.
///
/// When the upstream body ends cleanly its HTTP/1 connection goes back to the pool; when
/// the body is dropped (finished or not), the exchange is recorded: metrics, in-flight
/// counts, access log.
pub struct ProxyBody {
    kind: Kind,
    exchange: Option<Exchange>,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        conn: Option<(http1::SendRequest<RequestBody>, Arc<Backend>)>,
    },
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        ProxyBody {
            kind: Kind::Full(if b.is_empty() { None } else { Some(b) }),
            exchange: None,
        }
    }

    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
            exchange: None,
        }
    }

    pub(crate) fn upstream(
        body: Incoming,
        conn: Option<(http1::SendRequest<RequestBody>, Arc<Backend>)>,
    ) -> Self {
        ProxyBody {
            kind: Kind::Upstream { body, conn },
            exchange: None,
        }
    }

    pub(crate) fn set_exchange(&mut self, ex: Exchange) {
        self.exchange = Some(ex);
    }

    fn finish_upstream(&mut self) {
        if let Kind::Upstream { conn, .. } = &mut self.kind {
            if let Some((tx, backend)) = conn.take() {
                backend.checkin(tx);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| {
                if let Some(ex) = &mut this.exchange {
                    ex.bytes += b.len() as u64;
                }
                Ok(Frame::data(b))
            })),
            Kind::Upstream { body, .. } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(ex), Some(data)) = (&mut this.exchange, frame.data_ref()) {
                        ex.bytes += data.len() as u64;
                    }
                    crate::stall::mark(crate::stall::Mark::Yielded);
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    crate::stall::mark(crate::stall::Mark::Waited);
                    this.finish_upstream();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Kind::Upstream { conn, .. } = &mut this.kind {
                        conn.take(); // a broken exchange never goes back to the pool
                    }
                    if let Some(ex) = &mut this.exchange {
                        ex.body_error = true;
                    }
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Pending => {
                    crate::stall::mark(crate::stall::Mark::Waited);
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Bodies that were empty from the start (HEAD, 204, 304) are never polled to the end.
        if let Kind::Upstream { body, .. } = &self.kind {
            if body.is_end_stream() {
                self.finish_upstream();
            }
        }
    }
}
