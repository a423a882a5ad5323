//! The `process` driver: the app as a child process in its own process group, with `PORT`
//! and the deployment's environment (nothing inherited from the agent), output appended
//! to a log file, stopped with SIGTERM then SIGKILL.
//!
//! When the agent runs as root it isolates the instance: `zeitwork-init` ([`crate::init`])
//! is started in the app's place; it joins the instance's cgroups, unshares the
//! mount, PID, UTS and IPC namespaces, and becomes PID 1 there — `pivot_root` into the
//! image's root filesystem if it has one, signals forwarded, orphans reaped — before it
//! starts the app.

use std::path::PathBuf;
use std::process::Stdio;

use zw_proto::api::{DriverStatus, RootFs, Runtime};

use super::{BoxFuture, Driver, Launch, Running};
use crate::cgroup::Cgroups;

/// The `PATH` an instance gets.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
pub struct ProcessDriver {
    /// `zeitwork-init`, for isolated instances; `None` runs apps without isolation.
    pub init: Option<PathBuf>,
    pub cgroups: Option<Cgroups>,
    /// Per-instance limits, applied through `cgroups`.
    pub memory_limit_mb: u64,
    pub cpu_limit_millis: u64,
}

impl ProcessDriver {
    fn isolation(&self) -> String {
        match (&self.init, &self.cgroups) {
            (None, _) => "no isolation (the agent is not root)".into(),
            (Some(_), None) => "namespaces; no usable cgroup hierarchy for limits".into(),
            (Some(_), Some(c)) => format!("namespaces, {} limits", c.version()),
        }
    }

    async fn launch(&self, launch: &Launch) -> Result<Running, super::LaunchError> {
        let r = &launch.record;
        let a = &r.assignment;
        let env = super::instance_env(a, r.port);
        let command = super::expand_command(&a.command, &env);
        let (program, args) = command.split_first().ok_or("the image has no command")?;
        let (log, log_err) = super::open_log(&launch.log_file)?;
        let rootfs = match &a.rootfs {
            None => None,
            Some(RootFs::Dir(dir)) => Some(PathBuf::from(dir)),
            Some(RootFs::Oci(layout)) => Some(
                crate::oci::unpacked(std::path::Path::new(layout), &launch.work_dir)
                    .await
                    .map_err(|source| crate::Error::Oci {
                        layout: layout.clone(),
                        source,
                    })
                    // the same layout fails the same way again
                    .map_err(|e| super::LaunchError::permanent(e.to_string()))?,
            ),
        };
        let mut cmd = match &self.init {
            Some(init) => {
                let mut c = tokio::process::Command::new(init);
                // the name the init answers to: `zeitwork` itself serves as the init when
                // no `zeitwork-init` was installed beside it
                c.arg0("zeitwork-init");
                c.arg("--hostname").arg(&a.id);
                if let Some(root) = &rootfs {
                    c.arg("--rootfs").arg(root);
                }
                if let Some(cg) = &self.cgroups {
                    for procs in cg
                        .create(&a.id, self.memory_limit_mb, self.cpu_limit_millis)
                        .map_err(|source| crate::Error::Cgroup {
                            id: a.id.clone(),
                            source,
                        })?
                    {
                        c.arg("--cgroup-procs").arg(procs);
                    }
                }
                c.arg("--").arg(program).args(args);
                c
            }
            None => {
                if rootfs.is_some() {
                    return Err(super::LaunchError::permanent(
                        "images with a root filesystem need the agent to run as root (for namespaces and pivot_root)",
                    ));
                }
                let mut c = tokio::process::Command::new(program);
                c.args(args);
                c
            }
        };
        cmd.env_clear()
            .env("PATH", PATH)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .current_dir(if rootfs.is_some() {
                "/"
            } else {
                launch.work_dir.to_str().unwrap_or("/")
            })
            // Its own group: stopping it reaches its children; Ctrl-C at the agent's
            // terminal does not reach it.
            .process_group(0)
            // It must outlive an agent restart: that is what adoption is for.
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => super::LaunchError::permanent(format!(
                "`{program}` not found on the node (PATH={PATH}, working directory: the instance's own): give its absolute path, or install it there"
            )),
            std::io::ErrorKind::PermissionDenied => super::LaunchError::permanent(format!(
                "`{program}` is not executable on the node: `chmod +x` it, or run it through its interpreter"
            )),
            _ => super::LaunchError::from(format!("starting `{program}`: {e}")),
        })?;
        Ok(Running::owned(child)?)
    }
}

impl Driver for ProcessDriver {
    fn status(&self) -> DriverStatus {
        DriverStatus {
            runtime: Runtime::Process,
            available: true,
            detail: self.isolation(),
        }
    }

    fn start<'a>(
        &'a self,
        launch: &'a Launch,
    ) -> BoxFuture<'a, Result<Running, super::LaunchError>> {
        Box::pin(self.launch(launch))
    }
}
