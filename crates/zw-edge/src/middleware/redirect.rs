//! `redirectRegex` and `redirectScheme`.
//!
//! As in Traefik v3, a permanent redirect is 301 for GET and HEAD and 308 otherwise (so
//! that the method and body are kept), a temporary one 302 / 307.

use http::{header, HeaderValue, Method, StatusCode};
use regex::Regex;

use super::{Action, Middleware, MiddlewareCtx};

fn redirect(method: &Method, permanent: bool, location: &str) -> Action {
    let keep_method = !(method == Method::GET || method == Method::HEAD);
    let status = match (permanent, keep_method) {
        (true, false) => StatusCode::MOVED_PERMANENTLY,
        (true, true) => StatusCode::PERMANENT_REDIRECT,
        (false, false) => StatusCode::FOUND,
        (false, true) => StatusCode::TEMPORARY_REDIRECT,
    };
    let Ok(loc) = HeaderValue::from_str(location) else {
        return Action::Continue;
    };
    let mut parts = super::answer(status);
    parts.headers.insert(header::LOCATION, loc);
    Action::Respond(parts)
}

fn full_url(ctx: &MiddlewareCtx<'_>) -> String {
    let pq = ctx.parts.uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}://{}{}", ctx.scheme, ctx.host, pq)
}

#[derive(Debug)]
pub struct RedirectRegex {
    regex: Regex,
    replacement: String,
    permanent: bool,
}

impl RedirectRegex {
    /// `regex` as validation compiled it: Go's syntax translated, with the size limit.
    pub fn new(regex: &Regex, replacement: &str, permanent: bool) -> Self {
        RedirectRegex {
            regex: regex.clone(),
            replacement: replacement.to_string(),
            permanent,
        }
    }
}

impl Middleware for RedirectRegex {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let url = full_url(ctx);
        let Some(caps) = self.regex.captures(&url) else {
            return Action::Continue;
        };
        let mut target = String::new();
        caps.expand(&self.replacement, &mut target);
        if target == url {
            return Action::Continue;
        }
        redirect(&ctx.parts.method, self.permanent, &target)
    }
}

#[derive(Debug)]
pub struct RedirectScheme {
    scheme: String,
    port: Option<String>,
    permanent: bool,
}

impl RedirectScheme {
    pub fn new(c: &zw_config::RedirectScheme) -> Self {
        RedirectScheme {
            scheme: c.scheme.clone(),
            port: c.port.clone(),
            permanent: c.permanent,
        }
    }
}

impl Middleware for RedirectScheme {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        if ctx.scheme == self.scheme {
            return Action::Continue; // already there; redirecting would loop
        }
        let host = zw_rules::normalize_host(ctx.host);
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.into_owned()
        };
        let default_port = if self.scheme == "https" { "443" } else { "80" };
        let port = match self.port.as_deref() {
            Some(p) if p != default_port => format!(":{p}"),
            _ => String::new(),
        };
        let pq = ctx.parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = format!("{}://{host}{port}{pq}", self.scheme);
        redirect(&ctx.parts.method, self.permanent, &target)
    }
}
