//! Releases on real processes through balancer → edge → ingress → instance: redeploys
//! under load that lose no request, a failing release that is halted while the old one
//! serves, a rollback, and secrets that reach the instance and nothing else.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::platform::*;
use support::*;

/// Answers `VERSION INSTANCE` (its `VERSION` variable and its instance id), or the value
/// of variable NAME at `/env/NAME`; keeps connections alive.
const APP: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/env/"):
            body = os.environ.get(self.path[5:], "").encode()
        else:
            body = ("%s %s\n" % (os.environ.get("VERSION"), os.environ.get("ZEITWORK_INSTANCE"))).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("listening on", os.environ["PORT"], "version", os.environ.get("VERSION"), flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// One answered (or failed) request of the load.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was sent, from the load's start.
    at: Duration,
    took: Duration,
    status: u16,
    body: String,
}

/// A client on one kept-alive connection, as a browser or an HTTP library is: a
/// connection the server closed while idle is replaced before the request is sent again,
/// which is the only retry it makes.
struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    fn get(&mut self, host: &str) -> (u16, String) {
        for _ in 0..2 {
            let reused = self.conn.is_some();
            let conn = match self.conn.take() {
                Some(c) => c,
                None => match TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)) {
                    Ok(s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                        BufReader::new(s)
                    }
                    Err(_) => return (0, "connect failed".into()),
                },
            };
            match exchange(conn, host) {
                Ok((status, body, conn)) => {
                    self.conn = conn;
                    return (status, body);
                }
                // closed while idle, before any byte of an answer: a fresh connection
                Err(None) if reused => continue,
                Err(e) => return (0, format!("{e:?}")),
            }
        }
        (0, "closed twice".into())
    }
}

/// One request on `conn`; the connection back when it may be reused. `Err(None)`: it
/// was closed before the answer began.
type Exchange = Result<(u16, String, Option<BufReader<TcpStream>>), Option<String>>;

fn exchange(mut conn: BufReader<TcpStream>, host: &str) -> Exchange {
    let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
    if conn.get_mut().write_all(req.as_bytes()).is_err() {
        return Err(None);
    }
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(0) | Err(_) if line.is_empty() => return Err(None),
        _ => {}
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Some(format!("bad status line {line:?}")))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h).unwrap_or(0) == 0 {
            return Err(Some("head cut short".into()));
        }
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if h == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)
        .map_err(|e| Some(format!("body cut short: {e}")))?;
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        (!close).then_some(conn),
    ))
}

/// Load until `stop`, bounded in count and time: one thread on a kept-alive connection,
/// one opening a new connection per request.
fn load(
    balancer: SocketAddr,
    host: &str,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> Vec<std::thread::JoinHandle<Vec<Sample>>> {
    (0..2)
        .map(|kind| {
            let (stop, host) = (stop.clone(), host.to_string());
            std::thread::spawn(move || {
                let mut client = KeepAlive {
                    addr: balancer,
                    conn: None,
                };
                let mut out = Vec::new();
                let until = start + Duration::from_secs(400);
                while !stop.load(Ordering::Relaxed) && out.len() < 400_000 && Instant::now() < until
                {
                    let at = start.elapsed();
                    let (status, body) = if kind == 0 {
                        client.get(&host)
                    } else {
                        http(balancer, "GET", "/", None, None, &[("host", host.as_str())])
                    };
                    out.push(Sample {
                        at,
                        took: start.elapsed() - at,
                        status,
                        body,
                    });
                    std::thread::sleep(Duration::from_millis(1));
                }
                out
            })
        })
        .collect()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn deploy(p: &Platform, app: &str, version: &str, replicas: &str) -> (bool, String) {
    p.zeitwork(&[
        "deploy",
        "rel",
        "--domain",
        "rel.test",
        "--replicas",
        replicas,
        "--env",
        &format!("VERSION={version}"),
        "--timeout",
        "60s",
        "--",
        "python3",
        app,
    ])
}

/// The version a response body names.
fn version_of(body: &str) -> Option<u32> {
    let mut parts = body.split_whitespace();
    let v = parts.next()?.parse().ok()?;
    parts.next().filter(|i| i.starts_with("inst-"))?;
    Some(v)
}

#[test]
fn redeploys_a_failing_release_and_a_rollback_lose_no_request() {
    if !tool("python3") {
        return;
    }
    let replicas: u32 = std::env::var("ZEITWORK_ROLLOUT_REPLICAS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let rounds: u32 = std::env::var("ZEITWORK_ROLLOUT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let (p, app) = start_up_with_app(APP, "version.py");
    let n = replicas.to_string();
    let (ok, out) = deploy(&p, &app, "0", &n);
    assert!(ok, "{out}\n{}", p.up.dump());

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads = load(p.balancer, "rel.test", stop.clone(), start);
    // A quiet stretch first: the latency without a rollout.
    std::thread::sleep(Duration::from_secs(2));
    // (version, sent at, done at)
    let mut rollouts: Vec<(u32, Duration, Duration)> = Vec::new();
    for v in 1..=rounds {
        let t0 = start.elapsed();
        let (ok, out) = deploy(&p, &app, &v.to_string(), &n);
        assert!(ok, "redeploy {v}: {out}\n{}", p.up.dump());
        assert!(out.contains(&format!("release v{}", v + 1)), "{out}");
        rollouts.push((v, t0, start.elapsed()));
    }
    std::thread::sleep(Duration::from_millis(500));

    // A release whose process exits at start: halted, the running one keeps serving.
    let t0 = start.elapsed();
    let (ok, out) = p.zeitwork(&[
        "deploy",
        "rel",
        "--domain",
        "rel.test",
        "--replicas",
        &n,
        "--env",
        "VERSION=broken",
        "--timeout",
        "60s",
        "--",
        "python3",
        "-c",
        "import sys; sys.exit(3)",
    ]);
    let halted_in = start.elapsed() - t0;
    assert!(
        !ok,
        "a release that exits at start must fail the deploy: {out}"
    );
    assert!(
        out.contains("was halted") && out.contains("exited with status 3"),
        "the deploy names the failure: {out}"
    );
    assert!(out.contains(&format!("stays on v{}", rounds + 1)), "{out}");
    let (ok, status) = p.zeitwork(&["status", "rel"]);
    assert!(ok, "{status}");
    assert!(
        status.contains(&format!("* v{}", rounds + 1)) && status.contains("failed: instance"),
        "{status}"
    );
    std::thread::sleep(Duration::from_millis(500));

    // Back to the release before the running one.
    let t0 = start.elapsed();
    let (ok, out) = p.zeitwork(&["rollback", "rel", "--timeout", "60s"]);
    assert!(ok, "{out}\n{}", p.up.dump());
    assert!(out.contains(&format!("rollback to v{rounds}")), "{out}");
    rollouts.push((rounds - 1, t0, start.elapsed()));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<Sample> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();

    let failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status != 200 || version_of(&s.body).is_none())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed or were not answered by exactly one release: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)]
    );
    // Once a deploy says done, only its release answers, until the next one starts.
    let mut next_starts: Vec<Duration> = rollouts.iter().skip(1).map(|r| r.1).collect();
    next_starts.push(Duration::MAX);
    for ((v, _, done), until) in rollouts.iter().zip(&next_starts) {
        let stale: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at > *done && s.at < *until)
            .filter(|s| version_of(&s.body) != Some(*v))
            .collect();
        assert!(
            stale.is_empty(),
            "after release {v} was done, another answered: {:?}",
            &stale[..stale.len().min(5)]
        );
    }
    let during = |s: &Sample| rollouts.iter().any(|(_, a, b)| s.at >= *a && s.at <= *b);
    let p99_during = percentile(
        samples
            .iter()
            .filter(|s| during(s))
            .map(|s| s.took)
            .collect(),
        0.99,
    );
    let p99_quiet = percentile(
        samples
            .iter()
            .filter(|s| !during(s))
            .map(|s| s.took)
            .collect(),
        0.99,
    );
    let times: Vec<u128> = rollouts
        .iter()
        .map(|(_, a, b)| (*b - *a).as_millis())
        .collect();
    eprintln!(
        "{replicas} replicas: {} requests, 0 failed; {} redeploys + 1 rollback took {:?} ms \
         (deploy to the new release serving all traffic, median {} ms); a failing release was \
         halted in {} ms; p99 during rollouts {:?} vs {:?} without: ratio {:.2}",
        samples.len(),
        rounds,
        times,
        {
            let mut t = times.clone();
            t.sort();
            t[t.len() / 2]
        },
        halted_in.as_millis(),
        p99_during,
        p99_quiet,
        p99_during.as_secs_f64() / p99_quiet.as_secs_f64().max(1e-9)
    );
    // Every release is listed, the running one marked.
    let (ok, list) = p.zeitwork(&["releases", "rel"]);
    assert!(ok, "{list}");
    assert!(list.contains(&format!("* v{}", rounds + 3)), "{list}");
    assert!(list.contains("changed: env VERSION"), "{list}");
}

#[test]
fn secrets_reach_the_instance_and_nothing_else() {
    if !tool("python3") {
        return;
    }
    let (p, app) = start_up_with_app(APP, "version.py");
    let (ok, out) = deploy(&p, &app, "1", "1");
    assert!(ok, "{out}");
    // What the instance has in its environment, through balancer → edge → instance.
    let env_of = |name: &str| {
        http(
            p.balancer,
            "GET",
            &format!("/env/{name}"),
            None,
            None,
            &[("host", "rel.test")],
        )
    };
    let secret = "s3cr3t-Zw-7f1c2a9b44e0";
    let (ok, out) = p.zeitwork(&["secrets", "set", "rel", &format!("API_KEY={secret}")]);
    assert!(ok, "{out}\n{}", p.up.dump());
    assert!(out.contains("secret API_KEY set"), "{out}");
    // In the instance's environment:
    let (s, body) = env_of("API_KEY");
    assert_eq!((s, body.as_str()), (200, secret));
    // A second one from standard input.
    let out = p
        .command(&["secrets", "set", "rel", "DB_PASSWORD"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"pw-from-stdin-93e1\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body) = env_of("DB_PASSWORD");
    assert_eq!(body, "pw-from-stdin-93e1");
    let (ok, list) = p.zeitwork(&["secrets", "list", "rel"]);
    assert!(
        ok && list.contains("API_KEY") && list.contains("DB_PASSWORD"),
        "{list}"
    );

    // …and nowhere else: no API answer, no `get` or `status` output, no log line, and not
    // in the database files in clear text.
    let mut seen = String::new();
    for path in [
        "/api/v1/deployments/rel",
        "/api/v1/deployments/rel/releases",
        "/api/v1/deployments/rel/secrets",
        "/api/v1/images/rel",
        "/api/v1/instances",
        "/api/v1/snapshots/local",
    ] {
        seen.push_str(&p.op.ok("GET", path, None).to_string());
    }
    for args in [
        &["get", "deployments", "-o", "json"][..],
        &["get", "images", "-o", "json"],
        &["get", "instances", "-o", "json"],
        &["releases", "rel", "--json"],
        &["status", "rel"],
        &["secrets", "list", "rel"],
    ] {
        let (ok, out) = p.zeitwork(args);
        assert!(ok, "{args:?}: {out}");
        seen.push_str(&out);
    }
    seen.push_str(&p.up.dump());
    for value in [secret, "pw-from-stdin-93e1"] {
        assert!(!seen.contains(value), "a secret's value was shown");
        for entry in std::fs::read_dir(&p.op.data_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().contains(".db") {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "{} holds a secret in clear text",
                    path.display()
                );
            }
        }
    }
    // Removing one is a release too; the instance no longer has it.
    let (ok, out) = p.zeitwork(&["secrets", "unset", "rel", "API_KEY"]);
    assert!(ok, "{out}");
    let (_, body) = env_of("API_KEY");
    assert_eq!(body, "");
}

/// On PostgreSQL the store holds only the sealed value.
#[test]
fn postgres_holds_only_sealed_secrets() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(zw_store::testkit::TestDb::postgres()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::start(dir.path(), free_port(), Some(&db.url));
    op.ok(
        "POST",
        "/api/v1/regions",
        Some(serde_json::json!({"name": "eu"})),
    );
    op.ok(
        "POST",
        "/api/v1/images",
        Some(serde_json::json!({"name": "web", "command": ["/bin/web"]})),
    );
    op.ok(
        "POST",
        "/api/v1/deployments",
        Some(serde_json::json!({"name": "web", "image": "web", "regions": ["eu"], "port": 80})),
    );
    let secret = "pg-secret-5b0e9d1f";
    let r = op.ok(
        "PATCH",
        "/api/v1/deployments/web/secrets",
        Some(serde_json::json!({"set": {"TOKEN": secret}})),
    );
    assert_eq!(r["version"], 2, "{r}");
    assert_eq!(r["secrets"], serde_json::json!(["TOKEN"]), "{r}");
    assert!(!r.to_string().contains(secret));
    // Everything PostgreSQL holds, dumped as text.
    let dump = std::process::Command::new("pg_dump")
        .arg(&db.url)
        .output()
        .or_else(|_| {
            std::process::Command::new("psql")
                .args([&db.url, "-c", "SELECT * FROM releases"])
                .output()
        })
        .expect("pg_dump or psql");
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.contains("TOKEN"),
        "the dump holds the releases: {text}"
    );
    assert!(
        !text.contains(secret),
        "PostgreSQL holds a secret in clear text"
    );
}

/// Prints a line for every request it answers.
const CHATTY: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("hit", self.path, flush=True)
        body = ("%s\n" % os.environ.get("ZEITWORK_INSTANCE")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("listening on", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// `zeitwork logs -f` from outside either node: lines of the instances on two nodes, in
/// the order they were written, and an instance that starts later joins the stream.
#[test]
fn logs_follow_instances_on_every_node_in_time_order() {
    if !tool("python3") {
        return;
    }
    let (p, app) = start_up_with_app(CHATTY, "chatty.py");
    let state2 = p.dir.path().join("agent2");
    let agent2 = Proc::spawn("agent2", &agent_args(&p, free_port(), &state2));
    agent2.wait_log(Duration::from_secs(20), |v| {
        message(v) == "connected to the operator"
    });
    let (ok, out) = p.zeitwork(&[
        "deploy",
        "chat",
        "--domain",
        "chat.test",
        "--replicas",
        "2",
        "--",
        "python3",
        &app,
    ]);
    assert!(ok, "{out}");
    let nodes: std::collections::BTreeSet<String> = p
        .instances("chat")
        .iter()
        .map(|i| i["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nodes.len(), 2, "one instance on each node");

    // Follow from a directory that is neither node's: the operator fetches the lines.
    let mut follow = p
        .command(&["logs", "chat", "-f", "-t", "--tail", "0"])
        .args(["--token", &p.op.token])
        .current_dir(p.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    // Requests 300 ms apart (beyond the clock's quarter second), each answered by
    // whichever instance the edge picks; each answer names the instance that logged it.
    let mut sent = Vec::new();
    for n in 0..12 {
        let (s, who) = http(
            p.balancer,
            "GET",
            &format!("/req-{n}"),
            None,
            None,
            &[("host", "chat.test")],
        );
        assert_eq!(s, 200);
        sent.push((n, who.trim().to_string()));
        std::thread::sleep(Duration::from_millis(300));
    }
    let answered: std::collections::BTreeSet<&str> = sent.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(answered.len(), 2, "both instances answered: {sent:?}");
    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.iter().filter(|l| l.contains("hit /req-")).count() < sent.len()
        && Instant::now() < deadline
    {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(l);
        }
    }
    let hits: Vec<(u32, String)> = got
        .iter()
        .filter_map(|l| {
            // TIME NODE [INSTANCE] hit /req-N
            let inst = l.split('[').nth(1)?.split(']').next()?.to_string();
            let n = l.rsplit("/req-").next()?.parse().ok()?;
            Some((n, inst))
        })
        .collect();
    assert_eq!(
        hits,
        sent,
        "every request's line, labelled with its instance, in the order written:\n{}",
        got.join("\n")
    );
    let logged_nodes: std::collections::BTreeSet<&str> =
        got.iter().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(logged_nodes.len(), 2, "lines from both nodes: {got:?}");

    // A third instance joins the stream.
    let (ok, out) = p.zeitwork(&["scale", "chat", "3"]);
    assert!(ok, "{out}");
    let third = eventually(Duration::from_secs(30), "a third started instance", || {
        p.started("chat")
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .find(|id| !answered.contains(id.as_str()))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut joined = false;
    while !joined && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            joined = l.contains(&format!("[{third}] listening on"));
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(joined, "the new instance's first line reached the follower");
    drop(agent2);
}
