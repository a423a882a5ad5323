//! Whole-configuration validation and the content hash.

use std::collections::{BTreeMap, HashMap, HashSet};

use sha2::{Digest, Sha256};
use zw_rules::Rule;

use crate::{
    Config, ConfigError, ConfigErrors, HashSource, HeaderEdits, Limits, Middleware, Parsed,
    ParsedHealthCheck, ParsedLoadBalancer, ParsedMiddleware, ParsedRouter, ParsedServer,
    ParsedService, Service, Strategy, Unknown,
};

/// A configuration that passed validation, with its compiled rules and content hash.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub config: Config,
    /// Compiled rule of every router that has one (fallback routers have none).
    pub rules: BTreeMap<String, Rule>,
    /// `sha256:<hex>` of the configuration in canonical form: the same configuration
    /// written in TOML, YAML or JSON, in one file or split over several, hashes the same.
    pub hash: String,
    /// URLs, header names and values, methods and regexes as validation parsed them, and
    /// every reference resolved to an index.
    pub parsed: Parsed,
}

/// How the edge talks to an upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamScheme {
    /// HTTP/1.1 with keep-alive.
    Http,
    /// HTTP/2 with prior knowledge, no TLS (Traefik's `h2c://` URLs).
    H2c,
    /// HTTP/1.1 over mutual TLS with the edge's platform certificate, to a worker node's
    /// ingress: the server must hold a node certificate from the platform CA.
    Https,
}

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: UpstreamScheme,
    pub host: String,
    pub port: u16,
    /// `host:port` (IPv6 hosts in brackets), what a connection dials and `Host` names.
    pub authority: String,
    /// The URL's path without a trailing `/` (empty for none).
    pub path: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<UpstreamUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not a URL (expected http://host:port)"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => UpstreamScheme::Http,
            "h2c" => UpstreamScheme::H2c,
            "https" => UpstreamScheme::Https,
            other => {
                return Err(format!(
                    "unsupported scheme `{other}` (use http://, h2c:// or https://)"
                ))
            }
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("credentials in server URLs are not supported".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unterminated IPv6 address")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("unexpected `{after}` after IPv6 address")),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let port = match port {
            None if scheme == UpstreamScheme::Https => 443,
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("invalid port `{p}`"))?,
        };
        let path = path
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(UpstreamUrl {
            scheme,
            host: host.to_string(),
            port,
            authority,
            path,
        })
    }
}

/// The name a reference points to: Traefik's `@file` provider suffix stripped
/// (`svc@file` → `svc`). In a validated configuration every reference resolves this way.
pub fn ref_name(reference: &str) -> &str {
    reference.strip_suffix("@file").unwrap_or(reference)
}

/// Checks a reference's provider suffix and returns the name it points to.
pub(crate) fn resolve_ref(name: &str) -> Result<&str, String> {
    match name.rsplit_once('@') {
        None | Some((_, "file")) => Ok(ref_name(name)),
        Some((_, provider)) => Err(format!(
            "provider `@{provider}` does not exist here (only `@file`, or no suffix)"
        )),
    }
}

/// Traefik v3 keys that Zeitwork does not implement yet; these get a "not supported yet"
/// message instead of "unknown key".
const TRAEFIK_KEYS: &[&str] = &[
    "tcp",
    "udp",
    "tls",
    "observability",
    "ruleSyntax",
    "sticky",
    "responseForwarding",
    "passiveHealthCheck",
    "mirroring",
    "failover",
    "redis",
    "retry",
    "circuitBreaker",
    "compress",
    "grpcWeb",
    "plugin",
    "scheme",
    "mode",
    "followRedirects",
    "unhealthyInterval",
    "forceSlash",
    "serverName",
    "insecureSkipVerify",
    "rootCAs",
    "certificates",
    "maxIdleConnsPerHost",
    "disableHTTP2",
    "peerCertURI",
    "spiffe",
    "pingTimeout",
    "readIdleTimeout",
];

pub(crate) struct Checker<'a> {
    pub(crate) errors: Vec<ConfigError>,
    limits: &'a Limits,
}

impl Checker<'_> {
    pub(crate) fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }

    pub(crate) fn unknown(&mut self, path: &str, unknown: &Unknown) {
        for key in unknown.keys() {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if TRAEFIK_KEYS.contains(&key.as_str()) {
                self.err(full, "this Traefik option is not supported by Zeitwork yet; remove it or see the README's list of supported options");
            } else {
                self.err(
                    full,
                    "unknown key (keys are camelCase, as in Traefik's file provider)",
                );
            }
        }
    }

    fn name(&mut self, path: &str, name: &str) {
        if name.is_empty() || name.len() > self.limits.max_name_len {
            self.err(
                path,
                format!("names must be 1 to {} bytes long", self.limits.max_name_len),
            );
        } else if name.contains('@') {
            self.err(
                path,
                "names must not contain `@` (it separates a name from its provider)",
            );
        }
    }
}

/// Validates a configuration as a whole. Returns every problem found, or the validated
/// configuration with compiled rules and content hash.
/// ACME HTTP-01 tokens a configuration carries at most (each is an order in flight).
pub const MAX_ACME_CHALLENGES: usize = 10_000;

pub fn validate(config: Config, limits: &Limits) -> Result<ValidConfig, ConfigErrors> {
    let mut c = Checker {
        errors: Vec::new(),
        limits,
    };
    c.unknown("", &config.unknown);
    c.unknown("edge", &config.edge.unknown);
    if config.edge.acme_challenges.len() > MAX_ACME_CHALLENGES {
        c.err(
            "edge.acmeChallenges",
            format!("more than {MAX_ACME_CHALLENGES} tokens"),
        );
    }
    for (token, key_auth) in &config.edge.acme_challenges {
        // RFC 8555 §8.3: a token is base64url; its key authorization is token "." thumbprint.
        let b64url = |s: &str| {
            !s.is_empty()
                && s.len() <= 512
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let valid = b64url(token)
            && key_auth
                .split_once('.')
                .is_some_and(|(t, thumb)| t == token && b64url(thumb));
        if !valid {
            c.err(
                format!("edge.acmeChallenges.{token}"),
                "an ACME token (base64url) and its key authorization (`token.thumbprint`)",
            );
        }
    }
    let http = &config.http;
    c.unknown("http", &http.unknown);

    for (what, n, max) in [
        ("routers", http.routers.len(), limits.max_routers),
        ("services", http.services.len(), limits.max_services),
        (
            "middlewares",
            http.middlewares.len(),
            limits.max_middlewares,
        ),
    ] {
        if n > max {
            c.err(
                format!("http.{what}"),
                format!("{n} {what}; the limit is {max}"),
            );
        }
    }
    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }

    let service_index: HashMap<&str, u32> = index_of(http.services.keys());
    let middleware_index: HashMap<&str, u32> = index_of(http.middlewares.keys());
    let mut parsed_routers = Vec::with_capacity(http.routers.len());
    let mut rules = BTreeMap::new();
    let mut fallbacks: Vec<(&str, &[String])> = Vec::new();
    for (name, r) in &http.routers {
        let p = format!("http.routers.{name}");
        c.name(&p, name);
        c.unknown(&p, &r.unknown);
        match (&r.rule, r.fallback) {
            (Some(_), true) => c.err(format!("{p}.rule"), "a fallback router takes every request no rule matched; remove `rule` or `fallback`"),
            (None, false) => c.err(format!("{p}.rule"), "missing rule (e.g. Host(`example.com`))"),
            (None, true) => fallbacks.push((name, &r.entry_points)),
            (Some(text), false) => match Rule::compile(text) {
                Ok(rule) => {
                    rules.insert(name.clone(), rule);
                }
                Err(e) => c.err(format!("{p}.rule"), format!("{e}: {text}")),
            },
        }
        let service = if r.service.is_empty() {
            c.err(format!("{p}.service"), "missing service");
            None
        } else {
            match resolve_ref(&r.service) {
                Ok(s) => match service_index.get(s) {
                    Some(i) => Some(*i),
                    None => {
                        c.err(format!("{p}.service"), format!("unknown service \"{s}\""));
                        None
                    }
                },
                Err(e) => {
                    c.err(format!("{p}.service"), e);
                    None
                }
            }
        };
        if r.middlewares.len() > limits.max_middlewares_per_router {
            c.err(
                format!("{p}.middlewares"),
                format!(
                    "more than {} middlewares",
                    limits.max_middlewares_per_router
                ),
            );
        }
        let tls = r.tls.as_ref().map(|t| {
            let tp = format!("{p}.tls");
            c.unknown(&tp, &t.unknown);
            for (i, d) in t.domains.iter().enumerate() {
                c.unknown(&format!("{tp}.domains[{i}]"), &d.unknown);
            }
            if let Some(res) = &t.cert_resolver {
                if !config.resolvers.contains(res) {
                    c.err(
                        format!("{tp}.certResolver"),
                        if config.resolvers.is_empty() {
                            format!("names no certificate resolver: `{res}` must be defined in the static configuration (certificatesResolvers.{res}.acme), or list the certificate under tls.certificates")
                        } else {
                            format!("names no certificate resolver of the static configuration (it defines {})", config.resolvers.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "))
                        },
                    );
                }
            }
            let name = t
                .options
                .as_deref()
                .map_or(crate::tls::DEFAULT_OPTIONS, |o| match resolve_ref(o) {
                    Ok(n) => n,
                    Err(_) => o,
                });
            let known = name == crate::tls::DEFAULT_OPTIONS
                || config
                    .tls
                    .as_ref()
                    .is_some_and(|tls| tls.options.contains_key(name));
            if !known {
                c.err(
                    format!("{tp}.options"),
                    format!("unknown TLS options \"{name}\" (define them under tls.options)"),
                );
            }
            name.to_string()
        });
        let mut middlewares = Vec::with_capacity(r.middlewares.len());
        for (i, m) in r.middlewares.iter().enumerate() {
            match resolve_ref(m) {
                Ok(m) if middleware_index.contains_key(m) => {
                    splice(&http.middlewares, &middleware_index, m, 0, &mut middlewares)
                }
                Ok(m) => c.err(
                    format!("{p}.middlewares[{i}]"),
                    format!("unknown middleware \"{m}\""),
                ),
                Err(e) => c.err(format!("{p}.middlewares[{i}]"), e),
            }
        }
        if middlewares.len() > limits.max_middlewares_per_router {
            c.err(
                format!("{p}.middlewares"),
                format!(
                    "more than {} middlewares once its chains are spliced in",
                    limits.max_middlewares_per_router
                ),
            );
        }
        parsed_routers.push(service.map(|service| ParsedRouter {
            service,
            tls,
            middlewares,
        }));
    }
    for (i, (a, a_eps)) in fallbacks.iter().enumerate() {
        for (b, b_eps) in &fallbacks[i + 1..] {
            let overlap =
                a_eps.is_empty() || b_eps.is_empty() || a_eps.iter().any(|e| b_eps.contains(e));
            if overlap {
                c.err(
                    format!("http.routers.{b}.fallback"),
                    format!("router \"{a}\" is already the fallback on the same entry point"),
                );
            }
        }
    }

    let transports: HashSet<&str> = http.servers_transports.keys().map(String::as_str).collect();
    let mut digest = Vec::new();
    let upstream_tls = crate::tls::check_transports(&mut c, &http.servers_transports, &mut digest);
    let mut parsed_services = Vec::with_capacity(http.services.len());
    for (name, s) in &http.services {
        let p = format!("http.services.{name}");
        c.name(&p, name);
        let parsed = check_service(&mut c, &p, s, &transports, &service_index, &upstream_tls);
        parsed_services.push(parsed);
    }
    check_cycles(&mut c, &config);

    check_chains(&mut c, &http.middlewares);
    let mut parsed_middlewares = Vec::with_capacity(http.middlewares.len());
    for (name, m) in &http.middlewares {
        let p = format!("http.middlewares.{name}");
        c.name(&p, name);
        parsed_middlewares.push(check_middleware(&mut c, &p, m, &mut digest, &service_index));
    }
    for (name, t) in &http.servers_transports {
        let p = format!("http.serversTransports.{name}");
        c.name(&p, name);
        c.unknown(&p, &t.unknown);
        c.unknown(
            &format!("{p}.forwardingTimeouts"),
            &t.forwarding_timeouts.unknown,
        );
        if let Some(d) = t.forwarding_timeouts.dial_timeout {
            if d.0.is_zero() {
                c.err(
                    format!("{p}.forwardingTimeouts.dialTimeout"),
                    "must be greater than 0",
                );
            }
        }
        if t.max_idle_conns_per_host == Some(0) {
            // 0 is allowed in Traefik (= default); we keep its meaning explicit
            c.err(
                format!("{p}.maxIdleConnsPerHost"),
                "must be at least 1 (omit it for the default of 32)",
            );
        }
    }

    let parsed_tls = crate::tls::check_tls(&mut c, config.tls.as_ref(), &mut digest);

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    // Every value left unparsed above came with an error, so with none each is here.
    let parsed = (|| {
        Some(Parsed {
            services: parsed_services.into_iter().collect::<Option<_>>()?,
            routers: parsed_routers.into_iter().collect::<Option<_>>()?,
            middlewares: parsed_middlewares.into_iter().collect::<Option<_>>()?,
            tls: parsed_tls?,
        })
    })()
    .ok_or_else(|| {
        ConfigErrors::one(
            "http",
            "validation found no problem but left a value unparsed; this is a bug in Zeitwork, please report it with the configuration",
        )
    })?;
    let canonical = serde_json::to_vec(&config)
        .map_err(|e| ConfigErrors::one("", format!("cannot serialize: {e}")))?;
    let mut hasher = Sha256::new();
    hasher.update(&canonical);
    // The certificate files' bytes: the same configuration with a renewed certificate
    // file is a new configuration.
    hasher.update(&digest);
    let hash = format!("sha256:{}", hex::encode(hasher.finalize()));
    Ok(ValidConfig {
        config,
        rules,
        hash,
        parsed,
    })
}

/// Each name's index in its (sorted) map.
fn index_of<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<&'a str, u32> {
    names
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect()
}

/// Checks one service; returns it parsed when it has no problem.
fn check_service(
    c: &mut Checker<'_>,
    p: &str,
    s: &Service,
    transports: &HashSet<&str>,
    service_index: &HashMap<&str, u32>,
    upstream_tls: &crate::tls::UpstreamTls,
) -> Option<ParsedService> {
    c.unknown(p, &s.unknown);
    let before = c.errors.len();
    let parsed = match (&s.load_balancer, &s.weighted) {
        (Some(_), Some(_)) | (None, None) => {
            c.err(
                p,
                "a service needs exactly one of `loadBalancer` or `weighted`",
            );
            None
        }
        (Some(lb), None) => {
            let p = format!("{p}.loadBalancer");
            c.unknown(&p, &lb.unknown);
            if lb.servers.len() > c.limits.max_servers_per_service {
                c.err(
                    format!("{p}.servers"),
                    format!("more than {} servers", c.limits.max_servers_per_service),
                );
            }
            let mut servers = Vec::with_capacity(lb.servers.len());
            for (i, srv) in lb.servers.iter().enumerate() {
                let sp = format!("{p}.servers[{i}]");
                c.unknown(&sp, &srv.unknown);
                match UpstreamUrl::parse(&srv.url) {
                    Err(e) => c.err(format!("{sp}.url"), e),
                    Ok(url) => {
                        let mut instance = None;
                        if let Some(inst) = &srv.instance {
                            if url.scheme != UpstreamScheme::Https {
                                c.err(
                                    format!("{sp}.instance"),
                                    "only an https:// server (a worker ingress) names an instance",
                                );
                            }
                            match http::HeaderValue::from_str(inst) {
                                Ok(v) if !inst.is_empty() => instance = Some(v),
                                _ => c.err(format!("{sp}.instance"), "not a valid instance id"),
                            }
                        }
                        servers.push(ParsedServer { url, instance });
                    }
                }
            }
            let mut hash_key = HashSource::ClientIp;
            match (&lb.hash_key, lb.strategy) {
                (Some(_), s) if s != Strategy::Hrw => {
                    c.err(format!("{p}.hashKey"), "only used with strategy: hrw")
                }
                (Some(k), _) => {
                    c.unknown(&format!("{p}.hashKey"), &k.unknown);
                    match (&k.header, &k.cookie) {
                        (Some(h), None) => match http::HeaderName::from_bytes(h.as_bytes()) {
                            Ok(name) => hash_key = HashSource::Header(name),
                            Err(_) => c.err(
                                format!("{p}.hashKey.header"),
                                format!("`{h}` is not a valid header name"),
                            ),
                        },
                        (None, Some(cookie)) => hash_key = HashSource::Cookie(cookie.clone()),
                        _ => c.err(
                            format!("{p}.hashKey"),
                            "set exactly one of `header` or `cookie`",
                        ),
                    }
                }
                (None, _) => {}
            }
            let mut health_check = None;
            if let Some(hc) = &lb.health_check {
                let hp = format!("{p}.healthCheck");
                c.unknown(&hp, &hc.unknown);
                if !hc.path.starts_with('/') {
                    c.err(format!("{hp}.path"), "must start with `/`");
                }
                if hc.interval.is_some_and(|d| d.0.is_zero()) {
                    c.err(format!("{hp}.interval"), "must be greater than 0");
                }
                if hc.timeout.is_some_and(|d| d.0.is_zero()) {
                    c.err(format!("{hp}.timeout"), "must be greater than 0");
                }
                for (k, t) in [
                    ("healthyThreshold", hc.healthy_threshold),
                    ("unhealthyThreshold", hc.unhealthy_threshold),
                ] {
                    if t == Some(0) {
                        c.err(format!("{hp}.{k}"), "must be at least 1");
                    }
                }
                let method = match &hc.method {
                    None => Some(http::Method::GET),
                    Some(m) => match http::Method::from_bytes(m.as_bytes()) {
                        Ok(m) => Some(m),
                        Err(_) => {
                            c.err(
                                format!("{hp}.method"),
                                format!("`{m}` is not an HTTP method"),
                            );
                            None
                        }
                    },
                };
                if hc.status.is_some_and(|s| !(100..=599).contains(&s)) {
                    c.err(
                        format!("{hp}.status"),
                        "must be an HTTP status code (100-599)",
                    );
                }
                let headers = check_headers(c, &format!("{hp}.headers"), &hc.headers);
                health_check = method
                    .zip(headers)
                    .map(|(method, headers)| ParsedHealthCheck { method, headers });
            }
            if let Some(t) = &lb.servers_transport {
                match resolve_ref(t) {
                    Ok(t) if transports.contains(t) => {}
                    Ok(t) => c.err(
                        format!("{p}.serversTransport"),
                        format!("unknown serversTransport \"{t}\""),
                    ),
                    Err(e) => c.err(format!("{p}.serversTransport"), e),
                }
            }
            // `https://` servers that are not worker ingresses: TLS as the transport says.
            let needs_tls = servers
                .iter()
                .any(|s| s.url.scheme == UpstreamScheme::Https && s.instance.is_none());
            let public_tls = needs_tls
                .then(|| upstream_tls.for_transport(lb.servers_transport.as_deref().map(ref_name)))
                .flatten();
            if needs_tls && public_tls.is_none() && c.errors.is_empty() {
                c.err(
                    &p,
                    "no TLS client configuration could be made for its https:// servers",
                );
            }
            Some(ParsedService::LoadBalancer(Box::new(ParsedLoadBalancer {
                config: lb.clone(),
                upstream_tls: public_tls,
                servers,
                hash_key,
                health_check,
            })))
        }
        (None, Some(w)) => {
            let p = format!("{p}.weighted");
            c.unknown(&p, &w.unknown);
            if w.services.is_empty() {
                c.err(format!("{p}.services"), "needs at least one service");
            }
            let mut children = Vec::with_capacity(w.services.len());
            for (i, ws) in w.services.iter().enumerate() {
                c.unknown(&format!("{p}.services[{i}]"), &ws.unknown);
                match resolve_ref(&ws.name) {
                    Ok(n) => match service_index.get(n) {
                        Some(idx) => children.push((*idx, ws.weight.unwrap_or(1))),
                        None => c.err(
                            format!("{p}.services[{i}].name"),
                            format!("unknown service \"{n}\""),
                        ),
                    },
                    Err(e) => c.err(format!("{p}.services[{i}].name"), e),
                }
            }
            Some(ParsedService::Weighted(children))
        }
    };
    parsed.filter(|_| c.errors.len() == before)
}

/// Checks a map of header names to values; returns them parsed when all are valid.
fn check_headers(
    c: &mut Checker<'_>,
    p: &str,
    headers: &BTreeMap<String, String>,
) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
    let mut parsed = Vec::with_capacity(headers.len());
    let mut ok = true;
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes());
        if name.is_err() {
            c.err(format!("{p}.{k}"), "not a valid header name");
        }
        let value = http::HeaderValue::from_str(v);
        if value.is_err() {
            c.err(
                format!("{p}.{k}"),
                "not a valid header value (control characters are not allowed)",
            );
        }
        match (name, value) {
            (Ok(n), Ok(v)) => parsed.push((n, v)),
            _ => ok = false,
        }
    }
    ok.then_some(parsed)
}

/// The `headers` middleware's edits: an empty value removes the header.
fn header_edits(parsed: Vec<(http::HeaderName, http::HeaderValue)>) -> HeaderEdits {
    parsed
        .into_iter()
        .map(|(n, v)| (n, (!v.is_empty()).then_some(v)))
        .collect()
}

/// Checks one middleware; returns it parsed when it has no problem.
fn check_middleware(
    c: &mut Checker<'_>,
    p: &str,
    m: &Middleware,
    digest: &mut Vec<u8>,
    services: &HashMap<&str, u32>,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &m.unknown);
    let before = c.errors.len();
    let mut parsed = None;
    let set = [
        m.headers.is_some(),
        m.strip_prefix.is_some(),
        m.add_prefix.is_some(),
        m.redirect_regex.is_some(),
        m.redirect_scheme.is_some(),
        m.rate_limit.is_some(),
        m.ip_allow_list.is_some(),
        m.in_flight_req.is_some(),
        m.replace_path.is_some(),
        m.replace_path_regex.is_some(),
        m.strip_prefix_regex.is_some(),
        m.basic_auth.is_some(),
        m.chain.is_some(),
        m.forward_auth.is_some(),
        m.digest_auth.is_some(),
        m.encoded_characters.is_some(),
        m.errors.is_some(),
        m.pass_tls_client_cert.is_some(),
        m.buffering.is_some(),
        m.content_type.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set + m.unknown.len() != 1 {
        c.err(p, "a middleware needs exactly one type (headers, stripPrefix, addPrefix, redirectRegex, redirectScheme, rateLimit, ipAllowList, inFlightReq, replacePath, replacePathRegex, stripPrefixRegex, basicAuth, digestAuth, forwardAuth, encodedCharacters, errors, passTLSClientCert, buffering, contentType, chain)");
    }
    if let Some(h) = &m.headers {
        c.unknown(&format!("{p}.headers"), &h.unknown);
        let request = check_headers(
            c,
            &format!("{p}.headers.customRequestHeaders"),
            &h.custom_request_headers,
        );
        let response = check_headers(
            c,
            &format!("{p}.headers.customResponseHeaders"),
            &h.custom_response_headers,
        );
        let extra = crate::access::check_headers_extra(c, &format!("{p}.headers"), h);
        parsed = request
            .zip(response)
            .zip(extra)
            .map(
                |((request, response), (secure, cors))| ParsedMiddleware::Headers {
                    request: header_edits(request),
                    response: header_edits(response),
                    secure,
                    cors,
                },
            );
    }
    if let Some(s) = &m.strip_prefix {
        c.unknown(&format!("{p}.stripPrefix"), &s.unknown);
        if s.prefixes.is_empty() {
            c.err(
                format!("{p}.stripPrefix.prefixes"),
                "needs at least one prefix",
            );
        }
        for (i, pre) in s.prefixes.iter().enumerate() {
            if !pre.starts_with('/') {
                c.err(
                    format!("{p}.stripPrefix.prefixes[{i}]"),
                    "must start with `/`",
                );
            }
        }
        parsed = Some(ParsedMiddleware::StripPrefix(s.clone()));
    }
    if let Some(a) = &m.add_prefix {
        c.unknown(&format!("{p}.addPrefix"), &a.unknown);
        if !a.prefix.starts_with('/') {
            c.err(format!("{p}.addPrefix.prefix"), "must start with `/`");
        }
        parsed = Some(ParsedMiddleware::AddPrefix(a.clone()));
    }
    if let Some(r) = &m.redirect_regex {
        c.unknown(&format!("{p}.redirectRegex"), &r.unknown);
        match zw_rules::compile_go_regex(&r.regex) {
            Ok(regex) => {
                parsed = Some(ParsedMiddleware::RedirectRegex {
                    regex,
                    replacement: r.replacement.clone(),
                    permanent: r.permanent,
                })
            }
            Err(e) => c.err(format!("{p}.redirectRegex.regex"), e),
        }
        if r.replacement.is_empty() {
            c.err(
                format!("{p}.redirectRegex.replacement"),
                "must not be empty",
            );
        }
    }
    if let Some(r) = &m.redirect_scheme {
        c.unknown(&format!("{p}.redirectScheme"), &r.unknown);
        if !matches!(r.scheme.as_str(), "http" | "https") {
            c.err(
                format!("{p}.redirectScheme.scheme"),
                "must be `http` or `https`",
            );
        }
        if let Some(port) = &r.port {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                c.err(
                    format!("{p}.redirectScheme.port"),
                    format!("`{port}` is not a port number"),
                );
            }
        }
        parsed = Some(ParsedMiddleware::RedirectScheme(r.clone()));
    }
    if let Some(r) = &m.rate_limit {
        parsed = crate::access::check_rate_limit(c, &format!("{p}.rateLimit"), r, digest);
    }
    if let Some(r) = &m.replace_path {
        c.unknown(&format!("{p}.replacePath"), &r.unknown);
        if !r.path.starts_with('/') {
            c.err(format!("{p}.replacePath.path"), "must start with `/`");
        }
        parsed = Some(ParsedMiddleware::ReplacePath(r.path.clone()));
    }
    if let Some(r) = &m.replace_path_regex {
        c.unknown(&format!("{p}.replacePathRegex"), &r.unknown);
        // Traefik trims both (`strings.TrimSpace`).
        match zw_rules::compile_go_regex(r.regex.trim()) {
            Ok(regex) => {
                parsed = Some(ParsedMiddleware::ReplacePathRegex {
                    regex,
                    replacement: r.replacement.trim().to_string(),
                })
            }
            Err(e) => c.err(format!("{p}.replacePathRegex.regex"), e),
        }
        if r.replacement.trim().is_empty() {
            c.err(
                format!("{p}.replacePathRegex.replacement"),
                "must not be empty (Traefik then changes nothing)",
            );
        }
    }
    if let Some(r) = &m.strip_prefix_regex {
        c.unknown(&format!("{p}.stripPrefixRegex"), &r.unknown);
        if r.regex.is_empty() {
            c.err(
                format!("{p}.stripPrefixRegex.regex"),
                "needs at least one expression",
            );
        }
        let mut out = Vec::with_capacity(r.regex.len());
        for (i, re) in r.regex.iter().enumerate() {
            match zw_rules::compile_go_regex(re.trim()) {
                Ok(re) => out.push(re),
                Err(e) => c.err(format!("{p}.stripPrefixRegex.regex[{i}]"), e),
            }
        }
        parsed = Some(ParsedMiddleware::StripPrefixRegex(out));
    }
    if let Some(f) = &m.in_flight_req {
        parsed = crate::access::check_in_flight(c, &format!("{p}.inFlightReq"), f);
    }
    if let Some(a) = &m.ip_allow_list {
        parsed = crate::access::check_ip_allow_list(c, &format!("{p}.ipAllowList"), a);
    }
    if let Some(b) = &m.basic_auth {
        parsed = crate::auth::check_basic_auth(c, &format!("{p}.basicAuth"), b, digest);
    }
    if let Some(t) = &m.pass_tls_client_cert {
        let tp = format!("{p}.passTLSClientCert");
        c.unknown(&tp, &t.unknown);
        let info = t.info.as_ref().map(|i| {
            c.unknown(&format!("{tp}.info"), &i.unknown);
            let dn = |c: &mut Checker<'_>, at: &str, d: &Option<crate::TlsClientCertDn>| {
                d.as_ref().map(|d| {
                    c.unknown(&format!("{tp}.info.{at}"), &d.unknown);
                    zw_tls::DnOptions {
                        country: d.country,
                        province: d.province,
                        locality: d.locality,
                        organization: d.organization,
                        organizational_unit: d.organizational_unit,
                        common_name: d.common_name,
                        serial_number: d.serial_number,
                        domain_component: d.domain_component,
                    }
                })
            };
            zw_tls::CertInfoOptions {
                not_after: i.not_after,
                not_before: i.not_before,
                sans: i.sans,
                serial_number: i.serial_number,
                subject: dn(c, "subject", &i.subject),
                issuer: dn(c, "issuer", &i.issuer),
            }
        });
        if !t.pem && info.is_none() {
            c.err(
                &tp,
                "set `pem: true` or `info`: without either nothing is passed",
            );
        }
        parsed = Some(ParsedMiddleware::PassTlsClientCert { pem: t.pem, info });
    }
    if let Some(e) = &m.errors {
        parsed = check_errors(c, &format!("{p}.errors"), e, services);
    }
    if let Some(e) = &m.encoded_characters {
        c.unknown(&format!("{p}.encodedCharacters"), &e.unknown);
        parsed = Some(ParsedMiddleware::EncodedCharacters(e.denied()));
    }
    if let Some(d) = &m.digest_auth {
        parsed = crate::auth::check_digest_auth(c, &format!("{p}.digestAuth"), d, digest);
    }
    if let Some(f) = &m.forward_auth {
        parsed = crate::auth::check_forward_auth(c, &format!("{p}.forwardAuth"), f, digest);
    }
    if let Some(b) = &m.buffering {
        parsed = crate::access::check_buffering(c, &format!("{p}.buffering"), b);
    }
    if let Some(t) = &m.content_type {
        c.unknown(&format!("{p}.contentType"), &t.unknown);
        parsed = Some(ParsedMiddleware::ContentType {
            detect: t.auto_detect.unwrap_or(true),
        });
    }
    if m.chain.is_some() {
        // Its members are checked with the others (`check_chains`).
        parsed = Some(ParsedMiddleware::Chain);
    }
    parsed.filter(|_| c.errors.len() == before)
}

/// `errors` (Traefik's `types.NewHTTPCodeRanges` for `status`).
fn check_errors(
    c: &mut Checker<'_>,
    p: &str,
    e: &crate::ErrorPage,
    services: &HashMap<&str, u32>,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &e.unknown);
    let before = c.errors.len();
    // `500-599`, `404`, or several comma-separated (Traefik's `NewHTTPCodeRanges`).
    let ranges_of = |c: &mut Checker<'_>, at: String, text: &str| -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        for part in text.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                (Ok(a), Ok(b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => {
                    out.push((a, b))
                }
                _ => c.err(
                    &at,
                    format!("`{part}` is not a status code or range (e.g. `500-599` or `404`)"),
                ),
            }
        }
        out
    };
    let mut ranges = Vec::new();
    for (i, s) in e.status.iter().enumerate() {
        ranges.extend(ranges_of(c, format!("{p}.status[{i}]"), s));
    }
    let mut rewrites = Vec::new();
    for (from, to) in &e.status_rewrites {
        let at = format!("{p}.statusRewrites.{from}");
        if !(100..=599).contains(to) {
            c.err(&at, format!("{to} is not an HTTP status code (100-599)"));
        }
        for range in ranges_of(c, at, from) {
            rewrites.push((range, *to));
        }
    }
    if e.status.is_empty() {
        c.err(format!("{p}.status"), "needs at least one status or range");
    }
    let service = match resolve_ref(&e.service) {
        Ok(name) => match services.get(name) {
            Some(i) => Some(*i),
            None => {
                c.err(
                    format!("{p}.service"),
                    format!("unknown service \"{name}\""),
                );
                None
            }
        },
        Err(err) => {
            c.err(format!("{p}.service"), err);
            None
        }
    };
    let query = format!(
        "/{}",
        e.query.as_deref().unwrap_or("").trim_start_matches('/')
    );
    if http::uri::PathAndQuery::try_from(
        query
            .replace("{status}", "500")
            .replace("{originalStatus}", "500")
            .replace("{url}", "x")
            .as_str(),
    )
    .is_err()
    {
        c.err(format!("{p}.query"), "not a valid path and query");
    }
    let service = service?;
    (c.errors.len() == before).then(|| {
        ParsedMiddleware::Errors(crate::ErrorPageSpec {
            ranges,
            service,
            query,
            rewrites,
        })
    })
}

/// How deep chains may nest.
const MAX_CHAIN_DEPTH: usize = 16;

/// Appends middleware `name` to `out`, a chain as its members (recursively, in order).
/// Unknown members and loops are left out here: [`check_chains`] reports them.
fn splice(
    all: &BTreeMap<String, Middleware>,
    index: &HashMap<&str, u32>,
    name: &str,
    depth: usize,
    out: &mut Vec<u32>,
) {
    let Some(idx) = index.get(name) else {
        return;
    };
    match all.get(name).and_then(|m| m.chain.as_ref()) {
        None => out.push(*idx),
        Some(_) if depth >= MAX_CHAIN_DEPTH => {}
        Some(chain) => {
            for member in &chain.middlewares {
                if let Ok(member) = resolve_ref(member) {
                    splice(all, index, member, depth + 1, out);
                }
            }
        }
    }
}

/// Chains name middlewares that exist, and never themselves (Traefik: "recursion
/// detected").
fn check_chains(c: &mut Checker<'_>, all: &BTreeMap<String, Middleware>) {
    fn walk<'a>(
        c: &mut Checker<'_>,
        all: &'a BTreeMap<String, Middleware>,
        name: &'a str,
        stack: &mut Vec<&'a str>,
    ) {
        let Some(chain) = all.get(name).and_then(|m| m.chain.as_ref()) else {
            return;
        };
        if stack.contains(&name) || stack.len() > MAX_CHAIN_DEPTH {
            return;
        }
        stack.push(name);
        for (i, member) in chain.middlewares.iter().enumerate() {
            let at = format!("http.middlewares.{name}.chain.middlewares[{i}]");
            match resolve_ref(member) {
                Err(e) => c.err(at, e),
                Ok(m) if !all.contains_key(m) => c.err(at, format!("unknown middleware \"{m}\"")),
                Ok(m) if stack.contains(&m) => c.err(
                    at,
                    format!("\"{m}\" leads back to this chain (a chain cannot contain itself)"),
                ),
                Ok(_) if stack.len() >= MAX_CHAIN_DEPTH => {
                    c.err(at, format!("chains nest deeper than {MAX_CHAIN_DEPTH}"))
                }
                Ok(m) => walk(c, all, m, stack),
            }
        }
        stack.pop();
    }
    for (name, m) in all {
        if let Some(chain) = &m.chain {
            c.unknown(&format!("http.middlewares.{name}.chain"), &chain.unknown);
            if chain.middlewares.is_empty() {
                c.err(
                    format!("http.middlewares.{name}.chain.middlewares"),
                    "needs at least one middleware",
                );
            }
            let mut stack = Vec::new();
            walk(c, all, name, &mut stack);
        }
    }
}

/// Weighted services may nest, but not in a loop.
fn check_cycles(c: &mut Checker<'_>, config: &Config) {
    fn children(config: &Config, name: &str) -> Vec<String> {
        config
            .http
            .services
            .get(name)
            .and_then(|s| s.weighted.as_ref())
            .map(|w| {
                w.services
                    .iter()
                    .filter_map(|s| resolve_ref(&s.name).ok().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    for start in config.http.services.keys() {
        if state.get(start.as_str()).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), children(config, start))];
        state.insert(start, 1);
        while let Some((node, kids)) = stack.last_mut() {
            if let Some(k) = kids.pop() {
                let Some((key, _)) = config.http.services.get_key_value(&k) else {
                    continue;
                };
                match state.get(key.as_str()).copied().unwrap_or(0) {
                    0 => {
                        state.insert(key, 1);
                        let kk = children(config, key);
                        stack.push((key.clone(), kk));
                    }
                    1 => {
                        let node = node.clone();
                        c.err(
                            format!("http.services.{node}.weighted"),
                            format!("services form a loop through \"{k}\""),
                        );
                    }
                    _ => {}
                }
            } else {
                let done = node.clone();
                if let Some((key, _)) = config.http.services.get_key_value(&done) {
                    state.insert(key, 2);
                }
                stack.pop();
            }
        }
    }
}
