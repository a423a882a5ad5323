//! The L4 balancer end to end: real `zeitwork balancer` and `zeitwork edge` processes,
//! real clients (curl, h2load, openssl), an upstream on 127.0.0.1.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The upstream sees the client's own address (127.0.0.2 here), carried by the PROXY
/// protocol from the balancer through either edge.
#[test]
fn the_upstream_sees_the_real_client_address_through_both_edges() {
    if !tool("curl") {
        return;
    }
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let (e1, e2, b) =
        two_edges_behind_a_balancer(dir.path(), up.addr, &["--algorithm", "round_robin"]);
    for _ in 0..6 {
        let out = Command::new("curl")
            .args([
                "-s",
                "--interface",
                "127.0.0.2",
                &format!("http://{}/who", b.addr),
            ])
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.2", "{body}");
        assert_eq!(body["headers"]["x-real-ip"], "127.0.0.2");
    }
    assert_eq!(
        (edge_requests(&e1), edge_requests(&e2)),
        (3, 3),
        "round robin over both edges"
    );
    // health checks (with PROXY v2 LOCAL headers) are no errors to the edges
    let (_, metrics) = http(e1.admin, "GET", "/metrics", None, None, &[]);
    assert!(
        metrics.contains("zeitwork_proxy_protocol_rejections_total 0"),
        "{metrics}"
    );
}

/// One edge dies under load: the balancer takes it out and new connections go to the
/// other one.
#[test]
fn killing_an_edge_under_load_sends_new_connections_to_the_other() {
    if !tool("h2load") {
        return;
    }
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let (mut e1, e2, b) = two_edges_behind_a_balancer(
        dir.path(),
        up.addr,
        &["--algorithm", "least_conn", "--fall", "1"],
    );
    let load = Command::new("h2load")
        .args([
            "--h1",
            "-c",
            "8",
            "--rps",
            "50",
            "-D",
            "6",
            &format!("http://{}/load", b.addr),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    e1.proc.kill();
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("requests:") || l.starts_with("status codes:"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // the balancer saw it go
    eventually(Duration::from_secs(5), "edge-1 marked down", || {
        let v = b.backends();
        v.as_array()?
            .iter()
            .any(|x| x["address"] == e1.http.to_string() && x["healthy"] == false)
            .then_some(())
    });
    // every new connection now succeeds, on edge-2
    let before = edge_requests(&e2);
    for i in 0..50 {
        let (s, _) = http(b.addr, "GET", &format!("/after/{i}"), None, None, &[]);
        assert_eq!(s, 200, "request {i} after the kill");
    }
    assert_eq!(edge_requests(&e2) - before, 50);
}

/// Draining an edge under load: no request fails; new connections go elsewhere; a
/// connection already open on the draining edge keeps working.
#[test]
fn draining_an_edge_under_load_fails_nothing() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let (e1, _e2, b) =
        two_edges_behind_a_balancer(dir.path(), up.addr, &["--algorithm", "round_robin"]);
    // a keep-alive connection that lands on edge-1 (round robin: the first one)
    let mut held = std::net::TcpStream::connect(b.addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |s: &mut std::net::TcpStream| -> String {
        use std::io::{Read, Write};
        s.write_all(b"GET /held HTTP/1.1\r\nhost: app\r\n\r\n")
            .unwrap();
        let mut buf = vec![0u8; 16384];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut held).starts_with("HTTP/1.1 200"));
    let on_e1 = edge_requests(&e1);
    assert_eq!(on_e1, 1);

    // load: new connections, one request each, bounded in count and time
    let addr = b.addr;
    let load = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut failures = Vec::new();
        for i in 0..300 {
            if Instant::now() > deadline {
                break;
            }
            let (s, _) = http(addr, "GET", &format!("/n/{i}"), None, None, &[]);
            if s != 200 {
                failures.push((i, s));
            }
        }
        failures
    });
    std::thread::sleep(Duration::from_millis(300));
    let (s, body) = http(
        b.admin,
        "POST",
        &format!("/backends/drain?backend={}", e1.http),
        None,
        None,
        &[],
    );
    assert_eq!(s, 200, "{body}");
    let e1_at_drain = edge_requests(&e1);
    let failures = load.join().unwrap();
    assert!(
        failures.is_empty(),
        "failed requests while draining: {failures:?}"
    );
    // nothing new reached edge-1 after the drain (one request may have been connecting)
    assert!(edge_requests(&e1) <= e1_at_drain + 1);
    // the held connection still works
    assert!(ask(&mut held).starts_with("HTTP/1.1 200"));
    let v = b.backends();
    let e1_view = v
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["address"] == e1.http.to_string())
        .unwrap()
        .clone();
    assert_eq!(e1_view["draining"], true);
    assert_eq!(e1_view["active_connections"], 1, "the held connection");
    let (_, metrics) = http(b.admin, "GET", "/metrics", None, None, &[]);
    assert!(
        metrics.contains(&format!(
            "zeitwork_l4_backend_draining{{pool=\"default\",backend=\"{}\"}} 1",
            e1.http
        )),
        "{metrics}"
    );
}

/// Routing by TLS server name with a real TLS client; TLS ends at the backends, which
/// are `openssl s_server` processes with their own certificates.
#[test]
fn sni_routes_tls_without_terminating_it() {
    if !tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for name in ["a.example", "b.example"] {
        let (key, cert) = (
            dir.path().join(format!("{name}.key")),
            dir.path().join(format!("{name}.crt")),
        );
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
            ])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let port = free_port();
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                &port.to_string(),
                "-cert",
            ])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        servers.push(ChildGuard(child));
        ports.push(port);
    }
    let cfg = dir.path().join("balancer.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[listener]]
name = "tls"
address = "127.0.0.1:0"
pool = "a"
proxy_protocol = "off"
sni = {{ "b.example" = "b" }}

[[pool]]
name = "a"
backends = ["127.0.0.1:{}"]

[[pool]]
name = "b"
backends = ["127.0.0.1:{}"]
"#,
            ports[0], ports[1]
        ),
    )
    .unwrap();
    for p in &ports {
        eventually(Duration::from_secs(10), "s_server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", *p))
                .ok()
                .map(|_| ())
        });
    }
    let b = Balancer::start(&["--config", cfg.to_str().unwrap()]);
    let subject = |sni: &str| -> String {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &b.addr.to_string(),
                "-servername",
                sni,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        subject("b.example").contains("b.example"),
        "b.example goes to pool b"
    );
    assert!(subject("a.example").contains("a.example"));
    assert!(
        subject("other.example").contains("a.example"),
        "unknown names take the listener's pool"
    );
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM: no new connections, open ones finish, then exit 0.
#[test]
fn sigterm_drains_the_balancer() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let e1 = proxied_edge("edge-1", dir.path(), up.addr);
    let b = Balancer::start(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &e1.http.to_string(),
        "--drain-timeout",
        "10s",
    ]);
    let mut held = std::net::TcpStream::connect(b.addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    use std::io::{Read, Write};
    let ask = |s: &mut std::net::TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 16384];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
    };
    assert!(ask(&mut held));
    assert!(Command::new("kill")
        .args(["-TERM", &b.proc.pid().to_string()])
        .status()
        .unwrap()
        .success());
    b.proc.wait_log(Duration::from_secs(5), |l| {
        message(l).starts_with("shutting down")
    });
    assert_eq!(
        http(b.addr, "GET", "/", None, None, &[]).0,
        0,
        "no new connections"
    );
    assert!(ask(&mut held), "the open connection still works");
    drop(held);
    b.proc
        .wait_log(Duration::from_secs(5), |l| message(l) == "stopped");
}

/// Backends discovered from the operator's edge list, health-checked at each edge's own
/// admin `/ready` (the address the edge reported); an edge marked draining there stops
/// getting new connections.
#[test]
fn backends_come_from_the_operator_and_follow_its_drain_state() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(&dir.path().join("op"), free_port(), None);
    let token = seed(&op, up.addr);
    add_domain(&op, "app.example.com");
    let pp = ["--proxy-protocol", "web=127.0.0.1/32"];
    let e1 = Edge::start(op.addr, &token, "edge-1", &dir.path().join("e1"), &pp);
    let e2 = Edge::start(
        op.addr,
        &edge_token(&op),
        "edge-2",
        &dir.path().join("e2"),
        &pp,
    );
    let b = Balancer::start(&[
        "--listen",
        "127.0.0.1:0",
        "--discover",
        &format!("http://{}", op.addr),
        "--region",
        "eu",
        "--token",
        &token,
        "--health",
        "http",
        "--algorithm",
        "round_robin",
        "--health-interval",
        "200ms",
    ]);
    let get_app = || {
        http(
            b.addr,
            "GET",
            "/",
            None,
            None,
            &[("host", "app.example.com")],
        )
        .0
    };
    eventually(Duration::from_secs(15), "both edges discovered", || {
        (b.backends()
            .as_array()?
            .iter()
            .filter(|x| x["healthy"] == true)
            .count()
            == 2)
            .then_some(())
    });
    // Routed by both edges: round robin alternates, so four in a row reach each twice.
    eventually(
        Duration::from_secs(15),
        "routes pushed to both edges",
        || (0..4).all(|_| get_app() == 200).then_some(()),
    );
    for _ in 0..10 {
        assert_eq!(get_app(), 200);
    }
    assert!(edge_requests(&e1) > 0 && edge_requests(&e2) > 0);
    // the operator lists each edge's admin address, which the health checks used
    let listed = op.edges();
    assert!(
        listed
            .iter()
            .any(|e| e["admin_address"] == e1.admin.to_string()),
        "{listed:?}"
    );
    let (_, ready_checks) = http(e1.admin, "GET", "/metrics", None, None, &[]);
    assert!(ready_checks.contains("zeitwork_proxy_protocol_rejections_total 0"));

    op.ok(
        "PATCH",
        "/api/v1/edge-proxies/edge-1",
        Some(serde_json::json!({"state": "draining"})),
    );
    eventually(
        Duration::from_secs(10),
        "edge-1 draining at the balancer",
        || {
            b.backends()
                .as_array()?
                .iter()
                .any(|x| x["address"] == e1.http.to_string() && x["draining"] == true)
                .then_some(())
        },
    );
    let before = edge_requests(&e1);
    for _ in 0..10 {
        assert_eq!(get_app(), 200);
    }
    assert_eq!(
        edge_requests(&e1),
        before,
        "no new connections to a draining edge"
    );
}

/// `--max-connections` closes connections beyond the limit at accept; `--idle-timeout`
/// closes quiet ones.
#[test]
fn connection_limits_and_idle_timeout() {
    use std::io::{Read, Write};
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let e1 = proxied_edge("edge-1", dir.path(), up.addr);
    let b = Balancer::start(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &e1.http.to_string(),
        "--max-connections",
        "1",
        "--idle-timeout",
        "1s",
    ]);
    let mut first = std::net::TcpStream::connect(b.addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 16384];
    assert!(first.read(&mut buf).unwrap() > 0);
    // the second connection is over the limit
    let (s, _) = http(b.addr, "GET", "/", None, None, &[]);
    assert_eq!(s, 0, "refused at the limit");
    let (_, metrics) = http(b.admin, "GET", "/metrics", None, None, &[]);
    assert!(
        metrics.contains("zeitwork_l4_connections_refused_total{listener=\"default\"} 1"),
        "{metrics}"
    );
    // quiet for longer than the idle timeout: closed by the balancer
    let started = Instant::now();
    let n = first.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert!(started.elapsed() < Duration::from_secs(4));
    // and the slot is free again
    eventually(Duration::from_secs(5), "a new connection served", || {
        (http(b.addr, "GET", "/", None, None, &[]).0 == 200).then_some(())
    });
}
