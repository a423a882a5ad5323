//! `basicAuth` (Traefik's `pkg/middlewares/auth/basic_auth.go`): a request whose
//! `Authorization: Basic` names a listed user with the right password goes on; any other
//! gets 401 with `WWW-Authenticate: Basic realm="REALM"`. `headerField` carries the user's
//! name upstream; `removeHeader` drops `Authorization` before it goes there.
//!
//! Choices where Traefik is silent: hashes are compared in constant time, and a name
//! that is not listed is checked against a listed user's hash all the same, so that a
//! wrong name costs what a wrong password does (no user enumeration by timing). bcrypt
//! (tens of milliseconds by design) runs on the blocking pool, never on the thread that
//! serves other requests.

use std::collections::HashMap;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};
use sha1::Digest;
use subtle::ConstantTimeEq;
use zw_config::{BasicAuthSpec, PasswordHash};

use super::{Action, Middleware, MiddlewareCtx};

#[derive(Debug)]
pub struct BasicAuth {
    users: HashMap<String, PasswordHash>,
    /// Checked for a name that is not listed (one of the listed users' hashes).
    decoy: Option<PasswordHash>,
    then: Outcome,
}

/// What follows the check, on the request again (cloned into a bcrypt check's future).
#[derive(Debug, Clone)]
struct Outcome {
    challenge: HeaderValue,
    remove_header: bool,
    header_field: Option<HeaderName>,
}

impl Outcome {
    fn refuse(&self) -> Action {
        super::unauthorized(self.challenge.clone())
    }

    fn apply(&self, ctx: &mut MiddlewareCtx<'_>, user: &str, ok: bool) -> Action {
        if !ok {
            return self.refuse();
        }
        if let Some(field) = &self.header_field {
            if let Ok(v) = HeaderValue::from_str(user) {
                ctx.parts.headers.insert(field.clone(), v);
            }
        }
        if self.remove_header {
            ctx.parts.headers.remove(AUTHORIZATION);
        }
        Action::Continue
    }
}

impl BasicAuth {
    pub fn new(spec: &BasicAuthSpec) -> Self {
        BasicAuth {
            users: spec
                .users
                .iter()
                .map(|(n, h)| (n.clone(), h.clone()))
                .collect(),
            // The slowest kind there is, so a miss never answers faster than a hit.
            decoy: spec
                .users
                .values()
                .find(|h| h.is_slow())
                .or_else(|| spec.users.values().next())
                .cloned(),
            then: Outcome {
                challenge: HeaderValue::from_str(&format!("Basic realm=\"{}\"", spec.realm))
                    .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"traefik\"")),
                remove_header: spec.remove_header,
                header_field: spec.header_field.clone(),
            },
        }
    }
}

/// Whether `password` matches `hash`, compared in constant time.
pub fn verify(hash: &PasswordHash, password: &str) -> bool {
    match hash {
        PasswordHash::Sha1(want) => sha1::Sha1::digest(password.as_bytes())
            .as_slice()
            .ct_eq(want)
            .into(),
        PasswordHash::Md5Crypt(h) | PasswordHash::Bcrypt(h) => {
            match crypt3_rs::unix::crypt(password, h) {
                Ok(got) => got.as_str().as_bytes().ct_eq(h.as_bytes()).into(),
                Err(_) => false,
            }
        }
    }
}

impl Middleware for BasicAuth {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let Some((user, password)) = ctx
            .parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| zw_config::basic_credentials(v.as_bytes()))
        else {
            return self.then.refuse();
        };
        let (hash, listed) = match self.users.get(&user) {
            Some(h) => (h, true),
            None => match &self.decoy {
                Some(d) => (d, false),
                None => return self.then.refuse(),
            },
        };
        if !hash.is_slow() {
            let ok = verify(hash, &password) && listed;
            return self.then.apply(ctx, &user, ok);
        }
        let (hash, then) = (hash.clone(), self.then.clone());
        Action::Defer(Box::pin(async move {
            let ok = tokio::task::spawn_blocking(move || verify(&hash, &password))
                .await
                .unwrap_or(false)
                && listed;
            let done: super::Then =
                Box::new(move |ctx: &mut MiddlewareCtx<'_>| then.apply(ctx, &user, ok));
            done
        }))
    }
}
