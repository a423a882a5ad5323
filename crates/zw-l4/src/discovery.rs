//! Backends from the operator: `GET /api/v1/edge-proxies` (with a join token), polled
//! every interval. An edge marked draining there is drained here; an edge that left the
//! list is drained, not cut. A failed poll keeps the current set.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use zw_proto::api::{EdgeProxy, EdgeState, Page};

use crate::config::Discover;
use crate::pool::{Pool, Wanted};

pub(crate) async fn run(
    pool: Arc<Pool>,
    d: Discover,
    token: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        match fetch(&d, &token).await {
            Ok(list) => {
                if failing {
                    tracing::info!(pool = %pool.name, "discovery works again");
                    failing = false;
                }
                pool.set_backends(&list);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(pool = %pool.name, error = %e, "discovery failed; keeping the current backends");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(d.interval.0) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The edges to balance over.
pub async fn fetch(d: &Discover, token: &str) -> Result<Vec<Wanted>, String> {
    let authority = d
        .operator
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let auth = format!("Bearer {token}");
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let mut path = String::from("/api/v1/edge-proxies?limit=500");
        if let Some(r) = &d.region {
            path.push_str(&format!("&region={r}"));
        }
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, body) = zw_http::get(
            authority,
            &path,
            &[("authorization", &auth)],
            std::time::Duration::from_secs(5),
            8 << 20,
        )
        .await
        .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!(
                "operator answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        let page: Page<EdgeProxy> =
            serde_json::from_slice(&body).map_err(|e| format!("unreadable edge list: {e}"))?;
        for e in &page.items {
            match resolve(&e.address).await {
                Some(addr) => out.push(Wanted {
                    addr,
                    draining: e.state == EdgeState::Draining,
                    health_addr: match &e.admin_address {
                        Some(a) => resolve(a).await,
                        None => None,
                    },
                }),
                None => {
                    tracing::warn!(edge = %e.id, address = %e.address, "edge address does not resolve; skipped")
                }
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
    Err("edge list longer than 50000 entries".into())
}

async fn resolve(hostport: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(hostport)
        .await
        .ok()
        .and_then(|mut a| a.next())
}
