//! `stripPrefix`: removes the first matching prefix from the path and records it in
//! `X-Forwarded-Prefix`, as Traefik does. The result always starts with `/`.

use http::HeaderValue;

use super::{set_path, Action, Middleware, MiddlewareCtx};

#[derive(Debug)]
pub struct StripPrefix {
    prefixes: Vec<String>,
}

impl StripPrefix {
    pub fn new(c: &zw_config::StripPrefix) -> Self {
        StripPrefix {
            prefixes: c.prefixes.clone(),
        }
    }
}

impl Middleware for StripPrefix {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let path = ctx.parts.uri.path().to_string();
        for prefix in &self.prefixes {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                let new_path = if rest.starts_with('/') {
                    rest.to_string()
                } else {
                    format!("/{rest}")
                };
                set_path(ctx.parts, &new_path);
                if let Ok(v) = HeaderValue::from_str(prefix) {
                    ctx.parts.headers.insert("x-forwarded-prefix", v);
                }
                break;
            }
        }
        Action::Continue
    }
}
