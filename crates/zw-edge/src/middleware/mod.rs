//! Router middlewares.
//!
//! A middleware sees the request before it goes upstream ([`Middleware::on_request`]: it
//! may rewrite it or answer it — a redirect) and the response on its way back
//! ([`Middleware::on_response`], in reverse order). Each type is one file; adding one means
//! a file here, a field in `zw_config::Middleware` and a variant in
//! `zw_config::ParsedMiddleware` (its validation), and a line in [`build`].

mod add_prefix;
mod basic_auth;
mod buffering;
pub mod digest_auth;
mod encoded_characters;
mod errors;
pub mod forward_auth;
mod headers;
mod in_flight;
mod ip_allow_list;
mod pass_tls_client_cert;
pub mod rate_limit;
mod redirect;
pub mod redis_bucket;
mod replace_path;
mod strip_prefix;

use std::sync::Arc;

use http::{request, response};

pub use add_prefix::AddPrefix;
pub use basic_auth::BasicAuth;
pub use buffering::{Buffering, ContentType};
pub use digest_auth::DigestAuth;
pub use encoded_characters::EncodedCharacters;
pub use errors::Errors;
pub use forward_auth::ForwardAuth;
pub use headers::Headers;
pub use in_flight::InFlightReq;
pub use ip_allow_list::IpAllowList;
pub use pass_tls_client_cert::PassTlsClientCert;
pub use rate_limit::RateLimit;
pub use redirect::{RedirectRegex, RedirectScheme};
pub use replace_path::{ReplacePath, ReplacePathRegex, StripPrefixRegex};
pub use strip_prefix::StripPrefix;

/// The request as middlewares see it.
pub struct MiddlewareCtx<'a> {
    pub parts: &'a mut request::Parts,
    /// Scheme the client used (`http` on a plain entry point).
    pub scheme: &'static str,
    /// Host as the client sent it (authority or Host header, port included).
    pub host: &'a str,
    /// The client's address (the PROXY protocol's behind a balancer).
    pub client_ip: std::net::IpAddr,
    /// The client's TLS certificates (mutual TLS), as `X-Forwarded-Tls-Client-Cert`
    /// carries them.
    pub client_cert: Option<&'a http::HeaderValue>,
    /// The same certificates, the client's first.
    pub client_certs: &'a [rustls::pki_types::CertificateDer<'static>],
    /// What the response side will know; [`ResponseCtx::mark`] leaves a note there.
    pub response: &'a mut ResponseCtx,
    /// The request's body, once a middleware that [reads it](Middleware::reads_body) ran.
    pub body: Option<bytes::Bytes>,
}

/// What the response side knows of the request.
#[derive(Debug, Default)]
pub struct ResponseCtx {
    /// The request's `Origin` (CORS).
    pub origin: Option<http::HeaderValue>,
    /// Whether it came over TLS (HSTS).
    pub tls: bool,
    /// The router's middleware running now, by its place in the router's list (set by
    /// the request path on both sides).
    pub position: usize,
    /// Bit `i`: the middleware at place `i` marked the request.
    marks: u64,
    /// `Set-Cookie` values a middleware's request side chose for the response, by its
    /// place (`forwardAuth`'s `addAuthCookiesToResponse`).
    pub cookies: Vec<(usize, http::HeaderValue)>,
}

impl ResponseCtx {
    pub fn new(tls: bool) -> Self {
        ResponseCtx {
            tls,
            ..Default::default()
        }
    }

    /// Notes, on the request side, one fact for this middleware's response side to read
    /// with [`ResponseCtx::marked`] (a `headers` middleware's "this request is secure").
    /// A middleware past the router's 64th cannot leave a note: `marked` says `false`.
    pub fn mark(&mut self) {
        if let Some(bit) = 1u64.checked_shl(self.position as u32) {
            self.marks |= bit;
        }
    }

    pub fn marked(&self) -> bool {
        1u64.checked_shl(self.position as u32)
            .is_some_and(|bit| self.marks & bit != 0)
    }
}

/// What to do after a middleware ran.
pub enum Action {
    Continue,
    /// Answer the client now with this status and headers, empty body.
    Respond(response::Parts),
    /// Go on once this has passed (a rate limit's short wait for a token).
    Wait(std::time::Duration),
    /// Go on, and keep this until the response body is done (an in-flight count).
    Hold(Box<dyn std::any::Any + Send>),
    /// Answer the client now with this response, body included.
    Answer(http::Response<bytes::Bytes>),
    /// Finish off the request path's thread (a bcrypt check on the blocking pool), then
    /// apply the outcome to the request: what it returns is this middleware's action.
    Defer(Deferred),
}

/// Work a middleware does away from the request's thread, and what to do with its
/// result once it is done.
pub type Deferred = std::pin::Pin<Box<dyn std::future::Future<Output = Then> + Send>>;

/// A deferred middleware's last step, on the request again.
pub type Then = Box<dyn for<'a, 'b> FnOnce(&'a mut MiddlewareCtx<'b>) -> Action + Send>;

pub trait Middleware: Send + Sync + std::fmt::Debug {
    /// Runs before the request goes upstream, in the router's order.
    fn on_request(&self, _ctx: &mut MiddlewareCtx<'_>) -> Action {
        Action::Continue
    }
    /// Runs on the upstream's response (or whatever answered), in reverse order.
    fn on_response(&self, _parts: &mut response::Parts, _req: &ResponseCtx) {}
    /// An `errors` middleware's settings: the request path fetches its page for an
    /// answer it catches.
    fn error_page(&self) -> Option<&zw_config::ErrorPageSpec> {
        None
    }
    /// A `buffering` middleware's limits: the request path reads the request body whole
    /// when the request reaches it, and the response body whole on the way back.
    fn buffering(&self) -> Option<&zw_config::BufferingSpec> {
        None
    }
    /// The most of the request body this middleware needs to see, held in memory for it
    /// (in [`MiddlewareCtx::body`]) before its `on_request` runs; a larger body is a 401
    /// (`forwardAuth` with `forwardBody`).
    fn reads_body(&self) -> Option<u64> {
        None
    }
    /// `contentType`: a response without `Content-Type` gets the one its first bytes
    /// suggest.
    fn sniffs_content_type(&self) -> bool {
        false
    }
}

/// The client's address as `s` finds it (Traefik's `ip.Strategy`): the connection's
/// without `depth` or `excluded`; else read from `X-Forwarded-For` (every line of it,
/// right to left). `None` when it has too few entries for `depth`, or only excluded ones
/// — Traefik's empty address: a rate limit then counts all such requests together, an
/// allow list refuses them.
pub(crate) fn strategy_ip(
    s: &zw_config::IpStrategySpec,
    ctx: &MiddlewareCtx<'_>,
) -> Option<std::net::IpAddr> {
    if s.depth == 0 && s.excluded.is_empty() {
        return Some(ctx.client_ip);
    }
    zw_rules::forwarded_client(
        ctx.parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes()),
        s.depth,
        &s.excluded,
    )
}

/// An answer with `status` and no body, for a middleware to fill in and return as
/// [`Action::Respond`].
pub(crate) fn answer(status: http::StatusCode) -> response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts
}

/// An answer as Go's `http.Error` writes it (Traefik's own refusals): `body` as plain text
/// that browsers are told not to sniff into anything else.
pub(crate) fn http_error(
    status: http::StatusCode,
    body: &'static str,
) -> http::Response<bytes::Bytes> {
    let mut resp = http::Response::new(bytes::Bytes::from_static(body.as_bytes()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The auth middlewares' refusal: 401 with `challenge` in `WWW-Authenticate`, and the body
/// and `Content-Type` go-http-auth writes for Traefik (`401 Unauthorized`, `text/plain`).
pub(crate) fn unauthorized(challenge: http::HeaderValue) -> Action {
    let mut resp = http::Response::new(bytes::Bytes::from_static(b"401 Unauthorized\n"));
    *resp.status_mut() = http::StatusCode::UNAUTHORIZED;
    let h = resp.headers_mut();
    h.insert(http::header::WWW_AUTHENTICATE, challenge);
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Action::Answer(resp)
}

/// State a middleware keeps across configurations (a rate limit's buckets, in-flight
/// counts), by the middleware's name and settings.
pub type Kept = std::collections::HashMap<(String, String), Arc<dyn std::any::Any + Send + Sync>>;

/// The state `kept` has for this middleware, or a new one; recorded in `used`.
fn keep<T: Default + Send + Sync + 'static>(
    key: (String, String),
    kept: &Kept,
    used: &mut Kept,
) -> Arc<T> {
    keep_with(key, kept, used, T::default)
}

/// [`keep`] for state made by `make`.
fn keep_with<T: Send + Sync + 'static>(
    key: (String, String),
    kept: &Kept,
    used: &mut Kept,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let state = kept
        .get(&key)
        .cloned()
        .and_then(|s| s.downcast::<T>().ok())
        .unwrap_or_else(|| Arc::new(make()));
    used.insert(key, state.clone());
    state
}

/// Builds the middleware validation parsed (none for a `chain`, whose members routers
/// run in its place); every value it needs is parsed already.
/// `name` and `kept` carry state over from the previous configuration (`used` collects
/// what this one keeps).
pub fn build(
    name: &str,
    m: &zw_config::ParsedMiddleware,
    kept: &Kept,
    used: &mut Kept,
) -> Option<Arc<dyn Middleware>> {
    use zw_config::ParsedMiddleware as P;
    Some(match m {
        P::RateLimit(spec) => {
            let buckets = keep((name.to_string(), format!("{spec:?}")), kept, used);
            match &spec.redis {
                None => Arc::new(RateLimit::new(spec, buckets)),
                Some(redis) => {
                    // One connection per Redis and settings (the password by its digest).
                    let password = redis.password.as_deref().map(|p| {
                        use sha2::Digest;
                        hex::encode(sha2::Sha256::digest(p.as_bytes()))
                    });
                    let shared = keep(
                        (name.to_string(), format!("redis {redis:?} {password:?}")),
                        kept,
                        used,
                    );
                    Arc::new(RateLimit::shared(spec, buckets, shared, name))
                }
            }
        }
        P::InFlightReq { amount, source } => {
            // Counts are kept whatever the amount: the requests in flight are still so.
            let counts = keep(
                (name.to_string(), format!("inFlight {source:?}")),
                kept,
                used,
            );
            Arc::new(InFlightReq::new(*amount, source, counts))
        }
        P::IpAllowList {
            ranges,
            strategy,
            reject,
        } => Arc::new(IpAllowList::new(ranges, strategy, *reject)),
        P::BasicAuth(spec) => Arc::new(BasicAuth::new(spec)),
        P::EncodedCharacters(denied) => Arc::new(EncodedCharacters::new(denied)),
        P::Errors(spec) => Arc::new(Errors(spec.clone())),
        P::PassTlsClientCert { pem, info } => Arc::new(PassTlsClientCert {
            pem: *pem,
            info: info.clone(),
        }),
        P::DigestAuth(spec) => {
            // Nonces survive reloads that keep the realm.
            let sessions = keep(
                (name.to_string(), format!("digestAuth {}", spec.realm)),
                kept,
                used,
            );
            Arc::new(DigestAuth::new(spec, sessions))
        }
        P::ForwardAuth(spec) => {
            // Kept connections survive reloads that keep the server.
            let server = keep_with(
                (
                    name.to_string(),
                    format!(
                        "forwardAuth {:?}://{} {}",
                        spec.server.scheme,
                        spec.server.authority,
                        spec.tls.as_ref().map_or("", |t| t.identity.as_str())
                    ),
                ),
                kept,
                used,
                || ForwardAuth::pool(spec),
            );
            Arc::new(ForwardAuth::new(spec, server))
        }
        P::ReplacePath(path) => Arc::new(ReplacePath(path.clone())),
        P::ReplacePathRegex { regex, replacement } => Arc::new(ReplacePathRegex {
            regex: regex.clone(),
            replacement: replacement.clone(),
        }),
        P::StripPrefixRegex(res) => Arc::new(StripPrefixRegex(res.clone())),
        P::Headers {
            request,
            response,
            secure,
            cors,
        } => Arc::new(Headers::new(request, response, secure, cors.as_deref())),
        P::StripPrefix(s) => Arc::new(StripPrefix::new(s)),
        P::Buffering(spec) => Arc::new(Buffering(*spec)),
        P::ContentType { detect: false } => return None,
        P::ContentType { detect: true } => Arc::new(ContentType),
        P::AddPrefix(a) => Arc::new(AddPrefix::new(a)),
        P::RedirectRegex {
            regex,
            replacement,
            permanent,
        } => Arc::new(RedirectRegex::new(regex, replacement, *permanent)),
        P::RedirectScheme(r) => Arc::new(RedirectScheme::new(r)),
        // Spliced into the routers that name it: nothing to build.
        P::Chain => return None,
    })
}

/// Replaces the path of a request URI, keeping its query.
pub(crate) fn set_path(parts: &mut request::Parts, path: &str) {
    let mut pq = String::with_capacity(path.len() + parts.uri.query().map_or(0, |q| q.len() + 1));
    pq.push_str(path);
    if let Some(q) = parts.uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut up = http::uri::Parts::from(std::mem::take(&mut parts.uri));
    if let Ok(p) = pq.parse() {
        up.path_and_query = Some(p);
    }
    if let Ok(uri) = http::Uri::from_parts(up) {
        parts.uri = uri;
    }
}
