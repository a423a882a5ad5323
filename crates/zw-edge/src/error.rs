//! The edge's one error type: what its embedder (the binary, the providers) is told — a
//! configuration refused, a setting that names nothing — and why a connection's opening
//! or a health check failed. Errors on the request path are answers (a status and a
//! body), not this.

/// Why the edge refused a configuration or a setting, or a check failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration did not load or validate; every problem is listed with its key
    /// path. The running configuration is kept.
    #[error("{0}")]
    Config(#[from] zw_config::ConfigErrors),
    /// A setting names an entry point this edge does not have.
    #[error("no entry point named `{0}` (the static configuration's entryPoints name them)")]
    NoEntryPoint(String),
    /// PROXY protocol without a trusted network would trust nobody (or everybody).
    #[error("entry point `{0}`: name the networks trusted to send PROXY protocol headers")]
    NoTrustedNetworks(String),
    /// The operator's address is not one the edge can dial.
    #[error("{url}: {why}")]
    ControlPlaneUrl { url: String, why: &'static str },
    /// The last-known-good file exists but cannot be used (the edge starts without it).
    #[error("{} is not a usable last-known-good file: {why}", path.display())]
    LastKnownGood {
        path: std::path::PathBuf,
        why: String,
    },
    /// The routing database could not be read or does not hold this edge's region.
    #[error("the routing database: {0}")]
    Database(String),
    /// A connection's PROXY protocol header was missing, malformed or untrusted.
    #[error("{0}")]
    ProxyProtocol(String),
    /// A server failed one health check at `step` (connect, handshake, request, status).
    #[error("{step}: {detail}")]
    HealthCheck { step: &'static str, detail: String },
    /// Applying a configuration panicked (a bug); the running configuration is kept.
    #[error(
        "applying the configuration panicked: {0} (a bug: please report it with the configuration)"
    )]
    Panicked(String),
}
