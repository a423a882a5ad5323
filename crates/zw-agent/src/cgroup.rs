//! CPU and memory limits per instance, through cgroup v2 or v1, whichever the host has.
//! Each instance gets a `zeitwork/ID` group; the instance's init joins it (by writing its
//! own pid to `cgroup.procs`) before it starts anything, so nothing escapes the limits.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// The unified hierarchy, mounted here.
    V2(PathBuf),
    /// Separate `memory` and `cpu` hierarchies.
    V1 { memory: PathBuf, cpu: PathBuf },
}

impl Cgroups {
    /// What the host offers, if this process may create groups there.
    pub fn detect(root: &Path) -> Option<Cgroups> {
        let found = if root.join("cgroup.controllers").exists() {
            Cgroups::V2(root.join("zeitwork"))
        } else if root.join("memory").is_dir() && root.join("cpu").is_dir() {
            Cgroups::V1 {
                memory: root.join("memory/zeitwork"),
                cpu: root.join("cpu/zeitwork"),
            }
        } else {
            return None;
        };
        // Creating our parent group is the test of whether we may.
        let ok = match &found {
            Cgroups::V2(p) => std::fs::create_dir_all(p).is_ok() && enable_v2(p).is_ok(),
            Cgroups::V1 { memory, cpu } => {
                std::fs::create_dir_all(memory).is_ok() && std::fs::create_dir_all(cpu).is_ok()
            }
        };
        ok.then_some(found)
    }

    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V2(_) => "cgroup v2",
            Cgroups::V1 { .. } => "cgroup v1",
        }
    }

    fn dirs(&self, id: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V2(p) => vec![p.join(id)],
            Cgroups::V1 { memory, cpu } => vec![memory.join(id), cpu.join(id)],
        }
    }

    /// Makes the instance's groups with these limits; returns the `cgroup.procs` files
    /// its init must join.
    pub fn create(
        &self,
        id: &str,
        memory_mb: u64,
        cpu_millis: u64,
    ) -> std::io::Result<Vec<PathBuf>> {
        let bytes = memory_mb.saturating_mul(1 << 20);
        // CFS: `cpu_millis` thousandths of a CPU per 100 ms period.
        let period = 100_000u64;
        let quota = cpu_millis.saturating_mul(period) / 1000;
        match self {
            Cgroups::V2(p) => {
                let dir = p.join(id);
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("memory.max"), bytes.to_string())?;
                std::fs::write(dir.join("cpu.max"), format!("{quota} {period}"))?;
                Ok(vec![dir.join("cgroup.procs")])
            }
            Cgroups::V1 { memory, cpu } => {
                let m = memory.join(id);
                let c = cpu.join(id);
                std::fs::create_dir_all(&m)?;
                std::fs::create_dir_all(&c)?;
                std::fs::write(m.join("memory.limit_in_bytes"), bytes.to_string())?;
                std::fs::write(c.join("cpu.cfs_period_us"), period.to_string())?;
                std::fs::write(c.join("cpu.cfs_quota_us"), quota.to_string())?;
                Ok(vec![m.join("cgroup.procs"), c.join("cgroup.procs")])
            }
        }
    }

    /// The instance's memory limit as the kernel holds it, in bytes.
    pub fn memory_limit(&self, id: &str) -> Option<u64> {
        let file = match self {
            Cgroups::V2(p) => p.join(id).join("memory.max"),
            Cgroups::V1 { memory, .. } => memory.join(id).join("memory.limit_in_bytes"),
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// Every process in the instance's groups (each pid once).
    pub fn procs(&self, id: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs(id)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs everything in the instance's groups, and waits (up to `within`) until they
    /// are empty. The group, not a pid or a process group, is the set to kill: a process
    /// that left the process group, or outlived the init that started it, is still in it.
    /// Uses `cgroup.kill` on v2 (Linux 5.14+, atomic against forks); elsewhere kills every
    /// pid of `cgroup.procs`, again and again until none is left. Returns the pids still
    /// there when `within` ran out (empty: the instance is gone).
    pub async fn kill_all(&self, id: &str, within: std::time::Duration) -> Vec<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let pids = self.procs(id);
            if pids.is_empty() || tokio::time::Instant::now() >= deadline {
                return pids;
            }
            let killed_by_group = match self {
                Cgroups::V2(p) => std::fs::write(p.join(id).join("cgroup.kill"), "1").is_ok(),
                Cgroups::V1 { .. } => false,
            };
            if !killed_by_group {
                for pid in &pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Removes the instance's groups once its processes are gone.
    pub fn remove(&self, id: &str) {
        for dir in self.dirs(id) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing the instance's cgroup failed");
                }
            }
        }
    }
}

/// In v2, a group's children get controllers only when the parent delegates them.
fn enable_v2(p: &Path) -> std::io::Result<()> {
    if let Some(parent) = p.parent() {
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu");
    }
    std::fs::write(p.join("cgroup.subtree_control"), "+memory +cpu")
}
