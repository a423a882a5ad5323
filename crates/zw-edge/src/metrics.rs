//! Prometheus metrics owned by the objects they measure.
//!
//! Each router, backend and server state holds its own atomic counters, created when a
//! snapshot is built and reused across snapshots by name, so the request path only
//! increments — no label lookup, no hashing, no lock. Rendering walks the registry.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Latency buckets in seconds, Prometheus-style (cumulative when rendered).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Status codes counted under their own `code` label (as Traefik's metrics do); any
/// other status is counted under its class (`code="2xx"`). A fixed set keeps the counters
/// a plain array per router: no map, no hashing, no allocation on the request path.
const CODES: [u16; 15] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504,
];

/// Requests handled by one router (and so one service), by status, with latency.
#[derive(Debug)]
pub struct RouterMetrics {
    labels: String,
    by_code: [AtomicU64; CODES.len()],
    by_class: [AtomicU64; 5],
    pub latency: Histogram,
}

impl RouterMetrics {
    pub fn new(entry_point: &str, router: &str, service: &str) -> Self {
        RouterMetrics {
            labels: format!(
                "entrypoint=\"{}\",router=\"{}\",service=\"{}\"",
                esc(entry_point),
                esc(router),
                esc(service)
            ),
            by_code: Default::default(),
            by_class: Default::default(),
            latency: Histogram::default(),
        }
    }

    pub fn record(&self, status: u16, d: Duration) {
        match CODES.iter().position(|c| *c == status) {
            Some(i) => self.by_code[i].fetch_add(1, Relaxed),
            None => self.by_class[usize::from(status / 100).clamp(1, 5) - 1].fetch_add(1, Relaxed),
        };
        self.latency.observe(d);
    }
}

/// Per-backend (scheme + address) connection statistics.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    pub connects: AtomicU64,
    pub reuses: AtomicU64,
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
}

/// Edge-wide counters.
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    pub no_route: AtomicU64,
    pub bad_requests: AtomicU64,
    pub no_config: AtomicU64,
    pub config_applies: AtomicU64,
    pub config_rejections: AtomicU64,
    pub config_version: AtomicU64,
    pub config_applied_unix: AtomicU64,
    pub access_log_dropped: AtomicU64,
    pub in_flight: AtomicU64,
    pub panics: AtomicU64,
    /// Connections closed for a missing, malformed or untrusted PROXY protocol header.
    pub proxy_protocol_rejections: AtomicU64,
    /// Connections closed at accept: the entry points were at their connection limit.
    pub connections_refused: AtomicU64,
    /// Silent connections closed at the connection limit to admit a new one.
    pub connections_evicted: AtomicU64,
    /// Connections closed because they sent no request within the idle timeout.
    pub connections_idle_closed: AtomicU64,
    /// Client connections open now.
    pub connections_open: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS openings that ended without a connection: a refused or malformed handshake
    /// (no certificate under `sniStrict`, no common version or suite), or none in time.
    pub tls_handshake_failures: AtomicU64,
    /// Requests refused with 508: already forwarded from another region, they would
    /// have been forwarded to another region again.
    pub cross_region_loops: AtomicU64,
    /// HTTP/2 streams reset because their client took no response data for the write
    /// timeout (a zero flow-control window).
    pub http2_streams_stalled: AtomicU64,
}

/// Escapes a Prometheus label value.
pub fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) fn render_router(out: &mut String, m: &RouterMetrics) {
    let mut line = |code: &dyn std::fmt::Display, n: &AtomicU64| {
        let n = n.load(Relaxed);
        if n > 0 {
            let _ = writeln!(
                out,
                "zeitwork_requests_total{{{},code=\"{code}\"}} {n}",
                m.labels
            );
        }
    };
    for (code, n) in CODES.iter().zip(&m.by_code) {
        line(code, n);
    }
    for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(&m.by_class) {
        line(class, n);
    }
    m.latency
        .render(out, "zeitwork_request_duration_seconds", &m.labels);
}

pub(crate) fn render_backend(out: &mut String, backend: &str, m: &BackendMetrics) {
    let l = format!("backend=\"{}\"", esc(backend));
    let connects = m.connects.load(Relaxed);
    let reuses = m.reuses.load(Relaxed);
    let _ = writeln!(
        out,
        "zeitwork_upstream_connections_opened_total{{{l}}} {connects}"
    );
    let _ = writeln!(
        out,
        "zeitwork_upstream_connections_reused_total{{{l}}} {reuses}"
    );
    if connects + reuses > 0 {
        let _ = writeln!(
            out,
            "zeitwork_upstream_pool_reuse_ratio{{{l}}} {:.4}",
            reuses as f64 / (connects + reuses) as f64
        );
    }
    let _ = writeln!(
        out,
        "zeitwork_upstream_connect_errors_total{{{l}}} {}",
        m.connect_errors.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "zeitwork_upstream_timeouts_total{{{l}}} {}",
        m.timeouts.load(Relaxed)
    );
}

pub(crate) fn render_edge(out: &mut String, m: &EdgeMetrics) {
    let pairs: [(&str, &str, &AtomicU64); 19] = [
        ("zeitwork_requests_no_route_total", "counter", &m.no_route),
        ("zeitwork_requests_bad_total", "counter", &m.bad_requests),
        ("zeitwork_requests_no_config_total", "counter", &m.no_config),
        (
            "zeitwork_config_applies_total",
            "counter",
            &m.config_applies,
        ),
        (
            "zeitwork_config_rejections_total",
            "counter",
            &m.config_rejections,
        ),
        ("zeitwork_config_version", "gauge", &m.config_version),
        (
            "zeitwork_config_last_apply_timestamp_seconds",
            "gauge",
            &m.config_applied_unix,
        ),
        (
            "zeitwork_access_log_dropped_total",
            "counter",
            &m.access_log_dropped,
        ),
        ("zeitwork_requests_in_flight", "gauge", &m.in_flight),
        ("zeitwork_request_panics_total", "counter", &m.panics),
        (
            "zeitwork_proxy_protocol_rejections_total",
            "counter",
            &m.proxy_protocol_rejections,
        ),
        (
            "zeitwork_connections_refused_total",
            "counter",
            &m.connections_refused,
        ),
        (
            "zeitwork_connections_idle_closed_total",
            "counter",
            &m.connections_idle_closed,
        ),
        ("zeitwork_connections_open", "gauge", &m.connections_open),
        (
            "zeitwork_tls_handshakes_total",
            "counter",
            &m.tls_handshakes,
        ),
        (
            "zeitwork_tls_handshake_failures_total",
            "counter",
            &m.tls_handshake_failures,
        ),
        (
            "zeitwork_connections_evicted_total",
            "counter",
            &m.connections_evicted,
        ),
        (
            "zeitwork_cross_region_loops_total",
            "counter",
            &m.cross_region_loops,
        ),
        (
            "zeitwork_http2_streams_stalled_total",
            "counter",
            &m.http2_streams_stalled,
        ),
    ];
    for (name, kind, v) in pairs {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {}", v.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(30));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 2\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{a=\"b\"} 3\n"));
    }

    #[test]
    fn common_codes_have_their_own_label_and_the_rest_their_class() {
        let m = RouterMetrics::new("web", "r", "s");
        m.record(200, Duration::from_millis(1));
        m.record(200, Duration::from_millis(1));
        m.record(206, Duration::from_millis(1));
        m.record(599, Duration::from_millis(1));
        let mut out = String::new();
        render_router(&mut out, &m);
        assert!(out.contains("zeitwork_requests_total{entrypoint=\"web\",router=\"r\",service=\"s\",code=\"200\"} 2\n"), "{out}");
        assert!(out.contains("code=\"2xx\"} 1\n"), "{out}");
        assert!(out.contains("code=\"5xx\"} 1\n"), "{out}");
        assert!(out.contains("zeitwork_request_duration_seconds_count{entrypoint=\"web\",router=\"r\",service=\"s\"} 4"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
