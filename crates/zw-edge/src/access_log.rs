//! The JSON access log, written by its own thread.
//!
//! The request path formats one line and hands it over with a non-blocking `try_send`; a
//! full queue drops the line (counted in `zeitwork_access_log_dropped_total`) rather than
//! slowing requests down. The writer batches lines and flushes when the queue is empty.
//!
//! Under load the writer does not wait in `recv`: it drains the queue, writes, and sleeps
//! for [`PAUSE`]. A sender then finds no waiting receiver to wake, so a request costs no
//! futex call and the edge's core no thread switch per line (waking the writer for every
//! line halved the requests per CPU-second of a one-core edge). An idle writer waits in
//! `recv`, and the first line wakes it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug)]
pub struct AccessLog {
    /// `None` only while dropping.
    tx: Option<SyncSender<Vec<u8>>>,
    /// Closes when the writer has ended (in a mutex only to be `Sync`; used in `drop`).
    done: std::sync::Mutex<Receiver<()>>,
}

const QUEUE: usize = 16 * 1024;
/// How long a busy writer lets lines gather before it writes them.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

impl AccessLog {
    pub fn start(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let (ended, done) = sync_channel(0);
        std::thread::Builder::new()
            .name("zw-access-log".into())
            .spawn(move || {
                write_loop(rx, out);
                drop(ended);
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            done: std::sync::Mutex::new(done),
        })
    }

    /// Queues a line (JSON, without its newline); `false` when it had to be dropped.
    pub fn send(&self, line: Vec<u8>) -> bool {
        match self.tx.as_ref().map(|tx| tx.try_send(line)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }
}

impl Drop for AccessLog {
    /// The queued lines are written before the log goes: the writer sees the queue close
    /// within one pause, writes what is left, and ends. A writer stuck on its output (a
    /// stdout nobody reads) is not waited for beyond two seconds.
    fn drop(&mut self) {
        self.tx.take();
        if let Ok(done) = self.done.get_mut() {
            let _ = done.recv_timeout(std::time::Duration::from_secs(2));
        }
    }
}

fn write_loop(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
    let write = |w: &mut std::io::BufWriter<_>, line: Vec<u8>| {
        let _ = w.write_all(&line);
        let _ = w.write_all(b"\n");
    };
    loop {
        let mut lines = 0usize;
        let open = loop {
            match rx.try_recv() {
                Ok(line) => {
                    write(&mut w, line);
                    lines += 1;
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        let _ = w.flush();
        if !open {
            return;
        }
        if lines == 0 {
            // Idle: wait for the next line.
            match rx.recv() {
                Ok(line) => write(&mut w, line),
                Err(_) => return,
            }
        } else if lines < QUEUE / 4 {
            std::thread::sleep(PAUSE);
        }
    }
}
