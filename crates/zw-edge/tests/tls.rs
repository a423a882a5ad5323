//! TLS termination, end to end with real clients: `curl` (HTTP/1.1 and HTTP/2 over TLS)
//! and `openssl s_client` (versions, ALPN, the certificate a server name gets). The
//! semantics are Traefik's: routers with `tls` take TLS requests only
//! (`pkg/server/router/tcp/manager.go`), certificates are chosen by SNI with the store's
//! default — generated when none is set — for names no certificate has
//! (`pkg/tls/certificate_store.go`, `pkg/tls/tlsmanager.go`), `sniStrict` refuses those
//! handshakes instead, and the built-in `default` options start at TLS 1.2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use zw_edge::testkit::{TestEdge, Upstream};

/// A CA and leaf certificates it signs, as PEM.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) for `names`, with `cn` as the subject's common name.
    fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn indent(pem: &str) -> String {
    indent_by(pem, 10)
}

fn indent_by(pem: &str, n: usize) -> String {
    pem.lines()
        .map(|l| format!("{:n$}{l}\n", ""))
        .collect::<String>()
}

/// A configuration with routers `secure` (TLS) and `plain` for `a.test`, each to its own
/// upstream, the certificates `certs` inline, and `tls_extra` added to the `tls` section.
fn config(
    secure: &Upstream,
    plain: &Upstream,
    certs: &[(String, String)],
    tls_extra: &str,
) -> String {
    let mut c = format!(
        "http:\n  routers:\n    secure: {{rule: \"Host(`a.test`) || Host(`b.w.test`)\", service: secure, tls: {{}}}}\n    plain: {{rule: \"Host(`a.test`)\", service: plain}}\n  services:\n    secure: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n    plain: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\ntls:\n  certificates:\n",
        secure.url(),
        plain.url()
    );
    for (cert, key) in certs {
        c.push_str(&format!(
            "    - certFile: |\n{}      keyFile: |\n{}",
            indent(cert),
            indent(key)
        ));
    }
    c.push_str(tls_extra);
    c
}

/// Runs a client off the runtime's threads (the edge under test runs on them).
async fn run(mut cmd: Command) -> String {
    let out: Output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("client thread")
        .expect("run the client (curl and openssl are installed by .ci/run)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `curl` over TLS to `name` resolved to the edge, trusting `ca`. Returns (`http_version
/// status`, body and errors).
async fn curl(addr: SocketAddr, name: &str, ca: &Path, extra: &[&str]) -> (String, String) {
    let port = addr.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(extra)
        .arg(format!("https://{name}:{port}/hello"));
    let text = run(cmd).await;
    match text.rsplit_once('\n') {
        Some((body, status)) => (status.to_string(), body.to_string()),
        None => (String::new(), text),
    }
}

/// `openssl s_client` to the edge with SNI `name` (none if empty); returns its output
/// (brief, except with `-alpn` or a session file: only the full output names the protocol
/// chosen, and whether the session was reused).
async fn s_client(addr: SocketAddr, name: &str, extra: &[&str]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    if !extra
        .iter()
        .any(|a| matches!(*a, "-alpn" | "-sess_in" | "-sess_out"))
    {
        cmd.arg("-brief");
    }
    if name.is_empty() {
        cmd.arg("-noservername");
    } else {
        cmd.args(["-servername", name]);
    }
    cmd.args(extra).stdin(std::process::Stdio::null());
    run(cmd).await
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn https_requests_reach_the_tls_routers_over_http1_and_http2() {
    let (secure, plain) = (
        Upstream::start("secure").await,
        Upstream::start("plain").await,
    );
    let pki = Pki::new("test CA");
    let leaf = pki.leaf("a.test", &["a.test", "*.w.test"]);
    let edge = TestEdge::start(&config(&secure, &plain, &[leaf], "")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (status, body) = curl(edge.addr, "a.test", &ca, &[flag]).await;
        assert_eq!(status, format!("{version} 200"), "{flag}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["upstream"], "secure",
            "a TLS request goes to the router with tls"
        );
        assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    }
    // An operator sees what is served, and until when.
    let status = edge.admin_get("/debug/config").await.json();
    let names = &status["certificates"][0]["names"];
    assert_eq!(
        names,
        &serde_json::json!(["*.w.test", "a.test"]),
        "{status}"
    );
    assert!(status["certificates"][0]["not_after"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // The wildcard covers one label.
    let (status, body) = curl(edge.addr, "b.w.test", &ca, &[]).await;
    assert_eq!(status, "2 200", "{body}");

    // The same host over plain HTTP goes to the router without tls.
    let r = zw_edge::testkit::get(edge.addr, "a.test", "/hello").await;
    assert_eq!(r.header("x-upstream"), Some("plain"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn a_name_no_certificate_has_gets_the_default_certificate_or_with_sni_strict_nothing() {
    let (secure, plain) = (
        Upstream::start("secure").await,
        Upstream::start("plain").await,
    );
    let pki = Pki::new("test CA");
    let leaf = pki.leaf("a.test", &["a.test"]);
    let edge = TestEdge::start(&config(&secure, &plain, std::slice::from_ref(&leaf), "")).await;
    let out = s_client(edge.addr, "a.test", &[]).await;
    assert!(
        out.contains("CN = a.test") || out.contains("CN=a.test"),
        "{out}"
    );
    for name in ["other.test", ""] {
        let out = s_client(edge.addr, name, &[]).await;
        assert!(out.contains("ZEITWORK DEFAULT CERT"), "SNI {name:?}: {out}");
    }

    let strict = "  options:\n    default: {sniStrict: true}\n";
    let edge = TestEdge::start(&config(&secure, &plain, &[leaf], strict)).await;
    let out = s_client(edge.addr, "a.test", &[]).await;
    assert!(
        out.contains("CN = a.test") || out.contains("CN=a.test"),
        "{out}"
    );
    let out = s_client(edge.addr, "other.test", &[]).await;
    assert!(!out.contains("ZEITWORK DEFAULT CERT"), "{out}");
    assert!(
        out.to_lowercase().contains("alert") || out.contains("error"),
        "refused: {out}"
    );
}

#[tokio::test]
async fn versions_and_alpn_follow_the_options() {
    let (secure, plain) = (
        Upstream::start("secure").await,
        Upstream::start("plain").await,
    );
    let pki = Pki::new("test CA");
    let leaf = pki.leaf("a.test", &["a.test"]);
    let edge = TestEdge::start(&config(&secure, &plain, std::slice::from_ref(&leaf), "")).await;
    let out = s_client(edge.addr, "a.test", &["-tls1_2"]).await;
    assert!(out.contains("Protocol version: TLSv1.2"), "{out}");
    let out = s_client(edge.addr, "a.test", &["-tls1_3", "-alpn", "h2"]).await;
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    // TLS 1.1 is never offered (the client is allowed it at security level 0).
    let out = s_client(
        edge.addr,
        "a.test",
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    )
    .await;
    assert!(!out.contains("Protocol version: TLSv1.1"), "{out}");

    let modern = "  options:\n    default: {minVersion: VersionTLS13, alpnProtocols: [http/1.1]}\n";
    let edge = TestEdge::start(&config(&secure, &plain, &[leaf], modern)).await;
    let out = s_client(edge.addr, "a.test", &["-tls1_2"]).await;
    assert!(!out.contains("Protocol version: TLSv1.2"), "{out}");
    let out = s_client(edge.addr, "a.test", &["-alpn", "h2,http/1.1"]).await;
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
}

#[tokio::test]
async fn a_new_certificate_is_served_to_new_handshakes_without_a_restart() {
    let (secure, plain) = (
        Upstream::start("secure").await,
        Upstream::start("plain").await,
    );
    let pki = Pki::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let edge = TestEdge::start(&config(
        &secure,
        &plain,
        &[pki.leaf("first", &["a.test"])],
        "",
    ))
    .await;
    let out = s_client(edge.addr, "a.test", &[]).await;
    assert!(out.contains("first"), "{out}");

    // A connection made before the change...
    let mut cmd = Command::new("curl");
    let port = edge.addr.port();
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .arg(format!("https://a.test:{port}/slow/1500"));
    let before = tokio::spawn(run(cmd));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let v = edge.edge.status().version;
    edge.write_config(&config(
        &secure,
        &plain,
        &[pki.leaf("second", &["a.test"])],
        "",
    ));
    edge.wait_version_above(v).await;
    let out = s_client(edge.addr, "a.test", &[]).await;
    assert!(
        out.contains("second"),
        "new handshakes get the new certificate: {out}"
    );
    // ...finishes on its own.
    let out = before.await.unwrap();
    assert!(out.contains("\"upstream\":\"secure\""), "{out}");
}

#[tokio::test]
async fn client_certificates_are_required_and_verified_when_the_options_say() {
    let (secure, plain) = (
        Upstream::start("secure").await,
        Upstream::start("plain").await,
    );
    let pki = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let client_ca = write(dir.path(), "client-ca.pem", &clients.ca_pem);
    let (cert, key) = clients.leaf("alice", &["alice.test"]);
    let (cert, key) = (
        write(dir.path(), "alice.pem", &cert),
        write(dir.path(), "alice.key", &key),
    );
    let (stranger, stranger_key) = Pki::new("other CA").leaf("mallory", &["mallory.test"]);
    let (stranger, stranger_key) = (
        write(dir.path(), "mallory.pem", &stranger),
        write(dir.path(), "mallory.key", &stranger_key),
    );
    let auth = format!(
        "  options:\n    default:\n      clientAuth: {{caFiles: [{}], clientAuthType: RequireAndVerifyClientCert}}\n",
        client_ca.display()
    );
    let edge = TestEdge::start(&config(
        &secure,
        &plain,
        &[pki.leaf("a.test", &["a.test"])],
        &auth,
    ))
    .await;
    let (status, body) = curl(edge.addr, "a.test", &ca, &[]).await;
    assert_ne!(
        status.split(' ').nth(1),
        Some("200"),
        "no certificate: {body}"
    );
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (status, body) = curl(edge.addr, "a.test", &ca, &["--cert", &cert, "--key", &key]).await;
    assert_eq!(status.split(' ').nth(1), Some("200"), "{body}");
    let (s, k) = (
        stranger.display().to_string(),
        stranger_key.display().to_string(),
    );
    let (status, body) = curl(edge.addr, "a.test", &ca, &["--cert", &s, "--key", &k]).await;
    assert_ne!(
        status.split(' ').nth(1),
        Some("200"),
        "a certificate of another CA: {body}"
    );
}

#[tokio::test]
async fn a_router_s_tls_options_apply_to_the_hosts_its_rule_names() {
    let (secure, plain) = (
        Upstream::start("secure").await,
        Upstream::start("plain").await,
    );
    let pki = Pki::new("test CA");
    let leaf = pki.leaf("a.test", &["a.test", "m.test"]);
    let mut cfg = config(
        &secure,
        &plain,
        &[leaf],
        "  options:\n    modern: {minVersion: VersionTLS13}\n",
    );
    cfg = cfg.replace(
        "    plain: {rule:",
        "    modern: {rule: \"Host(`m.test`)\", service: secure, tls: {options: modern}}\n    plain: {rule:",
    );
    let edge = TestEdge::start(&cfg).await;
    let out = s_client(edge.addr, "m.test", &["-tls1_2"]).await;
    assert!(
        !out.contains("Protocol version: TLSv1.2"),
        "m.test is TLS 1.3 only: {out}"
    );
    let out = s_client(edge.addr, "m.test", &["-tls1_3"]).await;
    assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
    let out = s_client(edge.addr, "a.test", &["-tls1_2"]).await;
    assert!(
        out.contains("Protocol version: TLSv1.2"),
        "a.test keeps the default: {out}"
    );
}

#[tokio::test]
async fn returning_clients_resume_their_session_across_a_configuration_change() {
    let (secure, plain) = (
        Upstream::start("secure").await,
        Upstream::start("plain").await,
    );
    let pki = Pki::new("test CA");
    let leaf = pki.leaf("a.test", &["a.test"]);
    let edge = TestEdge::start(&config(&secure, &plain, std::slice::from_ref(&leaf), "")).await;
    let dir = tempfile::tempdir().unwrap();
    let sess = dir.path().join("session.pem").display().to_string();
    // A TLS 1.3 ticket comes after the handshake: the first client sends a request and
    // reads to the end, so that it has the ticket before it saves the session.
    let request = write(
        dir.path(),
        "request",
        "GET /hello HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    for version in ["-tls1_2", "-tls1_3"] {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &edge.addr.to_string(),
            "-servername",
            "a.test",
        ])
        .args([version, "-ign_eof", "-sess_out", &sess])
        .stdin(std::fs::File::open(&request).unwrap());
        let out = run(cmd).await;
        assert!(out.contains("200 OK"), "{out}");
        assert!(out.contains("New, TLSv1."), "{out}");
        let v = edge.edge.status().version;
        // The same certificate, another router: a new snapshot.
        edge.write_config(
            &config(&secure, &plain, std::slice::from_ref(&leaf), "")
                .replace("plain: {rule", "plain2: {rule"),
        );
        edge.wait_version_above(v).await;
        let out = s_client(edge.addr, "a.test", &[version, "-sess_in", &sess]).await;
        assert!(out.contains("Reused, TLSv1."), "{version}: {out}");
        edge.write_config(&config(&secure, &plain, std::slice::from_ref(&leaf), ""));
        edge.wait_version_above(v + 1).await;
    }
}

#[tokio::test]
async fn a_renewed_certificate_file_is_served_without_touching_the_configuration() {
    let (secure, plain) = (
        Upstream::start("secure").await,
        Upstream::start("plain").await,
    );
    let pki = Pki::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf("first", &["a.test"]);
    let (cert_f, key_f) = (
        write(dir.path(), "a.pem", &cert),
        write(dir.path(), "a.key", &key),
    );
    let cfg = config(&secure, &plain, &[], "").replace(
        "  certificates:\n",
        &format!(
            "  certificates:\n    - {{certFile: {}, keyFile: {}}}\n",
            cert_f.display(),
            key_f.display()
        ),
    );
    let edge = TestEdge::start(&cfg).await;
    assert!(s_client(edge.addr, "a.test", &[]).await.contains("first"));
    let v = edge.edge.status().version;
    let (cert, key) = pki.leaf("second", &["a.test"]);
    // Key first, then certificate: in between the pair does not match, and the edge keeps
    // serving the first until both are there.
    write(dir.path(), "a.key.tmp", &key);
    std::fs::rename(dir.path().join("a.key.tmp"), &key_f).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s_client(edge.addr, "a.test", &[]).await.contains("first"));
    write(dir.path(), "a.pem.tmp", &cert);
    std::fs::rename(dir.path().join("a.pem.tmp"), &cert_f).unwrap();
    edge.wait_version_above(v).await;
    assert!(s_client(edge.addr, "a.test", &[]).await.contains("second"));
}

/// An HTTPS upstream with a certificate of `pki` for `names`; with `clients`, it requires
/// a client certificate of that CA. It answers `tls upstream` and closes.
async fn tls_upstream(pki: &Pki, names: &[&str], clients: Option<&Pki>) -> SocketAddr {
    use zw_tls::rustls;
    let (cert, key) = pki.leaf(names[0], names);
    let certified = zw_tls::load_pair(cert.as_bytes(), key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(zw_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(ca) => {
            let roots = zw_tls::client_roots(&[ca.ca_pem.as_bytes().to_vec()]).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    zw_tls::provider(),
                )
                .build()
                .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let store = std::sync::Arc::new(zw_tls::CertStore::new(&[], certified.key));
    let config = builder.with_cert_resolver(std::sync::Arc::new(zw_tls::Resolver {
        store,
        sni_strict: false,
    }));
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\ntls upstream")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Traefik's `serversTransports` TLS keys for `https://` servers (that are not worker
/// ingresses): `rootCAs` (else the system's roots), `serverName`, `insecureSkipVerify`,
/// `certificates` for a server that asks for a client certificate.
#[tokio::test]
async fn https_upstreams_are_verified_as_the_transport_says() {
    let pki = Pki::new("upstream CA");
    let clients = Pki::new("client CA");
    let plain_addr = tls_upstream(&pki, &["upstream.test"], None).await;
    let mtls_addr = tls_upstream(&pki, &["upstream.test"], Some(&clients)).await;
    let (client_cert, client_key) = clients.leaf("edge", &["edge.test"]);
    let config = |addr: SocketAddr, transport: &str| {
        format!(
            "http:\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"https://{addr}\"}}], serversTransport: t}}}}\n  serversTransports:\n    t:\n{transport}"
        )
    };
    let ca = format!("      rootCAs:\n        - |\n{}", indent(&pki.ca_pem));
    let cases = [
        // the system's roots do not know the test CA
        (config(plain_addr, "      serverName: upstream.test\n"), plain_addr, 502),
        (config(plain_addr, &format!("      serverName: upstream.test\n{ca}")), plain_addr, 200),
        // the certificate is for upstream.test, not for the IP address in the URL
        (config(plain_addr, &ca), plain_addr, 502),
        (config(plain_addr, "      insecureSkipVerify: true\n"), plain_addr, 200),
        (config(mtls_addr, &format!("      serverName: upstream.test\n{ca}")), mtls_addr, 502),
        (
            config(
                mtls_addr,
                &format!(
                    "      serverName: upstream.test\n{ca}      certificates:\n        - certFile: |\n{}          keyFile: |\n{}",
                    indent_by(&client_cert, 12),
                    indent_by(&client_key, 12)
                ),
            ),
            mtls_addr,
            200,
        ),
    ];
    for (cfg, _, want) in cases {
        let edge = TestEdge::start(&cfg).await;
        let r = zw_edge::testkit::get(edge.addr, "a.test", "/").await;
        assert_eq!(r.status, want, "{cfg}\n{}", r.body);
        if want == 200 {
            assert_eq!(r.body, "tls upstream");
        }
    }
}

/// `passTLSClientCert` with `pem` (Traefik's `pass_tls_client_cert_test.go`): the
/// certificate a client presented reaches the upstream in `X-Forwarded-Tls-Client-Cert`,
/// the PEM without delimiters and line breaks; without one, a forged header is removed.
#[tokio::test]
async fn the_client_certificate_goes_upstream_with_pass_tls_client_cert() {
    let up = Upstream::start("secure").await;
    let pki = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let client_ca = write(dir.path(), "client-ca.pem", &clients.ca_pem);
    let (alice, alice_key) = clients.leaf("alice", &["alice.test"]);
    let want: String = alice.lines().filter(|l| !l.starts_with("-----")).collect();
    let (cert_path, key_path) = (
        write(dir.path(), "alice.pem", &alice),
        write(dir.path(), "alice.key", &alice_key),
    );
    let (server_cert, server_key) = pki.leaf("a.test", &["a.test"]);
    let cfg = format!(
        "http:\n  routers:\n    secure: {{rule: \"Host(`a.test`)\", service: s, tls: {{}}, middlewares: [pass]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    pass:\n      passTLSClientCert: {{pem: true}}\ntls:\n  certificates:\n    - certFile: |\n{}      keyFile: |\n{}  options:\n    default:\n      clientAuth: {{caFiles: [{}], clientAuthType: VerifyClientCertIfGiven}}\n",
        up.url(),
        indent(&server_cert),
        indent(&server_key),
        client_ca.display()
    );
    let edge = TestEdge::start(&cfg).await;
    let (cert_path, key_path) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let (status, body) = curl(
        edge.addr,
        "a.test",
        &ca,
        &["--cert", &cert_path, "--key", &key_path],
    )
    .await;
    assert_eq!(status.split(' ').nth(1), Some("200"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-tls-client-cert"], want.as_str());

    let (status, body) = curl(
        edge.addr,
        "a.test",
        &ca,
        &["-H", "X-Forwarded-Tls-Client-Cert: forged"],
    )
    .await;
    assert_eq!(status.split(' ').nth(1), Some("200"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["headers"]["x-forwarded-tls-client-cert"].is_null(), "{v}");
}

/// `forwardAuth` over `https://` (Traefik's `types.ClientTLS`): the server is verified
/// against `tls.ca`, or the system's roots without it, or not at all with
/// `insecureSkipVerify`; a server that cannot be verified is a 500, as one that cannot be
/// reached. (The test server answers every request `200 tls upstream`: a pass.)
#[tokio::test]
async fn forward_auth_reaches_an_https_server_as_its_tls_says() {
    let pki = Pki::new("auth CA");
    let auth = tls_upstream(&pki, &["localhost"], None).await;
    let up = zw_edge::testkit::Upstream::start("app").await;
    let config = |tls: &str| {
        format!(
            "http:\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s, middlewares: [auth]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    auth:\n      forwardAuth:\n        address: https://localhost:{}/check\n{tls}",
            up.url(),
            auth.port()
        )
    };
    let ca = format!(
        "        tls:\n          ca: |\n{}",
        indent_by(&pki.ca_pem, 12)
    );
    for (tls, want) in [
        (String::new(), 500),
        (ca, 200),
        ("        tls: {insecureSkipVerify: true}\n".to_string(), 200),
    ] {
        let cfg = config(&tls);
        let edge = TestEdge::start(&cfg).await;
        let r = zw_edge::testkit::get(edge.addr, "a.test", "/").await;
        assert_eq!(r.status, want, "{cfg}\n{}", r.body);
        if want == 200 {
            assert_eq!(r.upstream(), "app", "passed on to the service");
        }
    }
}

/// A `redis-server` of this test's own, over TLS only, killed when dropped.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRedis {
    /// `None` where `redis-server` is not installed (outside CI: CI installs it).
    async fn start(pki: &Pki) -> Option<TlsRedis> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI installs redis-server (.ci/run)"
            );
            eprintln!("SKIPPED: no redis-server");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pki.leaf("redis", &["localhost"]);
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (cert, key, ca) = (
            write("redis.crt", &cert),
            write("redis.key", &key),
            write("ca.crt", &pki.ca_pem),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-cert-file", &cert])
            .args(["--tls-key-file", &key, "--tls-ca-cert-file", &ca])
            .args(["--tls-auth-clients", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let redis = TlsRedis {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(redis);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("redis-server did not listen on {port}");
    }
}

/// `rateLimit.redis.tls` (Traefik v3.4's `redis.tls`, `types.ClientTLS`): two edges share
/// one bucket in a Redis they reach over TLS, verified against `tls.ca`; without the CA
/// (the system's roots) Redis cannot be verified, and `failClosed` says so with a 500
/// instead of counting on the edge's own buckets.
#[tokio::test]
async fn a_rate_limit_shares_its_bucket_through_redis_over_tls() {
    let pki = Pki::new("redis CA");
    let Some(redis) = TlsRedis::start(&pki).await else {
        return;
    };
    let up = Upstream::start("app").await;
    let config = |tls: &str| {
        format!(
            "http:\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s, middlewares: [limit]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    limit:\n      rateLimit:\n        average: 1\n        period: 1m\n        burst: 2\n        redis:\n          endpoints: [\"localhost:{}\"]\n          failClosed: true\n{tls}",
            up.url(),
            redis.port
        )
    };
    let verified = config(&format!(
        "          tls:\n            ca: |\n{}",
        indent_by(&pki.ca_pem, 14)
    ));
    let (one, two) = (
        TestEdge::start(&verified).await,
        TestEdge::start(&verified).await,
    );
    let mut statuses = Vec::new();
    for edge in [&one, &two, &one] {
        statuses.push(zw_edge::testkit::get(edge.addr, "a.test", "/").await.status);
    }
    assert_eq!(statuses, [200, 200, 429], "one bucket of 2 for both edges");

    let unverified = TestEdge::start(&config("          tls: {}\n")).await;
    let r = zw_edge::testkit::get(unverified.addr, "a.test", "/").await;
    assert_eq!(r.status, 500, "an unverified Redis is not used: {}", r.body);
    let insecure = TestEdge::start(&config("          tls: {insecureSkipVerify: true}\n")).await;
    let r = zw_edge::testkit::get(insecure.addr, "a.test", "/").await;
    assert_eq!(
        r.status, 429,
        "the same bucket, unverified on purpose: {}",
        r.body
    );
}
