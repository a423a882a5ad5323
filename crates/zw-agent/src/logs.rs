//! Instance logs, read for the operator (`zeitwork logs` from anywhere).
//!
//! An instance writes its output straight to `STATE_DIR/logs/ID.log` (no pipe through the
//! agent, so an instance outlives an agent restart). The file has no times, so the agent
//! keeps a clock beside it: every quarter second it notes how far each log has grown, and
//! a line's time is when its last byte was first seen. That is a quarter second coarse,
//! which is enough to merge the lines of several nodes in order.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use zw_proto::agent::{LogChunk, LogCursor, LogLine};

/// At most this much of one log per request (the control message is 4 MiB at most).
pub const MAX_CHUNK: u64 = 256 << 10;
/// At most this much for all the instances of one request.
pub const MAX_ANSWER: u64 = 2 << 20;
/// Marks kept per log; past it, every other one is dropped (older times get coarser).
const MAX_MARKS: usize = 4096;
/// Lines a `tail` asks for at most.
const MAX_TAIL: u32 = 10_000;

/// Per instance: (size the log had reached, when it was seen so), growing.
#[derive(Debug, Default)]
pub struct LogClock {
    marks: Mutex<HashMap<String, Vec<(u64, i64)>>>,
}

impl LogClock {
    fn marks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(u64, i64)>>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `id`'s log was `size` bytes long at `now`.
    pub fn observe(&self, id: &str, size: u64, now: i64) {
        let mut all = self.marks();
        let marks = all.entry(id.to_string()).or_default();
        match marks.last() {
            Some(&(s, _)) if s >= size => {
                if size < s {
                    // truncated: a new file, new marks
                    marks.clear();
                    marks.push((size, now));
                }
            }
            _ => marks.push((size, now)),
        }
        if marks.len() > MAX_MARKS {
            let mut i = 0;
            marks.retain(|_| {
                i += 1;
                i % 2 == 0
            });
        }
    }

    /// Forgets the logs not in `ids`.
    pub fn keep(&self, ids: &[String]) {
        self.marks().retain(|id, _| ids.contains(id));
    }

    /// When the byte before `end` of `id`'s log was first seen (now, if not yet).
    pub fn time_of(&self, id: &str, end: u64, now: i64) -> i64 {
        let all = self.marks();
        let Some(marks) = all.get(id) else { return now };
        let i = marks.partition_point(|&(size, _)| size < end);
        marks.get(i).map_or(now, |&(_, t)| t)
    }
}

/// Reads one instance's log as `cursor` asks, at most `budget` bytes.
pub fn read(path: &Path, cursor: &LogCursor, clock: &LogClock, budget: u64) -> LogChunk {
    let now = zw_proto::time::unix_millis();
    let mut chunk = LogChunk {
        instance: cursor.instance.clone(),
        next: cursor.from.unwrap_or(0),
        lines: Vec::new(),
        missing: false,
    };
    let Ok(mut file) = std::fs::File::open(path) else {
        chunk.missing = true;
        return chunk;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    clock.observe(&cursor.instance, len, now);
    let cap = budget.min(MAX_CHUNK);
    let start = match cursor.from {
        // a log shorter than where we were is a new one
        Some(from) if from <= len => from,
        Some(_) => 0,
        None => len.saturating_sub(cap),
    };
    if file.seek(SeekFrom::Start(start)).is_err() {
        return chunk;
    }
    let mut buf = Vec::new();
    if file.take(cap).read_to_end(&mut buf).is_err() {
        return chunk;
    }
    // Whole lines only, unless one line alone fills the chunk.
    let used = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if buf.len() as u64 >= cap => buf.len(),
        None => 0,
    };
    let mut lines: Vec<(u64, &[u8])> = Vec::new();
    let mut offset = start;
    let body = buf.get(..used).unwrap_or_default();
    for line in body.split_inclusive(|&b| b == b'\n') {
        offset += line.len() as u64;
        lines.push((offset, line));
    }
    // A tail starts at a line's beginning: drop the first (partial) line unless the
    // read began at the file's start.
    if cursor.from.is_none() {
        if start > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        let tail = cursor.tail.min(MAX_TAIL) as usize;
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    chunk.lines = lines
        .into_iter()
        .map(|(end, line)| LogLine {
            at: clock.time_of(&cursor.instance, end, now),
            text: String::from_utf8_lossy(line)
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        })
        .collect();
    chunk.next = start + used as u64;
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(from: Option<u64>, tail: u32) -> LogCursor {
        LogCursor {
            instance: "i".into(),
            from,
            tail,
        }
    }

    #[test]
    fn lines_get_the_time_they_were_first_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.log");
        let clock = LogClock::default();
        std::fs::write(&path, "one\ntwo\n").unwrap();
        clock.observe("i", 8, 1000);
        std::fs::write(&path, "one\ntwo\nthree\npart").unwrap();
        clock.observe("i", 18, 2000);
        let c = read(&path, &cursor(None, 10), &clock, MAX_CHUNK);
        let got: Vec<(&str, i64)> = c.lines.iter().map(|l| (l.text.as_str(), l.at)).collect();
        assert_eq!(got, [("one", 1000), ("two", 1000), ("three", 2000)]);
        assert_eq!(c.next, 14, "the partial line waits for its end");
        // Follow on from there: nothing new until the line ends.
        let c2 = read(&path, &cursor(Some(c.next), 0), &clock, MAX_CHUNK);
        assert!(c2.lines.is_empty());
        assert_eq!(c2.next, 14);
        std::fs::write(&path, "one\ntwo\nthree\npart four\n").unwrap();
        let c3 = read(&path, &cursor(Some(14), 0), &clock, MAX_CHUNK);
        assert_eq!(c3.lines.len(), 1);
        assert_eq!(c3.lines[0].text, "part four");
        // A tail of one.
        let t = read(&path, &cursor(None, 1), &clock, MAX_CHUNK);
        assert_eq!(t.lines.len(), 1);
        assert_eq!(t.lines[0].text, "part four");
        // Gone: missing.
        let m = read(
            &dir.path().join("nope.log"),
            &cursor(None, 1),
            &clock,
            MAX_CHUNK,
        );
        assert!(m.missing);
    }

    #[test]
    fn a_tail_of_a_large_log_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.log");
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let clock = LogClock::default();
        let c = read(&path, &cursor(None, 1000), &clock, 35);
        assert!(c.lines.iter().all(|l| l.text.starts_with("line ")), "{c:?}");
        assert_eq!(c.lines.last().unwrap().text, "line 099");
        assert_eq!(c.next, text.len() as u64);
    }

    #[test]
    fn marks_stay_bounded() {
        let clock = LogClock::default();
        for i in 0..10_000u64 {
            clock.observe("i", i + 1, i as i64);
        }
        assert!(clock.marks().get("i").unwrap().len() <= MAX_MARKS);
        assert!(clock.time_of("i", 9_999, 0) >= 9_000);
    }
}
