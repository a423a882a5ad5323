//! Runtime drivers: how an instance is started, watched, adopted after an agent restart,
//! and stopped. One trait; the supervisor does not know which driver it talks to.

pub mod firecracker;
pub mod process;
pub mod qemu;
pub mod vm;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use zw_proto::api::{DriverStatus, Runtime};

use crate::records::Record;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a driver needs besides the record.
#[derive(Debug, Clone)]
pub struct Launch {
    pub record: Record,
    /// Where the instance's output goes (appended).
    pub log_file: PathBuf,
    /// The instance's private working space on the node.
    pub work_dir: PathBuf,
}

/// Why an instance could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LaunchError {
    pub message: String,
    /// Waiting will not help (the executable is missing, the image is unusable): the
    /// agent still retries, but `deploy` stops waiting and says why.
    pub permanent: bool,
}

impl LaunchError {
    pub fn permanent(message: impl Into<String>) -> LaunchError {
        LaunchError {
            message: message.into(),
            permanent: true,
        }
    }
}

impl From<String> for LaunchError {
    fn from(message: String) -> LaunchError {
        LaunchError {
            message,
            permanent: false,
        }
    }
}

impl From<&str> for LaunchError {
    fn from(message: &str) -> LaunchError {
        LaunchError::from(message.to_string())
    }
}

/// The instance's log file (appended), twice: for its stdout and its stderr.
pub fn open_log(path: &std::path::Path) -> Result<(std::fs::File, std::fs::File), crate::Error> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(crate::Error::file(path))?;
    let again = log.try_clone().map_err(crate::Error::file(path))?;
    Ok((log, again))
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit(pub String);

/// A started instance: its process, owned (a child of this agent) or adopted (found
/// running after a restart).
pub struct Running {
    pub pid: u32,
    pub start_ticks: Option<u64>,
    child: Option<tokio::process::Child>,
    /// A driver's own state for stopping (e.g. a VM's monitor socket).
    pub control: Option<PathBuf>,
    /// Where it answers, when not on its loopback port (a VM on its own network).
    pub target: Option<std::net::SocketAddr>,
}

impl Running {
    pub fn owned(child: tokio::process::Child) -> Result<Running, crate::Error> {
        let pid = child.id().ok_or(crate::Error::ExitedAtStart)?;
        Ok(Running {
            pid,
            start_ticks: start_ticks(pid),
            child: Some(child),
            control: None,
            target: None,
        })
    }

    /// A process found running that this agent did not start (it cannot `wait` for it).
    pub fn adopted(pid: u32, start_ticks: Option<u64>) -> Running {
        Running {
            pid,
            start_ticks,
            child: None,
            control: None,
            target: None,
        }
    }

    /// Resolves when the process has exited, with how.
    pub async fn wait(&mut self) -> Exit {
        match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => Exit(describe(status)),
                Err(e) => Exit(format!("waiting for it failed: {e}")),
            },
            None => {
                // Not our child: no exit status, only "gone". Polled; adoption is rare.
                while alive(self.pid, self.start_ticks) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Exit("exited (adopted process; status unknown)".into())
            }
        }
    }

    pub fn is_alive(&self) -> bool {
        alive(self.pid, self.start_ticks)
    }

    /// Signals the instance's whole process group.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pgid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(pgid, sig);
    }

    /// SIGTERM to the group, then SIGKILL once `grace` has passed.
    pub async fn terminate(&mut self, grace: Duration) -> Exit {
        use nix::sys::signal::Signal;
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    ?grace,
                    "instance ignored SIGTERM; killing it"
                );
                self.signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
            Ok(sig) => format!("killed by {sig}"),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => "exited".into(),
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is running and is the same process as when it was recorded.
pub fn alive(pid: u32, ticks: Option<u64>) -> bool {
    match (start_ticks(pid), ticks) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// A runtime driver.
pub trait Driver: Send + Sync {
    /// Which runtime it is, whether it works on this node, and why not.
    fn status(&self) -> DriverStatus;

    fn runtime(&self) -> Runtime {
        self.status().runtime
    }

    /// Starts the instance.
    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Running, LaunchError>>;

    /// The instance of `record` if it still runs.
    fn adopt(&self, record: &Record) -> Option<Running> {
        let pid = record.pid?;
        alive(pid, record.start_ticks).then(|| Running {
            control: record.control.clone(),
            target: record.target,
            ..Running::adopted(pid, record.start_ticks)
        })
    }

    /// Stops it: politely, then by force after `grace`.
    fn stop<'a>(&'a self, running: &'a mut Running, grace: Duration) -> BoxFuture<'a, Exit> {
        Box::pin(running.terminate(grace))
    }
}

/// The variables the platform sets for an instance, in the order they are exported: `PORT`,
/// `ZEITWORK_INSTANCE`, `ZEITWORK_DEPLOYMENT`, then the image's environment.
pub fn instance_env(a: &zw_proto::agent::Assignment, port: u16) -> Vec<(String, String)> {
    let mut env = vec![
        ("PORT".to_string(), port.to_string()),
        ("ZEITWORK_INSTANCE".to_string(), a.id.clone()),
        ("ZEITWORK_DEPLOYMENT".to_string(), a.deployment.clone()),
    ];
    env.extend(a.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The command with `$NAME` and `${NAME}` replaced by the instance's variables, so that
/// `--port $PORT` works although no shell reads the command (exec form, as in an OCI
/// image's `Cmd`). `$$` is a literal `$`; a name the platform does not set stays as
/// written (the app may expand it itself).
pub fn expand_command(command: &[String], env: &[(String, String)]) -> Vec<String> {
    command.iter().map(|arg| expand(arg, env)).collect()
}

fn expand(arg: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v);
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) if lookup(&braced[..end]).is_some() => {
                    out.push_str(lookup(&braced[..end]).map_or("", String::as_str));
                    rest = &braced[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            let len = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
            match lookup(&after[..len]) {
                Some(v) if len > 0 => {
                    out.push_str(v);
                    rest = &after[len..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![
            ("PORT".into(), "31000".into()),
            ("ZEITWORK_INSTANCE".into(), "i-1".into()),
            ("GREETING".into(), "hi there".into()),
        ]
    }

    #[test]
    fn platform_variables_expand_in_arguments() {
        let cmd: Vec<String> = [
            "python3",
            "-m",
            "http.server",
            "$PORT",
            "--port=${PORT}",
            "$ZEITWORK_INSTANCE.log",
            "${GREETING}",
            "$$PORT",
            "$HOME",
            "${UNSET}",
            "cost: 5$",
            "${PORT",
            "$",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            expand_command(&cmd, &env()),
            [
                "python3",
                "-m",
                "http.server",
                "31000",
                "--port=31000",
                "i-1.log",
                "hi there",
                "$PORT",
                "$HOME",
                "${UNSET}",
                "cost: 5$",
                "${PORT",
                "$"
            ]
        );
    }

    proptest::proptest! {
        /// Any argument at all: no panic, and text without `$` is untouched.
        #[test]
        fn expansion_never_panics(arg in "\\PC{0,24}") {
            let out = expand(&arg, &env());
            if !arg.contains('$') {
                proptest::prop_assert_eq!(out, arg);
            }
        }
    }
}
