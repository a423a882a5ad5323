//! Minimal HTTP/1.1 calls for health checks, discovery and enrollment: one request per
//! connection, everything bounded in time and size.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use zw_pki::{Csr, Identity};
use zw_proto::api::{ApiError, CertificateRequest, IssuedCertificate, TokenRole};

/// Why a call to the operator (or a health check's GET) did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {authority}: {source}")]
    Http {
        authority: String,
        source: hyper::Error,
    },
    /// The request could not be built (a header value with a newline, a bad path).
    #[error("the request is invalid: {0}")]
    Request(#[from] http::Error),
    #[error("reading the answer from {authority} (at most {max} bytes): {detail}")]
    Body {
        authority: String,
        max: usize,
        detail: String,
    },
    #[error("no answer from {authority} within {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    #[error("asking the operator at {operator} for a certificate: {source}")]
    Unreachable {
        operator: String,
        #[source]
        source: Box<Error>,
    },
    /// The operator answered and said no: retrying with the same token will not help.
    #[error(
        "the operator at {operator} refused a certificate ({status}): {why} \
         (check the join token: it may be used up, revoked or for another role)"
    )]
    Refused {
        operator: String,
        status: u16,
        why: String,
    },
    #[error("the operator's certificate answer is unreadable: {0}")]
    Answer(#[source] serde_json::Error),
    #[error("the platform certificate: {0}")]
    Pki(#[from] zw_pki::PkiError),
    #[error("keeping the certificate in {}: {source}", dir.display())]
    Keep {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the operator refused (as opposed to being unreachable or slow): worth
    /// stopping for, since the same token gets the same answer.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused { .. })
    }
}

/// GETs `path` from `authority` (`host:port`) with these headers; status and body (at most
/// `max_body` bytes). Everything within `timeout`.
pub async fn get(
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), Error> {
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
) -> Result<(u16, Bytes), Error> {
    let http_err = |source| Error::Http {
        authority: authority.to_string(),
        source,
    };
    let work = async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|source| Error::Connect {
                authority: authority.to_string(),
                source,
            })?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(http_err)?;
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
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = send.send_request(req).await.map_err(http_err)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| Error::Body {
                authority: authority.to_string(),
                max: max_body,
                detail: e.to_string(),
            })?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                authority: authority.to_string(),
                timeout,
            })
        })
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
pub async fn enroll(e: &Enrollment<'_>, dir: Option<&Path>) -> Result<Identity, Error> {
    if let Some(dir) = dir {
        match load(dir) {
            Ok(Some(id)) if !id.expires_within(unix_secs(), CERT_VALIDITY / 3) => return Ok(id),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "stored platform certificate unusable; enrolling again")
            }
        }
    }
    let csr = Csr::generate(e.name)?;
    let body = serde_json::to_vec(&CertificateRequest {
        csr: csr.csr_pem.clone(),
        name: e.name.to_string(),
        names: e.names.to_vec(),
        role: Some(e.role),
    })
    .map_err(Error::Answer)?;
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
    .map_err(|err| Error::Unreachable {
        operator: e.operator.to_string(),
        source: Box::new(err),
    })?;
    if status != 200 {
        let why = serde_json::from_slice::<ApiError>(&resp)
            .map(|a| a.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&resp).trim().to_string());
        return Err(Error::Refused {
            operator: e.operator.to_string(),
            status,
            why,
        });
    }
    let issued: IssuedCertificate = serde_json::from_slice(&resp).map_err(Error::Answer)?;
    let id = csr.into_identity(issued.certificate, issued.ca)?;
    if let Some(dir) = dir {
        save(dir, &id).map_err(|source| Error::Keep {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(id)
}

fn unix_secs() -> i64 {
    zw_proto::time::unix_millis() / 1000
}

fn load(dir: &Path) -> Result<Option<Identity>, zw_pki::PkiError> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let (ca, cert, key) = match (read(CA_FILE), read(CERT_FILE), read(KEY_FILE)) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => return Ok(None),
    };
    Identity::from_pem(ca, cert, key).map(Some)
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
