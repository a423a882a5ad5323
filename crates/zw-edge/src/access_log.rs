//! The JSON access log, written by its own thread.
//!
//! The request path formats one line and hands it over with a non-blocking `try_send`; a
//! full queue drops the line (counted in `zeitwork_access_log_dropped_total`) rather than
//! slowing requests down. The writer batches lines and flushes when the queue is empty.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
}

const QUEUE: usize = 16 * 1024;

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
        std::thread::Builder::new()
            .name("zw-access-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(AccessLog { tx })
    }

    /// Queues a line; `false` when it had to be dropped.
    pub fn send(&self, line: String) -> bool {
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn write_loop(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = w.write_all(line.as_bytes());
        let _ = w.write_all(b"\n");
        while let Ok(line) = rx.try_recv() {
            let _ = w.write_all(line.as_bytes());
            let _ = w.write_all(b"\n");
        }
        let _ = w.flush();
    }
}
