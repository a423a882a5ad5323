//! The platform's certificate authority and the mutual TLS between edges and worker nodes.
//!
//! The operator makes one CA on its first start ([`Ca::generate`]) and keeps it in its
//! store. An agent or an edge makes its own key and sends only a certificate signing request
//! ([`Csr::generate`]); the operator signs the request's public key with a subject and names
//! of its own choosing ([`Ca::sign`]) — nothing the requester asked for beyond its key ends
//! up in the certificate. Private keys never leave the machine that made them.
//!
//! Roles are kept apart by extended key usage, which rustls checks: an edge certificate is
//! for TLS clients only, a node certificate for TLS servers only. So a worker node cannot
//! use its certificate to call another node's ingress, and an edge cannot serve as a node.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use rustls;

pub mod seal;
pub use seal::{is_sealed, SealingKey};

/// The largest PEM document (a CSR, a certificate) accepted from outside.
pub const MAX_PEM_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// What a certificate lets its holder do on the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An edge proxy: a TLS client of worker ingresses.
    Edge,
    /// A worker node: the TLS server of its ingress.
    Node,
}

impl Role {
    fn usage(self) -> ExtendedKeyUsagePurpose {
        match self {
            Role::Edge => ExtendedKeyUsagePurpose::ClientAuth,
            Role::Node => ExtendedKeyUsagePurpose::ServerAuth,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The platform CA: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA, valid for ten years.
    pub fn generate() -> Result<Ca> {
        Ca::generate_named("Zeitwork platform CA")
    }

    /// A new CA named `common_name`, valid for ten years.
    pub fn generate_named(common_name: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// The CA as stored: its certificate and key in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The signing key, for storing the CA. Handle as a secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs the public key of `csr_pem` for `role`, as `common_name`, for the DNS names
    /// or IP addresses in `names`. The request's signature is checked (the requester holds
    /// the key); its subject and extensions are ignored.
    pub fn sign(
        &self,
        csr_pem: &str,
        role: Role,
        common_name: &str,
        names: &[String],
        validity: Duration,
    ) -> Result<String> {
        if csr_pem.len() > MAX_PEM_BYTES {
            return Err(PkiError::Invalid(format!(
                "the certificate signing request is larger than {MAX_PEM_BYTES} bytes"
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::Invalid(format!("not a valid PEM certificate signing request: {e}"))
        })?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for name in names {
            params.subject_alt_names.push(san(name)?);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![role.usage()];
        let now = time::OffsetDateTime::now_utc();
        // An hour of slack for clocks that disagree a little.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(signed.pem())
    }
}

fn san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = || PkiError::Invalid(format!("`{name}` is not a DNS name or an IP address"));
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(bad());
    }
    Ok(SanType::DnsName(
        name.to_string().try_into().map_err(|_| bad())?,
    ))
}

/// A private key made here and the request that carries its public half to the CA.
pub struct Csr {
    pub key_pem: String,
    pub csr_pem: String,
}

impl Csr {
    pub fn generate(common_name: &str) -> Result<Csr> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let csr = params.serialize_request(&key)?;
        Ok(Csr {
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem()?,
        })
    }

    /// The identity once the CA has answered with `cert_pem` (and its own `ca_pem`).
    pub fn into_identity(self, cert_pem: String, ca_pem: String) -> Result<Identity> {
        Identity::from_pem(ca_pem, cert_pem, self.key_pem)
    }
}

/// A platform identity: the CA to trust, a certificate from it, and the matching key.
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
    not_after: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Checks that the three fit together: the key is the certificate's, and the
    /// certificate chains to the CA.
    pub fn from_pem(ca_pem: String, cert_pem: String, key_pem: String) -> Result<Identity> {
        let cert = one_cert(&cert_pem, "certificate")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
        let not_after = parsed.validity().not_after.timestamp();
        let id = Identity {
            ca_pem,
            cert_pem,
            key_pem,
            not_after,
        };
        // Building both configurations checks the key against the certificate and the
        // CA's PEM; a mismatch is an error now rather than at the first handshake.
        id.client_config()?;
        Ok(id)
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Seconds since the epoch when the certificate expires.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Whether less than `margin` of validity is left at `now` (seconds since the epoch).
    pub fn expires_within(&self, now: i64, margin: Duration) -> bool {
        self.not_after - now < margin.as_secs() as i64
    }

    fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
            roots.add(cert)?;
        }
        if roots.is_empty() {
            return Err(PkiError::Invalid("no CA certificate in the PEM".into()));
        }
        Ok(roots)
    }

    fn chain(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let cert = one_cert(&self.cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("private key: {e}")))?;
        Ok((vec![cert], key))
    }

    /// For an edge calling worker ingresses: presents this certificate, and trusts only
    /// servers with a node certificate from the platform CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let (chain, key) = self.chain()?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(config))
    }

    /// For a worker ingress: presents this certificate and admits only clients that
    /// present an edge certificate from the platform CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let (chain, key) = self.chain()?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider(),
        )
        .build()
        .map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn one_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("{what}: {e}")))
}

/// The name to verify a server against: its host, IP address or DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| PkiError::Invalid(format!("`{host}` is not a valid server name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(ca: &Ca, role: Role, names: &[&str]) -> Identity {
        let csr = Csr::generate("test").unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = ca
            .sign(
                &csr.csr_pem,
                role,
                "test",
                &names,
                Duration::from_secs(3600),
            )
            .unwrap();
        csr.into_identity(cert, ca.cert_pem().to_string()).unwrap()
    }

    async fn handshake(
        server: &Identity,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<(), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
        let srv = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            tls.write_all(b"k").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client);
        let client = match connector.connect(server_name(name).unwrap(), tcp).await {
            Ok(mut s) => {
                // TLS 1.3: the server checks the client's certificate after the client
                // considers the handshake done; a read shows the verdict.
                use tokio::io::AsyncReadExt;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match (srv.await.unwrap(), client) {
            (Ok(()), Ok(())) => Ok(()),
            (server, client) => Err(format!("server: {server:?}; client: {client:?}")),
        }
    }

    #[tokio::test]
    async fn edge_and_node_certificates_from_one_ca_talk() {
        let ca = Ca::generate().unwrap();
        let node = issue(&ca, Role::Node, &["127.0.0.1"]);
        let edge = issue(&ca, Role::Edge, &[]);
        handshake(&node, edge.client_config().unwrap(), "127.0.0.1")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_client_from_another_ca_or_role_is_refused() {
        let ca = Ca::generate().unwrap();
        let node = issue(&ca, Role::Node, &["127.0.0.1"]);
        // Trusts the platform CA, but its own certificate comes from another CA.
        let other = issue(&Ca::generate().unwrap(), Role::Edge, &[]);
        let stranger = Identity::from_pem(
            ca.cert_pem().into(),
            other.cert_pem.clone(),
            other.key_pem().into(),
        )
        .unwrap();
        let err = handshake(&node, stranger.client_config().unwrap(), "127.0.0.1")
            .await
            .unwrap_err();
        // (Both CAs have the same name, so this is a bad signature rather than an unknown
        // issuer: the name alone admits nobody.)
        assert!(
            err.contains("server: Err(\"invalid peer certificate"),
            "{err}"
        );
        // A node certificate is not for clients: one node cannot call another's ingress.
        let other_node = issue(&ca, Role::Node, &["127.0.0.1"]);
        let err = handshake(&node, other_node.client_config().unwrap(), "127.0.0.1")
            .await
            .unwrap_err();
        assert!(
            err.contains("server: Err(\"invalid peer certificate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_server_name_is_checked() {
        let ca = Ca::generate().unwrap();
        let node = issue(&ca, Role::Node, &["127.0.0.1"]);
        let edge = issue(&ca, Role::Edge, &[]);
        let err = handshake(&node, edge.client_config().unwrap(), "127.0.0.2")
            .await
            .unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let ca = Ca::generate().unwrap();
        let err = ca
            .sign("junk", Role::Edge, "x", &[], Duration::from_secs(60))
            .unwrap_err();
        assert!(
            err.to_string().contains("certificate signing request"),
            "{err}"
        );
        // A request whose signature does not match its key.
        let a = Csr::generate("a").unwrap();
        let mut tampered = a.csr_pem.clone().into_bytes();
        let mid = tampered.len() / 2;
        tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(ca
            .sign(&tampered, Role::Edge, "x", &[], Duration::from_secs(60))
            .is_err());
        let csr = Csr::generate("b").unwrap();
        let err = ca
            .sign(
                &csr.csr_pem,
                Role::Node,
                "x",
                &["not a name".into()],
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(err.to_string().contains("not a DNS name"), "{err}");
        let big = "x".repeat(MAX_PEM_BYTES + 1);
        assert!(ca
            .sign(&big, Role::Edge, "x", &[], Duration::from_secs(60))
            .unwrap_err()
            .to_string()
            .contains("larger"));
    }

    #[test]
    fn an_identity_refuses_a_key_that_is_not_its_certificates() {
        let ca = Ca::generate().unwrap();
        let a = Csr::generate("a").unwrap();
        let b = Csr::generate("b").unwrap();
        let cert = ca
            .sign(&a.csr_pem, Role::Edge, "a", &[], Duration::from_secs(60))
            .unwrap();
        assert!(b.into_identity(cert, ca.cert_pem().into()).is_err());
        let ca2 = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let id = issue(&ca2, Role::Edge, &[]);
        assert!(id.expires_within(id.not_after() - 10, Duration::from_secs(60)));
        assert!(!id.expires_within(id.not_after() - 120, Duration::from_secs(60)));
    }
}
