//! HTTP-01 challenge answers: while an ACME order runs, the CA fetches
//! `http://<name>/.well-known/acme-challenge/<token>` from the resolver's entry point and
//! expects the key authorization. Traefik answers every request under that prefix on the
//! challenge entry point itself (`pkg/provider/acme/challenge_http.go`: the token's answer,
//! else 404), ahead of any router; so does the edge, in the request filter.
//!
//! Tokens are written a few times per order and read only by requests under the prefix:
//! a map swapped whole (no lock on the request path).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The path prefix the CA fetches tokens under (RFC 8555, section 8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Tokens presented for HTTP-01, and their key authorizations.
#[derive(Default)]
pub struct Http01Tokens {
    map: ArcSwap<HashMap<String, String>>,
}

impl Http01Tokens {
    pub fn new() -> Arc<Http01Tokens> {
        Arc::new(Http01Tokens::default())
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

impl zw_acme::Http01 for Http01Tokens {
    fn present(&self, token: &str, key_authorization: &str) {
        Http01Tokens::present(self, token, key_authorization)
    }
    fn clean_up(&self, token: &str) {
        Http01Tokens::clean_up(self, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presented_token_is_answered_until_cleaned_up() {
        let t = Http01Tokens::new();
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
