//! End to end: the real `zeitwork` binary as a child process, real clients (curl, h2load),
//! real upstream servers on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zw_edge::testkit::Upstream;

mod support;
use support::tool;

use support::BIN;

struct EdgeProcess {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    stderr_lines: std::sync::mpsc::Receiver<String>,
}

impl EdgeProcess {
    /// Starts `zeitwork edge` on port 0 and reads the bound addresses from its JSON log.
    fn start(config: &std::path::Path, extra: &[&str]) -> EdgeProcess {
        let mut child = Command::new(BIN)
            .args(["edge", "--config"])
            .arg(config)
            .args([
                "--http",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--workers",
                "2",
                "--watch-interval",
                "50ms",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zeitwork");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut http, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while (http.is_none() || admin.is_none()) && Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
            if v["fields"]["entry_point"] == "web" {
                http = addr;
            } else if v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin listening"))
            {
                admin = addr;
            }
        }
        EdgeProcess {
            child,
            http: http.expect("edge did not report its address"),
            admin: admin.expect("no admin address"),
            stderr_lines: rx,
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let lines = self.stderr_lines.try_iter().collect();
                return (status, lines);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("edge did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_and_http2_through_the_binary_and_sigterm_drains() {
    if !tool("curl") {
        return;
    }
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "dynamic.toml",
        &format!(
            "[http.routers.app]\nrule = \"Host(`app.test`)\"\nservice = \"app\"\n\n[[http.services.app.loadBalancer.servers]]\nurl = \"{}\"\n",
            up.url()
        ),
    );
    let edge = EdgeProcess::start(&cfg, &[]);
    let base = format!("http://{}", edge.http);
    let (body, _) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || curl(&["-H", "Host: app.test", &format!("{base}/hello?x=1")])
    })
    .await
    .unwrap();
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            j["upstream"].as_str(),
            j["path"].as_str(),
            j["version"].as_str()
        ),
        (Some("app"), Some("/hello"), Some("HTTP/1.1"))
    );

    let (out, _) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            curl(&[
                "--http2-prior-knowledge",
                "-H",
                "Host: app.test",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &format!("{base}/h2"),
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(out, "2 200", "curl over h2c prior knowledge");

    let (out, _) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{base}/")])
    })
    .await
    .unwrap();
    assert_eq!(out, "404");

    let (metrics, _) = tokio::task::spawn_blocking({
        let admin = edge.admin;
        move || curl(&[&format!("http://{admin}/metrics")])
    })
    .await
    .unwrap();
    assert!(metrics.contains("zeitwork_requests_total{entrypoint=\"web\",router=\"app\",service=\"app\",code=\"200\"} 2"), "{metrics}");

    // SIGTERM with a request in flight: it completes, then the process exits 0.
    let slow = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            curl(&[
                "-H",
                "Host: app.test",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{base}/slow/800"),
            ])
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.sigterm();
    let (code, _) = slow.await.unwrap();
    assert_eq!(code, "200", "in-flight request finished during the drain");
    let (status, log) = tokio::task::spawn_blocking(move || edge.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}, log: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_h1_and_h2_has_no_failures() {
    if !tool("h2load") {
        return;
    }
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "dynamic.yaml",
        &format!("http:\n  routers:\n    app: {{rule: \"PathPrefix(`/`)\", service: app}}\n  services:\n    app: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n", up.url()),
    );
    let edge = EdgeProcess::start(&cfg, &[]);
    let url = format!("http://{}/bench", edge.http);
    for mode in [&["--h1"][..], &[][..]] {
        let url = url.clone();
        let mode: Vec<String> = mode.iter().map(|s| s.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("timeout")
                .args(["60", "h2load", "-n", "2000", "-c", "10", "-m", "4"])
                .args(&mode)
                .arg(&url)
                .output()
                .expect("h2load")
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("2000 succeeded, 0 failed, 0 errored, 0 timeout"),
            "{text}"
        );
        assert!(text.contains("status codes: 2000 2xx"), "{text}");
    }
}

#[test]
fn an_invalid_startup_configuration_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "bad.yaml",
        "http:\n  routers:\n    api: {rule: \"Host(`a`)\", service: apii}\n",
    );
    let out = Command::new(BIN)
        .args([
            "edge",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.routers.api.service: unknown service \"apii\""),
        "{err}"
    );
}

#[test]
fn bad_proxy_protocol_flags_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "ok.yaml", "http: {}\n");
    for (flag, expected) in [
        ("web=10.0.0.0/33", "`10.0.0.0/33`"),
        ("api=10.0.0.0/8", "no entry point named `api`"),
        ("web", "expected NAME=CIDR"),
    ] {
        let out = Command::new(BIN)
            .args([
                "edge",
                "--http",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--proxy-protocol",
                flag,
                "--config",
            ])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{flag}: {err}");
    }
}

#[test]
fn config_validate_prints_ok_and_hash_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        dir.path(),
        "good.json",
        r#"{"http":{"routers":{"r":{"rule":"Path(`/`)","service":"s"}},"services":{"s":{"loadBalancer":{"servers":[{"url":"http://127.0.0.1:1"}]}}}}}"#,
    );
    let out = Command::new(BIN)
        .args(["config", "validate"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ok sha256:") && stdout.trim().len() == "ok sha256:".len() + 64,
        "{stdout}"
    );

    let bad = write_config(
        dir.path(),
        "bad.yaml",
        "http:\n  routers:\n    r: {rule: \"Path(`x`)\", service: s, observability: {}}\n",
    );
    let out = Command::new(BIN)
        .args(["config", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // three errors, each on its own line, then the summary on a line of its own
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(
        lines[3],
        format!("3 error(s) in {}", bad.display()),
        "{stdout}"
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with("http.routers.r.rule: at byte 5: Path: path must start with `/`")
        ),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("http.routers.r.service: unknown service \"s\"")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with("http.routers.r.observability: this Traefik option is not supported")),
        "{stdout}"
    );
}

fn route_test(args: &[&str], stdin: &str) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut child = Command::new(BIN)
        .args(["route", "test"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code(), lines)
}

#[test]
fn route_test_with_a_rule() {
    let input = r#"{"host":"API.example.com:443","path":"/v1/users","method":"GET"}
{"host":"api.example.com","path":"/v2"}
{"host":"api.example.com","path":"/v1","headers":{"X-Env":["a","canary"]},"client_ip":"10.1.2.3","query":"debug=1"}
{}
"#;
    let (code, out) = route_test(
        &["--rule", "Host(`api.example.com`) && PathPrefix(`/v1`)"],
        input,
    );
    assert_eq!(code, Some(0));
    let matched: Vec<bool> = out
        .iter()
        .map(|v| v["matched"].as_bool().unwrap())
        .collect();
    assert_eq!(matched, [true, false, true, false]);

    let (_, out) = route_test(
        &[
            "--rule",
            "Header(`X-Env`, `canary`) && ClientIP(`10.0.0.0/8`) && Query(`debug`, `1`)",
        ],
        input,
    );
    let matched: Vec<bool> = out
        .iter()
        .map(|v| v["matched"].as_bool().unwrap())
        .collect();
    assert_eq!(matched, [false, false, true, false]);

    let (code, out) = route_test(&["--rule", "Host(`a`) &&"], "");
    assert_eq!(code, Some(2));
    assert!(
        out[0]["error"].as_str().unwrap().contains("at byte 12"),
        "{out:?}"
    );

    let (code, out) = route_test(
        &["--rule", "Path(`/`)"],
        "not json\n{\"path\":\"/%zz\"}\n{\"path\":\"/\"}\n",
    );
    assert_eq!(code, Some(1), "bad input lines make the exit status 1");
    assert!(out[0]["error"].as_str().unwrap().starts_with("line 1:"));
    assert!(out[1]["error"].as_str().unwrap().contains("400"));
    assert_eq!(
        out[2]["matched"], true,
        "good lines after bad ones are still answered"
    );
}

#[test]
fn route_test_with_a_config_names_router_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "c.yaml",
        r#"
http:
  routers:
    api: {rule: "Host(`api.test`) && PathPrefix(`/v1`)", service: api@file, entryPoints: [websecure], middlewares: [secured, tag]}
    site: {rule: "Host(`api.test`)", service: web}
    catchall: {fallback: true, service: tier3}
  services:
    api: {loadBalancer: {servers: [{url: "http://127.0.0.1:1"}]}}
    web: {loadBalancer: {servers: [{url: "http://127.0.0.1:2"}]}}
    tier3: {loadBalancer: {servers: [{url: "http://127.0.0.1:3"}]}}
  middlewares:
    secured: {chain: {middlewares: [office, limit]}}
    office: {ipAllowList: {sourceRange: [10.0.0.0/8]}}
    limit: {rateLimit: {average: 10}}
    tag: {headers: {customResponseHeaders: {X-Api: "1"}}}
"#,
    );
    let input = "{\"host\":\"api.test\",\"path\":\"/v1/x\"}\n{\"host\":\"api.test\",\"path\":\"/\"}\n{\"host\":\"other\"}\n";
    let (code, out) = route_test(&["--config", cfg.to_str().unwrap()], input);
    assert_eq!(code, Some(0));
    // the middlewares a request passes, in order, chains spliced in
    assert_eq!(
        out[0],
        serde_json::json!({"router": "api", "service": "api", "middlewares": ["office", "limit", "tag"]})
    );
    assert_eq!(
        out[1],
        serde_json::json!({"router": "site", "service": "web", "middlewares": []})
    );
    assert_eq!(
        out[2],
        serde_json::json!({"router": "catchall", "service": "tier3", "middlewares": []})
    );
    let (_, out) = route_test(
        &["--config", cfg.to_str().unwrap(), "--entry-point", "web"],
        input,
    );
    assert_eq!(out[0]["router"], "site", "api listens on websecure only");

    let empty = write_config(dir.path(), "e.yaml", "http:\n  routers:\n    a: {rule: \"Host(`a`)\", service: s}\n  services:\n    s: {loadBalancer: {servers: []}}\n");
    let (_, out) = route_test(&["--config", empty.to_str().unwrap()], "{\"host\":\"b\"}\n");
    assert_eq!(out[0], serde_json::json!({"router": null, "service": null}));
}

#[test]
fn help_explains_the_commands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["edge", "config", "route"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = Command::new(BIN).args(["edge", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config") && text.contains("--drain-timeout") && text.contains("Example"),
        "{text}"
    );
}

/// After `cargo run` only `zeitwork` is built; started under the name `zeitwork-init` it
/// is the instance init, so `up` isolates instances without a separate binary.
#[test]
fn zeitwork_answers_as_the_instance_init_under_that_name() {
    use std::os::unix::process::CommandExt;
    let out = Command::new(BIN)
        .arg0("zeitwork-init")
        .args(["--hostname"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("zeitwork-init: --hostname needs a value"),
        "{err}"
    );
    // and by its own name it is the usual command line
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
}

/// The request-head limits are settings: past `--max-headers` or `--max-request-head` an
/// HTTP/1 request gets 431 before routing; a request target longer than 64 KiB gets 414
/// (within the default 256 KiB head); within the limits requests go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_limits_are_settings_and_answer_431_or_414() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "dynamic.yaml",
        &format!(
            "http:\n  routers:\n    app: {{rule: \"PathPrefix(`/`)\", service: app}}\n  services:\n    app: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n",
            up.url()
        ),
    );
    let status = |addr: SocketAddr, head: Vec<u8>| {
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&head);
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n])
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0)
        })
    };
    let request = |target: &str, headers: usize, big: usize| {
        let mut r = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
        for i in 0..headers {
            r.push_str(&format!("X-H{i}: 1\r\n"));
        }
        if big > 0 {
            r.push_str(&format!("X-Big: {}\r\n", "b".repeat(big)));
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    let tight = EdgeProcess::start(
        &cfg,
        &["--max-headers", "20", "--max-request-head", "16384"],
    );
    assert_eq!(status(tight.http, request("/", 10, 0)).await.unwrap(), 200);
    assert_eq!(status(tight.http, request("/", 25, 0)).await.unwrap(), 431);
    assert_eq!(
        status(tight.http, request("/", 1, 20_000)).await.unwrap(),
        431
    );
    let roomy = EdgeProcess::start(&cfg, &[]);
    assert_eq!(
        status(roomy.http, request("/", 25, 20_000)).await.unwrap(),
        200
    );
    let long = format!("/{}", "a".repeat(70_000));
    assert_eq!(status(roomy.http, request(&long, 0, 0)).await.unwrap(), 414);
    // bad values are refused by name
    let out = Command::new(BIN)
        .args(["edge", "--config"])
        .arg(&cfg)
        .args(["--max-headers", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-headers"));
}
