//! Validation of the access-control middlewares: `rateLimit`, `ipAllowList`.

use std::time::Duration;

use crate::validate::Checker;
use crate::{
    IpAllowList, IpStrategy, IpStrategySpec, ParsedMiddleware, RateLimit, RateLimitRedis,
    RateLimitSpec, RedisSpec, Source,
};

/// `ipStrategy`: `depth` and `excludedIPs` read `X-Forwarded-For`, which is the client's
/// only from peers an entry point trusts (from others the edge drops it on arrival).
/// With both, `depth` wins, as in Traefik.
fn check_ip_strategy(c: &mut Checker<'_>, p: &str, s: &IpStrategy) -> Option<IpStrategySpec> {
    c.unknown(p, &s.unknown);
    let before = c.errors.len();
    let mut excluded = Vec::with_capacity(s.excluded_ips.len());
    for (i, n) in s.excluded_ips.iter().enumerate() {
        match n.trim().parse::<zw_rules::IpNet>() {
            Ok(n) => excluded.push(n),
            Err(e) => c.err(format!("{p}.excludedIPs[{i}]"), e.to_string()),
        }
    }
    if let Some(n) = s.ipv6_subnet {
        if n > 128 {
            c.err(
                format!("{p}.ipv6Subnet"),
                "an IPv6 prefix length is 0 to 128",
            );
        }
    }
    (c.errors.len() == before).then_some(IpStrategySpec {
        depth: s.depth,
        excluded,
        ipv6_subnet: s.ipv6_subnet,
    })
}

pub(crate) fn check_rate_limit(
    c: &mut Checker<'_>,
    p: &str,
    r: &RateLimit,
    digest: &mut Vec<u8>,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &r.unknown);
    let before = c.errors.len();
    if r.average < 0 {
        c.err(
            format!("{p}.average"),
            "must not be negative (0 means no limit)",
        );
    }
    let period = r.period.map_or(Duration::from_secs(1), |d| d.0);
    let period = if period.is_zero() {
        Duration::from_secs(1)
    } else {
        period
    };
    let burst = r.burst.unwrap_or(1).clamp(1, i64::from(u32::MAX));
    let source = source_of(
        c,
        p,
        r.source_criterion.as_ref(),
        Source::ClientIp(IpStrategySpec::default()),
    );
    let rate = (r.average > 0).then(|| r.average as f64 / period.as_secs_f64());
    // Traefik: a request may wait half a token's time; below one token a second, 500 ms.
    let max_delay = match rate {
        Some(rate) if rate >= 1.0 => Duration::from_secs_f64(0.5 / rate.floor()),
        _ => Duration::from_millis(500),
    };
    let redis = r
        .redis
        .as_ref()
        .map(|redis| check_redis(c, &format!("{p}.redis"), redis, digest));
    let source = source?;
    (c.errors.len() == before).then(|| {
        ParsedMiddleware::RateLimit(RateLimitSpec {
            rate,
            burst: u32::try_from(burst).unwrap_or(u32::MAX),
            max_delay,
            source,
            redis: redis.flatten(),
        })
    })
}

fn check_redis(
    c: &mut Checker<'_>,
    p: &str,
    r: &RateLimitRedis,
    digest: &mut Vec<u8>,
) -> Option<RedisSpec> {
    c.unknown(p, &r.unknown);
    let before = c.errors.len();
    // Not in the serialized configuration (a secret): its bytes still make a change.
    if let Some(pw) = &r.password {
        digest.extend_from_slice(pw.as_bytes());
    }
    let tls = r.tls.as_ref().and_then(|t| {
        let (config, pem) =
            crate::tls::check_client_tls(c, &format!("{p}.tls"), "redis", t, digest)?;
        Some(crate::RedisTls {
            ca: pem.ca,
            client: pem.pair,
            insecure: t.insecure_skip_verify,
            identity: config.identity,
        })
    });
    let endpoint = match r.endpoints.as_slice() {
        [] => {
            c.err(format!("{p}.endpoints"), "needs Redis' `host:port`");
            None
        }
        [one] => match one.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(port) if port > 0 => Some((
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                    port,
                )),
                _ => {
                    c.err(
                        format!("{p}.endpoints[0]"),
                        format!("`{one}`: the port is not a port number"),
                    );
                    None
                }
            },
            _ => {
                c.err(
                    format!("{p}.endpoints[0]"),
                    format!("`{one}`: expected `host:port`"),
                );
                None
            }
        },
        _ => {
            c.err(
                format!("{p}.endpoints"),
                "several endpoints (a Redis cluster) are not supported yet; give one `host:port`",
            );
            None
        }
    };
    if r.db < 0 {
        c.err(format!("{p}.db"), "must not be negative");
    }
    let positive = |c: &mut Checker<'_>, key: &str, d: Option<crate::Dur>, default: u64| {
        let d = d.map_or(Duration::from_secs(default), |d| d.0);
        if d.is_zero() {
            c.err(format!("{p}.{key}"), "must be greater than 0");
        }
        d
    };
    let dial_timeout = positive(c, "dialTimeout", r.dial_timeout, 5);
    let read = positive(c, "readTimeout", r.read_timeout, 3);
    let write = positive(c, "writeTimeout", r.write_timeout, 3);
    let (host, port) = endpoint?;
    (c.errors.len() == before).then(|| RedisSpec {
        host,
        port,
        username: r.username.clone().filter(|u| !u.is_empty()),
        password: r.password.clone().filter(|p| !p.is_empty()),
        db: r.db,
        dial_timeout,
        response_timeout: read.max(write),
        fail_closed: r.fail_closed,
        tls,
    })
}

pub(crate) fn check_ip_allow_list(
    c: &mut Checker<'_>,
    p: &str,
    a: &IpAllowList,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &a.unknown);
    let before = c.errors.len();
    if a.source_range.is_empty() {
        c.err(
            format!("{p}.sourceRange"),
            "needs at least one address or network",
        );
    }
    let mut ranges = Vec::with_capacity(a.source_range.len());
    for (i, r) in a.source_range.iter().enumerate() {
        match r.parse::<zw_rules::IpNet>() {
            Ok(n) => ranges.push(n),
            Err(e) => c.err(format!("{p}.sourceRange[{i}]"), e.to_string()),
        }
    }
    let strategy = match &a.ip_strategy {
        Some(s) => check_ip_strategy(c, &format!("{p}.ipStrategy"), s).unwrap_or_default(),
        None => IpStrategySpec::default(),
    };
    let reject = match a.reject_status_code {
        None => Some(http::StatusCode::FORBIDDEN),
        Some(code) => match http::StatusCode::from_u16(code) {
            Ok(s) if (100..=599).contains(&code) => Some(s),
            _ => {
                c.err(
                    format!("{p}.rejectStatusCode"),
                    "must be an HTTP status code (100-599)",
                );
                None
            }
        },
    };
    (c.errors.len() == before).then(|| ParsedMiddleware::IpAllowList {
        ranges,
        strategy,
        reject: reject.unwrap_or(http::StatusCode::FORBIDDEN),
    })
}

/// `sourceCriterion`, or `default` without one.
fn source_of(
    c: &mut Checker<'_>,
    p: &str,
    criterion: Option<&crate::SourceCriterion>,
    default: Source,
) -> Option<Source> {
    match criterion {
        None => Some(default),
        Some(sc) => {
            let sp = format!("{p}.sourceCriterion");
            c.unknown(&sp, &sc.unknown);
            let set = usize::from(sc.ip_strategy.is_some())
                + usize::from(sc.request_header_name.is_some())
                + usize::from(sc.request_host);
            if set > 1 {
                c.err(
                    &sp,
                    "set one of ipStrategy, requestHeaderName or requestHost",
                );
            }
            match (&sc.ip_strategy, &sc.request_header_name, sc.request_host) {
                (Some(s), _, _) => {
                    check_ip_strategy(c, &format!("{sp}.ipStrategy"), s).map(Source::ClientIp)
                }
                (None, Some(h), _) => match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(h) => Some(Source::Header(h)),
                    Err(_) => {
                        c.err(
                            format!("{sp}.requestHeaderName"),
                            format!("`{h}` is not a header name"),
                        );
                        None
                    }
                },
                (None, None, true) => Some(Source::Host),
                (None, None, false) => Some(default),
            }
        }
    }
}

pub(crate) fn check_in_flight(
    c: &mut Checker<'_>,
    p: &str,
    f: &crate::InFlightReq,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &f.unknown);
    let before = c.errors.len();
    if f.amount < 1 {
        c.err(format!("{p}.amount"), "must be at least 1");
    }
    let source = source_of(c, p, f.source_criterion.as_ref(), Source::Host)?;
    (c.errors.len() == before).then(|| ParsedMiddleware::InFlightReq {
        amount: u64::try_from(f.amount).unwrap_or(1),
        source,
    })
}

type HeadersExtra = (Box<crate::Secure>, Option<Box<crate::Cors>>);

/// The security and CORS keys of a `headers` middleware, as Traefik's
/// `pkg/middlewares/headers` sets them (`secure.go` over unrolled/secure, `header.go`).
pub(crate) fn check_headers_extra(
    c: &mut Checker<'_>,
    p: &str,
    h: &crate::Headers,
) -> Option<HeadersExtra> {
    let before = c.errors.len();
    let value = |field: &str, v: &str, c: &mut Checker<'_>| match http::HeaderValue::from_str(v) {
        Ok(v) => Some(v),
        Err(_) => {
            c.err(
                format!("{p}.{field}"),
                "not a valid header value (control characters are not allowed)",
            );
            None
        }
    };
    fn set(v: &str) -> Option<&str> {
        Some(v).filter(|v| !v.is_empty())
    }
    let mut secure = crate::Secure::default();
    let frame = if !h.custom_frame_options_value.is_empty() {
        Some(h.custom_frame_options_value.as_str())
    } else if h.frame_deny {
        Some("DENY")
    } else {
        None
    };
    let xss = if !h.custom_browser_xss_value.is_empty() {
        Some(h.custom_browser_xss_value.as_str())
    } else if h.browser_xss_filter {
        Some("1; mode=block")
    } else {
        None
    };
    for (field, name, v) in [
        ("customFrameOptionsValue", "x-frame-options", frame),
        (
            "contentTypeNosniff",
            "x-content-type-options",
            h.content_type_nosniff.then_some("nosniff"),
        ),
        ("customBrowserXSSValue", "x-xss-protection", xss),
        (
            "contentSecurityPolicy",
            "content-security-policy",
            set(&h.content_security_policy),
        ),
        (
            "contentSecurityPolicyReportOnly",
            "content-security-policy-report-only",
            set(&h.content_security_policy_report_only),
        ),
        ("referrerPolicy", "referrer-policy", set(&h.referrer_policy)),
        (
            "permissionsPolicy",
            "permissions-policy",
            set(&h.permissions_policy),
        ),
    ] {
        if let Some(v) = v {
            if let Some(v) = value(field, v, c) {
                secure.always.push((http::HeaderName::from_static(name), v));
            }
        }
    }
    if h.sts_seconds < 0 {
        c.err(format!("{p}.stsSeconds"), "must not be negative");
    }
    // Development mode drops what would pin browsers to this host: HSTS, key pins, and
    // the host check.
    if h.sts_seconds > 0 && !h.is_development {
        let mut v = format!("max-age={}", h.sts_seconds);
        if h.sts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if h.sts_preload {
            v.push_str("; preload");
        }
        let sts = (
            http::header::STRICT_TRANSPORT_SECURITY,
            http::HeaderValue::from_str(&v).unwrap_or(http::HeaderValue::from_static("max-age=0")),
        );
        if h.force_sts_header {
            secure.always.push(sts);
        } else {
            secure.on_secure.push(sts);
        }
    }
    if !h.public_key.is_empty() && !h.is_development {
        if let Some(v) = value("publicKey", &h.public_key, c) {
            secure
                .on_secure
                .push((http::HeaderName::from_static("public-key-pins"), v));
        }
    }
    let header_name = |field: String, n: &str, c: &mut Checker<'_>| {
        http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| c.err(field, "not a valid header name"))
            .ok()
    };
    for (n, v) in &h.ssl_proxy_headers {
        let field = format!("sslProxyHeaders.{n}");
        let name = header_name(format!("{p}.{field}"), n, c);
        if let (Some(name), Some(v)) = (name, value(&field, v, c)) {
            secure.ssl_proxy_headers.push((name, v));
        }
    }
    for (i, n) in h.hosts_proxy_headers.iter().enumerate() {
        if let Some(name) = header_name(format!("{p}.hostsProxyHeaders[{i}]"), n, c) {
            secure.hosts_proxy_headers.push(name);
        }
    }
    if !h.is_development {
        secure.allowed_hosts = h.allowed_hosts.clone();
    }
    let has_cors = h.access_control_allow_credentials
        || !h.access_control_allow_headers.is_empty()
        || !h.access_control_allow_methods.is_empty()
        || !h.access_control_allow_origin_list.is_empty()
        || !h.access_control_allow_origin_list_regex.is_empty()
        || !h.access_control_expose_headers.is_empty()
        || h.access_control_max_age != 0
        || h.add_vary_header;
    let joined = |field: &str, list: &[String], c: &mut Checker<'_>| {
        if list.is_empty() {
            None
        } else {
            value(field, &list.join(","), c)
        }
    };
    let allow_headers = joined(
        "accessControlAllowHeaders",
        &h.access_control_allow_headers,
        c,
    );
    let allow_methods = joined(
        "accessControlAllowMethods",
        &h.access_control_allow_methods,
        c,
    );
    let expose_headers = joined(
        "accessControlExposeHeaders",
        &h.access_control_expose_headers,
        c,
    );
    let mut origin_regexes = Vec::new();
    for (i, r) in h.access_control_allow_origin_list_regex.iter().enumerate() {
        match zw_rules::compile_go_regex(r) {
            Ok(re) => origin_regexes.push(re),
            Err(e) => c.err(format!("{p}.accessControlAllowOriginListRegex[{i}]"), e),
        }
    }
    let cors = has_cors.then(|| {
        Box::new(crate::Cors {
            allow_credentials: h.access_control_allow_credentials,
            allow_headers,
            allow_methods,
            origins: h.access_control_allow_origin_list.clone(),
            origin_regexes,
            expose_headers,
            max_age: h.access_control_max_age,
            add_vary: h.add_vary_header,
        })
    });
    (c.errors.len() == before).then_some((Box::new(secure), cors))
}

/// oxy's buffer (which Traefik's `buffering` configures) keeps 1 MiB of a body in memory
/// unless told otherwise.
const DEFAULT_MEM_BODY_BYTES: u64 = 1 << 20;

/// `buffering`: sizes are not negative (oxy refuses those too); 0 keeps the default.
pub(crate) fn check_buffering(
    c: &mut Checker<'_>,
    p: &str,
    b: &crate::Buffering,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &b.unknown);
    let before = c.errors.len();
    if b.retry_expression.as_deref().is_some_and(|r| !r.is_empty()) {
        c.err(
            format!("{p}.retryExpression"),
            "this Traefik option is not supported by Zeitwork yet; remove it or see the README's list of supported options",
        );
    }
    let mut size = |field: &str, v: i64| match u64::try_from(v) {
        Ok(v) => v,
        Err(_) => {
            c.err(
                format!("{p}.{field}"),
                "must not be negative (0: the default)",
            );
            0
        }
    };
    let limits = |max: u64, mem: u64| crate::BodyLimits {
        memory: if mem == 0 {
            DEFAULT_MEM_BODY_BYTES
        } else {
            mem
        },
        max: (max > 0).then_some(max),
    };
    let request = limits(
        size("maxRequestBodyBytes", b.max_request_body_bytes),
        size("memRequestBodyBytes", b.mem_request_body_bytes),
    );
    let response = limits(
        size("maxResponseBodyBytes", b.max_response_body_bytes),
        size("memResponseBodyBytes", b.mem_response_body_bytes),
    );
    (c.errors.len() == before).then_some(ParsedMiddleware::Buffering(crate::BufferingSpec {
        request,
        response,
    }))
}
