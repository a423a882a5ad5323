//! Validation of the access-control middlewares: `rateLimit`, `ipAllowList`.

use std::time::Duration;

use crate::validate::Checker;
use crate::{IpAllowList, IpStrategy, ParsedMiddleware, RateLimit, RateLimitSpec, Source};

/// `ipStrategy` without `X-Forwarded-For`: the edge replaces that header from every peer
/// (trusted forwarded headers are not supported yet), so `depth` and `excludedIPs` would
/// read what any client wrote. They are refused rather than made spoofable.
fn check_ip_strategy(c: &mut Checker<'_>, p: &str, s: &IpStrategy) -> Option<Option<u8>> {
    c.unknown(p, &s.unknown);
    let before = c.errors.len();
    if s.depth != 0 {
        c.err(format!("{p}.depth"), "reading X-Forwarded-For needs entry points that trust it (forwardedHeaders.trustedIPs), which Zeitwork does not support yet; behind Zeitwork's balancer the client address comes by PROXY protocol and needs no depth");
    }
    if !s.excluded_ips.is_empty() {
        c.err(format!("{p}.excludedIPs"), "reading X-Forwarded-For needs entry points that trust it (forwardedHeaders.trustedIPs), which Zeitwork does not support yet");
    }
    if let Some(n) = s.ipv6_subnet {
        if n > 128 {
            c.err(
                format!("{p}.ipv6Subnet"),
                "an IPv6 prefix length is 0 to 128",
            );
        }
    }
    (c.errors.len() == before).then_some(s.ipv6_subnet)
}

pub(crate) fn check_rate_limit(
    c: &mut Checker<'_>,
    p: &str,
    r: &RateLimit,
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
        Source::ClientIp { ipv6_subnet: None },
    );
    let rate = (r.average > 0).then(|| r.average as f64 / period.as_secs_f64());
    // Traefik: a request may wait half a token's time; below one token a second, 500 ms.
    let max_delay = match rate {
        Some(rate) if rate >= 1.0 => Duration::from_secs_f64(0.5 / rate.floor()),
        _ => Duration::from_millis(500),
    };
    let source = source?;
    (c.errors.len() == before).then(|| {
        ParsedMiddleware::RateLimit(RateLimitSpec {
            rate,
            burst: u32::try_from(burst).unwrap_or(u32::MAX),
            max_delay,
            source,
        })
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
    let ipv6_subnet = match &a.ip_strategy {
        Some(s) => check_ip_strategy(c, &format!("{p}.ipStrategy"), s).flatten(),
        None => None,
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
        ipv6_subnet,
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
                (Some(s), _, _) => check_ip_strategy(c, &format!("{sp}.ipStrategy"), s)
                    .map(|ipv6_subnet| Source::ClientIp { ipv6_subnet }),
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
