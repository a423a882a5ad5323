//! Whole-configuration validation and the content hash.

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};
use zw_rules::Rule;

use crate::{Config, ConfigError, ConfigErrors, Limits, Middleware, Service, Strategy, Unknown};

/// A configuration that passed validation, with its compiled rules and content hash.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub config: Config,
    /// Compiled rule of every router that has one (fallback routers have none).
    pub rules: BTreeMap<String, Rule>,
    /// `sha256:<hex>` of the configuration in canonical form: the same configuration
    /// written in TOML, YAML or JSON, in one file or split over several, hashes the same.
    pub hash: String,
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
    "rateLimit",
    "retry",
    "circuitBreaker",
    "basicAuth",
    "digestAuth",
    "forwardAuth",
    "compress",
    "chain",
    "buffering",
    "inFlightReq",
    "ipAllowList",
    "ipWhiteList",
    "errors",
    "replacePath",
    "replacePathRegex",
    "stripPrefixRegex",
    "contentType",
    "passTLSClientCert",
    "grpcWeb",
    "plugin",
    "scheme",
    "mode",
    "followRedirects",
    "unhealthyInterval",
    "accessControlAllowCredentials",
    "accessControlAllowHeaders",
    "accessControlAllowMethods",
    "accessControlAllowOriginList",
    "accessControlAllowOriginListRegex",
    "accessControlExposeHeaders",
    "accessControlMaxAge",
    "addVaryHeader",
    "allowedHosts",
    "hostsProxyHeaders",
    "sslProxyHeaders",
    "stsSeconds",
    "stsIncludeSubdomains",
    "stsPreload",
    "forceSTSHeader",
    "frameDeny",
    "customFrameOptionsValue",
    "contentTypeNosniff",
    "browserXssFilter",
    "customBrowserXSSValue",
    "contentSecurityPolicy",
    "contentSecurityPolicyReportOnly",
    "publicKey",
    "referrerPolicy",
    "permissionsPolicy",
    "isDevelopment",
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

struct Checker<'a> {
    errors: Vec<ConfigError>,
    limits: &'a Limits,
}

impl Checker<'_> {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }

    fn unknown(&mut self, path: &str, unknown: &Unknown) {
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
pub fn validate(config: Config, limits: &Limits) -> Result<ValidConfig, ConfigErrors> {
    let mut c = Checker {
        errors: Vec::new(),
        limits,
    };
    c.unknown("", &config.unknown);
    c.unknown("edge", &config.edge.unknown);
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
        if r.service.is_empty() {
            c.err(format!("{p}.service"), "missing service");
        } else {
            match resolve_ref(&r.service) {
                Ok(s) if http.services.contains_key(s) => {}
                Ok(s) => c.err(format!("{p}.service"), format!("unknown service \"{s}\"")),
                Err(e) => c.err(format!("{p}.service"), e),
            }
        }
        if r.middlewares.len() > limits.max_middlewares_per_router {
            c.err(
                format!("{p}.middlewares"),
                format!(
                    "more than {} middlewares",
                    limits.max_middlewares_per_router
                ),
            );
        }
        for (i, m) in r.middlewares.iter().enumerate() {
            match resolve_ref(m) {
                Ok(m) if http.middlewares.contains_key(m) => {}
                Ok(m) => c.err(
                    format!("{p}.middlewares[{i}]"),
                    format!("unknown middleware \"{m}\""),
                ),
                Err(e) => c.err(format!("{p}.middlewares[{i}]"), e),
            }
        }
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

    for (name, s) in &http.services {
        let p = format!("http.services.{name}");
        c.name(&p, name);
        check_service(
            &mut c,
            &p,
            s,
            config
                .http
                .servers_transports
                .keys()
                .map(String::as_str)
                .collect(),
        );
        if let Some(w) = &s.weighted {
            for (i, ws) in w.services.iter().enumerate() {
                match resolve_ref(&ws.name) {
                    Ok(n) if http.services.contains_key(n) => {}
                    Ok(n) => c.err(
                        format!("{p}.weighted.services[{i}].name"),
                        format!("unknown service \"{n}\""),
                    ),
                    Err(e) => c.err(format!("{p}.weighted.services[{i}].name"), e),
                }
            }
        }
    }
    check_cycles(&mut c, &config);

    for (name, m) in &http.middlewares {
        let p = format!("http.middlewares.{name}");
        c.name(&p, name);
        check_middleware(&mut c, &p, m);
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

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    let canonical = serde_json::to_vec(&config)
        .map_err(|e| ConfigErrors::one("", format!("cannot serialize: {e}")))?;
    let digest = Sha256::digest(&canonical);
    let hash = format!("sha256:{}", hex::encode(digest));
    Ok(ValidConfig {
        config,
        rules,
        hash,
    })
}

fn check_service(c: &mut Checker<'_>, p: &str, s: &Service, transports: HashSet<&str>) {
    c.unknown(p, &s.unknown);
    match (&s.load_balancer, &s.weighted) {
        (Some(_), Some(_)) | (None, None) => {
            c.err(
                p,
                "a service needs exactly one of `loadBalancer` or `weighted`",
            );
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
            for (i, srv) in lb.servers.iter().enumerate() {
                let sp = format!("{p}.servers[{i}]");
                c.unknown(&sp, &srv.unknown);
                match UpstreamUrl::parse(&srv.url) {
                    Err(e) => c.err(format!("{sp}.url"), e),
                    Ok(u) => {
                        if let Some(inst) = &srv.instance {
                            if u.scheme != UpstreamScheme::Https {
                                c.err(
                                    format!("{sp}.instance"),
                                    "only an https:// server (a worker ingress) names an instance",
                                );
                            }
                            if http::HeaderValue::from_str(inst).is_err() || inst.is_empty() {
                                c.err(format!("{sp}.instance"), "not a valid instance id");
                            }
                        }
                    }
                }
            }
            match (&lb.hash_key, lb.strategy) {
                (Some(_), s) if s != Strategy::Hrw => {
                    c.err(format!("{p}.hashKey"), "only used with strategy: hrw")
                }
                (Some(k), _) => {
                    c.unknown(&format!("{p}.hashKey"), &k.unknown);
                    match (&k.header, &k.cookie) {
                        (Some(h), None) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                            c.err(
                                format!("{p}.hashKey.header"),
                                format!("`{h}` is not a valid header name"),
                            );
                        }
                        (Some(_), None) | (None, Some(_)) => {}
                        _ => c.err(
                            format!("{p}.hashKey"),
                            "set exactly one of `header` or `cookie`",
                        ),
                    }
                }
                (None, _) => {}
            }
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
                if let Some(m) = &hc.method {
                    if http::Method::from_bytes(m.as_bytes()).is_err() {
                        c.err(
                            format!("{hp}.method"),
                            format!("`{m}` is not an HTTP method"),
                        );
                    }
                }
                if hc.status.is_some_and(|s| !(100..=599).contains(&s)) {
                    c.err(
                        format!("{hp}.status"),
                        "must be an HTTP status code (100-599)",
                    );
                }
                check_headers(c, &format!("{hp}.headers"), &hc.headers);
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
        }
        (None, Some(w)) => {
            let p = format!("{p}.weighted");
            c.unknown(&p, &w.unknown);
            if w.services.is_empty() {
                c.err(format!("{p}.services"), "needs at least one service");
            }
            for (i, ws) in w.services.iter().enumerate() {
                c.unknown(&format!("{p}.services[{i}]"), &ws.unknown);
            }
        }
    }
}

fn check_headers(c: &mut Checker<'_>, p: &str, headers: &BTreeMap<String, String>) {
    for (k, v) in headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            c.err(format!("{p}.{k}"), "not a valid header name");
        }
        if http::HeaderValue::from_str(v).is_err() {
            c.err(
                format!("{p}.{k}"),
                "not a valid header value (control characters are not allowed)",
            );
        }
    }
}

fn check_middleware(c: &mut Checker<'_>, p: &str, m: &Middleware) {
    c.unknown(p, &m.unknown);
    let set = [
        m.headers.is_some(),
        m.strip_prefix.is_some(),
        m.add_prefix.is_some(),
        m.redirect_regex.is_some(),
        m.redirect_scheme.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set + m.unknown.len() != 1 {
        c.err(p, "a middleware needs exactly one type (headers, stripPrefix, addPrefix, redirectRegex, redirectScheme)");
    }
    if let Some(h) = &m.headers {
        c.unknown(&format!("{p}.headers"), &h.unknown);
        check_headers(
            c,
            &format!("{p}.headers.customRequestHeaders"),
            &h.custom_request_headers,
        );
        check_headers(
            c,
            &format!("{p}.headers.customResponseHeaders"),
            &h.custom_response_headers,
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
    }
    if let Some(a) = &m.add_prefix {
        c.unknown(&format!("{p}.addPrefix"), &a.unknown);
        if !a.prefix.starts_with('/') {
            c.err(format!("{p}.addPrefix.prefix"), "must start with `/`");
        }
    }
    if let Some(r) = &m.redirect_regex {
        c.unknown(&format!("{p}.redirectRegex"), &r.unknown);
        if let Err(e) = zw_rules::compile_go_regex(&r.regex) {
            c.err(format!("{p}.redirectRegex.regex"), e);
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
