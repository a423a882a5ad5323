//! The admin listener: `/health`, `/metrics`, `/debug/backends`, and draining
//! (`POST /backends/drain?pool=P&backend=ADDR`, `POST /backends/undrain?…`).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::Shared;

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", metrics(&shared)),
        (&Method::GET, "/debug/backends") => {
            let views: Vec<_> = shared.pools.iter().flat_map(|p| p.views()).collect();
            (StatusCode::OK, "application/json", serde_json::to_string_pretty(&views).unwrap_or_default())
        }
        (&Method::POST, "/backends/drain") => drain(&shared, req.uri().query(), true),
        (&Method::POST, "/backends/undrain") => drain(&shared, req.uri().query(), false),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health, /metrics, /debug/backends, POST /backends/drain?pool=P&backend=ADDR\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}

/// What a drain or undrain request names: a backend, and optionally the pool it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainTarget {
    pub pool: Option<String>,
    pub backend: SocketAddr,
}

/// Decodes `pool=NAME&backend=IP:PORT` with form encoding (`%3A`, `%5B`, `+` decode; bytes
/// that are not UTF-8 become U+FFFD). A repeated key keeps its last value. The error is
/// the sentence the client gets back.
pub fn drain_target(query: Option<&str>) -> Result<DrainTarget, String> {
    const USAGE: &str = "give backend=IP:PORT (and pool=NAME to pick one pool)";
    let (mut pool, mut backend) = (None, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "pool" => pool = Some(v.into_owned()),
            "backend" => backend = Some(v.into_owned()),
            _ => {}
        }
    }
    let Some(text) = backend else {
        return Err(USAGE.into());
    };
    let backend = text
        .parse::<SocketAddr>()
        .map_err(|_| format!("backend {text:?} is not IP:PORT; {USAGE}"))?;
    Ok(DrainTarget { pool, backend })
}

fn drain(shared: &Shared, query: Option<&str>, on: bool) -> (StatusCode, &'static str, String) {
    let DrainTarget {
        pool,
        backend: addr,
    } = match drain_target(query) {
        Ok(t) => t,
        Err(e) => return (StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let mut found = 0;
    for p in shared
        .pools
        .iter()
        .filter(|p| pool.as_deref().is_none_or(|n| n == p.name))
    {
        if p.set_draining(addr, on) {
            found += 1;
        }
    }
    if found == 0 {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no backend {addr} in that pool\n"),
        )
    } else {
        (
            StatusCode::OK,
            "text/plain",
            format!(
                "{} {addr} in {found} pool(s)\n",
                if on { "draining" } else { "undrained" }
            ),
        )
    }
}

fn metrics(shared: &Shared) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let per_listener = |f: &dyn Fn(&crate::conn::Listener) -> u64| -> Vec<(String, u64)> {
        shared
            .listeners
            .iter()
            .map(|l| (format!("listener=\"{}\"", l.config.name), f(l)))
            .collect()
    };
    family(
        "zeitwork_l4_connections_active",
        "gauge",
        per_listener(&|l| l.active.load(Relaxed)),
    );
    family(
        "zeitwork_l4_connections_total",
        "counter",
        per_listener(&|l| l.total.load(Relaxed)),
    );
    family(
        "zeitwork_l4_connections_refused_total",
        "counter",
        per_listener(&|l| l.refused.load(Relaxed)),
    );
    family(
        "zeitwork_l4_connections_no_backend_total",
        "counter",
        per_listener(&|l| l.no_backend.load(Relaxed)),
    );
    family(
        "zeitwork_l4_connections_refused_per_client_total",
        "counter",
        per_listener(&|l| l.refused_per_client.load(Relaxed)),
    );
    family(
        "zeitwork_l4_connections_silent_closed_total",
        "counter",
        per_listener(&|l| l.silent_closed.load(Relaxed)),
    );
    family(
        "zeitwork_l4_accept_errors_total",
        "counter",
        per_listener(&|l| l.accept_errors.load(Relaxed)),
    );
    family(
        "zeitwork_l4_max_connections",
        "gauge",
        per_listener(&|l| l.max_connections),
    );
    let per_backend = |f: &dyn Fn(&crate::pool::Backend) -> u64| -> Vec<(String, u64)> {
        shared
            .pools
            .iter()
            .flat_map(|p| {
                p.backends()
                    .iter()
                    .map(|b| (format!("pool=\"{}\",backend=\"{}\"", p.name, b.addr), f(b)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    family(
        "zeitwork_l4_backend_up",
        "gauge",
        per_backend(&|b| u64::from(b.healthy())),
    );
    family(
        "zeitwork_l4_backend_draining",
        "gauge",
        per_backend(&|b| u64::from(b.draining())),
    );
    family(
        "zeitwork_l4_backend_connections_active",
        "gauge",
        per_backend(&|b| b.active.load(Relaxed)),
    );
    family(
        "zeitwork_l4_backend_connections_total",
        "counter",
        per_backend(&|b| b.total.load(Relaxed)),
    );
    family(
        "zeitwork_l4_backend_connect_errors_total",
        "counter",
        per_backend(&|b| b.connect_errors.load(Relaxed)),
    );
    family(
        "zeitwork_l4_backend_bytes_sent_total",
        "counter",
        per_backend(&|b| b.bytes_to.load(Relaxed)),
    );
    family(
        "zeitwork_l4_backend_bytes_received_total",
        "counter",
        per_backend(&|b| b.bytes_from.load(Relaxed)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn drain_queries_decode() {
        let t = drain_target(Some("pool=web&backend=127.0.0.1%3A8080")).unwrap();
        assert_eq!(t.pool.as_deref(), Some("web"));
        assert_eq!(t.backend, "127.0.0.1:8080".parse().unwrap());
        // IPv6 needs brackets, which clients percent-encode
        let t = drain_target(Some("backend=%5B%3A%3A1%5D%3A80")).unwrap();
        assert_eq!(t.backend, "[::1]:80".parse().unwrap());
        assert_eq!(t.pool, None);
        assert!(drain_target(None).is_err());
        assert!(drain_target(Some("pool=web")).is_err());
        let e = drain_target(Some("backend=%FF%FE")).unwrap_err();
        assert!(e.contains("not IP:PORT"), "{e}");
    }

    proptest! {
        #[test]
        fn any_backend_round_trips(
            ip in any::<std::net::IpAddr>(),
            port in any::<u16>(),
            pool in proptest::option::of("\\PC{0,12}"),
            noise in "[a-z&=%0-9A-F]{0,16}",
        ) {
            let addr = SocketAddr::new(ip, port);
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(p) = &pool {
                q.append_pair("pool", p);
            }
            q.append_pair("backend", &addr.to_string());
            let query = format!("{noise}&{}", q.finish());
            let t = drain_target(Some(&query)).unwrap();
            prop_assert_eq!(t.backend, addr);
            if pool.is_some() {
                prop_assert_eq!(t.pool, pool);
            }
        }

        #[test]
        fn no_query_panics(q in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = String::from_utf8_lossy(&q);
            let _ = drain_target(Some(&text));
        }
    }
}
