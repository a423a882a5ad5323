//! Minimal HTTP/1.1 calls for health checks, discovery and enrollment: one request per
//! connection, everything bounded in time and size.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use zw_pki::{Csr, Identity};
use zw_proto::api::{ApiError, CertificateRequest, IssuedCertificate, TokenRole};

/// GETs `path` from `authority` (`host:port`) with these headers; status and body (at most
/// `max_body` bytes). Everything within `timeout`.
pub async fn get(
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), String> {
    request(
        http::Method::GET,
        authority,
        path,
        headers,
        None,
        timeout,
        max_body,
    )
    .await
}

/// One request with an optional JSON body; status and body (at most `max_body` bytes).
pub async fn request(
    method: http::Method,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req = req.header(http::header::HOST, authority);
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// Platform certificates are issued for this long and renewed when a third is left.
pub const CERT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

const CA_FILE: &str = "platform-ca.pem";
const CERT_FILE: &str = "platform.crt";
const KEY_FILE: &str = "platform.key";

/// What to enroll as.
#[derive(Debug, Clone)]
pub struct Enrollment<'a> {
    /// The operator's API, `host:port`.
    pub operator: &'a str,
    pub token: &'a str,
    pub role: TokenRole,
    pub name: &'a str,
    /// DNS names or addresses the certificate covers (a node's ingress).
    pub names: &'a [String],
}

/// A platform identity: the one kept in `dir` while it has more than a third of its
/// validity left, else a new one — a key made here, a CSR signed by the operator — which
/// is then kept in `dir` (key file mode 0600).
pub async fn enroll(e: &Enrollment<'_>, dir: Option<&Path>) -> Result<Identity, String> {
    if let Some(dir) = dir {
        match load(dir) {
            Ok(Some(id)) if !id.expires_within(unix_secs(), CERT_VALIDITY / 3) => return Ok(id),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "stored platform certificate unusable; enrolling again")
            }
        }
    }
    let csr = Csr::generate(e.name).map_err(|err| err.to_string())?;
    let body = serde_json::to_vec(&CertificateRequest {
        csr: csr.csr_pem.clone(),
        name: e.name.to_string(),
        names: e.names.to_vec(),
        role: Some(e.role),
    })
    .map_err(|err| err.to_string())?;
    let auth = format!("Bearer {}", e.token);
    let (status, resp) = request(
        http::Method::POST,
        e.operator,
        "/api/v1/certificates",
        &[("authorization", &auth)],
        Some(body),
        Duration::from_secs(10),
        1 << 20,
    )
    .await
    .map_err(|err| {
        format!(
            "asking the operator at {} for a certificate: {err}",
            e.operator
        )
    })?;
    if status != 200 {
        let why = serde_json::from_slice::<ApiError>(&resp)
            .map(|a| a.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&resp).trim().to_string());
        return Err(format!(
            "the operator at {} refused a certificate ({status}): {why}",
            e.operator
        ));
    }
    let issued: IssuedCertificate = serde_json::from_slice(&resp)
        .map_err(|err| format!("unreadable certificate answer: {err}"))?;
    let id = csr
        .into_identity(issued.certificate, issued.ca)
        .map_err(|err| format!("the issued certificate is unusable: {err}"))?;
    if let Some(dir) = dir {
        save(dir, &id)
            .map_err(|err| format!("keeping the certificate in {}: {err}", dir.display()))?;
    }
    Ok(id)
}

fn unix_secs() -> i64 {
    zw_proto::time::unix_millis() / 1000
}

fn load(dir: &Path) -> Result<Option<Identity>, String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let (ca, cert, key) = match (read(CA_FILE), read(CERT_FILE), read(KEY_FILE)) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => return Ok(None),
    };
    Identity::from_pem(ca, cert, key)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn save(dir: &Path, id: &Identity) -> std::io::Result<()> {
    for (name, text, mode) in [
        (KEY_FILE, id.key_pem(), 0o600),
        (CERT_FILE, id.cert_pem.as_str(), 0o644),
        (CA_FILE, id.ca_pem.as_str(), 0o644),
    ] {
        zw_proto::fsutil::write_atomic(&dir.join(name), &[text.as_bytes()], mode)?;
    }
    Ok(())
}
