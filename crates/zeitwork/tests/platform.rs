//! The platform's control path end to end: real `zeitwork operator` and `zeitwork edge`
//! processes, snapshots pushed over WebSockets, requests over real sockets.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn connected_and_current(op: &Operator, n: usize) -> bool {
    let Some(v) = op.snapshot_version("eu") else {
        return false;
    };
    let edges = op.edges();
    edges.len() == n
        && edges
            .iter()
            .all(|e| e["connected"] == true && e["applied_version"].as_u64() == Some(v))
}

/// Three edges; a new domain for a running instance is routed by all of them; then 100
/// changes, each timed from the write to the moment all three edges have acknowledged it.
/// With PostgreSQL configured, two operator replicas share it and the third edge hangs
/// off the second replica, so its updates travel by LISTEN/NOTIFY.
#[test]
fn three_edges_route_new_domains_and_converge() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = rt.block_on(zw_store::testkit::TestDb::postgres());
    let url = pg.as_ref().map(|d| d.url.clone());
    let op = Operator::start(&dir.path().join("a"), free_port(), url.as_deref());
    let token = seed(&op, up.addr);
    let replica = url
        .as_deref()
        .map(|u| Operator::start_replica(&dir.path().join("b"), free_port(), u, &op));
    let third_op = replica.as_ref().map_or(op.addr, |r| r.addr);

    let edges = [
        Edge::start(op.addr, &token, "edge-1", &dir.path().join("e1"), &[]),
        Edge::start(
            op.addr,
            &edge_token(&op),
            "edge-2",
            &dir.path().join("e2"),
            &[],
        ),
        Edge::start(
            third_op,
            &edge_token(&op),
            "edge-3",
            &dir.path().join("e3"),
            &[],
        ),
    ];
    eventually(
        Duration::from_secs(20),
        "three edges connected and current",
        || connected_and_current(&op, 3).then_some(()),
    );

    add_domain(&op, "app.example.com");
    for e in &edges {
        let (s, body) = eventually(Duration::from_secs(10), "the new domain routed", || {
            let r = e.get("app.example.com", "/hello");
            (r.0 == 200).then_some(r)
        });
        assert_eq!(s, 200);
        assert!(body.contains("\"upstream\":\"app\""), "{body}");
    }

    let first = eventually(Duration::from_secs(10), "acks", || {
        let v = op.snapshot_version("eu")?;
        op.edges()
            .iter()
            .all(|e| e["applied_version"].as_u64() == Some(v))
            .then_some(v)
    });
    let mut took = Vec::new();
    for (i, version) in (first..first + 100).enumerate() {
        let start = Instant::now();
        add_domain(&op, &format!("d{i}.example.com"));
        // each write is one new version: wait until all three acknowledged it
        eventually(Duration::from_secs(10), "all edges acked", || {
            op.edges()
                .iter()
                .all(|e| e["applied_version"].as_u64() > Some(version))
                .then_some(())
        });
        took.push(start.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "write -> all 3 edges acked over {} changes ({}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        took.len(),
        if replica.is_some() {
            "PostgreSQL, two operator replicas"
        } else {
            "SQLite, one operator"
        },
        ms(took[took.len().div_ceil(2) - 1]),
        ms(took[(took.len() * 99).div_ceil(100) - 1]),
        ms(took[took.len() - 1]),
    );
    for e in &edges {
        assert_eq!(e.get("d99.example.com", "/").0, 200);
        assert_eq!(e.status()["source"], "control_plane");
    }
    // never the same version twice: one "configuration applied" per version per edge
    for e in &edges {
        let applied: Vec<u64> = e
            .proc
            .logs()
            .iter()
            .filter(|l| message(l) == "configuration applied")
            .filter_map(|l| {
                l["fields"]["snapshot_version"].as_str().and_then(|s| {
                    s.trim_start_matches("Some(")
                        .trim_end_matches(')')
                        .parse()
                        .ok()
                })
            })
            .collect();
        let mut dedup = applied.clone();
        dedup.dedup();
        assert_eq!(
            applied, dedup,
            "{}: a version was applied twice",
            e.proc.name
        );
    }
}

/// A snapshot the edge refuses: the operator shows why, nothing is re-sent, and the edge
/// keeps its previous configuration exactly.
#[test]
fn a_refused_snapshot_is_nacked_and_the_previous_one_keeps_serving() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(&dir.path().join("op"), free_port(), None);
    let token = seed(&op, up.addr);
    add_domain(&op, "a.example.com");
    add_domain(&op, "b.example.com");
    // this edge accepts at most two routers
    let edge = Edge::start(
        op.addr,
        &token,
        "small-edge",
        &dir.path().join("e"),
        &["--max-routers", "2"],
    );
    // the compiler may still be catching up with the seed's writes: wait for both routes
    for host in ["a.example.com", "b.example.com"] {
        eventually(Duration::from_secs(20), "edge routes the seed", || {
            (edge.get(host, "/").0 == 200 && connected_and_current(&op, 1)).then_some(())
        });
    }
    let before = edge.status();

    add_domain(&op, "c.example.com");
    let record = eventually(Duration::from_secs(10), "the nack in the API", || {
        let e = op.edges().into_iter().next()?;
        e["last_nack_error"].is_string().then_some(e)
    });
    let error = record["last_nack_error"].as_str().unwrap();
    assert!(
        error.contains("http.routers") && error.contains("2"),
        "{error}"
    );
    assert_eq!(
        record["applied_version"], before["snapshot_version"],
        "the API shows the version still in use"
    );

    std::thread::sleep(Duration::from_millis(300));
    let after = edge.status();
    assert_eq!(
        after["hash"], before["hash"],
        "the running configuration did not change"
    );
    assert_eq!(after["snapshot_version"], before["snapshot_version"]);
    assert_eq!(after["version"], before["version"], "nothing was applied");
    assert!(after["last_error"]
        .as_str()
        .unwrap()
        .contains("http.routers"));
    assert_eq!(edge.get("a.example.com", "/").0, 200);
    assert_eq!(edge.get("b.example.com", "/").0, 200);
    assert_eq!(edge.get("c.example.com", "/").0, 404);
    let refusals = op
        .proc
        .logs()
        .iter()
        .filter(|l| message(l).starts_with("edge refused snapshot"))
        .count();
    assert_eq!(refusals, 1, "the refused version is not pushed again");

    // a later change the edge can take is applied
    op.ok("DELETE", "/api/v1/domains/c.example.com", None);
    op.ok("DELETE", "/api/v1/domains/b.example.com", None);
    // (each delete may make its own version: wait for the edge to route the last one)
    eventually(Duration::from_secs(10), "the next version applied", || {
        (edge.get("b.example.com", "/").0 == 404 && connected_and_current(&op, 1)).then_some(())
    });
    assert_eq!(edge.get("a.example.com", "/").0, 200);
}

/// An edge that restarts while the operator is down serves its last-known-good; a corrupt
/// one is refused (not ready, nothing served) until the operator is back.
#[test]
fn an_edge_restarted_during_an_outage_serves_its_last_known_good() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut op = Operator::start(&dir.path().join("op"), port, None);
    let token = seed(&op, up.addr);
    add_domain(&op, "app.example.com");
    let state = dir.path().join("edge-state");
    let edge = Edge::start(op.addr, &token, "edge-1", &state, &[]);
    eventually(Duration::from_secs(20), "edge routes the domain", || {
        (edge.get("app.example.com", "/").0 == 200 && connected_and_current(&op, 1)).then_some(())
    });
    let served = edge.status();

    op.proc.kill();
    drop(edge);
    let edge = Edge::start(op.addr, &token, "edge-1", &state, &[]);
    let (s, body) = eventually(
        Duration::from_secs(10),
        "served from the last-known-good",
        || {
            let r = edge.get("app.example.com", "/x");
            (r.0 == 200).then_some(r)
        },
    );
    assert_eq!(s, 200, "{body}");
    let st = edge.status();
    assert_eq!(st["source"], "last_known_good");
    assert_eq!(st["hash"], served["hash"]);
    assert_eq!(st["snapshot_version"], served["snapshot_version"]);
    assert_eq!(http(edge.admin, "GET", "/ready", None, None, &[]).0, 200);
    drop(edge);

    // one flipped byte
    let file = state.join("last-known-good.json");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();
    let edge = Edge::start(op.addr, &token, "edge-1", &state, &[]);
    edge.proc.wait_log(Duration::from_secs(10), |l| {
        message(l).starts_with("last-known-good refused")
    });
    assert_eq!(
        http(edge.admin, "GET", "/ready", None, None, &[]).0,
        503,
        "a corrupt last-known-good leaves the edge not ready"
    );
    assert_eq!(edge.get("app.example.com", "/").0, 503);
    assert!(edge.status()["last_error"]
        .as_str()
        .unwrap()
        .contains("checksum mismatch"));

    // the operator returns: the edge converges and is ready
    op = Operator::start(&dir.path().join("op"), port, None);
    eventually(Duration::from_secs(30), "reconnected and current", || {
        (edge.status()["source"] == "control_plane" && connected_and_current(&op, 1)).then_some(())
    });
    assert_eq!(edge.get("app.example.com", "/").0, 200);
    assert_eq!(http(edge.admin, "GET", "/ready", None, None, &[]).0, 200);
    assert_eq!(edge.status()["source"], "control_plane");
}

/// The small-setup mode: an edge reading the operator's database directly.
#[test]
fn an_edge_can_read_routes_from_the_operator_database() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let op_dir = dir.path().join("op");
    let op = Operator::start(&op_dir, free_port(), None);
    seed(&op, up.addr);
    add_domain(&op, "app.example.com");
    let db = format!("sqlite://{}/state.db", op_dir.display());
    let edge = Edge::spawn(
        "db-edge",
        &[
            "--database-url",
            &db,
            "--region",
            "eu",
            "--update-interval",
            "100ms",
        ],
    );
    let (web, admin) = (edge.http, edge.admin);
    assert_eq!(
        http(web, "GET", "/", None, None, &[("host", "app.example.com")]).0,
        200
    );
    op.ok(
        "POST",
        "/api/v1/domains",
        Some(json!({"name": "new.example.com", "deployment": "web", "verified": true})),
    );
    eventually(
        Duration::from_secs(10),
        "the new domain read from the database",
        || {
            (http(web, "GET", "/", None, None, &[("host", "new.example.com")]).0 == 200)
                .then_some(())
        },
    );
    let (_, st) = http(admin, "GET", "/debug/config", None, None, &[]);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["source"], "database");
    assert!(!st["origin"].as_str().unwrap().is_empty());

    // a bad region is refused at start, with the reason
    let bad: Vec<String> = [
        "edge",
        "--database-url",
        &db,
        "--region",
        "mars",
        "--http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = std::process::Command::new(BIN).args(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("region `mars` does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `zeitwork apply` and `zeitwork get` against a real operator.
#[test]
fn cli_apply_and_get() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("op");
    let op = Operator::start(&data, free_port(), None);
    op.ok("POST", "/api/v1/regions", Some(json!({"name": "eu"})));
    let file = dir.path().join("hello.toml");
    std::fs::write(
        &file,
        r#"
domains = ["hello.example.com"]

[image]
name = "hello"
command = ["/bin/hello", "--port", "8080"]

[deployment]
name = "hello"
image = "hello"
replicas = 2
regions = ["eu"]
port = 8080
health_check = { path = "/healthz" }
"#,
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--operator", &format!("http://{}", op.addr), "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("deployment hello created")
            && stdout.contains("domain hello.example.com -> hello"),
        "{stdout}"
    );
    let (_, stdout, _) = cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(stdout.contains("deployment hello updated"), "{stdout}");

    let (ok, table, _) = cli(&["get", "deployments"]);
    assert!(ok);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("READY") && lines[0].contains("STATUS"),
        "{table}"
    );
    // no agent runs here: none of the two replicas is ready, and it says so
    assert!(
        lines[1].starts_with("hello")
            && lines[1].contains(" 0/2 ")
            && lines[1].ends_with("starting"),
        "{table}"
    );
    let (ok, json_out, _) = cli(&["get", "domains", "-o", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v[0]["name"], "hello.example.com");

    // a bad file: the field is named, nothing is written
    std::fs::write(
        &file,
        "[deployment]\nname = \"x\"\nimage = \"hello\"\nregions = [\"mars\"]\nport = 80\n",
    )
    .unwrap();
    let (ok, _, stderr) = cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("deployment.regions[0]") && stderr.contains("unknown region `mars`"),
        "{stderr}"
    );
    assert_eq!(
        op.ok("GET", "/api/v1/deployments", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // a wrong token
    let out = std::process::Command::new(BIN)
        .args([
            "get",
            "nodes",
            "--operator",
            &format!("http://{}", op.addr),
            "--token",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The operator's secrets at rest: every secret-bearing file is 0600 even in a data
/// directory that existed with looser modes, and the CA's private key is nowhere in the
/// database in clear — it is sealed with DATA_DIR/secret-key, without which it does not
/// open.
#[test]
fn secrets_at_rest_are_private_and_the_ca_key_is_sealed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut op = Operator::start(&data, free_port(), None);
    op.proc.wait_log(Duration::from_secs(10), |v| {
        message(v).starts_with("platform CA created")
    });
    // (every enrollment in the other tests opens the sealed key with the right one)
    let (s, body) = op.api("POST", "/api/v1/join-tokens", Some(json!({"role": "edge"})));
    assert_eq!(s, 201, "{body}");
    let mode = |f: &str| {
        std::fs::metadata(data.join(f))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    for f in ["state.db", "admin-token", "secret-key"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    if data.join("state.db-wal").exists() {
        assert_eq!(mode("state.db-wal"), 0o600);
    }
    let mut stored = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        stored.extend(std::fs::read(data.join(f)).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&stored);
    assert!(text.contains("zwseal1:"), "the CA key is stored sealed");
    assert!(
        !text.contains("PRIVATE KEY"),
        "no private key in clear in the database"
    );

    // another key cannot open it, and the operator says what to do
    op.proc.kill();
    let wrong = dir.path().join("wrong-key");
    std::fs::write(&wrong, "11".repeat(32)).unwrap();
    let port = op.addr.port();
    let mut args: Vec<String> = ["operator", "--listen", &format!("127.0.0.1:{port}")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--data-dir".into(), data.display().to_string()]);
    args.extend(["--secret-key-file".into(), wrong.display().to_string()]);
    let p = Proc::spawn("operator", &args);
    let v = p.wait_log(Duration::from_secs(10), |v| {
        v["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("sealed with another sealing key"))
    });
    assert!(
        v["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("secret-key file"),
        "{v}"
    );
}

/// A region whose balancer address leads back to the edge that forwards to it: the
/// request goes round once, then gets a 508 that says why, counted in a metric, and the
/// edge's open descriptors stay flat (before the hop mark, one request looped until the
/// edge ran out of them). The API refuses an edge's address as a balancer address.
#[test]
fn a_cross_region_loop_ends_with_one_508() {
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(&dir.path().join("op"), free_port(), None);
    for r in ["eu", "us"] {
        op.ok("POST", "/api/v1/regions", Some(json!({"name": r})));
    }
    let node = op.ok(
        "POST",
        "/api/v1/nodes",
        Some(json!({"hostname": "w-us", "address": "127.0.0.1", "region": "us", "type": "worker"})),
    );
    op.ok(
        "POST",
        "/api/v1/images",
        Some(json!({"name": "hello", "command": ["hello"]})),
    );
    op.ok(
        "POST",
        "/api/v1/deployments",
        Some(json!({"name": "web", "image": "hello", "regions": ["us"], "port": up.addr.port()})),
    );
    op.ok("POST", "/api/v1/instances", Some(json!({
        "deployment": "web", "node": node["id"], "state": "started", "address": "127.0.0.1", "port": up.addr.port()
    })));
    add_domain(&op, "app.test");
    // The edge of `eu` (which runs no instance) says it is at 127.0.0.1:1: a stale
    // record, so the API cannot see that `us`'s balancer address below is this edge.
    let edge = Edge::start(
        op.addr,
        &edge_token(&op),
        "edge-eu",
        &dir.path().join("e"),
        &["--advertise", "127.0.0.1:1"],
    );
    eventually(Duration::from_secs(10), "the edge recorded", || {
        op.edges()
            .iter()
            .any(|e| e["id"] == "edge-eu" && e["address"] == "127.0.0.1:1")
            .then_some(())
    });
    let (s, v) = op.api(
        "PATCH",
        "/api/v1/regions/us",
        Some(json!({"balancer_address": "127.0.0.1:1"})),
    );
    assert_eq!(s, 422, "an edge's recorded address is no balancer: {v}");
    assert!(v["message"].as_str().unwrap().contains("edge-eu"), "{v}");
    op.ok(
        "PATCH",
        "/api/v1/regions/us",
        Some(json!({"balancer_address": edge.http.to_string()})),
    );

    let (s, body) = eventually(Duration::from_secs(10), "the loop answered", || {
        let r = edge.get("app.test", "/");
        (r.0 == 508).then_some(r)
    });
    assert!(body.contains("Loop Detected"), "{s} {body}");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", edge.proc.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    for _ in 0..100 {
        assert_eq!(edge.get("app.test", "/").0, 508);
    }
    let after = fds();
    // a few pooled connections to itself at most; the loop used to take thousands
    assert!(after <= before + 8, "fds {before} → {after}");
    let (_, metrics) = http(edge.admin, "GET", "/metrics", None, None, &[]);
    let loops: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("zeitwork_cross_region_loops_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    eprintln!(
        "cross-region loop: edge fds {before} → {after} over 100 looping requests; \
         zeitwork_cross_region_loops_total {loops}"
    );
    // one per request that went round, and each went round once
    assert!(loops >= 101, "{loops}");
    assert!(loops <= 101 + 20, "{loops}");
}

/// An acknowledged write survives `kill -9`: writes go on from another thread while the
/// operator is killed part way; after a restart on the same data directory, every write
/// that was answered 201 is there.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("op");
    let port = free_port();
    let mut op = Operator::start(&data, port, None);
    let (addr, token) = (op.addr, op.token.clone());
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        // bounded in count and time
        let started = Instant::now();
        for i in 0..2_000 {
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
            let name = format!("r{i}");
            let (s, _) = api_call(
                addr,
                &token,
                "POST",
                "/api/v1/regions",
                Some(json!({"name": name})),
            );
            match s {
                201 => acked.push(name),
                0 => break, // the operator is gone
                other => panic!("POST region {name}: {other}"),
            }
        }
        acked
    });
    eventually(Duration::from_secs(20), "some writes acknowledged", || {
        let (_, v) = op.api("GET", "/api/v1/regions?limit=500", None);
        (v["items"].as_array().map_or(0, |a| a.len()) >= 100).then_some(())
    });
    op.proc.kill(); // SIGKILL
    let acked = writer.join().unwrap();
    assert!(acked.len() >= 100, "{} writes acknowledged", acked.len());

    let op = Operator::start(&data, port, None);
    let mut stored = std::collections::BTreeSet::new();
    let mut path = "/api/v1/regions?limit=500".to_string();
    loop {
        let v = op.ok("GET", &path, None);
        for r in v["items"].as_array().unwrap() {
            stored.insert(r["name"].as_str().unwrap().to_string());
        }
        match v["next"].as_str() {
            Some(n) => path = format!("/api/v1/regions?limit=500&after={n}"),
            None => break,
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
}

fn curl_https(root: &std::path::Path, host: &str, port: u16, flag: &str) -> String {
    curl(&[
        flag,
        "--cacert",
        &root.display().to_string(),
        "--resolve",
        &format!("{host}:{port}:127.0.0.1"),
        &format!("https://{host}:{port}/"),
    ])
}

/// The operator is the fleet's one ACME client: a verified domain gets one certificate
/// from a real ACME server (pebble), ordered once whatever the number of edges; HTTP-01 is
/// answered by whichever edge the balancer picks (the token travels in every snapshot);
/// both edges serve the same certificate over HTTPS through the balancer (HTTP/1.1 and
/// HTTP/2), `zeitwork get certificates` shows it, and HTTPS keeps working through an
/// operator outage. Traefik cannot do this in HA (its docs: not possible to run multiple
/// instances with Let's Encrypt enabled; traefik#2025).
#[test]
fn the_operator_orders_one_certificate_for_the_fleet_and_every_edge_serves_it() {
    if !tool("curl") || !tool("pebble") {
        return;
    }
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let lb_port = free_port();
    let pb = support::acme::pebble(dir.path(), lb_port, free_port());
    let ca = pb.ca.clone();
    let acme = [
        "--acme-ca",
        &pb.directory,
        "--acme-ca-certificate",
        &ca,
        "--acme-email",
        "ops@app.test",
    ];
    // With PostgreSQL, two operator replicas order for the same database: still one order.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = rt.block_on(zw_store::testkit::TestDb::postgres());
    let url = pg.as_ref().map(|d| d.url.clone());
    let mut op = Operator::start_with(&dir.path().join("op"), free_port(), url.as_deref(), &acme);
    let replica = url
        .as_deref()
        .map(|u| Operator::start_replica_with(&dir.path().join("op2"), free_port(), u, &op, &acme));
    let token = seed(&op, up.addr);
    let token2 = edge_token(&op);
    let second_op = replica.as_ref().map_or(op.addr, |r| r.addr);
    let edges = [
        Edge::start(
            op.addr,
            &token,
            "e1",
            &dir.path().join("e1"),
            &["--proxy-protocol", "web=127.0.0.1/32"],
        ),
        Edge::start(
            second_op,
            &token2,
            "e2",
            &dir.path().join("e2"),
            &["--proxy-protocol", "web=127.0.0.1/32"],
        ),
    ];
    eventually(Duration::from_secs(15), "both edges connected", || {
        connected_and_current(&op, 2).then_some(())
    });
    let (a1, a2) = (edges[0].http.to_string(), edges[1].http.to_string());
    let listen = format!("127.0.0.1:{lb_port}");
    let lb = Balancer::start(&[
        "--listen",
        &listen,
        "--backend",
        &a1,
        "--backend",
        &a2,
        "--algorithm",
        "round_robin",
        "--health-interval",
        "200ms",
    ]);

    // The domain is claimed, not proven: the operator checks it through the region's
    // balancer, which is at first somewhere else (the app itself answers there).
    op.ok(
        "PATCH",
        "/api/v1/regions/eu",
        Some(json!({"balancer_address": up.addr.to_string()})),
    );
    op.ok(
        "POST",
        "/api/v1/domains",
        Some(json!({"name": "app.test", "deployment": "web"})),
    );
    let why = eventually(Duration::from_secs(15), "the check failed", || {
        op.ok("GET", "/api/v1/domains/app.test", None)["check_error"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        why.contains("answered") && why.contains("point its DNS"),
        "{why}"
    );
    let dom = op.ok("GET", "/api/v1/domains/app.test", None);
    assert!(dom["verified_at"].is_null(), "{dom}");
    assert_eq!(
        op.ok("GET", "/api/v1/tls-certificates", None)["items"],
        json!([]),
        "no certificate is ordered for a name not proven to lead here"
    );
    // The region's balancer is the real one now: the next check (at once: the way to the
    // name changed) gets the token back from whichever edge the balancer picked.
    op.ok(
        "PATCH",
        "/api/v1/regions/eu",
        Some(json!({"balancer_address": lb.addr.to_string()})),
    );
    eventually(Duration::from_secs(15), "the domain verified", || {
        let d = op.ok("GET", "/api/v1/domains/app.test", None);
        (d["verified_at"].is_string() && d["check_error"].is_null()).then_some(())
    });
    // Whichever operator ordered it, the store has it.
    eventually(Duration::from_secs(60), "the certificate obtained", || {
        let certs = op.ok("GET", "/api/v1/tls-certificates", None);
        (certs["items"][0]["status"] == "valid").then_some(())
    });
    // The other replica had every chance to order too (its changes wake it).
    std::thread::sleep(Duration::from_millis(if replica.is_some() {
        2000
    } else {
        200
    }));
    let certs = op.ok("GET", "/api/v1/tls-certificates", None);
    let c = &certs["items"][0];
    assert_eq!(c["domain"], "app.test", "{certs}");
    assert_eq!(c["status"], "valid", "{certs}");
    assert_eq!(c["orders"], 1, "one order for the fleet: {certs}");
    assert!(
        c["issuer"].as_str().unwrap_or("").contains("Pebble"),
        "{certs}"
    );
    // Both edges run it: the same names and expiry in each one's running configuration.
    let served = |e: &Edge| {
        e.status()["certificates"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["names"][0] == "app.test").cloned())
    };
    let first = eventually(
        Duration::from_secs(10),
        "edge 1 holds the certificate",
        || served(&edges[0]),
    );
    let second = eventually(
        Duration::from_secs(10),
        "edge 2 holds the certificate",
        || served(&edges[1]),
    );
    assert_eq!(first, second);

    let root = dir.path().join("issued-root.pem");
    pb.issued_root(&root);
    let before: Vec<u64> = edges.iter().map(edge_requests).collect();
    for flag in ["--http1.1", "--http2", "--http1.1", "--http2"] {
        let out = curl_https(&root, "app.test", lb.addr.port(), flag);
        assert!(out.contains(" 200 "), "{flag}: {out}");
        assert!(
            out.contains("\"upstream\": \"app\"") || out.contains("\"upstream\":\"app\""),
            "{out}"
        );
    }
    let after: Vec<u64> = edges.iter().map(edge_requests).collect();
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "round robin reaches both edges over HTTPS: {before:?} -> {after:?}"
    );
    // The CLI shows it.
    let out = std::process::Command::new(BIN)
        .args(["get", "certificates", "--operator"])
        .arg(format!("http://{}", op.addr))
        .env("ZEITWORK_TOKEN", &op.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("app.test") && text.contains("valid"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The operators go away; the edges keep serving HTTPS with what they have.
    op.proc.kill();
    drop(replica);
    for flag in ["--http1.1", "--http2"] {
        let out = curl_https(&root, "app.test", lb.addr.port(), flag);
        assert!(out.contains(" 200 "), "during the outage, {flag}: {out}");
    }
}
