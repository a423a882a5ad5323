//! An instance's health check, from the node: a TCP connect to its port, or an HTTP GET
//! of the deployment's path answered with 2xx or 3xx. Only an instance that passes counts
//! as started (routable).

use std::time::Duration;

use zw_proto::api::HealthCheckSpec;

/// `http_only`: a TCP connect proves nothing (a VM's forwarded port accepts before the
/// app inside listens), so without a path the check is any HTTP answer to `GET /`.
pub async fn check(
    addr: std::net::SocketAddr,
    spec: &HealthCheckSpec,
    timeout: Duration,
    http_only: bool,
) -> Result<(), crate::Error> {
    let addr = addr.to_string();
    let unhealthy = |check: String, detail: String| crate::Error::Unhealthy { check, detail };
    match &spec.path {
        None if http_only => zw_http::get(&addr, "/", &[], timeout, 64 << 10)
            .await
            .map(|_| ())
            .map_err(|e| unhealthy("GET /".into(), e.to_string())),
        None => match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unhealthy(format!("connect to {addr}"), e.to_string())),
            Err(_) => Err(unhealthy(
                format!("connect to {addr}"),
                format!("no answer within {timeout:?}"),
            )),
        },
        Some(path) => {
            let (status, _) = zw_http::get(&addr, path, &[], timeout, 64 << 10)
                .await
                .map_err(|e| unhealthy(format!("GET {path}"), e.to_string()))?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(unhealthy(format!("GET {path}"), format!("status {status}")))
            }
        }
    }
}
