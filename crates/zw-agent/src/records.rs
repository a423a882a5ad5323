//! The node's own record of each instance, kept in `STATE_DIR/instances/ID.json` and
//! written before every side effect (a process started, a port taken), so that an agent
//! that restarts finds what is still running and adopts it instead of starting a
//! duplicate. Writes are atomic: temp file, fsync, rename, directory fsync.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zw_proto::agent::Assignment;

/// A record file larger than this is not ours.
const MAX_RECORD_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub assignment: Assignment,
    /// The loopback port the instance listens on (`PORT`).
    pub port: u16,
    /// The process the driver started (for a VM: its monitor), once started.
    pub pid: Option<u32>,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22), so a reused
    /// pid is never mistaken for the instance.
    pub start_ticks: Option<u64>,
    /// A driver's handle for stopping it (a VM's monitor socket).
    #[serde(default)]
    pub control: Option<std::path::PathBuf>,
    /// Where it answers, when not on the loopback port (a VM on its own network).
    #[serde(default)]
    pub target: Option<std::net::SocketAddr>,
}

impl Record {
    pub fn id(&self) -> &str {
        &self.assignment.id
    }
}

#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn open(state_dir: &Path) -> std::io::Result<Records> {
        let dir = state_dir.join("instances");
        std::fs::create_dir_all(&dir)?;
        Ok(Records { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn save(&self, r: &Record) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
        // records hold the instance's environment, which may carry its secrets
        zw_proto::fsutil::write_atomic(&self.path(r.id()), &[&body], 0o600)
    }

    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable record; unreadable files are reported and skipped (never deleted:
    /// an operator may want to look at them).
    pub fn load_all(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let read = std::fs::metadata(&path).and_then(|m| {
                if m.len() > MAX_RECORD_BYTES {
                    Err(std::io::Error::other("larger than 1 MiB"))
                } else {
                    std::fs::read(&path)
                }
            });
            match read
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable instance record skipped")
                }
            }
        }
        out.sort_by(|a, b| a.id().cmp(b.id()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zw_proto::api::{HealthCheckSpec, Runtime};

    #[test]
    fn records_survive_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        let r = Record {
            assignment: Assignment {
                id: "inst-1".into(),
                deployment: "web".into(),
                release: 1,
                runtime: Runtime::Process,
                command: vec!["/bin/true".into()],
                env: Default::default(),
                rootfs: None,
                port: 8080,
                health_check: HealthCheckSpec::default(),
            },
            port: 31000,
            pid: Some(42),
            start_ticks: Some(7),
            control: None,
            target: None,
        };
        records.save(&r).unwrap();
        std::fs::write(dir.path().join("instances/bad.json"), b"{not json").unwrap();
        assert_eq!(records.load_all(), vec![r.clone()]);
        records.remove("inst-1").unwrap();
        records.remove("inst-1").unwrap();
        assert!(records.load_all().is_empty());
    }
}
