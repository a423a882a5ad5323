//! The admin listener: `/health`, `/ready`, `/metrics`, `/debug/config`.
//!
//! Separate from the traffic entry points so that it can listen on loopback only.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::metrics::{esc, render_backend, render_edge, render_router};
use crate::Shared;

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET" | "HEAD", "/health") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        ("GET" | "HEAD", "/ready") => {
            if shared.config.current.load().is_some() && !shared.conns.draining.load(Relaxed) {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            } else if shared.conns.draining.load(Relaxed) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".to_string(),
                )
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no configuration loaded\n".to_string(),
                )
            }
        }
        ("GET", "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render_metrics(&shared),
        ),
        ("GET", "/debug/config") => {
            let status = shared.status();
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&status).unwrap_or_default() + "\n",
            )
        }
        (_, "/health" | "/ready" | "/metrics" | "/debug/config") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health, /ready, /metrics or /debug/config\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(resp)
}

fn render_metrics(shared: &Shared) -> String {
    let mut out = String::with_capacity(64 * 1024);
    render_edge(&mut out, &shared.metrics);
    if let Some(acme) = &shared.settings.acme {
        let _ = writeln!(
            out,
            "# TYPE zeitwork_acme_orders_total counter\nzeitwork_acme_orders_total {}\n# TYPE zeitwork_acme_order_failures_total counter\nzeitwork_acme_order_failures_total {}\n# TYPE zeitwork_acme_certificates gauge\nzeitwork_acme_certificates {}",
            acme.orders(),
            acme.failures(),
            acme.certificates().len()
        );
    }
    let reg = shared
        .config
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    out.push_str("# TYPE zeitwork_requests_total counter\n# TYPE zeitwork_request_duration_seconds histogram\n");
    for m in reg.routers.values() {
        render_router(&mut out, m);
    }
    out.push_str("# TYPE zeitwork_upstream_connections_opened_total counter\n# TYPE zeitwork_upstream_connections_reused_total counter\n");
    out.push_str("# TYPE zeitwork_upstream_pool_reuse_ratio gauge\n# TYPE zeitwork_upstream_connect_errors_total counter\n");
    out.push_str("# TYPE zeitwork_upstream_timeouts_total counter\n");
    for b in reg.backends.values() {
        render_backend(&mut out, &b.label, &b.metrics);
    }
    out.push_str("# TYPE zeitwork_ratelimit_sources gauge\n# TYPE zeitwork_ratelimit_evictions_total counter\n");
    out.push_str("# TYPE zeitwork_ratelimit_redis_errors_total counter\n# TYPE zeitwork_ratelimit_redis_fallbacks_total counter\n");
    for ((name, _), b) in &reg.kept {
        if let Some(r) = b.downcast_ref::<crate::middleware::redis_bucket::RedisBuckets>() {
            // each failure: one request counted on the edge's own buckets (or refused
            // with failClosed), and Redis left alone for a second
            let _ = writeln!(
                out,
                "zeitwork_ratelimit_redis_errors_total{{middleware=\"{0}\"}} {1}\nzeitwork_ratelimit_redis_fallbacks_total{{middleware=\"{0}\"}} {2}",
                esc(name),
                r.errors.load(std::sync::atomic::Ordering::Relaxed),
                r.fallbacks.load(std::sync::atomic::Ordering::Relaxed)
            );
            continue;
        }
        let Some(b) = b.downcast_ref::<crate::middleware::rate_limit::Buckets>() else {
            continue;
        };
        let _ = writeln!(
            out,
            "zeitwork_ratelimit_sources{{middleware=\"{0}\"}} {1}\nzeitwork_ratelimit_evictions_total{{middleware=\"{0}\"}} {2}",
            esc(name),
            b.len(),
            b.evictions.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    out.push_str("# TYPE zeitwork_server_up gauge\n");
    for ((svc, url), s) in &reg.servers {
        let _ = writeln!(
            out,
            "zeitwork_server_up{{service=\"{}\",server=\"{}\"}} {}",
            esc(svc),
            esc(url),
            u8::from(s.is_healthy())
        );
    }
    out
}
