//! Traefik's TLS options (`tls.options.<name>`) as rustls server configurations.
//!
//! As in Traefik (`pkg/tls/tlsmanager.go`, `buildTLSConfig`): the minimum version is TLS
//! 1.2 unless set; `cipherSuites` chooses the TLS 1.2 suites. Go does not let TLS 1.3
//! suites be configured and ignores their names; we honour them: a list that names TLS 1.3
//! suites allows only those in TLS 1.3 (one that names none leaves TLS 1.3 as it is, as
//! in Traefik);
//! `curvePreferences` restricts the key exchange groups; ALPN offers `h2` and `http/1.1`.
//! rustls implements neither TLS 1.0/1.1 nor CBC suites: a `minVersion` below 1.2 is
//! served as 1.2 (what such a config allows, less the versions no client should use), and
//! a `maxVersion` below 1.2 or a CBC suite is an error.

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};

use crate::store::{CertStore, Resolver};
use crate::TlsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// Go's names (`VersionTLS12`), as Traefik's configuration writes them. `Ok(None)`:
    /// TLS 1.0 or 1.1, which rustls does not implement.
    pub fn parse(name: &str) -> Result<Option<TlsVersion>, TlsError> {
        match name {
            "VersionTLS10" | "VersionTLS11" => Ok(None),
            "VersionTLS12" => Ok(Some(TlsVersion::Tls12)),
            "VersionTLS13" => Ok(Some(TlsVersion::Tls13)),
            other => Err(TlsError::Option(format!(
                "`{other}` is not a TLS version (VersionTLS12 or VersionTLS13)"
            ))),
        }
    }
}

/// Whether and how clients present certificates (Traefik's `clientAuth`).
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `NoClientCert` (the default).
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but must verify if sent.
    VerifyIfGiven(Arc<RootCertStore>),
    /// `RequireAndVerifyClientCert`.
    Require(Arc<RootCertStore>),
}

impl ClientAuth {
    /// Traefik's `clientAuthType` with the CAs of `caFiles`.
    pub fn parse(kind: &str, roots: RootCertStore) -> Result<ClientAuth, TlsError> {
        let roots = Arc::new(roots);
        let need_roots = |auth: ClientAuth| {
            if roots.is_empty() {
                Err(TlsError::Option(format!(
                    "`{kind}` verifies client certificates: name their CAs in `caFiles`"
                )))
            } else {
                Ok(auth)
            }
        };
        match kind {
            "" | "NoClientCert" => Ok(ClientAuth::None),
            "VerifyClientCertIfGiven" => need_roots(ClientAuth::VerifyIfGiven(roots.clone())),
            "RequireAndVerifyClientCert" => need_roots(ClientAuth::Require(roots.clone())),
            "RequestClientCert" | "RequireAnyClientCert" => Err(TlsError::Option(format!(
                "`{kind}` (accepting client certificates without verifying them) is not supported by Zeitwork; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with caFiles"
            ))),
            other => Err(TlsError::Option(format!(
                "`{other}` is not a clientAuthType (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            ))),
        }
    }
}

/// Loads the CA certificates of `caFiles` (PEM).
pub fn client_roots(pems: &[Vec<u8>]) -> Result<RootCertStore, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = RootCertStore::empty();
    for pem in pems {
        if pem.len() > crate::MAX_PEM_BYTES {
            return Err(TlsError::TooLarge(pem.len()));
        }
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| TlsError::Certificate(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// A cipher suite by its Go (IANA) name.
pub fn cipher_suite(name: &str) -> Result<SupportedCipherSuite, TlsError> {
    let full = match name {
        // rustls names the TLS 1.3 suites `TLS13_…`.
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            name.replacen("TLS_", "TLS13_", 1)
        }
        // Go writes the ChaCha20 suites without the hash (`..._CHACHA20_POLY1305`) too.
        n if n.ends_with("_CHACHA20_POLY1305") => format!("{n}_SHA256"),
        n => n.to_string(),
    };
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .find(|s| s.suite().as_str() == Some(full.as_str()))
        .copied()
        .ok_or_else(|| {
            TlsError::Option(format!(
                "`{name}` is not a cipher suite Zeitwork offers (rustls implements the ECDHE AES-GCM and ChaCha20-Poly1305 suites; CBC and RSA key exchange are not offered)"
            ))
        })
}

/// A key exchange group by its Go name (`CurveP256`) or its IANA name (`secp256r1`).
pub fn curve(name: &str) -> Result<&'static dyn SupportedKxGroup, TlsError> {
    use rustls::crypto::aws_lc_rs::kx_group;
    match name {
        "X25519" | "x25519" => Ok(kx_group::X25519),
        "CurveP256" | "secp256r1" | "P256" => Ok(kx_group::SECP256R1),
        "CurveP384" | "secp384r1" | "P384" => Ok(kx_group::SECP384R1),
        other => Err(TlsError::Option(format!(
            "`{other}` is not a curve Zeitwork offers (X25519, CurveP256, CurveP384)"
        ))),
    }
}

/// One `tls.options` entry, parsed.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Suites allowed; `None`: all. TLS 1.3 suites are restricted only when the list
    /// names at least one.
    pub cipher_suites: Option<Vec<SupportedCipherSuite>>,
    /// `None`: rustls' defaults.
    pub kx_groups: Option<Vec<&'static dyn SupportedKxGroup>>,
    pub alpn: Vec<Vec<u8>>,
    pub sni_strict: bool,
    pub client_auth: ClientAuth,
}

impl Default for TlsOptions {
    /// Traefik's built-in `default` options.
    fn default() -> Self {
        TlsOptions {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: None,
            kx_groups: None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            sni_strict: false,
            client_auth: ClientAuth::None,
        }
    }
}

/// What lets a returning client skip the full handshake: a session cache (TLS 1.2 IDs)
/// and a ticketer whose key rotates (rustls' ring ticketer: every six hours, the previous
/// key still accepted). One per process, shared by every configuration, so that a
/// configuration change does not end every session.
#[derive(Clone)]
pub struct Sessions {
    /// `None` when the system's random generator refused a ticket key: sessions then
    /// resume from the cache only.
    ticketer: Option<Arc<dyn ProducesTickets>>,
    cache: Arc<dyn StoresServerSessions>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new()
    }
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions {
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new().ok(),
            cache: rustls::server::ServerSessionMemoryCache::new(16 * 1024),
        }
    }

    /// Whether returning clients get tickets (else the session cache only).
    pub fn tickets(&self) -> bool {
        self.ticketer.is_some()
    }

    /// `template` with this process's session cache and ticketer.
    pub fn apply(&self, template: &ServerConfig) -> Arc<ServerConfig> {
        let mut c = template.clone();
        if let Some(t) = &self.ticketer {
            c.ticketer = t.clone();
        }
        c.session_storage = self.cache.clone();
        Arc::new(c)
    }
}

/// The server configuration for `options` over the certificates of `store`, without
/// sessions (see [`Sessions::apply`]).
pub fn server_config(
    options: &TlsOptions,
    store: Arc<CertStore>,
) -> Result<ServerConfig, TlsError> {
    let base = crate::provider();
    let mut provider = CryptoProvider::clone(&base);
    if let Some(suites) = &options.cipher_suites {
        let names_tls13 = suites.iter().any(|s| s.tls13().is_some());
        provider
            .cipher_suites
            .retain(|s| suites.contains(s) || (s.tls13().is_some() && !names_tls13));
    }
    if let Some(groups) = &options.kx_groups {
        provider.kx_groups = groups.clone();
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| *v >= options.min_version && *v <= options.max_version)
    .map(|(_, p)| p)
    .collect();
    if versions.is_empty() {
        return Err(TlsError::Option(
            "minVersion is above maxVersion: no TLS version is left".into(),
        ));
    }
    let provider = Arc::new(provider);
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match &options.client_auth {
        ClientAuth::None => None,
        ClientAuth::VerifyIfGiven(roots) => Some(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Option(format!("clientAuth: {e}")))?,
        ),
        ClientAuth::Require(roots) => Some(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Option(format!("clientAuth: {e}")))?,
        ),
    };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Resolver {
        store,
        sni_strict: options.sni_strict,
    }));
    config.alpn_protocols = options.alpn.clone();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names_map_to_rustls_suites() {
        let s = cipher_suite("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256").unwrap();
        assert_eq!(
            s.suite().as_str(),
            Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
        );
        assert!(cipher_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305").is_ok());
        assert!(cipher_suite("TLS_AES_128_GCM_SHA256")
            .unwrap()
            .tls13()
            .is_some());
        assert!(cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA").is_err());
        assert!(curve("CurveP521").is_err());
        assert_eq!(TlsVersion::parse("VersionTLS11").unwrap(), None);
        assert!(TlsVersion::parse("TLS12").is_err());
    }

    #[test]
    fn tls13_suites_are_restricted_only_when_named() {
        let store = Arc::new(CertStore::new(&[], crate::default_certificate().unwrap()));
        let suites = |names: &[&str]| {
            let opts = TlsOptions {
                cipher_suites: Some(names.iter().map(|n| cipher_suite(n).unwrap()).collect()),
                ..TlsOptions::default()
            };
            let c = server_config(&opts, store.clone()).unwrap();
            let mut v: Vec<String> = c
                .crypto_provider()
                .cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect();
            v.sort();
            v
        };
        let only12 = suites(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]);
        assert_eq!(only12.len(), 4, "{only12:?}");
        assert_eq!(
            suites(&[
                "TLS_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            ]),
            vec![
                "TLS13_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            ]
        );
    }

    #[test]
    fn verifying_client_certificates_needs_cas() {
        assert!(ClientAuth::parse("RequireAndVerifyClientCert", RootCertStore::empty()).is_err());
        assert!(ClientAuth::parse("RequireAnyClientCert", RootCertStore::empty()).is_err());
        assert!(matches!(
            ClientAuth::parse("NoClientCert", RootCertStore::empty()),
            Ok(ClientAuth::None)
        ));
    }

    #[test]
    fn versions_out_of_order_leave_nothing() {
        let store = Arc::new(CertStore::new(&[], crate::default_certificate().unwrap()));
        let opts = TlsOptions {
            min_version: TlsVersion::Tls13,
            max_version: TlsVersion::Tls12,
            ..TlsOptions::default()
        };
        assert!(server_config(&opts, store.clone()).is_err());
        let c = server_config(&TlsOptions::default(), store).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
