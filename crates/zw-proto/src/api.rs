//! The operator's REST resources (`/api/v1/...`): what it returns and what it accepts.
//!
//! Request bodies refuse unknown fields, so a typo is a 400 naming the field instead of a
//! silently ignored setting. Regions, images, deployments and domains are named by their
//! (unique) name; nodes, instances and edge proxies by an id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::time::Timestamp;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The variant spelled `text`, as stored and as in query strings.
            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What a node does in the fleet.
    NodeType { Worker = "worker", Edge = "edge" }
);
string_enum!(
    /// Whether a node takes new work.
    /// `suspect` and `lost` are set by the operator when heartbeats stop; only a lost
    /// node's instances are placed elsewhere.
    NodeState { Ready = "ready", Draining = "draining", Down = "down", Suspect = "suspect", Lost = "lost" }
);
string_enum!(
    /// A deployment's lifecycle.
    DeploymentStatus { Pending = "pending", Running = "running", Stopped = "stopped", Failed = "failed" }
);
string_enum!(
    /// How a deployment moves to a new release: `rolling` starts new instances first and
    /// stops an old one only once a new one is healthy and the edges no longer route to
    /// the old; `immediate` stops the old ones at once (development).
    Strategy { Rolling = "rolling", Immediate = "immediate" }
);
string_enum!(
    /// Where a release stands. `rolling`: instances are being moved to it; `running`:
    /// the deployment's current release; `retired`: replaced by a later one; `failed`:
    /// halted (`reason` says why), the deployment stayed on or went back to the one
    /// before; `superseded`: replaced by a newer release before it finished rolling.
    ReleaseStatus { Rolling = "rolling", Running = "running", Retired = "retired", Failed = "failed", Superseded = "superseded" }
);
string_enum!(
    /// An instance's lifecycle; only `started` instances receive traffic.
    InstanceState {
        Created = "created",
        Starting = "starting",
        Started = "started",
        Stopping = "stopping",
        Stopped = "stopped",
        Failed = "failed",
        Destroyed = "destroyed",
    }
);
string_enum!(
    /// Whether an edge proxy should get new connections from the balancers.
    EdgeState { Active = "active", Draining = "draining" }
);
string_enum!(
    /// How a node runs an image's instances.
    Runtime { Process = "process", Qemu = "qemu", Firecracker = "firecracker" }
);
string_enum!(
    /// What a join token admits.
    TokenRole { Edge = "edge", Agent = "agent" }
);

/// A region: a set of nodes behind one L4 balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Region {
    pub name: String,
    /// `host:port` of the region's balancer; other regions' edges forward here when they
    /// have no instance of an app (cross-region fallback).
    pub balancer_address: Option<String>,
    /// `host:port` of the balancer's HTTPS port (TLS passed through to the edges), for the
    /// `https://` URLs `zeitwork deploy` prints.
    #[serde(default)]
    pub https_address: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRegion {
    pub name: String,
    #[serde(default)]
    pub balancer_address: Option<String>,
    #[serde(default)]
    pub https_address: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionPatch {
    /// An empty string removes the address.
    pub balancer_address: Option<String>,
    /// An empty string removes the address.
    pub https_address: Option<String>,
}

/// What a node offers (totals; the scheduler subtracts what runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub disk_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    /// Address other hosts reach the node at (an IP or host name, no port).
    pub address: String,
    pub region: String,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    pub state: NodeState,
    pub resources: Resources,
    /// Where edges reach the node's worker ingress (`host:port`); set by its agent.
    #[serde(default)]
    pub ingress_address: Option<String>,
    /// The runtime drivers its agent found, and why the others do not work there.
    #[serde(default)]
    pub drivers: Vec<DriverStatus>,
    pub last_heartbeat_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// Whether a runtime driver works on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverStatus {
    pub runtime: Runtime,
    pub available: bool,
    /// What was found (e.g. `cgroup v2`, `KVM`), or why the driver cannot run.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    pub hostname: String,
    pub address: String,
    pub region: String,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    #[serde(default)]
    pub state: Option<NodeState>,
    #[serde(default)]
    pub resources: Resources,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    pub address: Option<String>,
    pub state: Option<NodeState>,
    pub resources: Option<Resources>,
}

/// What an instance runs: a command, with its environment, on a runtime, optionally
/// inside a root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub runtime: Runtime,
    pub rootfs: Option<RootFs>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewImage {
    pub name: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "process")]
    pub runtime: Runtime,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

fn process() -> Runtime {
    Runtime::Process
}

/// A root filesystem on the worker nodes' disks (no registry is involved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RootFs {
    /// A directory holding the tree.
    Dir(String),
    /// An OCI image layout, as a directory or a tar archive.
    Oci(String),
}

/// How instances of a deployment are checked before they receive traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// HTTP path to GET; without one the check is a TCP connect.
    #[serde(default)]
    pub path: Option<String>,
    /// Seconds between checks (default 5).
    #[serde(default)]
    pub interval_secs: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub name: String,
    pub image: String,
    pub replicas: u32,
    pub regions: Vec<String>,
    /// The port the app listens on inside its instance.
    pub port: u16,
    pub health_check: HealthCheckSpec,
    pub status: DeploymentStatus,
    /// The release the deployment runs or is rolling to (0: none yet).
    #[serde(default)]
    pub release: u64,
    #[serde(default = "rolling")]
    pub strategy: Strategy,
    /// How many instances a rolling release may start beyond `replicas`: a count (`1`)
    /// or a percentage of the replicas (`25%`, rounded up).
    #[serde(default = "one_surge")]
    pub max_surge: String,
    pub created_at: Timestamp,
}

fn rolling() -> Strategy {
    Strategy::Rolling
}

fn one_surge() -> String {
    "1".into()
}

/// One immutable version of what a deployment runs. Every change to the command, the
/// environment, the secrets, the root filesystem, the runtime, the port or the health
/// check makes the next one; scaling and domains do not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    pub deployment: String,
    /// 1, 2, 3, … per deployment.
    pub version: u64,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub runtime: Runtime,
    pub rootfs: Option<RootFs>,
    pub port: u16,
    pub health_check: HealthCheckSpec,
    /// The names of its secrets (never their values).
    pub secrets: Vec<String>,
    pub status: ReleaseStatus,
    /// Why it failed.
    pub reason: Option<String>,
    /// What changed from the release before.
    pub description: String,
    /// Who made it.
    pub created_by: String,
    pub created_at: Timestamp,
}

/// `GET /api/v1/deployments/{name}/releases`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Releases {
    pub items: Vec<Release>,
}

/// `GET /api/v1/deployments/{name}/secrets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Secrets {
    pub items: Vec<SecretInfo>,
}

/// One line of an instance's output, as `GET /api/v1/deployments/{name}/logs` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// When the node's agent first saw the line (to a quarter second).
    pub at: Timestamp,
    pub instance: String,
    pub release: u64,
    pub node: String,
    pub line: String,
}

/// Lines of a deployment's instances from every node, merged by time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Logs {
    pub lines: Vec<LogEntry>,
    /// Pass back as `?cursor=` for the lines that follow.
    pub cursor: String,
    /// Nodes whose agent could not be asked (not connected to this operator, or silent).
    pub unreachable: Vec<String>,
}

/// A secret of a deployment: its name and when it was set, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    pub name: String,
    pub set_at: Timestamp,
}

/// `PATCH /api/v1/deployments/{name}/secrets`: values to set and names to remove, in one
/// new release.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsPatch {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// `POST /api/v1/deployments/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to go back to; default: the one before the running one.
    #[serde(default)]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    pub name: String,
    pub image: String,
    #[serde(default = "one")]
    pub replicas: u32,
    pub regions: Vec<String>,
    pub port: u16,
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub max_surge: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentPatch {
    pub image: Option<String>,
    pub replicas: Option<u32>,
    pub regions: Option<Vec<String>>,
    pub port: Option<u16>,
    pub health_check: Option<HealthCheckSpec>,
    pub status: Option<DeploymentStatus>,
    pub strategy: Option<Strategy>,
    pub max_surge: Option<String>,
}

/// An instance the platform let go of (its deployment destroyed, or scaled down) whose
/// agent has not yet reported it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetiringInstance {
    pub id: String,
    pub node: String,
    pub deployment: String,
    /// When the platform let go of it.
    pub since: Timestamp,
}

/// A domain's HTTPS certificate, as the operator's ACME client keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificateInfo {
    pub domain: String,
    /// The issuing CA's name, once there is a certificate.
    pub issuer: Option<String>,
    pub not_before: Option<Timestamp>,
    pub not_after: Option<Timestamp>,
    /// `pending` (first order running), `valid`, `failed` (no certificate yet), or
    /// `unsupported` (a name the operator's issuer does not sign; `last_error` says why).
    pub status: String,
    /// Why the last order failed (the CA's problem document when it sent one); cleared by
    /// the next success.
    pub last_error: Option<String>,
    /// Orders placed for the domain so far.
    pub orders: u64,
    pub updated_at: Timestamp,
}

/// `GET /api/v1/tls-certificates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificates {
    pub items: Vec<TlsCertificateInfo>,
}

/// `GET /api/v1/retiring-instances?deployment=NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetiringInstances {
    pub items: Vec<RetiringInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: String,
    pub deployment: String,
    /// The release it runs (0: made by hand through the API).
    #[serde(default)]
    pub release: u64,
    /// Taken out of the edges' snapshots on its way out (a rolling release replaced it).
    #[serde(default)]
    pub draining: bool,
    pub node: String,
    pub state: InstanceState,
    /// Why it failed or was restarted, as its agent said.
    #[serde(default)]
    pub reason: Option<String>,
    /// Its failure cannot go away by waiting (runtime unavailable, executable not found).
    #[serde(default)]
    pub permanent: bool,
    /// Where edges reach the instance (set once it runs).
    pub address: Option<String>,
    pub port: Option<u16>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInstance {
    pub deployment: String,
    pub node: String,
    #[serde(default)]
    pub state: Option<InstanceState>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstancePatch {
    pub state: Option<InstanceState>,
    pub address: Option<String>,
    pub port: Option<u16>,
}

/// A host name routed to a deployment once verified: once the operator fetched a token
/// it had put on every edge from `http://NAME/.well-known/acme-challenge/TOKEN` (the
/// name leads to this platform), or an admin marked it so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Domain {
    pub name: String,
    pub deployment: String,
    pub verified_at: Option<Timestamp>,
    /// Why the last ownership check failed (none once verified).
    #[serde(default)]
    pub check_error: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    pub name: String,
    pub deployment: String,
    /// Mark the domain verified at once, skipping the operator's check (an admin's word
    /// that the name is theirs, e.g. proven by a DNS record the operator cannot see).
    #[serde(default)]
    pub verified: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainPatch {
    pub deployment: Option<String>,
    pub verified: Option<bool>,
}

/// An edge proxy, as registered and as last heard from over its control connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EdgeProxy {
    pub id: String,
    pub region: String,
    /// `host:port` balancers send traffic to.
    pub address: String,
    /// `host:port` of its admin endpoint (`/ready`), as the edge reported it.
    pub admin_address: Option<String>,
    pub state: EdgeState,
    pub connected: bool,
    /// The snapshot version the edge last acknowledged (or reported running at hello).
    pub applied_version: Option<u64>,
    pub applied_hash: Option<String>,
    pub last_ack_at: Option<Timestamp>,
    pub last_nack_at: Option<Timestamp>,
    /// Why the edge refused the last snapshot it refused.
    pub last_nack_error: Option<String>,
    pub last_seen_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEdgeProxy {
    pub id: String,
    pub region: String,
    pub address: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeProxyPatch {
    pub address: Option<String>,
    pub state: Option<EdgeState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    pub role: TokenRole,
}

/// A join token; `token` is shown only in the answer that creates it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    pub id: String,
    pub role: TokenRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub created_at: Timestamp,
}

/// One page of a listing. Pass `next` back as `?after=` for the following page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Every error answer: a stable code, a message for humans, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `zeitwork apply -f`: a deployment, its image and its domains, written in one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplySpec {
    /// Created or replaced (by name) before the deployment.
    #[serde(default)]
    pub image: Option<NewImage>,
    pub deployment: NewDeployment,
    /// Domains routed to the deployment; created verified. A domain another deployment
    /// already has is a conflict (409) unless `move_domains` is set.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Take the listed domains from whichever deployment has them: moving a domain that
    /// another app serves is an explicit act.
    #[serde(default)]
    pub move_domains: bool,
    /// How long a new release may take to become healthy before it is halted and the
    /// deployment goes back to its running release (default 120 s).
    #[serde(default)]
    pub rollout_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Applied {
    pub deployment: Deployment,
    pub domains: Vec<Domain>,
    /// `created` or `updated`.
    pub action: String,
    /// The release this made, when what runs changed (none: only scale or domains did).
    #[serde(default)]
    pub release: Option<u64>,
}

/// A problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Names of regions, images and deployments: DNS-label style, 1–63 of `a-z 0-9 -`, not
/// starting or ending with `-`. They end up in router and service names and in URLs.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("`{}` is not a valid name: use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'", shorten(name)),
        ))
    }
}

/// Ids of nodes, instances and edges: 1–128 of `A-Z a-z 0-9 - _ .`.
pub fn check_id(field: &str, id: &str) -> Result<(), FieldError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "`{}` is not a valid id: use 1-128 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
                shorten(id)
            ),
        ))
    }
}

/// A domain name as routed: lower case, dot-separated labels of `a-z 0-9 -`, at most 253
/// characters, optionally with a leading `*.` wildcard label. Anything else could not
/// appear in a `Host(...)` rule safely.
pub fn check_domain(field: &str, domain: &str) -> Result<(), FieldError> {
    let bare = domain.strip_prefix("*.").unwrap_or(domain);
    let ok = !bare.is_empty()
        && domain.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "`{}` is not a valid domain name: use lower-case labels of a-z, 0-9 and '-', separated by dots (an optional leading `*.` makes a wildcard)",
                shorten(domain)
            ),
        ))
    }
}

/// `host:port` with a non-zero port, where host is an IP address or a host name.
pub fn check_host_port(field: &str, addr: &str) -> Result<(), FieldError> {
    let bad = || {
        FieldError::new(
            field,
            format!(
                "`{}` is not an address like 10.0.0.5:8000 or lb.example.com:80",
                shorten(addr)
            ),
        )
    };
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    check_host(field, host).map_err(|_| bad())
}

/// An IP address or a host name (no port).
pub fn check_host(field: &str, host: &str) -> Result<(), FieldError> {
    if host.parse::<std::net::IpAddr>().is_ok() || check_domain(field, host).is_ok() {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("`{}` is not an IP address or a host name", shorten(host)),
        ))
    }
}

/// Error messages quote user input; a megabyte of it would be a log hazard.
fn shorten(s: &str) -> String {
    crate::abbreviate(s, 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("name", "web-1").is_ok());
        for bad in ["", "-web", "web-", "Web", "web_1", "a.b", &"x".repeat(64)] {
            assert!(check_name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains() {
        for ok in [
            "example.com",
            "a-b.example.com",
            "*.example.com",
            "localhost",
        ] {
            assert!(check_domain("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Example.com",
            "a..b",
            "a.b.",
            "*",
            "a.*.b",
            "x`) || Host(`y",
            "-a.com",
            "é.com",
        ] {
            let e = check_domain("name", bad).unwrap_err();
            assert_eq!(e.field, "name");
        }
    }

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:80", "[::1]:8000", "lb.example.com:80"] {
            assert!(check_host_port("a", ok).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1", "x:0", ":80", "a b:80", "lb:99999"] {
            assert!(check_host_port("a", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn enums_round_trip_their_spelling() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::parse(s.as_str()), Some(*s));
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(NodeType::parse("gpu"), None);
    }

    #[test]
    fn long_input_is_shortened_in_messages() {
        let e = check_name("name", &"X".repeat(10_000)).unwrap_err();
        assert!(e.message.len() < 300);
    }
}

/// `POST /api/v1/certificates`: a CSR for a platform certificate. The role comes from the
/// join token (an edge token gets an edge certificate, an agent token a node one); the
/// admin token must say which.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// PEM `CERTIFICATE REQUEST`; only its public key is used.
    pub csr: String,
    /// The subject's name (the edge or node id).
    pub name: String,
    /// DNS names or IP addresses the certificate is for (a node's ingress addresses).
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub role: Option<TokenRole>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedCertificate {
    /// PEM certificate signed by the platform CA.
    pub certificate: String,
    /// PEM certificate of the platform CA.
    pub ca: String,
}
