//! The whole platform on real processes: `zeitwork up`, apps deployed with
//! `zeitwork deploy`, requests through balancer → edge → worker ingress (mutual TLS) →
//! instance, crashes, agents stopped, lost and restarted.
//!
//! The app is a small Python HTTP server (python3 is on every machine this runs on) that
//! answers with its instance id.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::platform::*;
use support::*;

#[test]
fn deploy_crash_agent_loss_and_restart() {
    if !tool("python3") || !tool("curl") {
        return;
    }
    let p = start_up(&[]);

    // Two replicas, both reached through balancer → edge → ingress.
    p.deploy("hello", 2);
    let ids: Vec<String> = p
        .started("hello")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (s, body) = p.get("hello");
        assert_eq!(s, 200, "{body}");
        seen.insert(body.trim().to_string());
    }
    assert_eq!(seen, ids.iter().cloned().collect(), "both replicas answer");
    // HTTPS out of the box: a `.localhost` domain gets a certificate from `up`'s local CA,
    // served through the balancer's HTTPS port; its root is DATA_DIR/local-ca.pem.
    p.deploy_on("secure", "secure.localhost");
    let https = eventually(
        Duration::from_secs(20),
        "HTTPS for secure.localhost",
        || {
            let out = p.https_get("secure.localhost", "--http2");
            out.contains("\n2 200 ").then_some(out)
        },
    );
    let secure: Vec<String> = p
        .started("secure")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        secure,
        vec![https.lines().next().unwrap_or("").to_string()],
        "the instance answers over HTTPS"
    );
    let (ok, certs) = p.zeitwork(&["get", "certificates"]);
    assert!(
        ok && certs.contains("secure.localhost") && certs.contains("Zeitwork local CA"),
        "{certs}"
    );

    // Gone again: what follows counts the hello instances alone.
    let (ok, out) = p.zeitwork(&["destroy", "secure"]);
    assert!(ok, "{out}");

    let (ok, logs) = p.zeitwork(&["logs", "hello"]);
    assert!(ok, "{logs}");
    for id in &ids {
        assert!(logs.contains(&format!("[{id}] listening on")), "{logs}");
    }

    // Kill one instance's process under load: the agent restarts it, and no request fails
    // meanwhile (the edges stop routing to it; the ingress sends the few that were already
    // on their way to its sibling).
    let victim = ids[0].clone();
    let (victim_pid, _) = p
        .app_processes()
        .into_iter()
        .find(|(_, id)| *id == victim)
        .expect("the victim's process");
    let balancer = p.balancer;
    let load = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut codes = Vec::new();
        while Instant::now() < deadline && codes.len() < 5000 {
            codes.push(http(balancer, "GET", "/", None, None, &[("host", "hello.test")]).0);
        }
        codes
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(victim_pid, "-KILL");
    p.up.wait_log(Duration::from_secs(10), |v| {
        v["fields"]["instance"] == victim.as_str() && v["fields"]["state"] == "failed"
    });
    let restarted = eventually(
        Duration::from_secs(20),
        "the killed instance restarted",
        || {
            p.app_processes()
                .into_iter()
                .find(|(pid, id)| *id == victim && *pid != victim_pid)
        },
    );
    eventually(
        Duration::from_secs(10),
        "two started instances again",
        || (p.started("hello").len() == 2).then_some(()),
    );
    let codes = load.join().unwrap();
    let failed: Vec<u16> = codes.iter().copied().filter(|c| *c != 200).collect();
    assert!(codes.len() > 50, "load ran: {} requests", codes.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while an instance restarted (statuses {failed:?}, 0: no answer)\n{}",
        failed.len(),
        codes.len(),
        p.up.dump()
    );
    eprintln!(
        "instance {victim}: pid {victim_pid} killed, restarted as pid {}; {} requests, 0 failed",
        restarted.0,
        codes.len()
    );

    // The agent's admin endpoint counts the crash and shows where each instance answers.
    let (s, metrics) = http(p.agent_admin, "GET", "/metrics", None, None, &[]);
    assert_eq!(s, 200);
    assert!(
        metrics.contains("zeitwork_agent_instance_failures_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zeitwork_agent_instances{state=\"started\"} 2"),
        "{metrics}"
    );
    let (_, list) = http(p.agent_admin, "GET", "/debug/instances", None, None, &[]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert!(
        list.iter()
            .all(|i| i["state"] == "started" && i["address"].is_string()),
        "{list:?}"
    );

    // A client without a platform certificate gets no HTTP out of the ingress.
    let node = p.nodes().into_iter().next().unwrap();
    let ingress = node["ingress_address"].as_str().unwrap().to_string();
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", &format!("zeitwork-instance: {victim}")])
        .arg(format!("https://{ingress}/"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "curl without a certificate must fail"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "000",
        "no HTTP response"
    );

    // A second node: scaled-up replicas spread onto it.
    let state2 = p.dir.path().join("agent2");
    let ingress2 = free_port();
    let mut agent2 = Proc::spawn("agent2", &agent_args(&p, ingress2, &state2));
    agent2.wait_log(Duration::from_secs(20), |v| {
        message(v) == "connected to the operator"
    });
    let node2 = std::fs::read_to_string(state2.join("node-id"))
        .unwrap()
        .trim()
        .to_string();
    let (ok, out) = p.zeitwork(&["scale", "hello", "4"]);
    assert!(ok, "{out}");
    eventually(Duration::from_secs(30), "four started instances", || {
        (p.started("hello").len() == 4).then_some(())
    });
    let on_node2: Vec<String> = p
        .instances("hello")
        .iter()
        .filter(|i| i["node"] == node2.as_str())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(on_node2.len(), 2, "replicas spread across the two nodes");

    // The agent stops and comes back: it adopts what runs, nothing is started twice.
    let before = p.app_processes();
    signal(agent2.pid(), "-TERM");
    agent2.wait_log(Duration::from_secs(10), |v| message(v) == "stopped");
    agent2 = Proc::spawn("agent2", &agent_args(&p, ingress2, &state2));
    for id in &on_node2 {
        agent2.wait_log(Duration::from_secs(20), |v| {
            message(v) == "adopted a running instance" && v["fields"]["instance"] == id.as_str()
        });
    }
    agent2.wait_log(Duration::from_secs(20), |v| {
        message(v) == "assignments received"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.app_processes(), before, "the same processes, none added");
    assert_eq!(p.started("hello").len(), 4);

    // The agent dies: its node is suspect, then lost, and its replicas move. Until then
    // the edges still route to its ingress, which refuses connections: they send those
    // requests to node 1 instead, so clients see no failure.
    let load = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut codes = Vec::new();
        while Instant::now() < deadline && codes.len() < 20_000 {
            codes.push(http(balancer, "GET", "/", None, None, &[("host", "hello.test")]).0);
            std::thread::sleep(Duration::from_millis(2));
        }
        codes
    });
    let killed_at = Instant::now();
    agent2.kill();
    eventually(Duration::from_secs(15), "node 2 lost", || {
        p.nodes()
            .iter()
            .any(|n| n["id"] == node2.as_str() && n["state"] == "lost")
            .then_some(())
    });
    let lost_after = killed_at.elapsed();
    let codes = load.join().unwrap();
    let failed = codes.iter().filter(|c| **c != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed while node 2 was going",
        codes.len()
    );
    eprintln!("node 2 going: {} requests, 0 failed", codes.len());
    eventually(
        Duration::from_secs(30),
        "four started replicas on node 1",
        || {
            let started = p.started("hello");
            (started.len() == 4 && started.iter().all(|i| i["node"] != node2.as_str()))
                .then_some(())
        },
    );
    eprintln!(
        "node lost {} ms after its agent was killed (timeout 5 s)",
        lost_after.as_millis()
    );
    // Its instances are still running on the node, unwanted: six processes now.
    assert_eq!(p.app_processes().len(), 6);

    // Back again: the orphans are adopted and stopped, leaving no duplicate.
    let agent2 = Proc::spawn("agent2", &agent_args(&p, ingress2, &state2));
    eventually(
        Duration::from_secs(30),
        "the lost node's orphans stopped",
        || (p.app_processes().len() == 4).then_some(()),
    );
    let running: std::collections::BTreeSet<String> =
        p.app_processes().into_iter().map(|(_, id)| id).collect();
    let assigned: std::collections::BTreeSet<String> = p
        .instances("hello")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(running, assigned, "each instance runs exactly once");
    // A runtime this node cannot run: the instance fails with the reason, and deploy says it.
    let (ok, out) = p.zeitwork(&[
        "deploy",
        "vm",
        "--domain",
        "vm.test",
        "--runtime",
        "firecracker",
        "--rootfs",
        "/",
        "--timeout",
        "5s",
        "--",
        "/bin/true",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the firecracker runtime does not work on this node"),
        "{out}"
    );
    let failed = p.instances("vm");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["state"], "failed");

    drop(agent2);

    // Ctrl-C: everything stops, the instances included.
    signal(p.up.pid(), "-INT");
    p.up.wait_log(Duration::from_secs(20), |v| message(v) == "stopped");
    let left: Vec<_> = p
        .app_processes()
        .into_iter()
        .filter(|(_, id)| !on_node2.contains(id))
        .collect();
    assert!(
        left.is_empty(),
        "instances left running after Ctrl-C: {left:?}"
    );
}

/// As root, a process instance of an image runs in its own root filesystem and PID
/// namespace, with `zeitwork-init` as its PID 1.
#[test]
fn an_image_runs_isolated_in_its_own_root_filesystem() {
    let Some(busybox) = which("busybox") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs busybox-static"
        );
        eprintln!("SKIPPED: no busybox");
        return;
    };
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("SKIPPED: isolation needs root");
        return;
    }
    let p = start_up(&[]);
    let image = oci_site(p.dir.path(), &busybox, "served from the image\n");
    let (ok, out) = p.zeitwork(&[
        "deploy",
        "site",
        "--domain",
        "site.test",
        "--oci",
        image.to_str().unwrap(),
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "exec /bin/busybox httpd -f -p $PORT -h /www",
    ]);
    assert!(ok, "{out}\n{}", p.up.dump());
    assert_eq!(p.get("site"), (200, "served from the image\n".to_string()));
    // The server's view: its own root, its own PID namespace, the instance's host name.
    let id = p.started("site")[0]["id"].as_str().unwrap().to_string();
    let httpd = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            cmd.starts_with(b"/bin/busybox\0httpd")
                && env
                    .split(|b| *b == 0)
                    .any(|kv| kv == format!("ZEITWORK_INSTANCE={id}").as_bytes())
        })
        .expect("the instance's httpd");
    // Its `/` is the image: the page is there, the host's /etc is not.
    let root = format!("/proc/{httpd}/root");
    assert!(Path::new(&format!("{root}/www/index.html")).exists());
    assert!(
        !Path::new(&format!("{root}/etc/passwd")).exists(),
        "pivot_root into the image"
    );
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(ns(&httpd.to_string()), ns("self"), "its own PID namespace");
    let status = std::fs::read_to_string(format!("/proc/{httpd}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("2"),
        "PID 2 under zeitwork-init: {nspid}"
    );
    let uts = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
    assert_ne!(uts(&httpd.to_string()), uts("self"), "its own host name");
}

/// Every process that carries one of `ids` as its `ZEITWORK_INSTANCE` (the app, and
/// `zeitwork-init` around it when the agent isolates), as (pid, command line).
fn processes_of(ids: &[String]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let mine = env.split(|b| *b == 0).any(|kv| {
            ids.iter()
                .any(|id| kv == format!("ZEITWORK_INSTANCE={id}").as_bytes())
        });
        if mine {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// Crash → restart, three times under load with three replicas, then `destroy` and Ctrl-C:
/// no process of the app may be left behind. (An instance once reported `stopped` while
/// its init and app still ran, and outlived `zeitwork up`.)
#[test]
fn crashes_then_destroy_leave_no_process_behind() {
    if !tool("python3") || !tool("curl") {
        return;
    }
    let p = start_up(&[]);
    p.deploy("crashy", 3);
    let ids: Vec<String> = p
        .started("crashy")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let balancer = p.balancer;
    let load = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut n = 0;
        while Instant::now() < deadline && n < 5000 {
            http(balancer, "GET", "/", None, None, &[("host", "crashy.test")]);
            n += 1;
        }
    });
    for round in 0..3 {
        let victim = &ids[round % ids.len()];
        let (pid, _) = p
            .app_processes()
            .into_iter()
            .find(|(_, id)| id == victim)
            .expect("the victim's process");
        signal(pid, "-KILL");
        eventually(
            Duration::from_secs(20),
            "the killed instance restarted",
            || {
                p.app_processes()
                    .into_iter()
                    .find(|(new, id)| id == victim && *new != pid)
            },
        );
        eventually(Duration::from_secs(20), "three started again", || {
            (p.started("crashy").len() == 3).then_some(())
        });
    }
    load.join().unwrap();
    let (ok, out) = p.zeitwork(&["destroy", "crashy"]);
    assert!(ok, "{out}");
    assert!(out.contains("its instances are stopped"), "{out}");
    // destroy returns once the agent has reported them stopped: nothing is left by then
    let left = processes_of(&ids);
    assert!(
        left.is_empty(),
        "running after destroy returned: {left:?}\n{out}"
    );
    signal(p.up.pid(), "-INT");
    p.up.wait_log(Duration::from_secs(20), |v| message(v) == "stopped");
    let left = processes_of(&ids);
    assert!(left.is_empty(), "left running: {left:?}");
}

/// Every example `deploy --help` prints works as written (run through a shell, as a user
/// would paste it), and a deploy that cannot succeed says why at once instead of waiting
/// out its timeout.
#[test]
fn deploy_help_examples_work_and_hopeless_deploys_fail_at_once() {
    if !tool("python3") || !tool("curl") {
        return;
    }
    let help = Command::new(BIN)
        .args(["deploy", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    // clap wraps help at 100 columns when no terminal says otherwise: an example longer
    // than that would be printed cut in two
    let after = help.split("Examples:").nth(1).unwrap_or_default();
    assert!(after.lines().all(|l| l.len() < 100), "{help}");
    // examples go on over lines that end in `\`, as a shell reads them
    let mut examples: Vec<String> = Vec::new();
    let mut open = false;
    for line in help.lines().map(str::trim) {
        if open {
            let last = examples.last_mut().unwrap();
            last.push(' ');
            last.push_str(line.trim_end_matches('\\').trim());
        } else if line.starts_with("zeitwork deploy ") {
            examples.push(line.trim_end_matches('\\').trim().to_string());
        }
        open = (open || line.starts_with("zeitwork deploy ")) && line.ends_with('\\');
    }
    assert_eq!(examples.len(), 3, "{help}");
    let p = start_up(&[]);
    let cwd = p.dir.path().join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    let busybox = which("busybox");
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    for example in &examples {
        if example.contains("--oci") {
            if busybox.is_none() || !root {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI runs the image example"
                );
                eprintln!("SKIPPED (needs busybox and root): {example}");
                continue;
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/oci-busybox.sh");
            let made = Command::new("bash")
                .args([script, "site.tar"])
                .current_dir(&cwd)
                .output()
                .unwrap();
            assert!(made.status.success(), "{made:?}");
        }
        let rest = example.trim_start_matches("zeitwork deploy ");
        let line = format!(
            "{BIN} deploy --data-dir {} --operator http://{} {rest}",
            p.op.data_dir.display(),
            p.op.addr
        );
        let out = Command::new("sh")
            .args(["-c", &line])
            .current_dir(&cwd)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{example}:\n{text}\n{}", p.up.dump());
        let domain = rest
            .split_whitespace()
            .skip_while(|w| *w != "--domain")
            .nth(1)
            .unwrap();
        let (s, body) = http(p.balancer, "GET", "/", None, None, &[("host", domain)]);
        assert_eq!(s, 200, "{example}: {body}");
    }

    // What `get` shows for them: how many are ready, and where the edges reach them.
    let (ok, table) = p.zeitwork(&["get", "deployments"]);
    assert!(ok, "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    assert!(row.contains(" 3/3 ") && row.ends_with("running"), "{table}");
    let (ok, table) = p.zeitwork(&["get", "instances"]);
    assert!(ok, "{table}");
    assert!(
        table.lines().skip(1).all(|l| l.contains(" via 127.0.0.1:")),
        "every placed instance is reached through its node's ingress:\n{table}"
    );

    // A command that is not there: the agent says so, and deploy stops waiting.
    let (ok, out) = p.zeitwork(&[
        "deploy",
        "nope",
        "--domain",
        "nope.test",
        "--timeout",
        "100s",
        "--",
        "/no/such/program",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("cannot start"), "{out}");
    assert!(
        out.contains("not found") || out.contains("could not be executed"),
        "{out}"
    );
    assert!(!out.contains("not ready within"), "it did not wait: {out}");
}

/// A certificate renewed under load: `up`'s local CA issues 30-second certificates
/// (renewed when a third is left), and HTTPS requests — each a new TLS handshake — run
/// through the balancer while the new certificate reaches the edge. None fails, and the
/// certificate the edge serves changes.
#[test]
fn a_certificate_renews_under_load_without_a_failed_request() {
    if !tool("python3") || !tool("curl") || !tool("openssl") {
        return;
    }
    let p = start_up(&["--local-cert-validity", "30s"]);
    p.deploy_on("renew", "renew.localhost");
    let not_after = || {
        p.op.ok("GET", "/api/v1/tls-certificates", None)["items"][0]["not_after"]
            .as_str()
            .map(str::to_string)
    };
    let first = eventually(Duration::from_secs(20), "the first certificate", not_after);
    let port = p.https.port();
    let request = || {
        let out = p.https_get("renew.localhost", "--http1.1");
        if out.contains("\n1.1 200 ") {
            "200".to_string()
        } else {
            out
        }
    };
    // The leaf certificate a handshake gets (PEM), by `openssl s_client`.
    let served = || {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "renew.localhost"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let start = text.find("-----BEGIN CERTIFICATE-----")?;
        let end = text.find("-----END CERTIFICATE-----")?;
        Some(text[start..end].to_string())
    };
    // Served before the load starts (the route and the certificate are in place).
    eventually(Duration::from_secs(20), "HTTPS served", || {
        (request() == "200").then_some(())
    });
    let before = served().expect("a certificate");
    let (mut codes, mut renewed_at) = (Vec::new(), None);
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && codes.len() < 3000 {
        codes.push(request());
        // Paced: this test shares the machine with the crash test's zero-failure load.
        std::thread::sleep(Duration::from_millis(25));
        if renewed_at.is_none() && not_after() != Some(first.clone()) {
            renewed_at = Some(codes.len());
        }
        // Keep going a while after the renewal, so the swap happens under load.
        if renewed_at.is_some_and(|at| codes.len() > at + 30) {
            break;
        }
    }
    let failed: Vec<&String> = codes.iter().filter(|c| *c != "200").collect();
    assert!(
        renewed_at.is_some(),
        "no renewal within 40 s ({} requests)",
        codes.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} HTTPS requests failed: {failed:?}",
        failed.len(),
        codes.len()
    );
    assert_ne!(
        served().expect("a certificate"),
        before,
        "the edge serves the renewed certificate"
    );
    let (ok, certs) = p.zeitwork(&["get", "certificates"]);
    assert!(ok && certs.contains("renew.localhost"), "{certs}");
    eprintln!(
        "{} HTTPS requests, renewal after request {:?}, 0 failed",
        codes.len(),
        renewed_at
    );
}
