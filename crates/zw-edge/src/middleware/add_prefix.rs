//! `addPrefix`: puts a prefix in front of the path.

use super::{set_path, Action, Middleware, MiddlewareCtx};

#[derive(Debug)]
pub struct AddPrefix {
    prefix: String,
}

impl AddPrefix {
    pub fn new(c: &zw_config::AddPrefix) -> Self {
        AddPrefix {
            prefix: c.prefix.trim_end_matches('/').to_string(),
        }
    }
}

impl Middleware for AddPrefix {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let path = format!("{}{}", self.prefix, ctx.parts.uri.path());
        set_path(ctx.parts, &path);
        Action::Continue
    }
}
