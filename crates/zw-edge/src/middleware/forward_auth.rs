//! `forwardAuth` (Traefik's `pkg/middlewares/auth/forward.go`): before a request goes on,
//! the edge asks an authentication server with the request's headers. A 2xx answer lets
//! the request through, with `authResponseHeaders` (and headers matching
//! `authResponseHeadersRegex`) copied from the answer into the request; any other answer
//! goes back to the client as it is — status, headers, body — with a relative `Location`
//! made absolute against the server unless `preserveLocationHeader`. The check is a `GET`
//! (the request's own method with `preserveRequestMethod`) carrying
//! `X-Forwarded-{For,Method,Proto,Host,Uri}`, taken from the client's request only with
//! `trustForwardHeader`. A server that cannot be reached, or answers nothing within 30 s,
//! is a 500, as in Traefik.
//!
//! An `https://` server is verified against `tls.ca` (the system's roots without it), or
//! not at all with `tls.insecureSkipVerify`; `tls.cert` and `tls.key` answer a server that
//! asks for a client certificate. With `forwardBody` the check carries the request's body
//! (held in memory: over `maxBodySize` the request is answered 401, as Traefik does), and
//! the upstream still gets it. With `addAuthCookiesToResponse`, a 2xx answer's cookies of
//! those names go on the client's response in place of the upstream's of the same names
//! (Traefik's `buildModifier`); an answer without cookies leaves the response alone.
//!
//! Connections to the server come from the edge's upstream pool ([`crate::pool::Backend`],
//! up to [`MAX_IDLE`] kept), as the services' do.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use zw_config::ForwardAuthSpec;

use crate::h1::SendError;
use crate::pool::{Backend, Conn, Transport};
use crate::request_body::RequestBody;

use super::{Action, Middleware, MiddlewareCtx};

/// Idle connections kept to one authentication server.
pub const MAX_IDLE: usize = 32;
/// The longest an authentication server may take (Traefik's client timeout).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an answer's body kept (it goes back to the client on a refusal).
const MAX_BODY: usize = 1 << 20;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

#[derive(Debug)]
pub struct ForwardAuth {
    spec: Arc<ForwardAuthSpec>,
    server: Arc<Backend>,
}

/// What the authentication server said.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Debug, thiserror::Error)]
enum AuthError {
    #[error(transparent)]
    Upstream(#[from] crate::pool::UpstreamError),
    #[error("exchange with {0}: {1}")]
    Http(String, crate::h1::H1Error),
    /// An `http://` server is spoken to over HTTP/1.1 only.
    #[error("the pool offered {0} over HTTP/2")]
    Protocol(String),
    #[error("the answer of {0} was longer than {MAX_BODY} bytes or broke off")]
    Body(String),
    #[error("no answer from {0} within {TIMEOUT:?}")]
    Timeout(String),
    #[error("the check request is invalid: {0}")]
    Request(#[from] http::Error),
}

impl ForwardAuth {
    /// `server`: the pool of connections to `spec.server`, kept across reloads.
    pub fn new(spec: &ForwardAuthSpec, server: Arc<Backend>) -> Self {
        ForwardAuth {
            spec: Arc::new(spec.clone()),
            server,
        }
    }

    /// A pool for the authentication server `spec` names, over the TLS it sets up.
    pub fn pool(spec: &ForwardAuthSpec) -> Backend {
        let tls = spec.tls.as_ref().map(|t| (t.config.clone(), None));
        Backend::with_tls(&spec.server, MAX_IDLE, Default::default(), tls)
    }

    /// Whether `cookie` (a `Set-Cookie` value) is one `addAuthCookiesToResponse` names.
    fn listed(&self, cookie: &HeaderValue) -> bool {
        let name = cookie
            .as_bytes()
            .split(|b| *b == b'=')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        self.spec
            .add_auth_cookies
            .iter()
            .any(|n| n.as_bytes() == name)
    }

    /// The check's headers, from the client's request (Traefik's `writeHeader`).
    fn check_headers(&self, ctx: &MiddlewareCtx<'_>) -> HeaderMap {
        let req = &*ctx.parts;
        let mut h = req.headers.clone();
        crate::proxy::remove_hop_by_hop(&mut h, false);
        // The check's own body (none, or the request's) sets its length, as Go's client
        // does whatever the copied headers say.
        h.remove(header::CONTENT_LENGTH);
        if let (Some(_), Some(body)) = (self.spec.forward_body, &ctx.body) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        if !self.spec.auth_request_headers.is_empty() {
            let mut kept = HeaderMap::new();
            for name in &self.spec.auth_request_headers {
                for v in h.get_all(name) {
                    kept.append(name.clone(), v.clone());
                }
            }
            h = kept;
        }
        let trust = self.spec.trust_forward_header;
        let client = ctx.client_ip.to_string();
        let xff = match req.headers.get(&X_FORWARDED_FOR) {
            Some(prior) if trust => prior
                .to_str()
                .map(|p| format!("{p}, {client}"))
                .unwrap_or(client),
            _ => client,
        };
        set(&mut h, X_FORWARDED_FOR, &xff);
        let trusted = |name: &HeaderName| trust.then(|| req.headers.get(name).cloned()).flatten();
        let uri = req
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        for (name, own) in [
            (X_FORWARDED_METHOD, req.method.as_str().to_string()),
            (X_FORWARDED_PROTO, ctx.scheme.to_string()),
            (X_FORWARDED_HOST, ctx.host.to_string()),
            (X_FORWARDED_URI, uri),
        ] {
            match trusted(&name) {
                Some(v) => {
                    h.insert(name, v);
                }
                None => set(&mut h, name, &own),
            }
        }
        match trusted(&X_FORWARDED_PORT) {
            Some(v) => {
                h.insert(X_FORWARDED_PORT, v);
            }
            None => {
                h.remove(X_FORWARDED_PORT);
            }
        }
        h.insert(
            header::HOST,
            HeaderValue::from_str(&self.spec.server.authority)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
        );
        h
    }
}

fn set(h: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            h.insert(name, v);
        }
        Err(_) => {
            h.remove(name);
        }
    }
}

/// One check, on a pooled connection when there is one.
async fn ask(
    spec: &ForwardAuthSpec,
    server: &Backend,
    method: Method,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Answer, AuthError> {
    let name = spec.server.authority.clone();
    let work = async {
        let transport = Transport {
            max_idle: MAX_IDLE,
            ..Transport::default()
        };
        let Conn::H1(conn) = server.checkout(&transport).await? else {
            return Err(AuthError::Protocol(name.clone()));
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(spec.path_and_query.clone())
            .body(body)?;
        *req.headers_mut() = headers;
        let resp = match crate::h1::send(conn, req, TIMEOUT).await {
            Ok(resp) => resp,
            Err(SendError::Again(_, e) | SendError::Upstream(e)) => {
                return Err(AuthError::Http(name.clone(), e))
            }
            Err(SendError::Timeout) => return Err(AuthError::Timeout(name.clone())),
            Err(SendError::Client(_)) => return Err(AuthError::Body(name.clone())),
        };
        let (parts, mut body) = resp.into_parts();
        let bytes = Limited::new(&mut body, MAX_BODY)
            .collect()
            .await
            .map_err(|_| AuthError::Body(name.clone()))?
            .to_bytes();
        // Given back once the answer is read whole; a closing one is dropped.
        if let Some(conn) = body.take_reusable() {
            server.checkin(conn);
        }
        let body = bytes;
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(AuthError::Timeout(name.clone())))
}

impl ForwardAuth {
    /// The client's answer for a refusal: the server's, hop-by-hop headers left out.
    fn refusal(spec: &ForwardAuthSpec, a: Answer) -> Action {
        let mut headers = a.headers;
        crate::proxy::remove_hop_by_hop(&mut headers, false);
        headers.remove(header::CONTENT_LENGTH);
        if !spec.preserve_location_header {
            // A relative Location is the server's: made absolute against it, as Go's
            // `Response.Location` does.
            if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
                let absolute = if loc.starts_with("//") {
                    Some(format!("http:{loc}"))
                } else if loc.starts_with('/') {
                    Some(format!("http://{}{loc}", spec.server.authority))
                } else if !loc.contains("://") && !loc.is_empty() {
                    let base = spec.path_and_query.path();
                    let dir = base.rsplit_once('/').map_or("", |(d, _)| d);
                    Some(format!("http://{}{dir}/{loc}", spec.server.authority))
                } else {
                    None
                };
                if let Some(v) = absolute.and_then(|a| HeaderValue::from_str(&a).ok()) {
                    headers.insert(header::LOCATION, v);
                }
            }
        }
        let mut resp = http::Response::new(a.body);
        *resp.status_mut() = a.status;
        *resp.headers_mut() = headers;
        Action::Answer(resp)
    }

    /// A 2xx: the chosen headers of the answer replace the request's.
    fn admit(spec: &ForwardAuthSpec, a: &Answer, req: &mut HeaderMap) {
        for name in &spec.auth_response_headers {
            req.remove(name);
            for v in a.headers.get_all(name) {
                req.append(name.clone(), v.clone());
            }
        }
        if let Some(re) = &spec.auth_response_headers_regex {
            let matching: Vec<&HeaderName> = a
                .headers
                .keys()
                .filter(|k| re.is_match(k.as_str()))
                .collect();
            for name in &matching {
                req.remove(*name);
            }
            for name in matching {
                for v in a.headers.get_all(name) {
                    req.append(name.clone(), v.clone());
                }
            }
        }
    }
}

impl Middleware for ForwardAuth {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let headers = self.check_headers(ctx);
        let method = if self.spec.preserve_request_method {
            ctx.parts.method.clone()
        } else {
            Method::GET
        };
        let body = match (self.spec.forward_body, ctx.body.clone()) {
            (Some(_), Some(b)) => RequestBody::full(b),
            _ => RequestBody::empty(),
        };
        let (spec, server) = (self.spec.clone(), self.server.clone());
        Action::Defer(Box::pin(async move {
            let answer = ask(&spec, &server, method, headers, body).await;
            Box::new(move |ctx: &mut MiddlewareCtx<'_>| match answer {
                Err(e) => {
                    tracing::warn!(server = %spec.server.authority, error = %e, "forwardAuth: the authentication server did not answer; 500");
                    let mut resp = http::Response::new(Bytes::new());
                    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Action::Answer(resp)
                }
                Ok(a) if a.status.is_success() => {
                    ForwardAuth::admit(&spec, &a, &mut ctx.parts.headers);
                    if !spec.add_auth_cookies.is_empty()
                        && a.headers.contains_key(header::SET_COOKIE)
                    {
                        let at = ctx.response.position;
                        for v in a.headers.get_all(header::SET_COOKIE) {
                            ctx.response.cookies.push((at, v.clone()));
                        }
                        ctx.response.mark();
                    }
                    Action::Continue
                }
                Ok(a) => ForwardAuth::refusal(&spec, a),
            }) as super::Then
        }))
    }

    fn reads_body(&self) -> Option<u64> {
        self.spec.forward_body
    }

    fn on_response(&self, parts: &mut http::response::Parts, req: &super::ResponseCtx) {
        if !req.marked() {
            return;
        }
        let theirs: Vec<HeaderValue> = parts
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !self.listed(v))
            .cloned()
            .collect();
        parts.headers.remove(header::SET_COOKIE);
        for v in theirs {
            parts.headers.append(header::SET_COOKIE, v);
        }
        for (at, v) in &req.cookies {
            if *at == req.position && self.listed(v) {
                parts.headers.append(header::SET_COOKIE, v.clone());
            }
        }
    }
}
