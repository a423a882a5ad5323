//! Helpers for the platform tests: `zeitwork` child processes with JSON logs, and a tiny
//! blocking HTTP/1.1 client for the operator's API and the edges' admin endpoints.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub mod acme;
pub mod platform;

pub const BIN: &str = env!("CARGO_BIN_EXE_zeitwork");

/// A tool the end-to-end tests need. In CI a missing tool fails the test (CI installs it);
/// elsewhere the test says what is missing and skips.
pub fn tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is required in CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {name} is not installed");
    }
    found
}

/// An upstream HTTP server (see `zw_edge::testkit::Upstream`) on its own runtime, which
/// must live as long as the server.
pub fn upstream(name: &str) -> (tokio::runtime::Runtime, zw_edge::testkit::Upstream) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(zw_edge::testkit::Upstream::start(name));
    (rt, up)
}

/// A `zeitwork` child process whose JSON log lines are collected as they come.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[String]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Proc::spawn_command(name, cmd)
    }

    /// `cmd` (which runs `zeitwork`, perhaps under a wrapper such as `prlimit`), with JSON
    /// logs captured.
    pub fn spawn_command(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .args(["--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zeitwork");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines,
        }
    }

    /// The first log line (from the start) that satisfies `pred`, waiting up to `limit`.
    pub fn wait_log(&self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no such log line within {limit:?}; log:\n{}",
                    self.name,
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logs(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    pub fn dump(&self) -> String {
        self.logs()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `addr` of the first log line whose message starts with `prefix`.
    pub fn addr(&self, prefix: &str) -> SocketAddr {
        let v = self.wait_log(Duration::from_secs(15), |v| {
            message(v).starts_with(prefix) && v["fields"]["addr"].is_string()
        });
        v["fields"]["addr"].as_str().unwrap().parse().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or("")
}

/// An operator on a fixed port (so a restart comes back at the same address).
pub struct Operator {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub token: String,
}

impl Operator {
    pub fn start(data_dir: &Path, port: u16, database_url: Option<&str>) -> Operator {
        Self::spawn(data_dir, port, database_url, None)
    }

    /// A second operator on the same database: the admin token is the first one's, and
    /// so is the key that seals the stored CA (given as a file, as an operator would be).
    pub fn start_replica(
        data_dir: &Path,
        port: u16,
        database_url: &str,
        first: &Operator,
    ) -> Operator {
        Self::start_replica_with(data_dir, port, database_url, first, &[])
    }

    /// [`Operator::start_replica`] with these extra arguments.
    pub fn start_replica_with(
        data_dir: &Path,
        port: u16,
        database_url: &str,
        first: &Operator,
        extra: &[&str],
    ) -> Operator {
        let key = first.data_dir.join("secret-key");
        let mut args = vec!["--secret-key-file", key.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::spawn_with(
            data_dir,
            port,
            Some(database_url),
            Some(&first.token),
            &args,
        )
    }

    /// An operator on `database_url` (the embedded store when `None`) with these extra
    /// arguments.
    pub fn start_with(
        data_dir: &Path,
        port: u16,
        database_url: Option<&str>,
        extra: &[&str],
    ) -> Operator {
        Self::spawn_with(data_dir, port, database_url, None, extra)
    }

    fn spawn(
        data_dir: &Path,
        port: u16,
        database_url: Option<&str>,
        token: Option<&str>,
    ) -> Operator {
        Self::spawn_with(data_dir, port, database_url, token, &[])
    }

    fn spawn_with(
        data_dir: &Path,
        port: u16,
        database_url: Option<&str>,
        token: Option<&str>,
        extra: &[&str],
    ) -> Operator {
        let mut args: Vec<String> = vec![
            "operator".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
            // Domains are checked through the regions' balancers (on loopback), never by
            // asking DNS for a test name.
            "--domain-check".into(),
            "balancer".into(),
        ];
        if let Some(u) = database_url {
            args.extend(["--database-url".into(), u.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let proc = Proc::spawn("operator", &args);
        let addr = proc.addr("operator API listening");
        let token = match token {
            Some(t) => t.to_string(),
            None => std::fs::read_to_string(data_dir.join("admin-token"))
                .expect("admin token file")
                .trim()
                .to_string(),
        };
        Operator {
            proc,
            addr,
            data_dir: data_dir.to_path_buf(),
            token,
        }
    }

    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        api_call(self.addr, &self.token, method, path, body)
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.api(method, path, body);
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    pub fn edges(&self) -> Vec<Value> {
        self.ok("GET", "/api/v1/edge-proxies", None)["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn snapshot_version(&self, region: &str) -> Option<u64> {
        let (s, v) = self.api("GET", &format!("/api/v1/snapshots/{region}"), None);
        (s == 200).then(|| v["version"].as_u64()).flatten()
    }
}

/// One call to the operator's API: status and JSON body (or the body as a string).
pub fn api_call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, b) = http(
        addr,
        method,
        path,
        body.map(|b| b.to_string()),
        Some(token),
        &[],
    );
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

/// A port free now (bound then released), for processes that must keep theirs across a
/// restart.
/// A port no one listens on, for a child process to bind. Picked below the kernel's
/// ephemeral range: a port from `bind(0)` comes from that range, and the kernel may give
/// it to another test's outgoing connection as its source port before the child binds it
/// ("Address already in use"). Ports handed out by this process are not handed out again.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    if low > 12_000 {
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..1000 {
            // a random draw per call (RandomState is seeded randomly per process)
            let r = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                given.len(),
            );
            let port = 10_000 + (r % u64::from(low - 10_000)) as u16;
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An edge proxy on the control plane, HTTP and admin on port 0.
pub struct Edge {
    pub proc: Proc,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

impl Edge {
    /// An edge on the operator at `op`, in region `eu`, keeping its last-known-good in
    /// `state_dir`; reconnect backoff 0.5 s → 8 s.
    pub fn start(op: SocketAddr, token: &str, id: &str, state_dir: &Path, extra: &[&str]) -> Edge {
        let url = format!("ws://{op}");
        let state = state_dir.display().to_string();
        let mut args = vec![
            "--control-plane",
            &url,
            "--token",
            token,
            "--region",
            "eu",
            "--id",
            id,
            "--state-dir",
            &state,
            "--reconnect-min",
            "500ms",
            "--reconnect-max",
            "8s",
        ];
        args.extend_from_slice(extra);
        Edge::spawn(id, &args)
    }

    /// `zeitwork edge` with these source arguments, HTTP and admin on port 0.
    pub fn spawn(name: &str, source: &[&str]) -> Edge {
        let mut args: Vec<String> = vec!["edge".into()];
        args.extend(source.iter().map(|s| s.to_string()));
        args.extend(
            [
                "--http",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--workers",
                "1",
            ]
            .map(String::from),
        );
        let proc = Proc::spawn(name, &args);
        let http = proc.wait_log(Duration::from_secs(15), |v| {
            v["fields"]["entry_point"] == "web" && v["fields"]["addr"].is_string()
        });
        let http = http["fields"]["addr"].as_str().unwrap().parse().unwrap();
        let admin = proc.addr("admin listening");
        Edge { proc, http, admin }
    }

    pub fn status(&self) -> Value {
        let (_, b) = http(self.admin, "GET", "/debug/config", None, None, &[]);
        serde_json::from_str(&b).unwrap_or(Value::Null)
    }

    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        http(self.http, "GET", path, None, None, &[("host", host)])
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); status and body.
/// A connection error is status 0.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let body = body.unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("host: test\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return (0, text);
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `curl -sS` with `args`, 10 s at most; what it printed (body, then a line
/// `HTTP_VERSION STATUS REDIRECT_URL`) and its errors.
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version} %{http_code} %{redirect_url}",
        ])
        .args(args)
        .output()
        .expect("curl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` every 5 ms until it returns `Some`, or panics after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A platform with one region `eu`, a worker node, an image, a deployment `web` with one
/// started instance at `upstream`, and an edge join token.
pub fn seed(op: &Operator, upstream: SocketAddr) -> String {
    op.ok(
        "POST",
        "/api/v1/regions",
        Some(serde_json::json!({"name": "eu"})),
    );
    let node = op.ok("POST", "/api/v1/nodes", Some(serde_json::json!({"hostname": "w1", "address": "127.0.0.1", "region": "eu", "type": "worker"})));
    op.ok(
        "POST",
        "/api/v1/images",
        Some(serde_json::json!({"name": "hello", "command": ["hello"]})),
    );
    op.ok("POST", "/api/v1/deployments", Some(serde_json::json!({"name": "web", "image": "hello", "regions": ["eu"], "port": upstream.port()})));
    op.ok("POST", "/api/v1/instances", Some(serde_json::json!({
        "deployment": "web", "node": node["id"], "state": "started", "address": upstream.ip().to_string(), "port": upstream.port()
    })));
    edge_token(op)
}

/// A new join token for one edge (a join token enrolls one edge).
pub fn edge_token(op: &Operator) -> String {
    let t = op.ok(
        "POST",
        "/api/v1/join-tokens",
        Some(serde_json::json!({"role": "edge"})),
    );
    t["token"].as_str().unwrap().to_string()
}

/// A domain for `web`, marked verified by the admin (no check: its test has no balancer).
pub fn add_domain(op: &Operator, name: &str) {
    op.ok(
        "POST",
        "/api/v1/domains",
        Some(serde_json::json!({"name": name, "deployment": "web", "verified": true})),
    );
}

/// `zeitwork balancer` with these arguments, admin on port 0; its first listener's address
/// and its admin address.
pub struct Balancer {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Balancer {
    pub fn start(args: &[&str]) -> Balancer {
        let mut all: Vec<String> = vec!["balancer".into(), "--admin".into(), "127.0.0.1:0".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        let proc = Proc::spawn("balancer", &all);
        let addr = proc.wait_log(Duration::from_secs(15), |v| {
            message(v) == "listening" && v["fields"]["listener"].is_string()
        });
        let addr = addr["fields"]["addr"].as_str().unwrap().parse().unwrap();
        let admin = proc.addr("admin listening");
        Balancer { proc, addr, admin }
    }

    pub fn backends(&self) -> Value {
        let (_, b) = http(self.admin, "GET", "/debug/backends", None, None, &[]);
        serde_json::from_str(&b).unwrap_or(Value::Null)
    }
}

/// An edge on a file configuration routing everything to `upstream`, behind a balancer
/// on 127.0.0.1 (PROXY protocol required).
pub fn proxied_edge(name: &str, dir: &Path, upstream: SocketAddr) -> Edge {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!("http:\n  routers:\n    all: {{rule: \"PathPrefix(`/`)\", service: app}}\n  services:\n    app: {{loadBalancer: {{servers: [{{url: \"http://{upstream}\"}}]}}}}\n"),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    Edge::spawn(
        name,
        &["--config", &cfg, "--proxy-protocol", "web=127.0.0.1/32"],
    )
}

/// The edge's count of requests answered, from its metrics.
pub fn edge_requests(e: &Edge) -> u64 {
    let (_, text) = http(e.admin, "GET", "/metrics", None, None, &[]);
    text.lines()
        .filter(|l| l.starts_with("zeitwork_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Two proxied edges in front of `upstream` and a balancer over them, with these extra
/// balancer arguments.
pub fn two_edges_behind_a_balancer(
    dir: &Path,
    upstream: SocketAddr,
    extra: &[&str],
) -> (Edge, Edge, Balancer) {
    let (e1, e2) = (
        proxied_edge("edge-1", dir, upstream),
        proxied_edge("edge-2", dir, upstream),
    );
    let (a1, a2) = (e1.http.to_string(), e2.http.to_string());
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &a1,
        "--backend",
        &a2,
        "--health-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let b = Balancer::start(&args);
    (e1, e2, b)
}

fn oci_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// An OCI image layout, as a tar archive, with `/bin/busybox` (pass a static one) and
/// `/www/index.html` holding `page`.
pub fn oci_site(dir: &Path, busybox: &Path, page: &str) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("www")).unwrap();
    std::fs::copy(busybox, tree.join("bin/busybox")).unwrap();
    std::fs::write(tree.join("www/index.html"), page).unwrap();
    let layer = dir.join("layer.tar.gz");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-czf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
    let layout = dir.join("layout");
    let layer_bytes = std::fs::read(&layer).unwrap();
    let layer_digest = oci_blob(&layout, &layer_bytes);
    let config_digest = oci_blob(&layout, b"{}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}]}}"#,
        layer_bytes.len()
    );
    let manifest_digest = oci_blob(&layout, manifest.as_bytes());
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{}}}]}}"#,
            manifest.len()
        ),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("site-oci.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
    archive
}

/// `name` on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}
