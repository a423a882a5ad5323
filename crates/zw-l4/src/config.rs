//! The balancer's configuration (TOML), and its validation. Every error names its field.
//!
//! ```toml
//! drain_timeout = "30s"
//! admin = "127.0.0.1:9090"
//!
//! [[listener]]
//! name = "http"
//! address = "0.0.0.0:8000"
//! pool = "edges"
//! proxy_protocol = "v2"          # or "v1", "off"
//!
//! [[listener]]
//! name = "tls"
//! address = "0.0.0.0:8443"
//! pool = "edges-tls"
//! sni = { "admin.example.com" = "admin-edges" }   # route by TLS server name
//!
//! [[pool]]
//! name = "edges"
//! algorithm = "maglev"           # or "round_robin", "least_conn"
//! backends = ["10.0.0.5:8080", "10.0.0.6:8080"]
//! health = { kind = "http", path = "/ready", port = 9080, interval = "2s", rise = 2, fall = 2 }
//!
//! [[pool]]
//! name = "edges-from-operator"
//! discover = { operator = "http://10.0.0.2:7070", region = "eu" }   # token: ZEITWORK_TOKEN
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use zw_config::Dur;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `/health`, `/metrics`, `/debug/backends` and draining.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// How long open connections may go on after SIGTERM, or after their backend started
    /// draining.
    #[serde(default = "default_drain")]
    pub drain_timeout: Dur,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// The pool for connections no `sni` entry claims.
    pub pool: String,
    /// TLS server name → pool. Reading the ClientHello delays the backend connection until
    /// it arrived (at most `sni_timeout`).
    #[serde(default)]
    pub sni: BTreeMap<String, String>,
    /// Read the ClientHello even without `sni` entries, to log the server name.
    #[serde(default)]
    pub log_sni: bool,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Connections open at once on this listener; more are closed at accept. Default:
    /// what fits in the process's open-file limit (each connection costs up to six
    /// descriptors: two sockets and two splice pipes), shared by the listeners.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address, so that one client cannot take
    /// the listener's whole allowance.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// A client must send its first byte within this before a backend connection is made
    /// (a silent connection then costs one descriptor, not six, and not for long). `0s`
    /// connects at once, for protocols in which the server speaks first.
    #[serde(default = "default_silent_timeout")]
    pub silent_timeout: Dur,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    #[serde(default = "default_sni_timeout")]
    pub sni_timeout: Dur,
}

impl ListenerConfig {
    pub fn reads_client_hello(&self) -> bool {
        !self.sni.is_empty() || self.log_sni
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    Off,
    V1,
    #[default]
    V2,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    RoundRobin,
    LeastConn,
    /// Consistent hashing of the client address (Maglev): adding or removing one backend
    /// moves about 1/N of the clients.
    #[default]
    Maglev,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Static backends (`host:port`, IP addresses).
    #[serde(default)]
    pub backends: Vec<SocketAddr>,
    /// Backends from the operator's edge list.
    #[serde(default)]
    pub discover: Option<Discover>,
    #[serde(default)]
    pub health: HealthConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discover {
    /// `http://host:port` of the operator.
    pub operator: String,
    /// Only edges of this region.
    #[serde(default)]
    pub region: Option<String>,
    /// A join token with the `edge` role; default: the `ZEITWORK_TOKEN` environment variable.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default = "default_discover_interval")]
    pub interval: Dur,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    #[default]
    Tcp,
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default)]
    pub kind: HealthKind,
    /// For `http`: the path to GET; any 2xx is healthy.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Check this port instead of the backend's (an edge's admin port serves `/ready`).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    /// Consecutive successes before an unhealthy backend gets traffic again.
    #[serde(default = "two")]
    pub rise: u32,
    /// Consecutive failures before a backend is taken out.
    #[serde(default = "two")]
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::Tcp,
            path: default_health_path(),
            port: None,
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            rise: 2,
            fall: 2,
        }
    }
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}
fn default_drain() -> Dur {
    secs(30)
}
fn default_max_connections_per_client() -> usize {
    1024
}
fn default_silent_timeout() -> Dur {
    secs(10)
}

/// Descriptors kept back from client connections: listeners, admin, health checks,
/// discovery.
const RESERVED_FDS: u64 = 128;
/// Descriptors one proxied connection may use: client and backend sockets, and a splice
/// pipe (two descriptors) each way.
pub const FDS_PER_CONNECTION: u64 = 6;

/// How many connections fit in `fds` open files, split over `listeners`.
pub fn connection_limit_for_fds(fds: u64, listeners: usize) -> usize {
    let n = fds.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION / listeners.max(1) as u64;
    usize::try_from(n).unwrap_or(usize::MAX).max(1)
}

/// The process's open-file limit (soft), as the kernel reports it.
pub fn fd_limit() -> u64 {
    #[cfg(target_os = "linux")]
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        return soft;
    }
    1024
}
fn default_connect_timeout() -> Dur {
    secs(3)
}
fn default_idle_timeout() -> Dur {
    secs(300)
}
fn default_sni_timeout() -> Dur {
    secs(5)
}
fn default_discover_interval() -> Dur {
    secs(2)
}
fn default_health_path() -> String {
    "/ready".into()
}
fn default_health_interval() -> Dur {
    secs(2)
}
fn default_health_timeout() -> Dur {
    secs(1)
}
fn two() -> u32 {
    2
}

impl Config {
    /// Parses and validates; every problem, one per line, each naming its field.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.len() > 1 << 20 {
            return Err("configuration larger than 1 MiB".into());
        }
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        let pools: BTreeSet<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        if self.listeners.is_empty() {
            errors.push("listener: at least one listener is needed".to_string());
        }
        let mut names = BTreeSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let p = format!("listener[{i}]");
            if !names.insert(l.name.as_str()) {
                errors.push(format!("{p}.name: `{}` is used twice", l.name));
            }
            if !pools.contains(l.pool.as_str()) {
                errors.push(format!("{p}.pool: unknown pool `{}`", l.pool));
            }
            for (host, pool) in &l.sni {
                if !pools.contains(pool.as_str()) {
                    errors.push(format!("{p}.sni.\"{host}\": unknown pool `{pool}`"));
                }
                if host.is_empty()
                    || host.bytes().any(|b| {
                        !(b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
                    })
                {
                    errors.push(format!("{p}.sni: `{host}` is not a host name"));
                }
            }
            if l.max_connections == Some(0) {
                errors.push(format!("{p}.max_connections: must be at least 1"));
            }
            if l.max_connections_per_client == 0 {
                errors.push(format!(
                    "{p}.max_connections_per_client: must be at least 1"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let p = format!("pool[{i}]");
            if !seen.insert(pool.name.as_str()) {
                errors.push(format!("{p}.name: `{}` is used twice", pool.name));
            }
            if pool.backends.is_empty() && pool.discover.is_none() {
                errors.push(format!("{p}: give `backends` or `discover`"));
            }
            if let Some(d) = &pool.discover {
                if !d.operator.starts_with("http://") {
                    errors.push(format!("{p}.discover.operator: expected http://host:port"));
                }
            }
            let h = &pool.health;
            if h.rise == 0 || h.fall == 0 {
                errors.push(format!("{p}.health: rise and fall must be at least 1"));
            }
            if h.interval.0.is_zero() || h.timeout.0.is_zero() {
                errors.push(format!("{p}.health: interval and timeout must be positive"));
            }
            if !h.path.starts_with('/') {
                errors.push(format!("{p}.health.path: must start with /"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_valid() {
        let text = r#"
admin = "127.0.0.1:9090"
[[listener]]
name = "http"
address = "0.0.0.0:8000"
pool = "edges"
[[listener]]
name = "tls"
address = "0.0.0.0:8443"
pool = "edges"
sni = { "admin.example.com" = "other" }
[[pool]]
name = "edges"
algorithm = "maglev"
backends = ["10.0.0.5:8080", "10.0.0.6:8080"]
health = { kind = "http", path = "/ready", port = 9080, interval = "2s", rise = 2, fall = 2 }
[[pool]]
name = "other"
discover = { operator = "http://10.0.0.2:7070", region = "eu" }
"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.listeners[0].proxy_protocol, ProxyProtocol::V2);
        assert!(c.listeners[1].reads_client_hello());
        assert_eq!(c.pools[0].health.port, Some(9080));
    }

    #[test]
    fn every_error_names_its_field() {
        let text = r#"
[[listener]]
name = "a"
address = "0.0.0.0:1"
pool = "nope"
sni = { "x y" = "gone" }
[[pool]]
name = "p"
health = { rise = 0 }
"#;
        let e = Config::parse(text).unwrap_err();
        for want in [
            "listener[0].pool: unknown pool `nope`",
            "listener[0].sni.\"x y\": unknown pool `gone`",
            "listener[0].sni: `x y` is not a host name",
            "pool[0]: give `backends` or `discover`",
            "pool[0].health: rise and fall",
        ] {
            assert!(e.contains(want), "{want} missing from:\n{e}");
        }
        assert!(Config::parse("[[listener]]\nname = 1")
            .unwrap_err()
            .contains("name"));
        assert!(Config::parse("bogus = 1").unwrap_err().contains("bogus"));
    }
}
