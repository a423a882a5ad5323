//! The agent's one error type: why a node could not join, why an instance could not be
//! started, checked or stopped. Each message says what failed and, where the operator can
//! act, what to do; the supervisor turns them into an instance's `reason`.

use std::path::PathBuf;

/// What went wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory the agent needs could not be read, written or made.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("binding {what} to {address}: {source} (is another process on that port?)")]
    Bind {
        what: &'static str,
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The instance's cgroups could not be made (memory and CPU limits).
    #[error("creating the cgroups of instance {id}: {source}")]
    Cgroup { id: String, source: std::io::Error },
    /// A program could not be started at all.
    #[error("starting {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    /// A helper program ran and failed; `stderr` is what it said (abbreviated).
    #[error("{what}: {stderr}")]
    Command { what: String, stderr: String },
    /// The process ended before the agent could take its pid.
    #[error("the process exited before it could be watched")]
    ExitedAtStart,
    /// The runtime cannot run instances on this node; `why` names what is missing.
    #[error("{0}")]
    RuntimeUnavailable(String),
    /// The instance's image cannot be used as it is.
    #[error("{0}")]
    Image(String),
    /// An OCI layout could not be unpacked.
    #[error("unpacking the OCI image {layout}: {source}")]
    Oci {
        layout: String,
        source: crate::oci::OciError,
    },
    /// Firecracker's API could not be reached or answered with an error.
    #[error("Firecracker API {request}: {detail}")]
    Firecracker { request: String, detail: String },
    /// QEMU's monitor socket could not be used.
    #[error("QMP {}: {source}", socket.display())]
    Qmp {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// A VM that should have booted did not.
    #[error("the {what} VM {detail}")]
    Boot { what: &'static str, detail: String },
    /// The instance did not pass its health check.
    #[error("{check}: {detail}")]
    Unhealthy { check: String, detail: String },
    /// Talking to the operator failed.
    #[error(transparent)]
    Operator(#[from] zw_http::Error),
    /// The node certificate or its TLS configuration.
    #[error("the node certificate is unusable: {0}")]
    Certificate(#[from] zw_pki::PkiError),
    /// The operator session's socket.
    #[error("the operator session: {0}")]
    Session(String),
    /// The agent was asked to stop before it was done.
    #[error("stopped before {0}")]
    Stopped(&'static str),
}

impl Error {
    /// An I/O error on `path`.
    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::File { path, source }
    }
}

impl From<Error> for crate::driver::LaunchError {
    fn from(e: Error) -> Self {
        // Waiting will not help these: the runtime or the image is what it is.
        let permanent = matches!(e, Error::RuntimeUnavailable(_) | Error::Image(_));
        crate::driver::LaunchError {
            message: e.to_string(),
            permanent,
        }
    }
}
