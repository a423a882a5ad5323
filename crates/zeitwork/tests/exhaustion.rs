//! Resource exhaustion from outside, on loopback, in bounded runs: a baseline client
//! sends a request every 50 ms while an attack runs, and the test reports its success
//! rate and the edge's file descriptors and RSS before, during and after.

mod support;

use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A request every 50 ms on a new connection until `stop`; (sent, ok) while `window`.
fn baseline(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    window: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (sent, ok) = (AtomicU64::new(0), AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(SeqCst) && Instant::now() < deadline {
            let (s, _) = http(addr, "GET", "/", None, None, &[("host", "app.test")]);
            if window.load(SeqCst) {
                sent.fetch_add(1, SeqCst);
                if s == 200 {
                    ok.fetch_add(1, SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (sent.load(SeqCst), ok.load(SeqCst))
    })
}

/// 1,100 connections that never send a byte, against an edge limited to 1,024 open files:
/// once, they took the baseline to 0 % and the admin `/health` down (`accept failed:
/// EMFILE`). Now the edge caps its client connections below its descriptor limit and,
/// at the cap, closes the oldest silent connection to admit a new one.
#[test]
fn silent_connections_cannot_starve_the_edge() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dynamic.yaml");
    std::fs::write(
        &config,
        zw_edge::testkit::one_route("Host(`app.test`)", &format!("http://{}", up.addr)),
    )
    .unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=1024:1024", BIN, "edge", "-c"])
        .arg(&config)
        .args([
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
        ]);
    let proc = Proc::spawn_command("edge", cmd);
    let web = proc.wait_log(Duration::from_secs(15), |v| {
        v["fields"]["entry_point"] == "web" && v["fields"]["addr"].is_string()
    });
    let web: std::net::SocketAddr = web["fields"]["addr"].as_str().unwrap().parse().unwrap();
    let admin = proc.addr("admin listening");
    let limit = proc.wait_log(Duration::from_secs(5), |v| message(v) == "connection limit");
    assert_eq!(limit["fields"]["max_connections"], 384, "{limit}");
    let pid = proc.pid();

    let (stop, window) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let client = baseline(web, stop.clone(), window.clone());
    std::thread::sleep(Duration::from_millis(500));
    let before = (fds(pid), rss_kib(pid));

    window.store(true, SeqCst);
    let mut attack = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = TcpStream::connect_timeout(&web, Duration::from_secs(2)) {
            attack.push(s);
        }
    }
    let mut health_ok = 0;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        if http(admin, "GET", "/health", None, None, &[]).0 == 200 {
            health_ok += 1;
        }
    }
    let during = (fds(pid), rss_kib(pid));
    window.store(false, SeqCst);
    drop(attack);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, SeqCst);
    let (sent, ok) = client.join().unwrap();
    let after = (fds(pid), rss_kib(pid));
    let (_, metrics) = http(admin, "GET", "/metrics", None, None, &[]);
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "baseline during the attack: {ok}/{sent} ok ({:.1} %); admin /health {health_ok}/10; \
         fds {} → {} → {}; RSS {} → {} → {} KiB; evicted {}, refused {}, idle-closed {}",
        100.0 * ok as f64 / sent.max(1) as f64,
        before.0,
        during.0,
        after.0,
        before.1,
        during.1,
        after.1,
        counter("zeitwork_connections_evicted_total"),
        counter("zeitwork_connections_refused_total"),
        counter("zeitwork_connections_idle_closed_total"),
    );
    assert!(sent >= 30, "the baseline ran: {sent}");
    assert!(ok * 100 >= sent * 95, "baseline {ok}/{sent}");
    assert_eq!(health_ok, 10, "the admin listener answers throughout");
    assert!(
        during.0 < 1000,
        "descriptors stay under the limit: {}",
        during.0
    );
    assert!(counter("zeitwork_connections_evicted_total") > 0);
    assert!(
        after.0 <= before.0 + 16,
        "descriptors come back: {before:?} → {after:?}"
    );
}
