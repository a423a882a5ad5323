//! `digestAuth` (Traefik's `pkg/middlewares/auth/digest_auth.go`, over go-http-auth's
//! `DigestAuth`): HTTP Digest authentication, RFC 2617 with MD5 and `qop=auth`. A request
//! without valid credentials gets 401 with a challenge holding a fresh nonce; the client
//! answers with `md5(HA1:nonce:nc:cnonce:qop:md5(method:uri))`, which is checked in
//! constant time. A nonce is one the edge gave out, and its count must grow from request
//! to request; an old count is answered with a new challenge marked `stale=true`, which
//! clients follow without asking the user again. So is a nonce the edge does not know
//! (it restarted, or dropped it): go-http-auth asks for the password again there, but a
//! client that computed a right answer knows it, and a replayed answer is no use with a
//! new nonce.
//!
//! Nonces and the `opaque` value live in the middleware's kept state, so a configuration
//! reload does not make every client log in again. At most [`MAX_NONCES`] are kept; the
//! oldest go first (go-http-auth's client cache does the same).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zw_config::DigestAuthSpec;

use super::{Action, Middleware, MiddlewareCtx};

/// Nonces kept per middleware.
pub const MAX_NONCES: usize = 4096;

/// The nonces given out and the last count seen with each; `opaque` is sent back by
/// clients as it was received.
pub struct Sessions {
    opaque: String,
    nonces: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            opaque: random_hex(16),
            nonces: Mutex::new(HashMap::new()),
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // Without the OS's random source the nonces would be guessable: fall back to the
    // clock only so that the edge keeps serving, and say so.
    if getrandom::fill(&mut buf).is_err() {
        tracing::error!("the operating system's random source failed; digestAuth nonces are weak");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        buf.iter_mut()
            .zip(t.to_le_bytes().iter().cycle())
            .for_each(|(b, t)| *b = *t);
    }
    hex::encode(buf)
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

#[derive(Debug)]
pub struct DigestAuth {
    spec: DigestAuthSpec,
    sessions: Arc<Sessions>,
}

/// Why a request was not admitted.
enum Refusal {
    /// No or wrong credentials: a new challenge.
    Challenge,
    /// Right credentials with a count already seen: a new challenge, `stale=true`.
    Stale,
}

impl DigestAuth {
    pub fn new(spec: &DigestAuthSpec, sessions: Arc<Sessions>) -> Self {
        DigestAuth {
            spec: spec.clone(),
            sessions,
        }
    }

    /// Checks the credentials of a request; the user's name when they hold.
    fn check(&self, ctx: &MiddlewareCtx<'_>) -> Result<String, Refusal> {
        let auth = ctx
            .parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| zw_config::digest_params(v.as_bytes()))
            .ok_or(Refusal::Challenge)?;
        let field = |k: &str| auth.get(k).map(String::as_str).unwrap_or("");
        // A client that leaves `algorithm` out means MD5 (RFC 2617 §3.2.1).
        let algorithm = auth.get("algorithm").map_or("MD5", String::as_str);
        if field("opaque") != self.sessions.opaque
            || !algorithm.eq_ignore_ascii_case("MD5")
            || field("qop") != "auth"
        {
            return Err(Refusal::Challenge);
        }
        // The digest covers the URI the client sent; it must be this request's (a path
        // prefix of it is accepted, as go-http-auth does for old clients).
        let uri = field("uri");
        let request_uri = ctx.parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let path = ctx.parts.uri.path();
        let digest_path = uri.split('?').next().unwrap_or("");
        let prefix_of_path = !digest_path.is_empty() && path.starts_with(digest_path);
        if uri != request_uri && !prefix_of_path {
            return Err(Refusal::Challenge);
        }
        let user = field("username");
        let Some(ha1) = self.spec.users.get(user) else {
            return Err(Refusal::Challenge);
        };
        let ha2 = md5_hex(&[ctx.parts.method.as_str(), uri]);
        let (nonce, nc, cnonce) = (field("nonce"), field("nc"), field("cnonce"));
        let want = md5_hex(&[ha1, nonce, nc, cnonce, "auth", &ha2]);
        if !bool::from(want.as_bytes().ct_eq(field("response").as_bytes())) {
            return Err(Refusal::Challenge);
        }
        let count = u64::from_str_radix(nc, 16).map_err(|_| Refusal::Challenge)?;
        let mut nonces = self
            .sessions
            .nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(seen) = nonces.get_mut(nonce) else {
            // a nonce the edge never gave out (or forgot): start over
            return Err(Refusal::Stale);
        };
        if seen.0 != 0 && count <= seen.0 {
            return Err(Refusal::Stale);
        }
        *seen = (count, Instant::now());
        Ok(user.to_string())
    }

    fn challenge(&self, stale: bool) -> Action {
        let nonce = random_hex(16);
        {
            let mut nonces = self
                .sessions
                .nonces
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if nonces.len() >= MAX_NONCES {
                // the least recently used quarter goes
                let mut by_age: Vec<(Instant, String)> =
                    nonces.iter().map(|(k, v)| (v.1, k.clone())).collect();
                by_age.sort();
                for (_, k) in by_age.into_iter().take(MAX_NONCES / 4) {
                    nonces.remove(&k);
                }
            }
            nonces.insert(nonce.clone(), (0, Instant::now()));
        }
        let value = format!(
            "Digest realm=\"{}\", nonce=\"{nonce}\", opaque=\"{}\", algorithm=MD5, qop=\"auth\"{}",
            self.spec.realm,
            self.sessions.opaque,
            if stale { ", stale=true" } else { "" }
        );
        let challenge = HeaderValue::from_str(&value)
            .unwrap_or_else(|_| HeaderValue::from_static("Digest realm=\"traefik\""));
        super::unauthorized(challenge)
    }
}

impl Middleware for DigestAuth {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        match self.check(ctx) {
            Err(Refusal::Challenge) => self.challenge(false),
            Err(Refusal::Stale) => self.challenge(true),
            Ok(user) => {
                if let Some(field) = &self.spec.header_field {
                    if let Ok(v) = HeaderValue::from_str(&user) {
                        ctx.parts.headers.insert(HeaderName::clone(field), v);
                    }
                }
                if self.spec.remove_header {
                    ctx.parts.headers.remove(AUTHORIZATION);
                }
                Action::Continue
            }
        }
    }
}
