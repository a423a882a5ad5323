//! `headers`: set or remove request and response headers (`customRequestHeaders`,
//! `customResponseHeaders`; an empty value removes the header, as in Traefik), security
//! headers and CORS, as Traefik's `pkg/middlewares/headers` does:
//!
//! - a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
//!   answered by the edge: 200 with `Access-Control-Allow-{Credentials,Headers,Methods}`,
//!   `-Origin` when the origin is allowed (`*`, listed, or matching a regex: then the
//!   origin itself), and `Access-Control-Max-Age` (`header.go`, `processCorsHeaders`);
//! - other responses get the custom response headers, then `Access-Control-Allow-Origin`
//!   for an allowed origin, `-Allow-Credentials`, `-Expose-Headers`, and `Vary: Origin`
//!   with `addVaryHeader` (`PostRequestModifyResponseHeaders`);
//! - security headers are set on every response, over what the upstream sent; HSTS and
//!   `Public-Key-Pins` only on responses to secure requests (over TLS, or carrying one of
//!   `sslProxyHeaders` with its value) unless `forceSTSHeader`, and never with
//!   `isDevelopment` (unrolled/secure's `processRequest`, which Traefik uses);
//! - with `allowedHosts`, a request whose host (`Host`, or the first non-empty of
//!   `hostsProxyHeaders`) is not one of them, compared without regard to case, is
//!   answered `500 Bad Host` (unrolled/secure's default bad-host handler); the port is
//!   part of the host, as Go's `r.Host` holds it.

use http::{header, HeaderName, HeaderValue};

use super::{Action, Middleware, MiddlewareCtx, ResponseCtx};

#[derive(Debug)]
pub struct Headers {
    request: zw_config::HeaderEdits,
    response: zw_config::HeaderEdits,
    secure: zw_config::Secure,
    cors: Option<zw_config::Cors>,
}

fn apply(headers: &mut http::HeaderMap, set: &[(HeaderName, Option<HeaderValue>)]) {
    for (name, value) in set {
        match value {
            Some(v) => {
                headers.insert(name.clone(), v.clone());
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

impl Headers {
    pub fn new(
        request: &zw_config::HeaderEdits,
        response: &zw_config::HeaderEdits,
        secure: &zw_config::Secure,
        cors: Option<&zw_config::Cors>,
    ) -> Self {
        Headers {
            request: request.clone(),
            response: response.clone(),
            secure: secure.clone(),
            cors: cors.cloned(),
        }
    }

    /// Whether the request's host is one `allowedHosts` lists (any, without the list).
    fn host_allowed(&self, ctx: &MiddlewareCtx<'_>) -> bool {
        let s = &self.secure;
        if s.allowed_hosts.is_empty() {
            return true;
        }
        let proxied = s.hosts_proxy_headers.iter().find_map(|name| {
            ctx.parts
                .headers
                .get(name)
                .filter(|v| !v.is_empty())
                .map(HeaderValue::as_bytes)
        });
        let host = proxied.unwrap_or(ctx.host.as_bytes());
        s.allowed_hosts
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(host))
    }

    /// Whether a plain-HTTP request says it came over TLS to a proxy in front (Go's
    /// `r.Header.Get(k) == v`: a missing header reads as empty).
    fn ssl_proxied(&self, headers: &http::HeaderMap) -> bool {
        self.secure.ssl_proxy_headers.iter().any(|(name, want)| {
            headers.get(name).map_or(&b""[..], HeaderValue::as_bytes) == want.as_bytes()
        })
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allowed_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let cors = self.cors.as_ref()?;
        let origin_str = origin.and_then(|o| o.to_str().ok()).unwrap_or("");
        for item in &cors.origins {
            if item == "*" || item == origin_str {
                return HeaderValue::from_str(item).ok();
            }
        }
        cors.origin_regexes
            .iter()
            .any(|r| r.is_match(origin_str))
            .then(|| origin.cloned())
            .flatten()
    }
}

const ACAO: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;

impl Middleware for Headers {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        if let Some(cors) = &self.cors {
            let h = &ctx.parts.headers;
            let preflight = ctx.parts.method == http::Method::OPTIONS
                && h.get(header::ACCESS_CONTROL_REQUEST_METHOD)
                    .is_some_and(|v| !v.is_empty())
                && h.get(header::ORIGIN).is_some_and(|v| !v.is_empty());
            if preflight {
                let mut parts = super::answer(http::StatusCode::OK);
                let out = &mut parts.headers;
                if cors.allow_credentials {
                    out.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
                if let Some(v) = &cors.allow_headers {
                    out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
                if let Some(v) = &cors.allow_methods {
                    out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
                }
                if let Some(v) = self.allowed_origin(h.get(header::ORIGIN)) {
                    out.insert(ACAO, v);
                }
                out.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from(cors.max_age),
                );
                return Action::Respond(parts);
            }
        }
        if !self.host_allowed(ctx) {
            return Action::Answer(super::http_error(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "Bad Host\n",
            ));
        }
        if !self.secure.on_secure.is_empty()
            && !ctx.response.tls
            && self.ssl_proxied(&ctx.parts.headers)
        {
            ctx.response.mark();
        }
        apply(&mut ctx.parts.headers, &self.request);
        Action::Continue
    }

    fn on_response(&self, parts: &mut http::response::Parts, req: &ResponseCtx) {
        apply(&mut parts.headers, &self.response);
        let out = &mut parts.headers;
        if let Some(cors) = &self.cors {
            if let Some(v) = self.allowed_origin(req.origin.as_ref()) {
                out.insert(ACAO, v);
            }
            if cors.allow_credentials {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(v) = &cors.expose_headers {
                out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
            }
            if cors.add_vary {
                let vary = out
                    .get(header::VARY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if vary != "Origin" {
                    let v = if vary.is_empty() {
                        "Origin".to_string()
                    } else {
                        format!("{vary},Origin")
                    };
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        out.insert(header::VARY, v);
                    }
                }
            }
        }
        for (name, value) in &self.secure.always {
            out.insert(name.clone(), value.clone());
        }
        if req.tls || req.marked() {
            for (name, value) in &self.secure.on_secure {
                out.insert(name.clone(), value.clone());
            }
        }
    }
}
