//! Which certificate a handshake gets.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::Certified;

/// The certificates of one configuration, by the names they serve, and the default.
///
/// A server name gets, in order: the certificate naming it exactly; the one whose wildcard
/// covers its first label (`*.example.com` for `a.example.com`, not for
/// `a.b.example.com`, as RFC 6125 §6.4.3 allows one label); the default. When two
/// certificates name the same name, the first listed keeps it (Traefik skips a later
/// certificate for the same names: `appendCertificate`).
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    pub fn new(certs: &[Certified], default: Arc<CertifiedKey>) -> CertStore {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard
                        .entry(parent.to_string())
                        .or_insert_with(|| c.key.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| c.key.clone()),
                };
            }
        }
        CertStore {
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for `server_name` (SNI), if one names it.
    pub fn lookup(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = server_name.trim_end_matches('.');
        // SNI is ASCII (RFC 6066 §3); rustls has checked it is a DNS name.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }

    pub fn default_certificate(&self) -> &Arc<CertifiedKey> {
        &self.default
    }
}

/// A [`CertStore`] as rustls asks it, under one set of options: with `sni_strict`, a
/// handshake whose server name no certificate names (or that sends none) is refused
/// instead of getting the default certificate.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub store: Arc<CertStore>,
    pub sni_strict: bool,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name().and_then(|n| self.store.lookup(n)) {
            Some(k) => Some(k.clone()),
            None if self.sni_strict => None,
            None => Some(self.store.default.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::pair;

    fn certified(names: &[&str]) -> Certified {
        let (c, k) = pair(names);
        crate::load_pair(c.as_bytes(), k.as_bytes()).unwrap()
    }

    #[test]
    fn exact_then_one_label_wildcard_then_none() {
        let exact = certified(&["a.example.com"]);
        let wild = certified(&["*.example.com"]);
        let default = crate::default_certificate().unwrap();
        let store = CertStore::new(&[wild.clone(), exact.clone()], default);
        let is = |name: &str, want: &Certified| Arc::ptr_eq(store.lookup(name).unwrap(), &want.key);
        assert!(is("a.example.com", &exact));
        assert!(
            is("A.Example.COM.", &exact),
            "case and a trailing dot do not matter"
        );
        assert!(is("b.example.com", &wild));
        assert!(
            store.lookup("a.b.example.com").is_none(),
            "a wildcard is one label"
        );
        assert!(store.lookup("example.com").is_none());
        assert!(store.lookup("other.test").is_none());
    }

    #[test]
    fn the_first_certificate_for_a_name_keeps_it() {
        let first = certified(&["a.example.com"]);
        let second = certified(&["a.example.com", "b.example.com"]);
        let store = CertStore::new(
            &[first.clone(), second.clone()],
            crate::default_certificate().unwrap(),
        );
        assert!(Arc::ptr_eq(
            store.lookup("a.example.com").unwrap(),
            &first.key
        ));
        assert!(Arc::ptr_eq(
            store.lookup("b.example.com").unwrap(),
            &second.key
        ));
    }
}
