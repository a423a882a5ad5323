//! ACME challenge answers.
//!
//! HTTP-01: while an order runs, the CA fetches
//! `http://<name>/.well-known/acme-challenge/<token>` from the resolver's entry point and
//! expects the key authorization. Traefik answers every request under that prefix on the
//! challenge entry point itself (`pkg/provider/acme/challenge_http.go`: the token's answer,
//! else 404), ahead of any router; so does the edge, in the request filter.
//!
//! TLS-ALPN-01 (RFC 8737): the CA opens a TLS connection offering only `acme-tls/1` for the
//! name and checks the certificate it gets; the handshake is answered with the challenge
//! certificate and the connection closed (`pkg/provider/acme/challenge_tls.go`).
//!
//! Challenges are written a few times per order and read only by those requests and
//! handshakes: maps swapped whole (no lock on the request path).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use zw_tls::rustls::sign::CertifiedKey;

/// The path prefix the CA (and the operator's domain check) fetches tokens under.
pub use zw_acme::HTTP01_PREFIX as CHALLENGE_PREFIX;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Tokens presented for HTTP-01 and their key authorizations; certificates presented for
/// TLS-ALPN-01 by name.
#[derive(Default)]
pub struct AcmeChallenges {
    map: ArcSwap<HashMap<String, String>>,
    tls_alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeChallenges {
    pub fn new() -> Arc<AcmeChallenges> {
        Arc::new(AcmeChallenges::default())
    }

    /// The TLS-ALPN-01 certificate for a handshake naming `server_name`, if one is
    /// presented.
    pub(crate) fn tls_alpn01(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        self.tls_alpn.load().get(&name).cloned()
    }

    pub fn present(&self, token: &str, key_authorization: &str) {
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_string(), key_authorization.to_string());
            m
        });
    }

    pub fn clean_up(&self, token: &str) {
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            m
        });
    }

    /// The answer to a request for `path`, if the path is under the challenge prefix:
    /// the key authorization of its token, or `None` inside `Some` for an unknown token.
    pub(crate) fn answer(&self, path: &str) -> Option<Option<String>> {
        let rest = path.strip_prefix(CHALLENGE_PREFIX)?;
        // One path segment, an optional trailing slash (Traefik's `^prefix([^/]+)/?$`).
        let token = rest.strip_suffix('/').unwrap_or(rest);
        if token.is_empty() || token.contains('/') {
            return Some(None);
        }
        Some(self.map.load().get(token).cloned())
    }
}

impl zw_acme::Challenges for AcmeChallenges {
    fn present_http01(&self, token: &str, key_authorization: &str) {
        self.present(token, key_authorization)
    }
    fn clean_up_http01(&self, token: &str) {
        self.clean_up(token)
    }
    fn present_tls_alpn01(&self, name: &str, certificate: Arc<CertifiedKey>) {
        let name = name.to_ascii_lowercase();
        self.tls_alpn.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.clone(), certificate.clone());
            m
        });
    }
    fn clean_up_tls_alpn01(&self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.tls_alpn.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&name);
            m
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presented_token_is_answered_until_cleaned_up() {
        let t = AcmeChallenges::new();
        assert_eq!(t.answer("/index.html"), None);
        assert_eq!(t.answer("/.well-known/acme-challenge/abc"), Some(None));
        t.present("abc", "abc.thumb");
        assert_eq!(
            t.answer("/.well-known/acme-challenge/abc"),
            Some(Some("abc.thumb".into()))
        );
        assert_eq!(
            t.answer("/.well-known/acme-challenge/abc/"),
            Some(Some("abc.thumb".into()))
        );
        assert_eq!(t.answer("/.well-known/acme-challenge/abc/x"), Some(None));
        assert_eq!(t.answer("/.well-known/acme-challenge/"), Some(None));
        t.clean_up("abc");
        assert_eq!(t.answer("/.well-known/acme-challenge/abc"), Some(None));
    }
}
