//! The record of one request (the request path's logging phase): made when the request
//! arrives, filled in by the phases, written when the response body is done.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request};
use hyper::body::Incoming;

use crate::balance::InFlight;
use crate::metrics::RouterMetrics;
use crate::Shared;

/// One request/response exchange, recorded when it ends (its drop, when the response body
/// has been sent or abandoned): latency and status metrics, the in-flight gauges, the
/// access log line. This is the logging phase.
pub(crate) struct Exchange {
    pub(crate) shared: Arc<Shared>,
    pub(crate) start: Instant,
    pub(crate) status: u16,
    pub bytes: u64,
    pub body_error: bool,
    pub(crate) router: Option<Arc<RouterMetrics>>,
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) log: Option<Box<LogFields>>,
    /// What middlewares keep until the response is done (in-flight counts).
    pub(crate) held: Vec<Box<dyn std::any::Any + Send>>,
}

pub(crate) struct LogFields {
    request_id: HeaderValue,
    client_ip: IpAddr,
    method: Method,
    host: HeaderValue,
    path: String,
    pub(crate) router: Option<Box<str>>,
    pub(crate) service: Option<Box<str>>,
    pub(crate) upstream: Option<String>,
}

impl Exchange {
    /// Starts the record of one request: its clock, the in-flight gauge, and (with an
    /// access log) the fields the log line takes from the request as it arrived.
    pub(crate) fn begin(
        shared: Arc<Shared>,
        client_ip: IpAddr,
        request_id: &HeaderValue,
        host: &HeaderValue,
        req: &Request<Incoming>,
    ) -> Exchange {
        shared.metrics.in_flight.fetch_add(1, Relaxed);
        let log = shared.settings.access_log.is_some().then(|| {
            Box::new(LogFields {
                request_id: request_id.clone(),
                client_ip,
                method: req.method().clone(),
                host: host.clone(),
                path: req.uri().path().to_string(),
                router: None,
                service: None,
                upstream: None,
            })
        });
        Exchange {
            shared,
            start: Instant::now(),
            status: 0,
            bytes: 0,
            body_error: false,
            router: None,
            in_flight: None,
            log,
            held: Vec::new(),
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if let Some(m) = &self.router {
            m.record(self.status, elapsed);
        }
        self.shared.metrics.in_flight.fetch_sub(1, Relaxed);
        if let (Some(log), Some(sink)) = (self.log.take(), &self.shared.settings.access_log) {
            let time = zw_proto::time::rfc3339_now();
            // Fields in the order serde_json's maps had them (sorted), so lines read as before.
            let line = Line {
                body_error: self.body_error,
                bytes: self.bytes,
                client_ip: log.client_ip,
                duration_ms: (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                host: log.host.to_str().unwrap_or(""),
                method: log.method.as_str(),
                path: &log.path,
                request_id: log.request_id.to_str().unwrap_or(""),
                router: log.router.as_deref(),
                service: log.service.as_deref(),
                status: self.status,
                time: &time,
                upstream: log.upstream.as_deref(),
            };
            let mut buf = Vec::with_capacity(384);
            let sent = serde_json::to_writer(&mut buf, &line).is_ok() && sink.send(buf);
            if !sent {
                self.shared.metrics.access_log_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// One access log line, serialized straight into its buffer (no `serde_json::Value`).
#[derive(serde::Serialize)]
struct Line<'a> {
    body_error: bool,
    bytes: u64,
    client_ip: IpAddr,
    duration_ms: f64,
    host: &'a str,
    method: &'a str,
    path: &'a str,
    request_id: &'a str,
    router: Option<&'a str>,
    service: Option<&'a str>,
    status: u16,
    time: &'a str,
    upstream: Option<&'a str>,
}
