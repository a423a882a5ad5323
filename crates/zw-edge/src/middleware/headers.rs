//! `headers`: set or remove request and response headers (`customRequestHeaders`,
//! `customResponseHeaders`; an empty value removes the header, as in Traefik).

use http::{HeaderName, HeaderValue};

use super::{Action, Middleware, MiddlewareCtx};

#[derive(Debug)]
pub struct Headers {
    request: zw_config::HeaderEdits,
    response: zw_config::HeaderEdits,
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
    pub fn new(request: &zw_config::HeaderEdits, response: &zw_config::HeaderEdits) -> Self {
        Headers {
            request: request.clone(),
            response: response.clone(),
        }
    }
}

impl Middleware for Headers {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        apply(&mut ctx.parts.headers, &self.request);
        Action::Continue
    }

    fn on_response(&self, parts: &mut http::response::Parts) {
        apply(&mut parts.headers, &self.response);
    }
}
