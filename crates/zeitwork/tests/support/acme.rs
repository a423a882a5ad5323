//! A real ACME server for the HTTPS tests: Debian's `pebble` (Let's Encrypt's test CA) with
//! `pebble-challtestsrv` as its DNS.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::free_port;

/// Kills the child when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate it signs for 127.0.0.1 (pebble's own HTTPS listener), made with
/// `openssl` as an operator would.
fn pebble_tls(dir: &Path) -> (String, String, String) {
    let p = |n: &str| dir.join(n).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-subj",
                "/CN=zeitwork test ACME server CA",
                "-days",
                "2",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.crt"),
            ]),
    );
    run_ok(Command::new("openssl").args(["req"]).args(ec).args([
        "-subj",
        "/CN=localhost",
        "-keyout",
        &p("srv.key"),
        "-out",
        &p("srv.csr"),
    ]));
    std::fs::write(
        dir.join("srv.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("srv.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("srv.ext"),
        "-out",
        &p("srv.crt"),
    ]));
    (p("ca.crt"), p("srv.crt"), p("srv.key"))
}

/// pebble (Debian's package: Let's Encrypt's test ACME server, a real one) and
/// pebble-challtestsrv as its DNS, which answers 127.0.0.1 for every name; pebble validates
/// HTTP-01 on `http_port` of that address.
pub struct Pebble {
    _dns: Child,
    _pebble: Child,
    pub directory: String,
    pub management: u16,
    /// The root of pebble's own HTTPS certificate.
    pub ca: String,
}

pub fn pebble(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
    let (ca, cert, key) = pebble_tls(dir);
    let (dns, dns_mgmt, acme, mgmt) = (free_port(), free_port(), free_port(), free_port());
    let dns_srv = Child(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv"),
    );
    let config = dir.join("pebble.json");
    std::fs::write(
        &config,
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false
        }})
        .to_string(),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let srv = Child(
        Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No artificial validation delays, and no random nonce rejections: the test is
            // about our client, not about pebble's chaos.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble"),
    );
    super::eventually(Duration::from_secs(15), "pebble listening", || {
        std::net::TcpStream::connect(("127.0.0.1", acme)).ok()
    });
    Pebble {
        _dns: dns_srv,
        _pebble: srv,
        directory: format!("https://127.0.0.1:{acme}/dir"),
        management: mgmt,
        ca,
    }
}

impl Pebble {
    /// The root of what pebble issues (its management interface's `/roots/0`), written to
    /// `path`, for `curl --cacert`.
    pub fn issued_root(&self, path: &Path) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", &self.ca, "-o"])
            .arg(path)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "pebble's root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
