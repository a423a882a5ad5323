//! The client's request body on its way upstream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The client's request body, forwarded as it arrives, with a read deadline: a client that
/// sends part of a body and then nothing for `timeout` ends the request with a 408 (nginx's
/// `client_body_timeout`; Traefik bounds the whole read with `readTimeout`, 60 s), instead
/// of holding the upstream connection until the response timeout.
pub struct RequestBody {
    /// `None`: a request the edge makes itself, without a body (an error page's).
    inner: Option<Incoming>,
    timeout: Duration,
    /// Armed when the body goes quiet; allocated once, only for bodies that ever wait.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

/// Why the client's request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("{0}")]
    Client(hyper::Error),
    #[error("no request body bytes for {0:?}")]
    Stalled(Duration),
}

impl RequestBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        RequestBody {
            inner: Some(inner),
            timeout,
            deadline: None,
            armed: false,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            timeout: Duration::ZERO,
            deadline: None,
            armed: false,
        }
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
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
        self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |i| i.size_hint())
    }
}
