//! Test helpers: real upstream servers on 127.0.0.1:0, an edge on port 0 fed from a
//! watched configuration file, and a small HTTP client. Everything is real sockets.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::Edge;

/// An upstream HTTP server (HTTP/1.1 and h2c) that answers with what it received.
///
/// * `/health` — 200, or 503 after `set_healthy(false)`;
/// * `/slow/<ms>` — answers after that many milliseconds;
/// * `/status/<code>` — answers with that status;
/// * `/ws` with `Upgrade` — switches protocols and echoes bytes;
/// * `/echo` — answers with the request body;
/// * `/bytes/<n>` — answers with `n` bytes (`0123456789` repeated), streamed in chunks;
/// * anything else — 200 with a JSON body: upstream name, method, path, query, version,
///   headers; and an `X-Upstream` response header.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(name, listener)
    }

    /// Serves on an existing listener (to restart an upstream on the same port).
    pub fn serve(name: &str, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().expect("addr");
        let healthy = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicU64::new(0));
        let (h, n, c) = (healthy.clone(), name.to_string(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, n, c) = (h.clone(), n.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, n.clone(), h.clone(), c.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            healthy,
            hits,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn h2c_url(&self) -> String {
        format!("h2c://{}", self.addr)
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, SeqCst);
    }

    /// Requests served, not counting `/health`.
    pub fn hits(&self) -> u64 {
        self.hits.load(SeqCst)
    }
}

async fn answer(
    mut req: Request<Incoming>,
    name: String,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let status = if healthy.load(SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"health")))
            .unwrap_or_default());
    }
    hits.fetch_add(1, SeqCst);
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|m| m.split('/').next())
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/ws" && req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default());
    }
    if path == "/echo" {
        // How the body came (a length, chunks), for tests of what the edge forwards.
        let framing = |h: http::header::HeaderName| {
            req.headers()
                .get(&h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string()
        };
        let length = framing(http::header::CONTENT_LENGTH);
        let chunked = framing(http::header::TRANSFER_ENCODING);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::from_static(b"body error"),
        };
        return Ok(Response::builder()
            .header("x-upstream", name.as_str())
            .header("x-echo-content-length", length)
            .header("x-echo-transfer-encoding", chunked)
            .body(Full::new(body))
            .unwrap_or_default());
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let body: Vec<u8> = (0..n).map(|i| b'0' + (i % 10) as u8).collect();
        return Ok(Response::builder()
            .header("x-upstream", name.as_str())
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default());
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        let e: &mut String = headers.entry(k.as_str().to_string()).or_default();
        if !e.is_empty() {
            e.push_str(", ");
        }
        e.push_str(v.to_str().unwrap_or("?"));
    }
    let body = serde_json::json!({
        "upstream": name,
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Ok(Response::builder()
        .status(status)
        .header("x-upstream", name.as_str())
        .header("connection", "x-hop")
        .header("x-hop", "must not reach the client")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default())
}

/// The smallest useful configuration: router `r` with `rule`, to service `s`, whose only
/// server is `url`.
pub fn one_route(rule: &str, url: &str) -> String {
    format!(
        "http:\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{url}\"}}]}}}}\n  routers:\n    r: {{rule: {rule:?}, service: s}}\n"
    )
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `upstream` field of an echo body (or the status, for local answers).
    pub fn upstream(&self) -> String {
        self.header("x-upstream")
            .map_or_else(|| format!("status {}", self.status), str::to_string)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A keep-alive HTTP/1.1 (or h2c prior knowledge) client connection.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    pub async fn h1(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Client::H1(tx))
    }

    pub async fn h2(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client::H2(tx))
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, hyper::Error> {
        let resp = match self {
            Client::H1(tx) => {
                tx.ready().await?;
                tx.send_request(req).await?
            }
            Client::H2(tx) => tx.send_request(req).await?,
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Resp, hyper::Error> {
        let req = match self {
            Client::H1(_) => Request::get(path).header("host", host),
            Client::H2(_) => Request::get(format!("http://{host}{path}")),
        };
        // a test that builds a bad request is a broken test: say so rather than send
        // a default request that hides the mistake
        let req = req
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|e| panic!("test request {host} {path:?} is malformed: {e}"));
        self.send(req).await
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    let mut c = Client::h1(addr).await.expect("connect to edge");
    c.get(host, path).await.expect("request")
}

/// An edge on 127.0.0.1:0 serving a configuration file it watches every 20 ms.
pub struct TestEdge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub edge: Edge,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    watch_stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestEdge {
    /// Starts an edge on `config` (YAML). Panics when the configuration is invalid.
    pub async fn start(config: &str) -> TestEdge {
        Self::start_with(config, Duration::from_secs(5)).await
    }

    pub async fn start_with(config: &str, drain: Duration) -> TestEdge {
        Self::start_built(config, drain, Edge::builder(vec!["web".into()])).await
    }

    /// Starts an edge whose entry point expects PROXY protocol headers from `trusted`
    /// (comma-separated CIDRs).
    pub async fn start_behind_balancer(config: &str, trusted: &str) -> TestEdge {
        let nets = trusted
            .split(',')
            .map(|n| n.parse().expect("CIDR"))
            .collect();
        let builder = Edge::builder(vec!["web".into()])
            .proxy_protocol("web", nets)
            .expect("entry point web");
        Self::start_built(config, Duration::from_secs(5), builder).await
    }

    /// Starts an edge that writes its JSON access log to `access_log`.
    pub async fn start_with_access_log(config: &str, access_log: &std::path::Path) -> TestEdge {
        let log = crate::AccessLog::start(&crate::AccessLogTarget::File(access_log.to_path_buf()))
            .expect("open access log");
        let builder = Edge::builder(vec!["web".into()]).access_log(Some(log));
        Self::start_built(config, Duration::from_secs(5), builder).await
    }

    /// Starts the edge `builder` makes (its one entry point named `web`).
    pub async fn start_built(
        config: &str,
        drain: Duration,
        builder: crate::EdgeBuilder,
    ) -> TestEdge {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("dynamic.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let edge = builder.build();
        let limits = zw_config::Limits::default();
        let mut provider = crate::FileProvider::new(config_path.clone(), limits);
        if let Err(e) = provider.load_into(&edge) {
            panic!("test configuration is invalid:\n{e}");
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (addr, admin_addr) = (
            listener.local_addr().expect("addr"),
            admin.local_addr().expect("addr"),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (watch_tx, watch_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(provider.watch(edge.clone(), Duration::from_millis(20), watch_rx));
        let e2 = edge.clone();
        let task = tokio::spawn(async move {
            e2.serve(
                vec![listener],
                Some(admin),
                async {
                    let _ = stop_rx.await;
                },
                drain,
            )
            .await;
        });
        TestEdge {
            addr,
            admin: admin_addr,
            edge,
            config_path,
            _dir: dir,
            stop: Some(stop_tx),
            watch_stop: watch_tx,
            task: Some(task),
        }
    }

    /// Rewrites the configuration file atomically (temp file + rename, like editors and
    /// config management tools do).
    pub fn write_config(&self, config: &str) {
        let tmp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, config).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// Waits (up to 5 s) until the edge runs a version above `after`; returns it.
    pub async fn wait_version_above(&self, after: u64) -> u64 {
        for _ in 0..500 {
            let v = self.edge.status().version;
            if v > after {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "configuration was not applied within 5 s: {:?}",
            self.edge.status()
        );
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        get(self.admin, "admin", path).await
    }

    /// Stops accepting and drains; returns when the edge has stopped.
    pub async fn shutdown(mut self) {
        let _ = self.watch_stop.send(true);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Sends the stop signal without waiting (to test draining).
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        let _ = self.watch_stop.send(true);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().unwrap_or_else(|| tokio::spawn(async {}))
    }
}
