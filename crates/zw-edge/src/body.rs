//! The bodies the edge streams: the response it sends downstream ([`ProxyBody`]) and the
//! client's request body on its way upstream ([`RequestBody`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::exchange::Exchange;
use crate::h1::H1Body;

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the upstream's response body: {0}")]
    Upstream(hyper::Error),
    #[error("the upstream's response body: {0}")]
    H1(crate::h1::H1Error),
    #[error("reading back a buffered response body: {0}")]
    Spool(std::io::Error),
}

/// Either a body made here (errors, redirects) or the upstream's, streamed through.
///
/// When an HTTP/1 upstream body ends cleanly its connection goes back to the pool (the
/// [`H1Body`] does that); when the body is dropped (finished or not), the exchange is
/// recorded: metrics, in-flight counts, access log.
pub struct ProxyBody {
    kind: Kind,
    exchange: Option<Exchange>,
}

enum Kind {
    Full(Option<Bytes>),
    /// Held whole by a `buffering` middleware.
    Spooled(crate::spool::SpooledBody),
    /// A frame read ahead (a `contentType` middleware's look at the first bytes), then the
    /// rest.
    Prefixed {
        first: Option<Frame<Bytes>>,
        rest: Box<ProxyBody>,
    },
    /// An h2c upstream's, or an upgrade refused by the upstream.
    Upstream(Incoming),
    /// An HTTP/1.1 upstream's, read on this task.
    H1(H1Body),
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

    pub(crate) fn upstream(body: Incoming) -> Self {
        ProxyBody {
            kind: Kind::Upstream(body),
            exchange: None,
        }
    }

    pub(crate) fn h1(body: H1Body) -> Self {
        ProxyBody {
            kind: Kind::H1(body),
            exchange: None,
        }
    }

    pub(crate) fn spooled(body: crate::spool::SpooledBody) -> Self {
        ProxyBody {
            kind: Kind::Spooled(body),
            exchange: None,
        }
    }

    pub(crate) fn prefixed(first: Frame<Bytes>, rest: ProxyBody) -> Self {
        ProxyBody {
            kind: Kind::Prefixed {
                first: Some(first),
                rest: Box::new(rest),
            },
            exchange: None,
        }
    }

    pub(crate) fn set_exchange(&mut self, ex: Exchange) {
        self.exchange = Some(ex);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| {
                if let Some(ex) = &mut this.exchange {
                    ex.bytes += b.len() as u64;
                }
                Ok(Frame::data(b))
            })),
            Kind::Prefixed { first, rest } => {
                let frame = match first.take() {
                    Some(f) => Poll::Ready(Some(Ok(f))),
                    None => Pin::new(&mut **rest).poll_frame(cx),
                };
                if let (Some(ex), Poll::Ready(Some(Ok(f)))) = (&mut this.exchange, &frame) {
                    ex.bytes += f.data_ref().map_or(0, |d| d.len() as u64);
                }
                if let (Some(ex), Poll::Ready(Some(Err(_)))) = (&mut this.exchange, &frame) {
                    ex.body_error = true;
                }
                frame
            }
            Kind::Spooled(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(ex), Some(data)) = (&mut this.exchange, frame.data_ref()) {
                        ex.bytes += data.len() as u64;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(ex) = &mut this.exchange {
                        ex.body_error = true;
                    }
                    Poll::Ready(Some(Err(BodyError::Spool(e))))
                }
                other => other.map(|f| f.map(|f| f.map_err(BodyError::Spool))),
            },
            Kind::Upstream(body) => {
                let frame = Pin::new(body).poll_frame(cx);
                upstream_frame(&mut this.exchange, frame.map_err(BodyError::Upstream))
            }
            Kind::H1(body) => {
                let frame = Pin::new(body).poll_frame(cx);
                upstream_frame(&mut this.exchange, frame.map_err(BodyError::H1))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Spooled(body) => body.is_end_stream(),
            Kind::Prefixed { first, rest } => first.is_none() && rest.is_end_stream(),
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Spooled(body) => body.size_hint(),
            Kind::Prefixed { first, rest } => {
                let ahead = first
                    .as_ref()
                    .and_then(Frame::data_ref)
                    .map_or(0, |d| d.len() as u64);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.size_hint().lower() + ahead);
                if let Some(upper) = rest.size_hint().upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
            Kind::Upstream(body) => body.size_hint(),
            Kind::H1(body) => body.size_hint(),
        }
    }
}

/// Counts an upstream body's frame into the exchange, and marks for the stall guard
/// whether the body handed out data or waited.
fn upstream_frame(
    exchange: &mut Option<Exchange>,
    frame: Poll<Option<Result<Frame<Bytes>, BodyError>>>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    match &frame {
        Poll::Ready(Some(Ok(f))) => {
            if let (Some(ex), Some(data)) = (exchange, f.data_ref()) {
                ex.bytes += data.len() as u64;
            }
            crate::stall::mark(crate::stall::Mark::Yielded);
        }
        Poll::Ready(Some(Err(_))) => {
            if let Some(ex) = exchange {
                ex.body_error = true;
            }
        }
        Poll::Ready(None) | Poll::Pending => crate::stall::mark(crate::stall::Mark::Waited),
    }
    frame
}
