//! The agent's admin endpoint (plain HTTP; keep it on loopback): `/health`, `/metrics`
//! (Prometheus text) and `/debug/instances` (JSON: every instance, its state, the reason
//! of its last failure, and where it answers).

use std::convert::Infallible;
use std::fmt::Write;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use zw_proto::api::InstanceState;

use crate::supervise::Supervisor;

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn metrics(s: &Supervisor) -> String {
    let reports = s.reports();
    let mut out = String::from(
        "# HELP zeitwork_agent_instances Instances on this node, by state.\n# TYPE zeitwork_agent_instances gauge\n",
    );
    for state in InstanceState::ALL {
        let n = reports.iter().filter(|r| r.state == *state).count();
        let _ = writeln!(out, "zeitwork_agent_instances{{state=\"{state}\"}} {n}");
    }
    let _ = write!(
        out,
        "# HELP zeitwork_agent_instance_failures_total Instances that failed after starting.\n# TYPE zeitwork_agent_instance_failures_total counter\nzeitwork_agent_instance_failures_total {}\n",
        s.failures()
    );
    out
}

fn instances(s: &Supervisor) -> String {
    let addrs = s.addresses();
    let list: Vec<serde_json::Value> = s
        .reports()
        .into_iter()
        .map(|r| {
            let addr = addrs.get(&r.id).copied().flatten().map(|a| a.to_string());
            serde_json::json!({ "id": r.id, "state": r.state, "reason": r.reason, "address": addr })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

pub async fn serve(listener: TcpListener, supervisor: Supervisor, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let s = supervisor.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        Ok::<_, Infallible>(match req.uri().path() {
                            "/health" => answer(StatusCode::OK, "text/plain", "ok\n".into()),
                            "/metrics" => {
                                answer(StatusCode::OK, "text/plain; version=0.0.4", metrics(&s))
                            }
                            "/debug/instances" => {
                                answer(StatusCode::OK, "application/json", instances(&s))
                            }
                            _ => answer(
                                StatusCode::NOT_FOUND,
                                "text/plain",
                                "not found: try /health, /metrics or /debug/instances\n".into(),
                            ),
                        })
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
