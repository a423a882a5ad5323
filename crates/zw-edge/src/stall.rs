//! HTTP/2 streams whose client stops taking the response.
//!
//! Over HTTP/1 a client that does not read fills the socket, the write makes no progress,
//! and the write timeout ends the connection (and with it the upstream exchange). Over
//! HTTP/2 the socket stays writable — other streams and PINGs still flow — while a stream
//! whose flow-control window is zero holds its response body, and the upstream
//! connection under it, for as long as the client likes: one connection with a zero
//! window once held 250 upstream connections for 95 s.
//!
//! hyper runs every HTTP/2 stream as a task it hands to the server's executor, so the
//! executor here wraps each one ([`StallGuard`]). The response body marks, on the polling
//! thread, whether it last handed out data or waited for the upstream ([`mark`]). A
//! stream that handed out data and was then not asked for more — hyper is waiting for
//! the client's window — for the write timeout is dropped: hyper resets the stream, the
//! upstream body and its connection are released. A stream waiting on its upstream (a
//! slow backend, a server-sent event stream) is not a stall and is never cut here.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::Shared;

/// What the response body did during one poll of the stream task.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// Not inside a guarded stream task (HTTP/1, or nothing polled yet).
    Outside,
    /// Inside a guarded task; the body was not polled.
    Quiet,
    /// The body waited for its upstream, or ended.
    Waited,
    /// The body handed out a frame last.
    Yielded,
}

thread_local! {
    static MARK: Cell<Mark> = const { Cell::new(Mark::Outside) };
}

/// Called by the response body as it is polled; a no-op outside a guarded stream.
pub(crate) fn mark(m: Mark) {
    MARK.with(|c| {
        if c.get() != Mark::Outside {
            c.set(m);
        }
    });
}

/// The server's executor: spawns hyper's HTTP/2 stream tasks under a [`StallGuard`].
#[derive(Clone)]
pub(crate) struct Exec {
    pub(crate) shared: Arc<Shared>,
}

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(StallGuard {
            inner: fut,
            shared: self.shared.clone(),
            waiting_on_client: false,
            deadline: None,
        });
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct StallGuard<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        // the body handed out data and has not been asked for more since
        waiting_on_client: bool,
        // allocated the first time the stream waits on its client
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future<Output = ()>> Future for StallGuard<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let outer = MARK.with(|c| c.replace(Mark::Quiet));
        let polled = this.inner.poll(cx);
        let seen = MARK.with(|c| c.replace(outer));
        if polled.is_ready() {
            return Poll::Ready(());
        }
        let timeout = this.shared.settings.write_timeout;
        match seen {
            Mark::Yielded => {
                // fresh data went out: the client's patience starts now
                *this.waiting_on_client = true;
                let at = tokio::time::Instant::now() + timeout;
                match this.deadline {
                    Some(d) => d.as_mut().reset(at),
                    None => *this.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
                }
            }
            Mark::Waited => *this.waiting_on_client = false,
            Mark::Quiet | Mark::Outside => {}
        }
        if *this.waiting_on_client {
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    this.shared
                        .metrics
                        .http2_streams_stalled
                        .fetch_add(1, Relaxed);
                    tracing::debug!(?timeout, "HTTP/2 stream reset: its client took no data");
                    // dropping the task resets the stream and releases the upstream
                    return Poll::Ready(());
                }
            }
        }
        Poll::Pending
    }
}
