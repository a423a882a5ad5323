//! Zero-copy forwarding with splice(2): socket → pipe → socket inside the kernel, so the
//! bytes never visit user space. Linux only; [`pipes`] fails elsewhere (or when the kernel
//! refuses pipes) and the caller copies through a buffer instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// How much one splice call moves at most (the default pipe capacity).
const CHUNK: usize = 64 * 1024;

type Pipe = (OwnedFd, OwnedFd);

/// Empty pipes kept per thread: a short connection would otherwise spend more system
/// calls making and closing its two pipes than moving its bytes.
const KEEP: usize = 256;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Pipe>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A pipe for one direction: (read end, write end), non-blocking.
pub(crate) fn pipes() -> io::Result<Pipe> {
    if let Some(p) = SPARE.with(|s| s.borrow_mut().pop()) {
        return Ok(p);
    }
    nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Returns an empty pipe for reuse.
fn recycle(p: Pipe) {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(p);
        }
    });
}

/// Moves bytes from `from` to `to` until `from` ends, then half-closes `to`.
pub(crate) async fn copy(
    from: &TcpStream,
    to: &TcpStream,
    pipe: Pipe,
    last: &AtomicU64,
    start: Instant,
    bytes: &AtomicU64,
) {
    let (pr, pw) = pipe;
    // bytes spliced into the pipe but not out of it: such a pipe is not reused
    let mut stranded = false;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    'outer: loop {
        // socket → pipe
        let n = loop {
            if from.readable().await.is_err() {
                break 'outer;
            }
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pw.as_fd(), None, CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(0) => break 'outer,
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break 'outer,
            }
        };
        // pipe → socket, all of it
        let mut left = n;
        stranded = true;
        while left > 0 {
            if to.writable().await.is_err() {
                break 'outer;
            }
            match to.try_io(Interest::WRITABLE, || {
                splice(pr.as_fd(), None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => break 'outer,
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break 'outer,
            }
        }
        stranded = false;
        bytes.fetch_add(n as u64, Relaxed);
        last.store(start.elapsed().as_millis() as u64, Relaxed);
    }
    let _ = nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    if !stranded {
        recycle((pr, pw));
    }
}
