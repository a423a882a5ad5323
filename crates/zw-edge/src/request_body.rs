//! The client's request body on its way upstream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::spool::{Spool, SpoolError, SpooledBody};

/// The client's request body, forwarded as it arrives, with a read deadline: a client that
/// sends part of a body and then nothing for `timeout` ends the request with a 408 (nginx's
/// `client_body_timeout`; Traefik bounds the whole read with `readTimeout`, 60 s), instead
/// of holding the upstream connection until the response timeout.
pub struct RequestBody {
    inner: Source,
    timeout: Duration,
    /// Armed when the body goes quiet; allocated once, only for bodies that ever wait.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

enum Source {
    /// A request the edge makes itself, without a body (an error page's).
    None,
    Client(Incoming),
    /// Read whole by a `buffering` middleware.
    Spooled(SpooledBody),
    /// A body the edge sends from memory (a `forwardAuth` check's copy of the request's).
    Full(Option<Bytes>),
}

/// Why the client's request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("{0}")]
    Client(hyper::Error),
    #[error("no request body bytes for {0:?}")]
    Stalled(Duration),
    /// A buffered body's temporary file could not be read back.
    #[error("reading back the buffered request body: {0}")]
    Spool(std::io::Error),
}

impl RequestBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        RequestBody {
            inner: Source::Client(inner),
            timeout,
            deadline: None,
            armed: false,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        RequestBody {
            inner: Source::None,
            timeout: Duration::ZERO,
            deadline: None,
            armed: false,
        }
    }

    /// `bytes`, from memory.
    pub fn full(bytes: Bytes) -> Self {
        RequestBody {
            inner: Source::Full(Some(bytes).filter(|b| !b.is_empty())),
            timeout: Duration::ZERO,
            deadline: None,
            armed: false,
        }
    }

    /// The whole body when it is held in memory (read by [`RequestBody::spool`] under
    /// its memory size), in one piece.
    pub fn held(&self) -> Option<Bytes> {
        match &self.inner {
            Source::None => Some(Bytes::new()),
            Source::Full(b) => Some(b.clone().unwrap_or_default()),
            Source::Spooled(b) => b.in_memory(),
            Source::Client(_) => None,
        }
    }

    /// Reads the client's body whole (within the read deadline) and sends that from now
    /// on. A body read before stays as it is.
    pub async fn spool(
        &mut self,
        limits: zw_config::BodyLimits,
    ) -> Result<u64, SpoolError<RequestBodyError>> {
        if !matches!(self.inner, Source::Client(_)) {
            return Ok(self.size_hint().exact().unwrap_or(0));
        }
        let limits = crate::spool::Limits {
            memory: limits.memory,
            max: limits.max,
        };
        let spool = Spool::read(&mut *self, limits).await?;
        let len = spool.len();
        self.inner = Source::Spooled(spool.into_body());
        Ok(len)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        let inner = match &mut this.inner {
            Source::None => return Poll::Ready(None),
            Source::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Source::Spooled(b) => {
                return Pin::new(b)
                    .poll_frame(cx)
                    .map(|f| f.map(|f| f.map_err(RequestBodyError::Spool)));
            }
            Source::Client(inner) => inner,
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(RequestBodyError::Client)))
            }
            Poll::Pending => {
                let at = tokio::time::Instant::now() + this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if !this.armed {
                    deadline.as_mut().reset(at);
                    this.armed = true;
                }
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(RequestBodyError::Stalled(this.timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::None => true,
            Source::Full(b) => b.is_none(),
            Source::Client(i) => i.is_end_stream(),
            Source::Spooled(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::None => SizeHint::with_exact(0),
            Source::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Client(i) => i.size_hint(),
            Source::Spooled(b) => b.size_hint(),
        }
    }
}
