//! TLS termination material for the edge: certificate chains and keys loaded from PEM
//! ([`load_pair`]), the store that picks a certificate for a handshake by its server name
//! ([`CertStore`], Traefik's `tls.certificates` and `tls.stores`), and rustls server
//! configurations made from Traefik's TLS options ([`TlsOptions`], [`server_config`]).
//!
//! Everything that can fail (a bad PEM, a key that does not match its certificate, an
//! option value rustls cannot honour) fails here, when a configuration is validated; what
//! the edge does per handshake ([`CertStore::lookup`]) cannot.
#![forbid(unsafe_code)]

mod cert_info;
mod client;
mod options;
mod store;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

pub use cert_info::{cert_info, CertInfoOptions, DnOptions};
pub use client::client_config;
pub use options::{
    cipher_suite, client_roots, curve, server_config, ClientAuth, Sessions, TlsOptions, TlsVersion,
};
pub use rustls;
pub use store::{CertStore, Resolver};

/// The largest certificate chain or key PEM accepted (a chain of a few certificates fits
/// many times over).
pub const MAX_PEM_BYTES: usize = 256 * 1024;

/// Why TLS material or options cannot be used. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0} bytes of PEM; the limit is {MAX_PEM_BYTES}")]
    TooLarge(usize),
    #[error("no certificate in it (expected PEM blocks `-----BEGIN CERTIFICATE-----`)")]
    NoCertificate,
    #[error("no private key in it (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)")]
    NoKey,
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the private key cannot be used: {0}")]
    Key(rustls::Error),
    #[error(
        "the private key does not belong to the certificate (is keyFile the key of certFile?)"
    )]
    KeyMismatch,
    #[error("the certificate names no DNS name, IP address or common name to serve it for")]
    NoNames,
    #[error("{0}")]
    Option(String),
    #[error("rustls refused the options: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("generating the default certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The crypto provider every configuration here uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A certificate chain with its key, ready to serve, and the names it serves: its DNS
/// names and IP addresses, and its subject's common name, lowercased (as Traefik collects
/// them: `pkg/tls/certificate_store.go`, `parseCertificate`).
#[derive(Debug, Clone)]
pub struct Certified {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    /// The issuer's distinguished name, as text.
    pub issuer: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// Loads a certificate chain (leaf first) and its private key from PEM.
pub fn load_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<Certified, TlsError> {
    for len in [cert_pem.len(), key_pem.len()] {
        if len > MAX_PEM_BYTES {
            return Err(TlsError::TooLarge(len));
        }
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate);
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey,
        e => TlsError::Pem(e.to_string()),
    })?;
    let (names, issuer, not_before, not_after) = names_of(leaf)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::Key)?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => return Err(TlsError::KeyMismatch),
        // The key type cannot say (rustls does not know its public key): it stays.
        Err(_) => {}
    }
    Ok(Certified {
        key: Arc::new(key),
        names,
        issuer,
        not_before,
        not_after,
    })
}

fn names_of(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, String, i64, i64), TlsError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut names = Vec::new();
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_ascii_lowercase());
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(TlsError::NoNames);
    }
    let validity = cert.validity();
    Ok((
        names,
        cert.issuer().to_string(),
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The certificate served when no other matches and the store names no default: a
/// self-signed one made once per process, as Traefik makes its `TRAEFIK DEFAULT CERT`
/// (`pkg/tls/generate`). Clients that check certificates refuse it, which is the point: it
/// keeps the handshake going so that the client sees an error it can explain.
pub fn default_certificate() -> Result<Arc<CertifiedKey>, TlsError> {
    static DEFAULT: OnceLock<Arc<CertifiedKey>> = OnceLock::new();
    if let Some(k) = DEFAULT.get() {
        return Ok(k.clone());
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ZEITWORK DEFAULT CERT");
    let cert = params.self_signed(&key)?;
    let made = load_pair(cert.pem().as_bytes(), key.serialize_pem().as_bytes())?;
    Ok(DEFAULT.get_or_init(|| made.key).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        // No subject (rcgen's default common name would be one more name served).
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_pair_loads_with_its_names() {
        let (c, k) = pair(&["A.example", "*.b.example", "127.0.0.1"]);
        let got = load_pair(c.as_bytes(), k.as_bytes()).unwrap();
        assert_eq!(got.names, vec!["*.b.example", "127.0.0.1", "a.example"]);
        assert!(got.not_after > 0);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (c, _) = pair(&["a.example"]);
        let (_, other) = pair(&["a.example"]);
        assert!(matches!(
            load_pair(c.as_bytes(), other.as_bytes()),
            Err(TlsError::KeyMismatch)
        ));
    }

    #[test]
    fn bad_pem_is_an_error_naming_what_is_missing() {
        let (c, k) = pair(&["a.example"]);
        assert!(matches!(
            load_pair(b"", k.as_bytes()),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            load_pair(c.as_bytes(), b"junk"),
            Err(TlsError::NoKey)
        ));
        assert!(matches!(
            load_pair(k.as_bytes(), k.as_bytes()),
            Err(TlsError::NoCertificate)
        ));
        let big = vec![b'a'; MAX_PEM_BYTES + 1];
        assert!(matches!(
            load_pair(&big, k.as_bytes()),
            Err(TlsError::TooLarge(_))
        ));
    }

    #[test]
    fn the_default_certificate_is_made_once() {
        let a = default_certificate().unwrap();
        let b = default_certificate().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    proptest::proptest! {
        /// No input panics the loader: arbitrary bytes, and PEM armour around them.
        #[test]
        fn loading_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), kind in 0usize..4) {
            let label = ["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"][kind];
            let b64: String = body.iter().map(|b| (b'A' + b % 26) as char).collect();
            let armoured = format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n");
            let _ = load_pair(&body, &body);
            let _ = load_pair(armoured.as_bytes(), armoured.as_bytes());
        }
    }
}
