//! `replacePath`, `replacePathRegex` and `stripPrefixRegex`, as Traefik's
//! `pkg/middlewares/replacepath`, `replacepathregex` and `stripprefixregex`:
//!
//! - `replacePath` sets the path; the old one goes in `X-Replaced-Path`;
//! - `replacePathRegex` replaces a path that matches (`$1`, `${name}` expand), the old one
//!   in `X-Replaced-Path`; a path that does not match is left alone;
//! - `stripPrefixRegex` takes the first expression whose match is not empty and starts the
//!   path, removes it, and puts it in `X-Forwarded-Prefix`; the rest gets a leading `/`.
//!
//! Paths are matched as the request has them (escaped), and the result must be a valid
//! request path; one that is not leaves the request as it was.

use http::HeaderValue;
use regex::Regex;

use super::{set_path, Action, Middleware, MiddlewareCtx};

const X_REPLACED_PATH: &str = "x-replaced-path";
const X_FORWARDED_PREFIX: &str = "x-forwarded-prefix";

fn replace(ctx: &mut MiddlewareCtx<'_>, new_path: &str) {
    if let Ok(old) = HeaderValue::from_str(ctx.parts.uri.path()) {
        ctx.parts.headers.append(X_REPLACED_PATH, old);
    }
    set_path(ctx.parts, new_path);
}

#[derive(Debug)]
pub struct ReplacePath(pub String);

impl Middleware for ReplacePath {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        replace(ctx, &self.0);
        Action::Continue
    }
}

#[derive(Debug)]
pub struct ReplacePathRegex {
    pub regex: Regex,
    pub replacement: String,
}

impl Middleware for ReplacePathRegex {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let path = ctx.parts.uri.path();
        if self.regex.is_match(path) {
            let new_path = self
                .regex
                .replace_all(path, self.replacement.as_str())
                .into_owned();
            replace(ctx, &new_path);
        }
        Action::Continue
    }
}

#[derive(Debug)]
pub struct StripPrefixRegex(pub Vec<Regex>);

impl Middleware for StripPrefixRegex {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let path = ctx.parts.uri.path().to_string();
        for re in &self.0 {
            let Some(m) = re.find(&path) else { continue };
            let prefix = m.as_str();
            if prefix.is_empty() || !path.starts_with(prefix) {
                continue;
            }
            if let Ok(v) = HeaderValue::from_str(prefix) {
                ctx.parts.headers.append(X_FORWARDED_PREFIX, v);
            }
            let rest = path.replacen(prefix, "", 1);
            let new_path = if rest.starts_with('/') {
                rest
            } else {
                format!("/{rest}")
            };
            set_path(ctx.parts, &new_path);
            break;
        }
        Action::Continue
    }
}
