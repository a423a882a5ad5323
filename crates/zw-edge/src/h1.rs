//! HTTP/1.1 to upstreams, on the request's own task.
//!
//! hyper's client runs every connection as a task of its own and hands it each request
//! over a channel: a proxied request then costs a channel send, two task wake-ups and a
//! timer beyond the work itself. Here, as in Pingora
//! (`pingora-core/src/protocols/http/v1/client.rs`), the request's task writes the
//! request and reads the response itself:
//!
//! - the request head is serialized into a buffer the connection keeps, and written
//!   together with the body bytes that are already there;
//! - the response head is parsed with `httparse` out of the connection's read buffer;
//!   what follows it in the buffer is the first body bytes, handed on without a copy;
//! - the connection goes back to the pool only when the response body has been read to
//!   its end, nothing follows it, and both sides allow keep-alive.
//!
//! The framing itself (RFC 9112 §6) is `zw_h1`'s. A request is sent again on a reused
//! connection that closed before answering only when it is replayable, as Go's
//! `net/http` decides (`transport.go`, `shouldRetryRequest` and `Request.isReplayable`).
//!
//! What the edge writes is its own framing, never the client's: `Transfer-Encoding` and
//! `Content-Length` from the client are dropped and replaced by the length of the body
//! the edge actually has, and a body that runs past its length is cut and the connection
//! closed, so the upstream can never read part of a body as a second request.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zw_h1::{keeps_alive, response_framing, write_head, Framing, Head, Out, Step, MAX_HEAD};

use crate::pool::{Backend, Stream};
use crate::request_body::{RequestBody, RequestBodyError};

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A write buffer that grew past this (a large request body frame) is not kept idle.
const KEEP_WBUF: usize = 64 * 1024;

/// Why an HTTP/1.1 exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the connection closed before a complete response head")]
    Closed,
    #[error(transparent)]
    Framing(#[from] zw_h1::Error),
    #[error("the connection closed before the end of the response body")]
    Truncated,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedSwitch,
    #[error("the request body was {0} than its length")]
    BodyLength(&'static str),
}

/// An HTTP/1.1 connection to an upstream, idle between exchanges.
pub struct H1Conn {
    io: Stream,
    /// Bytes read and not yet handed on.
    rbuf: BytesMut,
    /// The request head and body bytes on their way out; kept for the next request.
    wbuf: Vec<u8>,
    /// Whether it served an exchange before (a closed reused connection may be retried).
    pub(crate) reused: bool,
}

impl H1Conn {
    pub(crate) fn new(io: Stream) -> H1Conn {
        H1Conn {
            io,
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: Vec::with_capacity(1024),
            reused: false,
        }
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it
    /// nor sent anything unasked. One non-blocking read; no task watches idle connections.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut one = [0u8; 1];
        let mut buf = ReadBuf::new(&mut one);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

/// Why one exchange failed, and whether the request may be sent again.
pub(crate) enum SendError {
    /// The request may go again on another connection: nothing of it reached the socket,
    /// or a reused connection closed before any answer and the request is replayable.
    Again(Box<Request<RequestBody>>, H1Error),
    /// The upstream's fault; the request is spent.
    Upstream(H1Error),
    /// The client's request body broke while it was forwarded.
    Client(RequestBodyError),
    /// No response head within the timeout after the request was written.
    Timeout,
}

/// One request over `conn`: the response head, and a body that reads the rest from the
/// connection (and gives it back to its pool when done). `timeout` bounds the wait for
/// the response head from the last byte written (Traefik's `responseHeaderTimeout`).
pub(crate) async fn send(
    mut conn: H1Conn,
    req: Request<RequestBody>,
    timeout: Duration,
) -> Result<Response<H1Body>, SendError> {
    let (parts, mut body) = req.into_parts();
    let out = if body.is_end_stream() {
        Out::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Out::Length(n),
            None => Out::Chunked,
        }
    };
    write_head(&mut conn.wbuf, &parts, out);

    let mut x = Exchange {
        conn: &mut conn,
        body: &mut body,
        out,
        wpos: 0,
        sent: 0,
        body_done: out == Out::None,
        write_done: false,
        write_err: None,
        written: false,
        body_touched: false,
        got_bytes: false,
        body_moved: false,
    };
    let mut deadline = pin!(tokio::time::sleep(timeout));
    let head = poll_fn(|cx| x.poll_head(cx, deadline.as_mut(), timeout)).await;
    let (written, body_touched, got_bytes, body_done) =
        (x.written, x.body_touched, x.got_bytes, x.body_done);
    let head = match head {
        Ok(head) => head,
        Err(Failure::Client(e)) => return Err(SendError::Client(e)),
        Err(Failure::Timeout) => return Err(SendError::Timeout),
        Err(Failure::Upstream(e)) => {
            let replayable =
                !body_touched && (!written || (conn.reused && !got_bytes && replayable(&parts)));
            return Err(if replayable {
                SendError::Again(Box::new(Request::from_parts(parts, body)), e)
            } else {
                SendError::Upstream(e)
            });
        }
    };
    if conn.wbuf.capacity() > KEEP_WBUF {
        conn.wbuf = Vec::with_capacity(1024);
    }
    let Head {
        status,
        version,
        mut headers,
    } = head;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(SendError::Upstream(H1Error::UnaskedSwitch));
    }
    let framing = response_framing(&parts.method, status, version, &mut headers)
        .map_err(|e| SendError::Upstream(e.into()))?;
    // A response that came before the request body was all written leaves the
    // connection mid-request: it is not reused.
    let keep_alive = body_done && keeps_alive(version, &headers) && framing != Framing::Close;
    let mut resp = Response::new(H1Body {
        conn: Some(conn),
        framing,
        keep_alive,
        pool: None,
    });
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Go's `Request.isReplayable`: idempotent by method, or said to be by an
/// `Idempotency-Key`, and without a body.
fn replayable(parts: &http::request::Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || parts.headers.contains_key("idempotency-key")
        || parts.headers.contains_key("x-idempotency-key")
}

enum Failure {
    Upstream(H1Error),
    Client(RequestBodyError),
    Timeout,
}

/// The request going out while the response head comes in: a server may answer (and
/// stop reading) before the body is all sent.
struct Exchange<'a> {
    conn: &'a mut H1Conn,
    body: &'a mut RequestBody,
    out: Out,
    wpos: usize,
    /// Body bytes encoded so far.
    sent: u64,
    body_done: bool,
    write_done: bool,
    write_err: Option<io::Error>,
    /// Whether any byte reached the socket.
    written: bool,
    /// Whether a frame was taken from the body (it cannot be sent again).
    body_touched: bool,
    /// Whether any byte of an answer arrived.
    got_bytes: bool,
    /// A body frame was taken since the deadline was last set.
    body_moved: bool,
}

impl Exchange<'_> {
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        mut deadline: Pin<&mut tokio::time::Sleep>,
        timeout: Duration,
    ) -> Poll<Result<Head, Failure>> {
        loop {
            let mut progress = false;
            if !self.write_done {
                match self.poll_write(cx) {
                    Poll::Ready(Ok(())) => {
                        progress = true;
                        // The wait for the head is measured from the last body bytes taken
                        // (a request without a body: from the start, one clock read).
                        if std::mem::take(&mut self.body_moved) {
                            deadline
                                .as_mut()
                                .reset(tokio::time::Instant::now() + timeout);
                        }
                    }
                    Poll::Ready(Err(f)) => return Poll::Ready(Err(f)),
                    Poll::Pending => {}
                }
            }
            match zw_h1::parse_head(&mut self.conn.rbuf) {
                Ok(Some(head))
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    // 100 Continue, 103 Early Hints: the final answer follows.
                    progress = true;
                }
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) if self.conn.rbuf.len() >= MAX_HEAD => {
                    return Poll::Ready(Err(Failure::Upstream(H1Error::Framing(
                        zw_h1::Error::HeadTooLarge,
                    ))))
                }
                Ok(None) => match self.conn.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        let e = self.write_err.take().map_or(H1Error::Closed, H1Error::Io);
                        return Poll::Ready(Err(Failure::Upstream(e)));
                    }
                    Poll::Ready(Ok(_)) => {
                        self.got_bytes = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Upstream(e.into()))),
                    Poll::Pending => {}
                },
                Err(e) => return Poll::Ready(Err(Failure::Upstream(e.into()))),
            }
            if !progress {
                if self.write_done && deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Failure::Timeout));
                }
                return Poll::Pending;
            }
        }
    }

    /// Moves the request along: writes what is buffered, else encodes the next body frame.
    /// `Ready(Ok)` is progress; a write error ends the writing but not the exchange (the
    /// upstream may have answered already).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        // Body bytes that are already here go out with the head.
        if !self.written && !self.body_done && !self.body_touched {
            if let Poll::Ready(r) = self.poll_body(cx) {
                return Poll::Ready(r);
            }
        }
        let conn = &mut *self.conn;
        if self.wpos < conn.wbuf.len() {
            return match Pin::new(&mut conn.io).poll_write(cx, &conn.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => {
                    self.write_err = Some(io::ErrorKind::WriteZero.into());
                    self.write_done = true;
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    self.written = true;
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => {
                    self.write_err = Some(e);
                    self.write_done = true;
                    Poll::Ready(Ok(()))
                }
                Poll::Pending => Poll::Pending,
            };
        }
        if !self.body_done {
            return self.poll_body(cx);
        }
        match Pin::new(&mut conn.io).poll_flush(cx) {
            Poll::Ready(r) => {
                if let Err(e) = r {
                    self.write_err = Some(e);
                }
                self.write_done = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Takes the next body frame into the write buffer, framed.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        let frame = match Pin::new(&mut *self.body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Failure::Client(e))),
            Poll::Ready(Some(Ok(f))) => Some(f),
            Poll::Ready(None) => None,
        };
        self.body_touched = true;
        self.body_moved = true;
        let buf = &mut self.conn.wbuf;
        if self.wpos == buf.len() {
            buf.clear();
            self.wpos = 0;
        }
        match frame {
            Some(frame) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    let n = data.len() as u64;
                    match self.out {
                        Out::Length(len) => {
                            if self.sent + n > len {
                                return Poll::Ready(Err(Failure::Upstream(H1Error::BodyLength(
                                    "longer",
                                ))));
                            }
                            buf.extend_from_slice(&data);
                        }
                        Out::Chunked => {
                            buf.extend_from_slice(zw_h1::hex(n).as_bytes());
                            buf.extend_from_slice(b"\r\n");
                            buf.extend_from_slice(&data);
                            buf.extend_from_slice(b"\r\n");
                        }
                        Out::None => {
                            return Poll::Ready(Err(Failure::Upstream(H1Error::BodyLength(
                                "longer",
                            ))))
                        }
                    }
                    self.sent += n;
                }
                Err(frame) => {
                    // Trailers end a chunked body; with a length there is nowhere to put
                    // them, and they are left out (as hyper does).
                    if let (Out::Chunked, Ok(trailers)) = (self.out, frame.into_trailers()) {
                        buf.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            buf.extend_from_slice(name.as_str().as_bytes());
                            buf.extend_from_slice(b": ");
                            buf.extend_from_slice(value.as_bytes());
                            buf.extend_from_slice(b"\r\n");
                        }
                        buf.extend_from_slice(b"\r\n");
                        self.out = Out::None;
                        self.body_done = true;
                    }
                }
            },
            None => {
                match self.out {
                    Out::Length(len) if self.sent != len => {
                        return Poll::Ready(Err(Failure::Upstream(H1Error::BodyLength("shorter"))))
                    }
                    Out::Chunked => buf.extend_from_slice(b"0\r\n\r\n"),
                    _ => {}
                }
                self.body_done = true;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The response body, read from the connection as the client takes it.
pub struct H1Body {
    conn: Option<H1Conn>,
    framing: Framing,
    keep_alive: bool,
    /// Where the connection goes when the body has ended cleanly.
    pool: Option<Arc<Backend>>,
}

impl H1Body {
    /// Gives the connection back to `backend`'s pool once the body has ended.
    pub(crate) fn pooled(mut self, backend: Arc<Backend>) -> H1Body {
        self.pool = Some(backend);
        self
    }

    /// The connection, for another exchange, once the body has been read to its end
    /// (for callers that keep connections themselves).
    pub(crate) fn take_reusable(&mut self) -> Option<H1Conn> {
        let reusable = self.framing == Framing::Done
            && self.keep_alive
            && self.conn.as_ref().is_some_and(|c| c.rbuf.is_empty());
        let mut conn = if reusable { self.conn.take() } else { None }?;
        conn.reused = true;
        Some(conn)
    }

    fn finish(&mut self) {
        if let Some(pool) = self.pool.take() {
            if let Some(conn) = self.take_reusable() {
                pool.checkin(conn);
            }
        }
        self.conn = None;
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.conn = None;
        self.framing = Framing::Done;
        self.keep_alive = false;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let n = (*left).min(conn.rbuf.len() as u64) as usize;
                        let data = conn.rbuf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(chunk) => match chunk.step(&mut conn.rbuf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Trailers(t)) => {
                        this.framing = Framing::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Step::End) => {
                        this.framing = Framing::Done;
                        continue;
                    }
                    Ok(Step::More) => {}
                    Err(e) => return this.fail(e.into()),
                },
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e.into()),
                Poll::Ready(Ok(0)) if this.framing == Framing::Close => {
                    this.keep_alive = false;
                    this.framing = Framing::Done;
                }
                Poll::Ready(Ok(0)) => return this.fail(H1Error::Truncated),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // A body that ended (or was empty from the start: HEAD, 204, 304) but was not
        // polled to its end still gives its connection back.
        if self.framing == Framing::Done {
            self.finish();
        }
    }
}
