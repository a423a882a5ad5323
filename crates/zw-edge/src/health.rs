//! Active health checks.
//!
//! One task per (service, server) with a `healthCheck`: it sends the configured request
//! every `interval` on a fresh connection, bounded by `timeout`, and flips the server's
//! health after `unhealthyThreshold` consecutive failures or `healthyThreshold`
//! consecutive successes. Reloads keep a task (and the server's health) when its settings
//! are unchanged; a server whose check is removed is considered up again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::balance::ServerState;

/// What a check does, resolved from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub method: Method,
    pub status: Option<u16>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub rise: u32,
    pub fall: u32,
}

impl HealthSpec {
    /// The check a service's `healthCheck` describes, with the method and headers as
    /// validation parsed them.
    pub fn from_config(c: &zw_config::HealthCheck, parsed: &zw_config::ParsedHealthCheck) -> Self {
        HealthSpec {
            path: c.path.clone(),
            interval: c.interval.map_or(Duration::from_secs(30), |d| d.0),
            timeout: c.timeout.map_or(Duration::from_secs(5), |d| d.0),
            host: c.hostname.clone(),
            port: c.port,
            method: parsed.method.clone(),
            status: c.status,
            headers: parsed.headers.clone(),
            rise: c.healthy_threshold.unwrap_or(1).max(1),
            fall: c.unhealthy_threshold.unwrap_or(1).max(1),
        }
    }
}

/// The running checks, keyed by (service, server URL).
#[derive(Debug, Default)]
pub struct Supervisor {
    running: HashMap<(String, String), (HealthSpec, AbortHandle)>,
}

impl Supervisor {
    /// Starts, restarts and stops checks so that exactly `desired` run.
    pub fn reconcile(
        &mut self,
        desired: Vec<((String, String), Arc<ServerState>, HealthSpec)>,
        all_servers: &HashMap<(String, String), Arc<ServerState>>,
    ) {
        let mut keep = HashMap::with_capacity(desired.len());
        for (key, state, spec) in desired {
            match self.running.remove(&key) {
                Some((old, handle)) if old == spec => {
                    keep.insert(key, (old, handle));
                }
                previous => {
                    if let Some((_, h)) = previous {
                        h.abort();
                    }
                    let handle = tokio::spawn(run(key.clone(), state, spec.clone())).abort_handle();
                    keep.insert(key, (spec, handle));
                }
            }
        }
        for (key, (_, handle)) in self.running.drain() {
            handle.abort();
            tracing::debug!(service = %key.0, server = %key.1, "health check stopped");
        }
        self.running = keep;
        // Servers without a check take traffic.
        for (key, s) in all_servers {
            if !self.running.contains_key(key) && !s.set_healthy(true) {
                tracing::info!(service = %key.0, server = %key.1, "server has no health check any more; taking traffic");
            }
        }
    }

    pub fn stop_all(&mut self) {
        for (_, (_, h)) in self.running.drain() {
            h.abort();
        }
    }
}

async fn run(key: (String, String), state: Arc<ServerState>, spec: HealthSpec) {
    let mut rise_fall = zw_proto::health::RiseFall::new(spec.rise, spec.fall);
    loop {
        let result = match tokio::time::timeout(spec.timeout, check_once(&state, &spec)).await {
            Ok(r) => r,
            Err(_) => Err(crate::Error::HealthCheck {
                step: "answer",
                detail: format!("none within {:?}", spec.timeout),
            }),
        };
        let now = std::time::Instant::now();
        match rise_fall.observe(result.is_ok(), state.is_healthy(), now) {
            Some(true) => {
                state.set_healthy(true);
                tracing::info!(service = %key.0, server = %key.1, "server is healthy again; taking traffic");
            }
            Some(false) => {
                state.set_healthy(false);
                let reason = result.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(service = %key.0, server = %key.1, %reason, "server failed its health check; no traffic until it recovers");
            }
            None => {}
        }
        tokio::time::sleep(spec.interval).await;
    }
}

async fn check_once(state: &ServerState, spec: &HealthSpec) -> Result<(), crate::Error> {
    let failed = |step: &'static str, e: &dyn std::fmt::Display| crate::Error::HealthCheck {
        step,
        detail: e.to_string(),
    };
    let port = spec.port.unwrap_or(state.url.port);
    let host = &state.url.host;
    let stream = if state.url.scheme == zw_config::UpstreamScheme::Https {
        // A worker ingress: the same mutual TLS as requests (its own port only).
        state
            .backend
            .connect(spec.timeout)
            .await
            .map_err(|e| failed("connect", &e))?
    } else {
        let tcp = if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            TcpStream::connect((ip, port)).await
        } else {
            TcpStream::connect((host.as_str(), port)).await
        }
        .map_err(|e| failed("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        crate::pool::Stream::Tcp(tcp)
    };
    let (mut tx, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| failed("handshake", &e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host_header = spec
        .host
        .clone()
        .unwrap_or_else(|| state.url.authority.clone());
    let mut req = Request::builder()
        .method(spec.method.clone())
        .uri(spec.path.as_str())
        .header(http::header::HOST, host_header);
    if let Some(instance) = &state.instance {
        req = req.header(zw_proto::INSTANCE_HEADER, instance.clone());
    }
    for (k, v) in &spec.headers {
        req = req.header(k, v);
    }
    let req = req.body(Empty::new()).map_err(|e| failed("request", &e))?;
    let resp = tx
        .send_request(req)
        .await
        .map_err(|e| failed("request", &e))?;
    let status = resp.status().as_u16();
    let ok = match spec.status {
        Some(want) => status == want,
        None => (200..400).contains(&status),
    };
    if ok {
        Ok(())
    } else {
        Err(crate::Error::HealthCheck {
            step: "status",
            detail: status.to_string(),
        })
    }
}
