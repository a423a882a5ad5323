//! `zeitwork up` as a child process, with the operator's API, the balancer, a test app
//! and the `zeitwork` client commands at hand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

pub const APP: &str = r#"
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
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

/// The operator's API inside `zeitwork up`.
pub struct Api {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub token: String,
}

impl Api {
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = api_call(self.addr, &self.token, method, path, body);
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }
}

pub struct Platform {
    pub up: Proc,
    /// The agent's admin endpoint in `up`.
    pub agent_admin: SocketAddr,
    pub op: Api,
    pub balancer: SocketAddr,
    /// The balancer's HTTPS port.
    pub https: SocketAddr,
    pub dir: tempfile::TempDir,
    pub app: PathBuf,
}

pub fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// [`start_up`], with the app `source` written to `file` in its directory; the file's
/// path.
pub fn start_up_with_app(source: &str, file: &str) -> (Platform, String) {
    let p = start_up(&[]);
    let app = p.dir.path().join(file);
    std::fs::write(&app, source).unwrap();
    let app = app.to_str().unwrap().to_string();
    (p, app)
}

/// `zeitwork up` on free ports with fast node timeouts (suspect 2 s, lost 5 s), plus
/// `extra` arguments; returns once the agent and the balancer's edge are there.
pub fn start_up(extra: &[&str]) -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, http, edge, admin, ingress, agent_admin) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let https = free_port();
    let args: Vec<String> = [
        "up",
        "--data-dir",
        data.to_str().unwrap(),
        "--api",
        &addr(api),
        "--http",
        &addr(http),
        "--https",
        &addr(https),
        "--edge",
        &addr(edge),
        "--edge-admin",
        &addr(admin),
        "--ingress",
        &addr(ingress),
        "--agent-admin",
        &addr(agent_admin),
        "--node-suspect-after",
        "2s",
        "--node-lost-after",
        "5s",
        // No KVM canary (it takes up to 10 s where nested KVM hangs): emulation, as in CI.
        "--qemu-accel",
        "tcg",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let up = Proc::spawn("up", &args);
    up.wait_log(Duration::from_secs(30), |v| message(v) == "agent connected");
    // The balancer has found the edge once the edge is ready behind it.
    up.wait_log(Duration::from_secs(30), |v| message(v) == "backend added");
    let token = std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let app = dir.path().join("app.py");
    std::fs::write(&app, APP).unwrap();
    let op = Api {
        addr: addr(api).parse().unwrap(),
        data_dir: data,
        token,
    };
    Platform {
        up,
        agent_admin: addr(agent_admin).parse().unwrap(),
        op,
        balancer: addr(http).parse().unwrap(),
        https: addr(https).parse().unwrap(),
        dir,
        app,
    }
}

impl Platform {
    /// `zeitwork ARGS…` pointed at this platform's operator, to run as the caller likes.
    pub fn command(&self, args: &[&str]) -> Command {
        // Options before the arguments: `deploy` takes everything after `--` as the command.
        let mut cmd = Command::new(BIN);
        cmd.arg(args[0])
            .args(["--data-dir", self.op.data_dir.to_str().unwrap()])
            .args(["--operator", &format!("http://{}", self.op.addr)])
            .args(&args[1..]);
        cmd
    }

    pub fn zeitwork(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `zeitwork deploy`; the milliseconds until the app answered through the balancer.
    pub fn deploy(&self, name: &str, replicas: u32) -> u64 {
        let replicas = replicas.to_string();
        let domain = format!("{name}.test");
        let (ok, out) = self.zeitwork(&[
            "deploy",
            name,
            "--domain",
            &domain,
            "--replicas",
            &replicas,
            "--",
            "python3",
            self.app.to_str().unwrap(),
        ]);
        assert!(ok, "deploy failed:\n{out}\n{}", self.up.dump());
        assert!(
            out.contains(&format!("http://{domain}:{}/", self.balancer.port())),
            "{out}"
        );
        // `up`'s local CA signs `.localhost` names only, and deploy says so beside the URL
        assert!(
            out.contains(&format!("https://{domain}:{}/ (no certificate yet: the local CA signs only *.localhost names", self.https.port())),
            "{out}"
        );
        let routed = out
            .split("routed ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok());
        routed.unwrap_or_else(|| panic!("no routed time in:\n{out}"))
    }

    /// Deploys the test app as `name`, one replica, on `domain`.
    pub fn deploy_on(&self, name: &str, domain: &str) {
        let app = self.app.display().to_string();
        let (ok, out) = self.zeitwork(&["deploy", name, "--domain", domain, "--", "python3", &app]);
        assert!(ok, "deploy {name}:\n{out}");
        if domain.ends_with(".localhost") {
            // verified through the balancer, then certified by the local CA: deploy ends
            // with the HTTPS URL
            assert!(
                out.contains(&format!("  https://{domain}:{}/\n", self.https.port())),
                "{out}"
            );
        }
    }

    /// An HTTPS request for `host` through the balancer's HTTPS port, trusting the local
    /// CA's root: `curl`'s output ([`curl`]).
    pub fn https_get(&self, host: &str, flag: &str) -> String {
        let port = self.https.port();
        curl(&[
            flag,
            "--cacert",
            &self.op.data_dir.join("local-ca.pem").display().to_string(),
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("https://{host}:{port}/"),
        ])
    }

    pub fn get(&self, name: &str) -> (u16, String) {
        http(
            self.balancer,
            "GET",
            "/",
            None,
            None,
            &[("host", &format!("{name}.test"))],
        )
    }

    pub fn instances(&self, deployment: &str) -> Vec<Value> {
        self.op.ok(
            "GET",
            &format!("/api/v1/instances?deployment={deployment}"),
            None,
        )["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn started(&self, deployment: &str) -> Vec<Value> {
        self.instances(deployment)
            .into_iter()
            .filter(|i| i["state"] == "started")
            .collect()
    }

    pub fn nodes(&self) -> Vec<Value> {
        self.op.ok("GET", "/api/v1/nodes", None)["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The app's Python processes (this test's app file only), as (pid, instance id).
    pub fn app_processes(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        let app = self.app.to_str().unwrap();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).to_string())
                .collect();
            if args.first().map(String::as_str) != Some("python3") || !args.iter().any(|a| a == app)
            {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let id = env
                .split(|b| *b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix("ZEITWORK_INSTANCE="))
                .unwrap_or("")
                .to_string();
            out.push((pid, id));
        }
        out.sort();
        out
    }
}

impl Drop for Platform {
    /// Also on a failed assertion: stop `up` the way a user does (its instances stop with
    /// it), and kill whatever app process is left (a lost node's, say).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.up.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !self.up.logs().iter().any(|v| message(v) == "stopped") {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (pid, _) in self.app_processes() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

pub fn agent_args(p: &Platform, ingress: u16, state: &Path) -> Vec<String> {
    let admin = addr(free_port());
    [
        "agent",
        "--operator",
        &p.op.addr.to_string(),
        "--token",
        &p.op.token,
        "--region",
        "local",
        "--ingress",
        &addr(ingress),
        "--state-dir",
        state.to_str().unwrap(),
        "--heartbeat",
        "500ms",
        "--admin",
        &admin,
        "--qemu-accel",
        "tcg",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
