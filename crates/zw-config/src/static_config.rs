//! Traefik's **static** configuration (`traefik.yml`): entry points, the file provider,
//! the access log, logs and metrics. `zeitwork edge --config traefik.yml` reads it as it
//! is; what Zeitwork does not do is an error naming the key, as for the dynamic
//! configuration.
//!
//! Semantics follow Traefik's (`pkg/config/static/`): an address `:8080` listens on every
//! interface; `providers.file` names the dynamic configuration (`filename` or `directory`,
//! relative to the working directory, as in Traefik), watched unless `watch: false`; an
//! entry point's `http.redirections.entryPoint` sends every request on it to another
//! entry point (Traefik's generated `<from>-to-<to>` router, priority 2147483646, with a
//! `redirectScheme` to the target's port); `http.tls` gives TLS to the routers that name
//! that entry point and set none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::{Config, ConfigError, ConfigErrors, Dur, Format, RouterTls, Unknown};

/// Top-level keys that only a static configuration has: a file with one of them is read
/// as one.
const STATIC_KEYS: &[&str] = &[
    "entryPoints",
    "providers",
    "certificatesResolvers",
    "accessLog",
    "log",
    "api",
    "ping",
    "metrics",
    "global",
    "experimental",
    "tracing",
    "serversTransport",
    "tcpServersTransport",
    "hostResolver",
    "spiffe",
    "core",
    "ocsp",
];

/// Traefik static keys Zeitwork does not implement (yet).
const UNSUPPORTED: &[&str] = &[
    "api",
    "ping",
    "experimental",
    "tracing",
    "serversTransport",
    "tcpServersTransport",
    "hostResolver",
    "spiffe",
    "core",
    "ocsp",
    "udp",
    "observability",
    "allowACMEByPass",
    "reusePort",
    "asDefault",
    "http3",
    "keepAliveMaxRequests",
    "keepAliveMaxTime",
    "lifeCycle",
    "middlewares",
    "encodeQuerySemicolons",
    "sanitizePath",
    "docker",
    "kubernetesCRD",
    "kubernetesIngress",
    "kubernetesGateway",
    "consulCatalog",
    "nomad",
    "ecs",
    "consul",
    "etcd",
    "zooKeeper",
    "redis",
    "http",
    "plugin",
    "providersThrottleDuration",
    "filters",
    "fields",
    "bufferingSize",
    "compress",
    "maxSize",
    "maxAge",
    "maxBackups",
    "noColor",
    "filePath",
    "format",
    "addEntryPointsLabels",
    "addRoutersLabels",
    "addServicesLabels",
    "buckets",
    "headerLabels",
    "manualRouting",
    "datadog",
    "statsD",
    "influxDB2",
    "otlp",
    "idleTimeout",
    "dnsChallenge",
    "eab",
    "preferredChain",
    "profile",
    "emailAddresses",
    "caSystemCertPool",
    "caServerName",
    "clientTimeout",
    "clientResponseHeaderTimeout",
    "disableCommonName",
    "tailscale",
    "delay",
];

/// Whether `text` (of `format`) is a static configuration rather than a dynamic one.
pub fn is_static(text: &str, format: Format) -> bool {
    match crate::load::parse_value(text, format) {
        Ok(Value::Object(m)) => m.keys().any(|k| STATIC_KEYS.contains(&k.as_str())),
        _ => false,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    entry_points: BTreeMap<String, RawEntryPoint>,
    #[serde(default)]
    providers: Option<RawProviders>,
    #[serde(default)]
    access_log: Option<RawAccessLog>,
    #[serde(default)]
    log: Option<RawLog>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    global: Option<RawGlobal>,
    #[serde(default)]
    certificates_resolvers: BTreeMap<String, RawResolver>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResolver {
    #[serde(default)]
    acme: Option<RawAcme>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAcme {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    ca_server: Option<String>,
    #[serde(default)]
    storage: Option<String>,
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    certificates_duration: Option<i64>,
    #[serde(default)]
    http_challenge: Option<RawHttpChallenge>,
    #[serde(default)]
    tls_challenge: Option<serde_json::Value>,
    #[serde(default)]
    ca_certificates: Vec<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpChallenge {
    #[serde(default)]
    entry_point: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntryPoint {
    address: String,
    #[serde(default)]
    http: Option<RawEpHttp>,
    #[serde(default)]
    proxy_protocol: Option<RawTrusted>,
    #[serde(default)]
    forwarded_headers: Option<RawTrusted>,
    #[serde(default)]
    transport: Option<RawTransport>,
    #[serde(default)]
    http2: Option<RawHttp2>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttp2 {
    #[serde(default)]
    max_concurrent_streams: Option<i64>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEpHttp {
    #[serde(default)]
    redirections: Option<RawRedirections>,
    /// Go's `http.Server.MaxHeaderBytes`: the request line and headers, in bytes.
    #[serde(default)]
    max_header_bytes: Option<i64>,
    #[serde(default)]
    tls: Option<RouterTls>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRedirections {
    entry_point: Option<RawRedirect>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRedirect {
    to: String,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    permanent: Option<bool>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTrusted {
    #[serde(default)]
    trusted_i_ps: Vec<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTransport {
    #[serde(default)]
    responding_timeouts: Option<RawTimeouts>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTimeouts {
    #[serde(default)]
    read_timeout: Option<Dur>,
    #[serde(default)]
    write_timeout: Option<Dur>,
    #[serde(default)]
    idle_timeout: Option<Dur>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProviders {
    #[serde(default)]
    file: Option<RawFile>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    directory: Option<String>,
    #[serde(default)]
    watch: Option<bool>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAccessLog {
    #[serde(default)]
    file_path: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetrics {
    #[serde(default)]
    prometheus: Option<RawPrometheus>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPrometheus {
    #[serde(default)]
    entry_point: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// `global`: Zeitwork never checks for new versions nor sends usage data, so both keys
/// are what it does anyway.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawGlobal {
    #[serde(default)]
    check_new_version: Option<bool>,
    #[serde(default)]
    send_anonymous_usage: Option<bool>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// An entry point of a validated static configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticEntryPoint {
    pub name: String,
    pub address: SocketAddr,
    /// `proxyProtocol.trustedIPs`: connections must come from these and start with a
    /// PROXY protocol header.
    pub proxy_protocol: Option<Vec<zw_rules::IpNet>>,
    /// `forwardedHeaders`: the clients whose `X-Forwarded-*` headers are kept (from
    /// anyone else they are replaced); `None`: no one's.
    pub forwarded_headers: Option<ForwardedTrust>,
    pub redirect: Option<Redirection>,
    /// `http.tls`: the TLS of the routers that name this entry point and set none.
    pub tls: Option<RouterTls>,
    pub read_timeout: Option<std::time::Duration>,
    pub write_timeout: Option<std::time::Duration>,
    /// `transport.respondingTimeouts.idleTimeout`: how long a kept-alive connection waits
    /// for its next request.
    pub idle_timeout: Option<std::time::Duration>,
    /// `http.maxHeaderBytes`: the most a request's line and headers may hold.
    pub max_header_bytes: Option<usize>,
    /// `http2.maxConcurrentStreams`: streams open at once on one HTTP/2 connection.
    pub h2_max_streams: Option<u32>,
}

/// Whose `X-Forwarded-*` headers an entry point keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardedTrust {
    /// `insecure: true`: everyone's.
    Everyone,
    /// `trustedIPs`: the clients in these networks (the PROXY protocol's address behind a
    /// balancer: list the networks in front of the balancer, e.g. a CDN's).
    Networks(Vec<zw_rules::IpNet>),
}

impl ForwardedTrust {
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        match self {
            ForwardedTrust::Everyone => true,
            ForwardedTrust::Networks(n) => n.iter().any(|n| n.contains(ip)),
        }
    }
}

/// `http.redirections.entryPoint`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirection {
    pub to: String,
    pub scheme: String,
    /// The target entry point's port.
    pub port: u16,
    pub permanent: bool,
    pub priority: i64,
}

/// A validated static configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticConfig {
    pub entry_points: Vec<StaticEntryPoint>,
    /// The dynamic configuration: `providers.file.filename` or `.directory`.
    pub dynamic: Option<PathBuf>,
    pub watch: bool,
    /// `accessLog`: `None` off; `Some(None)` to stdout; `Some(Some(path))` to a file.
    pub access_log: Option<Option<PathBuf>>,
    /// `log.level` (Traefik's names, lowercased: `debug`, `info`, `warn`, `error`).
    pub log_level: Option<String>,
    pub log_json: bool,
    /// `metrics.prometheus` is set: the metrics are served at the admin endpoint's
    /// `/metrics`.
    pub prometheus: bool,
    /// `certificatesResolvers`: the ACME resolvers routers may name in `tls.certResolver`.
    pub resolvers: Vec<AcmeResolver>,
}

/// Let's Encrypt's production directory, Traefik's default `caServer`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `certificatesResolvers.<name>.acme`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeResolver {
    pub name: String,
    /// The account's contact (Traefik requires none; the CA may).
    pub email: Option<String>,
    /// The ACME directory URL (default: Let's Encrypt's production directory).
    pub ca_server: String,
    /// Traefik's `acme.json`, read and written as Traefik does (default `acme.json`).
    pub storage: PathBuf,
    pub key_type: KeyType,
    /// How long the CA's certificates live (Traefik's `certificatesDuration`, in hours,
    /// default 2160 = 90 days): renewal starts when a third of it is left, at most 30 days
    /// before expiry.
    pub certificates_duration: std::time::Duration,
    /// `httpChallenge.entryPoint`: where HTTP-01 is answered (preferred when both are set).
    pub http_challenge: Option<String>,
    /// `tlsChallenge`: TLS-ALPN-01, answered in the TLS handshake on every entry point.
    pub tls_challenge: bool,
    /// `caCertificates`: PEM files of the roots that sign the ACME server's own HTTPS
    /// certificate, when it is not publicly trusted (a test CA such as pebble).
    pub ca_certificates: Vec<PathBuf>,
}

/// The certificate key types issued (Traefik's `keyType`, but `RSA8192`, which the key
/// generator does not make).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ec256,
    Ec384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

/// Traefik's default redirection priority (`math.MaxInt32 - 1`).
const REDIRECT_PRIORITY: i64 = 2_147_483_646;

/// Reads and validates a static configuration file.
pub fn load_static(path: &Path) -> Result<StaticConfig, ConfigErrors> {
    let fail = |m: String| ConfigErrors::one(path.display().to_string(), m);
    let format = Format::from_path(path).ok_or_else(|| {
        fail("unknown format: the file name must end in .toml, .yaml, .yml or .json".into())
    })?;
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if meta.len() > 1 << 20 {
        return Err(fail("a static configuration of more than 1 MiB".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    parse_static(&text, format)
}

/// Parses and validates static configuration text.
pub fn parse_static(text: &str, format: Format) -> Result<StaticConfig, ConfigErrors> {
    let v = crate::load::parse_value(text, format).map_err(|m| ConfigErrors::one("", m))?;
    let raw: Raw = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ConfigErrors::one(
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    let mut errors = Vec::new();
    let mut err = |path: String, msg: &str| errors.push(ConfigError::new(path, msg));
    let unknown = |path: &str, u: &Unknown, err: &mut dyn FnMut(String, &str)| {
        for k in u.keys() {
            let full = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if UNSUPPORTED.contains(&k.as_str()) {
                err(full, "this Traefik option is not supported by Zeitwork yet; remove it or see the README's list of supported options");
            } else {
                err(
                    full,
                    "unknown key (keys are camelCase, as in Traefik's static configuration)",
                );
            }
        }
    };
    unknown("", &raw.unknown, &mut err);

    let mut ports = BTreeMap::new();
    let mut entry_points = Vec::new();
    for (name, ep) in &raw.entry_points {
        let p = format!("entryPoints.{name}");
        unknown(&p, &ep.unknown, &mut err);
        let address = match parse_address(&ep.address) {
            Ok(a) => a,
            Err(m) => {
                err(format!("{p}.address"), &m);
                continue;
            }
        };
        ports.insert(name.clone(), address.port());
        let proxy_protocol = match &ep.proxy_protocol {
            None => None,
            Some(t) => {
                unknown(&format!("{p}.proxyProtocol"), &t.unknown, &mut err);
                if t.insecure {
                    err(format!("{p}.proxyProtocol.insecure"), "trusting a PROXY protocol header from anyone lets any client choose its address; list the balancers in trustedIPs");
                }
                let mut nets = Vec::new();
                for (i, n) in t.trusted_i_ps.iter().enumerate() {
                    match n.parse::<zw_rules::IpNet>() {
                        Ok(n) => nets.push(n),
                        Err(e) => err(format!("{p}.proxyProtocol.trustedIPs[{i}]"), &e.to_string()),
                    }
                }
                if t.trusted_i_ps.is_empty() && !t.insecure {
                    err(
                        format!("{p}.proxyProtocol.trustedIPs"),
                        "name the networks trusted to send PROXY protocol headers",
                    );
                }
                Some(nets)
            }
        };
        let forwarded_headers = match &ep.forwarded_headers {
            None => None,
            Some(t) => {
                unknown(&format!("{p}.forwardedHeaders"), &t.unknown, &mut err);
                let mut nets = Vec::new();
                for (i, n) in t.trusted_i_ps.iter().enumerate() {
                    match n.trim().parse::<zw_rules::IpNet>() {
                        Ok(n) => nets.push(n),
                        Err(e) => err(
                            format!("{p}.forwardedHeaders.trustedIPs[{i}]"),
                            &e.to_string(),
                        ),
                    }
                }
                Some(if t.insecure {
                    ForwardedTrust::Everyone
                } else {
                    ForwardedTrust::Networks(nets)
                })
            }
        };
        let (mut read_timeout, mut write_timeout, mut idle_timeout) = (None, None, None);
        if let Some(t) = &ep.transport {
            unknown(&format!("{p}.transport"), &t.unknown, &mut err);
            if let Some(r) = &t.responding_timeouts {
                unknown(
                    &format!("{p}.transport.respondingTimeouts"),
                    &r.unknown,
                    &mut err,
                );
                read_timeout = r.read_timeout.map(|d| d.0).filter(|d| !d.is_zero());
                write_timeout = r.write_timeout.map(|d| d.0).filter(|d| !d.is_zero());
                idle_timeout = r.idle_timeout.map(|d| d.0).filter(|d| !d.is_zero());
            }
        }
        let h2_max_streams = match &ep.http2 {
            None => None,
            Some(h) => {
                unknown(&format!("{p}.http2"), &h.unknown, &mut err);
                match h.max_concurrent_streams.map(u32::try_from) {
                    None => None,
                    Some(Ok(n)) if n > 0 => Some(n),
                    Some(_) => {
                        err(
                            format!("{p}.http2.maxConcurrentStreams"),
                            "must be a number of streams, at least 1",
                        );
                        None
                    }
                }
            }
        };
        let mut max_header_bytes = None;
        let mut redirect_raw = None;
        let mut tls = None;
        if let Some(h) = &ep.http {
            unknown(&format!("{p}.http"), &h.unknown, &mut err);
            if let Some(r) = &h.redirections {
                unknown(&format!("{p}.http.redirections"), &r.unknown, &mut err);
                if let Some(e) = &r.entry_point {
                    unknown(
                        &format!("{p}.http.redirections.entryPoint"),
                        &e.unknown,
                        &mut err,
                    );
                    redirect_raw = Some(e);
                }
            }
            if let Some(t) = &h.tls {
                unknown(&format!("{p}.http.tls"), &t.unknown, &mut err);
                tls = Some(t.clone());
            }
            match h.max_header_bytes.map(usize::try_from) {
                None => {}
                Some(Ok(n)) if n > 0 => max_header_bytes = Some(n),
                Some(_) => err(
                    format!("{p}.http.maxHeaderBytes"),
                    "must be a number of bytes, at least 1",
                ),
            }
        }
        entry_points.push((
            StaticEntryPoint {
                name: name.clone(),
                address,
                proxy_protocol,
                forwarded_headers,
                redirect: None,
                tls,
                read_timeout,
                write_timeout,
                idle_timeout,
                max_header_bytes,
                h2_max_streams,
            },
            redirect_raw,
        ));
    }
    let mut eps = Vec::with_capacity(entry_points.len());
    for (mut ep, redirect) in entry_points {
        if let Some(r) = redirect {
            let p = format!("entryPoints.{}.http.redirections.entryPoint", ep.name);
            match ports.get(&r.to) {
                None => err(
                    format!("{p}.to"),
                    "names no entry point of this configuration",
                ),
                Some(_) if r.to == ep.name => err(
                    format!("{p}.to"),
                    "an entry point cannot redirect to itself",
                ),
                Some(port) => {
                    let scheme = r.scheme.clone().unwrap_or_else(|| "https".into());
                    if !matches!(scheme.as_str(), "http" | "https") {
                        err(format!("{p}.scheme"), "must be `http` or `https`");
                    }
                    ep.redirect = Some(Redirection {
                        to: r.to.clone(),
                        scheme,
                        port: *port,
                        permanent: r.permanent.unwrap_or(true),
                        priority: r.priority.unwrap_or(REDIRECT_PRIORITY),
                    });
                }
            }
        }
        eps.push(ep);
    }
    if eps.is_empty() {
        err(
            "entryPoints".into(),
            "no entry point: name at least one, e.g. entryPoints: {web: {address: \":80\"}}",
        );
    }

    let (mut dynamic, mut watch) = (None, true);
    match &raw.providers {
        None => err(
            "providers".into(),
            "no provider: set providers.file.filename (or .directory) to the dynamic configuration",
        ),
        Some(pr) => {
            unknown("providers", &pr.unknown, &mut err);
            match &pr.file {
                None => err("providers.file".into(), "the file provider is the only one Zeitwork reads: set providers.file.filename (or .directory)"),
                Some(f) => {
                    unknown("providers.file", &f.unknown, &mut err);
                    match (&f.filename, &f.directory) {
                        (Some(p), None) | (None, Some(p)) => dynamic = Some(PathBuf::from(p)),
                        _ => err("providers.file".into(), "set exactly one of `filename` or `directory`"),
                    }
                    watch = f.watch.unwrap_or(true);
                }
            }
        }
    }

    let access_log = match &raw.access_log {
        None => None,
        Some(a) => {
            unknown("accessLog", &a.unknown, &mut err);
            if let Some(f) = &a.format {
                if f != "json" {
                    err("accessLog.format".into(), "Zeitwork writes JSON access logs only: set `format: json` (Traefik's default `common` is not written)");
                }
            }
            Some(a.file_path.as_ref().map(PathBuf::from))
        }
    };
    let (mut log_level, mut log_json) = (None, false);
    if let Some(l) = &raw.log {
        unknown("log", &l.unknown, &mut err);
        if let Some(level) = &l.level {
            let lower = level.to_ascii_lowercase();
            match lower.as_str() {
                "trace" | "debug" | "info" | "warn" | "error" => log_level = Some(lower),
                "fatal" | "panic" => log_level = Some("error".into()),
                _ => err(
                    "log.level".into(),
                    "one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL, PANIC",
                ),
            }
        }
        match l.format.as_deref() {
            None | Some("common") => {}
            Some("json") => log_json = true,
            Some(_) => err("log.format".into(), "`common` or `json`"),
        }
    }
    let mut prometheus = false;
    if let Some(m) = &raw.metrics {
        unknown("metrics", &m.unknown, &mut err);
        if let Some(p) = &m.prometheus {
            unknown("metrics.prometheus", &p.unknown, &mut err);
            if p.entry_point.is_some() {
                err("metrics.prometheus.entryPoint".into(), "metrics are served at the admin endpoint's /metrics (--admin), not on an entry point");
            }
            prometheus = true;
        }
    }
    if let Some(g) = &raw.global {
        unknown("global", &g.unknown, &mut err);
        let _ = (g.check_new_version, g.send_anonymous_usage);
    }
    let mut resolvers = Vec::new();
    for (name, r) in &raw.certificates_resolvers {
        let p = format!("certificatesResolvers.{name}");
        unknown(&p, &r.unknown, &mut err);
        let Some(a) = &r.acme else {
            err(p, "only ACME resolvers exist: set `acme`");
            continue;
        };
        let p = format!("{p}.acme");
        unknown(&p, &a.unknown, &mut err);
        // Without keyType, EC256 rather than Traefik's RSA4096: a P-256 key signs a
        // handshake for a fraction of the CPU (bench/RESULTS.md, full handshakes).
        let key_type = match a.key_type.as_deref() {
            None | Some("EC256") => KeyType::Ec256,
            Some("EC384") => KeyType::Ec384,
            Some("RSA2048") => KeyType::Rsa2048,
            Some("RSA3072") => KeyType::Rsa3072,
            Some("RSA4096") => KeyType::Rsa4096,
            Some("RSA8192") => {
                err(format!("{p}.keyType"), "RSA8192 keys are not made by Zeitwork's key generator: set RSA4096 (or EC256, faster to serve)");
                continue;
            }
            Some(_) => {
                err(
                    format!("{p}.keyType"),
                    "one of EC256, EC384, RSA2048, RSA3072, RSA4096",
                );
                continue;
            }
        };
        let hours = a.certificates_duration.unwrap_or(2160);
        if !(1..=24 * 3650).contains(&hours) {
            err(
                format!("{p}.certificatesDuration"),
                "hours from 1 to 87600 (default 2160, 90 days)",
            );
            continue;
        }
        let ca_server = a.ca_server.clone().unwrap_or_else(|| LETS_ENCRYPT.into());
        if !ca_server.starts_with("https://") {
            err(
                format!("{p}.caServer"),
                "an ACME directory URL starting with https://",
            );
        }
        let tls_challenge = a.tls_challenge.is_some();
        let http_challenge = match &a.http_challenge {
            None if tls_challenge => None,
            None => {
                err(
                    p.clone(),
                    "set httpChallenge.entryPoint (an entry point on port 80) or tlsChallenge: {} (answered on the entry points' TLS port)",
                );
                continue;
            }
            Some(h) => {
                unknown(&format!("{p}.httpChallenge"), &h.unknown, &mut err);
                match &h.entry_point {
                    Some(e) if ports.contains_key(e) => Some(e.clone()),
                    Some(_) => {
                        err(
                            format!("{p}.httpChallenge.entryPoint"),
                            "names no entry point of this configuration",
                        );
                        continue;
                    }
                    None => {
                        err(
                            format!("{p}.httpChallenge.entryPoint"),
                            "name the entry point (port 80) that answers HTTP-01",
                        );
                        continue;
                    }
                }
            }
        };
        if a.ca_certificates.len() > 1 {
            err(
                format!("{p}.caCertificates"),
                "one CA certificate file at most (the root of the ACME server's HTTPS certificate)",
            );
        }
        resolvers.push(AcmeResolver {
            name: name.clone(),
            email: a.email.clone().filter(|e| !e.is_empty()),
            ca_server,
            storage: PathBuf::from(a.storage.as_deref().unwrap_or("acme.json")),
            key_type,
            certificates_duration: std::time::Duration::from_secs(hours as u64 * 3600),
            http_challenge,
            tls_challenge,
            ca_certificates: a.ca_certificates.iter().map(PathBuf::from).collect(),
        });
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(StaticConfig {
        entry_points: eps,
        dynamic,
        watch,
        access_log,
        log_level,
        log_json,
        prometheus,
        resolvers,
    })
}

/// Traefik's entry point address: `[host]:port`, an empty host for every interface, an
/// optional `/tcp` (UDP is not served).
fn parse_address(a: &str) -> Result<SocketAddr, String> {
    let a = a.strip_suffix("/tcp").unwrap_or(a);
    if a.ends_with("/udp") {
        return Err("UDP entry points are not supported by Zeitwork".into());
    }
    let full = if let Some(port) = a.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        a.to_string()
    };
    full.parse::<SocketAddr>()
        .map_err(|_| format!("`{a}` is not an address like `:443` or `127.0.0.1:8080`"))
}

impl StaticConfig {
    /// What the entry points add to every dynamic configuration: the redirections'
    /// routers and middlewares, and entry point TLS on the routers that name the entry
    /// point and set none. Names the configuration already uses are an error then.
    pub fn apply_to(&self, config: &mut Config) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        config.resolvers = self.resolvers.iter().map(|r| r.name.clone()).collect();
        for ep in &self.entry_points {
            if let Some(tls) = &ep.tls {
                for r in config.http.routers.values_mut() {
                    if r.tls.is_none() && r.entry_points.iter().any(|e| e == &ep.name) {
                        r.tls = Some(tls.clone());
                    }
                }
            }
            let Some(r) = &ep.redirect else { continue };
            let name = format!("{}-to-{}", ep.name, r.to);
            let middleware = format!("redirect-{name}");
            let path = format!("entryPoints.{}.http.redirections", ep.name);
            for (kind, taken) in [
                ("router", config.http.routers.contains_key(&name)),
                (
                    "middleware",
                    config.http.middlewares.contains_key(&middleware),
                ),
            ] {
                if taken {
                    errors.push(ConfigError::new(
                        path.clone(),
                        format!("the dynamic configuration already has a {kind} named like the one this redirection makes (`{name}`)"),
                    ));
                }
            }
            config.http.middlewares.insert(
                middleware.clone(),
                crate::Middleware {
                    redirect_scheme: Some(crate::RedirectScheme {
                        scheme: r.scheme.clone(),
                        port: Some(r.port.to_string()),
                        permanent: r.permanent,
                        unknown: Unknown::new(),
                    }),
                    ..Default::default()
                },
            );
            config.http.routers.insert(
                name.clone(),
                crate::Router {
                    rule: Some("HostRegexp(`.*`)".into()),
                    priority: Some(r.priority),
                    service: NOOP_SERVICE.into(),
                    middlewares: vec![middleware],
                    entry_points: vec![ep.name.clone()],
                    ..Default::default()
                },
            );
            config
                .http
                .services
                .entry(NOOP_SERVICE.into())
                .or_insert_with(|| crate::Service {
                    load_balancer: Some(crate::LoadBalancer::default()),
                    ..Default::default()
                });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// The service behind the redirections' routers (Traefik's `noop@internal`): never
/// reached, since the redirect answers first.
const NOOP_SERVICE: &str = "noop-internal";

/// One certificate a resolver is asked for: the names it must carry, the first as its
/// subject (Traefik's `domains[].main` and `.sans`, or a router's `Host` names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AcmeDomains {
    pub resolver: String,
    pub names: Vec<String>,
}

/// The certificates the routers of `config` ask their `tls.certResolver` for, as Traefik
/// collects them (`pkg/provider/acme/provider.go`, `watchNewDomains`): a router's
/// `tls.domains`, one certificate each, else one certificate for the `Host` names of its
/// rule. Wildcards need DNS-01, which Zeitwork does not do: they are left out (validation
/// of the static configuration refuses `dnsChallenge`). Sorted, without duplicates.
pub fn acme_domains(config: &Config) -> Vec<AcmeDomains> {
    let mut out = Vec::new();
    for r in config.http.routers.values() {
        let Some(tls) = &r.tls else { continue };
        let Some(resolver) = &tls.cert_resolver else {
            continue;
        };
        let mut sets: Vec<Vec<String>> = Vec::new();
        if tls.domains.is_empty() {
            let hosts = r
                .rule
                .as_deref()
                .and_then(|rule| zw_rules::Rule::compile(rule).ok())
                .and_then(|rule| rule.host_names())
                .unwrap_or_default();
            sets.push(hosts);
        } else {
            for d in &tls.domains {
                sets.push(
                    std::iter::once(d.main.clone())
                        .chain(d.sans.iter().cloned())
                        .collect(),
                );
            }
        }
        for names in sets {
            let mut seen = std::collections::BTreeSet::new();
            let names: Vec<String> = names
                .into_iter()
                .map(|n| n.to_ascii_lowercase())
                .filter(|n| !n.is_empty() && !n.starts_with("*.") && seen.insert(n.clone()))
                .collect();
            if !names.is_empty() {
                out.push(AcmeDomains {
                    resolver: resolver.clone(),
                    names,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
