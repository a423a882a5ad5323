//! Active health checks: a TCP connect, or an HTTP GET answered with a 2xx (an edge's
//! `/ready`), every interval; `rise` successes bring a backend in, `fall` failures take it
//! out. State changes are logged and exported (`zeitwork_l4_backend_up`).

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

use crate::config::{HealthConfig, HealthKind};
use crate::pool::Pool;

pub(crate) async fn run(pool: Arc<Pool>, mut stop: watch::Receiver<bool>) {
    let h = pool.config.health.clone();
    loop {
        let mut checks = tokio::task::JoinSet::new();
        for b in pool.backends().iter() {
            let (b, h) = (b.clone(), h.clone());
            let local = pool
                .speaks_proxy_protocol
                .load(std::sync::atomic::Ordering::Relaxed);
            checks.spawn(async move {
                let ok = check(b.addr, b.health_addr(), &h, local).await;
                (b, ok)
            });
        }
        while let Some(Ok((b, ok))) = checks.join_next().await {
            let verdict = b
                .rise_fall
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| zw_proto::health::RiseFall::new(h.rise, h.fall))
                .observe(ok, b.healthy(), std::time::Instant::now());
            if let Some(healthy) = verdict {
                pool.set_healthy(&b, healthy);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(h.interval.0) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One check of one backend; `proxy_local` opens TCP checks with a PROXY v2 `LOCAL` header.
///
/// HTTP checks go to the pool's `port` on the backend's IP, else to the address the
/// backend reported for them (a discovered edge's admin address), else to the backend.
pub async fn check(
    addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    h: &HealthConfig,
    proxy_local: bool,
) -> bool {
    let target = match (h.port, health_addr, h.kind) {
        (Some(port), _, _) => SocketAddr::new(addr.ip(), port),
        (None, Some(a), HealthKind::Http) => a,
        _ => addr,
    };
    match h.kind {
        HealthKind::Tcp => {
            let probe = async {
                let mut s = tokio::net::TcpStream::connect(target).await?;
                if proxy_local {
                    let local = zw_proxy_protocol::encode_v2_local();
                    tokio::io::AsyncWriteExt::write_all(&mut s, &local).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            matches!(tokio::time::timeout(h.timeout.0, probe).await, Ok(Ok(())))
        }
        HealthKind::Http => {
            let r = zw_http::get(
                &target.to_string(),
                &h.path,
                &[("user-agent", "zeitwork-balancer-health")],
                h.timeout.0,
                64 * 1024,
            )
            .await;
            matches!(r, Ok((s, _)) if (200..300).contains(&s))
        }
    }
}
