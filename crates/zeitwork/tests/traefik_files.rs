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
